//! rustls configurations for the three kinds of connection (ring provider, TLS 1.3):
//!
//! - the server: presents its CA-signed certificate (chain includes the CA); a client
//!   certificate is optional at the TLS layer, verified against the cluster CA when given,
//!   and required by the `Node` service;
//! - the join client: accepts the server only if its chain holds a CA certificate with
//!   the pinned fingerprint and the server certificate verifies against that CA;
//! - the node client: trusts only the cluster CA and presents the node certificate.
//!
//! Two more for API forwarding (pveproxy style): an agent's API listener presents its node
//! certificate as `{node}.nodes.gpve-cluster` and accepts only clients whose certificate
//! the CA signed for [`PROXY_CLIENT_NAME`] (the server); the server's forwarding client
//! presents that certificate and trusts only the CA. Both speak HTTP/1.1.
//!
//! Clients always ask for [`SERVER_NAME`], whatever host they dial: the CA is private, so
//! the name only has to tell server certificates from node certificates.

use std::sync::Arc;

use rustls::DistinguishedName;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use thiserror::Error;

use crate::pki::{certs_from_pem, common_name, sha256_hex};
use crate::{NodeCredentials, PeerIdentity};

/// The name every server certificate carries and every client asks for.
pub const SERVER_NAME: &str = "server.gpve-cluster";

/// Common name of the server's forwarding client certificate. Node names cannot contain a
/// dot, so no node certificate can carry it.
pub const PROXY_CLIENT_NAME: &str = "gpve-server.proxy";

/// The DNS name a node's certificate serves its API under.
pub fn node_server_name(node: &str) -> String {
    format!("{node}.nodes.gpve-cluster")
}

/// Failures building a TLS configuration or checking a certificate.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error("the private key is unreadable: {0}")]
    Key(String),
    #[error("the TLS configuration was refused: {0}")]
    Config(String),
    #[error("the certificate is not signed by the cluster CA: {0}")]
    NotTrusted(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Config(e.to_string()))?;
    }
    Ok(Arc::new(roots))
}

fn key(key_pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Key(e.to_string()))
}

const H2: &[u8] = b"h2";

/// The gRPC server's configuration: `chain_pem` is leaf then CA. A client certificate is
/// verified when given (joining nodes have none yet).
pub fn server_config(
    chain_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    cluster_server_config(chain_pem, key_pem, ca_pem, false, H2)
}

/// A TLS 1.3 server presenting `chain_pem` (leaf, then CA) that verifies client
/// certificates against the cluster CA, demanding one when `require_client_cert`, and
/// speaks `alpn`.
pub fn cluster_server_config(
    chain_pem: &str,
    key_pem: &str,
    ca_pem: &str,
    require_client_cert: bool,
    alpn: &[u8],
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider());
    let builder = match require_client_cert {
        true => builder,
        false => builder.allow_unauthenticated(),
    };
    let verifier = builder
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs_from_pem(chain_pem)?, key(key_pem)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// Accepts a server whose chain holds the CA pinned by fingerprint.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| sha256_hex(c) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the server did not present the cluster CA pinned by the token (sha256 {})",
                    self.fingerprint
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("the pinned CA is unusable: {e}")))?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The join client's configuration: no client certificate, CA pinned by fingerprint.
pub fn join_client_config(ca_fingerprint: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = Arc::new(PinnedCa {
        fingerprint: ca_fingerprint.to_ascii_lowercase(),
        provider: provider(),
    });
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![H2.to_vec()];
    Ok(Arc::new(config))
}

/// The node client's configuration: trusts the cluster CA, presents the node certificate.
pub fn node_client_config(creds: &NodeCredentials) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(&creds.ca_pem)?)
        .with_client_auth_cert(certs_from_pem(&creds.cert_pem)?, key(&creds.key_pem)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![H2.to_vec()];
    Ok(Arc::new(config))
}

/// The identity in a client certificate that TLS already verified against the CA.
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Option<PeerIdentity> {
    let leaf = certs.first()?;
    let node = common_name(leaf).ok()?;
    Some(PeerIdentity {
        node,
        cert_fingerprint: sha256_hex(leaf),
    })
}

/// Verify a node certificate against the cluster CA as the TLS server would, and return
/// its identity (for transports without TLS, such as [`crate::mem`]).
pub fn verify_node_cert(ca_pem: &str, cert_pem: &str) -> Result<PeerIdentity, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let certs = certs_from_pem(cert_pem)?;
    verifier
        .verify_client_cert(&certs[0], &certs[1..], UnixTime::now())
        .map_err(|e| TlsError::NotTrusted(e.to_string()))?;
    peer_identity(&certs).ok_or_else(|| TlsError::NotTrusted("no common name".into()))
}

const HTTP1: &[u8] = b"http/1.1";

/// Accepts only the server's forwarding certificate: signed by the cluster CA and named
/// [`PROXY_CLIENT_NAME`].
#[derive(Debug)]
struct ProxyClientOnly {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for ProxyClientOnly {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match common_name(end_entity) {
            Ok(cn) if cn == PROXY_CLIENT_NAME => Ok(verified),
            _ => Err(rustls::Error::General(
                "only the server may call a node's API".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// An agent's API listener: presents the node certificate, admits only the server's
/// forwarding client (mutual TLS), HTTP/1.1.
pub fn node_api_server_config(creds: &NodeCredentials) -> Result<Arc<ServerConfig>, TlsError> {
    let inner = WebPkiClientVerifier::builder_with_provider(roots(&creds.ca_pem)?, provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(ProxyClientOnly { inner }))
        .with_single_cert(certs_from_pem(&creds.cert_pem)?, key(&creds.key_pem)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// The server's forwarding client: trusts only the cluster CA, presents the certificate
/// from [`crate::pki::ClusterCa::issue_proxy_client`], HTTP/1.1. Dial a node as
/// [`node_server_name`].
pub fn proxy_client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<ClientConfig, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(certs_from_pem(cert_pem)?, key(key_pem)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![HTTP1.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod api_tls_tests {
    use super::*;
    use crate::pki::{ClusterCa, node_key_and_csr};

    #[test]
    fn node_certificates_serve_the_api_and_only_the_proxy_client_is_admitted() {
        let ca = ClusterCa::generate("t").expect("ca");
        let (key_pem, csr) = node_key_and_csr("n1").expect("csr");
        let cert_pem = ca.sign_node_csr(&csr, "n1").expect("sign");
        let creds = NodeCredentials {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: cert_pem.clone(),
            key_pem,
        };
        node_api_server_config(&creds).expect("a node certificate can serve");
        let (pc, pk) = ca.issue_proxy_client().expect("proxy cert");
        proxy_client_config(&ca.cert_pem, &pc, &pk).expect("proxy client");
        let inner = WebPkiClientVerifier::builder_with_provider(
            roots(&ca.cert_pem).expect("roots"),
            provider(),
        )
        .build()
        .expect("verifier");
        let v = ProxyClientOnly { inner };
        let proxy = certs_from_pem(&pc).expect("pem");
        v.verify_client_cert(&proxy[0], &[], UnixTime::now())
            .expect("the proxy certificate is admitted");
        let node = certs_from_pem(&cert_pem).expect("pem");
        assert!(
            v.verify_client_cert(&node[0], &[], UnixTime::now())
                .is_err(),
            "a node certificate is refused"
        );
    }
}
