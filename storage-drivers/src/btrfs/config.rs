//! Configuration of a `btrfs` storage (Proxmox's `btrfs:` section, the part we honour).

use std::path::PathBuf;

use serde::Deserialize;

use super::error::BtrfsError;
use crate::files::validate_node_name;
use crate::volume_id::{Content, VolumeId};

#[derive(Debug, Clone, Deserialize)]
pub struct BtrfsConfig {
    /// Storage id (`local-btrfs`).
    pub storage: String,
    /// A directory on a mounted btrfs filesystem.
    pub path: PathBuf,
    /// This node's name; it marks this node's temporaries.
    pub node: String,
    /// Content types held.
    #[serde(default = "all_content")]
    pub content: Vec<Content>,
    /// When false, refuse a volume whose virtual size exceeds the free space.
    #[serde(default)]
    pub overcommit: bool,
    /// Bound on metadata commands (btrfs subvolume …, qemu-img create/resize).
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

impl BtrfsConfig {
    pub fn new(storage: &str, path: impl Into<PathBuf>, node: &str) -> Self {
        Self {
            storage: storage.to_owned(),
            path: path.into(),
            node: node.to_owned(),
            content: all_content(),
            overcommit: false,
            meta_timeout_s: default_meta_timeout_s(),
            copy_timeout_s: default_copy_timeout_s(),
        }
    }

    pub fn validate(&self) -> Result<(), BtrfsError> {
        if VolumeId::disk(&self.storage, 100, 0, None).is_err() {
            return Err(BtrfsError::InvalidConfig(format!(
                "storage id {:?} is invalid",
                self.storage
            )));
        }
        if !validate_node_name(&self.node) {
            return Err(BtrfsError::InvalidConfig(format!(
                "node name {:?} is invalid: use letters, digits and `-`",
                self.node
            )));
        }
        if self.path.to_str().is_none() || !self.path.is_absolute() {
            return Err(BtrfsError::InvalidConfig(format!(
                "path {} must be absolute and valid UTF-8",
                self.path.display()
            )));
        }
        if self.content.is_empty() {
            return Err(BtrfsError::InvalidConfig(
                "content must not be empty".into(),
            ));
        }
        if self.meta_timeout_s == 0 || self.copy_timeout_s == 0 {
            return Err(BtrfsError::InvalidConfig(
                "timeouts must be positive".into(),
            ));
        }
        Ok(())
    }
}
