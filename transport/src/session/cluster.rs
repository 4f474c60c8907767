//! Node sessions over mutual TLS carrying `ractor_cluster`.
//!
//! ```text
//!  agent n1                                           server
//!  NodeServer ── duplex ═ pump ═ TLS (node cert) ═══ TLS (CA-verified) ═ pump ═ duplex ── NodeServer
//!  └ NodeServiceActor in pg group introspect:n1  ──── synced by ractor_cluster ───→ RemoteActor
//! ```
//!
//! - TLS: TLS 1.3, ALPN [`SESSION_ALPN`]. The server requires a client certificate signed
//!   by the cluster CA and asks a [`SessionPolicy`] whether its common name may hold a
//!   session (the API checks the certificate fingerprint recorded at the join). The stream
//!   is labelled with that name, so the caller knows which session speaks for which node.
//! - Each TLS stream is copied to and from an in-memory duplex ("pump") whose other end the
//!   `NodeServer` gets through `ConnectionOpenedExternal`: cancelling the pump closes the
//!   session from our side, which `ractor_cluster` has no call for. The server cancels a
//!   node's previous session when the node connects again (a restarted agent, or one whose
//!   old connection died silently).
//! - The `NodeServer` also binds its own TCP listener, which nothing uses: it is bound to
//!   [`UNUSED_LISTENER_IP`] on an ephemeral port (and protected by the cookie), a loopback
//!   address nothing else binds, so it never takes a port a service on 127.0.0.1 was
//!   about to bind.
//! - The cookie is derived from the cluster CA, so it differs per cluster. It is not a
//!   secret (the CA fingerprint is in every join token); authentication is the mutual TLS.
//! - A call finds the service actor of node X in process group `introspect:X` among the
//!   remote actors of the session labelled X, and waits at most its timeout.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort};
pub use ractor_cluster::NodeServerMessage;
use ractor_cluster::node::NodeConnectionMode;
use ractor_cluster::{BoxRead, BoxWrite, ClusterBidiStream, NodeServer, RactorClusterMessage};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use super::{
    MAX_CALL_BYTES, NodeService, NodeSessions, SessionError, check_request_size, service_group,
};
use crate::pki::pem_fingerprint;
use crate::tls::{SERVER_NAME, TlsError, node_client_config, peer_identity};
use crate::{NodeCredentials, PeerIdentity};

/// ALPN protocol of a node session.
pub const SESSION_ALPN: &[u8] = b"gpve-session/1";
/// The host part of every `ractor_cluster` node name (`{node}@gpve`).
pub const NODE_HOSTNAME: &str = "gpve";
/// Where the `NodeServer`'s own (unused) listener binds: a loopback address of its own.
pub const UNUSED_LISTENER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 83, 8);
/// Buffer of the in-memory pipe between a TLS stream and the `NodeServer`, in bytes.
pub const PUMP_BUFFER_BYTES: usize = 64 * 1024;
/// How long an agent waits for the server's TCP connection and TLS handshake.
pub const DIAL_TIMEOUT_MS: u64 = 5_000;
/// How long the server waits for a client's TLS handshake.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// How long a lookup in the local `NodeServer` may take.
pub const LOCAL_QUERY_TIMEOUT_MS: u64 = 1_000;
/// Calls a service actor runs at once; more are refused as busy.
pub const MAX_INFLIGHT_CALLS: usize = 16;
/// How long the accept loop waits after the listener itself fails (e.g. out of files).
pub const ACCEPT_RETRY_MS: u64 = 100;

const REPLY_OK: u8 = 0;
const REPLY_REFUSED: u8 = 1;

