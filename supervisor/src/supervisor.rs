//! The supervisor actor and its handle.

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, ActorStatus, Message, RpcReplyPort, SpawnErr,
    SupervisionEvent,
};
use serde::{Deserialize, Serialize};

use crate::directory::{ActorState, ActorStats, Directory};
use crate::restart::{Backoff, RestartDecision, RestartIntensity, RestartTracker};
use crate::spec::{
    ChildContext, ChildSpec, Escalation, EscalationPolicy, RestartPolicy, Strategy, SupervisorSpec,
};

/// Exit reasons ractor gives a child that was killed rather than stopped (`Signal::Kill`'s
/// display, and a cancelled actor task).
const KILLED_REASONS: [&str; 2] = ["killed", "actor_task_cancelled"];

/// Errors of supervisor operations.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("child id {id:?} is invalid: it must be non-empty and contain no '/'")]
    InvalidChildId { id: String },
    #[error("a child with id {id} already exists under {supervisor}")]
    DuplicateChild { supervisor: String, id: String },
    #[error("there is no child with id {id} under {supervisor}")]
    UnknownChild { supervisor: String, id: String },
    #[error("child {path} failed to start")]
    ChildStart {
        path: String,
        #[source]
        source: SpawnErr,
    },
    #[error("child {path} was not spawned linked to its supervisor")]
    ChildNotLinked { path: String },
    #[error("child {path} is not running (it is {state:?}); there is nothing to restart")]
    NotRunning { path: String, state: ActorState },
    #[error("supervisor {path} failed to start")]
    Spawn {
        path: String,
        #[source]
        source: SpawnErr,
    },
    #[error("supervisor {path} did not answer: {reason}")]
    Unreachable { path: String, reason: String },
    #[error(
        "child {child_path} failed after {restarts} restarts within the intensity window: {reason}"
    )]
    IntensityExceeded {
        child_path: String,
        restarts: u32,
        reason: String,
    },
}

/// Requests a supervisor handles; use [`SupervisorHandle`] rather than sending these.
pub enum SupervisorMsg {
    AddChild(ChildSpec, RpcReplyPort<Result<(), SupervisorError>>),
    RemoveChild(String, RpcReplyPort<Result<(), SupervisorError>>),
    ListChildren(RpcReplyPort<Vec<ChildInfo>>),
    /// Restart a running child on request (see [`SupervisorHandle::restart_child`]).
    RestartChild {
        id: String,
        reason: String,
        reply: RpcReplyPort<Result<(), SupervisorError>>,
    },
    /// A backoff elapsed: start the children waiting under this restart generation.
    RestartDue {
        generation: u64,
    },
}

impl ractor::Message for SupervisorMsg {}

/// One child as its supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildInfo {
    pub id: String,
    pub kind: String,
    pub path: String,
    pub restart: RestartPolicy,
    pub state: ActorState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildStatus {
    Running,
    /// Waiting for the backoff of restart `generation`.
    Restarting {
        generation: u64,
    },
    Stopped,
    Failed,
}

struct ChildEntry {
    spec: ChildSpec,
    path: String,
    cell: Option<ActorCell>,
    status: ChildStatus,
    tracker: RestartTracker,
    stats: ActorStats,
}

/// The supervisor's state; opaque.
pub struct SupervisorState {
    path: String,
    parent_path: Option<String>,
    directory: Directory,
    strategy: Strategy,
    intensity: RestartIntensity,
    backoff: Backoff,
    escalation: EscalationPolicy,
    shutdown_timeout_ms: u64,
    /// In start order: rest-for-one and shutdown order depend on it.
    children: Vec<ChildEntry>,
    next_generation: u64,
    stats: ActorStats,
}

/// Arguments of the supervisor actor.
pub struct SupervisorArgs {
    spec: SupervisorSpec,
    path: String,
    parent_path: Option<String>,
    directory: Directory,
    stats: ActorStats,
}

