//! The hub: one task per server that follows the store's change feed, keeps the
//! [`ClusterView`] current and fans its events out to every watcher. Watchers subscribe
//! under the view's lock, so a snapshot and the events after it never overlap or miss.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use gpve_store::{FeedEvent, Key, RangeOptions, Store, StoreError, Subscription, WriteSet};
use tokio::sync::broadcast;

use super::view::{ClusterView, Event, touches_access};
use crate::cluster::now_ms;

/// Events buffered per watcher before it counts as lagging (its stream then ends).
pub const WATCHER_BUFFER_EVENTS: usize = 4096;
/// Longest the hub sleeps without looking at the clock (lease expiry is checked at least
/// this often even if a deadline computation went wrong).
pub const TICK_MAX_MS: u64 = 1000;

/// What the hub sends its watchers.
#[derive(Debug, Clone)]
pub enum HubItem {
    Event(Arc<Event>),
    /// Users, tokens, ACLs, groups, roles or pools changed: re-check credentials and
    /// privileges before the next event.
    AccessChanged,
    /// The hub missed commits and rebuilt its view: watchers must start over.
    Resync,
}

/// A watcher's start: the current objects (if asked) and the events after them.
pub struct Joined {
    pub snapshot: Vec<Event>,
    pub events: broadcast::Receiver<HubItem>,
}

struct Shared {
    view: Mutex<ClusterView>,
    tx: broadcast::Sender<HubItem>,
}

/// Handle to a running hub; the hub task ends when the last handle is gone.
#[derive(Clone)]
pub struct WatchHub {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for WatchHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHub").finish_non_exhaustive()
    }
}

/// Reads the objects the view tracks and subscribes to the feed at that point.
async fn load(store: &Store, local_node: &str) -> Result<(ClusterView, Subscription), StoreError> {
    let (writes, sub) = store
        .subscribe_with(|tx| {
            Box::pin(async move {
                let mut writes = WriteSet::default();
                for subspace in ["vms", "tasks", "nodes", "leases"] {
                    for (k, v) in tx
                        .get_prefix(&Key::prefix(&(subspace,)), RangeOptions::all())
                        .await?
                    {
                        writes.points.insert(k.into_bytes(), Some(v));
                    }
                }
                Ok(writes)
            })
        })
        .await?;
    let mut view = ClusterView::new(local_node);
    // Loading is not news: the events of these writes are dropped.
    view.apply(&writes, 0, now_ms());
    Ok((view, sub))
}

impl WatchHub {
    /// Loads the view and starts following the feed.
    pub async fn start(store: Store, local_node: String) -> Result<WatchHub, StoreError> {
        let (view, sub) = load(&store, &local_node).await?;
        let (tx, _) = broadcast::channel(WATCHER_BUFFER_EVENTS);
        let shared = Arc::new(Shared {
            view: Mutex::new(view),
            tx,
        });
        tokio::spawn(run(Arc::downgrade(&shared), store, local_node, sub));
        Ok(WatchHub { shared })
    }

    /// Joins the hub: with `initial`, an `added` event for every current object first.
    pub fn join(&self, initial: bool) -> Joined {
        let view = self
            .shared
            .view
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Joined {
            snapshot: if initial { view.snapshot() } else { Vec::new() },
            events: self.shared.tx.subscribe(),
        }
    }
}

async fn run(shared: Weak<Shared>, store: Store, local_node: String, mut sub: Subscription) {
    loop {
        let sleep_ms = match shared.upgrade() {
            None => return,
            Some(s) => {
                let view = s.view.lock().unwrap_or_else(PoisonError::into_inner);
                let now = now_ms();
                view.next_expiry_ms(now)
                    .map_or(TICK_MAX_MS, |d| u64::try_from(d - now).unwrap_or(0) + 1)
                    .min(TICK_MAX_MS)
            }
        };
        let next = tokio::select! {
            next = sub.recv() => next,
            () = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {
                let Some(s) = shared.upgrade() else { return };
                let mut view = s.view.lock().unwrap_or_else(PoisonError::into_inner);
                for e in view.tick(now_ms()) {
                    let _ = s.tx.send(HubItem::Event(Arc::new(e)));
                }
                continue;
            }
        };
        let Some(s) = shared.upgrade() else { return };
        match next {
            None => return,
            Some(FeedEvent::Commit(commit)) => {
                let mut view = s.view.lock().unwrap_or_else(PoisonError::into_inner);
                if touches_access(&commit.writes) {
                    let _ = s.tx.send(HubItem::AccessChanged);
                }
                for e in view.apply(&commit.writes, commit.seq, now_ms()) {
                    // No watcher is not an error.
                    let _ = s.tx.send(HubItem::Event(Arc::new(e)));
                }
            }
            Some(FeedEvent::Resync { missed }) => {
                tracing::warn!(missed, "watch: the hub missed commits; reloading its view");
                drop(s);
                let Some((view, fresh)) = reload(&shared, &store, &local_node).await else {
                    return;
                };
                let Some(s) = shared.upgrade() else { return };
                sub = fresh;
                *s.view.lock().unwrap_or_else(PoisonError::into_inner) = view;
                let _ = s.tx.send(HubItem::Resync);
            }
        }
    }
}

/// [`load`] until it succeeds; `None` once the hub has no handles left.
async fn reload(
    shared: &Weak<Shared>,
    store: &Store,
    local_node: &str,
) -> Option<(ClusterView, Subscription)> {
    loop {
        match load(store, local_node).await {
            Ok(loaded) => return Some(loaded),
            Err(e) => {
                tracing::error!(error = %e, "watch: reloading the view failed; retrying");
                tokio::time::sleep(Duration::from_millis(TICK_MAX_MS)).await;
                shared.upgrade()?;
            }
        }
    }
}
