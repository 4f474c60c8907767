//! `/pools` and `/pools/{poolid}`: resource pools. ACL entries on `/pool/{pool}` apply to
//! the pool's VMs (`/vms/{vmid}`) and storages (`/storage/{id}`) too.

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::pve::access::{ident, split_list};
use crate::rbac::db::{PoolRecord, RbacDb};
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply, Routes, endpoint};
use crate::schema::{Format, Param, ParamSchema};

const POOLID: Param = Param::string("poolid", 64, Some(Format::GroupList));
const COMMENT: Param = Param::string("comment", 2048, Some(Format::Text)).opt();
const UPDATE_PARAMS: &[Param] = &[
    POOLID,
    COMMENT,
    Param::string("vms", 4096, Some(Format::VmidList)).opt(),
    Param::string("storage", 4096, Some(Format::GroupList)).opt(),
    Param::boolean("delete").opt(),
    Param::boolean("allow-move").opt(),
];

/// Every `/pools` route.
pub fn router() -> Routes {
    Routes::new()
        .route(
            "/pools",
            endpoint(&LIST, list)
                .merge(endpoint(&CREATE, create))
                .merge(endpoint(&UPDATE, update))
                .merge(endpoint(&DELETE, delete)),
        )
        .route(
            "/pools/{poolid}",
            endpoint(&READ, read)
                .merge(endpoint(&UPDATE_ONE, update))
                .merge(endpoint(&DELETE_ONE, delete)),
        )
}

fn members(p: &PoolRecord, node: &str) -> Value {
    let mut m: Vec<Value> = p
        .vms
        .iter()
        .map(|v| json!({"id": format!("qemu/{v}"), "type": "qemu", "vmid": v, "node": node}))
        .collect();
    m.extend(p.storage.iter().map(
        |s| json!({"id": format!("storage/{node}/{s}"), "type": "storage", "storage": s, "node": node}),
    ));
    Value::Array(m)
}

/// `GET /pools`.
pub const LIST: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[POOLID.opt()]),
    privilege: Privilege::User,
    description: "List pools or get pool configuration.",
};

/// Pools with `Pool.Audit` on `/pool/{pool}`; with `poolid`, that pool with its members.
pub async fn list(ctx: Ctx) -> Result<Reply, ApiError> {
    let rbac = RbacDb::new(ctx.state.store.clone());
    let node = &ctx.state.config.node_name;
    let mut out = Vec::new();
    for p in rbac.pools().await? {
        if let Some(want) = ctx.params.str("poolid")
            && want != p.poolid
        {
            continue;
        }
        if !ctx
            .allowed(&format!("/pool/{}", p.poolid), &["Pool.Audit"])
            .await?
        {
            continue;
        }
        let mut e = json!({"poolid": p.poolid, "comment": p.comment});
        if ctx.params.has("poolid") {
            e["members"] = members(&p, node);
        }
        out.push(e);
    }
    Ok(Reply::Data(Value::Array(out)))
}

/// `POST /pools`.
pub const CREATE: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[POOLID, COMMENT]),
    privilege: Privilege::Perm("/pool/{poolid}", &["Pool.Allocate"]),
    description: "Create new pool.",
};

pub async fn create(ctx: Ctx) -> Result<Reply, ApiError> {
    let p = ident(&ctx, "poolid")?;
    RbacDb::new(ctx.state.store.clone())
        .create_pool(p, ctx.params.str("comment").unwrap_or(""))
        .await?;
    Ok(Reply::Data(Value::Null))
}

/// `GET /pools/{poolid}`.
pub const READ: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[POOLID]),
    privilege: Privilege::Perm("/pool/{poolid}", &["Pool.Audit"]),
    description: "Get pool configuration (deprecated, no support for nested pools).",
};

pub async fn read(ctx: Ctx) -> Result<Reply, ApiError> {
    let p = ident(&ctx, "poolid")?;
    let rec = RbacDb::new(ctx.state.store.clone()).pool(p).await?;
    Ok(Reply::Data(json!({
        "comment": rec.comment,
        "members": members(&rec, &ctx.state.config.node_name),
    })))
}

/// `PUT /pools`.
pub const UPDATE: Endpoint = Endpoint {
    method: Method::Put,
    params: ParamSchema(UPDATE_PARAMS),
    privilege: Privilege::Perm("/pool/{poolid}", &["Pool.Allocate"]),
    description: "Update pool.",
};

