//! gpve's own API under `/api/v1`, for what Proxmox has no API for (the module tree is the
//! URL tree, as under [`crate::pve`]):
//!
//! - `GET /actors`: the supervision trees, per node (`?node=`);
//! - `GET /actors/events`: a watch stream of supervision events (newline-delimited JSON);
//! - `GET /actors/{path}`: one actor; `POST /actors/{path}/restart` and `/stop`.
//!
//! Actor paths contain `/` and `:` (`gpve-server/node:n1`): they are accepted both as a
//! plain tail and URL-encoded (`gpve-server%2Fnode%3An1`). Answers use the same
//! `{"data": ...}` envelope and error shape as `/api2/json`.

pub mod actors;
pub mod guard;
pub mod types;

use axum::Router;
use axum::routing::get;

use crate::router::{endpoint, not_implemented};
use crate::state::AppState;

/// The URL prefix of this API.
pub const V1_PREFIX: &str = "/api/v1";

/// Every route of `/api/v1`, relative to that prefix.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/actors", endpoint(&actors::LIST, actors::list))
        .route("/actors/events", get(actors::events::watch))
        .route(
            "/actors/{*path}",
            endpoint(&actors::DESCRIBE, actors::describe)
                .merge(endpoint(&actors::admin::ACTION, actors::admin::action)),
        )
        .method_not_allowed_fallback(not_implemented)
}
