//! `/cluster/ha`: HA resources, groups and status, in Proxmox's shapes. Handlers only
//! write the configuration (one transaction each) and wake the `ha-manager`, which acts on
//! it (`api/src/cluster/ha.rs`); status is read from the manager's persisted state.

use gpve_actors::ha::{RequestState, ServiceStatus, parse_sid, sid};
use gpve_store::Store;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::cluster::ha::{
    GroupRecord, ResourceRecord, format_node_list, group_key, list_groups, list_resources,
    load_manager, parse_node_list, poke, resource_key,
};
use crate::error::ApiError;
use crate::pve::access::{ident, split_list};
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply, Routes, bool01, endpoint};
use crate::schema::{Format, Param, ParamSchema};

const AUDIT: Privilege = Privilege::Perm("/", &["Sys.Audit"]);
const CONSOLE: Privilege = Privilege::Perm("/", &["Sys.Console"]);

const SID: Param = Param::string("sid", 32, None);
const STATE: Param = Param::enumeration(
    "state",
    &["started", "stopped", "enabled", "disabled", "ignored"],
)
.opt();
const MAX_RESTART: Param = Param::int("max_restart", Some(0), Some(10)).opt();
const MAX_RELOCATE: Param = Param::int("max_relocate", Some(0), Some(10)).opt();
const GROUP: Param = Param::string("group", 64, Some(Format::GroupList)).opt();
const COMMENT: Param = Param::string("comment", 4096, Some(Format::Text)).opt();
const FAILBACK: Param = Param::boolean("failback").opt();
const DIGEST: Param = Param::string("digest", 64, Some(Format::Text)).opt();
const DELETE_KEYS: Param = Param::string("delete", 256, Some(Format::ConfigIdList)).opt();
const GROUP_ID: Param = Param::string("group", 64, Some(Format::GroupList));
const NODES: Param = Param::string("nodes", 4096, Some(Format::Text));
const RESTRICTED: Param = Param::boolean("restricted").opt();
const NOFAILBACK: Param = Param::boolean("nofailback").opt();

/// Every `/cluster/ha` route.
pub fn router() -> Routes {
    Routes::new()
        .route("/cluster/ha", endpoint(&INDEX, index))
        .route(
            "/cluster/ha/resources",
            endpoint(&LIST_RESOURCES, list_resources_h)
                .merge(endpoint(&CREATE_RESOURCE, create_resource)),
        )
        .route(
            "/cluster/ha/resources/{sid}",
            endpoint(&READ_RESOURCE, read_resource)
                .merge(endpoint(&UPDATE_RESOURCE, update_resource))
                .merge(endpoint(&DELETE_RESOURCE, delete_resource)),
        )
        .route(
            "/cluster/ha/groups",
            endpoint(&LIST_GROUPS, list_groups_h).merge(endpoint(&CREATE_GROUP, create_group)),
        )
        .route(
            "/cluster/ha/groups/{group}",
            endpoint(&READ_GROUP, read_group)
                .merge(endpoint(&UPDATE_GROUP, update_group))
                .merge(endpoint(&DELETE_GROUP, delete_group)),
        )
        .route("/cluster/ha/status", endpoint(&STATUS_INDEX, status_index))
        .route(
            "/cluster/ha/status/current",
            endpoint(&STATUS_CURRENT, status_current),
        )
        .route(
            "/cluster/ha/status/manager_status",
            endpoint(&MANAGER_STATUS, manager_status),
        )
}

