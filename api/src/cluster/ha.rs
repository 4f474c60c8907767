//! The `ha-manager` actor (a child of `cluster`): feeds the pure HA state machine
//! (`gpve_actors::ha::state`) from the store and the supervision tree, and carries out its
//! actions.
//!
//! Inputs, on every pass (every [`HA_TICK_MS`], and at once when poked):
//! - the HA configuration (`("ha", "resources", vmid)`, `("ha", "groups", name)`) and the
//!   VM records (node, size, running or not);
//! - node leases: an expired lease of a member node is `NodeLeaseExpired` with its
//!   deadline, a valid one after that `NodeRecovered`. A `node-monitor:{n}` failure (the
//!   supervision event of a lost lease) pokes the manager, so it reacts at once;
//! - VM escalations: a node's VM supervisor records `("ha", "failed", vmid)` when a VM
//!   exceeds its restart intensity (and pokes the manager if it runs in this process).
//!
//! The state machine is persisted at `("ha", "manager")` after each pass, so a restarted
//! server continues a recovery where it stood (its deadlines are wall-clock Unix ms).
//!
//! Actions: a placement (restart or relocation) rewrites the VM record's `node`,
//! `desired` and `generation` in one transaction; a VM placed on this process's node is
//! (re)started by (re)adding its `vm:{vmid}` child to the local `qemu` supervisor. A VM
//! placed on an agent is started by that agent's node tree from the record (agents'
//! side: see docs/architecture.md, HA).

use std::collections::BTreeMap;
use std::time::Duration;

use gpve_actors::ha::{
    HaAction, HaConfig, HaInput, HaManager, HaManagerMsg, NodeState, RequestState, ResourceConfig,
    ServiceStatus, VmFailure,
};
use gpve_actors::scheduler::{NodeCapacity, NodePriority};
use gpve_actors::vm::{self, Desired, VmEntry};
use gpve_store::{Key, Store, StoreError};
use gpve_supervisor::{ActorStats, ChildSpec, EventKind, RestartPolicy, SupervisorHandle};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::records::{Lease, NodeRecord, lease_key, load_key};
use crate::state::AppState;

/// How often the manager runs a pass without being poked.
pub const HA_TICK_MS: u64 = 500;
/// Bound on a VM stop the manager asks for.
pub const HA_STOP_TIMEOUT_MS: u64 = 30_000;
/// Bound on asking the local node actor for its size.
pub const NODE_STATUS_TIMEOUT_MS: u64 = 1_000;

/// Failures of HA configuration records.
#[derive(Debug, Error)]
pub enum HaConfigError {
    #[error("invalid node list entry '{0}' (expected NODE or NODE:PRIORITY)")]
    NodeList(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An HA resource as configured through `/cluster/ha/resources`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRecord {
    pub vmid: u32,
    pub state: RequestState,
    pub max_restart: u32,
    pub max_relocate: u32,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default = "yes")]
    pub failback: bool,
}

fn yes() -> bool {
    true
}

/// An HA group as configured through `/cluster/ha/groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub group: String,
    pub nodes: Vec<NodePriority>,
    #[serde(default)]
    pub restricted: bool,
    #[serde(default)]
    pub nofailback: bool,
    #[serde(default)]
    pub comment: Option<String>,
}

/// `("ha", "resources", vmid)`.
pub fn resource_key(vmid: u32) -> Key {
    Key::pack(&("ha", "resources", vmid))
}

/// `("ha", "groups", name)`.
pub fn group_key(group: &str) -> Key {
    Key::pack(&("ha", "groups", group))
}

/// `("ha", "manager")`: the persisted state machine.
pub fn manager_key() -> Key {
    Key::pack(&("ha", "manager"))
}

/// Proxmox's node list `n1:2,n2` (priority defaults to 0), ordered as given.
pub fn parse_node_list(s: &str) -> Result<Vec<NodePriority>, HaConfigError> {
    let mut out: Vec<NodePriority> = Vec::new();
    for item in s.split([',', ';', ' ']).filter(|i| !i.is_empty()) {
        let (node, priority) = match item.split_once(':') {
            Some((n, p)) => (
                n,
                p.parse::<u32>()
                    .map_err(|_| HaConfigError::NodeList(item.to_string()))?,
            ),
            None => (item, 0),
        };
        if !crate::schema::is_node(node) || out.iter().any(|o| o.node == node) {
            return Err(HaConfigError::NodeList(item.to_string()));
        }
        out.push(NodePriority {
            node: node.to_string(),
            priority,
        });
    }
    if out.is_empty() {
        return Err(HaConfigError::NodeList(s.to_string()));
    }
    Ok(out)
}

