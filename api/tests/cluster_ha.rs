//! HA across nodes (issue 6 item 5) with the real server, two real agents in their own
//! network namespaces (tests/cluster_common) and real QEMU (TCG):
//!
//! 1. partition the agent running an HA VM: it kills the VM's QEMU itself before its
//!    lease deadline (self-fence), and only after the deadline plus the fence grace does
//!    the server start the VM on the other agent;
//! 2. heal: the node comes back online and never runs a second copy;
//! 3. `kill -9` the agent now running it: its fence watchdog (a separate process) kills
//!    the QEMU at the deadline, and the VM runs on the first agent again.
//!
//! Throughout, a sampler checks every 20 ms that no two QEMU processes of the VM exist.
//! Prints the failover times (cut or kill → running elsewhere) for docs/benchmarks.md.

mod cluster_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cluster_common::{Cluster, guest, guest_args};
use serde_json::Value;

const VMID: u32 = 301;
/// Lease TTL of the server (gpve_api::cluster::LEASE_TTL_MS).
const LEASE_TTL_MS: u64 = gpve_api::cluster::LEASE_TTL_MS;

async fn ha_service(c: &Cluster) -> Value {
    let (code, body) = c.api.get("/cluster/ha/status/current").await;
    assert_eq!(code, 200, "{body}");
    body["data"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["sid"] == format!("vm:{VMID}")).cloned())
        .unwrap_or(Value::Null)
}

/// Wait until exactly one QEMU of the VM runs, on `node`, and keeps its pid for 300 ms
/// (a daemonizing QEMU shows its parent briefly); returns its pid.
async fn wait_running_on(c: &Cluster, node: &str, timeout_ms: u64) -> i32 {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let mut last = None;
    loop {
        let pids = c.qemu_pids(VMID);
        if let [(n, pid)] = pids.as_slice()
            && n == node
        {
            if last == Some(*pid) {
                return *pid;
            }
            last = Some(*pid);
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        last = None;
        if Instant::now() > deadline {
            c.dump_logs();
            panic!(
                "VM {VMID} not running on {node}: {pids:?}; HA: {}",
                ha_service(c).await
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Samples the QEMU processes of the VM until stopped; counts samples with copies on two
/// nodes.
struct DuplicateWatch {
    stop: Arc<AtomicBool>,
    doubles: Arc<AtomicUsize>,
    task: std::thread::JoinHandle<Vec<String>>,
}

impl DuplicateWatch {
    fn start(runs: Vec<(String, std::path::PathBuf)>) -> DuplicateWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let doubles = Arc::new(AtomicUsize::new(0));
        let (s, d) = (stop.clone(), doubles.clone());
        let task = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !s.load(Ordering::SeqCst) {
                let mut found = Vec::new();
                let mut nodes = std::collections::BTreeSet::new();
                for (pid, cmd) in cluster_common::processes() {
                    if !cmd.contains("qemu-system") {
                        continue;
                    }
                    for (name, run) in &runs {
                        if cmd.contains(&format!("{}/{VMID}/", run.display())) {
                            found.push(format!("{name}:{pid}"));
                            nodes.insert(name.clone());
                        }
                    }
                }
                // Copies on two nodes at once (a daemonizing QEMU's parent and child on
                // one node are one copy).
                if nodes.len() > 1 {
                    d.fetch_add(1, Ordering::SeqCst);
                    seen.push(found.join(","));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        DuplicateWatch {
            stop,
            doubles,
            task,
        }
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let seen = self.task.join().unwrap_or_default();
        (self.doubles.load(Ordering::SeqCst), seen)
    }
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ha_fences_and_fails_over_without_two_copies() {
    let g = guest().await;
    let args = guest_args(&g);
    let Some(mut c) = Cluster::start(&["n1", "n2"]).await else {
        return;
    };
    // No disk: the guest boots from the shared kernel and initrd, so either node can
    // run it (stands in for shared storage).
    c.task_ok(
        "/nodes/n1/qemu",
        &[
            ("vmid", &VMID.to_string()),
            ("name", "havm"),
            ("memory", "128"),
            ("kvm", "0"),
            ("serial0", "socket"),
            ("args", &args),
        ],
    )
    .await;
    let (code, body) = c
        .api
        .post(
            "/cluster/ha/resources",
            &[("sid", &format!("vm:{VMID}")), ("max_relocate", "1")],
        )
        .await;
    assert_eq!(code, 200, "{body}");
    // HA starts the stopped VM on its node (the agent's fence actor is its LRM).
    let pid1 = wait_running_on(&c, "n1", 60_000).await;
    assert!(c.in_netns("n1", pid1));
    let runs: Vec<(String, std::path::PathBuf)> = c
        .agents
        .iter()
        .map(|a| (a.name.clone(), a.run_root.clone()))
        .collect();
    let watch = DuplicateWatch::start(runs);
    // Let the fence actor see the HA placement (it polls every 200 ms).
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    // 1. Partition n1: it fences itself within the lease TTL; n2 takes over after that.
    let cut = Instant::now();
    c.partition("n1");
    while alive(pid1) {
        assert!(
            cut.elapsed() < Duration::from_millis(LEASE_TTL_MS + 1_000),
            "n1 did not fence its QEMU within the lease TTL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fenced_after = cut.elapsed();
    let pid2 = wait_running_on(&c, "n2", 60_000).await;
    let failover_partition = cut.elapsed();
    assert!(
        failover_partition >= fenced_after,
        "restarted elsewhere before the fence"
    );
    assert!(c.in_netns("n2", pid2));
    let s = ha_service(&c).await;
    assert_eq!(s["node"], "n2", "{s}");

    // 2. Heal: n1 rejoins and does not start a second copy.
    c.heal("n1");
    c.wait_online("n1").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let now = wait_running_on(&c, "n2", 1_000).await;
    if now != pid2 {
        c.dump_logs();
        panic!("the VM's QEMU on n2 was restarted ({pid2} → {now})");
    }

    // 3. kill -9 the agent on n2: its watchdog kills the QEMU; the VM returns to n1.
    let killed = Instant::now();
    c.kill9("n2");
    while alive(pid2) {
        assert!(
            killed.elapsed() < Duration::from_millis(LEASE_TTL_MS + 1_000),
            "the watchdog did not kill n2's QEMU within the lease TTL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let watchdog_after = killed.elapsed();
    wait_running_on(&c, "n1", 60_000).await;
    let failover_kill = killed.elapsed();
    let s = ha_service(&c).await;
    assert_eq!(s["node"], "n1", "{s}");

    let (doubles, seen) = watch.finish();
    assert_eq!(
        doubles, 0,
        "two QEMU processes of VM {VMID} at once: {seen:?}"
    );
    println!(
        "HA failover: partition → fenced {} ms, running on n2 {} ms; kill -9 → watchdog kill {} ms, running on n1 {} ms",
        fenced_after.as_millis(),
        failover_partition.as_millis(),
        watchdog_after.as_millis(),
        failover_kill.as_millis()
    );
    c.restart("n2");
    c.wait_online("n2").await;
}
