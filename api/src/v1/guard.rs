//! The shared request pipeline for the few routes whose answer is not a `{"data": ...}`
//! envelope (a watch stream, Prometheus text).
//!
//! [`router::endpoint`] only returns JSON envelopes. Rather than copy its credential, CSRF,
//! schema and privilege checks, [`authorize`] runs the request head through that very
//! pipeline (a one-route router with the same [`Endpoint`]) and hands back the resulting
//! [`Ctx`], or the pipeline's own error response. A `Reply::Stream` variant in
//! [`crate::router`] would make this shim unnecessary.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{Request, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tower::ServiceExt;

use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Reply, endpoint};
use crate::state::AppState;

/// A manifest handler's outcome as the response: `{"data": …}` with the handler's status,
/// or its error.
pub fn respond<E: IntoResponse>(outcome: Result<(axum::http::StatusCode, Value), E>) -> Response {
    match outcome {
        Ok((status, data)) => {
            let mut resp = Reply::Data(data).into_response();
            *resp.status_mut() = status;
            resp
        }
        Err(e) => e.into_response(),
    }
}

/// Authenticate and authorise the request `parts` as route `ep` would (the body is not
/// read: the routes using this take parameters from the query string only).
pub async fn authorize(
    state: &AppState,
    ep: &'static Endpoint,
    parts: &Parts,
) -> Result<Ctx, Response> {
    let slot: Arc<Mutex<Option<Ctx>>> = Arc::new(Mutex::new(None));
    let out = slot.clone();
    let probe = Router::new()
        .route(
            "/",
            endpoint(ep, move |ctx: Ctx| {
                let out = out.clone();
                async move {
                    *out.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ctx);
                    Ok(Reply::Data(Value::Null))
                }
            })
            .into_method_router(),
        )
        .with_state(state.clone());
    let uri: Uri = match parts.uri.query() {
        Some(q) => format!("/?{q}")
            .parse()
            .map_err(|_| ApiError::BadRequest("invalid query string".into()).into_response())?,
        None => Uri::from_static("/"),
    };
    let mut req = Request::new(Body::empty());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = parts.headers.clone();
    // The audit record names the real path and peer, not the probe's.
    if let Some(ci) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
    {
        req.extensions_mut().insert(*ci);
    }
    req.extensions_mut()
        .insert(axum::extract::OriginalUri(match parts
            .extensions
            .get::<axum::extract::OriginalUri>()
        {
            Some(u) => u.0.clone(),
            None => parts.uri.clone(),
        }));
    // Nothing was read from the body: do not let the pipeline wait for one.
    req.headers_mut().remove(axum::http::header::CONTENT_LENGTH);
    req.headers_mut().remove(axum::http::header::CONTENT_TYPE);
    let response = match probe.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let ctx = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    ctx.ok_or(response)
}
