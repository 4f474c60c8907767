//! FoundationDB backend (cargo feature `fdb`).
//!
//! FoundationDB gives the same contract natively: snapshot reads with read-your-writes,
//! optimistic conflict detection at commit (`not_committed`, 1020) and `commit_unknown_result`
//! (1021), so this module only maps calls and errors; [`crate::Store::transact`] supplies the
//! retry loop.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use foundationdb::options::StreamingMode;
use foundationdb::{Database, FdbError, KeySelector, RangeOption, Transaction};

use crate::backend::{Backend, BackendTxn};
use crate::error::StoreError;

/// FoundationDB's `not_committed`: a read conflicted with a concurrent commit.
const NOT_COMMITTED: i32 = 1020;

/// Errors of the FoundationDB backend.
#[derive(Debug, thiserror::Error)]
pub enum FdbStoreError {
    /// The client network could not start (it can start only once per process).
    #[error("could not start the FoundationDB client network: {0}")]
    Network(String),
    /// The cluster file path is not valid UTF-8, which the client API requires.
    #[error("cluster file path {0} is not valid UTF-8")]
    ClusterPath(std::path::PathBuf),
    /// The database handle could not be created.
    #[error("could not open the FoundationDB database")]
    Open(#[source] FdbError),
    /// A transaction could not be created.
    #[error("could not create a FoundationDB transaction")]
    Begin(#[source] FdbError),
    /// A read failed.
    #[error("FoundationDB read failed")]
    Read(#[source] FdbError),
    /// A commit failed for a reason other than a conflict or an unknown result.
    #[error("FoundationDB commit failed")]
    Commit(#[source] FdbError),
}

impl FdbStoreError {
    /// FoundationDB classifies its own errors (e.g. `transaction_too_old`, `future_version`).
    pub fn is_retryable(&self) -> bool {
        match self {
            FdbStoreError::Read(e) | FdbStoreError::Commit(e) | FdbStoreError::Begin(e) => {
                e.is_retryable()
            }
            _ => false,
        }
    }
}

/// The client network thread runs for the life of the process: FoundationDB allows starting it
/// only once per process and never again after a stop, so it is started on first use and its
/// stop guard is deliberately leaked.
fn ensure_network() -> Result<(), FdbStoreError> {
    static NETWORK: OnceLock<Result<(), String>> = OnceLock::new();
    NETWORK
        .get_or_init(|| {
            let builder = foundationdb::api::FdbApiBuilder::default()
                .build()
                .map_err(|e| e.to_string())?;
            // SAFETY: `boot` must run at most once per process and its guard must outlive every
            // database handle; the OnceLock guarantees the first, leaking the guard the second.
            let guard = unsafe { builder.boot() }.map_err(|e| e.to_string())?;
            std::mem::forget(guard);
            Ok(())
        })
        .clone()
        .map_err(FdbStoreError::Network)
}

/// The FoundationDB backend.
pub struct FdbBackend {
    db: Arc<Database>,
}

impl FdbBackend {
    /// Starts the client network if needed and opens the database of `cluster_file`
    /// (`None`: the client's default cluster file).
    pub fn open(cluster_file: Option<&Path>) -> Result<FdbBackend, FdbStoreError> {
        ensure_network()?;
        let path = match cluster_file {
            Some(p) => Some(
                p.to_str()
                    .ok_or_else(|| FdbStoreError::ClusterPath(p.to_path_buf()))?,
            ),
            None => None,
        };
        let db = Database::new(path).map_err(FdbStoreError::Open)?;
        Ok(FdbBackend { db: Arc::new(db) })
    }
}

#[async_trait]
impl Backend for FdbBackend {
    fn name(&self) -> &'static str {
        "fdb"
    }

    async fn begin(&self) -> Result<Box<dyn BackendTxn>, StoreError> {
        let trx = self.db.create_trx().map_err(FdbStoreError::Begin)?;
        Ok(Box::new(FdbTxn { trx }))
    }
}

struct FdbTxn {
    trx: Transaction,
}

#[async_trait]
impl BackendTxn for FdbTxn {
    async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self
            .trx
            .get(key, false)
            .await
            .map_err(FdbStoreError::Read)?;
        Ok(value.map(|v| v.to_vec()))
    }

    async fn get_range(
        &mut self,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        let mut opt = Some(RangeOption {
            begin: KeySelector::first_greater_or_equal(begin.to_vec()),
            end: KeySelector::first_greater_or_equal(end.to_vec()),
            limit,
            mode: StreamingMode::WantAll,
            reverse,
            ..RangeOption::default()
        });
        // FoundationDB returns a range in batches; `next_range` continues after the last key
        // and lowers the remaining limit.
        while let Some(current) = opt {
            let batch = self
                .trx
                .get_range(&current, 1, false)
                .await
                .map_err(FdbStoreError::Read)?;
            out.extend(
                batch
                    .iter()
                    .map(|kv| (kv.key().to_vec(), kv.value().to_vec())),
            );
            opt = current.next_range(&batch);
        }
        Ok(out)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.trx.set(key, value);
    }

    fn clear(&mut self, key: &[u8]) {
        self.trx.clear(key);
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        self.trx.clear_range(begin, end);
    }

    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        match self.trx.commit().await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == NOT_COMMITTED => Err(StoreError::Conflict),
            Err(e) if e.is_maybe_committed() => Err(StoreError::CommitUnknownResult),
            Err(e) => Err(FdbStoreError::Commit(*e).into()),
        }
    }
}
