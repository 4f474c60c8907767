//! Rust client for the gpve (Proxmox VE compatible) REST API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), gpve_api::client::ClientError> {
//! use gpve_api::client::{Client, Fingerprint};
//! let fp = Fingerprint::parse("AB:CD:...")?;
//! let client = Client::builder("https://pve1:8006").fingerprint(fp).build()?;
//! client.login("root@pam", "secret").await?;
//! for node in client.nodes().await? {
//!     println!("{} {}", node.node, node.status);
//! }
//! # Ok(()) }
//! ```
//!
//! Trust: a server is trusted by its pinned SHA-256 certificate fingerprint (Proxmox
//! nodes use self-signed certificates), by a CA bundle, or by the system roots. Nothing
//! is trusted on first use implicitly: [`probe_fingerprint`] fetches what a server
//! presents without sending a request, and the caller decides whether to pin it.
//!
//! Authentication: a ticket (`POST /access/ticket`, sent as the `PVEAuthCookie` cookie,
//! with `CSRFPreventionToken` on writes, renewed by posting the old ticket as password
//! once it is `ticket_renew_after_s` old, well before the 2 h expiry) or an API token
//! (`Authorization: PVEAPIToken=USER@REALM!ID=SECRET`).

mod actors;
pub mod audit;
pub mod manifest;
pub mod network;
pub mod nodes;
pub mod storage;
pub mod tenants;
mod tls;
mod types;
pub mod vcluster;
pub mod vm;
pub mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::v1::types::{
    ActorActionResult, ActorDetail, ActorTree, ActorView, ActorsList, NodeActors, StreamEvent,
    WatchLine,
};
pub use actors::{ActorEventStream, EVENT_STREAM_IDLE_TIMEOUT_MS, MAX_EVENT_LINE_BYTES};
pub use tls::{Fingerprint, TlsError};
pub use types::{
    ClusterResource, CreatedToken, NodeEntry, NodeStatus, ResourceType, TaskEntry, TaskFilter,
    TaskLogLine, TaskStatus, TicketInfo, TokenEntry, TokenSpec, UserEntry, UserSpec, VersionInfo,
};

use tls::PinnedVerifier;

/// The Proxmox API port, used when the server URL names none.
pub const DEFAULT_PORT: u16 = 8006;
/// Proxmox tickets expire after 2 h; renewing at 1 h leaves room for clock skew and
/// long pauses between calls.
pub const DEFAULT_TICKET_RENEW_AFTER_S: u64 = 3600;
const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
const TASK_POLL_INTERVAL_MS: u64 = 250;

/// Everything that can go wrong talking to the API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("`{url}` is not a valid server URL: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot build the HTTP client: {reason}")]
    HttpClient { reason: String },
    #[error("cannot reach the gpve server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("TLS handshake with {url} failed: {reason}")]
    TlsHandshake { url: String, reason: String },
    #[error(
        "the server at {url} presented certificate fingerprint {presented}, but the pinned fingerprint is {expected}; refusing to connect (if the server certificate was legitimately replaced, log in again with --fingerprint {presented})"
    )]
    FingerprintMismatch {
        url: String,
        expected: Fingerprint,
        presented: Fingerprint,
    },
    #[error("{}", format_api_error(*status, message, errors))]
    Api {
        /// The HTTP status code (400, 401, 403, 404, 500, 501, ...).
        status: u16,
        /// The server's message, e.g. `Parameter verification failed.`.
        message: String,
        /// Per-parameter errors of a 400 response.
        errors: BTreeMap<String, String>,
    },
    #[error("unexpected response from {path}: {reason}")]
    Decode { path: String, reason: String },
    #[error("invalid argument: {reason}")]
    InvalidArgument { reason: String },
    #[error("`{input}` is not an API token: expected USER@REALM!TOKENID=SECRET")]
    InvalidToken { input: String },
    #[error("`{upid}` is not a task id (UPID:node:pid:pstart:starttime:type:id:user:)")]
    InvalidUpid { upid: String },
    #[error("task {upid} still running after {timeout_ms} ms")]
    TaskTimeout { upid: String, timeout_ms: u64 },
    #[error("task {upid} failed: {exitstatus}")]
    TaskFailed { upid: String, exitstatus: String },
    #[error("virtualcluster {vc} not Ready after {timeout_ms} ms (phase {phase}; {waiting})")]
    VclusterTimeout {
        vc: String,
        timeout_ms: u64,
        phase: String,
        waiting: String,
    },
    #[error("virtualcluster {vc} failed: {reason}")]
    VclusterFailed { vc: String, reason: String },
}

