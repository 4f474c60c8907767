//! Fault injection of the simulated store: injected commit failures, unknown results (applied
//! or not) with idempotent and non-idempotent bodies, seeded determinism and the sleep seam.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpve_store::{
    Key, RetryPolicy, SimControl, SimFaults, SimStats, SleepFn, Store, StoreError,
    UnknownResultMode,
};

/// A sleep that returns at once and records what was asked, so tests never wait on the clock.
fn recording_sleep() -> (SleepFn, Arc<Mutex<Vec<Duration>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    let sleep: SleepFn = Arc::new(move |d| {
        sink.lock().expect("sleep log").push(d);
        Box::pin(async {})
    });
    (sleep, log)
}

fn store_with(faults: SimFaults) -> (Store, SimControl, Arc<Mutex<Vec<Duration>>>) {
    let (sleep, log) = recording_sleep();
    let (store, control) = Store::simulated(SimFaults {
        sleep: Some(sleep),
        ..faults
    });
    (store, control, log)
}

/// Increments a counter once per request id: re-running it after an applied commit is a no-op.
async fn idempotent_increment(store: &Store, request: &str) -> Result<(), StoreError> {
    let counter = Key::pack(&("counter",));
    let marker = Key::pack(&("applied", request));
    store
        .transact(|tx| {
            let (counter, marker) = (counter.clone(), marker.clone());
            Box::pin(async move {
                if tx.get(&marker).await?.is_some() {
                    return Ok(());
                }
                let n: u64 = tx.get_json(&counter).await?.unwrap_or(0);
                tx.put_json(&counter, &(n + 1))?;
                tx.set(&marker, b"");
                Ok(())
            })
        })
        .await
}

async fn naive_increment(store: &Store) -> Result<(), StoreError> {
    let counter = Key::pack(&("counter",));
    store
        .transact(|tx| {
            let counter = counter.clone();
            Box::pin(async move {
                let n: u64 = tx.get_json(&counter).await?.unwrap_or(0);
                tx.put_json(&counter, &(n + 1))?;
                Ok(())
            })
        })
        .await
}

async fn counter(store: &Store) -> u64 {
    store
        .get_json(&Key::pack(&("counter",)))
        .await
        .expect("read counter")
        .unwrap_or(0)
}

#[tokio::test]
async fn injected_failures_are_retried_then_commit() {
    let (store, control, backoffs) = store_with(SimFaults {
        fail_next_commits: 2,
        ..SimFaults::default()
    });
    naive_increment(&store)
        .await
        .expect("commits on the third attempt");
    assert_eq!(counter(&store).await, 1);
    let stats = control.stats();
    assert_eq!(stats.injected_failures, 2);
    assert_eq!(stats.commits_applied, 1);
    // Backoff went through the sleep seam, jittered below caps of 1 ms then 2 ms.
    let log = backoffs.lock().expect("log").clone();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log[0] <= Duration::from_millis(1) && log[1] <= Duration::from_millis(2));
}

