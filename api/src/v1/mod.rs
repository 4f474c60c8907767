//! gpve's own API under `/api/v1`, for what Proxmox has no API for (the module tree is the
//! URL tree, as under [`crate::pve`]):
//!
//! - `GET /actors`: the supervision trees, per node (`?node=`);
//! - `GET /actors/events`: a watch stream of supervision events (newline-delimited JSON);
//! - `GET /actors/{path}`: one actor; `POST /actors/{path}/restart` and `/stop`;
//! - `/namespaces/{ns}/virtualmachines[/{name}]`: VMs as `gpve.io/v1` manifests;
//! - `POST|DELETE /nodes/{node}/cordon`: cordon or uncordon a joined node.
//!
//! Actor paths contain `/` and `:` (`gpve-server/node:n1`): they are accepted both as a
//! plain tail and URL-encoded (`gpve-server%2Fnode%3An1`). Answers use the same
//! `{"data": ...}` envelope and error shape as `/api2/json`.

pub mod actors;
pub mod audit;
pub mod guard;
pub mod nodes;
pub mod tenants;
pub mod types;
pub mod vclusters;
pub mod virtualmachines;

use axum::routing::get;

use crate::router::{Routes, endpoint, not_implemented};

/// The URL prefix of this API.
pub const V1_PREFIX: &str = "/api/v1";

/// Every route of `/api/v1`, relative to that prefix.
pub fn router() -> Routes {
    let (vclusters, vcluster_routes) = vclusters::routes();
    Routes::new()
        .route("/actors", endpoint(&actors::LIST, actors::list))
        .raw_route(
            "/actors/events",
            &actors::events::EVENTS,
            get(actors::events::watch),
        )
        .route(
            "/actors/{*path}",
            endpoint(&actors::DESCRIBE, actors::describe)
                .merge(endpoint(&actors::admin::ACTION, actors::admin::action)),
        )
        .route(
            "/nodes/{node}/cordon",
            endpoint(&nodes::CORDON, nodes::cordon)
                .merge(endpoint(&nodes::UNCORDON, nodes::uncordon)),
        )
        .merge(audit::router())
        .merge(tenants::router())
        .merge_axum(
            virtualmachines::router(),
            &[
                ("/namespaces/{ns}/virtualmachines", &virtualmachines::LIST),
                ("/namespaces/{ns}/virtualmachines", &virtualmachines::CREATE),
                (
                    "/namespaces/{ns}/virtualmachines/{name}",
                    &virtualmachines::READ,
                ),
                (
                    "/namespaces/{ns}/virtualmachines/{name}",
                    &virtualmachines::REPLACE,
                ),
                (
                    "/namespaces/{ns}/virtualmachines/{name}",
                    &virtualmachines::DELETE,
                ),
            ],
        )
        .merge_axum(vclusters, &vcluster_routes)
        .method_not_allowed_fallback(not_implemented)
}
