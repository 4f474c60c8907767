//! The server's side of a multi-node cluster (issue 6, first part): the cluster CA and
//! join tokens ([`files`]), member records and leases in the store ([`records`]), the
//! gRPC join and node services ([`service`]), and the supervision subtree:
//!
//! ```text
//! cluster                    supervisor, rest-for-one
//! ├── membership             supervisor; monitors added on demand, escalation logged
//! │   └── node-monitor:{n}   fails when n's lease expires (the HA manager hooks in here)
//! ├── grpc                   owns the gRPC listener (Join, Node, Store, Migration relay);
//! │                          rebuilds the monitors
//! └── ha-manager             HA state machine: restarts, relocations, recovery ([`ha`])
//! ```
//!
//! Rest-for-one: when `membership` restarts (and loses its monitors), `grpc` restarts
//! after it and starts a monitor again for every member in the store.

pub mod files;
pub mod ha;
pub mod migration;
pub mod monitor;
pub mod records;
pub mod service;
pub mod session;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gpve_store::Store;
use gpve_supervisor::{ActorStats, ChildSpec, RestartPolicy, Strategy, SupervisorSpec};
use ractor::{Actor, ActorProcessingErr, ActorRef, SpawnErr};

use self::files::ClusterFiles;
use self::monitor::Monitors;
use self::service::ServerCluster;

/// How often agents send a heartbeat.
pub const HEARTBEAT_INTERVAL_MS: u64 = 1_000;
/// How long a heartbeat keeps a node's lease.
pub const LEASE_TTL_MS: u64 = 5_000;
/// How long the gRPC listener waits before trying a busy port again.
pub const GRPC_BIND_RETRY_MS: u64 = 5_000;
/// A gRPC TLS handshake that takes longer is dropped.
pub const GRPC_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// How long in-flight gRPC calls may finish when the grpc actor stops.
pub const GRPC_SHUTDOWN_GRACE_MS: u64 = 2_000;

/// Current Unix time in milliseconds (leases are wall-clock deadlines shared through the
/// store).
pub fn now_ms() -> i64 {
    i64::try_from(gpve_supervisor::wall_now_ms()).unwrap_or(i64::MAX)
}

/// How the server takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub data_dir: PathBuf,
    pub node_name: String,
    pub cluster_name: Option<String>,
    /// Where to serve gRPC (Join, Node); `None` serves no gRPC (single node, tests).
    pub grpc_listen: Option<SocketAddr>,
    /// `host:port` agents are told to dial after joining; `None`: the one they joined by.
    pub advertise: Option<String>,
    /// Where to accept node sessions (with gRPC only); `None`: the gRPC address with port
    /// [`gpve_transport::session::DEFAULT_SESSION_PORT`].
    pub session_listen: Option<SocketAddr>,
    pub lease_ttl_ms: u64,
}

impl ClusterOptions {
    /// Defaults for a single-node server without gRPC.
    pub fn single(data_dir: PathBuf, node_name: String) -> Self {
        ClusterOptions {
            data_dir,
            node_name,
            cluster_name: None,
            grpc_listen: None,
            advertise: None,
            session_listen: None,
            lease_ttl_ms: LEASE_TTL_MS,
        }
    }
}

/// The `cluster` supervisor as a child of the server root.
pub fn supervisor_child(opts: ClusterOptions, store: Store, ha: Option<ChildSpec>) -> ChildSpec {
    let started_at_ms = now_ms();
    let mut spec = SupervisorSpec::new("cluster")
        .kind("cluster")
        .strategy(Strategy::RestForOne)
        .child(ChildSpec::supervisor(
            RestartPolicy::Permanent,
            monitor::membership_spec(),
        ));
    if let Some(listen) = opts.grpc_listen {
        let listen = Arc::new(Mutex::new(listen));
        spec = spec.child(ChildSpec::new(
            "grpc",
            "grpc",
            RestartPolicy::Permanent,
            move |ctx| {
                let (opts, store, listen) = (opts.clone(), store.clone(), listen.clone());
                async move {
                    let startup = |e: String| SpawnErr::StartupFailed(e.into());
                    let files = ClusterFiles::new(&opts.data_dir);
                    let cluster_name = opts.cluster_name.clone().unwrap_or_else(|| "gpve".into());
                    let ca = files
                        .ensure_ca(&cluster_name)
                        .map_err(|e| startup(gpve_actors::storage::error_chain(&e)))?;
                    let names = vec![
                        opts.node_name.clone(),
                        "localhost".to_string(),
                        "127.0.0.1".to_string(),
                        "::1".to_string(),
                    ];
                    let (chain, key) = ca
                        .issue_server(&names)
                        .map_err(|e| startup(e.to_string()))?;
                    let tls = gpve_transport::tls::server_config(&chain, &key, &ca.cert_pem)
                        .map_err(|e| startup(e.to_string()))?;
                    let monitors = Monitors {
                        directory: ctx.directory.clone(),
                        store: store.clone(),
                        started_at_ms,
                    };
                    let service = Arc::new(ServerCluster {
                        store,
                        ca: Arc::new(ca),
                        files,
                        monitors,
                        local_node: opts.node_name.clone(),
                        cluster_name: opts.cluster_name.clone(),
                        advertise: opts.advertise.clone(),
                        lease_ttl_ms: opts.lease_ttl_ms,
                    });
                    let (actor, _) = Actor::spawn_linked(
                        None,
                        GrpcActor {
                            stats: ctx.stats.clone(),
                        },
                        GrpcArgs {
                            listen,
                            tls,
                            service,
                        },
                        ctx.supervisor,
                    )
                    .await?;
                    Ok(actor.get_cell())
                }
            },
        ));
    }
    // Last: it reads what membership and grpc maintain (see [`ha`]).
    if let Some(ha) = ha {
        spec = spec.child(ha);
    }
    ChildSpec::supervisor(RestartPolicy::Permanent, spec)
}

