//! `/api/v1/tenants`: tenants, their quotas, usage, namespaces and bound users
//! ([`crate::tenancy`]).
//!
//! A tenant's objects are authorised on its pool's ACL path `/pool/{tenant}`, so no new
//! ACL root is needed and an ACL that gives a team its pool gives it its tenant too:
//! reading needs `Pool.Audit` or `VM.Audit` there, creating namespaces `VM.Allocate`. Creating and
//! deleting tenants, setting quotas and binding users need `Sys.Modify` on `/`
//! (Administrator): a tenant's own admins must not raise their quota or take in users.

use std::collections::BTreeMap;

use gpve_store::{Key, RangeOptions};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::rbac::db::{PoolRecord, RbacDb, RbacDbError};
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply, Routes, endpoint};
use crate::schema::{Format, Param, ParamSchema};
use crate::state::now_s;
use crate::tenancy::vm::Charge;
use crate::tenancy::{
    self, Demand, Quota, Resource, ResourceQuota, TenancyError, TenantRecord, store_keys,
};
use crate::v1::virtualmachines::mapping::{NAMESPACE_SUBSPACE, NamespaceRecord, namespace_key};

/// Longest quota property string (`requests=..,limits=..,overcommit=..`), in bytes.
const MAX_QUOTA_PROP_BYTES: usize = 128;
/// The vClusters' store subspace (owned by `crate::vcluster`).
const VCLUSTER_SUBSPACE: &str = "vclusters";
/// Longest namespace name, in bytes.
const MAX_NAMESPACE_BYTES: usize = 63;

const TENANT: Param = Param::string("tenant", 64, Some(Format::Text));
const COMMENT: Param = Param::string("comment", 2048, Some(Format::Text)).opt();
const QUOTA_PARAMS: [Param; 6] = [
    Param::string("vcpus", MAX_QUOTA_PROP_BYTES, Some(Format::Text)).opt(),
    Param::string("memory", MAX_QUOTA_PROP_BYTES, Some(Format::Text)).opt(),
    Param::string("disk", MAX_QUOTA_PROP_BYTES, Some(Format::Text)).opt(),
    Param::string("vms", MAX_QUOTA_PROP_BYTES, Some(Format::Text)).opt(),
    Param::string("vclusters", MAX_QUOTA_PROP_BYTES, Some(Format::Text)).opt(),
    Param::string("gpus", MAX_QUOTA_PROP_BYTES, Some(Format::Text)).opt(),
];
const ADMIN: Privilege = Privilege::Perm("/", &["Sys.Modify"]);
/// Pool auditors, and members who may see the pool's VMs, read the tenant.
const AUDIT: Privilege = Privilege::Any("/pool/{tenant}", &["Pool.Audit", "VM.Audit"]);

/// Every `/api/v1/tenants` route.
pub fn router() -> Routes {
    Routes::new()
        .route(
            "/tenants",
            endpoint(&LIST, list).merge(endpoint(&CREATE, create)),
        )
        .route(
            "/tenants/{tenant}",
            endpoint(&READ, read)
                .merge(endpoint(&UPDATE, update))
                .merge(endpoint(&DELETE, delete)),
        )
        .route(
            "/tenants/{tenant}/quota",
            endpoint(&QUOTA_GET, quota_get).merge(endpoint(&QUOTA_SET, quota_set)),
        )
        .route("/tenants/{tenant}/usage", endpoint(&USAGE, usage))
        .route(
            "/tenants/{tenant}/namespaces",
            endpoint(&NS_LIST, ns_list).merge(endpoint(&NS_ATTACH, ns_attach)),
        )
        .route(
            "/tenants/{tenant}/users",
            endpoint(&USERS_LIST, users_list).merge(endpoint(&USER_BIND, user_bind)),
        )
        .route(
            "/tenants/{tenant}/users/{userid}",
            endpoint(&USER_UNBIND, user_unbind),
        )
}

fn quota_json(q: &ResourceQuota) -> Value {
    json!({
        "requests": q.requests,
        "limits": q.limits,
        "overcommit": q.overcommit,
        "allowed": q.cap(),
    })
}

