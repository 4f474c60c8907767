//! The gRPC `Watch` service: authenticates like REST, joins the hub and streams the events
//! the caller may audit.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use gpve_transport::watch_pb::{self, ClusterEvent, WatchRequest};
use tokio::sync::{OnceCell, broadcast, mpsc};
use tonic::{Request, Response, Status};

use super::hub::{HubItem, WatchHub};
use super::view::{Action, Audience, Event, Kind};
use crate::access_db::Identity;
use crate::error::ApiError;
use crate::rbac::Authz;
use crate::state::AppState;

/// Events queued for one stream's HTTP/2 sender; the hub's per-watcher buffer absorbs
/// bursts beyond this.
pub const STREAM_QUEUE_EVENTS: usize = 256;

/// Watch streams one server serves at once; more are refused with `RESOURCE_EXHAUSTED`.
pub const MAX_WATCH_STREAMS: usize = 1024;

/// The service; clones share one lazily started hub.
#[derive(Clone)]
pub struct WatchService {
    state: AppState,
    hub: Arc<OnceCell<WatchHub>>,
    slots: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for WatchService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchService").finish_non_exhaustive()
    }
}

impl WatchService {
    pub fn new(state: AppState) -> WatchService {
        WatchService {
            state,
            hub: Arc::new(OnceCell::new()),
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_WATCH_STREAMS)),
        }
    }

    /// The hub, started by the first watch (so a server nobody watches pays nothing).
    async fn hub(&self) -> Result<&WatchHub, Status> {
        self.hub
            .get_or_try_init(|| {
                WatchHub::start(
                    self.state.store.clone(),
                    self.state.config.node_name.clone(),
                )
            })
            .await
            .map_err(|e| Status::unavailable(format!("the watch could not read the store: {e}")))
    }
}

/// What one watcher asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Empty: every kind.
    pub kinds: BTreeSet<Kind>,
    pub node: Option<String>,
}

impl Filter {
    /// Checks a request; unknown kinds are refused rather than ignored.
    pub fn parse(req: &WatchRequest) -> Result<Filter, Status> {
        let mut kinds = BTreeSet::new();
        for k in &req.kinds {
            kinds.insert(match watch_pb::Kind::try_from(*k) {
                Ok(watch_pb::Kind::Vm) => Kind::Vm,
                Ok(watch_pb::Kind::Task) => Kind::Task,
                Ok(watch_pb::Kind::Node) => Kind::Node,
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "kind {k} is not one of vm (1), task (2), node (3)"
                    )));
                }
            });
        }
        let node = (!req.node.is_empty()).then(|| req.node.clone());
        if let Some(n) = &node
            && (n.len() > 64 || n.contains('/'))
        {
            return Err(Status::invalid_argument(format!(
                "`{n}` is not a node name"
            )));
        }
        Ok(Filter { kinds, node })
    }

    fn wants(&self, e: &Event) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && self.node.as_ref().is_none_or(|n| *n == e.node)
    }
}

/// The caller, authenticated from the request metadata exactly like a REST read.
async fn identify(state: &AppState, headers: &axum::http::HeaderMap) -> Result<Identity, Status> {
    let mut req = axum::http::Request::new(());
    *req.headers_mut() = headers.clone();
    let (parts, ()) = req.into_parts();
    crate::router::authenticate_for_forwarding(state, &parts)
        .await
        .map_err(|e| match e {
            ApiError::Unauthorized => Status::unauthenticated("authentication failure"),
            other => Status::internal(other.to_string()),
        })
}

/// Whether the watcher behind `authz` may see `e` (the REST list rules).
async fn may_see(authz: &Authz, e: &Event) -> Result<bool, Status> {
    if authz.is_superuser() {
        return Ok(true);
    }
    let check = |path: String, privs: &'static [&'static str]| async move {
        authz
            .check(&path, privs, false)
            .await
            .map_err(|e| Status::internal(format!("reading the ACL failed: {e}")))
    };
    match &e.audience {
        Audience::Vm(vmid) => check(format!("/vms/{vmid}"), &["VM.Audit"]).await,
        Audience::Node(node) => check(format!("/nodes/{node}"), &["Sys.Audit"]).await,
        Audience::Task { node, user } => {
            let me = authz.identity().userid();
            let own = user == me || user.strip_prefix(me).is_some_and(|r| r.starts_with('!'));
            Ok(own || check(format!("/nodes/{node}"), &["Sys.Audit"]).await?)
        }
    }
}

