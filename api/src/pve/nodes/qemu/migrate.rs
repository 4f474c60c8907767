//! `GET /nodes/{node}/qemu/{vmid}/migrate` (precheck) and `POST` (migrate to `target`).
//!
//! The precheck answers Proxmox's fields: `running`, `allowed_nodes`, `not_allowed_nodes`
//! (each with the reason and the storages it lacks), `local_disks`, `local_resources`.
//! The POST refuses, before any task, everything [`migrate::check_target`] and
//! [`migrate::check_disks`] refuse (own node, unknown, offline or cordoned target, local
//! disks), a running VM without `online`, and the options gpve does not have. The
//! migration itself is the VM actor's protocol (`gpve_actors::vm::migrate`); it needs a
//! [`migrate::MigrationPeer`] for the target node: [`peer`] gives the one this process
//! reaches (through the server's relay from an agent, over the proxy channel from the
//! server; see [`crate::cluster::migration`]).
//!
//! `migration_type`: between joined nodes the RAM stream is always TLS (QEMU's TLS
//! migration with the node certificates), so `secure` is what every migration is and
//! `insecure` is accepted but still encrypted; a node without credentials refuses
//! `secure`.

use std::path::PathBuf;
use std::sync::Arc;

use gpve_actors::vm::migrate::{
    self, MigrateRequest, MigrationError, MigrationPeer, TargetNode, VmDisk,
};
use gpve_actors::vm::{VmEntry, VmError};
use gpve_hypervisor::MigrateOptions;
use serde_json::{Map, Value, json};

use super::{entry, host, vmid};
use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply, bool01};
use crate::schema::{Format, Param, ParamSchema};
use crate::state::AppState;

/// `GET .../migrate`.
pub const GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[
        Param::node(),
        Param::vmid(),
        Param::string("target", 64, Some(Format::Node)).opt(),
    ]),
    privilege: Privilege::Perm("/vms/{vmid}", &["VM.Migrate"]),
    description: "Get preconditions for migration.",
};

/// `POST .../migrate`.
pub const POST: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        Param::node(),
        Param::vmid(),
        Param::string("target", 64, Some(Format::Node)),
        Param::boolean("online").opt(),
        Param::boolean("with-local-disks").opt(),
        Param::string("targetstorage", 256, Some(Format::Text)).opt(),
        Param::int("bwlimit", Some(0), None).opt(),
        Param::boolean("force").opt(),
        Param::string("migration_network", 64, Some(Format::Text)).opt(),
        Param::enumeration("migration_type", &["secure", "insecure"]).opt(),
        Param::boolean("with-conntrack-state").opt(),
    ]),
    privilege: Privilege::Perm("/vms/{vmid}", &["VM.Migrate"]),
    description: "Migrate virtual machine (online: live migration of a running VM; disks must be on shared storage). Creates a new migration task.",
};

/// Every node a VM could go to: this node, the server's own node and the joined ones,
/// with liveness from their lease and the cordon flag.
pub async fn cluster_nodes(state: &AppState) -> Result<Vec<TargetNode>, ApiError> {
    let own = state.config.node_name.clone();
    let mut nodes = vec![TargetNode {
        name: own.clone(),
        online: true,
        cordoned: false,
    }];
    let now_ms = i64::try_from(gpve_supervisor::wall_now_ms()).unwrap_or(i64::MAX);
    // An agent also offers the server's own node (it never joined, so it has no member
    // record); it is online for as long as this agent can reach the server's store.
    if let Some(server) = crate::cluster::migration::server_node(&state.store).await?
        && server != own
    {
        nodes.push(TargetNode {
            name: server,
            online: true,
            cordoned: false,
        });
    }
    for rec in crate::cluster::records::list_nodes(&state.store).await? {
        if rec.node == own {
            continue;
        }
        let route = crate::cluster::records::node_route(&state.store, &rec.node).await?;
        let online = route
            .and_then(|r| r.lease)
            .is_some_and(|l| l.valid_at(now_ms));
        nodes.push(TargetNode {
            name: rec.node,
            online,
            cordoned: rec.cordoned,
        });
    }
    Ok(nodes)
}

fn running(e: &VmEntry) -> bool {
    e.record.status == "running"
}

/// Why `target` cannot take the VM now, if it cannot.
async fn refusal(
    state: &AppState,
    e: &VmEntry,
    target: &str,
    nodes: &[TargetNode],
    with_local_disks: bool,
) -> Result<Option<(MigrationError, Vec<VmDisk>)>, ApiError> {
    let own = &state.config.node_name;
    let disks = migrate::vm_disks(&host(state), e, target).await?;
    if let Err(why) = migrate::check_target(own, target, nodes) {
        return Ok(Some((why, disks)));
    }
    match migrate::check_disks(e.record.vmid, target, running(e), with_local_disks, &disks) {
        Ok(()) => Ok(None),
        Err(why) => Ok(Some((why, disks))),
    }
}

