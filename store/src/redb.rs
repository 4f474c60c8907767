//! Embedded backend on redb: the durable default.
//!
//! Concurrency: optimistic transactions over redb's MVCC (see `occ.rs`). Reads run on a
//! redb read snapshot, so any number of transactions read in parallel and a body may await
//! other work without holding a lock. Commits go to one committer thread that owns redb's
//! single writer: it re-reads each transaction's read set, rejects it with
//! [`StoreError::Conflict`] if anything changed, and otherwise applies its writes; all the
//! commits queued meanwhile share one redb write transaction and one fsync
//! ([`Durability::Immediate`]) before any of them is acknowledged (group commit). Holding the
//! redb writer for the whole body instead would also be serializable but would serialise every
//! transaction, including its awaits, and pay one fsync per transaction.
//!
//! Blocking: reads and snapshots run under `spawn_blocking` (they may touch the disk), commits
//! on the committer thread; a reactor thread never blocks on redb. Needs a tokio runtime.
//! Dropping the last handle of a store waits for its queued commits.

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use ::redb::{
    Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, TableDefinition,
};
use async_trait::async_trait;

use crate::backend::{Backend, BackendTxn};
use crate::error::StoreError;
use crate::occ::{OccEngine, OccTxn, ReadSet, Rows, WriteSet};

/// The one table holding every key; keys carry their own tuple-encoded namespaces.
const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("gpve_kv");

