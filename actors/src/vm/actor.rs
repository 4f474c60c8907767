//! The `vm:{vmid}` actor: owns at most one QEMU process of its VM and serialises every
//! operation on the VM through its mailbox (no lock files, no lock timeouts).
//!
//! Decisions come from [`super::state`]; this module only executes their effects. On
//! start the actor reconciles (adopt the running QEMU, start it, or finish a stop); an
//! unexpected QEMU exit makes the actor fail so its supervisor restarts it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gpve_hypervisor::{
    DiskFormat, ExitCause, HypervisorError, VmEvent, VmExit, VmProcess, VmStatus,
};
use gpve_storage_drivers::{SnapshotName, VolumeFormat, VolumeId, VolumeLocation};
use gpve_supervisor::ActorStats;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::config::{self, ConfigErrors};
use super::state::{self, Command, Desired, Effect, ExitKind, Phase, StateError, VmState};
use super::{VmEntry, VmHost, VmRuntime, VmSnapshot, load_entry, update_entry};
use crate::storage::{StorageServiceError, VolumeMsg};

/// Failures of VM operations.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error("VM {0} does not exist")]
    NotFound(u32),
    #[error("VM {vmid} is locked ({lock})")]
    Locked { vmid: u32, lock: String },
    #[error("QEMU of VM {vmid} failed: {message}")]
    Hypervisor { vmid: u32, message: String },
    #[error("storage operation failed: {0}")]
    Storage(String),
    #[error("the store failed")]
    Store(#[from] gpve_store::StoreError),
    #[error("VM {vmid} did not shut down within {timeout_ms} ms (use forceStop to stop it)")]
    ShutdownTimeout { vmid: u32, timeout_ms: u64 },
    #[error("snapshot '{name}' of VM {vmid}: {reason}")]
    Snapshot {
        vmid: u32,
        name: String,
        reason: String,
    },
    #[error("VM {vmid} is protected; remove 'protection' first")]
    Protected { vmid: u32 },
    #[error("the VM actor is not available: {0}")]
    Unavailable(String),
    #[error("the NICs of VM {vmid} could not be plugged: {message}")]
    Network { vmid: u32, message: String },
    #[error(transparent)]
    Migration(#[from] super::migrate::MigrationError),
    #[error("VM {vmid} is placed on node {node} now; this node does not start a stale copy")]
    PlacedElsewhere { vmid: u32, node: String },
}

impl VmError {
    fn hv(vmid: u32, e: HypervisorError) -> Self {
        VmError::Hypervisor {
            vmid,
            message: crate::storage::error_chain(&e),
        }
    }
}

impl From<StorageServiceError> for VmError {
    fn from(e: StorageServiceError) -> Self {
        VmError::Storage(crate::storage::error_chain(&e))
    }
}

/// An operation on one VM. The phases each is allowed in are documented on
/// [`state::Command`]; `UpdateConfig` and the snapshot operations do their own checks.
#[derive(Debug, Clone)]
pub enum VmOp {
    Start,
    Stop,
    Shutdown {
        timeout_ms: Option<u64>,
        force_stop: bool,
    },
    Reboot {
        timeout_ms: Option<u64>,
    },
    Reset,
    Suspend,
    Resume,
    /// Remove the VM and its disks (`purge`: also drop it from other configuration, which
    /// gpve does not have yet beyond the VM's own record).
    Delete {
        purge: bool,
    },
    /// Set canonical values (already checked by [`config::parse_changes`]; `STORAGE:SIZE`
    /// drives are allocated here) and delete keys. Deleting a drive keeps its volume as
    /// `unusedN`; deleting `unusedN` destroys the volume.
    UpdateConfig {
        set: BTreeMap<String, String>,
        delete: Vec<String>,
        /// Drop pending changes of these keys.
        revert: Vec<String>,
    },
    SnapshotCreate {
        name: String,
        description: String,
    },
    SnapshotDelete {
        name: String,
    },
    SnapshotRollback {
        name: String,
    },
    Template,
    /// Full copy into the VM `newid`, already reserved (locked `create`) by
    /// [`super::ops::reserve`]: every disk is copied with `qemu-img convert` into the
    /// target storage's upload staging file and published atomically; the new VM gets
    /// the configuration with new disks, new MAC addresses and no snapshots.
    Clone {
        newid: u32,
        name: Option<String>,
        /// Target storage for every disk; the source disk's storage when `None`.
        storage: Option<String>,
        /// Linked clones (templates only) instead of full copies; see [`super::disks`].
        linked: bool,
    },
    /// Grow disk `disk` by (`+1G`) or to (`10G`) `size` (see [`super::disks`]).
    Resize {
        disk: String,
        size: String,
    },
    /// Copy disk `disk` to `storage` and switch to it; the old volume becomes `unusedN`
    /// unless `delete`. Stopped VMs only (see [`super::disks`]).
    MoveDisk {
        disk: String,
        storage: String,
        format: Option<VolumeFormat>,
        delete: bool,
    },
    /// Hand the VM to another node, live when it runs (see [`super::migrate`]).
    Migrate(super::migrate::MigrateRequest),
}

impl VmOp {
    fn command(&self, timing: &super::VmTiming) -> Command {
        match self {
            VmOp::Start => Command::Start,
            VmOp::Stop => Command::Stop,
            VmOp::Shutdown {
                timeout_ms,
                force_stop,
            } => Command::Shutdown {
                timeout_ms: timeout_ms.unwrap_or(timing.shutdown_timeout_ms),
                force_stop: *force_stop,
            },
            VmOp::Reboot { timeout_ms } => Command::Reboot {
                timeout_ms: timeout_ms.unwrap_or(timing.shutdown_timeout_ms),
            },
            VmOp::Reset => Command::Reset,
            VmOp::Suspend => Command::Suspend,
            VmOp::Resume => Command::Resume,
            VmOp::Delete { .. } => Command::Delete,
            VmOp::UpdateConfig { .. } => Command::UpdateConfig,
            VmOp::SnapshotCreate { .. }
            | VmOp::SnapshotDelete { .. }
            | VmOp::SnapshotRollback { .. } => Command::Snapshot,
            VmOp::Template => Command::Template,
            VmOp::Clone { .. } => Command::Clone,
            // Any phase: the disk work decides (and names) what a running VM cannot do.
            VmOp::Resize { .. } | VmOp::MoveDisk { .. } => Command::UpdateConfig,
            VmOp::Migrate(req) => Command::Migrate { online: req.online },
        }
    }
}

/// Messages of the VM actor.
#[derive(Debug)]
pub enum VmMsg {
    /// First message of every incarnation (internal): adopt or start QEMU as the desired
    /// state says.
    Reconcile,
    /// The QEMU process `pid` ended (internal, from the exit watcher).
    Exited { pid: u32, exit: VmExit },
    /// An operation; the reply carries a line for the task log.
    Op(VmOp, RpcReplyPort<Result<String, VmError>>),
}

impl ractor::Message for VmMsg {}

/// The VM actor.
pub struct VmActor {
    pub stats: ActorStats,
    pub host: VmHost,
}

/// State of one incarnation.
pub struct VmActorState {
    pub(super) sm: VmState,
    pub(super) process: Option<Arc<dyn VmProcess>>,
    watcher: Option<JoinHandle<()>>,
    span: tracing::Span,
}

impl VmActorState {
    pub(super) fn drop_process(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        self.process = None;
    }
}

impl Drop for VmActorState {
    fn drop(&mut self) {
        // The watcher only holds an event receiver; stopping it here keeps a killed
        // incarnation from leaving tasks behind.
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
    }
}

fn now_s() -> i64 {
    gpve_supervisor::wall_now_s()
}

/// Forwards the exit of `process` to the actor; holds only an event receiver so dropping
/// the process (detach) ends it.
fn watch_exit(process: &Arc<dyn VmProcess>, me: ActorRef<VmMsg>) -> JoinHandle<()> {
    let pid = process.handle().pid;
    let mut rx = process.subscribe();
    let already = process.exit();
    tokio::spawn(async move {
        if let Some(exit) = already {
            let _ = me.cast(VmMsg::Exited { pid, exit });
            return;
        }
        loop {
            match rx.recv().await {
                Ok(VmEvent::Exited(exit)) => {
                    let _ = me.cast(VmMsg::Exited { pid, exit });
                    return;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

fn exit_kind(exit: &VmExit) -> ExitKind {
    match &exit.cause {
        ExitCause::GuestShutdown => ExitKind::GuestPoweroff,
        other => ExitKind::Unexpected(format!("{other:?} (pid {})", exit.pid)),
    }
}

impl Actor for VmActor {
    type Msg = VmMsg;
    type State = VmActorState;
    type Arguments = u32;

    async fn pre_start(
        &self,
        myself: ActorRef<VmMsg>,
        vmid: u32,
    ) -> Result<VmActorState, ActorProcessingErr> {
        // Quick: the slow part (QMP, spawning QEMU) runs as the first message so the
        // supervisor is not held up.
        let entry = load_entry(&self.host.store, vmid).await?;
        let (phase, desired, template) = match &entry {
            Some(e) => (Phase::Stopped, e.desired, e.record.template),
            None => (Phase::Deleted, Desired::Stopped, false),
        };
        myself.cast(VmMsg::Reconcile)?;
        self.stats.set_owned("vmid", vmid);
        Ok(VmActorState {
            sm: VmState {
                vmid,
                phase,
                desired,
                template,
            },
            process: None,
            watcher: None,
            span: tracing::info_span!("vm", node = %self.host.node, vmid),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<VmMsg>,
        msg: VmMsg,
        st: &mut VmActorState,
    ) -> Result<(), ActorProcessingErr> {
        self.stats.record_handled();
        let result = self.dispatch(&myself, msg, st).await;
        // The console shows which QEMU this actor owns; any message may start or lose it.
        match st.process.as_ref() {
            Some(p) => self.stats.set_owned("qemu_pid", p.handle().pid),
            None => self.stats.clear_owned("qemu_pid"),
        }
        result
    }
}

impl VmActor {
    async fn dispatch(
        &self,
        myself: &ActorRef<VmMsg>,
        msg: VmMsg,
        st: &mut VmActorState,
    ) -> Result<(), ActorProcessingErr> {
        let span = st.span.clone();
        match msg {
            VmMsg::Reconcile => self.reconcile(myself, st).instrument(span).await,
            VmMsg::Exited { pid, exit } => {
                let current = st.process.as_ref().map(|p| p.handle().pid);
                if current != Some(pid) {
                    return Ok(());
                }
                let t = state::exited(&st.sm, &exit_kind(&exit));
                st.drop_process();
                let _g = span.enter();
                tracing::info!(pid, cause = ?exit.cause, "QEMU exited");
                for effect in &t.effects {
                    match effect {
                        Effect::Fail(why) => {
                            return Err(why.clone().into());
                        }
                        Effect::PersistDesired(d) => {
                            let d = *d;
                            update_entry(&self.host.store, st.sm.vmid, move |e| {
                                e.desired = d;
                                set_stopped(e);
                            })
                            .await?;
                        }
                        _ => {}
                    }
                }
                st.sm = t.next;
                Ok(())
            }
            VmMsg::Op(op, reply) => {
                let result = self.op(myself, st, op).instrument(span).await;
                // The caller may have given up waiting; the operation still happened.
                let _ = reply.send(result);
                Ok(())
            }
        }
    }
}

/// NIC configuration problems are the caller's (400 on `netN`); the rest are the host's.
pub(super) fn nic_error(vmid: u32) -> impl Fn(crate::network::NicsError) -> VmError {
    move |e| match e {
        crate::network::NicsError::Config { key, reason } => {
            VmError::Config(ConfigErrors::one(&key, reason))
        }
        other => VmError::Network {
            vmid,
            message: other.to_string(),
        },
    }
}

fn set_stopped(e: &mut VmEntry) {
    e.runtime = VmRuntime {
        pid: None,
        started_at_s: None,
        qmpstatus: "stopped".into(),
    };
    e.record.status = "stopped".into();
    e.record.uptime_s = 0;
}

impl VmActor {
    fn vmid(st: &VmActorState) -> u32 {
        st.sm.vmid
    }

    async fn reconcile(
        &self,
        myself: &ActorRef<VmMsg>,
        st: &mut VmActorState,
    ) -> Result<(), ActorProcessingErr> {
        if st.sm.phase == Phase::Deleted {
            return Ok(());
        }
        let vmid = Self::vmid(st);
        let run_dir = self.host.run_dir(vmid);
        let adopted = self
            .host
            .hypervisor
            .adopt(vmid, &run_dir)
            .await
            .map_err(|e| VmError::hv(vmid, e))?;
        let found = adopted.is_some();
        let t = state::reconcile(vmid, st.sm.desired, st.sm.template, found);
        if let Some(p) = adopted {
            let p: Arc<dyn VmProcess> = Arc::from(p);
            st.watcher = Some(watch_exit(&p, myself.clone()));
            st.process = Some(p);
        }
        for effect in &t.effects {
            match effect {
                Effect::AdoptQemu => {
                    let pid = st.process.as_ref().map(|p| p.handle().pid);
                    tracing::info!(?pid, "adopted running QEMU");
                    self.persist_running(st).await?;
                }
                Effect::StopQemu => {
                    self.stop_qemu(st).await?;
                }
                Effect::ApplyPending => self.apply_pending(vmid).await?,
                Effect::SpawnQemu => {
                    tracing::info!("desired state is running and no QEMU runs: starting it");
                    self.spawn(myself, st).await?;
                }
                Effect::PersistDesired(d) => {
                    let d = *d;
                    update_entry(&self.host.store, vmid, move |e| e.desired = d).await?;
                }
                _ => {}
            }
        }
        st.sm = t.next;
        if st.sm.phase == Phase::Stopped {
            update_entry(&self.host.store, vmid, set_stopped).await?;
        }
        Ok(())
    }

    async fn op(
        &self,
        myself: &ActorRef<VmMsg>,
        st: &mut VmActorState,
        op: VmOp,
    ) -> Result<String, VmError> {
        let vmid = Self::vmid(st);
        // The phase may have changed behind our back (paused from outside, or QEMU gone).
        self.refresh_phase(st).await;
        let t = state::command(&st.sm, &op.command(&self.host.timing))?;
        if let Some(entry) = load_entry(&self.host.store, vmid).await?
            && let Some(lock) = &entry.lock
        {
            return Err(VmError::Locked {
                vmid,
                lock: lock.clone(),
            });
        }
        let mut log = String::new();
        for effect in &t.effects {
            match effect {
                Effect::PersistDesired(d) => {
                    let d = *d;
                    update_entry(&self.host.store, vmid, move |e| e.desired = d).await?;
                }
                Effect::ApplyPending => self.apply_pending(vmid).await?,
                Effect::SpawnQemu => {
                    if let Err(e) = self.spawn(myself, st).await {
                        // Nothing runs: the desired state goes back to stopped.
                        update_entry(&self.host.store, vmid, |e| {
                            e.desired = Desired::Stopped;
                            set_stopped(e);
                        })
                        .await?;
                        st.sm.phase = Phase::Stopped;
                        st.sm.desired = Desired::Stopped;
                        return Err(e);
                    }
                    let pid = st.process.as_ref().map(|p| p.handle().pid).unwrap_or(0);
                    log = format!("VM {vmid} started (pid {pid})");
                }
                Effect::Powerdown {
                    timeout_ms,
                    force_stop,
                } => {
                    log = self.powerdown(st, *timeout_ms, *force_stop).await?;
                }
                Effect::StopQemu => {
                    self.stop_qemu(st).await?;
                    log = format!("VM {vmid} stopped");
                }
                Effect::Reset => {
                    self.process(st)?
                        .reset()
                        .await
                        .map_err(|e| VmError::hv(vmid, e))?;
                    log = format!("VM {vmid} reset");
                }
                Effect::Pause => {
                    self.process(st)?
                        .pause()
                        .await
                        .map_err(|e| VmError::hv(vmid, e))?;
                    update_entry(&self.host.store, vmid, |e| {
                        e.runtime.qmpstatus = "paused".into()
                    })
                    .await?;
                    log = format!("VM {vmid} suspended");
                }
                Effect::Resume => {
                    self.process(st)?
                        .resume()
                        .await
                        .map_err(|e| VmError::hv(vmid, e))?;
                    update_entry(&self.host.store, vmid, |e| {
                        e.runtime.qmpstatus = "running".into()
                    })
                    .await?;
                    log = format!("VM {vmid} resumed");
                }
                Effect::Destroy => {
                    let purge = matches!(op, VmOp::Delete { purge: true });
                    self.destroy(vmid, purge).await?;
                    log = format!("VM {vmid} destroyed");
                }
                Effect::Work => {
                    log = self.work(st, &op).await?;
                }
                Effect::AdoptQemu | Effect::Fail(_) => {}
            }
        }
        st.sm = t.next;
        Ok(log)
    }

    fn process(&self, st: &VmActorState) -> Result<Arc<dyn VmProcess>, VmError> {
        st.process.clone().ok_or(VmError::Unavailable(format!(
            "VM {} has no QEMU process",
            st.sm.vmid
        )))
    }

    /// Align the phase with the process: QEMU gone (its exit not yet handled) or paused
    /// from outside.
    async fn refresh_phase(&self, st: &mut VmActorState) {
        let Some(p) = st.process.clone() else {
            return;
        };
        if p.exit().is_some() {
            // The exit message is queued; handle the command as if stopped only when the
            // guest itself powered off. A crash is left to the Exited message (restart).
            return;
        }
        if let Ok(status) = p.status().await {
            st.sm.phase = match status {
                VmStatus::Paused => Phase::Paused,
                _ => Phase::Running,
            };
        }
    }

    async fn persist_running(&self, st: &VmActorState) -> Result<(), VmError> {
        let Some(p) = &st.process else {
            return Ok(());
        };
        let pid = p.handle().pid;
        let qmpstatus = match p.status().await {
            Ok(VmStatus::Paused) => "paused",
            _ => "running",
        };
        let started = process_start_s(pid).unwrap_or_else(now_s);
        update_entry(&self.host.store, st.sm.vmid, move |e| {
            e.runtime = VmRuntime {
                pid: Some(pid),
                started_at_s: Some(started),
                qmpstatus: qmpstatus.into(),
            };
            e.record.status = "running".into();
        })
        .await?;
        Ok(())
    }

    async fn apply_pending(&self, vmid: u32) -> Result<(), VmError> {
        update_entry(&self.host.store, vmid, |e| {
            e.config = e.with_pending();
            e.pending.clear();
            e.pending_delete.clear();
        })
        .await?;
        Ok(())
    }

    async fn spawn(&self, myself: &ActorRef<VmMsg>, st: &mut VmActorState) -> Result<(), VmError> {
        let vmid = Self::vmid(st);
        let entry = load_entry(&self.host.store, vmid)
            .await?
            .ok_or(VmError::NotFound(vmid))?;
        // The record is the placement authority: after HA or a migration moved the VM, an
        // actor left behind here must never start a second copy (the fencing rule).
        if entry.record.node != self.host.node {
            return Err(VmError::PlacedElsewhere {
                vmid,
                node: entry.record.node,
            });
        }
        let spec = prepare_spec(&self.host, vmid, &entry.config).await?;
        let run_dir = self.host.run_dir(vmid);
        let p = match self.host.hypervisor.start(&spec, &run_dir).await {
            Ok(p) => p,
            Err(e) => {
                let _ = self.host.network.unplug(vmid).await;
                return Err(VmError::hv(vmid, e));
            }
        };
        let p: Arc<dyn VmProcess> = Arc::from(p);
        tracing::info!(pid = p.handle().pid, "QEMU started");
        st.watcher = Some(watch_exit(&p, myself.clone()));
        st.process = Some(p);
        self.persist_running(st).await
    }

    async fn stop_qemu(&self, st: &mut VmActorState) -> Result<(), VmError> {
        let vmid = Self::vmid(st);
        if let Some(p) = st.process.clone() {
            p.stop(self.host.timing.stop_timeout_ms)
                .await
                .map_err(|e| VmError::hv(vmid, e))?;
        }
        st.drop_process();
        self.host
            .network
            .unplug(vmid)
            .await
            .map_err(nic_error(vmid))?;
        update_entry(&self.host.store, vmid, set_stopped).await?;
        Ok(())
    }

    /// ACPI shutdown, re-pressing the button while waiting; forced stop after the timeout
    /// when asked, else an error leaving the VM running (its desired state back to running).
    async fn powerdown(
        &self,
        st: &mut VmActorState,
        timeout_ms: u64,
        force_stop: bool,
    ) -> Result<String, VmError> {
        let vmid = Self::vmid(st);
        let p = self.process(st)?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        let mut exited = false;
        while tokio::time::Instant::now() < deadline {
            if p.exit().is_some() {
                exited = true;
                break;
            }
            // A press can fail when QEMU is already going away; the wait below tells.
            if let Err(e) = p.powerdown().await {
                tracing::debug!(error = %e, "ACPI power button press failed");
            }
            let wait = Duration::from_millis(self.host.timing.powerdown_repress_ms)
                .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            if tokio::time::timeout(wait, p.wait_exit()).await.is_ok() {
                exited = true;
                break;
            }
        }
        let msg = if exited {
            format!("VM {vmid} shut down")
        } else if force_stop {
            tracing::info!(timeout_ms, "guest did not power off; stopping it");
            p.stop(self.host.timing.stop_timeout_ms)
                .await
                .map_err(|e| VmError::hv(vmid, e))?;
            format!("VM {vmid} did not shut down within {timeout_ms} ms: stopped")
        } else {
            update_entry(&self.host.store, vmid, |e| e.desired = Desired::Running).await?;
            return Err(VmError::ShutdownTimeout { vmid, timeout_ms });
        };
        st.drop_process();
        update_entry(&self.host.store, vmid, set_stopped).await?;
        Ok(msg)
    }

    async fn destroy(&self, vmid: u32, _purge: bool) -> Result<(), VmError> {
        let entry = load_entry(&self.host.store, vmid)
            .await?
            .ok_or(VmError::NotFound(vmid))?;
        if config::flag(&entry.config, "protection", false) {
            return Err(VmError::Protected { vmid });
        }
        super::disks::refuse_if_linked_base(&self.host.store, vmid).await?;
        let mut volumes = config::owned_volumes(&entry.with_pending());
        volumes.extend(config::owned_volumes(&entry.config));
        for snap in entry.snapshots.values() {
            volumes.extend(config::owned_volumes(&snap.config));
        }
        volumes.sort();
        volumes.dedup();
        // Drop the references first: the storage refuses to delete a volume a VM uses.
        update_entry(&self.host.store, vmid, |e| {
            e.lock = Some("destroy".into());
            e.config
                .retain(|k, _| config::key_kind(k) == Some(config::KeyKind::Plain));
            e.pending.clear();
            e.pending_delete.clear();
            // Disk snapshots go with their volumes.
            e.snapshots.clear();
        })
        .await?;
        for volid in volumes {
            remove_volume(&self.host, vmid, &volid).await?;
        }
        self.host.store.delete(&super::vm_key(vmid)).await?;
        super::disks::forget_linked_base(&self.host.store, vmid).await?;
        let run_dir = self.host.run_dir(vmid);
        if let Err(e) = std::fs::remove_dir_all(&run_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %run_dir.display(), error = %e, "cannot remove the run directory");
        }
        Ok(())
    }

    async fn work(&self, st: &mut VmActorState, op: &VmOp) -> Result<String, VmError> {
        let vmid = Self::vmid(st);
        match op {
            VmOp::UpdateConfig {
                set,
                delete,
                revert,
            } => {
                let running = st.sm.phase != Phase::Stopped;
                self.update_config(vmid, running, set, delete, revert).await
            }
            VmOp::SnapshotCreate { name, description } => {
                self.snapshot_create(vmid, name, description).await
            }
            VmOp::SnapshotDelete { name } => self.snapshot_delete(vmid, name).await,
            VmOp::SnapshotRollback { name } => self.snapshot_rollback(vmid, name).await,
            VmOp::Clone {
                newid,
                name,
                storage,
                linked,
            } => {
                self.clone_into(vmid, *newid, name.clone(), storage.clone(), *linked)
                    .await
            }
            VmOp::Resize { disk, size } => {
                self.resize_disk(vmid, st.sm.phase != Phase::Stopped, disk, size)
                    .await
            }
            VmOp::MoveDisk {
                disk,
                storage,
                format,
                delete,
            } => {
                let running = st.sm.phase != Phase::Stopped;
                self.move_disk(vmid, running, disk, storage, *format, *delete)
                    .await
            }
            VmOp::Migrate(req) => self.migrate_out(st, req).await,
            VmOp::Template => {
                update_entry(&self.host.store, vmid, |e| {
                    e.config.insert("template".into(), "1".into());
                })
                .await?;
                Ok(format!("VM {vmid} is now a template"))
            }
            _ => Ok(String::new()),
        }
    }

    async fn update_config(
        &self,
        vmid: u32,
        running: bool,
        set: &BTreeMap<String, String>,
        delete: &[String],
        revert: &[String],
    ) -> Result<String, VmError> {
        let entry = load_entry(&self.host.store, vmid)
            .await?
            .ok_or(VmError::NotFound(vmid))?;
        if config::flag(&entry.config, "protection", false)
            && delete
                .iter()
                .any(|k| config::is_drive(k) || k.starts_with("unused"))
        {
            return Err(VmError::Protected { vmid });
        }
        // Allocate new disks first; on any failure remove what this call allocated.
        let (set, allocated) = super::ops::allocate_drives(&self.host, vmid, set).await?;
        let mut merged = entry.with_pending();
        for k in delete {
            merged.remove(k);
        }
        merged.extend(set.clone());
        if let Err(e) = config::check_whole(&merged) {
            super::ops::remove_volumes(&self.host, vmid, &allocated).await;
            return Err(e.into());
        }
        let set_c = set.clone();
        let delete_c: Vec<String> = delete.to_vec();
        let revert_c: Vec<String> = revert.to_vec();
        // Volumes of unusedN keys deleted now are destroyed after the record drops them.
        let destroyed: Vec<String> = delete
            .iter()
            .filter(|k| k.starts_with("unused"))
            .filter_map(|k| entry.config.get(k).cloned())
            .collect();
        let result = update_entry(&self.host.store, vmid, move |e| {
            for k in &revert_c {
                e.pending.remove(k);
                e.pending_delete.remove(k);
            }
            let mut detached = Vec::new();
            for k in &delete_c {
                let hot =
                    !running || config::HOT_KEYS.contains(&k.as_str()) || k.starts_with("unused");
                if hot {
                    if let Some(old) = e.config.remove(k)
                        && config::is_drive(k)
                        && let Ok(d) = config::parse_drive(&old)
                        && let Some(v) = d.volume()
                    {
                        detached.push(v.to_string());
                    }
                    e.pending.remove(k);
                } else {
                    e.pending.remove(k);
                    e.pending_delete.insert(k.clone());
                }
            }
            for v in detached {
                let n = (0..config::UNUSED_SLOTS)
                    .find(|n| !e.config.contains_key(&format!("unused{n}")))
                    .unwrap_or(0);
                e.config.insert(format!("unused{n}"), v);
            }
            for (k, v) in &set_c {
                let hot = !running || config::HOT_KEYS.contains(&k.as_str());
                if hot {
                    e.config.insert(k.clone(), v.clone());
                    e.pending.remove(k);
                    e.pending_delete.remove(k);
                } else {
                    e.pending.insert(k.clone(), v.clone());
                    e.pending_delete.remove(k);
                }
            }
            (e.pending.len(), e.pending_delete.len())
        })
        .await;
        let (pending, pending_delete) = match result {
            Ok(Some(counts)) => counts,
            Ok(None) => {
                super::ops::remove_volumes(&self.host, vmid, &allocated).await;
                return Err(VmError::NotFound(vmid));
            }
            Err(e) => {
                super::ops::remove_volumes(&self.host, vmid, &allocated).await;
                return Err(e.into());
            }
        };
        for v in destroyed {
            remove_volume(&self.host, vmid, &v).await?;
        }
        let keys: BTreeSet<&String> = set.keys().chain(delete.iter()).collect();
        Ok(format!(
            "VM {vmid}: updated {} key(s); {pending} pending change(s), {pending_delete} pending deletion(s)",
            keys.len()
        ))
    }

    async fn snapshot_create(
        &self,
        vmid: u32,
        name: &str,
        description: &str,
    ) -> Result<String, VmError> {
        let snap_err = |reason: String| VmError::Snapshot {
            vmid,
            name: name.to_string(),
            reason,
        };
        let snap = SnapshotName::new(name).map_err(|e| snap_err(e.to_string()))?;
        let entry = load_entry(&self.host.store, vmid)
            .await?
            .ok_or(VmError::NotFound(vmid))?;
        if entry.snapshots.contains_key(name) || name == "current" {
            return Err(snap_err("a snapshot with this name exists".into()));
        }
        let volumes: Vec<String> = config::drive_volumes(&entry.config).into_values().collect();
        let mut done: Vec<VolumeId> = Vec::new();
        for volid in &volumes {
            let id: VolumeId = volid.parse().map_err(|e| snap_err(format!("{e}")))?;
            let s = snap.clone();
            let r = self
                .host
                .storage
                .volume(&id, true, |reply| VolumeMsg::CreateSnapshot {
                    name: s,
                    reply,
                })
                .await;
            if let Err(e) = r {
                // All disks or none.
                for d in &done {
                    let s = snap.clone();
                    let _ = self
                        .host
                        .storage
                        .volume(d, true, |reply| VolumeMsg::DeleteSnapshot {
                            name: s,
                            reply,
                        })
                        .await;
                }
                return Err(e.into());
            }
            done.push(id);
        }
        let record = VmSnapshot {
            description: description.to_string(),
            snaptime: now_s(),
            parent: entry.parent_snapshot.clone(),
            config: entry.config.clone(),
        };
        let n = name.to_string();
        update_entry(&self.host.store, vmid, move |e| {
            e.snapshots.insert(n.clone(), record.clone());
            e.parent_snapshot = Some(n.clone());
        })
        .await?;
        Ok(format!(
            "VM {vmid}: snapshot '{name}' of {} disk(s) created",
            volumes.len()
        ))
    }

    async fn snapshot_delete(&self, vmid: u32, name: &str) -> Result<String, VmError> {
        let snap_err = |reason: String| VmError::Snapshot {
            vmid,
            name: name.to_string(),
            reason,
        };
        let entry = load_entry(&self.host.store, vmid)
            .await?
            .ok_or(VmError::NotFound(vmid))?;
        let Some(rec) = entry.snapshots.get(name) else {
            return Err(snap_err("no such snapshot".into()));
        };
        let snap = SnapshotName::new(name).map_err(|e| snap_err(e.to_string()))?;
        for volid in config::drive_volumes(&rec.config).into_values() {
            let id: VolumeId = volid.parse().map_err(|e| snap_err(format!("{e}")))?;
            let s = snap.clone();
            self.host
                .storage
                .volume(&id, true, |reply| VolumeMsg::DeleteSnapshot {
                    name: s,
                    reply,
                })
                .await?;
        }
        let n = name.to_string();
        let parent = rec.parent.clone();
        update_entry(&self.host.store, vmid, move |e| {
            e.snapshots.remove(&n);
            // Children of the removed snapshot now derive from its parent.
            for s in e.snapshots.values_mut() {
                if s.parent.as_deref() == Some(n.as_str()) {
                    s.parent = parent.clone();
                }
            }
            if e.parent_snapshot.as_deref() == Some(n.as_str()) {
                e.parent_snapshot = parent.clone();
            }
        })
        .await?;
        Ok(format!("VM {vmid}: snapshot '{name}' deleted"))
    }

    async fn snapshot_rollback(&self, vmid: u32, name: &str) -> Result<String, VmError> {
        let snap_err = |reason: String| VmError::Snapshot {
            vmid,
            name: name.to_string(),
            reason,
        };
        let entry = load_entry(&self.host.store, vmid)
            .await?
            .ok_or(VmError::NotFound(vmid))?;
        let Some(rec) = entry.snapshots.get(name).cloned() else {
            return Err(snap_err("no such snapshot".into()));
        };
        let snap = SnapshotName::new(name).map_err(|e| snap_err(e.to_string()))?;
        let volumes: Vec<String> = config::drive_volumes(&rec.config).into_values().collect();
        // The volume actors refuse to roll back a volume any VM record references (a
        // running VM would see its disk change underneath). This VM is stopped and owns
        // them: release every reference (config, pending, snapshots) while rolling back and
        // restore them afterwards. The full entry is stashed first so a crash in between
        // loses nothing (`("vm-stash", vmid)`, removed at the end).
        let stash_key = gpve_store::Key::pack(&(STASH_SUBSPACE, vmid));
        self.host.store.put_json(&stash_key, &entry).await?;
        update_entry(&self.host.store, vmid, |e| {
            e.lock = Some("rollback".into());
            e.config
                .retain(|k, _| !config::is_drive(k) && !k.starts_with("unused"));
            e.pending.clear();
            e.pending_delete.clear();
            e.snapshots.clear();
        })
        .await?;
        let mut failure = None;
        for volid in &volumes {
            let id: VolumeId = match volid.parse() {
                Ok(id) => id,
                Err(e) => {
                    failure = Some(snap_err(format!("{e}")));
                    break;
                }
            };
            let s = snap.clone();
            if let Err(e) = self
                .host
                .storage
                .volume(&id, true, |reply| VolumeMsg::RollbackSnapshot {
                    name: s,
                    reply,
                })
                .await
            {
                failure = Some(e.into());
                break;
            }
        }
        let restored = if failure.is_none() {
            rec.config.clone()
        } else {
            entry.config.clone()
        };
        let n = name.to_string();
        let ok = failure.is_none();
        let before = entry.clone();
        update_entry(&self.host.store, vmid, move |e| {
            e.lock = None;
            e.config = restored.clone();
            e.snapshots = before.snapshots.clone();
            if ok {
                e.parent_snapshot = Some(n.clone());
            } else {
                e.pending = before.pending.clone();
                e.pending_delete = before.pending_delete.clone();
            }
        })
        .await?;
        self.host.store.delete(&stash_key).await?;
        match failure {
            Some(e) => Err(e),
            None => Ok(format!("VM {vmid}: rolled back to snapshot '{name}'")),
        }
    }
}

/// Where QEMU opens each of the VM's drive volumes.
async fn volume_paths(
    host: &VmHost,
    config: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, (PathBuf, DiskFormat)>, VmError> {
    let mut out = BTreeMap::new();
    for (key, volid) in config::drive_volumes(config) {
        let id: VolumeId = volid
            .parse()
            .map_err(|e| ConfigErrors::one(&key, format!("{e}")))?;
        let loc = host
            .storage
            .volume(&id, false, |reply| VolumeMsg::Location { reply })
            .await?;
        let (VolumeLocation::File(path) | VolumeLocation::Block(path)) = loc else {
            return Err(ConfigErrors::one(&key, "network volumes are not supported yet").into());
        };
        let format = match id.format_from_name() {
            Some(VolumeFormat::Qcow2) => DiskFormat::Qcow2,
            _ => DiskFormat::Raw,
        };
        out.insert(volid, (path, format));
    }
    Ok(out)
}

/// The QEMU spec of `config` on this node, with its taps plugged (unplug on failure).
pub(super) async fn prepare_spec(
    host: &VmHost,
    vmid: u32,
    config: &BTreeMap<String, String>,
) -> Result<gpve_hypervisor::QemuSpec, VmError> {
    let paths = volume_paths(host, config).await?;
    let mut spec = config::to_qemu_spec(vmid, config, &paths)?;
    // Taps exist, plugged and firewalled, before QEMU opens them.
    let plugs = crate::network::nic_plugs(config).map_err(nic_error(vmid))?;
    crate::network::nics::attach_taps(&mut spec, &plugs).map_err(nic_error(vmid))?;
    host.network
        .plug(vmid, &plugs)
        .await
        .map_err(nic_error(vmid))?;
    Ok(spec)
}

/// Store subspace holding a VM's entry while a rollback has released its volumes.
pub const STASH_SUBSPACE: &str = "vm-stash";

/// Delete one volume of VM `vmid`, tolerating a volume that is already gone.
pub(crate) async fn remove_volume(host: &VmHost, vmid: u32, volid: &str) -> Result<(), VmError> {
    let id: VolumeId = match volid.parse() {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(vmid, volid, error = %e, "not removing an unparsable volume id");
            return Ok(());
        }
    };
    match host
        .storage
        .volume(&id, true, |reply| VolumeMsg::Delete { reply })
        .await
    {
        Ok(()) => Ok(()),
        Err(StorageServiceError::Storage(gpve_storage_drivers::StorageError::VolumeNotFound(
            _,
        ))) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Start time of a process in Unix seconds, from `/proc` (so an adopted VM's uptime is
/// right).
fn process_start_s(pid: u32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let start_ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // /proc reports in USER_HZ, which is 100 on every Linux architecture gpve runs on.
    let hz = 100.0;
    let age_s = uptime - start_ticks as f64 / hz;
    Some(now_s() - age_s.max(0.0) as i64)
}
