//! Shared state of the API service: what every handler may ask.

use std::sync::Arc;
use std::time::Duration;

use gpve_actors::task::TaskManager;
use gpve_store::Store;

use crate::access_db::AccessDb;
use crate::auth::TicketKey;
use crate::pve::cluster::resources::ResourceCache;
use crate::tree::NodeLink;

/// Settings of the API service.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Name of the local node.
    pub node_name: String,
    /// Cluster name, reported by `/access/ticket` when set.
    pub cluster_name: Option<String>,
    /// Delay before answering a failed login, like Proxmox, to slow down password guessing.
    pub login_failure_delay_ms: u64,
    /// How long a `/cluster/resources` listing may be served from memory.
    pub resources_cache_ttl_ms: u64,
    /// How long a handler waits for an actor's answer.
    pub actor_call_timeout_ms: u64,
}

impl ApiConfig {
    /// Defaults for a node called `node_name`.
    pub fn new(node_name: impl Into<String>) -> Self {
        ApiConfig {
            node_name: node_name.into(),
            cluster_name: None,
            login_failure_delay_ms: 2000,
            resources_cache_ttl_ms: 1000,
            actor_call_timeout_ms: 5000,
        }
    }

    /// The actor call timeout as a duration.
    pub fn actor_timeout(&self) -> Duration {
        Duration::from_millis(self.actor_call_timeout_ms)
    }
}

/// Everything handlers share; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

/// The shared parts.
pub struct Inner {
    pub config: ApiConfig,
    pub store: Store,
    pub key: TicketKey,
    pub access: AccessDb,
    pub tasks: TaskManager,
    /// The local `node:{name}` actor, found through the supervision directory.
    pub node: NodeLink,
    pub resources: ResourceCache,
    /// Request metrics and the actor message-rate sampler (outlive `api` actor restarts).
    pub metrics: crate::metrics::Metrics,
    /// The VM host handlers and the VM supervisor use instead of real QEMU, when set
    /// (the deterministic simulation sets one with the simulated hypervisor).
    pub vm_host: std::sync::OnceLock<gpve_actors::vm::VmHost>,
    /// This process's part in API forwarding (server or agent); unset: a single node.
    pub forward: std::sync::OnceLock<crate::forward::Role>,
    /// The node sessions (the actor console reaches other nodes through them); unset: a
    /// single node.
    pub sessions: std::sync::OnceLock<Arc<dyn gpve_transport::session::NodeSessions>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("node", &self.0.config.node_name)
            .finish()
    }
}

impl AppState {
    /// Assemble the state.
    pub fn new(
        config: ApiConfig,
        store: Store,
        key: TicketKey,
        tasks: TaskManager,
        node: NodeLink,
    ) -> Self {
        AppState(Arc::new(Inner {
            resources: ResourceCache::new(config.resources_cache_ttl_ms),
            metrics: crate::metrics::Metrics::new(),
            access: AccessDb::new(store.clone()),
            config,
            store,
            key,
            tasks,
            node,
            vm_host: std::sync::OnceLock::new(),
            forward: std::sync::OnceLock::new(),
            sessions: std::sync::OnceLock::new(),
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Current Unix time in seconds.
pub fn now_s() -> i64 {
    gpve_supervisor::wall_now_s()
}
