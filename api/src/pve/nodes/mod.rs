//! `/nodes`: the cluster's nodes: the server's own node and every joined agent, with the
//! liveness their lease gives them (online, offline, unknown) and their last reported load.

pub mod firewall;
pub mod migrateall;
pub mod network;
pub mod qemu;
pub mod rrddata;
pub mod startall;
pub mod status;
pub mod stopall;
pub mod storage;
pub mod tasks;

use gpve_actors::node::{NodeMsg, NodeStatus};
use serde_json::{Value, json};

use crate::cluster::monitor::{Liveness, MonitorView, monitor_view};
use crate::cluster::records::NodeRecord;
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
    privilege: Privilege::User,
    description: "Cluster node index.",
};

/// List the nodes with their load: the local node first, then the members by name.
pub async fn list(ctx: Ctx) -> Result<Reply, ApiError> {
    let status = node_status(&ctx.state).await?;
    let mut local = node_summary(&status);
    local["cordoned"] = json!(0);
    let mut nodes = vec![local];
    let members = crate::cluster::records::list_nodes(&ctx.state.store)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    for record in members {
        let view = monitor_view(
            &ctx.state.node.directory,
            &record.node,
            ctx.state.config.actor_call_timeout_ms,
        )
        .await;
        nodes.push(member_summary(&record, view.as_ref()));
    }
    Ok(Reply::Data(Value::Array(nodes)))
}

/// A joined node's summary; load fields only once it reported some.
pub fn member_summary(record: &NodeRecord, view: Option<&MonitorView>) -> Value {
    let liveness = view.map_or(Liveness::Unknown, |v| v.liveness);
    let mut out = json!({
        "id": format!("node/{}", record.node),
        "type": "node",
        "node": record.node,
        "status": liveness.as_str(),
        "level": "",
        "cordoned": u8::from(record.cordoned),
    });
    if let Some(load) = view.and_then(|v| v.load.as_ref()) {
        out["cpu"] = json!(load.cpu);
        out["maxcpu"] = json!(load.maxcpu);
        out["mem"] = json!(load.mem_bytes);
        out["maxmem"] = json!(load.maxmem_bytes);
        out["uptime"] = json!(load.uptime_s);
    }
    out
}

/// `GET /nodes/{node}/status` of a joined node, from its last heartbeat. An offline node
/// answers 503 with the reason (Proxmox answers 595 when it cannot reach a node).
pub async fn remote_status(state: &AppState, node: &str) -> Result<Reply, ApiError> {
    let Some((record, stored_lease, stored_load)) =
        crate::cluster::records::read_node(&state.store, node)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
    else {
        return Err(ApiError::NoSuchNode(node.to_string()));
    };
    // The monitor is the judge; while it restarts, the stored lease tells as much.
    let view = monitor_view(
        &state.node.directory,
        node,
        state.config.actor_call_timeout_ms,
    )
    .await
    .unwrap_or_else(|| {
        let online = stored_lease
            .as_ref()
            .is_some_and(|l| l.valid_at(crate::cluster::now_ms()));
        MonitorView {
            liveness: if online {
                Liveness::Online
            } else {
                Liveness::Offline
            },
            lease: stored_lease,
            load: stored_load,
        }
    });
    let load = match (&view.lease, &view.load) {
        (Some(_), Some(load)) if view.liveness == Liveness::Online => load,
        (Some(lease), _) => {
            let ago_s = (crate::cluster::now_ms() - lease.renewed_at_ms) / 1000;
            return Err(ApiError::Unavailable(format!(
                "node '{node}' is offline: no heartbeat for {ago_s} s"
            )));
        }
        _ => {
            return Err(ApiError::Unavailable(format!(
                "node '{node}' has never reported (is its gpve-agent running?)"
            )));
        }
    };
    Ok(Reply::Data(json!({
        "uptime": load.uptime_s,
        "cpu": load.cpu,
        "cpuinfo": {"cpus": load.maxcpu},
        "memory": {"total": load.maxmem_bytes, "used": load.mem_bytes,
                   "free": load.maxmem_bytes.saturating_sub(load.mem_bytes)},
        "pveversion": load.version,
        "cordoned": u8::from(record.cordoned),
        "lease": view.lease,
    })))
}

/// `GET /nodes/{node}`.
pub const INDEX: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::node()]),
    privilege: Privilege::User,
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
        {"name": "migrateall"},
        {"name": "storage"},
        {"name": "qemu"},
        {"name": "rrddata"},
    ])))
}
