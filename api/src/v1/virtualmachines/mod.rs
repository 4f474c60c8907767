//! `/api/v1/namespaces/{ns}/virtualmachines[/{name}]`: VMs as `gpve.io/v1 VirtualMachine`
//! manifests, a second view of the same VMs the Proxmox API serves (one record, one VM
//! actor, one VMID allocation path: [`ops::reserve`]).
//!
//! Semantics, as Kubernetes users expect them:
//! - `POST` creates (201); an existing name is 409. `PUT` replaces the spec and creates
//!   a missing VM (201), like `kubectl apply`; an unchanged spec changes nothing (200).
//! - Configuration changes apply synchronously (as Proxmox's `PUT .../config`); those a
//!   running QEMU cannot take become pending until the next start and show in
//!   `status.pendingChanges`. Power changes (`spec.running`) and creation run as Proxmox
//!   tasks whose UPID is `status.task`.
//! - `DELETE` stops the VM if it runs and destroys it with its disks (200, phase
//!   `Terminating` until the task ends).
//! - Unknown fields and bad values are 400 with an `errors` map keyed by JSON path.
//!
//! The request body is JSON (`gpvectl apply` converts YAML); it is parsed here rather than
//! by the route schema because the schema language is flat (Proxmox parameters).

pub mod manifest;
pub mod mapping;

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gpve_actors::vm::config as vmconfig;
use gpve_actors::vm::state::Command;
use gpve_actors::vm::{self, VmEntry, VmError, VmOp, ops};
use serde_json::{Value, json};
use thiserror::Error;

use self::manifest::{
    API_VERSION, LIST_KIND, PathErrors, VirtualMachine, VirtualMachineList, name_error,
};
use self::mapping::{Binding, NamespaceRecord, Plan, Power, binding_key, namespace_key};
use super::guard::{authorize, respond};
use crate::error::ApiError;
use crate::pve::nodes::qemu::{self, OP_TIMEOUT_MS};
use crate::router::{Ctx, Endpoint, MAX_BODY_BYTES, Method, Privilege, Reply};
use crate::schema::{Format, Param, ParamSchema, Raw, RawParams};
use crate::state::{AppState, now_s};

/// How long `spec.running: false` waits for an ACPI shutdown before stopping the VM.
pub const STOP_GRACE_MS: u64 = 60_000;
/// Longest `labelSelector`, in bytes.
pub const MAX_SELECTOR_BYTES: usize = 1024;

/// `GET .../virtualmachines`.
pub const LIST: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[
        Param::string("labelSelector", MAX_SELECTOR_BYTES, Some(Format::Text)).opt(),
    ]),
    privilege: Privilege::Perm("/vms", &["VM.Audit"]),
    description: "VirtualMachine manifests of a namespace (labelSelector: k=v[,k=v]).",
};
/// `POST .../virtualmachines`.
pub const CREATE: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[]),
    privilege: Privilege::Perm("/vms", &["VM.Allocate"]),
    description: "Create a VM from a VirtualMachine manifest (JSON body).",
};
/// `GET .../virtualmachines/{name}`.
pub const READ: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[]),
    privilege: Privilege::Perm("/vms", &["VM.Audit"]),
    description: "One VM as a VirtualMachine manifest.",
};
/// `PUT .../virtualmachines/{name}`.
pub const REPLACE: Endpoint = Endpoint {
    method: Method::Put,
    params: ParamSchema(&[]),
    privilege: Privilege::Perm("/vms", &["VM.Allocate"]),
    description: "Bring a VM to a manifest, creating it if missing (JSON body).",
};
/// `DELETE .../virtualmachines/{name}`.
pub const DELETE: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[]),
    privilege: Privilege::Perm("/vms", &["VM.Allocate"]),
    description: "Stop and destroy a VM with its disks.",
};

