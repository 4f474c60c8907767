//! Draining a node (issue 6): `gpvectl node drain n1` against the real server, with three
//! real agents in their own network namespaces and real QEMU (TCG).
//!
//! n1 runs an HA VM and a plain VM and holds a stopped VM. The drain cordons n1 and
//! migrates all three off it: the running ones live (QEMU, sampled every 20 ms, only on
//! the source and the target, and never on the source again once handed over), the
//! stopped one offline, to nodes the scheduler picks (spread over n2
//! and n3). Afterwards n1 is cordoned and empty, the HA manager places the HA VM where
//! it now runs, and a second drain has nothing to do.

mod cluster_common;
#[path = "gpvectl_common/mod.rs"]
mod gpvectl_common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cluster_common::{Cluster, ROOT_PW, guest, guest_args};
use gpvectl_common::{ctl, login_root};
use serde_json::Value;

const HA_VM: u32 = 411;
const PLAIN_VM: u32 = 412;
const STOPPED_VM: u32 = 413;

async fn create_vm(c: &Cluster, vmid: u32, args: &str) {
    // No disk: the guest boots from the shared kernel and initrd (stands in for shared
    // storage), so any node can run it.
    c.task_ok(
        "/nodes/n1/qemu",
        &[
            ("vmid", &vmid.to_string()),
            ("name", &format!("drain{vmid}")),
            ("memory", "128"),
            ("kvm", "0"),
            ("serial0", "socket"),
            ("args", args),
        ],
    )
    .await;
}

/// The VM's record as the cluster lists it.
async fn resource(c: &Cluster, vmid: u32) -> Value {
    let (code, body) = c.api.get("/cluster/resources?type=vm").await;
    assert_eq!(code, 200, "{body}");
    body["data"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["vmid"] == vmid).cloned())
        .unwrap_or(Value::Null)
}