impl ClientError {
    /// The HTTP status of an API error, if this is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True for 401: bad credentials or an expired ticket.
    pub fn is_unauthorized(&self) -> bool {
        self.status() == Some(401)
    }
}

fn format_api_error(status: u16, message: &str, errors: &BTreeMap<String, String>) -> String {
    let mut out = format!("server answered {status}: {}", message.trim());
    for (param, err) in errors {
        out.push_str(&format!("\n  {param}: {}", err.trim()));
    }
    out
}

/// How the server certificate is verified.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The leaf certificate's SHA-256 fingerprint must match (host name ignored).
    Fingerprint(Fingerprint),
    /// The chain must verify against these PEM CA certificates (host name checked).
    CaFile(PathBuf),
    /// The operating system's web PKI roots (webpki-roots).
    SystemRoots,
    /// No verification at all. Only for tests against throwaway servers.
    DangerAcceptAnyCertificate,
}

/// A ticket session from `POST /access/ticket`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TicketAuth {
    pub username: String,
    pub ticket: String,
    pub csrf_token: String,
    /// When the ticket was issued (client clock), to decide when to renew it.
    pub issued_unix_s: u64,
}

/// An API token `USER@REALM!TOKENID=SECRET`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// `USER@REALM!TOKENID`.
    pub full_tokenid: String,
    pub secret: String,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keep the secret out of logs and panics.
        f.debug_struct("ApiToken")
            .field("full_tokenid", &self.full_tokenid)
            .finish_non_exhaustive()
    }
}

