//! A backend whose data lives in another process's store (an agent reaching the server's
//! store over the network). The wire is a trait ([`RemoteWire`]); `gpve-transport`
//! implements it over gRPC.
//!
//! Transactions run the same optimistic protocol as the embedded backends (`occ.rs`), but
//! the remote engine has no snapshots: each read returns the server's latest value. Every
//! read is therefore recorded and validated by value at commit, read-only transactions
//! included ([`crate::Store::commit_checked`] on the server), so a transaction that commits
//! saw one consistent state: the state at its commit point. Two reads may observe
//! different moments while the body runs; the commit then fails with
//! [`StoreError::Conflict`] and [`crate::Store::transact`] runs the body again. The one
//! exception is a read-only transaction of a single read (one key or one range chunk): that
//! read is one server snapshot already, so it commits without the validation round trip.
//!
//! Failures: a read that cannot reach the server is [`RemoteStoreError::Unreachable`]
//! (retryable); a commit whose request may have reached the server but whose answer was lost
//! is [`StoreError::CommitUnknownResult`] (retryable, the body must be idempotent), never a
//! silent loss.

use std::sync::Arc;

use async_trait::async_trait;

use crate::backend::{Backend, BackendTxn};
use crate::error::StoreError;
use crate::occ::{OccEngine, OccTxn, ReadSet, Rows, WriteSet};

/// Failures of the remote backend's wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteStoreError {
    /// The server could not be reached or did not answer; nothing was applied.
    #[error("the store server is unreachable: {0}")]
    Unreachable(String),
    /// The server answered with an error that retrying will not fix.
    #[error("the store server refused the request: {0}")]
    Refused(String),
}

impl RemoteStoreError {
    /// An unreachable server may come back; a refusal stays.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RemoteStoreError::Unreachable(_))
    }
}

/// How the remote backend talks to the server's store.
#[async_trait]
pub trait RemoteWire: Send + Sync + 'static {
    /// The latest value of `key`.
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// The latest pairs in `[begin, end)`, at most `limit`, descending if `reverse`.
    async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<Rows, StoreError>;
    /// Validate `reads` and apply `writes` on the server ([`crate::Store::commit_checked`]).
    async fn commit(&self, reads: ReadSet, writes: WriteSet) -> Result<(), StoreError>;
}

struct RemoteEngine {
    wire: Arc<dyn RemoteWire>,
}

#[async_trait]
impl OccEngine for RemoteEngine {
    type Snapshot = ();
    const SNAPSHOT_READS: bool = false;

    async fn snapshot(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn snapshot_get(&self, _snap: &(), key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.wire.get(key).await
    }

    async fn snapshot_range(
        &self,
        _snap: &(),
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<Rows, StoreError> {
        self.wire.get_range(begin, end, limit, reverse).await
    }

    async fn commit(&self, reads: ReadSet, writes: WriteSet) -> Result<(), StoreError> {
        if writes.is_empty() && reads.records.len() <= 1 {
            // One read is one server snapshot (the server answers a `Get` or `GetRange` from
            // one read transaction), so a read-only transaction that made one read already
            // saw one consistent state, at a moment inside its own run: validating it could
            // only confirm that. Skipping the round trip halves the cost of the single-key
            // reads every status call makes.
            return Ok(());
        }
        self.wire.commit(reads, writes).await
    }
}

/// The remote backend over a wire.
pub struct RemoteBackend {
    engine: Arc<RemoteEngine>,
}

impl RemoteBackend {
    /// A backend whose transactions go through `wire`.
    pub fn new(wire: Arc<dyn RemoteWire>) -> RemoteBackend {
        RemoteBackend {
            engine: Arc::new(RemoteEngine { wire }),
        }
    }
}

#[async_trait]
impl Backend for RemoteBackend {
    fn name(&self) -> &'static str {
        "remote"
    }

    async fn begin(&self) -> Result<Box<dyn BackendTxn>, StoreError> {
        Ok(Box::new(OccTxn::new(Arc::clone(&self.engine))))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::{Key, SimFaults, Store};

    /// A wire straight into another store, counting commits (the fake is the simulated
    /// store; the gRPC wire is tested in `gpve-transport`).
    struct CountingWire {
        server: Store,
        commits: AtomicU32,
    }

    #[async_trait]
    impl RemoteWire for CountingWire {
        async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.server.get_raw(key).await
        }
        async fn get_range(
            &self,
            begin: &[u8],
            end: &[u8],
            limit: Option<usize>,
            reverse: bool,
        ) -> Result<Rows, StoreError> {
            self.server.get_range_raw(begin, end, limit, reverse).await
        }
        async fn commit(&self, reads: ReadSet, writes: WriteSet) -> Result<(), StoreError> {
            self.commits.fetch_add(1, Ordering::SeqCst);
            self.server.commit_checked(reads, writes).await
        }
    }

    #[tokio::test]
    async fn a_single_read_commits_without_a_round_trip_and_two_reads_are_validated() {
        let (server, _control) = Store::simulated(SimFaults::default());
        let wire = Arc::new(CountingWire {
            server,
            commits: AtomicU32::new(0),
        });
        let store = Store::remote(wire.clone());
        let (a, b) = (Key::pack(&("t", "a")), Key::pack(&("t", "b")));
        store.set(&a, b"1").await.expect("set");
        assert_eq!(wire.commits.load(Ordering::SeqCst), 1, "a write commits");

        assert_eq!(store.get(&a).await.expect("get"), Some(b"1".to_vec()));
        let listed = store
            .list_json::<u32>(&Key::prefix(&("t",)))
            .await
            .expect("range");
        assert_eq!(listed.len(), 1);
        assert_eq!(
            wire.commits.load(Ordering::SeqCst),
            1,
            "one key read and one range read need no commit"
        );

        let (ra, rb) = store
            .transact(|tx| {
                let (a, b) = (a.clone(), b.clone());
                Box::pin(async move { Ok((tx.get(&a).await?, tx.get(&b).await?)) })
            })
            .await
            .expect("two reads");
        assert_eq!((ra, rb), (Some(b"1".to_vec()), None));
        assert_eq!(
            wire.commits.load(Ordering::SeqCst),
            2,
            "two reads are validated together"
        );
    }
}
