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
//! they serve (nor, on an agent, its `session` actor through the session). A restart answers when the new incarnation runs, except for the `api`
//! actor and its ancestors, which answer once the restart is requested; follow
//! `GET /api/v1/actors/events` to see it complete.

use gpve_supervisor::{ActorState, SupervisorHandle};
use serde_json::json;

use super::{path_param, remote};
use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::{Param, ParamSchema};
use crate::state::AppState;
use crate::v1::types::ActorActionResult;

/// `POST /api/v1/actors/{path}/{restart|stop}` (Proxmox would ask `Sys.Modify`).
pub const ACTION: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[path_param(), Param::node().opt()]),
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

fn check_verb(verb: &str) -> Result<(), ApiError> {
    if verb == "restart" || verb == "stop" {
        return Ok(());
    }
    Err(ApiError::NotFound(format!(
        "unknown actor action '{verb}' (restart, stop)"
    )))
}

/// Restart or stop the actor named by the wildcard tail (`{path}/restart`), on `?node=`
/// (default: this node; another member is asked over its node session).
pub async fn action(ctx: Ctx) -> Result<Reply, ApiError> {
    let tail = ctx.str("path")?.trim_matches('/');
    let (path, verb) = tail.rsplit_once('/').ok_or_else(|| {
        ApiError::NotFound(format!(
            "no action in '{tail}': POST /api/v1/actors/PATH/restart or /stop"
        ))
    })?;
    check_verb(verb)?;
    let user = ctx.userid()?.to_string();
    if let Some(node) = ctx.params.str("node")
        && remote::is_remote_member(&ctx.state, node).await?
    {
        let req = remote::IntrospectRequest::Action {
            path: path.to_string(),
            verb: verb.to_string(),
            user: user.clone(),
        };
        let v = remote::call(&ctx.state, node, &req, remote::ACTION_TIMEOUT_MS).await?;
        tracing::info!(user = %user, node, actor = %path, action = verb, "remote actor action done");
        return Ok(Reply::Data(v));
    }
    let result = perform(&ctx.state, path, verb, &user, &api_path()).await?;
    Ok(Reply::Data(json!(result)))
}

/// Restart or stop the actor at `path` of this node for `user`. `serving` is the path of
/// the actor carrying the request (the api actor, or the session for a remote call): it
/// and its ancestors cannot be stopped, and their restart is answered before it happens.
pub async fn perform(
    state: &AppState,
    path: &str,
    verb: &str,
    user: &str,
    serving: &str,
) -> Result<ActorActionResult, ApiError> {
    check_verb(verb)?;
    let directory = &state.node.directory;
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
    let serves_this_request = serving == path || serving.starts_with(&format!("{path}/"));
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
    Ok(ActorActionResult {
        path: path.to_string(),
        action: verb.to_string(),
        restarts_before: snap.restarts,
        how: how.to_string(),
    })
}
