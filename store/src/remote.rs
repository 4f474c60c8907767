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
//! [`StoreError::Conflict`] and [`crate::Store::transact`] runs the body again.
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
