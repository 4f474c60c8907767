//! The storage and volume actors on a real dir pool and a real store.

use std::time::Duration;

use gpve_storage_drivers::{StorageError, VolumeId};
use gpve_store::Store;
use ractor::{Actor, ActorRef};

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
    let id = id.clone();
    ractor::call_t!(
        actor,
        |reply| StorageMsg::Volume(
            id,
            VolumeMsg::Create {
                size_bytes: 1 << 20,
                reply
            }
        ),
        30_000
    )
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
