//! The Proxmox qemu configuration model: keys, property strings and their validation.
//!
//! A VM's configuration is kept as Proxmox writes it (`key → value` strings, e.g.
//! `scsi0 → local:100/vm-100-disk-0.qcow2,size=4G`), so `GET .../config` returns it verbatim
//! and the storage usage check finds the drives. Every value is parsed by [`parse_value`]
//! before it is stored; [`to_qemu_spec`] turns a stored configuration into a `QemuSpec`.
//!
//! Decisions:
//! - NICs (`net0: virtio,bridge=vmbr0,...`) are parsed and stored in full; until the network
//!   issue plugs taps into bridges, a NIC starts with no backend (the guest sees the card
//!   with no link). The bridge is not checked.
//! - Direct kernel boot (the test guest) goes through Proxmox's root-only `args:` key:
//!   `-kernel`, `-initrd` and `-append` there become QEMU's direct boot; the other words are
//!   passed to QEMU verbatim.
//! - `kvm: 0` selects TCG (Proxmox's meaning); with `kvm: 1` (default) KVM is used when
//!   `/dev/kvm` opens.

use std::collections::BTreeMap;
use std::path::PathBuf;

use gpve_hypervisor::{
    Accel, Bios, DirectBoot, DiskBus, DiskFormat, DiskSpec, Machine, NicBackend, NicModel, NicSpec,
    QemuSpec,
};

/// Largest accepted `description`, in bytes (Proxmox: 8 KiB).
pub const MAX_DESCRIPTION_BYTES: usize = 8 * 1024;
/// Largest accepted `args`, in bytes.
pub const MAX_ARGS_BYTES: usize = 4 * 1024;
/// Smallest memory QEMU is given, in MiB.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Largest memory accepted, in MiB (4 TiB, as Proxmox).
pub const MAX_MEMORY_MIB: u64 = 4 * 1024 * 1024;
/// Default memory when `memory` is not set, in MiB (Proxmox's default).
pub const DEFAULT_MEMORY_MIB: u64 = 512;
pub const MAX_CORES: u32 = 128;
pub const MAX_SOCKETS: u32 = 16;
/// Proxmox's `unused0..unused255`.
pub const UNUSED_SLOTS: u32 = 256;
/// Serial ports `serial0..serial3`.
pub const SERIAL_SLOTS: u8 = 4;
/// The OUI Proxmox uses for generated MAC addresses.
pub const MAC_PREFIX: &str = "BC:24:11";

const OSTYPES: &[&str] = &[
    "other", "wxp", "w2k", "w2k3", "w2k8", "wvista", "win7", "win8", "win10", "win11", "l24",
    "l26", "solaris",
];
const DISK_CACHES: &[&str] = &["none", "writethrough", "writeback", "unsafe", "directsync"];

/// Why a configuration is not acceptable; the map is keyed by parameter name, as Proxmox's
/// 400 "Parameter verification failed." `errors`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the VM configuration is invalid: {}", .0.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("; "))]
pub struct ConfigErrors(pub BTreeMap<String, String>);

impl ConfigErrors {
    pub fn one(key: &str, reason: impl Into<String>) -> Self {
        let mut m = BTreeMap::new();
        m.insert(key.to_string(), reason.into());
        ConfigErrors(m)
    }
}

/// The kinds of configuration keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A disk on a bus slot (`scsi0`, `virtio3`, `sata1`, `ide2`).
    Drive(DiskBus, u8),
    /// `unusedN`: a volume detached from the VM but still owned by it.
    Unused(u32),
    Net(u8),
    Serial(u8),
    /// A plain option (`memory`, `name`, ...).
    Plain,
}

/// Plain keys gpve understands.
pub const PLAIN_KEYS: &[&str] = &[
    "name",
    "memory",
    "cores",
    "sockets",
    "cpu",
    "machine",
    "bios",
    "ostype",
    "boot",
    "onboot",
    "kvm",
    "args",
    "description",
    "tags",
    "template",
    "protection",
];

/// Keys that change nothing in a running QEMU process and therefore apply at once even
/// while the VM runs; every other key becomes pending until the next start.
pub const HOT_KEYS: &[&str] = &[
    "name",
    "description",
    "tags",
    "onboot",
    "boot",
    "ostype",
    "protection",
];

/// Every key gpve accepts in a configuration, in a stable order (for API schemas).
pub fn all_keys() -> Vec<String> {
    let mut keys: Vec<String> = PLAIN_KEYS.iter().map(|k| k.to_string()).collect();
    for bus in [DiskBus::Scsi, DiskBus::Virtio, DiskBus::Sata, DiskBus::Ide] {
        for slot in 0..bus.slot_count() {
            keys.push(format!("{}{slot}", bus.as_str()));
        }
    }
    for n in 0..gpve_hypervisor::spec::NIC_SLOTS {
        keys.push(format!("net{n}"));
    }
    for n in 0..SERIAL_SLOTS {
        keys.push(format!("serial{n}"));
    }
    keys
}

