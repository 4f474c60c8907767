//! The storage and volume actors on a real dir pool and a real store.

use std::time::Duration;

use gpve_storage_drivers::{CloneMode, VolumeFormat};
use gpve_storage_drivers::{StorageError, VolumeId};
use gpve_store::Store;
use ractor::{Actor, ActorRef, RpcReplyPort};

use super::*;

async fn start(cfg: StorageConfig, store: Store) -> ActorRef<StorageMsg> {
    let args = StorageArgs {
        config: cfg,
        node: "n1".into(),
        store,
    };
    let (actor, _join) = Actor::spawn(None, StorageActor::default(), args)
        .await
        .expect("spawn storage actor");
    actor
}

async fn create(
    actor: &ActorRef<StorageMsg>,
    id: &VolumeId,
) -> Result<VolumeInfo, StorageServiceError> {
    vol(actor, id, |reply| VolumeMsg::Create {
        size_bytes: 1 << 20,
        reply,
    })
    .await
}

/// One volume command through the storage actor.
async fn vol<T: Send + std::fmt::Debug + 'static>(
    actor: &ActorRef<StorageMsg>,
    id: &VolumeId,
    build: impl FnOnce(RpcReplyPort<Result<T, StorageServiceError>>) -> VolumeMsg + Send + 'static,
) -> Result<T, StorageServiceError> {
    let id = id.clone();
    ractor::call_t!(actor, |reply| StorageMsg::Volume(id, build(reply)), 60_000)
        .expect("storage actor answers")
}

