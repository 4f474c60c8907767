//! Behaviour of supervisors with real ractor actors on tokio time. Tests wait on directory
//! events with a bounded timeout instead of sleeping.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use gpve_supervisor::{
    ActorState, ActorStats, ChildSpec, Clock, Directory, DirectoryEvent, Escalation,
    EscalationPolicy, EventKind, RestartPolicy, Strategy, Supervisor, SupervisorError,
    SupervisorHandle, SupervisorSpec, TokioClock,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{broadcast, mpsc, oneshot};

const EVENT_TIMEOUT_MS: u64 = 5_000;

type Log = Arc<Mutex<Vec<String>>>;

fn log_of(log: &Log) -> Vec<String> {
    log.lock().expect("log lock").clone()
}

struct Worker {
    name: String,
    stats: ActorStats,
    starts: Arc<AtomicU32>,
    /// pre_start returns Err from this start number on (1-based).
    fail_start_from: Option<u32>,
    log: Log,
}

enum WorkerMsg {
    Panic,
    Fail,
    Stop,
    Ping(RpcReplyPort<()>),
    Gate(oneshot::Receiver<()>),
}

impl ractor::Message for WorkerMsg {}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _me: ActorRef<WorkerMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        let n = self.starts.fetch_add(1, Ordering::SeqCst) + 1;
        self.log
            .lock()
            .expect("log lock")
            .push(format!("start {}", self.name));
        if self.fail_start_from.is_some_and(|k| n >= k) {
            return Err("refusing to start".into());
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<WorkerMsg>,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        self.log
            .lock()
            .expect("log lock")
            .push(format!("stop {}", self.name));
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        self.stats.record_handled();
        match msg {
            WorkerMsg::Panic => panic!("boom in {}", self.name),
            WorkerMsg::Fail => return Err(format!("{} failed on purpose", self.name).into()),
            WorkerMsg::Stop => me.stop(Some("done".to_string())),
            WorkerMsg::Ping(reply) => {
                let _ = reply.send(());
            }
            WorkerMsg::Gate(rx) => {
                let _ = rx.await;
            }
        }
        Ok(())
    }
}

/// A child plus its start counter.
struct TestChild {
    spec: ChildSpec,
    starts: Arc<AtomicU32>,
}

fn worker(id: &str, restart: RestartPolicy, log: &Log, fail_start_from: Option<u32>) -> TestChild {
    let starts = Arc::new(AtomicU32::new(0));
    let (s, l, name) = (starts.clone(), log.clone(), id.to_string());
    let spec = ChildSpec::actor(id, "worker", restart, move |ctx| {
        let handler = Worker {
            name: name.clone(),
            stats: ctx.stats.clone(),
            starts: s.clone(),
            fail_start_from,
            log: l.clone(),
        };
        (handler, ())
    });
    TestChild { spec, starts }
}

fn starts(c: &TestChild) -> u32 {
    c.starts.load(Ordering::SeqCst)
}

async fn next_event(
    rx: &mut broadcast::Receiver<DirectoryEvent>,
    what: &str,
    pred: impl Fn(&DirectoryEvent) -> bool,
) -> DirectoryEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(EVENT_TIMEOUT_MS);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(e)) if pred(&e) => return e,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("event stream broke while waiting for {what}: {e}"),
            Err(_) => panic!("no {what} event within {EVENT_TIMEOUT_MS} ms"),
        }
    }
}

fn is(path: &str, kind: fn(&EventKind) -> bool) -> impl Fn(&DirectoryEvent) -> bool {
    let path = path.to_string();
    move |e| e.path == path && kind(&e.kind)
}

fn restarted(k: &EventKind) -> bool {
    matches!(k, EventKind::Restarted { .. })
}
fn failed(k: &EventKind) -> bool {
    matches!(k, EventKind::Failed { .. })
}
fn stopped(k: &EventKind) -> bool {
    matches!(k, EventKind::Stopped { .. })
}
fn escalated(k: &EventKind) -> bool {
    matches!(k, EventKind::Escalated { .. })
}

fn send(sup: &SupervisorHandle, id: &str, msg: WorkerMsg) {
    sup.directory()
        .send(&sup.child_path(id), msg)
        .unwrap_or_else(|e| panic!("send to {id}: {e}"));
}

