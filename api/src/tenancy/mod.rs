//! Tenants, quotas and admission (issue 9).
//!
//! A tenant (`("tenants", name)`) owns namespaces, VMs, vClusters and volumes and has one
//! quota per resource. Its usage (`("tenant-usage", name)`) changes only through [`admit`]
//! and [`release`], which run inside the caller's store transaction, next to the write of
//! the resource they account: two parallel creates both read the usage, so the store's
//! optimistic concurrency makes one of them conflict, retry and check again. That is the
//! whole of the atomic admission; no lock is held.
//!
//! Quotas: per resource an optional `requests` (soft, multiplied by `overcommit`) and an
//! optional `limits` (hard). A demand is admitted when the usage after it stays within
//! `floor(requests × overcommit)` and within `limits`. gpve VMs request what they are
//! limited to (no balloon floor), so one [`Demand`] counts against both.
//!
//! [`vm`] charges VMs (one charge record per VM, the VM a member of the tenant's pool);
//! [`store_keys`] names every key this module writes.

pub mod vm;

use std::fmt;

use gpve_store::{Key, RangeOptions, StoreError, Txn};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::error::ApiError;

/// Store subspaces this module owns.
pub mod store_keys {
    /// `("tenants", name)` → [`super::TenantRecord`].
    pub const TENANTS: &str = "tenants";
    /// `("tenant-usage", name)` → [`super::Demand`]: what the tenant uses now.
    pub const USAGE: &str = "tenant-usage";
    /// `("tenant-charges", vmid)` → [`super::vm::Charge`]: which tenant a VM counts against, and how much.
    pub const CHARGES: &str = "tenant-charges";
    /// `("tenant-users", userid)` → tenant name: the tenant a user is bound to.
    pub const USERS: &str = "tenant-users";
}

/// Longest tenant name, in bytes (a Proxmox pool id has the same bound).
pub const MAX_TENANT_NAME_BYTES: usize = 64;
/// Largest accepted overcommit ratio.
pub const MAX_OVERCOMMIT_RATIO: f64 = 100.0;

/// What an operation adds to (or removes from) a tenant's usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Demand {
    #[serde(default)]
    pub vcpus: u64,
    #[serde(default)]
    pub memory_mib: u64,
    #[serde(default)]
    pub disk_gib: u64,
    #[serde(default)]
    pub vms: u64,
    #[serde(default)]
    pub vclusters: u64,
    #[serde(default)]
    pub gpus: u64,
}

impl Demand {
    /// The amount of `r`.
    pub fn get(&self, r: Resource) -> u64 {
        match r {
            Resource::Vcpus => self.vcpus,
            Resource::Memory => self.memory_mib,
            Resource::Disk => self.disk_gib,
            Resource::Vms => self.vms,
            Resource::Vclusters => self.vclusters,
            Resource::Gpus => self.gpus,
        }
    }

    fn slot(&mut self, r: Resource) -> &mut u64 {
        match r {
            Resource::Vcpus => &mut self.vcpus,
            Resource::Memory => &mut self.memory_mib,
            Resource::Disk => &mut self.disk_gib,
            Resource::Vms => &mut self.vms,
            Resource::Vclusters => &mut self.vclusters,
            Resource::Gpus => &mut self.gpus,
        }
    }

    /// Whether every amount is zero.
    pub fn is_zero(&self) -> bool {
        Resource::ALL.iter().all(|r| self.get(*r) == 0)
    }

    /// Per resource, what `new` has beyond `self` (growth) and what `self` has beyond
    /// `new` (shrink): a change from `self` to `new` admits the first and releases the second.
    pub fn delta(&self, new: &Demand) -> (Demand, Demand) {
        let mut grow = Demand::default();
        let mut shrink = Demand::default();
        for r in Resource::ALL {
            let (old, new) = (self.get(r), new.get(r));
            *grow.slot(r) = new.saturating_sub(old);
            *shrink.slot(r) = old.saturating_sub(new);
        }
        (grow, shrink)
    }
}

/// The resources a quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    Vcpus,
    Memory,
    Disk,
    Vms,
    Vclusters,
    Gpus,
}

impl Resource {
    pub const ALL: [Resource; 6] = [
        Resource::Vcpus,
        Resource::Memory,
        Resource::Disk,
        Resource::Vms,
        Resource::Vclusters,
        Resource::Gpus,
    ];