/// The wire form of an event.
pub fn to_wire(e: &Event) -> ClusterEvent {
    ClusterEvent {
        kind: match e.kind {
            Kind::Vm => watch_pb::Kind::Vm,
            Kind::Task => watch_pb::Kind::Task,
            Kind::Node => watch_pb::Kind::Node,
        } as i32,
        action: match e.action {
            Action::Added => watch_pb::Action::Added,
            Action::Modified => watch_pb::Action::Modified,
            Action::Deleted => watch_pb::Action::Deleted,
        } as i32,
        id: e.id.clone(),
        node: e.node.clone(),
        status: e.status.clone(),
        seq: e.seq,
        json: e.json.to_string(),
    }
}

fn synced() -> ClusterEvent {
    ClusterEvent {
        action: watch_pb::Action::Synced as i32,
        ..ClusterEvent::default()
    }
}

type Sender = mpsc::Sender<Result<ClusterEvent, Status>>;

/// One watcher: filters and forwards until the client goes away or the stream must end.
struct Watcher {
    state: AppState,
    headers: axum::http::HeaderMap,
    filter: Filter,
    authz: Authz,
    out: Sender,
}

impl Watcher {
    /// Sends `e` if wanted and allowed; `Err` ends the stream (client gone or a failure,
    /// already sent to the client).
    async fn offer(&self, e: &Event) -> Result<(), ()> {
        if !self.filter.wants(e) {
            return Ok(());
        }
        match may_see(&self.authz, e).await {
            Ok(true) => self.out.send(Ok(to_wire(e))).await.map_err(|_| ()),
            Ok(false) => Ok(()),
            Err(status) => {
                let _ = self.out.send(Err(status)).await;
                Err(())
            }
        }
    }

    /// Credentials or privileges changed: authenticate again (a revoked token or a
    /// deleted user ends the stream) and start a fresh evaluator.
    async fn reauthorize(&mut self) -> Result<(), ()> {
        match identify(&self.state, &self.headers).await {
            Ok(identity) => {
                self.authz = Authz::new(self.state.store.clone(), identity);
                Ok(())
            }
            Err(status) => {
                let _ = self.out.send(Err(status)).await;
                Err(())
            }
        }
    }

    async fn run(
        mut self,
        snapshot: Vec<Event>,
        initial: bool,
        mut rx: broadcast::Receiver<HubItem>,
    ) {
        // The listener's graceful shutdown waits for open responses, and this one never
        // finishes on its own: end it when the listener stops (as the actor event streams).
        let mut closer = self.state.metrics.stream_closer();
        closer.mark_unchanged();
        for e in &snapshot {
            if self.offer(e).await.is_err() {
                return;
            }
        }
        if initial && self.out.send(Ok(synced())).await.is_err() {
            return;
        }
        loop {
            let item = tokio::select! {
                item = rx.recv() => item,
                () = self.out.closed() => return,
                _ = closer.changed() => Err(broadcast::error::RecvError::Closed),
            };
            let done = match item {
                Ok(HubItem::Event(e)) => self.offer(&e).await,
                Ok(HubItem::AccessChanged) => self.reauthorize().await,
                Ok(HubItem::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = self
                        .out
                        .send(Err(Status::resource_exhausted(
                            "the watch fell behind the cluster's changes; watch again with the initial list",
                        )))
                        .await;
                    Err(())
                }
                Err(broadcast::error::RecvError::Closed) => {
                    let _ = self
                        .out
                        .send(Err(Status::unavailable("the server is shutting down")))
                        .await;
                    Err(())
                }
            };
            if done.is_err() {
                return;
            }
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<ClusterEvent, Status>> + Send>>;

#[tonic::async_trait]
impl watch_pb::watch_server::Watch for WatchService {
    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let headers = request.metadata().clone().into_headers();
        let identity = identify(&self.state, &headers).await?;
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{MAX_WATCH_STREAMS} watch streams are open on this server; try again later"
            ))
        })?;
        let req = request.into_inner();
        let filter = Filter::parse(&req)?;
        let joined = self.hub().await?.join(req.initial);
        let (out, rx) = mpsc::channel(STREAM_QUEUE_EVENTS);
        let watcher = Watcher {
            authz: Authz::new(self.state.store.clone(), identity),
            state: self.state.clone(),
            headers,
            filter,
            out,
        };
        tokio::spawn(async move {
            watcher
                .run(joined.snapshot, req.initial, joined.events)
                .await;
            drop(slot);
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
