//! VMs: the record persisted in the store, the configuration model ([`config`]), the VM
//! actor's state machine ([`state`]), the `vm:{vmid}` actor ([`actor`]) and the node-level
//! operations that create, clone and list VMs ([`ops`]).
//!
//! Key layout: `("vms", vmid: u32)` → JSON [`VmEntry`], whose flattened top level is the
//! [`VmRecord`] summary. Listing all VMs is one range read over the `("vms",)` subspace;
//! `/cluster/resources` and `/cluster/nextid` read it as `VmRecord`s (unknown fields are
//! ignored), and the storage usage check finds the drives in its `config` object.
//!
//! Supervision: `qemu` (a supervisor under the server root, one-for-one, per-VM restart
//! intensity) with one transient `vm:{vmid}` child per VM placed on this node; at every
//! start it reads the store, so a restarted server re-adopts every running QEMU.

pub mod actor;
pub mod config;
pub mod disks;
pub mod migrate;
pub mod ops;
pub mod state;
#[cfg(test)]
mod supervision_tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use gpve_hypervisor::{Hypervisor, Qemu, QemuConfig};
use gpve_store::Store;
use gpve_supervisor::{
    ChildSpec, Directory, EscalationPolicy, RestartPolicy, Strategy, Supervisor, SupervisorSpec,
};
use ractor::SpawnErr;
use serde::{Deserialize, Serialize};

pub use actor::{VmActor, VmError, VmMsg, VmOp};
pub use state::{Desired, Phase};

/// Name of the store subspace holding VM records.
pub const VM_SUBSPACE: &str = "vms";

/// Lowest VMID Proxmox hands out (`/cluster/nextid` starts here).
pub const VMID_MIN: u32 = 100;
/// Highest VMID Proxmox accepts.
pub const VMID_MAX: u32 = 999_999_999;

/// What the control plane knows about one VM (desired config summary plus observed status).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    pub vmid: u32,
    pub name: String,
    /// Node the VM is placed on.
    pub node: String,
    /// `running` or `stopped` (Proxmox's `status` field).
    pub status: String,
    /// Configured vCPUs.
    pub maxcpu: u32,
    /// Configured memory in bytes.
    pub maxmem_bytes: u64,
    /// Configured root disk size in bytes.
    pub maxdisk_bytes: u64,
    #[serde(default)]
    pub template: bool,
    /// Start on `startall` (Proxmox `onboot`).
    #[serde(default)]
    pub onboot: bool,
    /// Tenant pool, if any.
    #[serde(default)]
    pub pool: Option<String>,
    /// Seconds since the VM started; 0 when stopped.
    #[serde(default)]
    pub uptime_s: u64,
}

/// What the actor last observed of the VM's QEMU process.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VmRuntime {
    pub pid: Option<u32>,
    /// Unix seconds when QEMU was started (or first adopted).
    pub started_at_s: Option<i64>,
    /// QEMU's run state (`running`, `paused`), `stopped` when no process.
    pub qmpstatus: String,
}

/// A snapshot of the VM: its configuration at the time and the disks it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSnapshot {
    pub description: String,
    pub snaptime: i64,
    pub parent: Option<String>,
    pub config: BTreeMap<String, String>,
}

/// Everything the store keeps about one VM (at `("vms", vmid)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmEntry {
    #[serde(flatten)]
    pub record: VmRecord,
    /// Proxmox keys and values (`memory → 512`, `scsi0 → local:100/vm-100-disk-0.qcow2`).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Values to apply at the next start (changes made while running).
    #[serde(default)]
    pub pending: BTreeMap<String, String>,
    /// Keys to delete at the next start.
    #[serde(default)]
    pub pending_delete: BTreeSet<String>,
    #[serde(default)]
    pub desired: Desired,
    #[serde(default)]
    pub runtime: VmRuntime,
    /// An operation in progress that must finish before others (`create`, `destroy`).
    #[serde(default)]
    pub lock: Option<String>,
    #[serde(default)]
    pub snapshots: BTreeMap<String, VmSnapshot>,
    /// The snapshot the current state derives from.
    #[serde(default)]
    pub parent_snapshot: Option<String>,
    /// Placement generation (fencing token): bumped whenever `record.node` changes
    /// (migration, HA relocation), in the same transaction.
    #[serde(default)]
    pub generation: u64,
}

