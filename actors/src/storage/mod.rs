//! Storage on a node: configuration records, the `storage:{id}` actors and their
//! `volume:{id}` actors.
//!
//! ```text
//! storage                supervisor (gpve-supervisor), one-for-one; its children are
//! │                      rebuilt from the store's storage records at every start
//! ├── storage:local      owns the pool's driver; mounts (and reconciles) it at start
//! │   └── volume:{id}    spawned on a volume's first operation, stopped once idle;
//! │                      serialises the operations on that one volume
//! └── storage:fast
//! ```
//!
//! A storage whose pool cannot be mounted (missing directory, not btrfs) still gets its
//! actor: it reports `active: false`, refuses volume operations with `PoolNotActive` and
//! retries the mount every [`MOUNT_RETRY_INTERVAL_MS`]; a bad storage therefore never
//! exhausts the supervisor's restart intensity and takes the node down with it.
//!
//! The storage actor never waits on a driver for a volume: it forwards the command to the
//! volume actor and handles its next message. Listings run on a spawned task.

pub mod config;
pub mod state;
#[cfg(test)]
mod tests;
pub mod usage;
pub mod volume;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gpve_storage_drivers::fsutil;
use gpve_storage_drivers::{
    Capabilities, CloneMode, Content, PoolStatus, StorageDriver, StorageError, VolumeFormat,
    VolumeId, VolumeInfo,
};
use gpve_store::{Store, StoreError};
use gpve_supervisor::{
    ActorStats, ChildSpec, Directory, EscalationPolicy, RestartPolicy, Strategy, Supervisor,
    SupervisorError, SupervisorHandle, SupervisorSpec,
};
use ractor::concurrency::JoinHandle;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent};
use serde::Serialize;

pub use config::{StorageConfig, StorageConfigError, StorageType};
pub use state::{MAX_VOLUME_ACTORS, Route, VolumeTable};
pub use volume::{VolumeMeta, VolumeMsg};

/// Id of the storage supervisor within its parent.
pub const SUPERVISOR_ID: &str = "storage";
/// How often an inactive storage retries mounting its pool.
pub const MOUNT_RETRY_INTERVAL_MS: u64 = 10_000;
/// Restarts of one storage actor tolerated per window before it is left stopped.
pub const MAX_STORAGE_RESTARTS: u32 = 5;
pub const STORAGE_RESTART_WINDOW_MS: u64 = 60_000;

/// Child id of a storage actor: `storage:{id}`.
pub fn actor_id(storage: &str) -> String {
    format!("storage:{storage}")
}

