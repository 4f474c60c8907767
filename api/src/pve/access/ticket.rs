//! `/access/ticket`: log in (or renew a ticket) and get a `PVEAuthCookie` ticket plus a
//! `CSRFPreventionToken`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::{Format, Param, ParamSchema};
use crate::state::now_s;

/// `GET /access/ticket`: empty, as Proxmox (the GUI uses it to probe).
pub const GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[]),
    privilege: Privilege::World,
    description: "Dummy. Useful for formatters which want to provide a login page.",
};

/// Always `null`.
pub async fn get(_ctx: Ctx) -> Result<Reply, ApiError> {
    Ok(Reply::Data(Value::Null))
}

/// `POST /access/ticket`: anyone may try to log in.
pub const POST: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        Param::string("username", 64, None),
        // A ticket is accepted as password (renewal); tickets are longer than passwords.
        Param::string("password", 1024, None),
        Param::string("realm", 32, Some(Format::Realm)).opt(),
        Param::boolean("new-format").opt(),
    ]),
    privilege: Privilege::World,
    description: "Create or verify authentication ticket.",
};

/// Check the credentials; on failure wait `login_failure_delay_ms`, then 401.
pub async fn post(ctx: Ctx) -> Result<Reply, ApiError> {
    let mut userid = ctx.str("username")?.to_string();
    if let Some(realm) = ctx.params.str("realm")
        && !userid.contains('@')
    {
        userid = format!("{userid}@{realm}");
    }
    let password = ctx.str("password")?;
    let state = &ctx.state;
    let now = now_s();
    let user = if crate::schema::is_userid(&userid) {
        state
            .access
            .check_password(&userid, password, &state.key, now)
            .await?
    } else {
        None
    };
    if user.is_none() {
        tracing::info!(user = %userid.chars().take(64).collect::<String>(), "authentication failure");
        tokio::time::sleep(Duration::from_millis(state.config.login_failure_delay_ms)).await;
        return Err(ApiError::Unauthorized);
    }
    let mut data = json!({
        "username": userid,
        "ticket": state.key.ticket(&userid, now),
        "CSRFPreventionToken": state.key.csrf_token(&userid, now),
    });
    if let Some(cluster) = &state.config.cluster_name {
        data["clustername"] = json!(cluster);
    }
    Ok(Reply::Data(data))
}
