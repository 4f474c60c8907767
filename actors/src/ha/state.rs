//! The HA manager's state machine: which VM runs where, and what to do when a VM keeps
//! failing or a node is lost.
//!
//! Safety (no two running copies): a VM on a node whose lease expired stays in `fence`
//! until `lease_deadline_ms + fence_grace_ms` has passed; by then the node has killed its
//! HA VMs itself (the agent fences at its lease deadline). Only then is the node marked
//! fenced and its VMs placed elsewhere. Every placement bumps the VM's generation, and
//! agents refuse commands carrying an older one.
//!
//! Liveness: a VM that keeps failing on its node is restarted there `max_restart` times,
//! then relocated to other nodes `max_relocate` times (through the scheduler), then left
//! in `error`. Recovery after a node loss is not counted against `max_relocate` (as in
//! Proxmox): it is retried on every tick until a node can take the VM.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::scheduler::{
    self, NodeCapacity, NodePriority, Placement, PlacementRequest, SchedulerPolicy,
};

/// Settings of the manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaConfig {
    /// How long after a lost node's lease deadline its VMs may run elsewhere: covers the
    /// node's own fencing (kill at the deadline) and clock skew between nodes.
    pub fence_grace_ms: u64,
    pub policy: SchedulerPolicy,
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig {
            fence_grace_ms: 5_000,
            policy: SchedulerPolicy::default(),
        }
    }
}

/// The state an administrator asks for (Proxmox `state`; `enabled` is `started`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestState {
    #[default]
    Started,
    Stopped,
    Disabled,
    Ignored,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Started => "started",
            RequestState::Stopped => "stopped",
            RequestState::Disabled => "disabled",
            RequestState::Ignored => "ignored",
        }
    }

    /// Proxmox's names, `enabled` included.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "started" | "enabled" => RequestState::Started,
            "stopped" => RequestState::Stopped,
            "disabled" => RequestState::Disabled,
            "ignored" => RequestState::Ignored,
            _ => return None,
        })
    }
}

/// What the manager knows a resource to be doing (Proxmox's service states).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceStatus {
    Started,
    Stopped,
    Disabled,
    Ignored,
    /// Its node lost its lease: waiting for the fence grace to pass.
    Fence,
    /// Its node is fenced: looking for a node to run it.
    Recovery,
    /// Placed on another node; not yet seen running there.
    Relocate,
    /// Out of restarts and relocations; set `disabled` to clear.
    Error,
}

impl ServiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceStatus::Started => "started",
            ServiceStatus::Stopped => "stopped",
            ServiceStatus::Disabled => "disabled",
            ServiceStatus::Ignored => "ignored",
            ServiceStatus::Fence => "fence",
            ServiceStatus::Recovery => "recovery",
            ServiceStatus::Relocate => "relocate",
            ServiceStatus::Error => "error",
        }
    }
}

/// A resource's configuration as the manager uses it (the API's record, with its group
/// resolved and the VM's size).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceConfig {
    pub vmid: u32,
    pub state: RequestState,
    pub max_restart: u32,
    pub max_relocate: u32,
    /// The group's nodes and priorities.
    #[serde(default)]
    pub affinity: Vec<NodePriority>,
    #[serde(default)]
    pub restricted: bool,
    #[serde(default)]
    pub anti_affinity: Option<String>,
    pub cpus: u32,
    pub mem_bytes: u64,
}

/// A resource as the manager tracks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceState {
    pub config: ResourceConfig,
    /// The node it is placed on.
    pub node: String,
    pub status: ServiceStatus,
    /// Bumped by every placement (start, restart, relocation): the fencing token.
    pub generation: u64,
    /// Restarts on the current node since it was placed there.
    pub restarts: u32,
    /// Relocations after failures (not recoveries after a node loss).
    pub relocations: u32,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// A node as the manager sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum NodeState {
    Online,
    /// The lease ran out at `lease_deadline_ms`; its VMs wait in `fence`.
    Expired {
        lease_deadline_ms: u64,
    },
    /// The fence grace passed at `at_ms`: its VMs may run elsewhere.
    Fenced {
        at_ms: u64,
    },
}

