//! `/api/v1/tenants/{tenant}/vclusters[/{name}[/kubeconfig|/upgrade]]`: virtual
//! Kubernetes clusters as `gpve.io/v1 VirtualCluster` manifests ([`crate::vcluster`]).
//!
//! - `POST` creates (201): the quota is admitted in the transaction that writes the
//!   record, so a VC over quota is refused before anything exists; then the VC actor
//!   starts (PKI, backing store, control plane, workers) and reports in `status`.
//! - `PUT` creates a missing VC or changes `workerNodes.count` (scaling) and labels;
//!   the other fields are fixed at creation (the version changes through `upgrade`).
//! - `DELETE` tears everything down (processes, worker VMs, certificates, data) before it
//!   answers, then removes the record and gives the quota back.
//! - `GET .../kubeconfig` answers the admin kubeconfig (YAML) as `data`.
//! - `POST .../upgrade?version=1.31` moves to a newer supported version: leaf
//!   certificates are reissued and every process restarts on them.
//!
//! Privileges: the tenant's pool ACL path `/pool/{tenant}` with `VM.Allocate` to change
//! and `VM.Audit` to read, as for the tenant's VMs (no new privilege names: roles that
//! manage a tenant's VMs manage its VCs).

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gpve_supervisor::SupervisorHandle;
use serde_json::{Value, json};

use super::guard::{authorize, respond};
use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, MAX_BODY_BYTES, Method, Privilege};
use crate::schema::{Format, Param, ParamSchema};
use crate::state::{AppState, now_s};
use crate::tenancy::{self, TenancyError};
use crate::v1::virtualmachines::manifest::{PathErrors, name_error};
use crate::vcluster::actor::VcMsg;
use crate::vcluster::spec::{self, VcManifest};
use crate::vcluster::{self as vc, HostMsg, VcRecord, VcStatus};

/// How long a handler waits for the VC actor (a delete destroys VMs).
pub const VC_CALL_TIMEOUT_MS: u64 = 120_000;
/// Longest tenant name in a path, in bytes.
pub const MAX_TENANT_BYTES: usize = tenancy::MAX_TENANT_NAME_BYTES;

const TENANT: Param = Param::string("tenant", MAX_TENANT_BYTES, Some(Format::Text));

const WRITE: Privilege = Privilege::Perm("/pool/{tenant}", &["VM.Allocate"]);
const READ_PRIV: Privilege = Privilege::Perm("/pool/{tenant}", &["VM.Audit"]);

pub const LIST: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[TENANT]),
    privilege: READ_PRIV,
    description: "VirtualCluster manifests of a tenant.",
};
pub const CREATE: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[TENANT]),
    privilege: WRITE,
    description: "Create a virtual Kubernetes cluster from a VirtualCluster manifest (JSON body).",
};
pub const READ: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[TENANT]),
    privilege: READ_PRIV,
    description: "One VirtualCluster with its status (phase, conditions).",
};
pub const REPLACE: Endpoint = Endpoint {
    method: Method::Put,
    params: ParamSchema(&[TENANT]),
    privilege: WRITE,
    description: "Create a VirtualCluster or scale its workers (JSON body).",
};
pub const DELETE: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[TENANT]),
    privilege: WRITE,
    description: "Delete a VirtualCluster and everything it created.",
};
pub const KUBECONFIG: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[TENANT]),
    privilege: WRITE,
    description: "The admin kubeconfig of a VirtualCluster (YAML).",
};
pub const UPGRADE: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        TENANT,
        Param::string("version", 16, Some(Format::Text)).opt(),
    ]),
    privilege: WRITE,
    description: "Upgrade a VirtualCluster's Kubernetes version; rotates its certificates.",
};

