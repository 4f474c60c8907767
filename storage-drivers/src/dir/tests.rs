//! dir-specific behaviour (the shared contract is in tests/contract.rs).

use std::path::Path;

use super::*;

const MIB: u64 = 1024 * 1024;

async fn pool(dir: &Path) -> DirDriver {
    let d = DirDriver::new(DirConfig::new("local", dir.join("vz"), "n1")).expect("config");
    d.create_pool().await.expect("create");
    d.mount_pool().await.expect("mount");
    d
}

fn qcow2(vmid: u32, n: u32) -> VolumeId {
    VolumeId::disk("local", vmid, n, Some(VolumeFormat::Qcow2)).expect("id")
}

#[test]
fn config_is_validated() {
    let ok = DirConfig::new("local", "/var/lib/vz", "pve1");
    assert!(ok.validate().is_ok());
    for (storage, path, node) in [
        ("1bad", "/var/lib/vz", "pve1"),
        ("local", "relative/path", "pve1"),
        ("local", "/var/lib/vz", "pve1.example.com"),
        ("local", "/var/lib/vz", ""),
    ] {
        let cfg = DirConfig::new(storage, path, node);
        assert!(DirDriver::new(cfg).is_err(), "{storage} {path} {node}");
    }
    let cfg: DirConfig = serde_json::from_str(
        r#"{"storage":"nfs1","path":"/mnt/pve/nfs1","node":"pve1","shared":true}"#,
    )
    .expect("deserialize");
    let d = DirDriver::new(cfg).expect("valid");
    let caps = d.capabilities();
    assert!(caps.shared && caps.live_migratable && caps.linked_clones);
    assert_eq!(caps.snapshot_formats, vec![VolumeFormat::Qcow2]);
}

#[tokio::test]
async fn is_mountpoint_refuses_a_plain_directory() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut cfg = DirConfig::new("local", tmp.path().join("vz"), "n1");
    cfg.is_mountpoint = true;
    let d = DirDriver::new(cfg).expect("config");
    d.create_pool().await.expect("create");
    let err = d.mount_pool().await.expect_err("not a mount point");
    assert!(
        matches!(err, StorageError::Dir(DirError::NotMounted(_))),
        "{err}"
    );
    assert!(matches!(
        d.pool_status().await,
        Err(StorageError::PoolNotActive(_))
    ));
}

/// The overlay names its base relatively, so a shared directory mounted at another path
/// (another node) still resolves the chain.
#[tokio::test]
async fn linked_clone_backing_is_relative_and_survives_a_move() {
    let tmp = tempfile::tempdir_in("/var/tmp").expect("tmp");
    let d = pool(tmp.path()).await;
    let base = qcow2(100, 0);
    d.create_volume(&base, 8 * MIB).await.expect("create");
    let clone = qcow2(101, 0);
    let info = d
        .clone_volume(&base, &clone, CloneMode::Linked)
        .await
        .expect("clone");
    assert_eq!(info.parent, Some(base.clone()));
    let clone_path = tmp.path().join("vz/images/101/vm-101-disk-0.qcow2");
    assert_eq!(
        qcow2_backing_name(&clone_path).expect("header").as_deref(),
        Some("../100/vm-100-disk-0.qcow2")
    );
    // Same VMID: a sibling name.
    let sib = qcow2(100, 1);
    d.clone_volume(&base, &sib, CloneMode::Linked)
        .await
        .expect("clone");
    let sib_path = tmp.path().join("vz/images/100/vm-100-disk-1.qcow2");
    assert_eq!(
        qcow2_backing_name(&sib_path).expect("header").as_deref(),
        Some("vm-100-disk-0.qcow2")
    );

    std::fs::rename(tmp.path().join("vz"), tmp.path().join("moved")).expect("move");
    let d2 =
        DirDriver::new(DirConfig::new("local", tmp.path().join("moved"), "n2")).expect("config");
    d2.mount_pool().await.expect("mount");
    let info = d2.volume_info(&clone).await.expect("info after move");
    assert_eq!(info.parent, Some(base));
}

#[tokio::test]
async fn base_of_linked_clone_cannot_be_rolled_back() {
    let tmp = tempfile::tempdir_in("/var/tmp").expect("tmp");
    let d = pool(tmp.path()).await;
    let base = qcow2(100, 0);
    d.create_volume(&base, 8 * MIB).await.expect("create");
    let s = SnapshotName::new("s").expect("name");
    d.create_snapshot(&base, &s).await.expect("snap");
    d.clone_volume(&base, &qcow2(101, 0), CloneMode::Linked)
        .await
        .expect("clone");
    let err = d.rollback_snapshot(&base, &s).await.expect_err("in use");
    assert!(matches!(err, StorageError::VolumeInUse { .. }), "{err}");
}

#[tokio::test]
async fn file_named_qcow2_that_is_not_qcow2_is_an_error_not_a_probe() {
    let tmp = tempfile::tempdir_in("/var/tmp").expect("tmp");
    let d = pool(tmp.path()).await;
    let dir = tmp.path().join("vz/images/100");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("vm-100-disk-0.qcow2"), vec![0u8; 4096]).expect("write");
    let err = d.volume_info(&qcow2(100, 0)).await.expect_err("not qcow2");
    assert!(matches!(err, StorageError::Command(_)), "{err}");
    // Listing skips it rather than failing the whole list.
    assert!(
        d.list_volumes(Content::Images, None)
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn qcow2_snapshots_record_their_time() {
    let tmp = tempfile::tempdir_in("/var/tmp").expect("tmp");
    let d = pool(tmp.path()).await;
    let id = qcow2(100, 0);
    d.create_volume(&id, 8 * MIB).await.expect("create");
    d.create_snapshot(&id, &SnapshotName::new("a").expect("name"))
        .await
        .expect("snap");
    let snaps = d.list_snapshots(&id).await.expect("list");
    assert_eq!(snaps.len(), 1);
    assert!(snaps[0].created_unix_s.is_some_and(|t| t > 1_600_000_000));
}
