//! The error every [`crate::StorageDriver`] method returns. Generic conditions (not found,
//! no space, unsupported, bad id) are variants here so the API maps them to HTTP status in
//! one place; driver-specific failures are wrapped from each driver's own error enum.

use std::path::PathBuf;

use crate::btrfs::BtrfsError;
use crate::command::CommandError;
use crate::dir::DirError;
use crate::fsutil::FsError;
use crate::volume_id::{Content, VolumeFormat, VolumeId, VolumeIdError};

/// Coarse class of a [`StorageError`], for mapping to HTTP status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request is malformed or not allowed (HTTP 400).
    BadRequest,
    /// The volume or snapshot does not exist (HTTP 404).
    NotFound,
    /// The target exists or the state forbids it (HTTP 409).
    Conflict,
    /// The storage is out of space (HTTP 507).
    InsufficientStorage,
    /// The backend cannot do this (HTTP 501).
    Unsupported,
    /// The backend failed (HTTP 500).
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("the volume id is invalid")]
    InvalidVolumeId(#[from] VolumeIdError),
    #[error("volume {0} does not belong to storage {1}")]
    WrongStorage(VolumeId, String),
    #[error("storage {storage} does not hold {content} content")]
    ContentNotAllowed { storage: String, content: Content },
    #[error("storage {storage} cannot hold {format} images")]
    FormatNotSupported {
        storage: String,
        format: VolumeFormat,
    },
    #[error("volume {0} does not exist")]
    VolumeNotFound(VolumeId),
    #[error("volume {0} already exists")]
    VolumeExists(VolumeId),
    #[error("volume {volume} is in use by {user}")]
    VolumeInUse { volume: VolumeId, user: String },
    #[error("snapshot {snapshot} of volume {volume} does not exist")]
    SnapshotNotFound { volume: VolumeId, snapshot: String },
    #[error("snapshot {snapshot} of volume {volume} already exists")]
    SnapshotExists { volume: VolumeId, snapshot: String },
    #[error(
        "storage {storage} has {available_bytes} bytes free but the operation needs {needed_bytes}"
    )]
    InsufficientSpace {
        storage: String,
        needed_bytes: u64,
        available_bytes: u64,
    },
    #[error("{operation} is not supported here: {reason}")]
    Unsupported {
        operation: &'static str,
        reason: String,
    },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("storage {0} is not active: mount the pool first")]
    PoolNotActive(String),
    #[error("path {0} resolves outside the storage root")]
    PathEscape(PathBuf),
    #[error("filesystem operation failed")]
    Fs(#[from] FsError),
    #[error("an external command failed")]
    Command(#[from] CommandError),
    #[error("dir storage failed")]
    Dir(#[from] DirError),
    #[error("btrfs storage failed")]
    Btrfs(#[from] BtrfsError),
}

impl StorageError {
    pub fn class(&self) -> ErrorClass {
        match self {
            StorageError::InvalidVolumeId(_)
            | StorageError::WrongStorage(..)
            | StorageError::ContentNotAllowed { .. }
            | StorageError::FormatNotSupported { .. }
            | StorageError::InvalidRequest(_)
            | StorageError::PathEscape(_) => ErrorClass::BadRequest,
            StorageError::VolumeNotFound(_) | StorageError::SnapshotNotFound { .. } => {
                ErrorClass::NotFound
            }
            StorageError::VolumeExists(_)
            | StorageError::SnapshotExists { .. }
            | StorageError::VolumeInUse { .. }
            | StorageError::PoolNotActive(_) => ErrorClass::Conflict,
            StorageError::InsufficientSpace { .. } => ErrorClass::InsufficientStorage,
            StorageError::Unsupported { .. } => ErrorClass::Unsupported,
            StorageError::Fs(FsError::Escape { .. }) => ErrorClass::BadRequest,
            StorageError::Fs(_)
            | StorageError::Command(_)
            | StorageError::Dir(_)
            | StorageError::Btrfs(_) => ErrorClass::Internal,
        }
    }
}
