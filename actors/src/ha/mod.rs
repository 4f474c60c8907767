//! High availability: the HA manager's decisions ([`state`]) and the agent's fencing
//! decisions ([`fence`]), both pure (no tokio, no clock of their own: time comes in as
//! `now_ms`), so the deterministic simulation drives the same code as the server.
//!
//! The actors that feed them live in `api`: the `ha-manager` under `cluster`
//! (`api/src/cluster/ha.rs`) and the agent's fence actor and watchdog
//! (`api/src/agent/fence.rs`).

pub mod fence;
pub mod state;

use serde::{Deserialize, Serialize};

pub use fence::{FenceClock, FenceDecision, FenceError, Fencer};
pub use state::{
    HaAction, HaConfig, HaInput, HaManager, NodeState, RequestState, ResourceConfig, ResourceState,
    ServiceStatus,
};

/// Proxmox's id of a VM resource: `vm:100`.
pub fn sid(vmid: u32) -> String {
    format!("vm:{vmid}")
}

/// The VMID in a Proxmox resource id (`vm:100` or plain `100`); containers (`ct:`) are not
/// supported.
pub fn parse_sid(sid: &str) -> Option<u32> {
    let id = sid.strip_prefix("vm:").unwrap_or(sid);
    let vmid: u32 = id.parse().ok()?;
    (crate::vm::VMID_MIN..=crate::vm::VMID_MAX)
        .contains(&vmid)
        .then_some(vmid)
}

/// Child id of the HA manager under `cluster`.
pub const MANAGER_ID: &str = "ha-manager";

/// Directory path of the HA manager under the process root `root` (`gpve-server`).
pub fn manager_path(root: &str) -> String {
    format!("{root}/cluster/{MANAGER_ID}")
}

/// Commands of the `ha-manager` actor (it runs in `api`; the type lives here so node-side
/// code can reach it through the directory). One lifecycle state: running.
#[derive(Debug)]
pub enum HaManagerMsg {
    /// Something changed (configuration, a failure report, a lease): run a pass now
    /// instead of at the next tick.
    Poke,
    /// Feed one input directly (node-monitor failures carry the lease deadline).
    Input(HaInput),
    /// The current state machine.
    Status(ractor::RpcReplyPort<HaManager>),
}

impl ractor::Message for HaManagerMsg {}

/// A VM that exceeded its restart intensity, reported by its node's supervisor through
/// the store (so it reaches the manager from any node) at [`failure_key`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmFailure {
    pub vmid: u32,
    pub node: String,
    pub reason: String,
}

/// `("ha", "failed", vmid)`.
pub fn failure_key(vmid: u32) -> gpve_store::Key {
    gpve_store::Key::pack(&("ha", "failed", vmid))
}

/// Called by a node's VM supervisor when `vm:{vmid}` exceeds its restart intensity:
/// record the failure in the store, then wake the manager if it runs in this process.
/// Never blocks the supervisor (the work is spawned).
pub fn report_vm_failure(
    store: gpve_store::Store,
    directory: gpve_supervisor::Directory,
    root: String,
    failure: VmFailure,
) {
    tokio::spawn(async move {
        if let Err(e) = store.put_json(&failure_key(failure.vmid), &failure).await {
            tracing::error!(vmid = failure.vmid, error = %e,
                "recording the VM failure for HA failed; HA will not act on it");
            return;
        }
        let _ = directory.send(&manager_path(&root), HaManagerMsg::Poke);
    });
}
