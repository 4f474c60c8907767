//! Agents run VMs (issue 6): a real server and two real agents (`n1`, `n2`), each agent in
//! its own network namespace (tests/cluster_common). Everything goes through the SERVER's
//! Proxmox API, which forwards `/nodes/{n}/...` to the agent over mutual TLS; the agents
//! run their node trees against the server's store over gRPC.
//!
//! Proves: VMs created, started, stopped and deleted on either agent through the server;
//! the QEMU process exists in that agent's namespace and nowhere else; /cluster/resources
//! shows both; kill -9 of an agent leaves its QEMU running, the node goes offline and its
//! VM operations get 595; after a restart the agent re-adopts the QEMU and reports it
//! running; gpvectl against the server drives a remote VM; a partitioned node is offline
//! (595) until healed. `bench_forwarded_status` (ignored) measures forwarding latency.

mod cluster_common;
#[path = "gpvectl_common/mod.rs"]
mod gpvectl_common;

use std::time::{Duration, Instant};

use cluster_common::{Cluster, ROOT_PW, guest, guest_args};
use gpvectl_common::{ctl, login_root, ok};
use serde_json::Value;

async fn create_vm(c: &Cluster, node: &str, vmid: u32, args: &str) {
    c.task_ok(
        &format!("/nodes/{node}/qemu"),
        &[
            ("vmid", &vmid.to_string()),
            ("name", &format!("vm{vmid}")),
            ("memory", "128"),
            ("cores", "1"),
            ("kvm", "0"),
            ("scsi0", "local:1,format=qcow2"),
            ("serial0", "socket"),
            ("args", args),
        ],
    )
    .await;
}

async fn status(c: &Cluster, node: &str, vmid: u32) -> (u16, Value) {
    c.api
        .get(&format!("/nodes/{node}/qemu/{vmid}/status/current"))
        .await
}

