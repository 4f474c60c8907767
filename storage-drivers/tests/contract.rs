//! One contract suite, run against dir (raw), dir (qcow2) and btrfs on real filesystems.
//! Where a capability is absent the test asserts the clear refusal instead.

mod common;

use std::path::Path;

use common::*;
use gpve_storage_drivers::{
    CloneMode, Content, ErrorClass, SnapshotName, StorageError, VolumeFormat, VolumeId,
};

macro_rules! contract {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test]
            async fn dir_raw() {
                super::$name(dir_pool(VolumeFormat::Raw).await).await
            }
            #[tokio::test]
            async fn dir_qcow2() {
                super::$name(dir_pool(VolumeFormat::Qcow2).await).await
            }
            #[tokio::test]
            async fn btrfs() {
                if let Some(pool) = btrfs_pool(1024 * MIB).await {
                    super::$name(pool).await
                }
            }
        }
    )*};
}

contract!(
    pool_lifecycle,
    volume_crud,
    disk_allocation,
    concurrent_allocation,
    resize,
    snapshots,
    linked_clone,
    full_clone,
    import_export_images,
    import_export_files,
    path_escapes,
    reconcile_removes_leftover_temporaries,
    cancelled_copy_leaves_old_state,
    foreign_ids_refused,
);

fn snap(s: &str) -> SnapshotName {
    SnapshotName::new(s).expect("valid snapshot name")
}

async fn pool_lifecycle(p: Pool) {
    let d = &p.driver;
    d.create_pool().await.expect("create_pool is idempotent");
    let st = d.pool_status().await.expect("status");
    assert!(
        st.total_bytes > 0 && st.used_bytes <= st.total_bytes,
        "{st:?}"
    );
    assert!(st.available_bytes <= st.total_bytes, "{st:?}");
    for c in ["images", "template/iso", "dump", "snippets"] {
        assert!(p.root.join(c).is_dir(), "{c} missing");
    }
    d.unmount_pool().await.expect("unmount");
    let err = d.pool_status().await.expect_err("inactive pool");
    assert!(matches!(err, StorageError::PoolNotActive(_)), "{err}");
    let err = d
        .create_volume(&p.disk(100, 0), MIB)
        .await
        .expect_err("inactive");
    assert!(matches!(err, StorageError::PoolNotActive(_)), "{err}");
    d.mount_pool().await.expect("remount");
    d.pool_status().await.expect("active again");
}

async fn volume_crud(p: Pool) {
    let d = &p.driver;
    let id = p.disk(100, 0);
    let info = d.create_volume(&id, 64 * MIB).await.expect("create");
    assert_eq!(info.size_bytes, 64 * MIB);
    assert_eq!(info.format, Some(p.format));
    assert!(info.used_bytes < 64 * MIB, "thin: {info:?}");
    let path = p.path_of(&id).await;
    assert!(
        path.is_file() && path.starts_with(&p.root),
        "{}",
        path.display()
    );

    let err = d.create_volume(&id, 64 * MIB).await.expect_err("exists");
    assert!(matches!(err, StorageError::VolumeExists(_)), "{err}");
    for bad in [0, 1000] {
        let err = d
            .create_volume(&p.disk(100, 9), bad)
            .await
            .expect_err("bad size");
        assert_eq!(err.class(), ErrorClass::BadRequest, "{err}");
    }

    p.write(&id, 0xAB, 0, MIB).await;
    let info = d.volume_info(&id).await.expect("info");
    assert!(info.used_bytes >= MIB, "usage grows with data: {info:?}");

    d.create_volume(&p.disk(101, 0), 8 * MIB)
        .await
        .expect("create 101");
    let all = d.list_volumes(Content::Images, None).await.expect("list");
    let ids: Vec<String> = all.iter().map(|v| v.id.to_string()).collect();
    assert_eq!(ids, vec![id.to_string(), p.disk(101, 0).to_string()]);
    let only = d
        .list_volumes(Content::Images, Some(101))
        .await
        .expect("list");
    assert_eq!(only.len(), 1);

    d.delete_volume(&id).await.expect("delete");
    assert!(!path.exists());
    let err = d.volume_info(&id).await.expect_err("gone");
    assert!(matches!(err, StorageError::VolumeNotFound(_)), "{err}");
    let err = d.delete_volume(&id).await.expect_err("gone");
    assert_eq!(err.class(), ErrorClass::NotFound, "{err}");
    assert!(temporaries(&p.root).is_empty());
}

