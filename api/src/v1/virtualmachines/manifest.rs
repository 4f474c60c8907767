//! The `gpve.io/v1 VirtualMachine` manifest: its types (shared by the server, the Rust
//! client and `gpvectl apply`), the strict parser that names every bad field by its JSON
//! path (`spec.disks[0].sizee`), and Kubernetes quantities (`512Mi`, `4Gi`).
//!
//! Parsing is pure and collects every error at once, so one request reports all of them,
//! keyed like Proxmox's `errors` map.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// `apiVersion` of every object of this API.
pub const API_VERSION: &str = "gpve.io/v1";
/// `kind` of one VM.
pub const KIND: &str = "VirtualMachine";
/// `kind` of a listing.
pub const LIST_KIND: &str = "VirtualMachineList";
/// The namespace used when none is given.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Longest name or namespace (a DNS-1123 label, as Kubernetes).
pub const MAX_NAME_CHARS: usize = 63;
/// Most labels on one object.
pub const MAX_LABELS: usize = 64;
/// Longest label value (Kubernetes' bound).
pub const MAX_LABEL_VALUE_CHARS: usize = 63;
/// Longest label key, prefix included (Kubernetes: 253 + `/` + 63).
pub const MAX_LABEL_KEY_CHARS: usize = 317;
/// Most disks and most networks in one spec.
pub const MAX_DISKS: usize = 30;
pub const MAX_NETWORKS: usize = 32;
/// Smallest memory gpve starts a VM with, in MiB (the VM config's own bound).
pub const MIN_MEMORY_MIB: u64 = gpve_actors::vm::config::MIN_MEMORY_MIB;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A byte quantity written the Kubernetes way (`512Mi`, `4Gi`, `1G`, `1073741824`); it
/// serialises in the largest binary unit that divides it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity(pub u64);

impl Quantity {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for Quantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const UNITS: [(u64, &str); 5] = [
            (1 << 50, "Pi"),
            (1 << 40, "Ti"),
            (1 << 30, "Gi"),
            (1 << 20, "Mi"),
            (1 << 10, "Ki"),
        ];
        for (mult, unit) in UNITS {
            if self.0 >= mult && self.0.is_multiple_of(mult) {
                return write!(f, "{}{unit}", self.0 / mult);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        quantity_of(&v).map_err(serde::de::Error::custom)
    }
}

/// Parses a quantity: a non-negative decimal number and an optional suffix, binary (`Ki`,
/// `Mi`, `Gi`, `Ti`, `Pi`) or decimal (`k`, `M`, `G`, `T`, `P`); a bare number is bytes.
pub fn parse_quantity(s: &str) -> Result<Quantity, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let mult: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        _ => {
            return Err(format!(
                "'{}' is not a quantity: unknown unit '{}' (use Ki, Mi, Gi, Ti, e.g. 512Mi or 4Gi)",
                shown(t),
                shown(suffix)
            ));
        }
    };
    let bad = || {
        format!(
            "'{}' is not a quantity (a number with an optional unit, e.g. 512Mi or 4Gi)",
            shown(t)
        )
    };
    if num.is_empty() || num.matches('.').count() > 1 || num.starts_with('.') {
        return Err(bad());
    }
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let int: u64 = int.parse().map_err(|_| bad())?;
    let mut bytes = int.checked_mul(mult).ok_or_else(|| too_large(t))?;
    if !frac.is_empty() {
        // Exact decimal arithmetic: 1.5Gi is 1,610,612,736 bytes, 0.1 is not a byte count.
        let digits = u32::try_from(frac.len()).map_err(|_| bad())?;
        let scale = 10u128.checked_pow(digits).ok_or_else(bad)?;
        let frac_n: u128 = frac.parse().map_err(|_| bad())?;
        let scaled = frac_n * u128::from(mult);
        if !scaled.is_multiple_of(scale) {
            return Err(format!("'{}' is not a whole number of bytes", shown(t)));
        }
        let extra = u64::try_from(scaled / scale).map_err(|_| too_large(t))?;
        bytes = bytes.checked_add(extra).ok_or_else(|| too_large(t))?;
    }
    Ok(Quantity(bytes))
}

fn too_large(t: &str) -> String {
    format!("'{}' is too large", shown(t))
}

fn shown(s: &str) -> String {
    s.chars().take(64).collect()
}

fn quantity_of(v: &Value) -> Result<Quantity, String> {
    match v {
        Value::String(s) => parse_quantity(s),
        Value::Number(n) => n
            .as_u64()
            .map(Quantity)
            .ok_or_else(|| format!("'{n}' is not a quantity (a non-negative whole number)")),
        other => Err(format!(
            "expected a quantity such as 1Gi, got {}",
            type_name(other)
        )),
    }
}