fn digest(v: &impl serde::Serialize) -> String {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn vmid_of(ctx: &Ctx) -> Result<u32, ApiError> {
    let s = ctx.str("sid")?;
    if s.starts_with("ct:") {
        return Err(ApiError::param("sid", "containers are not supported"));
    }
    parse_sid(s).ok_or_else(|| {
        ApiError::param(
            "sid",
            format!("invalid HA resource id '{s}' (expected vm:VMID)"),
        )
    })
}

fn request_state(ctx: &Ctx) -> Option<RequestState> {
    ctx.params.str("state").and_then(RequestState::parse)
}

fn count(ctx: &Ctx, name: &str) -> Option<u32> {
    ctx.params.int(name).and_then(|v| u32::try_from(v).ok())
}

async fn require_group(store: &Store, group: &str) -> Result<(), ApiError> {
    if store.get(&group_key(group)).await?.is_none() {
        return Err(ApiError::param(
            "group",
            format!("HA group '{group}' does not exist"),
        ));
    }
    Ok(())
}

fn resource_json(r: &ResourceRecord) -> Value {
    let mut v = json!({
        "sid": sid(r.vmid),
        "type": "vm",
        "state": r.state.as_str(),
        "max_restart": r.max_restart,
        "max_relocate": r.max_relocate,
        "failback": bool01(r.failback),
        "digest": digest(r),
    });
    if let Some(g) = &r.group {
        v["group"] = json!(g);
    }
    if let Some(c) = &r.comment {
        v["comment"] = json!(c);
    }
    v
}

fn group_json(g: &GroupRecord) -> Value {
    let mut v = json!({
        "group": g.group,
        "type": "group",
        "nodes": format_node_list(&g.nodes),
        "restricted": bool01(g.restricted),
        "nofailback": bool01(g.nofailback),
        "digest": digest(g),
    });
    if let Some(c) = &g.comment {
        v["comment"] = json!(c);
    }
    v
}

/// `GET /cluster/ha`.
pub const INDEX: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[]),
    privilege: AUDIT,
    description: "Directory index.",
};

pub async fn index(_ctx: Ctx) -> Result<Reply, ApiError> {
    Ok(Reply::Data(
        json!([{"id": "resources"}, {"id": "groups"}, {"id": "status"}]),
    ))
}

/// `GET /cluster/ha/resources`.
pub const LIST_RESOURCES: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::enumeration("type", &["ct", "vm"]).opt()]),
    privilege: AUDIT,
    description: "List HA resources.",
};

pub async fn list_resources_h(ctx: Ctx) -> Result<Reply, ApiError> {
    if ctx.params.str("type") == Some("ct") {
        return Ok(Reply::Data(json!([])));
    }
    let all = list_resources(&ctx.state.store).await?;
    Ok(Reply::Data(Value::Array(
        all.iter().map(resource_json).collect(),
    )))
}

/// `POST /cluster/ha/resources`.
pub const CREATE_RESOURCE: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        SID,
        STATE,
        MAX_RESTART,
        MAX_RELOCATE,
        GROUP,
        COMMENT,
        FAILBACK,
        Param::enumeration("type", &["ct", "vm"]).opt(),
    ]),
    privilege: CONSOLE,
    description: "Create a new HA resource.",
};

pub async fn create_resource(ctx: Ctx) -> Result<Reply, ApiError> {
    let vmid = vmid_of(&ctx)?;
    if ctx.params.str("type") == Some("ct") {
        return Err(ApiError::param("type", "containers are not supported"));
    }
    let store = &ctx.state.store;
    if !gpve_actors::vm::vm_exists(store, vmid).await? {
        return Err(ApiError::param("sid", format!("VM {vmid} does not exist")));
    }
    let group = ctx.params.str("group").map(str::to_string);
    if let Some(g) = &group {
        require_group(store, g).await?;
    }
    let rec = ResourceRecord {
        vmid,
        state: request_state(&ctx).unwrap_or_default(),
        max_restart: count(&ctx, "max_restart").unwrap_or(1),
        max_relocate: count(&ctx, "max_relocate").unwrap_or(1),
        group,
        comment: ctx.params.str("comment").map(str::to_string),
        failback: ctx.params.bool("failback").unwrap_or(true),
    };
    if !store.create_json(&resource_key(vmid), &rec).await? {
        return Err(ApiError::Conflict(format!(
            "resource ID '{}' already defined",
            sid(vmid)
        )));
    }
    poke(&ctx.state.node.directory);
    Ok(Reply::Data(Value::Null))
}

async fn resource(store: &Store, vmid: u32) -> Result<ResourceRecord, ApiError> {
    store
        .get_json::<ResourceRecord>(&resource_key(vmid))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no such resource '{}'", sid(vmid))))
}

/// `GET /cluster/ha/resources/{sid}`.
pub const READ_RESOURCE: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[SID]),
    privilege: AUDIT,
    description: "Read resource configuration.",
};

pub async fn read_resource(ctx: Ctx) -> Result<Reply, ApiError> {
    let vmid = vmid_of(&ctx)?;
    let r = resource(&ctx.state.store, vmid).await?;
    Ok(Reply::Data(resource_json(&r)))
}

/// `PUT /cluster/ha/resources/{sid}`.
pub const UPDATE_RESOURCE: Endpoint = Endpoint {
    method: Method::Put,
    params: ParamSchema(&[
        SID,
        STATE,
        MAX_RESTART,
        MAX_RELOCATE,
        GROUP,
        COMMENT,
        FAILBACK,
        DIGEST,
        DELETE_KEYS,
    ]),
    privilege: CONSOLE,
    description: "Update resource configuration.",
};