/// Every route of this module, relative to `/api/v1`, with its declaration.
pub fn routes() -> (Router<AppState>, Vec<(&'static str, &'static Endpoint)>) {
    const BASE: &str = "/tenants/{tenant}/vclusters";
    const ONE: &str = "/tenants/{tenant}/vclusters/{name}";
    const KC: &str = "/tenants/{tenant}/vclusters/{name}/kubeconfig";
    const UP: &str = "/tenants/{tenant}/vclusters/{name}/upgrade";
    let router = Router::new()
        .route(BASE, axum::routing::get(list).post(create))
        .route(ONE, axum::routing::get(read).put(replace).delete(delete))
        .route(KC, axum::routing::get(kubeconfig))
        .route(UP, axum::routing::post(upgrade));
    let table = vec![
        (BASE, &LIST),
        (BASE, &CREATE),
        (ONE, &READ),
        (ONE, &REPLACE),
        (ONE, &DELETE),
        (KC, &KUBECONFIG),
        (UP, &UPGRADE),
    ];
    (router, table)
}

/// Failures of this API.
#[derive(Debug, thiserror::Error)]
pub enum VcApiError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("Parameter verification failed.")]
    Invalid(PathErrors),
    #[error("virtualcluster '{0}' already exists")]
    AlreadyExists(String),
    #[error("virtualcluster '{0}' not found")]
    NotFound(String),
}

impl From<gpve_store::StoreError> for VcApiError {
    fn from(e: gpve_store::StoreError) -> Self {
        VcApiError::Api(e.into())
    }
}

impl From<TenancyError> for VcApiError {
    fn from(e: TenancyError) -> Self {
        VcApiError::Api(e.into())
    }
}

impl IntoResponse for VcApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            VcApiError::NotFound(_) => StatusCode::NOT_FOUND,
            VcApiError::AlreadyExists(_) => StatusCode::CONFLICT,
            _ => StatusCode::BAD_REQUEST,
        };
        let message = format!("{self}\n");
        match self {
            VcApiError::Api(e) => e.into_response(),
            VcApiError::Invalid(errs) => ApiError::Params(errs).into_response(),
            _ => (
                status,
                axum::Json(json!({ "data": null, "message": message })),
            )
                .into_response(),
        }
    }
}

type Outcome = Result<(StatusCode, Value), VcApiError>;

fn internal(e: impl std::fmt::Display) -> VcApiError {
    ApiError::Internal(e.to_string()).into()
}

/// Authenticate as `ep` with the path's tenant as a parameter, check the names, run `f`.
async fn serve<F, Fut>(
    state: AppState,
    ep: &'static Endpoint,
    names: Result<Vec<String>, PathRejection>,
    req: Request,
    f: F,
) -> Response
where
    F: FnOnce(Ctx, axum::body::Body, Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    let Ok(names) = names else {
        return ApiError::BadRequest("invalid path encoding".into()).into_response();
    };
    let (mut parts, body) = req.into_parts();
    // The ACL path template names `{tenant}`: hand it to the pipeline as a parameter.
    let tenant_q = serde_urlencoded::to_string([("tenant", names[0].as_str())]).unwrap_or_default();
    let query = match parts.uri.query() {
        Some(q) if !q.is_empty() => format!("{q}&{tenant_q}"),
        _ => tenant_q,
    };
    // The audit record keeps the request's own path: axum's `OriginalUri` is untouched.
    match format!("{}?{query}", parts.uri.path()).parse() {
        Ok(u) => parts.uri = u,
        Err(_) => return ApiError::BadRequest("invalid query string".into()).into_response(),
    }
    let ctx = match authorize(&state, ep, &parts).await {
        Ok(ctx) => ctx,
        Err(resp) => return resp,
    };
    if !tenancy::valid_name(&names[0]) {
        return ApiError::param(
            "tenant",
            TenancyError::InvalidName(names[0].clone()).to_string(),
        )
        .into_response();
    }
    if let Some(n) = names.get(1)
        && let Some(e) = name_error(n)
    {
        return ApiError::param("name", e).into_response();
    }
    respond(f(ctx, body, names).await)
}

type TPath = Result<Path<String>, PathRejection>;
type NPath = Result<Path<(String, String)>, PathRejection>;

fn t_of(p: TPath) -> Result<Vec<String>, PathRejection> {
    p.map(|Path(t)| vec![t])
}
fn n_of(p: NPath) -> Result<Vec<String>, PathRejection> {
    p.map(|Path((t, n))| vec![t, n])
}

