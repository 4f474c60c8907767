//! `/access/password`: change a user's password.

use serde_json::Value;

use crate::error::ApiError;
use crate::rbac::ROOT_USER;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::{Param, ParamSchema};

/// Shortest accepted password, in characters (as user creation).
pub const MIN_PASSWORD_CHARS: usize = 5;

/// `PUT /access/password`: users change their own (by ticket); others need
/// `User.Modify` on `/access/groups` and `Realm.AllocateUser` on the user's realm.
pub const PUT: Endpoint = Endpoint {
    method: Method::Put,
    params: ParamSchema(&[
        Param::userid(),
        Param::string("password", 64, None),
        Param::string("confirmation-password", 64, None).opt(),
    ]),
    privilege: Privilege::Or(&[
        Privilege::SelfParam,
        Privilege::Perm("/access/groups", &["User.Modify"]),
    ]),
    description: "Change user password.",
};

pub async fn put(ctx: Ctx) -> Result<Reply, ApiError> {
    let userid = ctx.str("userid")?;
    let caller = ctx.userid()?;
    if userid != caller {
        // Only root changes root's password; others need the realm right too.
        if userid == ROOT_USER {
            return Err(ApiError::Forbidden);
        }
        let realm = userid.rsplit_once('@').map(|(_, r)| r).unwrap_or("");
        ctx.require(&format!("/access/realm/{realm}"), &["Realm.AllocateUser"])
            .await?;
    }
    let pw = ctx.str("password")?;
    if pw.chars().count() < MIN_PASSWORD_CHARS {
        return Err(ApiError::param(
            "password",
            format!("value must be at least {MIN_PASSWORD_CHARS} characters long"),
        ));
    }
    ctx.state.access.set_password(userid, pw).await?;
    tracing::info!(%userid, by = caller, "password changed");
    Ok(Reply::Data(Value::Null))
}