pub async fn update_resource(ctx: Ctx) -> Result<Reply, ApiError> {
    let vmid = vmid_of(&ctx)?;
    let store = &ctx.state.store;
    if let Some(g) = ctx.params.str("group") {
        require_group(store, g).await?;
    }
    let delete = split_list(ctx.params.str("delete").unwrap_or(""));
    for key in &delete {
        if !matches!(
            key.as_str(),
            "group" | "comment" | "max_restart" | "max_relocate" | "failback" | "state"
        ) {
            return Err(ApiError::param("delete", format!("cannot delete '{key}'")));
        }
    }
    let (state, max_restart, max_relocate) = (
        request_state(&ctx),
        count(&ctx, "max_restart"),
        count(&ctx, "max_relocate"),
    );
    let group = ctx.params.str("group").map(str::to_string);
    let comment = ctx.params.str("comment").map(str::to_string);
    let failback = ctx.params.bool("failback");
    let want_digest = ctx.params.str("digest").map(str::to_string);
    let key = resource_key(vmid);
    let outcome = store
        .transact(move |tx| {
            let (key, delete, group, comment, want_digest) = (
                key.clone(),
                delete.clone(),
                group.clone(),
                comment.clone(),
                want_digest.clone(),
            );
            Box::pin(async move {
                let Some(mut r) = tx.get_json::<ResourceRecord>(&key).await? else {
                    return Ok(Err(ApiError::NotFound(format!(
                        "no such resource '{}'",
                        sid(vmid)
                    ))));
                };
                if let Some(d) = want_digest
                    && d != digest(&r)
                {
                    return Ok(Err(ApiError::Conflict(
                        "detected modified configuration - file changed by other user? Try again."
                            .into(),
                    )));
                }
                for k in &delete {
                    match k.as_str() {
                        "group" => r.group = None,
                        "comment" => r.comment = None,
                        "max_restart" => r.max_restart = 1,
                        "max_relocate" => r.max_relocate = 1,
                        "failback" => r.failback = true,
                        _ => r.state = RequestState::Started,
                    }
                }
                if let Some(s) = state {
                    r.state = s;
                }
                if let Some(n) = max_restart {
                    r.max_restart = n;
                }
                if let Some(n) = max_relocate {
                    r.max_relocate = n;
                }
                if group.is_some() {
                    r.group = group;
                }
                if comment.is_some() {
                    r.comment = comment;
                }
                if let Some(f) = failback {
                    r.failback = f;
                }
                tx.put_json(&key, &r)?;
                Ok(Ok(()))
            })
        })
        .await?;
    outcome?;
    poke(&ctx.state.node.directory);
    Ok(Reply::Data(Value::Null))
}

/// `DELETE /cluster/ha/resources/{sid}`.
pub const DELETE_RESOURCE: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[SID, Param::boolean("purge").opt()]),
    privilege: CONSOLE,
    description: "Delete resource configuration.",
};

/// The VM keeps running where it is; HA just stops managing it (as Proxmox).
pub async fn delete_resource(ctx: Ctx) -> Result<Reply, ApiError> {
    let vmid = vmid_of(&ctx)?;
    resource(&ctx.state.store, vmid).await?;
    ctx.state.store.delete(&resource_key(vmid)).await?;
    poke(&ctx.state.node.directory);
    Ok(Reply::Data(Value::Null))
}

/// `GET /cluster/ha/groups`.
pub const LIST_GROUPS: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[]),
    privilege: AUDIT,
    description: "Get HA groups.",
};

pub async fn list_groups_h(ctx: Ctx) -> Result<Reply, ApiError> {
    let all = list_groups(&ctx.state.store).await?;
    Ok(Reply::Data(Value::Array(
        all.iter().map(group_json).collect(),
    )))
}

fn node_list(s: &str) -> Result<Vec<gpve_actors::scheduler::NodePriority>, ApiError> {
    parse_node_list(s).map_err(|e| ApiError::param("nodes", e.to_string()))
}

/// `POST /cluster/ha/groups`.
pub const CREATE_GROUP: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        GROUP_ID,
        NODES,
        RESTRICTED,
        NOFAILBACK,
        COMMENT,
        Param::enumeration("type", &["group"]).opt(),
    ]),
    privilege: CONSOLE,
    description: "Create a new HA group.",
};

