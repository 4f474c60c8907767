//! Client calls of gpve's own `/api/v1/nodes/{node}/cordon` (cordon and uncordon).

use reqwest::Method;
use serde::Deserialize;

use super::{Client, ClientError, decode};

/// What cordon and uncordon answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CordonState {
    pub node: String,
    pub cordoned: u8,
}

impl Client {
    async fn cordon_call(&self, node: &str, method: Method) -> Result<CordonState, ClientError> {
        let path = format!("/api/v1/nodes/{node}/cordon");
        let data = self
            .call(
                method,
                self.url_at(&["api", "v1", "nodes", node, "cordon"]),
                Vec::new(),
                &path,
            )
            .await?;
        decode(data, &path)
    }

    /// `POST /api/v1/nodes/{node}/cordon`: no new VMs are placed on the node.
    pub async fn cordon_node(&self, node: &str) -> Result<CordonState, ClientError> {
        self.cordon_call(node, Method::POST).await
    }

    /// `DELETE /api/v1/nodes/{node}/cordon`.
    pub async fn uncordon_node(&self, node: &str) -> Result<CordonState, ClientError> {
        self.cordon_call(node, Method::DELETE).await
    }
}
