//! What a supervisor is told: its strategy, limits, escalation policy and children.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, SpawnErr};
use serde::{Deserialize, Serialize};

use crate::directory::{ActorStats, Directory};
use crate::restart::{Backoff, RestartIntensity};

/// Which siblings restart with a failed child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Only the failed child restarts.
    #[default]
    OneForOne,
    /// The failed child and every child started after it restart, in start order; the later
    /// ones are stopped first, in reverse start order.
    RestForOne,
}

/// When a child that exited is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestartPolicy {
    /// Always, whatever the exit.
    Permanent,
    /// Only after an abnormal exit: panic, `Err` from a handler, or kill.
    Transient,
    /// Never; the child is forgotten when it exits.
    Temporary,
}

/// What a start function gets: where to link, where it lives, and its counters.
#[derive(Debug, Clone)]
pub struct ChildContext {
    /// Spawn the child linked to this cell (`Actor::spawn_linked(None, .., ctx.supervisor)`).
    pub supervisor: ActorCell,
    /// The child's id within its supervisor, e.g. `vm:100`.
    pub id: String,
    /// The child's directory path, e.g. `node:n1/vm:100`.
    pub path: String,
    pub directory: Directory,
    /// Call `record_handled()` at the top of the child's `handle()`.
    pub stats: ActorStats,
}

/// Starts one incarnation of a child. It must spawn the actor linked to `ctx.supervisor`
/// and without a global name (`None`), and return its cell once `pre_start` succeeded.
pub type StartFn =
    Arc<dyn Fn(ChildContext) -> BoxFuture<'static, Result<ActorCell, SpawnErr>> + Send + Sync>;

/// One child of a supervisor.
#[derive(Clone)]
pub struct ChildSpec {
    /// Unique within the supervisor, no `/` (e.g. `vm:100`).
    pub id: String,
    /// For the console (e.g. `vm`).
    pub kind: String,
    pub restart: RestartPolicy,
    /// Overrides the supervisor's intensity for this child.
    pub intensity: Option<RestartIntensity>,
    pub start: StartFn,
}

impl std::fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("restart", &self.restart)
            .field("intensity", &self.intensity)
            .finish_non_exhaustive()
    }
}

impl ChildSpec {
    /// A child started by an arbitrary async function.
    pub fn new<F, Fut>(
        id: impl Into<String>,
        kind: impl Into<String>,
        restart: RestartPolicy,
        start: F,
    ) -> Self
    where
        F: Fn(ChildContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ActorCell, SpawnErr>> + Send + 'static,
    {
        Self {
            id: id.into(),
            kind: kind.into(),
            restart,
            intensity: None,
            start: Arc::new(move |ctx| Box::pin(start(ctx))),
        }
    }

    /// A child that is one ractor actor; `make` builds the handler and its arguments for
    /// each incarnation (give the handler `ctx.stats.clone()` to count messages).
    pub fn actor<A, F>(
        id: impl Into<String>,
        kind: impl Into<String>,
        restart: RestartPolicy,
        make: F,
    ) -> Self
    where
        A: Actor,
        F: Fn(&ChildContext) -> (A, A::Arguments) + Send + Sync + 'static,
    {
        let make = Arc::new(make);
        Self::new(id, kind, restart, move |ctx: ChildContext| {
            let make = Arc::clone(&make);
            async move {
                let (handler, args) = make(&ctx);
                let (actor, _join) = A::spawn_linked(None, handler, args, ctx.supervisor).await?;
                Ok(actor.get_cell())
            }
        })
    }

    /// A nested supervisor; its id is the child id. After a restart it starts again with
    /// `spec.children` only: dynamically added children are rebuilt by their owner
    /// (reconciliation from the store).
    pub fn supervisor(restart: RestartPolicy, spec: SupervisorSpec) -> Self {
        let id = spec.id.clone();
        let kind = spec.kind.clone();
        let spec = Arc::new(spec);
        Self::new(id, kind, restart, move |ctx: ChildContext| {
            let spec = SupervisorSpec::clone(&spec);
            async move {
                let handle = crate::supervisor::Supervisor::spawn_linked(spec, ctx).await?;
                Ok(handle.cell())
            }
        })
    }

    pub fn with_intensity(mut self, intensity: RestartIntensity) -> Self {
        self.intensity = Some(intensity);
        self
    }
}

/// Delivered when a child exceeds its restart intensity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escalation {
    /// Path of the supervisor that gave up.
    pub supervisor: String,
    /// Id of the child within it.
    pub child: String,
    pub child_path: String,
    pub kind: String,
    /// The last failure.
    pub reason: String,
    /// Restarts within the window before this failure (= `max_restarts`).
    pub restarts: u32,
}

