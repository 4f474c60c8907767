//! The object-safe backend traits every store implements.

use async_trait::async_trait;

use crate::error::StoreError;
use crate::occ::{ReadSet, WriteSet};

/// A transactional ordered key-value store. Keys and values are bytes; keys compare
/// lexicographically.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Short name for logs and test output ("redb", "simulated", "fdb").
    fn name(&self) -> &'static str;
    /// Starts a transaction. Cheap: backends take their read snapshot lazily.
    async fn begin(&self) -> Result<Box<dyn BackendTxn>, StoreError>;
    /// Validates a read set observed elsewhere (a remote client's transaction) against the
    /// latest state by value and, if it still holds, applies `writes` atomically;
    /// [`StoreError::Conflict`] otherwise. Backends that cannot serve remote clients refuse.
    async fn commit_checked(&self, reads: ReadSet, writes: WriteSet) -> Result<(), StoreError> {
        let _ = (reads, writes);
        Err(StoreError::Unsupported {
            backend: self.name(),
            what: "validating a remote transaction",
        })
    }
}

/// One optimistic transaction: reads see a consistent snapshot plus this transaction's own
/// writes; writes are buffered until [`BackendTxn::commit`], which fails with
/// [`StoreError::Conflict`] if anything read changed in between.
#[async_trait]
pub trait BackendTxn: Send {
    /// Reads one key.
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Reads `[begin, end)` in key order (descending if `reverse`), at most `limit` pairs.
    async fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError>;
    /// Buffers a write.
    fn set(&mut self, key: &[u8], value: &[u8]);
    /// Buffers a delete.
    fn clear(&mut self, key: &[u8]);
    /// Buffers a delete of every key in `[begin, end)`; `begin <= end` is checked by the caller.
    fn clear_range(&mut self, begin: &[u8], end: &[u8]);
    /// Validates and applies the buffered writes atomically.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}
