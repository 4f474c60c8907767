//! Live migration between node processes (issue 6) with the real server, two real agents
//! in their own network namespaces (tests/cluster_common) and real QEMU running the test
//! guest under TCG (no disk: it boots from the shared kernel and initrd, standing in for
//! shared storage):
//!
//! 1. n1 → n2 and back n2 → n1 through the server's API (forwarded to the source agent,
//!    which reaches the target through the server's gRPC relay); the RAM stream goes
//!    directly between the agents' QEMUs over TLS with the node certificates;
//! 2. a node that does not hold the VM is refused by the relay (its own certificate,
//!    straight to the gRPC service); a partitioned target is refused (400, "offline")
//!    and the VM keeps running;
//! 3. n1 → the server's own node (relay to its in-process target side), then the server's
//!    node → n2 with `gpvectl vm migrate` (the server calls the agent directly).
//!
//! After each hop: the task log has Proxmox's lines (`migration downtime`, `migration
//! finished successfully`) and says the stream was TLS; exactly one QEMU of the VM
//! remains, on the target (in its namespace for an agent); `status/current` through the
//! server says running there; the guest answers on its serial console there. During each
//! hop a sampler checks every 20 ms that QEMU of the VM exists only on the source and the
//! target (the target's copy is the paused incoming one until the switchover).
//!
//! `bench_agent_migration` (ignored) measures downtime and total time of n1 ⇄ n2 hops of
//! a running 256 MiB guest.

mod cluster_common;

#[path = "gpvectl_common/mod.rs"]
mod gpvectl_common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cluster_common::{Cluster, ROOT_PW, SERVER_NODE, guest, guest_args, urlencode};
use gpve_hypervisor::RunPaths;
use gpve_hypervisor::test_guest::{self, SerialConsole};
use gpve_transport::migration::{MigrationClient, RelayError};
use gpvectl_common::{ctl, login_root, ok};
use serde_json::Value;

const VMID: u32 = 401;
const BENCH_VMID: u32 = 402;
const BOOT_TIMEOUT_MS: u64 = 90_000;
const SERIAL_TIMEOUT_MS: u64 = 20_000;
const SAMPLE_INTERVAL_MS: u64 = 20;

/// The run root of `node`'s QEMU processes (agents and the server's own node).
fn run_root(c: &Cluster, node: &str) -> PathBuf {
    if node == SERVER_NODE {
        c.dir.path().join(format!("run-{SERVER_NODE}"))
    } else {
        c.agent(node).run_root.clone()
    }
}

/// Every node's run root, the server's included.
fn run_roots(c: &Cluster) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = c
        .agents
        .iter()
        .map(|a| (a.name.clone(), a.run_root.clone()))
        .collect();
    out.push((SERVER_NODE.to_string(), run_root(c, SERVER_NODE)));
    out
}

/// Nodes with a QEMU process of `vmid`, with its pids.
fn qemu_nodes(runs: &[(String, PathBuf)], vmid: u32) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for (pid, cmd) in cluster_common::processes() {
        if !cmd.contains("qemu-system") {
            continue;
        }
        for (name, run) in runs {
            if cmd.contains(&format!("{}/{vmid}/", run.display())) {
                out.push((name.clone(), pid));
            }
        }
    }
    out
}

/// Samples the QEMU processes of a VM until stopped; records every sample that shows a
/// copy on a node other than the migration's source and target.
struct PlacementWatch {
    stop: Arc<AtomicBool>,
    task: std::thread::JoinHandle<(usize, Vec<String>)>,
}

impl PlacementWatch {
    fn start(runs: Vec<(String, PathBuf)>, vmid: u32, allowed: [&str; 2]) -> PlacementWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let allowed: BTreeSet<String> = allowed.iter().map(|n| n.to_string()).collect();
        let task = std::thread::spawn(move || {
            let (mut samples, mut bad) = (0, Vec::new());
            while !s.load(Ordering::SeqCst) {
                samples += 1;
                let found = qemu_nodes(&runs, vmid);
                if found.iter().any(|(n, _)| !allowed.contains(n)) {
                    bad.push(format!("{found:?}"));
                }
                std::thread::sleep(Duration::from_millis(SAMPLE_INTERVAL_MS));
            }
            (samples, bad)
        });
        PlacementWatch { stop, task }
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.join().unwrap_or_default()
    }
}