/// Failures of the declarative API; Kubernetes' 404/409 where the Proxmox mapping in
/// [`ApiError`] differs.
#[derive(Debug, Error)]
pub enum VmManifestError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("Parameter verification failed.")]
    Invalid(PathErrors),
    #[error("virtualmachine '{ns}/{name}' already exists")]
    AlreadyExists { ns: String, name: String },
    #[error("virtualmachine '{ns}/{name}' not found")]
    NotFound { ns: String, name: String },
    #[error("virtualmachine '{ns}/{name}' is busy ({what}); retry when it has finished")]
    Busy {
        ns: String,
        name: String,
        what: String,
    },
}

impl From<gpve_store::StoreError> for VmManifestError {
    fn from(e: gpve_store::StoreError) -> Self {
        VmManifestError::Api(e.into())
    }
}

impl From<VmError> for VmManifestError {
    fn from(e: VmError) -> Self {
        VmManifestError::Api(e.into())
    }
}

impl IntoResponse for VmManifestError {
    fn into_response(self) -> Response {
        let status = match &self {
            VmManifestError::Api(_) | VmManifestError::Invalid(_) => StatusCode::BAD_REQUEST,
            VmManifestError::NotFound { .. } => StatusCode::NOT_FOUND,
            VmManifestError::AlreadyExists { .. } | VmManifestError::Busy { .. } => {
                StatusCode::CONFLICT
            }
        };
        let message = format!("{self}\n");
        match self {
            VmManifestError::Api(e) => return e.into_response(),
            VmManifestError::Invalid(errors) => return ApiError::Params(errors).into_response(),
            _ => {}
        }
        (
            status,
            axum::Json(json!({ "data": null, "message": message })),
        )
            .into_response()
    }
}

type Outcome = Result<(StatusCode, Value), VmManifestError>;

/// Every route of this module, relative to `/api/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/namespaces/{ns}/virtualmachines",
            axum::routing::get(list).post(create),
        )
        .route(
            "/namespaces/{ns}/virtualmachines/{name}",
            axum::routing::get(read).put(replace).delete(delete),
        )
}

/// Authenticate `req` as route `ep`, check the path's names (`[ns]` or `[ns, name]`) and
/// run `f` on them.
async fn serve<F, Fut>(
    state: AppState,
    ep: &'static Endpoint,
    names: Result<Vec<String>, PathRejection>,
    req: Request,
    f: F,
) -> Response
where
    F: FnOnce(Ctx, Body, Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    let Ok(names) = names else {
        return ApiError::BadRequest("invalid path encoding".into()).into_response();
    };
    let (parts, body) = req.into_parts();
    let ctx = match authorize(&state, ep, &parts).await {
        Ok(ctx) => ctx,
        Err(resp) => return resp,
    };
    for (param, n) in ["namespace", "name"].iter().zip(&names) {
        if let Some(e) = name_error(n) {
            return ApiError::param(param, e).into_response();
        }
    }
    respond(f(ctx, body, names).await)
}

type NsPath = Result<Path<String>, PathRejection>;
type NamePath = Result<Path<(String, String)>, PathRejection>;

fn ns_of(p: NsPath) -> Result<Vec<String>, PathRejection> {
    p.map(|Path(ns)| vec![ns])
}

fn names_of(p: NamePath) -> Result<Vec<String>, PathRejection> {
    p.map(|Path((ns, name))| vec![ns, name])
}

async fn list(State(s): State<AppState>, p: NsPath, req: Request) -> Response {
    serve(s, &LIST, ns_of(p), req, |ctx, _, n| list_vms(ctx, n)).await
}

async fn create(State(s): State<AppState>, p: NsPath, req: Request) -> Response {
    serve(s, &CREATE, ns_of(p), req, |ctx, body, n| async move {
        let ns = &n[0];
        let vm = read_manifest(ns, None, body).await?;
        let name = vm.metadata.name.clone();
        if live_binding(&ctx, ns, &name).await?.is_some() {
            return Err(VmManifestError::AlreadyExists {
                ns: ns.clone(),
                name,
            });
        }
        create_vm(&ctx, ns, vm).await
    })
    .await
}

