//! Client calls of gpve's own `/api/v1/actors` (supervision tree introspection) and
//! `/metrics`.

use std::time::Duration;

use bytes::BytesMut;
use reqwest::{Method, Url};

use super::{Auth, Client, ClientError, api_error, decode};
use crate::v1::types::{ActorActionResult, ActorDetail, ActorsList, WatchLine};

/// A watch stream with no line (not even a heartbeat) for this long is dead.
pub const EVENT_STREAM_IDLE_TIMEOUT_MS: u64 = 30_000;
/// Longest accepted line of the event stream, in bytes.
pub const MAX_EVENT_LINE_BYTES: usize = 64 * 1024;
/// Upper bound on one watch request; clients reconnect after it.
const EVENT_STREAM_MAX_S: u64 = 24 * 3600;

/// The `node` query parameter, when given.
fn node_param(node: Option<&str>) -> Vec<(String, String)> {
    node.map(|n| vec![("node".to_owned(), n.to_owned())])
        .unwrap_or_default()
}

impl Client {
    /// `https://host:port/` followed by `segments`, each percent-encoded (an actor path
    /// travels as one segment, `/` as `%2F`).
    pub(super) fn url_at(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.server.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// `GET /api/v1/actors`: the supervision trees, optionally of one node.
    pub async fn actors(&self, node: Option<&str>) -> Result<ActorsList, ClientError> {
        let path = "/api/v1/actors";
        let data = self
            .call(
                Method::GET,
                self.url_at(&["api", "v1", "actors"]),
                node_param(node),
                path,
            )
            .await?;
        decode(data, path)
    }

    /// `GET /api/v1/actors/{path}` on the node the client talks to.
    pub async fn actor(&self, actor_path: &str) -> Result<ActorDetail, ClientError> {
        self.actor_on(None, actor_path).await
    }

    /// `GET /api/v1/actors/{path}?node=`: one actor of `node` (the server asks that node
    /// over its session).
    pub async fn actor_on(
        &self,
        node: Option<&str>,
        actor_path: &str,
    ) -> Result<ActorDetail, ClientError> {
        let path = format!("/api/v1/actors/{actor_path}");
        let data = self
            .call(
                Method::GET,
                self.url_at(&["api", "v1", "actors", actor_path]),
                node_param(node),
                &path,
            )
            .await?;
        decode(data, &path)
    }

    async fn actor_action(
        &self,
        node: Option<&str>,
        actor_path: &str,
        verb: &str,
    ) -> Result<ActorActionResult, ClientError> {
        let path = format!("/api/v1/actors/{actor_path}/{verb}");
        let data = self
            .call(
                Method::POST,
                self.url_at(&["api", "v1", "actors", actor_path, verb]),
                node_param(node),
                &path,
            )
            .await?;
        decode(data, &path)
    }

    /// `POST /api/v1/actors/{path}/restart`: its supervisor restarts it.
    pub async fn restart_actor(&self, actor_path: &str) -> Result<ActorActionResult, ClientError> {
        self.actor_action(None, actor_path, "restart").await
    }

    /// `POST /api/v1/actors/{path}/restart?node=`: restart an actor of `node`.
    pub async fn restart_actor_on(
        &self,
        node: Option<&str>,
        actor_path: &str,
    ) -> Result<ActorActionResult, ClientError> {
        self.actor_action(node, actor_path, "restart").await
    }

    /// `POST /api/v1/actors/{path}/stop`: its supervisor stops it and forgets it.
    pub async fn stop_actor(&self, actor_path: &str) -> Result<ActorActionResult, ClientError> {
        self.actor_action(None, actor_path, "stop").await
    }

    /// `POST /api/v1/actors/{path}/stop?node=`: stop an actor of `node`.
    pub async fn stop_actor_on(
        &self,
        node: Option<&str>,
        actor_path: &str,
    ) -> Result<ActorActionResult, ClientError> {
        self.actor_action(node, actor_path, "stop").await
    }

    /// A GET with this client's credentials and no total timeout beyond `timeout`.
    async fn authorized_get(
        &self,
        url: Url,
        timeout: Duration,
    ) -> Result<reqwest::Response, ClientError> {
        let mut req = self.inner.http.get(url).timeout(timeout);
        match self.current_auth().await? {
            Some(Auth::Ticket(t)) => {
                req = req.header(
                    reqwest::header::COOKIE,
                    format!("PVEAuthCookie={}", t.ticket),
                );
            }
            Some(Auth::Token(t)) => {
                req = req.header(
                    reqwest::header::AUTHORIZATION,
                    format!("PVEAPIToken={}={}", t.full_tokenid, t.secret),
                );
            }
            None => {}
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        Err(api_error(status, json.as_ref(), &body))
    }

    /// `GET /api/v1/actors/events`: a watch stream of supervision events.
    pub async fn actor_events(&self, node: Option<&str>) -> Result<ActorEventStream, ClientError> {
        let mut url = self.url_at(&["api", "v1", "actors", "events"]);
        if let Some(node) = node {
            url.query_pairs_mut().append_pair("node", node);
        }
        let resp = self
            .authorized_get(url, Duration::from_secs(EVENT_STREAM_MAX_S))
            .await?;
        Ok(ActorEventStream {
            client: self.clone(),
            resp,
            buf: BytesMut::new(),
        })
    }

    /// `GET /metrics`: the Prometheus text exposition.
    pub async fn metrics_text(&self) -> Result<String, ClientError> {
        let resp = self
            .authorized_get(
                self.url_at(&["metrics"]),
                Duration::from_millis(super::DEFAULT_REQUEST_TIMEOUT_MS),
            )
            .await?;
        resp.text().await.map_err(|e| self.transport_error(&e))
    }
}

/// An open `/api/v1/actors/events` stream.
#[derive(Debug)]
pub struct ActorEventStream {
    client: Client,
    resp: reqwest::Response,
    buf: BytesMut,
}

impl ActorEventStream {
    /// The next line (heartbeats included, so callers see liveness); `Ok(None)` when the
    /// server ended the stream. A stream silent for [`EVENT_STREAM_IDLE_TIMEOUT_MS`] fails.
    pub async fn next(&mut self) -> Result<Option<WatchLine>, ClientError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(pos + 1);
                let text = &line[..pos];
                if text.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(text)
                    .map(Some)
                    .map_err(|e| ClientError::Decode {
                        path: "/api/v1/actors/events".into(),
                        reason: e.to_string(),
                    });
            }
            if self.buf.len() > MAX_EVENT_LINE_BYTES {
                return Err(ClientError::Decode {
                    path: "/api/v1/actors/events".into(),
                    reason: format!("a line is longer than {MAX_EVENT_LINE_BYTES} bytes"),
                });
            }
            let chunk = tokio::time::timeout(
                Duration::from_millis(EVENT_STREAM_IDLE_TIMEOUT_MS),
                self.resp.chunk(),
            )
            .await
            .map_err(|_| ClientError::Unreachable {
                url: self.client.server_url().to_string(),
                reason: format!(
                    "the event stream was silent for {EVENT_STREAM_IDLE_TIMEOUT_MS} ms"
                ),
            })?
            .map_err(|e| self.client.transport_error(&e))?;
            match chunk {
                Some(bytes) => self.buf.extend_from_slice(&bytes),
                None => return Ok(None),
            }
        }
    }
}
