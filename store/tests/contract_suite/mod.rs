//! The backend contract suite: every behaviour a [`Store`] promises, whatever its backend.
//! Included by `store/tests/contract.rs` (redb, simulated, FoundationDB) and by
//! `transport/tests/store_contract.rs` (the remote backend over real gRPC).

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use gpve_store::{Key, KeyRange, RangeOptions, RetryPolicy, Store, StoreError};

/// Each test works under its own subspace so tests can share one FoundationDB cluster.
pub async fn namespace(store: &Store, test: &str) -> Key {
    let ns = Key::prefix(&("gpve-store-contract", test));
    let range = ns.subspace_range();
    store
        .transact(|tx| {
            tx.clear_range(&range);
            Box::pin(async { Ok(()) })
        })
        .await
        .expect("clear test namespace");
    ns
}

pub fn vals(rows: &[(Key, Vec<u8>)]) -> Vec<&[u8]> {
    rows.iter().map(|(_, v)| v.as_slice()).collect()
}

pub mod contract {
    use super::*;

    pub async fn get_set_clear(store: &Store) {
        let ns = namespace(store, "get_set_clear").await;
        let k = ns.join(&("a",));
        assert_eq!(store.get(&k).await.expect("get"), None);
        store.set(&k, b"one").await.expect("set");
        assert_eq!(store.get(&k).await.expect("get"), Some(b"one".to_vec()));
        store.set(&k, b"two").await.expect("overwrite");
        assert_eq!(store.get(&k).await.expect("get"), Some(b"two".to_vec()));
        store.delete(&k).await.expect("delete");
        assert_eq!(store.get(&k).await.expect("get"), None);
        // Deleting a missing key is not an error.
        store.delete(&k).await.expect("delete missing");
    }

    pub async fn ordered_range_limit_reverse(store: &Store) {
        let ns = namespace(store, "ordered_range").await;
        // Written out of order; integers must order numerically, not as text.
        let ids = [100u32, 9, 1000, 10, 55];
        let keys: Vec<Key> = ids.iter().map(|i| ns.join(&(*i,))).collect();
        store
            .transact(|tx| {
                for (k, i) in keys.iter().zip(ids) {
                    tx.set(k, i.to_string().as_bytes());
                }
                Box::pin(async { Ok(()) })
            })
            .await
            .expect("write");
        let range = ns.subspace_range();
        let all = store
            .transact(|tx| {
                let range = range.clone();
                Box::pin(async move { tx.get_range(&range, RangeOptions::all()).await })
            })
            .await
            .expect("range");
        let expected: [&[u8]; 5] = [b"9", b"10", b"55", b"100", b"1000"];
        assert_eq!(vals(&all), expected);
        let (first, last, rev_two, middle) = store
            .transact(|tx| {
                let range = range.clone();
                let middle = KeyRange::new(ns.join(&(10u32,)), ns.join(&(1000u32,)));
                Box::pin(async move {
                    let first = tx.get_range(&range, RangeOptions::limit(2)).await?;
                    let last = tx
                        .get_range(&range, RangeOptions::limit(1).reversed())
                        .await?;
                    let rev_two = tx
                        .get_range(&range, RangeOptions::limit(2).reversed())
                        .await?;
                    let middle = tx.get_range(&middle, RangeOptions::all()).await?;
                    Ok((first, last, rev_two, middle))
                })
            })
            .await
            .expect("limited ranges");
        assert_eq!(vals(&first), [b"9".as_slice(), b"10"]);
        assert_eq!(vals(&last), [b"1000".as_slice()]);
        assert_eq!(vals(&rev_two), [b"1000".as_slice(), b"100"]);
        // Half-open: begin included, end excluded.
        assert_eq!(vals(&middle), [b"10".as_slice(), b"55", b"100"]);
        let (id,): (u32,) = all[3].0.unpack_suffix(&ns).expect("suffix");
        assert_eq!(id, 100);
    }