async fn ping(sup: &SupervisorHandle, id: &str) {
    let r = sup
        .child_ref::<WorkerMsg>(id)
        .unwrap_or_else(|| panic!("{id} is not running"));
    let res = r.call(WorkerMsg::Ping, Some(Duration::from_secs(5))).await;
    assert!(
        matches!(res, Ok(ractor::rpc::CallResult::Success(()))),
        "{id} did not answer"
    );
}

fn spec(id: &str) -> SupervisorSpec {
    SupervisorSpec::new(id).intensity(10, 10_000).backoff(0, 0)
}

fn hook_channel() -> (EscalationPolicy, mpsc::UnboundedReceiver<Escalation>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        EscalationPolicy::hook(move |e| {
            let _ = tx.send(e);
        }),
        rx,
    )
}

#[tokio::test]
async fn one_for_one_restarts_only_the_panicking_child() {
    let log = Log::default();
    let (a, b, c) = (
        worker("a", RestartPolicy::Permanent, &log, None),
        worker("b", RestartPolicy::Permanent, &log, None),
        worker("c", RestartPolicy::Permanent, &log, None),
    );
    let dir = Directory::new();
    let mut events = dir.subscribe();
    let sup = Supervisor::spawn(
        spec("root")
            .child(a.spec.clone())
            .child(b.spec.clone())
            .child(c.spec.clone()),
        dir.clone(),
    )
    .await
    .expect("spawn");
    let old_b = sup.child("b").expect("b running").get_id();
    send(&sup, "b", WorkerMsg::Panic);
    let ev = next_event(&mut events, "b failed", is("root/b", failed)).await;
    assert!(matches!(&ev.kind, EventKind::Failed { reason } if reason.contains("boom in b")));
    next_event(&mut events, "b restarted", is("root/b", restarted)).await;
    assert_eq!((starts(&a), starts(&b), starts(&c)), (1, 2, 1));
    assert_ne!(sup.child("b").expect("b running").get_id(), old_b);
    ping(&sup, "b").await;
    let snap = dir.get("root/b").expect("b listed");
    assert_eq!(snap.state, ActorState::Running);
    assert_eq!(snap.restarts, 1);
    assert!(
        snap.last_failure
            .expect("failure recorded")
            .reason
            .contains("boom in b")
    );
    assert_eq!(dir.get("root/a").expect("a listed").restarts, 0);
    sup.stop().await.expect("stop");
}

#[tokio::test]
async fn rest_for_one_restarts_the_failed_child_and_later_ones_in_order() {
    let log = Log::default();
    let [a, b, c, d] =
        ["a", "b", "c", "d"].map(|id| worker(id, RestartPolicy::Permanent, &log, None));
    let dir = Directory::new();
    let mut events = dir.subscribe();
    let sup = Supervisor::spawn(
        spec("root")
            .strategy(Strategy::RestForOne)
            .child(a.spec.clone())
            .child(b.spec.clone())
            .child(c.spec.clone())
            .child(d.spec.clone()),
        dir.clone(),
    )
    .await
    .expect("spawn");
    log.lock().expect("log lock").clear();
    send(&sup, "b", WorkerMsg::Fail);
    next_event(&mut events, "d restarted", is("root/d", restarted)).await;
    let counts = || [&a, &b, &c, &d].map(starts);
    assert_eq!(counts(), [1, 2, 2, 2]);
    // Later siblings stop gracefully in reverse start order (post_stop runs), then the
    // group starts in start order; b failed, so its post_stop does not run.
    assert_eq!(
        log_of(&log),
        vec!["stop d", "stop c", "start b", "start c", "start d"]
    );
    assert_eq!(dir.get("root/a").expect("a").restarts, 0);
    assert_eq!(dir.get("root/c").expect("c").restarts, 1);
    for id in ["a", "b", "c", "d"] {
        ping(&sup, id).await;
    }
    // The last child failing restarts only itself.
    send(&sup, "d", WorkerMsg::Panic);
    next_event(&mut events, "d restarted", is("root/d", restarted)).await;
    assert_eq!(counts(), [1, 2, 2, 3]);
    sup.stop().await.expect("stop");
}

