//! `PUT /nodes/{node}/qemu/{vmid}/resize` (Proxmox's method; `POST` is accepted too): grow
//! a disk by (`+1G`) or to (`10G`) a size. Shrinking is refused naming the current size.
//! Everything a client can get wrong is checked here before the task starts, so a bad
//! request is a 400 and changes nothing; the VM actor checks again on its own state.

use gpve_actors::vm::disks::{self, disk_volume};
use gpve_actors::vm::state::Command;
use gpve_actors::vm::{VmError, VmOp};

use super::{checked_entry, host, spawn_op};
use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::{Format, Param, ParamSchema};

const PARAMS: ParamSchema = ParamSchema(&[
    Param::node(),
    Param::vmid(),
    Param::string("disk", 16, Some(Format::Text)),
    Param::string("size", 32, Some(Format::Text)),
]);

/// `PUT .../resize`.
pub const PUT: Endpoint = Endpoint {
    method: Method::Put,
    params: PARAMS,
    privilege: Privilege::Perm("/vms/{vmid}", &["VM.Config.Disk"]),
    description: "Extend volume size (grow only; the VM must be stopped for now).",
};

/// `POST .../resize` (same as `PUT`).
pub const POST: Endpoint = Endpoint {
    method: Method::Post,
    ..PUT
};

pub async fn resize(ctx: Ctx) -> Result<Reply, ApiError> {
    let (vmid, e) = checked_entry(&ctx, &Command::UpdateConfig).await?;
    let disk = ctx.str("disk")?.to_string();
    let size = ctx.str("size")?.to_string();
    let (_, id) = disk_volume(&e.config, &disk).map_err(VmError::from)?;
    let change = disks::parse_size_change(&size).map_err(|r| ApiError::param("size", r))?;
    if e.record.status == "running" {
        return Err(ApiError::BadRequest(format!(
            "VM {vmid} is running: resizing a disk of a running VM (QMP block_resize) is not \
             built yet; stop the VM first"
        )));
    }
    let info = host(&ctx.state)
        .storage
        .volume(&id, false, |reply| gpve_actors::storage::VolumeMsg::Info {
            reply,
        })
        .await?;
    let new_bytes = disks::new_disk_size(&disk, info.size_bytes, change)
        .map_err(|r| ApiError::param("size", r))?;
    ctx.require(
        &format!("/storage/{}", id.storage()),
        &["Datastore.AllocateSpace"],
    )
    .await?;
    let mut after = crate::tenancy::vm::vm_demand(&e.with_pending());
    after.disk_gib = after
        .disk_gib
        .saturating_sub(info.size_bytes.div_ceil(1 << 30))
        .saturating_add(new_bytes.div_ceil(1 << 30));
    crate::tenancy::vm::reserve_growth(&ctx.state.store, vmid, &after).await?;
    spawn_op(&ctx, "resize", vmid, VmOp::Resize { disk, size }).await
}