impl VmEntry {
    /// The room the VM takes on its node, as the scheduler counts it.
    pub fn placement(&self) -> crate::scheduler::Placement {
        crate::scheduler::Placement {
            vmid: self.record.vmid,
            node: self.record.node.clone(),
            cpus: self.record.maxcpu,
            mem_bytes: self.record.maxmem_bytes,
            anti_affinity: None,
        }
    }

    /// A new stopped VM on `node`.
    pub fn new(vmid: u32, node: &str, config: BTreeMap<String, String>) -> Self {
        let mut e = VmEntry {
            record: VmRecord {
                vmid,
                name: String::new(),
                node: node.to_string(),
                status: "stopped".into(),
                maxcpu: 1,
                maxmem_bytes: 0,
                maxdisk_bytes: 0,
                template: false,
                onboot: false,
                pool: None,
                uptime_s: 0,
            },
            config,
            pending: BTreeMap::new(),
            pending_delete: BTreeSet::new(),
            desired: Desired::Stopped,
            runtime: VmRuntime {
                qmpstatus: "stopped".into(),
                ..VmRuntime::default()
            },
            lock: None,
            snapshots: BTreeMap::new(),
            parent_snapshot: None,
            generation: 0,
        };
        e.refresh_summary();
        e
    }

    /// Recompute the summary fields of the record from the configuration.
    pub fn refresh_summary(&mut self) {
        let c = &self.config;
        self.record.name = c
            .get("name")
            .cloned()
            .unwrap_or_else(|| format!("VM{}", self.record.vmid));
        self.record.maxcpu = config::vcpus(c);
        self.record.maxmem_bytes = config::memory_mib(c) * 1024 * 1024;
        self.record.maxdisk_bytes = c
            .iter()
            .filter(|(k, _)| config::is_drive(k))
            .filter_map(|(_, v)| config::parse_drive(v).ok()?.size_bytes)
            .next()
            .unwrap_or(0);
        self.record.onboot = config::flag(c, "onboot", false);
        self.record.template = config::flag(c, "template", false);
    }

    /// The configuration with pending changes applied (what the next start uses).
    pub fn with_pending(&self) -> BTreeMap<String, String> {
        let mut c = self.config.clone();
        for k in &self.pending_delete {
            c.remove(k);
        }
        for (k, v) in &self.pending {
            c.insert(k.clone(), v.clone());
        }
        c
    }
}

/// Read one VM's entry.
pub async fn load_entry(
    store: &Store,
    vmid: u32,
) -> Result<Option<VmEntry>, gpve_store::StoreError> {
    store.get_json(&vm_key(vmid)).await
}

/// Change one VM's entry in a transaction; `None` when the VM does not exist.
pub async fn update_entry<T, F>(
    store: &Store,
    vmid: u32,
    change: F,
) -> Result<Option<T>, gpve_store::StoreError>
where
    T: Send + 'static,
    F: Fn(&mut VmEntry) -> T + Send + Sync + Clone + 'static,
{
    store
        .transact(move |tx| {
            let change = change.clone();
            Box::pin(async move {
                let key = vm_key(vmid);
                let Some(mut entry) = tx.get_json::<VmEntry>(&key).await? else {
                    return Ok(None);
                };
                let out = change(&mut entry);
                entry.refresh_summary();
                tx.put_json(&key, &entry)?;
                Ok(Some(out))
            })
        })
        .await
}

/// Every VM entry, ordered by VMID.
pub async fn list_entries(store: &Store) -> Result<Vec<VmEntry>, gpve_store::StoreError> {
    let rows: Vec<(gpve_store::Key, VmEntry)> = store
        .list_json(&gpve_store::Key::prefix(&(VM_SUBSPACE,)))
        .await?;
    Ok(rows.into_iter().map(|(_, v)| v).collect())
}

