//! Volume drivers for gpve behind one trait ([`StorageDriver`]), and Proxmox-style volume
//! identifiers ([`VolumeId`]).
//!
//! Drivers built: [`dir::DirDriver`] (raw/qcow2 files via qemu-img) and
//! [`btrfs::BtrfsDriver`] (a subvolume per disk). Each driver lives in
//! `src/<driver>/{mod,config,error}.rs` plus `tests.rs`.

pub mod btrfs;
pub mod command;
pub mod dir;
pub mod driver;
pub mod error;
mod files;
pub mod fsutil;
pub mod loopfs;
pub mod qemu_img;
pub mod volume_id;

pub use driver::{
    Backing, Capabilities, CloneMode, PoolStatus, ReconcileReport, SnapshotInfo, StorageDriver,
    VolumeInfo, VolumeLocation,
};
pub use error::{ErrorClass, StorageError};
pub use volume_id::{Content, SnapshotName, VolumeFormat, VolumeId, VolumeIdError};
