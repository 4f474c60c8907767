//! Migration of a VM to another node: live (running VM, QEMU live migration over TCP)
//! or offline (stopped VM: the configuration moves).
//!
//! The source node's `vm:{vmid}` actor drives the protocol ([`VmOp::Migrate`]); the
//! target node takes part through a [`MigrationPeer`]: [`LocalPeer`] is the target side
//! itself (in the same process, or behind an agent's internal API), a network
//! implementation forwards the three calls to it.
//!
//! Live migration, step by step:
//! 1. The source actor takes the lock `migrate` on the record (refused when locked).
//! 2. `prepare_incoming`: the target starts a paused QEMU with `-incoming` listening on
//!    a TCP port of its choice and answers with the URI, and with the name its
//!    certificate carries when it accepts only TLS (its [`LocalPeer`] has credentials):
//!    the source then sends the stream over TLS with its own node certificate.
//! 3. The source runs QEMU `migrate` to that URI and polls `query-migrate` (progress
//!    lines go to the task log, as Proxmox writes them).
//! 4. Switchover, in ONE store transaction: the record's `node` becomes the target and
//!    its placement generation is bumped, provided the record is still on the source
//!    with the generation read at step 1.
//! 5. `finish_incoming`: the target checks that generation, resumes its QEMU and starts
//!    its own `vm:{vmid}` actor, which adopts the running process.
//! 6. The source quits its (paused, `postmigrate`) QEMU and releases the lock.
//!
//! Any failure before step 4 cancels the migration: QEMU resumes the guest on the
//! source by itself, the target's QEMU is killed (`abort_incoming`), the lock is
//! released. A failure at step 5 puts the record back on the source (generation bumped
//! again), resumes the source and aborts the target. Online migration needs every disk
//! on shared storage: moving local disks while running (NBD drive-mirror) is not built.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gpve_hypervisor::migrate::{MigrationTls, render_bytes};
use gpve_hypervisor::{MigrateOptions, MigrationProgress, VmProcess};
use tokio::sync::{Mutex, mpsc};

use super::actor::{VmActorState, VmError, VmMsg, VmOp, nic_error, prepare_spec};
use super::{VmActor, VmHost, config, load_entry, ops, update_entry};

/// The record lock held while a migration runs (Proxmox's name).
pub const MIGRATE_LOCK: &str = "migrate";
/// Task-log lines buffered between the migration and the task writing them; progress
/// lines beyond this are dropped, never the migration held up.
pub const MIGRATE_LOG_QUEUE_LEN: usize = 1024;
/// At most one `migration status: active` line per this interval.
pub const MIGRATE_PROGRESS_LOG_MS: u64 = 1_000;
/// Bound on a whole migration call through the VM's mailbox.
pub const MIGRATE_CALL_TIMEOUT_MS: u64 = 30 * 60 * 1000;

