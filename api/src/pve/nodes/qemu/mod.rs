//! `/nodes/{node}/qemu`: the node's VMs. Long operations (create, delete, start, stop,
//! shutdown, snapshots) return a UPID and run as tasks that send one operation to the VM's
//! actor; its mailbox serialises them, so parallel calls queue instead of failing on a lock.

pub mod clone;
pub mod config;
pub mod migrate;
pub mod move_disk;
pub mod resize;
pub mod rrddata;
pub mod snapshot;
pub mod status;

use std::collections::BTreeMap;
use std::sync::LazyLock;

use gpve_actors::vm::config as vmconfig;
use gpve_actors::vm::state::{self as vmstate, Command, Phase, VmState};
use gpve_actors::vm::{self, VmEntry, VmError, VmHost, VmOp, ops};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply, bool01, endpoint};
use crate::schema::{Format, Param, ParamSchema, Params};
use crate::state::AppState;

/// Longest accepted configuration value, in bytes (`description` is the longest key).
pub const MAX_VALUE_BYTES: usize = vmconfig::MAX_DESCRIPTION_BYTES;
/// How long a task waits for its VM operation once queued in the VM's mailbox (a shutdown
/// may wait for the guest for its whole `timeout`).
pub const OP_TIMEOUT_MS: u64 = 30 * 60 * 1000;

/// The VM host of the local node (real QEMU, the node's storage service).
pub fn host(state: &AppState) -> VmHost {
    if let Some(host) = state.vm_host.get() {
        return host.clone();
    }
    VmHost::real(
        &state.config.node_name,
        state.store.clone(),
        crate::pve::storage::service(state),
        format!("{}/{}", crate::tree::ROOT, vm::SUPERVISOR_ID),
    )
}

/// The `vmid` path parameter of a route, validated by its schema.
pub fn vmid(ctx: &Ctx) -> Result<u32, ApiError> {
    ctx.params
        .int("vmid")
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| ApiError::param("vmid", "property is missing and it is not optional"))
}

/// The VM's entry, 404 (Proxmox's message) when it does not exist on this node.
pub async fn entry(ctx: &Ctx, vmid: u32) -> Result<VmEntry, ApiError> {
    let node = ctx.local_node()?;
    match vm::load_entry(&ctx.state.store, vmid).await? {
        Some(e) if e.record.node == node => Ok(e),
        _ => Err(ApiError::NotFound(format!(
            "Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist"
        ))),
    }
}

/// The state machine's view of a VM from its stored entry (for early, clear refusals; the
/// actor decides again on its own state).
pub fn observed_state(e: &VmEntry) -> VmState {
    let phase = match e.runtime.qmpstatus.as_str() {
        "running" => Phase::Running,
        "paused" => Phase::Paused,
        _ => Phase::Stopped,
    };
    VmState {
        vmid: e.record.vmid,
        phase,
        desired: e.desired,
        template: e.record.template,
    }
}

/// Refuse a command the VM's current state does not allow, before starting a task.
pub fn precheck(e: &VmEntry, cmd: &Command) -> Result<(), ApiError> {
    if let Some(lock) = &e.lock {
        return Err(ApiError::Conflict(format!(
            "VM {} is locked ({lock})",
            e.record.vmid
        )));
    }
    vmstate::command(&observed_state(e), cmd).map_err(VmError::from)?;
    Ok(())
}

/// The VM the route names, loaded and checked for `cmd` (lock and state) before any work.
pub async fn checked_entry(ctx: &Ctx, cmd: &Command) -> Result<(u32, VmEntry), ApiError> {
    let vmid = vmid(ctx)?;
    let e = entry(ctx, vmid).await?;
    precheck(&e, cmd)?;
    Ok((vmid, e))
}

/// Run `op` on VM `vmid` as a task of type `worker_type`; returns the UPID reply.
pub async fn spawn_op(
    ctx: &Ctx,
    worker_type: &str,
    vmid: u32,
    op: VmOp,
) -> Result<Reply, ApiError> {
    let user = ctx.userid()?.to_string();
    let host = host(&ctx.state);
    let upid = ctx
        .state
        .tasks
        .spawn(
            worker_type,
            &vmid.to_string(),
            &user,
            move |task| async move {
                let done = ops::call(&host, vmid, op, OP_TIMEOUT_MS).await;
                // Whatever the outcome, the tenant's charge follows the stored config.
                crate::tenancy::vm::settle(&host.store, vmid)
                    .await
                    .map_err(|e| e.to_string())?;
                let line = done.map_err(|e| e.to_string())?;
                if !line.is_empty() {
                    task.log(line).await.map_err(|e| e.to_string())?;
                }
                Ok(())
            },
        )
        .await?;
    Ok(Reply::Data(json!(upid.to_string())))
}

