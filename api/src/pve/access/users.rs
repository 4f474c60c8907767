//! `/access/users` and `/access/users/{userid}`.

use serde_json::{Map, Value, json};

use crate::access_db::{TokenRecord, UserChanges, UserRecord};
use crate::error::ApiError;
use crate::rbac::db::RbacDb;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply, bool01};
use crate::schema::{Format, Param, ParamSchema, Params};

const USER_FIELDS: [Param; 8] = [
    Param::string("comment", 2048, None).opt(),
    Param::string("email", 254, Some(Format::Email)).opt(),
    Param::boolean("enable").opt(),
    Param::int("expire", Some(0), None).opt(),
    Param::string("firstname", 1024, None).opt(),
    Param::string("lastname", 1024, None).opt(),
    Param::string("groups", 4096, Some(Format::GroupList)).opt(),
    Param::string("keys", 4096, None).opt(),
];

fn changes(p: &Params) -> UserChanges {
    UserChanges {
        enable: p.bool("enable"),
        expire: p.int("expire"),
        firstname: p.str("firstname").map(str::to_string),
        lastname: p.str("lastname").map(str::to_string),
        email: p.str("email").map(str::to_string),
        comment: p.str("comment").map(str::to_string),
        groups: p.str("groups").map(|g| {
            g.split([',', ';', ' '])
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        }),
        append_groups: p.bool("append").unwrap_or(false),
        keys: p.str("keys").map(str::to_string),
    }
}

/// Realms gpve serves: `pam` holds only the built-in `root@pam`; `pve` users are stored
/// in gpve with argon2 password hashes.
const REALMS: &[&str] = &["pam", "pve"];

/// Refuse users outside the known realms, any new `pam` user, and callers without
/// `Realm.AllocateUser` on `/access/realm/{realm}` (Proxmox).
async fn check_realm(ctx: &Ctx, userid: &str) -> Result<(), ApiError> {
    let r = realm(userid);
    if !REALMS.contains(&r) {
        return Err(ApiError::param(
            "userid",
            format!("unknown realm '{r}' (pam, pve)"),
        ));
    }
    if r == "pam" && userid != crate::rbac::ROOT_USER {
        return Err(ApiError::param(
            "userid",
            "the pam realm holds only root@pam; create users in the pve realm",
        ));
    }
    ctx.require(&format!("/access/realm/{r}"), &["Realm.AllocateUser"])
        .await
}

fn realm(userid: &str) -> &str {
    userid.rsplit_once('@').map(|(_, r)| r).unwrap_or("")
}

fn token_info(t: &TokenRecord) -> Value {
    json!({"comment": t.comment, "expire": t.expire, "privsep": bool01(t.privsep)})
}

/// `GET /access/users`.
pub const LIST: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[
        Param::boolean("enabled").opt(),
        Param::boolean("full").opt(),
    ]),
    privilege: Privilege::User,
    description: "User index.",
};

/// List users; `full=1` adds their tokens.
pub async fn list(ctx: Ctx) -> Result<Reply, ApiError> {
    let users = ctx.state.access.list_users().await?;
    let full = ctx.params.bool("full").unwrap_or(false);
    let mut out = Vec::new();
    let me = ctx.userid()?.to_string();
    let see_all = ctx
        .allowed_any("/access/groups", &["User.Modify", "Sys.Audit"])
        .await?;
    for u in users {
        // Proxmox: yourself, and users you may modify or audit (here: on /access/groups
        // or on one of their groups).
        if !see_all && u.userid != me {
            let mut visible = false;
            for g in &u.groups {
                if ctx
                    .allowed_any(
                        &format!("/access/groups/{g}"),
                        &["User.Modify", "Sys.Audit"],
                    )
                    .await?
                {
                    visible = true;
                    break;
                }
            }
            if !visible {
                continue;
            }
        }
        if let Some(enabled) = ctx.params.bool("enabled")
            && u.enable != enabled
        {
            continue;
        }
        let mut e = json!({
            "userid": u.userid,
            "enable": bool01(u.enable),
            "expire": u.expire,
            "firstname": u.firstname,
            "lastname": u.lastname,
            "email": u.email,
            "comment": u.comment,
            "groups": u.groups.join(","),
            "realm-type": realm(&u.userid),
        });
        if full {
            let tokens = ctx.state.access.list_tokens(&u.userid).await?;
            e["tokens"] = Value::Array(
                tokens
                    .iter()
                    .map(|t| {
                        let mut v = token_info(t);
                        v["tokenid"] = json!(t.tokenid);
                        v
                    })
                    .collect(),
            );
        }
        out.push(e);
    }
    Ok(Reply::Data(Value::Array(out)))
}

