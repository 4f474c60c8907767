//! The request pipeline shared by every route: authenticate, check CSRF, collect and
//! validate parameters against the route's schema, check the route's privilege, call the
//! handler and wrap its answer in Proxmox's `{"data": ...}` envelope.
//!
//! Each route module declares an [`Endpoint`] (method, parameter schema, privilege) next to
//! its handler; [`endpoint`] turns the pair into an axum method router.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{ConnectInfo, OriginalUri, RawPathParams, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method as HttpMethod, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use serde_json::Value;

use crate::access_db::Identity;
use crate::audit::{AuditEntry, AuditKind, AuditLog};
use crate::auth;
use crate::error::ApiError;
use crate::rbac::Authz;
use crate::schema::{ParamSchema, Params, Raw, RawParams};
use crate::state::{AppState, now_s};
use gpve_store::StoreError;

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

/// What a route requires, declared next to its handler as Proxmox's schema declares
/// `permissions` (`check: [perm, path, privs]`). Paths are ACL paths whose `{name}` parts
/// are filled from the request's parameters (`/vms/{vmid}`); a template naming a missing
/// parameter denies. Checked by the router before the handler runs; handlers of
/// [`Privilege::User`] routes filter or check further with [`Ctx::allowed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// No credentials needed (login, ticket renewal). Proxmox `user: world`.
    World,
    /// Any authenticated user or token; the handler filters what it returns or checks
    /// what it does (Proxmox `user: all`).
    User,
    /// Every privilege of the list on the path (Proxmox `["perm", path, privs]`).
    Perm(&'static str, &'static [&'static str]),
    /// At least one privilege of the list on the path (`["perm", path, privs, "any", 1]`).
    Any(&'static str, &'static [&'static str]),
    /// The `userid` parameter names the caller's own user, by ticket (Proxmox
    /// `["userid-param", "self"]`; tokens never count as self, so a token cannot mint or
    /// widen tokens).
    SelfParam,
    /// A VM configuration change: every key set, deleted or reverted needs its own
    /// `VM.Config.*` privilege on `/vms/{vmid}` ([`crate::rbac::vm_config_privilege`]),
    /// at least one of them when no key is named; `args` and `hookscript` need `root@pam`.
    VmConfig,
    /// The `upid` parameter names a task started by the caller's user (Proxmox's "owner
    /// of the task" rule on `/nodes/{node}/tasks/{upid}`).
    TaskOwner,
    /// One of the alternatives.
    Or(&'static [Privilege]),
    /// All of the alternatives.
    And(&'static [Privilege]),
}

impl Privilege {
    /// Every privilege name this declaration mentions (for the route-table test).
    pub fn names(&self) -> Vec<&'static str> {
        match self {
            Privilege::Perm(_, p) | Privilege::Any(_, p) => p.to_vec(),
            Privilege::Or(l) | Privilege::And(l) => l.iter().flat_map(|p| p.names()).collect(),
            _ => Vec::new(),
        }
    }
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
    /// The caller's evaluator (one ACL snapshot per request); `None` when anonymous.
    pub authz: Option<Arc<Authz>>,
}

impl Ctx {
    /// The authenticated user id (`root@pam`), or an error on anonymous requests.
    pub fn userid(&self) -> Result<&str, ApiError> {
        self.identity
            .as_ref()
            .map(Identity::userid)
            .ok_or(ApiError::Unauthorized)
    }

    /// Whether the caller holds every privilege of `privs` on the concrete ACL `path`
    /// (list filtering and checks that depend on what the handler reads).
    pub async fn allowed(&self, path: &str, privs: &[&str]) -> Result<bool, ApiError> {
        match &self.authz {
            Some(a) => a.check(path, privs, false).await.map_err(store_err),
            None => Ok(false),
        }
    }

    /// Like [`Ctx::allowed`] with any one of `privs` sufficing.
    pub async fn allowed_any(&self, path: &str, privs: &[&str]) -> Result<bool, ApiError> {
        match &self.authz {
            Some(a) => a.check(path, privs, true).await.map_err(store_err),
            None => Ok(false),
        }
    }

    /// Keep only the `/cluster/resources`-shaped entries the caller may audit (list
    /// filtering, as Proxmox does for `user: all` listings).
    pub async fn visible(&self, items: Vec<Value>) -> Result<Vec<Value>, ApiError> {
        let Some(authz) = &self.authz else {
            return Ok(Vec::new());
        };
        if authz.is_superuser() {
            return Ok(items);
        }
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            if authz.may_see_resource(&item).await.map_err(store_err)? {
                out.push(item);
            }
        }
        Ok(out)
    }

    /// Whether the caller bypasses every check (`root@pam`, or its token without
    /// privilege separation): lets handlers keep their cached fast path.
    pub fn is_superuser(&self) -> bool {
        self.authz.as_ref().is_some_and(|a| a.is_superuser())
    }

    /// 403 unless [`Ctx::allowed`].
    pub async fn require(&self, path: &str, privs: &[&str]) -> Result<(), ApiError> {
        if self.allowed(path, privs).await? {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
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

/// One path's endpoints and their axum method router, as [`Routes::route`] takes them.
pub struct ApiRoute {
    router: MethodRouter<AppState>,
    endpoints: Vec<&'static Endpoint>,
}

impl ApiRoute {
    /// Serve another method on the same path.
    pub fn merge(mut self, other: ApiRoute) -> ApiRoute {
        self.router = self.router.merge(other.router);
        self.endpoints.extend(other.endpoints);
        self
    }

    /// The axum method router (for one-off routers such as [`crate::v1::guard`]).
    pub fn into_method_router(self) -> MethodRouter<AppState> {
        self.router
    }
}

/// One row of the route table: a URL path template and the endpoint served there.
#[derive(Debug, Clone)]
pub struct RouteEntry {
    pub path: String,
    pub endpoint: &'static Endpoint,
}

/// An axum router that also keeps the route table (every path with its [`Endpoint`]), so
/// tests and docs walk the routes that are really served, not a hand-written list.
pub struct Routes {
    router: axum::Router<AppState>,
    table: Vec<RouteEntry>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes::new()
    }
}

impl Routes {
    pub fn new() -> Routes {
        Routes {
            router: axum::Router::new(),
            table: Vec::new(),
        }
    }

    /// Serve `route` at `path`.
    pub fn route(mut self, path: &str, route: ApiRoute) -> Routes {
        for ep in &route.endpoints {
            self.table.push(RouteEntry {
                path: path.to_string(),
                endpoint: ep,
            });
        }
        self.router = self.router.route(path, route.router);
        self
    }

    /// Serve a handler that runs the pipeline itself (a stream: [`crate::v1::guard`]) at
    /// `path`; `ep` is what that handler authorises against.
    pub fn raw_route(
        mut self,
        path: &str,
        ep: &'static Endpoint,
        router: MethodRouter<AppState>,
    ) -> Routes {
        self.table.push(RouteEntry {
            path: path.to_string(),
            endpoint: ep,
        });
        self.router = self.router.route(path, router);
        self
    }

    /// Add a plain axum router whose handlers run the pipeline themselves through
    /// [`crate::v1::guard`]; `entries` are the (path, endpoint) pairs they authorise
    /// against, so the route table still lists them.
    pub fn merge_axum(
        mut self,
        router: axum::Router<AppState>,
        entries: &[(&str, &'static Endpoint)],
    ) -> Routes {
        for (path, ep) in entries {
            self.table.push(RouteEntry {
                path: path.to_string(),
                endpoint: ep,
            });
        }
        self.router = self.router.merge(router);
        self
    }

    /// Add another module's routes.
    pub fn merge(mut self, other: Routes) -> Routes {
        self.router = self.router.merge(other.router);
        self.table.extend(other.table);
        self
    }

    /// As axum's `method_not_allowed_fallback`.
    pub fn method_not_allowed_fallback<H, T>(mut self, handler: H) -> Routes
    where
        H: axum::handler::Handler<T, AppState>,
        T: 'static,
    {
        self.router = self.router.method_not_allowed_fallback(handler);
        self
    }

    /// The table, with `prefix` prepended to every path.
    pub fn table(&self, prefix: &str) -> Vec<RouteEntry> {
        self.table
            .iter()
            .map(|e| RouteEntry {
                path: format!("{prefix}{}", e.path),
                endpoint: e.endpoint,
            })
            .collect()
    }

    /// The axum router.
    pub fn into_router(self) -> axum::Router<AppState> {
        self.router
    }
}

/// Build the route for one endpoint.
pub fn endpoint<H, Fut>(ep: &'static Endpoint, handler: H) -> ApiRoute
where
    H: Fn(Ctx) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply, ApiError>> + Send + 'static,
{
    let router = axum::routing::on(
        ep.method.filter(),
        move |State(state): State<AppState>,
              path: Result<RawPathParams, RawPathParamsRejection>,
              req: Request| {
            let handler = handler.clone();
            async move {
                let mut audit = AuditCtx::new(&state, ep, &req);
                let ctx = match prepare(state, ep, path, req, &mut audit).await {
                    Ok(ctx) => ctx,
                    Err(e) => {
                        audit.refused(e.status().as_u16()).await;
                        return e.into_response();
                    }
                };
                // No change without a record: the handler runs only once its request
                // record is committed.
                if let Err(e) = audit.begin().await {
                    return e.into_response();
                }
                let result = handler(ctx).await;
                let status = match &result {
                    Ok(_) => 200,
                    Err(e) => e.status().as_u16(),
                };
                audit.end(status).await;
                match result {
                    Ok(reply) => reply.into_response(),
                    Err(e) => e.into_response(),
                }
            }
        },
    );
    ApiRoute {
        router,
        endpoints: vec![ep],
    }
}

fn store_err(e: StoreError) -> ApiError {
    ApiError::Internal(format!("reading the access control lists failed: {e}"))
}

/// The audit hook of one request: which record to write, if any (see [`crate::audit`]).
struct AuditCtx {
    log: Option<AuditLog>,
    method: String,
    path: String,
    source: Option<String>,
    user: Option<(String, Option<String>)>,
    params: Value,
    request_seq: Option<u64>,
}

impl AuditCtx {
    fn new(state: &AppState, ep: &Endpoint, req: &Request) -> AuditCtx {
        let writes = ep.method != Method::Get;
        AuditCtx {
            log: writes.then(|| AuditLog::new(state.store.clone())),
            method: req.method().to_string(),
            // The full path: nested routers see it without their prefix.
            path: req
                .extensions()
                .get::<OriginalUri>()
                .map_or_else(|| req.uri().path(), |u| u.0.path())
                .chars()
                .take(1024)
                .collect(),
            source: req
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.to_string()),
            user: None,
            params: Value::Null,
            request_seq: None,
        }
    }

    fn identify(&mut self, identity: &Identity) {
        let token = match identity {
            Identity::Token { tokenid, .. } => Some(tokenid.clone()),
            Identity::Ticket { .. } => None,
        };
        self.user = Some((identity.userid().to_string(), token));
    }

    fn set_params(&mut self, raw: &RawParams) {
        if self.log.is_some() {
            let map = raw
                .values
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Raw::Text(t) => Value::String(t.clone()),
                        Raw::Json(j) => j.clone(),
                    };
                    (k.clone(), v)
                })
                .collect();
            self.params = crate::audit::redact(&map);
        }
    }

    fn entry(&self, kind: AuditKind, status: Option<u16>) -> Option<(AuditLog, AuditEntry)> {
        let log = self.log.clone()?;
        let (user, token) = self.user.clone()?;
        Some((
            log,
            AuditEntry {
                kind,
                request: self.request_seq.filter(|_| kind == AuditKind::Result),
                user,
                token,
                source: self.source.clone(),
                method: self.method.clone(),
                path: self.path.clone(),
                params: if kind == AuditKind::Request {
                    self.params.clone()
                } else {
                    Value::Null
                },
                status,
            },
        ))
    }

    /// A write the router refused after authenticating the caller (403, 400): one record.
    /// Anonymous requests are not recorded (they change nothing and would let anyone
    /// fill the log).
    async fn refused(&self, status: u16) {
        if let Some((log, e)) = self.entry(AuditKind::Request, Some(status))
            && let Err(err) = log.append(e, now_ms()).await
        {
            tracing::error!(error = %err, "writing the audit record of a refused request failed");
        }
    }

    async fn begin(&mut self) -> Result<(), ApiError> {
        if let Some((log, e)) = self.entry(AuditKind::Request, None) {
            let seq = log.append(e, now_ms()).await.map_err(|err| {
                ApiError::Unavailable(format!("the audit log cannot be written: {err}"))
            })?;
            self.request_seq = Some(seq);
        }
        Ok(())
    }

    async fn end(&self, status: u16) {
        if self.request_seq.is_none() {
            return;
        }
        if let Some((log, e)) = self.entry(AuditKind::Result, Some(status))
            && let Err(err) = log.append(e, now_ms()).await
        {
            // The request record stays without a result: "outcome unknown".
            tracing::error!(error = %err, "writing an audit result record failed");
        }
    }
}

fn now_ms() -> i64 {
    i64::try_from(gpve_supervisor::wall_now_ms()).unwrap_or(i64::MAX)
}

async fn prepare(
    state: AppState,
    ep: &'static Endpoint,
    path: Result<RawPathParams, RawPathParamsRejection>,
    req: Request,
    audit: &mut AuditCtx,
) -> Result<Ctx, ApiError> {
    let (parts, body) = req.into_parts();
    let now = now_s();
    let identity = authenticate(&state, &parts.headers, &parts.extensions, now).await?;
    if let Some(id) = &identity {
        audit.identify(id);
    }
    if ep.privilege != Privilege::World && identity.is_none() {
        return Err(ApiError::Unauthorized);
    }
    // A forwarded request's CSRF token was checked by the server that forwarded it.
    if let Some(Identity::Ticket { userid }) = &identity
        && !is_forwarded(&parts.extensions)
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
    audit.set_params(&raw);
    let authz = identity
        .clone()
        .map(|id| Arc::new(Authz::new(state.store.clone(), id)));
    // Privileges before parameter validation: a caller without rights learns nothing
    // about the route's schema, and the route walk sees 403 whatever it sends.
    check_privilege(ep.privilege, authz.as_deref(), &raw).await?;
    let params = ep.params.validate(raw)?;
    Ok(Ctx {
        state,
        identity,
        params,
        authz,
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

fn is_forwarded(extensions: &axum::http::Extensions) -> bool {
    extensions
        .get::<crate::forward::ForwardedIdentity>()
        .is_some()
}

/// The caller of a request the server is about to forward to an agent: authenticated, and
/// with a valid CSRF token on ticket-authenticated writes (the agent trusts both).
pub(crate) async fn authenticate_for_forwarding(
    state: &AppState,
    parts: &axum::http::request::Parts,
) -> Result<Identity, ApiError> {
    let now = now_s();
    let identity = authenticate(state, &parts.headers, &parts.extensions, now)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    if let Identity::Ticket { userid } = &identity
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
    Ok(identity)
}

/// Resolve the request's credentials. Present but invalid credentials are a 401 even on
/// public routes, as Proxmox does. On an agent, a request the server forwarded carries the
/// identity the server authenticated ([`crate::forward`]); only the server can reach an
/// agent's API listener (mutual TLS).
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    extensions: &axum::http::Extensions,
    now: i64,
) -> Result<Option<Identity>, ApiError> {
    if let Some(crate::forward::ForwardedIdentity(identity)) =
        extensions.get::<crate::forward::ForwardedIdentity>()
    {
        return Ok(Some(identity.clone()));
    }
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

/// A raw parameter as text, for filling ACL path templates.
fn raw_text(raw: &RawParams, name: &str) -> Option<String> {
    match raw.values.get(name)? {
        Raw::Text(t) => Some(t.clone()),
        Raw::Json(Value::String(t)) => Some(t.clone()),
        Raw::Json(Value::Number(n)) => Some(n.to_string()),
        Raw::Json(_) => None,
    }
}

/// How the check reads a request parameter.
type ParamFn<'a> = dyn Fn(&str) -> Option<String> + Sync + 'a;

/// Which parameters the request carries (for [`Privilege::VmConfig`]).
type KeysFn<'a> = dyn Fn() -> Vec<String> + Sync + 'a;

/// Fill `{name}` parts of an ACL path template from the request's parameters; `None` if
/// one is missing. The result is normalised by the evaluator, which refuses `..` and
/// other tricks smuggled in through a parameter.
fn fill_path(template: &str, param: &ParamFn<'_>) -> Option<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}')? + open;
        // `{+name}` takes a whole ACL path (`/access/acl`'s `path`); other parameters are
        // one path component.
        let name = &rest[open + 1..close];
        let (name, whole) = match name.strip_prefix('+') {
            Some(n) => (n, true),
            None => (name, false),
        };
        let value = param(name)?;
        if value.is_empty() || (!whole && value.contains('/')) {
            return None;
        }
        out.push_str(&value);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// Whether the declaration allows the caller (`None`: anonymous).
fn allows<'a>(
    privilege: &'a Privilege,
    authz: Option<&'a Authz>,
    param: &'a ParamFn<'a>,
    keys: &'a KeysFn<'a>,
) -> std::pin::Pin<Box<dyn Future<Output = Result<bool, ApiError>> + Send + 'a>> {
    Box::pin(async move {
        let Some(authz) = authz else {
            return Ok(*privilege == Privilege::World);
        };
        // The superuser passes even a declaration whose path names an omitted optional
        // parameter (clone without `newid`).
        if authz.is_superuser() {
            return Ok(true);
        }
        Ok(match privilege {
            Privilege::World | Privilege::User => true,
            Privilege::SelfParam => match authz.identity() {
                Identity::Ticket { userid } => param("userid").as_deref() == Some(userid.as_str()),
                Identity::Token { .. } => false,
            },
            Privilege::VmConfig => {
                let Some(vm) = fill_path("/vms/{vmid}", param) else {
                    return Ok(false);
                };
                let mut named: Vec<(String, Option<String>)> = Vec::new();
                for k in keys() {
                    if k == "delete" || k == "revert" {
                        for d in param(&k).unwrap_or_default().split([',', ';', ' ']) {
                            if !d.is_empty() {
                                named.push((d.to_string(), None));
                            }
                        }
                    } else if crate::rbac::is_vm_config_key(&k) {
                        let v = param(&k);
                        named.push((k, v));
                    }
                }
                if named.is_empty() {
                    return authz
                        .check(&vm, crate::rbac::VM_CONFIG_PRIVS, true)
                        .await
                        .map_err(store_err);
                }
                for (k, v) in &named {
                    let ok = match crate::rbac::vm_config_privilege(k, v.as_deref()) {
                        Some(p) => authz.check(&vm, &[p], false).await.map_err(store_err)?,
                        None => authz.is_superuser(),
                    };
                    if !ok {
                        return Ok(false);
                    }
                }
                true
            }
            Privilege::TaskOwner => {
                // UPID:node:pid:pstart:starttime:type:id:user:
                param("upid")
                    .is_some_and(|u| u.split(':').nth(7) == Some(authz.identity().userid()))
            }
            Privilege::Perm(path, privs) | Privilege::Any(path, privs) => {
                let any = matches!(privilege, Privilege::Any(..));
                match fill_path(path, param) {
                    Some(p) => authz.check(&p, privs, any).await.map_err(store_err)?,
                    None => false,
                }
            }
            Privilege::Or(list) => {
                for p in *list {
                    if allows(p, Some(authz), param, keys).await? {
                        return Ok(true);
                    }
                }
                false
            }
            Privilege::And(list) => {
                for p in *list {
                    if !allows(p, Some(authz), param, keys).await? {
                        return Ok(false);
                    }
                }
                true
            }
        })
    })
}

async fn check_privilege(
    privilege: Privilege,
    authz: Option<&Authz>,
    raw: &RawParams,
) -> Result<(), ApiError> {
    let param = |name: &str| raw_text(raw, name);
    let keys = || raw.values.keys().cloned().collect::<Vec<_>>();
    if allows(&privilege, authz, &param, &keys).await? {
        Ok(())
    } else if authz.is_none() {
        Err(ApiError::Unauthorized)
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
/// Its privilege may use path and query parameters, not body parameters.
pub fn streaming_endpoint<H, Fut>(ep: &'static Endpoint, handler: H) -> ApiRoute
where
    H: Fn(StreamCtx, Body) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply, ApiError>> + Send + 'static,
{
    let router = axum::routing::on(
        ep.method.filter(),
        move |State(state): State<AppState>,
              path: Result<RawPathParams, RawPathParamsRejection>,
              req: Request| {
            let handler = handler.clone();
            async move {
                let mut audit = AuditCtx::new(&state, ep, &req);
                let (parts, body) = req.into_parts();
                let head = async {
                    let identity =
                        authenticate(&state, &parts.headers, &parts.extensions, now_s()).await?;
                    if let Some(id) = &identity {
                        audit.identify(id);
                    }
                    if let Some(Identity::Ticket { userid }) = &identity
                        && !is_forwarded(&parts.extensions)
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
                    audit.set_params(&raw);
                    let authz = identity
                        .clone()
                        .map(|id| Arc::new(Authz::new(state.store.clone(), id)));
                    check_privilege(ep.privilege, authz.as_deref(), &raw).await?;
                    Ok(StreamCtx {
                        state: state.clone(),
                        identity,
                        raw,
                        headers: parts.headers.clone(),
                    })
                };
                let ctx = match head.await {
                    Ok(ctx) => ctx,
                    Err(e) => {
                        audit.refused(e.status().as_u16()).await;
                        return e.into_response();
                    }
                };
                if let Err(e) = audit.begin().await {
                    return e.into_response();
                }
                let result = handler(ctx, body).await;
                let status = match &result {
                    Ok(_) => 200,
                    Err(e) => e.status().as_u16(),
                };
                audit.end(status).await;
                match result {
                    Ok(reply) => reply.into_response(),
                    Err(e) => e.into_response(),
                }
            }
        },
    );
    ApiRoute {
        router,
        endpoints: vec![ep],
    }
}
