//! `dir`: a directory with Proxmox's layout (`images/VMID/`, `template/iso/`, `dump/`,
//! `snippets/`), raw and qcow2 images through `qemu-img`.
//!
//! - Snapshots: qcow2 internal snapshots (`qemu-img snapshot`); raw has none.
//! - Linked clones: a qcow2 overlay whose backing file is the source, named relative to
//!   the overlay (`../100/base-100-disk-0.qcow2`) so a shared directory mounted at another
//!   path on another node still resolves. The source must then stay unchanged: deleting or
//!   rolling back a volume that backs another is refused.
//! - Every new file (create, clone, import, export) is written under a temporary name in
//!   its final directory, fsynced and renamed into place with RENAME_NOREPLACE: a crash
//!   leaves the old state or the new one, and `mount_pool` removes this node's leftovers.

mod config;
mod error;
#[cfg(test)]
mod tests;

use std::io::Read;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

pub use config::DirConfig;
pub use error::DirError;

use crate::driver::{
    Backing, Capabilities, CloneMode, PoolStatus, ReconcileReport, SnapshotInfo, StorageDriver,
    VolumeInfo, VolumeLocation,
};
use crate::error::StorageError;
use crate::files::{PoolRoot, content_dir, map_exists};
use crate::fsutil::{self, io};
use crate::qemu_img::QemuImg;
use crate::volume_id::{Content, SnapshotName, VolumeFormat, VolumeId, next_free_disk_index};

/// Sizes are handed to qemu-img in bytes; it rounds up to sectors, which would make the
/// reported size differ from the requested one.
const SECTOR_BYTES: u64 = 512;

#[derive(Debug)]
pub struct DirDriver {
    cfg: DirConfig,
    pool: PoolRoot,
    caps: Capabilities,
    qemu: QemuImg,
}

impl DirDriver {
    pub fn new(cfg: DirConfig) -> Result<Self, StorageError> {
        cfg.validate()?;
        let caps = Capabilities {
            driver: "dir",
            content: cfg.content.clone(),
            formats: config::FORMATS.to_vec(),
            snapshot_formats: vec![VolumeFormat::Qcow2],
            linked_clones: true,
            linked_clones_independent: false,
            shared: cfg.shared,
            live_migratable: cfg.shared,
            backing: Backing::File,
            thin_provisioned: true,
            vmid_dir_ids: true,
        };
        let pool = PoolRoot::new(&cfg.storage, &cfg.path, &cfg.node, &cfg.content);
        let qemu = QemuImg {
            meta_timeout_s: cfg.meta_timeout_s,
            copy_timeout_s: cfg.copy_timeout_s,
        };
        Ok(Self {
            cfg,
            pool,
            caps,
            qemu,
        })
    }

    fn image_format(&self, id: &VolumeId) -> Result<VolumeFormat, StorageError> {
        id.format_from_name().ok_or_else(|| {
            StorageError::InvalidRequest(format!(
                "{id}: dir storage image ids have the form VMID/vm-VMID-NAME.raw or .qcow2"
            ))
        })
    }

    /// `root/images/VMID/NAME`, confined to the root.
    fn image_path(&self, root: &Path, id: &VolumeId) -> Result<PathBuf, StorageError> {
        self.image_format(id)?;
        let vmid = id
            .vmid()
            .ok_or_else(|| StorageError::InvalidRequest(format!("{id} has no VMID")))?;
        let rel = Path::new(content_dir(Content::Images))
            .join(vmid.to_string())
            .join(id.name());
        Ok(fsutil::resolve_beneath(root, &rel)?)
    }

    fn checked(&self, id: &VolumeId) -> Result<PathBuf, StorageError> {
        self.pool.check_id(id)?;
        self.pool.root()
    }

