//! API forwarding between the server and its agents, as Proxmox's pveproxy forwards
//! `/nodes/{node}/...` to the node that runs the guest.
//!
//! On the server ([`Role::Server`]) one middleware ([`layer`]) looks at every
//! `/api2/json/nodes/{node}/...` request for a member node other than its own: it
//! authenticates the caller (and checks the CSRF token of ticket-authenticated writes) as
//! for any request, then sends the request to the agent's API listener (the address the
//! agent reports with its heartbeats, [`crate::cluster::records::node_route`]) over HTTPS
//! with mutual TLS: the server presents a certificate the cluster CA signed for
//! [`gpve_transport::tls::PROXY_CLIENT_NAME`] and accepts only the node's own certificate.
//! The caller's identity travels in [`FORWARDED_IDENTITY_HEADER`]; credentials do not.
//! The agent runs the same router: privileges are checked there, against the same store
//! (one ACL set), and the request is audited once, there.
//!
//! A node whose lease expired, that reported no API address, or that does not answer gets
//! 595 ([`ApiError::NodeOffline`]) naming it. `GET /nodes/{node}` and
//! `GET /nodes/{node}/status` stay on the server, which answers them from the last
//! heartbeat (503 when offline).
//!
//! On an agent ([`Role::Agent`]) the middleware turns the header into a
//! [`ForwardedIdentity`] extension, which the router trusts: the agent's listener admits
//! no other client than the server.
//!
//! Not forwarded: request bodies over [`crate::router::MAX_BODY_BYTES`] (uploads) and
//! WebSocket upgrades.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use thiserror::Error;

use crate::access_db::Identity;
use crate::error::ApiError;
use crate::router::{API_PREFIX, MAX_BODY_BYTES};
use crate::state::AppState;

/// Carries the caller's identity from the server to an agent.
pub const FORWARDED_IDENTITY_HEADER: &str = "x-gpve-forwarded-identity";
/// A forwarded request that takes longer fails with 595 (long work runs as tasks, whose
/// UPID returns at once).
pub const FORWARD_TIMEOUT_MS: u64 = 60_000;
/// How long the server tries to connect to an agent.
pub const FORWARD_CONNECT_TIMEOUT_MS: u64 = 3_000;
/// Idle connections kept per agent.
pub const FORWARD_IDLE_CONNECTIONS: usize = 8;

/// The caller, as the server authenticated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedIdentity(pub Identity);

