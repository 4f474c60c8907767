//! The `gpve.io/v1 VirtualCluster` manifest: types shared by the server, the Rust client
//! and `gpvectl`, and the strict parser that names every bad field by its JSON path and
//! lists the supported values of every enumerated field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::v1::virtualmachines::manifest::{PathErrors, name_error, parse_quantity};

/// `kind` of one virtual cluster.
pub const KIND: &str = "VirtualCluster";
/// `kind` of a listing.
pub const LIST_KIND: &str = "VirtualClusterList";
/// Kubernetes minor versions a VC may run.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.28", "1.29", "1.30", "1.31"];
/// Control-plane tiers.
pub const TIERS: &[&str] = &["dev", "standard", "ha"];
/// Backing stores.
pub const BACKING_STORES: &[&str] = &["sqlite", "etcd"];
/// Isolation levels: L1 runc pods, L2 Kata pods, L3 worker VMs.
pub const ISOLATION_LEVELS: &[&str] = &["L1", "L2", "L3"];
/// Worker node modes.
pub const WORKER_MODES: &[&str] = &["private", "shared"];
/// Scheduling strategies for worker placement.
pub const STRATEGIES: &[&str] = &["spread", "pack"];
/// Most worker nodes of one VC.
pub const MAX_WORKERS: u64 = 64;
/// Most control-plane replicas (etcd members) of the ha tier.
pub const MAX_REPLICAS: u64 = 5;
/// Most vCPUs of one worker.
pub const MAX_WORKER_CPUS: u64 = 128;
/// Smallest worker memory, in MiB (the VM's own minimum).
pub const MIN_WORKER_MEMORY_MIB: u64 = 16;

/// Control-plane settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlane {
    pub tier: String,
    pub backing_store: String,
    pub replicas: u64,
}

/// Resources of one worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerResources {
    pub cpu: u64,
    pub memory_mib: u64,
    pub disk_gib: u64,
}

/// Worker node settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerNodes {
    pub mode: String,
    pub count: u64,
    pub resources: WorkerResources,
}

/// Worker placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Scheduling {
    pub strategy: String,
    pub anti_affinity: bool,
}

/// The desired state of a VC, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VcSpec {
    pub kubernetes_version: String,
    pub control_plane: ControlPlane,
    pub worker_nodes: WorkerNodes,
    pub isolation_level: String,
    pub scheduling: Scheduling,
}

impl VcSpec {
    /// Whether the workers are VMs this VC creates (isolation L3, private nodes).
    pub fn has_worker_vms(&self) -> bool {
        self.isolation_level == "L3" && self.worker_nodes.mode == "private"
    }

    /// Worker VMs wanted.
    pub fn worker_vms(&self) -> u64 {
        if self.has_worker_vms() {
            self.worker_nodes.count
        } else {
            0
        }
    }

    /// Number of etcd members (0 for the sqlite store).
    pub fn etcd_members(&self) -> u64 {
        if self.control_plane.backing_store == "etcd" {
            self.control_plane.replicas.max(1)
        } else {
            0
        }
    }
}

/// A parsed manifest: its identity and spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcManifest {
    pub name: String,
    pub namespace: Option<String>,
    /// `metadata.tenant` or `metadata.labels["gpve.io/tenant"]`: the tenant, when the
    /// manifest names one explicitly (else the namespace's owner decides).
    pub tenant: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub spec: VcSpec,
}

/// The label naming a manifest's tenant explicitly.
pub const TENANT_LABEL: &str = "gpve.io/tenant";

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
    /// The object at `v` (an error at `path` if it is not one); unknown keys refused.
    fn new(v: &'a Value, path: &str, known: &[&str], errs: &mut PathErrors) -> Option<Obj<'a>> {
        let Value::Object(map) = v else {
            errs.insert(path.to_string(), "must be an object".into());
            return None;
        };
        for k in map.keys() {
            if !known.contains(&k.as_str()) {
                errs.insert(
                    join(path, k),
                    format!("unknown field; known fields: {}", known.join(", ")),
                );
            }
        }
        Some(Obj {
            map,
            path: path.to_string(),
        })
    }

    fn get(&self, k: &str) -> Option<&'a Value> {
        self.map.get(k).filter(|v| !v.is_null())
    }

    fn p(&self, k: &str) -> String {
        join(&self.path, k)
    }

    fn string(&self, k: &str, errs: &mut PathErrors) -> Option<String> {
        match self.get(k)? {
            Value::String(s) => Some(s.clone()),
            // YAML turns `1.30` into a number: take it back as written.
            Value::Number(n) => Some(n.to_string()),
            _ => {
                errs.insert(self.p(k), "must be a string".into());
                None
            }
        }
    }

    fn choice(&self, k: &str, allowed: &[&str], default: &str, errs: &mut PathErrors) -> String {
        let Some(s) = self.string(k, errs) else {
            return default.to_string();
        };
        if allowed.contains(&s.as_str()) {
            s
        } else {
            errs.insert(
                self.p(k),
                format!(
                    "'{s}' is not supported; supported values: {}",
                    allowed.join(", ")
                ),
            );
            default.to_string()
        }
    }

    fn uint(&self, k: &str, min: u64, max: u64, errs: &mut PathErrors) -> Option<u64> {
        let v = self.get(k)?;
        match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                errs.insert(self.p(k), format!("must be an integer from {min} to {max}"));
                None
            }
        }
    }

    fn boolean(&self, k: &str, errs: &mut PathErrors) -> Option<bool> {
        match self.get(k)? {
            Value::Bool(b) => Some(*b),
            _ => {
                errs.insert(self.p(k), "must be true or false".into());
                None
            }
        }
    }

    fn quantity_mib(&self, k: &str, errs: &mut PathErrors) -> Option<u64> {
        let s = match self.get(k)? {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => {
                errs.insert(self.p(k), "must be a quantity such as 2Gi".into());
                return None;
            }
        };
        match parse_quantity(&s) {
            Ok(q) => Some(q.bytes() >> 20),
            Err(e) => {
                errs.insert(self.p(k), e);
                None
            }
        }
    }
}

