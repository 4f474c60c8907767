//! The watch stream of cluster events (issue 6): VM state changes, task starts and ends,
//! node membership, liveness and cordon changes, pushed to clients as they commit instead
//! of being polled.
//!
//! ```text
//! Store::commit / commit_checked ──feed──▶ hub (one task: ClusterView, decodes writes)
//!                                            │ broadcast, per-watcher buffer
//!                                            ▼
//!        gRPC Watch stream ◀── watcher task (filter by kind/node, RBAC like REST)
//! ```
//!
//! - [`view`]: which writes are events (pure);
//! - [`hub`]: follows the store's change feed, keeps the view, fans events out;
//! - [`service`]: the tonic service, served on the HTTPS port next to REST ([`routes`]).

pub mod hub;
pub mod service;
pub mod view;

use axum::Router;
use gpve_transport::watch_pb::watch_server::WatchServer;

pub use service::{Filter, WatchService, to_wire};

use crate::state::AppState;

/// The gRPC method path of `Watch.Watch`.
pub const WATCH_PATH: &str = "/gpve.watch.v1.Watch/Watch";

/// The watch route for the user-facing listener. An agent serves none: its store is the
/// server's, reached remotely, so only the server sees every commit.
pub fn routes(state: &AppState) -> Router<AppState> {
    if matches!(state.forward.get(), Some(crate::forward::Role::Agent)) {
        return Router::new();
    }
    let service = WatchServer::new(WatchService::new(state.clone()));
    Router::new().route_service(WATCH_PATH, service)
}
