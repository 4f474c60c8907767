//! Virtual Kubernetes clusters (issue 10): one `vcluster:{tenant}.{name}` actor per VC
//! under the server's `tenants` supervisor. The actor owns the VC's PKI, its backing
//! store (etcd members it starts and supervises, or the sqlite file handed to the control
//! plane), its control-plane processes (when the node configures a binary) and its worker
//! VMs (isolation L3, private nodes), and reports phase and conditions in the VC record.
//!
//! The actor id uses `.` between tenant and name because `/` separates directory path
//! segments; names are DNS labels, so `.` cannot occur in either part.
//!
//! Store keys: `("vclusters", tenant, name)` → [`VcRecord`] (spec and generation written
//! by the API, status by the actor; the quota charge the VC holds is in the record so a
//! delete releases exactly what was admitted).
//!
//! Files: `{data}/vclusters/{tenant}/{name}/` holds `pki/` (keys 0600), `etcd/{i}/`
//! (member data), `run/` (pidfiles and process logs) and `state.db` (the sqlite tier's
//! datastore, created by the control plane).

pub mod actor;
pub mod pki;
pub mod process;
pub mod spec;

use std::path::{Path, PathBuf};

use gpve_store::{Key, Store};
use gpve_supervisor::{
    ChildSpec, EscalationPolicy, RestartPolicy, Strategy, Supervisor, SupervisorSpec,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::state::AppState;
use crate::tenancy::Demand;
use spec::VcSpec;

/// Store subspace of VC records.
pub const SUBSPACE: &str = "vclusters";
/// Id of the supervisor of every VC actor (a child of the root).
pub const SUPERVISOR_ID: &str = "tenants";
/// Id of the actor that hands out the [`VcHost`] (first child of `tenants`).
pub const HOST_ID: &str = "vcluster-host";
/// VC actors restarted more often than this within the window are left stopped (one
/// crash-looping VC must not take the others or the server down).
pub const VC_MAX_RESTARTS: u32 = 3;
pub const VC_RESTART_WINDOW_MS: u64 = 60_000;
/// The node config key naming the control-plane binary (`config.json`:
/// `{"kubernetes": {"apiserver_bin": "...", "apiserver_args": [...]}}`).
pub const APISERVER_BIN_KEY: &str = "kubernetes.apiserver_bin";
/// Where etcd is when the node config does not say (`kubernetes.etcd_bin`).
pub const DEFAULT_ETCD_BIN: &str = "/usr/bin/etcd";

/// Failures of VC management.
#[derive(Debug, Error)]
pub enum VclusterError {
    #[error("virtualcluster '{tenant}/{name}' not found")]
    NotFound { tenant: String, name: String },
    #[error("the vcluster service is not running on this node")]
    Unavailable,
    #[error("the vcluster actor did not answer: {0}")]
    Call(String),
    #[error("{0}")]
    Failed(String),
    #[error("vcluster store operation failed")]
    Store(#[from] gpve_store::StoreError),
}

/// The store key of a VC.
pub fn vc_key(tenant: &str, name: &str) -> Key {
    Key::pack(&(SUBSPACE, tenant, name))
}

/// The prefix of a tenant's VCs.
pub fn tenant_prefix(tenant: &str) -> Key {
    Key::prefix(&(SUBSPACE, tenant))
}

/// The actor id of a VC within the `tenants` supervisor.
pub fn actor_id(tenant: &str, name: &str) -> String {
    format!("vcluster:{tenant}.{name}")
}

/// Directory path of a VC actor.
pub fn actor_path(tenant: &str, name: &str) -> String {
    format!(
        "{}/{SUPERVISOR_ID}/{}",
        crate::tree::ROOT,
        actor_id(tenant, name)
    )
}

/// One condition, Kubernetes style.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    /// `True` or `False`.
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_s: i64,
}

/// One worker VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub index: u64,
    pub name: String,
    pub vmid: u32,
}

/// What the actor observed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VcStatus {
    /// Provisioning, Ready, Failed or Deleting.
    pub phase: String,
    pub conditions: Vec<Condition>,
    pub observed_generation: u64,
    /// `https://127.0.0.1:{port}` of the first control-plane replica.
    pub endpoint: Option<String>,
    /// Ports of the etcd members, kept across restarts (members know their peers by them).
    pub etcd: Vec<process::EtcdPorts>,
    /// Secure ports of the control-plane replicas.
    pub apiserver_ports: Vec<u16>,
    pub workers: Vec<Worker>,
    /// Kubernetes version the control plane runs (changes on upgrade).
    pub version: String,
    pub pki_issued_at_s: i64,
    /// Process restarts done by the actor since the VC was created.
    pub process_restarts: u64,
}

/// A VC as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VcRecord {
    pub tenant: String,
    pub name: String,
    pub namespace: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub spec: VcSpec,
    /// Bumped by every spec change.
    pub generation: u64,
    pub created_at_s: i64,
    /// What the tenant's quota was charged for this VC.
    pub charged: Demand,
    pub deleting: bool,
    pub status: VcStatus,
}

/// What a spec costs the tenant: one vCluster plus its worker VMs.
pub fn demand(spec: &VcSpec) -> Demand {
    let n = spec.worker_vms();
    let r = &spec.worker_nodes.resources;
    Demand {
        vcpus: n * r.cpu,
        memory_mib: n * r.memory_mib,
        disk_gib: n * r.disk_gib,
        vms: n,
        vclusters: 1,
        gpus: 0,
    }
}