/// The supported Kubernetes version `v` accepts (`1.30` or `1.30.2` → `1.30`).
pub fn version_error(v: &str) -> Option<String> {
    let minor: String = v
        .trim_start_matches('v')
        .splitn(3, '.')
        .take(2)
        .collect::<Vec<_>>()
        .join(".");
    (!SUPPORTED_VERSIONS.contains(&minor.as_str())).then(|| {
        format!(
            "Kubernetes version '{v}' is not supported; supported versions: {}",
            SUPPORTED_VERSIONS.join(", ")
        )
    })
}

/// Parse a manifest (JSON; `gpvectl` converts YAML), collecting every error.
pub fn parse(v: &Value) -> Result<VcManifest, PathErrors> {
    let mut errs = PathErrors::new();
    let Some(top) = Obj::new(
        v,
        "",
        &["apiVersion", "kind", "metadata", "spec", "status"],
        &mut errs,
    ) else {
        return Err(errs);
    };
    match top.string("apiVersion", &mut errs).as_deref() {
        Some(crate::v1::virtualmachines::manifest::API_VERSION) => {}
        _ => {
            errs.insert(
                "apiVersion".into(),
                format!(
                    "must be {}",
                    crate::v1::virtualmachines::manifest::API_VERSION
                ),
            );
        }
    }
    match top.string("kind", &mut errs).as_deref() {
        Some(KIND) => {}
        _ => {
            errs.insert("kind".into(), format!("must be {KIND}"));
        }
    }
    let (mut name, mut namespace, mut labels) = (String::new(), None, BTreeMap::new());
    let mut explicit_tenant: Option<String> = None;
    match top.get("metadata") {
        None => {
            errs.insert("metadata.name".into(), "is required".into());
        }
        Some(m) => {
            // `generation` and `creationTimestamp` are the server's: accepted and ignored,
            // so a manifest read back can be sent again.
            let known = [
                "name",
                "namespace",
                "tenant",
                "labels",
                "generation",
                "creationTimestamp",
            ];
            if let Some(meta) = Obj::new(m, "metadata", &known, &mut errs) {
                explicit_tenant = meta.string("tenant", &mut errs);
                match meta.string("name", &mut errs) {
                    None => {
                        errs.insert("metadata.name".into(), "is required".into());
                    }
                    Some(n) => {
                        if let Some(e) = name_error(&n) {
                            errs.insert("metadata.name".into(), e);
                        }
                        name = n;
                    }
                }
                namespace = meta.string("namespace", &mut errs);
                if let Some(Value::Object(l)) = meta.get("labels") {
                    for (k, v) in l {
                        match v.as_str() {
                            Some(s) => {
                                labels.insert(k.clone(), s.to_string());
                            }
                            None => {
                                errs.insert(
                                    format!("metadata.labels.{k}"),
                                    "must be a string".into(),
                                );
                            }
                        }
                    }
                } else if meta.get("labels").is_some() {
                    errs.insert("metadata.labels".into(), "must be an object".into());
                }
            }
        }
    }
    let spec = parse_spec(top.get("spec"), &mut errs);
    let label_tenant = labels.get(TENANT_LABEL).cloned();
    if let (Some(a), Some(b)) = (&explicit_tenant, &label_tenant)
        && a != b
    {
        errs.insert(
            "metadata.tenant".into(),
            format!("'{a}' differs from the label {TENANT_LABEL} '{b}'"),
        );
    }
    let tenant = explicit_tenant.or(label_tenant);
    if let Some(t) = &tenant
        && !crate::tenancy::valid_name(t)
    {
        errs.insert(
            "metadata.tenant".into(),
            crate::tenancy::TenancyError::InvalidName(t.clone()).to_string(),
        );
    }
    if errs.is_empty() {
        Ok(VcManifest {
            name,
            namespace,
            tenant,
            labels,
            spec,
        })
    } else {
        Err(errs)
    }
}

