//! Groups, custom roles, ACL entries and pools in the store, and the one snapshot the
//! evaluator reads ([`load`]).
//!
//! Store layout (group membership lives on the user record, as in Proxmox's user.cfg):
//! - `("groups", groupid)` → JSON [`GroupRecord`];
//! - `("roles", roleid)` → JSON [`RoleRecord`] (custom roles only; built-ins are code);
//! - `("acl", path)` → JSON [`AclNode`] (every entry on one canonical path);
//! - `("pools", poolid)` → JSON [`PoolRecord`].

use std::collections::{BTreeMap, BTreeSet};

use gpve_store::{Key, RangeOptions, Store, StoreError, Txn};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{AccessConfig, AclNode, Principal, Privs, RbacError, builtin_roles};
use crate::access_db::UserRecord;

const GROUPS: &str = "groups";
const ROLES: &str = "roles";
const ACL: &str = "acl";
const POOLS: &str = "pools";
const USERS: &str = "users";
const TOKENS: &str = "tokens";

/// Failures of group, role, ACL and pool operations.
#[derive(Debug, Error)]
pub enum RbacDbError {
    #[error("group '{0}' already exists")]
    GroupExists(String),
    #[error("no such group '{0}'")]
    NoSuchGroup(String),
    #[error("role '{0}' already exists")]
    RoleExists(String),
    #[error("pool '{0}' already exists")]
    PoolExists(String),
    #[error("no such pool '{0}'")]
    NoSuchPool(String),
    #[error("pool '{0}' is not empty")]
    PoolNotEmpty(String),
    #[error("VM {vmid} is already in pool '{pool}'")]
    VmInPool { vmid: u32, pool: String },
    #[error("no such user '{0}'")]
    NoSuchUser(String),
    #[error("no such token '{0}'")]
    NoSuchToken(String),
    #[error(transparent)]
    Rbac(#[from] RbacError),
    #[error("access store operation failed")]
    Store(#[from] StoreError),
}

/// A group as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub groupid: String,
    #[serde(default)]
    pub comment: String,
}

/// A custom role as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleRecord {
    pub roleid: String,
    pub privs: Vec<String>,
}

/// A pool as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolRecord {
    pub poolid: String,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub vms: BTreeSet<u32>,
    #[serde(default)]
    pub storage: BTreeSet<String>,
}

/// Who an ACL entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UgType {
    User,
    Group,
    Token,
}

impl UgType {
    pub fn as_str(self) -> &'static str {
        match self {
            UgType::User => "user",
            UgType::Group => "group",
            UgType::Token => "token",
        }
    }
}

/// One change to the ACL (`PUT /access/acl`).
#[derive(Debug, Clone)]
pub struct AclChange {
    pub path: String,
    pub roles: Vec<String>,
    pub subjects: Vec<(UgType, String)>,
    pub propagate: bool,
    pub delete: bool,
}

fn group_key(g: &str) -> Key {
    Key::pack(&(GROUPS, g))
}
fn role_key(r: &str) -> Key {
    Key::pack(&(ROLES, r))
}
fn acl_key(p: &str) -> Key {
    Key::pack(&(ACL, p))
}
fn pool_key(p: &str) -> Key {
    Key::pack(&(POOLS, p))
}

async fn read_config(tx: &mut Txn) -> Result<AccessConfig, StoreError> {
    let mut cfg = AccessConfig {
        roles: builtin_roles(),
        ..Default::default()
    };
    let roles: Vec<(Key, RoleRecord)> = tx
        .list_json(&Key::prefix(&(ROLES,)), RangeOptions::all())
        .await?;
    for (_, r) in roles {
        // A stored role naming a privilege this build does not know keeps the rest.
        let privs = r
            .privs
            .iter()
            .filter_map(|p| Privs::of(p).ok())
            .fold(Privs::NONE, Privs::union);
        cfg.roles.entry(r.roleid).or_insert(privs);
    }
    let acl: Vec<(Key, AclNode)> = tx
        .list_json(&Key::prefix(&(ACL,)), RangeOptions::all())
        .await?;
    let prefix = Key::prefix(&(ACL,));
    for (k, node) in acl {
        if let Ok(path) = k.unpack_suffix::<String>(&prefix) {
            cfg.acl.insert(path, node);
        }
    }
    let pools: Vec<(Key, PoolRecord)> = tx
        .list_json(&Key::prefix(&(POOLS,)), RangeOptions::all())
        .await?;
    for (_, p) in pools {
        for vm in &p.vms {
            cfg.vm_pool.insert(*vm, p.poolid.clone());
        }
        for s in &p.storage {
            cfg.storage_pool.insert(s.clone(), p.poolid.clone());
        }
    }
    Ok(cfg)
}