#[tokio::test]
async fn one_volume_is_serialised_and_its_actor_stops_when_idle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_redb(&dir.path().join("s.redb")).expect("store");
    let actor = start(
        StorageConfig::dir("t", dir.path().join("pool")),
        store.clone(),
    )
    .await;
    let status = ractor::call_t!(actor, StorageMsg::Status, 5_000).expect("status");
    assert!(status.active, "{status:?}");

    // Eight concurrent creates of one volume: the volume actor runs them one after the
    // other, so exactly one wins and the others see it exists.
    let id: VolumeId = "t:100/vm-100-disk-0.raw".parse().expect("id");
    let results = futures::future::join_all((0..8).map(|_| create(&actor, &id))).await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{results:?}");
    for r in results.iter().filter(|r| r.is_err()) {
        assert!(
            matches!(
                r,
                Err(StorageServiceError::Storage(StorageError::VolumeExists(_)))
            ),
            "{r:?}"
        );
    }

    // Operations on different volumes each get an actor, and every actor stops once idle.
    let others: Vec<VolumeId> = (1..5)
        .map(|n| format!("t:100/vm-100-disk-{n}.raw").parse().expect("id"))
        .collect();
    let results = futures::future::join_all(others.iter().map(|id| create(&actor, id))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut idle = false;
    for _ in 0..100 {
        if ractor::call_t!(actor, StorageMsg::VolumeActors, 5_000).expect("count") == 0 {
            idle = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(idle, "volume actors still running after their work");

    // A VM that uses the volume blocks its deletion and is named.
    store
        .put_json(
            &gpve_store::Key::pack(&("vms", 100u32)),
            &serde_json::json!({"vmid": 100, "config": {"virtio0": "t:100/vm-100-disk-0.raw"}}),
        )
        .await
        .expect("put vm");
    let del = |id: VolumeId| {
        let actor = actor.clone();
        async move {
            ractor::call_t!(
                actor,
                |reply| StorageMsg::Volume(id, VolumeMsg::Delete { reply }),
                30_000
            )
            .expect("answer")
        }
    };
    let err = del(id.clone()).await.expect_err("in use");
    assert!(err.to_string().contains("in use by VM 100"), "{err}");
    del(others[0].clone()).await.expect("unused volume deleted");
    actor.stop(None);
}

#[tokio::test]
async fn a_pool_that_cannot_mount_is_inactive_not_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_redb(&dir.path().join("s.redb")).expect("store");
    // A btrfs storage on a directory that is not btrfs (tmpfs or ext4 here).
    let mut cfg = StorageConfig::dir("b", dir.path().join("pool"));
    cfg.kind = StorageType::Btrfs;
    let actor = start(cfg, store).await;
    let status = ractor::call_t!(actor, StorageMsg::Status, 5_000).expect("status");
    if status.active {
        eprintln!("SKIP: the temp dir is on btrfs, the mount cannot fail here");
        actor.stop(None);
        return;
    }
    assert!(status.error.is_some(), "{status:?}");
    let id: VolumeId = "b:vm-100-disk-0".parse().expect("id");
    let err = create(&actor, &id).await.expect_err("inactive");
    assert!(
        matches!(
            err,
            StorageServiceError::Storage(StorageError::PoolNotActive(_))
        ),
        "{err:?}"
    );
    let list = ractor::call_t!(
        actor,
        |reply| StorageMsg::List {
            content: None,
            vmid: None,
            reply
        },
        5_000
    )
    .expect("answer");
    assert!(list.is_err());
    actor.stop(None);
}

#[tokio::test]
async fn resize_clone_export_import_through_the_volume_actor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_redb(&dir.path().join("s.redb")).expect("store");
    let actor = start(
        StorageConfig::dir("t", dir.path().join("pool")),
        store.clone(),
    )
    .await;
    let base: VolumeId = "t:100/vm-100-disk-0.qcow2".parse().expect("id");
    create(&actor, &base).await.expect("create");

    // grow only; shrinking names the current size
    let info = vol(&actor, &base, |reply| VolumeMsg::Resize {
        new_size_bytes: 4 << 20,
        reply,
    })
    .await
    .expect("grow");
    assert_eq!(info.size_bytes, 4 << 20);
    let err = vol(&actor, &base, |reply| VolumeMsg::Resize {
        new_size_bytes: 2 << 20,
        reply,
    })
    .await
    .expect_err("shrink");
    assert!(err.to_string().contains(&(4u64 << 20).to_string()), "{err}");

    // linked clone: a qcow2 overlay whose parent is the base; full clone: independent
    let linked: VolumeId = "t:101/vm-101-disk-0.qcow2".parse().expect("id");
    let info = vol(&actor, &base, {
        let t = linked.clone();
        move |reply| VolumeMsg::Clone {
            target: t,
            mode: CloneMode::Linked,
            reply,
        }
    })
    .await
    .expect("linked clone");
    assert_eq!(info.parent.as_ref(), Some(&base), "{info:?}");
    let full: VolumeId = "t:102/vm-102-disk-0.raw".parse().expect("id");
    let info = vol(&actor, &base, {
        let t = full.clone();
        move |reply| VolumeMsg::Clone {
            target: t,
            mode: CloneMode::Full,
            reply,
        }
    })
    .await
    .expect("full clone");
    assert_eq!((info.parent, info.size_bytes), (None, 4 << 20));
    // the base of a linked clone cannot be deleted
    let err = vol(&actor, &base, |reply| VolumeMsg::Delete { reply })
        .await
        .expect_err("base in use");
    assert!(err.to_string().contains("linked clone"), "{err}");

    // export flattened, import as a new volume
    let staging = dir.path().join("export.qcow2");
    let dest = staging.clone();
    vol(&actor, &linked, move |reply| VolumeMsg::Export {
        dest,
        format: Some(VolumeFormat::Qcow2),
        reply,
    })
    .await
    .expect("export");
    let imported: VolumeId = "t:103/vm-103-disk-0.raw".parse().expect("id");
    let source = staging.clone();
    let info = vol(&actor, &imported, move |reply| VolumeMsg::Import {
        source,
        reply,
    })
    .await
    .expect("import");
    assert_eq!((info.parent, info.size_bytes), (None, 4 << 20));

    // a volume a running VM uses is neither resized, cloned nor exported
    store
        .put_json(
            &gpve_store::Key::pack(&("vms", 103u32)),
            &serde_json::json!({"vmid": 103, "status": "running",
                "config": {"scsi0": "t:103/vm-103-disk-0.raw,size=4M"}}),
        )
        .await
        .expect("put vm");
    let err = vol(&actor, &imported, |reply| VolumeMsg::Resize {
        new_size_bytes: 8 << 20,
        reply,
    })
    .await
    .expect_err("running");
    assert!(err.to_string().contains("running VM 103"), "{err}");
    let err = vol(&actor, &imported, |reply| VolumeMsg::Export {
        dest: std::path::PathBuf::from("/nonexistent/x"),
        format: None,
        reply,
    })
    .await
    .expect_err("running");
    assert!(err.to_string().contains("running VM 103"), "{err}");
    actor.stop(None);
}
