//! How a manifest maps onto a VM's Proxmox configuration and back, as pure functions.
//!
//! The VM's record (`("vms", vmid)`) stays the one source of truth: the manifest's spec is
//! *derived* from the configuration (pending changes applied), so a change made through the
//! Proxmox API shows in the manifest. What Proxmox has no place for lives in the
//! [`Binding`] at `("vm-manifests", namespace, name)`: the VMID, the labels, and the
//! manifest names of disks and NICs (`root` → `scsi0`).

use std::collections::{BTreeMap, BTreeSet};

use gpve_actors::vm::config::{self as vmconfig, DriveSource, KeyKind, Net};
use gpve_actors::vm::{Desired, VmEntry};
use serde::{Deserialize, Serialize};

use super::manifest::{
    API_VERSION, CpuSpec, DiskSpec, KIND, NetworkSpec, ObjectMeta, PathErrors, Quantity,
    VirtualMachine, VmSpec, VmStatus,
};

/// Store subspace of bindings: `("vm-manifests", namespace, name)`.
pub const BINDING_SUBSPACE: &str = "vm-manifests";
/// Store subspace of namespaces: `("namespaces", name)`.
pub const NAMESPACE_SUBSPACE: &str = "namespaces";

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Keys the manifest models itself; `spec.proxmox` may not set them.
const MODELLED_KEYS: &[&str] = &["name", "memory", "cores", "sockets", "template"];

/// A manifest name given to a Proxmox key (`root` → `scsi0`, `lan` → `net0`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub name: String,
    pub key: String,
}

/// What the declarative view keeps about one VM beyond its Proxmox record.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Binding {
    pub vmid: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub disks: Vec<Slot>,
    #[serde(default)]
    pub networks: Vec<Slot>,
    /// Keys set through `spec.proxmox` (removed from the configuration when dropped there).
    #[serde(default)]
    pub proxmox_keys: BTreeSet<String>,
    /// A delete is in progress; the binding goes when it ends.
    #[serde(default)]
    pub deleting: bool,
    pub created_at_s: i64,
}

/// A namespace. Issue 9 attaches namespaces to tenants; until then it is a name made on
/// first use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub name: String,
    pub created_at_s: i64,
    #[serde(default)]
    pub tenant: Option<String>,
}

pub fn binding_key(ns: &str, name: &str) -> gpve_store::Key {
    gpve_store::Key::pack(&(BINDING_SUBSPACE, ns, name))
}

pub fn binding_prefix(ns: &str) -> gpve_store::Key {
    gpve_store::Key::prefix(&(BINDING_SUBSPACE, ns))
}

pub fn namespace_key(ns: &str) -> gpve_store::Key {
    gpve_store::Key::pack(&(NAMESPACE_SUBSPACE, ns))
}

/// Desired power change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Start,
    Stop,
}

/// The changes that bring a VM to a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Proxmox keys to set (raw; checked again by the VM configuration parser).
    pub set: BTreeMap<String, String>,
    pub delete: Vec<String>,
    pub power: Option<Power>,
    /// The binding after the change (its `vmid` and `created_at_s` are the caller's).
    pub binding: Binding,
    /// Manifest path of each Proxmox key touched, to report configuration errors by path.
    pub paths: BTreeMap<String, String>,
}

impl Plan {
    /// Whether the configuration changes at all.
    pub fn changes_config(&self) -> bool {
        !self.set.is_empty() || !self.delete.is_empty()
    }

    /// Translate errors keyed by Proxmox key into manifest paths.
    pub fn translate(&self, errors: BTreeMap<String, String>) -> PathErrors {
        errors
            .into_iter()
            .map(|(k, v)| {
                let path = self
                    .paths
                    .get(&k)
                    .cloned()
                    .unwrap_or_else(|| format!("spec.proxmox.{k}"));
                (path, v)
            })
            .collect()
    }
}

/// One disk as the configuration holds it.
struct CurrentDisk {
    key: String,
    spec: DiskSpec,
}

/// One NIC as the configuration holds it.
struct CurrentNet {
    key: String,
    net: Net,
    spec: NetworkSpec,
}

fn slot_name(slots: &[Slot], key: &str) -> String {
    slots
        .iter()
        .find(|s| s.key == key)
        .map(|s| s.name.clone())
        .unwrap_or_else(|| key.to_string())
}

