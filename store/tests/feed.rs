//! The change feed over the real redb backend and the simulated one: commits publish their
//! writes in order, aborted and conflicted attempts publish nothing, a lagging subscriber
//! gets a resync signal without slowing commits, remote commits applied by
//! `commit_checked` publish too, and `subscribe_with` reads exactly at the feed position.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use gpve_store::{
    FEED_CAPACITY_COMMITS, FeedEvent, Key, ReadSet, SimFaults, Store, StoreError, Subscription,
    UnknownResultMode, WriteSet,
};

fn redb_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_redb(&dir.path().join("store.redb")).expect("open redb");
    (dir, store)
}

fn sim_store(faults: SimFaults) -> Store {
    let sleep: gpve_store::SleepFn = Arc::new(|_| Box::pin(async {}));
    Store::simulated(SimFaults {
        sleep: Some(sleep),
        ..faults
    })
    .0
}

fn commit(event: Option<FeedEvent>) -> Arc<gpve_store::Commit> {
    match event {
        Some(FeedEvent::Commit(c)) => c,
        other => panic!("expected a commit, got {other:?}"),
    }
}

fn point(c: &gpve_store::Commit, key: &Key) -> Option<Option<Vec<u8>>> {
    c.writes.points.get(key.as_bytes()).cloned()
}

async fn publishes_in_commit_order(store: Store) {
    let mut sub = store.subscribe().await;
    let (a, b) = (Key::pack(&("t", "a")), Key::pack(&("t", "b")));
    store.set(&a, b"1").await.expect("set a");
    store.set(&b, b"2").await.expect("set b");
    store.delete(&a).await.expect("delete a");
    store
        .transact(|tx| {
            tx.clear_prefix(&Key::prefix(&("t",)));
            Box::pin(async { Ok(()) })
        })
        .await
        .expect("clear prefix");

    let c1 = commit(sub.recv().await);
    assert_eq!(point(&c1, &a), Some(Some(b"1".to_vec())));
    let c2 = commit(sub.recv().await);
    assert_eq!(point(&c2, &b), Some(Some(b"2".to_vec())));
    let c3 = commit(sub.recv().await);
    assert_eq!(point(&c3, &a), Some(None), "a delete is published as None");
    let c4 = commit(sub.recv().await);
    assert_eq!(c4.writes.cleared.len(), 1, "the range clear is published");
    assert!(c4.writes.points.is_empty());
    assert_eq!(
        [c1.seq + 1, c2.seq + 1, c3.seq + 1],
        [c2.seq, c3.seq, c4.seq],
        "sequence numbers follow the commit order without gaps"
    );
    // Read-only transactions publish nothing.
    store.get(&b).await.expect("get");
    assert!(sub.try_recv().is_none());
}

#[tokio::test]
async fn redb_commits_publish_in_order() {
    let (_dir, store) = redb_store();
    publishes_in_commit_order(store).await;
}

#[tokio::test]
async fn simulated_commits_publish_in_order() {
    publishes_in_commit_order(sim_store(SimFaults::default())).await;
}

#[tokio::test]
async fn aborted_and_conflicted_attempts_publish_nothing() {
    let (_dir, store) = redb_store();
    let mut sub = store.subscribe().await;
    let key = Key::pack(&("t", "x"));

    // A body that fails: its buffered write never appears.
    let err = store
        .transact(|tx| {
            tx.set(&Key::pack(&("t", "aborted")), b"no");
            Box::pin(async {
                Err::<(), _>(StoreError::Aborted("the body refused".to_string().into()))
            })
        })
        .await;
    assert!(err.is_err());
    assert!(sub.try_recv().is_none(), "an aborted transaction published");

    // The first attempt reads `key`, then a concurrent commit changes it, so the attempt
    // conflicts; the retry commits. Only the concurrent write and the retry appear.
    let attempts = Arc::new(AtomicU32::new(0));
    let (outer, a) = (store.clone(), attempts.clone());
    store
        .transact(move |tx| {
            let (store, key, n) = (outer.clone(), key.clone(), a.fetch_add(1, Ordering::SeqCst));
            Box::pin(async move {
                tx.get(&key).await?;
                if n == 0 {
                    store.set(&key, b"concurrent").await?;
                }
                tx.set(&key, format!("attempt-{n}").as_bytes());
                Ok(())
            })
        })
        .await
        .expect("retried transaction");
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        2,
        "the first attempt conflicted"
    );
    let key = Key::pack(&("t", "x"));
    let first = commit(sub.recv().await);
    assert_eq!(point(&first, &key), Some(Some(b"concurrent".to_vec())));
    let second = commit(sub.recv().await);
    assert_eq!(point(&second, &key), Some(Some(b"attempt-1".to_vec())));
    assert!(sub.try_recv().is_none(), "the conflicted attempt published");
}

