//! Per-process (or per simulated node) registry of supervised actors, for addressing and for
//! the actor console. Never global: ractor's own registry is process-wide, and the simulation
//! runs several nodes in one process.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ractor::{ActorCell, ActorRef, Message, MessagingErr};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::clock::{SharedClock, TokioClock};

/// How many recent restarts each entry remembers.
pub const RECENT_RESTARTS_LEN: usize = 16;
/// Capacity of the event stream; a subscriber that falls further behind sees `Lagged`.
pub const EVENT_CAPACITY: usize = 1_024;

/// Lifecycle state of a supervised actor as its supervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorState {
    Starting,
    Running,
    Restarting,
    Stopped,
    Failed,
}

/// Most resources one actor may publish through [`ActorStats::set_owned`].
pub const MAX_OWNED_RESOURCES: usize = 16;

/// Cheap counters an actor bumps itself. Shared by all incarnations of one child.
#[derive(Debug, Default)]
pub struct StatsInner {
    sent: AtomicU64,
    handled: AtomicU64,
    /// What the actor says it owns (`vmid=100`, `qemu_pid=1234`), for the console.
    owned: Mutex<BTreeMap<String, String>>,
}

/// Handle to an actor's counters; clone it into the actor and call
/// [`ActorStats::record_handled`] at the top of `handle()`.
#[derive(Debug, Clone, Default)]
pub struct ActorStats(Arc<StatsInner>);

impl ActorStats {
    /// Count one message taken from the mailbox.
    pub fn record_handled(&self) {
        self.0.handled.fetch_add(1, Ordering::Relaxed);
    }

    /// Count one message put into the mailbox (done by [`Directory::send`]).
    pub fn record_sent(&self) {
        self.0.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Messages handled since the child was first started.
    pub fn messages_handled(&self) -> u64 {
        self.0.handled.load(Ordering::Relaxed)
    }

    /// Messages sent through counted paths and not yet handled. ractor 0.16 does not expose
    /// its mailbox length, so this counts only sends that went through [`Directory::send`]
    /// or [`ActorStats::record_sent`]; uncounted sends make it an underestimate, never
    /// negative.
    pub fn mailbox_depth(&self) -> u64 {
        let sent = self.0.sent.load(Ordering::Relaxed);
        sent.saturating_sub(self.0.handled.load(Ordering::Relaxed))
    }

    fn owned_map(&self) -> MutexGuard<'_, BTreeMap<String, String>> {
        // Plain strings: a panic while holding the lock cannot leave them inconsistent.
        self.0
            .owned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Publish a resource the actor owns, e.g. `("vmid", "100")` or `("qemu_pid", "1234")`.
    /// Shown by the console; cleared when the incarnation ends (the next one republishes).
    /// Beyond [`MAX_OWNED_RESOURCES`] keys, new keys are ignored.
    pub fn set_owned(&self, key: &str, value: impl std::fmt::Display) {
        let mut owned = self.owned_map();
        if owned.len() >= MAX_OWNED_RESOURCES && !owned.contains_key(key) {
            return;
        }
        owned.insert(key.to_string(), value.to_string());
    }

    /// Withdraw one published resource (e.g. the QEMU pid once the process is gone).
    pub fn clear_owned(&self, key: &str) {
        self.owned_map().remove(key);
    }

    /// The published resources, by key.
    pub fn owned(&self) -> BTreeMap<String, String> {
        self.owned_map().clone()
    }

    /// An ended incarnation owns nothing any more.
    pub(crate) fn clear_all_owned(&self) {
        self.owned_map().clear();
    }

    /// A restart drops the old mailbox: forget what was queued in it.
    pub(crate) fn reset_mailbox(&self) {
        let handled = self.0.handled.load(Ordering::Relaxed);
        self.0.sent.fetch_max(handled, Ordering::Relaxed);
        let sent = self.0.sent.load(Ordering::Relaxed);
        self.0.handled.fetch_max(sent, Ordering::Relaxed);
    }
}

/// One restart, for the console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartRecord {
    pub at_ms: u64,
    pub reason: String,
}

/// A point-in-time view of one actor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorSnapshot {
    pub path: String,
    pub kind: String,
    pub id: String,
    pub parent: Option<String>,
    pub state: ActorState,
    pub messages_handled: u64,
    /// See [`ActorStats::mailbox_depth`] for what this counts.
    pub mailbox_depth: u64,
    pub restarts: u64,
    pub recent_restarts: Vec<RestartRecord>,
    pub last_failure: Option<RestartRecord>,
    pub started_at_ms: Option<u64>,
    /// Resources the actor published with [`ActorStats::set_owned`] (`vmid`, `qemu_pid`).
    #[serde(default)]
    pub owns: BTreeMap<String, String>,
}

