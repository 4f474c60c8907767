//! The cluster CA and the bootstrap tokens in the server's data directory.
//!
//! ```text
//! DIR/cluster/ca/cert.pem             the cluster CA certificate
//! DIR/cluster/ca/key.pem              its key (0600)
//! DIR/cluster/join-tokens/<id>.json   one token: SHA-256 of its secret, expiry, reusable
//! ```
//!
//! Tokens live in files rather than in the store because the embedded store (redb) is
//! opened by one process at a time: `gpve-server token create` must work while the server
//! runs. A single-use token is claimed by renaming its file, which is atomic.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use gpve_transport::pki::ClusterCa;
use gpve_transport::token::BootstrapToken;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Failures reading or writing the cluster files.
#[derive(Debug, Error)]
pub enum ClusterFilesError {
    #[error("could not access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("the cluster CA could not be created or loaded")]
    Pki(#[from] gpve_transport::pki::PkiError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterFilesError + '_ {
    move |source| ClusterFilesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), ClusterFilesError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(contents).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn mkdir(path: &Path) -> Result<(), ClusterFilesError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io(path))
}

/// A stored bootstrap token (never the secret itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub secret_sha256: String,
    pub created_at_s: i64,
    pub expires_at_s: i64,
    pub reusable: bool,
    #[serde(default)]
    pub description: Option<String>,
}

/// Why a token was refused. Messages are shown to the joining operator.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenRefusal {
    #[error("the join token is unknown or was already used")]
    Unknown,
    #[error("the join token expired {0} s ago; create a new one with `gpve-server token create`")]
    Expired(i64),
    #[error("the join token's secret is wrong")]
    WrongSecret,
    #[error("the join token was made for another cluster (its CA fingerprint differs)")]
    OtherCluster,
}

/// The cluster files of one data directory.
#[derive(Debug, Clone)]
pub struct ClusterFiles {
    pub root: PathBuf,
}

impl ClusterFiles {
    /// The files under `data_dir/cluster`.
    pub fn new(data_dir: &Path) -> Self {
        ClusterFiles {
            root: data_dir.join("cluster"),
        }
    }

    fn ca_dir(&self) -> PathBuf {
        self.root.join("ca")
    }

    fn tokens_dir(&self) -> PathBuf {
        self.root.join("join-tokens")
    }

    /// Load the cluster CA, creating it on first use. Two processes racing here end with
    /// one CA: the new one is written to a private directory and renamed into place.
    pub fn ensure_ca(&self, cluster_name: &str) -> Result<ClusterCa, ClusterFilesError> {
        let dir = self.ca_dir();
        if !dir.exists() {
            mkdir(&self.root)?;
            let tmp = self.root.join(format!(".ca-{}", rand::random::<u64>()));
            mkdir(&tmp)?;
            let ca = ClusterCa::generate(cluster_name)?;
            write_new(&tmp.join("key.pem"), ca.key_pem.as_bytes(), 0o600)?;
            write_new(&tmp.join("cert.pem"), ca.cert_pem.as_bytes(), 0o644)?;
            if std::fs::rename(&tmp, &dir).is_err() {
                // Someone else's CA won; ours was never used.
                let _ = std::fs::remove_dir_all(&tmp);
            }
        }
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let cert_pem = std::fs::read_to_string(&cert).map_err(io(&cert))?;
        let key_pem = std::fs::read_to_string(&key).map_err(io(&key))?;
        Ok(ClusterCa::from_pem(&cert_pem, &key_pem)?)
    }

