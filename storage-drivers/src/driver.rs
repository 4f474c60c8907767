//! The one driver interface behind every storage type.
//!
//! Modelled on what real backends need (the shape follows Incus's storage driver interface
//! — pool lifecycle, volume CRUD, snapshots, copies, import/export, declared capabilities —
//! reduced to what gpve uses):
//! - file backends (dir, btrfs, nfs) hand QEMU a path; block backends (lvm-thin, zfs zvols,
//!   iscsi, krbd) hand it a block device; librbd/iscsi-direct hand it a URI with no host
//!   path at all: [`VolumeLocation`] covers the three.
//! - what a backend can do is declared up front in [`Capabilities`], so the caller (volume
//!   actor, API) can refuse early and the UI can grey out; the methods still return
//!   [`StorageError::Unsupported`] when asked anyway.
//! - live snapshots of a running VM go through QMP (the VM actor), not this trait: these
//!   methods operate on volumes no QEMU has open for writing.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::Serialize;

use crate::error::StorageError;
use crate::volume_id::{Content, SnapshotName, VolumeFormat, VolumeId};

/// Bound on `allocate_volume` retries when concurrent allocations race for a name.
pub const MAX_ALLOCATION_ATTEMPTS: u32 = 16;

/// How QEMU reaches a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backing {
    /// A regular file on a host filesystem (dir, btrfs, nfs, cifs).
    File,
    /// A host block device (lvm-thin, zfs zvol, iscsi via open-iscsi, krbd).
    Block,
    /// A network URI QEMU opens itself (librbd, libiscsi); no host path.
    Network,
}

/// What a driver can do; fixed for the life of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// Driver name (`dir`, `btrfs`, …).
    pub driver: &'static str,
    /// Content types this pool can hold.
    pub content: Vec<Content>,
    /// Image formats `create_volume` accepts.
    pub formats: Vec<VolumeFormat>,
    /// Formats on which `create_snapshot` works (empty: no snapshots).
    pub snapshot_formats: Vec<VolumeFormat>,
    /// Whether `clone_volume(.., CloneMode::Linked)` shares unchanged data with the source.
    pub linked_clones: bool,
    /// Whether a linked clone stays usable after its source is deleted (true for btrfs
    /// snapshots, false for qcow2 backing files).
    pub linked_clones_independent: bool,
    /// The same volumes are visible on every node (NFS, RBD, a shared dir).
    pub shared: bool,
    /// A VM can live-migrate to another node without copying its disks (true when shared).
    pub live_migratable: bool,
    /// How QEMU reaches the volumes.
    pub backing: Backing,
    /// Volumes allocate space as data is written.
    pub thin_provisioned: bool,
    /// Image volumes use the `VMID/NAME.EXT` id form (true) or flat `NAME` (false).
    pub vmid_dir_ids: bool,
}

impl Capabilities {
    pub fn snapshots_for(&self, format: VolumeFormat) -> bool {
        self.snapshot_formats.contains(&format)
    }
}

/// Space of a pool, in bytes, as `df` would show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PoolStatus {
    pub total_bytes: u64,
    pub used_bytes: u64,
    /// What an unprivileged writer can still allocate.
    pub available_bytes: u64,
}

/// Where QEMU finds a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum VolumeLocation {
    File(PathBuf),
    Block(PathBuf),
    /// E.g. `rbd:pool/image` or `iscsi://portal/iqn/lun`.
    Uri(String),
}

impl VolumeLocation {
    /// The host path for file and block volumes.
    pub fn host_path(&self) -> Option<&Path> {
        match self {
            VolumeLocation::File(p) | VolumeLocation::Block(p) => Some(p),
            VolumeLocation::Uri(_) => None,
        }
    }
}

/// One volume as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeInfo {
    pub id: VolumeId,
    /// `None` for non-image content (ISO, backup, snippet).
    pub format: Option<VolumeFormat>,
    /// Virtual size the guest sees (images) or the file size (other content).
    pub size_bytes: u64,
    /// Space actually allocated on the pool.
    pub used_bytes: u64,
    /// The volume this one is a linked clone of, while it depends on it.
    pub parent: Option<VolumeId>,
}

/// One snapshot of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    pub name: SnapshotName,
    /// Seconds since the Unix epoch, when the backend records it.
    pub created_unix_s: Option<u64>,
}

/// How `clone_volume` copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CloneMode {
    /// Share unchanged data with the source (qcow2 backing file, btrfs snapshot).
    Linked,
    /// An independent copy of every block.
    Full,
}

/// What `mount_pool` cleaned up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    /// Leftover temporaries of interrupted operations that were removed.
    pub removed_temporaries: Vec<PathBuf>,
}

