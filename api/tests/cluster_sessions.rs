//! The cluster's supervision plane (issue 6, build item 2): the real server and a real
//! agent (`n1`, in its own network namespace; tests/cluster_common) joined by a node
//! session, `ractor_cluster` over mutual TLS. Everything goes through the SERVER's
//! `/api/v1/actors`, which asks n1 over that session (not over the forwarded HTTP API).
//!
//! Proves: the listing covers the server and n1; n1's tree holds `vm:{vmid}` of a VM
//! created on n1, under its qemu supervisor; a remote restart goes through n1's supervisor
//! (its restart count grows); gpvectl's actor commands take `--node`; a partitioned n1 is
//! listed with an error within the call timeout and a call for n1 alone gets 595; after
//! healing, n1 answers again; a killed agent gets 595 and, restarted, answers through its
//! new session. `bench_remote_tree` (ignored) measures a remote tree read.

// The harness also exports the test guest, which this test does not boot.
#[allow(unused_imports)]
mod cluster_common;
#[path = "gpvectl_common/mod.rs"]
mod gpvectl_common;

use std::time::{Duration, Instant};

use cluster_common::{Api, Cluster, ROOT_PW, SERVER_NODE};
use gpvectl_common::{ctl, login_root, ok};
use serde_json::Value;

/// How long the agent may take to open its session after it shows online.
const SESSION_TIMEOUT_MS: u64 = 30_000;
/// Remote tree reads timed for the latency figure.
const LATENCY_SAMPLES: usize = 200;

fn v1(c: &Cluster) -> Api {
    Api {
        base: c.api.base.replace("/api2/json", "/api/v1"),
        ..c.api.clone()
    }
}

fn node_entry<'a>(list: &'a Value, node: &str) -> &'a Value {
    list["data"]["nodes"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["node"] == node))
        .unwrap_or(&Value::Null)
}

/// Every actor of a node entry, depth first.
fn actors(entry: &Value) -> Vec<Value> {
    fn walk(t: &Value, out: &mut Vec<Value>) {
        let mut a = t.clone();
        if let Some(o) = a.as_object_mut() {
            o.remove("children");
        }
        out.push(a);
        for c in t["children"].as_array().into_iter().flatten() {
            walk(c, out);
        }
    }
    let mut out = Vec::new();
    for r in entry["roots"].as_array().into_iter().flatten() {
        walk(r, &mut out);
    }
    out
}