    pub async fn prefix_scans_of_subspaces(store: &Store) {
        let ns = namespace(store, "prefix_scans").await;
        let users = ns.join(&("users",));
        let usersx = ns.join(&("usersx",));
        store
            .put_json(&users.join(&("root@pam",)), &1u32)
            .await
            .expect("put");
        store
            .put_json(&users.join(&("alice@pve",)), &2u32)
            .await
            .expect("put");
        store
            .put_json(&usersx.join(&("zed",)), &3u32)
            .await
            .expect("put");
        store
            .put_json(&users, &99u32)
            .await
            .expect("put prefix key itself");
        let listed: Vec<(Key, u32)> = store.list_json(&users).await.expect("list");
        let names: Vec<String> = listed
            .iter()
            .map(|(k, _)| k.unpack_suffix::<(String,)>(&users).expect("name").0)
            .collect();
        assert_eq!(names, ["alice@pve", "root@pam"]);
        assert_eq!(listed.iter().map(|(_, v)| *v).collect::<Vec<_>>(), [2, 1]);
        // Nested subspaces are scanned through their parents.
        let all: Vec<(Key, u32)> = store.list_json(&ns).await.expect("list ns");
        assert_eq!(all.len(), 4);
        // A value of the wrong type is a codec error, not a panic.
        store
            .set(&users.join(&("bad",)), b"not json")
            .await
            .expect("set");
        let err = store.list_json::<u32>(&users).await.expect_err("bad JSON");
        assert!(matches!(err, StoreError::Codec { .. }), "{err:?}");
    }

    pub async fn read_your_writes(store: &Store) {
        let ns = namespace(store, "read_your_writes").await;
        store.set(&ns.join(&(1u32,)), b"old1").await.expect("set");
        store.set(&ns.join(&(2u32,)), b"old2").await.expect("set");
        store.set(&ns.join(&(3u32,)), b"old3").await.expect("set");
        let seen = store
            .transact(|tx| {
                let ns = ns.clone();
                Box::pin(async move {
                    tx.set(&ns.join(&(1u32,)), b"new1");
                    tx.clear(&ns.join(&(2u32,)));
                    tx.set(&ns.join(&(4u32,)), b"new4");
                    let one = tx.get(&ns.join(&(1u32,))).await?;
                    let two = tx.get(&ns.join(&(2u32,))).await?;
                    let range = tx.get_prefix(&ns, RangeOptions::all()).await?;
                    let first_two = tx.get_prefix(&ns, RangeOptions::limit(2)).await?;
                    let last = tx
                        .get_prefix(&ns, RangeOptions::limit(1).reversed())
                        .await?;
                    Ok((one, two, range, first_two, last))
                })
            })
            .await
            .expect("transaction");
        let (one, two, range, first_two, last) = seen;
        assert_eq!(one, Some(b"new1".to_vec()));
        assert_eq!(two, None);
        assert_eq!(vals(&range), [b"new1".as_slice(), b"old3", b"new4"]);
        assert_eq!(vals(&first_two), [b"new1".as_slice(), b"old3"]);
        assert_eq!(vals(&last), [b"new4".as_slice()]);
        // ... and the writes committed.
        assert_eq!(
            store.get(&ns.join(&(4u32,))).await.expect("get"),
            Some(b"new4".to_vec())
        );
    }

    pub async fn clear_range(store: &Store) {
        let ns = namespace(store, "clear_range").await;
        store
            .transact(|tx| {
                for i in 0u32..10 {
                    tx.set(&ns.join(&(i,)), &[i as u8]);
                }
                Box::pin(async { Ok(()) })
            })
            .await
            .expect("fill");
        let doomed = KeyRange::new(ns.join(&(3u32,)), ns.join(&(7u32,)));
        let inside_txn = store
            .transact(|tx| {
                let (ns, doomed) = (ns.clone(), doomed.clone());
                Box::pin(async move {
                    tx.clear_range(&doomed);
                    // Set after clear inside the cleared range survives.
                    tx.set(&ns.join(&(5u32,)), b"again");
                    let limited = tx.get_prefix(&ns, RangeOptions::limit(5)).await?;
                    let cleared = tx.get(&ns.join(&(4u32,))).await?;
                    let backwards = tx
                        .get_prefix(&ns, RangeOptions::limit(5).reversed())
                        .await?;
                    Ok((limited, cleared, backwards))
                })
            })
            .await
            .expect("clear range");
        assert_eq!(
            vals(&inside_txn.0),
            [[0u8].as_slice(), &[1], &[2], b"again", &[7]]
        );
        assert_eq!(inside_txn.1, None);
        // Limited reads step over the cleared hole in both directions.
        assert_eq!(
            vals(&inside_txn.2),
            [[9u8].as_slice(), &[8], &[7], b"again", &[2]]
        );
        let rest = store
            .transact(|tx| {
                let ns = ns.clone();
                Box::pin(async move { tx.get_prefix(&ns, RangeOptions::all()).await })
            })
            .await
            .expect("read");
        assert_eq!(
            vals(&rest),
            [[0u8].as_slice(), &[1], &[2], b"again", &[7], &[8], &[9]]
        );
        // An inverted range is a clear error at commit, not a panic; nothing is applied.
        let err = store
            .transact(|tx| {
                tx.set(&ns.join(&(42u32,)), b"x");
                tx.clear_range(&KeyRange::new(ns.join(&(9u32,)), ns.join(&(1u32,))));
                Box::pin(async { Ok(()) })
            })
            .await
            .expect_err("inverted");
        assert!(matches!(err, StoreError::InvertedRange { .. }), "{err:?}");
        assert_eq!(store.get(&ns.join(&(42u32,))).await.expect("get"), None);
    }