fn slot_of(key: &str, prefix: &str) -> Option<u32> {
    let n = key.strip_prefix(prefix)?;
    if n.is_empty() || n.len() > 3 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // No leading zeros: `scsi01` is not `scsi1`.
    if n.len() > 1 && n.starts_with('0') {
        return None;
    }
    n.parse().ok()
}

/// What kind of key `key` is, or `None` when gpve does not know it.
pub fn key_kind(key: &str) -> Option<KeyKind> {
    if PLAIN_KEYS.contains(&key) {
        return Some(KeyKind::Plain);
    }
    for bus in [DiskBus::Scsi, DiskBus::Virtio, DiskBus::Sata, DiskBus::Ide] {
        if let Some(n) = slot_of(key, bus.as_str()) {
            return (n < u32::from(bus.slot_count())).then_some(KeyKind::Drive(bus, n as u8));
        }
    }
    if let Some(n) = slot_of(key, "unused") {
        return (n < UNUSED_SLOTS).then_some(KeyKind::Unused(n));
    }
    if let Some(n) = slot_of(key, "net") {
        return (n < u32::from(gpve_hypervisor::spec::NIC_SLOTS)).then_some(KeyKind::Net(n as u8));
    }
    if let Some(n) = slot_of(key, "serial") {
        return (n < u32::from(SERIAL_SLOTS)).then_some(KeyKind::Serial(n as u8));
    }
    None
}

/// Whether `key` is a disk (`scsiN`, `virtioN`, `sataN`, `ideN`).
pub fn is_drive(key: &str) -> bool {
    matches!(key_kind(key), Some(KeyKind::Drive(..)))
}

/// Splits a Proxmox property string (`a,b=c,d=e`) into its parts; the first part may be
/// positional (no `=`). Keys must not repeat.
pub fn split_property_string(
    s: &str,
) -> Result<(Option<String>, BTreeMap<String, String>), String> {
    let mut positional = None;
    let mut opts = BTreeMap::new();
    for (i, part) in s.split(',').enumerate() {
        let part = part.trim();
        if part.is_empty() {
            return Err("empty element in property string".into());
        }
        match part.split_once('=') {
            Some((k, v)) => {
                if opts.insert(k.to_string(), v.to_string()).is_some() {
                    return Err(format!("option '{k}' is given twice"));
                }
            }
            None if i == 0 => positional = Some(part.to_string()),
            None => return Err(format!("'{part}' is not a 'key=value' option")),
        }
    }
    Ok((positional, opts))
}

/// `4`, `4G`, `512M`, `1T`, `100K` → bytes (a bare number is GiB, as Proxmox's `size`).
pub fn parse_size_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("size '{s}' has an unknown unit (K, M, G or T)")),
            };
            (&s[..i], mult)
        }
        _ => (s, 1u64 << 30),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("size '{s}' is not a number with an optional unit"))?;
    if !n.is_finite() || n <= 0.0 {
        return Err(format!("size '{s}' must be positive"));
    }
    let bytes = n * mult as f64;
    if bytes > (1u64 << 50) as f64 {
        return Err(format!("size '{s}' is larger than 1 PiB"));
    }
    Ok(bytes as u64)
}

/// Bytes → Proxmox's size notation (`4G`, `512M`, `100K`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    for (mult, unit) in UNITS {
        if bytes >= mult && bytes.is_multiple_of(mult) {
            return format!("{}{unit}", bytes / mult);
        }
    }
    format!("{bytes}")
}

/// Where a drive's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriveSource {
    /// `STORAGE:SIZE_GIB`: allocate a new volume of that many GiB on the storage.
    Allocate { storage: String, size_gib: u64 },
    /// An existing volume id (`local:100/vm-100-disk-0.qcow2`).
    Volume(String),
}

/// A parsed drive value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    pub source: DriveSource,
    pub format: Option<DiskFormat>,
    pub size_bytes: Option<u64>,
    /// The options kept verbatim (cache, discard, ssd, iothread, ...).
    pub options: BTreeMap<String, String>,
}

const DRIVE_OPTIONS: &[&str] = &[
    "file",
    "format",
    "size",
    "cache",
    "discard",
    "ssd",
    "iothread",
    "backup",
    "replicate",
    "serial",
    "aio",
    "ro",
];