/// Failures setting up forwarding.
#[derive(Debug, Error)]
pub enum ForwardError {
    #[error("the forwarding TLS configuration is unusable")]
    Tls(#[source] gpve_transport::tls::TlsError),
    #[error("the forwarding client could not be built")]
    Client(#[source] reqwest::Error),
}

/// This process's part in forwarding.
#[derive(Debug)]
pub enum Role {
    /// Forwards other nodes' requests.
    Server(Box<Forwarder>),
    /// Serves requests the server forwarded.
    Agent,
}

/// The server's forwarding client: one HTTPS client per (node, address).
pub struct Forwarder {
    tls: rustls::ClientConfig,
    clients: Mutex<HashMap<(String, SocketAddr), reqwest::Client>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").finish_non_exhaustive()
    }
}

impl Forwarder {
    /// A forwarder from the cluster CA and the server's proxy certificate (PEM).
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Forwarder, ForwardError> {
        let tls = gpve_transport::tls::proxy_client_config(ca_pem, cert_pem, key_pem)
            .map_err(ForwardError::Tls)?;
        Ok(Forwarder {
            tls,
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// A forwarder with a fresh proxy certificate from the cluster CA.
    pub fn from_ca(ca: &gpve_transport::pki::ClusterCa) -> Result<Forwarder, ForwardError> {
        let (cert, key) = ca
            .issue_proxy_client()
            .map_err(|e| ForwardError::Tls(e.into()))?;
        Forwarder::new(&ca.cert_pem, &cert, &key)
    }

    fn client(&self, node: &str, addr: SocketAddr) -> Result<reqwest::Client, ForwardError> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&(node.to_string(), addr)) {
            return Ok(c.clone());
        }
        // The node's certificate names it `{node}.nodes.gpve-cluster`: dial that name at
        // the reported address, so TLS proves the answer comes from that node.
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(self.tls.clone())
            .resolve(&gpve_transport::tls::node_server_name(node), addr)
            .connect_timeout(Duration::from_millis(FORWARD_CONNECT_TIMEOUT_MS))
            .timeout(Duration::from_millis(FORWARD_TIMEOUT_MS))
            .pool_max_idle_per_host(FORWARD_IDLE_CONNECTIONS)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(ForwardError::Client)?;
        clients.insert((node.to_string(), addr), client.clone());
        Ok(client)
    }
}

/// `{"ticket": userid}` or `{"token": {...}}`.
pub fn encode_identity(identity: &Identity) -> String {
    let v = match identity {
        Identity::Ticket { userid } => serde_json::json!({ "ticket": userid }),
        Identity::Token {
            userid,
            tokenid,
            privsep,
        } => serde_json::json!({ "token": {
            "userid": userid, "tokenid": tokenid, "privsep": privsep,
        }}),
    };
    v.to_string()
}

/// The inverse of [`encode_identity`]; `None` for anything else.
pub fn decode_identity(text: &str) -> Option<Identity> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    if let Some(userid) = v.get("ticket").and_then(|u| u.as_str()) {
        return Some(Identity::Ticket {
            userid: userid.to_string(),
        });
    }
    let t = v.get("token")?;
    Some(Identity::Token {
        userid: t.get("userid")?.as_str()?.to_string(),
        tokenid: t.get("tokenid")?.as_str()?.to_string(),
        privsep: t.get("privsep")?.as_bool()?,
    })
}

/// The node of a `/api2/json/nodes/{node}/...` path that the server forwards; `None` for
/// other paths and for the node index and status (served from the last heartbeat).
pub fn forwarded_node<'a>(method: &Method, path: &'a str) -> Option<&'a str> {
    let rest = path.strip_prefix(API_PREFIX)?.strip_prefix("/nodes/")?;
    let (node, sub) = match rest.split_once('/') {
        Some((node, sub)) => (node, sub.trim_end_matches('/')),
        None => (rest, ""),
    };
    if node.is_empty() || sub.is_empty() || (sub == "status" && method == Method::GET) {
        return None;
    }
    Some(node)
}

/// The forwarding middleware (see the module documentation).
pub async fn layer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    match state.forward.get() {
        None => next.run(req).await,
        Some(Role::Agent) => {
            // The server's own calls (never a user's: forwarding always adds the header).
            if req.uri().path() == crate::agent::migration::INTERNAL_PATH
                && !req.headers().contains_key(FORWARDED_IDENTITY_HEADER)
            {
                return crate::agent::migration::serve(&state, req).await;
            }
            let forwarded = req
                .headers()
                .get(FORWARDED_IDENTITY_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(decode_identity);
            if let Some(identity) = forwarded {
                req.extensions_mut().insert(ForwardedIdentity(identity));
            }
            next.run(req).await
        }
        Some(Role::Server(forwarder)) => {
            // Nested routers see a stripped path; the original one names the node.
            let path = req
                .extensions()
                .get::<axum::extract::OriginalUri>()
                .map(|u| u.0.path().to_string())
                .unwrap_or_else(|| req.uri().path().to_string());
            let node = match forwarded_node(req.method(), &path) {
                Some(n) if n != state.config.node_name => n.to_string(),
                _ => return next.run(req).await,
            };
            let route = match crate::cluster::records::node_route(&state.store, &node).await {
                Ok(Some(route)) => route,
                // Not a member: the local router answers (404 no such node).
                Ok(None) => return next.run(req).await,
                Err(e) => {
                    return ApiError::Internal(format!("reading node '{node}' failed: {e}"))
                        .into_response();
                }
            };
            match forward(&state, forwarder, &node, route, req).await {
                Ok(resp) => resp,
                Err(e) => e.into_response(),
            }
        }
    }
}