/// The supervisor actor. Spawn it with [`Supervisor::spawn`] or as a child with
/// [`ChildSpec::supervisor`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Supervisor;

fn validate_id(id: &str) -> Result<(), SupervisorError> {
    if id.is_empty() || id.contains('/') {
        return Err(SupervisorError::InvalidChildId { id: id.to_string() });
    }
    Ok(())
}

/// `err` and its sources on one line, for the console.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Stop `cell` and wait, killing it if it does not stop within `timeout_ms`.
async fn stop_child(cell: ActorCell, reason: &str, timeout_ms: u64) {
    let timeout = Duration::from_millis(timeout_ms);
    if cell.get_status() >= ActorStatus::Stopped {
        return;
    }
    if cell
        .stop_and_wait(Some(reason.to_string()), Some(timeout))
        .await
        .is_err()
    {
        tracing::warn!(actor = ?cell, "child did not stop within {timeout_ms} ms, killing it");
        let _ = cell.kill_and_wait(Some(timeout)).await;
    }
}

impl Supervisor {
    /// Spawn a root supervisor (no parent) registered at path `spec.id`.
    pub async fn spawn(
        spec: SupervisorSpec,
        directory: Directory,
    ) -> Result<SupervisorHandle, SupervisorError> {
        validate_id(&spec.id)?;
        let path = spec.id.clone();
        let stats = directory.register(&path, &spec.kind, &spec.id, None);
        let call_timeout_ms = spec.call_timeout_ms;
        let stop_timeout_ms = spec.stop_timeout_ms;
        let args = SupervisorArgs {
            spec,
            path: path.clone(),
            parent_path: None,
            directory: directory.clone(),
            stats,
        };
        match Actor::spawn(None, Supervisor, args).await {
            Ok((actor, _join)) => {
                directory.set_running(&path, actor.get_cell(), false);
                Ok(SupervisorHandle {
                    actor,
                    path,
                    directory,
                    call_timeout_ms,
                    stop_timeout_ms,
                })
            }
            Err(source) => {
                directory.remove_subtree(&path);
                Err(SupervisorError::Spawn { path, source })
            }
        }
    }

    /// Spawn a supervisor as the child described by `ctx` (used by
    /// [`ChildSpec::supervisor`]); its parent keeps its directory entry.
    pub async fn spawn_linked(
        spec: SupervisorSpec,
        ctx: ChildContext,
    ) -> Result<SupervisorHandle, SpawnErr> {
        let call_timeout_ms = spec.call_timeout_ms;
        let stop_timeout_ms = spec.stop_timeout_ms;
        let parent_path = ctx
            .path
            .rsplit_once('/')
            .map(|(parent, _)| parent.to_string());
        let args = SupervisorArgs {
            spec,
            path: ctx.path.clone(),
            parent_path,
            directory: ctx.directory.clone(),
            stats: ctx.stats,
        };
        let (actor, _join) = Actor::spawn_linked(None, Supervisor, args, ctx.supervisor).await?;
        Ok(SupervisorHandle {
            actor,
            path: ctx.path,
            directory: ctx.directory,
            call_timeout_ms,
            stop_timeout_ms,
        })
    }

    /// Start one incarnation of `spec` at `path`.
    async fn start(
        myself: &ActorRef<SupervisorMsg>,
        state: &SupervisorState,
        spec: &ChildSpec,
        path: &str,
        stats: ActorStats,
    ) -> Result<ActorCell, SupervisorError> {
        let ctx = ChildContext {
            supervisor: myself.get_cell(),
            id: spec.id.clone(),
            path: path.to_string(),
            directory: state.directory.clone(),
            stats,
        };
        let cell = (spec.start)(ctx)
            .await
            .map_err(|source| SupervisorError::ChildStart {
                path: path.to_string(),
                source,
            })?;
        let linked_to_us = cell
            .try_get_supervisor()
            .is_some_and(|s| s.get_id() == myself.get_id());
        // A child that already exited has unlinked itself after sending us its exit event.
        let already_exited = cell.get_status() >= ActorStatus::Stopping;
        if !linked_to_us && !already_exited {
            cell.kill();
            return Err(SupervisorError::ChildNotLinked {
                path: path.to_string(),
            });
        }
        Ok(cell)
    }

