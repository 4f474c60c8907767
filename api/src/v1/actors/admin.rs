//! `POST /api/v1/actors/{path}/restart` and `/stop`: administrator actions on one actor,
//! done through its supervisor so the tree's bookkeeping (restart counts, events,
//! intensity) stays true.
//!
//! - restart: the supervisor stops the child gracefully (its `post_stop` runs; killed
//!   after the supervisor's shutdown timeout) and starts it again at once, whatever its
//!   restart policy. The restart shows in the child's restart count and events, but it
//!   is not a failure: it does not count towards the restart intensity, so an operator
//!   cannot escalate a subtree by restarting it.
//! - stop: the supervisor stops the child and forgets it (a stopped permanent child would
//!   otherwise be restarted at once).
//!
//! Roots, and the `api` actor with its ancestors, cannot be stopped through the API that
//! they serve. A restart answers when the new incarnation runs, except for the `api`
//! actor and its ancestors, which answer once the restart is requested; follow
//! `GET /api/v1/actors/events` to see it complete.

use gpve_supervisor::{ActorState, SupervisorHandle};
use serde_json::json;

use super::path_param;
use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::ParamSchema;
use crate::v1::types::ActorActionResult;

/// `POST /api/v1/actors/{path}/{restart|stop}` (Proxmox would ask `Sys.Modify`).
pub const ACTION: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[path_param()]),
    privilege: Privilege::Perm("/", &["Sys.Modify"]),
    description: "Restart or stop one supervised actor.",
};

/// Directory path of the actor serving the API.
fn api_path() -> String {
    format!("{}/api", crate::tree::ROOT)
}

fn supervisor_err(e: gpve_supervisor::SupervisorError) -> ApiError {
    use gpve_supervisor::SupervisorError as S;
    match e {
        S::UnknownChild { .. } => ApiError::NotFound(e.to_string()),
        S::NotRunning { .. } => ApiError::Conflict(e.to_string()),
        S::Unreachable { .. } => ApiError::Unavailable(e.to_string()),
        other => ApiError::Internal(other.to_string()),
    }
}

/// Restart or stop the actor named by the wildcard tail (`{path}/restart`).
pub async fn action(ctx: Ctx) -> Result<Reply, ApiError> {
    let tail = ctx.str("path")?.trim_matches('/');
    let (path, verb) = tail.rsplit_once('/').ok_or_else(|| {
        ApiError::NotFound(format!(
            "no action in '{tail}': POST /api/v1/actors/PATH/restart or /stop"
        ))
    })?;
    if verb != "restart" && verb != "stop" {
        return Err(ApiError::NotFound(format!(
            "unknown actor action '{verb}' (restart, stop)"
        )));
    }
    let user = ctx.userid()?.to_string();
    let directory = &ctx.state.node.directory;
    let snap = directory
        .get(path)
        .ok_or_else(|| ApiError::NotFound(format!("no actor at '{path}'")))?;
    let Some(parent) = snap.parent.clone() else {
        return Err(ApiError::Conflict(format!(
            "'{path}' is a root supervisor: nothing above it can {verb} it (stop the server instead)"
        )));
    };
    let supervisor = SupervisorHandle::lookup(directory, &parent).ok_or_else(|| {
        ApiError::Unavailable(format!(
            "the supervisor '{parent}' of '{path}' is not running"
        ))
    })?;
    let children = supervisor.children().await.map_err(supervisor_err)?;
    let child = children
        .iter()
        .find(|c| c.path == path)
        .ok_or_else(|| ApiError::NotFound(format!("no actor at '{path}'")))?;
    let api = api_path();
    let serves_this_request = api == path || api.starts_with(&format!("{path}/"));
    let how = if verb == "restart" {
        if snap.state != ActorState::Running {
            return Err(ApiError::Conflict(format!(
                "'{path}' is not running (it is {:?}); nothing to restart",
                snap.state
            )));
        }
        let reason = format!("restart requested by {user}");
        if serves_this_request {
            // Stopping the api actor waits for in-flight requests, this one included:
            // the restart must not be awaited here.
            let (supervisor, id) = (supervisor.clone(), child.id.clone());
            tokio::spawn(async move {
                if let Err(e) = supervisor.restart_child(&id, &reason).await {
                    tracing::error!(actor = %id, error = %e, "requested restart failed");
                }
            });
            "restart-requested"
        } else {
            supervisor
                .restart_child(&child.id, &reason)
                .await
                .map_err(supervisor_err)?;
            "restarted"
        }
    } else if serves_this_request {
        return Err(ApiError::Conflict(format!(
            "stopping '{path}' would stop the API serving this request"
        )));
    } else {
        supervisor
            .remove_child(&child.id)
            .await
            .map_err(supervisor_err)?;
        "removed"
    };
    tracing::info!(user = %user, actor = %path, action = verb, how, "actor action requested");
    let result = ActorActionResult {
        path: path.to_string(),
        action: verb.to_string(),
        restarts_before: snap.restarts,
        how: how.to_string(),
    };
    Ok(Reply::Data(json!(result)))
}
