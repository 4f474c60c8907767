//! Storage configuration records: Proxmox's `storage.cfg`, one store record per storage.
//!
//! Key layout: `("storage", id: &str)` → JSON [`StorageConfig`]. Listing is one range read
//! over the `("storage",)` subspace. Every change is one store transaction, so a create
//! racing another create of the same id fails instead of overwriting it.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use gpve_storage_drivers::btrfs::{BtrfsConfig, BtrfsDriver};
use gpve_storage_drivers::dir::{DirConfig, DirDriver};
use gpve_storage_drivers::{Content, StorageDriver, StorageError};
use gpve_store::{Key, Store, StoreError};
use serde::{Deserialize, Serialize};

/// Name of the store subspace holding storage records.
pub const STORAGE_SUBSPACE: &str = "storage";
/// Id of the storage `gpve-server init` creates.
pub const DEFAULT_STORAGE_ID: &str = "local";
/// Most nodes a `nodes` restriction may list.
pub const MAX_NODES_PER_STORAGE: usize = 256;
/// Longest accepted storage path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;

/// Failures reading or changing storage configuration.
#[derive(Debug, thiserror::Error)]
pub enum StorageConfigError {
    /// A field is invalid; `field` is the API parameter name.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("storage '{0}' already exists")]
    Exists(String),
    #[error("storage '{0}' does not exist")]
    NotFound(String),
    #[error("the store failed")]
    Store(#[from] StoreError),
    #[error("the storage driver refused the configuration")]
    Driver(#[from] StorageError),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> StorageConfigError {
    StorageConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Storage types gpve has a driver for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageType {
    Dir,
    Btrfs,
}

impl StorageType {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageType::Dir => "dir",
            StorageType::Btrfs => "btrfs",
        }
    }

    /// Parse a Proxmox storage type; types without a gpve driver are refused by name.
    pub fn parse(s: &str) -> Result<Self, StorageConfigError> {
        match s {
            "dir" => Ok(StorageType::Dir),
            "btrfs" => Ok(StorageType::Btrfs),
            other => Err(invalid(
                "type",
                format!("storage type '{other}' is not supported by gpve (use dir or btrfs)"),
            )),
        }
    }
}

/// One storage, as Proxmox's `storage.cfg` section holds it (the fields gpve honours).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageConfig {
    pub storage: String,
    #[serde(rename = "type")]
    pub kind: StorageType,
    pub path: PathBuf,
    /// Content types held, in a stable order.
    pub content: Vec<Content>,
    /// The same volumes are visible on every node.
    #[serde(default)]
    pub shared: bool,
    /// Nodes the storage is available on; `None` means all.
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
    #[serde(default)]
    pub disable: bool,
}

/// Parse a `pve-storage-content-list` (`images,iso`). Content types of containers and
/// imports are refused by name: gpve has no driver support for them.
pub fn parse_content_list(s: &str) -> Result<Vec<Content>, StorageConfigError> {
    let mut out = Vec::new();
    for part in s.split([',', ';', ' ']).filter(|p| !p.is_empty()) {
        let c = match part {
            "rootdir" | "vztmpl" | "import" => {
                return Err(invalid(
                    "content",
                    format!(
                        "content type '{part}' is not supported by gpve (containers and imports are not)"
                    ),
                ));
            }
            other => other
                .parse::<Content>()
                .map_err(|e| invalid("content", e.to_string()))?,
        };
        if !out.contains(&c) {
            out.push(c);
        }
    }
    if out.is_empty() {
        return Err(invalid("content", "at least one content type is needed"));
    }
    out.sort();
    Ok(out)
}

