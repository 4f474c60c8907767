//! The error type of every store operation.

use crate::key::{Key, KeyError};

/// Errors from the store. Retryable ones ([`StoreError::is_retryable`]) are retried by
/// [`crate::Store::transact`] up to its bound, then wrapped in [`StoreError::RetriesExhausted`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A concurrent transaction committed a write to something this transaction read.
    #[error("transaction conflicted with a concurrent commit")]
    Conflict,
    /// The commit may or may not have applied (FoundationDB's `commit_unknown_result`).
    #[error("commit outcome is unknown: it may or may not have applied")]
    CommitUnknownResult,
    /// Every attempt of a transaction failed with a retryable error; `last` is the final one.
    #[error("transaction did not commit after {attempts} attempts")]
    RetriesExhausted {
        /// Attempts made, including the first.
        attempts: u32,
        /// The error of the final attempt.
        #[source]
        last: Box<StoreError>,
    },
    /// The transaction body gave up; its writes were discarded.
    #[error("transaction aborted by its body")]
    Aborted(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A value could not be encoded to or decoded from JSON.
    #[error("value at key {key} is not valid JSON of the expected type")]
    Codec {
        /// The key whose value failed.
        key: Key,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A key could not be decoded as a tuple.
    #[error("key decoding failed")]
    Key(#[from] KeyError),
    /// A key exceeded [`crate::MAX_KEY_BYTES`].
    #[error("key of {size_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    KeyTooLarge {
        /// Size of the rejected key.
        size_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// A value exceeded [`crate::MAX_VALUE_BYTES`].
    #[error("value of {size_bytes} bytes at key {key} exceeds the limit of {max_bytes} bytes")]
    ValueTooLarge {
        /// The key being written.
        key: Key,
        /// Size of the rejected value.
        size_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// `clear_range` was given `begin > end`.
    #[error("range to clear is inverted: begin {begin} is after end {end}")]
    InvertedRange {
        /// Begin of the range.
        begin: Key,
        /// End of the range.
        end: Key,
    },
    /// The backend cannot do what was asked.
    #[error("the {backend} backend does not support {what}")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
        /// The operation.
        what: &'static str,
    },
    /// The remote backend failed (see [`crate::remote::RemoteStoreError`]).
    #[error("remote store failed")]
    Remote(#[from] crate::remote::RemoteStoreError),
    /// The redb backend failed.
    #[error("redb backend failed")]
    Redb(#[from] crate::redb::RedbStoreError),
    /// The simulated backend failed (usually an injected fault).
    #[error("simulated backend failed")]
    Simulated(#[from] crate::simulated::SimError),
    /// The FoundationDB backend failed.
    #[cfg(feature = "fdb")]
    #[error("FoundationDB backend failed")]
    Fdb(#[from] crate::fdb::FdbStoreError),
}

impl StoreError {
    /// Wraps a domain error so a transaction body can abort with it (writes are discarded).
    pub fn abort(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StoreError {
        StoreError::Aborted(err.into())
    }

    /// Whether running the transaction again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Conflict | StoreError::CommitUnknownResult => true,
            StoreError::Simulated(e) => e.is_retryable(),
            StoreError::Redb(e) => e.is_retryable(),
            StoreError::Remote(e) => e.is_retryable(),
            #[cfg(feature = "fdb")]
            StoreError::Fdb(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// Whether this is a conflict, possibly after exhausted retries (maps to HTTP 409/503).
    pub fn is_conflict(&self) -> bool {
        match self {
            StoreError::Conflict => true,
            StoreError::RetriesExhausted { last, .. } => last.is_conflict(),
            _ => false,
        }
    }

    /// Whether the last commit may have applied even though an error was returned.
    pub fn is_maybe_committed(&self) -> bool {
        match self {
            StoreError::CommitUnknownResult => true,
            StoreError::RetriesExhausted { last, .. } => last.is_maybe_committed(),
            _ => false,
        }
    }
}