    async fn image_info(&self, root: &Path, id: &VolumeId) -> Result<VolumeInfo, StorageError> {
        let path = self.image_path(root, id)?;
        let format = self.image_format(id)?;
        let meta = match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Err(StorageError::VolumeNotFound(id.clone())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::VolumeNotFound(id.clone()));
            }
            Err(e) => return Err(io("stat", &path)(e).into()),
        };
        let (size_bytes, parent) = match format {
            VolumeFormat::Raw => (meta.len(), None),
            VolumeFormat::Qcow2 => {
                let info = self.qemu.info(&path, Some("qcow2")).await?;
                let parent = info
                    .full_backing_filename
                    .as_deref()
                    .and_then(|b| self.id_of_image_path(root, Path::new(b)));
                (info.virtual_size, parent)
            }
        };
        Ok(VolumeInfo {
            id: id.clone(),
            format: Some(format),
            size_bytes,
            used_bytes: fsutil::allocated_bytes(&meta),
            parent,
        })
    }

    /// `root/images/VMID/NAME` → the volume id, if the path is one of ours.
    fn id_of_image_path(&self, root: &Path, path: &Path) -> Option<VolumeId> {
        let canon = std::fs::canonicalize(path).ok()?;
        let rel = canon.strip_prefix(root).ok()?;
        let mut parts = rel.iter().map(|p| p.to_str());
        let (Some(Some("images")), Some(Some(vmid)), Some(Some(name)), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        VolumeId::image(&self.cfg.storage, vmid.parse().ok()?, name).ok()
    }

    /// Images whose qcow2 backing file is `id` (read from the qcow2 headers directly: one
    /// qemu-img process per image would make every delete O(images) processes).
    fn children_of(&self, root: &Path, id: &VolumeId) -> Result<Vec<VolumeId>, StorageError> {
        let target = self.image_path(root, id)?;
        let mut out = Vec::new();
        for (vmid, dir) in self.pool.vmid_dirs(root)? {
            for name in self.pool.names_in_vmid_dir(root, vmid)? {
                if !name.ends_with(".qcow2") {
                    continue;
                }
                let path = dir.join(&name);
                let Ok(Some(backing)) = qcow2_backing_name(&path) else {
                    continue;
                };
                let backing_path = dir.join(backing);
                let same = match (
                    std::fs::canonicalize(&backing_path),
                    std::fs::canonicalize(&target),
                ) {
                    (Ok(a), Ok(b)) => a == b,
                    _ => false,
                };
                if same && let Ok(child) = VolumeId::image(&self.cfg.storage, vmid, &name) {
                    out.push(child);
                }
            }
        }
        Ok(out)
    }

    fn refuse_if_base(&self, root: &Path, id: &VolumeId, what: &str) -> Result<(), StorageError> {
        let children = self.children_of(root, id)?;
        if let Some(first) = children.first() {
            return Err(StorageError::VolumeInUse {
                volume: id.clone(),
                user: format!(
                    "{} linked clone(s), e.g. {first}; {what} would corrupt them",
                    children.len()
                ),
            });
        }
        Ok(())
    }

    fn require_absent(&self, root: &Path, id: &VolumeId) -> Result<PathBuf, StorageError> {
        let path = self.image_path(root, id)?;
        if std::fs::symlink_metadata(&path).is_ok() {
            return Err(StorageError::VolumeExists(id.clone()));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("mkdir", dir))?;
        }
        Ok(path)
    }

    fn require_snapshots(&self, id: &VolumeId) -> Result<(), StorageError> {
        let format = self.image_format(id)?;
        if !self.caps.snapshots_for(format) {
            return Err(StorageError::Unsupported {
                operation: "snapshot",
                reason: format!(
                    "{id} is a raw image and raw images on dir storage have no snapshots; \
                     use qcow2 or a btrfs storage"
                ),
            });
        }
        Ok(())
    }

    async fn snapshot_names(&self, path: &Path) -> Result<Vec<(String, u64)>, StorageError> {
        let info = self.qemu.info(path, Some("qcow2")).await?;
        Ok(info
            .snapshots
            .into_iter()
            .map(|s| (s.name, s.date_sec))
            .collect())
    }

    /// Run `write` against a fresh temporary next to `path`, then publish it. Any failure
    /// (including a full filesystem mid-copy) removes the temporary.
    async fn write_new<F, Fut>(
        &self,
        path: &Path,
        id: &VolumeId,
        write: F,
    ) -> Result<(), StorageError>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: std::future::Future<Output = Result<(), StorageError>>,
    {
        let tmp = fsutil::temp_sibling(path, &self.cfg.node);
        if let Err(e) = write(tmp.clone()).await {
            fsutil::remove_any(&tmp);
            return Err(e);
        }
        fsutil::publish(&tmp, path).map_err(|e| map_exists(e, id))
    }
}

/// The backing file name in a qcow2 header, or None for a standalone image.
fn qcow2_backing_name(path: &Path) -> std::io::Result<Option<String>> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let mut hdr = [0u8; 20];
    f.read_exact(&mut hdr)?;
    if &hdr[0..4] != b"QFI\xfb" {
        return Ok(None);
    }
    let offset = u64::from_be_bytes([
        hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
    ]);
    let len = u32::from_be_bytes([hdr[16], hdr[17], hdr[18], hdr[19]]);
    // The qcow2 spec bounds backing file names to 1023 bytes.
    if offset == 0 || len == 0 || len > 1023 {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(offset))?;
    let mut name = vec![0u8; len as usize];
    f.read_exact(&mut name)?;
    Ok(String::from_utf8(name).ok())
}

