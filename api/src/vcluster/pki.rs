//! The PKI of one virtual cluster: its own CA, the apiserver serving certificate, the
//! admin client certificate (`O=system:masters`), the etcd serving and client
//! certificates, the front-proxy client certificate and the service-account key pair,
//! written under `{vc_dir}/pki` with keys at mode 0600. Leaf certificates are reissued
//! by [`rotate`] (on upgrade); the CA stays, so kubeconfigs already handed out keep
//! trusting the apiserver.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use thiserror::Error;

/// The first address of the default service CIDR (10.96.0.0/12): the `kubernetes` service.
pub const SERVICE_IP: &str = "10.96.0.1";
/// Validity of the CA, in years.
pub const CA_VALIDITY_YEARS: i32 = 10;
/// Validity of leaf certificates, in years (reissued on upgrade).
pub const LEAF_VALIDITY_YEARS: i32 = 1;

/// Failures of the VC PKI.
#[derive(Debug, Error)]
pub enum PkiError {
    #[error("certificate generation failed")]
    Cert(#[from] rcgen::Error),
    #[error("writing {path} failed")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// File names under `pki/`.
pub mod files {
    pub const CA_CRT: &str = "ca.crt";
    pub const CA_KEY: &str = "ca.key";
    pub const APISERVER_CRT: &str = "apiserver.crt";
    pub const APISERVER_KEY: &str = "apiserver.key";
    pub const ADMIN_CRT: &str = "admin.crt";
    pub const ADMIN_KEY: &str = "admin.key";
    pub const ETCD_SERVER_CRT: &str = "etcd-server.crt";
    pub const ETCD_SERVER_KEY: &str = "etcd-server.key";
    pub const ETCD_CLIENT_CRT: &str = "apiserver-etcd-client.crt";
    pub const ETCD_CLIENT_KEY: &str = "apiserver-etcd-client.key";
    pub const FRONT_PROXY_CRT: &str = "front-proxy-client.crt";
    pub const FRONT_PROXY_KEY: &str = "front-proxy-client.key";
    pub const SA_KEY: &str = "sa.key";
    pub const SA_PUB: &str = "sa.pub";
}

/// Where a VC's PKI lives.
#[derive(Debug, Clone)]
pub struct PkiDir(pub PathBuf);

impl PkiDir {
    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    pub fn read(&self, name: &str) -> Result<String, PkiError> {
        let path = self.file(name);
        std::fs::read_to_string(&path).map_err(|source| PkiError::Io { path, source })
    }
}

fn dn(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    if let Some(o) = org {
        d.push(DnType::OrganizationName, o);
    }
    d
}

fn serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    // Positive and without a leading zero byte: Go's x509 (etcd, kubectl) is strict.
    b[0] = (b[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&b)
}

fn validity(p: &mut CertificateParams, years: i32) {
    let now = time_now_year();
    p.not_before = rcgen::date_time_ymd(now - 1, 1, 1);
    p.not_after = rcgen::date_time_ymd(now + years, 1, 1);
}

fn time_now_year() -> i32 {
    // Whole years are enough for validity bounds; 365.25-day years from the epoch.
    let secs = crate::state::now_s().max(0);
    1970 + i32::try_from(secs / 31_557_600).unwrap_or(0)
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Write beside and rename: a reader never sees half a key.
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The names the apiserver certificate carries besides the fixed in-cluster ones.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Host names and IP addresses clients reach the apiserver by.
    pub hosts: Vec<String>,
}

/// Every SAN of the apiserver serving certificate.
pub fn apiserver_sans(endpoint: &Endpoint) -> Vec<String> {
    let mut s: Vec<String> = [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        SERVICE_IP,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for h in &endpoint.hosts {
        if !s.contains(h) {
            s.push(h.clone());
        }
    }
    s
}

fn sans(names: &[String]) -> Result<Vec<SanType>, PkiError> {
    names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
        })
        .collect()
}

struct Ca {
    cert_pem: String,
    key: KeyPair,
}

impl Ca {
    fn load(dir: &PkiDir) -> Result<Ca, PkiError> {
        Ok(Ca {
            cert_pem: dir.read(files::CA_CRT)?,
            key: KeyPair::from_pem(&dir.read(files::CA_KEY)?)?,
        })
    }