async fn list(State(s): State<AppState>, p: TPath, req: Request) -> Response {
    serve(s, &LIST, t_of(p), req, |ctx, _, n| async move {
        let rows: Vec<(gpve_store::Key, VcRecord)> =
            ctx.state.store.list_json(&vc::tenant_prefix(&n[0])).await?;
        let items: Vec<Value> = rows.iter().map(|(_, r)| vc::to_manifest(r)).collect();
        Ok((
            StatusCode::OK,
            json!({"apiVersion": crate::v1::virtualmachines::manifest::API_VERSION,
                   "kind": spec::LIST_KIND, "items": items}),
        ))
    })
    .await
}

async fn create(State(s): State<AppState>, p: TPath, req: Request) -> Response {
    serve(s, &CREATE, t_of(p), req, |ctx, body, n| async move {
        let m = read_manifest(&ctx, &n[0], None, body).await?;
        create_vc(&ctx, &n[0], m).await
    })
    .await
}

async fn read(State(s): State<AppState>, p: NPath, req: Request) -> Response {
    serve(s, &READ, n_of(p), req, |ctx, _, n| async move {
        let r = load(&ctx, &n[0], &n[1]).await?;
        Ok((StatusCode::OK, vc::to_manifest(&r)))
    })
    .await
}

async fn replace(State(s): State<AppState>, p: NPath, req: Request) -> Response {
    serve(s, &REPLACE, n_of(p), req, |ctx, body, n| async move {
        let m = read_manifest(&ctx, &n[0], Some(&n[1]), body).await?;
        let key = vc::vc_key(&n[0], &n[1]);
        match ctx.state.store.get_json::<VcRecord>(&key).await? {
            None => create_vc(&ctx, &n[0], m).await,
            Some(old) => update_vc(&ctx, old, m).await,
        }
    })
    .await
}

async fn delete(State(s): State<AppState>, p: NPath, req: Request) -> Response {
    serve(s, &DELETE, n_of(p), req, |ctx, _, n| delete_vc(ctx, n)).await
}

async fn kubeconfig(State(s): State<AppState>, p: NPath, req: Request) -> Response {
    serve(s, &KUBECONFIG, n_of(p), req, |ctx, _, n| async move {
        load(&ctx, &n[0], &n[1]).await?;
        let actor = actor_ref(&ctx, &n[0], &n[1]).await?;
        let kc = ractor::call_t!(actor, VcMsg::Kubeconfig, VC_CALL_TIMEOUT_MS)
            .map_err(internal)?
            .map_err(internal)?;
        Ok((StatusCode::OK, Value::String(kc)))
    })
    .await
}

async fn upgrade(State(s): State<AppState>, p: NPath, req: Request) -> Response {
    serve(s, &UPGRADE, n_of(p), req, |ctx, _, n| async move {
        let (tenant, name) = (n[0].clone(), n[1].clone());
        let rec = load(&ctx, &tenant, &name).await?;
        let version = ctx
            .params
            .str("version")
            .map(str::to_string)
            .unwrap_or_else(|| rec.spec.kubernetes_version.clone());
        if let Some(e) = spec::version_error(&version) {
            return Err(ApiError::param("version", e).into());
        }
        if minor(&version) < minor(&rec.spec.kubernetes_version) {
            return Err(ApiError::param(
                "version",
                format!(
                    "downgrading from {} to {version} is not supported",
                    rec.spec.kubernetes_version
                ),
            )
            .into());
        }
        edit(&ctx, &tenant, &name, move |r| {
            r.spec.kubernetes_version = version.clone();
            r.generation += 1;
        })
        .await?;
        let actor = actor_ref(&ctx, &tenant, &name).await?;
        ractor::call_t!(actor, VcMsg::Upgrade, VC_CALL_TIMEOUT_MS)
            .map_err(internal)?
            .map_err(internal)?;
        let r = load(&ctx, &tenant, &name).await?;
        Ok((StatusCode::OK, vc::to_manifest(&r)))
    })
    .await
}

