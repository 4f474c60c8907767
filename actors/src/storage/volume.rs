//! The `volume:{id}` actor: serialises the operations on one volume.
//!
//! Two operations on one volume never overlap (a delete cannot run while a snapshot of the
//! same volume is being taken, an upload cannot be published twice), while operations on
//! different volumes of one storage run in parallel. The storage actor spawns a volume
//! actor on the first operation and stops it when it is idle (see [`super::state`]), so
//! the mailbox is the per-volume queue and there is no lock to time out.

use std::path::PathBuf;
use std::sync::Arc;

use gpve_storage_drivers::fsutil::{self, FsError};
use gpve_storage_drivers::{
    CloneMode, SnapshotInfo, SnapshotName, StorageDriver, StorageError, VolumeFormat, VolumeId,
    VolumeInfo, VolumeLocation,
};
use gpve_store::{Key, Store};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};

use super::{StorageMsg, StorageServiceError, usage};

/// Store subspace of per-volume metadata (notes, protection).
pub const VOLUME_META_SUBSPACE: &str = "volume-meta";
/// Longest accepted volume notes, in bytes.
pub const MAX_NOTES_BYTES: usize = 64 * 1024;

/// What gpve keeps about a volume besides its data (Proxmox keeps these in `.notes` and
/// `.protected` files next to backups; the store holds them for every content type).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMeta {
    #[serde(default)]
    pub notes: Option<String>,
    /// A protected volume cannot be deleted.
    #[serde(default)]
    pub protected: bool,
}

/// The store key of a volume's metadata.
pub fn meta_key(id: &VolumeId) -> Key {
    Key::pack(&(VOLUME_META_SUBSPACE, id.to_string()))
}

/// A volume's metadata (default when none was set).
pub async fn read_meta(store: &Store, id: &VolumeId) -> Result<VolumeMeta, StorageServiceError> {
    Ok(store.get_json(&meta_key(id)).await?.unwrap_or_default())
}

type Reply<T> = RpcReplyPort<Result<T, StorageServiceError>>;

/// Commands of a volume actor. A volume actor has one lifecycle state (serving): every
/// command is accepted and runs after the ones before it.
#[derive(Debug)]
pub enum VolumeMsg {
    /// Create the volume with `size_bytes` (images).
    Create {
        size_bytes: u64,
        reply: Reply<VolumeInfo>,
    },
    /// Size, usage and parent.
    Info {
        reply: Reply<VolumeInfo>,
    },
    /// Where QEMU (or a download) finds it.
    Location {
        reply: Reply<VolumeLocation>,
    },
    /// Delete it; refused while a VM uses it or while it is protected.
    Delete {
        reply: Reply<()>,
    },
    /// Set notes and/or protection; `None` leaves a field as it is.
    SetMeta {
        notes: Option<String>,
        protected: Option<bool>,
        reply: Reply<VolumeMeta>,
    },
    CreateSnapshot {
        name: SnapshotName,
        reply: Reply<()>,
    },
    DeleteSnapshot {
        name: SnapshotName,
        reply: Reply<()>,
    },
    RollbackSnapshot {
        name: SnapshotName,
        reply: Reply<()>,
    },
    ListSnapshots {
        reply: Reply<Vec<SnapshotInfo>>,
    },
    /// Publish an uploaded file (already streamed to `tmp` inside the storage) as this
    /// volume: atomic rename that refuses to replace. `tmp` is removed on failure.
    Publish {
        tmp: PathBuf,
        reply: Reply<VolumeInfo>,
    },
    /// Grow the image to `new_size_bytes` (shrinking is refused by the driver, naming the
    /// current size). Refused while a running VM has the volume open: that VM's actor
    /// resizes through QMP instead.
    Resize {
        new_size_bytes: u64,
        reply: Reply<VolumeInfo>,
    },
    /// Copy this volume to `target` on the same storage: `Linked` shares unchanged data
    /// (qcow2 backing file, btrfs snapshot) and is refused with `Unsupported` where the
    /// backend cannot; `Full` copies every block. The driver builds the copy under a
    /// temporary name and renames it into place, so a crash leaves no `target` (the
    /// temporary is removed when the pool is next mounted).
    Clone {
        target: VolumeId,
        mode: CloneMode,
        reply: Reply<VolumeInfo>,
    },
    /// Write this volume, flattened (no backing file), to the host file `dest` in
    /// `format`; `dest` must not exist. Refused while a running VM has it open.
    Export {
        dest: PathBuf,
        format: Option<VolumeFormat>,
        reply: Reply<()>,
    },
    /// Create this volume from the host image `source` (converted to this volume's
    /// format; built under a temporary name and renamed into place).
    Import {
        source: PathBuf,
        reply: Reply<VolumeInfo>,
    },
}