/// What the manager is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HaInput {
    /// A resource was added or its configuration changed; `node` is where its VM is
    /// placed now and `running` whether it runs there (both used only when the resource
    /// is new: a running VM is adopted as `started` without being restarted).
    ResourceSet {
        config: ResourceConfig,
        node: String,
        running: bool,
    },
    ResourceRemoved {
        vmid: u32,
    },
    /// Capacities of all nodes, and the VMs HA does not manage (they use room too).
    NodesUpdated {
        nodes: Vec<NodeCapacity>,
        unmanaged: Vec<Placement>,
    },
    NodeLeaseExpired {
        node: String,
        lease_deadline_ms: u64,
    },
    /// The node holds a lease again.
    NodeRecovered {
        node: String,
    },
    /// The VM exceeded its restart intensity on `node`.
    VmFailed {
        vmid: u32,
        node: String,
    },
    VmStarted {
        vmid: u32,
        node: String,
    },
    /// The VM stopped on `node` (the node's supervisor restarts it if it should run; HA
    /// acts on [`HaInput::VmFailed`] only).
    VmStopped {
        vmid: u32,
        node: String,
    },
    /// The VM's record names `node`, another node than the manager's: a migration moved
    /// it (the switchover changes the record's node in one transaction).
    VmMigrated {
        vmid: u32,
        node: String,
    },
    Tick,
}

/// What the manager asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HaAction {
    /// (Re)start the VM on the node it is placed on.
    RestartOnNode {
        vmid: u32,
        node: String,
        generation: u64,
    },
    /// Place the VM on `to` (it is not running on `from`) and start it there.
    Relocate {
        vmid: u32,
        from: String,
        to: String,
        generation: u64,
    },
    StopVm {
        vmid: u32,
        node: String,
    },
    /// The node lost its lease: it must fence itself (and an external fence device may).
    FenceNode {
        node: String,
    },
    /// The fence grace passed: the node counts as fenced.
    MarkFenced {
        node: String,
    },
    SetVmState {
        vmid: u32,
        ha_state: ServiceStatus,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct NodeEntry {
    state: NodeState,
    capacity: Option<NodeCapacity>,
}

/// The HA manager's state machine. Serializable, so the server persists it after every
/// step and continues a recovery after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaManager {
    pub config: HaConfig,
    nodes: BTreeMap<String, NodeEntry>,
    resources: BTreeMap<u32, ResourceState>,
    #[serde(default)]
    unmanaged: Vec<Placement>,
}

impl HaManager {
    pub fn new(config: HaConfig) -> Self {
        HaManager {
            config,
            nodes: BTreeMap::new(),
            resources: BTreeMap::new(),
            unmanaged: Vec::new(),
        }
    }

    pub fn resources(&self) -> &BTreeMap<u32, ResourceState> {
        &self.resources
    }

    pub fn resource(&self, vmid: u32) -> Option<&ResourceState> {
        self.resources.get(&vmid)
    }

    /// Every node the manager has heard of with its state, ordered by name.
    pub fn nodes(&self) -> impl Iterator<Item = (&str, &NodeState)> {
        self.nodes.iter().map(|(n, e)| (n.as_str(), &e.state))
    }

    pub fn node_state(&self, node: &str) -> Option<&NodeState> {
        self.nodes.get(node).map(|e| &e.state)
    }