/// Per resource: quota, usage and what is left.
fn resources_json(rec: &TenantRecord, used: &Demand) -> Value {
    let mut out = serde_json::Map::new();
    for r in Resource::ALL {
        let q = rec.quota.get(r);
        let mut v = quota_json(q);
        v["unit"] = json!(r.unit());
        v["used"] = json!(used.get(r));
        v["left"] = json!(q.cap().map(|c| c.saturating_sub(used.get(r))));
        out.insert(r.name().to_string(), v);
    }
    Value::Object(out)
}

fn tenant_json(rec: &TenantRecord, used: &Demand) -> Value {
    json!({
        "tenant": rec.name,
        "comment": rec.comment,
        "created_at_s": rec.created_at_s,
        "pool": rec.name,
        "resources": resources_json(rec, used),
    })
}

/// Parse one resource's quota property string onto `q`: `requests=N,limits=N,overcommit=F`
/// (each optional; `none` clears a bound; an empty string clears all).
pub fn parse_quota_prop(r: Resource, s: &str, q: &mut ResourceQuota) -> Result<(), ApiError> {
    let bad = |why: String| ApiError::param(r.name(), why);
    if s.trim().is_empty() || s.trim() == "none" {
        *q = ResourceQuota::default();
        return Ok(());
    }
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            bad(format!(
                "'{part}' is not key=value (requests, limits, overcommit)"
            ))
        })?;
        let bound = |v: &str| -> Result<Option<u64>, ApiError> {
            if v == "none" {
                return Ok(None);
            }
            v.parse::<u64>().map(Some).map_err(|_| {
                bad(format!(
                    "{k} must be a whole number of {} or 'none', not '{v}'",
                    r.unit()
                ))
            })
        };
        match k {
            "requests" => q.requests = bound(v)?,
            "limits" => q.limits = bound(v)?,
            "overcommit" => {
                q.overcommit = v.parse::<f64>().map_err(|_| {
                    bad(format!("overcommit must be a ratio such as 1.5, not '{v}'"))
                })?
            }
            other => {
                return Err(bad(format!(
                    "unknown key '{other}' (use requests, limits, overcommit)"
                )));
            }
        }
    }
    q.validate(r).map_err(|e| bad(e.to_string()))
}

fn quota_changes(ctx: &Ctx, quota: &mut Quota) -> Result<bool, ApiError> {
    let mut changed = false;
    for r in Resource::ALL {
        if let Some(s) = ctx.params.str(r.name()) {
            parse_quota_prop(r, s, quota.get_mut(r))?;
            changed = true;
        }
    }
    Ok(changed)
}

fn tenant_name(ctx: &Ctx) -> Result<String, ApiError> {
    let t = ctx.str("tenant")?;
    if tenancy::valid_name(t) {
        Ok(t.to_string())
    } else {
        Err(TenancyError::InvalidName(t.chars().take(64).collect()).into())
    }
}

/// `GET /api/v1/tenants`.
pub const LIST: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[]),
    privilege: Privilege::User,
    description: "Tenants the caller may audit (Pool.Audit or VM.Audit on /pool/{tenant}), with quotas and usage.",
};

pub async fn list(ctx: Ctx) -> Result<Reply, ApiError> {
    let rows = ctx
        .state
        .store
        .transact(|tx| {
            Box::pin(async move {
                let mut out = Vec::new();
                let recs: Vec<(Key, TenantRecord)> = tx
                    .list_json(&Key::prefix(&(store_keys::TENANTS,)), RangeOptions::all())
                    .await?;
                for (_, rec) in recs {
                    let used: Demand = tx
                        .get_json(&tenancy::usage_key(&rec.name))
                        .await?
                        .unwrap_or_default();
                    out.push((rec, used));
                }
                Ok(out)
            })
        })
        .await?;
    let mut items = Vec::new();
    for (rec, used) in rows {
        if ctx
            .allowed_any(&format!("/pool/{}", rec.name), &["Pool.Audit", "VM.Audit"])
            .await?
        {
            items.push(tenant_json(&rec, &used));
        }
    }
    Ok(Reply::Data(Value::Array(items)))
}

