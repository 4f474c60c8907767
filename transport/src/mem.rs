//! An in-memory transport with the gRPC transport's contract: the same CA pinning on join
//! and the same certificate verification for node sessions, without sockets. The
//! simulation registers servers on a [`MemNetwork`] and can cut an endpoint off.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::pki::pem_fingerprint;
use crate::{
    ClusterService, Heartbeat, HeartbeatAck, JoinGrant, JoinRequest, LinkError, NodeCredentials,
    NodeLink, PeerIdentity, Transport,
};

#[derive(Clone)]
struct MemServer {
    ca_pem: String,
    service: Arc<dyn ClusterService>,
    reachable: bool,
}

/// Endpoints of in-memory servers. Cheap to clone; clones share the endpoints.
#[derive(Clone, Default)]
pub struct MemNetwork {
    servers: Arc<Mutex<BTreeMap<String, MemServer>>>,
}

impl std::fmt::Debug for MemNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemNetwork").finish_non_exhaustive()
    }
}

impl MemNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serve `service` at `endpoint` with the cluster CA `ca_pem`.
    pub fn register(&self, endpoint: &str, ca_pem: &str, service: Arc<dyn ClusterService>) {
        self.lock().insert(
            endpoint.to_string(),
            MemServer {
                ca_pem: ca_pem.to_string(),
                service,
                reachable: true,
            },
        );
    }

    /// Cut `endpoint` off (`false`) or heal it (`true`), like a network partition.
    pub fn set_reachable(&self, endpoint: &str, reachable: bool) {
        if let Some(s) = self.lock().get_mut(endpoint) {
            s.reachable = reachable;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, MemServer>> {
        self.servers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn server(&self, endpoint: &str) -> Result<MemServer, LinkError> {
        match self.lock().get(endpoint) {
            Some(s) if s.reachable => Ok(s.clone()),
            Some(_) => Err(LinkError::Connect {
                endpoint: endpoint.to_string(),
                reason: "the endpoint is partitioned away".into(),
            }),
            None => Err(LinkError::Connect {
                endpoint: endpoint.to_string(),
                reason: "connection refused (no server registered)".into(),
            }),
        }
    }
}

/// An agent's transport over a [`MemNetwork`].
#[derive(Debug, Clone)]
pub struct MemTransport {
    pub network: MemNetwork,
}

#[async_trait]
impl Transport for MemTransport {
    async fn join(
        &self,
        endpoint: &str,
        ca_fingerprint: &str,
        req: JoinRequest,
    ) -> Result<JoinGrant, LinkError> {
        let server = self.network.server(endpoint)?;
        let fp = pem_fingerprint(&server.ca_pem)
            .map_err(|e| LinkError::Unavailable(format!("the server's CA is unusable: {e}")))?;
        if fp != ca_fingerprint.to_ascii_lowercase() {
            return Err(LinkError::Connect {
                endpoint: endpoint.to_string(),
                reason: format!(
                    "the server did not present the cluster CA pinned by the token (sha256 {ca_fingerprint})"
                ),
            });
        }
        Ok(server.service.join(req).await?)
    }

    async fn connect(
        &self,
        endpoint: &str,
        creds: &NodeCredentials,
    ) -> Result<Arc<dyn NodeLink>, LinkError> {
        let server = self.network.server(endpoint)?;
        // What the TLS server does with a client certificate: verify it against its CA.
        let peer = crate::tls::verify_node_cert(&server.ca_pem, &creds.cert_pem).map_err(|e| {
            LinkError::Connect {
                endpoint: endpoint.to_string(),
                reason: e.to_string(),
            }
        })?;
        Ok(Arc::new(MemLink {
            network: self.network.clone(),
            endpoint: endpoint.to_string(),
            peer,
        }))
    }
}

struct MemLink {
    network: MemNetwork,
    endpoint: String,
    peer: PeerIdentity,
}

#[async_trait]
impl NodeLink for MemLink {
    async fn heartbeat(&self, hb: Heartbeat) -> Result<HeartbeatAck, LinkError> {
        let server = self.network.server(&self.endpoint)?;
        Ok(server.service.heartbeat(self.peer.clone(), hb).await?)
    }
}