/// The record as a `gpve.io/v1 VirtualCluster` manifest.
pub fn to_manifest(rec: &VcRecord) -> serde_json::Value {
    let mut labels = serde_json::Map::new();
    for (k, v) in &rec.labels {
        labels.insert(k.clone(), v.clone().into());
    }
    serde_json::json!({
        "apiVersion": crate::v1::virtualmachines::manifest::API_VERSION,
        "kind": spec::KIND,
        "metadata": {
            "name": rec.name,
            "namespace": rec.namespace.clone().unwrap_or_else(|| rec.tenant.clone()),
            "tenant": rec.tenant,
            "labels": labels,
            "generation": rec.generation,
            "creationTimestamp": rec.created_at_s,
        },
        "spec": spec::spec_to_json(&rec.spec),
        "status": rec.status,
    })
}

/// How this node runs VC processes.
#[derive(Debug, Clone, Default)]
pub struct Runtime {
    pub etcd_bin: PathBuf,
    /// `kubernetes.apiserver_bin`; `None`: no control plane can run here.
    pub apiserver_bin: Option<PathBuf>,
    /// Appended to the apiserver's flags (`kubernetes.apiserver_args`).
    pub apiserver_args: Vec<String>,
}

impl Runtime {
    /// Read from the node's `config.json` (keys under `kubernetes`); a missing or
    /// unreadable file means defaults.
    pub fn from_node_config(path: &Path) -> Runtime {
        let v: serde_json::Value = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let k = &v["kubernetes"];
        Runtime {
            etcd_bin: k["etcd_bin"].as_str().unwrap_or(DEFAULT_ETCD_BIN).into(),
            apiserver_bin: k["apiserver_bin"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            apiserver_args: k["apiserver_args"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// Everything a VC actor needs from its node.
#[derive(Clone)]
pub struct VcHost {
    pub state: AppState,
    /// `{data}/vclusters`.
    pub root: PathBuf,
    pub runtime: Runtime,
    /// How often the actor probes its processes and workers.
    pub tick_ms: u64,
}

impl std::fmt::Debug for VcHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcHost")
            .field("root", &self.root)
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

impl VcHost {
    pub fn store(&self) -> &Store {
        &self.state.store
    }
    pub fn vc_dir(&self, tenant: &str, name: &str) -> PathBuf {
        self.root.join(tenant).join(name)
    }
}

/// Commands of the host actor.
#[derive(Debug)]
pub enum HostMsg {
    Get(RpcReplyPort<VcHost>),
}

impl ractor::Message for HostMsg {}

/// Hands the node's [`VcHost`] to API handlers (they start VC actors with it).
#[derive(Debug)]
pub struct HostActor;

impl Actor for HostActor {
    type Msg = HostMsg;
    type State = VcHost;
    type Arguments = VcHost;

    async fn pre_start(
        &self,
        _myself: ActorRef<HostMsg>,
        host: VcHost,
    ) -> Result<VcHost, ActorProcessingErr> {
        Ok(host)
    }

    async fn handle(
        &self,
        _myself: ActorRef<HostMsg>,
        msg: HostMsg,
        host: &mut VcHost,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HostMsg::Get(reply) => {
                let _ = reply.send(host.clone());
            }
        }
        Ok(())
    }
}

/// The child spec of a VC actor.
pub fn vc_child(host: VcHost, tenant: &str, name: &str) -> ChildSpec {
    let (t, n) = (tenant.to_string(), name.to_string());
    ChildSpec::actor(
        actor_id(tenant, name),
        "vcluster",
        RestartPolicy::Transient,
        move |ctx| {
            (
                actor::VcActor {
                    stats: ctx.stats.clone(),
                },
                actor::VcArgs {
                    host: host.clone(),
                    tenant: t.clone(),
                    name: n.clone(),
                },
            )
        },
    )
}

/// The `tenants` supervisor: the host actor, then one actor per VC found in the store.
pub fn supervisor_child(data_dir: &Path, state: AppState) -> ChildSpec {
    let host = VcHost {
        state,
        root: data_dir.join("vclusters"),
        runtime: Runtime::from_node_config(&data_dir.join("config.json")),
        tick_ms: actor::TICK_MS,
    };
    ChildSpec::new(
        SUPERVISOR_ID,
        "tenants",
        RestartPolicy::Permanent,
        move |ctx| {
            let host = host.clone();
            async move {
                let rows: Vec<(Key, VcRecord)> = host
                    .store()
                    .list_json(&Key::prefix(&(SUBSPACE,)))
                    .await
                    .map_err(|e| SpawnErr::StartupFailed(Box::new(e)))?;
                let h = host.clone();
                let mut spec = SupervisorSpec::new(SUPERVISOR_ID)
                    .kind("tenants")
                    .strategy(Strategy::OneForOne)
                    .intensity(VC_MAX_RESTARTS, VC_RESTART_WINDOW_MS)
                    .backoff(200, 5_000)
                    .escalation(EscalationPolicy::hook(|e| {
                        tracing::error!(vc = %e.child, reason = %e.reason, restarts = e.restarts,
                            "vcluster actor keeps failing; restart intensity exceeded, left stopped");
                    }))
                    .child(ChildSpec::actor(
                        HOST_ID,
                        "vcluster-host",
                        RestartPolicy::Permanent,
                        move |_| (HostActor, h.clone()),
                    ));
                for (_, r) in rows {
                    spec = spec.child(vc_child(host.clone(), &r.tenant, &r.name));
                }
                let handle = Supervisor::spawn_linked(spec, ctx).await?;
                Ok(handle.cell())
            }
        },
    )
}
