//! VMs against tenant quotas.
//!
//! A VM counts against a tenant when it is a member of the tenant's pool (the pool has the
//! tenant's name). What it was charged is kept in `("tenant-charges", vmid)`, so a delete
//! releases exactly what the create admitted even if the configuration changed meanwhile.
//!
//! The VM record is written by the VM actor's own transactions (`gpve_actors::vm::ops`),
//! which cannot call into this crate, so each change is accounted in a transaction of its
//! own, ordered so that a tenant is never charged less than it uses:
//! - create and clone: the VMID is reserved first (record locked `create`); then one
//!   transaction either admits the demand, writes the charge and joins the pool, or
//!   removes the reservation: a refused create leaves nothing behind;
//! - growth (config, resize): admitted before the operation runs ([`reserve_growth`]);
//!   after it, [`settle`] recharges to what the stored configuration really needs;
//! - delete: released after the VM is gone ([`release_deleted`]).
//!
//! A crash between an operation and its settling leaves the tenant over-charged, never
//! under-charged; the next [`settle`] of that VM corrects it.

use std::collections::BTreeMap;

use gpve_actors::vm::config::{self as vmconfig, DriveSource};
use gpve_actors::vm::{VmEntry, vm_key};
use gpve_store::{Key, RangeOptions, Store, Txn};
use serde::{Deserialize, Serialize};

use super::{Demand, TenancyError, admit, release, store_keys, tenant_exists};
use crate::rbac::db::PoolRecord;

const GIB: u64 = 1 << 30;
/// The pools subspace of [`crate::rbac::db`] (`("pools", poolid)`).
const POOLS: &str = "pools";

/// What one VM is charged to its tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub tenant: String,
    pub demand: Demand,
}

pub fn charge_key(vmid: u32) -> Key {
    Key::pack(&(store_keys::CHARGES, vmid))
}

fn pool_key(pool: &str) -> Key {
    Key::pack(&(POOLS, pool))
}

/// What a VM configuration demands: vCPUs (sockets × cores), memory, the sum of its disks
/// (CD-ROMs excluded; sizes rounded up to GiB), one VM and one GPU per `hostpciN`.
pub fn vm_demand(config: &BTreeMap<String, String>) -> Demand {
    let mut disk_gib = 0u64;
    for (_, v) in config.iter().filter(|(k, _)| vmconfig::is_drive(k)) {
        let Ok(drive) = vmconfig::parse_drive(v) else {
            continue;
        };
        if drive.options.get("media").is_some_and(|m| m == "cdrom") {
            continue;
        }
        let gib = match (&drive.source, drive.size_bytes) {
            (DriveSource::Allocate { size_gib, .. }, _) => *size_gib,
            (_, Some(bytes)) => bytes.div_ceil(GIB),
            (_, None) => 0,
        };
        disk_gib = disk_gib.saturating_add(gib);
    }
    Demand {
        vcpus: u64::from(vmconfig::vcpus(config)),
        memory_mib: vmconfig::memory_mib(config),
        disk_gib,
        vms: 1,
        vclusters: 0,
        gpus: config.keys().filter(|k| k.starts_with("hostpci")).count() as u64,
    }
}

/// Inside the caller's transaction: VM `vmid`'s charge becomes `demand` (the growth
/// admitted, the shrink released). Returns the tenant, `None` when the VM has no charge.
pub async fn recharge(
    tx: &mut Txn,
    vmid: u32,
    demand: &Demand,
) -> Result<Option<String>, TenancyError> {
    let Some(mut charge) = tx.get_json::<Charge>(&charge_key(vmid)).await? else {
        return Ok(None);
    };
    let (grow, shrink) = charge.demand.delta(demand);
    // The refusal comes before any write, so a caller may still commit its own cleanup.
    if !grow.is_zero() {
        admit(tx, &charge.tenant, &grow).await?;
    }
    if !shrink.is_zero() {
        release(tx, &charge.tenant, &shrink).await?;
    }
    charge.demand = *demand;
    tx.put_json(&charge_key(vmid), &charge)?;
    Ok(Some(charge.tenant))
}

