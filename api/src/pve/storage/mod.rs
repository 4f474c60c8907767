//! `/storage`: the cluster's storage configuration (Proxmox's `storage.cfg`), one store
//! record per storage. Changing a record restarts, starts or stops that storage's actor.

use gpve_actors::storage::config::{
    self, StorageConfig, StorageType, content_list_string, parse_content_list, parse_node_list,
    validate_storage_id,
};
use gpve_actors::storage::{SUPERVISOR_ID, StorageService};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply, bool01};
use crate::schema::{Format, Param, ParamSchema};
use crate::state::AppState;

/// Proxmox's storage types; those without a gpve driver are refused by the handler with
/// a message naming the type (not by the enumeration), so clients learn why.
pub const STORAGE_TYPES: &[&str] = &[
    "btrfs",
    "cephfs",
    "cifs",
    "dir",
    "esxi",
    "iscsi",
    "iscsidirect",
    "lvm",
    "lvmthin",
    "nfs",
    "pbs",
    "rbd",
    "zfs",
    "zfspool",
];

/// Longest accepted content or node list, in bytes.
pub const MAX_LIST_PARAM_BYTES: usize = 4096;
/// How long a handler waits for a data operation of a volume actor (allocation, deletion).
pub const DATA_CALL_TIMEOUT_MS: u64 = 6 * 3600 * 1000;

/// The `storage` parameter (checked by [`storage_param`]).
pub const fn storage_param_decl() -> Param {
    Param::string("storage", 64, None)
}

/// The validated `storage` parameter.
pub fn storage_param(ctx: &Ctx) -> Result<&str, ApiError> {
    let id = ctx.str("storage")?;
    validate_storage_id(id)?;
    Ok(id)
}

/// The storage service of the local node.
pub fn service(state: &AppState) -> StorageService {
    StorageService {
        directory: state.node.directory.clone(),
        supervisor_path: format!("{}/{SUPERVISOR_ID}", crate::tree::ROOT),
        node: state.config.node_name.clone(),
        store: state.store.clone(),
        call_timeout_ms: state.config.actor_call_timeout_ms,
        data_timeout_ms: DATA_CALL_TIMEOUT_MS,
    }
}

/// Proxmox's `digest`: SHA-256 of the record, so a client can detect concurrent changes.
pub fn digest(cfg: &StorageConfig) -> String {
    let bytes = serde_json::to_vec(cfg).unwrap_or_default();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A storage record in Proxmox's wire shape.
pub fn config_json(cfg: &StorageConfig) -> Value {
    let mut v = json!({
        "storage": cfg.storage,
        "type": cfg.kind.as_str(),
        "path": cfg.path.to_string_lossy(),
        "content": content_list_string(&cfg.content),
        "shared": bool01(cfg.shared),
        "digest": digest(cfg),
    });
    if let Some(nodes) = &cfg.nodes {
        v["nodes"] = json!(nodes.join(","));
    }
    if cfg.disable {
        v["disable"] = bool01(true);
    }
    v
}

/// `GET /storage`.
pub const LIST: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::enumeration("type", STORAGE_TYPES).opt()]),
    privilege: Privilege::User,
    description: "Storage index (only storages with Datastore.Audit or Datastore.AllocateSpace on /storage/{storage}).",
};

pub async fn list(ctx: Ctx) -> Result<Reply, ApiError> {
    let kind = ctx.params.str("type");
    let all = config::list(&ctx.state.store).await?;
    let mut out: Vec<Value> = Vec::new();
    for c in all
        .iter()
        .filter(|c| kind.is_none_or(|k| k == c.kind.as_str()))
    {
        if ctx
            .allowed_any(
                &format!("/storage/{}", c.storage),
                &["Datastore.Audit", "Datastore.AllocateSpace"],
            )
            .await?
        {
            out.push(config_json(c));
        }
    }
    Ok(Reply::Data(Value::Array(out)))
}

/// `POST /storage`.
pub const CREATE: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        storage_param_decl(),
        Param::enumeration("type", STORAGE_TYPES),
        Param::string("path", 1024, None).opt(),
        Param::string("content", MAX_LIST_PARAM_BYTES, None).opt(),
        Param::boolean("shared").opt(),
        Param::string("nodes", MAX_LIST_PARAM_BYTES, None).opt(),
        Param::boolean("disable").opt(),
    ]),
    privilege: Privilege::Perm("/storage", &["Datastore.Allocate"]),
    description: "Create a new storage.",
};