/// The node list in Proxmox's form.
pub fn format_node_list(nodes: &[NodePriority]) -> String {
    nodes
        .iter()
        .map(|n| {
            if n.priority == 0 {
                n.node.clone()
            } else {
                format!("{}:{}", n.node, n.priority)
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub async fn list_resources(store: &Store) -> Result<Vec<ResourceRecord>, StoreError> {
    Ok(store
        .list_json::<ResourceRecord>(&Key::prefix(&("ha", "resources")))
        .await?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

pub async fn list_groups(store: &Store) -> Result<Vec<GroupRecord>, StoreError> {
    Ok(store
        .list_json::<GroupRecord>(&Key::prefix(&("ha", "groups")))
        .await?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// The persisted state machine, if the manager ever ran.
pub async fn load_manager(store: &Store) -> Result<Option<HaManager>, StoreError> {
    store.get_json(&manager_key()).await
}

/// Wake the manager of this process, if it runs here.
pub fn poke(directory: &gpve_supervisor::Directory) {
    let _ = directory.send(
        &gpve_actors::ha::manager_path(crate::tree::ROOT),
        HaManagerMsg::Poke,
    );
}

/// The `ha-manager` child of `cluster`.
pub fn child(state: AppState, config: HaConfig) -> ChildSpec {
    ChildSpec::actor(
        gpve_actors::ha::MANAGER_ID,
        "ha-manager",
        RestartPolicy::Permanent,
        move |ctx| {
            (
                HaManagerActor {
                    stats: ctx.stats.clone(),
                    state: state.clone(),
                    config,
                },
                (),
            )
        },
    )
}

/// The HA manager.
#[derive(Debug)]
pub struct HaManagerActor {
    pub stats: ActorStats,
    pub state: AppState,
    pub config: HaConfig,
}

/// Its state: the state machine and the task forwarding supervision events.
pub struct HaActorState {
    sm: HaManager,
    events: tokio::task::JoinHandle<()>,
}

impl Actor for HaManagerActor {
    type Msg = HaManagerMsg;
    type State = HaActorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<HaManagerMsg>,
        _: (),
    ) -> Result<HaActorState, ActorProcessingErr> {
        let mut sm = load_manager(&self.state.store)
            .await?
            .unwrap_or_else(|| HaManager::new(self.config));
        sm.config = self.config;
        // A lost lease is a node-monitor failure in the tree: react to it at once rather
        // than at the next tick.
        let mut rx = self.state.node.directory.subscribe();
        let me = myself.clone();
        let events = tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        let lost_node = matches!(ev.kind, EventKind::Failed { .. })
                            && ev.path.contains("/node-monitor:");
                        let vm_escalated = matches!(ev.kind, EventKind::Escalated { .. });
                        if (lost_node || vm_escalated) && me.cast(HaManagerMsg::Poke).is_err() {
                            break;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        if me.cast(HaManagerMsg::Poke).is_err() {
                            break;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        myself.send_interval(Duration::from_millis(HA_TICK_MS), || HaManagerMsg::Poke);
        myself.cast(HaManagerMsg::Poke)?;
        Ok(HaActorState { sm, events })
    }

    async fn handle(
        &self,
        _myself: ActorRef<HaManagerMsg>,
        msg: HaManagerMsg,
        st: &mut HaActorState,
    ) -> Result<(), ActorProcessingErr> {
        self.stats.record_handled();
        match msg {
            HaManagerMsg::Poke => self.pass(st, Vec::new()).await?,
            HaManagerMsg::Input(input) => self.pass(st, vec![input]).await?,
            HaManagerMsg::Status(reply) => {
                let _ = reply.send(st.sm.clone());
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<HaManagerMsg>,
        st: &mut HaActorState,
    ) -> Result<(), ActorProcessingErr> {
        st.events.abort();
        Ok(())
    }
}

/// What one pass reads from the store.
struct Observed {
    resources: Vec<ResourceRecord>,
    groups: BTreeMap<String, GroupRecord>,
    vms: BTreeMap<u32, VmEntry>,
    members: Vec<(NodeRecord, Option<Lease>, Option<gpve_transport::NodeLoad>)>,
    failures: Vec<(Key, VmFailure)>,
}

impl HaManagerActor {
    fn local_node(&self) -> &str {
        &self.state.config.node_name
    }

    async fn observe(&self) -> Result<Observed, StoreError> {
        let store = &self.state.store;
        let resources = list_resources(store).await?;
        let groups = list_groups(store)
            .await?
            .into_iter()
            .map(|g| (g.group.clone(), g))
            .collect();
        let vms = vm::list_entries(store)
            .await?
            .into_iter()
            .map(|e| (e.record.vmid, e))
            .collect();
        let mut members = Vec::new();
        for n in super::records::list_nodes(store).await? {
            let lease = store.get_json::<Lease>(&lease_key(&n.node)).await?;
            let load = store
                .get_json::<gpve_transport::NodeLoad>(&load_key(&n.node))
                .await?;
            members.push((n, lease, load));
        }
        let failures = store
            .list_json::<VmFailure>(&Key::prefix(&("ha", "failed")))
            .await?;
        Ok(Observed {
            resources,
            groups,
            vms,
            members,
            failures,
        })
    }

    /// This process's node, always online while the server runs.
    async fn local_capacity(&self) -> NodeCapacity {
        let (mut cpus, mut mem_bytes) = (1, 0);
        if let Some(node) = self.state.node.get()
            && let Ok(Ok(s)) = ractor::call_t!(
                node,
                gpve_actors::node::NodeMsg::Status,
                NODE_STATUS_TIMEOUT_MS
            )
        {
            cpus = s.cpuinfo.cpus;
            mem_bytes = s.memory.total;
        }
        NodeCapacity {
            node: self.local_node().to_string(),
            cpus,
            mem_bytes,
            online: true,
            cordoned: false,
        }
    }

    /// Read, feed the state machine, act, persist.
    async fn pass(&self, st: &mut HaActorState, extra: Vec<HaInput>) -> Result<(), StoreError> {
        let now = super::now_ms().max(0) as u64;
        let obs = self.observe().await?;
        let mut inputs = extra;

        // Nodes: this one and every member with its last load.
        let mut nodes = vec![self.local_capacity().await];
        for (n, lease, load) in &obs.members {
            if n.node == self.local_node() {
                continue;
            }
            nodes.push(super::records::capacity(
                n,
                lease.as_ref(),
                load.as_ref(),
                now as i64,
            ));
            match (lease, st.sm.node_state(&n.node)) {
                (Some(l), None | Some(NodeState::Online)) if !l.valid_at(now as i64) => inputs
                    .push(HaInput::NodeLeaseExpired {
                        node: n.node.clone(),
                        lease_deadline_ms: l.deadline_ms.max(0) as u64,
                    }),
                (Some(l), Some(NodeState::Expired { .. } | NodeState::Fenced { .. }))
                    if l.valid_at(now as i64) =>
                {
                    inputs.push(HaInput::NodeRecovered {
                        node: n.node.clone(),
                    })
                }
                _ => {}
            }
        }
        let managed: BTreeMap<u32, &ResourceRecord> =
            obs.resources.iter().map(|r| (r.vmid, r)).collect();
        let unmanaged = obs
            .vms
            .values()
            .filter(|e| !managed.contains_key(&e.record.vmid) && e.desired == Desired::Running)
            .map(VmEntry::placement)
            .collect();
        inputs.insert(0, HaInput::NodesUpdated { nodes, unmanaged });

        // Resources: configuration changes, removals, and VMs seen running.
        for r in &obs.resources {
            let Some(e) = obs.vms.get(&r.vmid) else {
                continue;
            };
            let group = r.group.as_ref().and_then(|g| obs.groups.get(g));
            let config = ResourceConfig {
                vmid: r.vmid,
                state: r.state,
                max_restart: r.max_restart,
                max_relocate: r.max_relocate,
                affinity: group.map(|g| g.nodes.clone()).unwrap_or_default(),
                restricted: group.is_some_and(|g| g.restricted),
                anti_affinity: None,
                cpus: e.record.maxcpu,
                mem_bytes: e.record.maxmem_bytes,
            };
            if st.sm.resource(r.vmid).map(|s| &s.config) != Some(&config) {
                inputs.push(HaInput::ResourceSet {
                    config,
                    node: e.record.node.clone(),
                    running: e.record.status == "running",
                });
            }
            if let Some(s) = st.sm.resource(r.vmid)
                && e.record.node != s.node
                && e.lock.is_none()
            {
                inputs.push(HaInput::VmMigrated {
                    vmid: r.vmid,
                    node: e.record.node.clone(),
                });
            }
            if let Some(s) = st.sm.resource(r.vmid)
                && matches!(s.status, ServiceStatus::Relocate | ServiceStatus::Recovery)
                && e.record.status == "running"
                && e.record.node == s.node
            {
                inputs.push(HaInput::VmStarted {
                    vmid: r.vmid,
                    node: s.node.clone(),
                });
            }
        }
        for vmid in st.sm.resources().keys() {
            if !managed.contains_key(vmid) || !obs.vms.contains_key(vmid) {
                inputs.push(HaInput::ResourceRemoved { vmid: *vmid });
            }
        }
        for (_, f) in &obs.failures {
            tracing::warn!(vmid = f.vmid, node = %f.node, reason = %f.reason,
                "VM exceeded its restart intensity");
            inputs.push(HaInput::VmFailed {
                vmid: f.vmid,
                node: f.node.clone(),
            });
        }
        inputs.push(HaInput::Tick);

        let mut actions = Vec::new();
        for input in inputs {
            actions.extend(st.sm.handle(now, input));
        }
        if let Err(why) = st.sm.check_invariants() {
            tracing::error!(%why, "HA invariant violated");
        }
        // Persist the decisions before carrying them out: after a crash the manager
        // continues from them rather than deciding afresh.
        self.state.store.put_json(&manager_key(), &st.sm).await?;
        for (key, seen) in &obs.failures {
            // Only the report handled here: a newer one written meanwhile stays.
            let (key, seen) = (key.clone(), seen.clone());
            self.state
                .store
                .transact(move |tx| {
                    let (key, seen) = (key.clone(), seen.clone());
                    Box::pin(async move {
                        if tx.get_json::<VmFailure>(&key).await?.as_ref() == Some(&seen) {
                            tx.clear(&key);
                        }
                        Ok(())
                    })
                })
                .await?;
        }
        for a in actions {
            if let Err(e) = self.act(&a).await {
                tracing::error!(action = ?a, error = %e, "HA action failed; retried by the next decision");
            }
        }
        Ok(())
    }

    async fn act(&self, action: &HaAction) -> Result<(), String> {
        match action {
            HaAction::RestartOnNode {
                vmid,
                node,
                generation,
            } => {
                tracing::info!(vmid, %node, generation, "HA: starting VM on its node");
                self.place(*vmid, node, node).await
            }
            HaAction::Relocate {
                vmid,
                from,
                to,
                generation,
            } => {
                tracing::warn!(vmid, %from, %to, generation, "HA: relocating VM");
                self.place(*vmid, from, to).await
            }
            HaAction::StopVm { vmid, node } => {
                tracing::info!(vmid, %node, "HA: stopping VM");
                let vmid = *vmid;
                vm::update_entry(&self.state.store, vmid, |e| e.desired = Desired::Stopped)
                    .await
                    .map_err(|e| e.to_string())?;
                if node == self.local_node() {
                    let host = crate::pve::nodes::qemu::host(&self.state);
                    // A stop can take long; never hold up the manager.
                    tokio::spawn(async move {
                        if let Err(e) =
                            vm::ops::call(&host, vmid, vm::VmOp::Stop, HA_STOP_TIMEOUT_MS).await
                        {
                            tracing::warn!(vmid, error = %e, "HA: stopping the VM failed");
                        }
                    });
                }
                Ok(())
            }
            HaAction::FenceNode { node } => {
                tracing::warn!(%node, "HA: node lost its lease; waiting out the fence grace before recovering its VMs");
                Ok(())
            }
            HaAction::MarkFenced { node } => {
                tracing::warn!(%node, "HA: node counts as fenced; recovering its HA VMs elsewhere");
                Ok(())
            }
            HaAction::SetVmState { vmid, ha_state } => {
                tracing::info!(vmid, state = ha_state.as_str(), "HA: service state");
                Ok(())
            }
        }
    }

    /// Place `vmid` on `to` (from `from`): one transaction sets node, desired state and a
    /// new generation; then the local VM supervisor (re)starts its actor if `to` is here.
    async fn place(&self, vmid: u32, from: &str, to: &str) -> Result<(), String> {
        let target = to.to_string();
        let moved = from != to;
        let found = vm::update_entry(&self.state.store, vmid, move |e| {
            e.record.node = target.clone();
            e.desired = Desired::Running;
            e.generation += 1;
            if moved {
                // Nothing runs on the new node yet.
                e.runtime = Default::default();
                e.runtime.qmpstatus = "stopped".into();
                e.record.status = "stopped".into();
                e.record.uptime_s = 0;
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        if found.is_none() {
            return Err(format!("VM {vmid} no longer exists"));
        }
        let host = crate::pve::nodes::qemu::host(&self.state);
        let Some(sup) = SupervisorHandle::lookup(&host.directory, &host.supervisor_path) else {
            // Not this process's node, or its supervisor is restarting (it reads the
            // store when it starts).
            return Ok(());
        };
        let id = vm::actor_id(vmid);
        if from == self.local_node() || to == self.local_node() {
            // The failed (escalated) child is still listed; replace it.
            let _ = sup.remove_child(&id).await;
        }
        if to == self.local_node() {
            sup.add_child(vm::vm_child(host.clone(), vmid))
                .await
                .map_err(|e| format!("starting vm:{vmid} failed: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lists() {
        let l = parse_node_list("n1:2,n2").unwrap();
        assert_eq!(
            l,
            vec![
                NodePriority {
                    node: "n1".into(),
                    priority: 2
                },
                NodePriority {
                    node: "n2".into(),
                    priority: 0
                }
            ]
        );
        assert_eq!(format_node_list(&l), "n1:2,n2");
        for bad in ["", "n1:x", "n1,n1", "-bad"] {
            assert!(parse_node_list(bad).is_err(), "{bad}");
        }
    }
}