fn is_volume_id(s: &str) -> bool {
    let Some((storage, name)) = s.split_once(':') else {
        return false;
    };
    !storage.is_empty()
        && storage
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !name.is_empty()
        && !name.contains("..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

/// Parses `local:4,format=qcow2` or `local:100/vm-100-disk-0.qcow2,size=4G`.
pub fn parse_drive(value: &str) -> Result<Drive, String> {
    let (positional, mut opts) = split_property_string(value)?;
    let file = match (positional, opts.remove("file")) {
        (Some(p), None) => p,
        (None, Some(f)) => f,
        (Some(_), Some(_)) => {
            return Err("the volume is given twice (positional and 'file=')".into());
        }
        (None, None) => return Err("the volume is missing".into()),
    };
    if opts.contains_key("media") {
        return Err("media=cdrom is not supported yet".into());
    }
    if let Some(unknown) = opts.keys().find(|k| !DRIVE_OPTIONS.contains(&k.as_str())) {
        return Err(format!("unknown drive option '{unknown}'"));
    }
    let format = match opts.remove("format").as_deref() {
        None => None,
        Some("raw") => Some(DiskFormat::Raw),
        Some("qcow2") => Some(DiskFormat::Qcow2),
        Some(other) => {
            return Err(format!(
                "disk format '{other}' is not supported (raw or qcow2)"
            ));
        }
    };
    let size_bytes = opts
        .remove("size")
        .map(|s| parse_size_bytes(&s))
        .transpose()?;
    if let Some(cache) = opts.get("cache")
        && !DISK_CACHES.contains(&cache.as_str())
    {
        return Err(format!(
            "cache mode '{cache}' is not one of {}",
            DISK_CACHES.join(", ")
        ));
    }
    for flag in ["ssd", "iothread", "backup", "replicate", "ro"] {
        if let Some(v) = opts.get(flag)
            && v != "0"
            && v != "1"
        {
            return Err(format!("option '{flag}' must be 0 or 1"));
        }
    }
    let source = match file.split_once(':') {
        Some((storage, size)) if !size.is_empty() && size.bytes().all(|b| b.is_ascii_digit()) => {
            let size_gib: u64 = size
                .parse()
                .map_err(|_| format!("size '{size}' is too large"))?;
            if size_gib == 0 || size_gib > 1 << 20 {
                return Err(format!("new disk size {size_gib} GiB must be 1..=1048576"));
            }
            if !is_volume_id(&format!("{storage}:x")) {
                return Err(format!("'{storage}' is not a valid storage id"));
            }
            DriveSource::Allocate {
                storage: storage.to_string(),
                size_gib,
            }
        }
        _ if is_volume_id(&file) => DriveSource::Volume(file),
        _ => {
            return Err(format!(
                "'{file}' is neither STORAGE:SIZE_GIB nor a volume id (STORAGE:VOLUME)"
            ));
        }
    };
    Ok(Drive {
        source,
        format,
        size_bytes,
        options: opts,
    })
}

impl Drive {
    /// The Proxmox value for a drive on volume `volid`.
    pub fn render(&self, volid: &str) -> String {
        let mut s = volid.to_string();
        if let Some(f) = self.format {
            s.push_str(match f {
                DiskFormat::Raw => ",format=raw",
                DiskFormat::Qcow2 => ",format=qcow2",
            });
        }
        for (k, v) in &self.options {
            s.push_str(&format!(",{k}={v}"));
        }
        if let Some(size) = self.size_bytes {
            s.push_str(&format!(",size={}", format_size(size)));
        }
        s
    }

    /// The volume id, once allocated.
    pub fn volume(&self) -> Option<&str> {
        match &self.source {
            DriveSource::Volume(v) => Some(v),
            DriveSource::Allocate { .. } => None,
        }
    }
}

/// A parsed `netN` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Net {
    pub model: NicModel,
    pub mac: Option<String>,
    pub bridge: Option<String>,
    pub firewall: bool,
    pub tag: Option<u16>,
    pub options: BTreeMap<String, String>,
}

const NET_OPTIONS: &[&str] = &[
    "model",
    "macaddr",
    "bridge",
    "firewall",
    "tag",
    "link_down",
    "mtu",
    "queues",
    "rate",
    "trunks",
];

fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
        // The multicast bit must be clear for a NIC address.
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
}

fn parse_model(s: &str) -> Result<NicModel, String> {
    match s {
        "virtio" => Ok(NicModel::Virtio),
        "e1000" => Ok(NicModel::E1000),
        other => Err(format!(
            "NIC model '{other}' is not supported (virtio or e1000)"
        )),
    }
}

