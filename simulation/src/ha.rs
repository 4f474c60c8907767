//! Multi-node HA in the simulation: the real heartbeat handler and node monitors
//! (`gpve_api::cluster`), the real HA manager and fencing state machines
//! (`gpve_actors::ha`), and the simulation as their executor.
//!
//! - Heartbeats: every node's agent sends one every [`HEARTBEAT_INTERVAL_MS`] to the real
//!   `ServerCluster::heartbeat`, which renews its lease in the store and feeds the real
//!   `node-monitor:{node}` actors. A partition drops them.
//! - Fencing: a live agent runs the real [`Fencer`]: when it cannot renew before its
//!   deadline it kills its HA VMs (stops their actors, kills their QEMUs). A crashed agent's
//!   node-local watchdog kills them [`WATCHDOG_TIMEOUT_MS`] after the agent died.
//! - The manager: lease bookkeeping turns expired and renewed leases into `HaInput`s; its
//!   `HaAction`s are executed here (relocation = a store transaction that moves the VM,
//!   checked against the lost node's lease, then the VM's actor on the target node).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use gpve_actors::ha::fence::FenceDecision;
use gpve_actors::ha::{
    Fencer, HaAction, HaConfig, HaInput, HaManager, NodeState, RequestState, ResourceConfig,
    ServiceStatus,
};
use gpve_actors::scheduler::{NodeCapacity, Placement};
use gpve_actors::vm::{Desired, VmEntry, VmRuntime, vm_key};
use gpve_api::cluster::monitor::{Monitors, membership_spec};
use gpve_api::cluster::records::{Lease, lease_key};
use gpve_api::cluster::service::ServerCluster;
use gpve_api::tree::ROOT;
use gpve_supervisor::{
    ChildSpec, Directory, RestartPolicy, Supervisor, SupervisorHandle, SupervisorSpec, wall_now_ms,
};
use gpve_transport::{ClusterService, Heartbeat, PeerIdentity};

use crate::cluster::Cluster;
use crate::model::Violation;
use crate::options::{InjectedBug, SimOptions};
use crate::run::BookHooks;

pub const HEARTBEAT_INTERVAL_MS: u64 = gpve_api::cluster::HEARTBEAT_INTERVAL_MS;
pub const LEASE_TTL_MS: u64 = gpve_api::cluster::LEASE_TTL_MS;
/// An agent fences this long before its lease deadline, so its VMs are dead when the lease
/// ends.
pub const FENCE_MARGIN_MS: u64 = 1_000;
/// A node-local watchdog kills the HA VMs this long after the agent process died (the
/// agent pets it on every loop). The fence grace must cover it.
pub const WATCHDOG_TIMEOUT_MS: u64 = LEASE_TTL_MS;
/// Capacity every simulated node reports.
const NODE_CPUS: u32 = 64;
const NODE_MEM_BYTES: u64 = 256 << 30;
/// The certificate fingerprint of every simulated node (the simulation has no TLS).
const SIM_FINGERPRINT: &str = "simulated";

/// Failures setting up the HA part of the cluster.
#[derive(Debug, thiserror::Error)]
pub enum HaSetupError {
    #[error("generating the cluster CA failed: {0}")]
    Ca(String),
    #[error("starting the membership supervisor failed")]
    Tree(#[source] gpve_supervisor::SupervisorError),
}

/// HA-add requests from clients, taken by the driver at its next tick.
#[derive(Clone, Default)]
pub struct HaRequests(Arc<Mutex<Vec<u32>>>);

impl HaRequests {
    pub fn add(&self, vmid: u32) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(vmid);
    }