/// One VM as the declarative API reads and writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachine {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: VmSpec,
    /// Written by the server only; ignored in requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VmStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The desired VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmSpec {
    pub cpu: CpuSpec,
    pub memory: Quantity,
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    #[serde(default)]
    pub networks: Vec<NetworkSpec>,
    /// Desired power state.
    #[serde(default)]
    pub running: bool,
    /// Proxmox configuration keys the manifest does not model (`kvm`, `args`, `serial0`,
    /// `boot`, ...), passed through with the Proxmox API's validation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub proxmox: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuSpec {
    pub cores: u32,
    pub sockets: u32,
}

impl Default for CpuSpec {
    fn default() -> Self {
        CpuSpec {
            cores: 1,
            sockets: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    pub name: String,
    pub storage: String,
    pub size: Quantity,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    pub model: String,
    #[serde(default)]
    pub firewall: bool,
}

/// What the server observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmStatus {
    /// `Provisioning`, `Running`, `Paused`, `Stopped`, `Locked` or `Terminating`.
    pub phase: String,
    pub node: String,
    pub vmid: u32,
    /// Manifest paths whose new values wait for the next start (`spec.memory`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_changes: Vec<String>,
    /// UPID of the operation this request started, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
}

/// `GET .../virtualmachines`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineList {
    pub api_version: String,
    pub kind: String,
    pub items: Vec<VirtualMachine>,
}

/// Errors of a manifest, keyed by JSON path.
pub type PathErrors = BTreeMap<String, String>;

/// Whether `s` is a DNS-1123 label (Kubernetes names and namespaces).
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_CHARS
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Why `s` is not a valid name or namespace, if it is not.
pub fn name_error(s: &str) -> Option<String> {
    (!is_dns_label(s)).then(|| {
        format!(
            "'{}' is not a valid name: at most {MAX_NAME_CHARS} lowercase letters, digits and '-', starting and ending with a letter or digit",
            shown(s)
        )
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A cursor over one JSON object that records unknown and ill-typed fields.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl<'a> Obj<'a> {
    /// `v` as an object with only `allowed` keys; `None` (and an error) otherwise.
    fn new(v: &'a Value, path: &str, allowed: &[&str], errs: &mut PathErrors) -> Option<Obj<'a>> {
        let Value::Object(map) = v else {
            errs.insert(
                path_or_root(path),
                format!("expected an object, got {}", type_name(v)),
            );
            return None;
        };
        for k in map.keys() {
            if !allowed.contains(&k.as_str()) {
                errs.insert(
                    join(path, &shown(k)),
                    format!("unknown field (expected one of: {})", allowed.join(", ")),
                );
            }
        }
        Some(Obj {
            map,
            path: path.to_string(),
        })
    }

    fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The field, treating `null` as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn required(&self, key: &str, errs: &mut PathErrors) -> Option<&'a Value> {
        let v = self.get(key);
        if v.is_none() {
            errs.insert(self.at(key), "required field is missing".into());
        }
        v
    }

    fn string(&self, key: &str, required: bool, errs: &mut PathErrors) -> Option<String> {
        let v = if required {
            self.required(key, errs)?
        } else {
            self.get(key)?
        };
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                errs.insert(
                    self.at(key),
                    format!("expected a string, got {}", type_name(other)),
                );
                None
            }
        }
    }

    fn uint(&self, key: &str, min: u64, max: u64, errs: &mut PathErrors) -> Option<u64> {
        let v = self.get(key)?;
        match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                errs.insert(self.at(key), format!("{n} is not in {min}..={max}"));
                None
            }
            None => {
                errs.insert(
                    self.at(key),
                    format!("expected a whole number, got {}", type_name(v)),
                );
                None
            }
        }
    }

    fn boolean(&self, key: &str, errs: &mut PathErrors) -> Option<bool> {
        let v = self.get(key)?;
        match v {
            Value::Bool(b) => Some(*b),
            other => {
                errs.insert(
                    self.at(key),
                    format!("expected true or false, got {}", type_name(other)),
                );
                None
            }
        }
    }

    fn list(&self, key: &str, max: usize, errs: &mut PathErrors) -> Vec<(String, &'a Value)> {
        let Some(v) = self.get(key) else {
            return Vec::new();
        };
        let Value::Array(items) = v else {
            errs.insert(
                self.at(key),
                format!("expected a list, got {}", type_name(v)),
            );
            return Vec::new();
        };
        if items.len() > max {
            errs.insert(self.at(key), format!("at most {max} entries are allowed"));
            return Vec::new();
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| (format!("{}[{i}]", self.at(key)), item))
            .collect()
    }
}

