//! The server's root supervision tree (single-node mode):
//!
//! ```text
//! gpve-server            one-for-one, 5 restarts in 60 s, then the process exits
//! ├── store              probes the store; fails (and is restarted) when it stops answering
//! ├── cluster            supervisor: membership (node monitors) and the gRPC listener
//! ├── session            ractor_cluster NodeServer, node sessions to the agents (with gRPC)
//! ├── node:{name}        the local node actor
//! ├── storage            supervisor; one storage:{id} actor per storage enabled here
//! ├── network            bridges, VM taps and the nftables ruleset, converged to the store
//! ├── qemu               supervisor; one vm:{vmid} actor per VM on this node (adopts QEMU)
//! ├── usage-sampler      node and VM resource usage every 10 s, for /metrics and rrddata
//! └── api                owns the HTTPS listener; restarted if the server task dies
//! ```
//!
//! Handlers reach actors through the [`Directory`] by path (`gpve-server/node:n1`), so a
//! restarted actor is found again without re-wiring.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use gpve_actors::node::{NodeActor, NodeMsg};
use gpve_store::{Key, Store};
use gpve_supervisor::{ActorStats, ChildSpec, Directory, RestartPolicy, Strategy, SupervisorSpec};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::state::AppState;

/// Path of the root supervisor.
pub const ROOT: &str = "gpve-server";
/// How often the store actor checks that the store answers.
pub const STORE_PROBE_INTERVAL_MS: u64 = 5_000;
/// How long in-flight requests may finish when the api actor stops.
pub const SHUTDOWN_GRACE_MS: u64 = 5_000;
/// A TLS handshake that takes longer is dropped.
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Directory path of the node actor for `node`.
pub fn node_path(node: &str) -> String {
    format!("{ROOT}/{}", gpve_actors::node::actor_name(node))
}

/// Finds the current incarnation of the local node actor.
#[derive(Debug, Clone)]
pub struct NodeLink {
    pub directory: Directory,
    pub path: String,
}

impl NodeLink {
    /// The running node actor, if any.
    pub fn get(&self) -> Option<ActorRef<NodeMsg>> {
        self.directory.lookup_ref::<NodeMsg>(&self.path)
    }
}

// ---------------------------------------------------------------------------------------
// store

/// Commands of the store actor.
#[derive(Debug)]
pub enum StoreMsg {
    /// Read a key; fail the actor if the store does not answer.
    Probe,
}

impl ractor::Message for StoreMsg {}

/// Watches the store on behalf of the tree.
#[derive(Debug)]
pub struct StoreActor {
    pub stats: ActorStats,
}

impl Actor for StoreActor {
    type Msg = StoreMsg;
    type State = Store;
    type Arguments = Store;

    async fn pre_start(
        &self,
        myself: ActorRef<StoreMsg>,
        store: Store,
    ) -> Result<Store, ActorProcessingErr> {
        myself.send_interval(Duration::from_millis(STORE_PROBE_INTERVAL_MS), || {
            StoreMsg::Probe
        });
        Ok(store)
    }

