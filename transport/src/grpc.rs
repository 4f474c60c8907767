//! The real transport: tonic/prost gRPC over our own rustls streams, so the server can
//! read the verified client certificate of each connection and the client can pin the CA.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::server::Connected;
use tonic::{Code, Request, Response, Status};

use crate::{
    ClusterService, Heartbeat, HeartbeatAck, JoinGrant, JoinRequest, LinkError, NodeCredentials,
    NodeLink, NodeLoad, PeerIdentity, ServiceError, Transport,
};

/// Code generated from `proto/gpve.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("gpve.v1");
}

/// The default gRPC port of the server.
pub const DEFAULT_GRPC_PORT: u16 = 8007;
/// Largest message either side accepts: certificates and status are a few KiB.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Handshakes in flight beyond this wait for the accept queue.
pub const HANDSHAKE_QUEUE: usize = 64;

/// Failures of the gRPC server.
#[derive(Debug, Error)]
pub enum GrpcError {
    #[error("the gRPC server failed")]
    Serve(#[from] tonic::transport::Error),
}

// ---------------------------------------------------------------------------------------
// server

/// What the server knows about a connection, attached to each of its requests.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// From a client certificate the TLS layer verified against the cluster CA.
    pub identity: Option<PeerIdentity>,
}

/// A server-side TLS connection with its peer information.
struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

fn status_of(e: ServiceError) -> Status {
    match e {
        ServiceError::Refused(m) => Status::permission_denied(m),
        ServiceError::Unauthenticated(m) => Status::unauthenticated(m),
        ServiceError::Invalid(m) => Status::invalid_argument(m),
        ServiceError::Unavailable(m) => Status::unavailable(m),
    }
}

struct JoinSvc(Arc<dyn ClusterService>);
struct NodeSvc(Arc<dyn ClusterService>);

#[tonic::async_trait]
impl pb::join_server::Join for JoinSvc {
    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinReply>, Status> {
        let r = request.into_inner();
        let grant = self
            .0
            .join(JoinRequest {
                token: r.token,
                node_name: r.node_name,
                csr_pem: r.csr_pem,
            })
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::JoinReply {
            node_name: grant.node_name,
            cert_pem: grant.cert_pem,
            ca_pem: grant.ca_pem,
            server_endpoint: grant.server_endpoint,
            cluster_name: grant.cluster_name.unwrap_or_default(),
        }))
    }
}

#[tonic::async_trait]
impl pb::node_server::Node for NodeSvc {
    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.identity.clone())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "node requests need a node certificate signed by the cluster CA (join first)",
                )
            })?;
        let r = request.into_inner();
        let load = r.status.unwrap_or_default();
        let ack = self
            .0
            .heartbeat(
                peer,
                Heartbeat {
                    seq: r.seq,
                    api_endpoint: r.api_endpoint,
                    load: NodeLoad {
                        cpu: load.cpu,
                        maxcpu: load.maxcpu,
                        mem_bytes: load.mem,
                        maxmem_bytes: load.maxmem,
                        uptime_s: load.uptime_s,
                        version: load.version,
                    },
                },
            )
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::HeartbeatReply {
            node: ack.node,
            lease_generation: ack.lease_generation,
            lease_deadline_ms: ack.lease_deadline_ms,
            lease_ttl_ms: ack.lease_ttl_ms,
            cordoned: ack.cordoned,
        }))
    }
}