/// Refusals and failures of a migration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrationError {
    #[error("target node '{node}' is the node the VM is on")]
    SameNode { node: String },
    #[error("target node '{node}' does not exist")]
    UnknownNode { node: String },
    #[error("target node '{node}' is offline")]
    Offline { node: String },
    #[error("target node '{node}' is cordoned")]
    Cordoned { node: String },
    #[error("VM {vmid} has local disks ({disks}); only disks on shared storage can stay in place")]
    LocalDisks { vmid: u32, disks: String },
    #[error(
        "VM {vmid} is running with local disks ({disks}): moving them live (NBD drive-mirror) is not built yet; stop the VM or move the disks to shared storage"
    )]
    LiveLocalDisks { vmid: u32, disks: String },
    #[error(
        "moving local disks ({disks}) of VM {vmid} with 'with-local-disks' is not built yet; move them to shared storage first"
    )]
    LocalDiskCopy { vmid: u32, disks: String },
    #[error("storage '{storage}' of VM {vmid} is not available on node '{node}'")]
    StorageUnavailable {
        vmid: u32,
        storage: String,
        node: String,
    },
    #[error(
        "VM {vmid} moved under the migration (now on node '{node}', generation {generation}; expected generation {expected})"
    )]
    Moved {
        vmid: u32,
        node: String,
        generation: u64,
        expected: u64,
    },
    #[error("VM {vmid} is already present on node '{node}'")]
    AlreadyHere { vmid: u32, node: String },
    #[error("no incoming migration of VM {vmid} is waiting on node '{node}'")]
    NoIncoming { vmid: u32, node: String },
    #[error("node '{node}' could not take VM {vmid}: {message}")]
    Target {
        node: String,
        vmid: u32,
        message: String,
    },
    /// QEMU's own failure, with its reason (the message names the VM already).
    #[error("{message}")]
    Qemu { vmid: u32, message: String },
    #[error(
        "node '{node}' accepts VM {vmid} only over TLS, and this node has no migration TLS credentials"
    )]
    NoTlsCredentials { node: String, vmid: u32 },
    /// The target node's own refusal or failure, as it reported it through the relay.
    #[error("{message}")]
    Remote { node: String, message: String },
    #[error("cannot reach node '{node}' for the migration of VM {vmid}: {message}")]
    Unreachable {
        node: String,
        vmid: u32,
        message: String,
    },
}

impl MigrationError {
    /// The request cannot be done as asked (400), as opposed to a failure while doing it.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            MigrationError::SameNode { .. }
                | MigrationError::UnknownNode { .. }
                | MigrationError::Offline { .. }
                | MigrationError::Cordoned { .. }
                | MigrationError::LocalDisks { .. }
                | MigrationError::LiveLocalDisks { .. }
                | MigrationError::LocalDiskCopy { .. }
                | MigrationError::StorageUnavailable { .. }
        )
    }
}

/// Where a prepared target waits for the migration stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingTarget {
    /// `tcp:HOST:PORT`.
    pub uri: String,
    /// `Some(name)`: the target accepts only TLS, and its certificate names `name`.
    pub tls_hostname: Option<String>,
}

/// The target node's part of a migration.
#[async_trait]
pub trait MigrationPeer: Send + Sync + 'static {
    /// The target node's name.
    fn node(&self) -> &str;
    /// Start a paused QEMU for `config` waiting for the migration stream; returns where
    /// it listens. `generation` is the placement the VM will get.
    async fn prepare_incoming(
        &self,
        vmid: u32,
        config: BTreeMap<String, String>,
        generation: u64,
    ) -> Result<IncomingTarget, MigrationError>;
    /// After the switchover: check the record names this node at `generation`, resume
    /// the incoming QEMU (if any: none for an offline migration) and start the VM actor.
    async fn finish_incoming(&self, vmid: u32, generation: u64) -> Result<(), MigrationError>;
    /// Kill the incoming QEMU, if any (idempotent).
    async fn abort_incoming(&self, vmid: u32) -> Result<(), MigrationError>;
}

/// A migration to ask of the source VM actor.
#[derive(Clone)]
pub struct MigrateRequest {
    /// Live migration of a running VM (a stopped VM always migrates offline).
    pub online: bool,
    /// Proxmox `with-local-disks`: refused clearly until disk copy is built.
    pub with_local_disks: bool,
    pub options: MigrateOptions,
    pub peer: Arc<dyn MigrationPeer>,
    /// This node's migration TLS credentials (see [`MigrationTls`]), used when the target
    /// asks for TLS.
    pub tls_creds_dir: Option<PathBuf>,
    /// Task-log lines (Proxmox's wording), if someone writes them.
    pub log: Option<mpsc::Sender<String>>,
}

impl std::fmt::Debug for MigrateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrateRequest")
            .field("target", &self.peer.node())
            .field("online", &self.online)
            .field("with_local_disks", &self.with_local_disks)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl MigrateRequest {
    fn log(&self, line: impl Into<String>) {
        if let Some(tx) = &self.log {
            // A full queue drops the line: the migration never waits for the task log.
            let _ = tx.try_send(line.into());
        }
    }
}