/// `POST /api/v1/tenants`.
pub static CREATE: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        TENANT,
        COMMENT,
        QUOTA_PARAMS[0],
        QUOTA_PARAMS[1],
        QUOTA_PARAMS[2],
        QUOTA_PARAMS[3],
        QUOTA_PARAMS[4],
        QUOTA_PARAMS[5],
    ]),
    privilege: ADMIN,
    description: "Create a tenant and its pool of the same name; quotas as property strings per resource (memory=requests=8192,limits=16384,overcommit=1.5).",
};

pub async fn create(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = tenant_name(&ctx)?;
    let mut quota = Quota::default();
    quota_changes(&ctx, &mut quota)?;
    let rec = TenantRecord {
        name: name.clone(),
        comment: ctx.params.str("comment").unwrap_or("").to_string(),
        created_at_s: now_s(),
        quota,
    };
    ctx.state
        .store
        .transact(|tx| {
            let rec = rec.clone();
            Box::pin(async move {
                let pool_key = Key::pack(&("pools", rec.name.as_str()));
                if let Some(existing) = tx.get_json::<TenantRecord>(&tenancy::tenant_key(&rec.name)).await? {
                    // Retried after an unknown commit outcome that did apply.
                    return Ok(if existing.created_at_s == rec.created_at_s {
                        Ok(())
                    } else {
                        Err(TenancyError::TenantExists(rec.name))
                    });
                }
                if tx.get(&pool_key).await?.is_some() {
                    return Ok(Err(TenancyError::Conflict(format!(
                        "pool '{}' already exists: a tenant makes its own pool, so choose another name or delete the pool",
                        rec.name
                    ))));
                }
                tx.put_json(&tenancy::tenant_key(&rec.name), &rec)?;
                tx.put_json(&tenancy::usage_key(&rec.name), &Demand::default())?;
                tx.put_json(
                    &pool_key,
                    &PoolRecord {
                        poolid: rec.name.clone(),
                        comment: format!("pool of tenant {}", rec.name),
                        ..Default::default()
                    },
                )?;
                Ok(Ok(()))
            })
        })
        .await??;
    Ok(Reply::Data(Value::Null))
}

/// `GET /api/v1/tenants/{tenant}`.
pub const READ: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[TENANT]),
    privilege: AUDIT,
    description: "One tenant with its quotas, usage and what is left per resource.",
};

async fn load(ctx: &Ctx, name: &str) -> Result<(TenantRecord, Demand), ApiError> {
    let name = name.to_string();
    Ok(ctx
        .state
        .store
        .transact(|tx| {
            let name = name.clone();
            Box::pin(async move {
                let Some(rec) = tx
                    .get_json::<TenantRecord>(&tenancy::tenant_key(&name))
                    .await?
                else {
                    return Ok(Err(TenancyError::NoSuchTenant(name)));
                };
                let used: Demand = tx
                    .get_json(&tenancy::usage_key(&name))
                    .await?
                    .unwrap_or_default();
                Ok(Ok((rec, used)))
            })
        })
        .await??)
}

pub async fn read(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = tenant_name(&ctx)?;
    let (rec, used) = load(&ctx, &name).await?;
    Ok(Reply::Data(tenant_json(&rec, &used)))
}

/// `PUT /api/v1/tenants/{tenant}`.
pub static UPDATE: Endpoint = Endpoint {
    method: Method::Put,
    params: ParamSchema(&[
        TENANT,
        COMMENT,
        QUOTA_PARAMS[0],
        QUOTA_PARAMS[1],
        QUOTA_PARAMS[2],
        QUOTA_PARAMS[3],
        QUOTA_PARAMS[4],
        QUOTA_PARAMS[5],
    ]),
    privilege: ADMIN,
    description: "Change a tenant's comment and quotas (resources not named keep theirs).",
};

