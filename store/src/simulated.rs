//! In-memory simulated store with injected faults, for tests and the deterministic simulation.
//!
//! Same semantics as the redb backend (snapshot reads, optimistic validation, serializable
//! commits; see `occ.rs`): a multi-version map keeps, per key, the versions that open
//! snapshots may still read. Faults apply only to commits that write (read-only commits never
//! fail, as in FoundationDB) and are decided in commit order from a seeded RNG, so a seed
//! replays the same faults when commits arrive in the same order.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::backend::{Backend, BackendTxn};
use crate::error::StoreError;
use crate::occ::{OccEngine, OccTxn, ReadSet, Rows, WriteSet};
use crate::{SleepFn, tokio_sleep};

/// Errors of the simulated backend.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A commit failure injected through [`SimFaults`] or [`SimControl`]; nothing was applied.
    #[error("injected commit failure: nothing was applied")]
    InjectedCommitFailure,
    /// The simulation cut this client off the store (a network partition); nothing read or
    /// written.
    #[error("the store is unreachable from here (simulated partition)")]
    Unreachable,
}

impl SimError {
    /// Injected failures model transient faults, so they are retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            SimError::InjectedCommitFailure | SimError::Unreachable => true,
        }
    }
}

/// Whether an "unknown result" commit actually applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UnknownResultMode {
    /// The write applied; the caller is told the outcome is unknown.
    Applied,
    /// The write did not apply; the caller is told the outcome is unknown.
    NotApplied,
    /// Decided per commit by the seeded RNG.
    #[default]
    Random,
}

/// Fault configuration of a simulated store. Probabilities outside `[0, 1]` are clamped
/// (NaN counts as 0).
#[derive(Clone, Default)]
pub struct SimFaults {
    /// Seed of the RNG that decides probabilistic faults.
    pub seed: u64,
    /// The next this-many writing commits fail with [`SimError::InjectedCommitFailure`].
    pub fail_next_commits: u32,
    /// Each writing commit fails with this probability.
    pub commit_failure_probability: f64,
    /// The next this-many writing commits return [`StoreError::CommitUnknownResult`].
    pub unknown_next_commits: u32,
    /// Each writing commit returns [`StoreError::CommitUnknownResult`] with this probability.
    pub unknown_result_probability: f64,
    /// Whether unknown-result commits apply.
    pub unknown_result_mode: UnknownResultMode,
    /// Added before every read.
    pub read_latency_ms: u64,
    /// Added before every commit.
    pub commit_latency_ms: u64,
    /// Sleep used for latency and for the store's retry backoff (default `tokio::time::sleep`);
    /// a simulation passes its virtual-time sleep here.
    pub sleep: Option<SleepFn>,
}

impl fmt::Debug for SimFaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFaults")
            .field("seed", &self.seed)
            .field("fail_next_commits", &self.fail_next_commits)
            .field(
                "commit_failure_probability",
                &self.commit_failure_probability,
            )
            .field("unknown_next_commits", &self.unknown_next_commits)
            .field(
                "unknown_result_probability",
                &self.unknown_result_probability,
            )
            .field("unknown_result_mode", &self.unknown_result_mode)
            .field("read_latency_ms", &self.read_latency_ms)
            .field("commit_latency_ms", &self.commit_latency_ms)
            .field("sleep", &self.sleep.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// Counters of what the simulated store did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Commits that applied writes (including unknown-result commits that applied).
    pub commits_applied: u64,
    /// Commits rejected by validation.
    pub conflicts: u64,
    /// Commits failed by injection.
    pub injected_failures: u64,
    /// Unknown-result commits that applied.
    pub unknown_applied: u64,
    /// Unknown-result commits that did not apply.
    pub unknown_not_applied: u64,
}

fn probability(p: f64) -> f64 {
    if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) }
}

/// Versions of one key, oldest first; `None` is a deletion.
type History = Vec<(u64, Option<Vec<u8>>)>;

struct SimState {
    /// Version of the latest commit.
    version: u64,
    data: BTreeMap<Vec<u8>, History>,
    /// Open snapshots: version -> count. Versions older than the oldest are reclaimed.
    snapshots: BTreeMap<u64, usize>,
    faults: SimFaults,
    rng: StdRng,
    stats: SimStats,
}

fn visible(history: &History, version: u64) -> Option<&Vec<u8>> {
    history
        .iter()
        .rev()
        .find(|(v, _)| *v <= version)
        .and_then(|(_, value)| value.as_ref())
}

impl SimState {
    fn get_at(&self, key: &[u8], version: u64) -> Option<Vec<u8>> {
        self.data
            .get(key)
            .and_then(|h| visible(h, version))
            .cloned()
    }

    fn range_at(
        &self,
        begin: &[u8],
        end: &[u8],
        version: u64,
        limit: Option<usize>,
        reverse: bool,
    ) -> Rows {
        let limit = limit.unwrap_or(usize::MAX);
        let iter = self.data.range(begin.to_vec()..end.to_vec());
        let pick =
            |(k, h): (&Vec<u8>, &History)| visible(h, version).map(|v| (k.clone(), v.clone()));
        if reverse {
            iter.rev().filter_map(pick).take(limit).collect()
        } else {
            iter.filter_map(pick).take(limit).collect()
        }
    }