fn path_or_root(path: &str) -> String {
    if path.is_empty() {
        "(root)".into()
    } else {
        path.to_string()
    }
}

/// Parses and checks one manifest. Every problem is reported, keyed by its JSON path.
/// `status` is accepted (so the output of `get -o yaml` can be applied again) and ignored.
pub fn parse(v: &Value) -> Result<VirtualMachine, PathErrors> {
    let mut errs = PathErrors::new();
    let Some(root) = Obj::new(
        v,
        "",
        &["apiVersion", "kind", "metadata", "spec", "status"],
        &mut errs,
    ) else {
        return Err(errs);
    };
    match root.string("apiVersion", true, &mut errs) {
        Some(a) if a != API_VERSION => {
            errs.insert(
                "apiVersion".into(),
                format!("'{}' is not served here (use {API_VERSION})", shown(&a)),
            );
        }
        _ => {}
    }
    match root.string("kind", true, &mut errs) {
        Some(k) if k != KIND => {
            errs.insert(
                "kind".into(),
                format!("'{}' is not served here (use {KIND})", shown(&k)),
            );
        }
        _ => {}
    }
    let metadata = root
        .required("metadata", &mut errs)
        .and_then(|m| parse_metadata(m, &mut errs));
    let spec = root
        .required("spec", &mut errs)
        .and_then(|s| parse_spec(s, &mut errs));
    match (metadata, spec) {
        (Some(metadata), Some(spec)) if errs.is_empty() => Ok(VirtualMachine {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            metadata,
            spec,
            status: None,
        }),
        _ => Err(errs),
    }
}

fn parse_metadata(v: &Value, errs: &mut PathErrors) -> Option<ObjectMeta> {
    let m = Obj::new(v, "metadata", &["name", "namespace", "labels"], errs)?;
    let name = m.string("name", true, errs);
    if let Some(e) = name.as_deref().and_then(name_error) {
        errs.insert("metadata.name".into(), e);
    }
    let namespace = m.string("namespace", false, errs);
    if let Some(e) = namespace.as_deref().and_then(name_error) {
        errs.insert("metadata.namespace".into(), e);
    }
    let mut labels = BTreeMap::new();
    if let Some(l) = m.get("labels") {
        match l {
            Value::Object(map) if map.len() > MAX_LABELS => {
                errs.insert(
                    "metadata.labels".into(),
                    format!("at most {MAX_LABELS} labels are allowed"),
                );
            }
            Value::Object(map) => {
                for (k, v) in map {
                    let path = format!("metadata.labels.{}", shown(k));
                    if let Some(e) = label_key_error(k) {
                        errs.insert(path, e);
                        continue;
                    }
                    match v {
                        Value::String(s) if label_value_ok(s) => {
                            labels.insert(k.clone(), s.clone());
                        }
                        Value::String(s) => {
                            errs.insert(
                                path,
                                format!(
                                    "'{}' is not a label value: at most {MAX_LABEL_VALUE_CHARS} letters, digits, '-', '_' and '.'",
                                    shown(s)
                                ),
                            );
                        }
                        other => {
                            errs.insert(
                                path,
                                format!(
                                    "expected a string, got {} (quote it in YAML)",
                                    type_name(other)
                                ),
                            );
                        }
                    }
                }
            }
            other => {
                errs.insert(
                    "metadata.labels".into(),
                    format!("expected an object, got {}", type_name(other)),
                );
            }
        }
    }
    Some(ObjectMeta {
        name: name?,
        namespace,
        labels,
    })
}

fn label_value_ok(s: &str) -> bool {
    s.len() <= MAX_LABEL_VALUE_CHARS
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn label_key_error(k: &str) -> Option<String> {
    let (prefix, name) = k.rsplit_once('/').unwrap_or(("", k));
    let ok = k.len() <= MAX_LABEL_KEY_CHARS
        && !name.is_empty()
        && name.len() <= MAX_NAME_CHARS
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c));
    (!ok).then(|| "not a label key: [prefix/]name of letters, digits, '-', '_' and '.'".into())
}