impl ApiToken {
    /// Parses `USER@REALM!TOKENID=SECRET`.
    pub fn parse(input: &str) -> Result<Self, ClientError> {
        let invalid = || ClientError::InvalidToken {
            input: redact_token(input),
        };
        let (id, secret) = input.trim().split_once('=').ok_or_else(invalid)?;
        let (user, tokenid) = id.split_once('!').ok_or_else(invalid)?;
        let (name, realm) = user.split_once('@').ok_or_else(invalid)?;
        if name.is_empty() || realm.is_empty() || tokenid.is_empty() || secret.is_empty() {
            return Err(invalid());
        }
        Ok(Self {
            full_tokenid: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// The user part, `USER@REALM`.
    pub fn userid(&self) -> &str {
        self.full_tokenid
            .split_once('!')
            .map_or(self.full_tokenid.as_str(), |(user, _)| user)
    }
}

fn redact_token(input: &str) -> String {
    match input.split_once('=') {
        Some((id, _)) => format!("{id}=<redacted>"),
        None => input.to_owned(),
    }
}

/// How requests are authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    Ticket(TicketAuth),
    Token(ApiToken),
}

/// Builds a [`Client`]; see [`Client::builder`].
#[derive(Debug)]
pub struct ClientBuilder {
    url: String,
    trust: Trust,
    auth: Option<Auth>,
    request_timeout_ms: u64,
    connect_timeout_ms: u64,
    ticket_renew_after_s: u64,
}

impl ClientBuilder {
    pub fn fingerprint(mut self, fingerprint: Fingerprint) -> Self {
        self.trust = Trust::Fingerprint(fingerprint);
        self
    }

    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.trust = Trust::CaFile(path.into());
        self
    }

    pub fn trust(mut self, trust: Trust) -> Self {
        self.trust = trust;
        self
    }

    /// Resume a ticket session (e.g. one stored by `gpvectl login`).
    pub fn ticket(mut self, ticket: TicketAuth) -> Self {
        self.auth = Some(Auth::Ticket(ticket));
        self
    }

    pub fn token(mut self, token: ApiToken) -> Self {
        self.auth = Some(Auth::Token(token));
        self
    }

    pub fn request_timeout_ms(mut self, ms: u64) -> Self {
        self.request_timeout_ms = ms;
        self
    }

    pub fn connect_timeout_ms(mut self, ms: u64) -> Self {
        self.connect_timeout_ms = ms;
        self
    }

    /// Age after which a ticket is renewed before the next request.
    pub fn ticket_renew_after_s(mut self, s: u64) -> Self {
        self.ticket_renew_after_s = s;
        self
    }

    pub fn build(self) -> Result<Client, ClientError> {
        let server = normalize_server_url(&self.url)?;
        let mut api_base = server.clone();
        api_base.set_path("/api2/json");
        let mut http = reqwest::Client::builder()
            .timeout(Duration::from_millis(self.request_timeout_ms))
            .connect_timeout(Duration::from_millis(self.connect_timeout_ms))
            .user_agent(concat!("gpve-client/", env!("CARGO_PKG_VERSION")));
        let mut verifier = None;
        match &self.trust {
            Trust::Fingerprint(fp) => {
                let v = PinnedVerifier::new(Some(*fp));
                http = http.use_preconfigured_tls(tls::pinned_config(v.clone())?);
                verifier = Some(v);
            }
            Trust::CaFile(path) => {
                let pem = std::fs::read(path).map_err(|source| TlsError::ReadCertificate {
                    path: path.clone(),
                    source,
                })?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|_| TlsError::NoCertificate { path: path.clone() })?;
                if certs.is_empty() {
                    return Err(TlsError::NoCertificate { path: path.clone() }.into());
                }
                http = http.tls_built_in_root_certs(false);
                for cert in certs {
                    http = http.add_root_certificate(cert);
                }
            }
            Trust::SystemRoots => {}
            Trust::DangerAcceptAnyCertificate => {
                http = http.danger_accept_invalid_certs(true);
            }
        }
        let http = http.build().map_err(|e| ClientError::HttpClient {
            reason: error_chain(&e),
        })?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                server,
                api_base,
                verifier,
                auth: tokio::sync::Mutex::new(self.auth),
                ticket_renew_after_s: self.ticket_renew_after_s,
                trust: self.trust,
                connect_timeout_ms: self.connect_timeout_ms,
            }),
        })
    }
}

/// Accepts `host`, `host:port`, `https://host[:port][/api2/json]`; the port defaults to
/// 8006 like Proxmox. Plain http is refused: credentials must not travel in the clear.
pub fn normalize_server_url(input: &str) -> Result<Url, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidUrl {
        url: input.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(invalid("it is empty"));
    }
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("https://{trimmed}")
    };
    let mut url = Url::parse(&with_scheme).map_err(|e| invalid(&e.to_string()))?;
    if url.scheme() != "https" {
        return Err(invalid("gpve serves its API over https only"));
    }
    if url.host_str().is_none() {
        return Err(invalid("it names no host"));
    }
    // `Url::port()` hides an explicit default port (`:443`), so look at the text.
    let authority = with_scheme
        .split_once("://")
        .map_or("", |(_, rest)| rest)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let has_port = match host_port.rfind(']') {
        Some(end) => host_port[end..].contains(':'),
        None => host_port.contains(':'),
    };
    if !has_port {
        url.set_port(Some(DEFAULT_PORT))
            .map_err(|()| invalid("cannot set the port"))?;
    }
    let path = url.path().trim_end_matches('/').to_owned();
    let path = path.strip_suffix("/api2/json").unwrap_or(&path).to_owned();
    if !path.is_empty() {
        return Err(invalid("the server URL must not have a path"));
    }
    url.set_path("");
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// Connects to `url` and returns the SHA-256 fingerprint of the certificate it presents.
/// The handshake is aborted by the verifier, so no request (and no credential) is sent.
pub async fn probe_fingerprint(url: &str) -> Result<Fingerprint, ClientError> {
    let server = normalize_server_url(url)?;
    let verifier = PinnedVerifier::new(None);
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls::pinned_config(verifier.clone())?)
        .connect_timeout(Duration::from_millis(DEFAULT_CONNECT_TIMEOUT_MS))
        .timeout(Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS))
        .build()
        .map_err(|e| ClientError::HttpClient {
            reason: error_chain(&e),
        })?;
    let result = http.get(server.clone()).send().await;
    match (verifier.presented(), result) {
        (Some(fp), _) => Ok(fp),
        (None, Err(e)) => Err(ClientError::Unreachable {
            url: server.to_string(),
            reason: innermost(&e),
        }),
        (None, Ok(_)) => Err(ClientError::Unreachable {
            url: server.to_string(),
            reason: "the server completed a request without presenting a certificate".into(),
        }),
    }
}

