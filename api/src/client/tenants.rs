//! Client calls of gpve's tenants, `/api/v1/tenants` ([`crate::tenancy`]). Answers are
//! returned as JSON values: the CLI prints them as they come.

use reqwest::Method;
use serde_json::Value;

use super::{Client, ClientError, decode};

impl Client {
    async fn tenants_call(
        &self,
        method: Method,
        segments: &[&str],
        params: Vec<(String, String)>,
    ) -> Result<Value, ClientError> {
        let mut all = vec!["api", "v1", "tenants"];
        all.extend_from_slice(segments);
        let path = format!("/{}", all.join("/"));
        let data = self.call(method, self.url_at(&all), params, &path).await?;
        decode(data, &path)
    }

    /// `GET /api/v1/tenants`: the tenants the caller may audit, with quotas and usage.
    pub async fn tenants(&self) -> Result<Value, ClientError> {
        self.tenants_call(Method::GET, &[], Vec::new()).await
    }

    /// `GET /api/v1/tenants/{tenant}`.
    pub async fn tenant(&self, tenant: &str) -> Result<Value, ClientError> {
        self.tenants_call(Method::GET, &[tenant], Vec::new()).await
    }

    /// `POST /api/v1/tenants`; `quotas` are (resource, property string) pairs.
    pub async fn create_tenant(
        &self,
        tenant: &str,
        comment: Option<&str>,
        quotas: &[(String, String)],
    ) -> Result<(), ClientError> {
        let mut params = vec![("tenant".to_string(), tenant.to_string())];
        if let Some(c) = comment {
            params.push(("comment".into(), c.into()));
        }
        params.extend(quotas.iter().cloned());
        self.tenants_call(Method::POST, &[], params).await?;
        Ok(())
    }

    /// `DELETE /api/v1/tenants/{tenant}`.
    pub async fn delete_tenant(&self, tenant: &str) -> Result<(), ClientError> {
        self.tenants_call(Method::DELETE, &[tenant], Vec::new())
            .await?;
        Ok(())
    }

    /// `GET /api/v1/tenants/{tenant}/quota`.
    pub async fn tenant_quota(&self, tenant: &str) -> Result<Value, ClientError> {
        self.tenants_call(Method::GET, &[tenant, "quota"], Vec::new())
            .await
    }

    /// `PUT /api/v1/tenants/{tenant}/quota`; `quotas` are (resource, property string) pairs.
    pub async fn set_tenant_quota(
        &self,
        tenant: &str,
        quotas: &[(String, String)],
    ) -> Result<(), ClientError> {
        self.tenants_call(Method::PUT, &[tenant, "quota"], quotas.to_vec())
            .await?;
        Ok(())
    }

    /// `POST /api/v1/tenants/{tenant}/users`: bind a user to the tenant.
    pub async fn bind_tenant_user(&self, tenant: &str, userid: &str) -> Result<(), ClientError> {
        self.tenants_call(
            Method::POST,
            &[tenant, "users"],
            vec![("userid".into(), userid.into())],
        )
        .await?;
        Ok(())
    }

    /// `POST /api/v1/tenants/{tenant}/namespaces`: create or attach a namespace.
    pub async fn attach_tenant_namespace(
        &self,
        tenant: &str,
        namespace: &str,
    ) -> Result<(), ClientError> {
        self.tenants_call(
            Method::POST,
            &[tenant, "namespaces"],
            vec![("namespace".into(), namespace.into())],
        )
        .await?;
        Ok(())
    }
}