    fn take(&self) -> Vec<u32> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

struct AgentHa {
    fencer: Fencer,
    next_heartbeat_ms: u64,
    seq: u64,
    /// The tree incarnation the fencer belongs to (a restarted agent starts afresh).
    incarnation: u32,
    /// When the agent was first seen dead, for the watchdog.
    down_since_ms: Option<u64>,
    watchdog_fired: bool,
    /// HA VMs this agent fenced, reported to the manager once the lease is back (as the
    /// real agent's fence actor does): otherwise a node that renews before the server saw
    /// its lease expire leaves them dead with nobody to restart them.
    fenced: BTreeSet<u32>,
}

/// The HA manager, the agents' fencing and the executor of their decisions.
pub struct HaDriver {
    manager: HaManager,
    requests: HaRequests,
    service: ServerCluster,
    /// The server's tree (membership and node monitors); kept alive for the run.
    server: SupervisorHandle,
    agents: Vec<AgentHa>,
    hooks: BookHooks,
    managed: BTreeSet<u32>,
    /// VMs whose restart intensity was exceeded, reported by the driver.
    failed: Vec<(u32, String)>,
    /// Nodes the manager was last told are online.
    online: BTreeMap<String, bool>,
    /// Resources whose placement the executor could not carry out: the manager is told
    /// again where they are (removed and set from the store) at the next tick.
    resync: BTreeSet<u32>,
}

impl HaDriver {
    /// The server side (membership supervisor, heartbeat service) and one agent per node.
    pub async fn new(
        cluster: &Cluster,
        opts: &SimOptions,
        hooks: BookHooks,
        scratch: &std::path::Path,
    ) -> Result<HaDriver, HaSetupError> {
        let directory = Directory::with_clock(cluster.clock.clone());
        let server = Supervisor::spawn(
            SupervisorSpec::new(ROOT).child(ChildSpec::supervisor(
                RestartPolicy::Permanent,
                SupervisorSpec::new("cluster").child(ChildSpec::supervisor(
                    RestartPolicy::Permanent,
                    membership_spec(),
                )),
            )),
            directory.clone(),
        )
        .await
        .map_err(HaSetupError::Tree)?;
        let ca = gpve_transport::pki::ClusterCa::generate("sim")
            .map_err(|e| HaSetupError::Ca(e.to_string()))?;
        let service = ServerCluster {
            store: cluster.truth.clone(),
            ca: Arc::new(ca),
            files: gpve_api::cluster::files::ClusterFiles::new(scratch),
            monitors: Monitors {
                directory,
                store: cluster.truth.clone(),
                started_at_ms: gpve_api::cluster::now_ms(),
            },
            local_node: "sim-server".into(),
            cluster_name: Some("sim".into()),
            advertise: None,
            lease_ttl_ms: LEASE_TTL_MS,
        };
        let grace = match opts.bug {
            Some(InjectedBug::SkipFenceGrace) => 0,
            None => HaConfig::default().fence_grace_ms,
        };
        let manager = HaManager::new(HaConfig {
            fence_grace_ms: grace,
            ..HaConfig::default()
        });
        let agents = cluster
            .nodes
            .iter()
            .map(|n| AgentHa {
                fencer: Fencer::new(),
                next_heartbeat_ms: 0,
                seq: 0,
                incarnation: n.incarnations,
                down_since_ms: None,
                watchdog_fired: false,
                fenced: BTreeSet::new(),
            })
            .collect();
        hooks.note(format!("ha: fence grace {grace} ms, lease ttl {LEASE_TTL_MS} ms, watchdog {WATCHDOG_TIMEOUT_MS} ms"));
        Ok(HaDriver {
            manager,
            requests: HaRequests::default(),
            service,
            server,
            agents,
            hooks,
            managed: BTreeSet::new(),
            failed: Vec::new(),
            online: BTreeMap::new(),
            resync: BTreeSet::new(),
        })
    }

    /// Where clients put HA-add requests.
    pub fn requests(&self) -> HaRequests {
        self.requests.clone()
    }

    /// The driver saw `vm:{vmid}` on `node` exceed its restart intensity.
    pub fn vm_failed(&mut self, vmid: u32, node: &str) {
        self.failed.push((vmid, node.to_string()));
    }