/// `POST /access/users`.
pub const CREATE: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        Param::userid(),
        Param::string("password", 64, None).opt(),
        USER_FIELDS[0],
        USER_FIELDS[1],
        USER_FIELDS[2],
        USER_FIELDS[3],
        USER_FIELDS[4],
        USER_FIELDS[5],
        USER_FIELDS[6],
        USER_FIELDS[7],
    ]),
    privilege: Privilege::Perm("/access/groups", &["User.Modify"]),
    description: "Create new user.",
};

/// Create a user; acknowledged after the store commit.
pub async fn create(ctx: Ctx) -> Result<Reply, ApiError> {
    let userid = ctx.str("userid")?;
    let password = ctx.params.str("password");
    if let Some(pw) = password
        && pw.len() < 5
    {
        return Err(ApiError::param(
            "password",
            "value must be at least 5 characters long",
        ));
    }
    check_realm(&ctx, userid).await?;
    let changes = changes(&ctx.params);
    if let Some(groups) = &changes.groups {
        RbacDb::new(ctx.state.store.clone())
            .check_groups(groups)
            .await?;
    }
    ctx.state
        .access
        .create_user(userid, password, changes)
        .await?;
    tracing::info!(%userid, by = ctx.userid()?, "user created");
    Ok(Reply::Data(Value::Null))
}

fn user_detail(u: &UserRecord, tokens: &[TokenRecord]) -> Value {
    let mut t = Map::new();
    for tok in tokens {
        t.insert(tok.tokenid.clone(), token_info(tok));
    }
    json!({
        "enable": bool01(u.enable),
        "expire": u.expire,
        "firstname": u.firstname,
        "lastname": u.lastname,
        "email": u.email,
        "comment": u.comment,
        "groups": u.groups,
        "keys": u.keys,
        "tokens": t,
    })
}

/// `GET /access/users/{userid}`: users may read their own record.
pub const READ: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::userid()]),
    privilege: Privilege::Or(&[
        Privilege::SelfParam,
        Privilege::Any("/access/groups", &["User.Modify", "Sys.Audit"]),
    ]),
    description: "Get user configuration.",
};

/// One user with its tokens (never their secrets).
pub async fn read(ctx: Ctx) -> Result<Reply, ApiError> {
    let userid = ctx.str("userid")?;
    let user = ctx.state.access.user(userid).await?;
    let tokens = ctx.state.access.list_tokens(userid).await?;
    Ok(Reply::Data(user_detail(&user, &tokens)))
}

/// `PUT /access/users/{userid}`.
pub const UPDATE: Endpoint = Endpoint {
    method: Method::Put,
    params: ParamSchema(&[
        Param::userid(),
        Param::boolean("append").opt(),
        USER_FIELDS[0],
        USER_FIELDS[1],
        USER_FIELDS[2],
        USER_FIELDS[3],
        USER_FIELDS[4],
        USER_FIELDS[5],
        USER_FIELDS[6],
        USER_FIELDS[7],
    ]),
    privilege: Privilege::Perm("/access/groups", &["User.Modify"]),
    description: "Update user configuration.",
};

/// Update a user's fields.
pub async fn update(ctx: Ctx) -> Result<Reply, ApiError> {
    let userid = ctx.str("userid")?;
    if ctx.params.has("append") && !ctx.params.has("groups") {
        return Err(ApiError::param("append", "requires option 'groups'"));
    }
    let changes = changes(&ctx.params);
    if let Some(groups) = &changes.groups {
        RbacDb::new(ctx.state.store.clone())
            .check_groups(groups)
            .await?;
    }
    ctx.state.access.update_user(userid, changes).await?;
    Ok(Reply::Data(Value::Null))
}

/// `DELETE /access/users/{userid}`.
pub const DELETE: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[Param::userid()]),
    privilege: Privilege::Perm("/access/groups", &["User.Modify"]),
    description: "Delete user.",
};

/// Delete a user and its tokens.
pub async fn delete(ctx: Ctx) -> Result<Reply, ApiError> {
    let userid = ctx.str("userid")?;
    check_realm(&ctx, userid).await?;
    ctx.state.access.delete_user(userid).await?;
    tracing::info!(%userid, by = ctx.userid()?, "user deleted");
    Ok(Reply::Data(Value::Null))
}
