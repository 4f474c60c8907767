//! `/access/acl`: list and change ACL entries.
//!
//! Escalation is refused: changing entries on a path needs `Permissions.Modify` there, and
//! a role can only be granted by a caller who holds every privilege of that role on that
//! path (so neither a user nor its token can hand out more than it has).

use serde_json::{Value, json};

use super::split_list;
use crate::error::ApiError;
use crate::rbac::db::{AclChange, RbacDb, UgType, acl_rows};
use crate::rbac::{Privs, normalize_path};
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply, bool01};
use crate::schema::{Format, Param, ParamSchema};

/// `GET /access/acl`.
pub const LIST: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[]),
    privilege: Privilege::User,
    description: "Get Access Control List (ACLs).",
};

/// Entries on paths where the caller may modify or audit permissions.
pub async fn list(ctx: Ctx) -> Result<Reply, ApiError> {
    let cfg = RbacDb::new(ctx.state.store.clone()).config().await?;
    let mut out = Vec::new();
    for (path, ug, id, role, propagate) in acl_rows(&cfg.acl) {
        if !ctx
            .allowed_any(&path, &["Permissions.Modify", "Sys.Audit"])
            .await?
        {
            continue;
        }
        out.push(json!({
            "path": path,
            "type": ug.as_str(),
            "ugid": id,
            "roleid": role,
            "propagate": bool01(propagate),
        }));
    }
    Ok(Reply::Data(Value::Array(out)))
}

/// `PUT /access/acl`.
pub const UPDATE: Endpoint = Endpoint {
    method: Method::Put,
    params: ParamSchema(&[
        Param::string("path", 512, Some(Format::Text)),
        Param::string("roles", 4096, Some(Format::GroupList)),
        Param::string("users", 4096, Some(Format::Text)).opt(),
        Param::string("groups", 4096, Some(Format::GroupList)).opt(),
        Param::string("tokens", 4096, Some(Format::Text)).opt(),
        Param::boolean("propagate").opt(),
        Param::boolean("delete").opt(),
    ]),
    privilege: Privilege::Perm("{+path}", &["Permissions.Modify"]),
    description: "Update Access Control List (add or remove permissions).",
};

/// Add or remove entries.
pub async fn update(ctx: Ctx) -> Result<Reply, ApiError> {
    let path =
        normalize_path(ctx.str("path")?).map_err(|e| ApiError::param("path", e.to_string()))?;
    let roles = split_list(ctx.str("roles")?);
    let mut subjects = Vec::new();
    for u in split_list(ctx.params.str("users").unwrap_or("")) {
        if !crate::schema::is_userid(&u) {
            return Err(ApiError::param("users", format!("invalid user id '{u}'")));
        }
        subjects.push((UgType::User, u));
    }
    for g in split_list(ctx.params.str("groups").unwrap_or("")) {
        subjects.push((UgType::Group, g));
    }
    for t in split_list(ctx.params.str("tokens").unwrap_or("")) {
        let valid = t
            .split_once('!')
            .is_some_and(|(u, id)| crate::schema::is_userid(u) && crate::schema::is_tokenid(id));
        if !valid {
            return Err(ApiError::param("tokens", format!("invalid token id '{t}'")));
        }
        subjects.push((UgType::Token, t));
    }
    if subjects.is_empty() {
        return Err(ApiError::param(
            "users",
            "name at least one of users, groups or tokens",
        ));
    }
    let delete = ctx.params.bool("delete").unwrap_or(false);
    let rbac = RbacDb::new(ctx.state.store.clone());
    if !delete {
        let cfg = rbac.config().await?;
        let have = match &ctx.authz {
            Some(a) => a
                .privileges(&path)
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?,
            None => Privs::NONE,
        };
        for r in &roles {
            let Some(want) = cfg.roles.get(r) else {
                return Err(ApiError::NotFound(format!("no such role '{r}'")));
            };
            if !have.contains(*want) {
                tracing::warn!(by = ctx.userid()?, %path, role = %r, "refused ACL change above the caller's own privileges");
                return Err(ApiError::Forbidden);
            }
        }
    }
    rbac.change_acl(AclChange {
        path,
        roles,
        subjects,
        propagate: ctx.params.bool("propagate").unwrap_or(true),
        delete,
    })
    .await?;
    Ok(Reply::Data(Value::Null))
}
