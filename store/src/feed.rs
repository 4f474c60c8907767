//! The change feed: every transaction this process's [`crate::Store`] commits (its own and
//! remote ones applied through [`crate::Store::commit_checked`]) is published, after the
//! commit, to the subscribers of [`crate::Store::subscribe`].
//!
//! - The feed sits in the `Store` wrapper, so it works the same over every backend.
//! - It stays off until the first subscription or [`crate::Store::enable_feed`]: a process
//!   that never subscribes (an agent, whose store is remote) records nothing and takes no
//!   lock. A transaction begun while it was off is not published, so the server turns it
//!   on when it opens its store, before any transaction.
//! - Once on, a commit that writes is applied and published while it holds the locks of
//!   the keys it writes (hashed onto [`FEED_LOCK_STRIPES`] stripes; a range clear takes all
//!   of them), so two commits writing one key publish in the order the backend applied
//!   them (two blind writes to one key could otherwise be published in the opposite
//!   order and leave a subscriber with the older value). Commits of disjoint keys still
//!   run together and share the embedded backend's group fsync; a global lock would cost
//!   that. Across different keys the feed's order may differ from the apply order by the
//!   time between a commit's acknowledgement and its publication (a task wake-up).
//! - The channel is bounded ([`FEED_CAPACITY_COMMITS`]): a subscriber that falls behind
//!   gets [`FeedEvent::Resync`] and must read the state again; commits never wait for it.
//!   The same signal follows a commit whose publication is uncertain (outcome unknown, or
//!   the committing future was dropped between applying and publishing).
//! - This is a per-process feed. With FoundationDB and several servers each server would
//!   see only its own commits; a cluster-wide feed needs a versionstamped change log read
//!   by every server (not built).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::{Mutex, MutexGuard, broadcast};

use crate::error::StoreError;
use crate::occ::WriteSet;

/// Lock stripes that order commits of the same keys (see the module documentation).
pub const FEED_LOCK_STRIPES: usize = 64;

/// Commits the feed buffers for its slowest subscriber before that one gets
/// [`FeedEvent::Resync`].
pub const FEED_CAPACITY_COMMITS: usize = 4096;

/// One committed transaction's writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Position in this process's feed: increases by one per published commit.
    pub seq: u64,
    /// Ranges cleared, then point writes on top (`None`: deleted), as applied.
    pub writes: WriteSet,
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// A commit, in the order the backend applied it.
    Commit(Arc<Commit>),
    /// Commits were missed (the subscriber lagged by `missed` or more, or a commit's
    /// publication was uncertain): read the state again, then continue.
    Resync { missed: u64 },
}

#[derive(Debug, Clone)]
enum Item {
    Commit(Arc<Commit>),
    Resync,
}

/// The feed shared by the clones of one store.
#[derive(Debug)]
pub(crate) struct ChangeFeed {
    tx: broadcast::Sender<Item>,
    /// Sticky: set by the first subscription.
    active: AtomicBool,
    seq: AtomicU64,
    /// Held (the stripes of the keys written) from applying a commit until it is published.
    stripes: Vec<Mutex<()>>,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(FEED_CAPACITY_COMMITS);
        ChangeFeed {
            tx,
            active: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            stripes: (0..FEED_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl ChangeFeed {
    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    pub(crate) fn enable(&self) {
        self.active.store(true, Ordering::Release);
    }

    /// Turns the feed on (if it was not) and takes every stripe: nothing commits through
    /// the feed until the guards are dropped.
    pub(crate) async fn lock_for_subscribe(&self) -> Vec<MutexGuard<'_, ()>> {
        self.active.store(true, Ordering::Release);
        self.lock((0..FEED_LOCK_STRIPES).collect()).await
    }

    /// Locks `stripes` (ascending, so two commits never wait for each other in a cycle).
    async fn lock(&self, stripes: Vec<usize>) -> Vec<MutexGuard<'_, ()>> {
        let mut guards = Vec::with_capacity(stripes.len());
        for i in stripes {
            guards.push(self.stripes[i].lock().await);
        }
        guards
    }

    pub(crate) fn receiver(&self) -> Subscription {
        Subscription {
            rx: self.tx.subscribe(),
        }
    }

    /// The guard to hold while applying `writes`; `None` when the feed is off or there is
    /// nothing to publish.
    pub(crate) async fn begin(&self, writes: &WriteSet) -> Option<Publishing<'_>> {
        if !self.is_active() || writes.is_empty() {
            return None;
        }
        let stripes = if writes.cleared.is_empty() {
            let set: std::collections::BTreeSet<usize> =
                writes.points.keys().map(|k| stripe_of(k)).collect();
            set.into_iter().collect()
        } else {
            (0..FEED_LOCK_STRIPES).collect()
        };
        Some(Publishing {
            feed: self,
            _order: self.lock(stripes).await,
            done: false,
        })
    }

    fn send(&self, item: Item) {
        // No subscriber is not an error: the feed publishes into the void.
        let _ = self.tx.send(item);
    }
}

/// A commit between "about to apply" and "published". Dropped without
/// [`Publishing::published`] or [`Publishing::failed`] (the committing future was
/// cancelled, or the outcome is unknown), it tells subscribers to resync.
pub(crate) struct Publishing<'a> {
    feed: &'a ChangeFeed,
    _order: Vec<MutexGuard<'a, ()>>,
    done: bool,
}

impl Publishing<'_> {
    /// Ends the publication with the backend's answer for `writes`: published when they
    /// applied, nothing when they certainly did not, a resync signal when the outcome is
    /// unknown.
    pub(crate) fn finish(
        self,
        result: Result<(), StoreError>,
        writes: WriteSet,
    ) -> Result<(), StoreError> {
        match result {
            Ok(()) => {
                self.published(writes);
                Ok(())
            }
            // Dropping the guard unpublished tells subscribers to resync.
            Err(err) if err.is_maybe_committed() => Err(err),
            Err(err) => {
                self.failed();
                Err(err)
            }
        }
    }

    /// The backend applied `writes`: publish them.
    fn published(mut self, writes: WriteSet) {
        let seq = self.feed.seq.fetch_add(1, Ordering::AcqRel) + 1;
        self.feed
            .send(Item::Commit(Arc::new(Commit { seq, writes })));
        self.done = true;
    }

    /// The backend did certainly not apply the writes (a conflict, a refused write).
    fn failed(mut self) {
        self.done = true;
    }
}

impl Drop for Publishing<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.feed.send(Item::Resync);
        }
    }
}

/// The stripe of a key: FNV-1a, so the mapping is the same in every run (the simulation
/// replays exactly).
fn stripe_of(key: &[u8]) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % FEED_LOCK_STRIPES as u64) as usize
}

/// A subscriber's end of the feed (see [`crate::Store::subscribe`]).
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<Item>,
}

impl Subscription {
    /// The next event; `None` once every handle of the store is gone.
    pub async fn recv(&mut self) -> Option<FeedEvent> {
        match self.rx.recv().await {
            Ok(item) => Some(convert(item)),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(FeedEvent::Resync { missed }),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<FeedEvent> {
        match self.rx.try_recv() {
            Ok(item) => Some(convert(item)),
            Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                Some(FeedEvent::Resync { missed })
            }
            Err(_) => None,
        }
    }
}

fn convert(item: Item) -> FeedEvent {
    match item {
        Item::Commit(c) => FeedEvent::Commit(c),
        Item::Resync => FeedEvent::Resync { missed: 1 },
    }
}
