//! Client calls of gpve's audit log, `/api/v1/audit`.

use reqwest::Method;

use super::{Client, ClientError, decode};
use crate::audit::AuditRecord;

/// Filters of [`Client::audit`] (all optional; times in Unix seconds).
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub user: Option<String>,
    pub path: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: Option<u64>,
}

/// `GET /api/v1/audit/verify`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct AuditVerification {
    /// 1 when the chain is intact.
    pub ok: u8,
    #[serde(default)]
    pub records: Option<u64>,
    /// The first broken record.
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub reason: Option<String>,
}

impl Client {
    /// `GET /api/v1/audit`: records oldest first.
    pub async fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, ClientError> {
        let mut params = Vec::new();
        for (k, v) in [
            ("user", q.user.clone()),
            ("path", q.path.clone()),
            ("since", q.since.map(|v| v.to_string())),
            ("until", q.until.map(|v| v.to_string())),
            ("limit", q.limit.map(|v| v.to_string())),
        ] {
            if let Some(v) = v {
                params.push((k.to_string(), v));
            }
        }
        let path = "/api/v1/audit";
        let data = self
            .call(
                Method::GET,
                self.url_at(&["api", "v1", "audit"]),
                params,
                path,
            )
            .await?;
        decode(data, path)
    }

    /// `GET /api/v1/audit/verify`: check the hash chain.
    pub async fn audit_verify(&self) -> Result<AuditVerification, ClientError> {
        let path = "/api/v1/audit/verify";
        let data = self
            .call(
                Method::GET,
                self.url_at(&["api", "v1", "audit", "verify"]),
                Vec::new(),
                path,
            )
            .await?;
        decode(data, path)
    }
}