/// Id of the VM supervisor under the server root.
pub const SUPERVISOR_ID: &str = "qemu";
/// Restarts of one VM actor allowed within [`VM_RESTART_WINDOW_MS`] before escalation.
pub const VM_MAX_RESTARTS: u32 = 3;
pub const VM_RESTART_WINDOW_MS: u64 = 60_000;
/// Environment variable overriding where QEMU run directories live.
pub const RUN_DIR_ENV: &str = "GPVE_QEMU_RUN_DIR";
/// Production location of QEMU run directories (tmpfs: gone after a host reboot, when no
/// QEMU can be running either).
pub const DEFAULT_RUN_DIR: &str = "/run/gpve/qemu";

/// Bounds of VM operations.
#[derive(Debug, Clone, Copy)]
pub struct VmTiming {
    /// QMP quit, then SIGKILL after this long.
    pub stop_timeout_ms: u64,
    /// While waiting for an ACPI shutdown, press the power button again this often (guests
    /// miss a press made early in boot).
    pub powerdown_repress_ms: u64,
    /// Default `timeout` of shutdown and reboot.
    pub shutdown_timeout_ms: u64,
}

impl Default for VmTiming {
    fn default() -> Self {
        VmTiming {
            stop_timeout_ms: 10_000,
            powerdown_repress_ms: 2_000,
            shutdown_timeout_ms: 180_000,
        }
    }
}

/// What every VM actor and VM operation of a node needs.
#[derive(Clone)]
pub struct VmHost {
    pub node: String,
    pub store: Store,
    pub hypervisor: Arc<dyn Hypervisor>,
    /// QEMU run directories: `{run_root}/{vmid}`.
    pub run_root: PathBuf,
    pub storage: crate::storage::StorageService,
    pub directory: Directory,
    /// Directory path of the VM supervisor (`gpve-server/qemu`).
    pub supervisor_path: String,
    pub timing: VmTiming,
    /// The host side of VM NICs (taps plugged into bridges, firewall refreshed).
    pub network: Arc<dyn crate::network::NicPlumbing>,
}

impl std::fmt::Debug for VmHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmHost")
            .field("node", &self.node)
            .field("run_root", &self.run_root)
            .field("supervisor_path", &self.supervisor_path)
            .finish_non_exhaustive()
    }
}

impl VmHost {
    /// Real QEMU, run directories under `$GPVE_QEMU_RUN_DIR` or [`DEFAULT_RUN_DIR`].
    pub fn real(
        node: &str,
        store: Store,
        storage: crate::storage::StorageService,
        supervisor_path: String,
    ) -> Self {
        let run_root = std::env::var_os(RUN_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR));
        // The network actor is the VM supervisor's sibling under the same root.
        let root = supervisor_path
            .rsplit_once('/')
            .map_or(supervisor_path.as_str(), |(root, _)| root);
        let network = crate::network::HostNics::new(
            storage.directory.clone(),
            crate::network::actor_path(root),
        );
        VmHost {
            node: node.to_string(),
            store,
            hypervisor: Arc::new(Qemu::new(QemuConfig::default())),
            run_root,
            directory: storage.directory.clone(),
            storage,
            supervisor_path,
            timing: VmTiming::default(),
            network: Arc::new(network),
        }
    }

    /// The run directory of one VM.
    pub fn run_dir(&self, vmid: u32) -> PathBuf {
        self.run_root.join(vmid.to_string())
    }

    /// Directory path of a VM's actor.
    pub fn actor_path(&self, vmid: u32) -> String {
        format!("{}/{}", self.supervisor_path, actor_id(vmid))
    }

    /// The VM supervisor, if running.
    pub fn supervisor(&self) -> Option<gpve_supervisor::SupervisorHandle> {
        gpve_supervisor::SupervisorHandle::lookup(&self.directory, &self.supervisor_path)
    }
}

/// Child id of a VM actor: `vm:{vmid}`.
pub fn actor_id(vmid: u32) -> String {
    format!("vm:{vmid}")
}

