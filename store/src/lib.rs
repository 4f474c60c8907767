//! Transactional ordered key-value store for gpve (issue 2).
//!
//! One object-safe trait ([`Backend`]/[`BackendTxn`]) with four implementations:
//! - [`Store::open_redb`]: embedded, durable (fsync before every acknowledgement), the default;
//! - [`Store::simulated`]: in memory, deterministic, with injected faults ([`SimControl`]);
//! - `Store::open_fdb` (cargo feature `fdb`): FoundationDB;
//! - [`Store::remote`]: another process's store over a wire ([`remote`]; agents reach the
//!   server's store this way), validated and applied there by [`Store::commit_checked`].
//!
//! Keys are FoundationDB tuples ([`Key::pack`]) so every backend shares one key layout.
//! All work goes through [`Store::transact`], which runs a body in a serializable transaction
//! and retries it on conflicts and other retryable errors, with bounded attempts and backoff.
//! [`Store::subscribe`] delivers every committed write set to subscribers ([`feed`]).
//!
//! ```no_run
//! # async fn demo(store: gpve_store::Store) -> Result<(), gpve_store::StoreError> {
//! use gpve_store::Key;
//! let counter = Key::pack(&("counters", "vmid"));
//! let next: u64 = store
//!     .transact(|tx| {
//!         let counter = counter.clone();
//!         Box::pin(async move {
//!             let n = tx.get_json::<u64>(&counter).await?.unwrap_or(100) + 1;
//!             tx.put_json(&counter, &n)?;
//!             Ok(n)
//!         })
//!     })
//!     .await?;
//! # let _ = next; Ok(()) }
//! ```

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Serialize, de::DeserializeOwned};

mod backend;
mod error;
#[cfg(feature = "fdb")]
pub mod fdb;
pub mod feed;
mod key;
mod occ;
pub mod redb;
pub mod remote;
pub mod simulated;
mod txn;

pub use backend::{Backend, BackendTxn};
pub use error::StoreError;
pub use feed::{Commit, FEED_CAPACITY_COMMITS, FEED_LOCK_STRIPES, FeedEvent, Subscription};
pub use key::{Key, KeyError, KeyRange, MAX_KEY_BYTES, MAX_VALUE_BYTES, TuplePack, TupleUnpack};
pub use occ::{ReadRecord, ReadSet, Rows, WriteSet};
pub use simulated::{SimControl, SimFaults, SimStats, UnknownResultMode};
pub use txn::{RangeOptions, Txn};

/// The sleep seam: the store never reads the clock itself, so a simulation can substitute
/// virtual time. The default is `tokio::time::sleep`.
pub type SleepFn = Arc<dyn Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync>;

/// `tokio::time::sleep` as a [`SleepFn`].
pub fn tokio_sleep() -> SleepFn {
    Arc::new(|d| Box::pin(tokio::time::sleep(d)))
}

/// Bounds of the retry loop in [`Store::transact`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts including the first; at least 1.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles per attempt.
    pub initial_backoff_ms: u64,
    /// Cap of the backoff.
    pub max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    /// 50 attempts with backoff capped at 1, 2, 4 .. 100 ms (under 4.5 s of waiting in all).
    /// FoundationDB retries without limit by default; a bound this loose only fails a
    /// transaction that lost dozens of races on a hot key, which then surfaces as an error
    /// instead of hanging a request.
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 50,
            initial_backoff_ms: 1,
            max_backoff_ms: 100,
        }
    }
}

impl RetryPolicy {
    /// Upper bound of the backoff after failed attempt number `attempt` (1-based); the store
    /// sleeps a uniformly jittered duration in `[0, bound]` ("full jitter", which spreads
    /// retries of transactions that conflicted together the most).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(20);
        let ms = self.initial_backoff_ms.saturating_mul(1u64 << shift);
        Duration::from_millis(ms.min(self.max_backoff_ms))
    }
}

