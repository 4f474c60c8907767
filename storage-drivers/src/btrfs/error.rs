//! Failures specific to the `btrfs` driver.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BtrfsError {
    #[error("btrfs storage configuration is invalid: {0}")]
    InvalidConfig(String),
    #[error("{0} is not on a btrfs filesystem")]
    NotBtrfs(PathBuf),
    #[error("{0} exists but is not a btrfs subvolume holding disk.raw")]
    NotAVolume(PathBuf),
    #[error("import source {0} has a backing file; flatten it first")]
    SourceHasBacking(PathBuf),
}