/// `name` relative to the directory of `images/TO_VMID/`.
fn backing_rel(source: &VolumeId, target_vmid: Option<u32>) -> String {
    match (source.vmid(), target_vmid) {
        (Some(a), Some(b)) if a == b => source.name().to_owned(),
        (Some(a), _) => format!("../{a}/{}", source.name()),
        (None, _) => source.name().to_owned(),
    }
}

#[async_trait]
impl StorageDriver for DirDriver {
    fn storage_id(&self) -> &str {
        &self.cfg.storage
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn create_pool(&self) -> Result<(), StorageError> {
        self.pool.create_layout()
    }

    async fn mount_pool(&self) -> Result<ReconcileReport, StorageError> {
        let root = self.pool.canonical_root()?;
        if self.cfg.is_mountpoint {
            use std::os::unix::fs::MetadataExt;
            let here = std::fs::metadata(&root).map_err(io("stat", &root))?;
            let parent = root.parent().unwrap_or(&root);
            let up = std::fs::metadata(parent).map_err(io("stat", parent))?;
            if root != parent && here.dev() == up.dev() {
                return Err(DirError::NotMounted(root).into());
            }
        }
        let dirs = self.pool.temp_dirs(&root)?;
        let mut report = ReconcileReport::default();
        for tmp in self.pool.find_temporaries(&dirs)? {
            tracing::info!(storage = %self.cfg.storage, path = %tmp.display(), "removing leftover temporary");
            fsutil::remove_any(&tmp);
            report.removed_temporaries.push(tmp);
        }
        self.pool.set_active(Some(root));
        Ok(report)
    }

    async fn unmount_pool(&self) -> Result<(), StorageError> {
        self.pool.set_active(None);
        Ok(())
    }

    async fn pool_status(&self) -> Result<PoolStatus, StorageError> {
        let root = self.pool.root()?;
        Ok(fsutil::statvfs(&root)?)
    }

    async fn create_volume(
        &self,
        id: &VolumeId,
        size_bytes: u64,
    ) -> Result<VolumeInfo, StorageError> {
        let root = self.checked(id)?;
        let format = self.image_format(id)?;
        if size_bytes == 0 || !size_bytes.is_multiple_of(SECTOR_BYTES) {
            return Err(StorageError::InvalidRequest(format!(
                "size {size_bytes} must be a positive multiple of {SECTOR_BYTES} bytes"
            )));
        }
        let path = self.image_path(&root, id)?;
        if std::fs::symlink_metadata(&path).is_ok() {
            return Err(StorageError::VolumeExists(id.clone()));
        }
        if !self.cfg.overcommit {
            self.pool.check_space(&root, size_bytes)?;
        }
        let path = self.require_absent(&root, id)?;
        let qemu = self.qemu;
        self.write_new(&path, id, |tmp| async move {
            Ok(qemu.create(&tmp, format, size_bytes, None).await?)
        })
        .await?;
        self.image_info(&root, id).await
    }

    async fn next_disk_id(
        &self,
        vmid: u32,
        format: VolumeFormat,
    ) -> Result<VolumeId, StorageError> {
        let root = self.pool.root()?;
        let names = self.pool.names_in_vmid_dir(&root, vmid)?;
        let n = next_free_disk_index(vmid, names.iter().map(String::as_str));
        Ok(VolumeId::disk(&self.cfg.storage, vmid, n, Some(format))?)
    }

    async fn delete_volume(&self, id: &VolumeId) -> Result<(), StorageError> {
        let root = self.checked(id)?;
        if id.content() != Content::Images {
            return self.pool.delete_file(&root, id);
        }
        let path = self.image_path(&root, id)?;
        self.image_info(&root, id).await?;
        self.refuse_if_base(&root, id, "deleting it")?;
        std::fs::remove_file(&path).map_err(io("unlink", &path))?;
        Ok(())
    }

    async fn resize_volume(&self, id: &VolumeId, new_size_bytes: u64) -> Result<(), StorageError> {
        let root = self.checked(id)?;
        let info = self.image_info(&root, id).await?;
        if !new_size_bytes.is_multiple_of(SECTOR_BYTES) {
            return Err(StorageError::InvalidRequest(format!(
                "size {new_size_bytes} must be a multiple of {SECTOR_BYTES} bytes"
            )));
        }
        if new_size_bytes < info.size_bytes {
            return Err(StorageError::InvalidRequest(format!(
                "shrinking {id} from {} to {new_size_bytes} bytes is refused: it destroys guest data",
                info.size_bytes
            )));
        }
        if new_size_bytes == info.size_bytes {
            return Ok(());
        }
        if !self.cfg.overcommit {
            self.pool
                .check_space(&root, new_size_bytes - info.size_bytes)?;
        }
        let path = self.image_path(&root, id)?;
        self.qemu
            .resize(&path, self.image_format(id)?, new_size_bytes)
            .await?;
        Ok(())
    }

    async fn list_volumes(
        &self,
        content: Content,
        vmid: Option<u32>,
    ) -> Result<Vec<VolumeInfo>, StorageError> {
        let root = self.pool.root()?;
        if !self.cfg.content.contains(&content) {
            return Ok(Vec::new());
        }
        if content != Content::Images {
            return self.pool.list_files(&root, content);
        }
        let mut out = Vec::new();
        for (dir_vmid, _) in self.pool.vmid_dirs(&root)? {
            if vmid.is_some_and(|v| v != dir_vmid) {
                continue;
            }
            for name in self.pool.names_in_vmid_dir(&root, dir_vmid)? {
                let Ok(id) = VolumeId::image(&self.cfg.storage, dir_vmid, &name) else {
                    continue;
                };
                match self.image_info(&root, &id).await {
                    Ok(info) => out.push(info),
                    Err(e) => {
                        tracing::warn!(volume = %id, error = %e, "skipping unreadable image");
                    }
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn volume_info(&self, id: &VolumeId) -> Result<VolumeInfo, StorageError> {
        let root = self.checked(id)?;
        match id.content() {
            Content::Images => self.image_info(&root, id).await,
            _ => self.pool.file_info(&root, id),
        }
    }

    async fn volume_location(&self, id: &VolumeId) -> Result<VolumeLocation, StorageError> {
        let root = self.checked(id)?;
        let path = match id.content() {
            Content::Images => self.image_path(&root, id)?,
            _ => self.pool.file_path(&root, id)?,
        };
        Ok(VolumeLocation::File(path))
    }

    async fn create_snapshot(
        &self,
        id: &VolumeId,
        snap: &SnapshotName,
    ) -> Result<(), StorageError> {
        let root = self.checked(id)?;
        self.require_snapshots(id)?;
        self.image_info(&root, id).await?;
        let path = self.image_path(&root, id)?;
        if self
            .snapshot_names(&path)
            .await?
            .iter()
            .any(|(n, _)| n == snap.as_str())
        {
            return Err(StorageError::SnapshotExists {
                volume: id.clone(),
                snapshot: snap.to_string(),
            });
        }
        self.qemu.snapshot(&path, "-c", snap.as_str()).await?;
        Ok(())
    }

    async fn delete_snapshot(
        &self,
        id: &VolumeId,
        snap: &SnapshotName,
    ) -> Result<(), StorageError> {
        let root = self.checked(id)?;
        self.require_snapshots(id)?;
        self.image_info(&root, id).await?;
        let path = self.image_path(&root, id)?;
        if !self
            .snapshot_names(&path)
            .await?
            .iter()
            .any(|(n, _)| n == snap.as_str())
        {
            return Err(StorageError::SnapshotNotFound {
                volume: id.clone(),
                snapshot: snap.to_string(),
            });
        }
        self.qemu.snapshot(&path, "-d", snap.as_str()).await?;
        Ok(())
    }

    async fn rollback_snapshot(
        &self,
        id: &VolumeId,
        snap: &SnapshotName,
    ) -> Result<(), StorageError> {
        let root = self.checked(id)?;
        self.require_snapshots(id)?;
        self.image_info(&root, id).await?;
        let path = self.image_path(&root, id)?;
        if !self
            .snapshot_names(&path)
            .await?
            .iter()
            .any(|(n, _)| n == snap.as_str())
        {
            return Err(StorageError::SnapshotNotFound {
                volume: id.clone(),
                snapshot: snap.to_string(),
            });
        }
        self.refuse_if_base(&root, id, "rolling it back")?;
        self.qemu.snapshot(&path, "-a", snap.as_str()).await?;
        Ok(())
    }

    async fn list_snapshots(&self, id: &VolumeId) -> Result<Vec<SnapshotInfo>, StorageError> {
        let root = self.checked(id)?;
        self.require_snapshots(id)?;
        self.image_info(&root, id).await?;
        let path = self.image_path(&root, id)?;
        let mut out: Vec<SnapshotInfo> = self
            .snapshot_names(&path)
            .await?
            .into_iter()
            .filter_map(|(name, date)| {
                // Snapshots made by other tools may carry names we would not accept.
                SnapshotName::new(&name).ok().map(|name| SnapshotInfo {
                    name,
                    created_unix_s: Some(date),
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn clone_volume(
        &self,
        source: &VolumeId,
        target: &VolumeId,
        mode: CloneMode,
    ) -> Result<VolumeInfo, StorageError> {
        let root = self.checked(source)?;
        self.pool.check_id(target)?;
        if source.content() != Content::Images || target.content() != Content::Images {
            return Err(StorageError::InvalidRequest(
                "only disk images can be cloned".into(),
            ));
        }
        self.image_info(&root, source).await?;
        let src_format = self.image_format(source)?;
        let target_format = self.image_format(target)?;
        let src_path = self.image_path(&root, source)?;
        let path = self.require_absent(&root, target)?;
        let qemu = self.qemu;
        match mode {
            CloneMode::Linked => {
                if target_format != VolumeFormat::Qcow2 {
                    return Err(StorageError::Unsupported {
                        operation: "linked clone",
                        reason: format!(
                            "a linked clone on dir storage is a qcow2 overlay; name the target \
                             .qcow2 instead of {target}"
                        ),
                    });
                }
                let rel = backing_rel(source, target.vmid());
                self.write_new(&path, target, |tmp| async move {
                    Ok(qemu.create_overlay(&tmp, &rel, src_format).await?)
                })
                .await?;
            }
            CloneMode::Full => {
                let m = qemu.measure(&src_path, src_format.as_str()).await?;
                self.pool.check_space(&root, m.required)?;
                self.write_new(&path, target, |tmp| async move {
                    Ok(qemu
                        .convert(&src_path, src_format.as_str(), &tmp, target_format)
                        .await?)
                })
                .await?;
            }
        }
        self.image_info(&root, target).await
    }

    async fn import_volume(
        &self,
        source: &Path,
        target: &VolumeId,
    ) -> Result<VolumeInfo, StorageError> {
        let root = self.checked(target)?;
        if target.content() != Content::Images {
            return self.pool.import_file(&root, source, target).await;
        }
        let target_format = self.image_format(target)?;
        let meta = std::fs::metadata(source).map_err(io("stat", source))?;
        if !meta.is_file() {
            return Err(StorageError::InvalidRequest(format!(
                "import source {} is not a regular file",
                source.display()
            )));
        }
        // Probing is acceptable for an operator-supplied host file; a source with a
        // backing file is refused because converting it would pull that other file (any
        // host path the image names) into the storage.
        let info = self.qemu.info(source, None).await?;
        if info.backing_filename.is_some() {
            return Err(DirError::ForeignBacking(source.to_owned()).into());
        }
        let src_format = info.format;
        let m = self.qemu.measure(source, &src_format).await?;
        self.pool.check_space(&root, m.required)?;
        let path = self.require_absent(&root, target)?;
        let qemu = self.qemu;
        let source = source.to_owned();
        self.write_new(&path, target, |tmp| async move {
            Ok(qemu
                .convert(&source, &src_format, &tmp, target_format)
                .await?)
        })
        .await?;
        self.image_info(&root, target).await
    }

    async fn export_volume(
        &self,
        id: &VolumeId,
        dest: &Path,
        format: Option<VolumeFormat>,
    ) -> Result<(), StorageError> {
        let root = self.checked(id)?;
        if id.content() != Content::Images {
            return self.pool.export_file(&root, id, dest).await;
        }
        self.image_info(&root, id).await?;
        let src_format = self.image_format(id)?;
        let format = format.unwrap_or(src_format);
        if std::fs::symlink_metadata(dest).is_ok() {
            return Err(StorageError::InvalidRequest(format!(
                "export target {} already exists",
                dest.display()
            )));
        }
        let src = self.image_path(&root, id)?;
        let tmp = fsutil::temp_sibling(dest, &self.cfg.node);
        if let Err(e) = self
            .qemu
            .convert(&src, src_format.as_str(), &tmp, format)
            .await
        {
            fsutil::remove_any(&tmp);
            return Err(e.into());
        }
        fsutil::publish(&tmp, dest)?;
        Ok(())
    }
}
