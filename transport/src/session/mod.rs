//! Node sessions: the cluster's supervision plane (issue 6, build item 2).
//!
//! Every node process runs one `ractor_cluster` [`NodeServer`](ractor_cluster::NodeServer)
//! (ractor's registry and process groups are process-global, so one per process). The
//! server accepts mutual-TLS connections on its session port (default
//! [`DEFAULT_SESSION_PORT`]): the client must present a certificate the cluster CA signed
//! (a node certificate from the join), and the stream goes to the `NodeServer` as an
//! external connection. An agent dials with its node certificate and dials again with
//! backoff after any drop. See [`cluster`].
//!
//! What goes over a session is one request/reply service per node ([`NodeService`]):
//! opaque bytes (JSON by convention) that the caller reaches through [`NodeSessions`].
//! That trait is the seam: [`cluster::ClusterSessions`] calls over `ractor_cluster`,
//! [`mem::MemSessions`] calls in-process services (tests, the simulation).
//!
//! Liveness is not the session's business: `ractor_cluster` does not notice a silent
//! partition (its pings only log latency). Every call has a timeout in milliseconds, and
//! node liveness stays with the heartbeat leases.

pub mod cluster;
pub mod mem;

use async_trait::async_trait;
use thiserror::Error;

/// The session port the server listens on unless configured otherwise (next to the gRPC
/// port 8007).
pub const DEFAULT_SESSION_PORT: u16 = 8008;
/// How long a call over a session waits for the answer unless the caller says otherwise.
pub const DEFAULT_CALL_TIMEOUT_MS: u64 = 3_000;
/// Largest request or reply a call carries, in bytes (a node's actor tree is far smaller).
pub const MAX_CALL_BYTES: usize = 8 * 1024 * 1024;

/// Why a call over a session failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SessionError {
    #[error("node '{node}' has no session with this process")]
    NoSession { node: String },
    #[error("node '{node}' did not answer within {timeout_ms} ms")]
    Timeout { node: String, timeout_ms: u64 },
    #[error("the session to node '{node}' closed during the call")]
    Closed { node: String },
    #[error("node '{node}' refused the call: {reason}")]
    Refused { node: String, reason: String },
    #[error("the session transport failed: {0}")]
    Transport(String),
}

impl SessionError {
    /// The node could not be reached (as opposed to answering with a refusal).
    pub fn is_unreachable(&self) -> bool {
        !matches!(self, SessionError::Refused { .. })
    }
}

/// What a node answers over its session. Requests and replies are opaque to the
/// transport; the caller and the service agree on their encoding.
#[async_trait]
pub trait NodeService: Send + Sync + 'static {
    async fn handle(&self, request: Vec<u8>) -> Vec<u8>;
}

/// The seam: call a node's [`NodeService`] through whatever carries the sessions.
#[async_trait]
pub trait NodeSessions: Send + Sync + 'static {
    /// Send `request` to `node`'s service and wait at most `timeout_ms` for the reply.
    async fn call(
        &self,
        node: &str,
        request: Vec<u8>,
        timeout_ms: u64,
    ) -> Result<Vec<u8>, SessionError>;

    /// Nodes with an open, authenticated session to this process, sorted.
    async fn connected(&self) -> Vec<String>;
}

/// Refuse a request over [`MAX_CALL_BYTES`] before it is sent.
pub(crate) fn check_request_size(request: &[u8]) -> Result<(), SessionError> {
    if request.len() > MAX_CALL_BYTES {
        return Err(SessionError::Transport(format!(
            "the request has {} bytes, more than {MAX_CALL_BYTES}",
            request.len()
        )));
    }
    Ok(())
}

/// The process-group name under which `node`'s service actor is found.
pub fn service_group(node: &str) -> String {
    format!("introspect:{node}")
}