    /// The name in the API, the CLI and messages.
    pub fn name(self) -> &'static str {
        match self {
            Resource::Vcpus => "vcpus",
            Resource::Memory => "memory",
            Resource::Disk => "disk",
            Resource::Vms => "vms",
            Resource::Vclusters => "vclusters",
            Resource::Gpus => "gpus",
        }
    }

    /// The unit amounts of this resource are counted in.
    pub fn unit(self) -> &'static str {
        match self {
            Resource::Vcpus => "vCPUs",
            Resource::Memory => "MiB",
            Resource::Disk => "GiB",
            Resource::Vms => "VMs",
            Resource::Vclusters => "vClusters",
            Resource::Gpus => "GPUs",
        }
    }

    /// The resource named `name`.
    pub fn parse(name: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn default_overcommit() -> f64 {
    1.0
}

/// One resource's quota. Both bounds absent: unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ResourceQuota {
    /// Soft quota: admission allows `floor(requests × overcommit)`.
    #[serde(default)]
    pub requests: Option<u64>,
    /// Hard limit: never exceeded, whatever the overcommit.
    #[serde(default)]
    pub limits: Option<u64>,
    /// Ratio applied to `requests`, in (0, [`MAX_OVERCOMMIT_RATIO`]].
    #[serde(default = "default_overcommit")]
    pub overcommit: f64,
}

impl Default for ResourceQuota {
    fn default() -> Self {
        ResourceQuota {
            requests: None,
            limits: None,
            overcommit: 1.0,
        }
    }
}

impl ResourceQuota {
    /// The most usage admission allows; `None`: unlimited.
    pub fn cap(&self) -> Option<u64> {
        // f64 holds integers exactly up to 2^53; quotas beyond that are unlimited in practice.
        let soft = self
            .requests
            .map(|r| (r as f64 * self.overcommit).floor().min(u64::MAX as f64) as u64);
        match (soft, self.limits) {
            (Some(s), Some(l)) => Some(s.min(l)),
            (s, l) => s.or(l),
        }
    }

    /// Refuse nonsense: a ratio outside (0, max], or a hard limit below the request.
    pub fn validate(&self, r: Resource) -> Result<(), TenancyError> {
        if !(self.overcommit > 0.0 && self.overcommit <= MAX_OVERCOMMIT_RATIO) {
            return Err(TenancyError::InvalidQuota(format!(
                "overcommit of {r} must be above 0 and at most {MAX_OVERCOMMIT_RATIO}, not {}",
                self.overcommit
            )));
        }
        if let (Some(req), Some(lim)) = (self.requests, self.limits)
            && req > lim
        {
            return Err(TenancyError::InvalidQuota(format!(
                "requests of {r} ({req} {}) exceed its limits ({lim} {})",
                r.unit(),
                r.unit()
            )));
        }
        Ok(())
    }
}

/// A tenant's quotas, one per resource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Quota {
    #[serde(default)]
    pub vcpus: ResourceQuota,
    #[serde(default)]
    pub memory: ResourceQuota,
    #[serde(default)]
    pub disk: ResourceQuota,
    #[serde(default)]
    pub vms: ResourceQuota,
    #[serde(default)]
    pub vclusters: ResourceQuota,
    #[serde(default)]
    pub gpus: ResourceQuota,
}

impl Quota {
    pub fn get(&self, r: Resource) -> &ResourceQuota {
        match r {
            Resource::Vcpus => &self.vcpus,
            Resource::Memory => &self.memory,
            Resource::Disk => &self.disk,
            Resource::Vms => &self.vms,
            Resource::Vclusters => &self.vclusters,
            Resource::Gpus => &self.gpus,
        }
    }

    pub fn get_mut(&mut self, r: Resource) -> &mut ResourceQuota {
        match r {
            Resource::Vcpus => &mut self.vcpus,
            Resource::Memory => &mut self.memory,
            Resource::Disk => &mut self.disk,
            Resource::Vms => &mut self.vms,
            Resource::Vclusters => &mut self.vclusters,
            Resource::Gpus => &mut self.gpus,
        }
    }

    pub fn validate(&self) -> Result<(), TenancyError> {
        for r in Resource::ALL {
            self.get(r).validate(r)?;
        }
        Ok(())
    }

    /// Whether `usage + demand` fits; the first resource that does not, as an error.
    pub fn check(&self, tenant: &str, usage: &Demand, demand: &Demand) -> Result<(), TenancyError> {
        for r in Resource::ALL {
            let want = demand.get(r);
            if want == 0 {
                // A demand that does not grow a resource never fails on it, even when a
                // lowered quota left the tenant above it.
                continue;
            }
            let Some(cap) = self.get(r).cap() else {
                continue;
            };
            let used = usage.get(r);
            if used.saturating_add(want) > cap {
                return Err(TenancyError::QuotaExceeded {
                    resource: r,
                    tenant: tenant.to_string(),
                    requested: want,
                    left: cap.saturating_sub(used),
                    cap,
                });
            }
        }
        Ok(())
    }
}

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub name: String,
    #[serde(default)]
    pub comment: String,
    pub created_at_s: i64,
    #[serde(default)]
    pub quota: Quota,
}

