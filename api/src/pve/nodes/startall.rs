//! `POST /nodes/{node}/startall`: start every VM marked `onboot`, as a task.

use gpve_actors::vm::list_vms;
use serde_json::json;

use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::{Format, Param, ParamSchema};

/// Proxmox: `VM.PowerMgmt` on `/`.
pub const POST: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        Param::node(),
        Param::boolean("force").opt(),
        Param::int("max-workers", Some(1), Some(64)).opt(),
        Param::string("vms", 4096, Some(Format::VmidList)).opt(),
    ]),
    privilege: Privilege::Perm("/", &["VM.PowerMgmt"]),
    description: "Start all VMs and containers located on this node (by default only those with onboot=1).",
};

/// Parse a `pve-vmid-list` already validated by the schema.
pub fn vmid_list(s: Option<&str>) -> Option<Vec<u32>> {
    s.map(|s| {
        s.split([',', ';', ' '])
            .filter_map(|v| v.parse().ok())
            .collect()
    })
}

/// Start the task; returns its UPID.
pub async fn post(ctx: Ctx) -> Result<Reply, ApiError> {
    let node = ctx.local_node()?.to_string();
    let user = ctx.userid()?.to_string();
    let force = ctx.params.bool("force").unwrap_or(false);
    let only = vmid_list(ctx.params.str("vms"));
    let store = ctx.state.store.clone();
    let host = super::qemu::host(&ctx.state);
    let upid = ctx
        .state
        .tasks
        .spawn("startall", "", &user, move |task| async move {
            let vms = list_vms(&store).await.map_err(|e| e.to_string())?;
            let selected: Vec<u32> = vms
                .iter()
                .filter(|v| v.node == node && v.status != "running")
                .filter(|v| match &only {
                    Some(list) => list.contains(&v.vmid),
                    None => v.onboot || force,
                })
                .map(|v| v.vmid)
                .collect();
            task.log(format!("found {} VMs to start", selected.len()))
                .await
                .map_err(|e| e.to_string())?;
            super::qemu::bulk(&host, &task, &selected, gpve_actors::vm::VmOp::Start).await
        })
        .await?;
    Ok(Reply::Data(json!(upid.to_string())))
}
