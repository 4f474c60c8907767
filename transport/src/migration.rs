//! The `Migration` service: live migration between nodes, relayed by the server.
//!
//! The source node calls it over its mutual-TLS session ([`MigrationClient`]); the server
//! ([`MigrationSvc`] over a [`MigrationRelay`]) checks the caller against the VM record and
//! performs the call on the target node. Only the three control calls travel here: the
//! RAM stream goes directly between the two nodes' QEMUs.
//!
//! Errors keep their kind across the wire: the relay's refusal of the caller
//! (`PermissionDenied`), a bad request (`InvalidArgument`), the target's own refusal or
//! failure (`FailedPrecondition`, its message passed on verbatim) and an unreachable
//! target or server (`Unavailable` and transport failures).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use thiserror::Error;
use tonic::{Code, Request, Response, Status};

use crate::grpc::{GrpcTransport, PeerInfo, chain, pb};
use crate::{LinkError, NodeCredentials, PeerIdentity};

/// Bound on one relayed call: preparing starts a QEMU on the target (seconds), and the
/// server's own call to an agent is bounded by its forwarding timeout.
pub const MIGRATION_CALL_TIMEOUT_MS: u64 = 90_000;
/// Largest message: a VM configuration is a few KiB.
pub const MAX_MIGRATION_MESSAGE_BYTES: usize = 1024 * 1024;

/// Why a relayed migration call failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RelayError {
    /// The caller may not do this (it does not hold the VM, ...).
    #[error("the server refused the migration call: {0}")]
    Refused(String),
    #[error("the migration call is invalid: {0}")]
    Invalid(String),
    /// The target node's own refusal or failure, verbatim.
    #[error("{0}")]
    Target(String),
    /// The target node or the server cannot be reached.
    #[error("{0}")]
    Unreachable(String),
}

/// A target that accepted an incoming migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingReply {
    pub uri: String,
    pub tls_hostname: Option<String>,
}

/// The server's side: performs each call on the target node for `caller`.
#[async_trait]
pub trait MigrationRelay: Send + Sync + 'static {
    async fn prepare_incoming(
        &self,
        caller: PeerIdentity,
        vmid: u32,
        target: String,
        config: BTreeMap<String, String>,
        generation: u64,
    ) -> Result<IncomingReply, RelayError>;
    async fn finish_incoming(
        &self,
        caller: PeerIdentity,
        vmid: u32,
        target: String,
        generation: u64,
    ) -> Result<(), RelayError>;
    async fn abort_incoming(
        &self,
        caller: PeerIdentity,
        vmid: u32,
        target: String,
    ) -> Result<(), RelayError>;
}

// ---------------------------------------------------------------------------------------
// server

/// The `Migration` service over a relay.
pub struct MigrationSvc(pub Arc<dyn MigrationRelay>);

fn caller<T>(request: &Request<T>) -> Result<PeerIdentity, Status> {
    request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.identity.clone())
        .ok_or_else(|| {
            Status::unauthenticated(
                "migration calls need a node certificate signed by the cluster CA (join first)",
            )
        })
}

fn status_of(e: RelayError) -> Status {
    match e {
        RelayError::Refused(m) => Status::permission_denied(m),
        RelayError::Invalid(m) => Status::invalid_argument(m),
        RelayError::Target(m) => Status::failed_precondition(m),
        RelayError::Unreachable(m) => Status::unavailable(m),
    }
}

fn relay_error(status: Status) -> RelayError {
    let msg = if status.message().is_empty() {
        chain(&status)
    } else {
        status.message().to_string()
    };
    match status.code() {
        Code::PermissionDenied | Code::Unauthenticated => RelayError::Refused(msg),
        Code::InvalidArgument => RelayError::Invalid(msg),
        Code::FailedPrecondition => RelayError::Target(msg),
        _ => RelayError::Unreachable(msg),
    }
}

