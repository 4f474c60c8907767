//! The server's data directory: the store, the TLS certificate and key, the ticket-signing
//! secret and the node configuration.
//!
//! ```text
//! DIR/config.json    node and cluster name (written last: its presence means "initialised")
//! DIR/gpve.redb      the store
//! DIR/authkey.hex    ticket and CSRF signing secret (0600)
//! DIR/cert.pem       self-signed certificate (SANs: node name, localhost, 127.0.0.1, ::1)
//! DIR/key.pem        its private key (0600)
//! DIR/storage/local  the default `local` dir storage (its record is in the store)
//! ```

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use gpve_store::Store;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::access_db::{AccessDb, AccessDbError, UserChanges};
use crate::auth::TicketKey;

/// Failures setting up or loading a data directory.
#[derive(Debug, Error)]
pub enum DataDirError {
    #[error("{0} is already initialised (found config.json); refusing to overwrite it")]
    AlreadyInitialised(PathBuf),
    #[error("{0} is not initialised; run `gpve-server init` first")]
    NotInitialised(PathBuf),
    #[error("invalid node name '{0}' (letters, digits and '-', at most 64 characters)")]
    NodeName(String),
    #[error("the root password must have at least 5 characters")]
    WeakPassword,
    #[error("could not access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("certificate generation failed")]
    Cert(#[from] rcgen::Error),
    #[error("opening the store failed")]
    Store(#[from] gpve_store::StoreError),
    #[error("creating the root user failed")]
    Access(#[from] AccessDbError),
}

/// Node identity kept in `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeConfig {
    pub node_name: String,
    #[serde(default)]
    pub cluster_name: Option<String>,
}

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), DataDirError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(contents).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// The host name from the kernel, for the default node name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().split('.').next().unwrap_or("").to_string())
        .ok()
        .filter(|s| crate::schema::is_node(s))
        .unwrap_or_else(|| "localhost".to_string())
}

/// `AA:BB:...` SHA-256 fingerprint of a DER certificate, as Proxmox shows it.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl DataDir {
    /// The directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }
    pub fn store(&self) -> PathBuf {
        self.root.join("gpve.redb")
    }
    pub fn authkey(&self) -> PathBuf {
        self.root.join("authkey.hex")
    }
    pub fn cert(&self) -> PathBuf {
        self.root.join("cert.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.root.join("key.pem")
    }
    /// Root of the default `local` dir storage (created by `init`).
    pub fn local_storage(&self) -> PathBuf {
        self.root.join("storage").join("local")
    }

    /// Create everything a server needs; refuses an initialised directory. Returns the
    /// certificate fingerprint.
    pub async fn init(
        &self,
        root_password: &str,
        node: NodeConfig,
    ) -> Result<String, DataDirError> {
        if !crate::schema::is_node(&node.node_name) {
            return Err(DataDirError::NodeName(node.node_name));
        }
        if root_password.chars().count() < 5 {
            return Err(DataDirError::WeakPassword);
        }
        if self.config().exists() {
            return Err(DataDirError::AlreadyInitialised(self.root.clone()));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(io(&self.root))?;

        write_file(
            &self.authkey(),
            TicketKey::generate().to_hex().as_bytes(),
            0o600,
        )?;

        let sans = vec![
            node.node_name.clone(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        let cert = rcgen::generate_simple_self_signed(sans)?;
        write_file(
            &self.key(),
            cert.signing_key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_file(&self.cert(), cert.cert.pem().as_bytes(), 0o644)?;
        let fp = fingerprint(cert.cert.der());

        let store = Store::open_redb(&self.store())?;
        let access = AccessDb::new(store.clone());
        match access
            .create_user("root@pam", Some(root_password), UserChanges::default())
            .await
        {
            // A previous init died before writing config.json: reset the password.
            Err(AccessDbError::UserExists(_)) => {
                access.set_password("root@pam", root_password).await?
            }
            other => other?,
        }
        gpve_actors::storage::config::ensure_default_local(&store, &self.local_storage())
            .await
            .map_err(|e| DataDirError::Corrupt {
                path: self.store(),
                reason: gpve_actors::storage::error_chain(&e),
            })?;
        drop(access);

        let config = serde_json::to_vec_pretty(&node).map_err(|e| DataDirError::Corrupt {
            path: self.config(),
            reason: e.to_string(),
        })?;
        write_file(&self.config(), &config, 0o644)?;
        Ok(fp)
    }

    /// Read the node configuration and the signing key.
    pub fn load(&self) -> Result<(NodeConfig, TicketKey), DataDirError> {
        let path = self.config();
        if !path.exists() {
            return Err(DataDirError::NotInitialised(self.root.clone()));
        }
        let text = std::fs::read(&path).map_err(io(&path))?;
        let config: NodeConfig =
            serde_json::from_slice(&text).map_err(|e| DataDirError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let kpath = self.authkey();
        let key_text = std::fs::read_to_string(&kpath).map_err(io(&kpath))?;
        let key = TicketKey::from_hex(&key_text).ok_or_else(|| DataDirError::Corrupt {
            path: kpath.clone(),
            reason: "expected 64 hex digits".into(),
        })?;
        Ok((config, key))
    }
}
