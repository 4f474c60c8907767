//! `/nodes/{node}/qemu/{vmid}/config` and `.../pending`: read and change a VM's
//! configuration. Changes that cannot apply to a running QEMU become pending until the next
//! start.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use gpve_actors::vm::config as vmconfig;
use gpve_actors::vm::state::Command;
use gpve_actors::vm::{VmError, VmOp, ops};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{
    MAX_VALUE_BYTES, OP_TIMEOUT_MS, checked_entry, config_changes, config_params, entry, host,
    leak_schema, spawn_op, vmid,
};
use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::{Format, Param, ParamSchema};

/// Proxmox's `digest`: SHA-1 in Proxmox, SHA-256 here, of the configuration.
pub fn digest(config: &BTreeMap<String, String>) -> String {
    let bytes = serde_json::to_vec(config).unwrap_or_default();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `GET .../config`.
pub const GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[
        Param::node(),
        Param::vmid(),
        Param::boolean("current").opt(),
        Param::string("snapshot", 40, Some(Format::Text)).opt(),
    ]),
    privilege: Privilege::Perm("/vms/{vmid}", &["VM.Audit"]),
    description: "Get the virtual machine configuration with pending changes applied (current=1: the values in use).",
};

pub async fn get(ctx: Ctx) -> Result<Reply, ApiError> {
    let vmid = vmid(&ctx)?;
    let e = entry(&ctx, vmid).await?;
    let config = if let Some(name) = ctx.params.str("snapshot") {
        e.snapshots
            .get(name)
            .map(|s| s.config.clone())
            .ok_or_else(|| ApiError::NotFound(format!("snapshot '{name}' does not exist")))?
    } else if ctx.params.bool("current").unwrap_or(false) {
        e.config.clone()
    } else {
        e.with_pending()
    };
    let mut v = json!({ "digest": digest(&e.config) });
    for (k, val) in &config {
        // Booleans and numbers as Proxmox types them.
        v[k] = match k.as_str() {
            "memory" | "cores" | "sockets" if val.parse::<u64>().is_ok() => {
                json!(val.parse::<u64>().unwrap_or(0))
            }
            "onboot" | "kvm" | "template" | "protection" => json!(if val == "1" { 1 } else { 0 }),
            _ => json!(val),
        };
    }
    Ok(Reply::Data(v))
}

/// `GET .../pending`.
pub const PENDING: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::node(), Param::vmid()]),
    privilege: Privilege::Perm("/vms/{vmid}", &["VM.Audit"]),
    description: "Get the virtual machine configuration with both current and pending values.",
};

pub async fn pending(ctx: Ctx) -> Result<Reply, ApiError> {
    let vmid = vmid(&ctx)?;
    let e = entry(&ctx, vmid).await?;
    let keys: BTreeSet<&String> = e
        .config
        .keys()
        .chain(e.pending.keys())
        .chain(e.pending_delete.iter())
        .collect();
    let items: Vec<Value> = keys
        .into_iter()
        .map(|k| {
            let mut item = json!({ "key": k });
            if let Some(v) = e.config.get(k) {
                item["value"] = json!(v);
            }
            if let Some(v) = e.pending.get(k) {
                item["pending"] = json!(v);
            }
            if e.pending_delete.contains(k) {
                item["delete"] = json!(1);
            }
            item
        })
        .collect();
    Ok(Reply::Data(Value::Array(items)))
}

fn update_schema(method: Method, description: &'static str) -> Endpoint {
    Endpoint {
        method,
        params: leak_schema(
            config_params(),
            &[
                Param::node(),
                Param::vmid(),
                Param::string("delete", MAX_VALUE_BYTES, Some(Format::ConfigIdList)).opt(),
                Param::string("revert", MAX_VALUE_BYTES, Some(Format::ConfigIdList)).opt(),
                Param::string("digest", 64, Some(Format::Text)).opt(),
                Param::boolean("skiplock").opt(),
                Param::boolean("force").opt(),
            ],
        ),
        privilege: Privilege::VmConfig,
        description,
    }
}

/// `POST .../config` (asynchronous: returns a UPID).
pub static POST: LazyLock<Endpoint> = LazyLock::new(|| {
    update_schema(
        Method::Post,
        "Set virtual machine options (asynchronous API).",
    )
});

/// `PUT .../config` (synchronous).
pub static PUT: LazyLock<Endpoint> = LazyLock::new(|| {
    update_schema(
        Method::Put,
        "Set virtual machine options (synchronous API).",
    )
});

fn list(s: Option<&str>) -> Vec<String> {
    s.map(|s| {
        s.split([',', ';', ' '])
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// Check a change request; returns the operation to send.
async fn prepare(ctx: &Ctx) -> Result<(u32, VmOp), ApiError> {
    let (vmid, e) = checked_entry(ctx, &Command::UpdateConfig).await?;
    if let Some(d) = ctx.params.str("digest")
        && d != digest(&e.config)
    {
        return Err(ApiError::Conflict(
            "the configuration was modified by another request (digest mismatch)".into(),
        ));
    }
    let set = config_changes(&ctx.params);
    let delete = list(ctx.params.str("delete"));
    let revert = list(ctx.params.str("revert"));
    let mut errors = BTreeMap::new();
    for k in delete.iter().chain(revert.iter()) {
        if vmconfig::key_kind(k).is_none() {
            errors.insert(k.clone(), "unknown configuration key".to_string());
        } else if set.contains_key(k) {
            errors.insert(
                k.clone(),
                "cannot set and delete/revert the same key".to_string(),
            );
        }
    }
    for k in ["template"] {
        if set.contains_key(k) {
            errors.insert(
                k.into(),
                "use POST .../template to make a template".to_string(),
            );
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Params(errors));
    }
    if set.is_empty() && delete.is_empty() && revert.is_empty() {
        return Err(ApiError::BadRequest("no options specified".into()));
    }
    let canon = vmconfig::parse_changes(&set, vmid, super::seed()).map_err(VmError::from)?;
    super::check_storages(ctx, &canon).await?;
    let mut after = e.with_pending();
    for k in &delete {
        after.remove(k);
    }
    for k in &revert {
        match e.config.get(k) {
            Some(v) => after.insert(k.clone(), v.clone()),
            None => after.remove(k),
        };
    }
    after.extend(canon.clone());
    crate::tenancy::vm::reserve_growth(
        &ctx.state.store,
        vmid,
        &crate::tenancy::vm::vm_demand(&after),
    )
    .await?;
    Ok((
        vmid,
        VmOp::UpdateConfig {
            set: canon,
            delete,
            revert,
        },
    ))
}

pub async fn post(ctx: Ctx) -> Result<Reply, ApiError> {
    let (vmid, op) = prepare(&ctx).await?;
    spawn_op(&ctx, "qmconfig", vmid, op).await
}

pub async fn put(ctx: Ctx) -> Result<Reply, ApiError> {
    let (vmid, op) = prepare(&ctx).await?;
    let done = ops::call(&host(&ctx.state), vmid, op, OP_TIMEOUT_MS).await;
    crate::tenancy::vm::settle(&ctx.state.store, vmid).await?;
    done?;
    Ok(Reply::Data(Value::Null))
}