    /// One heartbeat from node `i`'s agent, as it sends it before starting its VMs after a
    /// (re)start: an agent must hold its lease before it runs HA VMs.
    pub async fn heartbeat(&mut self, cluster: &Cluster, i: usize) -> bool {
        let node = &cluster.nodes[i];
        if node
            .heartbeats_cut
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return false;
        }
        let agent = &mut self.agents[i];
        agent.seq += 1;
        let hb = Heartbeat {
            seq: agent.seq,
            ..Heartbeat::default()
        };
        let peer = PeerIdentity {
            node: node.name.clone(),
            cert_fingerprint: SIM_FINGERPRINT.into(),
        };
        match self.service.heartbeat(peer, hb).await {
            Ok(ack) => {
                let deadline_ms = u64::try_from(ack.lease_deadline_ms).unwrap_or(0);
                agent.fencer.lease_seen(deadline_ms, FENCE_MARGIN_MS);
                true
            }
            Err(e) => {
                self.hooks
                    .note(format!("ha: heartbeat of {} refused: {e}", node.name));
                false
            }
        }
    }

    /// Agents (heartbeats, fencing, watchdogs), then the manager.
    pub async fn tick(&mut self, cluster: &mut Cluster) {
        let now = wall_now_ms();
        for i in 0..cluster.nodes.len() {
            self.agent_tick(cluster, i, now).await;
        }
        self.manager_tick(cluster, now).await;
    }

    async fn agent_tick(&mut self, cluster: &mut Cluster, i: usize, now: u64) {
        let name = cluster.nodes[i].name.clone();
        if cluster.nodes[i].tree.is_none() {
            let agent = &mut self.agents[i];
            let since = *agent.down_since_ms.get_or_insert(now);
            if !agent.watchdog_fired && now >= since + WATCHDOG_TIMEOUT_MS {
                agent.watchdog_fired = true;
                let killed = self.kill_ha_vms(cluster, i).await;
                self.hooks
                    .note(format!("ha: watchdog of {name} fired; killed {killed:?}"));
            }
            return;
        }
        let incarnation = cluster.nodes[i].incarnations;
        {
            let agent = &mut self.agents[i];
            agent.down_since_ms = None;
            agent.watchdog_fired = false;
            if agent.incarnation != incarnation {
                // A new agent process: no lease held yet.
                agent.incarnation = incarnation;
                agent.fencer = Fencer::new();
                agent.next_heartbeat_ms = 0;
            }
        }
        if now >= self.agents[i].next_heartbeat_ms {
            self.agents[i].next_heartbeat_ms = now + HEARTBEAT_INTERVAL_MS;
            self.heartbeat(cluster, i).await;
        }
        let was_fenced = self.agents[i].fencer.fenced_since_ms().is_some();
        if self.agents[i].fencer.poll(now) == FenceDecision::Fence {
            let killed = self.kill_ha_vms(cluster, i).await;
            if !was_fenced || !killed.is_empty() {
                self.hooks.note(format!(
                    "ha: {name} lost its lease; fenced, killed {killed:?}"
                ));
            }
        } else if !self.agents[i].fenced.is_empty() {
            let fenced = std::mem::take(&mut self.agents[i].fenced);
            self.hooks.note(format!(
                "ha: {name} holds its lease again; reports fenced {fenced:?}"
            ));
            for vmid in fenced {
                self.failed.push((vmid, name.clone()));
            }
        }
    }

    /// Stops the actors and kills the QEMUs of every HA VM running on node `i`.
    async fn kill_ha_vms(&mut self, cluster: &mut Cluster, i: usize) -> Vec<u32> {
        let node = &cluster.nodes[i];
        let running: Vec<u32> = node
            .host
            .running()
            .into_iter()
            .map(|(v, _)| v)
            .filter(|v| self.managed.contains(v))
            .collect();
        for vmid in &running {
            if let Some(tree) = node.tree.as_ref()
                && let Some(sup) = SupervisorHandle::lookup(
                    &tree.directory,
                    &format!("{ROOT}/{}", gpve_actors::vm::SUPERVISOR_ID),
                )
            {
                let _ = sup.remove_child(&gpve_actors::vm::actor_id(*vmid)).await;
            }
            node.host.crash(*vmid);
            self.agents[i].fenced.insert(*vmid);
            let generation = self.manager.resource(*vmid).map_or(0, |r| r.generation);
            self.agents[i].fencer.killed(*vmid, generation);
        }
        running
    }

