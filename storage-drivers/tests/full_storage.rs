//! Out-of-space behaviour on real, tiny filesystems: refusals leave nothing behind, and a
//! copy that runs out of space midway removes its temporary.

mod common;

use std::sync::Arc;

use common::*;
use gpve_storage_drivers::btrfs::{BtrfsConfig, BtrfsDriver};
use gpve_storage_drivers::dir::{DirConfig, DirDriver};
use gpve_storage_drivers::loopfs::{LoopBtrfs, LoopFsError, SmallTmpfs};
use gpve_storage_drivers::{StorageDriver, StorageError, VolumeFormat, VolumeId};

fn tiny_tmpfs(size_bytes: u64) -> Option<SmallTmpfs> {
    match SmallTmpfs::new(size_bytes) {
        Ok(fs) => Some(fs),
        Err(LoopFsError::Unavailable(reason)) => {
            println!("skipped: {reason}");
            None
        }
        Err(e) => panic!("tmpfs: {e}"),
    }
}

async fn dir_on(fs: &SmallTmpfs, overcommit: bool) -> Arc<DirDriver> {
    let mut cfg = DirConfig::new(STORAGE, fs.path().join("store"), NODE);
    cfg.overcommit = overcommit;
    let d = DirDriver::new(cfg).expect("config");
    d.create_pool().await.expect("create");
    d.mount_pool().await.expect("mount");
    Arc::new(d)
}

fn data_file(dir: &std::path::Path, name: &str, bytes: u64) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .expect("create")
        .set_len(bytes)
        .expect("len");
    qemu_io_write(&p, VolumeFormat::Raw, 0x42, 0, bytes);
    p
}

#[tokio::test]
async fn dir_refuses_volume_larger_than_free_space() {
    let Some(fs) = tiny_tmpfs(32 * MIB) else {
        return;
    };
    let d = dir_on(&fs, false).await;
    let before = tree(fs.path());
    for fmt in [VolumeFormat::Raw, VolumeFormat::Qcow2] {
        let id = VolumeId::disk(STORAGE, 100, 0, Some(fmt)).expect("id");
        let err = d.create_volume(&id, 64 * MIB).await.expect_err("too big");
        match err {
            StorageError::InsufficientSpace {
                needed_bytes,
                available_bytes,
                ..
            } => {
                assert_eq!(needed_bytes, 64 * MIB);
                assert!(available_bytes <= 32 * MIB);
            }
            other => panic!("expected InsufficientSpace, got {other}"),
        }
        assert_eq!(tree(fs.path()), before, "nothing left behind");
    }
    let st = d.pool_status().await.expect("status");
    assert_eq!(st.total_bytes, 32 * MIB);
}

#[tokio::test]
async fn dir_overcommit_allows_sparse_volumes() {
    let Some(fs) = tiny_tmpfs(32 * MIB) else {
        return;
    };
    let d = dir_on(&fs, true).await;
    let id = VolumeId::disk(STORAGE, 100, 0, Some(VolumeFormat::Raw)).expect("id");
    let info = d
        .create_volume(&id, 64 * MIB)
        .await
        .expect("sparse 64 MiB on 32 MiB");
    assert_eq!(info.size_bytes, 64 * MIB);
}

#[tokio::test]
async fn dir_import_larger_than_free_space_is_refused_first() {
    let Some(fs) = tiny_tmpfs(32 * MIB) else {
        return;
    };
    let d = dir_on(&fs, false).await;
    let scratch = tempfile::tempdir_in("/var/tmp").expect("tmp");
    let src = data_file(scratch.path(), "big.raw", 48 * MIB);
    let before = tree(fs.path());
    let id = VolumeId::disk(STORAGE, 100, 0, Some(VolumeFormat::Qcow2)).expect("id");
    let err = d.import_volume(&src, &id).await.expect_err("too much data");
    assert!(
        matches!(err, StorageError::InsufficientSpace { .. }),
        "{err}"
    );
    assert_eq!(tree(fs.path()), before, "nothing left behind");
}

/// Two imports that each fit but not together: both pass the space check, one runs out
/// of space while copying. The loser must leave no temporary and no volume.
#[tokio::test]
async fn dir_copy_failing_midway_for_space_cleans_up() {
    let Some(fs) = tiny_tmpfs(32 * MIB) else {
        return;
    };
    let d = dir_on(&fs, false).await;
    let scratch = tempfile::tempdir_in("/var/tmp").expect("tmp");
    let src = data_file(scratch.path(), "data.raw", 20 * MIB);
    let a = VolumeId::disk(STORAGE, 100, 0, Some(VolumeFormat::Raw)).expect("id");
    let b = VolumeId::disk(STORAGE, 101, 0, Some(VolumeFormat::Raw)).expect("id");
    let (ra, rb) = tokio::join!(d.import_volume(&src, &a), d.import_volume(&src, &b));
    assert!(
        ra.is_err() || rb.is_err(),
        "40 MiB of data cannot fit in 32 MiB"
    );
    for (r, id) in [(&ra, &a), (&rb, &b)] {
        match r {
            Ok(_) => assert!(d.volume_info(id).await.is_ok()),
            Err(e) => {
                println!("{id}: {e}");
                assert!(matches!(
                    d.volume_info(id).await,
                    Err(StorageError::VolumeNotFound(_))
                ));
            }
        }
    }
    assert!(
        temporaries(fs.path()).is_empty(),
        "{:?}",
        temporaries(fs.path())
    );
}

#[tokio::test]
async fn btrfs_refuses_volume_larger_than_free_space() {
    let fs = match LoopBtrfs::new(256 * MIB) {
        Ok(fs) => fs,
        Err(LoopFsError::Unavailable(reason)) => {
            println!("skipped: {reason}");
            return;
        }
        Err(e) => panic!("loop btrfs: {e}"),
    };
    let d =
        BtrfsDriver::new(BtrfsConfig::new(STORAGE, fs.path().join("store"), NODE)).expect("config");
    d.create_pool().await.expect("create");
    d.mount_pool().await.expect("mount");
    let before = tree(fs.path());
    let id = VolumeId::disk(STORAGE, 100, 0, None).expect("id");
    let err = d.create_volume(&id, 1024 * MIB).await.expect_err("too big");
    assert!(
        matches!(err, StorageError::InsufficientSpace { .. }),
        "{err}"
    );
    assert_eq!(tree(fs.path()), before, "nothing left behind");
    // And the import path: 300 MiB of data into a 256 MiB filesystem.
    let scratch = tempfile::tempdir_in("/var/tmp").expect("tmp");
    let src = data_file(scratch.path(), "big.raw", 300 * MIB);
    let err = d.import_volume(&src, &id).await.expect_err("too much data");
    assert!(
        matches!(err, StorageError::InsufficientSpace { .. }),
        "{err}"
    );
    assert_eq!(tree(fs.path()), before, "nothing left behind");
}
