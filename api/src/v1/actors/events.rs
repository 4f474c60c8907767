//! `GET /api/v1/actors/events`: a watch stream of supervision events (started, stopped,
//! failed, restarted, escalated) as newline-delimited JSON over chunked HTTP, like a
//! Kubernetes watch. A heartbeat line goes out first and then every
//! [`HEARTBEAT_INTERVAL_MS`] so clients notice a dead connection; a reader that falls more
//! than [`gpve_supervisor::EVENT_CAPACITY`] events behind gets a `lagged` line with the
//! number it missed and should re-read the tree. Streams end when
//! [`crate::metrics::Metrics::close_event_streams`] is called (the listener stops).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast::error::RecvError;

use crate::error::ApiError;
use crate::router::{Endpoint, Method, Privilege};
use crate::schema::{Param, ParamSchema};
use crate::state::AppState;
use crate::v1::guard::authorize;
use crate::v1::types::{StreamEvent, WatchLine};

/// How often an idle stream sends a heartbeat line.
pub const HEARTBEAT_INTERVAL_MS: u64 = 10_000;
/// Content type of the stream.
pub const CONTENT_TYPE: &str = "application/x-ndjson";

/// `GET /api/v1/actors/events`.
pub const EVENTS: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::node().opt()]),
    privilege: Privilege::Perm("/", &["Sys.Audit"]),
    description: "Watch supervision events (newline-delimited JSON).",
};

fn line(l: &WatchLine) -> Bytes {
    let mut v = serde_json::to_vec(l).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// The handler.
pub async fn watch(State(state): State<AppState>, req: Request) -> Response {
    let (parts, _body) = req.into_parts();
    let ctx = match authorize(&state, &EVENTS, &parts).await {
        Ok(ctx) => ctx,
        Err(resp) => return resp,
    };
    if let Some(node) = ctx.params.str("node") {
        match super::remote::is_remote_member(&state, node).await {
            Ok(false) => {}
            // Not streamed over the node sessions yet: say so rather than "no such node".
            Ok(true) => {
                return ApiError::BadRequest(format!(
                    "supervision events of node '{node}' are not streamed yet; poll GET /api/v1/actors?node={node}"
                ))
                .into_response();
            }
            Err(e) => return e.into_response(),
        }
    }
    let Some(permit) = state.metrics.try_event_stream() else {
        return ApiError::Unavailable(format!(
            "too many event streams are open (at most {})",
            crate::metrics::MAX_EVENT_STREAMS
        ))
        .into_response();
    };
    let directory = state.node.directory.clone();
    let receiver = directory.subscribe();
    let node = state.config.node_name.clone();
    tracing::debug!(
        user = ctx.userid().unwrap_or("-"),
        "actor event stream opened"
    );
    let mut closer = state.metrics.stream_closer();
    closer.mark_unchanged();
    let mut heartbeat = tokio::time::interval(Duration::from_millis(HEARTBEAT_INTERVAL_MS));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The permit lives as long as the stream: dropping the body (client gone) frees it.
    let stream = futures::stream::unfold(
        (receiver, heartbeat, closer, permit),
        move |(mut receiver, mut heartbeat, mut closer, permit)| {
            let node = node.clone();
            let clock = directory.clock().clone();
            async move {
                let out = tokio::select! {
                    ev = receiver.recv() => match ev {
                        Ok(event) => WatchLine::Actor { node, event },
                        Err(RecvError::Lagged(missed)) => WatchLine::Stream {
                            event: StreamEvent::Lagged,
                            at_ms: clock.now_ms(),
                            missed: Some(missed),
                        },
                        // The directory is gone: the server is shutting down.
                        Err(RecvError::Closed) => return None,
                    },
                    // The server is stopping (or the state is gone): end the response.
                    _ = closer.changed() => return None,
                    _ = heartbeat.tick() => WatchLine::Stream {
                        event: StreamEvent::Heartbeat,
                        at_ms: clock.now_ms(),
                        missed: None,
                    },
                };
                Some((
                    Ok::<Bytes, std::convert::Infallible>(line(&out)),
                    (receiver, heartbeat, closer, permit),
                ))
            }
        },
    );
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