/// `1.30` → (1, 30).
fn minor(v: &str) -> (u64, u64) {
    let mut it = v.trim_start_matches('v').split('.');
    let mut n = || it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (n(), n())
}

async fn read_manifest(
    ctx: &Ctx,
    tenant: &str,
    url_name: Option<&str>,
    body: axum::body::Body,
) -> Result<VcManifest, VcApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::PayloadTooLarge)?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body is not a JSON VirtualCluster manifest: {e}"
        ))
    })?;
    let m = spec::parse(&value).map_err(VcApiError::Invalid)?;
    let mut errs = PathErrors::new();
    if let Some(t) = &m.tenant
        && t != tenant
    {
        errs.insert(
            "metadata.tenant".into(),
            format!("'{t}' does not match the tenant '{tenant}' of the URL"),
        );
    }
    // A namespace owned by a tenant (`gpve.io` namespaces) holds only that tenant's VCs.
    if let Some(ns) = &m.namespace {
        let key = crate::v1::virtualmachines::mapping::namespace_key(ns);
        let rec: Option<crate::v1::virtualmachines::mapping::NamespaceRecord> =
            ctx.state.store.get_json(&key).await?;
        if let Some(owner) = rec.and_then(|r| r.tenant)
            && owner != tenant
        {
            errs.insert(
                "metadata.namespace".into(),
                format!("namespace '{ns}' belongs to tenant '{owner}', not '{tenant}'"),
            );
        }
    }
    if let Some(n) = url_name
        && n != m.name
    {
        errs.insert(
            "metadata.name".into(),
            format!("'{}' does not match the name '{n}' of the URL", m.name),
        );
    }
    if errs.is_empty() {
        Ok(m)
    } else {
        Err(VcApiError::Invalid(errs))
    }
}

async fn load(ctx: &Ctx, tenant: &str, name: &str) -> Result<VcRecord, VcApiError> {
    ctx.state
        .store
        .get_json::<VcRecord>(&vc::vc_key(tenant, name))
        .await?
        .ok_or_else(|| VcApiError::NotFound(format!("{tenant}/{name}")))
}

async fn edit(
    ctx: &Ctx,
    tenant: &str,
    name: &str,
    f: impl Fn(&mut VcRecord) + Send + Sync + Clone + 'static,
) -> Result<VcRecord, VcApiError> {
    let key = vc::vc_key(tenant, name);
    let r = ctx
        .state
        .store
        .transact(move |tx| {
            let (key, f) = (key.clone(), f.clone());
            Box::pin(async move {
                let Some(mut r) = tx.get_json::<VcRecord>(&key).await? else {
                    return Ok(None);
                };
                f(&mut r);
                tx.put_json(&key, &r)?;
                Ok(Some(r))
            })
        })
        .await?;
    r.ok_or_else(|| VcApiError::NotFound(format!("{tenant}/{name}")))
}

fn supervisor(ctx: &Ctx) -> Result<SupervisorHandle, VcApiError> {
    let path = format!("{}/{}", crate::tree::ROOT, vc::SUPERVISOR_ID);
    SupervisorHandle::lookup(&ctx.state.node.directory, &path)
        .ok_or_else(|| internal(vc::VclusterError::Unavailable))
}

async fn host(ctx: &Ctx) -> Result<vc::VcHost, VcApiError> {
    let path = format!(
        "{}/{}/{}",
        crate::tree::ROOT,
        vc::SUPERVISOR_ID,
        vc::HOST_ID
    );
    let h = ctx
        .state
        .node
        .directory
        .lookup_ref::<HostMsg>(&path)
        .ok_or_else(|| internal(vc::VclusterError::Unavailable))?;
    ractor::call_t!(h, HostMsg::Get, VC_CALL_TIMEOUT_MS).map_err(internal)
}

