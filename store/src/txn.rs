//! The transaction handle given to [`crate::Store::transact`] bodies.

use serde::{Serialize, de::DeserializeOwned};

use crate::backend::BackendTxn;
use crate::error::StoreError;
use crate::feed::ChangeFeed;
use crate::key::{Key, KeyRange, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::occ::WriteSet;

/// Options of a range read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeOptions {
    /// At most this many pairs (`None`: all).
    pub limit: Option<usize>,
    /// Descending key order.
    pub reverse: bool,
}

impl RangeOptions {
    /// All pairs, ascending.
    pub fn all() -> RangeOptions {
        RangeOptions::default()
    }

    /// At most `limit` pairs, ascending.
    pub fn limit(limit: usize) -> RangeOptions {
        RangeOptions {
            limit: Some(limit),
            reverse: false,
        }
    }

    /// The same options in descending order.
    pub fn reversed(self) -> RangeOptions {
        RangeOptions {
            reverse: true,
            ..self
        }
    }
}

/// A serializable transaction. Reads see one consistent snapshot plus this transaction's own
/// writes (read-your-writes); writes are buffered and applied atomically when the body returns
/// `Ok`. A body runs once per attempt, so it must be idempotent: after
/// [`StoreError::CommitUnknownResult`] it runs again although the previous attempt may have
/// applied (check-then-write on a marker key makes any body idempotent).
pub struct Txn {
    inner: Box<dyn BackendTxn>,
    /// Size-limit and range violations are reported when the body finishes, because `set`,
    /// `clear` and `clear_range` are infallible buffered operations (as in FoundationDB).
    deferred: Option<StoreError>,
    /// A copy of the buffered writes for the change feed; `None` while the feed is off.
    recorded: Option<WriteSet>,
}

impl Txn {
    /// A transaction over `inner`; `record` keeps a copy of its writes for the change feed.
    pub(crate) fn new(inner: Box<dyn BackendTxn>, record: bool) -> Txn {
        Txn {
            inner,
            deferred: None,
            recorded: record.then(WriteSet::default),
        }
    }

    /// Commits, then publishes the writes on `feed` (in commit order, see [`crate::feed`]).
    pub(crate) async fn commit(self, feed: &ChangeFeed) -> Result<(), StoreError> {
        let Txn {
            inner,
            deferred,
            recorded,
        } = self;
        if let Some(err) = deferred {
            return Err(err);
        }
        let Some(writes) = recorded else {
            return inner.commit().await;
        };
        let Some(publishing) = feed.begin(&writes).await else {
            return inner.commit().await;
        };
        let result = inner.commit().await;
        publishing.finish(result, writes)
    }

    fn defer(&mut self, err: StoreError) {
        if self.deferred.is_none() {
            self.deferred = Some(err);
        }
    }

    fn key_ok(&mut self, key: &Key) -> bool {
        if key.as_bytes().len() > MAX_KEY_BYTES {
            self.defer(StoreError::KeyTooLarge {
                size_bytes: key.as_bytes().len(),
                max_bytes: MAX_KEY_BYTES,
            });
            return false;
        }
        true
    }

    /// Reads one key.
    pub async fn get(&mut self, key: &Key) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key.as_bytes()).await
    }

    /// Reads the pairs in `range`, ordered by key.
    pub async fn get_range(
        &mut self,
        range: &KeyRange,
        opts: RangeOptions,
    ) -> Result<Vec<(Key, Vec<u8>)>, StoreError> {
        if range.begin >= range.end || opts.limit == Some(0) {
            return Ok(Vec::new());
        }
        let rows = self
            .inner
            .get_range(
                range.begin.as_bytes(),
                range.end.as_bytes(),
                opts.limit,
                opts.reverse,
            )
            .await?;
        Ok(rows.into_iter().map(|(k, v)| (Key::from(k), v)).collect())
    }

    /// Reads the pairs in the subspace `prefix` (see [`Key::subspace_range`]).
    pub async fn get_prefix(
        &mut self,
        prefix: &Key,
        opts: RangeOptions,
    ) -> Result<Vec<(Key, Vec<u8>)>, StoreError> {
        self.get_range(&prefix.subspace_range(), opts).await
    }

    /// Buffers a write.
    pub fn set(&mut self, key: &Key, value: &[u8]) {
        if !self.key_ok(key) {
            return;
        }
        if value.len() > MAX_VALUE_BYTES {
            self.defer(StoreError::ValueTooLarge {
                key: key.clone(),
                size_bytes: value.len(),
                max_bytes: MAX_VALUE_BYTES,
            });
            return;
        }
        if let Some(w) = &mut self.recorded {
            w.points
                .insert(key.as_bytes().to_vec(), Some(value.to_vec()));
        }
        self.inner.set(key.as_bytes(), value);
    }

    /// Buffers a delete.
    pub fn clear(&mut self, key: &Key) {
        if self.key_ok(key) {
            if let Some(w) = &mut self.recorded {
                w.points.insert(key.as_bytes().to_vec(), None);
            }
            self.inner.clear(key.as_bytes());
        }
    }

    /// Buffers a delete of every key in `range`.
    pub fn clear_range(&mut self, range: &KeyRange) {
        if range.begin > range.end {
            self.defer(StoreError::InvertedRange {
                begin: range.begin.clone(),
                end: range.end.clone(),
            });
            return;
        }
        if range.begin < range.end {
            if let Some(w) = &mut self.recorded {
                let (b, e) = (range.begin.as_bytes(), range.end.as_bytes());
                // Earlier point writes inside the range are undone by it.
                w.points
                    .retain(|k, _| !(b <= k.as_slice() && k.as_slice() < e));
                w.cleared.push((b.to_vec(), e.to_vec()));
            }
            self.inner
                .clear_range(range.begin.as_bytes(), range.end.as_bytes());
        }
    }

    /// Buffers a delete of the whole subspace `prefix`.
    pub fn clear_prefix(&mut self, prefix: &Key) {
        self.clear_range(&prefix.subspace_range());
    }

    /// Reads and decodes a JSON value.
    pub async fn get_json<T: DeserializeOwned>(
        &mut self,
        key: &Key,
    ) -> Result<Option<T>, StoreError> {
        match self.get(key).await? {
            None => Ok(None),
            Some(bytes) => decode(key, &bytes).map(Some),
        }
    }

    /// Encodes and buffers a JSON value.
    pub fn put_json<T: Serialize + ?Sized>(
        &mut self,
        key: &Key,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Codec {
            key: key.clone(),
            source,
        })?;
        self.set(key, &bytes);
        Ok(())
    }

    /// Reads and decodes every JSON value in the subspace `prefix`, ordered by key.
    pub async fn list_json<T: DeserializeOwned>(
        &mut self,
        prefix: &Key,
        opts: RangeOptions,
    ) -> Result<Vec<(Key, T)>, StoreError> {
        let rows = self.get_prefix(prefix, opts).await?;
        rows.into_iter()
            .map(|(k, v)| {
                let value = decode(&k, &v)?;
                Ok((k, value))
            })
            .collect()
    }
}

fn decode<T: DeserializeOwned>(key: &Key, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Codec {
        key: key.clone(),
        source,
    })
}
