//! The `transport` actor of an agent: one session to the server. It heartbeats every
//! `heartbeat_interval_ms` while the session works, and after any failure drops the
//! session and reconnects after `reconnect_initial_ms · 2^(n-1)`, capped at
//! `reconnect_max_ms`. Outages are not actor failures: the server's lease, not this
//! actor, decides whether the node counts as alive.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpve_actors::node::NodeMsg;
use gpve_supervisor::{ActorStats, Directory};
use gpve_transport::{Heartbeat, HeartbeatAck, NodeCredentials, NodeLink, NodeLoad, Transport};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::SessionTiming;

/// How long a heartbeat waits for the node actor's status.
pub const NODE_STATUS_TIMEOUT_MS: u64 = 500;

/// Commands of the session actor (one lifecycle state: running, connected or not).
#[derive(Debug)]
pub enum SessionMsg {
    /// Connect if needed, then send one heartbeat.
    Tick,
}

impl ractor::Message for SessionMsg {}

/// What each incarnation needs.
#[derive(Clone)]
pub struct SessionArgs {
    pub transport: Arc<dyn Transport>,
    pub endpoint: String,
    pub creds: NodeCredentials,
    pub node: String,
    /// Directory path of the node actor (for the load in heartbeats).
    pub node_path: String,
    pub timing: SessionTiming,
    /// The agent's API listener (its bound address once the api actor bound it), reported
    /// with each heartbeat so the server can forward this node's API calls.
    pub api_listen: Option<Arc<Mutex<SocketAddr>>>,
    /// Reported instead of the bound address when set (`host:port` the server can reach).
    pub api_advertise: Option<String>,
}

impl SessionArgs {
    fn api_endpoint(&self) -> String {
        if let Some(a) = &self.api_advertise {
            return a.clone();
        }
        match &self.api_listen {
            Some(l) => l.lock().unwrap_or_else(|p| p.into_inner()).to_string(),
            None => String::new(),
        }
    }
}

/// The session actor.
#[derive(Debug)]
pub struct SessionActor {
    pub stats: ActorStats,
    pub directory: Directory,
}

/// Its state.
pub struct SessionState {
    args: SessionArgs,
    link: Option<Arc<dyn NodeLink>>,
    seq: u64,
    /// Consecutive failures (connects or heartbeats).
    failures: u32,
    last_ack: Option<HeartbeatAck>,
}

impl SessionActor {
    async fn load(&self, node_path: &str) -> NodeLoad {
        let version = format!("gpve-{}", env!("CARGO_PKG_VERSION"));
        let Some(node) = self.directory.lookup_ref::<NodeMsg>(node_path) else {
            return NodeLoad {
                version,
                ..Default::default()
            };
        };
        match ractor::call_t!(node, NodeMsg::Status, NODE_STATUS_TIMEOUT_MS) {
            Ok(Ok(s)) => NodeLoad {
                cpu: s.cpu,
                maxcpu: s.cpuinfo.cpus as u64,
                mem_bytes: s.memory.used,
                maxmem_bytes: s.memory.total,
                uptime_s: s.uptime_s,
                version,
            },
            _ => NodeLoad {
                version,
                ..Default::default()
            },
        }
    }

    fn backoff_ms(timing: &SessionTiming, failures: u32) -> u64 {
        let exp = failures.saturating_sub(1).min(20);
        timing
            .reconnect_initial_ms
            .saturating_mul(1u64 << exp)
            .min(timing.reconnect_max_ms)
    }

    fn failed(
        &self,
        myself: &ActorRef<SessionMsg>,
        state: &mut SessionState,
        what: &str,
        err: &gpve_transport::LinkError,
    ) {
        state.link = None;
        state.failures += 1;
        let delay_ms = Self::backoff_ms(&state.args.timing, state.failures);
        tracing::warn!(server = %state.args.endpoint, error = %err, attempt = state.failures,
            retry_in_ms = delay_ms, "{what} failed; reconnecting");
        myself.send_after(Duration::from_millis(delay_ms), || SessionMsg::Tick);
    }
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        myself.send_message(SessionMsg::Tick)?;
        Ok(SessionState {
            args,
            link: None,
            seq: 0,
            failures: 0,
            last_ack: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        self.stats.record_handled();
        match msg {
            SessionMsg::Tick => {
                let link = match &state.link {
                    Some(link) => link.clone(),
                    None => match state
                        .args
                        .transport
                        .connect(&state.args.endpoint, &state.args.creds)
                        .await
                    {
                        Ok(link) => {
                            state.link = Some(link.clone());
                            link
                        }
                        Err(e) => {
                            self.failed(&myself, state, "connecting to the server", &e);
                            return Ok(());
                        }
                    },
                };
                state.seq += 1;
                let hb = Heartbeat {
                    seq: state.seq,
                    load: self.load(&state.args.node_path).await,
                    api_endpoint: state.args.api_endpoint(),
                };
                match link.heartbeat(hb).await {
                    Ok(ack) => {
                        if state.failures > 0 || state.last_ack.is_none() {
                            tracing::info!(server = %state.args.endpoint, node = %ack.node,
                                generation = ack.lease_generation, "session to the server up");
                        }
                        state.failures = 0;
                        self.stats
                            .set_owned("lease_generation", ack.lease_generation);
                        state.last_ack = Some(ack);
                        myself.send_after(
                            Duration::from_millis(state.args.timing.heartbeat_interval_ms),
                            || SessionMsg::Tick,
                        );
                    }
                    Err(e) => self.failed(&myself, state, "heartbeat", &e),
                }
            }
        }
        Ok(())
    }
}
