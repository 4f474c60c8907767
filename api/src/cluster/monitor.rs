//! `membership` and its `node-monitor:{node}` actors: one per joined node, each watching
//! that node's lease. A monitor *fails* when a lease it saw renewed expires: that failure
//! is the supervision event the HA manager will act on (after a fence grace).
//!
//! Status of a node as the monitor sees it:
//! - `unknown`: no heartbeat since this server started;
//! - `online`: the lease is valid;
//! - `offline`: the lease expired.
//!
//! A restarted monitor reads the lease from the store, so it starts `offline` (not
//! failing again) until the next heartbeat.

use gpve_store::Store;
use gpve_supervisor::{
    ActorStats, ChildSpec, EscalationPolicy, RestartPolicy, SupervisorHandle, SupervisorSpec,
};
use gpve_transport::NodeLoad;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;

use super::now_ms;
use super::records::{Lease, lease_key, load_key};

/// Id of the membership supervisor under `cluster`.
pub const MEMBERSHIP: &str = "membership";
/// How often a monitor compares its lease with the clock.
pub const LEASE_CHECK_INTERVAL_MS: u64 = 100;

/// Directory path of the membership supervisor under the server root.
pub fn membership_path() -> String {
    format!("{}/cluster/{MEMBERSHIP}", crate::tree::ROOT)
}

/// Child id of `node`'s monitor.
pub fn monitor_id(node: &str) -> String {
    format!("node-monitor:{node}")
}

/// Directory path of `node`'s monitor.
pub fn monitor_path(node: &str) -> String {
    format!("{}/{}", membership_path(), monitor_id(node))
}

/// A node's liveness as shown by `/nodes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    Online,
    Offline,
    Unknown,
}

impl Liveness {
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Online => "online",
            Liveness::Offline => "offline",
            Liveness::Unknown => "unknown",
        }
    }
}

/// What a monitor answers.
#[derive(Debug, Clone, Serialize)]
pub struct MonitorView {
    pub liveness: Liveness,
    pub lease: Option<Lease>,
    pub load: Option<NodeLoad>,
}

/// Commands of a node monitor (one lifecycle state: running).
#[derive(Debug)]
pub enum MonitorMsg {
    /// A heartbeat renewed the lease (sent by the gRPC service after the store commit).
    Renewed {
        lease: Lease,
        load: NodeLoad,
    },
    /// Compare the lease with the clock; fail if it expired since it was last renewed.
    Check,
    Status(RpcReplyPort<MonitorView>),
}

impl ractor::Message for MonitorMsg {}

/// Watches one node's lease.
#[derive(Debug)]
pub struct NodeMonitor {
    pub stats: ActorStats,
    pub store: Store,
    pub node: String,
    /// When this server started: a lease renewed before that was not heard by us.
    pub started_at_ms: i64,
}

/// A monitor's state.
#[derive(Debug)]
pub struct MonitorState {
    lease: Option<Lease>,
    load: Option<NodeLoad>,
    /// Renewed since this server started.
    heard: bool,
    /// The lease was valid when last seen: its expiry is a failure.
    armed: bool,
}

impl MonitorState {
    fn liveness(&self, now_ms: i64) -> Liveness {
        match &self.lease {
            _ if !self.heard => Liveness::Unknown,
            Some(l) if l.valid_at(now_ms) => Liveness::Online,
            _ => Liveness::Offline,
        }
    }
}