pub async fn create(ctx: Ctx) -> Result<Reply, ApiError> {
    let id = storage_param(&ctx)?;
    let kind = StorageType::parse(ctx.str("type")?)?;
    let path = ctx
        .params
        .str("path")
        .ok_or_else(|| ApiError::param("path", "property is missing and it is not optional"))?;
    let mut cfg = StorageConfig::dir(id, path);
    cfg.kind = kind;
    if let Some(c) = ctx.params.str("content") {
        cfg.content = parse_content_list(c)?;
    }
    cfg.shared = ctx.params.bool("shared").unwrap_or(false);
    if let Some(n) = ctx.params.str("nodes") {
        cfg.nodes = Some(parse_node_list(n)?);
    }
    cfg.disable = ctx.params.bool("disable").unwrap_or(false);
    config::create(&ctx.state.store, &cfg).await?;
    // The record is committed; the actor follows it. A failure here is reported, and the
    // next server start picks the record up anyway.
    service(&ctx.state).apply(id, false).await?;
    Ok(Reply::Data(json!({"storage": id, "type": kind.as_str()})))
}

/// `GET /storage/{storage}`.
pub const READ: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[storage_param_decl()]),
    privilege: Privilege::Perm("/storage/{storage}", &["Datastore.Allocate"]),
    description: "Read storage configuration.",
};

pub async fn read(ctx: Ctx) -> Result<Reply, ApiError> {
    let id = storage_param(&ctx)?;
    let cfg = config::get(&ctx.state.store, id).await?;
    Ok(Reply::Data(config_json(&cfg)))
}

/// `PUT /storage/{storage}`: the options that may change (type and path are fixed, as in
/// Proxmox).
pub const UPDATE: Endpoint = Endpoint {
    method: Method::Put,
    params: ParamSchema(&[
        storage_param_decl(),
        Param::string("content", MAX_LIST_PARAM_BYTES, None).opt(),
        Param::boolean("shared").opt(),
        Param::string("nodes", MAX_LIST_PARAM_BYTES, None).opt(),
        Param::boolean("disable").opt(),
        Param::string("delete", 4096, Some(Format::ConfigIdList)).opt(),
        Param::string("digest", 64, None).opt(),
    ]),
    privilege: Privilege::Perm("/storage", &["Datastore.Allocate"]),
    description: "Update storage configuration.",
};

pub async fn update(ctx: Ctx) -> Result<Reply, ApiError> {
    let id = storage_param(&ctx)?.to_string();
    let content = ctx
        .params
        .str("content")
        .map(parse_content_list)
        .transpose()?;
    let nodes = ctx.params.str("nodes").map(parse_node_list).transpose()?;
    let shared = ctx.params.bool("shared");
    let disable = ctx.params.bool("disable");
    let expected_digest = ctx.params.str("digest").map(str::to_string);
    let mut delete = Vec::new();
    for key in ctx
        .params
        .str("delete")
        .unwrap_or("")
        .split([',', ';', ' '])
    {
        match key {
            "" => {}
            "nodes" | "shared" | "disable" => delete.push(key.to_string()),
            other => {
                return Err(ApiError::param(
                    "delete",
                    format!("option '{other}' cannot be deleted"),
                ));
            }
        }
    }
    let before = config::get(&ctx.state.store, &id).await?;
    let after = config::update(&ctx.state.store, &id, move |cfg| {
        if let Some(d) = &expected_digest
            && *d != digest(cfg)
        {
            return Err(config::StorageConfigError::Invalid {
                field: "digest",
                reason: "the configuration was modified by another request; read it again".into(),
            });
        }
        for key in &delete {
            match key.as_str() {
                "nodes" => cfg.nodes = None,
                "shared" => cfg.shared = false,
                _ => cfg.disable = false,
            }
        }
        if let Some(c) = &content {
            cfg.content = c.clone();
        }
        if let Some(n) = &nodes {
            cfg.nodes = Some(n.clone());
        }
        if let Some(s) = shared {
            cfg.shared = s;
        }
        if let Some(d) = disable {
            cfg.disable = d;
        }
        Ok(())
    })
    .await?;
    service(&ctx.state).apply(&id, after != before).await?;
    Ok(Reply::Data(
        json!({"storage": id, "type": after.kind.as_str()}),
    ))
}

/// `DELETE /storage/{storage}`: the record only; volumes stay on disk, as in Proxmox.
pub const DELETE: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[storage_param_decl()]),
    privilege: Privilege::Perm("/storage", &["Datastore.Allocate"]),
    description: "Delete storage configuration.",
};

pub async fn delete(ctx: Ctx) -> Result<Reply, ApiError> {
    let id = storage_param(&ctx)?;
    config::delete(&ctx.state.store, id).await?;
    service(&ctx.state).apply(id, false).await?;
    Ok(Reply::Data(Value::Null))
}

/// The routes of `/storage`.
pub fn router() -> crate::router::Routes {
    use crate::router::endpoint;
    crate::router::Routes::new()
        .route(
            "/storage",
            endpoint(&LIST, list).merge(endpoint(&CREATE, create)),
        )
        .route(
            "/storage/{storage}",
            endpoint(&READ, read)
                .merge(endpoint(&UPDATE, update))
                .merge(endpoint(&DELETE, delete)),
        )
}
