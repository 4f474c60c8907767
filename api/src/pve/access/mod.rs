//! `/access`: authentication, users, API tokens, groups, roles, ACLs, effective permissions
//! and passwords.

pub mod acl;
pub mod groups;
pub mod password;
pub mod permissions;
pub mod roles;
pub mod ticket;
pub mod tokens;
pub mod users;

use crate::error::ApiError;
use crate::rbac::RbacError;
use crate::rbac::db::RbacDbError;
use crate::router::{Ctx, Routes, endpoint};

/// The `/access` routes added with RBAC (ticket, users and tokens are registered in
/// [`crate::pve::router`]).
pub fn router() -> Routes {
    Routes::new()
        .route(
            "/access/groups",
            endpoint(&groups::LIST, groups::list).merge(endpoint(&groups::CREATE, groups::create)),
        )
        .route(
            "/access/groups/{groupid}",
            endpoint(&groups::READ, groups::read)
                .merge(endpoint(&groups::UPDATE, groups::update))
                .merge(endpoint(&groups::DELETE, groups::delete)),
        )
        .route(
            "/access/roles",
            endpoint(&roles::LIST, roles::list).merge(endpoint(&roles::CREATE, roles::create)),
        )
        .route(
            "/access/roles/{roleid}",
            endpoint(&roles::READ, roles::read)
                .merge(endpoint(&roles::UPDATE, roles::update))
                .merge(endpoint(&roles::DELETE, roles::delete)),
        )
        .route(
            "/access/acl",
            endpoint(&acl::LIST, acl::list).merge(endpoint(&acl::UPDATE, acl::update)),
        )
        .route(
            "/access/permissions",
            endpoint(&permissions::GET, permissions::get),
        )
        .route("/access/password", endpoint(&password::PUT, password::put))
}

/// A single Proxmox identifier parameter (`pve-groupid`, `pve-roleid`, `pve-poolid`):
/// `[A-Za-z0-9.\-_]+`, at most 64 bytes.
pub fn ident<'a>(ctx: &'a Ctx, name: &str) -> Result<&'a str, ApiError> {
    let v = ctx.str(name)?;
    if v.is_empty()
        || v.len() > 64
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(ApiError::param(
            name,
            "value must be letters, digits, '.', '-' or '_' (at most 64)",
        ));
    }
    Ok(v)
}

/// Split a Proxmox list parameter (`a,b c;d`).
pub fn split_list(s: &str) -> Vec<String> {
    s.split([',', ';', ' '])
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

impl From<RbacDbError> for ApiError {
    fn from(e: RbacDbError) -> Self {
        use RbacDbError as D;
        match e {
            D::NoSuchGroup(_) | D::NoSuchPool(_) | D::NoSuchUser(_) | D::NoSuchToken(_) => {
                ApiError::NotFound(e.to_string())
            }
            D::Rbac(RbacError::NoSuchRole(_)) => ApiError::NotFound(e.to_string()),
            D::GroupExists(_)
            | D::RoleExists(_)
            | D::PoolExists(_)
            | D::PoolNotEmpty(_)
            | D::VmInPool { .. } => ApiError::Conflict(e.to_string()),
            D::Rbac(RbacError::UnknownPrivilege(_)) => ApiError::param("privs", e.to_string()),
            D::Rbac(RbacError::InvalidPath(_)) => ApiError::param("path", e.to_string()),
            D::Rbac(RbacError::BuiltinRole(_)) => ApiError::BadRequest(e.to_string()),
            D::Store(_) => ApiError::Internal(e.to_string()),
        }
    }
}