async fn read(State(s): State<AppState>, p: NamePath, req: Request) -> Response {
    serve(s, &READ, names_of(p), req, |ctx, _, n| async move {
        let (ns, name) = (&n[0], &n[1]);
        let (b, e) = live_binding(&ctx, ns, name)
            .await?
            .ok_or_else(|| not_found(ns, name))?;
        let vm = mapping::to_manifest(ns, name, &b, &e, None);
        Ok((StatusCode::OK, to_value(&vm)?))
    })
    .await
}

async fn replace(State(s): State<AppState>, p: NamePath, req: Request) -> Response {
    serve(s, &REPLACE, names_of(p), req, |ctx, body, n| async move {
        let (ns, name) = (&n[0], &n[1]);
        let vm = read_manifest(ns, Some(name), body).await?;
        match live_binding(&ctx, ns, name).await? {
            None => create_vm(&ctx, ns, vm).await,
            Some((b, e)) => update_vm(&ctx, ns, vm, b, e).await,
        }
    })
    .await
}

async fn delete(State(s): State<AppState>, p: NamePath, req: Request) -> Response {
    serve(s, &DELETE, names_of(p), req, |ctx, _, n| delete_vm(ctx, n)).await
}

fn not_found(ns: &str, name: &str) -> VmManifestError {
    VmManifestError::NotFound {
        ns: ns.into(),
        name: name.into(),
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, VmManifestError> {
    serde_json::to_value(v).map_err(|e| ApiError::Internal(e.to_string()).into())
}

/// Read and parse the JSON body; the manifest's namespace and name must agree with the
/// URL's.
async fn read_manifest(
    ns: &str,
    url_name: Option<&str>,
    body: Body,
) -> Result<VirtualMachine, VmManifestError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::PayloadTooLarge)?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body is not a JSON VirtualMachine manifest: {e}"
        ))
    })?;
    let vm = manifest::parse(&value).map_err(VmManifestError::Invalid)?;
    let mut errs = PathErrors::new();
    if let Some(m) = vm.metadata.namespace.as_deref()
        && m != ns
    {
        errs.insert(
            "metadata.namespace".into(),
            format!("'{m}' does not match the namespace '{ns}' of the URL"),
        );
    }
    if let Some(n) = url_name
        && n != vm.metadata.name
    {
        errs.insert(
            "metadata.name".into(),
            format!(
                "'{}' does not match the name '{n}' of the URL",
                vm.metadata.name
            ),
        );
    }
    if errs.is_empty() {
        Ok(vm)
    } else {
        Err(VmManifestError::Invalid(errs))
    }
}

/// The binding of `ns/name` with its VM's entry; `None` when there is none, or when its VM
/// no longer exists (deleted through the Proxmox API): such a binding is dropped.
async fn live_binding(
    ctx: &Ctx,
    ns: &str,
    name: &str,
) -> Result<Option<(Binding, VmEntry)>, VmManifestError> {
    let store = &ctx.state.store;
    let key = binding_key(ns, name);
    let Some(b) = store.get_json::<Binding>(&key).await? else {
        return Ok(None);
    };
    match vm::load_entry(store, b.vmid).await? {
        Some(e) => Ok(Some((b, e))),
        None => {
            let stale = b.clone();
            store
                .transact(move |tx| {
                    let key = key.clone();
                    let stale = stale.clone();
                    Box::pin(async move {
                        if tx.get_json::<Binding>(&key).await? == Some(stale) {
                            tx.clear(&key);
                        }
                        Ok(())
                    })
                })
                .await?;
            Ok(None)
        }
    }
}