/// A handle to one gpve server; cheap to clone, safe to share between tasks.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    server: Url,
    api_base: Url,
    verifier: Option<Arc<PinnedVerifier>>,
    // A tokio mutex: it is held across the renewal request so concurrent calls renew once.
    auth: tokio::sync::Mutex<Option<Auth>>,
    ticket_renew_after_s: u64,
    /// Kept for the watch stream's own HTTP/2 connection.
    trust: Trust,
    connect_timeout_ms: u64,
}

fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Innermost cause of an error: for a transport failure that is the useful part
/// ("Connection refused (os error 111)").
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn find_source<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        // `io::Error::source()` skips the wrapped error itself (it returns the wrapped
        // error's source), and the TLS stack nests `rustls::Error` in two `io::Error`s.
        let mut wrapped = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref());
        while let Some(inner) = wrapped {
            if let Some(found) = inner.downcast_ref::<T>() {
                return Some(found);
            }
            wrapped = inner
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref());
        }
        cur = err.source();
    }
    None
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(next) = cur {
        out.push_str(": ");
        out.push_str(&next.to_string());
        cur = next.source();
    }
    out
}

/// Proxmox parameters are flat; send them form-urlencoded (what pvesh, proxmoxer and
/// go-proxmox send), booleans as 0/1.
fn to_form(body: &serde_json::Value) -> Result<Vec<(String, String)>, ClientError> {
    let obj = match body {
        serde_json::Value::Null => return Ok(Vec::new()),
        serde_json::Value::Object(obj) => obj,
        _ => {
            return Err(ClientError::InvalidArgument {
                reason: "request parameters must be a map of names to values".into(),
            });
        }
    };
    let mut out = Vec::with_capacity(obj.len());
    for (k, v) in obj {
        let s = match v {
            serde_json::Value::Null => continue,
            serde_json::Value::Bool(b) => if *b { "1" } else { "0" }.to_owned(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(items) => {
                // Proxmox list parameters are repeated keys.
                for item in items {
                    let item = match item {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    out.push((k.clone(), item));
                }
                continue;
            }
            serde_json::Value::Object(_) => {
                return Err(ClientError::InvalidArgument {
                    reason: format!(
                        "parameter `{k}` is a nested object; Proxmox parameters are flat"
                    ),
                });
            }
        };
        out.push((k.clone(), s));
    }
    Ok(out)
}

fn to_params(value: &impl Serialize) -> Result<Vec<(String, String)>, ClientError> {
    let v = serde_json::to_value(value).map_err(|e| ClientError::InvalidArgument {
        reason: e.to_string(),
    })?;
    to_form(&v)
}

/// The node of a UPID (`UPID:node:...`).
pub fn upid_node(upid: &str) -> Result<&str, ClientError> {
    let mut parts = upid.split(':');
    match (parts.next(), parts.next(), parts.count()) {
        (Some("UPID"), Some(node), rest) if !node.is_empty() && rest >= 6 => Ok(node),
        _ => Err(ClientError::InvalidUpid {
            upid: upid.to_owned(),
        }),
    }
}

impl Client {
    /// A builder for the server at `url` (`https://host:8006`; see
    /// [`normalize_server_url`]). Without a trust option the system roots are used.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            trust: Trust::SystemRoots,
            auth: None,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            ticket_renew_after_s: DEFAULT_TICKET_RENEW_AFTER_S,
        }
    }

    /// The normalized server URL (`https://host:port/`).
    pub fn server_url(&self) -> &Url {
        &self.inner.server
    }

    /// The current authentication, including a ticket renewed behind the caller's back
    /// (persist it to keep the session).
    pub async fn auth(&self) -> Option<Auth> {
        self.inner.auth.lock().await.clone()
    }

    /// Logs in with user name and password and keeps the ticket for later calls.
    pub async fn login(&self, username: &str, password: &str) -> Result<TicketAuth, ClientError> {
        let ticket = self.request_ticket(username, password).await?;
        *self.inner.auth.lock().await = Some(Auth::Ticket(ticket.clone()));
        Ok(ticket)
    }

    /// Renews the current ticket now (normally automatic).
    pub async fn renew_ticket(&self) -> Result<TicketAuth, ClientError> {
        let mut auth = self.inner.auth.lock().await;
        let Some(Auth::Ticket(current)) = auth.as_ref() else {
            return Err(ClientError::InvalidArgument {
                reason: "there is no ticket session to renew".into(),
            });
        };
        let renewed = self
            .request_ticket(&current.username, &current.ticket)
            .await?;
        *auth = Some(Auth::Ticket(renewed.clone()));
        Ok(renewed)
    }

    async fn request_ticket(
        &self,
        username: &str,
        password: &str,
    ) -> Result<TicketAuth, ClientError> {
        let form = vec![
            ("username".to_owned(), username.to_owned()),
            ("password".to_owned(), password.to_owned()),
        ];
        let url = self.endpoint(&["access", "ticket"]);
        let req = self.inner.http.post(url).form(&form);
        let data = self.execute(req, "/access/ticket").await?;
        let info: TicketInfo = decode(data, "/access/ticket")?;
        let (Some(ticket), Some(csrf_token)) = (info.ticket, info.csrf_prevention_token) else {
            return Err(ClientError::Decode {
                path: "/access/ticket".into(),
                reason: "the answer lacks `ticket` or `CSRFPreventionToken` (two-factor login is not supported)".into(),
            });
        };
        Ok(TicketAuth {
            username: info.username,
            ticket,
            csrf_token,
            issued_unix_s: now_unix_s(),
        })
    }

    fn endpoint(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.api_base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            // `extend` percent-encodes each segment, so user ids and UPIDs are safe.
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn endpoint_of_path(&self, path: &str) -> Url {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        self.endpoint(&segments)
    }

    /// Sends one request with authentication and returns the `data` member.
    async fn call(
        &self,
        method: Method,
        url: Url,
        params: Vec<(String, String)>,
        path_for_errors: &str,
    ) -> Result<serde_json::Value, ClientError> {
        let auth = self.current_auth().await?;
        let is_write = method != Method::GET;
        let mut req = if is_write && method != Method::DELETE {
            self.inner.http.request(method, url).form(&params)
        } else {
            self.inner.http.request(method, url).query(&params)
        };
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
        self.execute(req, path_for_errors).await
    }

    /// The auth to use now, renewing an old ticket first.
    async fn current_auth(&self) -> Result<Option<Auth>, ClientError> {
        let mut auth = self.inner.auth.lock().await;
        if let Some(Auth::Ticket(t)) = auth.as_ref() {
            let age_s = now_unix_s().saturating_sub(t.issued_unix_s);
            if age_s >= self.inner.ticket_renew_after_s {
                let renewed = self.request_ticket(&t.username, &t.ticket).await?;
                *auth = Some(Auth::Ticket(renewed));
            }
        }
        Ok(auth.clone())
    }

    async fn execute(
        &self,
        req: reqwest::RequestBuilder,
        path: &str,
    ) -> Result<serde_json::Value, ClientError> {
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        if status.is_success() {
            let json = json.ok_or_else(|| ClientError::Decode {
                path: path.to_owned(),
                reason: format!("the body is not JSON: {}", snippet(&body)),
            })?;
            return Ok(match json {
                serde_json::Value::Object(mut obj) => {
                    obj.remove("data").unwrap_or(serde_json::Value::Null)
                }
                other => other,
            });
        }
        Err(api_error(status, json.as_ref(), &body))
    }

    fn transport_error(&self, e: &reqwest::Error) -> ClientError {
        let url = self.inner.server.to_string();
        if let Some(v) = &self.inner.verifier
            && let (Some(expected), Some(presented)) = (v.expected(), v.presented())
            && expected != presented
        {
            return ClientError::FingerprintMismatch {
                url,
                expected,
                presented,
            };
        }
        if let Some(tls) = find_source::<rustls::Error>(e) {
            return ClientError::TlsHandshake {
                url,
                reason: tls.to_string(),
            };
        }
        ClientError::Unreachable {
            url,
            reason: innermost(e),
        }
    }

    /// `GET` any API path (relative to `/api2/json`) with query parameters.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &impl Serialize,
    ) -> Result<T, ClientError> {
        let data = self
            .call(
                Method::GET,
                self.endpoint_of_path(path),
                to_params(query)?,
                path,
            )
            .await?;
        decode(data, path)
    }

    /// `POST` any API path with form parameters.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        params: &impl Serialize,
    ) -> Result<T, ClientError> {
        let data = self
            .call(
                Method::POST,
                self.endpoint_of_path(path),
                to_params(params)?,
                path,
            )
            .await?;
        decode(data, path)
    }

    /// `PUT` any API path with form parameters.
    pub async fn put<T: DeserializeOwned>(
        &self,
        path: &str,
        params: &impl Serialize,
    ) -> Result<T, ClientError> {
        let data = self
            .call(
                Method::PUT,
                self.endpoint_of_path(path),
                to_params(params)?,
                path,
            )
            .await?;
        decode(data, path)
    }

    /// `DELETE` any API path; parameters go in the query string, as Proxmox expects.
    pub async fn delete<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &impl Serialize,
    ) -> Result<T, ClientError> {
        let data = self
            .call(
                Method::DELETE,
                self.endpoint_of_path(path),
                to_params(query)?,
                path,
            )
            .await?;
        decode(data, path)
    }

    async fn get_at<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        params: Vec<(String, String)>,
    ) -> Result<T, ClientError> {
        let path = format!("/{}", segments.join("/"));
        let data = self
            .call(Method::GET, self.endpoint(segments), params, &path)
            .await?;
        decode(data, &path)
    }

    async fn send_at<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        params: Vec<(String, String)>,
    ) -> Result<T, ClientError> {
        let path = format!("/{}", segments.join("/"));
        let data = self
            .call(method, self.endpoint(segments), params, &path)
            .await?;
        decode(data, &path)
    }

    pub async fn version(&self) -> Result<VersionInfo, ClientError> {
        self.get_at(&["version"], Vec::new()).await
    }

    pub async fn nodes(&self) -> Result<Vec<NodeEntry>, ClientError> {
        self.get_at(&["nodes"], Vec::new()).await
    }

    pub async fn node_status(&self, node: &str) -> Result<NodeStatus, ClientError> {
        self.get_at(&["nodes", node, "status"], Vec::new()).await
    }

    pub async fn tasks(
        &self,
        node: &str,
        filter: &TaskFilter,
    ) -> Result<Vec<TaskEntry>, ClientError> {
        self.get_at(&["nodes", node, "tasks"], to_params(filter)?)
            .await
    }

    pub async fn task_status(&self, upid: &str) -> Result<TaskStatus, ClientError> {
        let node = upid_node(upid)?;
        self.get_at(&["nodes", node, "tasks", upid, "status"], Vec::new())
            .await
    }

    /// Log lines from `start` (0-based), at most `limit` of them.
    pub async fn task_log(
        &self,
        upid: &str,
        start: u64,
        limit: u64,
    ) -> Result<Vec<TaskLogLine>, ClientError> {
        let node = upid_node(upid)?;
        let params = vec![
            ("start".to_owned(), start.to_string()),
            ("limit".to_owned(), limit.to_string()),
        ];
        self.get_at(&["nodes", node, "tasks", upid, "log"], params)
            .await
    }

    /// Polls the task until it stops; a task that stopped with an error becomes
    /// [`ClientError::TaskFailed`].
    pub async fn wait_task(&self, upid: &str, timeout_ms: u64) -> Result<TaskStatus, ClientError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let status = self.task_status(upid).await?;
            if !status.is_running() {
                if status.succeeded() {
                    return Ok(status);
                }
                return Err(ClientError::TaskFailed {
                    upid: upid.to_owned(),
                    exitstatus: status.exitstatus.unwrap_or_else(|| "unknown".into()),
                });
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(ClientError::TaskTimeout {
                    upid: upid.to_owned(),
                    timeout_ms,
                });
            }
            let pause = Duration::from_millis(TASK_POLL_INTERVAL_MS).min(deadline - now);
            tokio::time::sleep(pause).await;
        }
    }

    pub async fn cluster_resources(
        &self,
        resource_type: Option<ResourceType>,
    ) -> Result<Vec<ClusterResource>, ClientError> {
        let params = resource_type
            .map(|t| vec![("type".to_owned(), t.as_str().to_owned())])
            .unwrap_or_default();
        self.get_at(&["cluster", "resources"], params).await
    }

    /// The next free VMID (the server sends it as a string, like Proxmox).
    pub async fn next_id(&self) -> Result<u32, ClientError> {
        let v: serde_json::Value = self.get_at(&["cluster", "nextid"], Vec::new()).await?;
        types::parse_vmid(&v).ok_or_else(|| ClientError::Decode {
            path: "/cluster/nextid".into(),
            reason: format!("{v} is not a VMID"),
        })
    }

    pub async fn users(&self) -> Result<Vec<UserEntry>, ClientError> {
        self.get_at(&["access", "users"], Vec::new()).await
    }

    pub async fn user(&self, userid: &str) -> Result<UserEntry, ClientError> {
        let mut user: UserEntry = self
            .get_at(&["access", "users", userid], Vec::new())
            .await?;
        if user.userid.is_empty() {
            user.userid = userid.to_owned();
        }
        Ok(user)
    }

    pub async fn create_user(&self, userid: &str, spec: &UserSpec) -> Result<(), ClientError> {
        let mut params = to_params(spec)?;
        params.push(("userid".to_owned(), userid.to_owned()));
        let _: serde_json::Value = self
            .send_at(Method::POST, &["access", "users"], params)
            .await?;
        Ok(())
    }

    pub async fn update_user(&self, userid: &str, spec: &UserSpec) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .send_at(Method::PUT, &["access", "users", userid], to_params(spec)?)
            .await?;
        Ok(())
    }

    pub async fn delete_user(&self, userid: &str) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .send_at(Method::DELETE, &["access", "users", userid], Vec::new())
            .await?;
        Ok(())
    }

    pub async fn tokens(&self, userid: &str) -> Result<Vec<TokenEntry>, ClientError> {
        self.get_at(&["access", "users", userid, "token"], Vec::new())
            .await
    }

    pub async fn token(&self, userid: &str, tokenid: &str) -> Result<TokenEntry, ClientError> {
        let mut token: TokenEntry = self
            .get_at(&["access", "users", userid, "token", tokenid], Vec::new())
            .await?;
        if token.tokenid.is_empty() {
            token.tokenid = tokenid.to_owned();
        }
        Ok(token)
    }

    /// Creates a token; the returned secret is shown only this once.
    pub async fn create_token(
        &self,
        userid: &str,
        tokenid: &str,
        spec: &TokenSpec,
    ) -> Result<CreatedToken, ClientError> {
        self.send_at(
            Method::POST,
            &["access", "users", userid, "token", tokenid],
            to_params(spec)?,
        )
        .await
    }

    pub async fn update_token(
        &self,
        userid: &str,
        tokenid: &str,
        spec: &TokenSpec,
    ) -> Result<TokenEntry, ClientError> {
        self.send_at(
            Method::PUT,
            &["access", "users", userid, "token", tokenid],
            to_params(spec)?,
        )
        .await
    }

    pub async fn delete_token(&self, userid: &str, tokenid: &str) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .send_at(
                Method::DELETE,
                &["access", "users", userid, "token", tokenid],
                Vec::new(),
            )
            .await?;
        Ok(())
    }
}

