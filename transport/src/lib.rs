//! Node-to-server sessions for a gpve cluster (issue 6, first part):
//!
//! - [`pki`]: the cluster CA, node certificates from CSRs, certificate fingerprints;
//! - [`token`]: bootstrap tokens `gpve1.<ca-sha256-hex>.<id>.<secret>` (k3s/kubeadm style);
//! - [`tls`]: rustls configurations: the join client pins the CA by fingerprint (no
//!   trust-on-first-use), node sessions are mutual TLS with CA-signed certificates;
//! - [`grpc`]: the real transport, tonic/prost over those TLS streams (`Join`, `Node`);
//! - [`store`]: the server's store for agents: the gRPC `Store` service and the client
//!   wire of `gpve_store`'s remote backend;
//! - [`mem`]: an in-memory transport with the same contract, for the simulation;
//! - [`session`]: node sessions carrying `ractor_cluster` over mutual TLS (the
//!   supervision plane: the server calls each node's introspection service), behind the
//!   [`session::NodeSessions`] seam with an in-process implementation.
//!
//! The seam: the server implements [`ClusterService`] (what to do with a join or a
//! heartbeat); an agent talks through a [`Transport`] (join, connect) and a [`NodeLink`]
//! (heartbeats). `tests/contract.rs` runs one suite against both transports.
//!
//! Not here yet: the server→agent watch stream.

pub mod grpc;
pub mod mem;
pub mod migration;
pub mod pki;
pub mod session;
pub mod store;
pub mod tls;
pub mod token;

use std::sync::Arc;

pub use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What an agent sends to join: the token, the name it wants and a CSR for its own key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    pub token: String,
    pub node_name: String,
    pub csr_pem: String,
}

/// What a successful join returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinGrant {
    pub node_name: String,
    /// The node's certificate, signed by the cluster CA.
    pub cert_pem: String,
    pub ca_pem: String,
    /// `host:port` of the server's gRPC service for the node session.
    pub server_endpoint: String,
    pub cluster_name: Option<String>,
}

/// A node's load as it reports it with each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeLoad {
    /// CPU usage, 0.0..=1.0 of all CPUs.
    pub cpu: f64,
    pub maxcpu: u64,
    pub mem_bytes: u64,
    pub maxmem_bytes: u64,
    pub uptime_s: u64,
    pub version: String,
}

/// One heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Increases by one per heartbeat of an agent process (for logs and tests).
    pub seq: u64,
    pub load: NodeLoad,
    /// `host:port` of the agent's API listener, where the server forwards API calls for
    /// this node; empty: the agent serves none.
    pub api_endpoint: String,
}

/// The server's answer: the renewed lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// The node name the server took from the certificate.
    pub node: String,
    /// Bumped whenever the lease is taken again after it expired.
    pub lease_generation: u64,
    /// Unix time in milliseconds until which the lease holds.
    pub lease_deadline_ms: i64,
    pub lease_ttl_ms: u64,
    pub cordoned: bool,
}

/// Who sent a node request, from a certificate the cluster CA signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The certificate's common name.
    pub node: String,
    /// Lowercase hex SHA-256 of the certificate (DER).
    pub cert_fingerprint: String,
}

/// Files an agent keeps after joining.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCredentials {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Why a [`ClusterService`] refused a request; the transport carries the kind and the
/// message to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ServiceError {
    #[error("the request was refused: {0}")]
    Refused(String),
    #[error("the node is not known to the cluster: {0}")]
    Unauthenticated(String),
    #[error("the request is invalid: {0}")]
    Invalid(String),
    #[error("the server cannot answer now: {0}")]
    Unavailable(String),
}

/// Why an agent's request failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LinkError {
    #[error("cannot reach the server at {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("the server refused the request: {0}")]
    Refused(String),
    #[error("the server does not accept this node: {0}")]
    Unauthenticated(String),
    #[error("the server found the request invalid: {0}")]
    Invalid(String),
    #[error("the server is unavailable: {0}")]
    Unavailable(String),
    #[error("the local credentials are unusable: {0}")]
    Credentials(String),
}

impl LinkError {
    /// Worth retrying later (network or server trouble), as opposed to a refusal.
    pub fn is_transient(&self) -> bool {
        matches!(self, LinkError::Connect { .. } | LinkError::Unavailable(_))
    }
}

impl From<ServiceError> for LinkError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Refused(m) => LinkError::Refused(m),
            ServiceError::Unauthenticated(m) => LinkError::Unauthenticated(m),
            ServiceError::Invalid(m) => LinkError::Invalid(m),
            ServiceError::Unavailable(m) => LinkError::Unavailable(m),
        }
    }
}

/// The server's side of the protocol, whatever carries it.
#[async_trait]
pub trait ClusterService: Send + Sync + 'static {
    /// Check the token and sign the node's CSR.
    async fn join(&self, req: JoinRequest) -> Result<JoinGrant, ServiceError>;
    /// Renew `peer`'s lease and record its load. `peer` comes from its certificate.
    async fn heartbeat(
        &self,
        peer: PeerIdentity,
        hb: Heartbeat,
    ) -> Result<HeartbeatAck, ServiceError>;
    /// The store agents reach through the `Store` service; `None` serves no store.
    fn store(&self) -> Option<gpve_store::Store> {
        None
    }
    /// The relay behind the `Migration` service; `None` serves no such service.
    fn migration(&self) -> Option<Arc<dyn migration::MigrationRelay>> {
        None
    }
}

/// An agent's way to the server.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Join through `endpoint`, accepting only a server whose chain holds the CA with
    /// SHA-256 fingerprint `ca_fingerprint` (lowercase hex).
    async fn join(
        &self,
        endpoint: &str,
        ca_fingerprint: &str,
        req: JoinRequest,
    ) -> Result<JoinGrant, LinkError>;
    /// Open a node session authenticated by `creds`.
    async fn connect(
        &self,
        endpoint: &str,
        creds: &NodeCredentials,
    ) -> Result<Arc<dyn NodeLink>, LinkError>;
}

/// An open node session.
#[async_trait]
pub trait NodeLink: Send + Sync + 'static {
    async fn heartbeat(&self, hb: Heartbeat) -> Result<HeartbeatAck, LinkError>;
}

/// Code generated from `proto/watch.proto`: the user-facing watch stream of cluster events
/// (served by the API next to REST).
#[allow(clippy::all, missing_docs)]
pub mod watch_pb {
    tonic::include_proto!("gpve.watch.v1");
}