/// Failures of tenancy operations.
#[derive(Debug, Error)]
pub enum TenancyError {
    #[error("no such tenant '{0}'")]
    NoSuchTenant(String),
    #[error("tenant '{0}' already exists")]
    TenantExists(String),
    #[error(
        "invalid tenant name '{0}': use 2 to 64 letters, digits, '-' and '_', starting with a letter"
    )]
    InvalidName(String),
    #[error("invalid quota: {0}")]
    InvalidQuota(String),
    #[error(
        "quota {resource} of tenant {tenant} exceeded: requested {requested} {unit}, {left} {unit} of {cap} {unit} left",
        unit = resource.unit()
    )]
    QuotaExceeded {
        resource: Resource,
        tenant: String,
        requested: u64,
        left: u64,
        cap: u64,
    },
    #[error("tenant '{tenant}' still owns {what}")]
    NotEmpty { tenant: String, what: String },
    #[error("user '{user}' is bound to tenant '{bound}', not '{wanted}'")]
    WrongTenant {
        user: String,
        bound: String,
        wanted: String,
    },
    #[error("pool '{0}' does not exist")]
    NoSuchPool(String),
    #[error("{0}")]
    Conflict(String),
    #[error("tenancy store operation failed")]
    Store(#[from] StoreError),
}

impl From<TenancyError> for ApiError {
    fn from(e: TenancyError) -> Self {
        use TenancyError as T;
        match e {
            // 403: Proxmox clients treat it as a refusal, not a fault to retry.
            T::QuotaExceeded { .. } | T::WrongTenant { .. } => ApiError::Refused(e.to_string()),
            T::NoSuchTenant(_) | T::NoSuchPool(_) => ApiError::NotFound(e.to_string()),
            T::InvalidName(_) => ApiError::param("tenant", e.to_string()),
            T::InvalidQuota(_) => ApiError::BadRequest(e.to_string()),
            T::TenantExists(_) | T::NotEmpty { .. } | T::Conflict(_) => {
                ApiError::Conflict(e.to_string())
            }
            T::Store(inner) => inner.into(),
        }
    }
}

pub fn tenant_key(tenant: &str) -> Key {
    Key::pack(&(store_keys::TENANTS, tenant))
}

pub fn usage_key(tenant: &str) -> Key {
    Key::pack(&(store_keys::USAGE, tenant))
}

pub fn user_key(userid: &str) -> Key {
    Key::pack(&(store_keys::USERS, userid))
}

/// Whether `name` is a valid tenant (and pool) name.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    (2..=MAX_TENANT_NAME_BYTES).contains(&name.len())
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The tenant record, or [`TenancyError::NoSuchTenant`].
pub async fn tenant(tx: &mut Txn, tenant: &str) -> Result<TenantRecord, TenancyError> {
    tx.get_json::<TenantRecord>(&tenant_key(tenant))
        .await?
        .ok_or_else(|| TenancyError::NoSuchTenant(tenant.to_string()))
}

/// The tenant's usage (zero when nothing was ever admitted).
pub async fn usage(tx: &mut Txn, tenant: &str) -> Result<Demand, TenancyError> {
    Ok(tx
        .get_json::<Demand>(&usage_key(tenant))
        .await?
        .unwrap_or_default())
}

/// Inside the caller's transaction: refuses if `demand` does not fit the tenant's quotas,
/// else adds it to the usage.
pub async fn admit(tx: &mut Txn, tenant: &str, demand: &Demand) -> Result<(), TenancyError> {
    let rec = self::tenant(tx, tenant).await?;
    let mut used = usage(tx, tenant).await?;
    rec.quota.check(tenant, &used, demand)?;
    for r in Resource::ALL {
        let slot = used.slot(r);
        *slot = slot.saturating_add(demand.get(r));
    }
    tx.put_json(&usage_key(tenant), &used)?;
    Ok(())
}

