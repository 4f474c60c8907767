//! The request pipeline shared by every route: authenticate, check CSRF, collect and
//! validate parameters against the route's schema, check the route's privilege, call the
//! handler and wrap its answer in Proxmox's `{"data": ...}` envelope.
//!
//! Each route module declares an [`Endpoint`] (method, parameter schema, privilege) next to
//! its handler; [`endpoint`] turns the pair into an axum method router.

use std::future::Future;

use axum::body::{Body, Bytes};
use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{OriginalUri, RawPathParams, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method as HttpMethod, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use serde_json::Value;

use crate::access_db::Identity;
use crate::auth;
use crate::error::ApiError;
use crate::schema::{ParamSchema, Params, Raw, RawParams};
use crate::state::{AppState, now_s};

/// Largest accepted request body, in bytes (Proxmox's limit too).
pub const MAX_BODY_BYTES: usize = 512 * 1024;
/// Longest accepted query string, in bytes.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;
/// The URL prefix of the JSON API.
pub const API_PREFIX: &str = "/api2/json";

/// HTTP methods the API serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    fn filter(self) -> MethodFilter {
        match self {
            Method::Get => MethodFilter::GET,
            Method::Post => MethodFilter::POST,
            Method::Put => MethodFilter::PUT,
            Method::Delete => MethodFilter::DELETE,
        }
    }
}

/// Who may call a route. The RBAC issue replaces this with Proxmox privileges on ACL paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// No credentials needed (login, ticket renewal).
    World,
    /// Any authenticated user or token.
    Authenticated,
    /// Administrators: `root@pam`, and tokens of `root@pam` without privilege separation.
    Admin,
    /// Administrators, or the user named by the `userid` parameter itself (a ticket, or one
    /// of its tokens without privilege separation).
    AdminOrSelf,
}

/// A route's declaration.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub method: Method,
    pub params: ParamSchema,
    pub privilege: Privilege,
    pub description: &'static str,
}

/// What a handler receives.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub state: AppState,
    /// `None` only on [`Privilege::World`] routes called without credentials.
    pub identity: Option<Identity>,
    pub params: Params,
}

impl Ctx {
    /// The authenticated user id (`root@pam`), or an error on anonymous requests.
    pub fn userid(&self) -> Result<&str, ApiError> {
        self.identity
            .as_ref()
            .map(Identity::userid)
            .ok_or(ApiError::Unauthorized)
    }

    /// A required string parameter.
    pub fn str(&self, name: &str) -> Result<&str, ApiError> {
        self.params.req_str(name)
    }

    /// Fail unless the route's `node` parameter names the local node. gpve answers 404
    /// "no such cluster node" (Proxmox answers 595 for unreachable nodes and 500 for
    /// unknown ones; clients retry 595, which is wrong for a node that does not exist).
    pub fn local_node(&self) -> Result<&str, ApiError> {
        let node = self.str("node")?;
        if node == self.state.config.node_name {
            Ok(node)
        } else {
            Err(ApiError::NoSuchNode(node.to_string()))
        }
    }
}

/// A handler's answer.
#[derive(Debug)]
pub enum Reply {
    /// Wrapped as `{"data": value}`.
    Data(Value),
    /// Wrapped as `{"data": value, "total": total}` (paged lists).
    Paged { data: Value, total: u64 },
    /// An already serialised `{"data": ...}` envelope (served from a cache).
    Envelope(Bytes),
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let body = match self {
            Reply::Data(v) => match serde_json::to_vec(&serde_json::json!({ "data": v })) {
                Ok(b) => Bytes::from(b),
                Err(e) => return ApiError::Internal(e.to_string()).into_response(),
            },
            Reply::Paged { data, total } => {
                match serde_json::to_vec(&serde_json::json!({ "data": data, "total": total })) {
                    Ok(b) => Bytes::from(b),
                    Err(e) => return ApiError::Internal(e.to_string()).into_response(),
                }
            }
            Reply::Envelope(b) => b,
        };
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json;charset=UTF-8"),
            )],
            body,
        )
            .into_response()
    }
}

/// `0`/`1`, Proxmox's wire form of booleans.
pub fn bool01(b: bool) -> Value {
    Value::from(u8::from(b))
}

