//! Server certificate trust for the client: SHA-256 fingerprint pinning (the Proxmox
//! convention for self-signed node certificates) or a CA bundle.
//!
//! Pinning compares the SHA-256 digest of the leaf certificate's DER bytes with the pinned
//! value and deliberately ignores the host name and the validity period, exactly like
//! Proxmox clients (`pvesh`, proxmoxer with `verify_ssl` plus fingerprint, the Proxmox
//! Backup client). The TLS handshake signature is still verified against the presented
//! certificate, so only the holder of the pinned certificate's private key can pass.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::DigitallySignedStruct;
use rustls::SignatureScheme;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

/// Length of a SHA-256 digest in bytes.
const SHA256_LEN_BYTES: usize = 32;

/// Failures while parsing fingerprints or loading certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "`{input}` is not a SHA-256 fingerprint: expected 32 hex bytes, optionally separated by colons (AB:CD:...)"
    )]
    InvalidFingerprint { input: String },
    #[error("cannot read certificate file {path}")]
    ReadCertificate {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate file {path} contains no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("cannot build the TLS configuration: {reason}")]
    Config { reason: String },
}

/// A SHA-256 certificate fingerprint, displayed the Proxmox way (`AB:CD:...`, upper case).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; SHA256_LEN_BYTES]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// The fingerprint of the first certificate in a PEM file (e.g. the server's own
    /// certificate, so an operator can print what clients must pin).
    pub fn of_pem_file(path: &Path) -> Result<Self, TlsError> {
        let pem = std::fs::read(path).map_err(|source| TlsError::ReadCertificate {
            path: path.to_owned(),
            source,
        })?;
        let der = CertificateDer::pem_slice_iter(&pem)
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| TlsError::NoCertificate {
                path: path.to_owned(),
            })?;
        Ok(Self::of_der(der.as_ref()))
    }

    /// Parses `AB:CD:...`, `ab:cd:...` or the 64 hex digits without separators.
    pub fn parse(input: &str) -> Result<Self, TlsError> {
        let invalid = || TlsError::InvalidFingerprint {
            input: input.to_owned(),
        };
        let hex: Vec<u8> = input.trim().bytes().filter(|b| *b != b':').collect();
        if hex.len() != SHA256_LEN_BYTES * 2 {
            return Err(invalid());
        }
        let mut out = [0u8; SHA256_LEN_BYTES];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or_else(invalid)?;
            let lo = hex_value(pair[1]).ok_or_else(invalid)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Self(out))
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = TlsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Accepts exactly the leaf certificate whose fingerprint is `expected`; with `expected`
/// unset it accepts nothing (probe mode). Either way it records what the server presented,
/// so a refusal can show both fingerprints.
#[derive(Debug)]
pub(crate) struct PinnedVerifier {
    expected: Option<Fingerprint>,
    presented: Mutex<Option<Fingerprint>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedVerifier {
    pub(crate) fn new(expected: Option<Fingerprint>) -> Arc<Self> {
        Arc::new(Self {
            expected,
            presented: Mutex::new(None),
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        })
    }

    /// The fingerprint of the last certificate a server presented, if any.
    pub(crate) fn presented(&self) -> Option<Fingerprint> {
        // A poisoned lock only means a panic elsewhere while holding it; the value is a
        // plain Copy and still meaningful.
        *self
            .presented
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn expected(&self) -> Option<Fingerprint> {
        self.expected
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of_der(end_entity.as_ref());
        *self
            .presented
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(presented);
        match self.expected {
            Some(expected) if expected == presented => Ok(ServerCertVerified::assertion()),
            Some(_) => Err(rustls::Error::General(
                "server certificate fingerprint does not match the pinned fingerprint".into(),
            )),
            None => Err(rustls::Error::General(
                "no fingerprint pinned for this server; handshake aborted before any request"
                    .into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A rustls client configuration that trusts only `verifier`.
pub(crate) fn pinned_config(
    verifier: Arc<PinnedVerifier>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config {
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_round_trips_in_proxmox_format() {
        let fp = Fingerprint::of_der(b"certificate bytes");
        let shown = fp.to_string();
        assert_eq!(shown.len(), 32 * 3 - 1);
        assert!(shown.chars().all(|c| c == ':' || c.is_ascii_hexdigit()));
        assert_eq!(Fingerprint::parse(&shown).ok(), Some(fp));
        assert_eq!(Fingerprint::parse(&shown.to_lowercase()).ok(), Some(fp));
        assert_eq!(Fingerprint::parse(&shown.replace(':', "")).ok(), Some(fp));
    }

    #[test]
    fn malformed_fingerprints_are_rejected() {
        for bad in ["", "AB:CD", "zz".repeat(32).as_str(), &"A".repeat(63)] {
            assert!(
                matches!(
                    Fingerprint::parse(bad),
                    Err(TlsError::InvalidFingerprint { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn pem_file_fingerprint_matches_der() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]);
        let Ok(cert) = cert else {
            panic!("rcgen failed to generate a test certificate");
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cert.pem");
        std::fs::write(&path, cert.cert.pem()).expect("write pem");
        let from_file = Fingerprint::of_pem_file(&path).expect("fingerprint of pem");
        assert_eq!(from_file, Fingerprint::of_der(cert.cert.der().as_ref()));
        std::fs::write(&path, "not a certificate").expect("write junk");
        assert!(matches!(
            Fingerprint::of_pem_file(&path),
            Err(TlsError::NoCertificate { .. })
        ));
    }
}
