//! `POST /nodes/{node}/qemu/{vmid}/clone`: a copy of a stopped VM or template into a new VM.
//! As in Proxmox, a template is cloned linked by default (`full=0`: qcow2 overlays on dir,
//! btrfs snapshots on btrfs) and a normal VM only in full. The new VMID is reserved up front
//! (atomically, like create); the copy runs in the source VM's actor, so it cannot
//! interleave with a start of the source.

use gpve_actors::vm::state::Command;
use gpve_actors::vm::{VmOp, ops};
use serde_json::json;

use super::{OP_TIMEOUT_MS, entry, host, precheck, vmid};
use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::{Format, Param, ParamSchema};

/// `POST .../clone`.
pub const POST: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        Param::node(),
        Param::vmid(),
        Param::int("newid", Some(100), Some(999_999_999)).opt(),
        Param::string("name", 63, Some(Format::Text)).opt(),
        Param::string("description", 8192, Some(Format::Text)).opt(),
        Param::boolean("full").opt(),
        Param::string("storage", 64, Some(Format::Text)).opt(),
        Param::string("target", 64, Some(Format::Node)).opt(),
        Param::enumeration("format", &["raw", "qcow2", "vmdk"]).opt(),
        Param::string("pool", 64, Some(Format::Text)).opt(),
        Param::string("snapname", 40, Some(Format::Text)).opt(),
        Param::int("bwlimit", Some(0), None).opt(),
    ]),
    privilege: Privilege::And(&[
        Privilege::Perm("/vms/{vmid}", &["VM.Clone"]),
        Privilege::Or(&[
            Privilege::Perm("/vms/{newid}", &["VM.Allocate"]),
            Privilege::Perm("/pool/{pool}", &["VM.Allocate"]),
            // Without `newid` the VMID is allocated, as create does.
            Privilege::Perm("/vms", &["VM.Allocate"]),
        ]),
    ]),
    description: "Create a copy of virtual machine/template (linked by default for templates).",
};

pub async fn post(ctx: Ctx) -> Result<Reply, ApiError> {
    let node = ctx.local_node()?.to_string();
    let src = vmid(&ctx)?;
    let e = entry(&ctx, src).await?;
    let template = e.record.template;
    // Proxmox: templates clone linked unless `full=1`; a normal VM only in full.
    let linked = !ctx.params.bool("full").unwrap_or(!template);
    if linked && !template {
        return Err(ApiError::param(
            "full",
            format!(
                "linked clones can only be made from templates and VM {src} is not one: \
                 convert it with POST .../template first, or clone with full=1"
            ),
        ));
    }
    if linked && ctx.params.has("storage") {
        return Err(ApiError::param(
            "storage",
            "a linked clone stays on the storage of its template; use full=1 to copy to another storage",
        ));
    }
    for (p, why) in [
        ("snapname", "cloning from a snapshot is not supported yet"),
        ("format", "the copy keeps the source format"),
    ] {
        if ctx.params.has(p) {
            return Err(ApiError::param(p, why));
        }
    }
    if let Some(t) = ctx.params.str("target")
        && t != node
    {
        return Err(ApiError::param(
            "target",
            "cloning to another node is not supported yet",
        ));
    }
    precheck(&e, &Command::Clone)?;
    let name = ctx.params.str("name").map(str::to_string);
    if let Some(n) = &name {
        gpve_actors::vm::config::parse_value("name", n, src, 0)
            .map_err(|reason| ApiError::param("name", reason))?;
    }
    let storage = ctx.params.str("storage").map(str::to_string);
    if let Some(s) = &storage {
        match gpve_actors::storage::config::get(&ctx.state.store, s).await {
            Ok(cfg) if cfg.active_on(&node) => {}
            Ok(_) => {
                return Err(ApiError::param(
                    "storage",
                    format!("storage '{s}' is not active here"),
                ));
            }
            Err(err) => return Err(err.into()),
        }
    }
    // Every clone allocates space: on `storage`, else where the source's disks are.
    let targets: Vec<String> = match &storage {
        Some(s) => vec![s.clone()],
        None => gpve_actors::vm::config::drive_volumes(&e.config)
            .into_values()
            .filter_map(|v| v.split(':').next().map(str::to_string))
            .collect(),
    };
    for s in &targets {
        ctx.require(&format!("/storage/{s}"), &["Datastore.AllocateSpace"])
            .await?;
    }
    let user = ctx.userid()?.to_string();
    let pool =
        crate::tenancy::vm::target_pool(&ctx.state.store, &user, ctx.params.str("pool")).await?;
    if let Some(p) = &pool {
        ctx.require(&format!("/pool/{p}"), &["VM.Allocate"]).await?;
    }
    let want = ctx.params.int("newid").and_then(|v| u32::try_from(v).ok());
    let host = host(&ctx.state);
    // Reserved with the source's plain keys so listings show it while disks copy.
    let mut plain = e.config.clone();
    plain.retain(|k, _| {
        gpve_actors::vm::config::key_kind(k) == Some(gpve_actors::vm::config::KeyKind::Plain)
    });
    let newid = ops::reserve(&host, want, plain).await?;
    if let Some(p) = &pool {
        let demand = crate::tenancy::vm::vm_demand(&e.config);
        crate::tenancy::vm::admit_reserved(&ctx.state.store, newid, p, &demand).await?;
    }
    let spawned = ctx
        .state
        .tasks
        .spawn("qmclone", &src.to_string(), &user, move |task| async move {
            let op = VmOp::Clone {
                newid,
                name,
                storage,
                linked,
            };
            let line = match ops::call(&host, src, op, OP_TIMEOUT_MS).await {
                Ok(line) => line,
                Err(e) => {
                    // The source actor removes what it copied; the reservation may remain
                    // if the actor never ran the operation.
                    let _ = host.store.delete(&gpve_actors::vm::vm_key(newid)).await;
                    let _ = crate::tenancy::vm::release_deleted(&host.store, newid).await;
                    return Err(e.to_string());
                }
            };
            ops::add_actor(&host, newid)
                .await
                .map_err(|e| e.to_string())?;
            task.log(line).await.map_err(|e| e.to_string())?;
            Ok(())
        })
        .await;
    match spawned {
        Ok(upid) => Ok(Reply::Data(json!(upid.to_string()))),
        Err(err) => {
            let _ = ctx
                .state
                .store
                .delete(&gpve_actors::vm::vm_key(newid))
                .await;
            let _ = crate::tenancy::vm::release_deleted(&ctx.state.store, newid).await;
            Err(err.into())
        }
    }
}