/// A snapshot arranged as the supervision tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorTreeNode {
    #[serde(flatten)]
    pub actor: ActorSnapshot,
    pub children: Vec<ActorTreeNode>,
}

/// What happened to an actor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum EventKind {
    Started,
    Stopped {
        reason: Option<String>,
    },
    Failed {
        reason: String,
    },
    Restarted {
        restarts: u64,
    },
    Escalated {
        reason: String,
        restarts_in_window: u32,
    },
}

/// One entry of the event stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryEvent {
    pub at_ms: u64,
    pub path: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

struct Entry {
    kind: String,
    id: String,
    parent: Option<String>,
    state: ActorState,
    stats: ActorStats,
    restarts: u64,
    recent_restarts: VecDeque<RestartRecord>,
    last_failure: Option<RestartRecord>,
    started_at_ms: Option<u64>,
    cell: Option<ActorCell>,
}

struct Inner {
    entries: Mutex<BTreeMap<String, Entry>>,
    events: broadcast::Sender<DirectoryEvent>,
    clock: SharedClock,
}

/// Registry of supervised actors. Cloning shares it. One per process or simulated node.
#[derive(Clone)]
pub struct Directory(Arc<Inner>);

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("clock", &self.0.clock)
            .finish()
    }
}

impl Default for Directory {
    fn default() -> Self {
        Self::new()
    }
}

/// Why [`Directory::send`] failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectorySendError {
    #[error("no running actor at {path}")]
    NotRunning { path: String },
    #[error("the actor at {path} does not take this message type")]
    WrongMessageType { path: String },
    #[error("the mailbox of {path} is closed")]
    MailboxClosed { path: String },
}

