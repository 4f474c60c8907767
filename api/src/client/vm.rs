//! Typed client calls for VMs: `/nodes/{node}/qemu/...`.

use std::collections::BTreeMap;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Client, ClientError};

/// One VM as `GET /nodes/{node}/qemu` and `.../status/current` return it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmEntry {
    pub vmid: u32,
    #[serde(default)]
    pub name: Option<String>,
    pub status: String,
    #[serde(default)]
    pub qmpstatus: Option<String>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub maxmem: Option<u64>,
    #[serde(default)]
    pub mem: Option<u64>,
    #[serde(default)]
    pub maxdisk: Option<u64>,
    #[serde(default)]
    pub uptime: Option<u64>,
    #[serde(default)]
    pub template: Option<u8>,
    #[serde(default)]
    pub lock: Option<String>,
}

/// One snapshot (`GET .../snapshot`); `current` is the VM's present state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmSnapshotEntry {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub snaptime: Option<i64>,
    #[serde(default)]
    pub parent: Option<String>,
}

/// Power operations under `.../status/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmAction {
    Start,
    Stop,
    Shutdown,
    Reboot,
    Reset,
    Suspend,
    Resume,
}

impl VmAction {
    pub fn as_str(self) -> &'static str {
        match self {
            VmAction::Start => "start",
            VmAction::Stop => "stop",
            VmAction::Shutdown => "shutdown",
            VmAction::Reboot => "reboot",
            VmAction::Reset => "reset",
            VmAction::Suspend => "suspend",
            VmAction::Resume => "resume",
        }
    }
}

impl Client {
    pub async fn vms(&self, node: &str) -> Result<Vec<VmEntry>, ClientError> {
        self.get_at(&["nodes", node, "qemu"], Vec::new()).await
    }

    pub async fn vm_status(&self, node: &str, vmid: u32) -> Result<VmEntry, ClientError> {
        let id = vmid.to_string();
        self.get_at(
            &["nodes", node, "qemu", &id, "status", "current"],
            Vec::new(),
        )
        .await
    }

    /// The configuration (pending changes applied) as Proxmox returns it.
    pub async fn vm_config(
        &self,
        node: &str,
        vmid: u32,
    ) -> Result<BTreeMap<String, Value>, ClientError> {
        let id = vmid.to_string();
        self.get_at(&["nodes", node, "qemu", &id, "config"], Vec::new())
            .await
    }

    /// `POST /nodes/{node}/qemu`; returns the UPID of the create task.
    pub async fn create_vm(
        &self,
        node: &str,
        params: Vec<(String, String)>,
    ) -> Result<String, ClientError> {
        self.send_at(Method::POST, &["nodes", node, "qemu"], params)
            .await
    }

    /// A power operation; returns the task's UPID.
    pub async fn vm_action(
        &self,
        node: &str,
        vmid: u32,
        action: VmAction,
        params: Vec<(String, String)>,
    ) -> Result<String, ClientError> {
        let id = vmid.to_string();
        self.send_at(
            Method::POST,
            &["nodes", node, "qemu", &id, "status", action.as_str()],
            params,
        )
        .await
    }

    /// `PUT .../config` (synchronous).
    pub async fn update_vm_config(
        &self,
        node: &str,
        vmid: u32,
        params: Vec<(String, String)>,
    ) -> Result<(), ClientError> {
        let id = vmid.to_string();
        let _: Value = self
            .send_at(Method::PUT, &["nodes", node, "qemu", &id, "config"], params)
            .await?;
        Ok(())
    }

    /// `DELETE /nodes/{node}/qemu/{vmid}`; returns the UPID.
    pub async fn delete_vm(
        &self,
        node: &str,
        vmid: u32,
        purge: bool,
    ) -> Result<String, ClientError> {
        let id = vmid.to_string();
        let params = if purge {
            vec![("purge".to_owned(), "1".to_owned())]
        } else {
            Vec::new()
        };
        self.send_at(Method::DELETE, &["nodes", node, "qemu", &id], params)
            .await
    }

    pub async fn vm_snapshots(
        &self,
        node: &str,
        vmid: u32,
    ) -> Result<Vec<VmSnapshotEntry>, ClientError> {
        let id = vmid.to_string();
        self.get_at(&["nodes", node, "qemu", &id, "snapshot"], Vec::new())
            .await
    }

    /// `POST .../snapshot`; returns the UPID.
    pub async fn snapshot_vm(
        &self,
        node: &str,
        vmid: u32,
        name: &str,
        description: Option<&str>,
    ) -> Result<String, ClientError> {
        let id = vmid.to_string();
        let mut params = vec![("snapname".to_owned(), name.to_owned())];
        if let Some(d) = description {
            params.push(("description".to_owned(), d.to_owned()));
        }
        self.send_at(
            Method::POST,
            &["nodes", node, "qemu", &id, "snapshot"],
            params,
        )
        .await
    }

    /// `POST .../snapshot/{name}/rollback`; returns the UPID.
    pub async fn rollback_vm(
        &self,
        node: &str,
        vmid: u32,
        name: &str,
    ) -> Result<String, ClientError> {
        let id = vmid.to_string();
        self.send_at(
            Method::POST,
            &["nodes", node, "qemu", &id, "snapshot", name, "rollback"],
            Vec::new(),
        )
        .await
    }

    /// `POST .../clone`; returns the UPID. `full = false` asks for a linked clone, which
    /// the server allows from templates only.
    pub async fn clone_vm(
        &self,
        node: &str,
        vmid: u32,
        newid: Option<u32>,
        name: Option<&str>,
        full: bool,
    ) -> Result<String, ClientError> {
        let id = vmid.to_string();
        let full = if full { "1" } else { "0" };
        let mut params = vec![("full".to_owned(), full.to_owned())];
        if let Some(n) = newid {
            params.push(("newid".to_owned(), n.to_string()));
        }
        if let Some(n) = name {
            params.push(("name".to_owned(), n.to_owned()));
        }
        self.send_at(Method::POST, &["nodes", node, "qemu", &id, "clone"], params)
            .await
    }

    /// `PUT .../resize`: grow `disk` by (`+1G`) or to (`10G`) `size`; returns the UPID.
    pub async fn resize_disk(
        &self,
        node: &str,
        vmid: u32,
        disk: &str,
        size: &str,
    ) -> Result<String, ClientError> {
        let id = vmid.to_string();
        let params = vec![
            ("disk".to_owned(), disk.to_owned()),
            ("size".to_owned(), size.to_owned()),
        ];
        self.send_at(Method::PUT, &["nodes", node, "qemu", &id, "resize"], params)
            .await
    }

    /// `POST .../move_disk`: copy `disk` to `storage` (optionally converting to `format`)
    /// and keep the old volume as `unusedN` unless `delete`; returns the UPID.
    pub async fn move_disk(
        &self,
        node: &str,
        vmid: u32,
        disk: &str,
        storage: &str,
        format: Option<&str>,
        delete: bool,
    ) -> Result<String, ClientError> {
        let id = vmid.to_string();
        let mut params = vec![
            ("disk".to_owned(), disk.to_owned()),
            ("storage".to_owned(), storage.to_owned()),
        ];
        if let Some(f) = format {
            params.push(("format".to_owned(), f.to_owned()));
        }
        if delete {
            params.push(("delete".to_owned(), "1".to_owned()));
        }
        self.send_at(
            Method::POST,
            &["nodes", node, "qemu", &id, "move_disk"],
            params,
        )
        .await
    }
}
