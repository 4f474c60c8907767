//! `/access/permissions`: the effective privileges of the caller (or of another user or
//! token, for callers with `Sys.Audit` on `/access`).

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::rbac::db::principal_for;
use crate::rbac::{Principal, normalize_path};
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::{Format, Param, ParamSchema};

/// Paths always reported when no `path` is asked for.
const STANDARD_PATHS: &[&str] = &[
    "/",
    "/access",
    "/access/groups",
    "/nodes",
    "/pool",
    "/sdn",
    "/storage",
    "/vms",
];

/// `GET /access/permissions`.
pub const GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[
        Param::string("path", 512, Some(Format::Text)).opt(),
        Param::string("userid", 128, Some(Format::Text)).opt(),
    ]),
    privilege: Privilege::User,
    description: "Retrieve effective permissions of given user/token.",
};

/// `{path: {privilege: 1}}` for the asked path, or for every ACL path plus the standard
/// ones.
pub async fn get(ctx: Ctx) -> Result<Reply, ApiError> {
    let authz = ctx.authz.as_ref().ok_or(ApiError::Unauthorized)?;
    let (cfg, me) = authz
        .snapshot()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let superuser = authz.is_superuser();
    let principal = match ctx.params.str("userid") {
        None => None,
        Some(id) => {
            let own = id == me.userid() || id.starts_with(&format!("{}!", me.userid()));
            let is_me = match &me {
                Principal::User { userid, .. } => id == userid,
                Principal::Token {
                    userid, tokenid, ..
                } => id == format!("{userid}!{tokenid}"),
            };
            if !(is_me || own && matches!(me, Principal::User { .. })) {
                ctx.require("/access", &["Sys.Audit"]).await?;
            }
            if is_me {
                None
            } else {
                Some(principal_for(&ctx.state.store, id).await?)
            }
        }
    };
    let paths: BTreeSet<String> = match ctx.params.str("path") {
        Some(p) => [normalize_path(p).map_err(|e| ApiError::param("path", e.to_string()))?]
            .into_iter()
            .collect(),
        None => cfg
            .acl
            .keys()
            .cloned()
            .chain(STANDARD_PATHS.iter().map(|s| s.to_string()))
            .collect(),
    };
    let mut out = Map::new();
    for path in paths {
        let privs = match &principal {
            Some(p) => cfg.privileges(p, &path),
            None if superuser => crate::rbac::Privs::all(),
            None => cfg.privileges(&me, &path),
        };
        if privs.is_empty() {
            continue;
        }
        let m: Map<String, Value> = privs
            .names()
            .into_iter()
            .map(|n| (n.to_string(), json!(1)))
            .collect();
        out.insert(path, Value::Object(m));
    }
    Ok(Reply::Data(Value::Object(out)))
}
