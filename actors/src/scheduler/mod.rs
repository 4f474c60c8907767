//! Placement of new and recovered VMs: a pure, deterministic function of its inputs
//! (no clock, no randomness, no hash-map iteration), so the HA manager, the API and the
//! deterministic simulation all get the same answer for the same cluster.
//!
//! A node is a candidate when it is online, not cordoned, not excluded, allowed by the
//! request's node affinity (when restricted), free of the request's anti-affinity group,
//! and has room for the VM's CPUs and memory after overcommit. Among candidates the
//! highest affinity priority wins, then the strategy (spread: most free memory share
//! left; pack: least), then free CPU share, then the node name.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What is to be placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRequest {
    pub vmid: u32,
    pub cpus: u32,
    pub mem_bytes: u64,
    /// Preferred nodes with priorities (higher first), e.g. from an HA group.
    #[serde(default)]
    pub affinity: Vec<NodePriority>,
    /// Only the nodes in `affinity` may run it (Proxmox's `restricted` group).
    #[serde(default)]
    pub restricted: bool,
    /// VMs sharing this group never share a node.
    #[serde(default)]
    pub anti_affinity: Option<String>,
    /// Nodes that must not get it (the node it failed on, a fenced node).
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// One node of an affinity list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePriority {
    pub node: String,
    pub priority: u32,
}

/// What a node offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCapacity {
    pub node: String,
    pub cpus: u32,
    pub mem_bytes: u64,
    pub online: bool,
    pub cordoned: bool,
}

/// A VM already placed (its resources count against its node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub vmid: u32,
    pub node: String,
    pub cpus: u32,
    pub mem_bytes: u64,
    #[serde(default)]
    pub anti_affinity: Option<String>,
}

/// Spread VMs over nodes, or fill one node before the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    #[default]
    Spread,
    Pack,
}

/// Cluster-wide placement rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerPolicy {
    pub strategy: Strategy,
    /// vCPUs per host CPU, in percent (400 = 4 vCPUs per CPU).
    pub cpu_overcommit_pct: u32,
    /// Memory that may be promised, in percent of the node's memory.
    pub mem_overcommit_pct: u32,
}

impl Default for SchedulerPolicy {
    fn default() -> Self {
        SchedulerPolicy {
            strategy: Strategy::Spread,
            cpu_overcommit_pct: 400,
            mem_overcommit_pct: 100,
        }
    }
}

/// Why a node was not chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Rejection {
    Offline,
    Cordoned,
    Excluded,
    /// Restricted affinity and the node is not in the list.
    NotInAffinity,
    /// The node already runs a VM of the same anti-affinity group.
    AntiAffinity {
        group: String,
        vmid: u32,
    },
    Cpu {
        needed: u64,
        free: u64,
    },
    Memory {
        needed_bytes: u64,
        free_bytes: u64,
    },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Offline => f.write_str("offline"),
            Rejection::Cordoned => f.write_str("cordoned"),
            Rejection::Excluded => f.write_str("excluded"),
            Rejection::NotInAffinity => f.write_str("not in the restricted node list"),
            Rejection::AntiAffinity { group, vmid } => {
                write!(f, "runs VM {vmid} of anti-affinity group '{group}'")
            }
            Rejection::Cpu { needed, free } => {
                write!(
                    f,
                    "not enough CPU (needs {needed}, {free} free after overcommit)"
                )
            }
            Rejection::Memory {
                needed_bytes,
                free_bytes,
            } => write!(
                f,
                "not enough memory (needs {needed_bytes} bytes, {free_bytes} free after overcommit)"
            ),
        }
    }
}

/// Failures of [`place`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlacementError {
    #[error("no nodes to place VM {vmid} on")]
    NoNodes { vmid: u32 },
    #[error("no node can take VM {vmid}: {}", list(.rejected))]
    NoneFits {
        vmid: u32,
        /// Every node with its reason, ordered by node name.
        rejected: Vec<(String, Rejection)>,
    },
}