/// Handle to a store; cheap to clone, shareable across tasks.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    retry: RetryPolicy,
    sleep: SleepFn,
    /// State of the backoff jitter generator (splitmix64), shared by clones. Jitter keeps
    /// transactions that conflicted together from retrying in lockstep; it comes from a seed
    /// rather than the OS so a simulation replays exactly.
    jitter: Arc<AtomicU64>,
    /// Committed writes for subscribers, shared by clones ([`feed`]).
    feed: Arc<feed::ChangeFeed>,
}

/// Seed of the backoff jitter unless [`Store::with_jitter_seed`] sets one.
const DEFAULT_JITTER_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

fn splitmix64(state: &AtomicU64) -> u64 {
    let mut z = state
        .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend.name())
            .field("retry", &self.retry)
            .finish()
    }
}

impl Store {
    /// Wraps any backend.
    pub fn from_backend(backend: Arc<dyn Backend>) -> Store {
        Store {
            backend,
            retry: RetryPolicy::default(),
            sleep: tokio_sleep(),
            jitter: Arc::new(AtomicU64::new(DEFAULT_JITTER_SEED)),
            feed: Arc::new(feed::ChangeFeed::default()),
        }
    }

    /// Opens (or creates) the embedded redb store at `path`. Every commit is durable when
    /// [`Store::transact`] returns.
    pub fn open_redb(path: &Path) -> Result<Store, StoreError> {
        Ok(Store::from_backend(Arc::new(redb::RedbBackend::open(
            path,
        )?)))
    }

    /// An in-memory store with injected faults, controlled through the returned [`SimControl`].
    /// Its retry backoff sleeps through the fault configuration's sleep seam.
    pub fn simulated(faults: SimFaults) -> (Store, SimControl) {
        let sleep = faults.sleep.clone();
        let seed = faults.seed;
        let (backend, control) = simulated::SimBackend::new(faults);
        let mut store = Store::from_backend(Arc::new(backend)).with_jitter_seed(seed);
        if let Some(sleep) = sleep {
            store.sleep = sleep;
        }
        (store, control)
    }

    /// Connects to FoundationDB through `cluster_file` (default: the client's default file).
    #[cfg(feature = "fdb")]
    pub fn open_fdb(cluster_file: Option<&Path>) -> Result<Store, StoreError> {
        Ok(Store::from_backend(Arc::new(fdb::FdbBackend::open(
            cluster_file,
        )?)))
    }

    /// A store in another process, reached through `wire` (see [`remote`]).
    pub fn remote(wire: Arc<dyn remote::RemoteWire>) -> Store {
        Store::from_backend(Arc::new(remote::RemoteBackend::new(wire)))
    }

    /// Validates a transaction that a remote client ran (its read set, by value) against
    /// the latest state and applies its writes atomically, or fails with
    /// [`StoreError::Conflict`]. One attempt: the client retries its whole body.
    pub async fn commit_checked(&self, reads: ReadSet, writes: WriteSet) -> Result<(), StoreError> {
        let Some(publishing) = self.feed.begin(&writes).await else {
            return self.backend.commit_checked(reads, writes).await;
        };
        let result = self.backend.commit_checked(reads, writes.clone()).await;
        publishing.finish(result, writes)
    }

    /// Turns the change feed on before anyone subscribes, so that no transaction begun
    /// before the first subscription escapes it (a server calls this when it opens its
    /// store; the feed is otherwise turned on by the first subscription).
    pub fn enable_feed(&self) {
        self.feed.enable();
    }

    /// Subscribes to the change feed: every transaction that writes and commits through
    /// this store (any clone) after this call is delivered, in commit order (see [`feed`]).
    pub async fn subscribe(&self) -> Subscription {
        let _order = self.feed.lock_for_subscribe().await;
        self.feed.receiver()
    }

