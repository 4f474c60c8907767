//! Users and API tokens in the store, and authentication against them.
//!
//! Store layout:
//! - `("users", userid)` → JSON [`UserRecord`] (with the argon2 password hash, if any);
//! - `("tokens", userid, tokenid)` → JSON [`TokenRecord`] (with the SHA-256 of the secret).

use gpve_store::{Key, RangeOptions, Store, StoreError};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::auth;

const USERS: &str = "users";
const TOKENS: &str = "tokens";

/// Failures of user and token operations.
#[derive(Debug, Error)]
pub enum AccessDbError {
    #[error("user '{0}' already exists")]
    UserExists(String),
    #[error("no such user ('{0}')")]
    NoSuchUser(String),
    #[error("Token already exists.")]
    TokenExists,
    #[error("no such token '{1}' for user '{0}'")]
    NoSuchToken(String, String),
    #[error("the user root@pam cannot be deleted")]
    RootUndeletable,
    #[error("password hashing failed")]
    Hash(#[from] auth::AuthError),
    #[error("user store operation failed")]
    Store(#[from] StoreError),
}

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub userid: String,
    pub enable: bool,
    /// Unix seconds; 0 never expires.
    pub expire: i64,
    #[serde(default)]
    pub firstname: String,
    #[serde(default)]
    pub lastname: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub keys: String,
    /// argon2 PHC string; `None` means password login is impossible.
    #[serde(default)]
    pub password_hash: Option<String>,
}

/// User fields a create or update may set.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    pub enable: Option<bool>,
    pub expire: Option<i64>,
    pub firstname: Option<String>,
    pub lastname: Option<String>,
    pub email: Option<String>,
    pub comment: Option<String>,
    pub groups: Option<Vec<String>>,
    /// With `groups`: add to the existing groups instead of replacing them.
    pub append_groups: bool,
    pub keys: Option<String>,
}

impl UserRecord {
    fn apply(&mut self, c: UserChanges) {
        if let Some(v) = c.enable {
            self.enable = v;
        }
        if let Some(v) = c.expire {
            self.expire = v;
        }
        if let Some(v) = c.firstname {
            self.firstname = v;
        }
        if let Some(v) = c.lastname {
            self.lastname = v;
        }
        if let Some(v) = c.email {
            self.email = v;
        }
        if let Some(v) = c.comment {
            self.comment = v;
        }
        if let Some(groups) = c.groups {
            if c.append_groups {
                for g in groups {
                    if !self.groups.contains(&g) {
                        self.groups.push(g);
                    }
                }
            } else {
                self.groups = groups;
            }
        }
        if let Some(v) = c.keys {
            self.keys = v;
        }
    }

    /// Whether the account may authenticate at `now`.
    pub fn is_active(&self, now: i64) -> bool {
        self.enable && (self.expire == 0 || self.expire > now)
    }
}

/// An API token as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub tokenid: String,
    #[serde(default)]
    pub comment: String,
    /// Unix seconds; 0 never expires.
    pub expire: i64,
    /// Privilege separation: the token gets only its own ACLs (Proxmox default), not the
    /// user's privileges.
    pub privsep: bool,
    /// `sha256:{hex}` of the secret; the secret itself is never stored.
    pub secret_hash: String,
}

/// Token fields a create or update may set.
#[derive(Debug, Clone, Default)]
pub struct TokenChanges {
    pub comment: Option<String>,
    pub expire: Option<i64>,
    pub privsep: Option<bool>,
    /// Field names to reset to their defaults (`delete` parameter).
    pub delete: Vec<String>,
}

/// Who a request authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A ticket (cookie) for `userid`.
    Ticket { userid: String },
    /// An API token `userid!tokenid`.
    Token {
        userid: String,
        tokenid: String,
        privsep: bool,
    },
}

impl Identity {
    /// The user behind the credential.
    pub fn userid(&self) -> &str {
        match self {
            Identity::Ticket { userid } | Identity::Token { userid, .. } => userid,
        }
    }
}

fn user_key(userid: &str) -> Key {
    Key::pack(&(USERS, userid))
}

fn token_key(userid: &str, tokenid: &str) -> Key {
    Key::pack(&(TOKENS, userid, tokenid))
}

/// Users and tokens over the store.
#[derive(Debug, Clone)]
pub struct AccessDb {
    store: Store,
}

impl AccessDb {
    /// Access data kept in `store`.
    pub fn new(store: Store) -> Self {
        AccessDb { store }
    }

    /// All users, ordered by id.
    pub async fn list_users(&self) -> Result<Vec<UserRecord>, AccessDbError> {
        let rows: Vec<(Key, UserRecord)> = self.store.list_json(&Key::prefix(&(USERS,))).await?;
        Ok(rows.into_iter().map(|(_, u)| u).collect())
    }

