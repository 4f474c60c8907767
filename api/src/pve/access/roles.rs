//! `/access/roles` and `/access/roles/{roleid}`: built-in roles are read-only.

use serde_json::{Map, Value, json};

use super::{ident, split_list};
use crate::error::ApiError;
use crate::rbac::db::RbacDb;
use crate::rbac::is_builtin_role;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply, bool01};
use crate::schema::{Format, Param, ParamSchema};

const ROLEID: Param = Param::string("roleid", 64, Some(Format::GroupList));
const PRIVS: Param = Param::string("privs", 4096, Some(Format::Text)).opt();

/// `GET /access/roles`.
pub const LIST: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[]),
    privilege: Privilege::User,
    description: "Role index.",
};

/// Every role with its privileges (comma-separated) and whether it is built in.
pub async fn list(ctx: Ctx) -> Result<Reply, ApiError> {
    let cfg = RbacDb::new(ctx.state.store.clone()).config().await?;
    let out = cfg
        .roles
        .iter()
        .map(|(id, privs)| {
            json!({
                "roleid": id,
                "privs": privs.names().join(","),
                "special": bool01(is_builtin_role(id)),
            })
        })
        .collect();
    Ok(Reply::Data(Value::Array(out)))
}

/// `POST /access/roles`.
pub const CREATE: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[ROLEID, PRIVS]),
    privilege: Privilege::Perm("/access", &["Sys.Modify"]),
    description: "Create new role.",
};

pub async fn create(ctx: Ctx) -> Result<Reply, ApiError> {
    let r = ident(&ctx, "roleid")?;
    let privs = split_list(ctx.params.str("privs").unwrap_or(""));
    RbacDb::new(ctx.state.store.clone())
        .put_role(r, &privs, true, false)
        .await?;
    Ok(Reply::Data(Value::Null))
}

/// `GET /access/roles/{roleid}`.
pub const READ: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[ROLEID]),
    privilege: Privilege::User,
    description: "Get role configuration.",
};

/// `{privilege: 1}` for each privilege of the role, as Proxmox.
pub async fn read(ctx: Ctx) -> Result<Reply, ApiError> {
    let r = ident(&ctx, "roleid")?;
    let cfg = RbacDb::new(ctx.state.store.clone()).config().await?;
    let privs = cfg
        .roles
        .get(r)
        .ok_or_else(|| ApiError::NotFound(format!("no such role '{r}'")))?;
    let mut m = Map::new();
    for p in privs.names() {
        m.insert(p.to_string(), json!(1));
    }
    Ok(Reply::Data(Value::Object(m)))
}

/// `PUT /access/roles/{roleid}`.
pub const UPDATE: Endpoint = Endpoint {
    method: Method::Put,
    params: ParamSchema(&[ROLEID, PRIVS, Param::boolean("append").opt()]),
    privilege: Privilege::Perm("/access", &["Sys.Modify"]),
    description: "Update an existing role.",
};

pub async fn update(ctx: Ctx) -> Result<Reply, ApiError> {
    let r = ident(&ctx, "roleid")?;
    let privs = split_list(ctx.params.str("privs").unwrap_or(""));
    let append = ctx.params.bool("append").unwrap_or(false);
    RbacDb::new(ctx.state.store.clone())
        .put_role(r, &privs, false, append)
        .await?;
    Ok(Reply::Data(Value::Null))
}

/// `DELETE /access/roles/{roleid}`: also removes the ACL entries naming it.
pub const DELETE: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[ROLEID]),
    privilege: Privilege::Perm("/access", &["Sys.Modify"]),
    description: "Delete role.",
};

pub async fn delete(ctx: Ctx) -> Result<Reply, ApiError> {
    let r = ident(&ctx, "roleid")?;
    RbacDb::new(ctx.state.store.clone()).delete_role(r).await?;
    Ok(Reply::Data(Value::Null))
}
