//! One request's view of the evaluator: the ACL snapshot is loaded at most once per request
//! (and not at all for `root@pam` or routes that need no check) and each path's answer is
//! cached, so a list filter asking about a thousand VMs costs one store read.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use gpve_store::{Store, StoreError};
use tokio::sync::OnceCell;

use super::{AccessConfig, Principal, Privs, ROOT_USER, db};
use crate::access_db::Identity;

/// The per-request evaluator.
#[derive(Debug)]
pub struct Authz {
    store: Store,
    identity: Identity,
    loaded: OnceCell<(Arc<AccessConfig>, Principal)>,
    cache: Mutex<HashMap<String, Privs>>,
}

impl Authz {
    /// An evaluator for `identity`; nothing is read until the first question.
    pub fn new(store: Store, identity: Identity) -> Self {
        Authz {
            store,
            identity,
            loaded: OnceCell::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Who is asking.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// `root@pam` by ticket or by a token without privilege separation: every privilege
    /// everywhere, without reading the ACL.
    pub fn is_superuser(&self) -> bool {
        match &self.identity {
            Identity::Ticket { userid } => userid == ROOT_USER,
            Identity::Token {
                userid, privsep, ..
            } => userid == ROOT_USER && !privsep,
        }
    }

    async fn loaded(&self) -> Result<&(Arc<AccessConfig>, Principal), StoreError> {
        self.loaded
            .get_or_try_init(|| async {
                let (cfg, groups) = db::load(&self.store, self.identity.userid()).await?;
                let principal = principal_of(&self.identity, groups);
                Ok((Arc::new(cfg), principal))
            })
            .await
    }

    /// The snapshot and principal (for `/access/permissions` and ACL listings).
    pub async fn snapshot(&self) -> Result<(Arc<AccessConfig>, Principal), StoreError> {
        let (c, p) = self.loaded().await?;
        Ok((c.clone(), p.clone()))
    }

    /// The caller's privileges on `path` (a concrete path, e.g. `/vms/100`).
    pub async fn privileges(&self, path: &str) -> Result<Privs, StoreError> {
        if self.is_superuser() {
            return Ok(Privs::all());
        }
        if let Some(p) = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(path)
        {
            return Ok(*p);
        }
        let (cfg, principal) = self.loaded().await?;
        let privs = cfg.privileges(principal, path);
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(path.to_string(), privs);
        Ok(privs)
    }

    /// Whether the caller holds all (or with `any`, at least one) of `privs` on `path`.
    /// Unknown privilege names never match.
    pub async fn check(&self, path: &str, privs: &[&str], any: bool) -> Result<bool, StoreError> {
        let Ok(want) = Privs::parse(privs.iter().copied()) else {
            return Ok(false);
        };
        let have = self.privileges(path).await?;
        Ok(if any {
            !have.intersect(want).is_empty()
        } else {
            have.contains(want)
        })
    }
}

impl Authz {
    /// Whether the caller may see one `/cluster/resources`-shaped entry: `VM.Audit` on its
    /// VM, `Datastore.Audit` or `Datastore.AllocateSpace` on its storage, `Sys.Audit` on
    /// its node (Proxmox's filter). Unknown entry types are hidden.
    pub async fn may_see_resource(&self, item: &serde_json::Value) -> Result<bool, StoreError> {
        if self.is_superuser() {
            return Ok(true);
        }
        let text = |k: &str| match &item[k] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        match item["type"].as_str() {
            Some("qemu" | "lxc") => match text("vmid") {
                Some(id) => {
                    self.check(&format!("/vms/{id}"), &["VM.Audit"], false)
                        .await
                }
                None => Ok(false),
            },
            Some("storage") => match text("storage") {
                Some(id) => {
                    self.check(
                        &format!("/storage/{id}"),
                        &["Datastore.Audit", "Datastore.AllocateSpace"],
                        true,
                    )
                    .await
                }
                None => Ok(false),
            },
            Some("node") => match text("node") {
                Some(n) => {
                    self.check(&format!("/nodes/{n}"), &["Sys.Audit"], false)
                        .await
                }
                None => Ok(false),
            },
            Some("pool") => match text("pool") {
                Some(p) => {
                    self.check(&format!("/pool/{p}"), &["Pool.Audit"], false)
                        .await
                }
                None => Ok(false),
            },
            _ => Ok(false),
        }
    }
}

/// The evaluator's principal for an authenticated identity.
pub fn principal_of(identity: &Identity, groups: BTreeSet<String>) -> Principal {
    match identity {
        Identity::Ticket { userid } => Principal::User {
            userid: userid.clone(),
            groups,
        },
        Identity::Token {
            userid,
            tokenid,
            privsep,
        } => Principal::Token {
            userid: userid.clone(),
            tokenid: tokenid.clone(),
            privsep: *privsep,
            groups,
        },
    }
}
