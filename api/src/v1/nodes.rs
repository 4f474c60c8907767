//! `POST /api/v1/nodes/{node}/cordon` and `DELETE` (uncordon): keep new placements off a
//! node (Proxmox has no cordon; gpve's scheduler will skip cordoned nodes). The flag shows
//! as `cordoned` in `GET /nodes` and is sent to the agent with each heartbeat answer.

use serde_json::json;

use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::{Param, ParamSchema};

/// `POST /api/v1/nodes/{node}/cordon`.
pub const CORDON: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[Param::node()]),
    privilege: Privilege::Perm("/nodes/{node}", &["Sys.Modify"]),
    description: "Cordon a node: no new VMs are placed on it.",
};

/// `DELETE /api/v1/nodes/{node}/cordon`.
pub const UNCORDON: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[Param::node()]),
    privilege: Privilege::Perm("/nodes/{node}", &["Sys.Modify"]),
    description: "Uncordon a node: it takes new VMs again.",
};

async fn set(ctx: &Ctx, cordoned: bool) -> Result<Reply, ApiError> {
    let node = ctx.str("node")?;
    if node == ctx.state.config.node_name {
        return Err(ApiError::BadRequest(format!(
            "'{node}' is the server's own node; only joined nodes can be cordoned"
        )));
    }
    let record = crate::cluster::records::set_cordoned(&ctx.state.store, node, cordoned)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| ApiError::NoSuchNode(node.to_string()))?;
    Ok(Reply::Data(json!({
        "node": record.node,
        "cordoned": u8::from(record.cordoned),
    })))
}

/// Cordon.
pub async fn cordon(ctx: Ctx) -> Result<Reply, ApiError> {
    set(&ctx, true).await
}

/// Uncordon.
pub async fn uncordon(ctx: Ctx) -> Result<Reply, ApiError> {
    set(&ctx, false).await
}
