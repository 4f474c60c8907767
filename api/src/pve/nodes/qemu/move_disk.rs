//! `POST /nodes/{node}/qemu/{vmid}/move_disk`: copy a disk of a stopped VM to another
//! storage (or format), switch the configuration to the copy in one store transaction, and
//! keep the old volume as `unusedN` unless `delete=1`. A running VM is refused: live move
//! (QMP drive-mirror) is not built yet. Bad requests are refused here, before the task.

use gpve_actors::vm::disks::{self, disk_volume};
use gpve_actors::vm::state::Command;
use gpve_actors::vm::{VmError, VmOp};
use gpve_storage_drivers::VolumeFormat;

use super::{checked_entry, host, spawn_op};
use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::{Format, Param, ParamSchema};

/// `POST .../move_disk`.
pub const POST: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        Param::node(),
        Param::vmid(),
        Param::string("disk", 16, Some(Format::Text)),
        Param::string("storage", 64, Some(Format::Text)),
        Param::enumeration("format", &["raw", "qcow2", "vmdk"]).opt(),
        Param::boolean("delete").opt(),
        Param::int("target-vmid", Some(100), Some(999_999_999)).opt(),
        Param::string("target-disk", 16, Some(Format::Text)).opt(),
        Param::int("bwlimit", Some(0), None).opt(),
    ]),
    privilege: Privilege::And(&[
        Privilege::Perm("/vms/{vmid}", &["VM.Config.Disk"]),
        Privilege::Perm("/storage/{storage}", &["Datastore.AllocateSpace"]),
    ]),
    description: "Move volume to different storage (stopped VMs; the old volume is kept as unusedN unless delete=1).",
};

pub async fn post(ctx: Ctx) -> Result<Reply, ApiError> {
    let (vmid, e) = checked_entry(&ctx, &Command::UpdateConfig).await?;
    for (p, why) in [
        (
            "target-vmid",
            "moving a disk to another VM is not supported yet",
        ),
        (
            "target-disk",
            "moving a disk to another VM is not supported yet",
        ),
        ("bwlimit", "bandwidth limits are not supported yet"),
    ] {
        if ctx.params.has(p) {
            return Err(ApiError::param(p, why));
        }
    }
    let disk = ctx.str("disk")?.to_string();
    let storage = ctx.str("storage")?.to_string();
    let delete = ctx.params.bool("delete").unwrap_or(false);
    let format = match ctx.params.str("format") {
        None => None,
        Some("raw") => Some(VolumeFormat::Raw),
        Some("qcow2") => Some(VolumeFormat::Qcow2),
        Some(other) => {
            return Err(ApiError::param(
                "format",
                format!("format '{other}' is not supported (raw or qcow2)"),
            ));
        }
    };
    let (_, src) = disk_volume(&e.config, &disk).map_err(VmError::from)?;
    if e.record.status == "running" {
        return Err(ApiError::BadRequest(format!(
            "VM {vmid} is running: moving a disk of a running VM (live move) is not built yet; \
             stop the VM first"
        )));
    }
    let node = ctx.local_node()?.to_string();
    match gpve_actors::storage::config::get(&ctx.state.store, &storage).await {
        Ok(cfg) if cfg.active_on(&node) => {}
        Ok(_) => {
            return Err(ApiError::param(
                "storage",
                format!("storage '{storage}' is disabled or not available on node '{node}'"),
            ));
        }
        Err(gpve_actors::storage::StorageConfigError::NotFound(_)) => {
            return Err(ApiError::param(
                "storage",
                format!("storage '{storage}' does not exist"),
            ));
        }
        Err(err) => return Err(err.into()),
    }
    let caps = host(&ctx.state)
        .storage
        .capabilities(&storage)
        .await
        .map_err(|err| ApiError::param("storage", gpve_actors::storage::error_chain(&err)))?;
    let src_format = src.format_from_name().unwrap_or(VolumeFormat::Raw);
    let fmt = disks::target_format(&storage, &caps, format, src_format)
        .map_err(|r| ApiError::param("format", r))?;
    if src.storage() == storage && fmt == src_format {
        return Err(ApiError::param(
            "storage",
            format!("disk {disk} is already on storage '{storage}' in {fmt} format"),
        ));
    }
    if delete && !e.snapshots.is_empty() {
        return Err(ApiError::param(
            "delete",
            "the VM has snapshots that reference the source disk; move without delete=1",
        ));
    }
    if delete {
        disks::refuse_if_linked_base(&ctx.state.store, vmid).await?;
    }
    spawn_op(
        &ctx,
        "qmmove",
        vmid,
        VmOp::MoveDisk {
            disk,
            storage,
            format,
            delete,
        },
    )
    .await
}
