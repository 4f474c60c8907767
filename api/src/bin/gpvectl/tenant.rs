//! `gpvectl tenant|quota`: tenants, their quotas and usage, over gpve's `/api/v1/tenants`.

use clap::{Args, Subcommand};
use gpve_api::client::Client;
use serde_json::Value;

use crate::output::{self, Format, Table};

pub const TENANCY_HELP: &str = "\
How tenancy works:
  A tenant owns namespaces, VMs and vClusters, and has a Proxmox pool of the same name:
  its VMs are that pool's members, so `gpvectl acl set /pool/acme --role PVEVMAdmin
  --user alice@pve` gives alice the tenant's VMs. Bind a user to a tenant and the
  user's creates land there (and nowhere else).
  Each resource (vcpus, memory MiB, disk GiB, vms, vclusters, gpus) may have a quota:
  requests (soft, multiplied by overcommit) and limits (hard). A create or change that
  would exceed floor(requests x overcommit) or limits is refused (403) with a message
  naming the quota, the request and what is left. Two parallel creates cannot both
  squeeze under a quota. Managing tenants needs Sys.Modify on /; reading one needs
  Pool.Audit or VM.Audit on /pool/TENANT.

Examples:
  gpvectl tenant create acme --vms requests=10 --memory requests=16384,overcommit=1.5
  gpvectl tenant bind acme alice@pve
  gpvectl tenant namespace acme web
  gpvectl tenant list
  gpvectl tenant get acme -o yaml
  gpvectl quota set acme --vcpus requests=16,limits=32,overcommit=2 --gpus limits=1
  gpvectl quota set acme --disk none        # no disk quota
  gpvectl quota get acme
  gpvectl tenant delete acme                # refused, naming what it still owns";

/// Quota flags, each a property string `requests=N,limits=N,overcommit=F` or `none`.
#[derive(Debug, Args, Default)]
pub struct QuotaArgs {
    /// vCPUs (sockets x cores), e.g. requests=16,limits=32,overcommit=2.
    #[arg(long, value_name = "PROPS")]
    vcpus: Option<String>,
    /// Memory in MiB, e.g. requests=16384,overcommit=1.5.
    #[arg(long, value_name = "PROPS")]
    memory: Option<String>,
    /// Disk in GiB, e.g. limits=500.
    #[arg(long, value_name = "PROPS")]
    disk: Option<String>,
    /// Number of VMs, e.g. requests=10.
    #[arg(long, value_name = "PROPS")]
    vms: Option<String>,
    /// Number of vClusters.
    #[arg(long, value_name = "PROPS")]
    vclusters: Option<String>,
    /// Number of GPUs (hostpciN devices).
    #[arg(long, value_name = "PROPS")]
    gpus: Option<String>,
}

impl QuotaArgs {
    fn pairs(&self) -> Vec<(String, String)> {
        [
            ("vcpus", &self.vcpus),
            ("memory", &self.memory),
            ("disk", &self.disk),
            ("vms", &self.vms),
            ("vclusters", &self.vclusters),
            ("gpus", &self.gpus),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), v.clone())))
        .collect()
    }
}

/// `gpvectl tenant ...`.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Tenants you may see, with VM count and memory usage against their quotas.
    List,
    /// One tenant: quotas, usage and what is left per resource.
    Get { tenant: String },
    /// Create a tenant (and its pool), optionally with quotas.
    #[command(after_help = TENANCY_HELP)]
    Create {
        tenant: String,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// Delete a tenant; refused while it owns VMs, vClusters, namespaces or bound users.
    Delete { tenant: String },
    /// Bind a user to the tenant (admins only): its creates then land in the tenant.
    Bind { tenant: String, userid: String },
    /// Create a namespace owned by the tenant (or attach an empty, unowned one).
    Namespace { tenant: String, namespace: String },
}

/// `gpvectl quota ...`.
#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// A tenant's quotas per resource.
    Get { tenant: String },
    /// Change quotas; resources not named keep theirs ('none' removes one).
    #[command(after_help = TENANCY_HELP)]
    Set {
        tenant: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// "used/allowed unit" for one resource of a tenant's `resources`.
fn used_of(r: &Value) -> String {
    format!("{}/{}", s(&r["used"]), s(&r["allowed"]))
}

const RESOURCES: [&str; 6] = ["vcpus", "memory", "disk", "vms", "vclusters", "gpus"];

fn resource_rows(resources: &Value) -> Vec<Vec<String>> {
    RESOURCES
        .iter()
        .map(|r| {
            let q = &resources[*r];
            vec![
                r.to_string(),
                s(&q["unit"]),
                s(&q["requests"]),
                s(&q["limits"]),
                s(&q["overcommit"]),
                s(&q["allowed"]),
                s(&q["used"]),
                s(&q["left"]),
            ]
        })
        .collect()
}

const RESOURCE_HEADERS: [&str; 8] = [
    "RESOURCE",
    "UNIT",
    "REQUESTS",
    "LIMITS",
    "OVERCOMMIT",
    "ALLOWED",
    "USED",
    "LEFT",
];

pub async fn run_tenant(c: &Client, cmd: TenantCommand, format: Format) -> anyhow::Result<()> {
    match cmd {
        TenantCommand::List => {
            let data = c.tenants().await?;
            output::print(format, &data, "tenants", || Table {
                headers: vec![
                    "TENANT",
                    "VMS",
                    "VCPUS",
                    "MEMORY(MiB)",
                    "DISK(GiB)",
                    "COMMENT",
                ],
                rows: data
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|t| {
                                let r = &t["resources"];
                                vec![
                                    s(&t["tenant"]),
                                    used_of(&r["vms"]),
                                    used_of(&r["vcpus"]),
                                    used_of(&r["memory"]),
                                    used_of(&r["disk"]),
                                    s(&t["comment"]),
                                ]
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        }
        TenantCommand::Get { tenant } => {
            let data = c.tenant(&tenant).await?;
            output::print(format, &data, "resources", || Table {
                headers: RESOURCE_HEADERS.to_vec(),
                rows: resource_rows(&data["resources"]),
            })
        }
        TenantCommand::Create {
            tenant,
            comment,
            quota,
        } => {
            c.create_tenant(&tenant, comment.as_deref(), &quota.pairs())
                .await?;
            println!("tenant {tenant} created (with pool {tenant})");
            Ok(())
        }
        TenantCommand::Delete { tenant } => {
            c.delete_tenant(&tenant).await?;
            println!("tenant {tenant} deleted");
            Ok(())
        }
        TenantCommand::Bind { tenant, userid } => {
            c.bind_tenant_user(&tenant, &userid).await?;
            println!("user {userid} bound to tenant {tenant}");
            Ok(())
        }
        TenantCommand::Namespace { tenant, namespace } => {
            c.attach_tenant_namespace(&tenant, &namespace).await?;
            println!("namespace {namespace} belongs to tenant {tenant}");
            Ok(())
        }
    }
}

pub async fn run_quota(c: &Client, cmd: QuotaCommand, format: Format) -> anyhow::Result<()> {
    match cmd {
        QuotaCommand::Get { tenant } => {
            let data = c.tenant(&tenant).await?;
            let quota = c.tenant_quota(&tenant).await?;
            output::print(format, &quota, "quotas", || Table {
                headers: RESOURCE_HEADERS.to_vec(),
                rows: resource_rows(&data["resources"]),
            })
        }
        QuotaCommand::Set { tenant, quota } => {
            let pairs = quota.pairs();
            if pairs.is_empty() {
                anyhow::bail!(
                    "name at least one resource: --vcpus, --memory, --disk, --vms, --vclusters or --gpus (see `gpvectl quota set --help`)"
                );
            }
            c.set_tenant_quota(&tenant, &pairs).await?;
            println!("quota of tenant {tenant} updated");
            Ok(())
        }
    }
}