/// The evaluator's input and the principal's groups, in one consistent snapshot.
pub async fn load(
    store: &Store,
    userid: &str,
) -> Result<(AccessConfig, BTreeSet<String>), StoreError> {
    let userid = userid.to_string();
    store
        .transact(|tx| {
            let userid = userid.clone();
            Box::pin(async move {
                let cfg = read_config(tx).await?;
                let user: Option<UserRecord> = tx.get_json(&Key::pack(&(USERS, &userid))).await?;
                let groups = user
                    .map(|u| u.groups.into_iter().collect())
                    .unwrap_or_default();
                Ok((cfg, groups))
            })
        })
        .await
}

/// The principal for `userid` or `userid!tokenid` (for `/access/permissions?userid=`).
pub async fn principal_for(store: &Store, id: &str) -> Result<Principal, RbacDbError> {
    let (userid, tokenid) = match id.split_once('!') {
        Some((u, t)) => (u.to_string(), Some(t.to_string())),
        None => (id.to_string(), None),
    };
    let user: UserRecord = store
        .get_json(&Key::pack(&(USERS, &userid)))
        .await?
        .ok_or_else(|| RbacDbError::NoSuchUser(userid.clone()))?;
    let groups = user.groups.into_iter().collect();
    match tokenid {
        None => Ok(Principal::User { userid, groups }),
        Some(tokenid) => {
            let tok: crate::access_db::TokenRecord = store
                .get_json(&Key::pack(&(TOKENS, &userid, &tokenid)))
                .await?
                .ok_or_else(|| RbacDbError::NoSuchToken(id.to_string()))?;
            Ok(Principal::Token {
                userid,
                tokenid,
                privsep: tok.privsep,
                groups,
            })
        }
    }
}

/// Groups, roles, ACL and pools over the store.
#[derive(Debug, Clone)]
pub struct RbacDb {
    store: Store,
}

impl RbacDb {
    pub fn new(store: Store) -> Self {
        RbacDb { store }
    }

    /// The whole configuration (for listings).
    pub async fn config(&self) -> Result<AccessConfig, RbacDbError> {
        Ok(self
            .store
            .transact(|tx| Box::pin(async move { read_config(tx).await }))
            .await?)
    }

    // ---- groups

    pub async fn groups(&self) -> Result<Vec<GroupRecord>, RbacDbError> {
        let rows: Vec<(Key, GroupRecord)> = self.store.list_json(&Key::prefix(&(GROUPS,))).await?;
        Ok(rows.into_iter().map(|(_, g)| g).collect())
    }

    pub async fn group(&self, groupid: &str) -> Result<GroupRecord, RbacDbError> {
        self.store
            .get_json(&group_key(groupid))
            .await?
            .ok_or_else(|| RbacDbError::NoSuchGroup(groupid.to_string()))
    }

    /// Members of a group, from the user records.
    pub async fn members(&self, groupid: &str) -> Result<Vec<String>, RbacDbError> {
        let users: Vec<(Key, UserRecord)> = self.store.list_json(&Key::prefix(&(USERS,))).await?;
        Ok(users
            .into_iter()
            .filter(|(_, u)| u.groups.iter().any(|g| g == groupid))
            .map(|(_, u)| u.userid)
            .collect())
    }

    pub async fn create_group(&self, groupid: &str, comment: &str) -> Result<(), RbacDbError> {
        let rec = GroupRecord {
            groupid: groupid.to_string(),
            comment: comment.to_string(),
        };
        let created = self
            .store
            .create_json(&group_key(&rec.groupid), &rec)
            .await?;
        if created {
            Ok(())
        } else {
            Err(RbacDbError::GroupExists(groupid.to_string()))
        }
    }