    async fn add_child(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        spec: ChildSpec,
    ) -> Result<(), SupervisorError> {
        validate_id(&spec.id)?;
        if state.children.iter().any(|c| c.spec.id == spec.id) {
            return Err(SupervisorError::DuplicateChild {
                supervisor: state.path.clone(),
                id: spec.id,
            });
        }
        let path = format!("{}/{}", state.path, spec.id);
        let stats = state
            .directory
            .register(&path, &spec.kind, &spec.id, Some(&state.path));
        match Self::start(myself, state, &spec, &path, stats.clone()).await {
            Ok(cell) => {
                state.directory.set_running(&path, cell.clone(), false);
                state.children.push(ChildEntry {
                    spec,
                    path,
                    cell: Some(cell),
                    status: ChildStatus::Running,
                    tracker: RestartTracker::default(),
                    stats,
                });
                Ok(())
            }
            Err(err) => {
                state.directory.remove_subtree(&path);
                Err(err)
            }
        }
    }

    async fn remove_child(state: &mut SupervisorState, id: &str) -> Result<(), SupervisorError> {
        let idx = state
            .children
            .iter()
            .position(|c| c.spec.id == id)
            .ok_or_else(|| SupervisorError::UnknownChild {
                supervisor: state.path.clone(),
                id: id.to_string(),
            })?;
        let entry = state.children.remove(idx);
        if let Some(cell) = entry.cell {
            stop_child(cell, "removed", state.shutdown_timeout_ms).await;
        }
        state
            .directory
            .set_stopped(&entry.path, Some("removed".to_string()));
        state.directory.remove_subtree(&entry.path);
        Ok(())
    }

    /// Stop running child `id` and start a new incarnation at once. A requested restart
    /// is not a failure: it is recorded in the directory but not counted towards the
    /// restart intensity, and it restarts only this child whatever the strategy.
    async fn restart_child(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        id: &str,
        reason: String,
        reply: RpcReplyPort<Result<(), SupervisorError>>,
    ) -> Result<(), ActorProcessingErr> {
        let Some(idx) = state.children.iter().position(|c| c.spec.id == id) else {
            let _ = reply.send(Err(SupervisorError::UnknownChild {
                supervisor: state.path.clone(),
                id: id.to_string(),
            }));
            return Ok(());
        };
        let entry = &mut state.children[idx];
        let cell = match (entry.status, entry.cell.take()) {
            (ChildStatus::Running, Some(cell)) => cell,
            (status, cell) => {
                entry.cell = cell;
                let _ = reply.send(Err(SupervisorError::NotRunning {
                    path: entry.path.clone(),
                    state: match status {
                        ChildStatus::Running => ActorState::Running,
                        ChildStatus::Restarting { .. } => ActorState::Restarting,
                        ChildStatus::Stopped => ActorState::Stopped,
                        ChildStatus::Failed => ActorState::Failed,
                    },
                }));
                return Ok(());
            }
        };
        let path = entry.path.clone();
        // With `cell` taken, the exit event of this incarnation matches no entry.
        stop_child(cell, &reason, state.shutdown_timeout_ms).await;
        state.directory.set_stopped(&path, Some(reason.clone()));
        state.directory.remove_descendants(&path);
        state.directory.set_restarting(&path, &reason);
        let spec = state.children[idx].spec.clone();
        let stats = state.children[idx].stats.clone();
        match Self::start(myself, state, &spec, &path, stats).await {
            Ok(cell) => {
                state.children[idx].cell = Some(cell.clone());
                state.children[idx].status = ChildStatus::Running;
                state.directory.set_running(&path, cell, true);
                let _ = reply.send(Ok(()));
                Ok(())
            }
            Err(err) => {
                let why = error_chain(&err);
                state.directory.record_failure(&path, &why);
                let _ = reply.send(Err(err));
                // From here it is an ordinary failure, under the ordinary rules.
                Self::restart_from(myself, state, idx, why).await
            }
        }
    }