/// Parses `virtio,bridge=vmbr0,firewall=1,tag=10` or `virtio=BC:24:11:00:00:01,bridge=vmbr0`.
pub fn parse_net(value: &str) -> Result<Net, String> {
    let (positional, mut opts) = split_property_string(value)?;
    if let Some(unknown) = opts
        .keys()
        .find(|k| !NET_OPTIONS.contains(&k.as_str()) && parse_model(k).is_err())
    {
        return Err(format!("unknown network option '{unknown}'"));
    }
    // The model comes positionally (`virtio`), as `MODEL=MAC`, or as `model=`.
    let mut model = None;
    let mut mac = opts.remove("macaddr");
    if let Some(p) = positional {
        model = Some(parse_model(&p)?);
    }
    for m in ["virtio", "e1000"] {
        if let Some(addr) = opts.remove(m) {
            if model.is_some() {
                return Err("the NIC model is given twice".into());
            }
            model = Some(parse_model(m)?);
            mac = Some(addr);
        }
    }
    if let Some(m) = opts.remove("model") {
        if model.is_some() {
            return Err("the NIC model is given twice".into());
        }
        model = Some(parse_model(&m)?);
    }
    let model = model.ok_or("the NIC model is missing (e.g. 'virtio,bridge=vmbr0')")?;
    if let Some(m) = &mac
        && !valid_mac(m)
    {
        return Err(format!(
            "MAC address '{m}' is not a unicast xx:xx:xx:xx:xx:xx"
        ));
    }
    let bridge = opts.remove("bridge");
    if let Some(b) = &bridge {
        let ok = !b.is_empty()
            && b.len() <= 15
            && b.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !ok {
            return Err(format!("bridge name '{b}' is not a valid interface name"));
        }
    }
    let firewall = match opts.remove("firewall").as_deref() {
        None | Some("0") => false,
        Some("1") => true,
        Some(other) => return Err(format!("firewall must be 0 or 1, not '{other}'")),
    };
    let tag = opts
        .remove("tag")
        .map(|t| match t.parse::<u16>() {
            Ok(n) if (1..=4094).contains(&n) => Ok(n),
            _ => Err(format!("VLAN tag '{t}' is not in 1..=4094")),
        })
        .transpose()?;
    Ok(Net {
        model,
        mac,
        bridge,
        firewall,
        tag,
        options: opts,
    })
}

impl Net {
    pub fn render(&self) -> String {
        let model = match self.model {
            NicModel::Virtio => "virtio",
            NicModel::E1000 => "e1000",
        };
        let mut s = match &self.mac {
            Some(m) => format!("{model}={m}"),
            None => model.to_string(),
        };
        if let Some(b) = &self.bridge {
            s.push_str(&format!(",bridge={b}"));
        }
        if self.firewall {
            s.push_str(",firewall=1");
        }
        if let Some(t) = self.tag {
            s.push_str(&format!(",tag={t}"));
        }
        for (k, v) in &self.options {
            s.push_str(&format!(",{k}={v}"));
        }
        s
    }
}

/// A MAC address in Proxmox's range, derived from a seed (VMID, slot, time).
pub fn generate_mac(seed: u64) -> String {
    // splitmix64: a spread of close seeds, without a random source in this pure module.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    format!(
        "{MAC_PREFIX}:{:02X}:{:02X}:{:02X}",
        (z >> 16) as u8,
        (z >> 8) as u8,
        z as u8
    )
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(format!("'{other}' is not a boolean (0 or 1)")),
    }
}

fn parse_int(v: &str, min: u64, max: u64, what: &str) -> Result<u64, String> {
    let n: u64 = v
        .trim()
        .parse()
        .map_err(|_| format!("'{v}' is not an integer"))?;
    if n < min || n > max {
        return Err(format!("{what} must be {min}..={max}, not {n}"));
    }
    Ok(n)
}

/// `memory: 1024` or `memory: current=1024` (Proxmox 8.1+) → MiB.
pub fn parse_memory_mib(v: &str) -> Result<u64, String> {
    let (positional, opts) = split_property_string(v)?;
    let current = match (positional, opts.get("current")) {
        (Some(p), None) if opts.is_empty() => p,
        (None, Some(c)) if opts.len() == 1 => c.clone(),
        _ => return Err("memory must be MiB or 'current=MiB'".into()),
    };
    parse_int(&current, MIN_MEMORY_MIB, MAX_MEMORY_MIB, "memory (MiB)")
}

fn parse_cpu_model(v: &str) -> Result<String, String> {
    let (positional, opts) = split_property_string(v)?;
    let model = match (positional, opts.get("cputype")) {
        (Some(p), None) => p,
        (None, Some(c)) => c.clone(),
        _ => return Err("cpu must be a model name or 'cputype=MODEL'".into()),
    };
    if let Some(k) = opts
        .keys()
        .find(|k| !["cputype", "flags", "hidden"].contains(&k.as_str()))
    {
        return Err(format!("unknown cpu option '{k}'"));
    }
    let ok = !model.is_empty()
        && model.len() <= 64
        && model
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        return Err(format!("CPU model '{model}' is not a valid model name"));
    }
    Ok(model)
}

fn parse_machine(v: &str) -> Result<Machine, String> {
    let (positional, opts) = split_property_string(v)?;
    let ty = match (positional, opts.get("type")) {
        (Some(p), None) => p,
        (None, Some(t)) => t.clone(),
        _ => return Err("machine must be a type or 'type=TYPE'".into()),
    };
    // Versioned types (pc-q35-8.1) run as the base type of this QEMU.
    if ty == "q35" || ty.starts_with("pc-q35-") {
        Ok(Machine::Q35)
    } else if ty == "pc" || ty == "i440fx" || ty.starts_with("pc-i440fx-") {
        Ok(Machine::Pc)
    } else {
        Err(format!("machine type '{ty}' is not supported (q35 or pc)"))
    }
}