/// The `ractor_cluster` cookie of the cluster whose CA is `ca_pem`.
pub fn cookie(ca_pem: &str) -> Result<String, TlsError> {
    let fingerprint = pem_fingerprint(ca_pem)?;
    let mut h = Sha256::new();
    h.update(b"gpve ractor_cluster cookie\0");
    h.update(fingerprint.as_bytes());
    Ok(h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The server's session listener: presents `chain_pem` (leaf, then CA) and admits only
/// clients whose certificate the CA signed.
pub fn server_config(
    chain_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    crate::tls::cluster_server_config(chain_pem, key_pem, ca_pem, true, SESSION_ALPN)
}

/// An agent's session client: the node client of [`crate::tls`] (trusts only the cluster
/// CA, presents the node certificate) speaking [`SESSION_ALPN`].
pub fn client_config(creds: &NodeCredentials) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = (*node_client_config(creds)?).clone();
    config.alpn_protocols = vec![SESSION_ALPN.to_vec()];
    Ok(Arc::new(config))
}

// ---------------------------------------------------------------------------------------
// the NodeServer

/// Start this process's `NodeServer` for `node`, linked to `supervisor` when given (it
/// dies with it). Only one per process: ractor's process groups are global.
pub async fn start_node_server(
    node: &str,
    cookie: String,
    supervisor: Option<ActorCell>,
) -> Result<ActorRef<NodeServerMessage>, SessionError> {
    let server = NodeServer::new(
        0,
        cookie,
        node.to_string(),
        NODE_HOSTNAME.to_string(),
        None,
        Some(NodeConnectionMode::Isolated),
    )
    .with_listen_addr(UNUSED_LISTENER_IP.into())
    // Room for the largest call plus the protocol's envelope.
    .with_max_inbound_frame_size((MAX_CALL_BYTES + 64 * 1024) as u64);
    let spawned = match supervisor {
        Some(sup) => Actor::spawn_linked(None, server, (), sup).await,
        None => Actor::spawn(None, server, ()).await,
    };
    spawned
        .map(|(actor, _)| actor)
        .map_err(|e| SessionError::Transport(format!("starting the NodeServer failed: {e}")))
}

// ---------------------------------------------------------------------------------------
// streams

/// The `NodeServer`'s end of a pumped session stream.
struct PumpEnd {
    stream: DuplexStream,
    peer: String,
}

impl ClusterBidiStream for PumpEnd {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let (r, w) = tokio::io::split(self.stream);
        (Box::new(r), Box::new(w))
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.peer.clone())
    }
}

/// A session stream being pumped; dropping it closes the session.
#[derive(Debug)]
pub struct SessionLink {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl SessionLink {
    /// Wait until the stream closes (either side, or [`SessionLink::close`]).
    pub async fn closed(&mut self) {
        let _ = (&mut self.task).await;
    }

    /// Close the stream.
    pub fn close(&self) {
        self.cancel.cancel();
    }
}

impl Drop for SessionLink {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn pump<S>(stream: S, peer: &str) -> (PumpEnd, SessionLink)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (near, far) = tokio::io::duplex(PUMP_BUFFER_BYTES);
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let task = tokio::spawn(async move {
        let (mut net_r, mut net_w) = tokio::io::split(stream);
        let (mut near_r, mut near_w) = tokio::io::split(near);
        // Either direction ending ends the session: a half-open session is of no use.
        tokio::select! {
            _ = tokio::io::copy(&mut net_r, &mut near_w) => {}
            _ = tokio::io::copy(&mut near_r, &mut net_w) => {}
            _ = stop.cancelled() => {}
        }
    });
    (
        PumpEnd {
            stream: far,
            peer: peer.to_string(),
        },
        SessionLink { cancel, task },
    )
}

// ---------------------------------------------------------------------------------------
// the server side

/// Who may hold a session (beyond a certificate the CA signed).
#[async_trait]
pub trait SessionPolicy: Send + Sync + 'static {
    async fn admit(&self, peer: &PeerIdentity) -> Result<(), String>;
}

