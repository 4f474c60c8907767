//! `gpvectl vc create|list|get|scale|upgrade|kubeconfig|delete`: virtual Kubernetes
//! clusters of a tenant, and the `VirtualCluster` documents of `gpvectl apply`.

use anyhow::{Context, bail};
use clap::Subcommand;
use gpve_api::client::Client;
use gpve_api::client::vcluster::pending_conditions;
use gpve_api::vcluster::spec;

pub use gpve_api::vcluster::spec::KIND;
use serde_json::{Value, json};

use crate::output::{self, Format, Table};

/// The tenant used when neither `--tenant` nor `$GPVE_TENANT` names one.
pub const DEFAULT_TENANT: &str = "default";
/// How long `--wait` waits by default, in seconds.
pub const DEFAULT_WAIT_S: u64 = 300;

#[derive(Debug, Subcommand)]
pub enum VcCommand {
    /// Create a virtual cluster.
    #[command(after_help = "Examples:
  gpvectl vc create dev1 --k8s-version 1.30 --control-plane-tier standard --worker-nodes 3 --isolation-level L3 --tenant acme
  gpvectl vc create lab --k8s-version 1.31 --control-plane-tier dev --worker-nodes 0 --isolation-level L1
  gpvectl vc create prod --k8s-version 1.30 --control-plane-tier ha --worker-nodes 3 --worker-memory 4Gi --wait

Supported: versions 1.28-1.31; tiers dev (sqlite), standard (one etcd member), ha
(three etcd members); isolation L1 (runc), L2 (Kata), L3 (worker VMs).")]
    Create {
        name: String,
        #[arg(long, env = "GPVE_TENANT", default_value = DEFAULT_TENANT)]
        tenant: String,
        #[arg(long = "k8s-version", default_value = "1.30")]
        k8s_version: String,
        #[arg(long, default_value = "standard")]
        control_plane_tier: String,
        /// sqlite or etcd; default: sqlite for dev, etcd otherwise.
        #[arg(long)]
        backing_store: Option<String>,
        #[arg(long, default_value_t = 1)]
        worker_nodes: u64,
        #[arg(long, default_value = "L3")]
        isolation_level: String,
        #[arg(long, default_value_t = 1)]
        worker_cpu: u64,
        #[arg(long, default_value = "1Gi")]
        worker_memory: String,
        #[arg(long, default_value = "10Gi")]
        worker_disk: String,
        /// Wait until the VC is Ready (or failed).
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = DEFAULT_WAIT_S)]
        timeout_s: u64,
    },
    /// The tenant's virtual clusters.
    #[command(after_help = "Examples:
  gpvectl vc list --tenant acme
  gpvectl vc list -o yaml")]
    List {
        #[arg(long, env = "GPVE_TENANT", default_value = DEFAULT_TENANT)]
        tenant: String,
    },
    /// One virtual cluster with its conditions (`-o yaml` prints the manifest).
    Get {
        name: String,
        #[arg(long, env = "GPVE_TENANT", default_value = DEFAULT_TENANT)]
        tenant: String,
    },
    /// Change the number of worker nodes.
    #[command(after_help = "Examples:
  gpvectl vc scale dev1 --worker-nodes 5")]
    Scale {
        name: String,
        #[arg(long, env = "GPVE_TENANT", default_value = DEFAULT_TENANT)]
        tenant: String,
        #[arg(long)]
        worker_nodes: u64,
    },
    /// Upgrade the Kubernetes version (certificates are reissued).
    #[command(after_help = "Examples:
  gpvectl vc upgrade dev1 --k8s-version 1.31")]
    Upgrade {
        name: String,
        #[arg(long, env = "GPVE_TENANT", default_value = DEFAULT_TENANT)]
        tenant: String,
        #[arg(long = "k8s-version")]
        k8s_version: String,
    },
    /// Print the admin kubeconfig.
    #[command(after_help = "Examples:
  gpvectl vc kubeconfig dev1 > dev1.kubeconfig && kubectl --kubeconfig dev1.kubeconfig get nodes")]
    Kubeconfig {
        name: String,
        #[arg(long, env = "GPVE_TENANT", default_value = DEFAULT_TENANT)]
        tenant: String,
    },
    /// Delete a virtual cluster and everything it created.
    Delete {
        name: String,
        #[arg(long, env = "GPVE_TENANT", default_value = DEFAULT_TENANT)]
        tenant: String,
    },
}

