//! What the file-based drivers (dir, btrfs) share: the Proxmox directory layout, the
//! active/inactive state of a pool, and the plain-file content types (iso, backup,
//! snippets), which are ordinary files in both.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::driver::VolumeInfo;
use crate::error::StorageError;
use crate::fsutil::{self, FsError, io};
use crate::volume_id::{Content, VolumeId};

/// Directory of each content type under the root, as Proxmox lays out a `dir` storage.
pub fn content_dir(content: Content) -> &'static str {
    match content {
        Content::Images => "images",
        Content::Iso => "template/iso",
        Content::Backup => "dump",
        Content::Snippets => "snippets",
    }
}

/// Node names end up in temporary file names: keep them to one plain component.
pub fn validate_node_name(node: &str) -> bool {
    !node.is_empty()
        && node.len() <= 63
        && node.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A pool rooted at a directory.
#[derive(Debug)]
pub struct PoolRoot {
    pub storage: String,
    pub configured_path: PathBuf,
    pub node: String,
    pub content: Vec<Content>,
    /// The canonical root while the pool is mounted.
    active: Mutex<Option<PathBuf>>,
}

impl PoolRoot {
    pub fn new(storage: &str, path: &Path, node: &str, content: &[Content]) -> Self {
        Self {
            storage: storage.to_owned(),
            configured_path: path.to_owned(),
            node: node.to_owned(),
            content: content.to_vec(),
            active: Mutex::new(None),
        }
    }

    /// The canonical root, or `PoolNotActive`.
    pub fn root(&self) -> Result<PathBuf, StorageError> {
        let guard = self
            .active
            .lock()
            .map_err(|_| StorageError::PoolNotActive(self.storage.clone()))?;
        guard
            .clone()
            .ok_or_else(|| StorageError::PoolNotActive(self.storage.clone()))
    }

    pub fn set_active(&self, root: Option<PathBuf>) {
        if let Ok(mut guard) = self.active.lock() {
            *guard = root;
        }
    }

    /// Create the root and the content directories.
    pub fn create_layout(&self) -> Result<(), StorageError> {
        let root = &self.configured_path;
        std::fs::create_dir_all(root).map_err(io("mkdir", root))?;
        let root = std::fs::canonicalize(root).map_err(io("canonicalize", root))?;
        for c in &self.content {
            let rel = Path::new(content_dir(*c));
            let dir = fsutil::resolve_beneath(&root, rel)?;
            std::fs::create_dir_all(&dir).map_err(io("mkdir", &dir))?;
        }
        Ok(())
    }

    /// Canonicalise the configured root and check it is a directory.
    pub fn canonical_root(&self) -> Result<PathBuf, StorageError> {
        let p = &self.configured_path;
        let root = std::fs::canonicalize(p).map_err(io("canonicalize", p))?;
        let meta = std::fs::metadata(&root).map_err(io("stat", &root))?;
        if !meta.is_dir() {
            return Err(StorageError::InvalidRequest(format!(
                "storage path {} is not a directory",
                root.display()
            )));
        }
        fsutil::path_utf8(&root)?;
        Ok(root)
    }

    /// Check that `id` is for this storage and an allowed content type.
    pub fn check_id(&self, id: &VolumeId) -> Result<(), StorageError> {
        if id.storage() != self.storage {
            return Err(StorageError::WrongStorage(id.clone(), self.storage.clone()));
        }
        if !self.content.contains(&id.content()) {
            return Err(StorageError::ContentNotAllowed {
                storage: self.storage.clone(),
                content: id.content(),
            });
        }
        Ok(())
    }

    /// This node's temporaries in `dirs` (leftovers of interrupted operations).
    pub fn find_temporaries(&self, dirs: &[PathBuf]) -> Result<Vec<PathBuf>, StorageError> {
        let mut out = Vec::new();
        for dir in dirs {
            out.extend(fsutil::find_temporaries(dir, &self.node)?);
        }
        Ok(out)
    }

    /// Content directories plus every `images/VMID` directory (where temporaries live).
    pub fn temp_dirs(&self, root: &Path) -> Result<Vec<PathBuf>, StorageError> {
        let mut dirs: Vec<PathBuf> = self
            .content
            .iter()
            .map(|c| root.join(content_dir(*c)))
            .collect();
        if self.content.contains(&Content::Images) {
            dirs.extend(self.vmid_dirs(root)?.into_iter().map(|(_, p)| p));
        }
        Ok(dirs)
    }

    /// `(vmid, images/VMID)` for every numeric directory under images/.
    pub fn vmid_dirs(&self, root: &Path) -> Result<Vec<(u32, PathBuf)>, StorageError> {
        let images = root.join(content_dir(Content::Images));
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&images) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io("read_dir", &images)(e).into()),
        };
        for entry in entries {
            let entry = entry.map_err(io("read_dir", &images))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('0') || !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Ok(vmid) = name.parse::<u32>()
                && entry.file_type().is_ok_and(|t| t.is_dir())
            {
                out.push((vmid, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Entry names in `images/VMID` (empty when the directory does not exist).
    pub fn names_in_vmid_dir(&self, root: &Path, vmid: u32) -> Result<Vec<String>, StorageError> {
        let dir = fsutil::resolve_beneath(root, &Path::new("images").join(vmid.to_string()))?;
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io("read_dir", &dir)(e).into()),
        };
        for entry in entries {
            let entry = entry.map_err(io("read_dir", &dir))?;
            if let Some(n) = entry.file_name().to_str()
                && !n.starts_with('.')
            {
                out.push(n.to_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    // --- plain-file content (iso, backup, snippets) ---

    pub fn file_path(&self, root: &Path, id: &VolumeId) -> Result<PathBuf, StorageError> {
        let rel = Path::new(content_dir(id.content())).join(id.name());
        Ok(fsutil::resolve_beneath(root, &rel)?)
    }

    pub fn file_info(&self, root: &Path, id: &VolumeId) -> Result<VolumeInfo, StorageError> {
        let path = self.file_path(root, id)?;
        let meta = match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Err(StorageError::VolumeNotFound(id.clone())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::VolumeNotFound(id.clone()));
            }
            Err(e) => return Err(io("stat", &path)(e).into()),
        };
        Ok(VolumeInfo {
            id: id.clone(),
            format: None,
            size_bytes: meta.len(),
            used_bytes: fsutil::allocated_bytes(&meta),
            parent: None,
        })
    }

    pub fn list_files(
        &self,
        root: &Path,
        content: Content,
    ) -> Result<Vec<VolumeInfo>, StorageError> {
        let dir = fsutil::resolve_beneath(root, Path::new(content_dir(content)))?;
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io("read_dir", &dir)(e).into()),
        };
        for entry in entries {
            let entry = entry.map_err(io("read_dir", &dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            // Files whose names we would refuse (temporaries, junk) are not volumes.
            let Ok(id) = VolumeId::file(&self.storage, content, &name) else {
                continue;
            };
            match self.file_info(root, &id) {
                Ok(info) => out.push(info),
                Err(StorageError::VolumeNotFound(_))
                | Err(StorageError::Fs(FsError::Escape { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    pub async fn import_file(
        &self,
        root: &Path,
        source: &Path,
        id: &VolumeId,
    ) -> Result<VolumeInfo, StorageError> {
        let meta = std::fs::metadata(source).map_err(io("stat", source))?;
        if !meta.is_file() {
            return Err(StorageError::InvalidRequest(format!(
                "import source {} is not a regular file",
                source.display()
            )));
        }
        let path = self.file_path(root, id)?;
        if std::fs::symlink_metadata(&path).is_ok() {
            return Err(StorageError::VolumeExists(id.clone()));
        }
        self.check_space(root, meta.len())?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("mkdir", dir))?;
        }
        fsutil::copy_publish(source, &path, &self.node)
            .await
            .map_err(|e| map_exists(e, id))?;
        self.file_info(root, id)
    }

    pub async fn export_file(
        &self,
        root: &Path,
        id: &VolumeId,
        dest: &Path,
    ) -> Result<(), StorageError> {
        let path = self.file_path(root, id)?;
        self.file_info(root, id)?;
        if std::fs::symlink_metadata(dest).is_ok() {
            return Err(StorageError::InvalidRequest(format!(
                "export target {} already exists",
                dest.display()
            )));
        }
        fsutil::copy_publish(&path, dest, &self.node).await?;
        Ok(())
    }

    pub fn delete_file(&self, root: &Path, id: &VolumeId) -> Result<(), StorageError> {
        let path = self.file_path(root, id)?;
        self.file_info(root, id)?;
        std::fs::remove_file(&path).map_err(io("unlink", &path))?;
        Ok(())
    }

    /// Refuse an allocation of `needed_bytes` that the filesystem cannot hold.
    pub fn check_space(&self, root: &Path, needed_bytes: u64) -> Result<(), StorageError> {
        let st = fsutil::statvfs(root)?;
        if needed_bytes > st.available_bytes {
            return Err(StorageError::InsufficientSpace {
                storage: self.storage.clone(),
                needed_bytes,
                available_bytes: st.available_bytes,
            });
        }
        Ok(())
    }
}

/// A publish that lost the race to another writer of the same name.
pub fn map_exists(e: FsError, id: &VolumeId) -> StorageError {
    match e {
        FsError::Exists(_) => StorageError::VolumeExists(id.clone()),
        other => other.into(),
    }
}
