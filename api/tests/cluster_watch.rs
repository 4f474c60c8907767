//! The watch stream in a real cluster (tests/cluster_common: a server and an agent in its
//! own network namespace): the agent's writes reach the server's store through the remote
//! store service (`commit_checked`), so a VM created and started on the agent, and its
//! tasks, show up in a watch on the server; the agent's node goes offline in the stream
//! when it is killed (its lease expires, which the server notices by the clock).

mod cluster_common;

use std::time::Duration;

use cluster_common::{API_PORT, Cluster, ROOT_PW, guest, guest_args};
use futures::StreamExt;
use gpve_api::client::watch::WatchKind;
use gpve_api::client::watch::{WatchAction, WatchEvent, WatchOptions, WatchStream};
use gpve_api::client::{Client, Fingerprint};

const EVENT_TIMEOUT_MS: u64 = 120_000;

async fn until(stream: &mut WatchStream, done: impl Fn(&WatchEvent) -> bool) -> Vec<WatchEvent> {
    let mut seen = Vec::new();
    loop {
        let e = tokio::time::timeout(Duration::from_millis(EVENT_TIMEOUT_MS), stream.next())
            .await
            .unwrap_or_else(|_| panic!("no matching event in time; saw {seen:#?}"))
            .expect("the stream is open")
            .expect("an event");
        let stop = done(&e);
        seen.push(e);
        if stop {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_watch_sees_an_agents_vm_tasks_and_liveness() {
    let g = guest().await;
    let Some(mut c) = Cluster::start(&["n1"]).await else {
        return;
    };
    let fp = Fingerprint::of_pem_file(&c.dir.path().join("server").join("cert.pem"))
        .expect("server certificate");
    let client = Client::builder(format!("https://{}:{API_PORT}", c.server_ip))
        .fingerprint(fp)
        .build()
        .expect("client");
    client.login("root@pam", ROOT_PW).await.expect("login");
    let mut w = client
        .watch(&WatchOptions::default().initial())
        .await
        .expect("watch");
    let initial = until(&mut w, |e| e.action == WatchAction::Synced).await;
    assert!(
        initial
            .iter()
            .any(|e| e.kind == Some(WatchKind::Node) && e.id == "n1" && e.status == "online"),
        "{initial:#?}"
    );

    c.task_ok(
        "/nodes/n1/qemu",
        &[
            ("vmid", "301"),
            ("name", "agentvm"),
            ("memory", "128"),
            ("cores", "1"),
            ("kvm", "0"),
            ("serial0", "socket"),
            ("args", &guest_args(&g)),
        ],
    )
    .await;
    c.task_ok("/nodes/n1/qemu/301/status/start", &[]).await;
    let seen = until(&mut w, |e| {
        e.kind == Some(WatchKind::Vm) && e.id == "301" && e.status == "running"
    })
    .await;
    assert!(
        seen.iter().any(|e| e.kind == Some(WatchKind::Vm)
            && e.action == WatchAction::Added
            && e.node == "n1"),
        "{seen:#?}"
    );
    let start_task = seen
        .iter()
        .find(|e| e.kind == Some(WatchKind::Task) && e.data["type"] == "qmstart")
        .expect("the agent's start task in the stream");
    assert_eq!(start_task.node, "n1");

    // The agent dies: its lease runs out and the stream says so.
    c.kill9("n1");
    until(&mut w, |e| {
        e.kind == Some(WatchKind::Node) && e.id == "n1" && e.status == "offline"
    })
    .await;
}
