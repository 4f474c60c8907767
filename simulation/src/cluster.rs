//! The simulated cluster: node trees built from the real actors (node, storage, VM
//! supervisor and VM actors on the simulated hypervisor), each with its own [`Directory`],
//! task manager and API router, all sharing one simulated store through cuttable links.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, header};
use gpve_actors::network::MemNics;
use gpve_actors::node::NodeActor;
use gpve_actors::task::TaskManager;
use gpve_actors::vm::{SUPERVISOR_ID, VmHost, VmTiming};
use gpve_api::auth::TicketKey;
use gpve_api::state::{ApiConfig, AppState};
use gpve_api::tree::{NodeLink, ROOT, StoreActor, node_path};
use gpve_hypervisor::{SimConfig, SimHost, SimHypervisor};
use gpve_store::Store;
use gpve_store::simulated::SimBackend;
use gpve_supervisor::{
    ChildSpec, Directory, DirectoryEvent, RestartPolicy, SharedClock, Strategy, Supervisor,
    SupervisorHandle, SupervisorSpec,
};
use serde_json::Value;
use tokio::sync::broadcast;
use tower::ServiceExt;

use crate::store_link::LinkBackend;

/// The user every simulated client acts as.
pub const SIM_USER: &str = "root@pam";
/// Status a client sees when the node it asks is down or cut off (Proxmox answers 595
/// when it cannot reach a node).
pub const STATUS_UNREACHABLE: u16 = 595;
/// Largest response body the client reads.
const MAX_RESPONSE_BYTES: usize = 4 << 20;
/// How long a crashed tree's root may take to exit after the kill.
const KILL_WAIT_MS: u64 = 5_000;

/// Failures building or changing the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("the store failed while starting node {node}")]
    Store {
        node: String,
        #[source]
        source: gpve_store::StoreError,
    },
    #[error("recovering the tasks of node {node} failed")]
    Tasks {
        node: String,
        #[source]
        source: gpve_actors::task::TaskError,
    },
    #[error("starting the supervision tree of node {node} failed")]
    Tree {
        node: String,
        #[source]
        source: gpve_supervisor::SupervisorError,
    },
    #[error("creating the simulated user failed")]
    Access(#[source] gpve_api::access_db::AccessDbError),
}

/// One incarnation of a node's control plane.
pub struct NodeTree {
    pub directory: Directory,
    pub root: SupervisorHandle,
    pub state: AppState,
    pub router: Router,
    /// Supervision events of this incarnation, for the restart-intensity invariant.
    pub events: broadcast::Receiver<DirectoryEvent>,
}

/// A simulated machine: its QEMU processes outlive any one incarnation of its tree, as
/// daemonized QEMUs outlive the agent.
pub struct SimNode {
    pub name: String,
    pub host: SimHost,
    /// The node's store handle, through its own link.
    pub store: Store,
    /// Set: the node cannot reach the store.
    pub store_cut: Arc<AtomicBool>,
    /// Set: the node's heartbeats do not arrive.
    pub heartbeats_cut: Arc<AtomicBool>,
    /// Set: clients cannot reach the node's API.
    pub api_cut: Arc<AtomicBool>,
    pub tree: Option<NodeTree>,
    /// Trees started so far (1 after the first start).
    pub incarnations: u32,
}

/// Everything nodes share.
pub struct Cluster {
    pub clock: SharedClock,
    pub key: TicketKey,
    pub backend: Arc<SimBackend>,
    /// A link nobody cuts: the checker reads the truth through it.
    pub truth: Store,
    pub nodes: Vec<SimNode>,
    run_root: PathBuf,
    seed: u64,
}

/// What a client needs to call one node, taken out of the cluster so no lock is held
/// across the call.
#[derive(Clone)]
pub struct ApiTarget {
    router: Option<Router>,
    key: TicketKey,
}

/// A response: status and JSON body (`Null` when the body is not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    /// The `data` member of a successful answer.
    pub fn data(&self) -> &Value {
        &self.body["data"]
    }

    pub fn ok(&self) -> bool {
        self.status == 200
    }

    /// A short deterministic description for the trace (no UPIDs: their PID field is the
    /// process id).
    pub fn summary(&self) -> String {
        if self.ok() {
            return "200".into();
        }
        let msg = self.body["message"]
            .as_str()
            .or_else(|| self.body["errors"].as_object().map(|_| "parameter errors"))
            .unwrap_or("");
        let msg: String = msg.trim().chars().take(120).collect();
        format!("{} {msg}", self.status)
    }
}

