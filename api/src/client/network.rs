//! Node network (bridges) and firewall calls: `/nodes/{node}/network`,
//! `/cluster/firewall/{rules,options}` and `/nodes/{node}/qemu/{vmid}/firewall/{rules,options}`.

use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::{Client, ClientError};

/// A bridge as `GET /nodes/{node}/network` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetIface {
    pub iface: String,
    #[serde(rename = "type")]
    pub iface_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge_ports: Option<String>,
    #[serde(default)]
    pub autostart: u8,
    /// 1 when applied and present in the kernel.
    #[serde(default)]
    pub active: u8,
    /// 1 when it differs from the applied configuration.
    #[serde(default)]
    pub pending: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comments: Option<String>,
}

/// Parameters of a new bridge.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BridgeSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge_ports: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comments: Option<String>,
}

/// Which rule list a firewall call addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirewallScope {
    Cluster,
    Vm { node: String, vmid: u32 },
}

impl FirewallScope {
    fn base(&self) -> Vec<String> {
        match self {
            Self::Cluster => vec!["cluster".into(), "firewall".into()],
            Self::Vm { node, vmid } => vec![
                "nodes".into(),
                node.clone(),
                "qemu".into(),
                vmid.to_string(),
                "firewall".into(),
            ],
        }
    }

    fn path<'a>(base: &'a [String], tail: &[&'a str]) -> Vec<&'a str> {
        base.iter()
            .map(String::as_str)
            .chain(tail.iter().copied())
            .collect()
    }
}

/// A firewall rule, as listed and as created (`pos` is ignored on create unless set).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FirewallRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos: Option<u32>,
    /// `in`, `out` or `group`.
    #[serde(rename = "type")]
    pub rule_type: String,
    /// ACCEPT, DROP, REJECT, or the security group's name.
    pub action: String,
    #[serde(rename = "macro", default, skip_serializing_if = "Option::is_none")]
    pub macro_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default)]
    pub enable: u8,
}

/// Firewall options of a scope.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FirewallOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_in: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_out: Option<String>,
}

impl Client {
    pub async fn network_ifaces(&self, node: &str) -> Result<Vec<NetIface>, ClientError> {
        self.get_at(&["nodes", node, "network"], Vec::new()).await
    }

    /// Adds a bridge to the pending configuration.
    pub async fn create_bridge(
        &self,
        node: &str,
        iface: &str,
        spec: &BridgeSpec,
    ) -> Result<(), ClientError> {
        let mut params = super::to_params(spec)?;
        params.push(("iface".into(), iface.into()));
        params.push(("type".into(), "bridge".into()));
        let _: serde_json::Value = self
            .send_at(Method::POST, &["nodes", node, "network"], params)
            .await?;
        Ok(())
    }

    /// Removes an interface from the pending configuration.
    pub async fn delete_iface(&self, node: &str, iface: &str) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .send_at(
                Method::DELETE,
                &["nodes", node, "network", iface],
                Vec::new(),
            )
            .await?;
        Ok(())
    }

    /// Applies the pending configuration; returns the task's UPID.
    pub async fn apply_network(&self, node: &str) -> Result<String, ClientError> {
        self.send_at(Method::PUT, &["nodes", node, "network"], Vec::new())
            .await
    }

    /// Drops the pending configuration.
    pub async fn revert_network(&self, node: &str) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .send_at(Method::DELETE, &["nodes", node, "network"], Vec::new())
            .await?;
        Ok(())
    }

    pub async fn firewall_rules(
        &self,
        scope: &FirewallScope,
    ) -> Result<Vec<FirewallRule>, ClientError> {
        let base = scope.base();
        self.get_at(&FirewallScope::path(&base, &["rules"]), Vec::new())
            .await
    }

    pub async fn add_firewall_rule(
        &self,
        scope: &FirewallScope,
        rule: &FirewallRule,
    ) -> Result<(), ClientError> {
        let base = scope.base();
        let _: serde_json::Value = self
            .send_at(
                Method::POST,
                &FirewallScope::path(&base, &["rules"]),
                super::to_params(rule)?,
            )
            .await?;
        Ok(())
    }

    pub async fn delete_firewall_rule(
        &self,
        scope: &FirewallScope,
        pos: u32,
    ) -> Result<(), ClientError> {
        let base = scope.base();
        let pos = pos.to_string();
        let _: serde_json::Value = self
            .send_at(
                Method::DELETE,
                &FirewallScope::path(&base, &["rules", &pos]),
                Vec::new(),
            )
            .await?;
        Ok(())
    }

    pub async fn firewall_options(
        &self,
        scope: &FirewallScope,
    ) -> Result<FirewallOptions, ClientError> {
        let base = scope.base();
        self.get_at(&FirewallScope::path(&base, &["options"]), Vec::new())
            .await
    }

    pub async fn set_firewall_options(
        &self,
        scope: &FirewallScope,
        options: &FirewallOptions,
    ) -> Result<(), ClientError> {
        let base = scope.base();
        let _: serde_json::Value = self
            .send_at(
                Method::PUT,
                &FirewallScope::path(&base, &["options"]),
                super::to_params(options)?,
            )
            .await?;
        Ok(())
    }
}