async fn list_vms(ctx: Ctx, names: Vec<String>) -> Outcome {
    let ns = names.into_iter().next().unwrap_or_default();
    let selector = parse_selector(ctx.params.str("labelSelector").unwrap_or(""))?;
    let store = &ctx.state.store;
    let rows: Vec<(gpve_store::Key, Binding)> =
        store.list_json(&mapping::binding_prefix(&ns)).await?;
    // One range read for all VMs rather than one read per binding.
    let entries: BTreeMap<u32, VmEntry> = vm::list_entries(store)
        .await?
        .into_iter()
        .map(|e| (e.record.vmid, e))
        .collect();
    let mut items = Vec::new();
    for (key, b) in rows {
        let Ok((_, _, name)) = key.unpack::<(String, String, String)>() else {
            continue;
        };
        if !selector.iter().all(|(k, v)| b.labels.get(k) == Some(v)) {
            continue;
        }
        if let Some(e) = entries.get(&b.vmid) {
            items.push(mapping::to_manifest(&ns, &name, &b, e, None));
        }
    }
    let list = VirtualMachineList {
        api_version: API_VERSION.into(),
        kind: LIST_KIND.into(),
        items,
    };
    Ok((StatusCode::OK, to_value(&list)?))
}

/// `k=v,k2=v2` → pairs (equality selectors only).
fn parse_selector(s: &str) -> Result<Vec<(String, String)>, VmManifestError> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.split_once('=')
                .filter(|(k, _)| !k.ends_with('!'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| {
                    ApiError::param(
                        "labelSelector",
                        format!("'{p}' is not key=value (only equality selectors are supported)"),
                    )
                    .into()
                })
        })
        .collect()
}

/// A context whose `node` parameter names the local node, for the Proxmox handlers'
/// helpers.
fn node_ctx(ctx: &Ctx) -> Result<Ctx, ApiError> {
    let mut raw = RawParams::default();
    raw.insert("node".into(), Raw::Text(ctx.state.config.node_name.clone()));
    const NODE_ONLY: ParamSchema = ParamSchema(&[Param::node()]);
    let params = NODE_ONLY.validate(raw)?;
    Ok(Ctx {
        params,
        ..ctx.clone()
    })
}

/// The plan's keys checked and made canonical as the Proxmox API would, with errors keyed
/// by manifest path; storages must exist and be active here.
async fn checked_set(
    ctx: &Ctx,
    plan: &Plan,
    vmid: u32,
) -> Result<BTreeMap<String, String>, VmManifestError> {
    let translate = |e: vmconfig::ConfigErrors| VmManifestError::Invalid(plan.translate(e.0));
    let canon = vmconfig::parse_changes(&plan.set, vmid, gpve_supervisor::seeded_u64())
        .map_err(translate)?;
    match qemu::check_storages(&node_ctx(ctx)?, &canon).await {
        Ok(()) => Ok(canon),
        Err(ApiError::Params(m)) => Err(VmManifestError::Invalid(plan.translate(m))),
        Err(e) => Err(e.into()),
    }
}

/// The error of a VM operation, by manifest path where it names configuration keys.
fn op_error(plan: &Plan, e: VmError) -> VmManifestError {
    match e {
        VmError::Config(errors) => VmManifestError::Invalid(plan.translate(errors.0)),
        other => other.into(),
    }
}