/// What the caller knows about a candidate target node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetNode {
    pub name: String,
    pub online: bool,
    pub cordoned: bool,
}

/// Whether `target` can take a VM now on `source`, from the cluster's node list.
pub fn check_target(
    source: &str,
    target: &str,
    nodes: &[TargetNode],
) -> Result<(), MigrationError> {
    let node = target.to_string();
    if target == source {
        return Err(MigrationError::SameNode { node });
    }
    match nodes.iter().find(|n| n.name == target) {
        None => Err(MigrationError::UnknownNode { node }),
        Some(n) if !n.online => Err(MigrationError::Offline { node }),
        Some(n) if n.cordoned => Err(MigrationError::Cordoned { node }),
        Some(_) => Ok(()),
    }
}

/// One disk of a VM as the migration sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDisk {
    /// `scsi0`, `unused1`, or `snapshot NAME` for a disk only a snapshot uses.
    pub key: String,
    pub volid: String,
    pub storage: String,
    /// On storage every node sees (`shared 1`): stays in place.
    pub shared: bool,
    /// Storages that do not exist or are not active on the target.
    pub available_on_target: bool,
}

/// The VM's volumes (drives, unused disks, snapshot-only disks) with their storage.
pub async fn vm_disks(
    host: &VmHost,
    entry: &super::VmEntry,
    target: &str,
) -> Result<Vec<VmDisk>, VmError> {
    let mut volumes: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in entry.config.iter().chain(entry.pending.iter()) {
        if config::is_drive(k) || k.starts_with("unused") {
            for volid in config::owned_volumes(&BTreeMap::from([(k.clone(), v.clone())])) {
                volumes.entry(volid).or_insert_with(|| k.clone());
            }
        }
    }
    for (name, snap) in &entry.snapshots {
        for volid in config::owned_volumes(&snap.config) {
            volumes
                .entry(volid)
                .or_insert_with(|| format!("snapshot {name}"));
        }
    }
    let mut out = Vec::new();
    for (volid, key) in volumes {
        let storage = volid.split(':').next().unwrap_or_default().to_string();
        let (shared, available) = match crate::storage::config::get(&host.store, &storage).await {
            Ok(cfg) => (cfg.shared, cfg.active_on(target)),
            Err(crate::storage::StorageConfigError::NotFound(_)) => (false, false),
            Err(e) => return Err(VmError::Storage(e.to_string())),
        };
        out.push(VmDisk {
            key,
            volid,
            storage,
            shared,
            available_on_target: available,
        });
    }
    Ok(out)
}

/// Refuses what this build cannot migrate: local disks (moving them is not built),
/// shared storage the target does not see.
pub fn check_disks(
    vmid: u32,
    target: &str,
    running: bool,
    with_local_disks: bool,
    disks: &[VmDisk],
) -> Result<(), MigrationError> {
    if let Some(d) = disks.iter().find(|d| d.shared && !d.available_on_target) {
        return Err(MigrationError::StorageUnavailable {
            vmid,
            storage: d.storage.clone(),
            node: target.to_string(),
        });
    }
    let local: Vec<String> = disks
        .iter()
        .filter(|d| !d.shared)
        .map(|d| format!("{}: {}", d.key, d.volid))
        .collect();
    if local.is_empty() {
        return Ok(());
    }
    let disks = local.join(", ");
    Err(if running {
        MigrationError::LiveLocalDisks { vmid, disks }
    } else if with_local_disks {
        MigrationError::LocalDiskCopy { vmid, disks }
    } else {
        MigrationError::LocalDisks { vmid, disks }
    })
}

/// Migrates VM `vmid` from `source` (the node its record names) through its actor, then
/// retires the source's actor. Returns the last task-log line.
pub async fn migrate(source: &VmHost, vmid: u32, req: MigrateRequest) -> Result<String, VmError> {
    let line = ops::call(source, vmid, VmOp::Migrate(req), MIGRATE_CALL_TIMEOUT_MS).await?;
    // The actor has handed the VM over (its phase is terminal): forget it here.
    ops::remove_actor(source, vmid).await?;
    Ok(line)
}

fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

impl VmActor {
    /// The source side of [`VmOp::Migrate`] (its phase was checked by the state machine).
    pub(super) async fn migrate_out(
        &self,
        st: &mut VmActorState,
        req: &MigrateRequest,
    ) -> Result<String, VmError> {
        let vmid = st.sm.vmid;
        let source = self.host.node.clone();
        let target = req.peer.node().to_string();
        if target == source {
            return Err(MigrationError::SameNode { node: target }.into());
        }
        let entry = load_entry(&self.host.store, vmid)
            .await?
            .ok_or(VmError::NotFound(vmid))?;
        let running = st.process.is_some();
        let disks = vm_disks(&self.host, &entry, &target).await?;
        check_disks(vmid, &target, running, req.with_local_disks, &disks)?;
        let generation = entry.generation;
        let locked = update_entry(&self.host.store, vmid, |e| {
            if e.lock.is_some() {
                return e.lock.clone();
            }
            e.lock = Some(MIGRATE_LOCK.into());
            None
        })
        .await?
        .ok_or(VmError::NotFound(vmid))?;
        if let Some(lock) = locked {
            return Err(VmError::Locked { vmid, lock });
        }
        let started = Instant::now();
        let mode = if running { "online" } else { "offline" };
        req.log(format!(
            "starting migration of VM {vmid} to node '{target}' ({mode}, generation {} -> {})",
            generation,
            generation + 1
        ));
        if !running && req.online {
            req.log("VM isn't running. Doing offline migration instead.");
        }
        let outcome = if running {
            self.migrate_live(st, req, &entry, generation).await
        } else {
            self.switch_over(vmid, &target, generation, req).await
        };
        // Released on failure; on success the target holds the VM and we release it too.
        let released = update_entry(&self.host.store, vmid, |e| {
            if e.lock.as_deref() == Some(MIGRATE_LOCK) {
                e.lock = None;
            }
        })
        .await;
        if let Err(e) = released {
            tracing::warn!(vmid, error = %e, "cannot release the migrate lock");
        }
        match outcome {
            Ok(()) => {
                let line = format!(
                    "migration finished successfully (duration {})",
                    hms(started.elapsed())
                );
                req.log(line.clone());
                Ok(line)
            }
            Err(e) => {
                req.log(format!("ERROR: {e}"));
                req.log("migration aborted");
                Err(e)
            }
        }
    }

