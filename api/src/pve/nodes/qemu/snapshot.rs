//! `/nodes/{node}/qemu/{vmid}/snapshot`: VM snapshots. A snapshot records the VM's
//! configuration and snapshots every disk through its storage driver; the VM must be
//! stopped (snapshots of a running VM and `vmstate` are not built yet).

use gpve_actors::vm::VmOp;
use gpve_actors::vm::state::Command;
use serde_json::{Value, json};

use super::{entry, precheck, spawn_op, vmid};
use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::{Format, Param, ParamSchema};

/// Longest snapshot name (Proxmox: 40).
pub const MAX_SNAPNAME_CHARS: usize = 40;

const fn snapname() -> Param {
    Param::string("snapname", MAX_SNAPNAME_CHARS, Some(Format::Text))
}

/// `GET .../snapshot`.
pub const LIST: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::node(), Param::vmid()]),
    privilege: Privilege::Perm("/vms/{vmid}", &["VM.Audit"]),
    description: "List all snapshots.",
};

pub async fn list(ctx: Ctx) -> Result<Reply, ApiError> {
    let vmid = vmid(&ctx)?;
    let e = entry(&ctx, vmid).await?;
    let mut items: Vec<Value> = e
        .snapshots
        .iter()
        .map(|(name, s)| {
            let mut v = json!({
                "name": name,
                "description": s.description,
                "snaptime": s.snaptime,
                "vmstate": 0,
            });
            if let Some(p) = &s.parent {
                v["parent"] = json!(p);
            }
            v
        })
        .collect();
    let mut current = json!({
        "name": "current",
        "description": "You are here!",
        "running": if e.record.status == "running" { 1 } else { 0 },
    });
    if let Some(p) = &e.parent_snapshot {
        current["parent"] = json!(p);
    }
    items.push(current);
    Ok(Reply::Data(Value::Array(items)))
}

fn check_name(name: &str) -> Result<(), ApiError> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name != "current";
    if ok {
        Ok(())
    } else {
        Err(ApiError::param(
            "snapname",
            "must start with a letter and contain only letters, digits, '-' and '_' (not 'current')",
        ))
    }
}

/// `POST .../snapshot`.
pub const CREATE: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        Param::node(),
        Param::vmid(),
        snapname(),
        Param::string("description", 8192, Some(Format::Text)).opt(),
        Param::boolean("vmstate").opt(),
    ]),
    privilege: Privilege::Perm("/vms/{vmid}", &["VM.Snapshot"]),
    description: "Snapshot a VM (stopped VMs; every disk through its storage driver).",
};

pub async fn create(ctx: Ctx) -> Result<Reply, ApiError> {
    let vmid = vmid(&ctx)?;
    let name = ctx.str("snapname")?.to_string();
    check_name(&name)?;
    if ctx.params.bool("vmstate").unwrap_or(false) {
        return Err(ApiError::param(
            "vmstate",
            "snapshots with RAM state are not supported yet",
        ));
    }
    let e = entry(&ctx, vmid).await?;
    if e.snapshots.contains_key(&name) {
        return Err(ApiError::param(
            "snapname",
            format!("snapshot '{name}' already exists"),
        ));
    }
    precheck(&e, &Command::Snapshot)?;
    let description = ctx.params.str("description").unwrap_or("").to_string();
    spawn_op(
        &ctx,
        "qmsnapshot",
        vmid,
        VmOp::SnapshotCreate { name, description },
    )
    .await
}

/// `GET .../snapshot/{snapname}`.
pub const INDEX: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::node(), Param::vmid(), snapname()]),
    privilege: Privilege::Perm("/vms/{vmid}", &["VM.Audit"]),
    description: "Directory index.",
};

pub async fn index(ctx: Ctx) -> Result<Reply, ApiError> {
    let vmid = vmid(&ctx)?;
    let name = ctx.str("snapname")?;
    let e = entry(&ctx, vmid).await?;
    if !e.snapshots.contains_key(name) {
        return Err(ApiError::NotFound(format!(
            "snapshot '{name}' does not exist"
        )));
    }
    Ok(Reply::Data(
        json!([{"subdir": "rollback"}, {"subdir": "config"}]),
    ))
}

/// `DELETE .../snapshot/{snapname}`.
pub const DELETE: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[
        Param::node(),
        Param::vmid(),
        snapname(),
        Param::boolean("force").opt(),
    ]),
    privilege: Privilege::Perm("/vms/{vmid}", &["VM.Snapshot"]),
    description: "Delete a VM snapshot.",
};

pub async fn delete(ctx: Ctx) -> Result<Reply, ApiError> {
    let vmid = vmid(&ctx)?;
    let name = ctx.str("snapname")?.to_string();
    let e = entry(&ctx, vmid).await?;
    if !e.snapshots.contains_key(&name) {
        return Err(ApiError::NotFound(format!(
            "snapshot '{name}' does not exist"
        )));
    }
    precheck(&e, &Command::Snapshot)?;
    spawn_op(&ctx, "qmdelsnapshot", vmid, VmOp::SnapshotDelete { name }).await
}

/// `POST .../snapshot/{snapname}/rollback`.
pub const ROLLBACK: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        Param::node(),
        Param::vmid(),
        snapname(),
        Param::boolean("start").opt(),
    ]),
    privilege: Privilege::Any("/vms/{vmid}", &["VM.Snapshot", "VM.Snapshot.Rollback"]),
    description: "Rollback VM state to the specified snapshot.",
};

pub async fn rollback(ctx: Ctx) -> Result<Reply, ApiError> {
    let vmid = vmid(&ctx)?;
    let name = ctx.str("snapname")?.to_string();
    let e = entry(&ctx, vmid).await?;
    if !e.snapshots.contains_key(&name) {
        return Err(ApiError::NotFound(format!(
            "snapshot '{name}' does not exist"
        )));
    }
    if ctx.params.bool("start").unwrap_or(false) {
        return Err(ApiError::param(
            "start",
            "start after rollback is not supported; start the VM afterwards",
        ));
    }
    precheck(&e, &Command::Snapshot)?;
    spawn_op(&ctx, "qmrollback", vmid, VmOp::SnapshotRollback { name }).await
}