    /// One user.
    pub async fn user(&self, userid: &str) -> Result<UserRecord, AccessDbError> {
        self.store
            .get_json(&user_key(userid))
            .await?
            .ok_or_else(|| AccessDbError::NoSuchUser(userid.to_string()))
    }

    /// Create a user; acknowledged once committed.
    pub async fn create_user(
        &self,
        userid: &str,
        password: Option<&str>,
        changes: UserChanges,
    ) -> Result<(), AccessDbError> {
        let password_hash = match password {
            Some(pw) => Some(auth::hash_password(pw)?),
            None => None,
        };
        let mut rec = UserRecord {
            userid: userid.to_string(),
            enable: true,
            expire: 0,
            firstname: String::new(),
            lastname: String::new(),
            email: String::new(),
            comment: String::new(),
            groups: Vec::new(),
            keys: String::new(),
            password_hash,
        };
        rec.apply(changes);
        let key = user_key(userid);
        let created = self.store.create_json(&key, &rec).await?;
        if created {
            Ok(())
        } else {
            Err(AccessDbError::UserExists(userid.to_string()))
        }
    }

    /// Update a user's fields.
    pub async fn update_user(
        &self,
        userid: &str,
        changes: UserChanges,
    ) -> Result<(), AccessDbError> {
        let found = self
            .store
            .update_json(&user_key(userid), move |rec: &mut UserRecord| {
                rec.apply(changes.clone())
            })
            .await?;
        if found {
            Ok(())
        } else {
            Err(AccessDbError::NoSuchUser(userid.to_string()))
        }
    }

    /// Set (or replace) a user's password.
    pub async fn set_password(&self, userid: &str, password: &str) -> Result<(), AccessDbError> {
        let hash = auth::hash_password(password)?;
        let found = self
            .store
            .update_json(&user_key(userid), move |rec: &mut UserRecord| {
                rec.password_hash = Some(hash.clone())
            })
            .await?;
        if found {
            Ok(())
        } else {
            Err(AccessDbError::NoSuchUser(userid.to_string()))
        }
    }

    /// Delete a user and all its tokens in one transaction.
    pub async fn delete_user(&self, userid: &str) -> Result<(), AccessDbError> {
        if userid == "root@pam" {
            return Err(AccessDbError::RootUndeletable);
        }
        let key = user_key(userid);
        let tokens = Key::prefix(&(TOKENS, userid));
        let found = self
            .store
            .transact(|tx| {
                let (key, tokens) = (key.clone(), tokens.clone());
                Box::pin(async move {
                    if tx.get(&key).await?.is_none() {
                        return Ok(false);
                    }
                    tx.clear(&key);
                    tx.clear_prefix(&tokens);
                    Ok(true)
                })
            })
            .await?;
        if found {
            Ok(())
        } else {
            Err(AccessDbError::NoSuchUser(userid.to_string()))
        }
    }

    /// The user if `password` is right and the account is active. Also accepts a valid
    /// ticket of the same user as password (ticket renewal, as Proxmox).
    pub async fn check_password(
        &self,
        userid: &str,
        password: &str,
        key: &auth::TicketKey,
        now: i64,
    ) -> Result<Option<UserRecord>, AccessDbError> {
        let Some(user) = self.store.get_json::<UserRecord>(&user_key(userid)).await? else {
            // Spend the same time as a real check so timing does not reveal user names.
            let _ = auth::verify_password(password, DUMMY_HASH);
            return Ok(None);
        };
        if !user.is_active(now) {
            return Ok(None);
        }
        if password.starts_with("PVE:") {
            return Ok(
                (key.verify_ticket(password, now).as_deref() == Some(userid)).then_some(user),
            );
        }
        let ok = user
            .password_hash
            .as_deref()
            .is_some_and(|h| auth::verify_password(password, h));
        Ok(ok.then_some(user))
    }

    /// The identity behind a verified ticket, if the user still exists and is active.
    pub async fn ticket_identity(
        &self,
        userid: &str,
        now: i64,
    ) -> Result<Option<Identity>, AccessDbError> {
        let user = self.store.get_json::<UserRecord>(&user_key(userid)).await?;
        Ok(user.filter(|u| u.is_active(now)).map(|_| Identity::Ticket {
            userid: userid.to_string(),
        }))
    }

    /// The identity behind an API token header, if the secret matches and neither the
    /// token nor its user is disabled or expired.
    pub async fn token_identity(
        &self,
        header: &auth::TokenHeader,
        now: i64,
    ) -> Result<Option<Identity>, AccessDbError> {
        let ukey = user_key(&header.userid);
        let tkey = token_key(&header.userid, &header.tokenid);
        let (user, token) = self
            .store
            .transact(|tx| {
                let (ukey, tkey) = (ukey.clone(), tkey.clone());
                Box::pin(async move {
                    let u: Option<UserRecord> = tx.get_json(&ukey).await?;
                    let t: Option<TokenRecord> = tx.get_json(&tkey).await?;
                    Ok((u, t))
                })
            })
            .await?;
        let (Some(user), Some(token)) = (user, token) else {
            return Ok(None);
        };
        let token_live = token.expire == 0 || token.expire > now;
        if !user.is_active(now)
            || !token_live
            || !auth::verify_token_secret(&header.secret, &token.secret_hash)
        {
            return Ok(None);
        }
        Ok(Some(Identity::Token {
            userid: header.userid.clone(),
            tokenid: header.tokenid.clone(),
            privsep: token.privsep,
        }))
    }

