//! `gpve-agent`: a compute node that joined a server.
//!
//! `gpve-agent run` ([`start_node`]) runs the same node tree as the server's in-process
//! node ([`crate::tree::node_children`]) against the server's store, reached over the
//! mutual-TLS gRPC session ([`gpve_transport::store`]), and serves the API the server
//! forwards to it ([`crate::forward`]):
//!
//! ```text
//! gpve-server            (the root of every node process has this name: handlers find
//! │                       actors under it) one-for-one, 5 restarts in 60 s, then exit
//! ├── node:{name}        the node actor (host status)
//! ├── storage            storage actors of the storages enabled on this node
//! ├── network            bridges, taps, firewall of this node's VMs
//! ├── qemu               vm:{vmid} for every VM record on this node (re-adopts QEMU)
//! ├── usage-sampler      node and VM usage
//! ├── api                HTTPS listener for forwarded calls (only the server's proxy
//! │                      certificate is admitted; identity from the server)
//! ├── migration          this node's part in live migrations: its target side (incoming
//! │                      QEMUs, reached by the server on [`migration::INTERNAL_PATH`]) and
//! │                      the client of the server's gRPC `Migration` relay
//! ├── session            the ractor_cluster NodeServer and its session to the server
//! │                      (mutual TLS with the node certificate, redialed with backoff);
//! │                      answers the server's actor-console calls for this node
//! └── transport          the session to the server: heartbeats every 1 s (with the API
//!                        address), reconnects after any outage with exponential backoff
//! ```
//!
//! [`start`] runs only `node:{name}` and `transport` (any [`Transport`], such as the
//! in-memory one); the node tree needs the gRPC store.
//!
//! The data directory of an agent:
//!
//! ```text
//! DIR/agent.json   node name, server endpoint, cluster name (written last: "joined")
//! DIR/ca.pem       the cluster CA (pinned at the join by the token's fingerprint)
//! DIR/cert.pem     this node's certificate, signed by the cluster CA
//! DIR/key.pem      its private key (0600), generated here: it never left the node
//! DIR/migration-tls/  the same CA, certificate and key under the names QEMU's TLS
//!                  migration reads (0600), rewritten at every start
//! ```
//!
//! Two planes reach the node: the data plane is the server forwarding HTTP to the `api`
//! listener (like pveproxy); the supervision plane (the actor console) is `ractor_cluster`
//! over the `session` ([`crate::cluster::session`]).

pub mod fence;
pub mod migration;
pub mod session;

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gpve_actors::task::TaskManager;
use gpve_transport::grpc::GrpcTransport;

use crate::auth::TicketKey;
use crate::state::{ApiConfig, AppState};

use gpve_actors::node::NodeActor;
use gpve_supervisor::{
    ChildSpec, Directory, RestartPolicy, Strategy, Supervisor, SupervisorHandle, SupervisorSpec,
};
use gpve_transport::token::BootstrapToken;
use gpve_transport::{JoinRequest, LinkError, NodeCredentials, Transport};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use self::session::{SessionActor, SessionArgs};

/// Path of the agent's root supervisor.
pub const AGENT_ROOT: &str = "gpve-agent";