    /// Stop every child in reverse start order and drop their directory entries.
    async fn stop_all_children(state: &mut SupervisorState, reason: &str) {
        while let Some(entry) = state.children.pop() {
            if let Some(cell) = entry.cell {
                stop_child(cell, reason, state.shutdown_timeout_ms).await;
                state
                    .directory
                    .set_stopped(&entry.path, Some(reason.to_string()));
            }
            state.directory.remove_subtree(&entry.path);
        }
    }

    async fn on_child_exit(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        idx: usize,
        abnormal: bool,
        reason: String,
    ) -> Result<(), ActorProcessingErr> {
        let (path, policy) = {
            let entry = &mut state.children[idx];
            entry.cell = None;
            (entry.path.clone(), entry.spec.restart)
        };
        // A dead nested supervisor took its subtree with it.
        state.directory.remove_descendants(&path);
        if abnormal {
            tracing::warn!(supervisor = %state.path, child = %path, %reason, "child failed");
            state.directory.record_failure(&path, &reason);
        } else {
            state.directory.set_stopped(&path, Some(reason.clone()));
        }
        let restart = match policy {
            RestartPolicy::Permanent => true,
            RestartPolicy::Transient => abnormal,
            RestartPolicy::Temporary => false,
        };
        if restart {
            return Self::restart_from(myself, state, idx, reason).await;
        }
        if policy == RestartPolicy::Temporary {
            state.children.remove(idx);
            state.directory.remove_subtree(&path);
        } else {
            state.children[idx].status = if abnormal {
                ChildStatus::Failed
            } else {
                ChildStatus::Stopped
            };
        }
        Ok(())
    }

    /// Child `idx` is down and must restart: apply intensity, strategy and backoff.
    async fn restart_from(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        idx: usize,
        reason: String,
    ) -> Result<(), ActorProcessingErr> {
        let now_ms = state.directory.clock().now_ms();
        let intensity = state.children[idx]
            .spec
            .intensity
            .unwrap_or(state.intensity);
        let decision = state.children[idx]
            .tracker
            .on_failure(now_ms, intensity, state.backoff);
        let delay_ms = match decision {
            RestartDecision::Escalate { restarts_in_window } => {
                return Self::escalate(state, idx, reason, restarts_in_window).await;
            }
            RestartDecision::Restart { delay_ms, .. } => delay_ms,
        };
        let generation = state.next_generation;
        state.next_generation += 1;

        let mut group = vec![idx];
        if state.strategy == Strategy::RestForOne {
            group.extend((idx + 1..state.children.len()).filter(|&j| {
                matches!(
                    state.children[j].status,
                    ChildStatus::Running | ChildStatus::Restarting { .. }
                )
            }));
        }
        let failed_id = state.children[idx].spec.id.clone();
        let sibling_reason = format!("sibling {failed_id} failed: {reason}");
        for &j in group.iter().skip(1).rev() {
            if let Some(cell) = state.children[j].cell.take() {
                stop_child(cell, &sibling_reason, state.shutdown_timeout_ms).await;
                let path = state.children[j].path.clone();
                state
                    .directory
                    .set_stopped(&path, Some(sibling_reason.clone()));
                state.directory.remove_descendants(&path);
            }
        }
        for &j in &group {
            let entry = &mut state.children[j];
            entry.status = ChildStatus::Restarting { generation };
            let why = if j == idx { &reason } else { &sibling_reason };
            state.directory.set_restarting(&entry.path, why);
        }
        // Temporary siblings are stopped with the group but never restarted.
        for &j in group.iter().skip(1).rev() {
            if state.children[j].spec.restart == RestartPolicy::Temporary {
                let entry = state.children.remove(j);
                state.directory.remove_subtree(&entry.path);
            }
        }

        state.stats.record_sent();
        if delay_ms == 0 {
            let _ = myself.cast(SupervisorMsg::RestartDue { generation });
        } else {
            let clock = state.directory.clock().clone();
            let myself = myself.clone();
            // If the supervisor is gone when the timer fires, the cast fails and that is fine.
            tokio::spawn(async move {
                clock.sleep(delay_ms).await;
                let _ = myself.cast(SupervisorMsg::RestartDue { generation });
            });
        }
        Ok(())
    }