    /// A user's tokens.
    pub async fn list_tokens(&self, userid: &str) -> Result<Vec<TokenRecord>, AccessDbError> {
        self.user(userid).await?;
        let rows: Vec<(Key, TokenRecord)> = self
            .store
            .transact(|tx| {
                let p = Key::prefix(&(TOKENS, userid));
                Box::pin(async move { tx.list_json(&p, RangeOptions::all()).await })
            })
            .await?;
        Ok(rows.into_iter().map(|(_, t)| t).collect())
    }

    /// One token.
    pub async fn token(&self, userid: &str, tokenid: &str) -> Result<TokenRecord, AccessDbError> {
        self.store
            .get_json(&token_key(userid, tokenid))
            .await?
            .ok_or_else(|| AccessDbError::NoSuchToken(userid.to_string(), tokenid.to_string()))
    }

    /// Create a token; returns its record and the secret (shown to the client once).
    pub async fn create_token(
        &self,
        userid: &str,
        tokenid: &str,
        changes: TokenChanges,
    ) -> Result<(TokenRecord, String), AccessDbError> {
        let secret = auth::new_token_secret();
        let rec = TokenRecord {
            tokenid: tokenid.to_string(),
            comment: changes.comment.unwrap_or_default(),
            expire: changes.expire.unwrap_or(0),
            privsep: changes.privsep.unwrap_or(true),
            secret_hash: auth::hash_token_secret(&secret),
        };
        let ukey = user_key(userid);
        let tkey = token_key(userid, tokenid);
        let outcome = self
            .store
            .transact(|tx| {
                let (ukey, tkey, rec) = (ukey.clone(), tkey.clone(), rec.clone());
                Box::pin(async move {
                    if tx.get(&ukey).await?.is_none() {
                        return Ok(Err(AccessDbError::NoSuchUser(String::new())));
                    }
                    if tx.get(&tkey).await?.is_some() {
                        return Ok(Err(AccessDbError::TokenExists));
                    }
                    tx.put_json(&tkey, &rec)?;
                    Ok(Ok(()))
                })
            })
            .await?;
        match outcome {
            Ok(()) => Ok((rec, secret)),
            Err(AccessDbError::NoSuchUser(_)) => Err(AccessDbError::NoSuchUser(userid.into())),
            Err(e) => Err(e),
        }
    }

    /// Update a token's comment, expiry or privilege separation.
    pub async fn update_token(
        &self,
        userid: &str,
        tokenid: &str,
        changes: TokenChanges,
    ) -> Result<TokenRecord, AccessDbError> {
        let tkey = token_key(userid, tokenid);
        let updated = self
            .store
            .transact(|tx| {
                let (tkey, c) = (tkey.clone(), changes.clone());
                Box::pin(async move {
                    let Some(mut rec) = tx.get_json::<TokenRecord>(&tkey).await? else {
                        return Ok(None);
                    };
                    for field in &c.delete {
                        match field.as_str() {
                            "comment" => rec.comment.clear(),
                            "expire" => rec.expire = 0,
                            "privsep" => rec.privsep = true,
                            _ => {}
                        }
                    }
                    if let Some(v) = c.comment {
                        rec.comment = v;
                    }
                    if let Some(v) = c.expire {
                        rec.expire = v;
                    }
                    if let Some(v) = c.privsep {
                        rec.privsep = v;
                    }
                    tx.put_json(&tkey, &rec)?;
                    Ok(Some(rec))
                })
            })
            .await?;
        updated.ok_or_else(|| AccessDbError::NoSuchToken(userid.to_string(), tokenid.to_string()))
    }

    /// Delete a token.
    pub async fn delete_token(&self, userid: &str, tokenid: &str) -> Result<(), AccessDbError> {
        let tkey = token_key(userid, tokenid);
        let found = self
            .store
            .transact(|tx| {
                let tkey = tkey.clone();
                Box::pin(async move {
                    if tx.get(&tkey).await?.is_none() {
                        return Ok(false);
                    }
                    tx.clear(&tkey);
                    Ok(true)
                })
            })
            .await?;
        if found {
            Ok(())
        } else {
            Err(AccessDbError::NoSuchToken(
                userid.to_string(),
                tokenid.to_string(),
            ))
        }
    }
}

/// A valid argon2 hash of a random string, verified against when the user does not exist.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2VvKyb1Jq3f0B3YtGFDbz4H8oPRE0NtGgvRUnm5vzHI";