#[tokio::test]
async fn transient_restarts_on_panic_and_kill_but_not_on_normal_exit() {
    let log = Log::default();
    let t = worker("t", RestartPolicy::Transient, &log, None);
    let dir = Directory::new();
    let mut events = dir.subscribe();
    let sup = Supervisor::spawn(spec("root").child(t.spec.clone()), dir.clone())
        .await
        .expect("spawn");
    send(&sup, "t", WorkerMsg::Panic);
    next_event(&mut events, "t restarted", is("root/t", restarted)).await;
    sup.child("t").expect("t running").kill();
    next_event(&mut events, "t restarted", is("root/t", restarted)).await;
    assert_eq!(starts(&t), 3);
    send(&sup, "t", WorkerMsg::Stop);
    let ev = next_event(&mut events, "t stopped", is("root/t", stopped)).await;
    assert_eq!(
        ev.kind,
        EventKind::Stopped {
            reason: Some("done".into())
        }
    );
    let children = sup.children().await.expect("list");
    assert_eq!(children.len(), 1);
    assert_eq!(children[0].state, ActorState::Stopped);
    assert!(sup.child("t").is_none());
    assert_eq!(
        starts(&t),
        3,
        "a transient child is not restarted after a normal exit"
    );
    sup.stop().await.expect("stop");
}

#[tokio::test]
async fn permanent_restarts_even_after_normal_exit() {
    let log = Log::default();
    let p = worker("p", RestartPolicy::Permanent, &log, None);
    let dir = Directory::new();
    let mut events = dir.subscribe();
    let sup = Supervisor::spawn(spec("root").child(p.spec.clone()), dir.clone())
        .await
        .expect("spawn");
    send(&sup, "p", WorkerMsg::Stop);
    next_event(&mut events, "p restarted", is("root/p", restarted)).await;
    assert_eq!(starts(&p), 2);
    ping(&sup, "p").await;
    sup.stop().await.expect("stop");
}

#[tokio::test]
async fn temporary_is_never_restarted_and_is_forgotten() {
    let log = Log::default();
    let (tmp, other) = (
        worker("tmp", RestartPolicy::Temporary, &log, None),
        worker("other", RestartPolicy::Permanent, &log, None),
    );
    let dir = Directory::new();
    let mut events = dir.subscribe();
    let sup = Supervisor::spawn(
        spec("root")
            .child(tmp.spec.clone())
            .child(other.spec.clone()),
        dir.clone(),
    )
    .await
    .expect("spawn");
    send(&sup, "tmp", WorkerMsg::Panic);
    next_event(&mut events, "tmp failed", is("root/tmp", failed)).await;
    let children = sup.children().await.expect("list");
    assert_eq!(
        children.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        vec!["other"]
    );
    assert!(dir.get("root/tmp").is_none());
    assert_eq!((starts(&tmp), starts(&other)), (1, 1));
    sup.stop().await.expect("stop");
}

#[tokio::test]
async fn escalation_hook_fires_exactly_when_intensity_is_exceeded() {
    let log = Log::default();
    let (v, w) = (
        worker("vm:100", RestartPolicy::Permanent, &log, None),
        worker("vm:101", RestartPolicy::Permanent, &log, None),
    );
    let (policy, mut escalations) = hook_channel();
    let dir = Directory::new();
    let mut events = dir.subscribe();
    let sup = Supervisor::spawn(
        SupervisorSpec::new("node:n1")
            .kind("node")
            .intensity(2, 60_000)
            .backoff(0, 0)
            .escalation(policy)
            .child(v.spec.clone())
            .child(w.spec.clone()),
        dir.clone(),
    )
    .await
    .expect("spawn");
    for round in 1..=2 {
        send(&sup, "vm:100", WorkerMsg::Panic);
        next_event(&mut events, "vm restarted", is("node:n1/vm:100", restarted)).await;
        assert!(
            escalations.try_recv().is_err(),
            "escalated after {round} failures"
        );
    }
    send(&sup, "vm:100", WorkerMsg::Panic);
    let ev = next_event(&mut events, "escalated", is("node:n1/vm:100", escalated)).await;
    assert!(matches!(
        ev.kind,
        EventKind::Escalated {
            restarts_in_window: 2,
            ..
        }
    ));
    let esc = tokio::time::timeout(Duration::from_secs(5), escalations.recv())
        .await
        .expect("escalation in time")
        .expect("escalation delivered");
    assert_eq!(
        (
            esc.supervisor.as_str(),
            esc.child.as_str(),
            esc.child_path.as_str(),
            esc.restarts
        ),
        ("node:n1", "vm:100", "node:n1/vm:100", 2)
    );
    assert!(esc.reason.contains("boom in vm:100"));
    assert!(escalations.try_recv().is_err(), "exactly one escalation");
    assert_eq!(starts(&v), 3);
    // The supervisor gave up on vm:100 only; vm:101 is untouched and it keeps serving.
    assert_eq!(
        dir.get("node:n1/vm:100").expect("listed").state,
        ActorState::Failed
    );
    ping(&sup, "vm:101").await;
    sup.add_child(worker("vm:102", RestartPolicy::Permanent, &log, None).spec)
        .await
        .expect("still accepts children");
    sup.stop().await.expect("stop");
}

