//! Which VM uses a volume, read from the VM records in the store.
//!
//! The VM entry at `("vms", vmid)` keeps the Proxmox configuration as a key → value map
//! (`scsi0 → local:100/vm-100-disk-0.qcow2,size=4G`). This lookup reads every VM record as
//! raw JSON, so it depends on no more than that shape, and treats a VM as using a volume
//! when a Proxmox drive key — `scsiN`, `virtioN`, `sataN`, `ideN`, `efidisk0`,
//! `tpmstate0`, `unusedN` — has a value whose first comma-separated part is the volume id,
//! at the top level, in the `config` or `pending` map, or in a snapshot's `config`
//! (`snapshots.NAME.config`), as Proxmox also counts snapshot references.

use gpve_storage_drivers::VolumeId;
use gpve_store::{Key, Store, StoreError};
use serde_json::Value;

use crate::vm::VM_SUBSPACE;

/// Whether `key` names a Proxmox drive or unused-disk entry.
pub fn is_drive_key(key: &str) -> bool {
    const PREFIXES: [&str; 5] = ["scsi", "virtio", "sata", "ide", "unused"];
    if key == "efidisk0" || key == "tpmstate0" {
        return true;
    }
    PREFIXES.iter().any(|p| {
        key.strip_prefix(p)
            .is_some_and(|n| !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Whether a drive value (`STORAGE:VOLNAME,opt=...`) names `volume`.
fn names_volume(value: &Value, volume: &str) -> bool {
    value
        .as_str()
        .and_then(|s| s.split(',').next())
        .is_some_and(|v| v.trim() == volume)
}

fn object_uses(obj: &serde_json::Map<String, Value>, volume: &str) -> bool {
    obj.iter()
        .any(|(k, v)| is_drive_key(k) && names_volume(v, volume))
}

/// Whether one VM record uses `volume`: in its configuration, its pending changes, or
/// the configuration of one of its snapshots (as Proxmox counts snapshot references).
pub fn record_uses(record: &Value, volume: &str) -> bool {
    let Some(obj) = record.as_object() else {
        return false;
    };
    let nested = |key: &str| {
        obj.get(key)
            .and_then(Value::as_object)
            .is_some_and(|c| object_uses(c, volume))
    };
    let in_snapshots = obj
        .get("snapshots")
        .and_then(Value::as_object)
        .is_some_and(|snaps| {
            snaps.values().any(|s| {
                s.get("config")
                    .and_then(Value::as_object)
                    .is_some_and(|c| object_uses(c, volume))
            })
        });
    object_uses(obj, volume) || nested("config") || nested("pending") || in_snapshots
}

/// The VMID of the first VM (lowest VMID) whose record uses `volume`.
pub async fn volume_user(store: &Store, volume: &VolumeId) -> Result<Option<u32>, StoreError> {
    let rows: Vec<(Key, Value)> = store.list_json(&Key::prefix(&(VM_SUBSPACE,))).await?;
    let wanted = volume.to_string();
    for (key, record) in rows {
        if record_uses(&record, &wanted) {
            let vmid = key
                .unpack::<(String, u32)>()
                .map(|(_, vmid)| vmid)
                .ok()
                .or_else(|| record.get("vmid").and_then(Value::as_u64).map(|v| v as u32))
                .unwrap_or(0);
            return Ok(Some(vmid));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn drive_keys() {
        for k in [
            "scsi0",
            "virtio15",
            "sata5",
            "ide2",
            "unused0",
            "efidisk0",
            "tpmstate0",
        ] {
            assert!(is_drive_key(k), "{k}");
        }
        for k in ["scsi", "scsihw", "name", "net0", "ide", "virtio1234"] {
            assert!(!is_drive_key(k), "{k}");
        }
    }

    #[test]
    fn records() {
        let v = "local:100/vm-100-disk-0.qcow2";
        assert!(record_uses(&json!({"scsi0": format!("{v},size=4G")}), v));
        assert!(record_uses(&json!({"config": {"virtio1": v}}), v));
        assert!(record_uses(&json!({"pending": {"sata0": v}}), v));
        assert!(record_uses(
            &json!({"snapshots": {"s1": {"config": {"unused0": v}}}}),
            v
        ));
        assert!(!record_uses(&json!({"name": v}), v));
        assert!(!record_uses(
            &json!({"scsi0": "local:100/vm-100-disk-01.qcow2"}),
            v
        ));
        assert!(!record_uses(&json!([v]), v));
    }
}
