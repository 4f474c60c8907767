//! `GET /cluster/nextid`.

use gpve_actors::vm::{first_free_vmid, list_vms, vm_exists};
use serde_json::json;

use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::{Param, ParamSchema};

/// Proxmox: `user: all`; gpve's minimal model keeps it to administrators.
pub const GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::vmid().opt()]),
    privilege: Privilege::User,
    description: "Get next free VMID, or check that a given VMID is free.",
};

/// The next free VMID as a string (as Proxmox), or `vmid` itself if free; 400 if taken.
pub async fn get(ctx: Ctx) -> Result<Reply, ApiError> {
    let store = &ctx.state.store;
    if let Some(vmid) = ctx.params.int("vmid") {
        let vmid = vmid as u32;
        if vm_exists(store, vmid).await? {
            return Err(ApiError::BadRequest(format!("VM {vmid} already exists")));
        }
        return Ok(Reply::Data(json!(vmid.to_string())));
    }
    let vms = list_vms(store).await?;
    let next = first_free_vmid(vms.iter().map(|v| v.vmid))
        .ok_or_else(|| ApiError::BadRequest("no free VMID left".into()))?;
    Ok(Reply::Data(json!(next.to_string())))
}
