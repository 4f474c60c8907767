//! VM disks beyond create and delete: resize, move to another storage, and clones (full
//! or linked) into a new VM. The VM actor runs these from its mailbox (see
//! [`super::actor::VmOp`]), so they never interleave with a start of the same VM.
//!
//! Crash safety: every new volume is built by its driver under a temporary name and
//! renamed into place (temporaries are removed when the pool is next mounted), and the
//! VM's configuration switches to a new volume in one store transaction after the volume
//! exists. A crash therefore leaves the configuration pointing at the old volume or the
//! new one, never at nothing; at worst a finished copy is left unreferenced.
//!
//! Linked clones are recorded at `("vm-linked", base_vmid, clone_vmid)` → the clone's
//! volume ids, so a template whose clones still use those volumes refuses to be deleted
//! (a qcow2 overlay loses its data with its backing file; Proxmox refuses it the same way).

use std::collections::BTreeMap;

use gpve_storage_drivers::{
    Capabilities, CloneMode, StorageError, VolumeFormat, VolumeId, VolumeInfo,
};
use gpve_store::{Key, Store, StoreError};

use super::actor::{VmActor, VmError};
use super::config::{self, ConfigErrors, Drive};
use super::{VmEntry, VmHost, load_entry, update_entry, vm_key};
use crate::storage::{StorageServiceError, VolumeMsg, error_chain};

/// Store subspace of linked-clone records.
pub const LINKED_SUBSPACE: &str = "vm-linked";
/// Sector size every new disk size is rounded up to.
pub const SECTOR_BYTES: u64 = 512;
/// Largest disk size accepted, in bytes (1 PiB, as the configuration parser bounds it).
pub const MAX_DISK_BYTES: u64 = 1 << 50;
/// Attempts to find a free target name when concurrent allocations race for one.
pub const MAX_TARGET_ATTEMPTS: u32 = 8;

/// A `size` parameter of `resize`: `+1G` grows by, `10G` grows to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeChange {
    GrowBy(u64),
    GrowTo(u64),
}

/// Parse Proxmox's `\+?\d+(\.\d+)?[KMGT]?`; a bare number is bytes (as `qm resize`).
pub fn parse_size_change(s: &str) -> Result<SizeChange, String> {
    let s = s.trim();
    let (plus, rest) = match s.strip_prefix('+') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (num, mult) = match rest.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult: u64 = match c {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("size '{s}' has an unknown unit (use K, M, G or T)")),
            };
            (&rest[..i], mult)
        }
        _ => (rest, 1),
    };
    let valid = !num.is_empty()
        && num.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && num.bytes().filter(|b| *b == b'.').count() <= 1
        && !num.starts_with('.')
        && !num.ends_with('.');
    if !valid {
        return Err(format!(
            "size '{s}' is not [+]NUMBER[K|M|G|T] (e.g. +1G to grow by 1 GiB, 10G to grow to 10 GiB)"
        ));
    }
    let n: f64 = num
        .parse()
        .map_err(|_| format!("size '{s}' is not a number"))?;
    let bytes = n * mult as f64;
    if bytes > MAX_DISK_BYTES as f64 {
        return Err(format!("size '{s}' is larger than 1 PiB"));
    }
    let bytes = bytes as u64;
    Ok(if plus {
        SizeChange::GrowBy(bytes)
    } else {
        SizeChange::GrowTo(bytes)
    })
}

/// The size a disk of `current_bytes` gets, rounded up to whole sectors; shrinking is
/// refused naming the current size (it would cut off guest data).
pub fn new_disk_size(disk: &str, current_bytes: u64, change: SizeChange) -> Result<u64, String> {
    let wanted = match change {
        SizeChange::GrowBy(d) => current_bytes.saturating_add(d),
        SizeChange::GrowTo(b) => b,
    };
    let rounded = wanted.div_ceil(SECTOR_BYTES).saturating_mul(SECTOR_BYTES);
    if rounded < current_bytes {
        return Err(format!(
            "shrinking disk {disk} is not supported: its current size is {} ({current_bytes} bytes), \
             the requested size {} ({rounded} bytes)",
            config::format_size(current_bytes),
            config::format_size(rounded)
        ));
    }
    if rounded > MAX_DISK_BYTES {
        return Err(format!("disk {disk} would be larger than 1 PiB"));
    }
    Ok(rounded)
}