    fn issue(
        &self,
        cn: &str,
        org: Option<&str>,
        names: &[String],
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<(String, String), PkiError> {
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(cn, org);
        p.subject_alt_names = sans(names)?;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = usages;
        p.serial_number = Some(serial());
        p.use_authority_key_identifier_extension = true;
        validity(&mut p, LEAF_VALIDITY_YEARS);
        let cert = p.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Create the CA (if missing) and every leaf certificate and key pair of a VC named
/// `vc` (for the CA's common name) reachable at `endpoint`.
pub fn ensure(dir: &PkiDir, vc: &str, endpoint: &Endpoint) -> Result<(), PkiError> {
    std::fs::create_dir_all(&dir.0).map_err(|source| PkiError::Io {
        path: dir.0.clone(),
        source,
    })?;
    if !dir.file(files::CA_KEY).exists() || !dir.file(files::CA_CRT).exists() {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(&format!("gpve vcluster CA {vc}"), None);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.serial_number = Some(serial());
        validity(&mut p, CA_VALIDITY_YEARS);
        let cert = p.self_signed(&key)?;
        write(&dir.file(files::CA_KEY), &key.serialize_pem(), 0o600)?;
        write(&dir.file(files::CA_CRT), &cert.pem(), 0o644)?;
    }
    if !dir.file(files::ADMIN_KEY).exists() {
        issue_leaves(dir, endpoint)?;
    }
    if !dir.file(files::SA_KEY).exists() {
        let key = KeyPair::generate()?;
        write(&dir.file(files::SA_PUB), &key.public_key_pem(), 0o644)?;
        write(&dir.file(files::SA_KEY), &key.serialize_pem(), 0o600)?;
    }
    Ok(())
}

/// Reissue every leaf certificate (new keys, new serials) under the same CA.
pub fn rotate(dir: &PkiDir, endpoint: &Endpoint) -> Result<(), PkiError> {
    issue_leaves(dir, endpoint)
}

/// One leaf certificate to issue.
struct Leaf<'a> {
    crt: &'a str,
    key: &'a str,
    cn: &'a str,
    org: Option<&'a str>,
    names: Vec<String>,
    usages: Vec<ExtendedKeyUsagePurpose>,
}

fn issue_leaves(dir: &PkiDir, endpoint: &Endpoint) -> Result<(), PkiError> {
    use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let ca = Ca::load(dir)?;
    let loopback = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let client = |crt, key, cn, org| Leaf {
        crt,
        key,
        cn,
        org,
        names: Vec::new(),
        usages: vec![ClientAuth],
    };
    let leaves = [
        Leaf {
            crt: files::APISERVER_CRT,
            key: files::APISERVER_KEY,
            cn: "kube-apiserver",
            org: None,
            names: apiserver_sans(endpoint),
            usages: vec![ServerAuth],
        },
        client(
            files::ADMIN_CRT,
            files::ADMIN_KEY,
            "kubernetes-admin",
            Some("system:masters"),
        ),
        Leaf {
            crt: files::ETCD_SERVER_CRT,
            key: files::ETCD_SERVER_KEY,
            cn: "etcd-server",
            org: None,
            names: loopback,
            // etcd also dials its peers with this certificate.
            usages: vec![ServerAuth, ClientAuth],
        },
        client(
            files::ETCD_CLIENT_CRT,
            files::ETCD_CLIENT_KEY,
            "kube-apiserver-etcd-client",
            None,
        ),
        client(
            files::FRONT_PROXY_CRT,
            files::FRONT_PROXY_KEY,
            "front-proxy-client",
            None,
        ),
    ];
    for l in leaves {
        let (c, k) = ca.issue(l.cn, l.org, &l.names, l.usages)?;
        write(&dir.file(l.key), &k, 0o600)?;
        write(&dir.file(l.crt), &c, 0o644)?;
    }
    Ok(())
}

/// A kubeconfig for the admin identity, certificates embedded (base64 PEM), as kubeadm
/// writes `admin.conf`.
pub fn admin_kubeconfig(dir: &PkiDir, cluster: &str, server_url: &str) -> Result<String, PkiError> {
    use base64::Engine;
    let b64 = |name: &str| -> Result<String, PkiError> {
        Ok(base64::engine::general_purpose::STANDARD.encode(dir.read(name)?))
    };
    let user = format!("{cluster}-admin");
    let v = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {
            "server": server_url,
            "certificate-authority-data": b64(files::CA_CRT)?,
        }}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(files::ADMIN_CRT)?,
            "client-key-data": b64(files::ADMIN_KEY)?,
        }}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
        "current-context": cluster,
        "preferences": {},
    });
    // YAML, as every kubeconfig; serde_yaml cannot fail on a JSON value.
    Ok(serde_yaml::to_string(&v).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_are_private_and_rotation_keeps_the_ca() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = PkiDir(tmp.path().join("pki"));
        let ep = Endpoint {
            hosts: vec!["127.0.0.1".into(), "vc.example".into()],
        };
        ensure(&dir, "t/a", &ep).expect("pki");
        for k in [
            files::CA_KEY,
            files::ADMIN_KEY,
            files::SA_KEY,
            files::APISERVER_KEY,
        ] {
            let mode = std::fs::metadata(dir.file(k))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{k}");
        }
        let (ca, admin) = (
            dir.read(files::CA_CRT).expect("ca"),
            dir.read(files::ADMIN_CRT).expect("admin"),
        );
        rotate(&dir, &ep).expect("rotate");
        assert_eq!(dir.read(files::CA_CRT).expect("ca"), ca);
        assert_ne!(dir.read(files::ADMIN_CRT).expect("admin"), admin);
        let kc = admin_kubeconfig(&dir, "a", "https://127.0.0.1:6443").expect("kubeconfig");
        assert!(kc.contains("certificate-authority-data"));
        assert!(apiserver_sans(&ep).contains(&"kubernetes.default.svc.cluster.local".into()));
    }
}