/// The running actor of a VC, started if it is not running (it was left stopped, or the
/// record was written by a request whose start failed).
async fn actor_ref(
    ctx: &Ctx,
    tenant: &str,
    name: &str,
) -> Result<ractor::ActorRef<VcMsg>, VcApiError> {
    let path = vc::actor_path(tenant, name);
    if let Some(a) = ctx.state.node.directory.lookup_ref::<VcMsg>(&path) {
        return Ok(a);
    }
    let h = host(ctx).await?;
    let sup = supervisor(ctx)?;
    let _ = sup.remove_child(&vc::actor_id(tenant, name)).await;
    sup.add_child(vc::vc_child(h, tenant, name))
        .await
        .map_err(|e| internal(crate::vcluster::actor::error_chain(&e)))?;
    ctx.state
        .node
        .directory
        .lookup_ref::<VcMsg>(&path)
        .ok_or_else(|| internal(vc::VclusterError::Unavailable))
}

async fn create_vc(ctx: &Ctx, tenant: &str, m: VcManifest) -> Outcome {
    let name = m.name.clone();
    let demand = vc::demand(&m.spec);
    let rec = VcRecord {
        tenant: tenant.to_string(),
        name: name.clone(),
        namespace: m.namespace.clone(),
        labels: m.labels.clone(),
        spec: m.spec.clone(),
        generation: 1,
        created_at_s: now_s(),
        charged: demand,
        deleting: false,
        status: VcStatus {
            phase: "Provisioning".into(),
            ..VcStatus::default()
        },
    };
    let key = vc::vc_key(tenant, &name);
    let (t, r) = (tenant.to_string(), rec.clone());
    // Admission and the record in one transaction: over quota, nothing is written.
    let outcome = ctx
        .state
        .store
        .transact(move |tx| {
            let (key, t, r) = (key.clone(), t.clone(), r.clone());
            Box::pin(async move {
                if tx.get(&key).await?.is_some() {
                    return Ok(Err(None));
                }
                match tenancy::admit(tx, &t, &r.charged).await {
                    Ok(()) => {}
                    Err(TenancyError::Store(e)) => return Err(e),
                    Err(e) => return Ok(Err(Some(e))),
                }
                tx.put_json(&key, &r)?;
                Ok(Ok(()))
            })
        })
        .await?;
    match outcome {
        Ok(()) => {}
        Err(None) => return Err(VcApiError::AlreadyExists(format!("{tenant}/{name}"))),
        Err(Some(e)) => return Err(e.into()),
    }
    let started = async {
        let h = host(ctx).await?;
        supervisor(ctx)?
            .add_child(vc::vc_child(h, tenant, &name))
            .await
            .map_err(|e| internal(crate::vcluster::actor::error_chain(&e)))
    }
    .await;
    if let Err(e) = started {
        // Undo: a VC that cannot start is not left half-created.
        let _ = remove_record(ctx, tenant, &name).await;
        let dir_root = host(ctx).await.ok().map(|h| h.vc_dir(tenant, &name));
        if let Some(d) = dir_root {
            let _ = std::fs::remove_dir_all(d);
        }
        return Err(e);
    }
    tracing::info!(%tenant, %name, "virtualcluster created");
    let r = load(ctx, tenant, &name).await?;
    Ok((StatusCode::CREATED, vc::to_manifest(&r)))
}