/// Every configuration key as an optional string parameter.
fn config_params() -> Vec<Param> {
    vmconfig::all_keys()
        .into_iter()
        .map(|k| {
            // Leaked once per key for the process lifetime: schemas hold `&'static str`.
            let name: &'static str = Box::leak(k.into_boxed_str());
            Param::string(name, MAX_VALUE_BYTES, Some(Format::Text)).opt()
        })
        .collect()
}

fn leak_schema(mut params: Vec<Param>, extra: &[Param]) -> ParamSchema {
    params.extend_from_slice(extra);
    ParamSchema(Box::leak(params.into_boxed_slice()))
}

/// The configuration keys given in a request, as strings.
pub fn config_changes(params: &Params) -> BTreeMap<String, String> {
    vmconfig::all_keys()
        .into_iter()
        .filter_map(|k| params.str(&k).map(|v| (k.clone(), v.to_string())))
        .collect()
}

fn seed() -> u64 {
    gpve_supervisor::seeded_u64()
}

/// One VM as `GET /nodes/{node}/qemu` lists it.
pub fn list_item(e: &VmEntry) -> Value {
    let running = e.record.status == "running";
    let pid = e.runtime.pid.filter(|_| running);
    let uptime = e
        .runtime
        .started_at_s
        .filter(|_| running)
        .map(|s| (crate::state::now_s() - s).max(0))
        .unwrap_or(0);
    let mut v = json!({
        "vmid": e.record.vmid,
        "name": e.record.name,
        "status": e.record.status,
        "cpus": e.record.maxcpu,
        "maxmem": e.record.maxmem_bytes,
        "maxdisk": e.record.maxdisk_bytes,
        "mem": pid.map(status::rss_bytes).unwrap_or(0),
        "cpu": 0,
        "disk": 0,
        "diskread": 0,
        "diskwrite": 0,
        "netin": 0,
        "netout": 0,
        "uptime": uptime,
        "template": bool01(e.record.template),
    });
    if let Some(pid) = pid {
        v["pid"] = json!(pid);
    }
    if let Some(tags) = e.config.get("tags") {
        v["tags"] = json!(tags);
    }
    if let Some(lock) = &e.lock {
        v["lock"] = json!(lock);
    }
    v
}

/// `GET /nodes/{node}/qemu`.
pub const LIST: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::node(), Param::boolean("full").opt()]),
    privilege: Privilege::User,
    description: "Virtual machine index (per node).",
};

pub async fn list(ctx: Ctx) -> Result<Reply, ApiError> {
    let node = ctx.local_node()?.to_string();
    let entries = vm::list_entries(&ctx.state.store).await?;
    let mut items: Vec<Value> = Vec::new();
    for e in entries.iter().filter(|e| e.record.node == node) {
        // Only VMs the caller may audit (Proxmox's filter).
        if ctx
            .allowed(&format!("/vms/{}", e.record.vmid), &["VM.Audit"])
            .await?
        {
            items.push(list_item(e));
        }
    }
    Ok(Reply::Data(Value::Array(items)))
}

/// `POST /nodes/{node}/qemu`: every configuration key, plus `vmid` (optional in gpve:
/// allocated atomically when absent) and `start`.
pub static CREATE: LazyLock<Endpoint> = LazyLock::new(|| Endpoint {
    method: Method::Post,
    params: leak_schema(
        config_params(),
        &[
            Param::node(),
            Param::vmid().opt(),
            Param::boolean("start").opt(),
            Param::string("pool", 64, Some(Format::Text)).opt(),
            Param::boolean("unique").opt(),
        ],
    ),
    privilege: Privilege::Or(&[
        Privilege::Perm("/vms/{vmid}", &["VM.Allocate"]),
        Privilege::Perm("/pool/{pool}", &["VM.Allocate"]),
        Privilege::Perm("/vms", &["VM.Allocate"]),
    ]),
    description: "Create a virtual machine.",
});