/// Accept session connections on `listener` until the future is dropped; each admitted
/// stream goes to `node_server`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    policy: Arc<dyn SessionPolicy>,
    node_server: ActorRef<NodeServerMessage>,
) {
    let acceptor = TlsAcceptor::from(tls);
    // One live stream per node: a new one replaces (and closes) the previous one.
    let links: Arc<Mutex<HashMap<String, SessionLink>>> = Arc::default();
    let mut handshakes = tokio::task::JoinSet::new();
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a session connection failed");
                tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                continue;
            }
        };
        // Finished handshakes are reaped here so the set stays bounded by the ones in
        // flight (each bounded in time).
        while handshakes.try_join_next().is_some() {}
        let (acceptor, policy, node_server, links) = (
            acceptor.clone(),
            policy.clone(),
            node_server.clone(),
            links.clone(),
        );
        handshakes.spawn(async move {
            match accept_one(acceptor, tcp, policy.as_ref()).await {
                Ok((stream, peer)) => {
                    let (end, link) = pump(stream, &peer.node);
                    let old = links
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(peer.node.clone(), link);
                    drop(old);
                    tracing::info!(node = %peer.node, %addr, "node session accepted");
                    let opened = NodeServerMessage::ConnectionOpenedExternal {
                        stream: Box::new(end),
                        is_server: true,
                    };
                    if node_server.cast(opened).is_err() {
                        tracing::warn!(node = %peer.node, "the NodeServer is gone; session dropped");
                    }
                }
                Err(reason) => {
                    tracing::warn!(%addr, %reason, "node session refused");
                }
            }
        });
    }
}

async fn accept_one(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    policy: &dyn SessionPolicy,
) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, PeerIdentity), String> {
    let stream = tokio::time::timeout(
        Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
        acceptor.accept(tcp),
    )
    .await
    .map_err(|_| format!("no TLS handshake within {HANDSHAKE_TIMEOUT_MS} ms"))?
    .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(peer_identity)
        .ok_or_else(|| "the client certificate names no node".to_string())?;
    policy
        .admit(&peer)
        .await
        .map_err(|e| format!("'{}' may not hold a session: {e}", peer.node))?;
    Ok((stream, peer))
}

// ---------------------------------------------------------------------------------------
// the agent side

/// Dial the server's session port at `endpoint` and hand the stream to `node_server`.
pub async fn dial(
    endpoint: &str,
    tls: Arc<ClientConfig>,
    node_server: &ActorRef<NodeServerMessage>,
) -> Result<SessionLink, SessionError> {
    let fail = |what: &str, e: String| {
        SessionError::Transport(format!("{what} the server at {endpoint} failed: {e}"))
    };
    let timeout = Duration::from_millis(DIAL_TIMEOUT_MS);
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(endpoint))
        .await
        .map_err(|_| {
            fail(
                "connecting to",
                format!("no answer within {DIAL_TIMEOUT_MS} ms"),
            )
        })?
        .map_err(|e| fail("connecting to", e.to_string()))?;
    let name = ServerName::try_from(SERVER_NAME).map_err(|e| fail("naming", e.to_string()))?;
    let stream = tokio::time::timeout(timeout, TlsConnector::from(tls).connect(name, tcp))
        .await
        .map_err(|_| {
            fail(
                "the TLS handshake with",
                format!("no answer within {DIAL_TIMEOUT_MS} ms"),
            )
        })?
        .map_err(|e| fail("the TLS handshake with", e.to_string()))?;
    let (end, link) = pump(stream, SERVER_NAME);
    ractor_cluster::client_connect_external(node_server, Box::new(end))
        .await
        .map_err(|e| SessionError::Transport(format!("the NodeServer is gone: {e}")))?;
    Ok(link)
}

// ---------------------------------------------------------------------------------------
// the service actor

