//! `/nodes`: the cluster's nodes (one, the local node, in single-node mode).

pub mod qemu;
pub mod startall;
pub mod status;
pub mod stopall;
pub mod storage;
pub mod tasks;

use gpve_actors::node::{NodeMsg, NodeStatus};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::{Param, ParamSchema};
use crate::state::AppState;

/// Ask the local node actor for its status.
pub async fn node_status(state: &AppState) -> Result<NodeStatus, ApiError> {
    let timeout = state.config.actor_timeout();
    let node = state
        .node
        .get()
        .ok_or_else(|| ApiError::Unavailable("the node actor is not running".into()))?;
    match ractor::call_t!(node, NodeMsg::Status, timeout.as_millis() as u64) {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => Err(ApiError::Internal(e)),
        Err(e) => Err(ApiError::Unavailable(format!("node actor: {e}"))),
    }
}

/// A node's summary as `/nodes` and `/cluster/resources` list it.
pub fn node_summary(s: &NodeStatus) -> Value {
    json!({
        "id": format!("node/{}", s.node),
        "type": "node",
        "node": s.node,
        "status": "online",
        "cpu": s.cpu,
        "maxcpu": s.cpuinfo.cpus,
        "mem": s.memory.used,
        "maxmem": s.memory.total,
        "disk": s.rootfs.used,
        "maxdisk": s.rootfs.total,
        "uptime": s.uptime_s,
        "level": "",
    })
}

/// `GET /nodes`.
pub const GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[]),
    privilege: Privilege::Admin,
    description: "Cluster node index.",
};

/// List the nodes with their load.
pub async fn list(ctx: Ctx) -> Result<Reply, ApiError> {
    let status = node_status(&ctx.state).await?;
    Ok(Reply::Data(json!([node_summary(&status)])))
}

/// `GET /nodes/{node}`.
pub const INDEX: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::node()]),
    privilege: Privilege::Admin,
    description: "Node index.",
};

/// The subdirectories of a node that gpve serves.
pub async fn index(ctx: Ctx) -> Result<Reply, ApiError> {
    ctx.local_node()?;
    Ok(Reply::Data(json!([
        {"name": "status"},
        {"name": "tasks"},
        {"name": "startall"},
        {"name": "stopall"},
        {"name": "storage"},
        {"name": "qemu"},
    ])))
}