/// Poll until `GET /api/v1/actors?node=n1` answers 200.
async fn wait_session(c: &Cluster, api: &Api, node: &str) -> Value {
    let deadline = Instant::now() + Duration::from_millis(SESSION_TIMEOUT_MS);
    loop {
        let (code, body) = api.get(&format!("/actors?node={node}")).await;
        if code == 200 {
            return body;
        }
        if Instant::now() > deadline {
            c.dump_logs();
            panic!("no session to {node}: {code} {body}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The server, agent n1 with VM `vmid` (not started: its actor exists for the record),
/// and the path of `vm:{vmid}` in n1's tree as the server lists it over the session;
/// `None` where namespaces are not available.
async fn cluster_with_vm(vmid: u32) -> Option<(Cluster, Api, String)> {
    let c = Cluster::start(&["n1"]).await?;
    let api = v1(&c);
    c.task_ok(
        "/nodes/n1/qemu",
        &[
            ("vmid", &vmid.to_string()),
            ("name", &format!("sess{vmid}")),
            ("memory", "128"),
            ("kvm", "0"),
        ],
    )
    .await;

    // n1's tree over the session, with vm:{vmid} under its qemu supervisor.
    let vm_path = {
        let deadline = Instant::now() + Duration::from_millis(SESSION_TIMEOUT_MS);
        loop {
            let body = wait_session(&c, &api, "n1").await;
            let entry = node_entry(&body, "n1");
            assert!(entry["error"].is_null(), "{entry}");
            let all = actors(entry);
            assert!(all.iter().all(|a| a["node"] == "n1"), "{entry}");
            if let Some(vm) = all.iter().find(|a| a["id"] == format!("vm:{vmid}")) {
                let parent = vm["parent"].as_str().expect("parent").to_string();
                let sup = all
                    .iter()
                    .find(|a| a["path"] == parent.as_str())
                    .expect("the parent is listed");
                assert_eq!(sup["id"], "qemu", "vm:{vmid} is under the qemu supervisor");
                break vm["path"].as_str().expect("path").to_string();
            }
            if Instant::now() > deadline {
                c.dump_logs();
                panic!("vm:{vmid} not in n1's tree: {entry}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    Some((c, api, vm_path))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_server_inspects_and_restarts_an_agents_actors_over_its_session() {
    let vmid = 301;
    let Some((mut c, api, vm_path)) = cluster_with_vm(vmid).await else {
        return;
    };

    // The full listing covers the server's own node and n1.
    let (code, list) = api.get("/actors").await;
    assert_eq!(code, 200, "{list}");
    assert!(
        node_entry(&list, SERVER_NODE)["count"].as_u64() > Some(0),
        "{list}"
    );
    assert!(
        node_entry(&list, "n1")["count"].as_u64() > Some(0),
        "{list}"
    );
    assert!(node_entry(&list, "n1")["error"].is_null(), "{list}");
    // The server's own tree has the session actor next to cluster.
    assert!(
        actors(node_entry(&list, SERVER_NODE))
            .iter()
            .any(|a| a["path"] == "gpve-server/session"),
        "{list}"
    );

    // Detail and restart of the remote actor.
    let (code, d) = api.get(&format!("/actors/{vm_path}?node=n1")).await;
    assert_eq!(code, 200, "{d}");
    let before = d["data"]["restarts"].as_u64().expect("restarts");
    let (code, r) = api
        .post(&format!("/actors/{vm_path}/restart?node=n1"), &[])
        .await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["data"]["restarts_before"].as_u64(), Some(before), "{r}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, d) = api.get(&format!("/actors/{vm_path}?node=n1")).await;
        assert_eq!(code, 200, "{d}");
        if d["data"]["restarts"].as_u64() > Some(before) && d["data"]["state"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "the restart does not show: {d}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The same path on the server's node is another actor: a missing one is 404 there.
    let (code, _) = api.get(&format!("/actors/{vm_path}")).await;
    assert_eq!(code, 404, "vm:{vmid} does not run on the server's node");
    // A node that is not a member is 404.
    let (code, _) = api.get("/actors?node=nosuch").await;
    assert_eq!(code, 404);

    // gpvectl's actor commands reach n1 with --node.
    let url = format!("https://{}:{}", c.server_ip, cluster_common::API_PORT);
    let fp = gpve_api::client::Fingerprint::of_pem_file(&c.dir.path().join("server/cert.pem"))
        .expect("fingerprint");
    let config = c.dir.path().join("gpvectl.yaml");
    login_root(&config, &url, &fp.to_string(), ROOT_PW);
    let tree = ok(&ctl(&config, &["actors", "tree", "--node", "n1"], ""));
    assert!(tree.contains(&format!("vm:{vmid}")), "{tree}");
    let described = ok(&ctl(
        &config,
        &["actors", "describe", &vm_path, "--node", "n1"],
        "",
    ));
    assert!(described.contains("n1"), "{described}");
    let restarted = ok(&ctl(
        &config,
        &["actors", "restart", &vm_path, "--node", "n1"],
        "",
    ));
    assert!(restarted.contains("restart"), "{restarted}");

    // Partition n1: the listing marks it unreachable within the call timeout; a call for
    // n1 alone gets 595.
    c.partition("n1");
    let started = Instant::now();
    let (code, list) = api.get("/actors").await;
    let took = started.elapsed();
    assert_eq!(code, 200, "{list}");
    let n1 = node_entry(&list, "n1");
    assert!(n1["error"].is_string(), "n1 is marked unreachable: {n1}");
    assert!(
        took < Duration::from_millis(gpve_api::v1::actors::remote::READ_TIMEOUT_MS + 2_000),
        "the listing took {took:?}"
    );
    assert!(node_entry(&list, SERVER_NODE)["count"].as_u64() > Some(0));
    let (code, body) = api.get("/actors?node=n1").await;
    assert_eq!(code, 595, "{body}");
    let (code, body) = api.get(&format!("/actors/{vm_path}?node=n1")).await;
    assert_eq!(code, 595, "{body}");
    println!("partitioned n1 listed as unreachable after {took:?}");

    // Heal: n1 answers again.
    c.heal("n1");
    let healed = Instant::now();
    let body = wait_session(&c, &api, "n1").await;
    assert!(
        actors(node_entry(&body, "n1"))
            .iter()
            .any(|a| a["id"] == format!("vm:{vmid}")),
        "{body}"
    );
    println!("n1 answered again {:?} after healing", healed.elapsed());

    // kill -9 and restart the agent: its new session replaces the dead one on the server.
    c.kill9("n1");
    let (code, body) = api.get("/actors?node=n1").await;
    assert_eq!(code, 595, "a killed agent is unreachable: {body}");
    c.restart("n1");
    let restarted = Instant::now();
    let body = wait_session(&c, &api, "n1").await;
    let fresh = actors(node_entry(&body, "n1"));
    assert!(
        fresh.iter().any(|a| a["id"] == format!("vm:{vmid}")),
        "{body}"
    );
    println!(
        "a restarted n1 answered {:?} after its start",
        restarted.elapsed()
    );
}

/// Latency of a remote tree read (server API → session → n1's directory and back):
/// `cargo test -p gpve-api --test cluster_sessions bench_remote_tree -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark"]
async fn bench_remote_tree() {
    let Some((_c, api, _)) = cluster_with_vm(302).await else {
        return;
    };
    // Alternating with the server's own node, so both see the same machine load.
    let mut remote = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    let mut local = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    for _ in 0..LATENCY_SAMPLES {
        for (node, hist) in [("n1", &mut remote), (SERVER_NODE, &mut local)] {
            let t = Instant::now();
            let (code, body) = api.get(&format!("/actors?node={node}")).await;
            assert_eq!(code, 200, "{body}");
            hist.record(t.elapsed().as_micros() as u64).expect("record");
        }
    }
    for (what, hist) in [
        ("n1 over its session", &remote),
        ("the server's own node", &local),
    ] {
        println!(
            "GET /api/v1/actors?node= of {what}, {LATENCY_SAMPLES} calls: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            hist.value_at_quantile(0.5) as f64 / 1000.0,
            hist.value_at_quantile(0.99) as f64 / 1000.0,
            hist.max() as f64 / 1000.0
        );
    }
}