fn parse_spec(v: &Value, errs: &mut PathErrors) -> Option<VmSpec> {
    let s = Obj::new(
        v,
        "spec",
        &["cpu", "memory", "disks", "networks", "running", "proxmox"],
        errs,
    )?;
    let mut cpu = CpuSpec::default();
    if let Some(c) = s.get("cpu")
        && let Some(c) = Obj::new(c, "spec.cpu", &["cores", "sockets"], errs)
    {
        let max_cores = u64::from(gpve_actors::vm::config::MAX_CORES);
        let max_sockets = u64::from(gpve_actors::vm::config::MAX_SOCKETS);
        if let Some(n) = c.uint("cores", 1, max_cores, errs) {
            cpu.cores = n as u32;
        }
        if let Some(n) = c.uint("sockets", 1, max_sockets, errs) {
            cpu.sockets = n as u32;
        }
    }
    let memory = match s.required("memory", errs).map(quantity_of) {
        Some(Ok(q)) if q.0 < MIN_MEMORY_MIB * MIB => {
            errs.insert(
                "spec.memory".into(),
                format!("{q} is less than the minimum of {MIN_MEMORY_MIB}Mi"),
            );
            None
        }
        Some(Ok(q)) if !q.0.is_multiple_of(MIB) => {
            errs.insert(
                "spec.memory".into(),
                format!("{q} is not a whole number of MiB"),
            );
            None
        }
        Some(Ok(q)) => Some(q),
        Some(Err(e)) => {
            errs.insert("spec.memory".into(), e);
            None
        }
        None => None,
    };
    let mut disks = Vec::new();
    for (path, item) in s.list("disks", MAX_DISKS, errs) {
        if let Some(d) = parse_disk(item, &path, errs) {
            disks.push(d);
        }
    }
    check_unique(disks.iter().map(|d| d.name.as_str()), "spec.disks", errs);
    let mut networks = Vec::new();
    for (path, item) in s.list("networks", MAX_NETWORKS, errs) {
        if let Some(n) = parse_network(item, &path, errs) {
            networks.push(n);
        }
    }
    check_unique(
        networks.iter().map(|n| n.name.as_str()),
        "spec.networks",
        errs,
    );
    let running = s.boolean("running", errs).unwrap_or(false);
    let mut proxmox = BTreeMap::new();
    if let Some(p) = s.get("proxmox") {
        match p {
            Value::Object(map) => {
                for (k, v) in map {
                    let path = format!("spec.proxmox.{}", shown(k));
                    let text = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => if *b { "1" } else { "0" }.to_string(),
                        other => {
                            errs.insert(
                                path,
                                format!("expected a string, got {}", type_name(other)),
                            );
                            continue;
                        }
                    };
                    proxmox.insert(k.clone(), text);
                }
            }
            other => {
                errs.insert(
                    "spec.proxmox".into(),
                    format!("expected an object, got {}", type_name(other)),
                );
            }
        }
    }
    Some(VmSpec {
        cpu,
        memory: memory?,
        disks,
        networks,
        running,
        proxmox,
    })
}

fn check_unique<'a>(names: impl Iterator<Item = &'a str>, path: &str, errs: &mut PathErrors) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, n) in names.enumerate() {
        if !seen.insert(n) {
            errs.insert(format!("{path}[{i}].name"), format!("'{n}' is used twice"));
        }
    }
}

fn parse_disk(v: &Value, path: &str, errs: &mut PathErrors) -> Option<DiskSpec> {
    let d = Obj::new(v, path, &["name", "storage", "size"], errs)?;
    let name = d.string("name", true, errs);
    if let Some(e) = name.as_deref().and_then(name_error) {
        errs.insert(d.at("name"), e);
    }
    let storage = d.string("storage", true, errs);
    let size = match d.required("size", errs).map(quantity_of) {
        Some(Ok(q)) if q.0 == 0 || !q.0.is_multiple_of(GIB) => {
            errs.insert(
                d.at("size"),
                format!("{q} is not a positive whole number of Gi (disks are allocated in GiB)"),
            );
            None
        }
        Some(Ok(q)) => Some(q),
        Some(Err(e)) => {
            errs.insert(d.at("size"), e);
            None
        }
        None => None,
    };
    Some(DiskSpec {
        name: name?,
        storage: storage?,
        size: size?,
    })
}