/// Waits until exactly one QEMU of `vmid` runs, on `node`, with a stable pid.
async fn wait_single_on(c: &Cluster, node: &str, vmid: u32) -> i32 {
    let runs = run_roots(c);
    let deadline = Instant::now() + Duration::from_millis(20_000);
    let mut last = None;
    loop {
        let found = qemu_nodes(&runs, vmid);
        if let [(n, pid)] = found.as_slice()
            && n == node
        {
            if last == Some(*pid) {
                return *pid;
            }
            last = Some(*pid);
        } else {
            last = None;
        }
        if Instant::now() > deadline {
            c.dump_logs();
            panic!("VM {vmid}: expected one QEMU on {node}, found {found:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn status_on(c: &Cluster, node: &str, vmid: u32) -> (u16, Value) {
    c.api
        .get(&format!("/nodes/{node}/qemu/{vmid}/status/current"))
        .await
}

/// Types a command on the guest's serial console on `node` and waits for its answer.
async fn echo(c: &Cluster, node: &str, vmid: u32, n: u32) {
    let socket = RunPaths::new(&run_root(c, node).join(vmid.to_string())).serial_socket;
    let mut console = SerialConsole::connect(&socket)
        .await
        .unwrap_or_else(|e| panic!("serial console of {vmid} on {node}: {e}"));
    console
        .send_line(&format!("echo hop-$(({n}+1000))"))
        .await
        .expect("type into the serial console");
    console
        .wait_for(&format!("hop-{}", n + 1000), SERIAL_TIMEOUT_MS)
        .await
        .unwrap_or_else(|e| panic!("the guest does not answer on {node}: {e}"));
}

async fn task_log(c: &Cluster, upid: &str) -> Vec<String> {
    let node = upid.split(':').nth(1).expect("UPID names a node");
    let (code, body) = c
        .api
        .get(&format!(
            "/nodes/{node}/tasks/{}/log?limit=10000",
            urlencode(upid)
        ))
        .await;
    assert_eq!(code, 200, "{body}");
    body["data"]
        .as_array()
        .expect("log lines")
        .iter()
        .filter_map(|l| l["t"].as_str().map(str::to_string))
        .collect()
}

/// QEMU's downtime, from the task log.
fn downtime_ms(log: &[String]) -> u64 {
    log.iter()
        .find_map(|l| l.strip_prefix("migration downtime: "))
        .and_then(|r| r.strip_suffix(" ms"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no downtime line: {log:?}"))
}

/// Starts a migration through the server's API; returns its UPID.
async fn start_migration(c: &Cluster, from: &str, to: &str, vmid: u32) -> String {
    let (code, body) = c
        .api
        .post(
            &format!("/nodes/{from}/qemu/{vmid}/migrate"),
            &[("target", to), ("online", "1")],
        )
        .await;
    assert_eq!(code, 200, "migrate {vmid} {from} -> {to}: {body}");
    body["data"].as_str().expect("upid").to_string()
}

/// What must hold after VM `vmid` moved to `to` (see the module documentation).
async fn check_landed(c: &Cluster, from: &str, to: &str, vmid: u32, hop: u32) {
    let pid = wait_single_on(c, to, vmid).await;
    if to != SERVER_NODE {
        assert!(
            c.in_netns(to, pid),
            "QEMU of {vmid} runs in {to}'s namespace"
        );
    }
    let (code, body) = status_on(c, to, vmid).await;
    assert_eq!(code, 200, "status on {to}: {body}");
    assert_eq!(body["data"]["status"], "running", "{body}");
    let (code, body) = status_on(c, from, vmid).await;
    assert_ne!(code, 200, "{vmid} is no longer on {from}: {body}");
    echo(c, to, vmid, hop).await;
}

/// One live migration through the server's API with the placement sampled throughout;
/// returns its task log.
async fn hop(c: &Cluster, from: &str, to: &str, vmid: u32, n: u32) -> Vec<String> {
    let watch = PlacementWatch::start(run_roots(c), vmid, [from, to]);
    let upid = start_migration(c, from, to, vmid).await;
    let status = c.wait_task(&upid).await;
    let (samples, bad) = watch.finish();
    let log = task_log(c, &upid).await;
    if status != "OK" {
        c.dump_logs();
    }
    assert_eq!(status, "OK", "migration {from} -> {to}: {log:#?}");
    assert!(samples > 0);
    assert!(
        bad.is_empty(),
        "QEMU of {vmid} outside {from}/{to} during the migration: {bad:?}"
    );
    for wanted in [
        "migration type: secure",
        "migration status: completed",
        "migration downtime: ",
        "migration finished successfully",
    ] {
        assert!(
            log.iter().any(|l| l.starts_with(wanted)),
            "task log lacks '{wanted}': {log:#?}"
        );
    }
    check_landed(c, from, to, vmid, n).await;
    log
}

async fn create_and_start(c: &Cluster, node: &str, vmid: u32, memory_mib: u64, args: &str) {
    c.task_ok(
        &format!("/nodes/{node}/qemu"),
        &[
            ("vmid", &vmid.to_string()),
            ("name", &format!("mig{vmid}")),
            ("memory", &memory_mib.to_string()),
            ("kvm", "0"),
            ("serial0", "socket"),
            ("args", args),
        ],
    )
    .await;
    c.task_ok(&format!("/nodes/{node}/qemu/{vmid}/status/start"), &[])
        .await;
    let log = RunPaths::new(&run_root(c, node).join(vmid.to_string())).serial_log;
    test_guest::wait_for_log(&log, test_guest::READY_MARKER, BOOT_TIMEOUT_MS)
        .await
        .expect("the guest boots");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_migration_between_agents_and_the_server() {
    let g = guest().await;
    let args = guest_args(&g);
    let Some(c) = Cluster::start(&["n1", "n2"]).await else {
        return;
    };
    create_and_start(&c, "n1", VMID, 128, &args).await;
    echo(&c, "n1", VMID, 0).await;

    // A node cannot prepare a migration of a VM it does not hold: n2's own certificate,
    // straight to the server's relay.
    let (agent_cfg, creds) = gpve_api::agent::AgentDir::new(&c.agent("n2").data_dir)
        .load()
        .expect("n2's credentials");
    let relay = MigrationClient::connect(&agent_cfg.server_endpoint, &creds)
        .await
        .expect("relay client");
    let err = relay
        .prepare_incoming(VMID, SERVER_NODE, Default::default(), 2)
        .await
        .expect_err("n2 does not hold the VM");
    assert!(
        matches!(&err, RelayError::Refused(m) if m.contains("does not hold")),
        "{err:?}"
    );
    assert_eq!(qemu_nodes(&run_roots(&c), VMID).len(), 1, "nothing started");

    // 1. Agent to agent and back.
    hop(&c, "n1", "n2", VMID, 1).await;
    hop(&c, "n2", "n1", VMID, 2).await;

    // 2. A partitioned target: refused before anything starts; the VM stays put.
    c.partition("n2");
    c.wait_node_status("n2", "offline", 20_000).await;
    let (code, body) = c
        .api
        .post(
            &format!("/nodes/n1/qemu/{VMID}/migrate"),
            &[("target", "n2"), ("online", "1")],
        )
        .await;
    assert_eq!(code, 400, "{body}");
    let msg = body["message"].as_str().unwrap_or_default();
    assert!(msg.contains("offline"), "{body}");
    c.heal("n2");
    c.wait_online("n2").await;
    check_landed(&c, "n2", "n1", VMID, 3).await;

    // 3. To the server's own node (the relay's in-process target side) ...
    hop(&c, "n1", SERVER_NODE, VMID, 4).await;
    // ... and from it to an agent with gpvectl against the server.
    let url = format!("https://{}:{}", c.server_ip, cluster_common::API_PORT);
    let fp = gpve_api::client::Fingerprint::of_pem_file(&c.dir.path().join("server/cert.pem"))
        .expect("fingerprint");
    let config = c.dir.path().join("gpvectl.yaml");
    login_root(&config, &url, &fp.to_string(), ROOT_PW);
    let runs = run_roots(&c);
    let watch = PlacementWatch::start(runs, VMID, [SERVER_NODE, "n2"]);
    let out = ok(&ctl(
        &config,
        &[
            "vm",
            "migrate",
            &format!("mig{VMID}"),
            "--to",
            "n2",
            "--online",
            "--node",
            SERVER_NODE,
        ],
        "",
    ));
    let (_, bad) = watch.finish();
    assert!(bad.is_empty(), "{bad:?}");
    assert!(out.contains("migrated to node n2"), "{out}");
    check_landed(&c, SERVER_NODE, "n2", VMID, 5).await;

    c.task_ok(&format!("/nodes/n2/qemu/{VMID}/status/stop"), &[])
        .await;
    assert!(qemu_nodes(&run_roots(&c), VMID).is_empty());
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Downtime (as QEMU reports it) and total time (POST to task end) of agent-to-agent
/// live migrations of a running 256 MiB test guest, n1 ⇄ n2, p50/p99. Run with
/// `cargo test -p gpve-api --test cluster_migrate bench_agent_migration -- --ignored
/// --nocapture` (`GPVE_BENCH_ITERS` hops, default 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn bench_agent_migration() {
    let g = guest().await;
    let args = guest_args(&g);
    let Some(c) = Cluster::start(&["n1", "n2"]).await else {
        return;
    };
    let iters: u32 = std::env::var("GPVE_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    create_and_start(&c, "n1", BENCH_VMID, 256, &args).await;
    let (mut downtimes, mut totals) = (Vec::new(), Vec::new());
    let mut at = "n1";
    for i in 0..iters {
        let to = if at == "n1" { "n2" } else { "n1" };
        let started = Instant::now();
        let upid = start_migration(&c, at, to, BENCH_VMID).await;
        let status = c.wait_task(&upid).await;
        let total_ms = started.elapsed().as_secs_f64() * 1000.0;
        let log = task_log(&c, &upid).await;
        assert_eq!(status, "OK", "{log:#?}");
        let downtime = downtime_ms(&log);
        downtimes.push(downtime as f64);
        totals.push(total_ms);
        wait_single_on(&c, to, BENCH_VMID).await;
        println!("hop {i} {at} -> {to}: downtime {downtime} ms, total {total_ms:.0} ms");
        at = to;
    }
    echo(&c, at, BENCH_VMID, 0).await;
    downtimes.sort_by(f64::total_cmp);
    totals.sort_by(f64::total_cmp);
    println!(
        "agent-to-agent live migration, 256 MiB TCG guest, TLS, {iters} hops: downtime p50 {:.0} ms p99 {:.0} ms; total p50 {:.0} ms p99 {:.0} ms",
        percentile(&downtimes, 0.5),
        percentile(&downtimes, 0.99),
        percentile(&totals, 0.5),
        percentile(&totals, 0.99)
    );
}