impl Cluster {
    /// `nodes` nodes named `n1..` over one simulated store with `faults`.
    pub async fn new(
        seed: u64,
        nodes: usize,
        clock: SharedClock,
        faults: gpve_store::SimFaults,
        run_root: PathBuf,
    ) -> Result<(Cluster, gpve_store::SimControl), ClusterError> {
        let (backend, control) = SimBackend::new(faults);
        let backend = Arc::new(backend);
        let truth = link_store(&backend, Arc::new(AtomicBool::new(false)), seed);
        // A fixed ticket key: tickets are HMACs over virtual time, the same in every run.
        let mut key_bytes = [0u8; gpve_api::auth::SECRET_LEN_BYTES];
        for (i, b) in key_bytes.iter_mut().enumerate() {
            *b = (seed as u8).wrapping_add(i as u8);
        }
        let key = TicketKey::new(key_bytes);
        gpve_api::access_db::AccessDb::new(truth.clone())
            .create_user(SIM_USER, None, Default::default())
            .await
            .map_err(ClusterError::Access)?;
        let mut cluster = Cluster {
            clock,
            key,
            backend,
            truth,
            nodes: Vec::new(),
            run_root,
            seed,
        };
        for i in 0..nodes {
            let name = format!("n{}", i + 1);
            let record = gpve_api::cluster::records::NodeRecord {
                node: name.clone(),
                joined_at_s: gpve_supervisor::wall_now_s(),
                cert_fingerprint: "simulated".into(),
                cordoned: false,
            };
            cluster
                .truth
                .put_json(&gpve_api::cluster::records::node_key(&name), &record)
                .await
                .map_err(|source| ClusterError::Store {
                    node: name.clone(),
                    source,
                })?;
            let store_cut = Arc::new(AtomicBool::new(false));
            let store = link_store(&cluster.backend, store_cut.clone(), seed ^ (i as u64 + 1));
            cluster.nodes.push(SimNode {
                name,
                host: SimHost::new(),
                store,
                store_cut,
                heartbeats_cut: Arc::new(AtomicBool::new(false)),
                api_cut: Arc::new(AtomicBool::new(false)),
                tree: None,
                incarnations: 0,
            });
        }
        Ok((cluster, control))
    }

    /// Index of the node called `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Starts node `i`'s tree (a restart after a crash rebuilds it from the store).
    pub async fn start_node(&mut self, i: usize) -> Result<(), ClusterError> {
        let node = &self.nodes[i];
        let tree = start_tree(
            &node.name,
            &node.store,
            &node.host,
            &self.clock,
            &self.key,
            self.run_root.join(&node.name),
        )
        .await?;
        let node = &mut self.nodes[i];
        node.tree = Some(tree);
        node.incarnations += 1;
        Ok(())
    }

    /// Kills node `i`'s tree as a crash would: no actor's `post_stop` runs, QEMUs survive.
    pub async fn crash_node(&mut self, i: usize) {
        if let Some(tree) = self.nodes[i].tree.take() {
            tree.root.cell().kill();
            tree.root.wait_exit(KILL_WAIT_MS).await;
        }
    }

    /// How to call node `i`'s API right now.
    pub fn target(&self, i: usize) -> ApiTarget {
        let node = &self.nodes[i];
        let reachable = !node.api_cut.load(Ordering::Relaxed);
        ApiTarget {
            router: node
                .tree
                .as_ref()
                .filter(|_| reachable)
                .map(|t| t.router.clone()),
            key: self.key.clone(),
        }
    }

    /// The seed the cluster was built with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Which nodes run a QEMU for each VMID.
    pub fn running_copies(&self) -> BTreeMap<u32, Vec<String>> {
        let mut out: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for node in &self.nodes {
            for (vmid, _) in node.host.running() {
                out.entry(vmid).or_default().push(node.name.clone());
            }
        }
        out
    }
}

fn link_store(backend: &Arc<SimBackend>, cut: Arc<AtomicBool>, seed: u64) -> Store {
    Store::from_backend(Arc::new(LinkBackend::new(backend.clone(), cut))).with_jitter_seed(seed)
}