async fn create_vm(ctx: &Ctx, ns: &str, vm: VirtualMachine) -> Outcome {
    let name = vm.metadata.name.clone();
    let plan = mapping::plan(&vm, None).map_err(VmManifestError::Invalid)?;
    let canon = checked_set(ctx, &plan, 0).await?;
    vmconfig::check_whole(&canon).map_err(|e| VmManifestError::Invalid(plan.translate(e.0)))?;
    let host = qemu::host(&ctx.state);
    let plain: BTreeMap<String, String> = canon
        .iter()
        .filter(|(k, _)| !vmconfig::is_drive(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let owner = crate::tenancy::vm::namespace_owner(&ctx.state.store, ctx.userid()?, ns)
        .await
        .map_err(ApiError::from)?;
    let vmid = ops::reserve(&host, None, plain)
        .await
        .map_err(|e| op_error(&plan, e))?;
    if let Some(t) = &owner {
        let demand = crate::tenancy::vm::vm_demand(&canon);
        crate::tenancy::vm::admit_reserved(&ctx.state.store, vmid, t, &demand)
            .await
            .map_err(ApiError::from)?;
    }
    let mut binding = plan.binding.clone();
    binding.vmid = vmid;
    binding.created_at_s = now_s();
    if !claim(ctx, ns, &name, &binding).await? {
        // Lost a race for the name: give the VMID (and its charge) back.
        let _ = ctx.state.store.delete(&vm::vm_key(vmid)).await;
        let _ = crate::tenancy::vm::release_deleted(&ctx.state.store, vmid).await;
        return Err(VmManifestError::AlreadyExists {
            ns: ns.into(),
            name,
        });
    }
    let start = vm.spec.running;
    let store = ctx.state.store.clone();
    let (task_ns, task_name) = (ns.to_string(), name.clone());
    let user = ctx.userid()?.to_string();
    let upid = ctx
        .state
        .tasks
        .spawn(
            "qmcreate",
            &vmid.to_string(),
            &user,
            move |task| async move {
                if let Err(e) = ops::create(&host, vmid, canon).await {
                    // `ops::create` removed the VM; the name is free again.
                    let _ = release(&store, &task_ns, &task_name, vmid).await;
                    return Err(e.to_string());
                }
                task.log(format!("VM {vmid} ({task_ns}/{task_name}) created"))
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
    let upid = match upid {
        Ok(u) => u.to_string(),
        Err(e) => {
            let _ = ctx.state.store.delete(&vm::vm_key(vmid)).await;
            let _ = release(&ctx.state.store, ns, &name, vmid).await;
            return Err(ApiError::from(e).into());
        }
    };
    tracing::info!(%ns, %name, vmid, "VM created from a manifest");
    let entry = vm::load_entry(&ctx.state.store, vmid)
        .await?
        .unwrap_or_else(|| VmEntry::new(vmid, &ctx.state.config.node_name, BTreeMap::new()));
    let out = mapping::to_manifest(ns, &name, &binding, &entry, Some(upid));
    Ok((StatusCode::CREATED, to_value(&out)?))
}

/// Write the binding of a new VM unless the name is taken by a live VM; also records the
/// namespace. Returns whether the name was claimed.
async fn claim(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    binding: &Binding,
) -> Result<bool, VmManifestError> {
    let (key, ns_key, ns_name) = (binding_key(ns, name), namespace_key(ns), ns.to_string());
    let binding = binding.clone();
    let claimed = ctx
        .state
        .store
        .transact(move |tx| {
            let (key, ns_key, ns_name, binding) = (
                key.clone(),
                ns_key.clone(),
                ns_name.clone(),
                binding.clone(),
            );
            Box::pin(async move {
                if let Some(old) = tx.get_json::<Binding>(&key).await?
                    && tx.get(&vm::vm_key(old.vmid)).await?.is_some()
                {
                    return Ok(false);
                }
                if tx.get(&ns_key).await?.is_none() {
                    tx.put_json(
                        &ns_key,
                        &NamespaceRecord {
                            name: ns_name,
                            created_at_s: binding.created_at_s,
                            tenant: None,
                        },
                    )?;
                }
                tx.put_json(&key, &binding)?;
                Ok(true)
            })
        })
        .await?;
    Ok(claimed)
}

/// Remove the binding of `ns/name` if it still names `vmid`.
async fn release(
    store: &gpve_store::Store,
    ns: &str,
    name: &str,
    vmid: u32,
) -> Result<(), gpve_store::StoreError> {
    let key = binding_key(ns, name);
    // The VM is gone: so is its tenant charge (a no-op while the VM exists).
    if let Err(e) = crate::tenancy::vm::release_deleted(store, vmid).await {
        tracing::warn!(vmid, error = %e, "releasing the tenant charge of a deleted VM failed");
    }
    store
        .transact(move |tx| {
            let key = key.clone();
            Box::pin(async move {
                if tx
                    .get_json::<Binding>(&key)
                    .await?
                    .is_some_and(|b| b.vmid == vmid)
                {
                    tx.clear(&key);
                }
                Ok(())
            })
        })
        .await
}

/// Replace the binding of `ns/name` if it still names `vmid`; `f` edits it.
async fn edit_binding(
    store: &gpve_store::Store,
    ns: &str,
    name: &str,
    vmid: u32,
    f: impl Fn(&mut Binding) + Send + Sync + Clone + 'static,
) -> Result<Option<Binding>, gpve_store::StoreError> {
    let key = binding_key(ns, name);
    store
        .transact(move |tx| {
            let (key, f) = (key.clone(), f.clone());
            Box::pin(async move {
                let Some(mut b) = tx.get_json::<Binding>(&key).await? else {
                    return Ok(None);
                };
                if b.vmid != vmid {
                    return Ok(None);
                }
                f(&mut b);
                tx.put_json(&key, &b)?;
                Ok(Some(b))
            })
        })
        .await
}

fn busy(ns: &str, name: &str, b: &Binding, e: &VmEntry) -> Option<VmManifestError> {
    let what = if b.deleting {
        "being deleted".to_string()
    } else {
        format!("locked: {}", e.lock.as_deref()?)
    };
    Some(VmManifestError::Busy {
        ns: ns.into(),
        name: name.into(),
        what,
    })
}

async fn update_vm(
    ctx: &Ctx,
    ns: &str,
    vm: VirtualMachine,
    old: Binding,
    entry: VmEntry,
) -> Outcome {
    let name = vm.metadata.name.clone();
    if let Some(e) = busy(ns, &name, &old, &entry) {
        return Err(e);
    }
    let vmid = old.vmid;
    let plan = mapping::plan(&vm, Some((&old, &entry))).map_err(VmManifestError::Invalid)?;
    let host = qemu::host(&ctx.state);
    if plan.changes_config() {
        qemu::precheck(&entry, &Command::UpdateConfig)?;
        let set = checked_set(ctx, &plan, vmid).await?;
        let mut after = entry.with_pending();
        for k in &plan.delete {
            after.remove(k);
        }
        after.extend(set.clone());
        let after = crate::tenancy::vm::vm_demand(&after);
        crate::tenancy::vm::reserve_growth(&ctx.state.store, vmid, &after)
            .await
            .map_err(ApiError::from)?;
        let op = VmOp::UpdateConfig {
            set,
            delete: plan.delete.clone(),
            revert: Vec::new(),
        };
        let done = ops::call(&host, vmid, op, OP_TIMEOUT_MS).await;
        crate::tenancy::vm::settle(&ctx.state.store, vmid)
            .await
            .map_err(ApiError::from)?;
        done.map_err(|e| op_error(&plan, e))?;
    }
    let mut binding = old.clone();
    if plan.binding != old {
        let new = plan.binding.clone();
        binding = edit_binding(&ctx.state.store, ns, &name, vmid, move |b| {
            b.labels = new.labels.clone();
            b.disks = new.disks.clone();
            b.networks = new.networks.clone();
            b.proxmox_keys = new.proxmox_keys.clone();
        })
        .await?
        .ok_or_else(|| not_found(ns, &name))?;
    }
    let task = match plan.power {
        Some(p) => Some(power(ctx, &entry, vmid, p).await?),
        None => None,
    };
    let entry = vm::load_entry(&ctx.state.store, vmid)
        .await?
        .ok_or_else(|| not_found(ns, &name))?;
    let out = mapping::to_manifest(ns, &name, &binding, &entry, task);
    Ok((StatusCode::OK, to_value(&out)?))
}

/// Start or stop the VM as a task; returns its UPID.
async fn power(ctx: &Ctx, entry: &VmEntry, vmid: u32, p: Power) -> Result<String, VmManifestError> {
    let (worker, cmd, op) = match p {
        Power::Start => ("qmstart", Command::Start, VmOp::Start),
        Power::Stop => (
            "qmshutdown",
            Command::Shutdown {
                timeout_ms: STOP_GRACE_MS,
                force_stop: true,
            },
            VmOp::Shutdown {
                timeout_ms: Some(STOP_GRACE_MS),
                force_stop: true,
            },
        ),
    };
    qemu::precheck(entry, &cmd)?;
    match qemu::spawn_op(ctx, worker, vmid, op).await? {
        Reply::Data(Value::String(upid)) => Ok(upid),
        other => Err(ApiError::Internal(format!("unexpected task reply {other:?}")).into()),
    }
}

async fn delete_vm(ctx: Ctx, names: Vec<String>) -> Outcome {
    let (ns, name) = (names[0].clone(), names[1].clone());
    let (b, entry) = live_binding(&ctx, &ns, &name)
        .await?
        .ok_or_else(|| not_found(&ns, &name))?;
    if b.deleting {
        // Already on its way: answer as Kubernetes does, with the object.
        let out = mapping::to_manifest(&ns, &name, &b, &entry, None);
        return Ok((StatusCode::OK, to_value(&out)?));
    }
    if let Some(lock) = &entry.lock {
        return Err(VmManifestError::Busy {
            ns,
            name,
            what: format!("locked: {lock}"),
        });
    }
    let vmid = b.vmid;
    // Refused up front, as the Proxmox DELETE does, rather than inside the task.
    gpve_actors::vm::disks::refuse_if_linked_base(&ctx.state.store, vmid).await?;
    let binding = edit_binding(&ctx.state.store, &ns, &name, vmid, |b| b.deleting = true)
        .await?
        .ok_or_else(|| not_found(&ns, &name))?;
    let host = qemu::host(&ctx.state);
    let store = ctx.state.store.clone();
    let running = entry.runtime.qmpstatus != "stopped";
    let (task_ns, task_name) = (ns.clone(), name.clone());
    let user = ctx.userid()?.to_string();
    let upid = ctx
        .state
        .tasks
        .spawn(
            "qmdestroy",
            &vmid.to_string(),
            &user,
            move |task| async move {
                let steps = async {
                    if running {
                        let line = ops::call(&host, vmid, VmOp::Stop, OP_TIMEOUT_MS).await?;
                        task.log(line)
                            .await
                            .map_err(|e| VmError::Unavailable(e.to_string()))?;
                    }
                    let line =
                        ops::call(&host, vmid, VmOp::Delete { purge: true }, OP_TIMEOUT_MS).await?;
                    ops::remove_actor(&host, vmid).await?;
                    task.log(line)
                        .await
                        .map_err(|e| VmError::Unavailable(e.to_string()))?;
                    Ok::<(), VmError>(())
                };
                match steps.await {
                    Ok(()) => release(&store, &task_ns, &task_name, vmid)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => {
                        let _ = edit_binding(&store, &task_ns, &task_name, vmid, |b| {
                            b.deleting = false;
                        })
                        .await;
                        Err(e.to_string())
                    }
                }
            },
        )
        .await;
    let upid = match upid {
        Ok(u) => u.to_string(),
        Err(e) => {
            let _ = edit_binding(&ctx.state.store, &ns, &name, vmid, |b| b.deleting = false).await;
            return Err(ApiError::from(e).into());
        }
    };
    let out = mapping::to_manifest(&ns, &name, &binding, &entry, Some(upid));
    Ok((StatusCode::OK, to_value(&out)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        assert_eq!(
            parse_selector("app=web, tier=front").expect("parses"),
            vec![
                ("app".to_string(), "web".to_string()),
                ("tier".to_string(), "front".to_string())
            ]
        );
        assert!(parse_selector("").expect("empty").is_empty());
        assert!(parse_selector("app!=web").is_err());
        assert!(parse_selector("app").is_err());
    }

    #[test]
    fn conflicts_are_409_and_missing_404() {
        let r = VmManifestError::AlreadyExists {
            ns: "default".into(),
            name: "a".into(),
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::CONFLICT);
        let r = VmManifestError::NotFound {
            ns: "default".into(),
            name: "a".into(),
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = VmManifestError::Invalid(PathErrors::new()).into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
}
