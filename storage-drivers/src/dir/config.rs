//! Configuration of a `dir` storage (the subset of Proxmox's `dir:` section in
//! storage.cfg that this driver honours).

use std::path::PathBuf;

use serde::Deserialize;

use super::error::DirError;
use crate::files::validate_node_name;
use crate::volume_id::{Content, VolumeFormat, VolumeId};

#[derive(Debug, Clone, Deserialize)]
pub struct DirConfig {
    /// Storage id (`local`).
    pub storage: String,
    /// Root directory (`/var/lib/vz`).
    pub path: PathBuf,
    /// This node's name; it marks this node's temporaries on a shared directory.
    pub node: String,
    /// The directory is the same on every node (an NFS or cluster filesystem mount).
    #[serde(default)]
    pub shared: bool,
    /// Refuse to activate unless `path` is a mount point, so a missing network mount
    /// does not silently fill the node's root filesystem (Proxmox `is_mountpoint`).
    #[serde(default)]
    pub is_mountpoint: bool,
    /// Content types held.
    #[serde(default = "all_content")]
    pub content: Vec<Content>,
    /// When false, refuse a volume whose virtual size exceeds the free space, even though
    /// images are sparse (Proxmox allows it; a full pool pauses every guest on it).
    #[serde(default)]
    pub overcommit: bool,
    /// Bound on metadata commands (create, info, resize, snapshot).
    #[serde(default = "default_meta_timeout_s")]
    pub meta_timeout_s: u64,
    /// Bound on data copies (full clone, import, export).
    #[serde(default = "default_copy_timeout_s")]
    pub copy_timeout_s: u64,
}

fn all_content() -> Vec<Content> {
    Content::ALL.to_vec()
}
fn default_meta_timeout_s() -> u64 {
    120
}
fn default_copy_timeout_s() -> u64 {
    6 * 3600
}

/// Formats this driver writes.
pub const FORMATS: [VolumeFormat; 2] = [VolumeFormat::Raw, VolumeFormat::Qcow2];

impl DirConfig {
    /// A local, non-shared directory holding every content type.
    pub fn new(storage: &str, path: impl Into<PathBuf>, node: &str) -> Self {
        Self {
            storage: storage.to_owned(),
            path: path.into(),
            node: node.to_owned(),
            shared: false,
            is_mountpoint: false,
            content: all_content(),
            overcommit: false,
            meta_timeout_s: default_meta_timeout_s(),
            copy_timeout_s: default_copy_timeout_s(),
        }
    }

    pub fn validate(&self) -> Result<(), DirError> {
        // Reuse the volume-id rules for the storage id.
        if VolumeId::disk(&self.storage, 100, 0, None).is_err() {
            return Err(DirError::InvalidConfig(format!(
                "storage id {:?} is invalid",
                self.storage
            )));
        }
        if !validate_node_name(&self.node) {
            return Err(DirError::InvalidConfig(format!(
                "node name {:?} is invalid: use letters, digits and `-`",
                self.node
            )));
        }
        if self.path.to_str().is_none() || !self.path.is_absolute() {
            return Err(DirError::InvalidConfig(format!(
                "path {} must be absolute and valid UTF-8",
                self.path.display()
            )));
        }
        if self.content.is_empty() {
            return Err(DirError::InvalidConfig("content must not be empty".into()));
        }
        if self.meta_timeout_s == 0 || self.copy_timeout_s == 0 {
            return Err(DirError::InvalidConfig("timeouts must be positive".into()));
        }
        Ok(())
    }
}
