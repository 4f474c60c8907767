//! The actor console across nodes: each agent serves its own supervision tree to the
//! server over its node session ([`gpve_transport::session`], `ractor_cluster` over mutual
//! TLS), and the server's `/api/v1/actors` handlers call it for `?node=` other than their
//! own.
//!
//! [`IntrospectService`] is the node's side (run by its `session` actor); [`call`] the
//! server's. Requests and replies are JSON. The server authenticates the user and checks
//! the privilege before calling; the agent trusts the server, the only peer of its session.

use std::sync::Arc;

use gpve_transport::async_trait;
use gpve_transport::session::{NodeService, NodeSessions};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;
use crate::state::AppState;

/// How long a tree or detail read waits for a node: an unreachable node is reported after
/// this (`ractor_cluster` does not notice a silent partition).
pub const READ_TIMEOUT_MS: u64 = 3_000;
/// How long a restart or stop waits: the supervisor stops the child gracefully first.
pub const ACTION_TIMEOUT_MS: u64 = 30_000;

/// One request to a node's introspection service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum IntrospectRequest {
    /// The node's trees ([`crate::v1::types::NodeActors`]).
    Tree,
    /// One actor ([`crate::v1::types::ActorDetail`]).
    Detail { path: String },
    /// `restart` or `stop` one actor on behalf of `user` (already authorised).
    Action {
        path: String,
        verb: String,
        user: String,
    },
}

/// The answer: the value, or the error the node's handler returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IntrospectReply {
    Ok(Value),
    Error { status: u16, message: String },
}

impl IntrospectReply {
    fn from_result<T: Serialize>(r: Result<T, ApiError>) -> Self {
        match r.and_then(|v| serde_json::to_value(v).map_err(|e| ApiError::Internal(e.to_string())))
        {
            Ok(v) => IntrospectReply::Ok(v),
            Err(e) => IntrospectReply::Error {
                status: e.status().as_u16(),
                message: e.to_string(),
            },
        }
    }
}

/// The error a node's handler returned, as the same kind here.
fn error_from(node: &str, status: u16, message: String) -> ApiError {
    match status {
        400 => ApiError::Conflict(message),
        403 => ApiError::Refused(message),
        404 => ApiError::NotFound(message),
        503 => ApiError::Unavailable(message),
        _ => ApiError::Internal(format!("node '{node}': {message}")),
    }
}

/// A node's introspection service.
pub struct IntrospectService {
    pub state: AppState,
}

impl IntrospectService {
    async fn answer(&self, req: IntrospectRequest) -> IntrospectReply {
        match req {
            IntrospectRequest::Tree => {
                IntrospectReply::from_result(Ok(super::local_actors(&self.state)))
            }
            IntrospectRequest::Detail { path } => {
                IntrospectReply::from_result(super::detail(&self.state, &path))
            }
            IntrospectRequest::Action { path, verb, user } => {
                // Restarting the session actor drops this call with it: like the api
                // actor for local requests, it is answered before it happens.
                let serving = crate::cluster::session::session_path();
                IntrospectReply::from_result(
                    super::admin::perform(&self.state, &path, &verb, &user, &serving).await,
                )
            }
        }
    }
}

#[async_trait]
impl NodeService for IntrospectService {
    async fn handle(&self, request: Vec<u8>) -> Vec<u8> {
        let reply = match serde_json::from_slice::<IntrospectRequest>(&request) {
            Ok(req) => self.answer(req).await,
            Err(e) => IntrospectReply::Error {
                status: 400,
                message: format!("the introspection request is malformed: {e}"),
            },
        };
        serde_json::to_vec(&reply).unwrap_or_default()
    }
}

/// The node sessions of this process, if it has any (a server with gRPC, an agent).
pub fn sessions(state: &AppState) -> Option<Arc<dyn NodeSessions>> {
    state.sessions.get().cloned()
}

/// Ask `node` over its session; an unreachable node is [`ApiError::NodeOffline`] (595).
pub async fn call(
    state: &AppState,
    node: &str,
    req: &IntrospectRequest,
    timeout_ms: u64,
) -> Result<Value, ApiError> {
    let offline = |reason: String| ApiError::NodeOffline {
        node: node.to_string(),
        reason,
    };
    let sessions =
        sessions(state).ok_or_else(|| offline("this process has no node sessions".into()))?;
    let request = serde_json::to_vec(req).map_err(|e| ApiError::Internal(e.to_string()))?;
    let bytes = sessions
        .call(node, request, timeout_ms)
        .await
        .map_err(|e| match e {
            gpve_transport::session::SessionError::Refused { reason, .. } => {
                ApiError::Unavailable(format!("node '{node}' refused the call: {reason}"))
            }
            other => offline(other.to_string()),
        })?;
    match serde_json::from_slice::<IntrospectReply>(&bytes) {
        Ok(IntrospectReply::Ok(v)) => Ok(v),
        Ok(IntrospectReply::Error { status, message }) => Err(error_from(node, status, message)),
        Err(e) => Err(ApiError::Internal(format!(
            "node '{node}' sent an unreadable answer: {e}"
        ))),
    }
}

/// Whether `node` is a member other than this one: `Ok(false)` for the local node,
/// [`ApiError::NoSuchNode`] for strangers.
pub async fn is_remote_member(state: &AppState, node: &str) -> Result<bool, ApiError> {
    if node == state.config.node_name {
        return Ok(false);
    }
    match crate::cluster::records::read_node(&state.store, node).await {
        Ok(Some(_)) => Ok(true),
        Ok(None) => Err(ApiError::NoSuchNode(node.to_string())),
        Err(e) => Err(ApiError::Internal(format!(
            "reading node '{node}' failed: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip() {
        let reqs = [
            IntrospectRequest::Tree,
            IntrospectRequest::Detail {
                path: "gpve-server/qemu/vm:100".into(),
            },
            IntrospectRequest::Action {
                path: "gpve-server/qemu/vm:100".into(),
                verb: "restart".into(),
                user: "root@pam".into(),
            },
        ];
        for r in reqs {
            let text = serde_json::to_string(&r).expect("json");
            assert_eq!(
                serde_json::from_str::<IntrospectRequest>(&text).expect("parse"),
                r
            );
        }
        let reply = IntrospectReply::from_result::<u32>(Err(ApiError::NotFound("no".into())));
        assert_eq!(
            reply,
            IntrospectReply::Error {
                status: 404,
                message: "no".into()
            }
        );
        assert!(matches!(
            error_from("n1", 404, "gone".into()),
            ApiError::NotFound(m) if m == "gone"
        ));
        assert!(matches!(
            error_from("n1", 500, "boom".into()),
            ApiError::Internal(m) if m.contains("n1")
        ));
    }
}