/// Check the request, reserve the VMID, and run the rest (disks, actor, start) as a task.
pub async fn create(ctx: Ctx) -> Result<Reply, ApiError> {
    let node = ctx.local_node()?.to_string();
    let user = ctx.userid()?.to_string();
    let pool =
        crate::tenancy::vm::target_pool(&ctx.state.store, &user, ctx.params.str("pool")).await?;
    if let Some(p) = &pool {
        ctx.require(&format!("/pool/{p}"), &["VM.Allocate"]).await?;
    }
    let want = ctx.params.int("vmid").and_then(|v| u32::try_from(v).ok());
    let changes = config_changes(&ctx.params);
    let canon =
        vmconfig::parse_changes(&changes, want.unwrap_or(0), seed()).map_err(VmError::from)?;
    vmconfig::check_whole(&canon).map_err(VmError::from)?;
    check_storages(&ctx, &canon).await?;
    let start = ctx.params.bool("start").unwrap_or(false);
    let host = host(&ctx.state);
    // Plain keys go in at once so listings show the VM while its disks are made.
    let plain: BTreeMap<String, String> = canon
        .iter()
        .filter(|(k, _)| !vmconfig::is_drive(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let vmid = ops::reserve(&host, want, plain).await?;
    if let Some(p) = &pool {
        // Refused: the reservation is gone with the refusal (one transaction).
        let demand = crate::tenancy::vm::vm_demand(&canon);
        crate::tenancy::vm::admit_reserved(&ctx.state.store, vmid, p, &demand).await?;
    }
    tracing::info!(%node, vmid, "VM reserved");
    let upid = ctx
        .state
        .tasks
        .spawn(
            "qmcreate",
            &vmid.to_string(),
            &user,
            move |task| async move {
                if let Err(e) = ops::create(&host, vmid, canon).await {
                    // `ops::create` removed the VM: its charge goes too.
                    let _ = crate::tenancy::vm::release_deleted(&host.store, vmid).await;
                    return Err(e.to_string());
                }
                task.log(format!("VM {vmid} created"))
                    .await
                    .map_err(|e| e.to_string())?;
                if start {
                    let line = ops::call(&host, vmid, VmOp::Start, OP_TIMEOUT_MS)
                        .await
                        .map_err(|e| e.to_string())?;
                    task.log(line).await.map_err(|e| e.to_string())?;
                }
                Ok(())
            },
        )
        .await;
    match upid {
        Ok(upid) => Ok(Reply::Data(json!(upid.to_string()))),
        Err(e) => {
            // No task will finish the VM: release the VMID and its charge.
            let _ = ctx.state.store.delete(&vm::vm_key(vmid)).await;
            let _ = crate::tenancy::vm::release_deleted(&ctx.state.store, vmid).await;
            Err(e.into())
        }
    }
}

/// Every storage named by a `STORAGE:SIZE` drive must exist and be active here: refused
/// up front with the drive's key, so a bad request creates nothing.
pub async fn check_storages(ctx: &Ctx, canon: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let node = ctx.local_node()?;
    let mut errors = BTreeMap::new();
    for (k, v) in canon.iter().filter(|(k, _)| vmconfig::is_drive(k)) {
        let Ok(drive) = vmconfig::parse_drive(v) else {
            continue;
        };
        let storage = match &drive.source {
            vmconfig::DriveSource::Allocate { storage, .. } => storage.clone(),
            vmconfig::DriveSource::Volume(v) => v.split(':').next().unwrap_or("").to_string(),
        };
        if matches!(drive.source, vmconfig::DriveSource::Allocate { .. })
            && !ctx
                .allowed(&format!("/storage/{storage}"), &["Datastore.AllocateSpace"])
                .await?
        {
            return Err(ApiError::Refused(format!(
                "Permission check failed (/storage/{storage}, Datastore.AllocateSpace)"
            )));
        }
        match gpve_actors::storage::config::get(&ctx.state.store, &storage).await {
            Ok(cfg) if cfg.active_on(node) => {}
            Ok(_) => {
                errors.insert(
                    k.clone(),
                    format!("storage '{storage}' is disabled or not available on node '{node}'"),
                );
            }
            Err(gpve_actors::storage::StorageConfigError::NotFound(_)) => {
                errors.insert(k.clone(), format!("storage '{storage}' does not exist"));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Params(errors))
    }
}

/// `GET /nodes/{node}/qemu/{vmid}`.
pub const INDEX: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::node(), Param::vmid()]),
    privilege: Privilege::Perm("/vms/{vmid}", &["VM.Audit"]),
    description: "Directory index.",
};

pub async fn index(ctx: Ctx) -> Result<Reply, ApiError> {
    let vmid = vmid(&ctx)?;
    entry(&ctx, vmid).await?;
    Ok(Reply::Data(json!([
        {"subdir": "config"},
        {"subdir": "pending"},
        {"subdir": "status"},
        {"subdir": "snapshot"},
        {"subdir": "template"},
        {"subdir": "clone"},
        {"subdir": "resize"},
        {"subdir": "move_disk"},
    ])))
}

/// `DELETE /nodes/{node}/qemu/{vmid}`.
pub const DELETE: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[
        Param::node(),
        Param::vmid(),
        Param::boolean("purge").opt(),
        Param::boolean("destroy-unreferenced-disks").opt(),
        Param::boolean("skiplock").opt(),
    ]),
    privilege: Privilege::Perm("/vms/{vmid}", &["VM.Allocate"]),
    description: "Destroy the VM and all used/owned volumes.",
};