    async fn escalate(
        state: &mut SupervisorState,
        idx: usize,
        reason: String,
        restarts: u32,
    ) -> Result<(), ActorProcessingErr> {
        let entry = &mut state.children[idx];
        entry.status = ChildStatus::Failed;
        let escalation = Escalation {
            supervisor: state.path.clone(),
            child: entry.spec.id.clone(),
            child_path: entry.path.clone(),
            kind: entry.spec.kind.clone(),
            reason: reason.clone(),
            restarts,
        };
        tracing::error!(supervisor = %state.path, child = %entry.path, restarts, %reason,
            "restart intensity exceeded, escalating");
        state.directory.set_failed_state(&entry.path);
        state.directory.escalated(&entry.path, &reason, restarts);
        match &state.escalation {
            EscalationPolicy::Hook(hook) => {
                hook(escalation);
                Ok(())
            }
            EscalationPolicy::FailSupervisor => {
                let err = SupervisorError::IntensityExceeded {
                    child_path: escalation.child_path,
                    restarts,
                    reason,
                };
                Self::stop_all_children(state, "supervisor escalated").await;
                if state.parent_path.is_none() {
                    // No parent supervisor will record this root's failure.
                    state
                        .directory
                        .record_failure(&state.path, &err.to_string());
                }
                Err(Box::new(err))
            }
        }
    }

