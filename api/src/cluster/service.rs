//! The server's side of the node protocol ([`ClusterService`]): joins and heartbeats,
//! checked against the store and the cluster files.

use std::sync::Arc;

use gpve_store::Store;
use gpve_transport::async_trait;
use gpve_transport::pki::{ClusterCa, pem_fingerprint};
use gpve_transport::token::BootstrapToken;
use gpve_transport::{
    ClusterService, Heartbeat, HeartbeatAck, JoinGrant, JoinRequest, PeerIdentity, ServiceError,
};

use super::files::ClusterFiles;
use super::monitor::{MonitorMsg, Monitors};
use super::now_ms;
use super::records::{Lease, NodeRecord, api_key, lease_key, load_key, node_key};

/// Joins and heartbeats for one server.
pub struct ServerCluster {
    pub store: Store,
    pub ca: Arc<ClusterCa>,
    pub files: ClusterFiles,
    pub monitors: Monitors,
    /// The server's own node: no agent may take its name.
    pub local_node: String,
    pub cluster_name: Option<String>,
    /// What joined agents are told to dial; empty: the address they joined through.
    pub advertise: Option<String>,
    pub lease_ttl_ms: u64,
}

impl std::fmt::Debug for ServerCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCluster")
            .field("local_node", &self.local_node)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Unavailable(e.to_string())
}

#[async_trait]
impl ClusterService for ServerCluster {
    async fn join(&self, req: JoinRequest) -> Result<JoinGrant, ServiceError> {
        let token: BootstrapToken = req
            .token
            .parse()
            .map_err(|e: gpve_transport::token::TokenError| ServiceError::Invalid(e.to_string()))?;
        let node = req.node_name.clone();
        if !crate::schema::is_node(&node) {
            return Err(ServiceError::Invalid(format!(
                "invalid node name '{node}' (letters, digits and '-', at most 64 characters)"
            )));
        }
        if node == self.local_node {
            return Err(ServiceError::Refused(format!(
                "'{node}' is the server's own node name; choose another --node-name"
            )));
        }
        // Sign before claiming: a bad CSR must not spend the token.
        let cert_pem = self
            .ca
            .sign_node_csr(&req.csr_pem, &node)
            .map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let fingerprint = pem_fingerprint(&cert_pem).map_err(unavailable)?;
        let claim = match self
            .files
            .claim_token(&self.ca, &token, crate::state::now_s())
            .map_err(unavailable)?
        {
            Ok(claim) => claim,
            Err(refusal) => {
                tracing::info!(%node, token = %token.id, reason = %refusal, "join refused");
                return Err(ServiceError::Refused(refusal.to_string()));
            }
        };
        let record = NodeRecord {
            node: node.clone(),
            joined_at_s: crate::state::now_s(),
            cert_fingerprint: fingerprint,
            cordoned: false,
        };
        match self.store.create_json(&node_key(&node), &record).await {
            Ok(true) => claim.commit(),
            Ok(false) => {
                claim.release();
                return Err(ServiceError::Refused(format!(
                    "a node named '{node}' already joined; choose another --node-name"
                )));
            }
            Err(e) => {
                claim.release();
                return Err(unavailable(e));
            }
        }
        tracing::info!(%node, token = %token.id, "node joined");
        if let Err(e) = self.monitors.ensure(&node).await {
            tracing::warn!(%node, error = %e, "starting the node monitor failed");
        }
        Ok(JoinGrant {
            node_name: node,
            cert_pem,
            ca_pem: self.ca.cert_pem.clone(),
            server_endpoint: self.advertise.clone().unwrap_or_default(),
            cluster_name: self.cluster_name.clone(),
        })
    }

    /// Agents run their node tree against the server's store.
    fn store(&self) -> Option<Store> {
        Some(self.store.clone())
    }

    /// The relay finds this server's `migration` actor through the monitors' directory
    /// (the server's one directory) at each call.
    fn migration(&self) -> Option<Arc<dyn gpve_transport::migration::MigrationRelay>> {
        Some(Arc::new(super::migration::ServerRelay {
            store: self.store.clone(),
            directory: self.monitors.directory.clone(),
        }))
    }

    async fn heartbeat(
        &self,
        peer: PeerIdentity,
        hb: Heartbeat,
    ) -> Result<HeartbeatAck, ServiceError> {
        let ttl_ms = self.lease_ttl_ms;
        let node = peer.node.clone();
        let load = hb.load.clone();
        let api = Some(hb.api_endpoint.clone()).filter(|a| !a.is_empty());
        let renewed = self
            .store
            .transact(move |tx| {
                let (peer, load, api) = (peer.clone(), load.clone(), api.clone());
                Box::pin(async move {
                    let Some(record) = tx.get_json::<NodeRecord>(&node_key(&peer.node)).await?
                    else {
                        return Ok(Err(format!(
                            "node '{}' is not a member of this cluster (removed?); join again",
                            peer.node
                        )));
                    };
                    if record.cert_fingerprint != peer.cert_fingerprint {
                        return Ok(Err(format!(
                            "this certificate is not the one issued to '{}' when it joined",
                            peer.node
                        )));
                    }
                    let now = now_ms();
                    let old = tx.get_json::<Lease>(&lease_key(&peer.node)).await?;
                    let generation = match &old {
                        Some(l) if l.valid_at(now) => l.generation,
                        Some(l) => l.generation + 1,
                        None => 1,
                    };
                    let lease = Lease {
                        deadline_ms: now + ttl_ms as i64,
                        generation,
                        renewed_at_ms: now,
                        ttl_ms,
                    };
                    tx.put_json(&lease_key(&peer.node), &lease)?;
                    tx.put_json(&load_key(&peer.node), &load)?;
                    // Written only when it changes: the API route is read on every
                    // forwarded request.
                    let api_k = api_key(&peer.node);
                    if tx.get_json::<String>(&api_k).await? != api {
                        match &api {
                            Some(a) => tx.put_json(&api_k, a)?,
                            None => tx.clear(&api_k),
                        }
                    }
                    Ok(Ok((lease, record.cordoned)))
                })
            })
            .await
            .map_err(unavailable)?;
        let (lease, cordoned) = renewed.map_err(ServiceError::Unauthenticated)?;
        match self.monitors.ensure(&node).await {
            Ok(m) => {
                let _ = m.cast(MonitorMsg::Renewed {
                    lease: lease.clone(),
                    load: hb.load,
                });
            }
            Err(e) => tracing::warn!(%node, error = %e, "node monitor unavailable"),
        }
        Ok(HeartbeatAck {
            node,
            lease_generation: lease.generation,
            lease_deadline_ms: lease.deadline_ms,
            lease_ttl_ms: lease.ttl_ms,
            cordoned,
        })
    }
}
