//! Observability of the API service: request counters and latency histograms (one
//! middleware layer, which also opens the per-request tracing span), the message-rate
//! sampler of the actor console, the resource usage sampler and its round-robin archives
//! ([`usage`], [`rrd`]), and `GET /metrics` in the Prometheus text format ([`render`]).
//!
//! Everything here lives in [`AppState`] so it survives restarts of the `api` actor (each
//! incarnation builds a new router over the same state).

mod render;
pub mod rrd;
mod sampler;
pub mod usage;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::Semaphore;
use tracing::Instrument;

pub use render::{METRICS_GET, scrape};
pub use sampler::{RATE_SAMPLE_INTERVAL_MS, RateSampler};
pub use usage::{SAMPLE_INTERVAL_MS, SamplerActor, Usage, UsageSample};

use crate::state::{AppState, now_s};

/// Upper bounds of the request latency histogram, in seconds (Prometheus' defaults).
pub const LATENCY_BUCKETS_S: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Most distinct (method, route, status) series kept; later ones are counted under
/// `route="other"` so a misbehaving client cannot grow the registry without bound.
pub const MAX_REQUEST_SERIES: usize = 2_048;
/// Most concurrent `GET /api/v1/actors/events` watch streams.
pub const MAX_EVENT_STREAMS: usize = 64;
/// Longest request path kept in a span, in bytes.
const MAX_SPAN_PATH_BYTES: usize = 256;

/// Route label of requests that matched no route (501 answers): one series, not one per
/// URL a scanner tried.
pub const UNMATCHED_ROUTE: &str = "unmatched";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RequestKey {
    method: String,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Default)]
struct RequestStats {
    count: u64,
    sum_s: f64,
    /// Non-cumulative counts per bucket of [`LATENCY_BUCKETS_S`]; the last slot is +Inf.
    buckets: [u64; LATENCY_BUCKETS_S.len() + 1],
}

/// The API service's metrics and samplers. Cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<MetricsInner>);

struct MetricsInner {
    requests: Mutex<BTreeMap<RequestKey, RequestStats>>,
    /// Requests that started and have not answered yet.
    in_flight: std::sync::atomic::AtomicI64,
    sampler: RateSampler,
    /// The resource usage sampler's latest sample and archives.
    usage: Usage,
    event_streams: Arc<Semaphore>,
    /// Bumped by [`Metrics::close_event_streams`]; open streams end when it changes.
    stream_generation: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics(Arc::new(MetricsInner {
            requests: Mutex::new(BTreeMap::new()),
            in_flight: std::sync::atomic::AtomicI64::new(0),
            sampler: RateSampler::new(),
            usage: Usage::default(),
            event_streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
            stream_generation: tokio::sync::watch::Sender::new(0),
        }))
    }

    fn requests(&self) -> MutexGuard<'_, BTreeMap<RequestKey, RequestStats>> {
        // Plain counters: a panic while holding the lock cannot leave them inconsistent.
        self.0
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Count one answered request.
    pub fn record_request(&self, method: &str, route: &str, status: u16, elapsed_s: f64) {
        let mut requests = self.requests();
        let mut key = RequestKey {
            method: method.to_string(),
            route: route.to_string(),
            status,
        };
        if !requests.contains_key(&key) && requests.len() >= MAX_REQUEST_SERIES {
            key.route = "other".to_string();
        }
        let stats = requests.entry(key).or_default();
        stats.count += 1;
        stats.sum_s += elapsed_s;
        let slot = LATENCY_BUCKETS_S
            .iter()
            .position(|&le| elapsed_s <= le)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        stats.buckets[slot] += 1;
    }

    /// Requests answered so far for `route` (all methods and statuses).
    pub fn request_count(&self, route: &str) -> u64 {
        self.requests()
            .iter()
            .filter(|(k, _)| k.route == route)
            .map(|(_, s)| s.count)
            .sum()
    }

    /// The message-rate sampler of the actor console.
    pub fn sampler(&self) -> &RateSampler {
        &self.0.sampler
    }

    /// Resource usage of the node and its VMs (one sampler feeds `/metrics`,
    /// `status/current` and `rrddata`).
    pub fn usage(&self) -> &Usage {
        &self.0.usage
    }

    /// A slot for one event watch stream, or `None` when [`MAX_EVENT_STREAMS`] are open.
    pub fn try_event_stream(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.0.event_streams.clone().try_acquire_owned().ok()
    }

    /// End every open event stream. A graceful shutdown of the HTTPS server waits for
    /// in-flight responses, and a watch stream never finishes on its own: call this when
    /// the listener stops (clients reconnect to the next incarnation).
    pub fn close_event_streams(&self) {
        self.0.stream_generation.send_modify(|g| *g += 1);
    }

    /// Changes when [`Metrics::close_event_streams`] is called.
    pub fn stream_closer(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.stream_generation.subscribe()
    }

    /// Event watch streams open now.
    pub fn open_event_streams(&self) -> usize {
        MAX_EVENT_STREAMS - self.0.event_streams.available_permits()
    }
}

