//! Wire types of `/api/v1`, shared by the server and the Rust client (one definition, so
//! the two cannot drift).

use gpve_supervisor::{ActorState, DirectoryEvent, RestartRecord};
use serde::{Deserialize, Serialize};

/// One actor as the tree and the console show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorView {
    /// Directory path, e.g. `gpve-server/node:n1`.
    pub path: String,
    pub kind: String,
    pub id: String,
    /// The node whose supervision tree holds the actor.
    pub node: String,
    pub parent: Option<String>,
    pub state: ActorState,
    /// Counted sends minus handled messages (an underestimate; see the supervisor crate).
    pub mailbox_depth: u64,
    /// Messages handled since the actor was first started (all incarnations).
    pub messages_handled: u64,
    /// Messages handled per second over the last sampling interval.
    pub msgs_per_s: f64,
    pub restarts: u64,
    /// Time since the current incarnation started; `None` unless running.
    pub uptime_s: Option<u64>,
    /// When the current (or last) incarnation started, in Unix milliseconds.
    pub started_at_ms: Option<u64>,
    pub last_failure: Option<RestartRecord>,
    /// Resources the actor owns, as it published them (`vmid`, `qemu_pid`).
    #[serde(default)]
    pub owns: std::collections::BTreeMap<String, String>,
}

/// A subtree of the supervision tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorTree {
    #[serde(flatten)]
    pub actor: ActorView,
    pub children: Vec<ActorTree>,
}

impl ActorTree {
    /// Actors in this subtree, itself included.
    pub fn size(&self) -> usize {
        1 + self.children.iter().map(ActorTree::size).sum::<usize>()
    }

    /// Depth-first, parents before children: (depth, actor).
    pub fn flatten(&self) -> Vec<(usize, &ActorView)> {
        fn walk<'a>(t: &'a ActorTree, depth: usize, out: &mut Vec<(usize, &'a ActorView)>) {
            out.push((depth, &t.actor));
            for c in &t.children {
                walk(c, depth + 1, out);
            }
        }
        let mut out = Vec::new();
        walk(self, 0, &mut out);
        out
    }
}

/// The supervision trees of one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeActors {
    pub node: String,
    /// Actors on this node.
    pub count: usize,
    /// Root supervisors (one in single-node mode).
    pub roots: Vec<ActorTree>,
    /// Why the node's trees are missing (it did not answer over its session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /api/v1/actors`: per node, so several nodes fit without a format change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorsList {
    pub nodes: Vec<NodeActors>,
}

/// `GET /api/v1/actors/{path}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorDetail {
    #[serde(flatten)]
    pub actor: ActorView,
    /// Paths of the direct children.
    pub children: Vec<String>,
    /// The most recent restarts (bounded by the supervisor), oldest first.
    pub recent_restarts: Vec<RestartRecord>,
}

/// Answer of `POST /api/v1/actors/{path}/restart` and `/stop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorActionResult {
    pub path: String,
    /// `restart` or `stop`.
    pub action: String,
    /// Restarts counted before this request (a restart shows as one more).
    pub restarts_before: u64,
    /// How it was done: `graceful-stop` (permanent children; the supervisor restarts it),
    /// `kill` (transient children), or `removed` (stop).
    pub how: String,
}

/// One line of `GET /api/v1/actors/events` (newline-delimited JSON). `event` is
/// `started`, `stopped`, `failed`, `restarted`, `escalated`, or the stream's own
/// `heartbeat` and `lagged` (`missed` events were dropped for this slow reader).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WatchLine {
    Actor {
        node: String,
        #[serde(flatten)]
        event: DirectoryEvent,
    },
    Stream {
        event: StreamEvent,
        at_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        missed: Option<u64>,
    },
}

/// Lines the stream itself emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamEvent {
    Heartbeat,
    Lagged,
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpve_supervisor::EventKind;

    #[test]
    fn watch_lines_round_trip() {
        let line = WatchLine::Actor {
            node: "n1".into(),
            event: DirectoryEvent {
                at_ms: 5,
                path: "a/b".into(),
                kind: EventKind::Restarted { restarts: 2 },
            },
        };
        let text = serde_json::to_string(&line).expect("serialises");
        assert!(text.contains("\"event\":\"restarted\""), "{text}");
        assert_eq!(
            serde_json::from_str::<WatchLine>(&text).expect("parses"),
            line
        );
        let hb = WatchLine::Stream {
            event: StreamEvent::Heartbeat,
            at_ms: 7,
            missed: None,
        };
        let text = serde_json::to_string(&hb).expect("serialises");
        assert_eq!(text, r#"{"event":"heartbeat","at_ms":7}"#);
        assert_eq!(
            serde_json::from_str::<WatchLine>(&text).expect("parses"),
            hb
        );
    }
}