impl Directory {
    /// A directory on tokio time.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(TokioClock::new()))
    }

    /// A directory whose supervisors take time from `clock` (the simulation's seam).
    pub fn with_clock(clock: SharedClock) -> Self {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Self(Arc::new(Inner {
            entries: Mutex::new(BTreeMap::new()),
            events,
            clock,
        }))
    }

    pub fn clock(&self) -> &SharedClock {
        &self.0.clock
    }

    /// Subscribe to started/stopped/failed/restarted/escalated events.
    pub fn subscribe(&self) -> broadcast::Receiver<DirectoryEvent> {
        self.0.events.subscribe()
    }

    fn entries(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic while holding this lock leaves plain data, still consistent per field.
        self.0
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn emit(&self, path: &str, kind: EventKind) {
        // No subscriber is not an error.
        let _ = self.0.events.send(DirectoryEvent {
            at_ms: self.0.clock.now_ms(),
            path: path.to_string(),
            kind,
        });
    }

    /// Create (or reuse, keeping history and counters) the entry at `path` in state
    /// `Starting`, and return its stats handle.
    pub(crate) fn register(
        &self,
        path: &str,
        kind: &str,
        id: &str,
        parent: Option<&str>,
    ) -> ActorStats {
        let mut entries = self.entries();
        let entry = entries.entry(path.to_string()).or_insert_with(|| Entry {
            kind: kind.to_string(),
            id: id.to_string(),
            parent: parent.map(str::to_string),
            state: ActorState::Starting,
            stats: ActorStats::default(),
            restarts: 0,
            recent_restarts: VecDeque::new(),
            last_failure: None,
            started_at_ms: None,
            cell: None,
        });
        // A path reused by a new spec keeps its history but takes the new description.
        entry.kind = kind.to_string();
        entry.id = id.to_string();
        entry.parent = parent.map(str::to_string);
        entry.state = ActorState::Starting;
        entry.stats.clone()
    }

    /// The actor at `path` is up as `cell`.
    pub(crate) fn set_running(&self, path: &str, cell: ActorCell, restarted: bool) {
        let now_ms = self.0.clock.now_ms();
        let restarts = {
            let mut entries = self.entries();
            let Some(entry) = entries.get_mut(path) else {
                return;
            };
            entry.state = ActorState::Running;
            entry.cell = Some(cell);
            entry.started_at_ms = Some(now_ms);
            entry.restarts
        };
        if restarted {
            self.emit(path, EventKind::Restarted { restarts });
        } else {
            self.emit(path, EventKind::Started);
        }
    }

    /// The actor at `path` failed; its supervisor will restart it after a backoff.
    pub(crate) fn set_restarting(&self, path: &str, reason: &str) {
        let now_ms = self.0.clock.now_ms();
        let mut entries = self.entries();
        let Some(entry) = entries.get_mut(path) else {
            return;
        };
        entry.state = ActorState::Restarting;
        entry.cell = None;
        entry.stats.reset_mailbox();
        entry.stats.clear_all_owned();
        entry.restarts += 1;
        if entry.recent_restarts.len() == RECENT_RESTARTS_LEN {
            entry.recent_restarts.pop_front();
        }
        entry.recent_restarts.push_back(RestartRecord {
            at_ms: now_ms,
            reason: reason.to_string(),
        });
    }

    /// The actor at `path` failed (panic, error, kill). Emits `Failed`.
    pub(crate) fn record_failure(&self, path: &str, reason: &str) {
        let now_ms = self.0.clock.now_ms();
        {
            let mut entries = self.entries();
            if let Some(entry) = entries.get_mut(path) {
                entry.state = ActorState::Failed;
                entry.cell = None;
                entry.stats.clear_all_owned();
                entry.last_failure = Some(RestartRecord {
                    at_ms: now_ms,
                    reason: reason.to_string(),
                });
            }
        }
        self.emit(
            path,
            EventKind::Failed {
                reason: reason.to_string(),
            },
        );
    }

    /// The actor at `path` stopped normally (or was stopped). Emits `Stopped`.
    pub(crate) fn set_stopped(&self, path: &str, reason: Option<String>) {
        {
            let mut entries = self.entries();
            if let Some(entry) = entries.get_mut(path) {
                entry.state = ActorState::Stopped;
                entry.cell = None;
                entry.stats.clear_all_owned();
            }
        }
        self.emit(path, EventKind::Stopped { reason });
    }

    /// Mark the entry failed without a new failure record (a given-up child).
    pub(crate) fn set_failed_state(&self, path: &str) {
        if let Some(entry) = self.entries().get_mut(path) {
            entry.state = ActorState::Failed;
            entry.cell = None;
            entry.stats.clear_all_owned();
        }
    }

    pub(crate) fn escalated(&self, path: &str, reason: &str, restarts_in_window: u32) {
        self.emit(
            path,
            EventKind::Escalated {
                reason: reason.to_string(),
                restarts_in_window,
            },
        );
    }

    /// Remove the entry at `path` and everything below it.
    pub(crate) fn remove_subtree(&self, path: &str) {
        let prefix = format!("{path}/");
        self.entries()
            .retain(|p, _| p != path && !p.starts_with(&prefix));
    }

    /// Remove only the entries below `path`.
    pub(crate) fn remove_descendants(&self, path: &str) {
        let prefix = format!("{path}/");
        self.entries().retain(|p, _| !p.starts_with(&prefix));
    }

    /// The running actor at `path`, if any. Re-resolve after a restart: the cell changes.
    pub fn lookup(&self, path: &str) -> Option<ActorCell> {
        self.entries().get(path).and_then(|e| e.cell.clone())
    }

    /// Typed lookup; `None` if nothing runs at `path` or it takes another message type.
    pub fn lookup_ref<M: Message>(&self, path: &str) -> Option<ActorRef<M>> {
        let cell = self.lookup(path)?;
        (cell.is_message_type_of::<M>() == Some(true)).then(|| ActorRef::from(cell))
    }

    /// Stats handle of the actor at `path`.
    pub fn stats(&self, path: &str) -> Option<ActorStats> {
        self.entries().get(path).map(|e| e.stats.clone())
    }

    /// Send `msg` to the actor at `path`, counting it for the mailbox depth.
    pub fn send<M: Message>(&self, path: &str, msg: M) -> Result<(), DirectorySendError> {
        let (cell, stats) = {
            let entries = self.entries();
            let entry = entries
                .get(path)
                .ok_or_else(|| DirectorySendError::NotRunning {
                    path: path.to_string(),
                })?;
            let cell = entry
                .cell
                .clone()
                .ok_or_else(|| DirectorySendError::NotRunning {
                    path: path.to_string(),
                })?;
            (cell, entry.stats.clone())
        };
        stats.record_sent();
        match cell.send_message(msg) {
            Ok(()) => Ok(()),
            Err(err) => {
                // Undo the count: the message never reached the mailbox.
                stats.record_handled();
                Err(match err {
                    MessagingErr::InvalidActorType => DirectorySendError::WrongMessageType {
                        path: path.to_string(),
                    },
                    _ => DirectorySendError::MailboxClosed {
                        path: path.to_string(),
                    },
                })
            }
        }
    }

    fn snapshot_of(path: &str, e: &Entry) -> ActorSnapshot {
        ActorSnapshot {
            path: path.to_string(),
            kind: e.kind.clone(),
            id: e.id.clone(),
            parent: e.parent.clone(),
            state: e.state,
            messages_handled: e.stats.messages_handled(),
            mailbox_depth: e.stats.mailbox_depth(),
            restarts: e.restarts,
            recent_restarts: e.recent_restarts.iter().cloned().collect(),
            last_failure: e.last_failure.clone(),
            started_at_ms: e.started_at_ms,
            owns: e.stats.owned(),
        }
    }

    /// One actor.
    pub fn get(&self, path: &str) -> Option<ActorSnapshot> {
        self.entries().get(path).map(|e| Self::snapshot_of(path, e))
    }

    /// All actors, sorted by path.
    pub fn snapshot(&self) -> Vec<ActorSnapshot> {
        self.entries()
            .iter()
            .map(|(p, e)| Self::snapshot_of(p, e))
            .collect()
    }

    /// All actors as trees; roots are entries whose parent is not registered.
    pub fn snapshot_tree(&self) -> Vec<ActorTreeNode> {
        let list = self.snapshot();
        let known: std::collections::BTreeSet<&str> =
            list.iter().map(|s| s.path.as_str()).collect();
        let mut by_parent: BTreeMap<Option<String>, Vec<ActorSnapshot>> = BTreeMap::new();
        for s in &list {
            let parent = s.parent.clone().filter(|p| known.contains(p.as_str()));
            by_parent.entry(parent).or_default().push(s.clone());
        }
        fn build(
            parent: Option<String>,
            by_parent: &mut BTreeMap<Option<String>, Vec<ActorSnapshot>>,
        ) -> Vec<ActorTreeNode> {
            let kids = by_parent.remove(&parent).unwrap_or_default();
            kids.into_iter()
                .map(|actor| {
                    let children = build(Some(actor.path.clone()), by_parent);
                    ActorTreeNode { actor, children }
                })
                .collect()
        }
        build(None, &mut by_parent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_depth_counts_sent_minus_handled_and_resets() {
        let s = ActorStats::default();
        s.record_sent();
        s.record_sent();
        s.record_handled();
        assert_eq!(s.mailbox_depth(), 1);
        s.reset_mailbox();
        assert_eq!(s.mailbox_depth(), 0);
        // Handled without a counted send never goes negative.
        s.record_handled();
        assert_eq!(s.mailbox_depth(), 0);
        assert_eq!(s.messages_handled(), 3);
    }

    #[tokio::test]
    async fn tree_snapshot_nests_by_parent_and_removal_is_recursive() {
        let d = Directory::new();
        d.register("node:n1", "node", "node:n1", None);
        d.register("node:n1/vm:100", "vm", "vm:100", Some("node:n1"));
        d.register("node:n1/vm:101", "vm", "vm:101", Some("node:n1"));
        let tree = d.snapshot_tree();
        assert_eq!(tree.len(), 1);
        assert_eq!(tree[0].children.len(), 2);
        assert_eq!(tree[0].children[0].actor.path, "node:n1/vm:100");
        let json = serde_json::to_value(&tree).expect("snapshot serializes");
        assert_eq!(json[0]["children"][1]["state"], "starting");
        for i in 0..(RECENT_RESTARTS_LEN + 3) {
            d.set_restarting("node:n1/vm:100", &format!("boom {i}"));
        }
        let snap = d.get("node:n1/vm:100").expect("entry exists");
        assert_eq!(snap.restarts, (RECENT_RESTARTS_LEN + 3) as u64);
        assert_eq!(snap.recent_restarts.len(), RECENT_RESTARTS_LEN);
        assert_eq!(snap.recent_restarts[0].reason, "boom 3");
        d.remove_subtree("node:n1");
        assert!(d.snapshot().is_empty());
    }

    #[tokio::test]
    async fn owned_resources_show_in_snapshots_and_end_with_the_incarnation() {
        let d = Directory::new();
        let stats = d.register("node:n1/vm:100", "vm", "vm:100", None);
        stats.set_owned("vmid", 100);
        stats.set_owned("qemu_pid", 4242);
        let snap = d.get("node:n1/vm:100").expect("entry exists");
        assert_eq!(snap.owns.get("vmid").map(String::as_str), Some("100"));
        assert_eq!(snap.owns.get("qemu_pid").map(String::as_str), Some("4242"));
        let json = serde_json::to_value(&snap).expect("snapshot serializes");
        assert_eq!(json["owns"]["qemu_pid"], "4242");
        stats.clear_owned("qemu_pid");
        assert!(
            !d.get("node:n1/vm:100")
                .expect("entry")
                .owns
                .contains_key("qemu_pid")
        );
        for i in 0..(MAX_OWNED_RESOURCES + 4) {
            stats.set_owned(&format!("k{i}"), i);
        }
        assert_eq!(stats.owned().len(), MAX_OWNED_RESOURCES);
        d.set_restarting("node:n1/vm:100", "QEMU exited");
        assert!(d.get("node:n1/vm:100").expect("entry").owns.is_empty());
    }
}
