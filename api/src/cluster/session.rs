//! The `session` child of every cluster process: this process's `ractor_cluster`
//! `NodeServer` and its node sessions ([`gpve_transport::session::cluster`]).
//!
//! - On the server: listens for mutual-TLS session connections on the session port
//!   (`--session-listen`, default the gRPC address with port
//!   [`gpve_transport::session::DEFAULT_SESSION_PORT`]), admits a node only with the
//!   certificate recorded at its join ([`StorePolicy`]), and records the bound port in the
//!   store ([`port_key`]) for the agents. It runs no service of its own: agents have no
//!   business in the server's tree.
//! - On an agent: reads the port from the store, dials the server's host on it with its
//!   node certificate, and dials again with exponential backoff after any drop. Its
//!   service actor answers the server's introspection calls
//!   ([`crate::v1::actors::remote::IntrospectService`]).
//!
//! The `NodeServer` and the service actor are linked to this actor: when either stops,
//! this actor fails and its supervisor starts all three again. The accept or dial loop is
//! a task aborted with the actor's state, so a killed incarnation leaves nothing behind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gpve_store::{Key, Store};
use gpve_supervisor::{ActorStats, ChildSpec, RestartPolicy};
use gpve_transport::session::cluster::{
    ClusterSessions, NodeServerMessage, NodeServiceArgs, SessionPolicy, client_config, cookie,
    dial, serve, server_config, session_endpoint, start_node_server, start_service,
};
use gpve_transport::{NodeCredentials, PeerIdentity, async_trait};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::state::AppState;

/// How long the server waits before trying a busy session port again.
pub const BIND_RETRY_MS: u64 = 5_000;
/// First wait of an agent before dialing again; doubles up to [`REDIAL_MAX_MS`].
pub const REDIAL_INITIAL_MS: u64 = 200;
/// Longest wait of an agent between two dials.
pub const REDIAL_MAX_MS: u64 = 5_000;

/// Directory path of the session actor (under the root of every node process).
pub fn session_path() -> String {
    format!("{}/session", crate::tree::ROOT)
}

/// Where the server records its session port for the agents.
pub fn port_key() -> Key {
    Key::pack(&("cluster-session", "port"))
}

/// Admits a node only with the certificate the cluster issued at its join.
pub struct StorePolicy {
    pub store: Store,
}

#[async_trait]
impl SessionPolicy for StorePolicy {
    async fn admit(&self, peer: &PeerIdentity) -> Result<(), String> {
        match super::records::read_node(&self.store, &peer.node).await {
            Ok(Some((record, _, _))) if record.cert_fingerprint == peer.cert_fingerprint => Ok(()),
            Ok(Some(_)) => Err("its certificate is not the one issued at its join".into()),
            Ok(None) => Err("it is not a member of the cluster".into()),
            Err(e) => Err(format!("reading its record failed: {e}")),
        }
    }
}

/// What the session actor does besides running the `NodeServer`.
#[derive(Clone)]
pub enum SessionRole {
    /// Accept sessions on `listen` (the server).
    Server {
        listen: SocketAddr,
        data_dir: std::path::PathBuf,
        cluster_name: String,
    },
    /// Dial the server whose gRPC endpoint is `grpc_endpoint` (an agent).
    Agent {
        grpc_endpoint: String,
        creds: NodeCredentials,
    },
}

/// What each incarnation of the session actor needs.
#[derive(Clone)]
pub struct SessionArgs {
    pub node: String,
    pub role: SessionRole,
    pub store: Store,
    pub state: AppState,
    /// The handle the API calls through; attached while this actor runs.
    pub sessions: ClusterSessions,
}

/// Owns the `NodeServer`, the service actor and the accept or dial loop.
#[derive(Debug)]
pub struct SessionActor {
    pub stats: ActorStats,
}