/// The format a copy gets on a storage with `caps`: the one asked for (if the storage
/// holds it), else the source's when it can, else the storage's first.
pub fn target_format(
    storage: &str,
    caps: &Capabilities,
    asked: Option<VolumeFormat>,
    source: VolumeFormat,
) -> Result<VolumeFormat, String> {
    match asked {
        Some(f) if caps.formats.contains(&f) => Ok(f),
        Some(f) => Err(format!(
            "storage '{storage}' cannot hold {f} images (it holds {})",
            caps.formats
                .iter()
                .map(|f| f.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        None if caps.formats.contains(&source) => Ok(source),
        None => caps
            .formats
            .first()
            .copied()
            .ok_or_else(|| format!("storage '{storage}' holds no disk image format")),
    }
}

/// The format of a linked clone on a storage with `caps`: a qcow2 overlay where the
/// storage holds qcow2 (dir), else the storage's native format (btrfs snapshot of raw).
pub fn linked_format(caps: &Capabilities) -> Option<VolumeFormat> {
    if !caps.linked_clones {
        return None;
    }
    if caps.formats.contains(&VolumeFormat::Qcow2) {
        Some(VolumeFormat::Qcow2)
    } else {
        caps.formats.first().copied()
    }
}

/// The drive `disk` of a configuration and its volume, or a 400-style error naming it.
pub fn disk_volume(
    cfg: &BTreeMap<String, String>,
    disk: &str,
) -> Result<(Drive, VolumeId), ConfigErrors> {
    if !config::is_drive(disk) {
        return Err(ConfigErrors::one(
            "disk",
            format!("'{disk}' is not a disk key (scsiN, virtioN, sataN or ideN)"),
        ));
    }
    let Some(value) = cfg.get(disk) else {
        return Err(ConfigErrors::one(
            "disk",
            format!("the VM has no disk '{disk}'"),
        ));
    };
    let drive = config::parse_drive(value).map_err(|e| ConfigErrors::one("disk", e))?;
    let Some(volid) = drive.volume() else {
        return Err(ConfigErrors::one(
            "disk",
            format!("disk '{disk}' has no volume yet"),
        ));
    };
    let id: VolumeId = volid
        .parse()
        .map_err(|e| ConfigErrors::one("disk", format!("{volid}: {e}")))?;
    Ok((drive, id))
}

fn linked_key(base: u32, clone: u32) -> Key {
    Key::pack(&(LINKED_SUBSPACE, base, clone))
}

/// Every volume a VM entry references: configuration, pending changes, snapshots.
fn referenced_volumes(e: &VmEntry) -> Vec<String> {
    let mut v = config::owned_volumes(&e.config);
    v.extend(config::owned_volumes(&e.with_pending()));
    for s in e.snapshots.values() {
        v.extend(config::owned_volumes(&s.config));
    }
    v
}

/// The VMIDs of the linked clones of `base` that still use a volume made as a linked
/// clone of it (a clone that was deleted, or whose disks were moved and so flattened,
/// no longer counts).
pub async fn linked_clones(store: &Store, base: u32) -> Result<Vec<u32>, StoreError> {
    let rows: Vec<(Key, Vec<String>)> = store
        .list_json(&Key::prefix(&(LINKED_SUBSPACE, base)))
        .await?;
    let mut out = Vec::new();
    for (key, volumes) in rows {
        let Ok((_, _, clone)) = key.unpack::<(String, u32, u32)>() else {
            continue;
        };
        let Some(e) = load_entry(store, clone).await? else {
            continue;
        };
        let used = referenced_volumes(&e);
        if volumes.iter().any(|v| used.contains(v)) {
            out.push(clone);
        }
    }
    Ok(out)
}

/// Refuse to remove the base disks of `vmid` while linked clones use them.
pub async fn refuse_if_linked_base(store: &Store, vmid: u32) -> Result<(), VmError> {
    let clones = linked_clones(store, vmid).await?;
    if clones.is_empty() {
        return Ok(());
    }
    let list = clones
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    Err(VmError::Config(ConfigErrors::one(
        "vmid",
        format!(
            "VM {vmid} is the base of linked clone(s) {list}; delete them (or move their disks, \
             which copies them in full) first"
        ),
    )))
}

/// Forget the linked-clone records of a deleted base VM.
pub async fn forget_linked_base(store: &Store, base: u32) -> Result<(), StoreError> {
    let rows: Vec<(Key, serde_json::Value)> = store
        .list_json(&Key::prefix(&(LINKED_SUBSPACE, base)))
        .await?;
    for (key, _) in rows {
        store.delete(&key).await?;
    }
    Ok(())
}

/// Copy `src` into a fresh `vm-VMID-disk-N` on `storage` in `format`. On the source's
/// storage the driver copies (linked or full) in one step; across storages the source is
/// exported flattened to a qcow2 staging file inside the target storage (qcow2, so the
/// import never has to guess the format of raw guest data) and imported from there.
async fn copy_volume(
    host: &VmHost,
    src: &VolumeId,
    storage: &str,
    vmid: u32,
    format: VolumeFormat,
    mode: CloneMode,
) -> Result<VolumeInfo, VmError> {
    let mut last = None;
    for _ in 0..MAX_TARGET_ATTEMPTS {
        let target = host.storage.next_disk_id(storage, vmid, format).await?;
        let result = if src.storage() == storage {
            host.storage.clone_volume(src, &target, mode).await
        } else {
            export_import(host, src, &target).await
        };
        match result {
            Err(StorageServiceError::Storage(StorageError::VolumeExists(id))) => last = Some(id),
            other => return other.map_err(Into::into),
        }
    }
    Err(VmError::Storage(format!(
        "no free disk name for VM {vmid} on storage '{storage}' (last tried {})",
        last.map(|i| i.to_string()).unwrap_or_default()
    )))
}

async fn export_import(
    host: &VmHost,
    src: &VolumeId,
    target: &VolumeId,
) -> Result<VolumeInfo, StorageServiceError> {
    let status = host.storage.status(target.storage()).await?;
    let staging_dir = status.config.path.join("images");
    std::fs::create_dir_all(&staging_dir).map_err(|e| {
        StorageServiceError::Unavailable(format!("cannot create {}: {e}", staging_dir.display()))
    })?;
    // A temporary name of this node: the next mount of the target pool removes it after a
    // crash.
    let staging = gpve_storage_drivers::fsutil::temp_sibling(
        &staging_dir.join(format!("{}.qcow2", target.name())),
        &host.node,
    );
    let dest = staging.clone();
    let result = async {
        host.storage
            .volume(src, true, |reply| VolumeMsg::Export {
                dest,
                format: Some(VolumeFormat::Qcow2),
                reply,
            })
            .await?;
        let source = staging.clone();
        host.storage
            .volume(target, true, |reply| VolumeMsg::Import { source, reply })
            .await
    }
    .await;
    gpve_storage_drivers::fsutil::remove_any(&staging);
    result
}

/// The first free `unusedN` key of a configuration.
fn free_unused(cfg: &BTreeMap<String, String>) -> Option<String> {
    (0..config::UNUSED_SLOTS)
        .map(|n| format!("unused{n}"))
        .find(|k| !cfg.contains_key(k))
}

impl VmActor {
    /// Grow disk `disk` by or to `size`. A stopped VM's volume is resized by its driver; a
    /// running VM would need QMP `block_resize`, which the hypervisor does not expose yet,
    /// so it is refused with that reason (QEMU holds the image's write lock).
    pub(super) async fn resize_disk(
        &self,
        vmid: u32,
        running: bool,
        disk: &str,
        size: &str,
    ) -> Result<String, VmError> {
        let entry = load_entry(&self.host.store, vmid)
            .await?
            .ok_or(VmError::NotFound(vmid))?;
        let (drive, id) = disk_volume(&entry.config, disk)?;
        let change = parse_size_change(size).map_err(|e| ConfigErrors::one("size", e))?;
        if running {
            return Err(VmError::Config(ConfigErrors::one(
                "disk",
                format!(
                    "VM {vmid} is running: resizing a disk of a running VM (QMP block_resize) \
                     is not built yet; stop the VM first"
                ),
            )));
        }
        let info = self
            .host
            .storage
            .volume(&id, false, |reply| VolumeMsg::Info { reply })
            .await?;
        let new_size = new_disk_size(disk, info.size_bytes, change)
            .map_err(|e| ConfigErrors::one("size", e))?;
        let resized = self.host.storage.resize(&id, new_size).await?;
        let key = disk.to_string();
        let volid = id.to_string();
        let mut drive = drive;
        drive.size_bytes = Some(resized.size_bytes);
        let value = drive.render(&volid);
        update_entry(&self.host.store, vmid, move |e| {
            // Only when the disk still names this volume (nothing else runs on this VM
            // meanwhile: its mailbox serialises operations).
            let same = e
                .config
                .get(&key)
                .and_then(|v| config::parse_drive(v).ok())
                .is_some_and(|d| d.volume() == Some(volid.as_str()));
            if same {
                e.config.insert(key.clone(), value.clone());
            }
        })
        .await?
        .ok_or(VmError::NotFound(vmid))?;
        Ok(format!(
            "VM {vmid}: disk {disk} ({id}) resized from {} to {}",
            config::format_size(info.size_bytes),
            config::format_size(resized.size_bytes)
        ))
    }

    /// Copy disk `disk` to `storage` (in `format`), point the configuration at the copy,
    /// and keep the old volume as `unusedN` or, with `delete`, remove it.
    pub(super) async fn move_disk(
        &self,
        vmid: u32,
        running: bool,
        disk: &str,
        storage: &str,
        format: Option<VolumeFormat>,
        delete: bool,
    ) -> Result<String, VmError> {
        if running {
            return Err(VmError::Config(ConfigErrors::one(
                "disk",
                format!(
                    "VM {vmid} is running: moving a disk of a running VM (live move) is not \
                     built yet; stop the VM first"
                ),
            )));
        }
        let entry = load_entry(&self.host.store, vmid)
            .await?
            .ok_or(VmError::NotFound(vmid))?;
        let (drive, src) = disk_volume(&entry.config, disk)?;
        if delete && !entry.snapshots.is_empty() {
            return Err(VmError::Config(ConfigErrors::one(
                "delete",
                "the VM has snapshots that reference the source disk; move without delete=1",
            )));
        }
        if delete {
            refuse_if_linked_base(&self.host.store, vmid).await?;
        }
        let caps = self
            .host
            .storage
            .capabilities(storage)
            .await
            .map_err(|e| ConfigErrors::one("storage", error_chain(&e)))?;
        let src_format = src.format_from_name().unwrap_or(VolumeFormat::Raw);
        let fmt = target_format(storage, &caps, format, src_format)
            .map_err(|e| ConfigErrors::one("format", e))?;
        if src.storage() == storage && fmt == src_format {
            return Err(VmError::Config(ConfigErrors::one(
                "storage",
                format!("disk {disk} is already on storage '{storage}' in {fmt} format"),
            )));
        }
        let copy = copy_volume(&self.host, &src, storage, vmid, fmt, CloneMode::Full).await?;
        let new_volid = copy.id.to_string();
        let old_volid = src.to_string();
        let key = disk.to_string();
        let mut new_drive = drive.clone();
        // The format comes from the volume name now.
        new_drive.format = None;
        new_drive.size_bytes = Some(copy.size_bytes);
        let value = new_drive.render(&new_volid);
        let switched = update_entry(&self.host.store, vmid, move |e| {
            let still = e
                .config
                .get(&key)
                .and_then(|v| config::parse_drive(v).ok())
                .is_some_and(|d| d.volume() == Some(old_volid.as_str()));
            if !still {
                return None;
            }
            let unused = if delete {
                String::new()
            } else {
                free_unused(&e.config)?
            };
            e.config.insert(key.clone(), value.clone());
            if !delete {
                e.config.insert(unused.clone(), old_volid.clone());
            }
            Some(unused)
        })
        .await;
        let unused = match switched {
            Ok(Some(Some(u))) => u,
            outcome => {
                // The configuration did not switch (changed meanwhile, no free unusedN,
                // or the store failed): the copy is not referenced, remove it.
                super::ops::remove_volumes(&self.host, vmid, std::slice::from_ref(&new_volid))
                    .await;
                return Err(match outcome {
                    Err(e) => e.into(),
                    Ok(None) => VmError::NotFound(vmid),
                    Ok(Some(_)) => VmError::Config(ConfigErrors::one(
                        "disk",
                        format!(
                            "disk {disk} changed while it was copied, or no unusedN slot is free"
                        ),
                    )),
                });
            }
        };
        if delete {
            if let Err(e) = super::actor::remove_volume(&self.host, vmid, &src.to_string()).await {
                // Nothing is lost: keep the old volume as unused and say so.
                let old = src.to_string();
                let kept = update_entry(&self.host.store, vmid, move |e| {
                    let k = free_unused(&e.config);
                    if let Some(k) = &k {
                        e.config.insert(k.clone(), old.clone());
                    }
                    k
                })
                .await?;
                return Ok(format!(
                    "VM {vmid}: disk {disk} moved to {new_volid}; deleting {src} failed ({e}), \
                     kept as {}",
                    kept.flatten().unwrap_or_default()
                ));
            }
            Ok(format!(
                "VM {vmid}: disk {disk} moved from {src} to {new_volid}; {src} deleted"
            ))
        } else {
            Ok(format!(
                "VM {vmid}: disk {disk} moved from {src} to {new_volid}; {src} kept as {unused}"
            ))
        }
    }

    /// Copy the VM into the reserved VM `newid` (locked `create`): every disk is copied
    /// (`linked`: a linked clone on the source's storage, allowed from templates only;
    /// else a full copy, onto `storage` when given); the new VM gets the configuration
    /// with its new disks, new MAC addresses and no snapshots.
    pub(super) async fn clone_into(
        &self,
        vmid: u32,
        newid: u32,
        name: Option<String>,
        storage: Option<String>,
        linked: bool,
    ) -> Result<String, VmError> {
        let entry = load_entry(&self.host.store, vmid)
            .await?
            .ok_or(VmError::NotFound(vmid))?;
        if linked && !entry.record.template {
            return Err(VmError::Config(ConfigErrors::one(
                "full",
                format!(
                    "linked clone feature is only available for templates; VM {vmid} is not a template"
                ),
            )));
        }
        let mut cfg = entry.config.clone();
        let mut copied: Vec<String> = Vec::new();
        let result = async {
            for (key, volid) in config::drive_volumes(&entry.config) {
                let src: VolumeId = volid
                    .parse()
                    .map_err(|e| ConfigErrors::one(&key, format!("{e}")))?;
                let target_storage = storage.clone().unwrap_or_else(|| src.storage().to_string());
                let caps = self.host.storage.capabilities(&target_storage).await?;
                let src_format = src.format_from_name().unwrap_or(VolumeFormat::Raw);
                let (fmt, mode) = if linked {
                    let f = linked_format(&caps).ok_or_else(|| {
                        ConfigErrors::one(
                            &key,
                            format!("storage '{target_storage}' cannot make linked clones"),
                        )
                    })?;
                    (f, CloneMode::Linked)
                } else {
                    let f = target_format(&target_storage, &caps, None, src_format)
                        .map_err(|e| ConfigErrors::one(&key, e))?;
                    (f, CloneMode::Full)
                };
                let info = copy_volume(&self.host, &src, &target_storage, newid, fmt, mode).await?;
                copied.push(info.id.to_string());
                let mut drive = config::parse_drive(&entry.config[&key])
                    .map_err(|e| ConfigErrors::one(&key, e))?;
                drive.format = None;
                cfg.insert(key.clone(), drive.render(&info.id.to_string()));
            }
            // Unused disks stay with the source; NICs get new addresses.
            cfg.retain(|k, _| !matches!(config::key_kind(k), Some(config::KeyKind::Unused(_))));
            let seed = gpve_supervisor::seeded_u64();
            for (k, v) in cfg.clone() {
                if let Some(config::KeyKind::Net(_)) = config::key_kind(&k)
                    && let Ok(mut net) = config::parse_net(&v)
                {
                    net.mac = None;
                    let fresh = config::parse_value(&k, &net.render(), newid, seed)
                        .map_err(|e| ConfigErrors::one(&k, e))?;
                    cfg.insert(k, fresh);
                }
            }
            cfg.remove("template");
            cfg.remove("protection");
            if let Some(n) = &name {
                cfg.insert("name".into(), n.clone());
            }
            let final_cfg = cfg.clone();
            let volumes = copied.clone();
            // The new VM and its link record in one transaction: a template never has a
            // clone it does not know about.
            let done = self
                .host
                .store
                .transact(move |tx| {
                    let final_cfg = final_cfg.clone();
                    let volumes = volumes.clone();
                    Box::pin(async move {
                        let key = vm_key(newid);
                        let Some(mut e) = tx.get_json::<VmEntry>(&key).await? else {
                            return Ok(false);
                        };
                        e.config = final_cfg;
                        e.lock = None;
                        e.refresh_summary();
                        tx.put_json(&key, &e)?;
                        if linked {
                            tx.put_json(&linked_key(vmid, newid), &volumes)?;
                        }
                        Ok(true)
                    })
                })
                .await?;
            if !done {
                return Err(VmError::NotFound(newid));
            }
            Ok::<(), VmError>(())
        }
        .await;
        let kind = if linked { "linked" } else { "full" };
        match result {
            Ok(()) => Ok(format!(
                "VM {vmid} cloned to VM {newid} ({} disk(s), {kind} clone)",
                copied.len()
            )),
            Err(e) => {
                super::ops::remove_volumes(&self.host, newid, &copied).await;
                let _ = self.host.store.delete(&vm_key(newid)).await;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_changes() {
        assert_eq!(parse_size_change("+1G"), Ok(SizeChange::GrowBy(1 << 30)));
        assert_eq!(parse_size_change("10G"), Ok(SizeChange::GrowTo(10 << 30)));
        assert_eq!(
            parse_size_change("+512M"),
            Ok(SizeChange::GrowBy(512 << 20))
        );
        assert_eq!(parse_size_change("1.5K"), Ok(SizeChange::GrowTo(1536)));
        assert_eq!(parse_size_change("4096"), Ok(SizeChange::GrowTo(4096)));
        for bad in ["", "+", "-1G", "1X", "G", "1..5G", ".5G", "+1 G", "2000T"] {
            assert!(parse_size_change(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn new_sizes() {
        let g = 1u64 << 30;
        assert_eq!(new_disk_size("scsi0", g, SizeChange::GrowBy(g)), Ok(2 * g));
        assert_eq!(new_disk_size("scsi0", g, SizeChange::GrowTo(g)), Ok(g));
        assert_eq!(
            new_disk_size("scsi0", 512, SizeChange::GrowTo(513)),
            Ok(1024)
        );
        let err = new_disk_size("scsi0", 4 * g, SizeChange::GrowTo(2 * g)).unwrap_err();
        assert!(err.contains("shrinking") && err.contains("4G"), "{err}");
    }

    fn caps(formats: Vec<VolumeFormat>, linked: bool) -> Capabilities {
        Capabilities {
            driver: "t",
            content: vec![],
            formats,
            snapshot_formats: vec![],
            linked_clones: linked,
            linked_clones_independent: false,
            shared: false,
            live_migratable: false,
            backing: gpve_storage_drivers::driver::Backing::File,
            thin_provisioned: true,
            vmid_dir_ids: true,
        }
    }

    #[test]
    fn formats() {
        use VolumeFormat::{Qcow2, Raw};
        let dir = caps(vec![Raw, Qcow2], true);
        let btrfs = caps(vec![Raw], true);
        assert_eq!(target_format("d", &dir, None, Qcow2), Ok(Qcow2));
        assert_eq!(target_format("b", &btrfs, None, Qcow2), Ok(Raw));
        assert_eq!(target_format("d", &dir, Some(Raw), Qcow2), Ok(Raw));
        assert!(target_format("b", &btrfs, Some(Qcow2), Raw).is_err());
        assert_eq!(linked_format(&dir), Some(Qcow2));
        assert_eq!(linked_format(&btrfs), Some(Raw));
        assert_eq!(linked_format(&caps(vec![Raw], false)), None);
    }

    #[test]
    fn disks() {
        let mut c = BTreeMap::new();
        c.insert(
            "scsi0".into(),
            "local:100/vm-100-disk-0.qcow2,size=4G".into(),
        );
        c.insert("net0".into(), "virtio,bridge=vmbr0".into());
        let (d, id) = disk_volume(&c, "scsi0").unwrap();
        assert_eq!(id.to_string(), "local:100/vm-100-disk-0.qcow2");
        assert_eq!(d.size_bytes, Some(4 << 30));
        assert!(disk_volume(&c, "scsi1").is_err());
        assert!(disk_volume(&c, "net0").is_err());
        assert_eq!(free_unused(&c).as_deref(), Some("unused0"));
    }
}