    async fn handle(
        &self,
        _myself: ActorRef<StoreMsg>,
        msg: StoreMsg,
        store: &mut Store,
    ) -> Result<(), ActorProcessingErr> {
        self.stats.record_handled();
        match msg {
            StoreMsg::Probe => {
                store.get(&Key::pack(&("users", "root@pam"))).await?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// api

/// Commands of the api actor.
#[derive(Debug)]
pub enum ApiMsg {
    /// The HTTPS server task ended on its own: fail so the supervisor restarts the listener.
    ServerExited(String),
}

impl ractor::Message for ApiMsg {}

/// What each incarnation of the api actor needs.
#[derive(Clone)]
pub struct ApiArgs {
    /// Where to listen; after the first bind it holds the bound address, so a restart
    /// reuses the port even when the configuration said port 0.
    pub listen: Arc<Mutex<SocketAddr>>,
    pub tls: Arc<rustls::ServerConfig>,
    pub state: AppState,
}

/// Owns the HTTPS listener.
#[derive(Debug)]
pub struct ApiActor {
    pub stats: ActorStats,
}

/// The api actor's state.
pub struct ApiState {
    handle: Handle<SocketAddr>,
    serve: tokio::task::JoinHandle<()>,
    app: AppState,
}

impl Actor for ApiActor {
    type Msg = ApiMsg;
    type State = ApiState;
    type Arguments = ApiArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ApiMsg>,
        args: ApiArgs,
    ) -> Result<ApiState, ActorProcessingErr> {
        let addr = *args.listen.lock().unwrap_or_else(|p| p.into_inner());
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let bound = listener.local_addr()?;
        *args.listen.lock().unwrap_or_else(|p| p.into_inner()) = bound;
        let handle: Handle<SocketAddr> = Handle::new();
        let server = axum_server::from_tcp_rustls(listener, RustlsConfig::from_config(args.tls))?
            .map(|acceptor| {
                acceptor.handshake_timeout(Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS))
            })
            .handle(handle.clone());
        let app = args.state.clone();
        // With the peer address: the audit log records where each change came from.
        let service =
            crate::server::app(args.state).into_make_service_with_connect_info::<SocketAddr>();
        let serve = tokio::spawn(async move {
            let reason = match server.serve(service).await {
                Ok(()) => "the HTTPS server stopped".to_string(),
                Err(e) => format!("the HTTPS server failed: {e}"),
            };
            // Gone only if the actor already stopped, which is what we would ask for.
            let _ = myself.cast(ApiMsg::ServerExited(reason));
        });
        tracing::info!(addr = %bound, "serving the API over HTTPS");
        Ok(ApiState { handle, serve, app })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ApiMsg>,
        msg: ApiMsg,
        _state: &mut ApiState,
    ) -> Result<(), ActorProcessingErr> {
        self.stats.record_handled();
        match msg {
            ApiMsg::ServerExited(reason) => Err(reason.into()),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ApiMsg>,
        state: &mut ApiState,
    ) -> Result<(), ActorProcessingErr> {
        // Watch streams never end by themselves; without this the graceful shutdown
        // would wait out its whole grace period for them.
        state.app.metrics.close_event_streams();
        state
            .handle
            .graceful_shutdown(Some(Duration::from_millis(SHUTDOWN_GRACE_MS)));
        let grace = Duration::from_millis(SHUTDOWN_GRACE_MS + 1_000);
        if tokio::time::timeout(grace, &mut state.serve).await.is_err() {
            state.serve.abort();
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// root

/// The children every node process runs for its node, in start order: `node:{name}`,
/// `storage`, `network`, `qemu` (vm-supervisor) and `usage-sampler`. The server's root
/// runs them for its in-process node and `gpve-agent` for a joined node (against the
/// server's store reached remotely), so both build the node tree here, once. Handlers and
/// the VM supervisor find these actors under [`ROOT`], so an agent's root has that name too.
pub fn node_children(node: &str, store: Store, state: &AppState) -> Vec<ChildSpec> {
    let node_name = node.to_string();
    let storage = gpve_actors::storage::supervisor_child(node, store.clone());
    let vms = gpve_actors::vm::supervisor_child(crate::pve::nodes::qemu::host(state));
    let network = gpve_actors::network::child(node, store);
    let sampler_state = state.clone();
    vec![
        ChildSpec::actor(
            gpve_actors::node::actor_name(node),
            "node",
            RestartPolicy::Permanent,
            move |ctx| {
                (
                    NodeActor {
                        stats: Some(ctx.stats.clone()),
                    },
                    node_name.clone(),
                )
            },
        ),
        // Storage before api: handlers find the storage actors already running.
        storage,
        // Network before VMs: a starting VM asks it to apply its firewall.
        network,
        // VMs after storage: a re-adopted or restarted VM resolves its disks through it.
        vms,
        // After the node and the VMs: it samples both.
        ChildSpec::actor(
            "usage-sampler",
            "sampler",
            RestartPolicy::Permanent,
            move |ctx| {
                (
                    crate::metrics::SamplerActor {
                        stats: ctx.stats.clone(),
                        state: sampler_state.clone(),
                    },
                    (),
                )
            },
        ),
    ]
}

/// The api actor as a child (the server's HTTPS listener, or an agent's forwarded-API
/// listener).
pub fn api_child(api: ApiArgs) -> ChildSpec {
    ChildSpec::actor("api", "api", RestartPolicy::Permanent, move |ctx| {
        (
            ApiActor {
                stats: ctx.stats.clone(),
            },
            api.clone(),
        )
    })
}

/// The root supervisor's specification.
pub fn root_spec(
    node: &str,
    store: Store,
    api: ApiArgs,
    cluster: crate::cluster::ClusterOptions,
) -> SupervisorSpec {
    let tenants = crate::vcluster::supervisor_child(&cluster.data_dir, api.state.clone());
    let ha = crate::cluster::ha::child(api.state.clone(), Default::default());
    // After the VMs: the server node's part in live migrations (clustered servers only).
    let migration = crate::cluster::migration::server_child(&cluster, &api);
    let session = crate::cluster::session::server_child(&cluster, store.clone(), &api.state);
    let cluster = crate::cluster::supervisor_child(cluster, store.clone(), Some(ha));
    let mut node_tree = node_children(node, store.clone(), &api.state);
    node_tree.extend(migration);
    let mut spec = SupervisorSpec::new(ROOT)
        .kind("server")
        .strategy(Strategy::OneForOne)
        .intensity(5, 60_000)
        .backoff(100, 5_000)
        .child(ChildSpec::actor(
            "store",
            "store",
            RestartPolicy::Permanent,
            move |ctx| {
                (
                    StoreActor {
                        stats: ctx.stats.clone(),
                    },
                    store.clone(),
                )
            },
        ))
        .child(cluster);
    // After cluster: node sessions to the agents (a server with gRPC only).
    if let Some(session) = session {
        spec = spec.child(session);
    }
    for child in node_tree {
        spec = spec.child(child);
    }
    spec
        // After the VMs: virtual clusters create their worker VMs through them.
        .child(tenants)
        .child(api_child(api))
}