async fn change(ctx: &Ctx, name: &str) -> Result<(), ApiError> {
    let (mut rec, _) = load(ctx, name).await?;
    let before = rec.clone();
    if let Some(c) = ctx.params.str("comment") {
        rec.comment = c.to_string();
    }
    quota_changes(ctx, &mut rec.quota)?;
    // Compare-and-set on the record read: a concurrent change makes this one fail
    // instead of silently overwriting it.
    let name = name.to_string();
    ctx.state
        .store
        .transact(|tx| {
            let (name, rec, before) = (name.clone(), rec.clone(), before.clone());
            Box::pin(async move {
                let now = tx
                    .get_json::<TenantRecord>(&tenancy::tenant_key(&name))
                    .await?;
                if now.as_ref() == Some(&rec) {
                    return Ok(Ok(()));
                }
                if now.as_ref() != Some(&before) {
                    return Ok(Err(TenancyError::Conflict(format!(
                        "tenant '{name}' was changed by another request; retry"
                    ))));
                }
                tx.put_json(&tenancy::tenant_key(&name), &rec)?;
                Ok(Ok(()))
            })
        })
        .await??;
    Ok(())
}

pub async fn update(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = tenant_name(&ctx)?;
    change(&ctx, &name).await?;
    Ok(Reply::Data(Value::Null))
}

/// `DELETE /api/v1/tenants/{tenant}`.
pub const DELETE: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[TENANT]),
    privilege: ADMIN,
    description: "Delete a tenant and its pool; refused, naming what, while it owns VMs, vClusters, namespaces, usage or bound users.",
};

pub async fn delete(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = tenant_name(&ctx)?;
    ctx.state
        .store
        .transact(|tx| {
            let name = name.clone();
            Box::pin(async move {
                if !tenancy::tenant_exists(tx, &name).await.map_err(store_of)? {
                    return Ok(Err(TenancyError::NoSuchTenant(name)));
                }
                let owned = owned(tx, &name).await?;
                if !owned.is_empty() {
                    return Ok(Err(TenancyError::NotEmpty {
                        tenant: name,
                        what: owned.join(", "),
                    }));
                }
                tx.clear(&tenancy::tenant_key(&name));
                tx.clear(&tenancy::usage_key(&name));
                Ok(Ok(()))
            })
        })
        .await??;
    // The pool goes after the tenant: a crash in between leaves an empty pool, harmless.
    match RbacDb::new(ctx.state.store.clone())
        .delete_pool(&name)
        .await
    {
        Ok(()) | Err(RbacDbError::NoSuchPool(_)) => {}
        Err(RbacDbError::PoolNotEmpty(p)) => {
            return Err(ApiError::Conflict(format!(
                "tenant '{name}' was deleted but its pool '{p}' still has members (added after the check); remove them and delete the pool"
            )));
        }
        Err(e) => return Err(ApiError::Internal(e.to_string())),
    }
    Ok(Reply::Data(Value::Null))
}

fn store_of(e: TenancyError) -> gpve_store::StoreError {
    match e {
        TenancyError::Store(s) => s,
        other => gpve_store::StoreError::Aborted(Box::new(other)),
    }
}