    async fn migrate_live(
        &self,
        st: &mut VmActorState,
        req: &MigrateRequest,
        entry: &super::VmEntry,
        generation: u64,
    ) -> Result<(), VmError> {
        let vmid = st.sm.vmid;
        let target = req.peer.node().to_string();
        let Some(process) = st.process.clone() else {
            return Err(VmError::Unavailable(format!(
                "VM {vmid} has no QEMU process"
            )));
        };
        req.log(format!("starting VM {vmid} on remote node '{target}'"));
        let incoming = req
            .peer
            .prepare_incoming(vmid, entry.config.clone(), generation + 1)
            .await?;
        let mut options = req.options.clone();
        match (&incoming.tls_hostname, &req.tls_creds_dir) {
            (Some(hostname), Some(dir)) => {
                options.tls = Some(MigrationTls {
                    creds_dir: dir.clone(),
                    hostname: hostname.clone(),
                });
                req.log(format!("migration type: secure (TLS, peer '{hostname}')"));
            }
            (Some(_), None) => {
                self.abort_target(req, vmid).await;
                return Err(MigrationError::NoTlsCredentials { node: target, vmid }.into());
            }
            (None, _) => req.log("migration type: insecure (plain TCP)"),
        }
        let uri = incoming.uri;
        req.log(format!(
            "migration downtime limit: {} ms",
            req.options.downtime_limit_ms
        ));
        req.log(format!(
            "migration speed limit: {}/s",
            render_bytes(req.options.max_bandwidth_bytes_s())
        ));
        req.log(format!("start migrate command to {uri}"));
        let last_log = std::sync::Mutex::new(None::<Instant>);
        let progress = |p: &MigrationProgress| {
            if p.status != "active" {
                return;
            }
            let now = Instant::now();
            let mut last = last_log.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| {
                now.duration_since(t) < Duration::from_millis(MIGRATE_PROGRESS_LOG_MS)
            }) {
                return;
            }
            *last = Some(now);
            req.log(format!(
                "migration status: active (transferred {}, remaining {}, total {})",
                render_bytes(p.transferred_bytes),
                render_bytes(p.remaining_bytes),
                render_bytes(p.total_bytes)
            ));
        };
        let stats = match process.migrate(&uri, &options, &progress).await {
            Ok(stats) => stats,
            Err(e) => {
                self.abort_target(req, vmid).await;
                return Err(MigrationError::Qemu {
                    vmid,
                    message: crate::storage::error_chain(&e),
                }
                .into());
            }
        };
        req.log("migration status: completed");
        req.log(format!(
            "average migration speed: {}/s - downtime {} ms",
            render_bytes(stats.average_bytes_s()),
            stats.downtime_ms
        ));
        req.log(format!("migration downtime: {} ms", stats.downtime_ms));
        if let Err(e) = self.switch_over(vmid, &target, generation, req).await {
            // The guest is paused here (postmigrate) with its state intact: run it again.
            if let Err(r) = process.resume().await {
                tracing::error!(vmid, error = %r, "cannot resume the source after a failed switchover");
            }
            return Err(e);
        }
        // The target runs the guest now: this QEMU's exit is expected, not a crash.
        st.drop_process();
        process
            .stop(self.host.timing.stop_timeout_ms)
            .await
            .map_err(|e| VmError::Hypervisor {
                vmid,
                message: crate::storage::error_chain(&e),
            })?;
        self.host
            .network
            .unplug(vmid)
            .await
            .map_err(nic_error(vmid))?;
        Ok(())
    }

    /// Step 4 and 5: move the record to the target in one transaction (if it is still
    /// ours at `generation`), then let the target take the VM; puts it back on failure.
    async fn switch_over(
        &self,
        vmid: u32,
        target: &str,
        generation: u64,
        req: &MigrateRequest,
    ) -> Result<(), VmError> {
        let source = self.host.node.clone();
        let (src, dst) = (source.clone(), target.to_string());
        let switched = update_entry(&self.host.store, vmid, move |e| {
            if e.record.node != src || e.generation != generation {
                return Err((e.record.node.clone(), e.generation));
            }
            e.record.node = dst.clone();
            e.generation = generation + 1;
            Ok(())
        })
        .await;
        let refused = match switched {
            Ok(Some(Ok(()))) => None,
            Ok(Some(Err((node, now)))) => Some(VmError::from(MigrationError::Moved {
                vmid,
                node,
                generation: now,
                expected: generation,
            })),
            Ok(None) => Some(VmError::NotFound(vmid)),
            Err(e) => Some(e.into()),
        };
        if let Some(e) = refused {
            self.abort_target(req, vmid).await;
            return Err(e);
        }
        req.log(format!(
            "VM {vmid} now placed on node '{target}' (generation {})",
            generation + 1
        ));
        if let Err(e) = req.peer.finish_incoming(vmid, generation + 1).await {
            let src = source.clone();
            let dst = target.to_string();
            let back = update_entry(&self.host.store, vmid, move |e| {
                if e.record.node == dst && e.generation == generation + 1 {
                    e.record.node = src.clone();
                    e.generation = generation + 2;
                }
            })
            .await;
            if let Err(b) = back {
                tracing::error!(vmid, error = %b, "cannot put the VM record back on the source");
            }
            self.abort_target(req, vmid).await;
            return Err(e.into());
        }
        Ok(())
    }

    async fn abort_target(&self, req: &MigrateRequest, vmid: u32) {
        if let Err(e) = req.peer.abort_incoming(vmid).await {
            tracing::warn!(vmid, error = %e, "cannot abort the incoming migration on the target");
            req.log(format!("WARN: {e}"));
        }
    }
}

