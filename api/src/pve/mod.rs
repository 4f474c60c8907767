//! The Proxmox VE API under `/api2/json`: the module tree mirrors the URL tree.

pub mod access;
pub mod cluster;
pub mod nodes;
pub mod pools;
pub mod storage;
pub mod version;

use crate::router::{Routes, endpoint, not_implemented};

/// Every route of `/api2/json`, relative to that prefix.
pub fn router() -> Routes {
    Routes::new()
        .route("/version", endpoint(&version::GET, version::get))
        .route("/nodes", endpoint(&nodes::GET, nodes::list))
        .route("/nodes/{node}", endpoint(&nodes::INDEX, nodes::index))
        .route(
            "/nodes/{node}/status",
            endpoint(&nodes::status::GET, nodes::status::get),
        )
        .route(
            "/nodes/{node}/rrddata",
            endpoint(&nodes::rrddata::GET, nodes::rrddata::get),
        )
        .route(
            "/nodes/{node}/tasks",
            endpoint(&nodes::tasks::LIST, nodes::tasks::list),
        )
        .route(
            "/nodes/{node}/tasks/{upid}",
            endpoint(&nodes::tasks::INDEX, nodes::tasks::index)
                .merge(endpoint(&nodes::tasks::STOP, nodes::tasks::stop)),
        )
        .route(
            "/nodes/{node}/tasks/{upid}/status",
            endpoint(&nodes::tasks::STATUS, nodes::tasks::status),
        )
        .route(
            "/nodes/{node}/tasks/{upid}/log",
            endpoint(&nodes::tasks::LOG, nodes::tasks::log),
        )
        .route(
            "/nodes/{node}/startall",
            endpoint(&nodes::startall::POST, nodes::startall::post),
        )
        .route(
            "/nodes/{node}/stopall",
            endpoint(&nodes::stopall::POST, nodes::stopall::post),
        )
        .route(
            "/nodes/{node}/migrateall",
            endpoint(&nodes::migrateall::POST, nodes::migrateall::post),
        )
        .route(
            "/cluster/resources",
            endpoint(&cluster::resources::GET, cluster::resources::get),
        )
        .route(
            "/cluster/nextid",
            endpoint(&cluster::nextid::GET, cluster::nextid::get),
        )
        .route(
            "/access/ticket",
            endpoint(&access::ticket::GET, access::ticket::get)
                .merge(endpoint(&access::ticket::POST, access::ticket::post)),
        )
        .route(
            "/access/users",
            endpoint(&access::users::LIST, access::users::list)
                .merge(endpoint(&access::users::CREATE, access::users::create)),
        )
        .route(
            "/access/users/{userid}",
            endpoint(&access::users::READ, access::users::read)
                .merge(endpoint(&access::users::UPDATE, access::users::update))
                .merge(endpoint(&access::users::DELETE, access::users::delete)),
        )
        .route(
            "/access/users/{userid}/token",
            endpoint(&access::tokens::LIST, access::tokens::list),
        )
        .route(
            "/access/users/{userid}/token/{tokenid}",
            endpoint(&access::tokens::READ, access::tokens::read)
                .merge(endpoint(&access::tokens::CREATE, access::tokens::create))
                .merge(endpoint(&access::tokens::UPDATE, access::tokens::update))
                .merge(endpoint(&access::tokens::DELETE, access::tokens::delete)),
        )
        .merge(access::router())
        .merge(pools::router())
        .merge(storage::router())
        .merge(nodes::storage::router())
        .merge(nodes::qemu::router())
        .merge(nodes::network::router())
        .merge(nodes::firewall::router())
        .merge(cluster::firewall::router())
        .merge(cluster::ha::router())
        .method_not_allowed_fallback(not_implemented)
}

#[cfg(test)]
mod tests {
    //! The router in-process (`tower::ServiceExt::oneshot`), without TLS or sockets.

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use serde_json::Value;
    use tower::ServiceExt;

    use crate::access_db::{AccessDb, UserChanges};
    use crate::auth::TicketKey;
    use crate::state::{ApiConfig, AppState, now_s};
    use crate::tree::NodeLink;

    async fn state() -> (tempfile::TempDir, AppState) {
        let dir = tempfile::tempdir().unwrap();
        let store = gpve_store::Store::open_redb(&dir.path().join("s.redb")).unwrap();
        AccessDb::new(store.clone())
            .create_user("root@pam", Some("secret"), UserChanges::default())
            .await
            .unwrap();
        let tasks = gpve_actors::task::TaskManager::new(store.clone(), "n1");
        // No node actor registered: routes that need it answer 503, the others work.
        let node = NodeLink {
            directory: gpve_supervisor::Directory::new(),
            path: "gpve-server/node:n1".into(),
        };
        let state = AppState::new(
            ApiConfig::new("n1"),
            store,
            TicketKey::generate(),
            tasks,
            node,
        );
        (dir, state)
    }

    async fn call(state: &AppState, req: Request<Body>) -> (StatusCode, Value) {
        let resp = crate::server::app(state.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn unknown_path_is_501() {
        let (_d, st) = state().await;
        let (code, body) = call(
            &st,
            Request::get("/api2/json/nope").body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(code, StatusCode::NOT_IMPLEMENTED);
        assert_eq!(body["message"], "Method 'GET /nope' not implemented\n");
    }

    #[tokio::test]
    async fn auth_required_then_granted() {
        let (_d, st) = state().await;
        let (code, _) = call(
            &st,
            Request::get("/api2/json/version")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        let ticket = st.key.ticket("root@pam", now_s());
        let req = Request::get("/api2/json/version")
            .header("Cookie", format!("PVEAuthCookie={ticket}"))
            .body(Body::empty())
            .unwrap();
        let (code, body) = call(&st, req).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["data"]["release"], "9.1");
        // The node actor is not running: a clean 503, not a hang or a panic.
        let req = Request::get("/api2/json/nodes/n1/status")
            .header("Cookie", format!("PVEAuthCookie={ticket}"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(call(&st, req).await.0, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn login_validation_errors() {
        let (_d, st) = state().await;
        let req = Request::post("/api2/json/access/ticket")
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(Body::from("username=root%40pam&extra=1"))
            .unwrap();
        let (code, body) = call(&st, req).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert_eq!(
            body["errors"]["password"],
            "property is missing and it is not optional"
        );
        assert!(body["errors"]["extra"].is_string());
    }
}
