//! Rough figures for the supervisor's hot paths. Run with
//! `cargo test -p gpve-supervisor --release --test bench -- --ignored --nocapture`.

use std::time::{Duration, Instant};

use gpve_supervisor::{ChildSpec, Directory, EventKind, RestartPolicy, Supervisor, SupervisorSpec};
use ractor::{Actor, ActorProcessingErr, ActorRef};

struct Noop;

enum NoopMsg {
    Panic,
}

impl ractor::Message for NoopMsg {}

impl Actor for Noop {
    type Msg = NoopMsg;
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<NoopMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
    async fn handle(
        &self,
        _: ActorRef<NoopMsg>,
        m: NoopMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match m {
            NoopMsg::Panic => panic!("bench panic"),
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run explicitly with --ignored --nocapture"]
async fn supervisor_figures() {
    const CHILDREN: usize = 1_000;
    const RESTARTS: usize = 1_000;
    // Panics print a message each; keep the output readable.
    std::panic::set_hook(Box::new(|_| {}));
    let dir = Directory::new();
    let node = Supervisor::spawn(
        SupervisorSpec::new("node:n1")
            .intensity(u32::MAX, 1)
            .backoff(0, 0),
        dir.clone(),
    )
    .await
    .expect("spawn");

    let t = Instant::now();
    for i in 0..CHILDREN {
        let spec = ChildSpec::actor(format!("vm:{i}"), "vm", RestartPolicy::Permanent, |_| {
            (Noop, ())
        });
        node.add_child(spec).await.expect("add");
    }
    let add = t.elapsed();

    let mut events = dir.subscribe();
    let mut lat = Vec::with_capacity(RESTARTS);
    for i in 0..RESTARTS {
        let path = format!("node:n1/vm:{}", i % CHILDREN);
        let t = Instant::now();
        dir.send(&path, NoopMsg::Panic).expect("send");
        loop {
            let e = tokio::time::timeout(Duration::from_secs(5), events.recv())
                .await
                .expect("event in time")
                .expect("event");
            if e.path == path && matches!(e.kind, EventKind::Restarted { .. }) {
                break;
            }
        }
        lat.push(t.elapsed());
    }
    lat.sort();

    let t = Instant::now();
    let json = serde_json::to_vec(&dir.snapshot_tree()).expect("json");
    let snap = t.elapsed();

    let t = Instant::now();
    node.stop().await.expect("stop");
    let stop = t.elapsed();

    println!(
        "add_child x{CHILDREN}: {:?} ({:?}/child)",
        add,
        add / CHILDREN as u32
    );
    println!(
        "panic->restarted x{RESTARTS}: p50 {:?} p99 {:?} max {:?}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[lat.len() - 1]
    );
    println!(
        "snapshot_tree+json of {} actors: {:?} ({} bytes)",
        CHILDREN + 1,
        snap,
        json.len()
    );
    println!("stop of {CHILDREN} children: {stop:?}");
}
