//! Failures specific to the `dir` driver.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("dir storage configuration is invalid: {0}")]
    InvalidConfig(String),
    #[error("{0} is not a mount point but the storage requires one (is_mountpoint)")]
    NotMounted(PathBuf),
    #[error("image {path} has format {found} but its name says {expected}")]
    FormatMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("image {0} has a backing file outside this storage")]
    ForeignBacking(PathBuf),
}
