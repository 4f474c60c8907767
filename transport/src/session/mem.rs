//! In-process node sessions with the contract of [`super::cluster::ClusterSessions`]:
//! services are registered by node name and called directly. A node marked unreachable
//! behaves like a silent partition: the call waits out its timeout (on tokio's clock, so
//! a simulation with paused time decides how long that is).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{NodeService, NodeSessions, SessionError, check_request_size};

struct Entry {
    service: Arc<dyn NodeService>,
    reachable: bool,
}

/// Node sessions inside one process.
#[derive(Clone, Default)]
pub struct MemSessions {
    nodes: Arc<Mutex<BTreeMap<String, Entry>>>,
}

impl std::fmt::Debug for MemSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemSessions").finish_non_exhaustive()
    }
}

impl MemSessions {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `node` opened its session, serving `service`.
    pub fn connect(&self, node: &str, service: Arc<dyn NodeService>) {
        self.lock().insert(
            node.to_string(),
            Entry {
                service,
                reachable: true,
            },
        );
    }

    /// `node`'s session closed.
    pub fn disconnect(&self, node: &str) {
        self.lock().remove(node);
    }

    /// Cut `node` off silently (`false`) or heal it (`true`).
    pub fn set_reachable(&self, node: &str, reachable: bool) {
        if let Some(e) = self.lock().get_mut(node) {
            e.reachable = reachable;
        }
    }
}

#[async_trait]
impl NodeSessions for MemSessions {
    async fn call(
        &self,
        node: &str,
        request: Vec<u8>,
        timeout_ms: u64,
    ) -> Result<Vec<u8>, SessionError> {
        check_request_size(&request)?;
        let found = self
            .lock()
            .get(node)
            .map(|e| (e.service.clone(), e.reachable));
        let timeout = Duration::from_millis(timeout_ms);
        let timed_out = || SessionError::Timeout {
            node: node.to_string(),
            timeout_ms,
        };
        match found {
            None => Err(SessionError::NoSession {
                node: node.to_string(),
            }),
            Some((_, false)) => {
                tokio::time::sleep(timeout).await;
                Err(timed_out())
            }
            Some((service, true)) => tokio::time::timeout(timeout, service.handle(request))
                .await
                .map_err(|_| timed_out()),
        }
    }

    async fn connected(&self) -> Vec<String> {
        // Like ractor_cluster, a silent partition leaves the session listed.
        self.lock().keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;

    #[async_trait]
    impl NodeService for Echo {
        async fn handle(&self, request: Vec<u8>) -> Vec<u8> {
            request
        }
    }

    #[tokio::test]
    async fn calls_reach_connected_nodes_and_a_partition_times_out() {
        let s = MemSessions::new();
        assert_eq!(
            s.call("n1", b"x".to_vec(), 100).await,
            Err(SessionError::NoSession { node: "n1".into() })
        );
        s.connect("n1", Arc::new(Echo));
        assert_eq!(s.call("n1", b"x".to_vec(), 100).await, Ok(b"x".to_vec()));
        assert_eq!(s.connected().await, vec!["n1".to_string()]);
        s.set_reachable("n1", false);
        let t = tokio::time::Instant::now();
        assert_eq!(
            s.call("n1", b"x".to_vec(), 100).await,
            Err(SessionError::Timeout {
                node: "n1".into(),
                timeout_ms: 100
            })
        );
        assert!(
            t.elapsed() >= Duration::from_millis(100),
            "it waited out the timeout"
        );
        // A silent partition is not noticed: the session still counts as open.
        assert_eq!(s.connected().await, vec!["n1".to_string()]);
        s.set_reachable("n1", true);
        assert_eq!(s.call("n1", b"y".to_vec(), 100).await, Ok(b"y".to_vec()));
        let big = vec![0u8; crate::session::MAX_CALL_BYTES + 1];
        assert!(matches!(
            s.call("n1", big, 100).await,
            Err(SessionError::Transport(_))
        ));
        s.disconnect("n1");
        assert!(s.connected().await.is_empty());
    }
}
