//! Optimistic concurrency control shared by the redb and simulated backends.
//!
//! A transaction reads from a consistent snapshot of its engine, records every value it
//! observed (the read set) and buffers its writes. At commit the engine, holding its single
//! writer, re-reads each recorded key and range at the latest version and compares: if all are
//! unchanged the transaction is equivalent to one that ran entirely at the commit point, so
//! applying the writes there is serializable; otherwise the commit fails with
//! [`StoreError::Conflict`] and [`crate::Store::transact`] retries. Value comparison (rather than
//! version numbers) needs no in-memory commit log and tolerates a write that restored the old
//! value, which does not break serializability. Read-only transactions commit without
//! validation when the engine reads from snapshots (a snapshot is already consistent); an
//! engine without snapshots (the remote backend, whose reads each see the server's latest
//! state) has its read-only transactions validated too.
//!
//! [`ReadSet`] and [`WriteSet`] are public so a server can validate and apply a transaction
//! that a remote client ran ([`crate::Store::commit_checked`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::backend::BackendTxn;
use crate::error::StoreError;

/// Key-value pairs in key order.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Snapshot reads and validated commits; implemented by each engine.
#[async_trait]
pub(crate) trait OccEngine: Send + Sync + 'static {
    type Snapshot: Send + Sync + 'static;
    /// Whether reads of one transaction see one snapshot; when not, read-only transactions
    /// are validated at commit as well.
    const SNAPSHOT_READS: bool = true;
    async fn snapshot(&self) -> Result<Self::Snapshot, StoreError>;
    async fn snapshot_get(
        &self,
        snap: &Self::Snapshot,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError>;
    async fn snapshot_range(
        &self,
        snap: &Self::Snapshot,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<Rows, StoreError>;
    /// Atomically: validate `reads` against the latest state, then apply `writes`.
    async fn commit(&self, reads: ReadSet, writes: WriteSet) -> Result<(), StoreError>;
}

/// What a transaction observed from the engine (not what its own writes supplied).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReadSet {
    pub records: Vec<ReadRecord>,
}

/// One observation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadRecord {
    /// A key and the value it had (`None`: absent).
    Key {
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    },
    /// Every pair in `[begin, end)` at read time, ascending.
    Range {
        begin: Vec<u8>,
        end: Vec<u8>,
        rows: Rows,
    },
}