/// The user a request claims, for the span: the ticket's user when its signature checks,
/// or the token id. Only recorded once the pipeline accepted the credentials (no 401).
fn claimed_user(state: &AppState, req: &Request) -> Option<String> {
    let headers = req.headers();
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::parse_token_header)
    {
        return Some(format!("{}!{}", token.userid, token.tokenid));
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("PVEAuthCookie="))
        .and_then(|t| state.key.verify_ticket(&percent_decode(t), now_s()))
}

/// Browsers send the ticket percent-encoded; a literal `+` stays a `+` (base64).
fn percent_decode(s: &str) -> String {
    let encoded = format!("v={}", s.replace('+', "%2B"));
    serde_urlencoded::from_str::<Vec<(String, String)>>(&encoded)
        .ok()
        .and_then(|mut v| v.pop())
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// The middleware layer: one `request` span per request (method, path, user, status), and
/// the request counter and latency histogram by route template, method and status.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| UNMATCHED_ROUTE.to_string());
    let path: String = req.uri().path().chars().take(MAX_SPAN_PATH_BYTES).collect();
    let user = claimed_user(&state, &req);
    let span = tracing::info_span!(
        "request",
        method = %method,
        path = %path,
        user = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    let metrics = state.metrics.clone();
    metrics
        .0
        .in_flight
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let response = next.run(req).instrument(span.clone()).await;
    metrics
        .0
        .in_flight
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    let status = response.status().as_u16();
    let elapsed_s = started.elapsed().as_secs_f64();
    metrics.record_request(&method, &route, status, elapsed_s);
    span.record("status", status);
    if status != 401
        && let Some(user) = &user
    {
        span.record("user", user.as_str());
    }
    let _enter = span.enter();
    let elapsed_ms = elapsed_s * 1_000.0;
    if status >= 500 {
        tracing::warn!(elapsed_ms, "request failed");
    } else {
        tracing::debug!(elapsed_ms, "request done");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_series_bound() {
        let m = Metrics::new();
        m.record_request("GET", "/a", 200, 0.001);
        m.record_request("GET", "/a", 200, 0.3);
        m.record_request("GET", "/a", 200, 60.0);
        let requests = m.requests();
        let s = &requests[&RequestKey {
            method: "GET".into(),
            route: "/a".into(),
            status: 200,
        }];
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[6], 1, "0.3 s falls in the 0.5 s bucket");
        assert_eq!(
            s.buckets[LATENCY_BUCKETS_S.len()],
            1,
            "60 s is only under +Inf"
        );
        drop(requests);
        for i in 0..(MAX_REQUEST_SERIES + 10) {
            m.record_request("GET", &format!("/r{i}"), 200, 0.0);
        }
        assert_eq!(m.requests().len(), MAX_REQUEST_SERIES + 1);
        assert!(m.request_count("other") >= 10);
    }
}