    pub async fn counter_under_50_concurrent_tasks(store: &Store) {
        let ns = namespace(store, "counter").await;
        let counter = ns.join(&("counter",));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (store, counter) = (store.clone(), counter.clone());
            // Generous bound: 50 contending writers on 2 cores.
            let store = store.with_retry_policy(RetryPolicy {
                max_attempts: 200,
                initial_backoff_ms: 1,
                max_backoff_ms: 20,
            });
            tasks.push(tokio::spawn(async move {
                store
                    .transact(|tx| {
                        let counter = counter.clone();
                        Box::pin(async move {
                            let n: u64 = tx.get_json(&counter).await?.unwrap_or(0);
                            // Widen the race window so increments really overlap.
                            tokio::task::yield_now().await;
                            tx.put_json(&counter, &(n + 1))?;
                            Ok(())
                        })
                    })
                    .await
            }));
        }
        for t in tasks {
            t.await.expect("task").expect("increment");
        }
        let n: Option<u64> = store.get_json(&counter).await.expect("read");
        assert_eq!(n, Some(50));
    }

    pub async fn create_json_has_one_winner(store: &Store) {
        let ns = namespace(store, "create").await;
        let key = ns.join(&("vm", 100u32));
        let mut tasks = Vec::new();
        for writer in 0..8u32 {
            let (store, key) = (store.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                store
                    .create_json(&key, &writer)
                    .await
                    .map(|won| (writer, won))
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (writer, won) = t.await.expect("task").expect("create");
            if won {
                winners.push(writer);
            }
        }
        assert_eq!(winners.len(), 1, "exactly one create wins: {winners:?}");
        let stored: Option<u32> = store.get_json(&key).await.expect("read");
        assert_eq!(stored, Some(winners[0]), "the winner's value is kept");
        assert!(!store.create_json(&key, &99u32).await.expect("again"));
        assert_eq!(
            store.get_json::<u32>(&key).await.expect("read"),
            Some(winners[0])
        );
    }

    pub async fn update_json_changes_only_what_exists(store: &Store) {
        let ns = namespace(store, "update").await;
        let (present, absent) = (ns.join(&("n",)), ns.join(&("missing",)));
        store.put_json(&present, &1u64).await.expect("put");
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (store, key) = (store.clone(), present.clone());
            tasks.push(tokio::spawn(async move {
                store.update_json(&key, |n: &mut u64| *n += 1).await
            }));
        }
        for t in tasks {
            assert!(t.await.expect("task").expect("update"), "the value exists");
        }
        assert_eq!(
            store.get_json::<u64>(&present).await.expect("read"),
            Some(9)
        );
        let changed = store
            .update_json(&absent, |n: &mut u64| *n += 1)
            .await
            .expect("update");
        assert!(!changed, "nothing to update");
        assert_eq!(
            store.get(&absent).await.expect("read"),
            None,
            "nothing created"
        );
    }

    pub async fn conflict_is_retried(store: &Store) {
        let ns = namespace(store, "conflict").await;
        let k = ns.join(&("k",));
        store.put_json(&k, &0u64).await.expect("init");
        let calls = Arc::new(AtomicU32::new(0));
        let result = store
            .transact(|tx| {
                let (store, k, calls) = (store.clone(), k.clone(), Arc::clone(&calls));
                Box::pin(async move {
                    let n: u64 = tx.get_json(&k).await?.unwrap_or(0);
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        // A concurrent writer commits between our read and our commit.
                        store.put_json(&k, &100u64).await?;
                    }
                    tx.put_json(&k, &(n + 1))?;
                    Ok(n)
                })
            })
            .await
            .expect("transact");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "the body ran again after the conflict"
        );
        assert_eq!(result, 100, "the retry saw the concurrent write");
        assert_eq!(store.get_json::<u64>(&k).await.expect("get"), Some(101));

        // With one attempt allowed the conflict surfaces.
        let once = store.clone().with_retry_policy(RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        });
        let err = once
            .transact(|tx| {
                let (store, k) = (store.clone(), k.clone());
                Box::pin(async move {
                    let n: u64 = tx.get_json(&k).await?.unwrap_or(0);
                    store.put_json(&k, &500u64).await?;
                    tx.put_json(&k, &(n + 1))?;
                    Ok(())
                })
            })
            .await
            .expect_err("conflict");
        assert!(err.is_conflict(), "{err:?}");
        assert!(
            matches!(err, StoreError::RetriesExhausted { attempts: 1, .. }),
            "{err:?}"
        );
        assert_eq!(store.get_json::<u64>(&k).await.expect("get"), Some(500));
    }

    pub async fn snapshot_reads_and_blind_writes(store: &Store) {
        let ns = namespace(store, "snapshot").await;
        let (a, b) = (ns.join(&("a",)), ns.join(&("b",)));
        store.set(&a, b"1").await.expect("set");
        store.set(&b, b"1").await.expect("set");
        // A read-only transaction sees one snapshot even if others commit meanwhile, and
        // does not conflict.
        let calls = Arc::new(AtomicU32::new(0));
        let (ra, rb) = store
            .transact(|tx| {
                let (store, a, b, calls) =
                    (store.clone(), a.clone(), b.clone(), Arc::clone(&calls));
                Box::pin(async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let ra = tx.get(&a).await?;
                    store.set(&b, b"2").await?;
                    let rb = tx.get(&b).await?;
                    Ok((ra, rb))
                })
            })
            .await
            .expect("read-only");
        assert_eq!((ra, rb), (Some(b"1".to_vec()), Some(b"1".to_vec())));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Blind writes (no reads) never conflict: both commit, last one wins.
        let calls = Arc::new(AtomicU32::new(0));
        store
            .transact(|tx| {
                let (store, a, calls) = (store.clone(), a.clone(), Arc::clone(&calls));
                Box::pin(async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tx.set(&a, b"outer");
                    store.set(&a, b"inner").await?;
                    Ok(())
                })
            })
            .await
            .expect("blind");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(store.get(&a).await.expect("get"), Some(b"outer".to_vec()));
    }

    pub async fn abort_and_limits(store: &Store) {
        let ns = namespace(store, "abort").await;
        let k = ns.join(&("k",));
        let err = store
            .transact(|tx| {
                let k = k.clone();
                Box::pin(async move {
                    tx.set(&k, b"x");
                    Err::<(), _>(StoreError::abort("VMID 100 already exists"))
                })
            })
            .await
            .expect_err("aborted");
        assert!(matches!(err, StoreError::Aborted(_)), "{err:?}");
        assert_eq!(
            store.get(&k).await.expect("get"),
            None,
            "aborted writes are discarded"
        );
        let big = vec![0u8; gpve_store::MAX_VALUE_BYTES + 1];
        let err = store.set(&k, &big).await.expect_err("too large");
        assert!(matches!(err, StoreError::ValueTooLarge { .. }), "{err:?}");
        let huge_key = Key::from_bytes(vec![b'k'; gpve_store::MAX_KEY_BYTES + 1]);
        let err = store.set(&huge_key, b"v").await.expect_err("key too large");
        assert!(matches!(err, StoreError::KeyTooLarge { .. }), "{err:?}");
        assert_eq!(store.get(&k).await.expect("get"), None);
    }
}

/// One `#[tokio::test]` per named case of [`contract`], each on a fresh harness from
/// `$make` (an `Option` of something with a `store` field; `None` skips).
#[macro_export]
macro_rules! contract_cases {
    ($make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let Some(h) = $make else { return };
                $crate::contract_suite::contract::$name(&h.store).await;
            }
        )*
    };
}

/// Every case, for backends that read from snapshots.
#[macro_export]
macro_rules! contract_suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;
            $crate::contract_cases!($make;
                get_set_clear,
                ordered_range_limit_reverse,
                prefix_scans_of_subspaces,
                read_your_writes,
                clear_range,
                counter_under_50_concurrent_tasks,
                create_json_has_one_winner,
                update_json_changes_only_what_exists,
                conflict_is_retried,
                snapshot_reads_and_blind_writes,
                abort_and_limits,
            );
        }
    };
}