/// Aborts the loop when the actor's state goes, whichever way the actor ends.
pub struct SessionState {
    task: tokio::task::JoinHandle<()>,
    sessions: ClusterSessions,
}

impl Drop for SessionState {
    fn drop(&mut self) {
        self.task.abort();
        self.sessions.detach();
    }
}

/// Messages of the session actor: none (it works through its loop and its links).
#[derive(Debug)]
pub enum SessionActorMsg {}

impl ractor::Message for SessionActorMsg {}

fn startup(e: impl std::fmt::Display) -> ActorProcessingErr {
    e.to_string().into()
}

/// The cluster CA (PEM) and the session listener's TLS configuration, with a server
/// certificate issued for this start (as the gRPC listener does).
fn server_tls(
    data_dir: &std::path::Path,
    cluster_name: &str,
    node: &str,
) -> Result<(String, Arc<rustls::ServerConfig>), ActorProcessingErr> {
    let ca = super::files::ClusterFiles::new(data_dir)
        .ensure_ca(cluster_name)
        .map_err(|e| startup(gpve_actors::storage::error_chain(&e)))?;
    let names = vec![
        node.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let (chain, key) = ca.issue_server(&names).map_err(startup)?;
    let tls = server_config(&chain, &key, &ca.cert_pem).map_err(startup)?;
    Ok((ca.cert_pem.clone(), tls))
}

impl Actor for SessionActor {
    type Msg = SessionActorMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SessionActorMsg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        let (ca_pem, mut server_tls) = match &args.role {
            SessionRole::Server {
                data_dir,
                cluster_name,
                ..
            } => {
                let (ca_pem, tls) = server_tls(data_dir, cluster_name, &args.node)?;
                (ca_pem, Some(tls))
            }
            SessionRole::Agent { creds, .. } => (creds.ca_pem.clone(), None),
        };
        let cookie = cookie(&ca_pem).map_err(startup)?;
        let node_server = start_node_server(&args.node, cookie, Some(myself.get_cell()))
            .await
            .map_err(startup)?;
        let task = match args.role.clone() {
            SessionRole::Server { listen, .. } => {
                let tls = server_tls
                    .take()
                    .ok_or_else(|| startup("the server's session TLS configuration is missing"))?;
                let policy = Arc::new(StorePolicy {
                    store: args.store.clone(),
                });
                let store = args.store.clone();
                let ns = node_server.clone();
                tokio::spawn(async move {
                    let listener = loop {
                        match tokio::net::TcpListener::bind(listen).await {
                            Ok(l) => break l,
                            Err(e) => {
                                tracing::error!(%listen, error = %e,
                                    "cannot listen for node sessions (the actor console cannot reach agents); retrying in {BIND_RETRY_MS} ms");
                                tokio::time::sleep(Duration::from_millis(BIND_RETRY_MS)).await;
                            }
                        }
                    };
                    let port = listener
                        .local_addr()
                        .map(|a| a.port())
                        .unwrap_or(listen.port());
                    if let Err(e) = store.put_json(&port_key(), &port).await {
                        tracing::error!(error = %e, "recording the session port failed");
                    }
                    tracing::info!(%listen, port, "serving node sessions (ractor_cluster over mutual TLS)");
                    serve(listener, tls, policy, ns).await;
                })
            }
            SessionRole::Agent {
                grpc_endpoint,
                creds,
            } => {
                let tls = client_config(&creds).map_err(startup)?;
                start_service(
                    NodeServiceArgs {
                        node: args.node.clone(),
                        service: Arc::new(crate::v1::actors::remote::IntrospectService {
                            state: args.state.clone(),
                        }),
                    },
                    myself.get_cell(),
                )
                .await
                .map_err(startup)?;
                let store = args.store.clone();
                let ns = node_server.clone();
                tokio::spawn(dial_loop(grpc_endpoint, tls, store, ns))
            }
        };
        args.sessions.attach(node_server);
        Ok(SessionState {
            task,
            sessions: args.sessions,
        })
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<SessionActorMsg>,
        evt: SupervisionEvent,
        _state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        // Only the NodeServer and the service actor are linked here.
        match evt {
            SupervisionEvent::ActorTerminated(who, _, reason) => Err(format!(
                "linked actor {} stopped: {}",
                who.get_id(),
                reason.unwrap_or_default()
            )
            .into()),
            SupervisionEvent::ActorFailed(who, e) => {
                Err(format!("linked actor {} failed: {e}", who.get_id()).into())
            }
            _ => Ok(()),
        }
    }
}

