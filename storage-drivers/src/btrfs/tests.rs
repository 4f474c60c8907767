//! btrfs-specific behaviour (the shared contract is in tests/contract.rs).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::*;
use crate::loopfs::{LoopBtrfs, LoopFsError};

const MIB: u64 = 1024 * 1024;

fn loopfs() -> Option<LoopBtrfs> {
    match LoopBtrfs::new(512 * MIB) {
        Ok(fs) => Some(fs),
        Err(LoopFsError::Unavailable(reason)) => {
            println!("skipped: {reason}");
            None
        }
        Err(e) => panic!("loop btrfs: {e}"),
    }
}

async fn pool(root: &Path) -> BtrfsDriver {
    let d = BtrfsDriver::new(BtrfsConfig::new("local-btrfs", root, "n1")).expect("config");
    d.create_pool().await.expect("create");
    d.mount_pool().await.expect("mount");
    d
}

fn disk(vmid: u32, n: u32) -> VolumeId {
    VolumeId::disk("local-btrfs", vmid, n, None).expect("id")
}

fn is_readonly(path: &Path) -> bool {
    let out = std::process::Command::new("btrfs")
        .args(["property", "get", "-ts"])
        .arg(path)
        .arg("ro")
        .output()
        .expect("btrfs");
    String::from_utf8_lossy(&out.stdout).contains("ro=true")
}

#[tokio::test]
async fn refuses_a_root_that_is_not_btrfs() {
    let tmp = tempfile::tempdir_in("/var/tmp").expect("tmp");
    let d = BtrfsDriver::new(BtrfsConfig::new("b", tmp.path(), "n1")).expect("config");
    d.create_pool().await.expect("create");
    match d.mount_pool().await {
        Err(StorageError::Btrfs(BtrfsError::NotBtrfs(_))) => {}
        // /var/tmp itself on btrfs: nothing to assert.
        Ok(_) => println!("skipped: /var/tmp is on btrfs"),
        Err(e) => panic!("unexpected: {e}"),
    }
}

#[tokio::test]
async fn layout_is_a_subvolume_per_disk_with_readonly_snapshots() {
    let Some(fs) = loopfs() else { return };
    let root = fs.path().join("pve");
    let d = pool(&root).await;
    let id = disk(100, 0);
    d.create_volume(&id, 16 * MIB).await.expect("create");
    let sub = root.join("images/100/vm-100-disk-0");
    assert_eq!(
        std::fs::metadata(&sub).expect("stat").ino(),
        SUBVOLUME_ROOT_INO
    );
    assert!(sub.join("disk.raw").is_file());
    assert_eq!(
        d.volume_location(&id).await.expect("loc"),
        VolumeLocation::File(sub.join("disk.raw"))
    );
    let s = SnapshotName::new("before").expect("name");
    d.create_snapshot(&id, &s).await.expect("snap");
    let snap = root.join("images/100/vm-100-disk-0@before");
    assert_eq!(
        std::fs::metadata(&snap).expect("stat").ino(),
        SUBVOLUME_ROOT_INO
    );
    assert!(is_readonly(&snap), "snapshots are read-only");
    assert!(!is_readonly(&sub));
    // The snapshot has a creation time (statx btime).
    let listed = d.list_snapshots(&id).await.expect("list");
    assert!(listed[0].created_unix_s.is_some());

    let clone = disk(101, 0);
    d.clone_volume(&id, &clone, CloneMode::Linked)
        .await
        .expect("clone");
    let csub = root.join("images/101/vm-101-disk-0");
    assert_eq!(
        std::fs::metadata(&csub).expect("stat").ino(),
        SUBVOLUME_ROOT_INO
    );
    assert!(!is_readonly(&csub), "linked clones are writable");

    // Rollback swaps the subvolume: a new subvolume id under the same name.
    let before = subvol_id(&sub);
    d.rollback_snapshot(&id, &s).await.expect("rollback");
    assert_ne!(subvol_id(&sub), before);
    assert!(snap.exists(), "the snapshot is kept");
    assert!(
        fsutil::find_temporaries(&root.join("images/100"), "n1")
            .expect("scan")
            .is_empty()
    );
}

fn subvol_id(path: &Path) -> String {
    let out = std::process::Command::new("btrfs")
        .args(["subvolume", "show"])
        .arg(path)
        .output()
        .expect("btrfs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.trim_start().starts_with("Subvolume ID:"))
        .unwrap_or_default()
        .to_owned()
}

/// A linked clone shares its extents: `btrfs filesystem du` shows no exclusive data.
#[tokio::test]
async fn linked_clone_shares_extents() {
    let Some(fs) = loopfs() else { return };
    let root = fs.path().join("pve");
    let d = pool(&root).await;
    let id = disk(100, 0);
    d.create_volume(&id, 64 * MIB).await.expect("create");
    let disk_path = root.join("images/100/vm-100-disk-0/disk.raw");
    let st = std::process::Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 7 0 32M"])
        .arg(&disk_path)
        .status()
        .expect("qemu-io");
    assert!(st.success());
    std::process::Command::new("sync").status().expect("sync");
    d.clone_volume(&id, &disk(101, 0), CloneMode::Linked)
        .await
        .expect("clone");
    let out = std::process::Command::new("btrfs")
        .args(["filesystem", "du", "-s", "--raw"])
        .arg(root.join("images/101/vm-101-disk-0"))
        .output()
        .expect("btrfs du");
    let text = String::from_utf8_lossy(&out.stdout);
    // Columns: Total Exclusive Set-shared Filename.
    let row: Vec<&str> = text
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row.get(1), Some(&"0"), "no exclusive data: {text}");
    assert_eq!(row.first(), Some(&"33554432"), "{text}");
}

#[tokio::test]
async fn pool_status_comes_from_btrfs_usage() {
    let Some(fs) = loopfs() else { return };
    let d = pool(&fs.path().join("pve")).await;
    let st = d.pool_status().await.expect("status");
    assert_eq!(st.total_bytes, 512 * MIB);
    assert!(
        st.available_bytes > 256 * MIB && st.available_bytes < 512 * MIB,
        "{st:?}"
    );
    let err = d
        .next_disk_id(100, VolumeFormat::Qcow2)
        .await
        .expect_err("raw only");
    assert!(
        matches!(err, StorageError::FormatNotSupported { .. }),
        "{err}"
    );
}
