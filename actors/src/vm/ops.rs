//! Node-level VM operations: atomic VMID allocation, creation (disks allocated, nothing
//! left behind on failure), sending operations to a VM's actor, and removing its actor.

use std::collections::BTreeMap;
use std::time::Duration;

use gpve_storage_drivers::VolumeFormat;
use gpve_store::{Key, RangeOptions};
use ractor::rpc::CallResult;

use super::actor::{VmError, VmMsg, VmOp, remove_volume};
use super::config::{self, DriveSource};
use super::{VM_SUBSPACE, VmEntry, VmHost, first_free_vmid, vm_child, vm_key};

/// How long a caller waits for a VM actor that is restarting (between its incarnations).
pub const ACTOR_WAIT_MS: u64 = 15_000;
const ACTOR_POLL_MS: u64 = 50;

/// Reserve a VMID and write the new VM's entry (locked `create`) in one transaction.
/// `want` picks the VMID; without it the lowest free one is taken. Two parallel calls never
/// get the same VMID: the store's serializable transactions make the loser retry.
pub async fn reserve(
    host: &VmHost,
    want: Option<u32>,
    config: BTreeMap<String, String>,
) -> Result<u32, VmError> {
    let node = host.node.clone();
    let result = host
        .store
        .transact(move |tx| {
            let node = node.clone();
            let config = config.clone();
            Box::pin(async move {
                let vmid = match want {
                    Some(v) => {
                        if tx.get(&vm_key(v)).await?.is_some() {
                            return Ok(Err(v));
                        }
                        v
                    }
                    None => {
                        let rows = tx
                            .get_prefix(&Key::prefix(&(VM_SUBSPACE,)), RangeOptions::all())
                            .await?;
                        let taken: Vec<u32> = rows
                            .iter()
                            .filter_map(|(k, _)| k.unpack::<(String, u32)>().ok().map(|(_, v)| v))
                            .collect();
                        match first_free_vmid(taken) {
                            Some(v) => v,
                            None => return Ok(Err(0)),
                        }
                    }
                };
                let mut entry = VmEntry::new(vmid, &node, config);
                entry.lock = Some("create".into());
                tx.put_json(&vm_key(vmid), &entry)?;
                Ok(Ok(vmid))
            })
        })
        .await?;
    match result {
        Ok(v) => Ok(v),
        Err(0) => Err(VmError::Config(config::ConfigErrors::one(
            "vmid",
            "no free VMID is left",
        ))),
        Err(v) => Err(VmError::Config(config::ConfigErrors::one(
            "vmid",
            format!("VM {v} already exists"),
        ))),
    }
}

/// Allocate every `STORAGE:SIZE` drive in `set`; returns the values with volume ids and
/// the volumes allocated. On failure the volumes allocated so far are removed.
pub async fn allocate_drives(
    host: &VmHost,
    vmid: u32,
    set: &BTreeMap<String, String>,
) -> Result<(BTreeMap<String, String>, Vec<String>), VmError> {
    let mut out = set.clone();
    let mut allocated: Vec<String> = Vec::new();
    for (key, value) in set {
        if !config::is_drive(key) {
            continue;
        }
        let mut drive =
            config::parse_drive(value).map_err(|e| config::ConfigErrors::one(key, e))?;
        let DriveSource::Allocate { storage, size_gib } = drive.source.clone() else {
            continue;
        };
        let format = match drive.format {
            Some(gpve_hypervisor::DiskFormat::Raw) => VolumeFormat::Raw,
            // qcow2 by default: snapshots and linked clones on dir storages need it.
            _ => VolumeFormat::Qcow2,
        };
        let size_bytes = size_gib << 30;
        match host
            .storage
            .allocate(&storage, vmid, format, size_bytes)
            .await
        {
            Ok(info) => {
                let volid = info.id.to_string();
                drive.size_bytes = Some(size_bytes);
                drive.format = None;
                out.insert(key.clone(), drive.render(&volid));
                allocated.push(volid);
            }
            Err(e) => {
                remove_volumes(host, vmid, &allocated).await;
                return Err(VmError::Config(config::ConfigErrors::one(
                    key,
                    format!(
                        "cannot allocate {size_gib} GiB on storage '{storage}': {}",
                        crate::storage::error_chain(&e)
                    ),
                )));
            }
        }
    }
    Ok((out, allocated))
}

