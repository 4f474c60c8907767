//! Client calls of the declarative VM API, `/api/v1/namespaces/{ns}/virtualmachines`.
//! Manifests are nested objects, so they travel as JSON bodies (Proxmox parameters are
//! flat forms); `apply` is create-or-update with a client-side diff, like `kubectl apply`.

use reqwest::{Method, Url};
use serde_json::Value;

use super::{Auth, Client, ClientError, decode};
use crate::v1::virtualmachines::manifest::{DEFAULT_NAMESPACE, VirtualMachine, VirtualMachineList};

/// What [`Client::apply_virtual_machine`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyResult {
    Created,
    Configured,
    Unchanged,
}

impl ApplyResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyResult::Created => "created",
            ApplyResult::Configured => "configured",
            ApplyResult::Unchanged => "unchanged",
        }
    }
}

/// Whether `current` already is what `desired` asks for (spec and labels; status and
/// server-filled fields do not count).
pub fn same_intent(desired: &VirtualMachine, current: &VirtualMachine) -> bool {
    desired.spec == current.spec && desired.metadata.labels == current.metadata.labels
}

impl Client {
    fn v1_url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.server.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            // Each segment is percent-encoded by `extend`.
            path.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        url
    }

    /// One request with a JSON body (or none); returns the `data` member.
    pub(super) async fn call_json(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let path = format!("/api/v1/{}", segments.join("/"));
        let auth = self.current_auth().await?;
        let is_write = method != Method::GET;
        let mut req = self
            .inner
            .http
            .request(method, self.v1_url(segments))
            .query(query);
        if let Some(b) = body {
            req = req.json(b);
        }
        match &auth {
            Some(Auth::Ticket(t)) => {
                req = req.header(
                    reqwest::header::COOKIE,
                    format!("PVEAuthCookie={}", t.ticket),
                );
                if is_write {
                    req = req.header("CSRFPreventionToken", &t.csrf_token);
                }
            }
            Some(Auth::Token(t)) => {
                req = req.header(
                    reqwest::header::AUTHORIZATION,
                    format!("PVEAPIToken={}={}", t.full_tokenid, t.secret),
                );
            }
            None => {}
        }
        self.execute(req, &path).await
    }

    /// `GET .../virtualmachines`, optionally filtered by `k=v[,k=v]` labels.
    pub async fn virtual_machines(
        &self,
        ns: &str,
        label_selector: Option<&str>,
    ) -> Result<VirtualMachineList, ClientError> {
        let query: Vec<(&str, &str)> = label_selector
            .map(|s| vec![("labelSelector", s)])
            .unwrap_or_default();
        let data = self
            .call_json(
                Method::GET,
                &["namespaces", ns, "virtualmachines"],
                &query,
                None,
            )
            .await?;
        decode(data, "virtualmachines")
    }

    /// `GET .../virtualmachines/{name}`.
    pub async fn virtual_machine(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<VirtualMachine, ClientError> {
        let data = self
            .call_json(
                Method::GET,
                &["namespaces", ns, "virtualmachines", name],
                &[],
                None,
            )
            .await?;
        decode(data, "virtualmachine")
    }

    /// `POST .../virtualmachines` (409 when the name exists).
    pub async fn create_virtual_machine(
        &self,
        ns: &str,
        vm: &VirtualMachine,
    ) -> Result<VirtualMachine, ClientError> {
        let body = to_json(vm)?;
        let data = self
            .call_json(
                Method::POST,
                &["namespaces", ns, "virtualmachines"],
                &[],
                Some(&body),
            )
            .await?;
        decode(data, "virtualmachines")
    }

    /// `PUT .../virtualmachines/{name}`: bring the VM to `vm`, creating it when missing.
    pub async fn replace_virtual_machine(
        &self,
        ns: &str,
        vm: &VirtualMachine,
    ) -> Result<VirtualMachine, ClientError> {
        let body = to_json(vm)?;
        let data = self
            .call_json(
                Method::PUT,
                &["namespaces", ns, "virtualmachines", &vm.metadata.name],
                &[],
                Some(&body),
            )
            .await?;
        decode(data, "virtualmachine")
    }

    /// `DELETE .../virtualmachines/{name}`: the answer's `status.task` is the destroy task.
    pub async fn delete_virtual_machine(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<VirtualMachine, ClientError> {
        let data = self
            .call_json(
                Method::DELETE,
                &["namespaces", ns, "virtualmachines", name],
                &[],
                None,
            )
            .await?;
        decode(data, "virtualmachine")
    }

    /// Create or update `vm` in its namespace (`metadata.namespace`, else `ns`, else
    /// `default`). Nothing is sent when the server's spec and labels already match.
    pub async fn apply_virtual_machine(
        &self,
        ns: Option<&str>,
        vm: &VirtualMachine,
    ) -> Result<(ApplyResult, VirtualMachine), ClientError> {
        let ns = vm
            .metadata
            .namespace
            .as_deref()
            .or(ns)
            .unwrap_or(DEFAULT_NAMESPACE)
            .to_string();
        match self.virtual_machine(&ns, &vm.metadata.name).await {
            Ok(current) if same_intent(vm, &current) => Ok((ApplyResult::Unchanged, current)),
            Ok(_) => Ok((
                ApplyResult::Configured,
                self.replace_virtual_machine(&ns, vm).await?,
            )),
            Err(e) if e.status() == Some(404) => Ok((
                ApplyResult::Created,
                self.create_virtual_machine(&ns, vm).await?,
            )),
            Err(e) => Err(e),
        }
    }
}

fn to_json(vm: &VirtualMachine) -> Result<Value, ClientError> {
    serde_json::to_value(vm).map_err(|e| ClientError::InvalidArgument {
        reason: format!("the manifest cannot be serialised: {e}"),
    })
}