    pub async fn update_group(&self, groupid: &str, comment: &str) -> Result<(), RbacDbError> {
        let comment = comment.to_string();
        let found = self
            .store
            .update_json(&group_key(groupid), move |rec: &mut GroupRecord| {
                rec.comment = comment.clone()
            })
            .await?;
        if found {
            Ok(())
        } else {
            Err(RbacDbError::NoSuchGroup(groupid.to_string()))
        }
    }

    /// Delete a group, its membership on users and its ACL entries, in one transaction.
    pub async fn delete_group(&self, groupid: &str) -> Result<(), RbacDbError> {
        let g = groupid.to_string();
        let found = self
            .store
            .transact(|tx| {
                let g = g.clone();
                Box::pin(async move {
                    if tx.get(&group_key(&g)).await?.is_none() {
                        return Ok(false);
                    }
                    tx.clear(&group_key(&g));
                    let users: Vec<(Key, UserRecord)> = tx
                        .list_json(&Key::prefix(&(USERS,)), RangeOptions::all())
                        .await?;
                    for (k, mut u) in users {
                        if u.groups.contains(&g) {
                            u.groups.retain(|x| *x != g);
                            tx.put_json(&k, &u)?;
                        }
                    }
                    let acl: Vec<(Key, AclNode)> = tx
                        .list_json(&Key::prefix(&(ACL,)), RangeOptions::all())
                        .await?;
                    for (k, mut node) in acl {
                        if node.groups.remove(&g).is_some() {
                            write_node(tx, &k, &node)?;
                        }
                    }
                    Ok(true)
                })
            })
            .await?;
        if found {
            Ok(())
        } else {
            Err(RbacDbError::NoSuchGroup(groupid.to_string()))
        }
    }

    /// Fail unless every group exists (user create/update).
    pub async fn check_groups(&self, groups: &[String]) -> Result<(), RbacDbError> {
        for g in groups {
            self.group(g).await?;
        }
        Ok(())
    }

    // ---- roles

    /// Custom roles as stored.
    pub async fn custom_roles(&self) -> Result<Vec<RoleRecord>, RbacDbError> {
        let rows: Vec<(Key, RoleRecord)> = self.store.list_json(&Key::prefix(&(ROLES,))).await?;
        Ok(rows.into_iter().map(|(_, r)| r).collect())
    }

    /// Create or (with `replace`) update a custom role; `append` adds to its privileges.
    pub async fn put_role(
        &self,
        roleid: &str,
        privs: &[String],
        create: bool,
        append: bool,
    ) -> Result<(), RbacDbError> {
        if super::is_builtin_role(roleid) {
            return Err(RbacError::BuiltinRole(roleid.to_string()).into());
        }
        Privs::parse(privs.iter().map(String::as_str))?;
        let (r, p) = (roleid.to_string(), privs.to_vec());
        self.store
            .transact(|tx| {
                let (r, p) = (r.clone(), p.clone());
                Box::pin(async move {
                    let key = role_key(&r);
                    let old: Option<RoleRecord> = tx.get_json(&key).await?;
                    let privs = match (&old, create) {
                        (Some(_), true) => return Ok(Err(RbacDbError::RoleExists(r))),
                        (None, false) => {
                            return Ok(Err(RbacError::NoSuchRole(r).into()));
                        }
                        (Some(o), false) if append => {
                            let mut all: BTreeSet<String> = o.privs.iter().cloned().collect();
                            all.extend(p);
                            all.into_iter().collect()
                        }
                        _ => {
                            let all: BTreeSet<String> = p.into_iter().collect();
                            all.into_iter().collect()
                        }
                    };
                    tx.put_json(&key, &RoleRecord { roleid: r, privs })?;
                    Ok(Ok(()))
                })
            })
            .await?
    }