/// Waits until exactly one QEMU of `vmid` runs, on `node`.
async fn wait_one_qemu_on(c: &Cluster, vmid: u32, node: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pids = c.qemu_pids(vmid);
        if matches!(pids.as_slice(), [(n, _)] if n == node) {
            return;
        }
        if Instant::now() > deadline {
            c.dump_logs();
            panic!("VM {vmid}: QEMU {pids:?}, expected one on {node}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Per VM, the nodes with a QEMU of it, sampled every 20 ms until stopped (only samples
/// that differ from the previous one are kept).
type Samples = Vec<(u32, BTreeSet<String>)>;

fn sample_qemu_nodes(
    c: &Cluster,
    vmids: &[u32],
) -> (Arc<AtomicBool>, std::thread::JoinHandle<Samples>) {
    let runs: Vec<(String, std::path::PathBuf)> = c
        .agents
        .iter()
        .map(|a| (a.name.clone(), a.run_root.clone()))
        .collect();
    let vmids = vmids.to_vec();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let task = std::thread::spawn(move || {
        let mut samples: Samples = Vec::new();
        let mut last = std::collections::BTreeMap::new();
        while !s.load(Ordering::SeqCst) {
            let procs = cluster_common::processes();
            for vmid in &vmids {
                let nodes: BTreeSet<String> = runs
                    .iter()
                    .filter(|(_, run)| {
                        let marker = format!("{}/{vmid}/", run.display());
                        procs
                            .iter()
                            .any(|(_, cmd)| cmd.contains("qemu-system") && cmd.contains(&marker))
                    })
                    .map(|(name, _)| name.clone())
                    .collect();
                if last.get(vmid) != Some(&nodes) {
                    last.insert(*vmid, nodes.clone());
                    samples.push((*vmid, nodes));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        samples
    });
    (stop, task)
}

/// A live migration from `source` to `target` as the samples must show it: QEMU only on
/// those two nodes (both while the target waits paused for the stream), and once it ran
/// on the target alone, never on the source again.
fn check_handover(samples: &Samples, vmid: u32, source: &str, target: &str) {
    let mut handed_over = false;
    for (_, nodes) in samples.iter().filter(|(v, _)| *v == vmid) {
        assert!(
            nodes.iter().all(|n| n == source || n == target),
            "VM {vmid} had QEMU on {nodes:?} (migrating {source} → {target}): {samples:?}"
        );
        if nodes.len() == 1 && nodes.contains(target) {
            handed_over = true;
        }
        assert!(
            !(handed_over && nodes.contains(source)),
            "VM {vmid} ran on {source} again after its handover to {target}: {samples:?}"
        );
    }
    assert!(
        handed_over,
        "VM {vmid} never ran on {target} alone: {samples:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_moves_every_vm_off_the_node() {
    let g = guest().await;
    let args = guest_args(&g);
    let Some(c) = Cluster::start(&["n1", "n2", "n3"]).await else {
        return;
    };
    for vmid in [HA_VM, PLAIN_VM, STOPPED_VM] {
        create_vm(&c, vmid, &args).await;
    }
    let (code, body) = c
        .api
        .post("/cluster/ha/resources", &[("sid", &format!("vm:{HA_VM}"))])
        .await;
    assert_eq!(code, 200, "{body}");
    c.task_ok(&format!("/nodes/n1/qemu/{PLAIN_VM}/status/start"), &[])
        .await;
    wait_one_qemu_on(&c, HA_VM, "n1").await;
    wait_one_qemu_on(&c, PLAIN_VM, "n1").await;

    let url = format!("https://{}:{}", c.server_ip, cluster_common::API_PORT);
    let fp = gpve_api::client::Fingerprint::of_pem_file(&c.dir.path().join("server/cert.pem"))
        .expect("fingerprint");
    let config = c.dir.path().join("gpvectl.yaml");
    login_root(&config, &url, &fp.to_string(), ROOT_PW);

    let (stop, sampler) = sample_qemu_nodes(&c, &[HA_VM, PLAIN_VM]);
    let started = Instant::now();
    let out = ctl(&config, &["node", "drain", "n1"], "");
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let samples = sampler.join().expect("sampler");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    if !out.status.success() {
        c.dump_logs();
        panic!("drain failed:\n{stdout}\n{stderr}");
    }
    assert!(stdout.contains("node n1 drained"), "{stdout}");
    assert!(stderr.contains("node n1 cordoned"), "{stderr}");
    // The plan and each VM's outcome are in the task log gpvectl followed.
    for vmid in [HA_VM, PLAIN_VM, STOPPED_VM] {
        assert!(
            stderr.contains(&format!("VM {vmid}: migrated to")),
            "{stderr}"
        );
    }
    eprintln!("BENCH drain of 2 running + 1 stopped VMs: {took:?}");

    // Nothing is left on n1; the running VMs run elsewhere, spread by the scheduler.
    let mut placed = BTreeSet::new();
    for vmid in [HA_VM, PLAIN_VM] {
        let r = resource(&c, vmid).await;
        let node = r["node"].as_str().unwrap_or_default().to_string();
        assert_ne!(node, "n1", "{r}");
        assert_eq!(r["status"], "running", "{r}");
        wait_one_qemu_on(&c, vmid, &node).await;
        check_handover(&samples, vmid, "n1", &node);
        placed.insert(node);
    }
    assert_eq!(placed.len(), 2, "both running VMs on one node: {placed:?}");
    let r = resource(&c, STOPPED_VM).await;
    assert_ne!(r["node"], "n1", "{r}");
    assert_eq!(r["status"], "stopped", "{r}");
    assert!(c.qemu_pids(STOPPED_VM).is_empty());
    let n1 = c.node_entry("n1").await.expect("n1 listed");
    assert_eq!(n1["cordoned"], 1, "{n1}");

    // The HA manager follows the VM to where the migration put it.
    let ha_node = resource(&c, HA_VM).await["node"].clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = c.api.get("/cluster/ha/status/current").await;
        assert_eq!(code, 200, "{body}");
        let service = body["data"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|e| e["sid"] == format!("vm:{HA_VM}"))
                    .cloned()
            })
            .unwrap_or(Value::Null);
        if service["node"] == ha_node && service["state"] == "started" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "HA still places vm:{HA_VM} at {service} (it runs on {ha_node})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Still exactly one copy: HA did not restart it on n1.
    wait_one_qemu_on(&c, HA_VM, ha_node.as_str().unwrap_or_default()).await;

    // Draining an empty node succeeds with nothing to do.
    let again = ctl(&config, &["node", "drain", "n1"], "");
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("migrating 0 VMs off node n1"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // Draining to an offline node is refused before any task.
    c.partition("n2");
    c.wait_node_status("n2", "offline", 30_000).await;
    let (code, body) = c
        .api
        .post("/nodes/n3/migrateall", &[("target", "n2")])
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.to_string().contains("offline"), "{body}");
    c.heal("n2");
}