#[tokio::test]
async fn persistent_failure_surfaces_after_bounded_retries() {
    let (store, control, _) = store_with(SimFaults::default());
    let store = store.with_retry_policy(RetryPolicy {
        max_attempts: 3,
        ..RetryPolicy::default()
    });
    control.fail_next_commits(1000);
    let err = naive_increment(&store).await.expect_err("never commits");
    match &err {
        StoreError::RetriesExhausted { attempts, last } => {
            assert_eq!(*attempts, 3);
            assert!(matches!(**last, StoreError::Simulated(_)), "{last:?}");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(control.stats().injected_failures, 3);
    control.heal();
    assert_eq!(counter(&store).await, 0, "nothing applied");
}

#[tokio::test]
async fn unknown_result_applied_is_safe_with_an_idempotent_body() {
    let (store, control, _) = store_with(SimFaults::default());
    control.unknown_next_commits(1, UnknownResultMode::Applied);
    idempotent_increment(&store, "req-1")
        .await
        .expect("retried");
    assert_eq!(control.stats().unknown_applied, 1);
    assert_eq!(counter(&store).await, 1, "applied exactly once");

    // The hazard the idempotence rule exists for: a naive body applies twice.
    control.unknown_next_commits(1, UnknownResultMode::Applied);
    naive_increment(&store).await.expect("retried");
    assert_eq!(
        counter(&store).await,
        3,
        "the naive increment applied twice"
    );
}

#[tokio::test]
async fn unknown_result_not_applied_is_retried_and_applies_once() {
    let (store, control, _) = store_with(SimFaults::default());
    control.unknown_next_commits(2, UnknownResultMode::NotApplied);
    idempotent_increment(&store, "req-1")
        .await
        .expect("retried");
    assert_eq!(control.stats().unknown_not_applied, 2);
    assert_eq!(counter(&store).await, 1);
}

#[tokio::test]
async fn unknown_results_exhausting_retries_report_maybe_committed() {
    let (store, control, _) = store_with(SimFaults::default());
    let store = store.with_retry_policy(RetryPolicy {
        max_attempts: 2,
        ..RetryPolicy::default()
    });
    control.unknown_next_commits(5, UnknownResultMode::NotApplied);
    let err = idempotent_increment(&store, "req-1")
        .await
        .expect_err("unknown");
    assert!(err.is_maybe_committed(), "{err:?}");
}

/// Runs 200 idempotent increments under random failures and unknown results.
async fn chaotic_run(seed: u64) -> (SimStats, u64, Vec<bool>) {
    let (store, control, _) = store_with(SimFaults {
        seed,
        commit_failure_probability: 0.2,
        unknown_result_probability: 0.2,
        unknown_result_mode: UnknownResultMode::Random,
        ..SimFaults::default()
    });
    let store = store.with_retry_policy(RetryPolicy {
        max_attempts: 4,
        ..RetryPolicy::default()
    });
    let mut outcomes = Vec::new();
    let mut acknowledged = 0;
    for i in 0..200 {
        let ok = idempotent_increment(&store, &format!("req-{i}"))
            .await
            .is_ok();
        acknowledged += u64::from(ok);
        outcomes.push(ok);
    }
    control.heal();
    let n = counter(&store).await;
    // Every acknowledged increment is in; unacknowledged ones may or may not be.
    assert!(
        n >= acknowledged && n <= 200,
        "counter {n}, acknowledged {acknowledged}"
    );
    (control.stats(), n, outcomes)
}

#[tokio::test]
async fn faults_are_deterministic_for_a_seed() {
    let a = chaotic_run(7).await;
    let b = chaotic_run(7).await;
    assert_eq!(a, b, "same seed, same faults and outcomes");
    assert!(a.0.injected_failures > 0 && a.0.unknown_applied > 0 && a.0.unknown_not_applied > 0);
    let c = chaotic_run(8).await;
    assert_ne!(a.0, c.0, "another seed draws other faults");
}

#[tokio::test]
async fn latency_goes_through_the_sleep_seam() {
    let (store, control, sleeps) = store_with(SimFaults {
        read_latency_ms: 3,
        commit_latency_ms: 7,
        ..SimFaults::default()
    });
    naive_increment(&store).await.expect("commit");
    let log = sleeps.lock().expect("log").clone();
    // One read, one commit.
    assert_eq!(log, [Duration::from_millis(3), Duration::from_millis(7)]);
    control.set_latency(0, 0);
    naive_increment(&store).await.expect("commit");
    assert_eq!(sleeps.lock().expect("log").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contended_counter_conflicts_and_stays_exact() {
    let (store, control, _) = store_with(SimFaults {
        commit_failure_probability: 0.1,
        seed: 3,
        ..SimFaults::default()
    });
    let store = store.with_retry_policy(RetryPolicy {
        max_attempts: 500,
        ..RetryPolicy::default()
    });
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .transact(|tx| {
                        Box::pin(async move {
                            let k = Key::pack(&("counter",));
                            let n: u64 = tx.get_json(&k).await?.unwrap_or(0);
                            tokio::task::yield_now().await;
                            tx.put_json(&k, &(n + 1))?;
                            Ok(())
                        })
                    })
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("increment");
    }
    assert_eq!(counter(&store).await, 50);
    let stats = control.stats();
    assert!(stats.conflicts > 0, "the tasks really contended: {stats:?}");
    assert_eq!(stats.commits_applied, 50, "{stats:?}");
}

#[tokio::test]
async fn old_versions_are_reclaimed() {
    let (store, control, _) = store_with(SimFaults::default());
    let k = Key::pack(&("k",));
    for i in 0u32..100 {
        store.put_json(&k, &i).await.expect("put");
    }
    assert_eq!(
        control.stored_versions(),
        1,
        "no open snapshot needs old versions"
    );
    store.delete(&k).await.expect("delete");
    assert!(control.dump().is_empty());
    assert_eq!(
        control.stored_versions(),
        0,
        "the tombstone is reclaimed too"
    );
}
