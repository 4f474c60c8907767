//! `/nodes/{node}/storage/{storage}/snapshot` (gpve extension; Proxmox snapshots volumes
//! only through VM snapshots): list, create and delete snapshots of one volume that no VM
//! has open. The volume is a parameter, not a path segment, because volume ids contain `/`.

use gpve_actors::storage::VolumeMsg;
use gpve_storage_drivers::SnapshotName;
use serde_json::{Value, json};

use super::content::{MAX_VOLUME_PARAM_BYTES, parse_volume};
use super::node_storage;
use crate::error::ApiError;
use crate::pve::storage::{service, storage_param, storage_param_decl};
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::{Param, ParamSchema};

fn snapname(ctx: &Ctx) -> Result<SnapshotName, ApiError> {
    SnapshotName::new(ctx.str("snapname")?).map_err(|e| ApiError::param("snapname", e.to_string()))
}

/// `GET .../snapshot?volume=...`.
pub const LIST: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[
        Param::node(),
        storage_param_decl(),
        Param::string("volume", MAX_VOLUME_PARAM_BYTES, None),
    ]),
    privilege: Privilege::Any(
        "/storage/{storage}",
        &["Datastore.Audit", "Datastore.AllocateSpace"],
    ),
    description: "List the snapshots of a volume (gpve extension).",
};

pub async fn list(ctx: Ctx) -> Result<Reply, ApiError> {
    let storage = storage_param(&ctx)?.to_string();
    node_storage(&ctx, &storage).await?;
    let id = parse_volume(&storage, ctx.str("volume")?)?;
    let snaps = service(&ctx.state)
        .volume(&id, false, |reply| VolumeMsg::ListSnapshots { reply })
        .await?;
    let out: Vec<Value> = snaps
        .iter()
        .map(|s| {
            let mut v = json!({"name": s.name.as_str()});
            if let Some(t) = s.created_unix_s {
                v["snaptime"] = json!(t);
            }
            v
        })
        .collect();
    Ok(Reply::Data(Value::Array(out)))
}

/// `POST .../snapshot` with `volume` and `snapname`.
pub const CREATE: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        Param::node(),
        storage_param_decl(),
        Param::string("volume", MAX_VOLUME_PARAM_BYTES, None),
        Param::string("snapname", 40, None),
    ]),
    privilege: Privilege::Perm("/storage/{storage}", &["Datastore.AllocateSpace"]),
    description: "Snapshot a volume (gpve extension).",
};

pub async fn create(ctx: Ctx) -> Result<Reply, ApiError> {
    let storage = storage_param(&ctx)?.to_string();
    node_storage(&ctx, &storage).await?;
    let id = parse_volume(&storage, ctx.str("volume")?)?;
    let name = snapname(&ctx)?;
    service(&ctx.state)
        .volume(&id, true, |reply| VolumeMsg::CreateSnapshot { name, reply })
        .await?;
    Ok(Reply::Data(Value::Null))
}

/// `DELETE .../snapshot?volume=...&snapname=...`.
pub const DELETE: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[
        Param::node(),
        storage_param_decl(),
        Param::string("volume", MAX_VOLUME_PARAM_BYTES, None),
        Param::string("snapname", 40, None),
    ]),
    privilege: Privilege::Perm("/storage/{storage}", &["Datastore.AllocateSpace"]),
    description: "Delete a snapshot of a volume (gpve extension).",
};

pub async fn delete(ctx: Ctx) -> Result<Reply, ApiError> {
    let storage = storage_param(&ctx)?.to_string();
    node_storage(&ctx, &storage).await?;
    let id = parse_volume(&storage, ctx.str("volume")?)?;
    let name = snapname(&ctx)?;
    service(&ctx.state)
        .volume(&id, true, |reply| VolumeMsg::DeleteSnapshot { name, reply })
        .await?;
    Ok(Reply::Data(Value::Null))
}
