//! `POST /nodes/{node}/stopall`: stop every running VM, as a task.

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
        Param::boolean("force-stop").opt(),
        Param::int("max-workers", Some(1), Some(64)).opt(),
        Param::int("timeout", Some(0), Some(7200)).opt(),
        Param::string("vms", 4096, Some(Format::VmidList)).opt(),
    ]),
    privilege: Privilege::Perm("/", &["VM.PowerMgmt"]),
    description: "Stop all VMs and containers on this node.",
};

/// Start the task; returns its UPID.
pub async fn post(ctx: Ctx) -> Result<Reply, ApiError> {
    let node = ctx.local_node()?.to_string();
    let user = ctx.userid()?.to_string();
    let only = super::startall::vmid_list(ctx.params.str("vms"));
    let store = ctx.state.store.clone();
    let host = super::qemu::host(&ctx.state);
    let upid = ctx
        .state
        .tasks
        .spawn("stopall", "", &user, move |task| async move {
            let vms = list_vms(&store).await.map_err(|e| e.to_string())?;
            let selected: Vec<u32> = vms
                .iter()
                .filter(|v| v.node == node && v.status == "running")
                .filter(|v| only.as_ref().is_none_or(|list| list.contains(&v.vmid)))
                .map(|v| v.vmid)
                .collect();
            task.log(format!("found {} VMs to stop", selected.len()))
                .await
                .map_err(|e| e.to_string())?;
            // Proxmox's stopall: a clean shutdown, forced after the timeout.
            let op = gpve_actors::vm::VmOp::Shutdown {
                timeout_ms: None,
                force_stop: true,
            };
            super::qemu::bulk(&host, &task, &selected, op).await
        })
        .await?;
    Ok(Reply::Data(json!(upid.to_string())))
}