    fn oldest_snapshot(&self) -> u64 {
        self.snapshots
            .keys()
            .next()
            .copied()
            .unwrap_or(self.version)
    }

    /// Drops versions of `key` that no open snapshot can read.
    fn reclaim(&mut self, key: &[u8]) {
        let oldest = self.oldest_snapshot();
        let Some(history) = self.data.get_mut(key) else {
            return;
        };
        // Keep the newest version visible at `oldest` and everything after it.
        if let Some(keep_from) = history.iter().rposition(|(v, _)| *v <= oldest) {
            history.drain(..keep_from);
        }
        if history.len() == 1 && history[0].1.is_none() && history[0].0 <= oldest {
            self.data.remove(key);
        }
    }

    fn apply(&mut self, writes: &WriteSet) {
        self.version += 1;
        let version = self.version;
        let mut touched: Vec<Vec<u8>> = Vec::new();
        for (begin, end) in &writes.cleared {
            for (k, history) in self.data.range_mut(begin.clone()..end.clone()) {
                if history.last().is_some_and(|(_, v)| v.is_some()) {
                    history.push((version, None));
                    touched.push(k.clone());
                }
            }
        }
        for (k, v) in &writes.points {
            self.data
                .entry(k.clone())
                .or_default()
                .push((version, v.clone()));
            touched.push(k.clone());
        }
        for k in touched {
            self.reclaim(&k);
        }
    }

    /// Decides the injected outcome of one writing commit.
    fn draw_fault(&mut self) -> Option<Fault> {
        if self.faults.fail_next_commits > 0 {
            self.faults.fail_next_commits -= 1;
            return Some(Fault::Fail);
        }
        if self.faults.unknown_next_commits > 0 {
            self.faults.unknown_next_commits -= 1;
            return Some(Fault::Unknown(self.draw_applies()));
        }
        let p_fail = probability(self.faults.commit_failure_probability);
        if p_fail > 0.0 && self.rng.random_bool(p_fail) {
            return Some(Fault::Fail);
        }
        let p_unknown = probability(self.faults.unknown_result_probability);
        if p_unknown > 0.0 && self.rng.random_bool(p_unknown) {
            return Some(Fault::Unknown(self.draw_applies()));
        }
        None
    }

    fn draw_applies(&mut self) -> bool {
        match self.faults.unknown_result_mode {
            UnknownResultMode::Applied => true,
            UnknownResultMode::NotApplied => false,
            UnknownResultMode::Random => self.rng.random_bool(0.5),
        }
    }
}

enum Fault {
    Fail,
    Unknown(bool),
}

struct SimShared {
    state: Mutex<SimState>,
}

impl SimShared {
    /// The state stays consistent even if a holder panicked (every mutation completes before
    /// anything that can panic), so a poisoned lock is recovered rather than propagated.
    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sleep_for(&self, ms: u64) -> Option<futures::future::BoxFuture<'static, ()>> {
        if ms == 0 {
            return None;
        }
        let sleep = self.lock().faults.sleep.clone().unwrap_or_else(tokio_sleep);
        Some(sleep(Duration::from_millis(ms)))
    }
}

/// Controls faults of a running simulated store and inspects it.
#[derive(Clone)]
pub struct SimControl {
    shared: Arc<SimShared>,
}

impl fmt::Debug for SimControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimControl")
            .field("stats", &self.stats())
            .finish()
    }
}

impl SimControl {
    /// Fails the next `n` writing commits.
    pub fn fail_next_commits(&self, n: u32) {
        self.shared.lock().faults.fail_next_commits = n;
    }

    /// Makes the next `n` writing commits return an unknown result, applying per `mode`.
    pub fn unknown_next_commits(&self, n: u32, mode: UnknownResultMode) {
        let mut s = self.shared.lock();
        s.faults.unknown_next_commits = n;
        s.faults.unknown_result_mode = mode;
    }

    /// Sets the per-commit failure probability.
    pub fn set_commit_failure_probability(&self, p: f64) {
        self.shared.lock().faults.commit_failure_probability = p;
    }

    /// Sets the per-commit unknown-result probability and whether those commits apply.
    pub fn set_unknown_result_probability(&self, p: f64, mode: UnknownResultMode) {
        let mut s = self.shared.lock();
        s.faults.unknown_result_probability = p;
        s.faults.unknown_result_mode = mode;
    }

    /// Sets added latencies.
    pub fn set_latency(&self, read_latency_ms: u64, commit_latency_ms: u64) {
        let mut s = self.shared.lock();
        s.faults.read_latency_ms = read_latency_ms;
        s.faults.commit_latency_ms = commit_latency_ms;
    }