    /// Apply one input at `now_ms`; the actions are to be carried out in order.
    pub fn handle(&mut self, now_ms: u64, input: HaInput) -> Vec<HaAction> {
        let mut out = Vec::new();
        match input {
            HaInput::ResourceSet {
                config,
                node,
                running,
            } => self.set_resource(config, node, running, &mut out),
            HaInput::ResourceRemoved { vmid } => {
                self.resources.remove(&vmid);
            }
            HaInput::NodesUpdated { nodes, unmanaged } => {
                for n in nodes {
                    let name = n.node.clone();
                    self.node_entry(&name).capacity = Some(n);
                }
                self.unmanaged = unmanaged;
            }
            HaInput::NodeLeaseExpired {
                node,
                lease_deadline_ms,
            } => self.lease_expired(&node, lease_deadline_ms, &mut out),
            HaInput::NodeRecovered { node } => self.recovered(&node, &mut out),
            HaInput::VmFailed { vmid, node } => self.vm_failed(vmid, &node, &mut out),
            HaInput::VmStarted { vmid, node } => {
                if let Some(r) = self.resources.get_mut(&vmid)
                    && r.node == node
                    && matches!(r.status, ServiceStatus::Relocate | ServiceStatus::Recovery)
                    && r.config.state == RequestState::Started
                {
                    set_status(r, ServiceStatus::Started, &mut out);
                }
            }
            HaInput::VmMigrated { vmid, node } => {
                // Only a resource the manager is not placing itself follows the record:
                // in fence, recovery or relocation the manager's own placement stands.
                if let Some(r) = self.resources.get_mut(&vmid)
                    && r.node != node
                    && matches!(
                        r.status,
                        ServiceStatus::Started
                            | ServiceStatus::Stopped
                            | ServiceStatus::Disabled
                            | ServiceStatus::Ignored
                    )
                {
                    r.node = node;
                    // Restarts count per node.
                    r.restarts = 0;
                }
            }
            HaInput::VmStopped { .. } | HaInput::Tick => {}
        }
        self.tick(now_ms, &mut out);
        debug_assert_eq!(self.check_invariants(), Ok(()));
        out
    }

    /// Rules that hold after every step.
    pub fn check_invariants(&self) -> Result<(), String> {
        for r in self.resources.values() {
            let node = self.nodes.get(&r.node).map(|e| &e.state);
            let healthy = matches!(node, None | Some(NodeState::Online));
            if !healthy && matches!(r.status, ServiceStatus::Started | ServiceStatus::Relocate) {
                return Err(format!(
                    "VM {} is {} on node {} which is {:?}",
                    r.config.vmid,
                    r.status.as_str(),
                    r.node,
                    node
                ));
            }
        }
        Ok(())
    }

    fn node_entry(&mut self, node: &str) -> &mut NodeEntry {
        self.nodes.entry(node.to_string()).or_insert(NodeEntry {
            state: NodeState::Online,
            capacity: None,
        })
    }

    fn node_online(&self, node: &str) -> bool {
        matches!(
            self.nodes.get(node).map(|e| &e.state),
            None | Some(NodeState::Online)
        )
    }

    fn set_resource(
        &mut self,
        config: ResourceConfig,
        node: String,
        running: bool,
        out: &mut Vec<HaAction>,
    ) {
        let vmid = config.vmid;
        let online = self.node_online(&node);
        let r = self.resources.entry(vmid).or_insert_with(|| ResourceState {
            node,
            status: if running && online {
                ServiceStatus::Started
            } else {
                ServiceStatus::Stopped
            },
            generation: 0,
            restarts: 0,
            relocations: 0,
            last_error: None,
            config: config.clone(),
        });
        let was = r.config.state;
        r.config = config;
        match r.config.state {
            RequestState::Started => match r.status {
                ServiceStatus::Stopped | ServiceStatus::Disabled | ServiceStatus::Ignored => {
                    if online {
                        r.generation += 1;
                        out.push(HaAction::RestartOnNode {
                            vmid,
                            node: r.node.clone(),
                            generation: r.generation,
                        });
                        set_status(r, ServiceStatus::Started, out);
                    } else {
                        // Its node is lost: the tick fences, then recovers it.
                        set_status(r, ServiceStatus::Fence, out);
                    }
                }
                // Cleared only through `disabled`, as in Proxmox.
                ServiceStatus::Error => {}
                _ => {}
            },
            RequestState::Stopped | RequestState::Disabled => {
                let target = if r.config.state == RequestState::Stopped {
                    ServiceStatus::Stopped
                } else {
                    ServiceStatus::Disabled
                };
                if matches!(r.status, ServiceStatus::Started | ServiceStatus::Relocate) {
                    out.push(HaAction::StopVm {
                        vmid,
                        node: r.node.clone(),
                    });
                }
                if was != r.config.state || r.status != target {
                    r.restarts = 0;
                    r.relocations = 0;
                    r.last_error = None;
                }
                set_status(r, target, out);
            }
            RequestState::Ignored => set_status(r, ServiceStatus::Ignored, out),
        }
    }