/// Dial the server again and again: after a failure with backoff, after a session that
/// lasted with the initial delay.
async fn dial_loop(
    grpc_endpoint: String,
    tls: Arc<rustls::ClientConfig>,
    store: Store,
    node_server: ActorRef<NodeServerMessage>,
) {
    let mut delay_ms = REDIAL_INITIAL_MS;
    loop {
        let port = match store.get_json::<u16>(&port_key()).await {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err("the server has not recorded its session port yet".to_string()),
            Err(e) => Err(format!("reading the session port failed: {e}")),
        };
        let outcome = match port {
            Ok(port) => {
                let endpoint = session_endpoint(&grpc_endpoint, port);
                match dial(&endpoint, tls.clone(), &node_server).await {
                    Ok(mut link) => {
                        tracing::info!(%endpoint, "node session open");
                        link.closed().await;
                        tracing::warn!(%endpoint, "node session closed; dialing again");
                        delay_ms = REDIAL_INITIAL_MS;
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(e) => Err(e),
        };
        if let Err(reason) = outcome {
            tracing::warn!(%reason, retry_ms = delay_ms, "no node session");
        }
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        delay_ms = (delay_ms * 2).min(REDIAL_MAX_MS);
    }
}

/// The `session` child.
pub fn child(args: SessionArgs) -> ChildSpec {
    ChildSpec::actor("session", "session", RestartPolicy::Permanent, move |ctx| {
        (
            SessionActor {
                stats: ctx.stats.clone(),
            },
            args.clone(),
        )
    })
}

/// The server's `session` child when it serves gRPC (agents can join), else `None`. Makes
/// `state`'s node sessions go through it.
pub fn server_child(
    opts: &super::ClusterOptions,
    store: Store,
    state: &AppState,
) -> Option<ChildSpec> {
    let grpc = opts.grpc_listen?;
    // gRPC on an ephemeral port (tests, several servers on one host): sessions too. Agents
    // read the bound port from the store.
    let listen = opts.session_listen.unwrap_or_else(|| {
        let port = match grpc.port() {
            0 => 0,
            _ => gpve_transport::session::DEFAULT_SESSION_PORT,
        };
        SocketAddr::new(grpc.ip(), port)
    });
    let sessions = ClusterSessions::new();
    let _ = state.sessions.set(Arc::new(sessions.clone()));
    Some(child(SessionArgs {
        node: opts.node_name.clone(),
        role: SessionRole::Server {
            listen,
            data_dir: opts.data_dir.clone(),
            cluster_name: opts
                .cluster_name
                .clone()
                .unwrap_or_else(|| "gpve".to_string()),
        },
        store,
        state: state.clone(),
        sessions,
    }))
}

/// An agent's `session` child. Makes `state`'s node sessions go through it.
pub fn agent_child(
    node: &str,
    grpc_endpoint: &str,
    creds: NodeCredentials,
    store: Store,
    state: &AppState,
) -> ChildSpec {
    let sessions = ClusterSessions::new();
    let _ = state.sessions.set(Arc::new(sessions.clone()));
    child(SessionArgs {
        node: node.to_string(),
        role: SessionRole::Agent {
            grpc_endpoint: grpc_endpoint.to_string(),
            creds,
        },
        store,
        state: state.clone(),
        sessions,
    })
}