/// Best-effort removal of volumes (cleanup after a failed operation).
pub async fn remove_volumes(host: &VmHost, vmid: u32, volumes: &[String]) {
    for v in volumes {
        if let Err(e) = remove_volume(host, vmid, v).await {
            tracing::warn!(vmid, volume = %v, error = %e, "cannot remove a volume of a failed operation");
        }
    }
}

/// Finish a reserved VM: allocate its disks, store the final configuration, unlock it and
/// start its actor. On failure everything of the VM is removed (disks, entry).
pub async fn create(
    host: &VmHost,
    vmid: u32,
    changes: BTreeMap<String, String>,
) -> Result<(), VmError> {
    let (config, allocated) = match allocate_drives(host, vmid, &changes).await {
        Ok(r) => r,
        Err(e) => {
            let _ = host.store.delete(&vm_key(vmid)).await;
            return Err(e);
        }
    };
    let finish = async {
        config::check_whole(&config)?;
        let cfg = config.clone();
        super::update_entry(&host.store, vmid, move |e| {
            e.config = cfg.clone();
            e.lock = None;
        })
        .await?
        .ok_or(VmError::NotFound(vmid))?;
        add_actor(host, vmid).await
    };
    if let Err(e) = finish.await {
        remove_volumes(host, vmid, &allocated).await;
        let _ = host.store.delete(&vm_key(vmid)).await;
        return Err(e);
    }
    Ok(())
}

/// Start the actor of VM `vmid` under the VM supervisor.
pub async fn add_actor(host: &VmHost, vmid: u32) -> Result<(), VmError> {
    let sup = host
        .supervisor()
        .ok_or_else(|| VmError::Unavailable("the VM supervisor is not running".into()))?;
    sup.add_child(vm_child(host.clone(), vmid))
        .await
        .map_err(|e| VmError::Unavailable(crate::storage::error_chain(&e)))
}

/// Stop and forget the actor of a deleted VM.
pub async fn remove_actor(host: &VmHost, vmid: u32) -> Result<(), VmError> {
    let sup = host
        .supervisor()
        .ok_or_else(|| VmError::Unavailable("the VM supervisor is not running".into()))?;
    sup.remove_child(&super::actor_id(vmid))
        .await
        .map_err(|e| VmError::Unavailable(crate::storage::error_chain(&e)))
}

/// Send an operation to VM `vmid` and wait for its outcome (at most `timeout_ms` once
/// queued). While the actor is between incarnations (restarting after a QEMU crash) the
/// call waits for the next one, up to [`ACTOR_WAIT_MS`].
pub async fn call(host: &VmHost, vmid: u32, op: VmOp, timeout_ms: u64) -> Result<String, VmError> {
    let path = host.actor_path(vmid);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ACTOR_WAIT_MS);
    let actor = loop {
        if let Some(a) = host.directory.lookup_ref::<VmMsg>(&path) {
            break a;
        }
        if super::load_entry(&host.store, vmid).await?.is_none() {
            return Err(VmError::NotFound(vmid));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(VmError::Unavailable(format!(
                "the actor of VM {vmid} is not running (restart intensity exceeded?)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(ACTOR_POLL_MS)).await;
    };
    if let Some(stats) = host.directory.stats(&path) {
        stats.record_sent();
    }
    match actor
        .call(
            |reply| VmMsg::Op(op, reply),
            Some(Duration::from_millis(timeout_ms)),
        )
        .await
    {
        Ok(CallResult::Success(r)) => r,
        Ok(CallResult::Timeout) => Err(VmError::Unavailable(format!(
            "VM {vmid} did not answer within {timeout_ms} ms"
        ))),
        Ok(CallResult::SenderError) => Err(VmError::Unavailable(format!(
            "the actor of VM {vmid} stopped before answering (restarting?)"
        ))),
        Err(e) => Err(VmError::Unavailable(format!("VM {vmid}: {e}"))),
    }
}
