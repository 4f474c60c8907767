//! Shared helpers of the integration tests: real pools in temporary directories or on a
//! loop-mounted btrfs, and qemu-io to write and verify guest data.

#![allow(dead_code)] // each test binary uses a different subset

use std::any::Any;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use gpve_storage_drivers::btrfs::{BtrfsConfig, BtrfsDriver};
use gpve_storage_drivers::dir::{DirConfig, DirDriver};
use gpve_storage_drivers::loopfs::{LoopBtrfs, LoopFsError};
use gpve_storage_drivers::{StorageDriver, VolumeFormat, VolumeId};

pub const MIB: u64 = 1024 * 1024;
pub const NODE: &str = "node1";
pub const STORAGE: &str = "teststore";

/// A mounted pool and what keeps its backing alive.
pub struct Pool {
    pub driver: Arc<dyn StorageDriver>,
    /// The image format the contract exercises on this pool.
    pub format: VolumeFormat,
    pub root: PathBuf,
    _keep: Box<dyn Any>,
}

impl Pool {
    /// Image id `vm-VMID-disk-N` in this pool's id form and format.
    pub fn disk(&self, vmid: u32, n: u32) -> VolumeId {
        let fmt = self
            .driver
            .capabilities()
            .vmid_dir_ids
            .then_some(self.format);
        VolumeId::disk(STORAGE, vmid, n, fmt).expect("valid disk id")
    }

    /// Like `disk` but in a given format (dir only; btrfs ignores it).
    pub fn disk_as(&self, vmid: u32, n: u32, format: VolumeFormat) -> VolumeId {
        let fmt = self.driver.capabilities().vmid_dir_ids.then_some(format);
        VolumeId::disk(STORAGE, vmid, n, fmt).expect("valid disk id")
    }

    pub async fn path_of(&self, id: &VolumeId) -> PathBuf {
        self.driver
            .volume_location(id)
            .await
            .expect("location")
            .host_path()
            .expect("file volume")
            .to_owned()
    }

    pub fn format_of(&self, id: &VolumeId) -> VolumeFormat {
        id.format_from_name().unwrap_or(VolumeFormat::Raw)
    }

    pub async fn write(&self, id: &VolumeId, pattern: u8, offset: u64, len: u64) {
        let path = self.path_of(id).await;
        qemu_io_write(&path, self.format_of(id), pattern, offset, len);
    }

    pub async fn holds(&self, id: &VolumeId, pattern: u8, offset: u64, len: u64) -> bool {
        let path = self.path_of(id).await;
        qemu_io_holds(&path, self.format_of(id), pattern, offset, len)
    }
}

pub fn qemu_io_write(path: &Path, format: VolumeFormat, pattern: u8, offset: u64, len: u64) {
    let out = Command::new("qemu-io")
        .args(["-f", format.as_str(), "-c"])
        .arg(format!("write -P {pattern} {offset} {len}"))
        .arg(path)
        .output()
        .expect("qemu-io runs (package qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-io write failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn qemu_io_holds(
    path: &Path,
    format: VolumeFormat,
    pattern: u8,
    offset: u64,
    len: u64,
) -> bool {
    let out = Command::new("qemu-io")
        .args(["-r", "-U", "-f", format.as_str(), "-c"])
        .arg(format!("read -P {pattern} {offset} {len}"))
        .arg(path)
        .output()
        .expect("qemu-io runs (package qemu-utils)");
    out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("failed")
}

pub async fn dir_pool(format: VolumeFormat) -> Pool {
    let tmp = tempfile::Builder::new()
        .prefix("gpve-dir-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    let root = tmp.path().join("store");
    let driver = DirDriver::new(DirConfig::new(STORAGE, &root, NODE)).expect("config");
    driver.create_pool().await.expect("create pool");
    driver.mount_pool().await.expect("mount pool");
    Pool {
        driver: Arc::new(driver),
        format,
        root: std::fs::canonicalize(&root).expect("root"),
        _keep: Box::new(tmp),
    }
}

/// A btrfs pool on a fresh loop-mounted filesystem, or None (after printing why) when
/// this machine cannot make one.
pub async fn btrfs_pool(size_bytes: u64) -> Option<Pool> {
    let fs = match LoopBtrfs::new(size_bytes) {
        Ok(fs) => fs,
        Err(LoopFsError::Unavailable(reason)) => {
            println!("skipped: {reason}");
            return None;
        }
        Err(e) => panic!("loop btrfs: {e}"),
    };
    let root = fs.path().join("store");
    let driver = BtrfsDriver::new(BtrfsConfig::new(STORAGE, &root, NODE)).expect("config");
    driver.create_pool().await.expect("create pool");
    driver.mount_pool().await.expect("mount pool");
    Some(Pool {
        driver: Arc::new(driver),
        format: VolumeFormat::Raw,
        root: std::fs::canonicalize(&root).expect("root"),
        _keep: Box::new(fs),
    })
}

/// Every entry under `dir`, recursively (for "nothing left behind" checks).
pub fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

pub fn temporaries(dir: &Path) -> Vec<PathBuf> {
    tree(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".gpve-tmp."))
        })
        .collect()
}