    /// Create a token valid for `ttl_s` seconds; returns it (the only time the secret is
    /// shown). Expired token files are removed on the way.
    pub fn create_token(
        &self,
        ca: &ClusterCa,
        ttl_s: i64,
        reusable: bool,
        description: Option<String>,
        now_s: i64,
    ) -> Result<(BootstrapToken, TokenRecord), ClusterFilesError> {
        let dir = self.tokens_dir();
        mkdir(&dir)?;
        self.prune_expired(now_s);
        let token = BootstrapToken::generate(&ca.fingerprint());
        let record = TokenRecord {
            id: token.id.clone(),
            secret_sha256: token.secret_hash(),
            created_at_s: now_s,
            expires_at_s: now_s.saturating_add(ttl_s),
            reusable,
            description,
        };
        let path = dir.join(format!("{}.json", token.id));
        let json = serde_json::to_vec_pretty(&record).map_err(|e| ClusterFilesError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_new(&path, &json, 0o600)?;
        Ok((token, record))
    }

    fn prune_expired(&self, now_s: i64) {
        let Ok(entries) = std::fs::read_dir(self.tokens_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let expired = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<TokenRecord>(&b).ok())
                .is_some_and(|r| r.expires_at_s < now_s);
            if expired {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Check `token` and, if it is single-use, claim it (nobody else can use it after this
    /// returns). Returns the record and a [`TokenClaim`] that puts a claimed token back if
    /// the join fails later.
    pub fn claim_token(
        &self,
        ca: &ClusterCa,
        token: &BootstrapToken,
        now_s: i64,
    ) -> Result<Result<TokenClaim, TokenRefusal>, ClusterFilesError> {
        if token.ca_fingerprint != ca.fingerprint() {
            return Ok(Err(TokenRefusal::OtherCluster));
        }
        let path = self.tokens_dir().join(format!("{}.json", token.id));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Err(TokenRefusal::Unknown));
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let record: TokenRecord =
            serde_json::from_slice(&bytes).map_err(|e| ClusterFilesError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if !token.secret_matches(&record.secret_sha256) {
            return Ok(Err(TokenRefusal::WrongSecret));
        }
        if record.expires_at_s < now_s {
            return Ok(Err(TokenRefusal::Expired(now_s - record.expires_at_s)));
        }
        if record.reusable {
            return Ok(Ok(TokenClaim { claimed: None }));
        }
        let claimed = path.with_extension(format!("claimed-{}", rand::random::<u64>()));
        match std::fs::rename(&path, &claimed) {
            Ok(()) => Ok(Ok(TokenClaim {
                claimed: Some((claimed, path)),
            })),
            // Another join claimed it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Err(TokenRefusal::Unknown)),
            Err(e) => Err(io(&path)(e)),
        }
    }
}

/// A token taken for one join: [`TokenClaim::commit`] spends it, [`TokenClaim::release`]
/// (after a failed join) makes it usable again.
#[derive(Debug)]
pub struct TokenClaim {
    /// (claimed file, original path) of a single-use token.
    claimed: Option<(PathBuf, PathBuf)>,
}

impl TokenClaim {
    pub fn commit(self) {
        if let Some((claimed, _)) = self.claimed {
            let _ = std::fs::remove_file(claimed);
        }
    }

    pub fn release(self) {
        if let Some((claimed, original)) = self.claimed {
            let _ = std::fs::rename(claimed, original);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_use_tokens_are_claimed_once_and_released_on_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = ClusterFiles::new(dir.path());
        let ca = files.ensure_ca("t").expect("ca");
        assert_eq!(
            files.ensure_ca("t").expect("reload").fingerprint(),
            ca.fingerprint()
        );
        let (token, _) = files
            .create_token(&ca, 60, false, None, 1_000)
            .expect("token");
        let claim = files
            .claim_token(&ca, &token, 1_001)
            .expect("io")
            .expect("valid");
        assert_eq!(
            files.claim_token(&ca, &token, 1_001).expect("io").err(),
            Some(TokenRefusal::Unknown)
        );
        claim.release();
        let claim = files
            .claim_token(&ca, &token, 1_001)
            .expect("io")
            .expect("again");
        claim.commit();
        assert_eq!(
            files.claim_token(&ca, &token, 1_002).expect("io").err(),
            Some(TokenRefusal::Unknown)
        );
    }

    #[test]
    fn refuses_expired_forged_and_foreign_tokens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = ClusterFiles::new(dir.path());
        let ca = files.ensure_ca("t").expect("ca");
        let (token, _) = files
            .create_token(&ca, 60, true, None, 1_000)
            .expect("token");
        assert_eq!(
            files.claim_token(&ca, &token, 1_100).expect("io").err(),
            Some(TokenRefusal::Expired(40))
        );
        let forged: BootstrapToken =
            format!("gpve1.{}.{}.{}", ca.fingerprint(), token.id, "0".repeat(32))
                .parse()
                .expect("parses");
        assert_eq!(
            files.claim_token(&ca, &forged, 1_001).expect("io").err(),
            Some(TokenRefusal::WrongSecret)
        );
        let other = ClusterCa::generate("o").expect("ca");
        let foreign = BootstrapToken::generate(&other.fingerprint());
        assert_eq!(
            files.claim_token(&ca, &foreign, 1_001).expect("io").err(),
            Some(TokenRefusal::OtherCluster)
        );
        // Reusable: still usable after a successful claim.
        files
            .claim_token(&ca, &token, 1_001)
            .expect("io")
            .expect("ok")
            .commit();
        assert!(files.claim_token(&ca, &token, 1_001).expect("io").is_ok());
    }
}