/// A storage backend. Object-safe (`Arc<dyn StorageDriver>`); every method is cancel-safe
/// in the sense that dropping its future leaves the old state or the new one, never a
/// half-written volume under its final name (external commands are killed on drop and
/// their temporaries removed by the next `mount_pool`).
#[async_trait]
pub trait StorageDriver: Send + Sync + std::fmt::Debug {
    /// The storage id (`local`, `local-btrfs`) volume ids must carry.
    fn storage_id(&self) -> &str;
    fn capabilities(&self) -> &Capabilities;

    // --- pool lifecycle ---

    /// Prepare an empty pool (directory layout, subvolumes). Idempotent.
    async fn create_pool(&self) -> Result<(), StorageError>;
    /// Activate the pool on this node: check it is reachable and of the right kind, then
    /// remove temporaries that a crash of this node left behind. Other methods fail with
    /// [`StorageError::PoolNotActive`] until this succeeds.
    async fn mount_pool(&self) -> Result<ReconcileReport, StorageError>;
    /// Deactivate the pool on this node (nothing is deleted).
    async fn unmount_pool(&self) -> Result<(), StorageError>;
    async fn pool_status(&self) -> Result<PoolStatus, StorageError>;

    // --- volumes ---

    /// Create an image volume of `size_bytes` (format from the id's extension, or the
    /// driver's only format for flat ids). Fails cleanly, leaving nothing, when the pool
    /// lacks the space.
    async fn create_volume(
        &self,
        id: &VolumeId,
        size_bytes: u64,
    ) -> Result<VolumeInfo, StorageError>;
    /// The id `vm-VMID-disk-N` with the smallest free N (in `format` for dir layouts).
    async fn next_disk_id(&self, vmid: u32, format: VolumeFormat)
    -> Result<VolumeId, StorageError>;
    /// Create the next free `vm-VMID-disk-N`. Concurrent callers get distinct disks:
    /// the final rename refuses to replace, and the loser retries with the next free N.
    async fn allocate_volume(
        &self,
        vmid: u32,
        format: VolumeFormat,
        size_bytes: u64,
    ) -> Result<VolumeInfo, StorageError> {
        let mut last = None;
        for _ in 0..MAX_ALLOCATION_ATTEMPTS {
            let id = self.next_disk_id(vmid, format).await?;
            match self.create_volume(&id, size_bytes).await {
                Err(StorageError::VolumeExists(id)) => last = Some(id),
                other => return other,
            }
        }
        Err(StorageError::InvalidRequest(format!(
            "no free disk name for VMID {vmid} after {MAX_ALLOCATION_ATTEMPTS} attempts (last tried {})",
            last.map(|id| id.to_string()).unwrap_or_default()
        )))
    }
    async fn delete_volume(&self, id: &VolumeId) -> Result<(), StorageError>;
    /// Grow an image to `new_size_bytes`; shrinking is refused (it destroys guest data).
    async fn resize_volume(&self, id: &VolumeId, new_size_bytes: u64) -> Result<(), StorageError>;
    /// Volumes of one content type, optionally only one VMID's, sorted by id.
    async fn list_volumes(
        &self,
        content: Content,
        vmid: Option<u32>,
    ) -> Result<Vec<VolumeInfo>, StorageError>;
    /// Size and usage of one volume.
    async fn volume_info(&self, id: &VolumeId) -> Result<VolumeInfo, StorageError>;
    /// Where QEMU opens the volume.
    async fn volume_location(&self, id: &VolumeId) -> Result<VolumeLocation, StorageError>;

    // --- snapshots (the volume must not be open for writing) ---

    async fn create_snapshot(&self, id: &VolumeId, snap: &SnapshotName)
    -> Result<(), StorageError>;
    async fn delete_snapshot(&self, id: &VolumeId, snap: &SnapshotName)
    -> Result<(), StorageError>;
    /// Return the volume to the snapshot's content; the snapshot is kept.
    async fn rollback_snapshot(
        &self,
        id: &VolumeId,
        snap: &SnapshotName,
    ) -> Result<(), StorageError>;
    async fn list_snapshots(&self, id: &VolumeId) -> Result<Vec<SnapshotInfo>, StorageError>;

    // --- copies ---

    /// Copy `source` to the new volume `target` on this pool. `Linked` fails with
    /// `Unsupported` where the backend cannot share data for that format.
    async fn clone_volume(
        &self,
        source: &VolumeId,
        target: &VolumeId,
        mode: CloneMode,
    ) -> Result<VolumeInfo, StorageError>;
    /// Create volume `target` from a host file: a disk image in any format qemu-img reads
    /// (converted to the target's format) or, for iso/backup/snippets, a plain copy.
    async fn import_volume(
        &self,
        source: &Path,
        target: &VolumeId,
    ) -> Result<VolumeInfo, StorageError>;
    /// Write the volume to the host file `dest` (an image in `format`, or a plain copy for
    /// other content). `dest` must not exist.
    async fn export_volume(
        &self,
        id: &VolumeId,
        dest: &Path,
        format: Option<VolumeFormat>,
    ) -> Result<(), StorageError>;
}