#[tonic::async_trait]
impl pb::migration_server::Migration for MigrationSvc {
    async fn prepare_incoming(
        &self,
        request: Request<pb::PrepareIncomingRequest>,
    ) -> Result<Response<pb::PrepareIncomingReply>, Status> {
        let peer = caller(&request)?;
        let r = request.into_inner();
        let reply = self
            .0
            .prepare_incoming(
                peer,
                r.vmid,
                r.target,
                r.config.into_iter().collect(),
                r.generation,
            )
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::PrepareIncomingReply {
            uri: reply.uri,
            tls_hostname: reply.tls_hostname.unwrap_or_default(),
        }))
    }

    async fn finish_incoming(
        &self,
        request: Request<pb::FinishIncomingRequest>,
    ) -> Result<Response<pb::MigrationAck>, Status> {
        let peer = caller(&request)?;
        let r = request.into_inner();
        self.0
            .finish_incoming(peer, r.vmid, r.target, r.generation)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::MigrationAck {}))
    }

    async fn abort_incoming(
        &self,
        request: Request<pb::AbortIncomingRequest>,
    ) -> Result<Response<pb::MigrationAck>, Status> {
        let peer = caller(&request)?;
        let r = request.into_inner();
        self.0
            .abort_incoming(peer, r.vmid, r.target)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::MigrationAck {}))
    }
}

// ---------------------------------------------------------------------------------------
// client

/// A node's client of the server's `Migration` service (one lazily connected channel).
#[derive(Clone)]
pub struct MigrationClient {
    client: pb::migration_client::MigrationClient<tonic::transport::Channel>,
}

impl std::fmt::Debug for MigrationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationClient").finish_non_exhaustive()
    }
}

impl MigrationClient {
    /// A client of the service at `endpoint`, authenticated by `creds`. Connects at the
    /// first call, so it can be made while the server is down.
    pub async fn connect(endpoint: &str, creds: &NodeCredentials) -> Result<Self, LinkError> {
        let transport = GrpcTransport {
            request_timeout_ms: MIGRATION_CALL_TIMEOUT_MS,
            ..GrpcTransport::default()
        };
        let tls =
            crate::tls::node_client_config(creds).map_err(|e| LinkError::Credentials(chain(&e)))?;
        let channel = transport.channel_with(endpoint, tls, true).await?;
        Ok(MigrationClient {
            client: pb::migration_client::MigrationClient::new(channel)
                .max_decoding_message_size(MAX_MIGRATION_MESSAGE_BYTES),
        })
    }

    pub async fn prepare_incoming(
        &self,
        vmid: u32,
        target: &str,
        config: BTreeMap<String, String>,
        generation: u64,
    ) -> Result<IncomingReply, RelayError> {
        let reply = self
            .client
            .clone()
            .prepare_incoming(pb::PrepareIncomingRequest {
                vmid,
                target: target.to_string(),
                config: config.into_iter().collect(),
                generation,
            })
            .await
            .map_err(relay_error)?
            .into_inner();
        Ok(IncomingReply {
            uri: reply.uri,
            tls_hostname: Some(reply.tls_hostname).filter(|h| !h.is_empty()),
        })
    }

    pub async fn finish_incoming(
        &self,
        vmid: u32,
        target: &str,
        generation: u64,
    ) -> Result<(), RelayError> {
        self.client
            .clone()
            .finish_incoming(pb::FinishIncomingRequest {
                vmid,
                target: target.to_string(),
                generation,
            })
            .await
            .map_err(relay_error)?;
        Ok(())
    }

    pub async fn abort_incoming(&self, vmid: u32, target: &str) -> Result<(), RelayError> {
        self.client
            .clone()
            .abort_incoming(pb::AbortIncomingRequest {
                vmid,
                target: target.to_string(),
            })
            .await
            .map_err(relay_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_survive_the_wire() {
        for e in [
            RelayError::Refused("node 'n3' does not hold VM 100".into()),
            RelayError::Invalid("no target".into()),
            RelayError::Target("VM 100 is already present on node 'n2'".into()),
            RelayError::Unreachable("node 'n2' is offline".into()),
        ] {
            assert_eq!(relay_error(status_of(e.clone())), e);
        }
        assert!(matches!(
            relay_error(Status::deadline_exceeded("")),
            RelayError::Unreachable(_)
        ));
    }
}