/// Time that moves only when the test says so; sleeps return at once.
#[derive(Debug, Default)]
struct ManualClock {
    now_ms: AtomicU64,
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
    fn sleep(&self, _duration_ms: u64) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

#[tokio::test]
async fn restarts_outside_the_window_do_not_count() {
    let log = Log::default();
    let v = worker("v", RestartPolicy::Permanent, &log, None);
    let (policy, mut escalations) = hook_channel();
    let clock = Arc::new(ManualClock::default());
    let dir = Directory::with_clock(clock.clone());
    let mut events = dir.subscribe();
    let sup = Supervisor::spawn(
        SupervisorSpec::new("root")
            .intensity(1, 100)
            .backoff(10, 10)
            .escalation(policy)
            .child(v.spec.clone()),
        dir.clone(),
    )
    .await
    .expect("spawn");
    for _ in 0..3 {
        send(&sup, "v", WorkerMsg::Panic);
        next_event(&mut events, "v restarted", is("root/v", restarted)).await;
        // The single allowed restart leaves the 100 ms window.
        clock.now_ms.fetch_add(101, Ordering::SeqCst);
    }
    assert!(escalations.try_recv().is_err());
    assert_eq!(starts(&v), 4);
    // Two failures within the window: the second escalates.
    send(&sup, "v", WorkerMsg::Panic);
    next_event(&mut events, "v restarted", is("root/v", restarted)).await;
    send(&sup, "v", WorkerMsg::Panic);
    next_event(&mut events, "v escalated", is("root/v", escalated)).await;
    assert_eq!(escalations.try_recv().expect("escalated").restarts, 1);
    sup.stop().await.expect("stop");
}

#[tokio::test]
async fn default_escalation_fails_the_supervisor_upward() {
    let log = Log::default();
    let vm = worker("vm:100", RestartPolicy::Permanent, &log, None);
    let (root_policy, mut root_escalations) = hook_channel();
    let dir = Directory::new();
    let mut events = dir.subscribe();
    let node = SupervisorSpec::new("node:n1")
        .kind("node")
        .intensity(1, 60_000)
        .backoff(0, 0)
        .child(vm.spec.clone());
    let root = Supervisor::spawn(
        spec("agent")
            .escalation(root_policy)
            .child(ChildSpec::supervisor(RestartPolicy::Permanent, node)),
        dir.clone(),
    )
    .await
    .expect("spawn");
    let node_cell = root.child("node:n1").expect("node running").get_id();
    send(&root, "node:n1/vm:100", WorkerMsg::Panic);
    next_event(
        &mut events,
        "vm restarted",
        is("agent/node:n1/vm:100", restarted),
    )
    .await;
    send(&root, "node:n1/vm:100", WorkerMsg::Panic);
    next_event(
        &mut events,
        "vm escalated",
        is("agent/node:n1/vm:100", escalated),
    )
    .await;
    let ev = next_event(&mut events, "node failed", is("agent/node:n1", failed)).await;
    assert!(
        matches!(&ev.kind, EventKind::Failed { reason } if reason.contains("restarts within the intensity window")),
        "{ev:?}"
    );
    next_event(
        &mut events,
        "node restarted",
        is("agent/node:n1", restarted),
    )
    .await;
    // The restarted node supervisor started its children afresh.
    assert_ne!(
        root.child("node:n1").expect("node running").get_id(),
        node_cell
    );
    assert_eq!(starts(&vm), 3);
    ping(&root, "node:n1/vm:100").await;
    assert_eq!(dir.get("agent/node:n1").expect("node listed").restarts, 1);
    assert!(
        root_escalations.try_recv().is_err(),
        "the root itself did not give up"
    );
    // The restarted node supervisor is found again through the directory.
    let node = root.child_supervisor("node:n1").expect("node supervisor");
    node.add_child(worker("vm:101", RestartPolicy::Transient, &log, None).spec)
        .await
        .expect("add to nested supervisor");
    ping(&root, "node:n1/vm:101").await;
    assert!(
        root.child_supervisor("node:n1/vm:101").is_none(),
        "a worker is no supervisor"
    );
    root.stop().await.expect("stop");
    assert!(dir.snapshot().is_empty(), "{:?}", dir.snapshot());
}

#[tokio::test]
async fn a_root_that_escalates_fails_and_reports_it() {
    let log = Log::default();
    let v = worker("v", RestartPolicy::Permanent, &log, None);
    let other = worker("other", RestartPolicy::Permanent, &log, None);
    let dir = Directory::new();
    let mut events = dir.subscribe();
    let root = Supervisor::spawn(
        SupervisorSpec::new("root")
            .intensity(0, 60_000)
            .child(other.spec.clone())
            .child(v.spec.clone()),
        dir.clone(),
    )
    .await
    .expect("spawn");
    send(&root, "v", WorkerMsg::Panic);
    next_event(&mut events, "root failed", is("root", failed)).await;
    assert!(root.wait_exit(EVENT_TIMEOUT_MS).await);
    assert_eq!(
        dir.get("root").expect("root listed").state,
        ActorState::Failed
    );
    // Its remaining child was stopped gracefully before it failed.
    assert!(log_of(&log).contains(&"stop other".to_string()));
    assert!(
        root.add_child(worker("x", RestartPolicy::Permanent, &log, None).spec)
            .await
            .is_err()
    );
}

/// Records the backoff delays it is asked to sleep, and sleeps 1 ms instead.
#[derive(Debug)]
struct RecordingClock {
    inner: TokioClock,
    sleeps_ms: Mutex<Vec<u64>>,
}

impl Clock for RecordingClock {
    fn now_ms(&self) -> u64 {
        self.inner.now_ms()
    }
    fn sleep(&self, duration_ms: u64) -> BoxFuture<'static, ()> {
        self.sleeps_ms.lock().expect("lock").push(duration_ms);
        self.inner.sleep(1)
    }
}