/// What a supervisor does when a child exceeds its intensity.
#[derive(Clone, Default)]
pub enum EscalationPolicy {
    /// Stop all children and fail, so the parent supervisor sees a failure (Erlang).
    #[default]
    FailSupervisor,
    /// Leave the child stopped (state `failed`), call the hook, and keep supervising the
    /// others. The hook runs inside the supervisor: it must not block (send to a channel
    /// or `cast` to an actor, e.g. the HA manager).
    Hook(Arc<dyn Fn(Escalation) + Send + Sync>),
}

impl EscalationPolicy {
    pub fn hook(f: impl Fn(Escalation) + Send + Sync + 'static) -> Self {
        Self::Hook(Arc::new(f))
    }
}

impl std::fmt::Debug for EscalationPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::FailSupervisor => f.write_str("FailSupervisor"),
            Self::Hook(_) => f.write_str("Hook(..)"),
        }
    }
}

/// A supervisor: identity, strategy, limits and initial children.
#[derive(Debug, Clone)]
pub struct SupervisorSpec {
    /// Its id (and, for a root, its path), e.g. `node:n1`. No `/`.
    pub id: String,
    /// For the console, e.g. `node` or `supervisor`.
    pub kind: String,
    pub strategy: Strategy,
    /// Default for children without their own.
    pub intensity: RestartIntensity,
    pub backoff: Backoff,
    pub escalation: EscalationPolicy,
    /// Started in order when the supervisor starts; if one fails, the supervisor does not
    /// start.
    pub children: Vec<ChildSpec>,
    /// How long one child may take to stop before it is killed.
    pub shutdown_timeout_ms: u64,
    /// Bound on a `SupervisorHandle` request (add, remove, list).
    pub call_timeout_ms: u64,
    /// Bound on `SupervisorHandle::stop` (the whole subtree).
    pub stop_timeout_ms: u64,
}

impl SupervisorSpec {
    /// One-for-one, 3 restarts in 60 s, 100 ms..10 s backoff, fail upward, no children.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            kind: "supervisor".to_string(),
            strategy: Strategy::OneForOne,
            intensity: RestartIntensity::default(),
            backoff: Backoff::default(),
            escalation: EscalationPolicy::FailSupervisor,
            children: Vec::new(),
            shutdown_timeout_ms: 5_000,
            call_timeout_ms: 10_000,
            stop_timeout_ms: 60_000,
        }
    }

    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = kind.into();
        self
    }

    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    pub fn intensity(mut self, max_restarts: u32, restart_window_ms: u64) -> Self {
        self.intensity = RestartIntensity {
            max_restarts,
            restart_window_ms,
        };
        self
    }

    pub fn backoff(mut self, backoff_initial_ms: u64, backoff_max_ms: u64) -> Self {
        self.backoff = Backoff {
            backoff_initial_ms,
            backoff_max_ms,
        };
        self
    }

    pub fn escalation(mut self, escalation: EscalationPolicy) -> Self {
        self.escalation = escalation;
        self
    }

    pub fn child(mut self, child: ChildSpec) -> Self {
        self.children.push(child);
        self
    }
}