    /// Subscribes and runs the read-only body `read` at exactly the feed position of the
    /// subscription: the result reflects every commit before the first one delivered, and
    /// none after (no commit publishes while it runs). Writes of `read` are discarded.
    pub async fn subscribe_with<T, F>(&self, mut read: F) -> Result<(T, Subscription), StoreError>
    where
        T: Send,
        F: for<'t> FnMut(&'t mut Txn) -> BoxFuture<'t, Result<T, StoreError>> + Send,
    {
        let _order = self.feed.lock_for_subscribe().await;
        let sub = self.feed.receiver();
        let mut txn = Txn::new(self.backend.begin().await?, false);
        let value = read(&mut txn).await?;
        Ok((value, sub))
    }

    /// Reads the latest value of a raw key in one read-only transaction (for serving remote
    /// reads).
    pub async fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let mut txn = self.backend.begin().await?;
        txn.get(key).await
    }

    /// Reads the latest pairs of a raw range in one read-only transaction (for serving
    /// remote reads).
    pub async fn get_range_raw(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<Rows, StoreError> {
        if begin >= end || limit == Some(0) {
            return Ok(Vec::new());
        }
        let mut txn = self.backend.begin().await?;
        txn.get_range(begin, end, limit, reverse).await
    }

    /// Replaces the retry bounds.
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Store {
        self.retry = retry;
        self
    }

    /// Replaces the sleep used for retry backoff.
    pub fn with_sleep(mut self, sleep: SleepFn) -> Store {
        self.sleep = sleep;
        self
    }

    /// Reseeds the backoff jitter (the simulated store uses its fault seed).
    pub fn with_jitter_seed(mut self, seed: u64) -> Store {
        self.jitter = Arc::new(AtomicU64::new(seed));
        self
    }

    /// The backoff before the attempt after `attempt`: uniform in `[0, cap]`.
    fn jittered_backoff(&self, attempt: u32) -> Duration {
        let cap_us = u64::try_from(self.retry.backoff(attempt).as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(splitmix64(&self.jitter) % cap_us.saturating_add(1))
    }

    /// Name of the backend ("redb", "simulated", "fdb").
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Runs `f` in a serializable transaction and commits its writes if it returns `Ok`.
    ///
    /// Retries (at most [`RetryPolicy::max_attempts`] attempts, exponential backoff) when the
    /// commit conflicts, when its outcome is unknown, or on any other retryable error; each
    /// retry calls `f` again on a fresh transaction. Because an unknown-outcome commit may have
    /// applied, `f` must be idempotent (FoundationDB's rule).
    ///
    /// The future may borrow only the transaction: move owned copies of what it needs into it
    /// (e.g. `let key = key.clone(); Box::pin(async move { .. })`), which also suits a body
    /// that runs once per attempt. `T` is therefore in practice `'static`. An `Err` from `f` that is not
    /// retryable aborts the transaction (writes discarded) and is returned as is.
    pub async fn transact<T, F>(&self, mut f: F) -> Result<T, StoreError>
    where
        T: Send,
        F: for<'t> FnMut(&'t mut Txn) -> BoxFuture<'t, Result<T, StoreError>> + Send,
    {
        let max_attempts = self.retry.max_attempts.max(1);
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let err = match self.attempt(&mut f).await {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            if !err.is_retryable() {
                return Err(err);
            }
            if attempt >= max_attempts {
                return Err(StoreError::RetriesExhausted {
                    attempts: attempt,
                    last: Box::new(err),
                });
            }
            tracing::debug!(backend = self.backend.name(), attempt, error = %err, "retrying transaction");
            (self.sleep)(self.jittered_backoff(attempt)).await;
        }
    }

    async fn attempt<T, F>(&self, f: &mut F) -> Result<T, StoreError>
    where
        T: Send,
        F: for<'t> FnMut(&'t mut Txn) -> BoxFuture<'t, Result<T, StoreError>> + Send,
    {
        let mut txn = Txn::new(self.backend.begin().await?, self.feed.is_active());
        let value = f(&mut txn).await?;
        txn.commit(&self.feed).await?;
        Ok(value)
    }

    /// Reads one key (one transaction).
    pub async fn get(&self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        self.transact(|tx| {
            let key = key.clone();
            Box::pin(async move { tx.get(&key).await })
        })
        .await
    }

    /// Writes one key (one transaction).
    pub async fn set(&self, key: &Key, value: &[u8]) -> Result<(), StoreError> {
        self.transact(|tx| {
            tx.set(key, value);
            Box::pin(async { Ok(()) })
        })
        .await
    }

    /// Reads and decodes one JSON value (one transaction).
    pub async fn get_json<T: DeserializeOwned + Send + 'static>(
        &self,
        key: &Key,
    ) -> Result<Option<T>, StoreError> {
        self.transact(|tx| {
            let key = key.clone();
            Box::pin(async move { tx.get_json(&key).await })
        })
        .await
    }

    /// Encodes and writes one JSON value (one transaction).
    pub async fn put_json<T: Serialize + Sync + ?Sized>(
        &self,
        key: &Key,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Codec {
            key: key.clone(),
            source,
        })?;
        self.set(key, &bytes).await
    }

    /// Writes one JSON value unless `key` already holds something (one transaction);
    /// returns whether it wrote. The check and the write commit together, so of two
    /// racing creates exactly one wins.
    pub async fn create_json<T: Serialize + Sync + ?Sized>(
        &self,
        key: &Key,
        value: &T,
    ) -> Result<bool, StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Codec {
            key: key.clone(),
            source,
        })?;
        self.transact(|tx| {
            let (key, bytes) = (key.clone(), bytes.clone());
            Box::pin(async move {
                if tx.get(&key).await?.is_some() {
                    return Ok(false);
                }
                tx.set(&key, &bytes);
                Ok(true)
            })
        })
        .await
    }

    /// Reads the JSON value at `key`, changes it with `change` and writes it back (one
    /// transaction; `change` runs again if the transaction retries); returns whether there
    /// was a value to change.
    pub async fn update_json<T, F>(&self, key: &Key, change: F) -> Result<bool, StoreError>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(&mut T) + Clone + Send + Sync + 'static,
    {
        self.transact(|tx| {
            let (key, change) = (key.clone(), change.clone());
            Box::pin(async move {
                let Some(mut value) = tx.get_json::<T>(&key).await? else {
                    return Ok(false);
                };
                change(&mut value);
                tx.put_json(&key, &value)?;
                Ok(true)
            })
        })
        .await
    }

    /// Deletes one key (one transaction).
    pub async fn delete(&self, key: &Key) -> Result<(), StoreError> {
        self.transact(|tx| {
            tx.clear(key);
            Box::pin(async { Ok(()) })
        })
        .await
    }

    /// Reads and decodes every JSON value in the subspace `prefix`, ordered by key
    /// (one transaction, so one consistent snapshot).
    pub async fn list_json<T: DeserializeOwned + Send + 'static>(
        &self,
        prefix: &Key,
    ) -> Result<Vec<(Key, T)>, StoreError> {
        self.transact(|tx| {
            let prefix = prefix.clone();
            Box::pin(async move { tx.list_json(&prefix, RangeOptions::all()).await })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn handles_and_errors_cross_threads() {
        assert_send_sync::<Store>();
        assert_send_sync::<StoreError>();
        assert_send_sync::<SimControl>();
    }

    #[test]
    fn jittered_backoff_stays_within_bounds_and_replays() {
        let (a, _) = Store::simulated(SimFaults {
            seed: 42,
            ..SimFaults::default()
        });
        let (b, _) = Store::simulated(SimFaults {
            seed: 42,
            ..SimFaults::default()
        });
        for attempt in 1..30 {
            let cap = a.retry.backoff(attempt);
            let d = a.jittered_backoff(attempt);
            assert!(d <= cap, "{d:?} above {cap:?}");
            assert_eq!(d, b.jittered_backoff(attempt), "same seed, same jitter");
        }
        assert_eq!(a.retry.backoff(30), Duration::from_millis(100), "capped");
    }
}