/// The child spec of one VM actor: transient (a deleted VM's actor stops normally and is
/// not restarted; a failure — QEMU died — restarts it).
pub fn vm_child(host: VmHost, vmid: u32) -> ChildSpec {
    ChildSpec::actor(actor_id(vmid), "vm", RestartPolicy::Transient, move |ctx| {
        (
            VmActor {
                stats: ctx.stats.clone(),
                host: host.clone(),
            },
            vmid,
        )
    })
}

/// The VM supervisor as a child of the server's tree: at every (re)start it reads the VM
/// entries and starts one `vm:{vmid}` actor per VM placed on this node; each adopts its
/// running QEMU or reconciles towards the desired state.
pub fn supervisor_child(host: VmHost) -> ChildSpec {
    ChildSpec::new(
        SUPERVISOR_ID,
        "vm-supervisor",
        RestartPolicy::Permanent,
        move |ctx| {
            let host = host.clone();
            async move {
                let entries = list_entries(&host.store)
                    .await
                    .map_err(|e| SpawnErr::StartupFailed(Box::new(e)))?;
                let mut spec = SupervisorSpec::new(SUPERVISOR_ID)
                    .kind("vm-supervisor")
                    .strategy(Strategy::OneForOne)
                    .intensity(VM_MAX_RESTARTS, VM_RESTART_WINDOW_MS)
                    .backoff(200, 5_000)
                    // One crash-looping VM must not take the node's other VMs down: it is
                    // left stopped and reported to the HA manager, which restarts or
                    // relocates it if it is an HA resource.
                    .escalation(EscalationPolicy::hook({
                        let host = host.clone();
                        move |e| {
                            tracing::error!(vm = %e.child, reason = %e.reason, restarts = e.restarts,
                                "VM keeps failing; restart intensity exceeded, left stopped");
                            let Some(vmid) = e.child.strip_prefix("vm:").and_then(|v| v.parse().ok())
                            else {
                                return;
                            };
                            let root = host.supervisor_path.split('/').next().unwrap_or_default();
                            crate::ha::report_vm_failure(
                                host.store.clone(),
                                host.directory.clone(),
                                root.to_string(),
                                crate::ha::VmFailure {
                                    vmid,
                                    node: host.node.clone(),
                                    reason: e.reason,
                                },
                            );
                        }
                    }));
                for e in entries.iter().filter(|e| e.record.node == host.node) {
                    spec = spec.child(vm_child(host.clone(), e.record.vmid));
                }
                let handle = Supervisor::spawn_linked(spec, ctx).await?;
                Ok(handle.cell())
            }
        },
    )
}

/// The store key of a VM record.
pub fn vm_key(vmid: u32) -> gpve_store::Key {
    gpve_store::Key::pack(&(VM_SUBSPACE, vmid))
}

/// Every VM record, ordered by VMID (one range read, one consistent snapshot).
pub async fn list_vms(store: &gpve_store::Store) -> Result<Vec<VmRecord>, gpve_store::StoreError> {
    let rows: Vec<(gpve_store::Key, VmRecord)> = store
        .list_json(&gpve_store::Key::prefix(&(VM_SUBSPACE,)))
        .await?;
    Ok(rows.into_iter().map(|(_, v)| v).collect())
}

/// Whether a VM record exists for `vmid`.
pub async fn vm_exists(
    store: &gpve_store::Store,
    vmid: u32,
) -> Result<bool, gpve_store::StoreError> {
    Ok(store.get(&vm_key(vmid)).await?.is_some())
}

/// The lowest VMID ≥ [`VMID_MIN`] not in `taken` (which must be sorted ascending).
pub fn first_free_vmid(taken: impl IntoIterator<Item = u32>) -> Option<u32> {
    let mut next = VMID_MIN;
    for id in taken {
        if id < next {
            continue;
        }
        if id > next {
            break;
        }
        next = next.checked_add(1)?;
    }
    (next <= VMID_MAX).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_vmid() {
        assert_eq!(first_free_vmid([]), Some(100));
        assert_eq!(first_free_vmid([1, 100, 101, 103]), Some(102));
        assert_eq!(first_free_vmid([101]), Some(100));
    }
}