    async fn restart_due(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        generation: u64,
    ) -> Result<(), ActorProcessingErr> {
        let due: Vec<String> = state
            .children
            .iter()
            .filter(|c| c.status == ChildStatus::Restarting { generation })
            .map(|c| c.spec.id.clone())
            .collect();
        for id in due {
            // Earlier restarts in this batch may have moved or regrouped this child.
            let Some(idx) = state.children.iter().position(|c| {
                c.spec.id == id && c.status == ChildStatus::Restarting { generation }
            }) else {
                continue;
            };
            let spec = state.children[idx].spec.clone();
            let path = state.children[idx].path.clone();
            let stats = state.children[idx].stats.clone();
            match Self::start(myself, state, &spec, &path, stats).await {
                Ok(cell) => {
                    let entry = &mut state.children[idx];
                    entry.cell = Some(cell.clone());
                    entry.status = ChildStatus::Running;
                    state.directory.set_running(&path, cell, true);
                }
                Err(err) => {
                    let reason = error_chain(&err);
                    tracing::warn!(supervisor = %state.path, child = %path, %reason, "restart failed");
                    state.directory.record_failure(&path, &reason);
                    // Regroups the rest of this batch under a new generation if needed.
                    return Self::restart_from(myself, state, idx, reason).await;
                }
            }
        }
        Ok(())
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let SupervisorArgs {
            spec,
            path,
            parent_path,
            directory,
            stats,
        } = args;
        let mut state = SupervisorState {
            path,
            parent_path,
            directory,
            strategy: spec.strategy,
            intensity: spec.intensity,
            backoff: spec.backoff,
            escalation: spec.escalation,
            shutdown_timeout_ms: spec.shutdown_timeout_ms,
            children: Vec::with_capacity(spec.children.len()),
            next_generation: 0,
            stats,
        };
        for child in spec.children {
            if let Err(err) = Self::add_child(&myself, &mut state, child).await {
                Self::stop_all_children(&mut state, "supervisor failed to start").await;
                return Err(Box::new(err));
            }
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Children stop before their supervisor finishes, in reverse start order.
        Self::stop_all_children(state, "supervisor stopped").await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.stats.record_handled();
        match message {
            SupervisorMsg::AddChild(spec, reply) => {
                let result = Self::add_child(&myself, state, spec).await;
                // The caller may have timed out; nothing to do then.
                let _ = reply.send(result);
            }
            SupervisorMsg::RemoveChild(id, reply) => {
                let result = Self::remove_child(state, &id).await;
                let _ = reply.send(result);
            }
            SupervisorMsg::ListChildren(reply) => {
                let list = state
                    .children
                    .iter()
                    .map(|c| ChildInfo {
                        id: c.spec.id.clone(),
                        kind: c.spec.kind.clone(),
                        path: c.path.clone(),
                        restart: c.spec.restart,
                        state: match c.status {
                            ChildStatus::Running => ActorState::Running,
                            ChildStatus::Restarting { .. } => ActorState::Restarting,
                            ChildStatus::Stopped => ActorState::Stopped,
                            ChildStatus::Failed => ActorState::Failed,
                        },
                    })
                    .collect();
                let _ = reply.send(list);
            }
            SupervisorMsg::RestartChild { id, reason, reply } => {
                return Self::restart_child(&myself, state, &id, reason, reply).await;
            }
            SupervisorMsg::RestartDue { generation } => {
                return Self::restart_due(&myself, state, generation).await;
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, abnormal, reason) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, true, error_chain(err.as_ref())),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let killed = reason
                    .as_deref()
                    .is_some_and(|r| KILLED_REASONS.contains(&r));
                (
                    cell,
                    killed,
                    reason.unwrap_or_else(|| "stopped".to_string()),
                )
            }
            // Started children are marked running when their start function returns.
            _ => return Ok(()),
        };
        // Exits of incarnations we stopped on purpose (or replaced) match no entry.
        let Some(idx) = state.children.iter().position(|c| {
            c.cell
                .as_ref()
                .is_some_and(|own| own.get_id() == cell.get_id())
        }) else {
            return Ok(());
        };
        Self::on_child_exit(&myself, state, idx, abnormal, reason).await
    }
}

/// Handle to a running supervisor. Cheap to clone.
#[derive(Clone)]
pub struct SupervisorHandle {
    actor: ActorRef<SupervisorMsg>,
    path: String,
    directory: Directory,
    call_timeout_ms: u64,
    stop_timeout_ms: u64,
}