/// Inside the caller's transaction: subtracts `demand` (saturating) from the usage.
pub async fn release(tx: &mut Txn, tenant: &str, demand: &Demand) -> Result<(), TenancyError> {
    if !tenant_exists(tx, tenant).await? {
        return Err(TenancyError::NoSuchTenant(tenant.to_string()));
    }
    let mut used = usage(tx, tenant).await?;
    for r in Resource::ALL {
        let slot = used.slot(r);
        *slot = slot.saturating_sub(demand.get(r));
    }
    tx.put_json(&usage_key(tenant), &used)?;
    Ok(())
}

pub async fn tenant_exists(tx: &mut Txn, tenant: &str) -> Result<bool, TenancyError> {
    Ok(tx.get(&tenant_key(tenant)).await?.is_some())
}

/// The tenant `userid` is bound to, if any.
pub async fn bound_tenant(tx: &mut Txn, userid: &str) -> Result<Option<String>, TenancyError> {
    Ok(tx.get_json::<String>(&user_key(userid)).await?)
}

/// Every tenant record, ordered by name.
pub async fn list(tx: &mut Txn) -> Result<Vec<TenantRecord>, TenancyError> {
    let rows: Vec<(Key, TenantRecord)> = tx
        .list_json(&Key::prefix(&(store_keys::TENANTS,)), RangeOptions::all())
        .await?;
    Ok(rows.into_iter().map(|(_, t)| t).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(requests: Option<u64>, limits: Option<u64>, overcommit: f64) -> ResourceQuota {
        ResourceQuota {
            requests,
            limits,
            overcommit,
        }
    }

    #[test]
    fn cap_is_the_overcommitted_request_bounded_by_the_limit() {
        assert_eq!(quota(None, None, 1.0).cap(), None);
        assert_eq!(quota(Some(8), None, 1.5).cap(), Some(12));
        assert_eq!(quota(Some(8), Some(10), 1.5).cap(), Some(10));
        assert_eq!(quota(None, Some(10), 4.0).cap(), Some(10));
        assert_eq!(quota(Some(3), None, 0.5).cap(), Some(1), "rounded down");
    }

    #[test]
    fn check_names_the_quota_the_request_and_what_is_left() {
        let q = Quota {
            memory: quota(Some(8192), None, 1.0),
            ..Quota::default()
        };
        let used = Demand {
            memory_mib: 7168,
            ..Demand::default()
        };
        let want = Demand {
            memory_mib: 4096,
            ..Demand::default()
        };
        let err = q.check("acme", &used, &want).unwrap_err();
        assert_eq!(
            err.to_string(),
            "quota memory of tenant acme exceeded: requested 4096 MiB, 1024 MiB of 8192 MiB left"
        );
        assert_eq!(ApiError::from(err).status().as_u16(), 403);
        let fits = Demand {
            memory_mib: 1024,
            ..Demand::default()
        };
        assert!(q.check("acme", &used, &fits).is_ok());
    }

    #[test]
    fn a_demand_that_does_not_grow_a_resource_passes_a_lowered_quota() {
        let q = Quota {
            vms: quota(Some(1), None, 1.0),
            ..Quota::default()
        };
        let used = Demand {
            vms: 5,
            ..Demand::default()
        };
        assert!(q.check("t", &used, &Demand::default()).is_ok());
    }

    #[test]
    fn validate_refuses_bad_ratios_and_requests_above_limits() {
        assert!(quota(Some(1), None, 0.0).validate(Resource::Vms).is_err());
        assert!(
            quota(Some(1), None, f64::NAN)
                .validate(Resource::Vms)
                .is_err()
        );
        assert!(quota(Some(1), None, 101.0).validate(Resource::Vms).is_err());
        assert!(
            quota(Some(5), Some(4), 1.0)
                .validate(Resource::Vms)
                .is_err()
        );
        assert!(quota(Some(4), Some(5), 2.0).validate(Resource::Vms).is_ok());
    }

    #[test]
    fn delta_splits_growth_and_shrink() {
        let old = Demand {
            vcpus: 2,
            memory_mib: 1024,
            ..Demand::default()
        };
        let new = Demand {
            vcpus: 4,
            memory_mib: 512,
            ..Demand::default()
        };
        let (grow, shrink) = old.delta(&new);
        assert_eq!(grow.vcpus, 2);
        assert_eq!(grow.memory_mib, 0);
        assert_eq!(shrink.memory_mib, 512);
        assert_eq!(shrink.vcpus, 0);
    }

    #[test]
    fn names_are_pool_ids() {
        assert!(valid_name("acme"));
        assert!(valid_name("acme-2_b"));
        assert!(!valid_name("a"));
        assert!(!valid_name("1acme"));
        assert!(!valid_name("ac/me"));
        assert!(!valid_name("../x"));
    }
}