/// Destroy the VM (it must be stopped), its disks and its actor.
pub async fn delete(ctx: Ctx) -> Result<Reply, ApiError> {
    let (vmid, _) = checked_entry(&ctx, &Command::Delete).await?;
    gpve_actors::vm::disks::refuse_if_linked_base(&ctx.state.store, vmid).await?;
    let purge = ctx.params.bool("purge").unwrap_or(false);
    let user = ctx.userid()?.to_string();
    let host = host(&ctx.state);
    let upid = ctx
        .state
        .tasks
        .spawn(
            "qmdestroy",
            &vmid.to_string(),
            &user,
            move |task| async move {
                let line = ops::call(&host, vmid, VmOp::Delete { purge }, OP_TIMEOUT_MS)
                    .await
                    .map_err(|e| e.to_string())?;
                ops::remove_actor(&host, vmid)
                    .await
                    .map_err(|e| e.to_string())?;
                crate::tenancy::vm::release_deleted(&host.store, vmid)
                    .await
                    .map_err(|e| e.to_string())?;
                task.log(line).await.map_err(|e| e.to_string())?;
                Ok(())
            },
        )
        .await?;
    Ok(Reply::Data(json!(upid.to_string())))
}

/// `POST /nodes/{node}/qemu/{vmid}/template`.
pub const TEMPLATE: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        Param::node(),
        Param::vmid(),
        Param::string("disk", 16, Some(Format::ConfigIdList)).opt(),
    ]),
    privilege: Privilege::Perm("/vms/{vmid}", &["VM.Allocate"]),
    description: "Create a Template.",
};

pub async fn template(ctx: Ctx) -> Result<Reply, ApiError> {
    let (vmid, _) = checked_entry(&ctx, &Command::Template).await?;
    if ctx.params.has("disk") {
        return Err(ApiError::param(
            "disk",
            "converting a single disk is not supported",
        ));
    }
    spawn_op(&ctx, "qmtemplate", vmid, VmOp::Template).await
}

/// Every `/nodes/{node}/qemu` route.
pub fn router() -> crate::router::Routes {
    crate::router::Routes::new()
        .route(
            "/nodes/{node}/qemu",
            endpoint(&LIST, list).merge(endpoint(&CREATE, create)),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}",
            endpoint(&INDEX, index).merge(endpoint(&DELETE, delete)),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/config",
            endpoint(&config::GET, config::get)
                .merge(endpoint(&config::POST, config::post))
                .merge(endpoint(&config::PUT, config::put)),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/pending",
            endpoint(&config::PENDING, config::pending),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/rrddata",
            endpoint(&rrddata::GET, rrddata::get),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/status",
            endpoint(&status::INDEX, status::index),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/status/current",
            endpoint(&status::CURRENT, status::current),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/status/start",
            endpoint(&status::START, status::start),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/status/stop",
            endpoint(&status::STOP, status::stop),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/status/shutdown",
            endpoint(&status::SHUTDOWN, status::shutdown),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/status/reboot",
            endpoint(&status::REBOOT, status::reboot),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/status/reset",
            endpoint(&status::RESET, status::reset),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/status/suspend",
            endpoint(&status::SUSPEND, status::suspend),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/status/resume",
            endpoint(&status::RESUME, status::resume),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/snapshot",
            endpoint(&snapshot::LIST, snapshot::list)
                .merge(endpoint(&snapshot::CREATE, snapshot::create)),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}",
            endpoint(&snapshot::INDEX, snapshot::index)
                .merge(endpoint(&snapshot::DELETE, snapshot::delete)),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/snapshot/{snapname}/rollback",
            endpoint(&snapshot::ROLLBACK, snapshot::rollback),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/clone",
            endpoint(&clone::POST, clone::post),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/resize",
            endpoint(&resize::PUT, resize::resize).merge(endpoint(&resize::POST, resize::resize)),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/move_disk",
            endpoint(&move_disk::POST, move_disk::post),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/template",
            endpoint(&TEMPLATE, template),
        )
        .route(
            "/nodes/{node}/qemu/{vmid}/migrate",
            endpoint(&migrate::GET, migrate::get).merge(endpoint(&migrate::POST, migrate::post)),
        )
}

/// Run `op` on each VM in turn for `startall` / `stopall`, logging each outcome; fails
/// naming the VMs whose operation failed.
pub async fn bulk(
    host: &VmHost,
    task: &gpve_actors::task::TaskCtx,
    vmids: &[u32],
    op: VmOp,
) -> Result<(), String> {
    let mut failed = Vec::new();
    for &vmid in vmids {
        let line = match ops::call(host, vmid, op.clone(), OP_TIMEOUT_MS).await {
            Ok(line) => line,
            Err(e) => {
                failed.push(vmid.to_string());
                format!("VM {vmid}: {e}")
            }
        };
        task.log(line).await.map_err(|e| e.to_string())?;
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failed for VM(s) {}", failed.join(", ")))
    }
}
