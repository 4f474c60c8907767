//! The cluster CA: it signs the server's gRPC certificate and every node's certificate.
//!
//! Server certificates carry the `serverAuth` usage and the fixed name
//! [`crate::tls::SERVER_NAME`]; node certificates carry only `clientAuth` and the node name
//! as common name, so a node certificate can never pass as the server.

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// How long the CA certificate is valid.
pub const CA_VALIDITY_YEARS: i32 = 10;
/// How long a node or server certificate is valid.
pub const LEAF_VALIDITY_YEARS: i32 = 2;

/// Failures creating, loading or using certificates.
#[derive(Debug, Error)]
pub enum PkiError {
    #[error("certificate generation failed")]
    Generate(#[from] rcgen::Error),
    #[error("the certificate signing request is invalid or its signature does not verify")]
    Csr(#[source] rcgen::Error),
    #[error("the PEM data holds no certificate")]
    NoCertificate,
    #[error("the PEM data is not a certificate: {0}")]
    Pem(String),
    #[error("the certificate cannot be parsed: {0}")]
    Parse(String),
    #[error("the certificate has no common name")]
    NoCommonName,
}

/// Lowercase hex SHA-256 of DER bytes (certificate fingerprints, token pins).
pub fn sha256_hex(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every certificate in a PEM string, in order.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(PkiError::NoCertificate);
    }
    Ok(certs)
}

/// Fingerprint of the first certificate in `pem`.
pub fn pem_fingerprint(pem: &str) -> Result<String, PkiError> {
    Ok(sha256_hex(&certs_from_pem(pem)?[0]))
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
        .ok_or(PkiError::NoCommonName)
}

fn this_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    1970 + (secs / 31_556_952) as i32
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    // Positive DER integer.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Valid from last year (clock skew between nodes) for `years`.
fn validity(params: &mut CertificateParams, years: i32) {
    let year = this_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + years, 1, 1);
}

/// A new private key (ECDSA P-256) and a CSR with common name `node`.
pub fn node_key_and_csr(node: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn(node);
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// The cluster CA: certificate and key in PEM.
pub struct ClusterCa {
    pub cert_pem: String,
    pub key_pem: String,
    der: CertificateDer<'static>,
    key: KeyPair,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new self-signed CA.
    pub fn generate(cluster_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(&format!("gpve cluster CA {cluster_name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        validity(&mut params, CA_VALIDITY_YEARS);
        let cert = params.self_signed(&key)?;
        Self::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// A CA loaded from its PEM files.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let der = certs_from_pem(cert_pem)?.remove(0);
        let key = KeyPair::from_pem(key_pem)?;
        Ok(ClusterCa {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            der,
            key,
        })
    }

    /// Lowercase hex SHA-256 of the CA certificate: what tokens pin.
    pub fn fingerprint(&self) -> String {
        sha256_hex(&self.der)
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_der(&self.der, &self.key)?)
    }

    /// A server certificate (`serverAuth`) for `names` plus [`crate::tls::SERVER_NAME`];
    /// returns the chain (leaf, then CA) and the key, in PEM.
    pub fn issue_server(&self, names: &[String]) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut sans = vec![crate::tls::SERVER_NAME.to_string()];
        sans.extend(names.iter().cloned());
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = dn("gpve-server");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, LEAF_VALIDITY_YEARS);
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok((
            format!("{}{}", cert.pem(), self.cert_pem),
            key.serialize_pem(),
        ))
    }

    /// The server's client certificate for forwarding API calls to agents (`clientAuth`,
    /// common name [`crate::tls::PROXY_CLIENT_NAME`], which no node can be named since node
    /// names have no dots); returns the certificate and key in PEM.
    pub fn issue_proxy_client(&self) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(crate::tls::PROXY_CLIENT_NAME);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, LEAF_VALIDITY_YEARS);
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Sign a node's CSR as `node`: `clientAuth` (its sessions to the server) and
    /// `serverAuth` for [`crate::tls::node_server_name`] (its API listener, which the
    /// server forwards to). Whatever subject and extensions the CSR asks for are replaced:
    /// the CA decides the identity.
    pub fn sign_node_csr(&self, csr_pem: &str, node: &str) -> Result<String, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(PkiError::Csr)?;
        let mut params = CertificateParams::new(vec![crate::tls::node_server_name(node)])?;
        params.distinguished_name = dn(node);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, LEAF_VALIDITY_YEARS);
        csr.params = params;
        Ok(csr.signed_by(&self.issuer()?)?.pem())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_a_csr_with_the_node_name_whatever_the_csr_says() {
        let ca = ClusterCa::generate("t").expect("ca");
        let (_key, csr) = node_key_and_csr("someone-else").expect("csr");
        let cert = ca.sign_node_csr(&csr, "n1").expect("signed");
        let der = certs_from_pem(&cert).expect("pem").remove(0);
        assert_eq!(common_name(&der).expect("cn"), "n1");
        assert_eq!(ca.fingerprint().len(), 64);
        let again = ClusterCa::from_pem(&ca.cert_pem, &ca.key_pem).expect("reload");
        assert_eq!(again.fingerprint(), ca.fingerprint());
    }

    #[test]
    fn refuses_garbage_csrs() {
        let ca = ClusterCa::generate("t").expect("ca");
        assert!(matches!(
            ca.sign_node_csr("not a csr", "n1"),
            Err(PkiError::Csr(_))
        ));
    }
}
