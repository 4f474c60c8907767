//! The agent's internal route for the server's migration calls
//! ([`crate::cluster::migration`]): `POST` [`INTERNAL_PATH`] with an
//! [`InternalCall`] runs it on this node's target side ([`LocalPeer`], the same one the
//! in-process case uses).
//!
//! Admission: the agent's listener accepts only the server's proxy certificate, and the
//! forwarding layer sends here only requests without a forwarded identity, which the
//! server's forwarding of user requests always adds, so only the server's own calls
//! arrive. The path is outside `/api2/json/nodes/`, which is all the server forwards.
//!
//! [`LocalPeer`]: gpve_actors::vm::migrate::LocalPeer

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub use crate::cluster::migration::INTERNAL_PATH;
use crate::cluster::migration::{InternalCall, InternalReply, node_migration, run_internal};
use crate::state::AppState;

/// Largest internal call body (a VM configuration).
pub const INTERNAL_BODY_MAX_BYTES: usize = 1024 * 1024;

fn reply(status: StatusCode, body: &InternalReply) -> Response {
    let json = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(Body::from(json));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn failure(status: StatusCode, message: String) -> Response {
    reply(
        status,
        &InternalReply {
            error: Some(message),
            ..InternalReply::default()
        },
    )
}

/// Serves one internal migration call.
pub async fn serve(state: &AppState, req: Request) -> Response {
    if req.method() != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "POST only").into_response();
    }
    let bytes = match axum::body::to_bytes(req.into_body(), INTERNAL_BODY_MAX_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return failure(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a migration call is at most {INTERNAL_BODY_MAX_BYTES} bytes"),
            );
        }
    };
    let call: InternalCall = match serde_json::from_slice(&bytes) {
        Ok(c) => c,
        Err(e) => {
            return failure(
                StatusCode::BAD_REQUEST,
                format!("not a migration call: {e}"),
            );
        }
    };
    let node = match node_migration(&state.node.directory).await {
        Ok(n) => n,
        Err(e) => return failure(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let local = match node.local() {
        Ok(l) => l,
        Err(e) => return failure(StatusCode::CONFLICT, e.to_string()),
    };
    let out = run_internal(&local, call).await;
    let status = if out.error.is_some() {
        StatusCode::CONFLICT
    } else {
        StatusCode::OK
    };
    reply(status, &out)
}
