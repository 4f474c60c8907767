//! `/access/users/{userid}/token` and `/access/users/{userid}/token/{tokenid}`.

use serde_json::{Value, json};

use crate::access_db::{TokenChanges, TokenRecord};
use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply, bool01};
use crate::schema::{Format, Param, ParamSchema, Params};

const TOKENID: Param = Param::string("tokenid", 64, Some(Format::TokenId));

fn info(t: &TokenRecord) -> Value {
    json!({"comment": t.comment, "expire": t.expire, "privsep": bool01(t.privsep)})
}

fn changes(p: &Params) -> TokenChanges {
    TokenChanges {
        comment: p.str("comment").map(str::to_string),
        expire: p.int("expire"),
        privsep: p.bool("privsep"),
        delete: p
            .str("delete")
            .map(|d| {
                d.split([',', ';', ' '])
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// `GET /access/users/{userid}/token`.
pub const LIST: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::userid()]),
    privilege: Privilege::Or(&[
        Privilege::SelfParam,
        Privilege::Perm("/access/groups", &["User.Modify"]),
    ]),
    description: "Get user API tokens.",
};

/// A user's tokens without secrets.
pub async fn list(ctx: Ctx) -> Result<Reply, ApiError> {
    let tokens = ctx.state.access.list_tokens(ctx.str("userid")?).await?;
    let data = tokens
        .iter()
        .map(|t| {
            let mut v = info(t);
            v["tokenid"] = json!(t.tokenid);
            v
        })
        .collect();
    Ok(Reply::Data(Value::Array(data)))
}

/// `GET /access/users/{userid}/token/{tokenid}`.
pub const READ: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::userid(), TOKENID]),
    privilege: Privilege::Or(&[
        Privilege::SelfParam,
        Privilege::Perm("/access/groups", &["User.Modify"]),
    ]),
    description: "Get specific API token information.",
};

/// One token without its secret.
pub async fn read(ctx: Ctx) -> Result<Reply, ApiError> {
    let t = ctx
        .state
        .access
        .token(ctx.str("userid")?, ctx.str("tokenid")?)
        .await?;
    Ok(Reply::Data(info(&t)))
}

/// `POST /access/users/{userid}/token/{tokenid}`.
pub const CREATE: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        Param::userid(),
        TOKENID,
        Param::string("comment", 2048, None).opt(),
        Param::int("expire", Some(0), None).opt(),
        Param::boolean("privsep").opt(),
    ]),
    privilege: Privilege::Or(&[
        Privilege::SelfParam,
        Privilege::Perm("/access/groups", &["User.Modify"]),
    ]),
    description: "Generate a new API token for a specific user.",
};

/// Create a token; the secret is returned once as `value` and stored only hashed.
pub async fn create(ctx: Ctx) -> Result<Reply, ApiError> {
    let userid = ctx.str("userid")?;
    let tokenid = ctx.str("tokenid")?;
    let (rec, secret) = ctx
        .state
        .access
        .create_token(userid, tokenid, changes(&ctx.params))
        .await?;
    tracing::info!(%userid, %tokenid, by = ctx.userid()?, "API token created");
    Ok(Reply::Data(json!({
        "full-tokenid": format!("{userid}!{tokenid}"),
        "info": info(&rec),
        "value": secret,
    })))
}

/// `PUT /access/users/{userid}/token/{tokenid}`.
pub const UPDATE: Endpoint = Endpoint {
    method: Method::Put,
    params: ParamSchema(&[
        Param::userid(),
        TOKENID,
        Param::string("comment", 2048, None).opt(),
        Param::int("expire", Some(0), None).opt(),
        Param::boolean("privsep").opt(),
        Param::string("delete", 256, Some(Format::ConfigIdList)).opt(),
    ]),
    privilege: Privilege::Or(&[
        Privilege::SelfParam,
        Privilege::Perm("/access/groups", &["User.Modify"]),
    ]),
    description: "Update API token for a specific user.",
};

/// Update a token; returns its new information.
pub async fn update(ctx: Ctx) -> Result<Reply, ApiError> {
    let rec = ctx
        .state
        .access
        .update_token(
            ctx.str("userid")?,
            ctx.str("tokenid")?,
            changes(&ctx.params),
        )
        .await?;
    Ok(Reply::Data(info(&rec)))
}

/// `DELETE /access/users/{userid}/token/{tokenid}`.
pub const DELETE: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[Param::userid(), TOKENID]),
    privilege: Privilege::Or(&[
        Privilege::SelfParam,
        Privilege::Perm("/access/groups", &["User.Modify"]),
    ]),
    description: "Remove API token for a specific user.",
};

/// Delete a token.
pub async fn delete(ctx: Ctx) -> Result<Reply, ApiError> {
    let userid = ctx.str("userid")?;
    let tokenid = ctx.str("tokenid")?;
    ctx.state.access.delete_token(userid, tokenid).await?;
    tracing::info!(%userid, %tokenid, by = ctx.userid()?, "API token deleted");
    Ok(Reply::Data(Value::Null))
}