pub async fn create_group(ctx: Ctx) -> Result<Reply, ApiError> {
    let group = ident(&ctx, "group")?.to_string();
    let rec = GroupRecord {
        nodes: node_list(ctx.str("nodes")?)?,
        restricted: ctx.params.bool("restricted").unwrap_or(false),
        nofailback: ctx.params.bool("nofailback").unwrap_or(false),
        comment: ctx.params.str("comment").map(str::to_string),
        group,
    };
    if !ctx
        .state
        .store
        .create_json(&group_key(&rec.group), &rec)
        .await?
    {
        return Err(ApiError::Conflict(format!(
            "ha group '{}' already defined",
            rec.group
        )));
    }
    poke(&ctx.state.node.directory);
    Ok(Reply::Data(Value::Null))
}

async fn group(store: &Store, name: &str) -> Result<GroupRecord, ApiError> {
    store
        .get_json::<GroupRecord>(&group_key(name))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no such ha group '{name}'")))
}

/// `GET /cluster/ha/groups/{group}`.
pub const READ_GROUP: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[GROUP_ID]),
    privilege: AUDIT,
    description: "Read ha group configuration.",
};

pub async fn read_group(ctx: Ctx) -> Result<Reply, ApiError> {
    let g = group(&ctx.state.store, ident(&ctx, "group")?).await?;
    Ok(Reply::Data(group_json(&g)))
}

/// `PUT /cluster/ha/groups/{group}`.
pub const UPDATE_GROUP: Endpoint = Endpoint {
    method: Method::Put,
    params: ParamSchema(&[
        GROUP_ID,
        NODES.opt(),
        RESTRICTED,
        NOFAILBACK,
        COMMENT,
        DIGEST,
        DELETE_KEYS,
    ]),
    privilege: CONSOLE,
    description: "Update ha group configuration.",
};

pub async fn update_group(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = ident(&ctx, "group")?.to_string();
    let nodes = match ctx.params.str("nodes") {
        Some(s) => Some(node_list(s)?),
        None => None,
    };
    let delete = split_list(ctx.params.str("delete").unwrap_or(""));
    for key in &delete {
        if !matches!(key.as_str(), "comment" | "restricted" | "nofailback") {
            return Err(ApiError::param("delete", format!("cannot delete '{key}'")));
        }
    }
    let restricted = ctx.params.bool("restricted");
    let nofailback = ctx.params.bool("nofailback");
    let comment = ctx.params.str("comment").map(str::to_string);
    let want_digest = ctx.params.str("digest").map(str::to_string);
    let key = group_key(&name);
    let outcome = ctx
        .state
        .store
        .transact(move |tx| {
            let (key, name, nodes, delete, comment, want_digest) = (
                key.clone(),
                name.clone(),
                nodes.clone(),
                delete.clone(),
                comment.clone(),
                want_digest.clone(),
            );
            Box::pin(async move {
                let Some(mut g) = tx.get_json::<GroupRecord>(&key).await? else {
                    return Ok(Err(ApiError::NotFound(format!(
                        "no such ha group '{name}'"
                    ))));
                };
                if let Some(d) = want_digest
                    && d != digest(&g)
                {
                    return Ok(Err(ApiError::Conflict(
                        "detected modified configuration - file changed by other user? Try again."
                            .into(),
                    )));
                }
                for k in &delete {
                    match k.as_str() {
                        "comment" => g.comment = None,
                        "restricted" => g.restricted = false,
                        _ => g.nofailback = false,
                    }
                }
                if let Some(n) = nodes {
                    g.nodes = n;
                }
                if let Some(r) = restricted {
                    g.restricted = r;
                }
                if let Some(n) = nofailback {
                    g.nofailback = n;
                }
                if comment.is_some() {
                    g.comment = comment;
                }
                tx.put_json(&key, &g)?;
                Ok(Ok(()))
            })
        })
        .await?;
    outcome?;
    poke(&ctx.state.node.directory);
    Ok(Reply::Data(Value::Null))
}

/// `DELETE /cluster/ha/groups/{group}`.
pub const DELETE_GROUP: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[GROUP_ID]),
    privilege: CONSOLE,
    description: "Delete ha group configuration.",
};