    /// Delete a custom role and every ACL entry naming it.
    pub async fn delete_role(&self, roleid: &str) -> Result<(), RbacDbError> {
        if super::is_builtin_role(roleid) {
            return Err(RbacError::BuiltinRole(roleid.to_string()).into());
        }
        let r = roleid.to_string();
        let found = self
            .store
            .transact(|tx| {
                let r = r.clone();
                Box::pin(async move {
                    if tx.get(&role_key(&r)).await?.is_none() {
                        return Ok(false);
                    }
                    tx.clear(&role_key(&r));
                    let acl: Vec<(Key, AclNode)> = tx
                        .list_json(&Key::prefix(&(ACL,)), RangeOptions::all())
                        .await?;
                    for (k, mut node) in acl {
                        let mut changed = false;
                        for m in node
                            .users
                            .values_mut()
                            .chain(node.groups.values_mut())
                            .chain(node.tokens.values_mut())
                        {
                            changed |= m.remove(&r).is_some();
                        }
                        if changed {
                            node.users.retain(|_, m| !m.is_empty());
                            node.groups.retain(|_, m| !m.is_empty());
                            node.tokens.retain(|_, m| !m.is_empty());
                            write_node(tx, &k, &node)?;
                        }
                    }
                    Ok(true)
                })
            })
            .await?;
        if found {
            Ok(())
        } else {
            Err(RbacError::NoSuchRole(roleid.to_string()).into())
        }
    }

    // ---- ACL

    /// Apply one ACL change after checking that its roles and subjects exist.
    pub async fn change_acl(&self, change: AclChange) -> Result<(), RbacDbError> {
        let path = super::normalize_path(&change.path)?;
        self.store
            .transact(|tx| {
                let (change, path) = (change.clone(), path.clone());
                Box::pin(async move {
                    let roles = read_config(tx).await?.roles;
                    for r in &change.roles {
                        if !roles.contains_key(r) {
                            return Ok(Err(RbacError::NoSuchRole(r.clone()).into()));
                        }
                    }
                    if !change.delete {
                        for (t, id) in &change.subjects {
                            let missing = match t {
                                UgType::User => tx.get(&Key::pack(&(USERS, id))).await?.is_none(),
                                UgType::Group => tx.get(&group_key(id)).await?.is_none(),
                                UgType::Token => match id.split_once('!') {
                                    Some((u, tk)) => {
                                        tx.get(&Key::pack(&(TOKENS, u, tk))).await?.is_none()
                                    }
                                    None => true,
                                },
                            };
                            if missing {
                                return Ok(Err(match t {
                                    UgType::User => RbacDbError::NoSuchUser(id.clone()),
                                    UgType::Group => RbacDbError::NoSuchGroup(id.clone()),
                                    UgType::Token => RbacDbError::NoSuchToken(id.clone()),
                                }));
                            }
                        }
                    }
                    let key = acl_key(&path);
                    let mut node: AclNode = tx.get_json(&key).await?.unwrap_or_default();
                    for (t, id) in &change.subjects {
                        let map = match t {
                            UgType::User => &mut node.users,
                            UgType::Group => &mut node.groups,
                            UgType::Token => &mut node.tokens,
                        };
                        let entry = map.entry(id.clone()).or_default();
                        for r in &change.roles {
                            if change.delete {
                                entry.remove(r);
                            } else {
                                entry.insert(r.clone(), change.propagate);
                            }
                        }
                        if entry.is_empty() {
                            map.remove(id);
                        }
                    }
                    write_node(tx, &key, &node)?;
                    Ok(Ok(()))
                })
            })
            .await?
    }

    // ---- pools

    pub async fn pools(&self) -> Result<Vec<PoolRecord>, RbacDbError> {
        let rows: Vec<(Key, PoolRecord)> = self.store.list_json(&Key::prefix(&(POOLS,))).await?;
        Ok(rows.into_iter().map(|(_, p)| p).collect())
    }

    pub async fn pool(&self, poolid: &str) -> Result<PoolRecord, RbacDbError> {
        self.store
            .get_json(&pool_key(poolid))
            .await?
            .ok_or_else(|| RbacDbError::NoSuchPool(poolid.to_string()))
    }