fn decode<T: DeserializeOwned>(data: serde_json::Value, path: &str) -> Result<T, ClientError> {
    serde_json::from_value(data).map_err(|e| ClientError::Decode {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn snippet(body: &[u8]) -> String {
    const SNIPPET_LEN_BYTES: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(SNIPPET_LEN_BYTES)]);
    text.trim().to_owned()
}

fn api_error(status: StatusCode, json: Option<&serde_json::Value>, body: &[u8]) -> ClientError {
    let message = json
        .and_then(|j| j.get("message"))
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .filter(|m| !m.trim().is_empty())
        .or_else(|| (json.is_none() && !body.is_empty()).then(|| snippet(body)))
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    let errors = json
        .and_then(|j| j.get("errors"))
        .and_then(serde_json::Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                    (k.clone(), text)
                })
                .collect()
        })
        .unwrap_or_default();
    ClientError::Api {
        status: status.as_u16(),
        message,
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_normalized_with_the_proxmox_port() {
        let cases = [
            ("pve1", "https://pve1:8006/"),
            ("pve1:9000", "https://pve1:9000/"),
            ("https://127.0.0.1", "https://127.0.0.1:8006/"),
            ("https://pve1:443/", "https://pve1/"),
            ("https://pve1:8006/api2/json/", "https://pve1:8006/"),
            ("[::1]", "https://[::1]:8006/"),
            ("https://[::1]:8443", "https://[::1]:8443/"),
        ];
        for (input, want) in cases {
            let got = normalize_server_url(input).map(|u| u.to_string());
            assert_eq!(got.ok().as_deref(), Some(want), "{input}");
        }
        for bad in ["", "http://pve1:8006", "https://pve1/other", "https://"] {
            assert!(
                matches!(
                    normalize_server_url(bad),
                    Err(ClientError::InvalidUrl { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn api_tokens_parse_and_hide_their_secret() {
        let t = ApiToken::parse("root@pam!ci=0b9c-secret").expect("token");
        assert_eq!(t.full_tokenid, "root@pam!ci");
        assert_eq!(t.userid(), "root@pam");
        assert!(!format!("{t:?}").contains("secret"));
        for bad in [
            "root@pam!ci",
            "root!ci=x",
            "root@pam=x",
            "@pam!ci=x",
            "a@b!=x",
        ] {
            let err = ApiToken::parse(bad).expect_err(bad);
            assert!(!err.to_string().contains("=x"), "secret leaked: {err}");
        }
    }

    #[test]
    fn upids_yield_their_node() {
        assert_eq!(
            upid_node("UPID:n1:0000ABCD:00001234:6745A1B2:vzdump:100:root@pam:").ok(),
            Some("n1")
        );
        assert!(upid_node("UPID:n1:1").is_err());
        assert!(upid_node("nope").is_err());
    }

    #[test]
    fn api_errors_carry_status_message_and_parameter_errors() {
        let body = serde_json::json!({
            "data": null,
            "message": "Parameter verification failed.\n",
            "errors": {"vmid": "value must be at least 100"}
        });
        let err = api_error(StatusCode::BAD_REQUEST, Some(&body), b"");
        assert_eq!(err.status(), Some(400));
        let text = err.to_string();
        assert!(
            text.contains("400: Parameter verification failed."),
            "{text}"
        );
        assert!(text.contains("vmid: value must be at least 100"), "{text}");
        let err = api_error(StatusCode::UNAUTHORIZED, None, b"");
        assert!(err.is_unauthorized());
        assert!(err.to_string().contains("Unauthorized"));
    }

    #[test]
    fn parameters_flatten_to_proxmox_form_values() {
        let form = to_form(&serde_json::json!({
            "a": true, "b": 3, "c": "x", "d": null, "e": ["p", "q"]
        }))
        .expect("flat");
        assert_eq!(
            form,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "3".into()),
                ("c".into(), "x".into()),
                ("e".into(), "p".into()),
                ("e".into(), "q".into()),
            ]
        );
        assert!(to_form(&serde_json::json!({"n": {"x": 1}})).is_err());
        assert!(to_form(&serde_json::json!([1])).is_err());
    }
}