/// The message of a node's service actor: one request, one reply (both opaque bytes;
/// `Vec<u8>` converts without a possible panic, unlike `String` from bad UTF-8).
#[derive(RactorClusterMessage)]
pub enum NodeServiceMsg {
    #[rpc]
    Call(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

/// Serves one [`NodeService`] to the sessions of this process, in process group
/// [`service_group`]`(node)`.
#[derive(Debug)]
pub struct NodeServiceActor;

/// What the service actor serves.
#[derive(Clone)]
pub struct NodeServiceArgs {
    pub node: String,
    pub service: Arc<dyn NodeService>,
}

/// The service actor's state.
pub struct NodeServiceState {
    service: Arc<dyn NodeService>,
    inflight: Arc<Semaphore>,
}

fn envelope(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(tag);
    out.extend_from_slice(body);
    out
}

impl Actor for NodeServiceActor {
    type Msg = NodeServiceMsg;
    type State = NodeServiceState;
    type Arguments = NodeServiceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<NodeServiceMsg>,
        args: NodeServiceArgs,
    ) -> Result<NodeServiceState, ActorProcessingErr> {
        ractor::pg::join(service_group(&args.node), vec![myself.get_cell()]);
        Ok(NodeServiceState {
            service: args.service,
            inflight: Arc::new(Semaphore::new(MAX_INFLIGHT_CALLS)),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<NodeServiceMsg>,
        msg: NodeServiceMsg,
        state: &mut NodeServiceState,
    ) -> Result<(), ActorProcessingErr> {
        let NodeServiceMsg::Call(request, reply) = msg;
        if request.len() > MAX_CALL_BYTES {
            let why = format!("the request is larger than {MAX_CALL_BYTES} bytes");
            let _ = reply.send(envelope(REPLY_REFUSED, why.as_bytes()));
            return Ok(());
        }
        let Ok(permit) = state.inflight.clone().try_acquire_owned() else {
            let why = format!("busy: {MAX_INFLIGHT_CALLS} calls are running");
            let _ = reply.send(envelope(REPLY_REFUSED, why.as_bytes()));
            return Ok(());
        };
        // Off the actor's loop: one slow call (a restart waits for the child) must not
        // hold up the others.
        let service = state.service.clone();
        tokio::spawn(async move {
            let out = service.handle(request).await;
            let _ = reply.send(envelope(REPLY_OK, &out));
            drop(permit);
        });
        Ok(())
    }
}

/// Start the service actor for `node`, linked to `supervisor`.
pub async fn start_service(
    args: NodeServiceArgs,
    supervisor: ActorCell,
) -> Result<ActorRef<NodeServiceMsg>, SessionError> {
    Actor::spawn_linked(None, NodeServiceActor, args, supervisor)
        .await
        .map(|(actor, _)| actor)
        .map_err(|e| SessionError::Transport(format!("starting the service actor failed: {e}")))
}

// ---------------------------------------------------------------------------------------
// the caller

/// [`NodeSessions`] over this process's `NodeServer`; empty (every call: no session) until
/// [`ClusterSessions::attach`] and after [`ClusterSessions::detach`].
#[derive(Clone, Default)]
pub struct ClusterSessions {
    node_server: Arc<RwLock<Option<ActorRef<NodeServerMessage>>>>,
}

impl std::fmt::Debug for ClusterSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSessions").finish_non_exhaustive()
    }
}

impl ClusterSessions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls go through `node_server` from now on.
    pub fn attach(&self, node_server: ActorRef<NodeServerMessage>) {
        *self.node_server.write().unwrap_or_else(|p| p.into_inner()) = Some(node_server);
    }