async fn update_vc(ctx: &Ctx, old: VcRecord, m: VcManifest) -> Outcome {
    let mut errs = PathErrors::new();
    let (o, n) = (&old.spec, &m.spec);
    if o.kubernetes_version != n.kubernetes_version {
        errs.insert(
            "spec.kubernetesVersion".into(),
            "changes through POST .../upgrade".into(),
        );
    }
    if o.control_plane != n.control_plane {
        errs.insert("spec.controlPlane".into(), "is fixed at creation".into());
    }
    if o.isolation_level != n.isolation_level {
        errs.insert("spec.isolationLevel".into(), "is fixed at creation".into());
    }
    if o.worker_nodes.mode != n.worker_nodes.mode
        || o.worker_nodes.resources != n.worker_nodes.resources
    {
        errs.insert(
            "spec.workerNodes".into(),
            "only count can change after creation".into(),
        );
    }
    if !errs.is_empty() {
        return Err(VcApiError::Invalid(errs));
    }
    if old.deleting {
        return Err(ApiError::Conflict(format!(
            "virtualcluster '{}/{}' is being deleted",
            old.tenant, old.name
        ))
        .into());
    }
    let (tenant, name) = (old.tenant.clone(), old.name.clone());
    let changed = o != n || old.labels != m.labels;
    if changed {
        let key = vc::vc_key(&tenant, &name);
        let (spec_new, labels) = (m.spec.clone(), m.labels.clone());
        let outcome = ctx
            .state
            .store
            .transact(move |tx| {
                let (key, spec_new, labels) = (key.clone(), spec_new.clone(), labels.clone());
                Box::pin(async move {
                    let Some(mut r) = tx.get_json::<VcRecord>(&key).await? else {
                        return Ok(Ok(None));
                    };
                    let want = vc::demand(&spec_new);
                    let (grow, shrink) = r.charged.delta(&want);
                    for step in [
                        tenancy::release(tx, &r.tenant, &shrink).await,
                        tenancy::admit(tx, &r.tenant, &grow).await,
                    ] {
                        match step {
                            Ok(()) => {}
                            Err(TenancyError::Store(e)) => return Err(e),
                            Err(e) => return Ok(Err(e)),
                        }
                    }
                    r.charged = want;
                    r.spec = spec_new;
                    r.labels = labels;
                    r.generation += 1;
                    tx.put_json(&key, &r)?;
                    Ok(Ok(Some(())))
                })
            })
            .await?;
        match outcome {
            Ok(Some(())) => {}
            Ok(None) => return Err(VcApiError::NotFound(format!("{tenant}/{name}"))),
            Err(e) => return Err(e.into()),
        }
        let actor = actor_ref(ctx, &tenant, &name).await?;
        let _ = actor.cast(VcMsg::Reconcile);
    }
    let r = load(ctx, &tenant, &name).await?;
    Ok((StatusCode::OK, vc::to_manifest(&r)))
}

async fn remove_record(ctx: &Ctx, tenant: &str, name: &str) -> Result<(), VcApiError> {
    let key = vc::vc_key(tenant, name);
    let outcome = ctx
        .state
        .store
        .transact(move |tx| {
            let key = key.clone();
            Box::pin(async move {
                let Some(r) = tx.get_json::<VcRecord>(&key).await? else {
                    return Ok(Ok(()));
                };
                match tenancy::release(tx, &r.tenant, &r.charged).await {
                    // A tenant removed meanwhile has no usage to give back.
                    Ok(()) | Err(TenancyError::NoSuchTenant(_)) => {}
                    Err(TenancyError::Store(e)) => return Err(e),
                    Err(e) => return Ok(Err(e)),
                }
                tx.clear(&key);
                Ok(Ok(()))
            })
        })
        .await?;
    outcome.map_err(VcApiError::from)
}

async fn delete_vc(ctx: Ctx, n: Vec<String>) -> Outcome {
    let (tenant, name) = (n[0].clone(), n[1].clone());
    let mut rec = edit(&ctx, &tenant, &name, |r| r.deleting = true).await?;
    let actor = actor_ref(&ctx, &tenant, &name).await?;
    ractor::call_t!(actor, VcMsg::Teardown, VC_CALL_TIMEOUT_MS)
        .map_err(internal)?
        .map_err(internal)?;
    supervisor(&ctx)?
        .remove_child(&vc::actor_id(&tenant, &name))
        .await
        .map_err(|e| internal(crate::vcluster::actor::error_chain(&e)))?;
    remove_record(&ctx, &tenant, &name).await?;
    tracing::info!(%tenant, %name, "virtualcluster deleted");
    rec.status.phase = "Deleted".into();
    Ok((StatusCode::OK, vc::to_manifest(&rec)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically() {
        assert!(minor("1.9") < minor("1.30"));
        assert_eq!(minor("v1.31.2"), (1, 31));
    }

    #[test]
    fn errors_map_to_kubernetes_statuses() {
        assert_eq!(
            VcApiError::NotFound("t/a".into()).into_response().status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            VcApiError::AlreadyExists("t/a".into())
                .into_response()
                .status(),
            StatusCode::CONFLICT
        );
    }
}
