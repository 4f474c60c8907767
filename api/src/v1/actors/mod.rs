//! `/api/v1/actors`: introspection of the supervision trees (each node's [`Directory`]).
//! The local node answers from its directory; another member node answers over its node
//! session ([`remote`]). The listing covers every member: a node that does not answer in
//! time is listed with an `error`, and a call for one such node (`?node=`) gets 595.
//!
//! [`Directory`]: gpve_supervisor::Directory

pub mod admin;
pub mod events;
pub mod remote;

use std::collections::BTreeMap;

use gpve_supervisor::{ActorSnapshot, ActorState, ActorTreeNode};
use serde_json::json;

use super::types::{ActorDetail, ActorTree, ActorView, ActorsList, NodeActors};
use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::{Format, Param, ParamSchema};
use crate::state::AppState;

/// Longest accepted actor path, in bytes.
pub const MAX_ACTOR_PATH_BYTES: usize = 1024;

/// The wildcard `path` parameter.
pub const fn path_param() -> Param {
    Param::string("path", MAX_ACTOR_PATH_BYTES, Some(Format::Text))
}

/// `GET /api/v1/actors` (Proxmox would ask `Sys.Audit` on `/nodes/{node}`).
pub const LIST: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::node().opt()]),
    privilege: Privilege::Perm("/", &["Sys.Audit"]),
    description: "The supervision trees of the cluster's nodes.",
};

/// `GET /api/v1/actors/{path}`.
pub const DESCRIBE: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[path_param(), Param::node().opt()]),
    privilege: Privilege::Perm("/", &["Sys.Audit"]),
    description: "One supervised actor.",
};

/// The view of `a` on this node, with its message rate from `rates` (path → msgs/s).
pub fn view(
    state: &AppState,
    a: &ActorSnapshot,
    rates: &BTreeMap<String, f64>,
    now_ms: u64,
) -> ActorView {
    let uptime_s = match (a.state, a.started_at_ms) {
        (ActorState::Running, Some(t)) => Some(now_ms.saturating_sub(t) / 1_000),
        _ => None,
    };
    ActorView {
        path: a.path.clone(),
        kind: a.kind.clone(),
        id: a.id.clone(),
        node: state.config.node_name.clone(),
        parent: a.parent.clone(),
        state: a.state,
        mailbox_depth: a.mailbox_depth,
        messages_handled: a.messages_handled,
        msgs_per_s: rates.get(&a.path).copied().unwrap_or(0.0),
        restarts: a.restarts,
        uptime_s,
        started_at_ms: a.started_at_ms,
        last_failure: a.last_failure.clone(),
        owns: a.owns.clone(),
    }
}

fn tree(
    state: &AppState,
    t: &ActorTreeNode,
    rates: &BTreeMap<String, f64>,
    now_ms: u64,
) -> ActorTree {
    ActorTree {
        actor: view(state, &t.actor, rates, now_ms),
        children: t
            .children
            .iter()
            .map(|c| tree(state, c, rates, now_ms))
            .collect(),
    }
}

/// The local node's trees.
pub fn local_actors(state: &AppState) -> NodeActors {
    let directory = &state.node.directory;
    state.metrics.sampler().ensure_running(directory);
    let now_ms = directory.clock().now_ms();
    let rates = state.metrics.sampler().rates();
    let roots: Vec<ActorTree> = directory
        .snapshot_tree()
        .iter()
        .map(|t| tree(state, t, &rates, now_ms))
        .collect();
    NodeActors {
        node: state.config.node_name.clone(),
        count: roots.iter().map(ActorTree::size).sum(),
        roots,
        error: None,
    }
}

/// `node`'s trees over its session.
async fn remote_actors(state: &AppState, node: &str) -> Result<NodeActors, ApiError> {
    let v = remote::call(
        state,
        node,
        &remote::IntrospectRequest::Tree,
        remote::READ_TIMEOUT_MS,
    )
    .await?;
    serde_json::from_value(v)
        .map_err(|e| ApiError::Internal(format!("node '{node}' sent an unreadable tree: {e}")))
}

/// The member nodes other than this one, by name (none without node sessions).
async fn remote_members(state: &AppState) -> Result<Vec<String>, ApiError> {
    if remote::sessions(state).is_none() {
        return Ok(Vec::new());
    }
    let members = crate::cluster::records::list_nodes(&state.store)
        .await
        .map_err(|e| ApiError::Internal(format!("listing the nodes failed: {e}")))?;
    Ok(members
        .into_iter()
        .map(|m| m.node)
        .filter(|n| *n != state.config.node_name)
        .collect())
}

/// The supervision trees: of `?node=` only, or of every member (local first; the others
/// asked at once, each within [`remote::READ_TIMEOUT_MS`]).
pub async fn list(ctx: Ctx) -> Result<Reply, ApiError> {
    let state = &ctx.state;
    if let Some(node) = ctx.params.str("node") {
        let one = if remote::is_remote_member(state, node).await? {
            remote_actors(state, node).await?
        } else {
            local_actors(state)
        };
        return Ok(Reply::Data(json!(ActorsList { nodes: vec![one] })));
    }
    let others = remote_members(state).await?;
    let asked = futures::future::join_all(others.iter().map(|n| remote_actors(state, n))).await;
    let mut nodes = vec![local_actors(state)];
    for (node, result) in others.into_iter().zip(asked) {
        nodes.push(result.unwrap_or_else(|e| NodeActors {
            node,
            count: 0,
            roots: Vec::new(),
            error: Some(e.to_string()),
        }));
    }
    Ok(Reply::Data(json!(ActorsList { nodes })))
}

/// The actor at `path`, or 404.
pub fn detail(state: &AppState, path: &str) -> Result<ActorDetail, ApiError> {
    let directory = &state.node.directory;
    state.metrics.sampler().ensure_running(directory);
    let snap = directory
        .get(path)
        .ok_or_else(|| ApiError::NotFound(format!("no actor at '{path}'")))?;
    let now_ms = directory.clock().now_ms();
    let children = directory
        .snapshot()
        .into_iter()
        .filter(|c| c.parent.as_deref() == Some(path))
        .map(|c| c.path)
        .collect();
    Ok(ActorDetail {
        actor: view(state, &snap, &state.metrics.sampler().rates(), now_ms),
        children,
        recent_restarts: snap.recent_restarts,
    })
}

/// One actor, on `?node=` (default: this node).
pub async fn describe(ctx: Ctx) -> Result<Reply, ApiError> {
    let path = ctx.str("path")?.trim_matches('/');
    if let Some(node) = ctx.params.str("node")
        && remote::is_remote_member(&ctx.state, node).await?
    {
        let req = remote::IntrospectRequest::Detail {
            path: path.to_string(),
        };
        let v = remote::call(&ctx.state, node, &req, remote::READ_TIMEOUT_MS).await?;
        return Ok(Reply::Data(v));
    }
    let detail = detail(&ctx.state, path)?;
    Ok(Reply::Data(json!(detail)))
}
