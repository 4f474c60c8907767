//! `GET /cluster/resources`: nodes, VMs and storages in one listing.
//!
//! Large hosts list this often (every GUI tab polls it), so the serialised answer per `type`
//! filter is kept in memory for `resources_cache_ttl_ms` (default 1 s, the staleness
//! Proxmox's own status cache has) and rebuilt by one request while the others wait, from
//! one range read of the `("vms",)` subspace, one node actor query and one status query
//! per storage actor of this node.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use gpve_actors::vm::{VmRecord, list_vms};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply, bool01};
use crate::schema::{Param, ParamSchema};

/// Proxmox lists what the caller may audit; for now administrators only.
pub const GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::enumeration("type", &["vm", "storage", "node", "sdn"]).opt()]),
    privilege: Privilege::User,
    description: "Resources index (cluster wide).",
};

/// Serialised listings by filter, each valid for a TTL.
#[derive(Debug)]
pub struct ResourceCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, Bytes)>>,
    rebuild: tokio::sync::Mutex<()>,
}

impl ResourceCache {
    /// A cache whose entries live `ttl_ms`.
    pub fn new(ttl_ms: u64) -> Self {
        ResourceCache {
            ttl: Duration::from_millis(ttl_ms),
            entries: Mutex::new(HashMap::new()),
            rebuild: tokio::sync::Mutex::new(()),
        }
    }

    fn fresh(&self, key: &str) -> Option<Bytes> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, b)| b.clone())
    }

    /// Drop every entry (after a write this process made).
    pub fn invalidate(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The cached bytes for `key`, or build them (one builder at a time).
    pub async fn get_or_build<F>(&self, key: &str, build: F) -> Result<Bytes, ApiError>
    where
        F: Future<Output = Result<Bytes, ApiError>>,
    {
        if let Some(b) = self.fresh(key) {
            return Ok(b);
        }
        let _guard = self.rebuild.lock().await;
        if let Some(b) = self.fresh(key) {
            return Ok(b);
        }
        let bytes = build.await?;
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), (Instant::now(), bytes.clone()));
        Ok(bytes)
    }
}

/// A VM as `/cluster/resources` lists it.
pub fn vm_entry(v: &VmRecord) -> Value {
    let mut e = json!({
        "id": format!("qemu/{}", v.vmid),
        "type": "qemu",
        "vmid": v.vmid,
        "name": v.name,
        "node": v.node,
        "status": v.status,
        "cpu": 0,
        "maxcpu": v.maxcpu,
        "mem": 0,
        "maxmem": v.maxmem_bytes,
        "disk": 0,
        "maxdisk": v.maxdisk_bytes,
        "uptime": v.uptime_s,
        "template": bool01(v.template),
        "netin": 0,
        "netout": 0,
        "diskread": 0,
        "diskwrite": 0,
    });
    if let Some(pool) = &v.pool {
        e["pool"] = json!(pool);
    }
    e
}

/// A storage as `/cluster/resources` lists it (`status` is `available` while its pool is
/// mounted, else `unknown`, as Proxmox shows a storage it cannot reach).
pub fn storage_entry(
    node: &str,
    cfg: &gpve_actors::storage::StorageConfig,
    status: Option<&gpve_actors::storage::StorageStatus>,
) -> Value {
    let pool = status.and_then(|s| s.pool);
    let active = status.is_some_and(|s| s.active);
    json!({
        "id": format!("storage/{node}/{}", cfg.storage),
        "type": "storage",
        "storage": cfg.storage,
        "node": node,
        "status": if active { "available" } else { "unknown" },
        "disk": pool.map_or(0, |p| p.used_bytes),
        "maxdisk": pool.map_or(0, |p| p.total_bytes),
        "content": gpve_actors::storage::config::content_list_string(&cfg.content),
        "plugintype": cfg.kind.as_str(),
        "shared": bool01(cfg.shared),
    })
}

async fn storage_entries(ctx: &Ctx) -> Result<Vec<Value>, ApiError> {
    // This node's storages (each node will answer for its own once the cluster lists them).
    let node = ctx.state.config.node_name.clone();
    let svc = crate::pve::storage::service(&ctx.state);
    let mut out = Vec::new();
    for cfg in gpve_actors::storage::config::list(&ctx.state.store).await? {
        if !cfg.available_on(&node) {
            continue;
        }
        // A disabled or restarting storage is listed with status `unknown`, not an error.
        let status = if cfg.disable {
            None
        } else {
            svc.status(&cfg.storage).await.ok()
        };
        out.push(storage_entry(&node, &cfg, status.as_ref()));
    }
    Ok(out)
}

async fn build(ctx: &Ctx, filter: Option<&str>) -> Result<Bytes, ApiError> {
    let mut items = Vec::new();
    if matches!(filter, None | Some("node")) {
        let status = crate::pve::nodes::node_status(&ctx.state).await?;
        items.push(crate::pve::nodes::node_summary(&status));
    }
    if matches!(filter, None | Some("vm")) {
        let vms = list_vms(&ctx.state.store).await?;
        items.extend(vms.iter().map(vm_entry));
    }
    if matches!(filter, None | Some("storage")) {
        items.extend(storage_entries(ctx).await?);
    }
    // SDN resources arrive with their issue.
    let body = serde_json::to_vec(&json!({ "data": items }))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Bytes::from(body))
}

/// The listing, from the cache when fresh.
pub async fn get(ctx: Ctx) -> Result<Reply, ApiError> {
    let filter = ctx.params.str("type");
    let key = filter.unwrap_or("all");
    let bytes = ctx
        .state
        .resources
        .get_or_build(key, build(&ctx, filter))
        .await?;
    if ctx.is_superuser() {
        return Ok(Reply::Envelope(bytes));
    }
    // Everyone else sees only what they may audit (one ACL snapshot per request).
    let mut env: Value =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Internal(e.to_string()))?;
    let items = match env["data"].take() {
        Value::Array(a) => a,
        _ => Vec::new(),
    };
    Ok(Reply::Data(Value::Array(ctx.visible(items).await?)))
}
