//! One contract, two transports: the real gRPC transport (TLS on loopback) and the
//! in-memory one must agree on joining, CA pinning, node identity and refusals.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use gpve_transport::grpc::GrpcTransport;
use gpve_transport::mem::{MemNetwork, MemTransport};
use gpve_transport::pki::{ClusterCa, node_key_and_csr};
use gpve_transport::token::BootstrapToken;
use gpve_transport::{
    ClusterService, Heartbeat, HeartbeatAck, JoinGrant, JoinRequest, LinkError, NodeCredentials,
    PeerIdentity, ServiceError, Transport,
};

/// A minimal server: one token, signs CSRs, acknowledges heartbeats of what it signed.
struct TestService {
    ca: ClusterCa,
    token: BootstrapToken,
    endpoint: String,
    joins: AtomicU64,
    heartbeats: AtomicU64,
    signed: std::sync::Mutex<Vec<PeerIdentity>>,
}

#[async_trait]
impl ClusterService for TestService {
    async fn join(&self, req: JoinRequest) -> Result<JoinGrant, ServiceError> {
        self.joins.fetch_add(1, Ordering::SeqCst);
        let token: BootstrapToken = req
            .token
            .parse()
            .map_err(|e: gpve_transport::token::TokenError| ServiceError::Invalid(e.to_string()))?;
        if token.id != self.token.id || !token.secret_matches(&self.token.secret_hash()) {
            return Err(ServiceError::Refused("the join token is not valid".into()));
        }
        let cert_pem = self
            .ca
            .sign_node_csr(&req.csr_pem, &req.node_name)
            .map_err(|e| ServiceError::Invalid(e.to_string()))?;
        let fp = gpve_transport::pki::pem_fingerprint(&cert_pem).expect("fingerprint");
        self.signed.lock().expect("lock").push(PeerIdentity {
            node: req.node_name.clone(),
            cert_fingerprint: fp,
        });
        Ok(JoinGrant {
            node_name: req.node_name,
            cert_pem,
            ca_pem: self.ca.cert_pem.clone(),
            server_endpoint: self.endpoint.clone(),
            cluster_name: Some("test".into()),
        })
    }

    async fn heartbeat(
        &self,
        peer: PeerIdentity,
        hb: Heartbeat,
    ) -> Result<HeartbeatAck, ServiceError> {
        self.heartbeats.fetch_add(1, Ordering::SeqCst);
        if !self.signed.lock().expect("lock").contains(&peer) {
            return Err(ServiceError::Unauthenticated(format!(
                "{} never joined",
                peer.node
            )));
        }
        Ok(HeartbeatAck {
            node: peer.node,
            lease_generation: 1,
            lease_deadline_ms: hb.seq as i64,
            lease_ttl_ms: 5_000,
            cordoned: false,
        })
    }
}

struct Harness {
    transport: Arc<dyn Transport>,
    endpoint: String,
    service: Arc<TestService>,
    /// Takes the server away (stops it, or partitions it in memory).
    cut: Box<dyn FnOnce() + Send>,
}

fn service(endpoint: &str) -> Arc<TestService> {
    let ca = ClusterCa::generate("contract").expect("ca");
    let token = BootstrapToken::generate(&ca.fingerprint());
    Arc::new(TestService {
        ca,
        token,
        endpoint: endpoint.to_string(),
        joins: AtomicU64::new(0),
        heartbeats: AtomicU64::new(0),
        signed: std::sync::Mutex::new(Vec::new()),
    })
}

async fn grpc() -> Harness {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = listener.local_addr().expect("addr").to_string();
    let svc = service(&endpoint);
    let (chain, key) = svc
        .ca
        .issue_server(&["127.0.0.1".into()])
        .expect("server cert");
    let tls = gpve_transport::tls::server_config(&chain, &key, &svc.ca.cert_pem).expect("tls");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let dyn_svc: Arc<dyn ClusterService> = svc.clone();
    tokio::spawn(gpve_transport::grpc::serve(
        listener,
        tls,
        dyn_svc,
        5_000,
        async {
            let _ = stopped.await;
        },
    ));
    let cut = Box::new(move || {
        let _ = stop.send(());
    });
    Harness {
        transport: Arc::new(GrpcTransport::default()),
        endpoint,
        service: svc,
        cut,
    }
}