#[tokio::test]
async fn backoff_doubles_up_to_its_bound_through_the_clock_seam() {
    let log = Log::default();
    let v = worker("v", RestartPolicy::Permanent, &log, None);
    let clock = Arc::new(RecordingClock {
        inner: TokioClock::new(),
        sleeps_ms: Mutex::default(),
    });
    let dir = Directory::with_clock(clock.clone());
    let mut events = dir.subscribe();
    let sup = Supervisor::spawn(
        SupervisorSpec::new("root")
            .intensity(10, 60_000)
            .backoff(50, 150)
            .child(v.spec.clone()),
        dir.clone(),
    )
    .await
    .expect("spawn");
    for _ in 0..4 {
        send(&sup, "v", WorkerMsg::Panic);
        next_event(&mut events, "v restarted", is("root/v", restarted)).await;
    }
    assert_eq!(
        *clock.sleeps_ms.lock().expect("lock"),
        vec![50, 100, 150, 150]
    );
    sup.stop().await.expect("stop");
}

#[tokio::test]
async fn backoff_really_delays_the_restart() {
    let log = Log::default();
    let v = worker("v", RestartPolicy::Permanent, &log, None);
    let dir = Directory::new();
    let mut events = dir.subscribe();
    let sup = Supervisor::spawn(
        SupervisorSpec::new("root")
            .intensity(10, 60_000)
            .backoff(60, 1_000)
            .child(v.spec.clone()),
        dir.clone(),
    )
    .await
    .expect("spawn");
    for expected_ms in [60, 120] {
        send(&sup, "v", WorkerMsg::Panic);
        let f = next_event(&mut events, "v failed", is("root/v", failed)).await;
        assert_eq!(dir.get("root/v").expect("v").state, ActorState::Restarting);
        let r = next_event(&mut events, "v restarted", is("root/v", restarted)).await;
        assert!(
            r.at_ms - f.at_ms >= expected_ms,
            "restart after {} ms",
            r.at_ms - f.at_ms
        );
    }
    sup.stop().await.expect("stop");
}

