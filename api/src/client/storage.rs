//! Typed client calls for storage: `/storage` (configuration) and
//! `/nodes/{node}/storage/...` (status, content, snapshots).

use serde::{Deserialize, Serialize};

use super::{Client, ClientError};
use reqwest::Method;

/// One storage's configuration (`GET /storage`, `GET /storage/{storage}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageEntry {
    pub storage: String,
    #[serde(rename = "type")]
    pub storage_type: String,
    #[serde(default)]
    pub path: Option<String>,
    /// Comma-separated content types (`images,iso`).
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub shared: Option<u8>,
    /// Comma-separated node restriction.
    #[serde(default)]
    pub nodes: Option<String>,
    #[serde(default)]
    pub disable: Option<u8>,
    #[serde(default)]
    pub digest: Option<String>,
}

/// What `POST /storage` and `PUT /storage/{storage}` send; `None` fields are left out.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StorageSpec {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub storage_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disable: Option<u8>,
}

/// One storage's status on a node (`GET /nodes/{node}/storage`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageStatusEntry {
    #[serde(default)]
    pub storage: String,
    #[serde(rename = "type")]
    pub storage_type: String,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub active: Option<u8>,
    #[serde(default)]
    pub enabled: Option<u8>,
    #[serde(default)]
    pub shared: Option<u8>,
    #[serde(default)]
    pub total: Option<u64>,
    #[serde(default)]
    pub used: Option<u64>,
    #[serde(default)]
    pub avail: Option<u64>,
    /// Why the storage is not active (gpve extension).
    #[serde(default)]
    pub error: Option<String>,
}

/// One volume (`GET /nodes/{node}/storage/{storage}/content[/{volume}]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeEntry {
    pub volid: String,
    pub content: String,
    pub format: String,
    pub size: u64,
    #[serde(default)]
    pub used: Option<u64>,
    #[serde(default)]
    pub vmid: Option<u32>,
    #[serde(default)]
    pub parent: Option<String>,
    /// Host path (single-volume reads only).
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub notes: Option<String>,
    #[serde(default)]
    pub protected: Option<u8>,
}

/// One snapshot of a volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeSnapshotEntry {
    pub name: String,
    #[serde(default)]
    pub snaptime: Option<u64>,
}

/// What `allocate_volume` asks for.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeSpec {
    pub vmid: u32,
    /// `vm-VMID-NAME`; empty for the next free `vm-VMID-disk-N`.
    pub filename: String,
    /// Proxmox size: KiB, or with suffix `M` / `G`.
    pub size: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

fn form(spec: &impl Serialize) -> Result<Vec<(String, String)>, ClientError> {
    super::to_params(spec)
}

impl Client {
    pub async fn storages(&self) -> Result<Vec<StorageEntry>, ClientError> {
        self.get_at(&["storage"], Vec::new()).await
    }

    pub async fn storage(&self, storage: &str) -> Result<StorageEntry, ClientError> {
        self.get_at(&["storage", storage], Vec::new()).await
    }

    pub async fn create_storage(
        &self,
        storage: &str,
        spec: &StorageSpec,
    ) -> Result<(), ClientError> {
        let mut params = form(spec)?;
        params.push(("storage".into(), storage.into()));
        let _: serde_json::Value = self.send_at(Method::POST, &["storage"], params).await?;
        Ok(())
    }

    pub async fn update_storage(
        &self,
        storage: &str,
        spec: &StorageSpec,
    ) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .send_at(Method::PUT, &["storage", storage], form(spec)?)
            .await?;
        Ok(())
    }

    pub async fn delete_storage(&self, storage: &str) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .send_at(Method::DELETE, &["storage", storage], Vec::new())
            .await?;
        Ok(())
    }

    pub async fn node_storages(&self, node: &str) -> Result<Vec<StorageStatusEntry>, ClientError> {
        self.get_at(&["nodes", node, "storage"], Vec::new()).await
    }

    pub async fn storage_status(
        &self,
        node: &str,
        storage: &str,
    ) -> Result<StorageStatusEntry, ClientError> {
        let mut s: StorageStatusEntry = self
            .get_at(&["nodes", node, "storage", storage, "status"], Vec::new())
            .await?;
        // The status route does not repeat the id.
        if s.storage.is_empty() {
            s.storage = storage.to_string();
        }
        Ok(s)
    }

    /// Volumes of a storage, optionally of one content type and one VMID.
    pub async fn volumes(
        &self,
        node: &str,
        storage: &str,
        content: Option<&str>,
        vmid: Option<u32>,
    ) -> Result<Vec<VolumeEntry>, ClientError> {
        let mut params = Vec::new();
        if let Some(c) = content {
            params.push(("content".to_string(), c.to_string()));
        }
        if let Some(v) = vmid {
            params.push(("vmid".to_string(), v.to_string()));
        }
        self.get_at(&["nodes", node, "storage", storage, "content"], params)
            .await
    }

    pub async fn volume(
        &self,
        node: &str,
        storage: &str,
        volid: &str,
    ) -> Result<VolumeEntry, ClientError> {
        self.get_at(
            &["nodes", node, "storage", storage, "content", volid],
            Vec::new(),
        )
        .await
    }

    /// Allocate a disk image; returns its volume id.
    pub async fn allocate_volume(
        &self,
        node: &str,
        storage: &str,
        spec: &VolumeSpec,
    ) -> Result<String, ClientError> {
        self.send_at(
            Method::POST,
            &["nodes", node, "storage", storage, "content"],
            form(spec)?,
        )
        .await
    }

    /// Start deleting a volume; returns the task's UPID.
    pub async fn delete_volume(
        &self,
        node: &str,
        storage: &str,
        volid: &str,
    ) -> Result<String, ClientError> {
        self.send_at(
            Method::DELETE,
            &["nodes", node, "storage", storage, "content", volid],
            Vec::new(),
        )
        .await
    }

    pub async fn volume_snapshots(
        &self,
        node: &str,
        storage: &str,
        volid: &str,
    ) -> Result<Vec<VolumeSnapshotEntry>, ClientError> {
        self.get_at(
            &["nodes", node, "storage", storage, "snapshot"],
            vec![("volume".into(), volid.into())],
        )
        .await
    }

    pub async fn snapshot_volume(
        &self,
        node: &str,
        storage: &str,
        volid: &str,
        snapname: &str,
    ) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .send_at(
                Method::POST,
                &["nodes", node, "storage", storage, "snapshot"],
                vec![
                    ("volume".into(), volid.into()),
                    ("snapname".into(), snapname.into()),
                ],
            )
            .await?;
        Ok(())
    }

    pub async fn delete_volume_snapshot(
        &self,
        node: &str,
        storage: &str,
        volid: &str,
        snapname: &str,
    ) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .send_at(
                Method::DELETE,
                &["nodes", node, "storage", storage, "snapshot"],
                vec![
                    ("volume".into(), volid.into()),
                    ("snapname".into(), snapname.into()),
                ],
            )
            .await?;
        Ok(())
    }
}