#[tokio::test]
async fn a_lagging_subscriber_gets_resync_and_commits_never_wait() {
    let store = sim_store(SimFaults::default());
    let mut slow = store.subscribe().await;
    let total = FEED_CAPACITY_COMMITS + 10;
    // Nobody reads `slow` while these commit: they must all finish.
    for i in 0..total {
        store
            .set(&Key::pack(&("lag", i as u64)), b"v")
            .await
            .expect("commit");
    }
    match slow.recv().await {
        Some(FeedEvent::Resync { missed }) => assert_eq!(missed, 10),
        other => panic!("expected a resync signal, got {other:?}"),
    }
    // After the signal the subscriber continues with the oldest commit still buffered.
    let next = commit(slow.recv().await);
    assert_eq!(
        point(&next, &Key::pack(&("lag", 10u64))),
        Some(Some(b"v".to_vec()))
    );
}

#[tokio::test]
async fn unknown_outcome_sends_resync() {
    let store = sim_store(SimFaults {
        unknown_next_commits: 1,
        unknown_result_mode: UnknownResultMode::Applied,
        ..SimFaults::default()
    });
    let mut sub = store.subscribe().await;
    let key = Key::pack(&("t", "u"));
    store
        .set(&key, b"v")
        .await
        .expect("set retries past the unknown outcome");
    assert_eq!(sub.recv().await, Some(FeedEvent::Resync { missed: 1 }));
    let retried = commit(sub.recv().await);
    assert_eq!(point(&retried, &key), Some(Some(b"v".to_vec())));
}

#[tokio::test]
async fn remote_commits_applied_by_commit_checked_publish() {
    let (_dir, store) = redb_store();
    let mut sub = store.subscribe().await;
    let key = Key::pack(&("vms", 100u32));
    let mut writes = WriteSet::default();
    writes
        .points
        .insert(key.as_bytes().to_vec(), Some(b"{}".to_vec()));
    store
        .commit_checked(ReadSet::default(), writes.clone())
        .await
        .expect("commit_checked");
    assert_eq!(commit(sub.recv().await).writes, writes);

    // A remote commit whose read no longer holds conflicts and publishes nothing.
    let stale = ReadSet {
        records: vec![gpve_store::ReadRecord::Key {
            key: key.as_bytes().to_vec(),
            value: None,
        }],
    };
    let err = store.commit_checked(stale, writes).await;
    assert!(matches!(err, Err(StoreError::Conflict)), "{err:?}");
    assert!(sub.try_recv().is_none());
}

#[tokio::test]
async fn subscribe_with_reads_at_the_feed_position() {
    let (_dir, store) = redb_store();
    let key = Key::pack(&("t", "n"));
    store.set(&key, b"1").await.expect("set");
    let (before, mut sub): (Option<Vec<u8>>, Subscription) = store
        .subscribe_with(|tx| {
            let key = key.clone();
            Box::pin(async move { tx.get(&key).await })
        })
        .await
        .expect("subscribe_with");
    assert_eq!(before.as_deref(), Some(&b"1"[..]));
    assert!(
        sub.try_recv().is_none(),
        "the snapshot's own state is not replayed"
    );
    store.set(&key, b"2").await.expect("set");
    assert_eq!(
        point(&commit(sub.recv().await), &key),
        Some(Some(b"2".to_vec()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_of_one_key_publish_in_apply_order() {
    let (_dir, store) = redb_store();
    let mut sub = store.subscribe().await;
    let key = Key::pack(&("t", "hot"));
    let writers = 8u32;
    let writes_each = 25u32;
    let mut handles = Vec::new();
    for w in 0..writers {
        let (store, key) = (store.clone(), key.clone());
        handles.push(tokio::spawn(async move {
            for i in 0..writes_each {
                store
                    .set(&key, format!("{w}-{i}").as_bytes())
                    .await
                    .expect("blind write");
            }
        }));
    }
    for h in handles {
        h.await.expect("writer");
    }
    let mut last = None;
    let mut seen = 0;
    while let Some(event) = sub.try_recv() {
        let c = commit(Some(event));
        last = point(&c, &key);
        seen += 1;
    }
    assert_eq!(seen, writers * writes_each);
    // The feed's last word on the key is what the store holds.
    assert_eq!(last, Some(store.get(&key).await.expect("get")));
}