fn row(v: &Value) -> Vec<String> {
    let s = |p: &str| {
        v.pointer(p)
            .map(|x| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default()
    };
    vec![
        s("/metadata/name"),
        s("/metadata/tenant"),
        s("/spec/kubernetesVersion"),
        s("/spec/controlPlane/tier"),
        s("/spec/isolationLevel"),
        format!(
            "{}/{}",
            v.pointer("/status/workers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len),
            s("/spec/workerNodes/count")
        ),
        s("/status/phase"),
    ]
}

const HEADERS: [&str; 7] = [
    "NAME",
    "TENANT",
    "VERSION",
    "TIER",
    "ISOLATION",
    "WORKERS",
    "PHASE",
];

fn show(format: Format, v: &Value) -> anyhow::Result<()> {
    output::print(format, v, "virtualcluster", || Table {
        headers: HEADERS.to_vec(),
        rows: vec![row(v)],
    })?;
    if format == Format::Table {
        for c in pending_conditions(v) {
            println!("  waiting: {c}");
        }
    }
    Ok(())
}

pub async fn run(client: &Client, cmd: VcCommand, format: Format) -> anyhow::Result<()> {
    match cmd {
        VcCommand::Create {
            name,
            tenant,
            k8s_version,
            control_plane_tier,
            backing_store,
            worker_nodes,
            isolation_level,
            worker_cpu,
            worker_memory,
            worker_disk,
            wait,
            timeout_s,
        } => {
            let mut cp = json!({"tier": control_plane_tier});
            if let Some(b) = backing_store {
                cp["backingStore"] = json!(b);
            }
            let m = json!({
                "apiVersion": "gpve.io/v1", "kind": spec::KIND,
                "metadata": {"name": name},
                "spec": {
                    "kubernetesVersion": k8s_version,
                    "controlPlane": cp,
                    "workerNodes": {"mode": "private", "count": worker_nodes,
                        "resources": {"cpu": worker_cpu, "memory": worker_memory, "disk": worker_disk}},
                    "isolationLevel": isolation_level,
                }
            });
            // Checked here first: errors name the flag's manifest path and the supported values.
            if let Err(errs) = spec::parse(&m) {
                bail!(
                    "{}",
                    errs.iter()
                        .map(|(k, v)| format!("{k}: {v}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            let out = client
                .create_vcluster(&tenant, &m)
                .await
                .with_context(|| format!("virtualcluster '{tenant}/{name}'"))?;
            if format == Format::Table {
                println!("virtualcluster.gpve.io/{name} created");
            }
            let out = if wait {
                client
                    .wait_for_ready(&tenant, &name, timeout_s * 1000)
                    .await?
            } else {
                out
            };
            show(format, &out)
        }
        VcCommand::List { tenant } => {
            let list = client.vclusters(&tenant).await?;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            output::print(format, &list, "virtualclusters", || Table {
                headers: HEADERS.to_vec(),
                rows: items.iter().map(row).collect(),
            })
        }
        VcCommand::Get { name, tenant } => show(format, &client.vcluster(&tenant, &name).await?),
        VcCommand::Scale {
            name,
            tenant,
            worker_nodes,
        } => {
            let mut m = client.vcluster(&tenant, &name).await?;
            m["spec"]["workerNodes"]["count"] = json!(worker_nodes);
            let out = client.apply_vcluster(&tenant, &name, &m).await?;
            show(format, &out)
        }
        VcCommand::Upgrade {
            name,
            tenant,
            k8s_version,
        } => show(
            format,
            &client
                .upgrade_vcluster(&tenant, &name, &k8s_version)
                .await?,
        ),
        VcCommand::Kubeconfig { name, tenant } => {
            print!("{}", client.vcluster_kubeconfig(&tenant, &name).await?);
            Ok(())
        }
        VcCommand::Delete { name, tenant } => {
            client.delete_vcluster(&tenant, &name).await?;
            println!("virtualcluster.gpve.io/{name} deleted");
            Ok(())
        }
    }
}

/// The tenant of a manifest: `metadata.tenant` or its `gpve.io/tenant` label, else its
/// namespace, else
/// `namespace` (`apply -n`), else [`DEFAULT_TENANT`].
pub fn tenant_of(m: &spec::VcManifest, namespace: Option<&str>) -> String {
    m.tenant
        .clone()
        .or_else(|| m.namespace.clone())
        .or_else(|| namespace.map(str::to_string))
        .unwrap_or_else(|| DEFAULT_TENANT.to_string())
}

/// Parse every `VirtualCluster` document strictly; all errors in one message.
pub fn parse_all(docs: &[Value]) -> anyhow::Result<Vec<spec::VcManifest>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for doc in docs {
        match spec::parse(doc) {
            Ok(m) => out.push(m),
            Err(errors) => {
                let name = doc
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                let mut text = format!("virtualcluster {name} is invalid:");
                for (path, why) in errors {
                    text.push_str(&format!("\n  {path}: {why}"));
                }
                problems.push(text);
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        bail!("{}\nnothing was applied", problems.join("\n"))
    }
}

/// `apply` of VirtualCluster documents: PUT creates or scales; an unchanged spec says so.
pub async fn apply(
    client: &Client,
    docs: &[Value],
    parsed: &[spec::VcManifest],
    namespace: Option<&str>,
    format: Format,
) -> anyhow::Result<Vec<Value>> {
    let mut applied = Vec::new();
    for (doc, m) in docs.iter().zip(parsed) {
        let tenant = tenant_of(m, namespace);
        let before = client.vcluster(&tenant, &m.name).await.ok();
        let out = client
            .apply_vcluster(&tenant, &m.name, doc)
            .await
            .with_context(|| format!("virtualcluster '{tenant}/{}'", m.name))?;
        let result = match before {
            None => "created",
            Some(b) if b["metadata"]["generation"] == out["metadata"]["generation"] => "unchanged",
            Some(_) => "configured",
        };
        if format == Format::Table {
            println!("virtualcluster.gpve.io/{} {result}", m.name);
        }
        applied.push(out);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_comes_from_label_then_namespace() {
        let doc = json!({"apiVersion": "gpve.io/v1", "kind": "VirtualCluster",
            "metadata": {"name": "a", "namespace": "ns1"}, "spec": {"kubernetesVersion": "1.30"}});
        let m = parse_all(std::slice::from_ref(&doc))
            .expect("valid")
            .remove(0);
        assert_eq!(tenant_of(&m, Some("other")), "ns1");
        let mut d2 = doc;
        d2["metadata"]["labels"] = json!({spec::TENANT_LABEL: "acme"});
        let m = parse_all(&[d2]).expect("valid").remove(0);
        assert_eq!(tenant_of(&m, None), "acme");
        let bad = json!({"apiVersion": "gpve.io/v1", "kind": "VirtualCluster",
            "metadata": {"name": "a"}, "spec": {"kubernetesVersion": "2.0"}});
        let e = parse_all(&[bad]).unwrap_err().to_string();
        assert!(e.contains("supported versions: 1.28"), "{e}");
    }
}