/// Failures of storage and volume operations as the API sees them.
#[derive(Debug, thiserror::Error)]
pub enum StorageServiceError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Config(#[from] StorageConfigError),
    #[error("storage '{0}' is disabled or not available on this node")]
    NotActiveHere(String),
    #[error("storage '{storage}' is busy: {MAX_VOLUME_ACTORS} volumes have operations in flight")]
    Busy { storage: String },
    #[error("volume {0} is protected; remove the protection first")]
    Protected(VolumeId),
    #[error("the storage service is unavailable: {0}")]
    Unavailable(String),
    #[error("the store failed")]
    Store(#[from] StoreError),
}

/// What `GET /nodes/{node}/storage` shows for one storage.
#[derive(Debug, Clone, Serialize)]
pub struct StorageStatus {
    pub config: StorageConfig,
    /// The pool is mounted and usable.
    pub active: bool,
    /// Why the pool is not active.
    pub error: Option<String>,
    pub pool: Option<PoolStatus>,
    pub capabilities: Option<Capabilities>,
}

type Reply<T> = RpcReplyPort<Result<T, StorageServiceError>>;

/// Commands of a storage actor. States: *active* (pool mounted) and *inactive* (mount
/// failed, retried every [`MOUNT_RETRY_INTERVAL_MS`]). `Status`, `VolumeActors`,
/// `VolumeDone` and `RetryMount` are handled in both; the others fail with
/// `PoolNotActive` while inactive.
#[derive(Debug)]
pub enum StorageMsg {
    /// Configuration, activity and space. Answers in both states.
    Status(RpcReplyPort<StorageStatus>),
    /// Volumes, optionally of one content type and one VMID, sorted by id.
    List {
        content: Option<Content>,
        vmid: Option<u32>,
        reply: Reply<Vec<VolumeInfo>>,
    },
    /// The next free `vm-VMID-disk-N` id (in `format` on dir-layout storages).
    NextDiskId {
        vmid: u32,
        format: VolumeFormat,
        reply: Reply<VolumeId>,
    },
    /// A temporary path inside the storage, next to where `id` would live, for a streamed
    /// upload; refused when `id` exists. Publish it with [`VolumeMsg::Publish`].
    UploadTarget { id: VolumeId, reply: Reply<PathBuf> },
    /// An operation on one volume, run by that volume's actor.
    Volume(VolumeId, VolumeMsg),
    /// How many volume actors are running (introspection, tests). Answers in both states.
    VolumeActors(RpcReplyPort<usize>),
    /// A volume actor finished one operation (internal).
    VolumeDone(String),
    /// Try to mount an inactive pool again (internal timer).
    RetryMount,
}

impl ractor::Message for StorageMsg {}

/// What a storage actor is started with.
#[derive(Debug, Clone)]
pub struct StorageArgs {
    pub config: StorageConfig,
    pub node: String,
    pub store: Store,
}

/// The storage actor.
#[derive(Debug, Default)]
pub struct StorageActor {
    pub stats: Option<ActorStats>,
}

/// State of a storage actor.
pub struct StorageState {
    args: StorageArgs,
    driver: Option<Arc<dyn StorageDriver>>,
    /// `Ok` while the pool is mounted; the last mount failure otherwise.
    active: Result<(), String>,
    volumes: VolumeTable<ActorRef<VolumeMsg>>,
    retry_timer: Option<JoinHandle<()>>,
}

impl StorageState {
    fn active_driver(&self) -> Result<Arc<dyn StorageDriver>, StorageServiceError> {
        match (&self.driver, &self.active) {
            (Some(d), Ok(())) => Ok(Arc::clone(d)),
            _ => Err(StorageError::PoolNotActive(self.args.config.storage.clone()).into()),
        }
    }

    async fn mount(&mut self) {
        let id = self.args.config.storage.clone();
        let driver = match &self.driver {
            Some(d) => Arc::clone(d),
            None => match self.args.config.driver(&self.args.node) {
                Ok(d) => {
                    self.driver = Some(Arc::clone(&d));
                    d
                }
                Err(e) => {
                    self.active = Err(error_chain(&e));
                    return;
                }
            },
        };
        // create_pool is idempotent: it makes the content directories Proxmox would make.
        let result = match driver.create_pool().await {
            Ok(()) => driver.mount_pool().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(report) => {
                if !report.removed_temporaries.is_empty() {
                    tracing::info!(
                        storage = %id,
                        removed = report.removed_temporaries.len(),
                        "removed leftovers of interrupted operations"
                    );
                }
                self.active = Ok(());
            }
            Err(e) => {
                let msg = error_chain(&e);
                tracing::warn!(storage = %id, error = %msg, "storage pool is not active");
                self.active = Err(msg);
            }
        }
    }
}

/// `error: cause: cause` in one line, for status fields and logs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

impl Actor for StorageActor {
    type Msg = StorageMsg;
    type State = StorageState;
    type Arguments = StorageArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<StorageMsg>,
        args: StorageArgs,
    ) -> Result<StorageState, ActorProcessingErr> {
        let mut st = StorageState {
            args,
            driver: None,
            active: Err("not mounted yet".into()),
            volumes: VolumeTable::new(MAX_VOLUME_ACTORS),
            retry_timer: None,
        };
        st.mount().await;
        Ok(st)
    }

    async fn post_start(
        &self,
        myself: ActorRef<StorageMsg>,
        st: &mut StorageState,
    ) -> Result<(), ActorProcessingErr> {
        st.retry_timer = Some(
            myself.send_interval(Duration::from_millis(MOUNT_RETRY_INTERVAL_MS), || {
                StorageMsg::RetryMount
            }),
        );
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<StorageMsg>,
        st: &mut StorageState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = st.retry_timer.take() {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<StorageMsg>,
        msg: StorageMsg,
        st: &mut StorageState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(stats) = &self.stats {
            stats.record_handled();
        }
        match msg {
            StorageMsg::Status(reply) => {
                let pool = match st.active_driver() {
                    Ok(d) => d.pool_status().await.ok(),
                    Err(_) => None,
                };
                let status = StorageStatus {
                    config: st.args.config.clone(),
                    active: st.active.is_ok() && pool.is_some(),
                    error: st.active.clone().err(),
                    pool,
                    capabilities: st.driver.as_ref().map(|d| d.capabilities().clone()),
                };
                let _ = reply.send(status);
            }
            StorageMsg::List {
                content,
                vmid,
                reply,
            } => match st.active_driver() {
                Ok(d) => {
                    let allowed = st.args.config.content.clone();
                    // Off the actor: listing qcow2 images runs qemu-img once per image.
                    tokio::spawn(async move {
                        let _ = reply.send(list(d, &allowed, content, vmid).await);
                    });
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            StorageMsg::NextDiskId {
                vmid,
                format,
                reply,
            } => {
                let result = match st.active_driver() {
                    Ok(d) => d.next_disk_id(vmid, format).await.map_err(Into::into),
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            StorageMsg::UploadTarget { id, reply } => {
                let result = match st.active_driver() {
                    Ok(d) => upload_target(&*d, &id, &st.args.node).await,
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            StorageMsg::Volume(id, op) => route_volume(&myself, st, id, op).await,
            StorageMsg::VolumeActors(reply) => {
                let _ = reply.send(st.volumes.len());
            }
            StorageMsg::VolumeDone(volume) => {
                if let Some(actor) = st.volumes.done(&volume) {
                    actor.stop(None);
                }
            }
            StorageMsg::RetryMount => {
                if st.active.is_err() {
                    st.mount().await;
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<StorageMsg>,
        evt: SupervisionEvent,
        st: &mut StorageState,
    ) -> Result<(), ActorProcessingErr> {
        // A volume actor that exits is forgotten; the next operation on that volume gets a
        // fresh one. Its failure reached its caller as a dropped reply, never this actor.
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, _)
            | SupervisionEvent::ActorFailed(cell, _) => {
                let handle: ActorRef<VolumeMsg> = cell.into();
                if let Some(v) = st.volumes.exited(&handle) {
                    tracing::debug!(volume = %v, "volume actor exited");
                }
            }
            _ => {}
        }
        Ok(())
    }
}

async fn route_volume(
    myself: &ActorRef<StorageMsg>,
    st: &mut StorageState,
    id: VolumeId,
    op: VolumeMsg,
) {
    let driver = match st.active_driver() {
        Ok(d) => d,
        Err(e) => return op.fail(e),
    };
    if id.storage() != st.args.config.storage {
        return op.fail(StorageError::WrongStorage(id, st.args.config.storage.clone()).into());
    }
    let key = id.to_string();
    match st.volumes.route(&key) {
        Route::Existing(actor) => {
            if let Err(e) = actor.send_message(op) {
                // The actor is exiting; its exit event will clear the entry.
                st.volumes.done(&key);
                tracing::debug!(volume = %key, error = %e, "volume actor gone");
                if let ractor::MessagingErr::SendErr(op) = e {
                    op.fail(StorageServiceError::Unavailable(
                        "the volume actor stopped; retry".into(),
                    ));
                }
            }
        }
        Route::Busy => op.fail(StorageServiceError::Busy {
            storage: st.args.config.storage.clone(),
        }),
        Route::Spawn => {
            let args = volume::VolumeArgs {
                id,
                driver,
                store: st.args.store.clone(),
                parent: myself.clone(),
            };
            match Actor::spawn_linked(None, volume::VolumeActor, args, myself.get_cell()).await {
                Ok((actor, _join)) => {
                    st.volumes.insert(&key, actor.clone());
                    if let Err(ractor::MessagingErr::SendErr(op)) = actor.send_message(op) {
                        op.fail(StorageServiceError::Unavailable(
                            "the volume actor stopped; retry".into(),
                        ));
                    }
                }
                Err(e) => op.fail(StorageServiceError::Unavailable(format!(
                    "starting the volume actor failed: {e}"
                ))),
            }
        }
    }
}

async fn list(
    d: Arc<dyn StorageDriver>,
    allowed: &[Content],
    content: Option<Content>,
    vmid: Option<u32>,
) -> Result<Vec<VolumeInfo>, StorageServiceError> {
    let kinds: Vec<Content> = match content {
        Some(c) if allowed.contains(&c) => vec![c],
        Some(_) => Vec::new(),
        None => allowed.to_vec(),
    };
    let mut out = Vec::new();
    for c in kinds {
        // A VMID filter only selects images (Proxmox also matches backups by name; gpve's
        // backup names carry no parsed owner yet).
        if vmid.is_some() && c != Content::Images {
            continue;
        }
        out.extend(d.list_volumes(c, vmid).await?);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

async fn upload_target(
    d: &dyn StorageDriver,
    id: &VolumeId,
    node: &str,
) -> Result<PathBuf, StorageServiceError> {
    let final_path = match d.volume_location(id).await? {
        gpve_storage_drivers::VolumeLocation::File(p) => p,
        // Other backings import from a host file: stage it in the system temp dir.
        _ => std::env::temp_dir().join(id.name()),
    };
    if std::fs::symlink_metadata(&final_path).is_ok() {
        return Err(StorageError::VolumeExists(id.clone()).into());
    }
    if let Some(dir) = final_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            StorageServiceError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
    }
    // Named like the driver's own temporaries, so the next mount removes it after a crash.
    Ok(fsutil::temp_sibling(&final_path, node))
}

// ---------------------------------------------------------------------------------------
// supervision

/// The storage supervisor as a child of the node's tree: at every (re)start it reads the
/// storage records and starts one `storage:{id}` actor per storage active on `node`.
pub fn supervisor_child(node: &str, store: Store) -> ChildSpec {
    let node = node.to_string();
    ChildSpec::new(
        SUPERVISOR_ID,
        "storage-supervisor",
        RestartPolicy::Permanent,
        move |ctx| {
            let node = node.clone();
            let store = store.clone();
            async move {
                let configs = config::list(&store)
                    .await
                    .map_err(|e| SpawnErr::StartupFailed(Box::new(e)))?;
                let mut spec = SupervisorSpec::new(SUPERVISOR_ID)
                    .kind("storage-supervisor")
                    .strategy(Strategy::OneForOne)
                    .intensity(MAX_STORAGE_RESTARTS, STORAGE_RESTART_WINDOW_MS)
                    .backoff(200, 10_000)
                    // One broken storage must not stop the others (or the node).
                    .escalation(EscalationPolicy::hook(|e| {
                        tracing::error!(storage = %e.child, reason = %e.reason, "storage actor keeps failing; left stopped");
                    }));
                for cfg in configs.into_iter().filter(|c| c.active_on(&node)) {
                    spec = spec.child(storage_child(cfg, &node, &store));
                }
                let handle = Supervisor::spawn_linked(spec, ctx).await?;
                Ok(handle.cell())
            }
        },
    )
}

/// The child spec of one storage actor.
pub fn storage_child(cfg: StorageConfig, node: &str, store: &Store) -> ChildSpec {
    let args = StorageArgs {
        config: cfg.clone(),
        node: node.to_string(),
        store: store.clone(),
    };
    ChildSpec::actor(
        actor_id(&cfg.storage),
        "storage",
        RestartPolicy::Permanent,
        move |ctx| {
            (
                StorageActor {
                    stats: Some(ctx.stats.clone()),
                },
                args.clone(),
            )
        },
    )
}

/// Where a node's storage actors are found.
#[derive(Debug, Clone)]
pub struct StorageService {
    pub directory: Directory,
    /// Directory path of the storage supervisor (`gpve-server/storage`).
    pub supervisor_path: String,
    pub node: String,
    pub store: Store,
    /// How long a caller waits for metadata answers (status, list, info).
    pub call_timeout_ms: u64,
    /// How long a caller waits for data operations (create, delete, publish).
    pub data_timeout_ms: u64,
}

impl StorageService {
    /// The running actor of storage `id`, or why there is none.
    pub async fn actor(&self, id: &str) -> Result<ActorRef<StorageMsg>, StorageServiceError> {
        let path = format!("{}/{}", self.supervisor_path, actor_id(id));
        if let Some(a) = self.directory.lookup_ref::<StorageMsg>(&path) {
            return Ok(a);
        }
        let cfg = config::get(&self.store, id).await?;
        if !cfg.active_on(&self.node) {
            return Err(StorageServiceError::NotActiveHere(id.to_string()));
        }
        Err(StorageServiceError::Unavailable(format!(
            "the actor of storage '{id}' is not running (restarting?)"
        )))
    }

    /// Bring the running storage actors in line with the store for storage `id`: start,
    /// stop, or (when `restart`) restart it with its new configuration. Stopping a storage
    /// actor stops its volume actors with it; an operation cut short that way leaves the
    /// old state or the new one (driver guarantee) and its temporaries are removed when
    /// the pool is next mounted.
    pub async fn apply(&self, id: &str, restart: bool) -> Result<(), StorageServiceError> {
        let sup =
            SupervisorHandle::lookup(&self.directory, &self.supervisor_path).ok_or_else(|| {
                StorageServiceError::Unavailable("the storage supervisor is not running".into())
            })?;
        let cfg = match config::get(&self.store, id).await {
            Ok(c) => Some(c),
            Err(StorageConfigError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let child = actor_id(id);
        let running = sup
            .children()
            .await
            .map_err(sup_err)?
            .iter()
            .any(|c| c.id == child);
        let wanted = cfg.as_ref().is_some_and(|c| c.active_on(&self.node));
        if running && (!wanted || restart) {
            sup.remove_child(&child).await.map_err(sup_err)?;
        }
        if wanted
            && (!running || restart)
            && let Some(cfg) = cfg
        {
            sup.add_child(storage_child(cfg, &self.node, &self.store))
                .await
                .map_err(sup_err)?;
        }
        Ok(())
    }

    async fn ask<T: Send + 'static>(
        &self,
        id: &str,
        timeout_ms: u64,
        build: impl FnOnce(RpcReplyPort<T>) -> StorageMsg,
    ) -> Result<T, StorageServiceError> {
        let actor = self.actor(id).await?;
        match actor
            .call(build, Some(Duration::from_millis(timeout_ms)))
            .await
        {
            Ok(CallResult::Success(v)) => Ok(v),
            Ok(CallResult::Timeout) => Err(StorageServiceError::Unavailable(format!(
                "storage '{id}' did not answer within {timeout_ms} ms"
            ))),
            Ok(CallResult::SenderError) => Err(StorageServiceError::Unavailable(format!(
                "storage '{id}' dropped the request"
            ))),
            Err(e) => Err(StorageServiceError::Unavailable(format!(
                "storage '{id}': {e}"
            ))),
        }
    }

    pub async fn status(&self, id: &str) -> Result<StorageStatus, StorageServiceError> {
        self.ask(id, self.call_timeout_ms, StorageMsg::Status).await
    }

    pub async fn list(
        &self,
        id: &str,
        content: Option<Content>,
        vmid: Option<u32>,
    ) -> Result<Vec<VolumeInfo>, StorageServiceError> {
        self.ask(id, self.call_timeout_ms, |reply| StorageMsg::List {
            content,
            vmid,
            reply,
        })
        .await?
    }

    pub async fn upload_target(&self, volume: &VolumeId) -> Result<PathBuf, StorageServiceError> {
        let id = volume.clone();
        self.ask(volume.storage(), self.call_timeout_ms, |reply| {
            StorageMsg::UploadTarget { id, reply }
        })
        .await?
    }

    /// Send one volume command and wait for its answer (`data` selects the long timeout).
    pub async fn volume<T: Send + 'static>(
        &self,
        volume: &VolumeId,
        data: bool,
        build: impl FnOnce(RpcReplyPort<Result<T, StorageServiceError>>) -> VolumeMsg,
    ) -> Result<T, StorageServiceError> {
        let timeout = if data {
            self.data_timeout_ms
        } else {
            self.call_timeout_ms
        };
        let id = volume.clone();
        self.ask(volume.storage(), timeout, move |reply| {
            StorageMsg::Volume(id, build(reply))
        })
        .await?
    }

    /// Create the next free `vm-VMID-disk-N`. Two concurrent allocations get distinct
    /// disks: the create refuses to replace, and the loser moves to the next free name.
    pub async fn allocate(
        &self,
        storage: &str,
        vmid: u32,
        format: VolumeFormat,
        size_bytes: u64,
    ) -> Result<VolumeInfo, StorageServiceError> {
        let mut last = None;
        for _ in 0..gpve_storage_drivers::driver::MAX_ALLOCATION_ATTEMPTS {
            let id = self
                .ask(storage, self.call_timeout_ms, |reply| {
                    StorageMsg::NextDiskId {
                        vmid,
                        format,
                        reply,
                    }
                })
                .await??;
            match self
                .volume(&id, true, |reply| VolumeMsg::Create { size_bytes, reply })
                .await
            {
                Err(StorageServiceError::Storage(StorageError::VolumeExists(id))) => {
                    last = Some(id);
                }
                other => return other,
            }
        }
        Err(StorageError::InvalidRequest(format!(
            "no free disk name for VMID {vmid} (last tried {})",
            last.map(|i| i.to_string()).unwrap_or_default()
        ))
        .into())
    }
}

impl StorageService {
    /// Grow `volume` to `new_size_bytes` through its volume actor.
    pub async fn resize(
        &self,
        volume: &VolumeId,
        new_size_bytes: u64,
    ) -> Result<VolumeInfo, StorageServiceError> {
        self.volume(volume, true, |reply| VolumeMsg::Resize {
            new_size_bytes,
            reply,
        })
        .await
    }

    /// The next free `vm-VMID-disk-N` id on `storage` (in `format` on dir layouts).
    pub async fn next_disk_id(
        &self,
        storage: &str,
        vmid: u32,
        format: VolumeFormat,
    ) -> Result<VolumeId, StorageServiceError> {
        self.ask(storage, self.call_timeout_ms, |reply| {
            StorageMsg::NextDiskId {
                vmid,
                format,
                reply,
            }
        })
        .await?
    }

    /// Copy `source` to `target` on the same storage (see [`VolumeMsg::Clone`]).
    pub async fn clone_volume(
        &self,
        source: &VolumeId,
        target: &VolumeId,
        mode: CloneMode,
    ) -> Result<VolumeInfo, StorageServiceError> {
        let target = target.clone();
        self.volume(source, true, |reply| VolumeMsg::Clone {
            target,
            mode,
            reply,
        })
        .await
    }

    /// The capabilities of storage `id`'s driver (None while its pool is not mounted).
    pub async fn capabilities(&self, id: &str) -> Result<Capabilities, StorageServiceError> {
        self.status(id)
            .await?
            .capabilities
            .ok_or_else(|| StorageError::PoolNotActive(id.to_string()).into())
    }
}

fn sup_err(e: SupervisorError) -> StorageServiceError {
    StorageServiceError::Unavailable(error_chain(&e))
}