/// What a tenant still owns, as phrases ("2 VMs (101, 102)").
async fn owned(
    tx: &mut gpve_store::Txn,
    name: &str,
) -> Result<Vec<String>, gpve_store::StoreError> {
    let mut out = Vec::new();
    let charges: Vec<(Key, Charge)> = tx
        .list_json(&Key::prefix(&(store_keys::CHARGES,)), RangeOptions::all())
        .await?;
    let vms: Vec<String> = charges
        .iter()
        .filter(|(_, c)| c.tenant == name)
        .filter_map(|(k, _)| k.unpack::<(String, u32)>().ok().map(|(_, v)| v.to_string()))
        .collect();
    let pool: Option<PoolRecord> = tx.get_json(&Key::pack(&("pools", name))).await?;
    let members: Vec<String> = pool
        .map(|p| {
            p.vms
                .iter()
                .map(u32::to_string)
                .chain(p.storage.iter().map(|s| format!("storage {s}")))
                .collect()
        })
        .unwrap_or_default();
    if !vms.is_empty() {
        out.push(format!("{} VMs ({})", vms.len(), vms.join(", ")));
    } else if !members.is_empty() {
        out.push(format!("pool members ({})", members.join(", ")));
    }
    let namespaces = tenant_namespaces(tx, name).await?;
    if !namespaces.is_empty() {
        out.push(format!(
            "{} namespaces ({})",
            namespaces.len(),
            namespaces
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let used: Demand = tx
        .get_json(&tenancy::usage_key(name))
        .await?
        .unwrap_or_default();
    // The vCluster records (`("vclusters", tenant, name)`, api/src/vcluster).
    let vcs: Vec<String> = tx
        .get_prefix(
            &Key::prefix(&(VCLUSTER_SUBSPACE, name)),
            RangeOptions::all(),
        )
        .await?
        .into_iter()
        .filter_map(|(k, _)| {
            k.unpack::<(String, String, String)>()
                .ok()
                .map(|(_, _, n)| n)
        })
        .collect();
    if !vcs.is_empty() {
        out.push(format!("{} vClusters ({})", vcs.len(), vcs.join(", ")));
    } else if used.vclusters > 0 {
        out.push(format!("{} vClusters", used.vclusters));
    }
    if vms.is_empty() && vcs.is_empty() && used.vclusters == 0 && !used.is_zero() {
        out.push(format!(
            "usage not yet released ({})",
            serde_json::to_string(&used).unwrap_or_default()
        ));
    }
    let users = tenant_users(tx, name).await?;
    if !users.is_empty() {
        out.push(format!(
            "{} bound users ({})",
            users.len(),
            users.join(", ")
        ));
    }
    Ok(out)
}

async fn tenant_namespaces(
    tx: &mut gpve_store::Txn,
    name: &str,
) -> Result<Vec<NamespaceRecord>, gpve_store::StoreError> {
    let rows: Vec<(Key, NamespaceRecord)> = tx
        .list_json(&Key::prefix(&(NAMESPACE_SUBSPACE,)), RangeOptions::all())
        .await?;
    Ok(rows
        .into_iter()
        .map(|(_, n)| n)
        .filter(|n| n.tenant.as_deref() == Some(name))
        .collect())
}

async fn tenant_users(
    tx: &mut gpve_store::Txn,
    name: &str,
) -> Result<Vec<String>, gpve_store::StoreError> {
    let rows: Vec<(Key, String)> = tx
        .list_json(&Key::prefix(&(store_keys::USERS,)), RangeOptions::all())
        .await?;
    Ok(rows
        .into_iter()
        .filter(|(_, t)| t == name)
        .filter_map(|(k, _)| k.unpack::<(String, String)>().ok().map(|(_, u)| u))
        .collect())
}

/// `GET /api/v1/tenants/{tenant}/quota`.
pub const QUOTA_GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[TENANT]),
    privilege: AUDIT,
    description: "A tenant's quotas per resource: requests, limits, overcommit and the resulting allowed amount.",
};

pub async fn quota_get(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = tenant_name(&ctx)?;
    let (rec, _) = load(&ctx, &name).await?;
    let out: BTreeMap<&str, Value> = Resource::ALL
        .iter()
        .map(|r| {
            let mut v = quota_json(rec.quota.get(*r));
            v["unit"] = json!(r.unit());
            (r.name(), v)
        })
        .collect();
    Ok(Reply::Data(json!(out)))
}

/// `PUT /api/v1/tenants/{tenant}/quota`.
pub static QUOTA_SET: Endpoint = Endpoint {
    method: Method::Put,
    params: ParamSchema(&[
        TENANT,
        QUOTA_PARAMS[0],
        QUOTA_PARAMS[1],
        QUOTA_PARAMS[2],
        QUOTA_PARAMS[3],
        QUOTA_PARAMS[4],
        QUOTA_PARAMS[5],
    ]),
    privilege: ADMIN,
    description: "Set quotas: per resource a property string requests=N,limits=N,overcommit=F ('none' clears). Lowering below the usage refuses further growth, it takes nothing away.",
};

pub async fn quota_set(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = tenant_name(&ctx)?;
    if !Resource::ALL.iter().any(|r| ctx.params.has(r.name())) {
        return Err(ApiError::BadRequest(
            "name at least one resource: vcpus, memory, disk, vms, vclusters, gpus".into(),
        ));
    }
    change(&ctx, &name).await?;
    Ok(Reply::Data(Value::Null))
}

/// `GET /api/v1/tenants/{tenant}/usage`.
pub const USAGE: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[TENANT]),
    privilege: AUDIT,
    description: "A tenant's usage per resource, with what its quotas leave.",
};