/// `PUT /pools/{poolid}` (deprecated form).
pub const UPDATE_ONE: Endpoint = Endpoint {
    method: Method::Put,
    params: ParamSchema(UPDATE_PARAMS),
    privilege: Privilege::Perm("/pool/{poolid}", &["Pool.Allocate"]),
    description: "Update pool data (deprecated, no support for nested pools).",
};

/// Add or remove members; the caller also needs `Permissions.Modify` on each member, since
/// membership grants the pool's ACL on it.
pub async fn update(ctx: Ctx) -> Result<Reply, ApiError> {
    let p = ident(&ctx, "poolid")?;
    let mut vms = Vec::new();
    for v in split_list(ctx.params.str("vms").unwrap_or("")) {
        let id: u32 = v
            .parse()
            .map_err(|_| ApiError::param("vms", format!("invalid VMID '{v}'")))?;
        ctx.require(&format!("/vms/{id}"), &["Permissions.Modify"])
            .await?;
        vms.push(id);
    }
    let storage = split_list(ctx.params.str("storage").unwrap_or(""));
    for s in &storage {
        ctx.require(&format!("/storage/{s}"), &["Permissions.Modify"])
            .await?;
    }
    let delete = ctx.params.bool("delete").unwrap_or(false);
    check_members(&ctx, p, &vms, &storage, delete).await?;
    RbacDb::new(ctx.state.store.clone())
        .update_pool(
            p,
            ctx.params.str("comment").map(str::to_string),
            vms,
            storage,
            delete,
            ctx.params.bool("allow-move").unwrap_or(false),
        )
        .await?;
    Ok(Reply::Data(Value::Null))
}

/// Members must exist (when added), and VM membership of a tenant's pool follows the
/// tenant's accounting only: a VM joins it by create or clone with `pool=`, and leaves it
/// by being destroyed, so a charge never disagrees with the pool.
async fn check_members(
    ctx: &Ctx,
    pool: &str,
    vms: &[u32],
    storage: &[String],
    delete: bool,
) -> Result<(), ApiError> {
    let store = &ctx.state.store;
    if !vms.is_empty()
        && store
            .get(&crate::tenancy::tenant_key(pool))
            .await?
            .is_some()
    {
        return Err(ApiError::param(
            "vms",
            format!(
                "pool '{pool}' belongs to tenant '{pool}': VMs join it by create or clone with pool={pool}"
            ),
        ));
    }
    for v in vms {
        if let Some(t) = crate::tenancy::vm::vm_tenant(store, *v).await? {
            return Err(ApiError::param(
                "vms",
                format!("VM {v} counts against tenant '{t}': it stays in that tenant's pool"),
            ));
        }
        if !delete && gpve_actors::vm::load_entry(store, *v).await?.is_none() {
            return Err(ApiError::param("vms", format!("VM {v} does not exist")));
        }
    }
    if !delete {
        for s in storage {
            match gpve_actors::storage::config::get(store, s).await {
                Ok(_) => {}
                Err(gpve_actors::storage::StorageConfigError::NotFound(_)) => {
                    return Err(ApiError::param(
                        "storage",
                        format!("storage '{s}' does not exist"),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// `DELETE /pools`.
pub const DELETE: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[POOLID]),
    privilege: Privilege::Perm("/pool/{poolid}", &["Pool.Allocate"]),
    description: "Delete pool.",
};

/// `DELETE /pools/{poolid}` (deprecated form).
pub const DELETE_ONE: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[POOLID]),
    privilege: Privilege::Perm("/pool/{poolid}", &["Pool.Allocate"]),
    description: "Delete pool (deprecated, no support for nested pools).",
};

/// Delete an empty pool.
pub async fn delete(ctx: Ctx) -> Result<Reply, ApiError> {
    let p = ident(&ctx, "poolid")?;
    if ctx
        .state
        .store
        .get(&crate::tenancy::tenant_key(p))
        .await?
        .is_some()
    {
        return Err(ApiError::Conflict(format!(
            "pool '{p}' belongs to tenant '{p}': delete the tenant instead"
        )));
    }
    RbacDb::new(ctx.state.store.clone()).delete_pool(p).await?;
    Ok(Reply::Data(Value::Null))
}