    async fn manager_tick(&mut self, cluster: &mut Cluster, now: u64) {
        let entries: BTreeMap<u32, VmEntry> = gpve_actors::vm::list_entries(&cluster.truth)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.record.vmid, e))
            .collect();
        let mut inputs = Vec::new();
        for vmid in self.requests.take() {
            let Some(e) = entries.get(&vmid) else {
                continue;
            };
            if self.managed.insert(vmid) {
                inputs.push(HaInput::ResourceSet {
                    config: ResourceConfig {
                        vmid,
                        state: RequestState::Started,
                        max_restart: 1,
                        max_relocate: 1,
                        affinity: Vec::new(),
                        restricted: false,
                        anti_affinity: None,
                        cpus: e.record.maxcpu,
                        mem_bytes: e.record.maxmem_bytes,
                    },
                    node: e.record.node.clone(),
                    running: cluster.index(&e.record.node).is_some_and(|i| {
                        cluster.nodes[i]
                            .host
                            .running()
                            .iter()
                            .any(|(v, _)| *v == vmid)
                    }),
                });
            }
        }
        for vmid in std::mem::take(&mut self.resync) {
            let (Some(e), Some(r)) = (entries.get(&vmid), self.manager.resource(vmid)) else {
                continue;
            };
            let config = r.config.clone();
            inputs.push(HaInput::ResourceRemoved { vmid });
            inputs.push(HaInput::ResourceSet {
                config,
                node: e.record.node.clone(),
                running: cluster.index(&e.record.node).is_some_and(|i| {
                    cluster.nodes[i]
                        .host
                        .running()
                        .iter()
                        .any(|(v, _)| *v == vmid)
                }),
            });
        }
        let gone: Vec<u32> = self
            .managed
            .iter()
            .copied()
            .filter(|v| !entries.contains_key(v))
            .collect();
        for vmid in gone {
            self.managed.remove(&vmid);
            inputs.push(HaInput::ResourceRemoved { vmid });
        }
        // Lease bookkeeping: the manager learns of expiries and renewals from the store.
        let now_i = i64::try_from(now).unwrap_or(i64::MAX);
        let mut capacities = Vec::new();
        for node in &cluster.nodes {
            let lease: Option<Lease> = cluster
                .truth
                .get_json(&lease_key(&node.name))
                .await
                .unwrap_or(None);
            let record = gpve_api::cluster::records::read_node(&cluster.truth, &node.name)
                .await
                .ok()
                .flatten();
            let cordoned = record.is_some_and(|(r, _, _)| r.cordoned);
            let valid = lease.as_ref().is_some_and(|l| l.valid_at(now_i));
            let was = self.online.insert(node.name.clone(), valid);
            match (was, valid, &lease) {
                (Some(true) | None, false, Some(l)) => inputs.push(HaInput::NodeLeaseExpired {
                    node: node.name.clone(),
                    lease_deadline_ms: u64::try_from(l.deadline_ms).unwrap_or(0),
                }),
                (Some(false), true, _) => inputs.push(HaInput::NodeRecovered {
                    node: node.name.clone(),
                }),
                _ => {}
            }
            capacities.push(NodeCapacity {
                node: node.name.clone(),
                cpus: NODE_CPUS,
                mem_bytes: NODE_MEM_BYTES,
                online: valid,
                cordoned,
            });
        }
        let unmanaged: Vec<Placement> = entries
            .values()
            .filter(|e| !self.managed.contains(&e.record.vmid))
            .map(|e| Placement {
                vmid: e.record.vmid,
                node: e.record.node.clone(),
                cpus: e.record.maxcpu,
                mem_bytes: e.record.maxmem_bytes,
                anti_affinity: None,
            })
            .collect();
        inputs.insert(
            0,
            HaInput::NodesUpdated {
                nodes: capacities,
                unmanaged,
            },
        );
        for (vmid, node) in std::mem::take(&mut self.failed) {
            if self.managed.contains(&vmid) {
                inputs.push(HaInput::VmFailed { vmid, node });
            }
        }
        for (vmid, r) in self.manager.resources() {
            if matches!(r.status, ServiceStatus::Relocate | ServiceStatus::Recovery)
                && let Some(i) = cluster.index(&r.node)
                && cluster.nodes[i]
                    .host
                    .running()
                    .iter()
                    .any(|(v, _)| v == vmid)
            {
                inputs.push(HaInput::VmStarted {
                    vmid: *vmid,
                    node: r.node.clone(),
                });
            }
        }
        inputs.push(HaInput::Tick);
        for input in inputs {
            let label = input_label(&input);
            let actions = self.manager.handle(now, input);
            if let Some(label) = label {
                self.hooks.note(format!("ha: in {label}"));
            }
            for action in actions {
                self.execute(cluster, action).await;
            }
        }
        if let Err(e) = self.manager.check_invariants() {
            self.hooks.violate(Violation {
                invariant: "HA manager invariants",
                detail: e,
            });
        }
    }

    async fn execute(&mut self, cluster: &mut Cluster, action: HaAction) {
        self.hooks.note(format!("ha: do {action:?}"));
        match action {
            HaAction::RestartOnNode { vmid, node, .. } => {
                if let Some(i) = cluster.index(&node) {
                    let outcome = ensure_vm_running(cluster, i, vmid).await;
                    self.hooks
                        .note(format!("ha: restart {vmid} on {node}: {outcome}"));
                    if outcome.starts_with("refused") {
                        self.resync.insert(vmid);
                    }
                }
            }
            HaAction::Relocate { vmid, from, to, .. } => {
                let moved = relocate_in_store(cluster, vmid, &from, &to).await;
                self.hooks
                    .note(format!("ha: relocate {vmid} {from} -> {to}: {moved}"));
                if moved != "moved" {
                    self.resync.insert(vmid);
                }
                if moved == "moved" {
                    self.hooks.moved(vmid, &to);
                    if let Some(i) = cluster.index(&from)
                        && let Some(tree) = cluster.nodes[i].tree.as_ref()
                        && !cluster.nodes[i]
                            .api_cut
                            .load(std::sync::atomic::Ordering::Relaxed)
                        && let Some(sup) = SupervisorHandle::lookup(
                            &tree.directory,
                            &format!("{ROOT}/{}", gpve_actors::vm::SUPERVISOR_ID),
                        )
                    {
                        let _ = sup.remove_child(&gpve_actors::vm::actor_id(vmid)).await;
                    }
                    if let Some(i) = cluster.index(&to) {
                        let outcome = ensure_vm_running(cluster, i, vmid).await;
                        self.hooks
                            .note(format!("ha: start {vmid} on {to}: {outcome}"));
                    }
                }
            }
            HaAction::StopVm { vmid, node } => {
                if let Some(i) = cluster.index(&node)
                    && let Some(host) = cluster.nodes[i]
                        .tree
                        .as_ref()
                        .and_then(|t| t.state.vm_host.get().cloned())
                {
                    let r = gpve_actors::vm::ops::call(
                        &host,
                        vmid,
                        gpve_actors::vm::VmOp::Stop,
                        30_000,
                    )
                    .await;
                    self.hooks.note(format!(
                        "ha: stop {vmid} on {node}: {}",
                        r.map_or_else(|e| e.to_string(), |_| "ok".into())
                    ));
                }
            }
            HaAction::FenceNode { .. }
            | HaAction::MarkFenced { .. }
            | HaAction::SetVmState { .. } => {}
        }
    }

    /// Liveness: every HA VM that should run runs on the node it is placed on.
    pub fn converged(
        &self,
        cluster: &Cluster,
        entries: &BTreeMap<u32, VmEntry>,
    ) -> Result<(), (&'static str, String)> {
        for (vmid, r) in self.manager.resources() {
            let Some(e) = entries.get(vmid) else {
                continue;
            };
            if r.config.state != RequestState::Started
                || e.desired != Desired::Running
                || r.status == ServiceStatus::Error
            {
                continue;
            }
            let runs = cluster.index(&e.record.node).is_some_and(|i| {
                cluster.nodes[i]
                    .host
                    .running()
                    .iter()
                    .any(|(v, _)| v == vmid)
            });
            if !runs || r.node != e.record.node {
                return Err((
                    "every HA VM that should run runs",
                    format!(
                        "HA VM {vmid} (ha state {}, placed on {} by HA, {} in the store) does not run there",
                        r.status.as_str(),
                        r.node,
                        e.record.node
                    ),
                ));
            }
        }
        for (node, state) in self.manager.nodes() {
            if !matches!(state, NodeState::Online) {
                return Err((
                    "every HA VM that should run runs",
                    format!("HA still sees node {node} as {state:?}"),
                ));
            }
        }
        Ok(())
    }

    /// Stops the server's tree.
    pub async fn stop(&self) {
        let _ = self.server.stop().await;
    }
}