fn parse_boot(v: &str) -> Result<(), String> {
    let (positional, opts) = split_property_string(v)?;
    if let Some(p) = positional {
        // Legacy `boot: cdn` (c = disk, d = cdrom, n = network).
        if p.len() <= 4 && p.chars().all(|c| "acdn".contains(c)) && opts.is_empty() {
            return Ok(());
        }
        return Err(format!(
            "boot '{p}' must be 'order=DEV;DEV' or legacy letters (c, d, n)"
        ));
    }
    let order = opts.get("order").ok_or("boot must have 'order=DEV;DEV'")?;
    if opts.len() != 1 {
        return Err("boot accepts only 'order='".into());
    }
    for dev in order.split(';') {
        match key_kind(dev) {
            Some(KeyKind::Drive(..)) | Some(KeyKind::Net(_)) => {}
            _ => return Err(format!("boot device '{dev}' is not a disk or NIC key")),
        }
    }
    Ok(())
}

fn parse_name(v: &str) -> Result<(), String> {
    // Proxmox's `dns-name`: labels of letters, digits and '-', separated by '.'.
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("name '{v}' is not a valid DNS name"))
    }
}

fn parse_tags(v: &str) -> Result<(), String> {
    for tag in v.split([';', ',', ' ']).filter(|t| !t.is_empty()) {
        let ok = tag.len() <= 64
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_+.".contains(c));
        if !ok {
            return Err(format!(
                "tag '{tag}' may only use letters, digits, '-', '_', '+', '.'"
            ));
        }
    }
    Ok(())
}