/// The node's tree: the production tree (`gpve_api::tree::root_spec`) minus what needs
/// sockets or the host (HTTPS listener, gRPC, nftables network actor, usage sampler).
async fn start_tree(
    name: &str,
    store: &Store,
    sim_host: &SimHost,
    clock: &SharedClock,
    key: &TicketKey,
    run_root: PathBuf,
) -> Result<NodeTree, ClusterError> {
    let tasks = TaskManager::new(store.clone(), name);
    tasks
        .recover()
        .await
        .map_err(|source| ClusterError::Tasks {
            node: name.into(),
            source,
        })?;
    let directory = Directory::with_clock(clock.clone());
    let link = NodeLink {
        directory: directory.clone(),
        path: node_path(name),
    };
    let mut config = ApiConfig::new(name);
    config.login_failure_delay_ms = 0;
    let state = AppState::new(config, store.clone(), key.clone(), tasks, link);
    let host = VmHost {
        node: name.into(),
        store: store.clone(),
        hypervisor: Arc::new(SimHypervisor::new(
            sim_host.clone(),
            Arc::new(gpve_hypervisor::TokioClock),
            SimConfig::default(),
        )),
        run_root,
        storage: gpve_api::pve::storage::service(&state),
        directory: directory.clone(),
        supervisor_path: format!("{ROOT}/{SUPERVISOR_ID}"),
        timing: VmTiming::default(),
        network: Arc::new(MemNics::new()),
    };
    // Set once on a fresh state: cannot be taken.
    let _ = state.vm_host.set(host.clone());
    let events = directory.subscribe();
    let node_name = name.to_string();
    let probe_store = store.clone();
    let spec = SupervisorSpec::new(ROOT)
        .kind("server")
        .strategy(Strategy::OneForOne)
        .intensity(ROOT_MAX_RESTARTS, ROOT_RESTART_WINDOW_MS)
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
                    probe_store.clone(),
                )
            },
        ))
        .child(ChildSpec::actor(
            gpve_actors::node::actor_name(name),
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
        ))
        .child(gpve_actors::storage::supervisor_child(name, store.clone()))
        .child(gpve_actors::vm::supervisor_child(host));
    let root = Supervisor::spawn(spec, directory.clone())
        .await
        .map_err(|source| ClusterError::Tree {
            node: name.into(),
            source,
        })?;
    let router = gpve_api::server::app(state.clone());
    Ok(NodeTree {
        directory,
        root,
        state,
        router,
        events,
    })
}

/// The root's restart intensity (as `gpve-server`'s).
pub const ROOT_MAX_RESTARTS: u32 = 5;
pub const ROOT_RESTART_WINDOW_MS: u64 = 60_000;

impl ApiTarget {
    /// Sends one request through the node's real router, as an authenticated root client.
    /// `path` starts below the API prefix (`/nodes/n1/qemu`); `v1` selects `/api/v1`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        v1: bool,
        form: &[(&str, String)],
    ) -> Reply {
        let Some(router) = self.router.clone() else {
            return Reply {
                status: STATUS_UNREACHABLE,
                body: serde_json::json!({"message": "node unreachable"}),
            };
        };
        let now_s = gpve_supervisor::wall_now_s();
        let ticket = self.key.ticket(SIM_USER, now_s);
        let csrf = self.key.csrf_token(SIM_USER, now_s);
        let prefix = if v1 { "/api/v1" } else { "/api2/json" };
        let encoded = serde_urlencoded::to_string(form).unwrap_or_default();
        let mut uri = format!("{prefix}{path}");
        let body = if method == Method::GET && !encoded.is_empty() {
            uri = format!("{uri}?{encoded}");
            Body::empty()
        } else {
            Body::from(encoded)
        };
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::COOKIE, format!("PVEAuthCookie={ticket}"))
            .header("CSRFPreventionToken", csrf)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .extension(axum::extract::ConnectInfo(SocketAddr::from((
                [127, 0, 0, 1],
                0,
            ))))
            .body(body);
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                return Reply {
                    status: 0,
                    body: serde_json::json!({"message": format!("bad request: {e}")}),
                };
            }
        };
        let resp = match router.oneshot(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), MAX_RESPONSE_BYTES)
            .await
            .unwrap_or_default();
        Reply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }
}
