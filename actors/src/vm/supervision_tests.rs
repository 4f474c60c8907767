//! The VM actor under its supervisor with the simulated hypervisor (a second
//! implementation of the `Hypervisor` trait) and the simulated store: crash → restart →
//! intensity exceeded → escalation; re-adoption after the tree restarts; 20 concurrent
//! operations serialised by the mailbox. The real-QEMU path is tested in
//! `api/tests/vm_*.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gpve_hypervisor::{SimConfig, SimHost, SimHypervisor, TokioClock};
use gpve_store::Store;
use gpve_supervisor::{Directory, EventKind, Supervisor, SupervisorSpec};

use super::*;

const NODE: &str = "n1";

fn host(store: &Store, directory: &Directory, sim: &SimHost, run_root: &std::path::Path) -> VmHost {
    VmHost {
        node: NODE.into(),
        store: store.clone(),
        hypervisor: Arc::new(SimHypervisor::new(
            sim.clone(),
            Arc::new(TokioClock),
            SimConfig::default(),
        )),
        run_root: run_root.to_path_buf(),
        // No disks in these VMs: the storage service is never asked.
        storage: crate::storage::StorageService {
            directory: directory.clone(),
            supervisor_path: "root/storage".into(),
            node: NODE.into(),
            store: store.clone(),
            call_timeout_ms: 1_000,
            data_timeout_ms: 1_000,
        },
        directory: directory.clone(),
        supervisor_path: format!("root/{SUPERVISOR_ID}"),
        timing: VmTiming {
            stop_timeout_ms: 1_000,
            powerdown_repress_ms: 200,
            shutdown_timeout_ms: 5_000,
        },
        network: Arc::new(crate::network::MemNics::new()),
    }
}

async fn put_vm(store: &Store, vmid: u32) {
    let mut config = BTreeMap::new();
    config.insert("memory".to_string(), "64".to_string());
    config.insert("name".to_string(), format!("sim{vmid}"));
    store
        .put_json(&vm_key(vmid), &VmEntry::new(vmid, NODE, config))
        .await
        .unwrap();
}

async fn root(h: &VmHost) -> gpve_supervisor::SupervisorHandle {
    Supervisor::spawn(
        SupervisorSpec::new("root").child(supervisor_child(h.clone())),
        h.directory.clone(),
    )
    .await
    .unwrap()
}

async fn running_pid(h: &VmHost, vmid: u32, not: Option<u32>) -> u32 {
    for _ in 0..200 {
        if let Some(e) = load_entry(&h.store, vmid).await.unwrap()
            && e.record.status == "running"
            && let Some(pid) = e.runtime.pid
            && Some(pid) != not
        {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("VM {vmid} is not running with a new pid");
}

#[tokio::test]
async fn crash_restarts_then_escalates_and_tree_restart_adopts() {
    let (store, _ctl) = Store::simulated(Default::default());
    let directory = Directory::new();
    let mut events = directory.subscribe();
    let sim = SimHost::new();
    let run = tempfile::tempdir().unwrap();
    let h = host(&store, &directory, &sim, run.path());
    put_vm(&store, 100).await;
    put_vm(&store, 101).await;
    let tree = root(&h).await;

    ops::call(&h, 100, VmOp::Start, 5_000).await.unwrap();
    ops::call(&h, 101, VmOp::Start, 5_000).await.unwrap();
    let pid = running_pid(&h, 100, None).await;
    let err = ops::call(&h, 100, VmOp::Start, 5_000).await.unwrap_err();
    assert_eq!(err.to_string(), "cannot start VM 100: it is running");

    // The tree stops (agent restart): QEMU keeps running and is adopted, same pid.
    tree.stop().await.unwrap();
    assert_eq!(sim.running().len(), 2);
    let tree = root(&h).await;
    let adopted = running_pid(&h, 100, None).await;
    assert_eq!(adopted, pid);
    ops::call(&h, 100, VmOp::Suspend, 5_000).await.unwrap();
    assert_eq!(
        load_entry(&store, 100)
            .await
            .unwrap()
            .unwrap()
            .runtime
            .qmpstatus,
        "paused"
    );
    ops::call(&h, 100, VmOp::Resume, 5_000).await.unwrap();

    // Crashes restart QEMU under the VM's intensity (3 in 60 s); the 4th escalates.
    let mut last = pid;
    for _ in 0..VM_MAX_RESTARTS {
        assert_eq!(sim.crash(100), 1);
        last = running_pid(&h, 100, Some(last)).await;
    }
    assert_eq!(sim.crash(100), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("an escalation event")
            .unwrap();
        if let EventKind::Escalated { .. } = ev.kind
            && ev.path.ends_with("vm:100")
        {
            break;
        }
    }
    // The other VM is untouched.
    assert_eq!(sim.running().iter().filter(|(v, _)| *v == 101).count(), 1);
    let err = ops::call(&h, 101, VmOp::Delete { purge: false }, 5_000)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("it is running"), "{err}");
    tree.stop().await.unwrap();
}

#[tokio::test]
async fn twenty_concurrent_operations_are_serialised() {
    let (store, _ctl) = Store::simulated(Default::default());
    let directory = Directory::new();
    let sim = SimHost::new();
    let run = tempfile::tempdir().unwrap();
    let h = host(&store, &directory, &sim, run.path());
    put_vm(&store, 100).await;
    let tree = root(&h).await;
    ops::call(&h, 100, VmOp::Start, 5_000).await.unwrap();

    let mut calls = Vec::new();
    for i in 0..20u32 {
        let h = h.clone();
        calls.push(tokio::spawn(async move {
            let op = match i % 4 {
                0 => VmOp::Reset,
                1 => VmOp::Suspend,
                2 => VmOp::Resume,
                _ => {
                    let mut set = BTreeMap::new();
                    set.insert("description".to_string(), format!("d{i}"));
                    set.insert("cores".to_string(), "2".to_string());
                    VmOp::UpdateConfig {
                        set,
                        delete: vec![],
                        revert: vec![],
                    }
                }
            };
            (i, ops::call(&h, 100, op, 10_000).await)
        }));
    }
    for c in calls {
        let (i, r) = c.await.unwrap();
        match r {
            Ok(_) => {}
            // Suspend of a paused VM / resume of a running one: refused by the state
            // machine, never a timeout or a lock error.
            Err(VmError::State(e)) => assert!(i % 4 == 1 || i % 4 == 2, "{i}: {e}"),
            Err(e) => panic!("operation {i} failed: {e}"),
        }
    }
    let e = load_entry(&store, 100).await.unwrap().unwrap();
    assert!(e.config["description"].starts_with('d'));
    // cores is not hot: pending until the next start
    assert_eq!(e.pending.get("cores").map(String::as_str), Some("2"));
    assert!(!e.config.contains_key("cores"));
    tree.stop().await.unwrap();
    // Detaching leaves the simulated QEMU running; stop it for tidiness.
    assert_eq!(sim.crash(100), 1);
}