/// Build the axum method router for one endpoint.
pub fn endpoint<H, Fut>(ep: &'static Endpoint, handler: H) -> MethodRouter<AppState>
where
    H: Fn(Ctx) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply, ApiError>> + Send + 'static,
{
    axum::routing::on(
        ep.method.filter(),
        move |State(state): State<AppState>,
              path: Result<RawPathParams, RawPathParamsRejection>,
              req: Request| {
            let handler = handler.clone();
            async move {
                match prepare(state, ep, path, req).await {
                    Ok(ctx) => match handler(ctx).await {
                        Ok(reply) => reply.into_response(),
                        Err(e) => e.into_response(),
                    },
                    Err(e) => e.into_response(),
                }
            }
        },
    )
}

async fn prepare(
    state: AppState,
    ep: &'static Endpoint,
    path: Result<RawPathParams, RawPathParamsRejection>,
    req: Request,
) -> Result<Ctx, ApiError> {
    let (parts, body) = req.into_parts();
    let now = now_s();
    let identity = authenticate(&state, &parts.headers, now).await?;
    if ep.privilege != Privilege::World && identity.is_none() {
        return Err(ApiError::Unauthorized);
    }
    if let Some(Identity::Ticket { userid }) = &identity
        && parts.method != HttpMethod::GET
        && parts.method != HttpMethod::HEAD
    {
        let token = parts
            .headers
            .get("CSRFPreventionToken")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !state.key.verify_csrf(token, userid, now) {
            return Err(ApiError::Csrf);
        }
    }
    let mut raw = RawParams::default();
    let path = path.map_err(|_| ApiError::BadRequest("invalid path encoding".into()))?;
    for (k, v) in &path {
        raw.insert(k.to_string(), Raw::Text(v.to_string()));
    }
    if let Some(q) = parts.uri.query() {
        if q.len() > MAX_QUERY_BYTES {
            return Err(ApiError::BadRequest("query string too long".into()));
        }
        for (k, v) in parse_form(q.as_bytes())? {
            raw.insert(k, Raw::Text(v));
        }
    }
    read_body(&parts.headers, body, &mut raw).await?;
    let params = ep.params.validate(raw)?;
    check_privilege(ep.privilege, identity.as_ref(), &params)?;
    Ok(Ctx {
        state,
        identity,
        params,
    })
}

async fn read_body(headers: &HeaderMap, body: Body, raw: &mut RawParams) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(ApiError::PayloadTooLarge);
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::PayloadTooLarge)?;
    if bytes.is_empty() {
        return Ok(());
    }
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/x-www-form-urlencoded");
    let mime = ctype
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => {
            let value: Value = serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
            let Value::Object(map) = value else {
                return Err(ApiError::BadRequest("JSON body must be an object".into()));
            };
            for (k, v) in map {
                raw.insert(k, Raw::Json(v));
            }
        }
        "application/x-www-form-urlencoded" | "" => {
            for (k, v) in parse_form(&bytes)? {
                raw.insert(k, Raw::Text(v));
            }
        }
        _ => {
            return Err(ApiError::BadRequest(format!(
                "unsupported content type '{}'",
                mime.chars().take(64).collect::<String>()
            )));
        }
    }
    Ok(())
}

fn parse_form(bytes: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_bytes(bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid form encoding: {e}")))
}

fn percent_decode(s: &str) -> String {
    let encoded = format!("v={}", s.replace('+', "%2B"));
    serde_urlencoded::from_str::<Vec<(String, String)>>(&encoded)
        .ok()
        .and_then(|mut v| v.pop())
        .map(|(_, v)| v)
        .unwrap_or_default()
}

fn cookie_ticket(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("PVEAuthCookie="))
        .map(percent_decode)
}

/// Resolve the request's credentials. Present but invalid credentials are a 401 even on
/// public routes, as Proxmox does.
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    now: i64,
) -> Result<Option<Identity>, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| ApiError::Unauthorized)?;
        if value.starts_with("PVEAPIToken") {
            let parsed = auth::parse_token_header(value).ok_or(ApiError::Unauthorized)?;
            let identity = state
                .access
                .token_identity(&parsed, now)
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            return identity.map(Some).ok_or(ApiError::Unauthorized);
        }
    }
    let Some(ticket) = cookie_ticket(headers) else {
        return Ok(None);
    };
    let userid = state
        .key
        .verify_ticket(&ticket, now)
        .ok_or(ApiError::Unauthorized)?;
    let identity = state
        .access
        .ticket_identity(&userid, now)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    identity.map(Some).ok_or(ApiError::Unauthorized)
}

