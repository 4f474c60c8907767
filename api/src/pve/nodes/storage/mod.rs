//! `/nodes/{node}/storage`: the storages of one node, their status and content.

pub mod content;
pub mod snapshot;
pub mod upload;

use gpve_actors::storage::StorageStatus;
use gpve_actors::storage::config::{self, StorageConfig, content_list_string, parse_content_list};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::pve::storage::{MAX_LIST_PARAM_BYTES, service, storage_param, storage_param_decl};
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply, bool01};
use crate::schema::{Param, ParamSchema};

/// Status fields of one storage, as `GET /nodes/{node}/storage` lists them.
pub fn status_json(cfg: &StorageConfig, status: Option<&StorageStatus>) -> Value {
    let mut v = json!({
        "storage": cfg.storage,
        "type": cfg.kind.as_str(),
        "content": content_list_string(&cfg.content),
        "shared": bool01(cfg.shared),
        "enabled": bool01(!cfg.disable),
        "active": bool01(status.is_some_and(|s| s.active)),
    });
    if let Some(pool) = status.and_then(|s| s.pool) {
        v["total"] = json!(pool.total_bytes);
        v["used"] = json!(pool.used_bytes);
        v["avail"] = json!(pool.available_bytes);
        if pool.total_bytes > 0 {
            v["used_fraction"] = json!(pool.used_bytes as f64 / pool.total_bytes as f64);
        }
    }
    v
}

/// The record of `id` if it is available on this node, else 404.
pub async fn node_storage(ctx: &Ctx, id: &str) -> Result<StorageConfig, ApiError> {
    let node = ctx.local_node()?;
    let cfg = config::get(&ctx.state.store, id).await?;
    if !cfg.available_on(node) {
        return Err(ApiError::NotFound(format!(
            "storage '{id}' is not available on node '{node}'"
        )));
    }
    Ok(cfg)
}

/// `GET /nodes/{node}/storage`.
pub const LIST: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[
        Param::node(),
        Param::string("content", MAX_LIST_PARAM_BYTES, None).opt(),
        Param::boolean("enabled").opt(),
        Param::boolean("format").opt(),
        storage_param_decl().opt(),
        Param::string("target", 64, Some(crate::schema::Format::Node)).opt(),
    ]),
    privilege: Privilege::Any("/storage", &["Datastore.Audit", "Datastore.AllocateSpace"]),
    description: "Get status for all datastores.",
};

pub async fn list(ctx: Ctx) -> Result<Reply, ApiError> {
    let node = ctx.local_node()?.to_string();
    let content = ctx
        .params
        .str("content")
        .map(parse_content_list)
        .transpose()?;
    let only_enabled = ctx.params.bool("enabled").unwrap_or(false);
    let only = match ctx.params.str("storage") {
        Some(_) => Some(storage_param(&ctx)?.to_string()),
        None => None,
    };
    let svc = service(&ctx.state);
    let mut out = Vec::new();
    for cfg in config::list(&ctx.state.store).await? {
        if !cfg.available_on(&node)
            || (only_enabled && cfg.disable)
            || only.as_ref().is_some_and(|o| *o != cfg.storage)
            || content
                .as_ref()
                .is_some_and(|want| !want.iter().any(|c| cfg.content.contains(c)))
        {
            continue;
        }
        // A storage whose actor is restarting is listed as inactive, not as an error.
        let status = if cfg.disable {
            None
        } else {
            svc.status(&cfg.storage).await.ok()
        };
        out.push(status_json(&cfg, status.as_ref()));
    }
    Ok(Reply::Data(Value::Array(out)))
}

/// `GET /nodes/{node}/storage/{storage}`.
pub const INDEX: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::node(), storage_param_decl()]),
    privilege: Privilege::Any(
        "/storage/{storage}",
        &["Datastore.Audit", "Datastore.AllocateSpace"],
    ),
    description: "Storage index.",
};

pub async fn index(ctx: Ctx) -> Result<Reply, ApiError> {
    let id = storage_param(&ctx)?.to_string();
    node_storage(&ctx, &id).await?;
    Ok(Reply::Data(json!([
        {"subdir": "content"},
        {"subdir": "status"},
        {"subdir": "upload"},
        {"subdir": "snapshot"},
    ])))
}

/// `GET /nodes/{node}/storage/{storage}/status`.
pub const STATUS: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::node(), storage_param_decl()]),
    privilege: Privilege::Any(
        "/storage/{storage}",
        &["Datastore.Audit", "Datastore.AllocateSpace"],
    ),
    description: "Read storage status.",
};

pub async fn status(ctx: Ctx) -> Result<Reply, ApiError> {
    let id = storage_param(&ctx)?.to_string();
    let cfg = node_storage(&ctx, &id).await?;
    let status = if cfg.disable {
        None
    } else {
        Some(service(&ctx.state).status(&id).await?)
    };
    let mut v = status_json(&cfg, status.as_ref());
    if let Some(err) = status.as_ref().and_then(|s| s.error.as_ref()) {
        // gpve extension: why the storage is not active.
        v["error"] = json!(err);
    }
    Ok(Reply::Data(v))
}

/// The routes of `/nodes/{node}/storage`. A volume id contains `/`, so `{volume}` takes
/// the rest of the path (clients may also send it percent-encoded).
pub fn router() -> crate::router::Routes {
    use crate::router::{endpoint, streaming_endpoint};
    crate::router::Routes::new()
        .route("/nodes/{node}/storage", endpoint(&LIST, list))
        .route("/nodes/{node}/storage/{storage}", endpoint(&INDEX, index))
        .route(
            "/nodes/{node}/storage/{storage}/status",
            endpoint(&STATUS, status),
        )
        .route(
            "/nodes/{node}/storage/{storage}/content",
            endpoint(&content::LIST, content::list)
                .merge(endpoint(&content::CREATE, content::create)),
        )
        .route(
            "/nodes/{node}/storage/{storage}/content/{*volume}",
            endpoint(&content::READ, content::read)
                .merge(endpoint(&content::UPDATE, content::update))
                .merge(endpoint(&content::DELETE, content::delete)),
        )
        .route(
            "/nodes/{node}/storage/{storage}/upload",
            streaming_endpoint(&upload::POST, upload::post),
        )
        .route(
            "/nodes/{node}/storage/{storage}/snapshot",
            endpoint(&snapshot::LIST, snapshot::list)
                .merge(endpoint(&snapshot::CREATE, snapshot::create))
                .merge(endpoint(&snapshot::DELETE, snapshot::delete)),
        )
}