pub async fn get(ctx: Ctx) -> Result<Reply, ApiError> {
    let vmid = vmid(&ctx)?;
    let e = entry(&ctx, vmid).await?;
    let own = ctx.state.config.node_name.clone();
    let nodes = cluster_nodes(&ctx.state).await?;
    let candidates: Vec<&TargetNode> = match ctx.params.str("target") {
        Some(t) => {
            if !nodes.iter().any(|n| n.name == t) {
                return Err(VmError::from(MigrationError::UnknownNode { node: t.into() }).into());
            }
            nodes.iter().filter(|n| n.name == t).collect()
        }
        None => nodes.iter().filter(|n| n.name != own).collect(),
    };
    let mut allowed = Vec::new();
    let mut not_allowed = Map::new();
    for n in candidates {
        match refusal(&ctx.state, &e, &n.name, &nodes, false).await? {
            None => allowed.push(json!(n.name)),
            Some((why, disks)) => {
                let unavailable: Vec<Value> = disks
                    .iter()
                    .filter(|d| !d.available_on_target)
                    .map(|d| json!(d.storage))
                    .collect();
                not_allowed.insert(
                    n.name.clone(),
                    json!({ "reason": why.to_string(), "unavailable_storages": unavailable }),
                );
            }
        }
    }
    let disks = migrate::vm_disks(&host(&ctx.state), &e, &own).await?;
    let local_disks: Vec<Value> = disks
        .iter()
        .filter(|d| !d.shared)
        .map(|d| {
            json!({
                "volid": d.volid,
                "drivename": d.key,
                "is_unused": bool01(d.key.starts_with("unused")),
                "cdrom": 0,
            })
        })
        .collect();
    Ok(Reply::Data(json!({
        "running": bool01(running(&e)),
        "allowed_nodes": allowed,
        "not_allowed_nodes": not_allowed,
        "local_disks": local_disks,
        "local_resources": [],
        "mapped-resources": [],
        "has-dbus-vmstate": 0,
    })))
}

/// The target node's side of a migration as this process reaches it, and this node's
/// TLS credentials for the stream; 400 on a node outside any cluster.
pub async fn peer(
    state: &AppState,
    target: &str,
) -> Result<(Arc<dyn MigrationPeer>, Option<PathBuf>), ApiError> {
    let node = crate::cluster::migration::node_migration(&state.node.directory).await?;
    Ok((node.peer(target)?, node.tls_creds_dir.clone()))
}

pub async fn post(ctx: Ctx) -> Result<Reply, ApiError> {
    let vmid = vmid(&ctx)?;
    let e = entry(&ctx, vmid).await?;
    for (p, why) in [
        (
            "migration_network",
            "a separate migration network is not supported yet",
        ),
        (
            "with-conntrack-state",
            "migrating conntrack state is not supported",
        ),
    ] {
        if ctx.params.has(p) && ctx.params.bool(p) != Some(false) {
            return Err(ApiError::param(p, why));
        }
    }
    // Only the identity mapping: disks stay on their (shared) storage.
    if let Some(ts) = ctx.params.str("targetstorage")
        && ts != "1"
    {
        return Err(ApiError::param(
            "targetstorage",
            "mapping disks to other storages needs disk copy, which is not built yet; only '1' (keep each storage) is accepted",
        ));
    }
    let ask = MigrationAsk {
        target: ctx.str("target")?.to_string(),
        online: ctx.params.bool("online").unwrap_or(false),
        secure: ctx.params.str("migration_type") == Some("secure"),
        with_local_disks: ctx.params.bool("with-local-disks").unwrap_or(false),
        options: MigrateOptions {
            bwlimit_kib_s: ctx
                .params
                .int("bwlimit")
                .and_then(|b| u64::try_from(b).ok()),
            ..MigrateOptions::default()
        },
    };
    let upid = start(&ctx.state, ctx.userid()?, &e, ask).await?;
    Ok(Reply::Data(json!(upid)))
}

/// One VM's migration as asked by `POST .../migrate` or `migrateall`.
#[derive(Debug, Clone)]
pub struct MigrationAsk {
    pub target: String,
    /// Live migration; a running VM is refused without it.
    pub online: bool,
    /// `migration_type=secure`: refused where the stream cannot be encrypted.
    pub secure: bool,
    pub with_local_disks: bool,
    pub options: MigrateOptions,
}

/// Refuses what cannot be migrated (before any task), then starts the `qmigrate` task of
/// the VM `e` on this node; returns its UPID.
pub async fn start(
    state: &AppState,
    user: &str,
    e: &VmEntry,
    ask: MigrationAsk,
) -> Result<String, ApiError> {
    let vmid = e.record.vmid;
    if let Some(lock) = &e.lock {
        return Err(ApiError::Conflict(format!("VM {vmid} is locked ({lock})")));
    }
    if running(e) && !ask.online {
        return Err(ApiError::BadRequest(format!(
            "can't migrate running VM {vmid} without --online"
        )));
    }
    let nodes = cluster_nodes(state).await?;
    if let Some((why, _)) = refusal(state, e, &ask.target, &nodes, ask.with_local_disks).await? {
        return Err(VmError::from(why).into());
    }
    let (peer, tls_creds_dir) = peer(state, &ask.target).await?;
    if ask.secure && tls_creds_dir.is_none() {
        return Err(ApiError::param(
            "migration_type",
            "this node has no migration TLS credentials, so it cannot migrate securely",
        ));
    }
    let host = host(state);
    let MigrationAsk {
        online,
        with_local_disks,
        options,
        ..
    } = ask;
    let upid = state
        .tasks
        .spawn(
            "qmigrate",
            &vmid.to_string(),
            user,
            move |task| async move {
                let (tx, mut rx) = tokio::sync::mpsc::channel(migrate::MIGRATE_LOG_QUEUE_LEN);
                let writer = {
                    let task = task.clone();
                    tokio::spawn(async move {
                        while let Some(line) = rx.recv().await {
                            if let Err(e) = task.log(line).await {
                                tracing::warn!(error = %e, "cannot write the migration task log");
                            }
                        }
                    })
                };
                let req = MigrateRequest {
                    online,
                    with_local_disks,
                    options,
                    peer,
                    tls_creds_dir,
                    log: Some(tx),
                };
                let outcome = migrate::migrate(&host, vmid, req).await;
                // Every sender is gone once the actor dropped the request: the writer ends.
                let _ = writer.await;
                outcome.map(|_| ()).map_err(|e| e.to_string())
            },
        )
        .await?;
    Ok(upid.to_string())
}