/// Whether `identity` has administrator rights.
pub fn is_admin(identity: &Identity) -> bool {
    match identity {
        Identity::Ticket { userid } => userid == "root@pam",
        Identity::Token {
            userid, privsep, ..
        } => userid == "root@pam" && !privsep,
    }
}

fn check_privilege(
    privilege: Privilege,
    identity: Option<&Identity>,
    params: &Params,
) -> Result<(), ApiError> {
    let Some(identity) = identity else {
        return match privilege {
            Privilege::World => Ok(()),
            _ => Err(ApiError::Unauthorized),
        };
    };
    let allowed = match privilege {
        Privilege::World | Privilege::Authenticated => true,
        Privilege::Admin => is_admin(identity),
        Privilege::AdminOrSelf => {
            let own = match identity {
                Identity::Ticket { userid } => params.str("userid") == Some(userid.as_str()),
                Identity::Token {
                    userid, privsep, ..
                } => !privsep && params.str("userid") == Some(userid.as_str()),
            };
            own || is_admin(identity)
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// Answer for unknown paths and methods: 501 with Proxmox's message.
pub async fn not_implemented(method: HttpMethod, OriginalUri(uri): OriginalUri) -> Response {
    let path = uri.path();
    let rel = path.strip_prefix(API_PREFIX).unwrap_or(path);
    let rel: String = rel.chars().take(256).collect();
    ApiError::NotImplemented {
        method: method.to_string(),
        path: if rel.is_empty() { "/".into() } else { rel },
    }
    .into_response()
}

/// What a streaming handler receives: the caller (authenticated, CSRF-checked, privilege
/// checked) and the path and query parameters, not yet validated: the handler adds the
/// parameters it reads from the body and validates them against its schema.
#[derive(Debug)]
pub struct StreamCtx {
    pub state: AppState,
    pub identity: Option<Identity>,
    pub raw: RawParams,
    pub headers: HeaderMap,
}

/// Like [`endpoint`], for the few routes whose body is too large to read into memory
/// (uploads): the handler gets the body as a stream and enforces its own size bound.
/// Only privileges that do not depend on parameters are allowed here.
pub fn streaming_endpoint<H, Fut>(ep: &'static Endpoint, handler: H) -> MethodRouter<AppState>
where
    H: Fn(StreamCtx, Body) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply, ApiError>> + Send + 'static,
{
    axum::routing::on(
        ep.method.filter(),
        move |State(state): State<AppState>,
              path: Result<RawPathParams, RawPathParamsRejection>,
              req: Request| {
            let handler = handler.clone();
            async move {
                let (parts, body) = req.into_parts();
                let head = async {
                    let identity = authenticate(&state, &parts.headers, now_s()).await?;
                    if let Some(Identity::Ticket { userid }) = &identity
                        && parts.method != HttpMethod::GET
                    {
                        let token = parts
                            .headers
                            .get("CSRFPreventionToken")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        if !state.key.verify_csrf(token, userid, now_s()) {
                            return Err(ApiError::Csrf);
                        }
                    }
                    check_privilege(ep.privilege, identity.as_ref(), &Params::default())?;
                    let mut raw = RawParams::default();
                    let path =
                        path.map_err(|_| ApiError::BadRequest("invalid path encoding".into()))?;
                    for (k, v) in &path {
                        raw.insert(k.to_string(), Raw::Text(v.to_string()));
                    }
                    if let Some(q) = parts.uri.query() {
                        if q.len() > MAX_QUERY_BYTES {
                            return Err(ApiError::BadRequest("query string too long".into()));
                        }
                        for (k, v) in parse_form(q.as_bytes())? {
                            raw.insert(k, Raw::Text(v));
                        }
                    }
                    Ok(StreamCtx {
                        state: state.clone(),
                        identity,
                        raw,
                        headers: parts.headers.clone(),
                    })
                };
                match head.await {
                    Ok(ctx) => match handler(ctx, body).await {
                        Ok(reply) => reply.into_response(),
                        Err(e) => e.into_response(),
                    },
                    Err(e) => e.into_response(),
                }
            }
        },
    )
}