/// Inside the caller's transaction: VM `vmid` joins `pool`, and when the pool is a
/// tenant's, the tenant is charged `demand`. Refusals come before any write.
pub async fn join_pool(
    tx: &mut Txn,
    pool: &str,
    vmid: u32,
    demand: &Demand,
) -> Result<(), TenancyError> {
    let Some(mut rec) = tx.get_json::<PoolRecord>(&pool_key(pool)).await? else {
        return Err(TenancyError::NoSuchPool(pool.to_string()));
    };
    if tenant_exists(tx, pool).await? {
        match tx.get_json::<Charge>(&charge_key(vmid)).await? {
            Some(c) if c.tenant != pool => {
                return Err(TenancyError::Conflict(format!(
                    "VM {vmid} already counts against tenant '{}'",
                    c.tenant
                )));
            }
            // Retried after an unknown commit outcome: settle to the demand.
            Some(_) => {
                recharge(tx, vmid, demand).await?;
            }
            None => {
                admit(tx, pool, demand).await?;
                tx.put_json(
                    &charge_key(vmid),
                    &Charge {
                        tenant: pool.to_string(),
                        demand: *demand,
                    },
                )?;
            }
        }
    }
    rec.vms.insert(vmid);
    tx.put_json(&pool_key(pool), &rec)?;
    Ok(())
}

/// Which pool a new VM joins: `pool` if given, else the tenant the caller is bound to.
/// A user bound to a tenant creates only there.
pub async fn target_pool(
    store: &Store,
    userid: &str,
    pool: Option<&str>,
) -> Result<Option<String>, TenancyError> {
    let bound: Option<String> = store.get_json(&super::user_key(userid)).await?;
    let user = userid.to_string();
    match (bound, pool) {
        (Some(b), Some(p)) if b != p => Err(TenancyError::WrongTenant {
            user: user.clone(),
            bound: b,
            wanted: p.to_string(),
        }),
        (Some(b), _) => Ok(Some(b)),
        (None, p) => Ok(p.map(str::to_string)),
    }
}

/// The tenant a VM created in namespace `ns` counts against: the namespace's tenant. A
/// user bound to a tenant creates only in that tenant's namespaces.
pub async fn namespace_owner(
    store: &Store,
    userid: &str,
    ns: &str,
) -> Result<Option<String>, TenancyError> {
    use crate::v1::virtualmachines::mapping::{NamespaceRecord, namespace_key};
    let owner = store
        .get_json::<NamespaceRecord>(&namespace_key(ns))
        .await?
        .and_then(|n| n.tenant);
    let bound: Option<String> = store.get_json(&super::user_key(userid)).await?;
    match (bound, &owner) {
        (Some(b), Some(o)) if &b == o => Ok(owner),
        (Some(b), o) => Err(TenancyError::WrongTenant {
            user: userid.to_string(),
            bound: b,
            wanted: match o {
                Some(o) => o.clone(),
                None => format!("(namespace '{ns}' of no tenant)"),
            },
        }),
        (None, _) => Ok(owner),
    }
}

/// After `gpve_actors::vm::ops::reserve` wrote VM `vmid`: in one transaction, join `pool`
/// and charge its tenant, or, when refused, remove the reservation.
pub async fn admit_reserved(
    store: &Store,
    vmid: u32,
    pool: &str,
    demand: &Demand,
) -> Result<(), TenancyError> {
    let (pool, demand) = (pool.to_string(), *demand);
    store
        .transact(|tx| {
            let pool = pool.clone();
            Box::pin(async move {
                match join_pool(tx, &pool, vmid, &demand).await {
                    Ok(()) => Ok(Ok(())),
                    Err(TenancyError::Store(e)) => Err(e),
                    Err(refused) => {
                        tx.clear(&vm_key(vmid));
                        Ok(Err(refused))
                    }
                }
            })
        })
        .await?
}