fn parse_spec(v: Option<&Value>, errs: &mut PathErrors) -> VcSpec {
    let empty = Value::Object(Map::new());
    let v = v.unwrap_or(&empty);
    let obj = Obj::new(
        v,
        "spec",
        &[
            "kubernetesVersion",
            "controlPlane",
            "workerNodes",
            "isolationLevel",
            "scheduling",
        ],
        errs,
    );
    let kubernetes_version = match obj
        .as_ref()
        .and_then(|o| o.string("kubernetesVersion", errs))
    {
        None => {
            errs.insert(
                "spec.kubernetesVersion".into(),
                format!(
                    "is required; supported versions: {}",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            );
            String::new()
        }
        Some(s) => {
            if let Some(e) = version_error(&s) {
                errs.insert("spec.kubernetesVersion".into(), e);
            }
            s
        }
    };
    let sub = |k: &str, known: &[&str], errs: &mut PathErrors| {
        obj.as_ref()
            .and_then(|o| o.get(k))
            .and_then(|v| Obj::new(v, &format!("spec.{k}"), known, errs))
    };
    let cp = sub("controlPlane", &["tier", "backingStore", "replicas"], errs);
    let tier = cp
        .as_ref()
        .map(|c| c.choice("tier", TIERS, "standard", errs))
        .unwrap_or_else(|| "standard".into());
    let default_store = if tier == "dev" { "sqlite" } else { "etcd" };
    let backing_store = cp
        .as_ref()
        .map(|c| c.choice("backingStore", BACKING_STORES, default_store, errs))
        .unwrap_or_else(|| default_store.into());
    let default_replicas = if tier == "ha" { 3 } else { 1 };
    let replicas = cp
        .as_ref()
        .and_then(|c| c.uint("replicas", 1, MAX_REPLICAS, errs))
        .unwrap_or(default_replicas);
    if tier == "ha" && (replicas < 3 || replicas.is_multiple_of(2)) {
        errs.insert(
            "spec.controlPlane.replicas".into(),
            "the ha tier needs an odd number of replicas, at least 3".into(),
        );
    }
    if tier != "ha" && replicas != 1 {
        errs.insert(
            "spec.controlPlane.replicas".into(),
            format!("the {tier} tier runs exactly 1 replica; use tier ha for more"),
        );
    }
    if replicas > 1 && backing_store == "sqlite" {
        errs.insert(
            "spec.controlPlane.backingStore".into(),
            "sqlite serves one replica only; use etcd".into(),
        );
    }
    let wn = sub("workerNodes", &["mode", "count", "resources"], errs);
    let mode = wn
        .as_ref()
        .map(|w| w.choice("mode", WORKER_MODES, "private", errs))
        .unwrap_or_else(|| "private".into());
    let count = wn
        .as_ref()
        .and_then(|w| w.uint("count", 0, MAX_WORKERS, errs))
        .unwrap_or(1);
    let res = wn.as_ref().and_then(|w| w.get("resources")).and_then(|v| {
        Obj::new(
            v,
            "spec.workerNodes.resources",
            &["cpu", "memory", "disk"],
            errs,
        )
    });
    let cpu = res
        .as_ref()
        .and_then(|r| r.uint("cpu", 1, MAX_WORKER_CPUS, errs))
        .unwrap_or(1);
    let memory_mib = res
        .as_ref()
        .and_then(|r| r.quantity_mib("memory", errs))
        .unwrap_or(512);
    if memory_mib < MIN_WORKER_MEMORY_MIB {
        errs.insert(
            "spec.workerNodes.resources.memory".into(),
            format!("must be at least {MIN_WORKER_MEMORY_MIB}Mi"),
        );
    }
    let disk_gib = res
        .as_ref()
        .and_then(|r| r.quantity_mib("disk", errs))
        .map(|mib| mib.div_ceil(1024))
        .unwrap_or(0);
    let isolation_level = obj
        .as_ref()
        .map(|o| o.choice("isolationLevel", ISOLATION_LEVELS, "L3", errs))
        .unwrap_or_else(|| "L3".into());
    let sch = sub("scheduling", &["strategy", "antiAffinity"], errs);
    let strategy = sch
        .as_ref()
        .map(|s| s.choice("strategy", STRATEGIES, "spread", errs))
        .unwrap_or_else(|| "spread".into());
    let anti_affinity = sch
        .as_ref()
        .and_then(|s| s.boolean("antiAffinity", errs))
        .unwrap_or(true);
    VcSpec {
        kubernetes_version,
        control_plane: ControlPlane {
            tier,
            backing_store,
            replicas,
        },
        worker_nodes: WorkerNodes {
            mode,
            count,
            resources: WorkerResources {
                cpu,
                memory_mib,
                disk_gib,
            },
        },
        isolation_level,
        scheduling: Scheduling {
            strategy,
            anti_affinity,
        },
    }
}

/// The manifest form of a spec (what `GET` shows and `gpvectl vc create` sends).
pub fn spec_to_json(spec: &VcSpec) -> Value {
    serde_json::json!({
        "kubernetesVersion": spec.kubernetes_version,
        "controlPlane": {
            "tier": spec.control_plane.tier,
            "backingStore": spec.control_plane.backing_store,
            "replicas": spec.control_plane.replicas,
        },
        "workerNodes": {
            "mode": spec.worker_nodes.mode,
            "count": spec.worker_nodes.count,
            "resources": {
                "cpu": spec.worker_nodes.resources.cpu,
                "memory": format!("{}Mi", spec.worker_nodes.resources.memory_mib),
                "disk": format!("{}Gi", spec.worker_nodes.resources.disk_gib),
            },
        },
        "isolationLevel": spec.isolation_level,
        "scheduling": {
            "strategy": spec.scheduling.strategy,
            "antiAffinity": spec.scheduling.anti_affinity,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest(spec: Value) -> Value {
        json!({"apiVersion": "gpve.io/v1", "kind": "VirtualCluster",
               "metadata": {"name": "dev1", "namespace": "acme"}, "spec": spec})
    }

    #[test]
    fn defaults_follow_the_tier() {
        let m = parse(&manifest(json!({"kubernetesVersion": "1.30",
            "controlPlane": {"tier": "dev"}})))
        .expect("parses");
        assert_eq!(m.spec.control_plane.backing_store, "sqlite");
        assert_eq!(m.spec.etcd_members(), 0);
        let m = parse(&manifest(json!({"kubernetesVersion": 1.3,
            "controlPlane": {"tier": "ha"}})))
        .expect_err("1.3 is not 1.30");
        assert!(m["spec.kubernetesVersion"].contains("1.30"));
        let m = parse(&manifest(json!({"kubernetesVersion": "1.31.2",
            "controlPlane": {"tier": "ha"}, "workerNodes": {"count": 2,
            "resources": {"cpu": 2, "memory": "1Gi", "disk": "10Gi"}}})))
        .expect("parses");
        assert_eq!(m.spec.etcd_members(), 3);
        assert_eq!(m.spec.worker_nodes.resources.memory_mib, 1024);
        assert_eq!(m.spec.worker_nodes.resources.disk_gib, 10);
        assert_eq!(m.spec.worker_vms(), 2);
    }

    #[test]
    fn bad_values_list_the_supported_ones_by_path() {
        let e = parse(&manifest(json!({"kubernetesVersion": "1.12",
            "controlPlane": {"tier": "gold", "backingStor": "x"},
            "isolationLevel": "L9"})))
        .expect_err("refused");
        assert!(
            e["spec.kubernetesVersion"].contains("1.28, 1.29, 1.30, 1.31"),
            "{e:?}"
        );
        assert!(
            e["spec.controlPlane.tier"].contains("dev, standard, ha"),
            "{e:?}"
        );
        assert!(e["spec.isolationLevel"].contains("L1, L2, L3"), "{e:?}");
        assert!(
            e["spec.controlPlane.backingStor"].contains("unknown field"),
            "{e:?}"
        );
    }

    #[test]
    fn identity_errors() {
        let e = parse(
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "A_"},
            "spec": {"kubernetesVersion": "1.30"}}),
        )
        .expect_err("refused");
        assert!(e.contains_key("apiVersion") && e.contains_key("kind"));
        assert!(e.contains_key("metadata.name"));
        assert!(parse(&json!([])).is_err());
        let e = parse(
            &json!({"apiVersion": "gpve.io/v1", "kind": "VirtualCluster",
            "metadata": {"name": "a", "tenant": "acme", "labels": {TENANT_LABEL: "other"}},
            "spec": {"kubernetesVersion": "1.30"}}),
        )
        .expect_err("conflicting tenants");
        assert!(e["metadata.tenant"].contains("differs"), "{e:?}");
        let m = parse(
            &json!({"apiVersion": "gpve.io/v1", "kind": "VirtualCluster",
            "metadata": {"name": "a", "tenant": "acme", "generation": 3},
            "spec": {"kubernetesVersion": "1.30"}, "status": {"phase": "Ready"}}),
        )
        .expect("read-back form");
        assert_eq!(m.tenant.as_deref(), Some("acme"));
    }
}
