//! Client calls of `/api/v1/tenants/{tenant}/vclusters` (virtual Kubernetes clusters) and
//! [`Client::wait_for_ready`].

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use super::{Client, ClientError};

/// How often [`Client::wait_for_ready`] polls.
pub const VC_POLL_INTERVAL_MS: u64 = 500;

/// The status conditions that are not `True`, as `Type: message` (for errors and the CLI).
pub fn pending_conditions(vc: &Value) -> Vec<String> {
    vc["status"]["conditions"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter(|c| c["status"] != "True" && c["type"] != "Ready" && c["type"] != "Failed")
                .map(|c| {
                    format!(
                        "{}: {}",
                        c["type"].as_str().unwrap_or("?"),
                        c["message"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Client {
    /// `POST .../vclusters` with a `VirtualCluster` manifest.
    pub async fn create_vcluster(
        &self,
        tenant: &str,
        manifest: &Value,
    ) -> Result<Value, ClientError> {
        self.call_json(
            Method::POST,
            &["tenants", tenant, "vclusters"],
            &[],
            Some(manifest),
        )
        .await
    }

    /// `PUT .../vclusters/{name}`: create or scale.
    pub async fn apply_vcluster(
        &self,
        tenant: &str,
        name: &str,
        manifest: &Value,
    ) -> Result<Value, ClientError> {
        self.call_json(
            Method::PUT,
            &["tenants", tenant, "vclusters", name],
            &[],
            Some(manifest),
        )
        .await
    }

    /// `GET .../vclusters`: a `VirtualClusterList`.
    pub async fn vclusters(&self, tenant: &str) -> Result<Value, ClientError> {
        self.call_json(Method::GET, &["tenants", tenant, "vclusters"], &[], None)
            .await
    }

    /// `GET .../vclusters/{name}`.
    pub async fn vcluster(&self, tenant: &str, name: &str) -> Result<Value, ClientError> {
        self.call_json(
            Method::GET,
            &["tenants", tenant, "vclusters", name],
            &[],
            None,
        )
        .await
    }

    /// `DELETE .../vclusters/{name}`: answers once everything is gone.
    pub async fn delete_vcluster(&self, tenant: &str, name: &str) -> Result<Value, ClientError> {
        self.call_json(
            Method::DELETE,
            &["tenants", tenant, "vclusters", name],
            &[],
            None,
        )
        .await
    }

    /// `GET .../kubeconfig`: the admin kubeconfig (YAML).
    pub async fn vcluster_kubeconfig(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<String, ClientError> {
        let v = self
            .call_json(
                Method::GET,
                &["tenants", tenant, "vclusters", name, "kubeconfig"],
                &[],
                None,
            )
            .await?;
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| ClientError::Decode {
                path: "kubeconfig".into(),
                reason: "not a string".into(),
            })
    }

    /// `POST .../upgrade`.
    pub async fn upgrade_vcluster(
        &self,
        tenant: &str,
        name: &str,
        version: &str,
    ) -> Result<Value, ClientError> {
        self.call_json(
            Method::POST,
            &["tenants", tenant, "vclusters", name, "upgrade"],
            &[("version", version)],
            None,
        )
        .await
    }

    /// Poll until the VC's phase is `Ready` (returns it), `Failed` (an error with the
    /// reason) or `timeout_ms` passed (an error naming the conditions still waiting).
    pub async fn wait_for_ready(
        &self,
        tenant: &str,
        name: &str,
        timeout_ms: u64,
    ) -> Result<Value, ClientError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        let vc = format!("{tenant}/{name}");
        loop {
            let v = self.vcluster(tenant, name).await?;
            match v["status"]["phase"].as_str().unwrap_or("") {
                "Ready" => return Ok(v),
                "Failed" => {
                    let reason = v["status"]["conditions"]
                        .as_array()
                        .and_then(|cs| cs.iter().find(|c| c["type"] == "Failed"))
                        .and_then(|c| c["message"].as_str())
                        .unwrap_or("unknown")
                        .to_string();
                    return Err(ClientError::VclusterFailed { vc, reason });
                }
                _ => {}
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(ClientError::VclusterTimeout {
                    vc,
                    timeout_ms,
                    phase: v["status"]["phase"].as_str().unwrap_or("").to_string(),
                    waiting: pending_conditions(&v).join("; "),
                });
            }
            tokio::time::sleep(Duration::from_millis(VC_POLL_INTERVAL_MS).min(deadline - now))
                .await;
        }
    }
}