/// `images,iso` form of a content list.
pub fn content_list_string(content: &[Content]) -> String {
    content
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn is_node_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Parse a `pve-node-list`.
pub fn parse_node_list(s: &str) -> Result<Vec<String>, StorageConfigError> {
    let mut out: Vec<String> = Vec::new();
    for n in s.split([',', ';', ' ']).filter(|p| !p.is_empty()) {
        if !is_node_name(n) {
            return Err(invalid("nodes", format!("'{n}' is not a valid node name")));
        }
        if !out.iter().any(|o| o == n) {
            out.push(n.to_string());
        }
    }
    if out.len() > MAX_NODES_PER_STORAGE {
        return Err(invalid(
            "nodes",
            format!("at most {MAX_NODES_PER_STORAGE} nodes may be listed"),
        ));
    }
    out.sort();
    Ok(out)
}

/// Check a storage id (`pve-storage-id`: a letter, then letters, digits, `-`, `_`, `.`).
pub fn validate_storage_id(id: &str) -> Result<(), StorageConfigError> {
    let mut chars = id.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && id.len() <= gpve_storage_drivers::volume_id::MAX_STORAGE_ID_BYTES
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "storage",
            "use a letter, then letters, digits, '-', '_' or '.' (at most 64 characters)",
        ))
    }
}

/// Check a storage path: absolute, UTF-8, normalised (no `.`/`..`), not `/` itself.
pub fn validate_path(path: &Path) -> Result<(), StorageConfigError> {
    let Some(s) = path.to_str() else {
        return Err(invalid("path", "the path must be valid UTF-8"));
    };
    if s.len() > MAX_PATH_BYTES {
        return Err(invalid("path", format!("at most {MAX_PATH_BYTES} bytes")));
    }
    if !path.is_absolute() {
        return Err(invalid("path", "the path must be absolute"));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(
            "path",
            "the path must not contain control characters",
        ));
    }
    // Checked on the text: `Path::components` silently drops `.` segments.
    if s.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(invalid("path", "the path must not contain '.' or '..'"));
    }
    let normal = path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count();
    if normal == 0 {
        return Err(invalid("path", "the root directory cannot be a storage"));
    }
    Ok(())
}

impl StorageConfig {
    /// A `dir` storage holding every content type on every node.
    pub fn dir(storage: &str, path: impl Into<PathBuf>) -> Self {
        StorageConfig {
            storage: storage.to_string(),
            kind: StorageType::Dir,
            path: path.into(),
            content: Content::ALL.to_vec(),
            shared: false,
            nodes: None,
            disable: false,
        }
    }

    /// Check every field; call before persisting.
    pub fn validate(&self) -> Result<(), StorageConfigError> {
        validate_storage_id(&self.storage)?;
        validate_path(&self.path)?;
        if self.content.is_empty() {
            return Err(invalid("content", "at least one content type is needed"));
        }
        if let Some(nodes) = &self.nodes {
            for n in nodes {
                if !is_node_name(n) {
                    return Err(invalid("nodes", format!("'{n}' is not a valid node name")));
                }
            }
        }
        Ok(())
    }

    /// Whether `node` may use this storage (ignores `disable`).
    pub fn available_on(&self, node: &str) -> bool {
        self.nodes
            .as_ref()
            .is_none_or(|list| list.iter().any(|n| n == node))
    }

    /// Whether a `storage:{id}` actor runs for it on `node`.
    pub fn active_on(&self, node: &str) -> bool {
        !self.disable && self.available_on(node)
    }

    /// The driver for this storage on `node`.
    pub fn driver(&self, node: &str) -> Result<Arc<dyn StorageDriver>, StorageConfigError> {
        Ok(match self.kind {
            StorageType::Dir => {
                let mut cfg = DirConfig::new(&self.storage, &self.path, node);
                cfg.content = self.content.clone();
                cfg.shared = self.shared;
                Arc::new(DirDriver::new(cfg)?)
            }
            StorageType::Btrfs => {
                let mut cfg = BtrfsConfig::new(&self.storage, &self.path, node);
                cfg.content = self.content.clone();
                Arc::new(BtrfsDriver::new(cfg)?)
            }
        })
    }
}

/// The store key of a storage record.
pub fn storage_key(id: &str) -> Key {
    Key::pack(&(STORAGE_SUBSPACE, id))
}

/// Every storage record, ordered by id.
pub async fn list(store: &Store) -> Result<Vec<StorageConfig>, StorageConfigError> {
    let rows: Vec<(Key, StorageConfig)> =
        store.list_json(&Key::prefix(&(STORAGE_SUBSPACE,))).await?;
    Ok(rows.into_iter().map(|(_, v)| v).collect())
}