fn mem() -> Harness {
    let network = MemNetwork::new();
    let endpoint = "server:8007".to_string();
    let svc = service(&endpoint);
    network.register(&endpoint, &svc.ca.cert_pem, svc.clone());
    let cut = {
        let (network, endpoint) = (network.clone(), endpoint.clone());
        Box::new(move || network.set_reachable(&endpoint, false))
    };
    Harness {
        transport: Arc::new(MemTransport { network }),
        endpoint,
        service: svc,
        cut,
    }
}

async fn join(
    h: &Harness,
    node: &str,
    token: &str,
    pin: &str,
) -> Result<NodeCredentials, LinkError> {
    let (key_pem, csr_pem) = node_key_and_csr(node).expect("csr");
    let grant = h
        .transport
        .join(
            &h.endpoint,
            pin,
            JoinRequest {
                token: token.to_string(),
                node_name: node.into(),
                csr_pem,
            },
        )
        .await?;
    Ok(NodeCredentials {
        ca_pem: grant.ca_pem,
        cert_pem: grant.cert_pem,
        key_pem,
    })
}

async fn contract(h: Harness) {
    let token = h.service.token.to_string();
    let pin = h.service.ca.fingerprint();

    // Join, then heartbeats carry the certificate's identity.
    let creds = join(&h, "n1", &token, &pin).await.expect("join");
    let link = h
        .transport
        .connect(&h.endpoint, &creds)
        .await
        .expect("connect");
    let ack = link
        .heartbeat(Heartbeat {
            seq: 7,
            ..Default::default()
        })
        .await
        .expect("heartbeat");
    assert_eq!(ack.node, "n1");
    assert_eq!(ack.lease_deadline_ms, 7);

    // A pin that is not the server's CA: refused before the service sees anything.
    let joins = h.service.joins.load(Ordering::SeqCst);
    let other = ClusterCa::generate("other").expect("ca");
    let err = join(&h, "n2", &token, &other.fingerprint())
        .await
        .expect_err("pin mismatch");
    assert!(matches!(err, LinkError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("pinned"), "{err}");
    assert_eq!(h.service.joins.load(Ordering::SeqCst), joins);

    // A refusal keeps its kind and message.
    let bad = BootstrapToken::generate(&pin).to_string();
    let err = join(&h, "n2", &bad, &pin).await.expect_err("bad token");
    assert_eq!(
        err,
        LinkError::Refused("the join token is not valid".into())
    );

    // A certificate from another CA never reaches the service.
    let beats = h.service.heartbeats.load(Ordering::SeqCst);
    let (key_pem, csr) = node_key_and_csr("n1").expect("csr");
    let forged = NodeCredentials {
        ca_pem: creds.ca_pem.clone(),
        cert_pem: other.sign_node_csr(&csr, "n1").expect("sign"),
        key_pem,
    };
    let result = match h.transport.connect(&h.endpoint, &forged).await {
        Ok(link) => link.heartbeat(Heartbeat::default()).await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(result.is_err(), "a foreign certificate was accepted");
    assert_eq!(h.service.heartbeats.load(Ordering::SeqCst), beats);

    // The server going away is a transient error, for a new session and an open one.
    (h.cut)();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let err = link
        .heartbeat(Heartbeat::default())
        .await
        .expect_err("server gone");
    assert!(err.is_transient(), "{err:?}");
    let err = match h.transport.connect(&h.endpoint, &creds).await {
        Ok(link) => link
            .heartbeat(Heartbeat::default())
            .await
            .expect_err("server gone"),
        Err(e) => e,
    };
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn grpc_transport_meets_the_contract() {
    contract(grpc().await).await;
}

#[tokio::test]
async fn mem_transport_meets_the_contract() {
    contract(mem()).await;
}