impl std::fmt::Debug for SupervisorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorHandle")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SupervisorHandle {
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn actor(&self) -> &ActorRef<SupervisorMsg> {
        &self.actor
    }

    pub fn cell(&self) -> ActorCell {
        self.actor.get_cell()
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Directory path of child `id`.
    pub fn child_path(&self, id: &str) -> String {
        format!("{}/{id}", self.path)
    }

    /// The running incarnation of child `id`, if any.
    pub fn child(&self, id: &str) -> Option<ActorCell> {
        self.directory.lookup(&self.child_path(id))
    }

    /// Typed [`SupervisorHandle::child`].
    pub fn child_ref<M: Message>(&self, id: &str) -> Option<ActorRef<M>> {
        self.directory.lookup_ref(&self.child_path(id))
    }

    /// Handle to the supervisor running at `path` in `directory` (e.g. a nested node
    /// supervisor). A handle addresses one incarnation: after that supervisor restarts,
    /// look it up again. Request and stop bounds are [`SupervisorSpec::new`]'s defaults.
    pub fn lookup(directory: &Directory, path: &str) -> Option<SupervisorHandle> {
        let actor = directory.lookup_ref::<SupervisorMsg>(path)?;
        let defaults = SupervisorSpec::new(path);
        Some(SupervisorHandle {
            actor,
            path: path.to_string(),
            directory: directory.clone(),
            call_timeout_ms: defaults.call_timeout_ms,
            stop_timeout_ms: defaults.stop_timeout_ms,
        })
    }

    /// Handle to the nested supervisor that is child `id`.
    pub fn child_supervisor(&self, id: &str) -> Option<SupervisorHandle> {
        Self::lookup(&self.directory, &self.child_path(id))
    }

    async fn call<T: Send + 'static>(
        &self,
        build: impl FnOnce(RpcReplyPort<T>) -> SupervisorMsg,
    ) -> Result<T, SupervisorError> {
        if let Some(stats) = self.directory.stats(&self.path) {
            stats.record_sent();
        }
        let unreachable = |reason: String| SupervisorError::Unreachable {
            path: self.path.clone(),
            reason,
        };
        let timeout = Duration::from_millis(self.call_timeout_ms);
        match self.actor.call(build, Some(timeout)).await {
            Ok(CallResult::Success(value)) => Ok(value),
            Ok(CallResult::Timeout) => Err(unreachable(format!(
                "no reply within {} ms",
                self.call_timeout_ms
            ))),
            Ok(CallResult::SenderError) => Err(unreachable("it dropped the request".to_string())),
            Err(err) => Err(unreachable(err.to_string())),
        }
    }

    /// Start `spec` and supervise it. Fails if its start fails (nothing is kept then).
    pub async fn add_child(&self, spec: ChildSpec) -> Result<(), SupervisorError> {
        self.call(|reply| SupervisorMsg::AddChild(spec, reply))
            .await?
    }

    /// Stop child `id` (kill after `shutdown_timeout_ms`) and forget it.
    pub async fn remove_child(&self, id: &str) -> Result<(), SupervisorError> {
        let id = id.to_string();
        self.call(|reply| SupervisorMsg::RemoveChild(id, reply))
            .await?
    }

    /// Restart running child `id` now (stop, waiting up to `shutdown_timeout_ms`, then
    /// start again), for an operator's request: the restart shows in the directory but
    /// does not count towards the restart intensity, and siblings are left alone even
    /// under rest-for-one.
    pub async fn restart_child(&self, id: &str, reason: &str) -> Result<(), SupervisorError> {
        let (id, reason) = (id.to_string(), reason.to_string());
        self.call(|reply| SupervisorMsg::RestartChild { id, reason, reply })
            .await?
    }

    /// The children in start order.
    pub async fn children(&self) -> Result<Vec<ChildInfo>, SupervisorError> {
        self.call(SupervisorMsg::ListChildren).await
    }

    /// Stop the children (reverse start order), then the supervisor. A nested supervisor's
    /// parent sees a normal exit and applies the restart policy.
    pub async fn stop(&self) -> Result<(), SupervisorError> {
        let timeout = Duration::from_millis(self.stop_timeout_ms);
        let result = self.actor.stop_and_wait(None, Some(timeout)).await;
        if self.actor.get_status() >= ActorStatus::Stopped {
            if self
                .directory
                .get(&self.path)
                .and_then(|s| s.parent)
                .is_none()
            {
                self.directory.set_stopped(&self.path, None);
                self.directory.remove_subtree(&self.path);
            }
            return Ok(());
        }
        result.map_err(|err| SupervisorError::Unreachable {
            path: self.path.clone(),
            reason: err.to_string(),
        })
    }

    /// Wait until the supervisor actor has exited (stopped or failed), up to `timeout_ms`.
    /// Returns false on timeout.
    pub async fn wait_exit(&self, timeout_ms: u64) -> bool {
        self.actor
            .wait(Some(Duration::from_millis(timeout_ms)))
            .await
            .is_ok()
    }
}