/// One storage record.
pub async fn get(store: &Store, id: &str) -> Result<StorageConfig, StorageConfigError> {
    store
        .get_json(&storage_key(id))
        .await?
        .ok_or_else(|| StorageConfigError::NotFound(id.to_string()))
}

/// Persist a new storage; fails if the id is taken.
pub async fn create(store: &Store, cfg: &StorageConfig) -> Result<(), StorageConfigError> {
    cfg.validate()?;
    let key = storage_key(&cfg.storage);
    let created = store.create_json(&key, cfg).await?;
    if created {
        Ok(())
    } else {
        Err(StorageConfigError::Exists(cfg.storage.clone()))
    }
}

/// Read-modify-write one storage in one transaction; returns the new record. `change`
/// may run more than once (transaction retries) and must be deterministic.
pub async fn update<F>(
    store: &Store,
    id: &str,
    change: F,
) -> Result<StorageConfig, StorageConfigError>
where
    F: Fn(&mut StorageConfig) -> Result<(), StorageConfigError> + Send + Sync + 'static,
{
    let key = storage_key(id);
    let change = Arc::new(change);
    // The closure's own error travels out of the transaction through the Ok side, so a
    // validation failure aborts without being mistaken for a store error.
    let outcome: Result<StorageConfig, StorageConfigError> = store
        .transact(|tx| {
            let key = key.clone();
            let id = id.to_string();
            let change = Arc::clone(&change);
            Box::pin(async move {
                let Some(mut cfg) = tx.get_json::<StorageConfig>(&key).await? else {
                    return Ok(Err(StorageConfigError::NotFound(id)));
                };
                if let Err(e) = change(&mut cfg).and_then(|()| cfg.validate()) {
                    return Ok(Err(e));
                }
                tx.put_json(&key, &cfg)?;
                Ok(Ok(cfg))
            })
        })
        .await?;
    outcome
}

/// Remove a storage record (volumes on it are left untouched, as Proxmox does).
pub async fn delete(store: &Store, id: &str) -> Result<StorageConfig, StorageConfigError> {
    let key = storage_key(id);
    let removed: Option<StorageConfig> = store
        .transact(|tx| {
            let key = key.clone();
            Box::pin(async move {
                let cfg = tx.get_json::<StorageConfig>(&key).await?;
                if cfg.is_some() {
                    tx.clear(&key);
                }
                Ok(cfg)
            })
        })
        .await?;
    removed.ok_or_else(|| StorageConfigError::NotFound(id.to_string()))
}

/// Create the default `local` dir storage at `path` unless a `local` record exists (so a
/// re-run of an interrupted init keeps what the operator changed).
pub async fn ensure_default_local(store: &Store, path: &Path) -> Result<(), StorageConfigError> {
    match create(store, &StorageConfig::dir(DEFAULT_STORAGE_ID, path)).await {
        Ok(()) | Err(StorageConfigError::Exists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_lists() {
        assert_eq!(
            parse_content_list("iso,images,iso").unwrap(),
            vec![Content::Images, Content::Iso]
        );
        assert!(parse_content_list("").is_err());
        assert!(
            parse_content_list("rootdir")
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
        assert!(parse_content_list("bogus").is_err());
        assert_eq!(
            content_list_string(&[Content::Images, Content::Snippets]),
            "images,snippets"
        );
    }

    #[test]
    fn paths_and_ids() {
        assert!(validate_path(Path::new("/var/lib/vz")).is_ok());
        for bad in ["relative", "/", "/a/../b", "/a/./b", "/a\n"] {
            assert!(validate_path(Path::new(bad)).is_err(), "{bad:?}");
        }
        assert!(validate_storage_id("local-btrfs.2").is_ok());
        for bad in ["", "1x", "a/b", "a:b", "../x"] {
            assert!(validate_storage_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn node_restriction() {
        let mut c = StorageConfig::dir("s", "/srv/s");
        assert!(c.active_on("n1"));
        c.nodes = Some(parse_node_list("n2,n3").unwrap());
        assert!(!c.active_on("n1") && c.active_on("n2"));
        c.disable = true;
        assert!(!c.active_on("n2"));
        assert!(parse_node_list("bad_node").is_err());
    }
}
