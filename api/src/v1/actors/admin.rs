//! `POST /api/v1/actors/{path}/restart` and `/stop`: administrator actions on one actor,
//! done through its supervisor so the tree's bookkeeping (restart counts, events,
//! intensity) stays true.
//!
//! - restart: a permanent child is stopped gracefully (its `post_stop` runs) and its
//!   supervisor restarts it after the backoff; a transient child is killed, which its
//!   supervisor treats as a failure and restarts (`post_stop` does not run on kill); a
//!   temporary child would not come back and is refused. A requested restart counts
//!   towards the supervisor's restart intensity like any other.
//! - stop: the supervisor stops the child and forgets it (a stopped permanent child would
//!   otherwise be restarted at once).
//!
//! Roots, and the `api` actor with its ancestors, cannot be stopped through the API that
//! they serve. The call answers once the action is initiated; follow
//! `GET /api/v1/actors/events` to see it complete.

use gpve_supervisor::{RestartPolicy, SupervisorHandle};
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
    privilege: Privilege::Admin,
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
    let how = if verb == "restart" {
        let cell = directory.lookup(path).ok_or_else(|| {
            ApiError::Conflict(format!(
                "'{path}' is not running (it is {:?}); nothing to restart",
                snap.state
            ))
        })?;
        let reason = format!("restart requested by {user}");
        match child.restart {
            RestartPolicy::Permanent => {
                // Not waited for: stopping the api actor waits for in-flight requests,
                // this one included.
                cell.stop(Some(reason));
                "graceful-stop"
            }
            RestartPolicy::Transient => {
                cell.kill();
                "kill"
            }
            RestartPolicy::Temporary => {
                return Err(ApiError::Conflict(format!(
                    "'{path}' is a temporary child: its supervisor would not restart it"
                )));
            }
        }
    } else {
        let api = api_path();
        if api == path || api.starts_with(&format!("{path}/")) {
            return Err(ApiError::Conflict(format!(
                "stopping '{path}' would stop the API serving this request"
            )));
        }
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
