//! `gpve-server run`: open the data directory, start the root supervision tree (which
//! serves HTTPS from its `api` child) and stop it cleanly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use gpve_actors::task::TaskManager;
use gpve_store::Store;
use gpve_supervisor::{Directory, Supervisor, SupervisorHandle};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

use crate::datadir::{DataDir, DataDirError};
use crate::router::{API_PREFIX, MAX_BODY_BYTES, not_implemented};
use crate::state::{ApiConfig, AppState};
use crate::tree::{ApiArgs, NodeLink, node_path, root_spec};

/// Failures starting the server.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("opening the store failed")]
    Store(#[from] gpve_store::StoreError),
    #[error("loading the TLS certificate or key from {path} failed: {reason}")]
    Tls { path: PathBuf, reason: String },
    #[error("recovering tasks failed")]
    Tasks(#[from] gpve_actors::task::TaskError),
    #[error("setting up API forwarding to agents failed: {0}")]
    Forward(String),
    #[error("starting the supervision tree failed (is {0} free?)")]
    Tree(SocketAddr, #[source] gpve_supervisor::SupervisorError),
}

/// What `run` needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub login_failure_delay_ms: u64,
}

/// The API router with its fallbacks, ready to serve.
pub fn app(state: AppState) -> Router {
    Router::new()
        .nest(API_PREFIX, crate::pve::router().into_router())
        .nest(crate::v1::V1_PREFIX, crate::v1::router().into_router())
        .route("/metrics", axum::routing::get(crate::metrics::scrape))
        // gRPC watch stream on the same port (HTTP/2, see `tls_config`).
        .merge(crate::watch::routes(&state))
        .fallback(not_implemented)
        // Handlers read bodies themselves with the same bound; this covers the rest.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Before routing: requests for another node go to its agent (server), or carry the
        // identity the server authenticated (agent).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::forward::layer,
        ))
        // Outermost: counts and times every request, fallbacks and rejections included.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .with_state(state)
}

/// Every route the API serves with its endpoint declaration (method, parameters,
/// permission), full paths (`/api2/json/...`, `/api/v1/...`). `/metrics` is listed too.
pub fn route_table() -> Vec<crate::router::RouteEntry> {
    let mut table = crate::pve::router().table(API_PREFIX);
    table.extend(crate::v1::router().table(crate::v1::V1_PREFIX));
    table.push(crate::router::RouteEntry {
        path: "/metrics".into(),
        endpoint: &crate::metrics::METRICS_GET,
    });
    table
}

/// A TLS 1.2/1.3 configuration (ring provider) from PEM files.
pub fn tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, ServerError> {
    let tls_err = |path: &Path, reason: String| ServerError::Tls {
        path: path.to_path_buf(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_err(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(cert, e.to_string()))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(|e| tls_err(cert, e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key_der)
    .map_err(|e| tls_err(key, e.to_string()))?;
    // pveproxy speaks HTTP/1.1; clients keep connections alive. h2 is offered second for
    // the gRPC watch stream: rustls picks the first of the server's protocols the client
    // offers, so REST clients that offer both keep HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
    Ok(config)
}

/// A running server.
pub struct RunningServer {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    pub state: AppState,
    /// Every supervised actor of this server, for introspection.
    pub directory: Directory,
    root: SupervisorHandle,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Open the data directory, recover tasks and start the root supervision tree (no gRPC:
/// a single node).
pub async fn start(opts: ServeOptions) -> Result<RunningServer, ServerError> {
    start_with_cluster(opts, None, None, None).await
}

/// [`start`], also serving the cluster's gRPC services on `grpc_listen` when given,
/// telling joined agents to dial `advertise`, and accepting their node sessions on
/// `session_listen` (default: the gRPC address with port 8008, or an ephemeral port when gRPC's is 0).
pub async fn start_with_cluster(
    opts: ServeOptions,
    grpc_listen: Option<SocketAddr>,
    advertise: Option<String>,
    session_listen: Option<SocketAddr>,
) -> Result<RunningServer, ServerError> {
    let dir = DataDir::new(&opts.data_dir);
    let (node_cfg, key) = dir.load()?;
    let mut cluster =
        crate::cluster::ClusterOptions::single(opts.data_dir.clone(), node_cfg.node_name.clone());
    cluster.cluster_name = node_cfg.cluster_name.clone();
    cluster.grpc_listen = grpc_listen;
    cluster.advertise = advertise;
    cluster.session_listen = session_listen;
    let tls = tls_config(&dir.cert(), &dir.key())?;
    let store = Store::open_redb(&dir.store())?;
    // Watchers get every commit, including those of transactions begun before the first.
    store.enable_feed();

    let tasks = TaskManager::new(store.clone(), node_cfg.node_name.clone());
    tasks.recover().await?;

    // One directory per server: actors are found by path, never through ractor's
    // process-global registry, so several servers can share a process (tests, simulation).
    let directory = Directory::new();
    let node = NodeLink {
        directory: directory.clone(),
        path: node_path(&node_cfg.node_name),
    };
    let mut config = ApiConfig::new(node_cfg.node_name.clone());
    config.cluster_name = node_cfg.cluster_name.clone();
    config.login_failure_delay_ms = opts.login_failure_delay_ms;
    let state = AppState::new(config, store.clone(), key, tasks, node);
    if grpc_listen.is_some() {
        // Agents can join: forward their nodes' API calls to them.
        let files = crate::cluster::files::ClusterFiles::new(&opts.data_dir);
        let ca = files
            .ensure_ca(node_cfg.cluster_name.as_deref().unwrap_or("gpve"))
            .map_err(|e| ServerError::Forward(gpve_actors::storage::error_chain(&e)))?;
        let forwarder = crate::forward::Forwarder::from_ca(&ca)
            .map_err(|e| ServerError::Forward(gpve_actors::storage::error_chain(&e)))?;
        let _ = state
            .forward
            .set(crate::forward::Role::Server(Box::new(forwarder)));
    }

    let listen = Arc::new(Mutex::new(opts.listen));
    let api = ApiArgs {
        listen: listen.clone(),
        tls: Arc::new(tls),
        state: state.clone(),
    };
    let root = Supervisor::spawn(
        root_spec(&node_cfg.node_name, store, api, cluster),
        directory.clone(),
    )
    .await
    .map_err(|e| ServerError::Tree(opts.listen, e))?;
    let addr = *listen.lock().unwrap_or_else(|p| p.into_inner());
    tracing::info!(%addr, node = %node_cfg.node_name, "gpve-server started");
    Ok(RunningServer {
        addr,
        state,
        directory,
        root,
    })
}

impl RunningServer {
    /// Wait until the root supervisor exits on its own (restart intensity exceeded).
    pub async fn wait_exit(&self) {
        while !self.root.wait_exit(60_000).await {}
    }

    /// Stop the tree: the api actor stops accepting connections and lets in-flight
    /// requests finish (bounded), then the other actors stop.
    pub async fn shutdown(self) {
        if let Err(e) = self.root.stop().await {
            tracing::warn!(error = %e, "stopping the supervision tree failed");
        }
        tracing::info!("server stopped");
    }
}