fn input_label(input: &HaInput) -> Option<String> {
    match input {
        HaInput::NodesUpdated { .. } | HaInput::Tick => None,
        other => Some(format!("{other:?}")),
    }
}

/// Moves `vmid` from `from` to `to` in one transaction, only while `from`'s lease is
/// still expired (a node that renewed meanwhile keeps its VM: the relocation is stale).
async fn relocate_in_store(cluster: &Cluster, vmid: u32, from: &str, to: &str) -> &'static str {
    let (from, to) = (from.to_string(), to.to_string());
    let r = cluster
        .truth
        .transact(move |tx| {
            let (from, to) = (from.clone(), to.clone());
            Box::pin(async move {
                let now = gpve_api::cluster::now_ms();
                if let Some(l) = tx.get_json::<Lease>(&lease_key(&from)).await?
                    && l.valid_at(now)
                    && from != to
                {
                    return Ok("refused: the source node holds its lease again");
                }
                let key = vm_key(vmid);
                let Some(mut e) = tx.get_json::<VmEntry>(&key).await? else {
                    return Ok("refused: the VM is gone");
                };
                if e.record.node != from {
                    return Ok("refused: the VM is no longer on the source node");
                }
                e.record.node = to;
                e.desired = Desired::Running;
                e.runtime = VmRuntime {
                    qmpstatus: "stopped".into(),
                    ..VmRuntime::default()
                };
                e.refresh_summary();
                tx.put_json(&key, &e)?;
                Ok("moved")
            })
        })
        .await;
    r.unwrap_or("refused: the store failed")
}

