//! The `node:{name}` actor: the local host as the control plane sees it.
//!
//! In single-node mode `gpve-server` runs it in-process; later a `gpve-agent` runs it on each
//! compute node. Today it answers status queries; the VM issue adds the `vm:{vmid}` children.

pub mod status;

use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

pub use status::{NodeStatus, NodeStatusError};

/// CPU usage is recomputed at most this often; in between the last figure is reported, so
/// a burst of status queries does not measure a meaningless few-millisecond window.
pub const CPU_SAMPLE_MIN_INTERVAL_MS: u64 = 500;

/// Actor name under which a node registers: `node:{name}`.
pub fn actor_name(node: &str) -> String {
    format!("node:{node}")
}

/// Commands of the node actor. The node has one lifecycle state (running): every command is
/// accepted whenever the actor is alive.
#[derive(Debug)]
pub enum NodeMsg {
    /// Host status (uptime, load, CPU, memory, rootfs, kernel); fails if `/proc` cannot be read.
    Status(RpcReplyPort<Result<NodeStatus, String>>),
}

impl ractor::Message for NodeMsg {}

/// The node actor; its arguments are the node name.
#[derive(Debug, Default)]
pub struct NodeActor {
    /// Supervision counters (messages handled) when run under a gpve supervisor.
    pub stats: Option<gpve_supervisor::ActorStats>,
}

/// State of the node actor.
#[derive(Debug)]
pub struct NodeState {
    name: String,
    last_sample: Option<(Instant, status::CpuTimes)>,
    last_cpu: f64,
}

impl NodeState {
    fn sample_cpu(&mut self) -> f64 {
        let now = Instant::now();
        let fresh = match self.last_sample {
            Some((at, _)) => {
                now.duration_since(at) >= Duration::from_millis(CPU_SAMPLE_MIN_INTERVAL_MS)
            }
            None => true,
        };
        if fresh && let Ok(times) = status::read_cpu_times() {
            if let Some((_, prev)) = self.last_sample {
                self.last_cpu = times.usage_since(&prev);
            }
            self.last_sample = Some((now, times));
        }
        self.last_cpu
    }
}

impl Actor for NodeActor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = String;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        name: String,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = NodeState {
            name,
            last_sample: None,
            last_cpu: 0.0,
        };
        state.sample_cpu();
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(stats) = &self.stats {
            stats.record_handled();
        }
        match message {
            NodeMsg::Status(reply) => {
                let cpu = state.sample_cpu();
                let result = status::read_node_status(&state.name, cpu).map_err(|e| {
                    tracing::warn!(node = %state.name, error = %e, "reading host status failed");
                    e.to_string()
                });
                // The caller may have given up waiting; that is not the node's failure.
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_status() {
        let (actor, handle) = Actor::spawn(None, NodeActor::default(), "n1".to_string())
            .await
            .unwrap();
        let status = ractor::call_t!(actor, NodeMsg::Status, 5_000)
            .unwrap()
            .unwrap();
        assert_eq!(status.node, "n1");
        assert!(status.memory.total > 0);
        actor.stop(None);
        handle.await.unwrap();
    }
}