impl ReadSet {
    /// Whether every recorded read returns the same now. `get` and `range` read the latest
    /// state inside the engine's write transaction.
    pub fn still_valid<E>(
        &self,
        mut get: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>, E>,
        mut range: impl FnMut(&[u8], &[u8]) -> Result<Rows, E>,
    ) -> Result<bool, E> {
        for record in &self.records {
            let same = match record {
                ReadRecord::Key { key, value } => get(key)? == *value,
                ReadRecord::Range { begin, end, rows } => range(begin, end)? == *rows,
            };
            if !same {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Buffered writes: ranges cleared, then point writes (`None` = delete) on top.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteSet {
    /// `[begin, end)` ranges to clear, applied first.
    pub cleared: Vec<(Vec<u8>, Vec<u8>)>,
    /// Keys to set (`Some`) or delete (`None`), applied after the clears.
    pub points: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl WriteSet {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.cleared.is_empty() && self.points.is_empty()
    }

    fn is_cleared(&self, key: &[u8]) -> bool {
        self.cleared
            .iter()
            .any(|(b, e)| b.as_slice() <= key && key < e.as_slice())
    }

    /// `Some(value)` if this transaction's own writes decide the key.
    fn lookup(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        if let Some(v) = self.points.get(key) {
            return Some(v.clone());
        }
        if self.is_cleared(key) {
            return Some(None);
        }
        None
    }

    fn set(&mut self, key: &[u8], value: Option<&[u8]>) {
        self.points.insert(key.to_vec(), value.map(<[u8]>::to_vec));
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        // Earlier point writes inside the range are overridden by the clear.
        let doomed: Vec<Vec<u8>> = self
            .points
            .range(begin.to_vec()..end.to_vec())
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.points.remove(&k);
        }
        self.cleared.push((begin.to_vec(), end.to_vec()));
    }
}

/// A transaction over an [`OccEngine`].
pub(crate) struct OccTxn<E: OccEngine> {
    engine: Arc<E>,
    snapshot: Option<E::Snapshot>,
    reads: ReadSet,
    writes: WriteSet,
}

impl<E: OccEngine> OccTxn<E> {
    pub(crate) fn new(engine: Arc<E>) -> OccTxn<E> {
        OccTxn {
            engine,
            snapshot: None,
            reads: ReadSet::default(),
            writes: WriteSet::default(),
        }
    }

    /// The snapshot is taken at the first read, so blind writes never open one.
    async fn snapshot(&mut self) -> Result<&E::Snapshot, StoreError> {
        if self.snapshot.is_none() {
            self.snapshot = Some(self.engine.snapshot().await?);
        }
        match &self.snapshot {
            Some(s) => Ok(s),
            None => unreachable!("snapshot was set just above"),
        }
    }
}

fn key_after(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.push(0);
    k
}

#[async_trait]
impl<E: OccEngine> BackendTxn for OccTxn<E> {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(own) = self.writes.lookup(key) {
            return Ok(own);
        }
        let engine = Arc::clone(&self.engine);
        let snap = self.snapshot().await?;
        let value = engine.snapshot_get(snap, key).await?;
        self.reads.records.push(ReadRecord::Key {
            key: key.to_vec(),
            value: value.clone(),
        });
        Ok(value)
    }

    async fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<Rows, StoreError> {
        let mut out: Rows = Vec::new();
        if begin >= end || limit == Some(0) {
            return Ok(out);
        }
        let engine = Arc::clone(&self.engine);
        let (mut cur_begin, mut cur_end) = (begin.to_vec(), end.to_vec());
        // Reads chunks from the snapshot until the merged view (snapshot minus own clears plus
        // own sets) has `limit` pairs or the range is exhausted; own clears can hide any number
        // of snapshot pairs, hence the loop.
        loop {
            let wanted = limit.map(|n| n - out.len());
            let own_in_range = self
                .writes
                .points
                .range(cur_begin.clone()..cur_end.clone())
                .count();
            let request = wanted.map(|w| w + own_in_range);
            let snap = self.snapshot().await?;
            let rows = engine
                .snapshot_range(snap, &cur_begin, &cur_end, request, reverse)
                .await?;
            let exhausted = request.is_none_or(|r| rows.len() < r);
            let (cov_begin, cov_end) = match (exhausted, rows.last()) {
                (false, Some((last, _))) if !reverse => (cur_begin.clone(), key_after(last)),
                (false, Some((last, _))) => (last.clone(), cur_end.clone()),
                _ => (cur_begin.clone(), cur_end.clone()),
            };
            let mut merged: Rows = rows
                .iter()
                .filter(|(k, _)| !self.writes.points.contains_key(k) && !self.writes.is_cleared(k))
                .cloned()
                .collect();
            merged.extend(
                self.writes
                    .points
                    .range(cov_begin.clone()..cov_end.clone())
                    .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone()))),
            );
            merged.sort_by(|a, b| a.0.cmp(&b.0));
            if reverse {
                merged.reverse();
            }
            // Validation re-reads ascending, so the record is kept ascending.
            let mut rows = rows;
            if reverse {
                rows.reverse();
            }
            self.reads.records.push(ReadRecord::Range {
                begin: cov_begin.clone(),
                end: cov_end.clone(),
                rows,
            });
            out.extend(merged);
            if let Some(n) = limit
                && out.len() >= n
            {
                out.truncate(n);
                return Ok(out);
            }
            if exhausted {
                return Ok(out);
            }
            if reverse {
                cur_end = cov_begin;
            } else {
                cur_begin = cov_end;
            }
        }
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.writes.set(key, Some(value));
    }

    fn clear(&mut self, key: &[u8]) {
        self.writes.set(key, None);
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        self.writes.clear_range(begin, end);
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        let this = *self;
        if this.writes.is_empty() && (E::SNAPSHOT_READS || this.reads.records.is_empty()) {
            return Ok(());
        }
        // Drop the snapshot first: it pins old versions the commit could otherwise reclaim.
        drop(this.snapshot);
        this.engine.commit(this.reads, this.writes).await
    }
}

/// Validates a transaction a remote client ran against `engine`'s latest state and applies
/// its writes (one atomic step); a read-only one is validated against one fresh snapshot,
/// which orders it at that snapshot without a write transaction (no fsync).
pub(crate) async fn commit_checked<E: OccEngine>(
    engine: &E,
    reads: ReadSet,
    writes: WriteSet,
) -> Result<(), StoreError> {
    if !writes.is_empty() {
        return engine.commit(reads, writes).await;
    }
    if reads.records.is_empty() {
        return Ok(());
    }
    let snap = engine.snapshot().await?;
    for record in &reads.records {
        let same = match record {
            ReadRecord::Key { key, value } => engine.snapshot_get(&snap, key).await? == *value,
            ReadRecord::Range { begin, end, rows } => {
                engine
                    .snapshot_range(&snap, begin, end, None, false)
                    .await?
                    == *rows
            }
        };
        if !same {
            return Err(StoreError::Conflict);
        }
    }
    Ok(())
}