/// Serve `Join`, `Node` (and `Store`, `Migration` when the service has them) on `listener` until `shutdown` resolves. Each TLS handshake
/// runs in its own task, bounded by `handshake_timeout_ms`, so a slow client delays no
/// one else.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: Arc<dyn ClusterService>,
    handshake_timeout_ms: u64,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GrpcError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<TlsConn, std::io::Error>>(HANDSHAKE_QUEUE);
    let acceptor = TlsAcceptor::from(tls);
    let accept = tokio::spawn(async move {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accepting a gRPC connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let timeout = Duration::from_millis(handshake_timeout_ms);
                match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let identity = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(crate::tls::peer_identity);
                        let info = PeerInfo {
                            remote: Some(remote),
                            identity,
                        };
                        let _ = tx.send(Ok(TlsConn { stream, info })).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%remote, error = %e, "gRPC TLS handshake refused")
                    }
                    Err(_) => tracing::info!(%remote, "gRPC TLS handshake timed out"),
                }
            });
        }
    });
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
    let store = service.store().map(|store| {
        pb::store_server::StoreServer::new(crate::store::StoreSvc::new(store))
            .max_decoding_message_size(crate::store::MAX_STORE_MESSAGE_BYTES)
            .max_encoding_message_size(crate::store::MAX_STORE_MESSAGE_BYTES)
    });
    let migration = service.migration().map(|relay| {
        pb::migration_server::MigrationServer::new(crate::migration::MigrationSvc(relay))
            .max_decoding_message_size(crate::migration::MAX_MIGRATION_MESSAGE_BYTES)
    });
    let result = tonic::transport::Server::builder()
        .add_service(
            pb::join_server::JoinServer::new(JoinSvc(service.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::node_server::NodeServer::new(NodeSvc(service))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_optional_service(store)
        .add_optional_service(migration)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    accept.abort();
    Ok(result?)
}

// ---------------------------------------------------------------------------------------
// client

/// Every cause of an error on one line (tonic's own message is just "transport error").
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

pub(crate) fn link_error(status: Status) -> LinkError {
    let msg = status.message().to_string();
    match status.code() {
        Code::PermissionDenied => LinkError::Refused(msg),
        Code::Unauthenticated => LinkError::Unauthenticated(msg),
        Code::InvalidArgument | Code::FailedPrecondition => LinkError::Invalid(msg),
        _ => LinkError::Unavailable(if msg.is_empty() { chain(&status) } else { msg }),
    }
}

/// gRPC client settings.
#[derive(Debug, Clone)]
pub struct GrpcTransport {
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
}

impl Default for GrpcTransport {
    fn default() -> Self {
        GrpcTransport {
            connect_timeout_ms: 5_000,
            request_timeout_ms: 5_000,
        }
    }
}

impl GrpcTransport {
    /// A channel to `endpoint` over TLS with `tls`; `lazy` connects at the first call
    /// (and reconnects after failures either way).
    pub(crate) async fn channel_with(
        &self,
        endpoint: &str,
        tls: Arc<rustls::ClientConfig>,
        lazy: bool,
    ) -> Result<tonic::transport::Channel, LinkError> {
        let connect_err = |reason: String| LinkError::Connect {
            endpoint: endpoint.to_string(),
            reason,
        };
        let ep = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
            .map_err(|e| connect_err(format!("not a host:port ({e})")))?
            .connect_timeout(Duration::from_millis(self.connect_timeout_ms))
            .timeout(Duration::from_millis(self.request_timeout_ms))
            .tcp_nodelay(true);
        let connector = tower::service_fn(move |uri: tonic::transport::Uri| {
            let tls = tls.clone();
            async move {
                let host = uri
                    .host()
                    .unwrap_or("localhost")
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                let port = uri.port_u16().unwrap_or(DEFAULT_GRPC_PORT);
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                let name = ServerName::try_from(crate::tls::SERVER_NAME)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let stream = TlsConnector::from(tls).connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        if lazy {
            return Ok(ep.connect_with_connector_lazy(connector));
        }
        ep.connect_with_connector(connector)
            .await
            .map_err(|e| connect_err(chain(&e)))
    }
}

#[async_trait]
impl Transport for GrpcTransport {
    async fn join(
        &self,
        endpoint: &str,
        ca_fingerprint: &str,
        req: JoinRequest,
    ) -> Result<JoinGrant, LinkError> {
        let tls = crate::tls::join_client_config(ca_fingerprint)
            .map_err(|e| LinkError::Credentials(chain(&e)))?;
        let channel = self.channel_with(endpoint, tls, false).await?;
        let mut client =
            pb::join_client::JoinClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let reply = client
            .join(pb::JoinRequest {
                token: req.token,
                node_name: req.node_name,
                csr_pem: req.csr_pem,
            })
            .await
            .map_err(link_error)?
            .into_inner();
        Ok(JoinGrant {
            node_name: reply.node_name,
            cert_pem: reply.cert_pem,
            ca_pem: reply.ca_pem,
            server_endpoint: reply.server_endpoint,
            cluster_name: Some(reply.cluster_name).filter(|s| !s.is_empty()),
        })
    }

    async fn connect(
        &self,
        endpoint: &str,
        creds: &NodeCredentials,
    ) -> Result<Arc<dyn NodeLink>, LinkError> {
        let tls =
            crate::tls::node_client_config(creds).map_err(|e| LinkError::Credentials(chain(&e)))?;
        let channel = self.channel_with(endpoint, tls, false).await?;
        Ok(Arc::new(GrpcLink {
            client: pb::node_client::NodeClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        }))
    }
}

/// A node session over one HTTP/2 connection.
struct GrpcLink {
    client: pb::node_client::NodeClient<tonic::transport::Channel>,
}

#[async_trait]
impl NodeLink for GrpcLink {
    async fn heartbeat(&self, hb: Heartbeat) -> Result<HeartbeatAck, LinkError> {
        // A clone shares the connection; tonic clients need `&mut self`.
        let mut client = self.client.clone();
        let reply = client
            .heartbeat(pb::HeartbeatRequest {
                seq: hb.seq,
                api_endpoint: hb.api_endpoint,
                status: Some(pb::NodeStatus {
                    cpu: hb.load.cpu,
                    maxcpu: hb.load.maxcpu,
                    mem: hb.load.mem_bytes,
                    maxmem: hb.load.maxmem_bytes,
                    uptime_s: hb.load.uptime_s,
                    version: hb.load.version,
                }),
            })
            .await
            .map_err(link_error)?
            .into_inner();
        Ok(HeartbeatAck {
            node: reply.node,
            lease_generation: reply.lease_generation,
            lease_deadline_ms: reply.lease_deadline_ms,
            lease_ttl_ms: reply.lease_ttl_ms,
            cordoned: reply.cordoned,
        })
    }
}