/// Failures of `join` and `run`.
#[derive(Debug, Error)]
pub enum AgentError {
    #[error("{0} already holds a joined node ({1}); use another --data-dir or `gpve-agent run`")]
    AlreadyJoined(PathBuf, String),
    #[error("{0} has not joined a cluster; run `gpve-agent join` first")]
    NotJoined(PathBuf),
    #[error("invalid node name '{0}' (letters, digits and '-', at most 64 characters)")]
    NodeName(String),
    #[error(transparent)]
    Token(#[from] gpve_transport::token::TokenError),
    #[error("joining failed")]
    Join(#[source] LinkError),
    #[error("the server sent a CA certificate that does not match the token's fingerprint")]
    CaMismatch,
    #[error("could not access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("creating the node key failed")]
    Pki(#[from] gpve_transport::pki::PkiError),
    #[error("starting the supervision tree failed")]
    Tree(#[source] gpve_supervisor::SupervisorError),
    #[error("reaching the server's store failed")]
    Store(#[source] LinkError),
    #[error("the node's API TLS configuration is unusable")]
    ApiTls(#[source] gpve_transport::tls::TlsError),
    #[error("setting up live migration failed")]
    Migration(#[source] crate::cluster::migration::MigrationSetupError),
    #[error("the migration client to the server is unusable")]
    MigrationLink(#[source] LinkError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `agent.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentConfig {
    pub node_name: String,
    /// `host:port` of the server's gRPC service.
    pub server_endpoint: String,
    #[serde(default)]
    pub cluster_name: Option<String>,
    pub joined_at_s: i64,
    /// Where `gpve-agent run` serves the forwarded API unless `--listen` says otherwise.
    #[serde(default)]
    pub api_listen: Option<String>,
}

/// An agent's data directory.
#[derive(Debug, Clone)]
pub struct AgentDir {
    pub root: PathBuf,
}

impl AgentDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        AgentDir { root: root.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("agent.json")
    }
    fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn write(&self, name: &str, contents: &[u8], mode: u32) -> Result<(), AgentError> {
        let path = self.file(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(contents).map_err(io(&path))?;
        f.sync_all().map_err(io(&path))
    }

    fn read(&self, name: &str) -> Result<String, AgentError> {
        let path = self.file(name);
        std::fs::read_to_string(&path).map_err(io(&path))
    }

    /// Record where `run` serves the forwarded API by default (`join --listen`).
    pub fn save_api_listen(&self, listen: &str) -> Result<(), AgentError> {
        let (mut config, _) = self.load()?;
        config.api_listen = Some(listen.to_string());
        let json = serde_json::to_vec_pretty(&config).map_err(|e| AgentError::Corrupt {
            path: self.config(),
            reason: e.to_string(),
        })?;
        self.write("agent.json", &json, 0o644)
    }

    /// The configuration and credentials of a joined agent.
    pub fn load(&self) -> Result<(AgentConfig, NodeCredentials), AgentError> {
        let path = self.config();
        if !path.exists() {
            return Err(AgentError::NotJoined(self.root.clone()));
        }
        let config: AgentConfig =
            serde_json::from_str(&self.read("agent.json")?).map_err(|e| AgentError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let creds = NodeCredentials {
            ca_pem: self.read("ca.pem")?,
            cert_pem: self.read("cert.pem")?,
            key_pem: self.read("key.pem")?,
        };
        Ok((config, creds))
    }
}

/// What `gpve-agent join` needs.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    pub data_dir: PathBuf,
    /// `host:port` of the server's gRPC service.
    pub endpoint: String,
    pub token: String,
    pub node_name: String,
}

/// Join a cluster: make a key, send a CSR with the token, keep what comes back.
pub async fn join(transport: &dyn Transport, opts: JoinOptions) -> Result<AgentConfig, AgentError> {
    let dir = AgentDir::new(&opts.data_dir);
    if let Ok((config, _)) = dir.load() {
        return Err(AgentError::AlreadyJoined(dir.root, config.node_name));
    }
    if !crate::schema::is_node(&opts.node_name) {
        return Err(AgentError::NodeName(opts.node_name));
    }
    let token: BootstrapToken = opts.token.parse()?;
    let (key_pem, csr_pem) = gpve_transport::pki::node_key_and_csr(&opts.node_name)?;
    let grant = transport
        .join(
            &opts.endpoint,
            &token.ca_fingerprint,
            JoinRequest {
                token: opts.token.clone(),
                node_name: opts.node_name.clone(),
                csr_pem,
            },
        )
        .await
        .map_err(AgentError::Join)?;
    if gpve_transport::pki::pem_fingerprint(&grant.ca_pem)? != token.ca_fingerprint {
        return Err(AgentError::CaMismatch);
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir.root)
        .map_err(io(&dir.root))?;
    dir.write("key.pem", key_pem.as_bytes(), 0o600)?;
    dir.write("cert.pem", grant.cert_pem.as_bytes(), 0o644)?;
    dir.write("ca.pem", grant.ca_pem.as_bytes(), 0o644)?;
    let config = AgentConfig {
        node_name: grant.node_name,
        server_endpoint: if grant.server_endpoint.is_empty() {
            opts.endpoint
        } else {
            grant.server_endpoint
        },
        cluster_name: grant.cluster_name,
        joined_at_s: crate::state::now_s(),
        api_listen: None,
    };
    let json = serde_json::to_vec_pretty(&config).map_err(|e| AgentError::Corrupt {
        path: dir.config(),
        reason: e.to_string(),
    })?;
    dir.write("agent.json", &json, 0o644)?;
    Ok(config)
}

/// Timing of the session to the server.
#[derive(Debug, Clone)]
pub struct SessionTiming {
    pub heartbeat_interval_ms: u64,
    pub reconnect_initial_ms: u64,
    pub reconnect_max_ms: u64,
}

impl Default for SessionTiming {
    fn default() -> Self {
        SessionTiming {
            heartbeat_interval_ms: crate::cluster::HEARTBEAT_INTERVAL_MS,
            reconnect_initial_ms: 200,
            reconnect_max_ms: 5_000,
        }
    }
}

/// A running agent.
pub struct RunningAgent {
    pub config: AgentConfig,
    pub directory: Directory,
    root: SupervisorHandle,
}

impl std::fmt::Debug for RunningAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningAgent")
            .field("node", &self.config.node_name)
            .finish_non_exhaustive()
    }
}

/// The `transport` child: the session to the server.
fn session_child(session: SessionArgs) -> ChildSpec {
    ChildSpec::actor(
        "transport",
        "transport",
        RestartPolicy::Permanent,
        move |ctx| {
            (
                SessionActor {
                    stats: ctx.stats.clone(),
                    directory: ctx.directory.clone(),
                },
                session.clone(),
            )
        },
    )
}

/// Start the agent's tree from a joined data directory.
pub async fn start(
    data_dir: &Path,
    transport: Arc<dyn Transport>,
    timing: SessionTiming,
) -> Result<RunningAgent, AgentError> {
    let (config, creds) = AgentDir::new(data_dir).load()?;
    let directory = Directory::new();
    let node = config.node_name.clone();
    let node_path = format!("{AGENT_ROOT}/{}", gpve_actors::node::actor_name(&node));
    let session = SessionArgs {
        transport,
        endpoint: config.server_endpoint.clone(),
        creds,
        node: node.clone(),
        node_path,
        timing,
        api_listen: None,
        api_advertise: None,
    };
    let spec = SupervisorSpec::new(AGENT_ROOT)
        .kind("agent")
        .strategy(Strategy::OneForOne)
        .intensity(5, 60_000)
        .backoff(100, 5_000)
        .child(ChildSpec::actor(
            gpve_actors::node::actor_name(&node),
            "node",
            RestartPolicy::Permanent,
            move |ctx| {
                (
                    NodeActor {
                        stats: Some(ctx.stats.clone()),
                    },
                    node.clone(),
                )
            },
        ))
        .child(session_child(session));
    let root = Supervisor::spawn(spec, directory.clone())
        .await
        .map_err(AgentError::Tree)?;
    tracing::info!(node = %config.node_name, server = %config.server_endpoint, "gpve-agent started");
    Ok(RunningAgent {
        config,
        directory,
        root,
    })
}

impl RunningAgent {
    /// Wait until the root supervisor exits on its own.
    pub async fn wait_exit(&self) {
        while !self.root.wait_exit(60_000).await {}
    }

    /// Stop the tree.
    pub async fn shutdown(self) {
        if let Err(e) = self.root.stop().await {
            tracing::warn!(error = %e, "stopping the supervision tree failed");
        }
    }
}

/// How `gpve-agent run` runs the node.
#[derive(Debug, Clone, Default)]
pub struct NodeRunOptions {
    pub timing: SessionTiming,
    /// Where to serve the forwarded API; `None`: `agent.json`'s `api_listen`, else none
    /// (the server then answers this node's API calls with 595).
    pub api_listen: Option<SocketAddr>,
    /// `host:port` reported to the server instead of the bound address.
    pub api_advertise: Option<String>,
}

/// The `migration` child: this node's target side listening on the address its API
/// listener reports to the server, TLS with the node certificate, and the relay client.
async fn migration_child(
    data_dir: &Path,
    config: &AgentConfig,
    creds: &NodeCredentials,
    state: &AppState,
    listen: &Option<Arc<Mutex<SocketAddr>>>,
    advertise: Option<String>,
) -> Result<ChildSpec, AgentError> {
    use crate::cluster::migration as m;
    let tls_dir = data_dir.join(m::MIGRATION_TLS_DIR);
    m::write_tls_creds(&tls_dir, &creds.ca_pem, &creds.cert_pem, &creds.key_pem)
        .map_err(AgentError::Migration)?;
    let bound = listen
        .as_ref()
        .map(|l| l.lock().unwrap_or_else(|p| p.into_inner()).to_string());
    let node = config.node_name.clone();
    let local = m::listen_host(&[advertise, bound]).map(|host| {
        gpve_actors::vm::migrate::LocalPeer::with_tls(
            crate::pve::nodes::qemu::host(state),
            host,
            Some(gpve_actors::vm::migrate::LocalTls {
                creds_dir: tls_dir.clone(),
                hostname: gpve_transport::tls::node_server_name(&node),
            }),
        )
    });
    let relay = gpve_transport::migration::MigrationClient::connect(&config.server_endpoint, creds)
        .await
        .map_err(AgentError::MigrationLink)?;
    Ok(m::child(Arc::new(m::NodeMigration {
        node,
        store: state.store.clone(),
        local,
        tls_creds_dir: Some(tls_dir),
        relay: Some(relay),
        forwarder: None,
    })))
}

/// Start the full node from a joined data directory: the node tree on the server's store,
/// the forwarded-API listener and the session (see the module documentation). The store
/// connects lazily, so the agent starts while the server is down and catches up.
pub async fn start_node(data_dir: &Path, opts: NodeRunOptions) -> Result<RunningAgent, AgentError> {
    let (config, creds) = AgentDir::new(data_dir).load()?;
    let grpc = GrpcTransport::default();
    let store = gpve_transport::store::connect_store(&grpc, &config.server_endpoint, &creds)
        .await
        .map_err(AgentError::Store)?;
    let node = config.node_name.clone();
    let directory = Directory::new();
    let tasks = TaskManager::new(store.clone(), node.clone());
    match tasks.recover().await {
        Ok(n) if n > 0 => tracing::info!(tasks = n, "marked tasks of a previous run as failed"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "recovering this node's tasks failed"),
    }
    let link = crate::tree::NodeLink {
        directory: directory.clone(),
        path: crate::tree::node_path(&node),
    };
    let state = AppState::new(
        ApiConfig::new(node.clone()),
        store.clone(),
        TicketKey::generate(),
        tasks,
        link,
    );
    let _ = state.forward.set(crate::forward::Role::Agent);
    let api_listen = match opts.api_listen {
        Some(a) => Some(a),
        None => match &config.api_listen {
            Some(text) => Some(
                text.parse::<SocketAddr>()
                    .map_err(|e| AgentError::Corrupt {
                        path: AgentDir::new(data_dir).config(),
                        reason: format!("api_listen '{text}' is not an address: {e}"),
                    })?,
            ),
            None => None,
        },
    };
    let listen = api_listen.map(|a| Arc::new(Mutex::new(a)));
    let session = SessionArgs {
        transport: Arc::new(grpc),
        endpoint: config.server_endpoint.clone(),
        creds: creds.clone(),
        node: node.clone(),
        node_path: crate::tree::node_path(&node),
        timing: opts.timing,
        api_listen: listen.clone(),
        api_advertise: opts.api_advertise,
    };
    let mut spec = SupervisorSpec::new(crate::tree::ROOT)
        .kind("agent")
        .strategy(Strategy::OneForOne)
        .intensity(5, 60_000)
        .backoff(100, 5_000);
    for child in crate::tree::node_children(&node, store.clone(), &state) {
        spec = spec.child(child);
    }
    if let Some(listen) = &listen {
        let tls =
            gpve_transport::tls::node_api_server_config(&creds).map_err(AgentError::ApiTls)?;
        spec = spec.child(crate::tree::api_child(crate::tree::ApiArgs {
            listen: listen.clone(),
            tls,
            state: state.clone(),
        }));
    }
    spec = spec.child(
        migration_child(
            data_dir,
            &config,
            &creds,
            &state,
            &listen,
            session.api_advertise.clone(),
        )
        .await?,
    );
    spec = spec.child(fence::child(
        data_dir.to_path_buf(),
        crate::pve::nodes::qemu::host(&state),
    ));
    spec = spec.child(crate::cluster::session::agent_child(
        &node,
        &config.server_endpoint,
        creds,
        store,
        &state,
    ));
    // Last: its heartbeats report the API address the api actor bound.
    spec = spec.child(session_child(session));
    let root = Supervisor::spawn(spec, directory.clone())
        .await
        .map_err(AgentError::Tree)?;
    tracing::info!(node = %config.node_name, server = %config.server_endpoint,
        api = ?listen.as_ref().map(|l| *l.lock().unwrap_or_else(|p| p.into_inner())),
        "gpve-agent started (node tree on the server's store)");
    Ok(RunningAgent {
        config,
        directory,
        root,
    })
}
