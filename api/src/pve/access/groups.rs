//! `/access/groups` and `/access/groups/{groupid}`.

use serde_json::{Value, json};

use super::ident;
use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::{Format, Param, ParamSchema};

const GROUPID: Param = Param::string("groupid", 64, Some(Format::GroupList));
const COMMENT: Param = Param::string("comment", 2048, Some(Format::Text)).opt();

/// `GET /access/groups`: the groups the caller may see.
pub const LIST: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[]),
    privilege: Privilege::User,
    description: "Group index.",
};

/// Groups where the caller has `User.Modify`, `Sys.Audit` or `Group.Allocate` on
/// `/access/groups/{group}`, as Proxmox.
pub async fn list(ctx: Ctx) -> Result<Reply, ApiError> {
    let rbac = crate::rbac::db::RbacDb::new(ctx.state.store.clone());
    let mut out = Vec::new();
    for g in rbac.groups().await? {
        let path = format!("/access/groups/{}", g.groupid);
        if !ctx
            .allowed_any(&path, &["User.Modify", "Sys.Audit", "Group.Allocate"])
            .await?
        {
            continue;
        }
        let members = rbac.members(&g.groupid).await?;
        out.push(json!({"groupid": g.groupid, "comment": g.comment, "users": members.join(",")}));
    }
    Ok(Reply::Data(Value::Array(out)))
}

/// `POST /access/groups`.
pub const CREATE: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[GROUPID, COMMENT]),
    privilege: Privilege::Perm("/access/groups", &["Group.Allocate"]),
    description: "Create new group.",
};

pub async fn create(ctx: Ctx) -> Result<Reply, ApiError> {
    let g = ident(&ctx, "groupid")?;
    let rbac = crate::rbac::db::RbacDb::new(ctx.state.store.clone());
    rbac.create_group(g, ctx.params.str("comment").unwrap_or(""))
        .await?;
    Ok(Reply::Data(Value::Null))
}

/// `GET /access/groups/{groupid}`.
pub const READ: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[GROUPID]),
    privilege: Privilege::Any("/access/groups", &["Sys.Audit", "Group.Allocate"]),
    description: "Get group configuration.",
};

pub async fn read(ctx: Ctx) -> Result<Reply, ApiError> {
    let g = ident(&ctx, "groupid")?;
    let rbac = crate::rbac::db::RbacDb::new(ctx.state.store.clone());
    let rec = rbac.group(g).await?;
    let members = rbac.members(g).await?;
    Ok(Reply::Data(
        json!({"comment": rec.comment, "members": members}),
    ))
}

/// `PUT /access/groups/{groupid}`.
pub const UPDATE: Endpoint = Endpoint {
    method: Method::Put,
    params: ParamSchema(&[GROUPID, COMMENT]),
    privilege: Privilege::Perm("/access/groups", &["Group.Allocate"]),
    description: "Update group data.",
};

pub async fn update(ctx: Ctx) -> Result<Reply, ApiError> {
    let g = ident(&ctx, "groupid")?;
    let rbac = crate::rbac::db::RbacDb::new(ctx.state.store.clone());
    rbac.update_group(g, ctx.params.str("comment").unwrap_or(""))
        .await?;
    Ok(Reply::Data(Value::Null))
}

/// `DELETE /access/groups/{groupid}`: also removes its memberships and ACL entries.
pub const DELETE: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[GROUPID]),
    privilege: Privilege::Perm("/access/groups", &["Group.Allocate"]),
    description: "Delete group.",
};

pub async fn delete(ctx: Ctx) -> Result<Reply, ApiError> {
    let g = ident(&ctx, "groupid")?;
    crate::rbac::db::RbacDb::new(ctx.state.store.clone())
        .delete_group(g)
        .await?;
    Ok(Reply::Data(Value::Null))
}