/// A client for agent `node`'s API listener and the `https://NAME:PORT` base of its URLs;
/// 595 when the node is offline or reported no address.
pub(crate) async fn agent_client(
    forwarder: &Forwarder,
    node: &str,
    route: crate::cluster::records::NodeRoute,
) -> Result<(reqwest::Client, String), ApiError> {
    let offline = |reason: String| ApiError::NodeOffline {
        node: node.to_string(),
        reason,
    };
    let now = crate::cluster::now_ms();
    if !route.lease.as_ref().is_some_and(|l| l.valid_at(now)) {
        return Err(offline("its lease expired".into()));
    }
    let Some(endpoint) = route.api_endpoint else {
        return Err(offline("it reported no API address".into()));
    };
    let addr = tokio::net::lookup_host(endpoint.as_str())
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| offline(format!("its API address {endpoint} does not resolve")))?;
    let client = forwarder
        .client(node, addr)
        .map_err(|e| ApiError::Internal(gpve_actors::storage::error_chain(&e)))?;
    let base = format!(
        "https://{}:{}",
        gpve_transport::tls::node_server_name(node),
        addr.port()
    );
    Ok((client, base))
}

async fn forward(
    state: &AppState,
    forwarder: &Forwarder,
    node: &str,
    route: crate::cluster::records::NodeRoute,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let identity = crate::router::authenticate_for_forwarding(state, &parts).await?;
    let offline = |reason: String| ApiError::NodeOffline {
        node: node.to_string(),
        reason,
    };
    let (client, base) = agent_client(forwarder, node, route).await?;
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::PayloadTooLarge)?;
    let uri = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map(|u| u.0.clone())
        .unwrap_or_else(|| parts.uri.clone());
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = format!("{base}{path_and_query}");
    let mut out = client
        .request(parts.method.clone(), url)
        .header(FORWARDED_IDENTITY_HEADER, encode_identity(&identity))
        .body(body);
    for name in [header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(v) = parts.headers.get(&name) {
            out = out.header(name, v);
        }
    }
    let upstream = out
        .send()
        .await
        .map_err(|e| offline(gpve_actors::storage::error_chain(&e)))?;
    let status = upstream.status();
    let ctype = upstream.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = upstream
        .bytes()
        .await
        .map_err(|e| offline(gpve_actors::storage::error_chain(&e)))?;
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    if let Some(ctype) = ctype {
        resp.headers_mut().insert(header::CONTENT_TYPE, ctype);
    }
    resp.headers_mut().insert(
        HeaderName::from_static("x-gpve-forwarded-to"),
        HeaderValue::from_str(node).unwrap_or(HeaderValue::from_static("-")),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_and_garbage_is_refused() {
        for id in [
            Identity::Ticket {
                userid: "root@pam".into(),
            },
            Identity::Token {
                userid: "u@pve".into(),
                tokenid: "t1".into(),
                privsep: true,
            },
        ] {
            assert_eq!(decode_identity(&encode_identity(&id)), Some(id));
        }
        assert_eq!(decode_identity("root@pam"), None);
        assert_eq!(decode_identity(r#"{"token":{"userid":"u"}}"#), None);
    }

    #[test]
    fn only_node_scoped_paths_are_forwarded() {
        let get = Method::GET;
        assert_eq!(
            forwarded_node(&get, "/api2/json/nodes/n2/qemu/100/status/current"),
            Some("n2")
        );
        assert_eq!(
            forwarded_node(&Method::POST, "/api2/json/nodes/n2/qemu"),
            Some("n2")
        );
        assert_eq!(forwarded_node(&get, "/api2/json/nodes/n2/status"), None);
        assert_eq!(forwarded_node(&get, "/api2/json/nodes/n2"), None);
        assert_eq!(forwarded_node(&get, "/api2/json/nodes/n2/"), None);
        assert_eq!(forwarded_node(&get, "/api2/json/nodes"), None);
        assert_eq!(forwarded_node(&get, "/api2/json/cluster/resources"), None);
        assert_eq!(forwarded_node(&get, "/api/v1/nodes/n2/cordon"), None);
    }
}
