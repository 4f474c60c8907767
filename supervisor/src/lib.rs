//! Supervision trees on ractor: one-for-one and rest-for-one strategies, per-child restart
//! policies, restart intensity (max N restarts in a window), exponential backoff,
//! escalation, and a per-node [`Directory`] of every supervised actor for the console.
//!
//! Children are addressed through the [`Directory`] (path `node:n1/vm:100`), never through
//! ractor's process-global name registry. Semantics: `docs/runtime-semantics.md`.
//!
//! ```
//! use gpve_supervisor::{
//!     ActorStats, ChildSpec, Directory, EscalationPolicy, RestartPolicy, Strategy,
//!     Supervisor, SupervisorSpec,
//! };
//! use ractor::{Actor, ActorProcessingErr, ActorRef};
//!
//! struct Vm { stats: ActorStats }
//! enum VmMsg { Ping }
//! // ractor's `cluster` feature (on in this workspace) needs this for every message type.
//! impl ractor::Message for VmMsg {}
//!
//! impl Actor for Vm {
//!     type Msg = VmMsg;
//!     type State = ();
//!     type Arguments = u32; // vmid
//!     async fn pre_start(&self, _me: ActorRef<VmMsg>, _vmid: u32)
//!         -> Result<(), ActorProcessingErr> { Ok(()) }
//!     async fn handle(&self, _me: ActorRef<VmMsg>, _msg: VmMsg, _state: &mut ())
//!         -> Result<(), ActorProcessingErr> {
//!         self.stats.record_handled(); // feeds "messages handled" and "mailbox depth"
//!         Ok(())
//!     }
//! }
//!
//! fn vm_child(vmid: u32) -> ChildSpec {
//!     ChildSpec::actor(format!("vm:{vmid}"), "vm", RestartPolicy::Transient, move |ctx| {
//!         (Vm { stats: ctx.stats.clone() }, vmid)
//!     })
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let directory = Directory::new(); // one per process or simulated node
//! let (esc_tx, mut escalations) = tokio::sync::mpsc::unbounded_channel();
//! let node = Supervisor::spawn(
//!     SupervisorSpec::new("node:n1")
//!         .kind("node")
//!         .strategy(Strategy::OneForOne)
//!         .intensity(3, 60_000) // 3 restarts in 60 s per child, then escalate
//!         .backoff(100, 10_000)
//!         // The HA manager would cast to itself here; the default fails upward.
//!         .escalation(EscalationPolicy::hook(move |e| { let _ = esc_tx.send(e); }))
//!         .child(vm_child(100)),
//!     directory.clone(),
//! )
//! .await?;
//! node.add_child(vm_child(101)).await?;
//! directory.send("node:n1/vm:101", VmMsg::Ping)?;
//! let children = node.children().await?;
//! assert_eq!(children.len(), 2);
//! node.remove_child("vm:100").await?;
//! let _json = serde_json::to_string(&directory.snapshot_tree())?;
//! node.stop().await?;
//! assert!(escalations.try_recv().is_err());
//! # Ok(())
//! # }
//! ```

mod clock;
mod directory;
mod restart;
mod spec;
mod supervisor;

pub use clock::{
    Clock, SharedClock, TokioClock, install_process_clock, install_process_seed, seeded_u64,
    wall_now_ms, wall_now_s,
};
pub use directory::{
    ActorSnapshot, ActorState, ActorStats, ActorTreeNode, Directory, DirectoryEvent,
    DirectorySendError, EVENT_CAPACITY, EventKind, RECENT_RESTARTS_LEN, RestartRecord,
};
pub use restart::{Backoff, RestartDecision, RestartIntensity, RestartTracker};
pub use spec::{
    ChildContext, ChildSpec, Escalation, EscalationPolicy, RestartPolicy, StartFn, Strategy,
    SupervisorSpec,
};
pub use supervisor::{
    ChildInfo, Supervisor, SupervisorArgs, SupervisorError, SupervisorHandle, SupervisorMsg,
    SupervisorState,
};