#[tokio::test]
async fn pre_start_errors_are_start_failures_and_count_toward_intensity() {
    let log = Log::default();
    let dir = Directory::new();
    let mut events = dir.subscribe();
    // Starts once, then refuses to start again.
    let flaky = worker("flaky", RestartPolicy::Permanent, &log, Some(2));
    let (policy, mut escalations) = hook_channel();
    let sup = Supervisor::spawn(
        SupervisorSpec::new("root")
            .intensity(3, 60_000)
            .backoff(0, 0)
            .escalation(policy)
            .child(flaky.spec.clone()),
        dir.clone(),
    )
    .await
    .expect("spawn");

    // add_child with a child whose pre_start fails: an error, and nothing is kept.
    let broken = worker("broken", RestartPolicy::Permanent, &log, Some(1));
    let err = sup
        .add_child(broken.spec.clone())
        .await
        .expect_err("start fails");
    assert!(
        matches!(&err, SupervisorError::ChildStart { path, .. } if path == "root/broken"),
        "{err}"
    );
    assert!(dir.get("root/broken").is_none());
    assert_eq!(sup.children().await.expect("list").len(), 1);

    // A crash whose restarts fail in pre_start: each failed start is one restart, then
    // the escalation carries the start error.
    send(&sup, "flaky", WorkerMsg::Panic);
    let esc = tokio::time::timeout(Duration::from_secs(5), escalations.recv())
        .await
        .expect("escalation in time")
        .expect("escalation delivered");
    assert_eq!(esc.restarts, 3);
    assert!(esc.reason.contains("refusing to start"), "{}", esc.reason);
    assert_eq!(starts(&flaky), 4);
    let e = next_event(&mut events, "flaky escalated", is("root/flaky", escalated)).await;
    assert!(matches!(
        e.kind,
        EventKind::Escalated {
            restarts_in_window: 3,
            ..
        }
    ));
    sup.stop().await.expect("stop");
}

#[tokio::test]
async fn a_failing_initial_child_fails_the_spawn_and_stops_the_started_ones() {
    let log = Log::default();
    let dir = Directory::new();
    let ok = worker("ok", RestartPolicy::Permanent, &log, None);
    let bad = worker("bad", RestartPolicy::Permanent, &log, Some(1));
    let err = Supervisor::spawn(
        spec("root").child(ok.spec.clone()).child(bad.spec.clone()),
        dir.clone(),
    )
    .await
    .expect_err("spawn fails");
    assert!(matches!(err, SupervisorError::Spawn { .. }));
    let text = error_chain(&err);
    assert!(
        text.contains("root/bad") && text.contains("refusing to start"),
        "{text}"
    );
    assert_eq!(log_of(&log), vec!["start ok", "start bad", "stop ok"]);
    assert!(dir.snapshot().is_empty());
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut src = err.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[tokio::test]
async fn children_are_added_and_removed_dynamically() {
    let log = Log::default();
    let dir = Directory::new();
    let node = Supervisor::spawn(SupervisorSpec::new("node:n1").kind("node"), dir.clone())
        .await
        .expect("spawn");
    for vmid in [100, 101] {
        node.add_child(worker(&format!("vm:{vmid}"), RestartPolicy::Transient, &log, None).spec)
            .await
            .expect("add");
    }
    let dup = node
        .add_child(worker("vm:100", RestartPolicy::Transient, &log, None).spec)
        .await;
    assert!(matches!(dup, Err(SupervisorError::DuplicateChild { .. })));
    let bad = node
        .add_child(worker("a/b", RestartPolicy::Transient, &log, None).spec)
        .await;
    assert!(matches!(bad, Err(SupervisorError::InvalidChildId { .. })));
    let ids: Vec<_> = node
        .children()
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.path)
        .collect();
    assert_eq!(ids, vec!["node:n1/vm:100", "node:n1/vm:101"]);
    ping(&node, "vm:100").await;

    node.remove_child("vm:100").await.expect("remove");
    assert!(
        log_of(&log).contains(&"stop vm:100".to_string()),
        "removal stops gracefully"
    );
    assert!(node.child("vm:100").is_none());
    assert!(dir.get("node:n1/vm:100").is_none());
    let unknown = node.remove_child("vm:100").await;
    assert!(matches!(unknown, Err(SupervisorError::UnknownChild { .. })));
    let ids: Vec<_> = node
        .children()
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, vec!["vm:101"]);
    node.stop().await.expect("stop");
}

