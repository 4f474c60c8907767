//! `GET /nodes/{node}/status`.

use serde_json::json;

use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::{Param, ParamSchema};

/// Node status (Proxmox: `Sys.Audit` on `/nodes/{node}`).
pub const GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::node()]),
    privilege: Privilege::Perm("/nodes/{node}", &["Sys.Audit"]),
    description: "Read node status.",
};

/// Ask the node actor and format its answer like Proxmox.
pub async fn get(ctx: Ctx) -> Result<Reply, ApiError> {
    let node = ctx.str("node")?;
    if node != ctx.state.config.node_name {
        // A joined node: answered from its last heartbeat.
        return super::remote_status(&ctx.state, node).await;
    }
    let s = super::node_status(&ctx.state).await?;
    Ok(Reply::Data(json!({
        "uptime": s.uptime_s,
        "loadavg": s.loadavg,
        "cpu": s.cpu,
        "wait": s.wait,
        "cpuinfo": {
            "model": s.cpuinfo.model,
            "cpus": s.cpuinfo.cpus,
            "sockets": s.cpuinfo.sockets,
            "cores": s.cpuinfo.cores,
            "mhz": s.cpuinfo.mhz,
        },
        "memory": {"total": s.memory.total, "used": s.memory.used, "free": s.memory.free,
                   "available": s.memory.available},
        "swap": {"total": s.swap.total, "used": s.swap.used, "free": s.swap.free},
        "rootfs": {"total": s.rootfs.total, "used": s.rootfs.used, "free": s.rootfs.free,
                   "avail": s.rootfs.avail},
        "kversion": s.kversion,
        "current-kernel": {
            "sysname": s.sysname,
            "release": s.release,
            "machine": s.machine,
        },
        "pveversion": s.pveversion,
    })))
}