/// Errors of the redb backend.
#[derive(Debug, thiserror::Error)]
pub enum RedbStoreError {
    /// The database file could not be opened or created.
    #[error("could not open the redb database at {path}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What redb reported.
        #[source]
        source: ::redb::DatabaseError,
    },
    /// A redb transaction could not start.
    #[error("could not start a redb transaction")]
    Begin(#[source] ::redb::TransactionError),
    /// The key-value table could not be opened.
    #[error("could not open the redb key-value table")]
    Table(#[source] ::redb::TableError),
    /// Reading or writing pages failed.
    #[error("redb storage failed")]
    Storage(#[source] ::redb::StorageError),
    /// Durability could not be set on a write transaction.
    #[error("could not request immediate durability")]
    Durability(#[source] ::redb::SetDurabilityError),
    /// The commit failed; the database may need repair on the next open.
    #[error("redb commit failed")]
    Commit(#[source] ::redb::CommitError),
    /// The commit thread could not be started.
    #[error("could not start the redb commit thread")]
    CommitterSpawn(#[source] std::io::Error),
    /// The commit thread is gone (it panicked); the commit's outcome is unknown.
    #[error("the redb commit thread stopped")]
    CommitterStopped,
    /// Another transaction of the same group commit hit a storage error; nothing was applied.
    #[error("the group commit this transaction was part of failed: {reason}")]
    GroupCommit {
        /// The storage error of the group.
        reason: String,
    },
    /// A blocking redb task panicked or was cancelled at shutdown.
    #[error("a blocking redb task did not complete")]
    Join(#[source] tokio::task::JoinError),
}

impl RedbStoreError {
    /// redb reports local I/O and corruption errors; retrying does not help.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

impl From<::redb::StorageError> for RedbStoreError {
    fn from(e: ::redb::StorageError) -> Self {
        RedbStoreError::Storage(e)
    }
}

/// The redb backend.
pub struct RedbBackend {
    engine: Arc<RedbEngine>,
}

impl RedbBackend {
    /// Opens or creates the database file at `path` and its table. Blocking: call it at startup
    /// (or inside `spawn_blocking`).
    pub fn open(path: &Path) -> Result<RedbBackend, RedbStoreError> {
        let db = Database::create(path).map_err(|source| RedbStoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut w = db.begin_write().map_err(RedbStoreError::Begin)?;
        w.set_durability(Durability::Immediate)
            .map_err(RedbStoreError::Durability)?;
        w.open_table(TABLE).map_err(RedbStoreError::Table)?;
        w.commit().map_err(RedbStoreError::Commit)?;
        Ok(RedbBackend {
            engine: Arc::new(RedbEngine::start(db)?),
        })
    }
}

#[async_trait]
impl Backend for RedbBackend {
    fn name(&self) -> &'static str {
        "redb"
    }

    async fn begin(&self) -> Result<Box<dyn BackendTxn>, StoreError> {
        Ok(Box::new(OccTxn::new(Arc::clone(&self.engine))))
    }

    async fn commit_checked(&self, reads: ReadSet, writes: WriteSet) -> Result<(), StoreError> {
        crate::occ::commit_checked(self.engine.as_ref(), reads, writes).await
    }
}

/// Transactions that one redb write transaction (one fsync) commits together at most.
const MAX_GROUP_COMMIT: usize = 256;

struct CommitRequest {
    reads: ReadSet,
    writes: WriteSet,
    done: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
}

pub(crate) struct RedbEngine {
    db: Arc<Database>,
    /// `None` only while dropping.
    commits: Option<mpsc::Sender<CommitRequest>>,
    committer: Option<std::thread::JoinHandle<()>>,
}

impl RedbEngine {
    fn start(db: Database) -> Result<RedbEngine, RedbStoreError> {
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel();
        let thread_db = Arc::clone(&db);
        let committer = std::thread::Builder::new()
            .name("gpve-store-commit".into())
            .spawn(move || group_committer(&thread_db, &rx))
            .map_err(RedbStoreError::CommitterSpawn)?;
        Ok(RedbEngine {
            db,
            commits: Some(tx),
            committer: Some(committer),
        })
    }
}

impl Drop for RedbEngine {
    /// Waits for queued commits to finish so the database file is closed when the last store
    /// handle is gone (and can be reopened at once).
    fn drop(&mut self) {
        drop(self.commits.take());
        if let Some(handle) = self.committer.take()
            && handle.join().is_err()
        {
            tracing::error!("the redb commit thread panicked");
        }
    }
}

/// The single committer: takes every commit queued so far (up to [`MAX_GROUP_COMMIT`]),
/// validates and applies each in arrival order inside one redb write transaction, and makes
/// them durable with one fsync. Each member is validated against the state that includes the
/// members before it, so the batch is equivalent to committing them one by one; batching only
/// shares the fsync, which is what bounds a durable store's commit rate.
fn group_committer(db: &Database, rx: &mpsc::Receiver<CommitRequest>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP_COMMIT {
            match rx.try_recv() {
                Ok(req) => batch.push(req),
                Err(_) => break,
            }
        }
        match commit_group(db, &batch) {
            Ok(applied) => {
                for (req, ok) in batch.into_iter().zip(applied) {
                    let outcome = if ok {
                        Ok(())
                    } else {
                        Err(StoreError::Conflict)
                    };
                    // A caller that stopped waiting is not an error: its outcome was decided.
                    let _ = req.done.send(outcome);
                }
            }
            Err(err) => {
                let reason = err.to_string();
                let mut batch = batch.into_iter();
                if let Some(first) = batch.next() {
                    let _ = first.done.send(Err(err.into()));
                }
                for req in batch {
                    let _ = req.done.send(Err(RedbStoreError::GroupCommit {
                        reason: reason.clone(),
                    }
                    .into()));
                }
            }
        }
    }
}

/// Returns, per request, whether it was applied (`false`: conflict).
fn commit_group(db: &Database, batch: &[CommitRequest]) -> Result<Vec<bool>, RedbStoreError> {
    let mut w = db.begin_write().map_err(RedbStoreError::Begin)?;
    w.set_durability(Durability::Immediate)
        .map_err(RedbStoreError::Durability)?;
    let mut applied = Vec::with_capacity(batch.len());
    {
        let mut table = w.open_table(TABLE).map_err(RedbStoreError::Table)?;
        for req in batch {
            let valid = req.reads.still_valid(
                |k| -> Result<_, RedbStoreError> { Ok(table.get(k)?.map(|g| g.value().to_vec())) },
                |b, e| read_range(&table, b, e, None, false),
            )?;
            if valid {
                for (b, e) in &req.writes.cleared {
                    table.retain_in::<&[u8], _>(b.as_slice()..e.as_slice(), |_, _| false)?;
                }
                for (k, v) in &req.writes.points {
                    match v {
                        Some(v) => {
                            table.insert(k.as_slice(), v.as_slice())?;
                        }
                        None => {
                            table.remove(k.as_slice())?;
                        }
                    }
                }
            }
            applied.push(valid);
        }
    }
    if applied.iter().any(|ok| *ok) {
        w.commit().map_err(RedbStoreError::Commit)?;
    } else {
        w.abort()?;
    }
    Ok(applied)
}

type Table = ReadOnlyTable<&'static [u8], &'static [u8]>;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::from(RedbStoreError::Join(e)))?
}

fn read_range(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    begin: &[u8],
    end: &[u8],
    limit: Option<usize>,
    reverse: bool,
) -> Result<Rows, RedbStoreError> {
    let limit = limit.unwrap_or(usize::MAX);
    let iter = table.range::<&[u8]>(begin..end)?;
    let pairs: Box<dyn Iterator<Item = _>> = if reverse {
        Box::new(iter.rev().take(limit))
    } else {
        Box::new(iter.take(limit))
    };
    let mut rows = Vec::new();
    for item in pairs {
        let (k, v) = item?;
        rows.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(rows)
}

#[async_trait]
impl OccEngine for RedbEngine {
    type Snapshot = Arc<Table>;

    async fn snapshot(&self) -> Result<Arc<Table>, StoreError> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let rtx = db.begin_read().map_err(RedbStoreError::Begin)?;
            // The table keeps the read transaction's pages alive after `rtx` is dropped.
            let table = rtx.open_table(TABLE).map_err(RedbStoreError::Table)?;
            Ok(Arc::new(table))
        })
        .await
    }

    async fn snapshot_get(
        &self,
        snap: &Arc<Table>,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let table = Arc::clone(snap);
        let key = key.to_vec();
        blocking(move || {
            let value = table.get(key.as_slice()).map_err(RedbStoreError::Storage)?;
            Ok(value.map(|g| g.value().to_vec()))
        })
        .await
    }

    async fn snapshot_range(
        &self,
        snap: &Arc<Table>,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<Rows, StoreError> {
        let table = Arc::clone(snap);
        let (begin, end) = (begin.to_vec(), end.to_vec());
        blocking(move || Ok(read_range(table.as_ref(), &begin, &end, limit, reverse)?)).await
    }

    async fn commit(&self, reads: ReadSet, writes: WriteSet) -> Result<(), StoreError> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        let sender = self
            .commits
            .as_ref()
            .ok_or(RedbStoreError::CommitterStopped)?;
        sender
            .send(CommitRequest {
                reads,
                writes,
                done,
            })
            .map_err(|_| RedbStoreError::CommitterStopped)?;
        outcome
            .await
            .map_err(|_| StoreError::from(RedbStoreError::CommitterStopped))?
    }
}
