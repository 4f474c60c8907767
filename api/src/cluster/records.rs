//! What the store keeps about member nodes.
//!
//! | key | value |
//! |---|---|
//! | `("nodes", name)` | [`NodeRecord`]: joined at, certificate fingerprint, cordoned |
//! | `("leases", name)` | [`Lease`]: deadline, generation, last renewal |
//! | `("node-load", name)` | [`gpve_transport::NodeLoad`] of the last heartbeat |
//! | `("node-api", name)` | `host:port` of the agent's API listener, from its heartbeats (where the server forwards the node's API calls) |

use gpve_store::{Key, Store, StoreError};
use gpve_transport::NodeLoad;
use serde::{Deserialize, Serialize};

/// A joined node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node: String,
    pub joined_at_s: i64,
    /// Lowercase hex SHA-256 of the certificate issued at the join: only that certificate
    /// may speak for the node.
    pub cert_fingerprint: String,
    #[serde(default)]
    pub cordoned: bool,
}

/// A node's liveness lease, renewed by each heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Unix time in milliseconds until which the node counts as alive.
    pub deadline_ms: i64,
    /// Bumped each time the lease is taken again after it expired (a new holding period).
    pub generation: u64,
    pub renewed_at_ms: i64,
    pub ttl_ms: u64,
}

impl Lease {
    pub fn valid_at(&self, now_ms: i64) -> bool {
        now_ms < self.deadline_ms
    }
}

pub fn node_key(node: &str) -> Key {
    Key::pack(&("nodes", node))
}

pub fn lease_key(node: &str) -> Key {
    Key::pack(&("leases", node))
}

pub fn load_key(node: &str) -> Key {
    Key::pack(&("node-load", node))
}

pub fn api_key(node: &str) -> Key {
    Key::pack(&("node-api", node))
}

/// Where the server forwards API calls for a member node, and its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRoute {
    /// `host:port` of the agent's API listener; `None`: the agent reported none.
    pub api_endpoint: Option<String>,
    pub lease: Option<Lease>,
}

/// The forwarding route of `node` (one transaction); `None` if it is not a member.
pub async fn node_route(store: &Store, node: &str) -> Result<Option<NodeRoute>, StoreError> {
    let node = node.to_string();
    store
        .transact(move |tx| {
            let node = node.clone();
            Box::pin(async move {
                if tx.get(&node_key(&node)).await?.is_none() {
                    return Ok(None);
                }
                Ok(Some(NodeRoute {
                    api_endpoint: tx.get_json::<String>(&api_key(&node)).await?,
                    lease: tx.get_json::<Lease>(&lease_key(&node)).await?,
                }))
            })
        })
        .await
}

/// Every joined node, by name.
pub async fn list_nodes(store: &Store) -> Result<Vec<NodeRecord>, StoreError> {
    Ok(store
        .list_json::<NodeRecord>(&Key::prefix(&("nodes",)))
        .await?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// A node's record, lease and last load, read in one transaction.
pub async fn read_node(
    store: &Store,
    node: &str,
) -> Result<Option<(NodeRecord, Option<Lease>, Option<NodeLoad>)>, StoreError> {
    let node = node.to_string();
    store
        .transact(move |tx| {
            let node = node.clone();
            Box::pin(async move {
                let Some(record) = tx.get_json::<NodeRecord>(&node_key(&node)).await? else {
                    return Ok(None);
                };
                let lease = tx.get_json::<Lease>(&lease_key(&node)).await?;
                let load = tx.get_json::<NodeLoad>(&load_key(&node)).await?;
                Ok(Some((record, lease, load)))
            })
        })
        .await
}

/// Set a node's cordoned flag; `None` if the node is not a member.
pub async fn set_cordoned(
    store: &Store,
    node: &str,
    cordoned: bool,
) -> Result<Option<NodeRecord>, StoreError> {
    let node = node.to_string();
    store
        .transact(move |tx| {
            let node = node.clone();
            Box::pin(async move {
                let Some(mut record) = tx.get_json::<NodeRecord>(&node_key(&node)).await? else {
                    return Ok(None);
                };
                record.cordoned = cordoned;
                tx.put_json(&node_key(&node), &record)?;
                Ok(Some(record))
            })
        })
        .await
}

/// A member as the scheduler sees it: the size it last reported, online while its lease
/// holds, and its cordon flag.
pub fn capacity(
    record: &NodeRecord,
    lease: Option<&Lease>,
    load: Option<&NodeLoad>,
    now_ms: i64,
) -> gpve_actors::scheduler::NodeCapacity {
    gpve_actors::scheduler::NodeCapacity {
        node: record.node.clone(),
        cpus: load.map_or(0, |l| u32::try_from(l.maxcpu).unwrap_or(u32::MAX)),
        mem_bytes: load.map_or(0, |l| l.maxmem_bytes),
        online: lease.is_some_and(|l| l.valid_at(now_ms)),
        cordoned: record.cordoned,
    }
}