fn parse_network(v: &Value, path: &str, errs: &mut PathErrors) -> Option<NetworkSpec> {
    let n = Obj::new(v, path, &["name", "bridge", "model", "firewall"], errs)?;
    let name = n.string("name", true, errs);
    if let Some(e) = name.as_deref().and_then(name_error) {
        errs.insert(n.at("name"), e);
    }
    let bridge = n.string("bridge", false, errs);
    let model = n
        .string("model", false, errs)
        .unwrap_or_else(|| "virtio".into());
    let firewall = n.boolean("firewall", errs).unwrap_or(false);
    Some(NetworkSpec {
        name: name?,
        bridge,
        model,
        firewall,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Value {
        json!({
            "apiVersion": "gpve.io/v1",
            "kind": "VirtualMachine",
            "metadata": {"name": "web1", "labels": {"app": "web"}},
            "spec": {
                "cpu": {"cores": 2},
                "memory": "1Gi",
                "disks": [{"name": "root", "storage": "local", "size": "4Gi"}],
                "networks": [{"name": "lan", "bridge": "vmbr0"}],
                "running": true,
                "proxmox": {"kvm": 0}
            }
        })
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("1Gi"), Ok(Quantity(1 << 30)));
        assert_eq!(parse_quantity("512Mi"), Ok(Quantity(512 << 20)));
        assert_eq!(parse_quantity("1.5Gi"), Ok(Quantity(3 << 29)));
        assert_eq!(parse_quantity("1G"), Ok(Quantity(1_000_000_000)));
        assert_eq!(parse_quantity("4096"), Ok(Quantity(4096)));
        assert!(
            parse_quantity("1Gx")
                .unwrap_err()
                .contains("unknown unit 'Gx'")
        );
        assert!(parse_quantity("Gi").is_err());
        assert!(parse_quantity("1..5Gi").is_err());
        assert!(parse_quantity("0.1").is_err());
        assert!(
            parse_quantity("99999999999Pi")
                .unwrap_err()
                .contains("too large")
        );
        assert_eq!(Quantity(1 << 30).to_string(), "1Gi");
        assert_eq!(Quantity(1536 << 20).to_string(), "1536Mi");
        assert_eq!(Quantity(1000).to_string(), "1000");
    }

    #[test]
    fn a_good_manifest_parses_with_defaults() {
        let vm = parse(&good()).expect("parses");
        assert_eq!(vm.metadata.name, "web1");
        assert_eq!(
            vm.spec.cpu,
            CpuSpec {
                cores: 2,
                sockets: 1
            }
        );
        assert_eq!(vm.spec.memory, Quantity(1 << 30));
        assert_eq!(vm.spec.networks[0].model, "virtio");
        assert_eq!(vm.spec.proxmox["kvm"], "0");
        // What the server prints parses again to the same value.
        let text = serde_json::to_value(&vm).expect("serialises");
        assert_eq!(parse(&text).expect("round trip"), vm);
    }

    #[test]
    fn unknown_fields_are_named_by_path() {
        let mut v = good();
        v["spec"]["disks"][0]["sizee"] = json!("4Gi");
        v["spec"]["cpus"] = json!(2);
        v["metadata"]["uid"] = json!("x");
        let errs = parse(&v).unwrap_err();
        assert!(errs.contains_key("spec.disks[0].sizee"), "{errs:?}");
        assert!(errs.contains_key("spec.cpus"), "{errs:?}");
        assert!(errs.contains_key("metadata.uid"), "{errs:?}");
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn bad_values_are_named() {
        let mut v = good();
        v["spec"]["memory"] = json!("1Gx");
        v["spec"]["disks"][0]["size"] = json!("512Mi");
        v["spec"]["cpu"]["cores"] = json!(0);
        v["spec"]["running"] = json!("yes");
        v["metadata"]["name"] = json!("Web_1");
        v["kind"] = json!("Pod");
        let errs = parse(&v).unwrap_err();
        assert!(errs["spec.memory"].contains("1Gx"), "{errs:?}");
        assert!(errs["spec.disks[0].size"].contains("Gi"), "{errs:?}");
        assert!(errs.contains_key("spec.cpu.cores"), "{errs:?}");
        assert!(errs.contains_key("spec.running"), "{errs:?}");
        assert!(errs.contains_key("metadata.name"), "{errs:?}");
        assert!(errs.contains_key("kind"), "{errs:?}");
    }

    #[test]
    fn missing_and_duplicate_fields() {
        let mut v = good();
        v["spec"].as_object_mut().expect("object").remove("memory");
        v["spec"]["networks"] = json!([{"name": "a"}, {"name": "a"}]);
        let errs = parse(&v).unwrap_err();
        assert_eq!(errs["spec.memory"], "required field is missing");
        assert!(errs.contains_key("spec.networks[1].name"), "{errs:?}");
        assert!(parse(&json!([1])).unwrap_err().contains_key("(root)"));
    }
}