/// Before a change that may grow VM `vmid` to `after`: admit the growth now (the charge
/// becomes the larger of both per resource); [`settle`] after the change.
pub async fn reserve_growth(store: &Store, vmid: u32, after: &Demand) -> Result<(), TenancyError> {
    let after = *after;
    store
        .transact(|tx| {
            Box::pin(async move {
                let Some(charge) = tx.get_json::<Charge>(&charge_key(vmid)).await? else {
                    return Ok(Ok(()));
                };
                let (grow, _) = charge.demand.delta(&after);
                if grow.is_zero() {
                    return Ok(Ok(()));
                }
                let mut larger = charge.demand;
                for r in super::Resource::ALL {
                    *larger.slot(r) = larger.get(r).max(after.get(r));
                }
                Ok(match recharge(tx, vmid, &larger).await {
                    Ok(_) => Ok(()),
                    Err(TenancyError::Store(e)) => return Err(e),
                    Err(e) => Err(e),
                })
            })
        })
        .await?
}

/// Recharge VM `vmid` to what its stored configuration (pending changes applied) needs;
/// a VM that is gone releases its charge. No-op for a VM without a charge.
pub async fn settle(store: &Store, vmid: u32) -> Result<(), TenancyError> {
    store
        .transact(|tx| {
            Box::pin(async move {
                if tx.get(&charge_key(vmid)).await?.is_none() {
                    return Ok(Ok(()));
                }
                let Some(entry) = tx.get_json::<VmEntry>(&vm_key(vmid)).await? else {
                    return Ok(uncharge(tx, vmid).await.map(|_| ()));
                };
                let demand = vm_demand(&entry.with_pending());
                Ok(match recharge(tx, vmid, &demand).await {
                    Ok(_) => Ok(()),
                    Err(TenancyError::Store(e)) => return Err(e),
                    Err(e) => Err(e),
                })
            })
        })
        .await?
}

/// Inside the caller's transaction: release VM `vmid`'s charge and remove it from every
/// pool. Returns the charge it had.
pub async fn uncharge(tx: &mut Txn, vmid: u32) -> Result<Option<Charge>, TenancyError> {
    let charge = tx.get_json::<Charge>(&charge_key(vmid)).await?;
    if let Some(c) = &charge {
        release(tx, &c.tenant, &c.demand).await?;
        tx.clear(&charge_key(vmid));
    }
    let pools: Vec<(Key, PoolRecord)> = tx
        .list_json(&Key::prefix(&(POOLS,)), RangeOptions::all())
        .await?;
    for (k, mut p) in pools {
        if p.vms.remove(&vmid) {
            tx.put_json(&k, &p)?;
        }
    }
    Ok(charge)
}

/// After VM `vmid` was destroyed: release its charge and drop it from its pool (Proxmox
/// removes a destroyed VM from its pool too). Nothing happens while the VM still exists.
pub async fn release_deleted(store: &Store, vmid: u32) -> Result<(), TenancyError> {
    store
        .transact(|tx| {
            Box::pin(async move {
                if tx.get(&vm_key(vmid)).await?.is_some() {
                    return Ok(Ok(()));
                }
                Ok(match uncharge(tx, vmid).await {
                    Ok(_) => Ok(()),
                    Err(TenancyError::Store(e)) => return Err(e),
                    Err(e) => Err(e),
                })
            })
        })
        .await?
}

/// The tenant VM `vmid` counts against, if any.
pub async fn vm_tenant(store: &Store, vmid: u32) -> Result<Option<String>, TenancyError> {
    Ok(store
        .get_json::<Charge>(&charge_key(vmid))
        .await?
        .map(|c| c.tenant))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn demand_counts_cpus_memory_disks_and_gpus() {
        let d = vm_demand(&cfg(&[
            ("cores", "2"),
            ("sockets", "2"),
            ("memory", "2048"),
            ("scsi0", "local:4"),
            ("scsi1", "local:100/vm-100-disk-1.qcow2,size=1536M"),
            ("ide2", "none,media=cdrom"),
            ("hostpci0", "0000:01:00.0"),
        ]));
        assert_eq!(d.vcpus, 4);
        assert_eq!(d.memory_mib, 2048);
        assert_eq!(d.disk_gib, 6, "4 GiB + 1.5 GiB rounded up, CD-ROM excluded");
        assert_eq!(d.vms, 1);
        assert_eq!(d.gpus, 1);
    }
}