#[tokio::test]
async fn stop_stops_children_in_reverse_start_order() {
    let log = Log::default();
    let dir = Directory::new();
    let sup = Supervisor::spawn(
        spec("root")
            .child(worker("a", RestartPolicy::Permanent, &log, None).spec)
            .child(worker("b", RestartPolicy::Permanent, &log, None).spec)
            .child(worker("c", RestartPolicy::Permanent, &log, None).spec),
        dir.clone(),
    )
    .await
    .expect("spawn");
    sup.stop().await.expect("stop");
    let stops: Vec<_> = log_of(&log)
        .into_iter()
        .filter(|l| l.starts_with("stop"))
        .collect();
    assert_eq!(stops, vec!["stop c", "stop b", "stop a"]);
    assert!(dir.snapshot().is_empty());
}

#[tokio::test]
async fn a_child_spawned_unlinked_is_refused() {
    let dir = Directory::new();
    let sup = Supervisor::spawn(spec("root"), dir.clone())
        .await
        .expect("spawn");
    let log = Log::default();
    let l = log.clone();
    let unlinked = ChildSpec::new("loose", "worker", RestartPolicy::Permanent, move |ctx| {
        let handler = Worker {
            name: "loose".into(),
            stats: ctx.stats.clone(),
            starts: Arc::default(),
            fail_start_from: None,
            log: l.clone(),
        };
        async move { Ok(Actor::spawn(None, handler, ()).await?.0.get_cell()) }
    });
    let err = sup.add_child(unlinked).await;
    assert!(
        matches!(err, Err(SupervisorError::ChildNotLinked { .. })),
        "{err:?}"
    );
    assert!(dir.get("root/loose").is_none());
    sup.stop().await.expect("stop");
}