pub async fn usage(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = tenant_name(&ctx)?;
    let (rec, used) = load(&ctx, &name).await?;
    Ok(Reply::Data(resources_json(&rec, &used)))
}

/// `GET /api/v1/tenants/{tenant}/namespaces`.
pub const NS_LIST: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[TENANT]),
    privilege: AUDIT,
    description: "The namespaces a tenant owns.",
};

/// What a tenant has of one kind, as list items (one snapshot); 404 for no tenant.
#[derive(Clone, Copy)]
enum Owned {
    Namespaces,
    Users,
}

async fn owned_items(ctx: &Ctx, kind: Owned) -> Result<Reply, ApiError> {
    let name = tenant_name(ctx)?;
    load(ctx, &name).await?;
    let items = ctx
        .state
        .store
        .transact(|tx| {
            let name = name.clone();
            Box::pin(async move {
                Ok(match kind {
                    Owned::Namespaces => tenant_namespaces(tx, &name)
                        .await?
                        .iter()
                        .map(|n| json!({"namespace": n.name, "created_at_s": n.created_at_s}))
                        .collect::<Vec<_>>(),
                    Owned::Users => tenant_users(tx, &name)
                        .await?
                        .iter()
                        .map(|u| json!({"userid": u}))
                        .collect(),
                })
            })
        })
        .await?;
    Ok(Reply::Data(Value::Array(items)))
}

pub async fn ns_list(ctx: Ctx) -> Result<Reply, ApiError> {
    owned_items(&ctx, Owned::Namespaces).await
}

/// `POST /api/v1/tenants/{tenant}/namespaces`.
pub const NS_ATTACH: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        TENANT,
        Param::string("namespace", MAX_NAMESPACE_BYTES, Some(Format::Text)),
    ]),
    privilege: Privilege::Perm("/pool/{tenant}", &["VM.Allocate"]),
    description: "Create a namespace owned by the tenant, or attach an existing one that no tenant owns and that holds no VMs.",
};

fn valid_namespace(ns: &str) -> bool {
    // The DNS-label rule the declarative API uses for namespaces.
    !ns.is_empty()
        && ns.len() <= MAX_NAMESPACE_BYTES
        && ns
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !ns.starts_with('-')
        && !ns.ends_with('-')
}

pub async fn ns_attach(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = tenant_name(&ctx)?;
    let ns = ctx.str("namespace")?.to_string();
    if !valid_namespace(&ns) {
        return Err(ApiError::param(
            "namespace",
            "use lowercase letters, digits and '-' (a DNS label)",
        ));
    }
    ctx.state
        .store
        .transact(|tx| {
            let (name, ns) = (name.clone(), ns.clone());
            Box::pin(async move {
                if !tenancy::tenant_exists(tx, &name).await.map_err(store_of)? {
                    return Ok(Err(TenancyError::NoSuchTenant(name)));
                }
                let key = namespace_key(&ns);
                let rec = match tx.get_json::<NamespaceRecord>(&key).await? {
                    None => NamespaceRecord {
                        name: ns.clone(),
                        created_at_s: now_s(),
                        tenant: Some(name.clone()),
                    },
                    Some(n) if n.tenant.as_deref() == Some(name.as_str()) => return Ok(Ok(())),
                    Some(n) if n.tenant.is_some() => {
                        return Ok(Err(TenancyError::Conflict(format!(
                            "namespace '{ns}' belongs to another tenant"
                        ))));
                    }
                    Some(mut n) => {
                        // Its VMs count against no tenant: attaching would leave them
                        // uncharged inside a tenant's namespace.
                        let vms = tx
                            .get_prefix(
                                &crate::v1::virtualmachines::mapping::binding_prefix(&ns),
                                RangeOptions::limit(1),
                            )
                            .await?;
                        if !vms.is_empty() {
                            return Ok(Err(TenancyError::Conflict(format!(
                                "namespace '{ns}' already holds VMs that count against no tenant; attach an empty namespace"
                            ))));
                        }
                        n.tenant = Some(name.clone());
                        n
                    }
                };
                tx.put_json(&key, &rec)?;
                Ok(Ok(()))
            })
        })
        .await??;
    Ok(Reply::Data(Value::Null))
}