fn list(rejected: &[(String, Rejection)]) -> String {
    rejected
        .iter()
        .map(|(n, r)| format!("{n}: {r}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Resources in use on one node.
#[derive(Debug, Default, Clone)]
struct Used {
    cpus: u64,
    mem_bytes: u64,
    /// Anti-affinity group → lowest VMID of that group on the node.
    groups: BTreeMap<String, u32>,
}

struct Candidate<'a> {
    node: &'a NodeCapacity,
    priority: u32,
    /// Free after placing, and the capacity (both after overcommit).
    mem_free: u64,
    mem_cap: u64,
    cpu_free: u64,
    cpu_cap: u64,
}

/// `a/b` against `c/d` without floats or overflow (b, d > 0).
fn cmp_ratio(a: u64, b: u64, c: u64, d: u64) -> Ordering {
    (u128::from(a) * u128::from(d)).cmp(&(u128::from(c) * u128::from(b)))
}

/// Choose the node for `req`. `existing` must not include `req.vmid` itself (it is
/// ignored if it does, so a VM being re-placed does not count against its old node).
pub fn place(
    req: &PlacementRequest,
    nodes: &[NodeCapacity],
    existing: &[Placement],
    policy: &SchedulerPolicy,
) -> Result<String, PlacementError> {
    if nodes.is_empty() {
        return Err(PlacementError::NoNodes { vmid: req.vmid });
    }
    let mut used: BTreeMap<&str, Used> = BTreeMap::new();
    for p in existing.iter().filter(|p| p.vmid != req.vmid) {
        let u = used.entry(p.node.as_str()).or_default();
        u.cpus += u64::from(p.cpus);
        u.mem_bytes += p.mem_bytes;
        if let Some(g) = &p.anti_affinity {
            let e = u.groups.entry(g.clone()).or_insert(p.vmid);
            *e = (*e).min(p.vmid);
        }
    }
    let mut sorted: Vec<&NodeCapacity> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.node.cmp(&b.node));
    sorted.dedup_by(|a, b| a.node == b.node);

    let empty = Used::default();
    let mut rejected = Vec::new();
    let mut candidates = Vec::new();
    for n in sorted {
        let u = used.get(n.node.as_str()).unwrap_or(&empty);
        let affinity = req.affinity.iter().find(|a| a.node == n.node);
        let cpu_cap = u64::from(n.cpus) * u64::from(policy.cpu_overcommit_pct) / 100;
        let mem_cap = n.mem_bytes / 100 * u64::from(policy.mem_overcommit_pct)
            + n.mem_bytes % 100 * u64::from(policy.mem_overcommit_pct) / 100;
        let cpu_free = cpu_cap.saturating_sub(u.cpus);
        let mem_free = mem_cap.saturating_sub(u.mem_bytes);
        let why = if !n.online {
            Some(Rejection::Offline)
        } else if n.cordoned {
            Some(Rejection::Cordoned)
        } else if req.exclude.contains(&n.node) {
            Some(Rejection::Excluded)
        } else if req.restricted && affinity.is_none() {
            Some(Rejection::NotInAffinity)
        } else if let Some((group, vmid)) = req
            .anti_affinity
            .as_ref()
            .and_then(|g| u.groups.get(g).map(|v| (g.clone(), *v)))
        {
            Some(Rejection::AntiAffinity { group, vmid })
        } else if u64::from(req.cpus) > cpu_free {
            Some(Rejection::Cpu {
                needed: u64::from(req.cpus),
                free: cpu_free,
            })
        } else if req.mem_bytes > mem_free {
            Some(Rejection::Memory {
                needed_bytes: req.mem_bytes,
                free_bytes: mem_free,
            })
        } else {
            None
        };
        match why {
            Some(r) => rejected.push((n.node.clone(), r)),
            None => candidates.push(Candidate {
                node: n,
                priority: affinity.map_or(0, |a| a.priority),
                mem_free: mem_free - req.mem_bytes,
                mem_cap: mem_cap.max(1),
                cpu_free: cpu_free - u64::from(req.cpus),
                cpu_cap: cpu_cap.max(1),
            }),
        }
    }
    let best = candidates.into_iter().min_by(|a, b| {
        let by_strategy = |x: Ordering| match policy.strategy {
            // Spread: the node left with the larger free share comes first.
            Strategy::Spread => x.reverse(),
            Strategy::Pack => x,
        };
        b.priority
            .cmp(&a.priority)
            .then_with(|| by_strategy(cmp_ratio(a.mem_free, a.mem_cap, b.mem_free, b.mem_cap)))
            .then_with(|| by_strategy(cmp_ratio(a.cpu_free, a.cpu_cap, b.cpu_free, b.cpu_cap)))
            .then_with(|| a.node.node.cmp(&b.node.node))
    });
    match best {
        Some(c) => Ok(c.node.node.clone()),
        None => Err(PlacementError::NoneFits {
            vmid: req.vmid,
            rejected,
        }),
    }
}

#[cfg(test)]
mod tests;