impl ractor::Message for VolumeMsg {}

impl VolumeMsg {
    /// Answer the command with `err` without running it.
    pub fn fail(self, err: StorageServiceError) {
        // A caller that gave up waiting is not an error here.
        match self {
            VolumeMsg::Create { reply, .. }
            | VolumeMsg::Info { reply }
            | VolumeMsg::Resize { reply, .. }
            | VolumeMsg::Clone { reply, .. }
            | VolumeMsg::Import { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            VolumeMsg::Publish { tmp, reply } => {
                fsutil::remove_any(&tmp);
                let _ = reply.send(Err(err));
            }
            VolumeMsg::Location { reply } => {
                let _ = reply.send(Err(err));
            }
            VolumeMsg::Delete { reply }
            | VolumeMsg::Export { reply, .. }
            | VolumeMsg::CreateSnapshot { reply, .. }
            | VolumeMsg::DeleteSnapshot { reply, .. }
            | VolumeMsg::RollbackSnapshot { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            VolumeMsg::SetMeta { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            VolumeMsg::ListSnapshots { reply } => {
                let _ = reply.send(Err(err));
            }
        }
    }
}

/// What a volume actor is started with.
#[derive(Debug, Clone)]
pub struct VolumeArgs {
    pub id: VolumeId,
    pub driver: Arc<dyn StorageDriver>,
    pub store: Store,
    /// Told after every command, so it can stop this actor once idle.
    pub parent: ActorRef<StorageMsg>,
}

/// The volume actor.
#[derive(Debug, Default)]
pub struct VolumeActor;

impl Actor for VolumeActor {
    type Msg = VolumeMsg;
    type State = VolumeArgs;
    type Arguments = VolumeArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<VolumeMsg>,
        args: VolumeArgs,
    ) -> Result<VolumeArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<VolumeMsg>,
        msg: VolumeMsg,
        st: &mut VolumeArgs,
    ) -> Result<(), ActorProcessingErr> {
        let span = tracing::debug_span!("volume", volume = %st.id);
        let _guard = span.enter();
        run(st, msg).await;
        // The storage actor may already be stopping; then nobody needs the count.
        let _ = st.parent.cast(StorageMsg::VolumeDone(st.id.to_string()));
        Ok(())
    }
}

fn send<T>(reply: Reply<T>, result: Result<T, StorageServiceError>) {
    if let Err(e) = &result {
        tracing::debug!(error = %e, "volume operation failed");
    }
    // The caller may have timed out; the operation's outcome stands either way.
    let _ = reply.send(result);
}

async fn run(st: &VolumeArgs, msg: VolumeMsg) {
    let d = &st.driver;
    let id = &st.id;
    match msg {
        VolumeMsg::Create { size_bytes, reply } => {
            send(
                reply,
                d.create_volume(id, size_bytes).await.map_err(Into::into),
            );
        }
        VolumeMsg::Info { reply } => send(reply, d.volume_info(id).await.map_err(Into::into)),
        VolumeMsg::Location { reply } => {
            send(reply, d.volume_location(id).await.map_err(Into::into));
        }
        VolumeMsg::Delete { reply } => send(reply, delete(st).await),
        VolumeMsg::SetMeta {
            notes,
            protected,
            reply,
        } => send(reply, set_meta(st, notes, protected).await),
        VolumeMsg::CreateSnapshot { name, reply } => {
            send(
                reply,
                d.create_snapshot(id, &name).await.map_err(Into::into),
            );
        }
        VolumeMsg::DeleteSnapshot { name, reply } => {
            send(
                reply,
                d.delete_snapshot(id, &name).await.map_err(Into::into),
            );
        }
        VolumeMsg::RollbackSnapshot { name, reply } => {
            let result = match usage::volume_user(&st.store, id).await {
                Ok(Some(vmid)) => Err(in_use(id, vmid)),
                Ok(None) => d.rollback_snapshot(id, &name).await.map_err(Into::into),
                Err(e) => Err(e.into()),
            };
            send(reply, result);
        }
        VolumeMsg::ListSnapshots { reply } => {
            send(reply, d.list_snapshots(id).await.map_err(Into::into));
        }
        VolumeMsg::Publish { tmp, reply } => {
            let result = publish(st, &tmp).await;
            if result.is_err() {
                fsutil::remove_any(&tmp);
            }
            send(reply, result);
        }
        VolumeMsg::Resize {
            new_size_bytes,
            reply,
        } => send(reply, resize(st, new_size_bytes).await),
        VolumeMsg::Clone {
            target,
            mode,
            reply,
        } => send(reply, clone(st, &target, mode).await),
        VolumeMsg::Export {
            dest,
            format,
            reply,
        } => send(reply, export(st, &dest, format).await),
        VolumeMsg::Import { source, reply } => {
            send(
                reply,
                d.import_volume(&source, id).await.map_err(Into::into),
            );
        }
    }
}

async fn export(
    st: &VolumeArgs,
    dest: &std::path::Path,
    format: Option<VolumeFormat>,
) -> Result<(), StorageServiceError> {
    if let Some(vmid) = running_user(st).await? {
        return Err(StorageError::VolumeInUse {
            volume: st.id.clone(),
            user: format!("the running VM {vmid}; stop it before copying the volume"),
        }
        .into());
    }
    Ok(st.driver.export_volume(&st.id, dest, format).await?)
}

async fn resize(st: &VolumeArgs, new_size_bytes: u64) -> Result<VolumeInfo, StorageServiceError> {
    if let Some(vmid) = running_user(st).await? {
        return Err(StorageError::VolumeInUse {
            volume: st.id.clone(),
            user: format!("the running VM {vmid} (resize it through the VM)"),
        }
        .into());
    }
    st.driver.resize_volume(&st.id, new_size_bytes).await?;
    Ok(st.driver.volume_info(&st.id).await?)
}

/// The VM that references this volume and has a QEMU process, if any: such a volume is
/// open for writing and must not change under QEMU. Reads the VM records as raw JSON, as
/// [`usage`] does.
async fn running_user(st: &VolumeArgs) -> Result<Option<u32>, StorageServiceError> {
    let rows: Vec<(gpve_store::Key, serde_json::Value)> = st
        .store
        .list_json(&gpve_store::Key::prefix(&(crate::vm::VM_SUBSPACE,)))
        .await?;
    let wanted = st.id.to_string();
    Ok(rows
        .iter()
        .find(|(_, r)| r["status"] == "running" && usage::record_uses(r, &wanted))
        .map(|(_, r)| r["vmid"].as_u64().unwrap_or(0) as u32))
}

async fn clone(
    st: &VolumeArgs,
    target: &VolumeId,
    mode: CloneMode,
) -> Result<VolumeInfo, StorageServiceError> {
    if target.storage() != st.id.storage() {
        return Err(StorageError::WrongStorage(target.clone(), st.id.storage().to_string()).into());
    }
    // A full copy of a disk a running QEMU writes would be torn; a linked clone of it
    // would see later writes through its backing file.
    if let Some(vmid) = running_user(st).await? {
        return Err(StorageError::VolumeInUse {
            volume: st.id.clone(),
            user: format!("the running VM {vmid}; stop it before cloning"),
        }
        .into());
    }
    Ok(st.driver.clone_volume(&st.id, target, mode).await?)
}

fn in_use(id: &VolumeId, vmid: u32) -> StorageServiceError {
    StorageError::VolumeInUse {
        volume: id.clone(),
        user: format!("VM {vmid}"),
    }
    .into()
}

async fn delete(st: &VolumeArgs) -> Result<(), StorageServiceError> {
    let id = &st.id;
    if let Some(vmid) = usage::volume_user(&st.store, id).await? {
        return Err(in_use(id, vmid));
    }
    if read_meta(&st.store, id).await?.protected {
        return Err(StorageServiceError::Protected(id.clone()));
    }
    st.driver.delete_volume(id).await?;
    st.store.delete(&meta_key(id)).await?;
    Ok(())
}

async fn set_meta(
    st: &VolumeArgs,
    notes: Option<String>,
    protected: Option<bool>,
) -> Result<VolumeMeta, StorageServiceError> {
    // Metadata of a volume that does not exist would outlive nothing: refuse it.
    st.driver.volume_info(&st.id).await?;
    let mut meta = read_meta(&st.store, &st.id).await?;
    if let Some(n) = notes {
        meta.notes = (!n.is_empty()).then_some(n);
    }
    if let Some(p) = protected {
        meta.protected = p;
    }
    if meta == VolumeMeta::default() {
        st.store.delete(&meta_key(&st.id)).await?;
    } else {
        st.store.put_json(&meta_key(&st.id), &meta).await?;
    }
    Ok(meta)
}

async fn publish(
    st: &VolumeArgs,
    tmp: &std::path::Path,
) -> Result<VolumeInfo, StorageServiceError> {
    let id = &st.id;
    match st.driver.volume_location(id).await? {
        VolumeLocation::File(final_path) => {
            fsutil::publish(tmp, &final_path).map_err(|e| match e {
                FsError::Exists(_) => StorageError::VolumeExists(id.clone()),
                other => other.into(),
            })?;
            Ok(st.driver.volume_info(id).await?)
        }
        // Block and network backends copy the data in themselves.
        VolumeLocation::Block(_) | VolumeLocation::Uri(_) => {
            let info = st.driver.import_volume(tmp, id).await?;
            fsutil::remove_any(tmp);
            Ok(info)
        }
    }
}