/// Keys in binding order first (their manifest order), then the others in key order.
fn ordered_keys<'a>(
    config: &'a BTreeMap<String, String>,
    slots: &[Slot],
    want: impl Fn(&str) -> bool,
) -> Vec<&'a String> {
    let mut keys: Vec<&String> = config.keys().filter(|k| want(k)).collect();
    keys.sort_by_key(|k| {
        (
            slots
                .iter()
                .position(|s| &s.key == *k)
                .unwrap_or(usize::MAX),
            vmconfig::key_kind(k).map(|kind| match kind {
                KeyKind::Drive(bus, n) => (bus.as_str().to_string(), u32::from(n)),
                KeyKind::Net(n) => (String::new(), u32::from(n)),
                _ => (String::new(), 0),
            }),
        )
    });
    keys
}

fn current_disks(config: &BTreeMap<String, String>, slots: &[Slot]) -> Vec<CurrentDisk> {
    ordered_keys(config, slots, vmconfig::is_drive)
        .into_iter()
        .filter_map(|k| {
            let drive = vmconfig::parse_drive(&config[k]).ok()?;
            let (storage, size) = match &drive.source {
                DriveSource::Allocate { storage, size_gib } => (storage.clone(), size_gib * GIB),
                DriveSource::Volume(v) => (
                    v.split(':').next().unwrap_or_default().to_string(),
                    drive.size_bytes.unwrap_or(0),
                ),
            };
            Some(CurrentDisk {
                key: k.clone(),
                spec: DiskSpec {
                    name: slot_name(slots, k),
                    storage,
                    size: Quantity(size),
                },
            })
        })
        .collect()
}

fn is_net(k: &str) -> bool {
    matches!(vmconfig::key_kind(k), Some(KeyKind::Net(_)))
}

fn model_name(net: &Net) -> String {
    // `render` leads with the model (`virtio=MAC,...` or `virtio,...`).
    net.render()
        .split([',', '='])
        .next()
        .unwrap_or("virtio")
        .to_string()
}

fn current_nets(config: &BTreeMap<String, String>, slots: &[Slot]) -> Vec<CurrentNet> {
    ordered_keys(config, slots, is_net)
        .into_iter()
        .filter_map(|k| {
            let net = vmconfig::parse_net(&config[k]).ok()?;
            let spec = NetworkSpec {
                name: slot_name(slots, k),
                bridge: net.bridge.clone(),
                model: model_name(&net),
                firewall: net.firewall,
            };
            Some(CurrentNet {
                key: k.clone(),
                net,
                spec,
            })
        })
        .collect()
}

fn int_key(config: &BTreeMap<String, String>, key: &str) -> u32 {
    config.get(key).and_then(|v| v.parse().ok()).unwrap_or(1)
}

/// The manifest path a Proxmox key shows as (for pending changes and errors).
fn key_path(key: &str, binding: &Binding) -> String {
    match key {
        "memory" => "spec.memory".into(),
        "cores" => "spec.cpu.cores".into(),
        "sockets" => "spec.cpu.sockets".into(),
        "name" => "metadata.name".into(),
        k if vmconfig::is_drive(k) => format!("spec.disks[{}]", slot_name(&binding.disks, k)),
        k if is_net(k) => format!("spec.networks[{}]", slot_name(&binding.networks, k)),
        k => format!("spec.proxmox.{k}"),
    }
}

/// The phase shown in `status.phase`.
pub fn phase(entry: &VmEntry, binding: &Binding) -> &'static str {
    if binding.deleting {
        return "Terminating";
    }
    match entry.lock.as_deref() {
        Some("create") => return "Provisioning",
        Some(_) => return "Locked",
        None => {}
    }
    match entry.runtime.qmpstatus.as_str() {
        "running" => "Running",
        "paused" => "Paused",
        _ => "Stopped",
    }
}