    fn lease_expired(&mut self, node: &str, lease_deadline_ms: u64, out: &mut Vec<HaAction>) {
        let entry = self.node_entry(node);
        if entry.state != NodeState::Online {
            return;
        }
        entry.state = NodeState::Expired { lease_deadline_ms };
        out.push(HaAction::FenceNode {
            node: node.to_string(),
        });
        for r in self.resources.values_mut().filter(|r| r.node == node) {
            if matches!(r.status, ServiceStatus::Started | ServiceStatus::Relocate) {
                set_status(r, ServiceStatus::Fence, out);
            }
        }
    }

    fn recovered(&mut self, node: &str, out: &mut Vec<HaAction>) {
        let entry = self.node_entry(node);
        let was_expired = matches!(entry.state, NodeState::Expired { .. });
        entry.state = NodeState::Online;
        if !was_expired {
            return;
        }
        // Back before the grace ran out: its VMs were never placed elsewhere, but the node
        // killed them when it fenced itself; start them again under a new generation.
        for r in self.resources.values_mut().filter(|r| r.node == node) {
            if r.status == ServiceStatus::Fence && r.config.state == RequestState::Started {
                r.generation += 1;
                out.push(HaAction::RestartOnNode {
                    vmid: r.config.vmid,
                    node: node.to_string(),
                    generation: r.generation,
                });
                set_status(r, ServiceStatus::Started, out);
            }
        }
    }

    fn vm_failed(&mut self, vmid: u32, node: &str, out: &mut Vec<HaAction>) {
        let online = self.node_online(node);
        let Some(r) = self.resources.get(&vmid) else {
            return;
        };
        // A report from a node it is no longer placed on, or from a lost node, is stale.
        if r.node != node
            || !online
            || r.config.state != RequestState::Started
            || !matches!(r.status, ServiceStatus::Started | ServiceStatus::Relocate)
        {
            return;
        }
        if r.restarts < r.config.max_restart {
            let Some(r) = self.resources.get_mut(&vmid) else {
                return;
            };
            r.restarts += 1;
            r.generation += 1;
            out.push(HaAction::RestartOnNode {
                vmid,
                node: node.to_string(),
                generation: r.generation,
            });
            set_status(r, ServiceStatus::Started, out);
            return;
        }
        if r.relocations < r.config.max_relocate {
            match self.place(vmid, &[node.to_string()]) {
                Ok(to) => {
                    let Some(r) = self.resources.get_mut(&vmid) else {
                        return;
                    };
                    r.relocations += 1;
                    r.restarts = 0;
                    r.generation += 1;
                    out.push(HaAction::Relocate {
                        vmid,
                        from: node.to_string(),
                        to: to.clone(),
                        generation: r.generation,
                    });
                    r.node = to;
                    r.last_error = None;
                    set_status(r, ServiceStatus::Relocate, out);
                }
                Err(e) => {
                    if let Some(r) = self.resources.get_mut(&vmid) {
                        r.last_error = Some(e.to_string());
                        set_status(r, ServiceStatus::Error, out);
                    }
                }
            }
            return;
        }
        if let Some(r) = self.resources.get_mut(&vmid) {
            r.last_error = Some(format!(
                "VM {vmid} failed after {} restarts and {} relocations",
                r.restarts, r.relocations
            ));
            set_status(r, ServiceStatus::Error, out);
        }
    }