/// The target side of a migration on one node: holds the incoming QEMUs until the
/// source switches over or gives up.
pub struct LocalPeer {
    host: VmHost,
    /// Address the incoming QEMU listens on (the node's migration network).
    listen_host: String,
    /// With TLS credentials: incoming streams must be TLS from a CA-signed node.
    tls: Option<LocalTls>,
    incoming: Mutex<BTreeMap<u32, Box<dyn VmProcess>>>,
}

/// A node's migration TLS credentials, as its incoming side uses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTls {
    /// See [`MigrationTls`] for the files.
    pub creds_dir: PathBuf,
    /// The name this node's certificate carries.
    pub hostname: String,
}

impl LocalPeer {
    /// A target side accepting plain TCP on `listen_host`.
    pub fn new(host: VmHost, listen_host: impl Into<String>) -> Arc<Self> {
        Self::with_tls(host, listen_host, None)
    }

    /// A target side that, with `tls`, accepts only TLS streams.
    pub fn with_tls(
        host: VmHost,
        listen_host: impl Into<String>,
        tls: Option<LocalTls>,
    ) -> Arc<Self> {
        Arc::new(LocalPeer {
            host,
            listen_host: listen_host.into(),
            tls,
            incoming: Mutex::new(BTreeMap::new()),
        })
    }

    /// Incoming QEMU processes waiting for a stream or a switchover.
    pub async fn incoming_count(&self) -> usize {
        self.incoming.lock().await.len()
    }

    fn target_err(&self, vmid: u32, e: impl std::fmt::Display) -> MigrationError {
        MigrationError::Target {
            node: self.host.node.clone(),
            vmid,
            message: e.to_string(),
        }
    }

    fn has_actor(&self, vmid: u32) -> bool {
        self.host
            .directory
            .lookup_ref::<VmMsg>(&self.host.actor_path(vmid))
            .is_some()
    }
}

#[async_trait]
impl MigrationPeer for LocalPeer {
    fn node(&self) -> &str {
        &self.host.node
    }

    async fn prepare_incoming(
        &self,
        vmid: u32,
        config: BTreeMap<String, String>,
        _generation: u64,
    ) -> Result<IncomingTarget, MigrationError> {
        let mut incoming = self.incoming.lock().await;
        if self.has_actor(vmid) {
            return Err(MigrationError::AlreadyHere {
                vmid,
                node: self.host.node.clone(),
            });
        }
        // Left by an earlier attempt whose abort never arrived (the source lost its way
        // here): the VM's `migrate` lock admits one migration at a time, so it is stale.
        if let Some(stale) = incoming.remove(&vmid) {
            tracing::warn!(
                vmid,
                "replacing a stale incoming QEMU of an earlier migration"
            );
            let _ = stale.kill().await;
            let _ = self.host.network.unplug(vmid).await;
        }
        let spec = prepare_spec(&self.host, vmid, &config)
            .await
            .map_err(|e| self.target_err(vmid, crate::storage::error_chain(&e)))?;
        let listen = if self.listen_host.contains(':') {
            format!("tcp:[{}]:0", self.listen_host)
        } else {
            format!("tcp:{}:0", self.listen_host)
        };
        let tls_dir = self.tls.as_ref().map(|t| t.creds_dir.as_path());
        match self
            .host
            .hypervisor
            .start_incoming(&spec, &self.host.run_dir(vmid), &listen, tls_dir)
            .await
        {
            Ok(vm) => {
                incoming.insert(vmid, vm.process);
                Ok(IncomingTarget {
                    uri: vm.uri,
                    tls_hostname: self.tls.as_ref().map(|t| t.hostname.clone()),
                })
            }
            Err(e) => {
                let _ = self.host.network.unplug(vmid).await;
                Err(self.target_err(vmid, crate::storage::error_chain(&e)))
            }
        }
    }