    pub async fn create_pool(&self, poolid: &str, comment: &str) -> Result<(), RbacDbError> {
        let rec = PoolRecord {
            poolid: poolid.to_string(),
            comment: comment.to_string(),
            ..Default::default()
        };
        let created = self.store.create_json(&pool_key(&rec.poolid), &rec).await?;
        if created {
            Ok(())
        } else {
            Err(RbacDbError::PoolExists(poolid.to_string()))
        }
    }

    /// Change a pool: comment, and add or (with `delete`) remove members. A VM belongs to
    /// at most one pool; `allow_move` takes it from its old pool.
    pub async fn update_pool(
        &self,
        poolid: &str,
        comment: Option<String>,
        vms: Vec<u32>,
        storage: Vec<String>,
        delete: bool,
        allow_move: bool,
    ) -> Result<(), RbacDbError> {
        let p = poolid.to_string();
        self.store
            .transact(|tx| {
                let (p, comment, vms, storage) =
                    (p.clone(), comment.clone(), vms.clone(), storage.clone());
                Box::pin(async move {
                    let key = pool_key(&p);
                    let Some(mut rec) = tx.get_json::<PoolRecord>(&key).await? else {
                        return Ok(Err(RbacDbError::NoSuchPool(p)));
                    };
                    if let Some(c) = comment {
                        rec.comment = c;
                    }
                    if delete {
                        for v in &vms {
                            rec.vms.remove(v);
                        }
                        for s in &storage {
                            rec.storage.remove(s);
                        }
                    } else {
                        let others: Vec<(Key, PoolRecord)> = tx
                            .list_json(&Key::prefix(&(POOLS,)), RangeOptions::all())
                            .await?;
                        for (ok, mut other) in others {
                            if other.poolid == p {
                                continue;
                            }
                            let clash: Vec<u32> = vms
                                .iter()
                                .filter(|v| other.vms.contains(v))
                                .copied()
                                .collect();
                            if let Some(v) = clash.first() {
                                if !allow_move {
                                    return Ok(Err(RbacDbError::VmInPool {
                                        vmid: *v,
                                        pool: other.poolid,
                                    }));
                                }
                                for v in &clash {
                                    other.vms.remove(v);
                                }
                                tx.put_json(&ok, &other)?;
                            }
                        }
                        rec.vms.extend(vms);
                        rec.storage.extend(storage);
                    }
                    tx.put_json(&key, &rec)?;
                    Ok(Ok(()))
                })
            })
            .await?
    }

    /// Delete an empty pool (and its ACL entries).
    pub async fn delete_pool(&self, poolid: &str) -> Result<(), RbacDbError> {
        let p = poolid.to_string();
        self.store
            .transact(|tx| {
                let p = p.clone();
                Box::pin(async move {
                    let key = pool_key(&p);
                    let Some(rec) = tx.get_json::<PoolRecord>(&key).await? else {
                        return Ok(Err(RbacDbError::NoSuchPool(p)));
                    };
                    if !rec.vms.is_empty() || !rec.storage.is_empty() {
                        return Ok(Err(RbacDbError::PoolNotEmpty(p)));
                    }
                    tx.clear(&key);
                    tx.clear(&acl_key(&format!("/pool/{p}")));
                    Ok(Ok(()))
                })
            })
            .await?
    }
}

fn write_node(tx: &mut Txn, key: &Key, node: &AclNode) -> Result<(), StoreError> {
    if node.is_empty() {
        tx.clear(key);
        Ok(())
    } else {
        tx.put_json(key, node)
    }
}

/// Flatten the ACL into Proxmox's `GET /access/acl` rows: (path, type, ugid, roleid, propagate).
pub fn acl_rows(acl: &BTreeMap<String, AclNode>) -> Vec<(String, UgType, String, String, bool)> {
    let mut out = Vec::new();
    for (path, node) in acl {
        for (t, map) in [
            (UgType::User, &node.users),
            (UgType::Group, &node.groups),
            (UgType::Token, &node.tokens),
        ] {
            for (id, roles) in map {
                for (role, prop) in roles {
                    out.push((path.clone(), t, id.clone(), role.clone(), *prop));
                }
            }
        }
    }
    out
}