async fn wait_status(c: &Cluster, node: &str, vmid: u32, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = status(c, node, vmid).await;
        if code == 200 && body["data"]["status"] == want {
            return;
        }
        if Instant::now() > deadline {
            c.dump_logs();
            panic!("VM {vmid} on {node} not {want}: {code} {body}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn resources_vm(list: &Value, vmid: u32) -> Value {
    list["data"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["vmid"] == vmid))
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_run_vms_through_the_server() {
    let g = guest().await;
    let args = guest_args(&g);
    let Some(mut c) = Cluster::start(&["n1", "n2"]).await else {
        return;
    };

    // Create and start one VM per agent, through the server.
    create_vm(&c, "n1", 201, &args).await;
    create_vm(&c, "n2", 202, &args).await;
    let (code, list) = c.api.get("/nodes/n2/qemu").await;
    assert_eq!(code, 200, "{list}");
    let vmids: Vec<u64> = list["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|v| v["vmid"].as_u64())
        .collect();
    assert_eq!(vmids, vec![202], "n2 lists only its own VM: {list}");
    c.task_ok("/nodes/n1/qemu/201/status/start", &[]).await;
    c.task_ok("/nodes/n2/qemu/202/status/start", &[]).await;
    wait_status(&c, "n1", 201, "running").await;
    wait_status(&c, "n2", 202, "running").await;
    for (node, vmid) in [("n1", 201), ("n2", 202)] {
        let pids = c.qemu_pids(vmid);
        assert_eq!(pids.len(), 1, "one QEMU for {vmid}: {pids:?}");
        assert_eq!(pids[0].0, node, "{vmid} runs on {node}");
        assert!(
            c.in_netns(node, pids[0].1),
            "QEMU of {vmid} runs in {node}'s network namespace"
        );
    }
    // A VM of n2 is not found under n1 (the agent serves only its node).
    let (code, _) = status(&c, "n1", 202).await;
    assert_ne!(code, 200);
    // The cluster view lists both, with the state their agents recorded in the store.
    let (code, res) = c.api.get("/cluster/resources?type=vm").await;
    assert_eq!(code, 200, "{res}");
    for (node, vmid) in [("n1", 201), ("n2", 202)] {
        let r = resources_vm(&res, vmid);
        assert_eq!(r["node"], node, "{res}");
        assert_eq!(r["status"], "running", "{res}");
    }

    // gpvectl against the server drives the remote VM.
    let url = format!("https://{}:{}", c.server_ip, cluster_common::API_PORT);
    let fp = gpve_api::client::Fingerprint::of_pem_file(&c.dir.path().join("server/cert.pem"))
        .expect("fingerprint");
    let config = c.dir.path().join("gpvectl.yaml");
    login_root(&config, &url, &fp.to_string(), ROOT_PW);
    let table = ok(&ctl(&config, &["vm", "get", "vm202", "--node", "n2"], ""));
    assert!(table.contains("running"), "{table}");
    ok(&ctl(&config, &["vm", "stop", "202", "--node", "n2"], ""));
    wait_status(&c, "n2", 202, "stopped").await;
    assert!(c.qemu_pids(202).is_empty(), "QEMU of 202 is gone");
    c.task_ok("/nodes/n2/qemu/202/status/start", &[]).await;
    wait_status(&c, "n2", 202, "running").await;

    // kill -9 the agent n2: QEMU keeps running, the node goes offline, its VM
    // operations get 595 naming it.
    let before = c.qemu_pids(202);
    assert_eq!(before.len(), 1, "{before:?}");
    c.kill9("n2");
    c.wait_node_status("n2", "offline", 20_000).await;
    assert_eq!(c.qemu_pids(202), before, "QEMU survived the agent");
    let (code, body) = status(&c, "n2", 202).await;
    assert_eq!(code, 595, "{body}");
    let msg = body["message"].as_str().unwrap_or("");
    assert!(msg.contains("n2"), "{body}");
    let (code, _) = c.api.post("/nodes/n2/qemu/202/status/stop", &[]).await;
    assert_eq!(code, 595);
    // n1 is unaffected.
    wait_status(&c, "n1", 201, "running").await;

    // Restart n2: it re-adopts the same QEMU and reports it running.
    c.restart("n2");
    c.wait_online("n2").await;
    wait_status(&c, "n2", 202, "running").await;
    assert_eq!(
        c.qemu_pids(202),
        before,
        "the same QEMU, re-adopted, no second copy"
    );

    // Stop and delete both through the server.
    for (node, vmid) in [("n1", 201), ("n2", 202)] {
        c.task_ok(&format!("/nodes/{node}/qemu/{vmid}/status/stop"), &[])
            .await;
        wait_status(&c, node, vmid, "stopped").await;
        assert!(c.qemu_pids(vmid).is_empty(), "QEMU of {vmid} is gone");
        let (code, body) = c.api.delete(&format!("/nodes/{node}/qemu/{vmid}")).await;
        assert_eq!(code, 200, "{body}");
        let upid = body["data"].as_str().expect("upid").to_string();
        assert_eq!(c.wait_task(&upid).await, "OK");
        let (code, _) = status(&c, node, vmid).await;
        assert_ne!(code, 200, "{vmid} deleted");
    }
}

const SRV: &str = cluster_common::SERVER_NODE;

/// A partitioned agent goes offline and its calls get 595; healing brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_node_is_offline_until_healed() {
    let Some(c) = Cluster::start(&["n1"]).await else {
        return;
    };
    c.partition("n1");
    c.wait_node_status("n1", "offline", 20_000).await;
    let (code, body) = c.api.get("/nodes/n1/qemu").await;
    assert_eq!(code, 595, "{body}");
    c.heal("n1");
    c.wait_online("n1").await;
}

/// Forwarded `status/current` (server → agent over mutual TLS, the agent reading the
/// server's store over gRPC) against the server's own node, p50/p99 in µs. Run with
/// `cargo test -p gpve-api --test cluster_agents bench_forwarded_status -- --ignored
/// --nocapture` (`GPVE_BENCH_ITERS`, default 200).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn bench_forwarded_status() {
    let Some(c) = Cluster::start(&["n1"]).await else {
        return;
    };
    let iters: usize = std::env::var("GPVE_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    for (node, vmid) in [("n1", 203), (SRV, 204)] {
        c.task_ok(
            &format!("/nodes/{node}/qemu"),
            &[("vmid", &vmid.to_string()), ("memory", "128"), ("kvm", "0")],
        )
        .await;
    }
    let mut remote = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    let mut local = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    for _ in 0..iters {
        let t = Instant::now();
        let (code, _) = status(&c, "n1", 203).await;
        assert_eq!(code, 200);
        remote
            .record(t.elapsed().as_micros() as u64)
            .expect("record");
        let t = Instant::now();
        let (code, _) = status(&c, SRV, 204).await;
        assert_eq!(code, 200);
        local
            .record(t.elapsed().as_micros() as u64)
            .expect("record");
    }
    println!(
        "status/current over {iters} calls: forwarded to an agent p50 {} µs p99 {} µs; server's own node p50 {} µs p99 {} µs",
        remote.value_at_quantile(0.5),
        remote.value_at_quantile(0.99),
        local.value_at_quantile(0.5),
        local.value_at_quantile(0.99)
    );
}