    /// The `NodeServer` stopped.
    pub fn detach(&self) {
        *self.node_server.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn current(&self) -> Option<ActorRef<NodeServerMessage>> {
        self.node_server
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Session node ids by peer label (the certificate's common name on the server).
    async fn sessions(&self) -> Result<Vec<(u64, String)>, SessionError> {
        let Some(ns) = self.current() else {
            return Ok(Vec::new());
        };
        let timeout = Duration::from_millis(LOCAL_QUERY_TIMEOUT_MS);
        match ns.call(NodeServerMessage::GetSessions, Some(timeout)).await {
            Ok(CallResult::Success(map)) => Ok(map
                .into_iter()
                .map(|(id, info)| (id, info.peer_addr))
                .collect()),
            Ok(_) => Err(SessionError::Transport(
                "the NodeServer did not list its sessions".into(),
            )),
            Err(e) => Err(SessionError::Transport(format!(
                "the NodeServer is gone: {e}"
            ))),
        }
    }
}

fn decode_reply(node: &str, reply: Vec<u8>) -> Result<Vec<u8>, SessionError> {
    match reply.split_first() {
        Some((&REPLY_OK, body)) => Ok(body.to_vec()),
        Some((&REPLY_REFUSED, why)) => Err(SessionError::Refused {
            node: node.to_string(),
            reason: String::from_utf8_lossy(why).into_owned(),
        }),
        _ => Err(SessionError::Transport(format!(
            "node '{node}' sent a malformed reply"
        ))),
    }
}

#[async_trait]
impl NodeSessions for ClusterSessions {
    async fn call(
        &self,
        node: &str,
        request: Vec<u8>,
        timeout_ms: u64,
    ) -> Result<Vec<u8>, SessionError> {
        check_request_size(&request)?;
        let no_session = || SessionError::NoSession {
            node: node.to_string(),
        };
        // Only a remote actor of a session whose certificate names `node` speaks for it:
        // any peer could join a group called `introspect:{node}`.
        let ids: Vec<u64> = self
            .sessions()
            .await?
            .into_iter()
            .filter(|(_, label)| label == node)
            .map(|(id, _)| id)
            .collect();
        let member = ractor::pg::get_members(&service_group(node))
            .into_iter()
            .find(|cell| matches!(cell.get_id(), ActorId::Remote { node_id, .. } if ids.contains(&node_id)))
            .ok_or_else(no_session)?;
        let result = ractor::rpc::call::<NodeServiceMsg, Vec<u8>, _>(
            &member,
            |reply| NodeServiceMsg::Call(request, reply),
            Some(Duration::from_millis(timeout_ms)),
        )
        .await;
        match result {
            Ok(CallResult::Success(reply)) => decode_reply(node, reply),
            Ok(CallResult::Timeout) => Err(SessionError::Timeout {
                node: node.to_string(),
                timeout_ms,
            }),
            Ok(CallResult::SenderError) | Err(_) => Err(SessionError::Closed {
                node: node.to_string(),
            }),
        }
    }

    async fn connected(&self) -> Vec<String> {
        let mut nodes: Vec<String> = self
            .sessions()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|(_, label)| label)
            .filter(|label| label != SERVER_NAME)
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }
}

/// `host:port` of the server's session listener for an agent that reaches the server's
/// gRPC at `grpc_endpoint`: the same host, the session port.
pub fn session_endpoint(grpc_endpoint: &str, session_port: u16) -> String {
    match grpc_endpoint.parse::<SocketAddr>() {
        Ok(addr) => SocketAddr::new(addr.ip(), session_port).to_string(),
        Err(_) => {
            let host = grpc_endpoint
                .rsplit_once(':')
                .map(|(h, _)| h)
                .unwrap_or(grpc_endpoint);
            format!("{host}:{session_port}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{ClusterCa, node_key_and_csr};

    struct AdmitAll;

    #[async_trait]
    impl SessionPolicy for AdmitAll {
        async fn admit(&self, _peer: &PeerIdentity) -> Result<(), String> {
            Ok(())
        }
    }

    fn node_creds(ca: &ClusterCa, node: &str) -> NodeCredentials {
        let (key_pem, csr) = node_key_and_csr(node).expect("csr");
        NodeCredentials {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: ca.sign_node_csr(&csr, node).expect("sign"),
            key_pem,
        }
    }

    /// Accept one connection on a fresh listener; the handshake outcome.
    async fn handshake(
        server_ca: &ClusterCa,
        client: &NodeCredentials,
    ) -> (Result<String, String>, Result<(), String>) {
        let (chain, key_pem) = server_ca
            .issue_server(&["localhost".into()])
            .expect("server cert");
        let tls = server_config(&chain, &key_pem, &server_ca.cert_pem).expect("server config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            accept_one(TlsAcceptor::from(tls), tcp, &AdmitAll)
                .await
                .map(|(_, peer)| peer.node)
        });
        // The client trusts the server's CA whichever CA signed its own certificate.
        let mut trusting = client.clone();
        trusting.ca_pem = server_ca.cert_pem.clone();
        let config = client_config(&trusting).expect("client config");
        let client_side = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let name = ServerName::try_from(SERVER_NAME).map_err(|e| e.to_string())?;
            let mut s = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            // TLS 1.3: the server's verdict on the client certificate arrives after the
            // client's handshake completes; a read surfaces it.
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
                Ok(Err(e)) => Err(e.to_string()),
                _ => Ok(()),
            }
        }
        .await;
        (server.await.expect("join"), client_side)
    }

    #[tokio::test]
    async fn the_listener_admits_a_node_certificate_of_the_cluster_ca() {
        let ca = ClusterCa::generate("c").expect("ca");
        let creds = node_creds(&ca, "n1");
        let (server, _) = handshake(&ca, &creds).await;
        assert_eq!(server, Ok("n1".to_string()));
    }

    #[tokio::test]
    async fn the_listener_refuses_a_certificate_of_another_ca() {
        let ca = ClusterCa::generate("c").expect("ca");
        let rogue = ClusterCa::generate("rogue").expect("rogue ca");
        let creds = node_creds(&rogue, "n1");
        let (server, client) = handshake(&ca, &creds).await;
        let err = server.expect_err("a certificate of another CA is refused");
        assert!(err.contains("TLS handshake failed"), "{err}");
        assert!(client.is_err(), "the client sees the refusal: {client:?}");
    }

    #[tokio::test]
    async fn the_listener_refuses_a_self_signed_certificate() {
        let ca = ClusterCa::generate("c").expect("ca");
        let (key_pem, _) = node_key_and_csr("n1").expect("key");
        let kp = rcgen::KeyPair::from_pem(&key_pem).expect("key pair");
        let params = rcgen::CertificateParams::new(vec!["n1".to_string()]).expect("params");
        let cert = params.self_signed(&kp).expect("self-signed");
        let creds = NodeCredentials {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: cert.pem(),
            key_pem,
        };
        let (server, _) = handshake(&ca, &creds).await;
        assert!(server.is_err(), "a self-signed certificate is refused");
    }

    #[test]
    fn the_cookie_depends_on_the_cluster_ca() {
        let a = ClusterCa::generate("a").expect("ca");
        let b = ClusterCa::generate("b").expect("ca");
        let ca_cookie = cookie(&a.cert_pem).expect("cookie");
        assert_eq!(ca_cookie, cookie(&a.cert_pem).expect("cookie"));
        assert_ne!(ca_cookie, cookie(&b.cert_pem).expect("cookie"));
        assert_eq!(ca_cookie.len(), 32);
        assert!(cookie("not a pem").is_err());
    }

    #[test]
    fn replies_decode_and_garbage_is_an_error() {
        assert_eq!(
            decode_reply("n1", envelope(REPLY_OK, b"x")),
            Ok(b"x".to_vec())
        );
        assert!(matches!(
            decode_reply("n1", envelope(REPLY_REFUSED, b"busy")),
            Err(SessionError::Refused { reason, .. }) if reason == "busy"
        ));
        assert!(decode_reply("n1", Vec::new()).is_err());
        assert!(decode_reply("n1", vec![7]).is_err());
    }

    #[test]
    fn the_session_endpoint_keeps_the_host() {
        assert_eq!(session_endpoint("10.1.2.3:8007", 8008), "10.1.2.3:8008");
        assert_eq!(session_endpoint("[::1]:8007", 9), "[::1]:9");
        assert_eq!(
            session_endpoint("srv.example:8007", 8008),
            "srv.example:8008"
        );
    }
}