    async fn finish_incoming(&self, vmid: u32, generation: u64) -> Result<(), MigrationError> {
        let entry = load_entry(&self.host.store, vmid)
            .await
            .map_err(|e| self.target_err(vmid, e))?
            .ok_or_else(|| self.target_err(vmid, "the VM record is gone"))?;
        // The fencing check: only the placement the source switched to may run here.
        if entry.record.node != self.host.node || entry.generation != generation {
            let _ = self.abort_incoming(vmid).await;
            return Err(MigrationError::Moved {
                vmid,
                node: entry.record.node,
                generation: entry.generation,
                expected: generation,
            });
        }
        let process = self.incoming.lock().await.remove(&vmid);
        if let Some(p) = process {
            if let Err(e) = p.resume().await {
                let _ = p.kill().await;
                let _ = self.host.network.unplug(vmid).await;
                return Err(self.target_err(vmid, crate::storage::error_chain(&e)));
            }
            // Detach: the new actor adopts the running QEMU from its run directory.
            drop(p);
        }
        if !self.has_actor(vmid) {
            ops::add_actor(&self.host, vmid)
                .await
                .map_err(|e| self.target_err(vmid, e))?;
        }
        Ok(())
    }

    async fn abort_incoming(&self, vmid: u32) -> Result<(), MigrationError> {
        let Some(p) = self.incoming.lock().await.remove(&vmid) else {
            return Ok(());
        };
        p.kill()
            .await
            .map_err(|e| self.target_err(vmid, crate::storage::error_chain(&e)))?;
        self.host
            .network
            .unplug(vmid)
            .await
            .map_err(|e| self.target_err(vmid, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, online: bool, cordoned: bool) -> TargetNode {
        TargetNode {
            name: name.into(),
            online,
            cordoned,
        }
    }

    #[test]
    fn targets_are_checked_with_a_reason() {
        let nodes = [
            node("n1", true, false),
            node("n2", true, false),
            node("n3", false, false),
            node("n4", true, true),
        ];
        assert_eq!(check_target("n1", "n2", &nodes), Ok(()));
        let cases = [
            ("n1", "is the node the VM is on"),
            ("n9", "does not exist"),
            ("n3", "is offline"),
            ("n4", "is cordoned"),
        ];
        for (target, why) in cases {
            let err = check_target("n1", target, &nodes).expect_err(target);
            assert!(err.to_string().contains(why), "{target}: {err}");
            assert!(err.is_refusal());
        }
    }

    #[test]
    fn local_disks_are_refused_by_mode() {
        let disk = |shared, available| VmDisk {
            key: "scsi0".into(),
            volid: "local:100/vm-100-disk-0.raw".into(),
            storage: "local".into(),
            shared,
            available_on_target: available,
        };
        assert_eq!(
            check_disks(100, "n2", true, false, &[disk(true, true)]),
            Ok(())
        );
        assert!(matches!(
            check_disks(100, "n2", true, false, &[disk(true, false)]),
            Err(MigrationError::StorageUnavailable { .. })
        ));
        assert!(matches!(
            check_disks(100, "n2", true, true, &[disk(false, true)]),
            Err(MigrationError::LiveLocalDisks { .. })
        ));
        assert!(matches!(
            check_disks(100, "n2", false, false, &[disk(false, false)]),
            Err(MigrationError::LocalDisks { .. })
        ));
        assert!(matches!(
            check_disks(100, "n2", false, true, &[disk(false, false)]),
            Err(MigrationError::LocalDiskCopy { .. })
        ));
        assert_eq!(check_disks(100, "n2", false, false, &[]), Ok(()));
    }

    #[test]
    fn durations_render_like_proxmox() {
        assert_eq!(hms(Duration::from_secs(3_725)), "01:02:05");
    }
}