#[tokio::test]
async fn directory_reports_messages_mailbox_depth_and_serializes() {
    let log = Log::default();
    let dir = Directory::new();
    let sup = Supervisor::spawn(
        SupervisorSpec::new("node:n1")
            .kind("node")
            .child(worker("vm:100", RestartPolicy::Permanent, &log, None).spec),
        dir.clone(),
    )
    .await
    .expect("spawn");
    let (open, gate) = oneshot::channel();
    send(&sup, "vm:100", WorkerMsg::Gate(gate));
    let (tx1, _rx1) = oneshot::channel();
    let (tx2, _rx2) = oneshot::channel();
    send(&sup, "vm:100", WorkerMsg::Ping(tx1.into()));
    send(&sup, "vm:100", WorkerMsg::Ping(tx2.into()));
    // The gate may not have been taken yet: depth is 2 or 3, never less.
    let snap = dir.get("node:n1/vm:100").expect("listed");
    assert!(snap.mailbox_depth >= 2, "{snap:?}");
    let _ = open.send(());
    ping(&sup, "vm:100").await;
    let snap = dir.get("node:n1/vm:100").expect("listed");
    assert_eq!((snap.messages_handled, snap.mailbox_depth), (4, 0));
    assert_eq!(snap.parent.as_deref(), Some("node:n1"));
    assert_eq!(snap.kind, "worker");
    assert!(snap.started_at_ms.is_some());

    sup.children().await.expect("list");
    let node = dir.get("node:n1").expect("node listed");
    assert_eq!(node.messages_handled, 1);

    let json = serde_json::to_value(dir.snapshot_tree()).expect("serializes");
    assert_eq!(json[0]["path"], "node:n1");
    assert_eq!(json[0]["state"], "running");
    assert_eq!(json[0]["children"][0]["id"], "vm:100");
    assert_eq!(json[0]["children"][0]["messages_handled"], 4);
    let wrong = dir.send("node:n1/vm:100", 42u32);
    assert!(matches!(
        wrong,
        Err(gpve_supervisor::DirectorySendError::WrongMessageType { .. })
    ));
    sup.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_children_failing_at_once_each_restart_once() {
    const CHILDREN: usize = 32;
    let log = Log::default();
    let kids: Vec<_> = (0..CHILDREN)
        .map(|i| worker(&format!("vm:{i}"), RestartPolicy::Permanent, &log, None))
        .collect();
    let dir = Directory::new();
    let mut events = dir.subscribe();
    let mut s = spec("node:n1");
    for k in &kids {
        s = s.child(k.spec.clone());
    }
    let sup = Supervisor::spawn(s, dir.clone()).await.expect("spawn");
    for i in 0..CHILDREN {
        send(&sup, &format!("vm:{i}"), WorkerMsg::Panic);
    }
    let mut restarted_paths = std::collections::BTreeSet::new();
    while restarted_paths.len() < CHILDREN {
        let e = next_event(&mut events, "restart", |e| restarted(&e.kind)).await;
        restarted_paths.insert(e.path);
    }
    assert!(kids.iter().all(|k| starts(k) == 2));
    for i in 0..CHILDREN {
        ping(&sup, &format!("vm:{i}")).await;
    }
    sup.stop().await.expect("stop");
}

#[tokio::test]
async fn requested_restarts_do_not_count_toward_intensity_and_touch_no_sibling() {
    let log = Log::default();
    let [a, b, c] = ["a", "b", "c"].map(|id| worker(id, RestartPolicy::Permanent, &log, None));
    let (policy, mut escalations) = hook_channel();
    let dir = Directory::new();
    let sup = Supervisor::spawn(
        SupervisorSpec::new("root")
            .strategy(Strategy::RestForOne)
            .intensity(1, 60_000)
            .backoff(0, 0)
            .escalation(policy)
            .child(a.spec.clone())
            .child(b.spec.clone())
            .child(c.spec.clone()),
        dir.clone(),
    )
    .await
    .expect("spawn");
    for round in 1..=3u64 {
        let old = sup.child("b").expect("b running").get_id();
        sup.restart_child("b", "operator asked")
            .await
            .expect("requested restart");
        assert_ne!(sup.child("b").expect("b running").get_id(), old);
        let snap = dir.get("root/b").expect("b listed");
        assert_eq!(
            (snap.state, snap.restarts),
            (ActorState::Running, round),
            "round {round}"
        );
        ping(&sup, "b").await;
    }
    assert_eq!((starts(&a), starts(&b), starts(&c)), (1, 4, 1));
    assert_eq!(
        log_of(&log).iter().filter(|l| *l == "stop b").count(),
        3,
        "each requested restart stops the old incarnation gracefully"
    );
    // Three requested restarts left the intensity (1 in 60 s) untouched: one real
    // failure is still restarted, the second escalates.
    let mut events = dir.subscribe();
    send(&sup, "b", WorkerMsg::Panic);
    next_event(&mut events, "b restarted", is("root/b", restarted)).await;
    assert!(escalations.try_recv().is_err(), "escalated too early");
    send(&sup, "b", WorkerMsg::Panic);
    next_event(&mut events, "b escalated", is("root/b", escalated)).await;
    let err = sup
        .restart_child("b", "operator asked")
        .await
        .expect_err("b is failed");
    assert!(
        matches!(&err, SupervisorError::NotRunning { path, .. } if path == "root/b"),
        "{err}"
    );
    let err = sup.restart_child("nope", "x").await.expect_err("unknown");
    assert!(matches!(err, SupervisorError::UnknownChild { .. }), "{err}");
    sup.stop().await.expect("stop");
}