async fn disk_allocation(p: Pool) {
    let d = &p.driver;
    let first = d.next_disk_id(200, p.format).await.expect("next");
    assert_eq!(first, p.disk(200, 0));
    d.create_volume(&first, MIB).await.expect("create 0");
    let second = d.next_disk_id(200, p.format).await.expect("next");
    assert_eq!(second, p.disk(200, 1));
    d.create_volume(&second, MIB).await.expect("create 1");
    d.delete_volume(&first).await.expect("delete 0");
    assert_eq!(
        d.next_disk_id(200, p.format).await.expect("next"),
        p.disk(200, 0)
    );
    assert_eq!(
        d.next_disk_id(201, p.format).await.expect("next"),
        p.disk(201, 0)
    );
}

/// Parallel allocations for one VMID get distinct disks and none overwrites another.
async fn concurrent_allocation(p: Pool) {
    let d = &p.driver;
    let results =
        futures::future::join_all((0..6).map(|_| d.allocate_volume(400, p.format, MIB))).await;
    let mut ids: Vec<String> = results
        .into_iter()
        .map(|r| r.expect("allocate").id.to_string())
        .collect();
    ids.sort();
    let mut expected: Vec<String> = (0..6).map(|n| p.disk(400, n).to_string()).collect();
    expected.sort();
    assert_eq!(ids, expected);
    // Same explicit name from two callers: exactly one wins.
    let id = p.disk(401, 0);
    let (a, b) = tokio::join!(d.create_volume(&id, MIB), d.create_volume(&id, MIB));
    assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
    let loser = a.err().or(b.err()).expect("one error");
    assert!(matches!(loser, StorageError::VolumeExists(_)), "{loser}");
    assert!(temporaries(&p.root).is_empty());
}

async fn resize(p: Pool) {
    let d = &p.driver;
    let id = p.disk(100, 0);
    d.create_volume(&id, 16 * MIB).await.expect("create");
    p.write(&id, 0x11, 0, MIB).await;
    d.resize_volume(&id, 32 * MIB).await.expect("grow");
    assert_eq!(d.volume_info(&id).await.expect("info").size_bytes, 32 * MIB);
    assert!(p.holds(&id, 0x11, 0, MIB).await, "data kept across resize");
    let err = d.resize_volume(&id, 8 * MIB).await.expect_err("shrink");
    assert!(err.to_string().contains("shrinking"), "{err}");
    let err = d
        .resize_volume(&id, 32 * MIB + 1)
        .await
        .expect_err("unaligned");
    assert_eq!(err.class(), ErrorClass::BadRequest);
    d.resize_volume(&id, 32 * MIB)
        .await
        .expect("same size is a no-op");
}