/// Makes sure node `i` runs an actor for `vmid` that starts it.
async fn ensure_vm_running(cluster: &Cluster, i: usize, vmid: u32) -> String {
    let node = &cluster.nodes[i];
    if node.api_cut.load(std::sync::atomic::Ordering::Relaxed) {
        return "node unreachable".into();
    }
    let Some(tree) = node.tree.as_ref() else {
        return "node down".into();
    };
    // Only where the store places the VM: an actor elsewhere would start a second copy.
    match gpve_actors::vm::load_entry(&cluster.truth, vmid).await {
        Ok(Some(e)) if e.record.node == node.name => {}
        Ok(Some(e)) => return format!("refused: the VM is placed on {}", e.record.node),
        Ok(None) => return "refused: the VM is gone".into(),
        Err(e) => return format!("the store failed: {e}"),
    }
    let Some(host) = tree.state.vm_host.get().cloned() else {
        return "node has no VM host".into();
    };
    let Some(sup) = host.supervisor() else {
        return "VM supervisor not running".into();
    };
    if host.directory.lookup(&host.actor_path(vmid)).is_none() {
        // A new actor reconciles towards the stored desired state (running).
        let _ = sup.remove_child(&gpve_actors::vm::actor_id(vmid)).await;
        return match sup
            .add_child(gpve_actors::vm::vm_child(host.clone(), vmid))
            .await
        {
            Ok(()) => "actor started".into(),
            Err(e) => format!("actor failed to start: {e}"),
        };
    }
    match gpve_actors::vm::ops::call(&host, vmid, gpve_actors::vm::VmOp::Start, 30_000).await {
        Ok(_) => "started".into(),
        Err(e) => e.to_string(),
    }
}
