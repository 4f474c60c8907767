//! The migration protocol between two node trees (n1, n2) in one process over one real
//! redb store, with real QEMU running the test guest under TCG, a real `dir` storage
//! flagged shared that both nodes see and a local one only n1 uses: live migration
//! n1 → n2 → n1 with the guest answering on its serial console after each hop, the
//! record's node and placement generation switched, refusals with their reason, a target
//! that dies mid-migration leaving the VM running on the source, and offline migration.
//! The multi-process version (agents in network namespaces) is in `api/tests/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gpve_actors::network::MemNics;
use gpve_actors::storage::{self, StorageService, config::StorageConfig};
use gpve_actors::vm::migrate::{self, LocalPeer, MigrateRequest, MigrationError, MigrationPeer};
use gpve_actors::vm::{self, VmError, VmHost, VmOp, VmTiming, config as vmconfig, ops};
use gpve_hypervisor::test_guest::{self, SerialConsole};
use gpve_hypervisor::{MigrateOptions, Qemu, RunPaths};
use gpve_store::Store;
use gpve_supervisor::{Directory, Supervisor, SupervisorHandle, SupervisorSpec};

const BOOT_TIMEOUT_MS: u64 = 90_000;
const SERIAL_TIMEOUT_MS: u64 = 20_000;
const CALL_TIMEOUT_MS: u64 = 120_000;
const TARGET_DIES_AFTER_MS: u64 = 1_000;
/// Slows the failing migration down to seconds so the target dies mid-stream.
const SLOW_BWLIMIT_KIB_S: u64 = 16 * 1024;

struct Node {
    host: VmHost,
    _root: SupervisorHandle,
}

async fn node(name: &str, store: &Store, run_root: &Path) -> Node {
    let directory = Directory::new();
    let storage = StorageService {
        directory: directory.clone(),
        supervisor_path: format!("root/{}", storage::SUPERVISOR_ID),
        node: name.into(),
        store: store.clone(),
        call_timeout_ms: 10_000,
        data_timeout_ms: 60_000,
    };
    let host = VmHost {
        node: name.into(),
        store: store.clone(),
        hypervisor: Arc::new(Qemu::default()),
        run_root: run_root.join(name),
        storage,
        directory: directory.clone(),
        supervisor_path: format!("root/{}", vm::SUPERVISOR_ID),
        timing: VmTiming {
            stop_timeout_ms: 10_000,
            ..VmTiming::default()
        },
        network: Arc::new(MemNics::new()),
    };
    let root = Supervisor::spawn(
        SupervisorSpec::new("root")
            .child(storage::supervisor_child(name, store.clone()))
            .child(vm::supervisor_child(host.clone())),
        directory,
    )
    .await
    .expect("node tree");
    Node { host, _root: root }
}