/// The manifest of a VM: spec derived from its configuration with pending changes applied
/// (what its next start uses), status from what its actor last recorded.
pub fn to_manifest(
    ns: &str,
    name: &str,
    binding: &Binding,
    entry: &VmEntry,
    task: Option<String>,
) -> VirtualMachine {
    let config = entry.with_pending();
    let proxmox = binding
        .proxmox_keys
        .iter()
        .filter_map(|k| config.get(k).map(|v| (k.clone(), v.clone())))
        .collect();
    let pending: BTreeSet<String> = entry
        .pending
        .keys()
        .chain(entry.pending_delete.iter())
        .map(|k| key_path(k, binding))
        .collect();
    VirtualMachine {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        metadata: ObjectMeta {
            name: name.into(),
            namespace: Some(ns.into()),
            labels: binding.labels.clone(),
        },
        spec: VmSpec {
            cpu: CpuSpec {
                cores: int_key(&config, "cores"),
                sockets: int_key(&config, "sockets"),
            },
            memory: Quantity(vmconfig::memory_mib(&config) * MIB),
            disks: current_disks(&config, &binding.disks)
                .into_iter()
                .map(|d| d.spec)
                .collect(),
            networks: current_nets(&config, &binding.networks)
                .into_iter()
                .map(|n| n.spec)
                .collect(),
            running: entry.desired == Desired::Running,
            proxmox,
        },
        status: Some(VmStatus {
            phase: phase(entry, binding).into(),
            node: entry.record.node.clone(),
            vmid: entry.record.vmid,
            pending_changes: pending.into_iter().collect(),
            task,
        }),
    }
}

fn first_free(prefix: &str, taken: &BTreeSet<String>, max: u32) -> Option<String> {
    (0..max)
        .map(|n| format!("{prefix}{n}"))
        .find(|k| !taken.contains(k))
}

fn net_value(spec: &NetworkSpec, keep: Option<&Net>) -> String {
    // Keep the MAC address and options the manifest does not model (tag, mtu, ...).
    let mut v = match keep.and_then(|n| n.mac.as_ref()) {
        Some(mac) => format!("{}={mac}", spec.model),
        None => spec.model.clone(),
    };
    if let Some(b) = &spec.bridge {
        v.push_str(&format!(",bridge={b}"));
    }
    if spec.firewall {
        v.push_str(",firewall=1");
    }
    if let Some(n) = keep {
        if let Some(t) = n.tag {
            v.push_str(&format!(",tag={t}"));
        }
        for (k, val) in &n.options {
            v.push_str(&format!(",{k}={val}"));
        }
    }
    v
}