/// Commands of the grpc actor.
#[derive(Debug)]
pub enum GrpcMsg {
    /// Try to bind the listener (again).
    Bind,
    /// Start a monitor for every member in the store.
    Reconcile,
    /// The server task ended on its own: fail so the supervisor restarts it.
    ServerExited(String),
}

impl ractor::Message for GrpcMsg {}

/// What each incarnation of the grpc actor needs.
pub struct GrpcArgs {
    /// After the first bind it holds the bound address, so a restart reuses the port.
    pub listen: Arc<Mutex<SocketAddr>>,
    pub tls: Arc<rustls::ServerConfig>,
    pub service: Arc<ServerCluster>,
}

/// Owns the gRPC listener.
#[derive(Debug)]
pub struct GrpcActor {
    pub stats: ActorStats,
}

/// The grpc actor's state.
pub struct GrpcState {
    args: GrpcArgs,
    running: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
}

impl Actor for GrpcActor {
    type Msg = GrpcMsg;
    type State = GrpcState;
    type Arguments = GrpcArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<GrpcMsg>,
        args: GrpcArgs,
    ) -> Result<GrpcState, ActorProcessingErr> {
        myself.send_message(GrpcMsg::Bind)?;
        myself.send_message(GrpcMsg::Reconcile)?;
        Ok(GrpcState {
            args,
            running: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<GrpcMsg>,
        msg: GrpcMsg,
        state: &mut GrpcState,
    ) -> Result<(), ActorProcessingErr> {
        self.stats.record_handled();
        match msg {
            GrpcMsg::Bind if state.running.is_none() => {
                let addr = *state.args.listen.lock().unwrap_or_else(|p| p.into_inner());
                let listener = match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => l,
                    Err(e) => {
                        // A busy port must not take the API down with it: keep trying.
                        tracing::error!(%addr, error = %e,
                            "cannot listen for gRPC (agents cannot join or report); retrying in {} ms",
                            GRPC_BIND_RETRY_MS);
                        myself.send_after(Duration::from_millis(GRPC_BIND_RETRY_MS), || {
                            GrpcMsg::Bind
                        });
                        return Ok(());
                    }
                };
                let bound = listener.local_addr()?;
                *state.args.listen.lock().unwrap_or_else(|p| p.into_inner()) = bound;
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let service: Arc<dyn gpve_transport::ClusterService> = state.args.service.clone();
                let serve = gpve_transport::grpc::serve(
                    listener,
                    state.args.tls.clone(),
                    service,
                    GRPC_HANDSHAKE_TIMEOUT_MS,
                    async {
                        let _ = stopped.await;
                    },
                );
                let task = tokio::spawn(async move {
                    let reason = match serve.await {
                        Ok(()) => "the gRPC server stopped".to_string(),
                        Err(e) => gpve_actors::storage::error_chain(&e),
                    };
                    let _ = myself.cast(GrpcMsg::ServerExited(reason));
                });
                tracing::info!(addr = %bound, "serving gRPC (join, node sessions)");
                state.running = Some((stop, task));
            }
            GrpcMsg::Bind => {}
            GrpcMsg::Reconcile => {
                let members = records::list_nodes(&state.args.service.store).await?;
                for m in members {
                    if let Err(e) = state.args.service.monitors.ensure(&m.node).await {
                        tracing::warn!(node = %m.node, error = %e, "starting the node monitor failed");
                    }
                }
            }
            GrpcMsg::ServerExited(reason) => return Err(reason.into()),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<GrpcMsg>,
        state: &mut GrpcState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((stop, mut task)) = state.running.take() {
            let _ = stop.send(());
            let grace = Duration::from_millis(GRPC_SHUTDOWN_GRACE_MS);
            if tokio::time::timeout(grace, &mut task).await.is_err() {
                task.abort();
            }
        }
        Ok(())
    }
}

/// `gpve-server token create`: make sure the CA exists and write a new token.
pub fn create_token(
    data_dir: &std::path::Path,
    cluster_name: Option<&str>,
    ttl_s: i64,
    reusable: bool,
    description: Option<String>,
) -> Result<(String, files::TokenRecord), files::ClusterFilesError> {
    let files = ClusterFiles::new(data_dir);
    let ca = files.ensure_ca(cluster_name.unwrap_or("gpve"))?;
    let (token, record) =
        files.create_token(&ca, ttl_s, reusable, description, crate::state::now_s())?;
    Ok((token.to_string(), record))
}