/// Splits `args` like a shell would (single and double quotes, backslash escapes).
pub fn split_args(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => cur.push(ch),
                        None => return Err("unterminated single quote in args".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(ch) => cur.push(ch),
                            None => return Err("trailing backslash in args".into()),
                        },
                        Some(ch) => cur.push(ch),
                        None => return Err("unterminated double quote in args".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(ch) => cur.push(ch),
                    None => return Err("trailing backslash in args".into()),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// `args` split into QEMU's direct boot and the remaining words.
pub fn parse_args(s: &str) -> Result<(Option<DirectBoot>, Vec<String>), String> {
    if s.len() > MAX_ARGS_BYTES {
        return Err(format!("args may be at most {MAX_ARGS_BYTES} bytes"));
    }
    let words = split_args(s)?;
    let mut kernel = None;
    let mut initrd = None;
    let mut append = None;
    let mut rest = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let slot = match w.as_str() {
            "-kernel" => &mut kernel,
            "-initrd" => &mut initrd,
            "-append" => &mut append,
            // These would break the QEMU process gpve manages.
            "-daemonize" | "-pidfile" | "-qmp" | "-monitor" | "-serial" | "-chardev" | "-S" => {
                return Err(format!("args must not contain '{w}': gpve manages it"));
            }
            _ => {
                rest.push(w);
                continue;
            }
        };
        let value = it.next().ok_or(format!("'{w}' needs a value"))?;
        if slot.replace(value).is_some() {
            return Err(format!("'{w}' is given twice"));
        }
    }
    let boot = match (kernel, initrd, append) {
        (Some(kernel), initrd, append) => Some(DirectBoot {
            kernel: PathBuf::from(kernel),
            initrd: initrd.map(PathBuf::from),
            append: append.unwrap_or_default(),
        }),
        (None, None, None) => None,
        (None, _, _) => return Err("'-initrd' and '-append' need '-kernel'".into()),
    };
    Ok((boot, rest))
}

/// Checks one `key: value` and returns the canonical value to store.
/// `vmid` and `slot_seed` seed generated MAC addresses.
pub fn parse_value(key: &str, value: &str, vmid: u32, seed: u64) -> Result<String, String> {
    let kind = key_kind(key).ok_or_else(|| {
        "property is not defined in schema and the schema does not allow additional properties"
            .to_string()
    })?;
    if value.chars().any(|c| c.is_control() && c != '\n') {
        return Err("value contains control characters".into());
    }
    match kind {
        KeyKind::Drive(..) => {
            parse_drive(value)?;
            Ok(value.to_string())
        }
        KeyKind::Unused(_) => {
            if is_volume_id(value) {
                Ok(value.to_string())
            } else {
                Err(format!("'{value}' is not a volume id"))
            }
        }
        KeyKind::Net(n) => {
            let mut net = parse_net(value)?;
            if net.mac.is_none() {
                net.mac = Some(generate_mac(
                    (u64::from(vmid) << 16) ^ (u64::from(n) << 8) ^ seed,
                ));
            }
            Ok(net.render())
        }
        KeyKind::Serial(_) => {
            if value == "socket" {
                Ok(value.into())
            } else {
                Err("only 'socket' serial ports are supported".into())
            }
        }
        KeyKind::Plain => {
            match key {
                "name" => parse_name(value)?,
                "memory" => {
                    parse_memory_mib(value)?;
                }
                "cores" => {
                    parse_int(value, 1, u64::from(MAX_CORES), "cores")?;
                }
                "sockets" => {
                    parse_int(value, 1, u64::from(MAX_SOCKETS), "sockets")?;
                }
                "cpu" => {
                    parse_cpu_model(value)?;
                }
                "machine" => {
                    parse_machine(value)?;
                }
                "bios" => {
                    if value != "seabios" && value != "ovmf" {
                        return Err(format!("bios '{value}' must be seabios or ovmf"));
                    }
                }
                "ostype" => {
                    if !OSTYPES.contains(&value) {
                        return Err(format!(
                            "ostype '{value}' is not one of {}",
                            OSTYPES.join(", ")
                        ));
                    }
                }
                "boot" => parse_boot(value)?,
                "onboot" | "kvm" | "template" | "protection" => {
                    return Ok(if parse_bool(value)? { "1" } else { "0" }.into());
                }
                "args" => {
                    parse_args(value)?;
                }
                "description" => {
                    if value.len() > MAX_DESCRIPTION_BYTES {
                        return Err(format!(
                            "description may be at most {MAX_DESCRIPTION_BYTES} bytes"
                        ));
                    }
                }
                "tags" => parse_tags(value)?,
                _ => return Err("property is not supported".into()),
            }
            Ok(value.to_string())
        }
    }
}

/// Validates a whole set of changes (each value, plus duplicate volume use) and returns the
/// canonical values; every bad key is reported.
pub fn parse_changes(
    changes: &BTreeMap<String, String>,
    vmid: u32,
    seed: u64,
) -> Result<BTreeMap<String, String>, ConfigErrors> {
    let mut errors = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (k, v) in changes {
        match parse_value(k, v, vmid, seed) {
            Ok(canon) => {
                out.insert(k.clone(), canon);
            }
            Err(e) => {
                errors.insert(k.clone(), e);
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Checks a complete configuration for conflicts between keys: one volume used by two
/// slots, and boot devices that do not exist.
pub fn check_whole(config: &BTreeMap<String, String>) -> Result<(), ConfigErrors> {
    let mut errors = BTreeMap::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in config {
        let vol = match key_kind(k) {
            Some(KeyKind::Drive(..)) => parse_drive(v)
                .ok()
                .and_then(|d| d.volume().map(str::to_string)),
            Some(KeyKind::Unused(_)) => Some(v.clone()),
            _ => None,
        };
        if let Some(vol) = vol
            && let Some(other) = seen.insert(vol.clone(), k.clone())
        {
            errors.insert(
                k.clone(),
                format!("volume '{vol}' is already used by '{other}'"),
            );
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Resolves a volume id to the host path QEMU opens and its format.
pub trait VolumePaths {
    fn path_of(&self, volid: &str) -> Option<(PathBuf, DiskFormat)>;
}

impl VolumePaths for BTreeMap<String, (PathBuf, DiskFormat)> {
    fn path_of(&self, volid: &str) -> Option<(PathBuf, DiskFormat)> {
        self.get(volid).cloned()
    }
}

/// The volume ids of the VM's drives (allocated ones only), by key.
pub fn drive_volumes(config: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    config
        .iter()
        .filter(|(k, _)| is_drive(k))
        .filter_map(|(k, v)| {
            let d = parse_drive(v).ok()?;
            Some((k.clone(), d.volume()?.to_string()))
        })
        .collect()
}

/// Every volume the VM owns: drives and `unusedN`.
pub fn owned_volumes(config: &BTreeMap<String, String>) -> Vec<String> {
    let mut v: Vec<String> = drive_volumes(config).into_values().collect();
    v.extend(
        config
            .iter()
            .filter(|(k, _)| matches!(key_kind(k), Some(KeyKind::Unused(_))))
            .map(|(_, v)| v.clone()),
    );
    v
}

/// The memory in MiB a configuration gives the VM.
pub fn memory_mib(config: &BTreeMap<String, String>) -> u64 {
    config
        .get("memory")
        .and_then(|m| parse_memory_mib(m).ok())
        .unwrap_or(DEFAULT_MEMORY_MIB)
}

/// vCPUs (sockets × cores).
pub fn vcpus(config: &BTreeMap<String, String>) -> u32 {
    let get = |k: &str| {
        config
            .get(k)
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(1)
    };
    get("sockets") * get("cores")
}

/// Whether a boolean key is set.
pub fn flag(config: &BTreeMap<String, String>, key: &str, default: bool) -> bool {
    config
        .get(key)
        .and_then(|v| parse_bool(v).ok())
        .unwrap_or(default)
}

/// The QEMU spec of a stored configuration; `paths` resolves every drive's volume.
pub fn to_qemu_spec(
    vmid: u32,
    config: &BTreeMap<String, String>,
    paths: &dyn VolumePaths,
) -> Result<QemuSpec, ConfigErrors> {
    let mut errors = BTreeMap::new();
    let name = config
        .get("name")
        .cloned()
        .unwrap_or_else(|| format!("VM{vmid}"));
    let mut spec = QemuSpec::new(vmid, name);
    spec.memory_mib = memory_mib(config);
    let get_u32 = |k: &str| {
        config
            .get(k)
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(1)
    };
    spec.cores = get_u32("cores");
    spec.sockets = get_u32("sockets");
    if let Some(cpu) = config.get("cpu") {
        match parse_cpu_model(cpu) {
            Ok(m) => spec.cpu = m,
            Err(e) => {
                errors.insert("cpu".to_string(), e);
            }
        }
    }
    if let Some(m) = config.get("machine") {
        match parse_machine(m) {
            Ok(m) => spec.machine = m,
            Err(e) => {
                errors.insert("machine".to_string(), e);
            }
        }
    }
    spec.bios = match config.get("bios").map(String::as_str) {
        Some("ovmf") => Bios::Ovmf,
        _ => Bios::Seabios,
    };
    spec.accel = if flag(config, "kvm", true) {
        Accel::Auto
    } else {
        Accel::Tcg
    };
    for (key, value) in config {
        match key_kind(key) {
            Some(KeyKind::Drive(bus, slot)) => {
                let drive = match parse_drive(value) {
                    Ok(d) => d,
                    Err(e) => {
                        errors.insert(key.clone(), e);
                        continue;
                    }
                };
                let Some(volid) = drive.volume() else {
                    errors.insert(key.clone(), "the disk was never allocated".into());
                    continue;
                };
                match paths.path_of(volid) {
                    Some((path, format)) => spec.disks.push(DiskSpec {
                        bus,
                        slot,
                        path,
                        format: drive.format.unwrap_or(format),
                    }),
                    None => {
                        errors.insert(key.clone(), format!("volume '{volid}' cannot be found"));
                    }
                }
            }
            Some(KeyKind::Net(slot)) => match parse_net(value) {
                Ok(net) => spec.nics.push(NicSpec {
                    slot,
                    model: net.model,
                    mac: net
                        .mac
                        .unwrap_or_else(|| generate_mac(u64::from(vmid) << 16 | u64::from(slot))),
                    // Taps come with the network issue (see the module comment).
                    backend: NicBackend::None,
                }),
                Err(e) => {
                    errors.insert(key.clone(), e);
                }
            },
            _ => {}
        }
    }
    if let Some(args) = config.get("args") {
        match parse_args(args) {
            Ok((boot, rest)) => {
                spec.direct_boot = boot;
                spec.args = rest;
            }
            Err(e) => {
                errors.insert("args".to_string(), e);
            }
        }
    }
    if let Err(e) = spec.validate() {
        errors.insert("config".to_string(), e.to_string());
    }
    if errors.is_empty() {
        Ok(spec)
    } else {
        Err(ConfigErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn keys() {
        assert_eq!(key_kind("scsi0"), Some(KeyKind::Drive(DiskBus::Scsi, 0)));
        assert_eq!(key_kind("scsi30"), Some(KeyKind::Drive(DiskBus::Scsi, 30)));
        assert_eq!(key_kind("scsi31"), None);
        assert_eq!(key_kind("scsi01"), None);
        assert_eq!(key_kind("ide3"), Some(KeyKind::Drive(DiskBus::Ide, 3)));
        assert_eq!(key_kind("net31"), Some(KeyKind::Net(31)));
        assert_eq!(key_kind("unused7"), Some(KeyKind::Unused(7)));
        assert_eq!(key_kind("bogus"), None);
        assert!(all_keys().contains(&"virtio15".to_string()));
    }

    #[test]
    fn drives() {
        let d = parse_drive("local:4,format=qcow2").unwrap();
        assert_eq!(
            d.source,
            DriveSource::Allocate {
                storage: "local".into(),
                size_gib: 4
            }
        );
        assert_eq!(d.format, Some(DiskFormat::Qcow2));
        let d = parse_drive("local:100/vm-100-disk-0.qcow2,size=4G,cache=writeback").unwrap();
        assert_eq!(d.volume(), Some("local:100/vm-100-disk-0.qcow2"));
        assert_eq!(d.size_bytes, Some(4 << 30));
        assert_eq!(
            d.render("local:100/vm-100-disk-0.qcow2"),
            "local:100/vm-100-disk-0.qcow2,cache=writeback,size=4G"
        );
        for bad in [
            "",
            "local",
            "local:0",
            "local:4,format=vmdk",
            "local:4,bogus=1",
            "local:4,cache=maybe",
            "local:4,,x",
            "local:../etc/passwd",
            "local:4,format=raw,format=qcow2",
        ] {
            assert!(parse_drive(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nets() {
        let n = parse_net("virtio,bridge=vmbr0,firewall=1,tag=10").unwrap();
        assert_eq!(n.model, NicModel::Virtio);
        assert_eq!(n.bridge.as_deref(), Some("vmbr0"));
        assert!(n.firewall);
        assert_eq!(n.tag, Some(10));
        let n = parse_net("virtio=BC:24:11:00:00:01,bridge=vmbr0").unwrap();
        assert_eq!(n.mac.as_deref(), Some("BC:24:11:00:00:01"));
        assert_eq!(n.render(), "virtio=BC:24:11:00:00:01,bridge=vmbr0");
        for bad in [
            "rtl9999,bridge=vmbr0",
            "bridge=vmbr0",
            "virtio,tag=5000",
            "virtio,macaddr=01:00:00:00:00:00",
            "virtio,firewall=2",
            "virtio,bogus=1",
        ] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
        let canon = parse_value("net0", "virtio,bridge=vmbr0", 100, 1).unwrap();
        assert!(canon.starts_with("virtio=BC:24:11:"), "{canon}");
    }

    #[test]
    fn plain_values() {
        assert!(parse_value("memory", "0", 100, 0).is_err());
        assert!(parse_value("memory", "128", 100, 0).is_ok());
        assert!(parse_value("memory", "current=256", 100, 0).is_ok());
        assert!(parse_value("cores", "0", 100, 0).is_err());
        assert!(parse_value("machine", "pc-q35-8.1", 100, 0).is_ok());
        assert!(parse_value("machine", "virt", 100, 0).is_err());
        assert!(parse_value("boot", "order=scsi0;net0", 100, 0).is_ok());
        assert!(parse_value("boot", "order=scsi0;floppy", 100, 0).is_err());
        assert_eq!(parse_value("onboot", "true", 100, 0).unwrap(), "1");
        assert!(parse_value("name", "-bad", 100, 0).is_err());
        assert!(parse_value("ostype", "l26", 100, 0).is_ok());
        assert!(parse_value("nope", "1", 100, 0).is_err());
        assert!(parse_value("serial0", "socket", 100, 0).is_ok());
        assert!(parse_value("serial0", "/dev/ttyS0", 100, 0).is_err());
    }

    #[test]
    fn args_direct_boot() {
        let (boot, rest) =
            parse_args("-kernel /k -initrd '/i d' -append \"console=ttyS0 quiet\" -no-reboot")
                .unwrap();
        let boot = boot.unwrap();
        assert_eq!(boot.kernel, PathBuf::from("/k"));
        assert_eq!(boot.initrd, Some(PathBuf::from("/i d")));
        assert_eq!(boot.append, "console=ttyS0 quiet");
        assert_eq!(rest, vec!["-no-reboot".to_string()]);
        assert!(parse_args("-initrd /i").is_err());
        assert!(parse_args("-kernel").is_err());
        assert!(parse_args("-daemonize").is_err());
        assert!(parse_args("-append 'x").is_err());
    }

    #[test]
    fn whole_config_and_spec() {
        let cfg = map(&[
            ("name", "web1"),
            ("memory", "128"),
            ("cores", "2"),
            ("kvm", "0"),
            ("scsi0", "local:100/vm-100-disk-0.qcow2,size=1G"),
            ("net0", "virtio=BC:24:11:00:00:01,bridge=vmbr0"),
            ("args", "-kernel /k -initrd /i -append console=ttyS0"),
        ]);
        check_whole(&cfg).unwrap();
        let mut paths = BTreeMap::new();
        paths.insert(
            "local:100/vm-100-disk-0.qcow2".to_string(),
            (
                PathBuf::from("/s/images/100/vm-100-disk-0.qcow2"),
                DiskFormat::Qcow2,
            ),
        );
        let spec = to_qemu_spec(100, &cfg, &paths).unwrap();
        assert_eq!(spec.cores, 2);
        assert_eq!(spec.memory_mib, 128);
        assert_eq!(spec.accel, Accel::Tcg);
        assert_eq!(spec.disks.len(), 1);
        assert_eq!(spec.nics[0].backend, NicBackend::None);
        assert!(spec.direct_boot.is_some());
        let missing = to_qemu_spec(100, &cfg, &BTreeMap::new()).unwrap_err();
        assert!(missing.0.contains_key("scsi0"));

        let dup = map(&[
            ("scsi0", "local:100/vm-100-disk-0.qcow2"),
            ("scsi1", "local:100/vm-100-disk-0.qcow2"),
        ]);
        assert!(check_whole(&dup).unwrap_err().0.contains_key("scsi1"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size_bytes("4").unwrap(), 4 << 30);
        assert_eq!(parse_size_bytes("512M").unwrap(), 512 << 20);
        assert!(parse_size_bytes("0").is_err());
        assert!(parse_size_bytes("4X").is_err());
        assert_eq!(format_size(4 << 30), "4G");
        assert_eq!(format_size(1536 << 20), "1536M");
    }
}