fn guest() -> test_guest::TestGuest {
    let dir = std::env::var_os("GPVE_TEST_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(test_guest::DEFAULT_CACHE_DIR));
    test_guest::ensure(&dir).expect("test guest")
}

/// A test-guest VM on `n1`: direct boot through `args`, TCG, and `disk` as scsi0.
async fn create_vm(host: &VmHost, vmid: u32, disk: Option<&str>) {
    let g = guest();
    let mut changes = BTreeMap::from([
        ("name".to_string(), format!("migr{vmid}")),
        ("memory".to_string(), "128".to_string()),
        ("kvm".to_string(), "0".to_string()),
        (
            "args".to_string(),
            format!(
                "-kernel {} -initrd {} -append 'console=ttyS0 quiet panic=-1'",
                g.kernel.display(),
                g.initrd.display()
            ),
        ),
    ]);
    if let Some(d) = disk {
        changes.insert("scsi0".into(), d.into());
    }
    let canon = vmconfig::parse_changes(&changes, vmid, 7).expect("config");
    let plain: BTreeMap<String, String> = canon
        .iter()
        .filter(|(k, _)| !vmconfig::is_drive(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    ops::reserve(host, Some(vmid), plain)
        .await
        .expect("reserve");
    ops::create(host, vmid, canon).await.expect("create");
}

fn serial_socket(host: &VmHost, vmid: u32) -> PathBuf {
    RunPaths::new(&host.run_dir(vmid)).serial_socket
}

async fn echo(host: &VmHost, vmid: u32, n: u32) {
    let mut console = SerialConsole::connect(&serial_socket(host, vmid))
        .await
        .expect("connect to the serial console");
    console
        .send_line(&format!("echo migr-$(({n}+1))"))
        .await
        .expect("type into the serial console");
    console
        .wait_for(&format!("migr-{}", n + 1), SERIAL_TIMEOUT_MS)
        .await
        .expect("the guest answers on its serial console");
}

fn request(
    peer: Arc<dyn MigrationPeer>,
    online: bool,
) -> (MigrateRequest, tokio::sync::mpsc::Receiver<String>) {
    let (tx, rx) = tokio::sync::mpsc::channel(migrate::MIGRATE_LOG_QUEUE_LEN);
    (
        MigrateRequest {
            online,
            with_local_disks: false,
            options: MigrateOptions::default(),
            peer,
            tls_creds_dir: None,
            log: Some(tx),
        },
        rx,
    )
}

fn drain(mut rx: tokio::sync::mpsc::Receiver<String>) -> Vec<String> {
    let mut lines = Vec::new();
    while let Ok(l) = rx.try_recv() {
        lines.push(l);
    }
    lines
}

fn qemu_pid(host: &VmHost, vmid: u32) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(RunPaths::new(&host.run_dir(vmid)).pidfile)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    (state != "Z").then_some(pid)
}

async fn entry(store: &Store, vmid: u32) -> vm::VmEntry {
    vm::load_entry(store, vmid)
        .await
        .expect("store")
        .expect("the VM record")
}

/// The target's incoming QEMU is killed while the RAM is being transferred.
struct DyingTarget(Arc<LocalPeer>, VmHost);

#[async_trait]
impl MigrationPeer for DyingTarget {
    fn node(&self) -> &str {
        self.0.node()
    }
    async fn prepare_incoming(
        &self,
        vmid: u32,
        config: BTreeMap<String, String>,
        generation: u64,
    ) -> Result<migrate::IncomingTarget, MigrationError> {
        let uri = self.0.prepare_incoming(vmid, config, generation).await?;
        let pid = qemu_pid(&self.1, vmid).expect("the incoming QEMU runs");
        // Mid-stream: the bandwidth limit below makes the transfer take seconds.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(TARGET_DIES_AFTER_MS)).await;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        });
        Ok(uri)
    }
    async fn finish_incoming(&self, vmid: u32, generation: u64) -> Result<(), MigrationError> {
        self.0.finish_incoming(vmid, generation).await
    }
    async fn abort_incoming(&self, vmid: u32) -> Result<(), MigrationError> {
        self.0.abort_incoming(vmid).await
    }
}

/// Kills every QEMU this test started, whatever happens.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for node in ["n1", "n2"] {
            let Ok(dirs) = std::fs::read_dir(self.0.join(node)) else {
                continue;
            };
            for d in dirs.flatten() {
                let pidfile = d.path().join("qemu.pid");
                let Some(pid) = std::fs::read_to_string(&pidfile)
                    .ok()
                    .and_then(|t| t.trim().parse::<i32>().ok())
                else {
                    continue;
                };
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&*pidfile.to_string_lossy()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_migration_between_two_node_trees() {
    let tmp = tempfile::Builder::new()
        .prefix("migr")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let _cleanup = Cleanup(tmp.path().join("run"));
    let store = Store::open_redb(&tmp.path().join("store.redb")).expect("store");
    let mut shared = StorageConfig::dir("shared", tmp.path().join("shared"));
    shared.shared = true;
    storage::config::create(&store, &shared)
        .await
        .expect("shared storage");
    let mut local = StorageConfig::dir("local1", tmp.path().join("local1"));
    local.nodes = Some(vec!["n1".into()]);
    storage::config::create(&store, &local)
        .await
        .expect("local storage");

    let run_root = tmp.path().join("run");
    let n1 = node("n1", &store, &run_root).await;
    let n2 = node("n2", &store, &run_root).await;
    let p1: Arc<dyn MigrationPeer> = LocalPeer::new(n1.host.clone(), "127.0.0.1");
    let p2: Arc<dyn MigrationPeer> = LocalPeer::new(n2.host.clone(), "127.0.0.1");

    let vmid = 7100;
    create_vm(&n1.host, vmid, Some("shared:1")).await;
    ops::call(&n1.host, vmid, VmOp::Start, CALL_TIMEOUT_MS)
        .await
        .expect("start");
    test_guest::wait_for_log(
        &RunPaths::new(&n1.host.run_dir(vmid)).serial_log,
        test_guest::READY_MARKER,
        BOOT_TIMEOUT_MS,
    )
    .await
    .expect("the guest boots");
    echo(&n1.host, vmid, 1).await;

    // Refusals: to its own node; a running VM without `online`.
    let (req, _) = request(p1.clone(), true);
    let err = migrate::migrate(&n1.host, vmid, req)
        .await
        .expect_err("migration to its own node");
    assert!(
        err.to_string().contains("is the node the VM is on"),
        "{err}"
    );
    let (req, _) = request(p2.clone(), false);
    let err = migrate::migrate(&n1.host, vmid, req)
        .await
        .expect_err("offline migration of a running VM");
    assert!(matches!(err, VmError::State(_)), "{err}");

    // n1 → n2 → n1, the guest answering after each hop.
    let hops = [
        (&n1.host, &n2.host, p2.clone()),
        (&n2.host, &n1.host, p1.clone()),
    ];
    for (hop, (from, to, peer)) in hops.into_iter().enumerate() {
        let before = entry(&store, vmid).await;
        let old_pid = qemu_pid(from, vmid).expect("the source QEMU runs");
        let (req, rx) = request(peer, true);
        let line = migrate::migrate(from, vmid, req).await.expect("migrate");
        let log = drain(rx);
        eprintln!("hop {hop}:\n  {}", log.join("\n  "));
        assert!(
            line.starts_with("migration finished successfully"),
            "{line}"
        );
        assert!(
            log.iter().any(|l| l.starts_with("migration downtime: ")),
            "{log:?}"
        );
        assert!(
            log.iter()
                .any(|l| l.starts_with("average migration speed: ")),
            "{log:?}"
        );
        let after = entry(&store, vmid).await;
        assert_eq!(after.record.node, to.node);
        assert_eq!(after.generation, before.generation + 1);
        assert_eq!(after.lock, None);
        assert_eq!(
            qemu_pid(from, vmid),
            None,
            "the source QEMU {old_pid} still runs"
        );
        let new_pid = qemu_pid(to, vmid).expect("the target QEMU runs");
        // The target's actor adopted the QEMU and recorded it.
        for _ in 0..100 {
            if entry(&store, vmid).await.runtime.pid == Some(new_pid) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let after = entry(&store, vmid).await;
        assert_eq!(after.runtime.pid, Some(new_pid));
        assert_eq!(after.record.status, "running");
        assert!(
            to.directory
                .lookup_ref::<vm::VmMsg>(&to.actor_path(vmid))
                .is_some()
        );
        assert!(
            from.directory
                .lookup_ref::<vm::VmMsg>(&from.actor_path(vmid))
                .is_none()
        );
        echo(to, vmid, 10 + hop as u32).await;
    }

    // A target that dies mid-migration: the VM keeps running on the source as before.
    let before = entry(&store, vmid).await;
    let pid = qemu_pid(&n1.host, vmid).expect("runs on n1");
    let dying: Arc<dyn MigrationPeer> = Arc::new(DyingTarget(
        LocalPeer::new(n2.host.clone(), "127.0.0.1"),
        n2.host.clone(),
    ));
    let (mut req, rx) = request(dying, true);
    req.options.bwlimit_kib_s = Some(SLOW_BWLIMIT_KIB_S);
    let err = migrate::migrate(&n1.host, vmid, req)
        .await
        .expect_err("the target died");
    eprintln!("failed migration: {err}\n  {}", drain(rx).join("\n  "));
    let after = entry(&store, vmid).await;
    assert_eq!(
        (
            after.record.node.as_str(),
            after.generation,
            after.lock.as_deref()
        ),
        ("n1", before.generation, None)
    );
    assert_eq!(qemu_pid(&n1.host, vmid), Some(pid));
    assert_eq!(
        qemu_pid(&n2.host, vmid),
        None,
        "the target QEMU was not removed"
    );
    echo(&n1.host, vmid, 50).await;
    // The VM's actor on n1 still owns it.
    ops::call(&n1.host, vmid, VmOp::Suspend, CALL_TIMEOUT_MS)
        .await
        .expect("suspend");
    ops::call(&n1.host, vmid, VmOp::Resume, CALL_TIMEOUT_MS)
        .await
        .expect("resume");

    // Local disks are refused with the reason; a stopped VM without disks moves offline.
    create_vm(&n1.host, 7101, Some("local1:1")).await;
    let (req, _) = request(p2.clone(), false);
    let err = migrate::migrate(&n1.host, 7101, req)
        .await
        .expect_err("local disk");
    assert!(
        err.to_string().contains("local disks (scsi0: local1:"),
        "{err}"
    );
    assert_eq!(entry(&store, 7101).await.record.node, "n1");

    create_vm(&n1.host, 7102, None).await;
    let (req, rx) = request(p2.clone(), true);
    migrate::migrate(&n1.host, 7102, req)
        .await
        .expect("offline migration");
    let log = drain(rx);
    assert!(
        log.iter()
            .any(|l| l.contains("Doing offline migration instead")),
        "{log:?}"
    );
    let moved = entry(&store, 7102).await;
    assert_eq!((moved.record.node.as_str(), moved.generation), ("n2", 1));
    ops::call(&n2.host, 7102, VmOp::Start, CALL_TIMEOUT_MS)
        .await
        .expect("the moved VM starts on n2");
    assert!(qemu_pid(&n2.host, 7102).is_some());

    for (host, id) in [(&n1.host, vmid), (&n2.host, 7102)] {
        ops::call(host, id, VmOp::Stop, CALL_TIMEOUT_MS)
            .await
            .expect("stop");
    }
}