/// The changes that make the VM (`current`: its binding and entry; `None` for a new VM)
/// match `vm`. Refuses what apply cannot do (resizing or moving a disk), by path.
pub fn plan(
    vm: &VirtualMachine,
    current: Option<(&Binding, &VmEntry)>,
) -> Result<Plan, PathErrors> {
    let empty_binding = Binding::default();
    let empty_config = BTreeMap::new();
    let (old, config) = match current {
        Some((b, e)) => (b, e.with_pending()),
        None => (&empty_binding, empty_config),
    };
    let mut errs = PathErrors::new();
    let mut p = Plan::default();
    let spec = &vm.spec;
    let want = |key: &str, value: String, path: String, p: &mut Plan| {
        if config.get(key) != Some(&value) {
            p.set.insert(key.to_string(), value);
        }
        p.paths.insert(key.to_string(), path);
    };
    want(
        "name",
        vm.metadata.name.clone(),
        "metadata.name".into(),
        &mut p,
    );
    want(
        "cores",
        spec.cpu.cores.to_string(),
        "spec.cpu.cores".into(),
        &mut p,
    );
    want(
        "sockets",
        spec.cpu.sockets.to_string(),
        "spec.cpu.sockets".into(),
        &mut p,
    );
    want(
        "memory",
        (spec.memory.bytes() / MIB).to_string(),
        "spec.memory".into(),
        &mut p,
    );

    // Disks, matched by name.
    let disks = current_disks(&config, &old.disks);
    let mut taken: BTreeSet<String> = config.keys().cloned().collect();
    for (i, d) in spec.disks.iter().enumerate() {
        let path = format!("spec.disks[{i}]");
        if let Some(cur) = disks.iter().find(|c| c.spec.name == d.name) {
            if cur.spec.storage != d.storage {
                errs.insert(
                    format!("{path}.storage"),
                    format!(
                        "disk '{}' is on storage '{}'; apply does not move disks (use the Proxmox API's move_disk)",
                        d.name, cur.spec.storage
                    ),
                );
            } else if cur.spec.size != d.size {
                errs.insert(
                    format!("{path}.size"),
                    format!(
                        "disk '{}' is {}; apply does not resize disks (use the Proxmox API's resize)",
                        d.name, cur.spec.size
                    ),
                );
            }
            p.paths.insert(cur.key.clone(), path);
            p.binding.disks.push(Slot {
                name: d.name.clone(),
                key: cur.key.clone(),
            });
            continue;
        }
        let max = 31; // scsi0..scsi30, Proxmox's range
        let Some(key) = first_free("scsi", &taken, max) else {
            errs.insert(path, "no free scsi slot is left".into());
            continue;
        };
        taken.insert(key.clone());
        p.set.insert(
            key.clone(),
            format!("{}:{}", d.storage, d.size.bytes() / GIB),
        );
        p.paths.insert(key.clone(), path);
        p.binding.disks.push(Slot {
            name: d.name.clone(),
            key,
        });
    }
    for cur in &disks {
        if !spec.disks.iter().any(|d| d.name == cur.spec.name) {
            // Detached, kept as `unusedN` as the Proxmox API does.
            p.delete.push(cur.key.clone());
        }
    }

    // NICs, matched by name.
    let nets = current_nets(&config, &old.networks);
    for (i, n) in spec.networks.iter().enumerate() {
        let path = format!("spec.networks[{i}]");
        let key = match nets.iter().find(|c| c.spec.name == n.name) {
            Some(cur) => {
                if cur.spec != *n {
                    p.set.insert(cur.key.clone(), net_value(n, Some(&cur.net)));
                }
                cur.key.clone()
            }
            None => {
                let max = u32::from(gpve_hypervisor::spec::NIC_SLOTS);
                let Some(key) = first_free("net", &taken, max) else {
                    errs.insert(path, "no free network slot is left".into());
                    continue;
                };
                taken.insert(key.clone());
                p.set.insert(key.clone(), net_value(n, None));
                key
            }
        };
        p.paths.insert(key.clone(), path);
        p.binding.networks.push(Slot {
            name: n.name.clone(),
            key,
        });
    }
    for cur in &nets {
        if !spec.networks.iter().any(|n| n.name == cur.spec.name) {
            p.delete.push(cur.key.clone());
        }
    }

    // Pass-through keys, compared in their canonical form so a second apply is a no-op.
    for (k, v) in &spec.proxmox {
        let path = format!("spec.proxmox.{k}");
        let modelled = MODELLED_KEYS.contains(&k.as_str())
            || matches!(
                vmconfig::key_kind(k),
                Some(KeyKind::Drive(..) | KeyKind::Net(_) | KeyKind::Unused(_))
            );
        if modelled {
            errs.insert(
                path,
                "modelled by the manifest (use metadata.name, spec.cpu, spec.memory, spec.disks or spec.networks)".into(),
            );
            continue;
        }
        let vmid = current.map(|(b, _)| b.vmid).unwrap_or(0);
        match vmconfig::parse_value(k, v, vmid, 0) {
            Ok(canon) => {
                if config.get(k) != Some(&canon) {
                    p.set.insert(k.clone(), canon);
                }
                p.paths.insert(k.clone(), path);
                p.binding.proxmox_keys.insert(k.clone());
            }
            Err(e) => {
                errs.insert(path, e);
            }
        }
    }
    for k in &old.proxmox_keys {
        if !spec.proxmox.contains_key(k) && config.contains_key(k) {
            p.delete.push(k.clone());
        }
    }

    let desired_running = current.is_some_and(|(_, e)| e.desired == Desired::Running);
    p.power = match (spec.running, desired_running) {
        (true, false) => Some(Power::Start),
        (false, true) => Some(Power::Stop),
        _ => None,
    };
    p.binding.labels = vm.metadata.labels.clone();
    if let Some((b, _)) = current {
        p.binding.vmid = b.vmid;
        p.binding.created_at_s = b.created_at_s;
    }
    if errs.is_empty() { Ok(p) } else { Err(errs) }
}

#[cfg(test)]
mod tests {
    use super::super::manifest::parse;
    use super::*;
    use serde_json::json;