/// `GET /api/v1/tenants/{tenant}/users`.
pub const USERS_LIST: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[TENANT]),
    privilege: AUDIT,
    description: "The users bound to a tenant.",
};

pub async fn users_list(ctx: Ctx) -> Result<Reply, ApiError> {
    owned_items(&ctx, Owned::Users).await
}

/// `POST /api/v1/tenants/{tenant}/users`.
pub const USER_BIND: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[TENANT, Param::userid()]),
    privilege: ADMIN,
    description: "Bind a user to the tenant (admins only): the user's creates then land in this tenant and count against its quotas. A user is bound to at most one tenant.",
};

pub async fn user_bind(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = tenant_name(&ctx)?;
    let userid = ctx.str("userid")?.to_string();
    ctx.state.access.user(&userid).await?;
    ctx.state
        .store
        .transact(|tx| {
            let (name, userid) = (name.clone(), userid.clone());
            Box::pin(async move {
                if !tenancy::tenant_exists(tx, &name).await.map_err(store_of)? {
                    return Ok(Err(TenancyError::NoSuchTenant(name)));
                }
                match tx.get_json::<String>(&tenancy::user_key(&userid)).await? {
                    Some(t) if t == name => return Ok(Ok(())),
                    Some(t) => {
                        return Ok(Err(TenancyError::Conflict(format!(
                            "user '{userid}' is bound to tenant '{t}'; unbind it there first"
                        ))));
                    }
                    None => {}
                }
                tx.put_json(&tenancy::user_key(&userid), &name)?;
                Ok(Ok(()))
            })
        })
        .await??;
    Ok(Reply::Data(Value::Null))
}

/// `DELETE /api/v1/tenants/{tenant}/users/{userid}`.
pub const USER_UNBIND: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[TENANT, Param::userid()]),
    privilege: ADMIN,
    description: "Unbind a user from the tenant.",
};

pub async fn user_unbind(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = tenant_name(&ctx)?;
    let userid = ctx.str("userid")?.to_string();
    ctx.state
        .store
        .transact(|tx| {
            let (name, userid) = (name.clone(), userid.clone());
            Box::pin(async move {
                match tx.get_json::<String>(&tenancy::user_key(&userid)).await? {
                    Some(t) if t == name => {
                        tx.clear(&tenancy::user_key(&userid));
                        Ok(Ok(()))
                    }
                    _ => Ok(Err(TenancyError::Conflict(format!(
                        "user '{userid}' is not bound to tenant '{name}'"
                    )))),
                }
            })
        })
        .await??;
    Ok(Reply::Data(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_property_strings_parse_and_refuse_nonsense() {
        let mut q = ResourceQuota::default();
        parse_quota_prop(
            Resource::Memory,
            "requests=8192,limits=16384,overcommit=1.5",
            &mut q,
        )
        .unwrap();
        assert_eq!(q.requests, Some(8192));
        assert_eq!(q.limits, Some(16384));
        assert_eq!(q.cap(), Some(12288));
        parse_quota_prop(Resource::Memory, "limits=none", &mut q).unwrap();
        assert_eq!(q.limits, None);
        for bad in [
            "requests=-1",
            "requests=8,limits=4",
            "overcommit=0",
            "cpu=3",
            "8",
        ] {
            let mut q = ResourceQuota::default();
            assert!(
                parse_quota_prop(Resource::Vcpus, bad, &mut q).is_err(),
                "{bad} accepted"
            );
        }
        parse_quota_prop(Resource::Vms, "", &mut q).unwrap();
        assert_eq!(q, ResourceQuota::default());
    }
}