impl Actor for NodeMonitor {
    type Msg = MonitorMsg;
    type State = MonitorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<MonitorMsg>,
        _: (),
    ) -> Result<MonitorState, ActorProcessingErr> {
        let lease = self.store.get_json::<Lease>(&lease_key(&self.node)).await?;
        let load = self
            .store
            .get_json::<NodeLoad>(&load_key(&self.node))
            .await?;
        let heard = lease
            .as_ref()
            .is_some_and(|l| l.renewed_at_ms >= self.started_at_ms);
        let armed = heard && lease.as_ref().is_some_and(|l| l.valid_at(now_ms()));
        myself.send_interval(
            std::time::Duration::from_millis(LEASE_CHECK_INTERVAL_MS),
            || MonitorMsg::Check,
        );
        Ok(MonitorState {
            lease,
            load,
            heard,
            armed,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<MonitorMsg>,
        msg: MonitorMsg,
        state: &mut MonitorState,
    ) -> Result<(), ActorProcessingErr> {
        self.stats.record_handled();
        match msg {
            MonitorMsg::Renewed { lease, load } => {
                if !state.armed {
                    tracing::info!(node = %self.node, generation = lease.generation, "node is online");
                }
                state.lease = Some(lease);
                state.load = Some(load);
                state.heard = true;
                state.armed = true;
            }
            MonitorMsg::Check => {
                let now = now_ms();
                if let (true, Some(lease)) = (state.armed, &state.lease)
                    && !lease.valid_at(now)
                {
                    state.armed = false;
                    return Err(format!(
                        "the lease of node {} expired: no heartbeat for {} ms (ttl {} ms, generation {})",
                        self.node,
                        now - lease.renewed_at_ms,
                        lease.ttl_ms,
                        lease.generation
                    )
                    .into());
                }
            }
            MonitorMsg::Status(reply) => {
                let _ = reply.send(MonitorView {
                    liveness: state.liveness(now_ms()),
                    lease: state.lease.clone(),
                    load: state.load.clone(),
                });
            }
        }
        Ok(())
    }
}

/// The membership supervisor: monitors are added on demand. A monitor that keeps failing
/// (a flapping node) stays `failed` and is logged instead of taking `cluster` down; the HA
/// manager will take this hook over.
pub fn membership_spec() -> SupervisorSpec {
    SupervisorSpec::new(MEMBERSHIP)
        .kind("membership")
        .intensity(5, 60_000)
        .backoff(100, 2_000)
        .escalation(EscalationPolicy::hook(|e| {
            tracing::warn!(monitor = %e.child_path, reason = %e.reason, restarts = e.restarts,
                "node monitor keeps failing; left failed until the node's next heartbeat");
        }))
}

/// What is needed to start monitors.
#[derive(Debug, Clone)]
pub struct Monitors {
    pub directory: gpve_supervisor::Directory,
    pub store: Store,
    pub started_at_ms: i64,
}

impl Monitors {
    /// The running monitor of `node`, if any.
    pub fn get(&self, node: &str) -> Option<ActorRef<MonitorMsg>> {
        self.directory.lookup_ref::<MonitorMsg>(&monitor_path(node))
    }

    /// The monitor of `node`, started if it is not running (a failed one is replaced).
    pub async fn ensure(&self, node: &str) -> Result<ActorRef<MonitorMsg>, String> {
        if let Some(m) = self.get(node) {
            return Ok(m);
        }
        let membership = SupervisorHandle::lookup(&self.directory, &membership_path())
            .ok_or_else(|| "the membership supervisor is not running".to_string())?;
        let id = monitor_id(node);
        let spec = {
            let (store, node, started_at_ms) =
                (self.store.clone(), node.to_string(), self.started_at_ms);
            ChildSpec::actor(&id, "node-monitor", RestartPolicy::Permanent, move |ctx| {
                (
                    NodeMonitor {
                        stats: ctx.stats.clone(),
                        store: store.clone(),
                        node: node.clone(),
                        started_at_ms,
                    },
                    (),
                )
            })
        };
        if membership.add_child(spec.clone()).await.is_err() {
            // Listed but not running (failed after escalation), or added concurrently.
            if let Some(m) = self.get(node) {
                return Ok(m);
            }
            let _ = membership.remove_child(&id).await;
            membership
                .add_child(spec)
                .await
                .map_err(|e| format!("starting {id} failed: {e}"))?;
        }
        self.get(node).ok_or_else(|| format!("{id} did not start"))
    }
}

/// What `node`'s monitor says; `None` if no monitor runs (or it does not answer).
pub async fn monitor_view(
    directory: &gpve_supervisor::Directory,
    node: &str,
    timeout_ms: u64,
) -> Option<MonitorView> {
    let m = directory.lookup_ref::<MonitorMsg>(&monitor_path(node))?;
    ractor::call_t!(m, MonitorMsg::Status, timeout_ms).ok()
}
