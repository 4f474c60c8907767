//! `gpve-agent`: a compute node that joined a server.
//!
//! ```text
//! gpve-agent             one-for-one, 5 restarts in 60 s, then the process exits
//! ├── node:{name}        the node actor (host status, as on the server)
//! └── transport          the session to the server: heartbeats every 1 s, reconnects
//!                        after any outage with exponential backoff (capped), logged
//! ```
//!
//! The data directory of an agent:
//!
//! ```text
//! DIR/agent.json   node name, server endpoint, cluster name (written last: "joined")
//! DIR/ca.pem       the cluster CA (pinned at the join by the token's fingerprint)
//! DIR/cert.pem     this node's certificate, signed by the cluster CA
//! DIR/key.pem      its private key (0600), generated here: it never left the node
//! ```
//!
//! Not here yet: VM, storage and network actors on the agent, the fence watchdog
//! (self-fencing at the lease deadline), `ractor_cluster` over the session.

pub mod session;

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
        .child(ChildSpec::actor(
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
        ));
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