    fn tick(&mut self, now_ms: u64, out: &mut Vec<HaAction>) {
        let grace = self.config.fence_grace_ms;
        for (name, e) in self.nodes.iter_mut() {
            if let NodeState::Expired { lease_deadline_ms } = e.state
                && now_ms >= lease_deadline_ms.saturating_add(grace)
            {
                e.state = NodeState::Fenced { at_ms: now_ms };
                out.push(HaAction::MarkFenced { node: name.clone() });
            }
        }
        let fenced: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, e)| matches!(e.state, NodeState::Fenced { .. }))
            .map(|(n, _)| n.clone())
            .collect();
        let waiting: Vec<u32> = self
            .resources
            .values()
            .filter(|r| {
                fenced.contains(&r.node)
                    && r.config.state == RequestState::Started
                    && matches!(r.status, ServiceStatus::Fence | ServiceStatus::Recovery)
            })
            .map(|r| r.config.vmid)
            .collect();
        // In VMID order, each placement counting against the next.
        for vmid in waiting {
            let placed = self.place(vmid, &fenced);
            let Some(r) = self.resources.get_mut(&vmid) else {
                continue;
            };
            match placed {
                Ok(to) => {
                    r.generation += 1;
                    out.push(HaAction::Relocate {
                        vmid,
                        from: r.node.clone(),
                        to: to.clone(),
                        generation: r.generation,
                    });
                    r.node = to;
                    r.restarts = 0;
                    r.last_error = None;
                    set_status(r, ServiceStatus::Relocate, out);
                }
                Err(e) => {
                    r.last_error = Some(e.to_string());
                    set_status(r, ServiceStatus::Recovery, out);
                }
            }
        }
    }

    /// Ask the scheduler for a node for `vmid`, never one of `exclude` or a lost node.
    fn place(&self, vmid: u32, exclude: &[String]) -> Result<String, scheduler::PlacementError> {
        let r = &self.resources[&vmid];
        let nodes: Vec<NodeCapacity> = self
            .nodes
            .iter()
            .filter_map(|(name, e)| {
                let mut c = e.capacity.clone()?;
                c.node = name.clone();
                c.online = c.online && e.state == NodeState::Online;
                Some(c)
            })
            .collect();
        let mut existing: Vec<Placement> = self
            .resources
            .values()
            .filter(|o| {
                o.config.vmid != vmid
                    && matches!(o.status, ServiceStatus::Started | ServiceStatus::Relocate)
            })
            .map(|o| Placement {
                vmid: o.config.vmid,
                node: o.node.clone(),
                cpus: o.config.cpus,
                mem_bytes: o.config.mem_bytes,
                anti_affinity: o.config.anti_affinity.clone(),
            })
            .collect();
        existing.extend(self.unmanaged.iter().cloned());
        let req = PlacementRequest {
            vmid,
            cpus: r.config.cpus,
            mem_bytes: r.config.mem_bytes,
            affinity: r.config.affinity.clone(),
            restricted: r.config.restricted,
            anti_affinity: r.config.anti_affinity.clone(),
            exclude: exclude.to_vec(),
        };
        scheduler::place(&req, &nodes, &existing, &self.config.policy)
    }
}

fn set_status(r: &mut ResourceState, status: ServiceStatus, out: &mut Vec<HaAction>) {
    if r.status != status {
        r.status = status;
        out.push(HaAction::SetVmState {
            vmid: r.config.vmid,
            ha_state: status,
        });
    }
}

#[cfg(test)]
mod tests;