/// Refused while a resource uses the group, as Proxmox does.
pub async fn delete_group(ctx: Ctx) -> Result<Reply, ApiError> {
    let name = ident(&ctx, "group")?.to_string();
    let store = &ctx.state.store;
    group(store, &name).await?;
    let users: Vec<String> = list_resources(store)
        .await?
        .iter()
        .filter(|r| r.group.as_deref() == Some(name.as_str()))
        .map(|r| sid(r.vmid))
        .collect();
    if !users.is_empty() {
        return Err(ApiError::Conflict(format!(
            "ha group '{name}' is used by {}",
            users.join(", ")
        )));
    }
    store.delete(&group_key(&name)).await?;
    Ok(Reply::Data(Value::Null))
}

/// `GET /cluster/ha/status`.
pub const STATUS_INDEX: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[]),
    privilege: Privilege::User,
    description: "Directory index.",
};

pub async fn status_index(_ctx: Ctx) -> Result<Reply, ApiError> {
    Ok(Reply::Data(
        json!([{"name": "current"}, {"name": "manager_status"}]),
    ))
}

/// `GET /cluster/ha/status/current`.
pub const STATUS_CURRENT: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[]),
    privilege: AUDIT,
    description: "Get HA manager status.",
};

/// Proxmox's entries (`quorum`, `master`, `lrm:{node}`, `service:{sid}`) from the state the
/// manager persisted after its last pass, plus gpve's `generation`, `restarts`,
/// `relocations` and `last_error` on services.
pub async fn status_current(ctx: Ctx) -> Result<Reply, ApiError> {
    let store = &ctx.state.store;
    let local = &ctx.state.config.node_name;
    let sm = load_manager(store).await?;
    let configured = list_resources(store).await?;
    let mut out = vec![
        json!({"id": "quorum", "type": "quorum", "node": local, "status": "OK", "quorate": 1}),
        json!({
            "id": "master", "type": "master", "node": local,
            "status": if sm.is_some() { format!("{local} (active)") } else { format!("{local} (idle)") },
            "timestamp": crate::state::now_s(),
        }),
    ];
    let Some(sm) = sm else {
        return Ok(Reply::Data(Value::Array(out)));
    };
    for (node, st) in sm.nodes() {
        let status = match st {
            gpve_actors::ha::NodeState::Online => "active".to_string(),
            gpve_actors::ha::NodeState::Expired { lease_deadline_ms } => {
                format!("lease expired at {lease_deadline_ms} (fence pending)")
            }
            gpve_actors::ha::NodeState::Fenced { .. } => "fenced".to_string(),
        };
        out.push(
            json!({"id": format!("lrm:{node}"), "type": "lrm", "node": node, "status": status}),
        );
    }
    for r in configured {
        let Some(s) = sm.resource(r.vmid) else {
            // Added since the manager's last pass.
            out.push(json!({
                "id": format!("service:{}", sid(r.vmid)), "type": "service", "sid": sid(r.vmid),
                "node": "", "state": "queued", "request_state": r.state.as_str(),
                "status": format!("{} (queued)", sid(r.vmid)),
                "max_restart": r.max_restart, "max_relocate": r.max_relocate,
            }));
            continue;
        };
        let state = s.status.as_str();
        let mut v = json!({
            "id": format!("service:{}", sid(r.vmid)),
            "type": "service",
            "sid": sid(r.vmid),
            "node": s.node,
            "state": state,
            "crm_state": state,
            "request_state": r.state.as_str(),
            "status": format!("{} ({}, {})", sid(r.vmid), s.node, state),
            "max_restart": r.max_restart,
            "max_relocate": r.max_relocate,
            "failback": bool01(r.failback),
            "generation": s.generation,
            "restarts": s.restarts,
            "relocations": s.relocations,
        });
        if let Some(e) = &s.last_error {
            v["last_error"] = json!(e);
        }
        if s.status == ServiceStatus::Error {
            v["status"] = json!(format!("{} ({}, error)", sid(r.vmid), s.node));
        }
        out.push(v);
    }
    Ok(Reply::Data(Value::Array(out)))
}

/// `GET /cluster/ha/status/manager_status`.
pub const MANAGER_STATUS: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[]),
    privilege: AUDIT,
    description: "Get full HA manager status, including LRM status.",
};

/// The manager's whole persisted state (gpve's own shape).
pub async fn manager_status(ctx: Ctx) -> Result<Reply, ApiError> {
    let sm = load_manager(&ctx.state.store).await?;
    Ok(Reply::Data(
        serde_json::to_value(sm).map_err(|e| ApiError::Internal(e.to_string()))?,
    ))
}