async fn snapshots(p: Pool) {
    let d = &p.driver;
    let id = p.disk(100, 0);
    d.create_volume(&id, 16 * MIB).await.expect("create");
    p.write(&id, 0xAA, 0, MIB).await;

    if !d.capabilities().snapshots_for(p.format) {
        let err = d.create_snapshot(&id, &snap("s1")).await.expect_err("raw");
        assert!(matches!(err, StorageError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("raw"), "{err}");
        return;
    }
    d.create_snapshot(&id, &snap("s1")).await.expect("snapshot");
    let err = d.create_snapshot(&id, &snap("s1")).await.expect_err("dup");
    assert!(matches!(err, StorageError::SnapshotExists { .. }), "{err}");
    p.write(&id, 0xBB, 0, MIB).await;
    d.create_snapshot(&id, &snap("s2"))
        .await
        .expect("snapshot 2");
    let names: Vec<String> = d
        .list_snapshots(&id)
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(names, ["s1", "s2"]);
    // Snapshots are not volumes.
    assert_eq!(
        d.list_volumes(Content::Images, None)
            .await
            .expect("list")
            .len(),
        1
    );

    p.write(&id, 0xCC, 0, MIB).await;
    d.rollback_snapshot(&id, &snap("s1"))
        .await
        .expect("rollback");
    assert!(p.holds(&id, 0xAA, 0, MIB).await, "rolled back to s1");
    d.rollback_snapshot(&id, &snap("s2"))
        .await
        .expect("rollback");
    assert!(p.holds(&id, 0xBB, 0, MIB).await, "rolled back to s2");

    d.delete_snapshot(&id, &snap("s1"))
        .await
        .expect("delete snap");
    let err = d.delete_snapshot(&id, &snap("s1")).await.expect_err("gone");
    assert!(
        matches!(err, StorageError::SnapshotNotFound { .. }),
        "{err}"
    );
    let err = d
        .rollback_snapshot(&id, &snap("s1"))
        .await
        .expect_err("gone");
    assert!(
        matches!(err, StorageError::SnapshotNotFound { .. }),
        "{err}"
    );
    assert_eq!(d.list_snapshots(&id).await.expect("list").len(), 1);

    // Deleting the volume deletes its snapshots; a new volume of that name has none.
    d.delete_volume(&id).await.expect("delete");
    d.create_volume(&id, 16 * MIB).await.expect("recreate");
    assert!(d.list_snapshots(&id).await.expect("list").is_empty());
    assert!(temporaries(&p.root).is_empty());
}

async fn linked_clone(p: Pool) {
    let d = &p.driver;
    let caps = d.capabilities().clone();
    let base = p.disk(100, 0);
    d.create_volume(&base, 16 * MIB).await.expect("create");
    p.write(&base, 0xAA, 0, MIB).await;
    // dir: the clone is a qcow2 overlay whatever the base's format.
    let clone = p.disk_as(101, 0, VolumeFormat::Qcow2);

    if caps.vmid_dir_ids && p.format == VolumeFormat::Raw {
        let raw_target = p.disk_as(101, 1, VolumeFormat::Raw);
        let err = d
            .clone_volume(&base, &raw_target, CloneMode::Linked)
            .await
            .expect_err("raw overlay");
        assert!(matches!(err, StorageError::Unsupported { .. }), "{err}");
    }
    let info = d
        .clone_volume(&base, &clone, CloneMode::Linked)
        .await
        .expect("linked clone");
    assert_eq!(info.size_bytes, 16 * MIB);
    if !caps.linked_clones_independent {
        // A qcow2 overlay holds none of the base's data. (btrfs counts shared extents in
        // full in `used_bytes`; its sharing is checked in src/btrfs/tests.rs.)
        assert!(info.used_bytes < MIB, "shares data: {info:?}");
    }
    assert!(p.holds(&clone, 0xAA, 0, MIB).await);
    p.write(&clone, 0xBB, 0, MIB).await;
    assert!(p.holds(&base, 0xAA, 0, MIB).await, "base untouched");
    assert!(p.holds(&clone, 0xBB, 0, MIB).await);

    if caps.linked_clones_independent {
        assert_eq!(info.parent, None);
        d.delete_volume(&base).await.expect("base can go");
        assert!(p.holds(&clone, 0xBB, 0, MIB).await, "clone survives");
    } else {
        assert_eq!(info.parent.as_ref(), Some(&base));
        let err = d.delete_volume(&base).await.expect_err("in use");
        assert!(matches!(err, StorageError::VolumeInUse { .. }), "{err}");
        assert!(p.holds(&clone, 0xBB, 0, MIB).await);
        d.delete_volume(&clone).await.expect("clone");
        d.delete_volume(&base).await.expect("base is free again");
    }
    let err = d
        .clone_volume(&p.disk(100, 7), &p.disk(101, 7), CloneMode::Linked)
        .await
        .expect_err("no source");
    assert!(matches!(err, StorageError::VolumeNotFound(_)), "{err}");
}

async fn full_clone(p: Pool) {
    let d = &p.driver;
    let src = p.disk(100, 0);
    d.create_volume(&src, 16 * MIB).await.expect("create");
    p.write(&src, 0xAA, 4 * MIB, MIB).await;
    let dst = p.disk(102, 0);
    let info = d
        .clone_volume(&src, &dst, CloneMode::Full)
        .await
        .expect("clone");
    assert_eq!(info.size_bytes, 16 * MIB);
    assert_eq!(info.parent, None);
    p.write(&src, 0xBB, 4 * MIB, MIB).await;
    assert!(p.holds(&dst, 0xAA, 4 * MIB, MIB).await, "independent copy");
    d.delete_volume(&src).await.expect("source deletable");
    assert!(p.holds(&dst, 0xAA, 4 * MIB, MIB).await);
    let err = d
        .clone_volume(&dst, &dst, CloneMode::Full)
        .await
        .expect_err("exists");
    assert!(
        matches!(
            err,
            StorageError::VolumeNotFound(_) | StorageError::VolumeExists(_)
        ),
        "{err}"
    );
    assert!(temporaries(&p.root).is_empty());
}

async fn import_export_images(p: Pool) {
    let d = &p.driver;
    let scratch = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let src = scratch.path().join("cloud.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&src)
        .arg("32M")
        .status()
        .expect("qemu-img");
    assert!(st.success());
    qemu_io_write(&src, VolumeFormat::Qcow2, 0x5A, 2 * MIB, MIB);

    let id = p.disk(300, 0);
    let info = d.import_volume(&src, &id).await.expect("import");
    assert_eq!(info.size_bytes, 32 * MIB);
    assert!(p.holds(&id, 0x5A, 2 * MIB, MIB).await);
    let err = d.import_volume(&src, &id).await.expect_err("exists");
    assert!(matches!(err, StorageError::VolumeExists(_)), "{err}");

    // An image naming a backing file would pull that host file into the storage.
    let overlay = scratch.path().join("overlay.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&src)
        .arg(&overlay)
        .status()
        .expect("qemu-img");
    assert!(st.success());
    let err = d
        .import_volume(&overlay, &p.disk(300, 1))
        .await
        .expect_err("backing");
    assert!(
        err.to_string().contains("backing") || format!("{err:?}").contains("Backing"),
        "{err:?}"
    );

    let out = scratch.path().join("export.raw");
    d.export_volume(&id, &out, Some(VolumeFormat::Raw))
        .await
        .expect("export");
    assert!(qemu_io_holds(&out, VolumeFormat::Raw, 0x5A, 2 * MIB, MIB));
    let err = d
        .export_volume(&id, &out, None)
        .await
        .expect_err("dest exists");
    assert_eq!(err.class(), ErrorClass::BadRequest, "{err}");
    assert!(temporaries(scratch.path()).is_empty());
    assert!(temporaries(&p.root).is_empty());
}

async fn import_export_files(p: Pool) {
    let d = &p.driver;
    let scratch = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let src = scratch.path().join("upload");
    std::fs::write(&src, b"ISO-9660 pretend payload").expect("write");
    for (content, name) in [
        (Content::Iso, "debian-12.iso"),
        (
            Content::Backup,
            "vzdump-qemu-100-2025_01_01-00_00_00.vma.zst",
        ),
        (Content::Snippets, "user-data.yaml"),
    ] {
        let id = VolumeId::file(STORAGE, content, name).expect("id");
        let info = d.import_volume(&src, &id).await.expect("import");
        assert_eq!(info.size_bytes, 24);
        let path = p.path_of(&id).await;
        assert_eq!(
            std::fs::read(&path).expect("read"),
            b"ISO-9660 pretend payload"
        );
        let listed = d.list_volumes(content, None).await.expect("list");
        assert_eq!(listed.iter().map(|v| &v.id).collect::<Vec<_>>(), vec![&id]);
        let out = scratch.path().join(format!("out-{content}"));
        d.export_volume(&id, &out, None).await.expect("export");
        assert_eq!(
            std::fs::read(&out).expect("read"),
            b"ISO-9660 pretend payload"
        );
        d.delete_volume(&id).await.expect("delete");
        assert!(!path.exists());
        let err = d.volume_info(&id).await.expect_err("gone");
        assert!(matches!(err, StorageError::VolumeNotFound(_)), "{err}");
    }
    let parsed: VolumeId = format!("{STORAGE}:iso/debian-12.iso")
        .parse()
        .expect("parse");
    assert_eq!(
        d.volume_location(&parsed).await.expect("loc").host_path(),
        Some(p.root.join("template/iso/debian-12.iso").as_path())
    );
}

async fn path_escapes(p: Pool) {
    let d = &p.driver;
    for s in [
        "iso/../../etc/passwd.iso",
        "snippets//etc/passwd",
        "100/../../vm-100-disk-0.raw",
        "snippets/..",
        "/etc/passwd",
    ] {
        let s = format!("{STORAGE}:{s}");
        assert!(s.parse::<VolumeId>().is_err(), "{s} parsed");
    }

    let outside = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let victim = outside.path().join("victim.iso");
    std::fs::write(&victim, b"host file").expect("write");

    // A symlinked file pointing out of the root: not readable, not deletable.
    std::os::unix::fs::symlink(&victim, p.root.join("template/iso/evil.iso")).expect("symlink");
    let evil = VolumeId::file(STORAGE, Content::Iso, "evil.iso").expect("id");
    let err = d.volume_info(&evil).await.expect_err("escape");
    assert_eq!(err.class(), ErrorClass::BadRequest, "{err:?}");
    assert!(format!("{err:?}").contains("Escape"), "{err:?}");
    assert!(d.delete_volume(&evil).await.is_err());
    assert!(d.volume_location(&evil).await.is_err());
    assert!(victim.exists(), "host file survived");
    let listed = d.list_volumes(Content::Iso, None).await.expect("list");
    assert!(
        listed.is_empty(),
        "symlink out of root not listed: {listed:?}"
    );

    // A symlinked VMID directory pointing out of the root: nothing is created there.
    std::os::unix::fs::symlink(outside.path(), p.root.join("images/555")).expect("symlink");
    let id = p.disk(555, 0);
    let err = d.create_volume(&id, MIB).await.expect_err("escape");
    assert!(format!("{err:?}").contains("Escape"), "{err:?}");
    let src = outside.path().join("x.raw");
    std::fs::write(&src, vec![0u8; 4096]).expect("write");
    assert!(d.import_volume(&src, &p.disk(555, 1)).await.is_err());
    let entries: Vec<_> = std::fs::read_dir(outside.path())
        .expect("ls")
        .flatten()
        .collect();
    assert_eq!(entries.len(), 2, "nothing new outside the root");

    // A symlink that stays inside the root is fine.
    std::fs::create_dir_all(p.root.join("images/real600")).expect("mkdir");
    std::os::unix::fs::symlink(p.root.join("images/real600"), p.root.join("images/600"))
        .expect("symlink");
    d.create_volume(&p.disk(600, 0), MIB)
        .await
        .expect("inside symlink ok");
}

async fn reconcile_removes_leftover_temporaries(p: Pool) {
    let d = &p.driver;
    let keep = p.disk(100, 0);
    d.create_volume(&keep, MIB).await.expect("create");
    let dir = p.path_of(&keep).await;
    // images/100 for dir; images/100 for btrfs too (the subvolume's parent).
    let vmid_dir = p.root.join("images/100");
    assert!(dir.starts_with(&vmid_dir));

    // As a crash mid-import would leave them: this node's file and directory, another
    // node's (a shared directory: not ours to remove), an ISO upload.
    let mine_file = vmid_dir.join(format!(".gpve-tmp.{NODE}.4242.0.vm-100-disk-1.qcow2"));
    std::fs::write(&mine_file, b"half a disk").expect("write");
    let mine_dir = vmid_dir.join(format!(".gpve-tmp.{NODE}.4242.1.vm-100-disk-2"));
    std::fs::create_dir(&mine_dir).expect("mkdir");
    std::fs::write(mine_dir.join("disk.raw"), b"half").expect("write");
    let other = vmid_dir.join(".gpve-tmp.node2.77.0.vm-100-disk-3.qcow2");
    std::fs::write(&other, b"in flight elsewhere").expect("write");
    let iso_tmp = p
        .root
        .join(format!("template/iso/.gpve-tmp.{NODE}.1.2.x.iso"));
    std::fs::write(&iso_tmp, b"partial").expect("write");
    let mut expected = vec![mine_file.clone(), mine_dir.clone(), iso_tmp.clone()];

    // btrfs: a read-only snapshot subvolume left by an interrupted rollback.
    if d.capabilities().driver == "btrfs" {
        let sub = vmid_dir.join(keep.name());
        let ro = vmid_dir.join(format!(".gpve-tmp.{NODE}.4242.9.{}", keep.name()));
        let st = std::process::Command::new("btrfs")
            .args(["subvolume", "snapshot", "-r"])
            .arg(&sub)
            .arg(&ro)
            .output()
            .expect("btrfs");
        assert!(st.status.success(), "{st:?}");
        expected.push(ro);
    }
    expected.sort();

    d.unmount_pool().await.expect("unmount");
    let report = d.mount_pool().await.expect("mount");
    let mut removed = report.removed_temporaries.clone();
    removed.sort();
    assert_eq!(removed, expected);
    for p in &expected {
        assert!(
            std::fs::symlink_metadata(p).is_err(),
            "{} left",
            p.display()
        );
    }
    assert!(other.exists(), "another node's temporary is kept");
    assert!(dir.exists(), "real volume kept");
    assert_eq!(
        d.list_volumes(Content::Images, None)
            .await
            .expect("list")
            .len(),
        1
    );
}

/// A copy cancelled midway (the future dropped, as when the agent dies) leaves no
/// volume under the target name; the next mount removes the partial temporary.
async fn cancelled_copy_leaves_old_state(p: Pool) {
    let d = &p.driver;
    let src = p.disk(100, 0);
    d.create_volume(&src, 256 * MIB).await.expect("create");
    p.write(&src, 0x77, 0, 192 * MIB).await;
    let dst = p.disk(101, 0);
    let copy = d.clone_volume(&src, &dst, CloneMode::Full);
    match tokio::time::timeout(std::time::Duration::from_millis(60), copy).await {
        Ok(r) => {
            r.expect("clone");
            println!("skipped: the copy finished before it could be cancelled");
            return;
        }
        Err(_elapsed) => {}
    }
    let err = d.volume_info(&dst).await.expect_err("no half volume");
    assert!(matches!(err, StorageError::VolumeNotFound(_)), "{err}");
    // Give the killed qemu-img a moment to exit before reconciling.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    d.unmount_pool().await.expect("unmount");
    d.mount_pool().await.expect("mount");
    assert!(
        temporaries(&p.root).is_empty(),
        "{:?}",
        temporaries(&p.root)
    );
    d.clone_volume(&src, &dst, CloneMode::Full)
        .await
        .expect("retry works");
    assert!(p.holds(&dst, 0x77, 0, 192 * MIB).await);
}

async fn foreign_ids_refused(p: Pool) {
    let d = &p.driver;
    let other = VolumeId::disk(
        "elsewhere",
        100,
        0,
        p.driver.capabilities().vmid_dir_ids.then_some(p.format),
    )
    .expect("id");
    let err = d
        .create_volume(&other, MIB)
        .await
        .expect_err("wrong storage");
    assert!(matches!(err, StorageError::WrongStorage(..)), "{err}");
    // The other layout's id form is refused, not silently mapped.
    let wrong_form = if d.capabilities().vmid_dir_ids {
        VolumeId::disk(STORAGE, 100, 0, None)
    } else {
        VolumeId::disk(STORAGE, 100, 0, Some(VolumeFormat::Raw))
    }
    .expect("id");
    let err = d
        .create_volume(&wrong_form, MIB)
        .await
        .expect_err("wrong form");
    assert_eq!(err.class(), ErrorClass::BadRequest, "{err}");
    assert!(
        !Path::new(&p.root)
            .join("images/100")
            .join(wrong_form.name())
            .exists()
    );
}