    /// Turns every fault off (latencies, probabilities and pending counts).
    pub fn heal(&self) {
        let mut s = self.shared.lock();
        let sleep = s.faults.sleep.take();
        s.faults = SimFaults {
            seed: s.faults.seed,
            sleep,
            ..SimFaults::default()
        };
    }

    /// What happened so far.
    pub fn stats(&self) -> SimStats {
        self.shared.lock().stats
    }

    /// Versions held in memory across all keys, including deletions that an open snapshot may
    /// still need (for memory-bound checks).
    pub fn stored_versions(&self) -> usize {
        self.shared.lock().data.values().map(Vec::len).sum()
    }

    /// The latest committed contents, for invariant checkers ("no acknowledged write lost").
    pub fn dump(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let s = self.shared.lock();
        let version = s.version;
        s.data
            .iter()
            .filter_map(|(k, h)| visible(h, version).map(|v| (k.clone(), v.clone())))
            .collect()
    }
}

/// The simulated backend.
pub struct SimBackend {
    engine: Arc<SimEngine>,
}

impl SimBackend {
    /// A store and its control handle.
    pub fn new(faults: SimFaults) -> (SimBackend, SimControl) {
        let shared = Arc::new(SimShared {
            state: Mutex::new(SimState {
                version: 0,
                data: BTreeMap::new(),
                snapshots: BTreeMap::new(),
                rng: StdRng::seed_from_u64(faults.seed),
                faults,
                stats: SimStats::default(),
            }),
        });
        let control = SimControl {
            shared: Arc::clone(&shared),
        };
        (
            SimBackend {
                engine: Arc::new(SimEngine { shared }),
            },
            control,
        )
    }
}

#[async_trait]
impl Backend for SimBackend {
    fn name(&self) -> &'static str {
        "simulated"
    }

    async fn begin(&self) -> Result<Box<dyn BackendTxn>, StoreError> {
        Ok(Box::new(OccTxn::new(Arc::clone(&self.engine))))
    }

    async fn commit_checked(&self, reads: ReadSet, writes: WriteSet) -> Result<(), StoreError> {
        crate::occ::commit_checked(self.engine.as_ref(), reads, writes).await
    }
}

pub(crate) struct SimEngine {
    shared: Arc<SimShared>,
}

/// A registered snapshot version; unregisters on drop so old versions can be reclaimed.
pub(crate) struct SimSnapshot {
    version: u64,
    shared: Arc<SimShared>,
}

impl Drop for SimSnapshot {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        if let Some(count) = s.snapshots.get_mut(&self.version) {
            *count -= 1;
            if *count == 0 {
                s.snapshots.remove(&self.version);
            }
        }
    }
}

#[async_trait]
impl OccEngine for SimEngine {
    type Snapshot = SimSnapshot;

    async fn snapshot(&self) -> Result<SimSnapshot, StoreError> {
        let mut s = self.shared.lock();
        let version = s.version;
        *s.snapshots.entry(version).or_insert(0) += 1;
        Ok(SimSnapshot {
            version,
            shared: Arc::clone(&self.shared),
        })
    }

    async fn snapshot_get(
        &self,
        snap: &SimSnapshot,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let latency = self.shared.lock().faults.read_latency_ms;
        if let Some(sleep) = self.shared.sleep_for(latency) {
            sleep.await;
        }
        Ok(self.shared.lock().get_at(key, snap.version))
    }

    async fn snapshot_range(
        &self,
        snap: &SimSnapshot,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<Rows, StoreError> {
        let latency = self.shared.lock().faults.read_latency_ms;
        if let Some(sleep) = self.shared.sleep_for(latency) {
            sleep.await;
        }
        Ok(self
            .shared
            .lock()
            .range_at(begin, end, snap.version, limit, reverse))
    }

    async fn commit(&self, reads: ReadSet, writes: WriteSet) -> Result<(), StoreError> {
        let latency = self.shared.lock().faults.commit_latency_ms;
        if let Some(sleep) = self.shared.sleep_for(latency) {
            sleep.await;
        }
        let mut s = self.shared.lock();
        let version = s.version;
        let valid = reads.still_valid::<std::convert::Infallible>(
            |k| Ok(s.get_at(k, version)),
            |b, e| Ok(s.range_at(b, e, version, None, false)),
        );
        if !matches!(valid, Ok(true)) {
            s.stats.conflicts += 1;
            return Err(StoreError::Conflict);
        }
        match s.draw_fault() {
            None => {
                s.apply(&writes);
                s.stats.commits_applied += 1;
                Ok(())
            }
            Some(Fault::Fail) => {
                s.stats.injected_failures += 1;
                Err(SimError::InjectedCommitFailure.into())
            }
            Some(Fault::Unknown(true)) => {
                s.apply(&writes);
                s.stats.commits_applied += 1;
                s.stats.unknown_applied += 1;
                Err(StoreError::CommitUnknownResult)
            }
            Some(Fault::Unknown(false)) => {
                s.stats.unknown_not_applied += 1;
                Err(StoreError::CommitUnknownResult)
            }
        }
    }
}
