//! `/api/v1/actors`: introspection of the supervision tree (the node's [`Directory`]).
//!
//! [`Directory`]: gpve_supervisor::Directory

pub mod admin;
pub mod events;

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
    params: ParamSchema(&[path_param()]),
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
    }
}

/// Fail unless `node` (when given) is the local node.
fn check_node(ctx: &Ctx) -> Result<(), ApiError> {
    match ctx.params.str("node") {
        Some(node) if node != ctx.state.config.node_name => {
            Err(ApiError::NoSuchNode(node.to_string()))
        }
        _ => Ok(()),
    }
}

/// The supervision trees (single node for now: one entry).
pub async fn list(ctx: Ctx) -> Result<Reply, ApiError> {
    check_node(&ctx)?;
    let list = ActorsList {
        nodes: vec![local_actors(&ctx.state)],
    };
    Ok(Reply::Data(json!(list)))
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

/// One actor.
pub async fn describe(ctx: Ctx) -> Result<Reply, ApiError> {
    let path = ctx.str("path")?.trim_matches('/');
    let detail = detail(&ctx.state, path)?;
    Ok(Reply::Data(json!(detail)))
}