    fn vm(memory: &str, running: bool) -> VirtualMachine {
        parse(&json!({
            "apiVersion": "gpve.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "web1", "labels": {"app": "web"}},
            "spec": {
                "cpu": {"cores": 2}, "memory": memory, "running": running,
                "disks": [{"name": "root", "storage": "local", "size": "4Gi"}],
                "networks": [{"name": "lan", "bridge": "vmbr0", "firewall": true}],
                "proxmox": {"kvm": "0"}
            }
        }))
        .expect("manifest")
    }

    /// The entry a create of `plan` would leave, with allocated disks.
    fn created(p: &Plan) -> (Binding, VmEntry) {
        let mut config = p.set.clone();
        config.insert(
            "scsi0".into(),
            "local:100/vm-100-disk-0.qcow2,size=4G".into(),
        );
        let canon = vmconfig::parse_changes(&config, 100, 7).expect("canonical");
        let mut b = p.binding.clone();
        b.vmid = 100;
        (b, VmEntry::new(100, "n1", canon))
    }

    #[test]
    fn a_new_vm_maps_onto_proxmox_keys() {
        let p = plan(&vm("1Gi", false), None).expect("plan");
        assert_eq!(p.set["memory"], "1024");
        assert_eq!(p.set["cores"], "2");
        assert_eq!(p.set["scsi0"], "local:4");
        assert_eq!(p.set["net0"], "virtio,bridge=vmbr0,firewall=1");
        assert_eq!(p.set["kvm"], "0");
        assert_eq!(p.paths["scsi0"], "spec.disks[0]");
        assert_eq!(p.binding.disks[0].name, "root");
        assert_eq!(p.power, None);
    }

    #[test]
    fn the_derived_manifest_plans_no_change() {
        let m = vm("1Gi", false);
        let (b, e) = created(&plan(&m, None).expect("plan"));
        let derived = to_manifest("default", "web1", &b, &e, None);
        assert_eq!(derived.spec, m.spec);
        assert_eq!(derived.metadata.labels, m.metadata.labels);
        let again = plan(&m, Some((&b, &e))).expect("plan");
        assert!(!again.changes_config(), "{again:?}");
        assert_eq!(again.power, None);
    }

    #[test]
    fn changes_become_keys_and_power() {
        let (b, e) = created(&plan(&vm("1Gi", false), None).expect("plan"));
        let mut m = vm("2Gi", true);
        m.spec.disks.push(DiskSpec {
            name: "data".into(),
            storage: "local".into(),
            size: Quantity(GIB),
        });
        m.spec.networks.clear();
        let p = plan(&m, Some((&b, &e))).expect("plan");
        assert_eq!(p.set.get("memory").map(String::as_str), Some("2048"));
        assert_eq!(p.set.get("scsi1").map(String::as_str), Some("local:1"));
        assert_eq!(p.delete, vec!["net0".to_string()]);
        assert_eq!(p.power, Some(Power::Start));
    }

    #[test]
    fn resizing_and_modelled_keys_are_refused_by_path() {
        let (b, e) = created(&plan(&vm("1Gi", false), None).expect("plan"));
        let mut m = vm("1Gi", false);
        m.spec.disks[0].size = Quantity(8 * GIB);
        m.spec.proxmox.insert("memory".into(), "64".into());
        m.spec.proxmox.insert("bios".into(), "lilo".into());
        let errs = plan(&m, Some((&b, &e))).unwrap_err();
        assert!(errs.contains_key("spec.disks[0].size"), "{errs:?}");
        assert!(errs.contains_key("spec.proxmox.memory"), "{errs:?}");
        assert!(errs.contains_key("spec.proxmox.bios"), "{errs:?}");
    }

    #[test]
    fn pending_changes_show_by_path() {
        let (b, mut e) = created(&plan(&vm("1Gi", false), None).expect("plan"));
        e.pending.insert("memory".into(), "2048".into());
        let m = to_manifest("default", "web1", &b, &e, None);
        assert_eq!(m.spec.memory, Quantity(2 * GIB));
        let status = m.status.expect("status");
        assert_eq!(status.pending_changes, vec!["spec.memory".to_string()]);
        assert_eq!(status.phase, "Stopped");
    }
}
