//! Tasks: every long operation runs as a task with a Proxmox UPID, its status and log lines
//! persisted in the store so they survive a restart, and a stop request that cancels it.
//!
//! Store layout:
//! - `("tasks", upid)` → JSON [`TaskRecord`] (status `running` until `exitstatus` is set);
//! - `("tasklog", upid, n: u64)` → JSON string, log line `n` (1-based, as Proxmox).
//!
//! Tasks are tokio tasks inside the server process (Proxmox forks workers). A stop request
//! drops the task's future at its next await point, the way SIGTERM ends a Proxmox worker;
//! task bodies must therefore leave durable state consistent at every await.

pub mod upid;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use gpve_store::{Key, RangeOptions, Store, StoreError};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::watch;
use tracing::Instrument;

pub use upid::{Upid, UpidError};

/// Exit status Proxmox records for a task found running after a restart.
pub const EXIT_UNEXPECTED: &str = "unexpected status";
/// Exit status of a task stopped through `DELETE /nodes/{node}/tasks/{upid}`.
pub const EXIT_INTERRUPTED: &str = "interrupted by signal";
/// How long a finished task keeps trying to persist its end while the store fails (a
/// partition, an outage): a record left `running` would never end otherwise (found by the
/// simulation, seed 2). Past this bound the next start's [`TaskManager::recover`] ends it.
pub const FINISH_PERSIST_BOUND_MS: u64 = 600_000;
/// Longest pause between two attempts to persist a task's end.
pub const FINISH_RETRY_MAX_MS: u64 = 5_000;
/// Longest log line kept, in bytes; longer lines are cut (the store bounds values too).
pub const MAX_LOG_LINE_BYTES: usize = 4096;

const TASKS: &str = "tasks";
const TASKLOG: &str = "tasklog";

/// Task failures.
#[derive(Debug, Error)]
pub enum TaskError {
    #[error("no such task '{0}'")]
    NotFound(String),
    #[error("task '{0}' is not running")]
    NotRunning(String),
    #[error("invalid task id")]
    Upid(#[from] UpidError),
    #[error("task store operation failed")]
    Store(#[from] StoreError),
}

/// The persisted status of one task, in the shape of Proxmox's task list entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub upid: String,
    pub node: String,
    pub pid: u32,
    pub pstart: u64,
    pub starttime: i64,
    #[serde(rename = "type")]
    pub worker_type: String,
    pub id: String,
    pub user: String,
    /// `None` while running; `"OK"` or the error once stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exitstatus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endtime: Option<i64>,
}

impl TaskRecord {
    /// Whether the task has not finished.
    pub fn is_running(&self) -> bool {
        self.exitstatus.is_none()
    }
}

/// Which tasks to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskSource {
    /// Finished tasks (Proxmox's default).
    #[default]
    Archive,
    /// Running tasks.
    Active,
    /// Both.
    All,
}

/// Filters of `GET /nodes/{node}/tasks`.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub start: usize,
    pub limit: usize,
    /// Only tasks that failed.
    pub errors: bool,
    pub typefilter: Option<String>,
    pub userfilter: Option<String>,
    pub vmid: Option<u32>,
    pub source: TaskSource,
    pub since: Option<i64>,
    pub until: Option<i64>,
}

impl TaskFilter {
    fn matches(&self, t: &TaskRecord) -> bool {
        let source_ok = match self.source {
            TaskSource::Archive => !t.is_running(),
            TaskSource::Active => t.is_running(),
            TaskSource::All => true,
        };
        source_ok
            && (!self.errors || t.exitstatus.as_deref().is_some_and(|s| s != "OK"))
            && self
                .typefilter
                .as_ref()
                .is_none_or(|ty| &t.worker_type == ty)
            && self
                .userfilter
                .as_ref()
                .is_none_or(|u| t.user.contains(u.as_str()))
            && self.vmid.is_none_or(|v| t.id == v.to_string())
            && self.since.is_none_or(|s| t.starttime >= s)
            && self.until.is_none_or(|u| t.starttime <= u)
    }
}

/// Handle given to a task body: log lines and observe cancellation.
#[derive(Debug, Clone)]
pub struct TaskCtx {
    upid: String,
    store: Store,
    next_line: Arc<AtomicU32>,
}

impl TaskCtx {
    /// The task's UPID.
    pub fn upid(&self) -> &str {
        &self.upid
    }

    /// Append a line to the task log (persisted before this returns).
    pub async fn log(&self, line: impl Into<String>) -> Result<(), TaskError> {
        let n = self.next_line.fetch_add(1, Ordering::SeqCst) as u64;
        append_line(&self.store, &self.upid, n, line.into()).await
    }
}

async fn append_line(store: &Store, upid: &str, n: u64, mut line: String) -> Result<(), TaskError> {
    if line.len() > MAX_LOG_LINE_BYTES {
        let mut cut = MAX_LOG_LINE_BYTES;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    store
        .put_json(&Key::pack(&(TASKLOG, upid, n)), &line)
        .await?;
    Ok(())
}

struct Inner {
    store: Store,
    node: String,
    pstart: u64,
    next_pid: AtomicU32,
    running: Mutex<HashMap<String, watch::Sender<bool>>>,
}

/// Starts, tracks, lists and stops the tasks of one node.
#[derive(Clone)]
pub struct TaskManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TaskManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskManager")
            .field("node", &self.inner.node)
            .finish()
    }
}

/// Start time of this process in clock ticks since boot (field 22 of `/proc/self/stat`),
/// which Proxmox puts into a UPID's `pstart`; 0 if unreadable.
fn process_start_ticks() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            after.split_whitespace().nth(19)?.parse().ok()
        })
        .unwrap_or(0)
}

fn now_s() -> i64 {
    gpve_supervisor::wall_now_s()
}

impl TaskManager {
    /// A task manager for `node` persisting into `store`.
    pub fn new(store: Store, node: impl Into<String>) -> Self {
        TaskManager {
            inner: Arc::new(Inner {
                store,
                node: node.into(),
                pstart: process_start_ticks(),
                next_pid: AtomicU32::new(std::process::id()),
                running: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The node this manager runs tasks on.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Mark tasks that were running when the server died as stopped with
    /// [`EXIT_UNEXPECTED`], as Proxmox does at start-up. Call once before serving.
    pub async fn recover(&self) -> Result<usize, TaskError> {
        let now = now_s();
        let node = self.inner.node.clone();
        let fixed = self
            .inner
            .store
            .transact(|tx| {
                let node = node.clone();
                Box::pin(async move {
                    let all: Vec<(Key, TaskRecord)> = tx
                        .list_json(&Key::prefix(&(TASKS,)), RangeOptions::all())
                        .await?;
                    let mut fixed = 0usize;
                    for (key, mut rec) in all {
                        if rec.is_running() && rec.node == node {
                            rec.exitstatus = Some(EXIT_UNEXPECTED.to_string());
                            rec.endtime = Some(now);
                            tx.put_json(&key, &rec)?;
                            fixed += 1;
                        }
                    }
                    Ok(fixed)
                })
            })
            .await?;
        if fixed > 0 {
            tracing::warn!(
                count = fixed,
                "marked tasks interrupted by a restart as stopped"
            );
        }
        Ok(fixed)
    }

    /// Start a task; returns its UPID once the task's record is persisted. The body's
    /// `Err(message)` becomes the task's exit status.
    pub async fn spawn<F, Fut>(
        &self,
        worker_type: &str,
        id: &str,
        user: &str,
        body: F,
    ) -> Result<Upid, TaskError>
    where
        F: FnOnce(TaskCtx) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let upid = Upid {
            node: self.inner.node.clone(),
            pid: self.inner.next_pid.fetch_add(1, Ordering::SeqCst),
            pstart: self.inner.pstart,
            starttime: now_s(),
            worker_type: worker_type.to_string(),
            id: id.to_string(),
            user: user.to_string(),
        };
        upid.validate()?;
        let upid_s = upid.to_string();
        let record = TaskRecord {
            upid: upid_s.clone(),
            node: upid.node.clone(),
            pid: upid.pid,
            pstart: upid.pstart,
            starttime: upid.starttime,
            worker_type: upid.worker_type.clone(),
            id: upid.id.clone(),
            user: upid.user.clone(),
            exitstatus: None,
            endtime: None,
        };
        // Register before persisting so a stop request can never miss a running task.
        let (cancel_tx, mut cancel_rx) = watch::channel(false);
        self.lock_running().insert(upid_s.clone(), cancel_tx);
        if let Err(e) = self
            .inner
            .store
            .put_json(&Key::pack(&(TASKS, upid_s.as_str())), &record)
            .await
        {
            self.lock_running().remove(&upid_s);
            return Err(e.into());
        }
        let ctx = TaskCtx {
            upid: upid_s.clone(),
            store: self.inner.store.clone(),
            next_line: Arc::new(AtomicU32::new(1)),
        };
        let this = self.clone();
        let span = tracing::info_span!("task", upid = %upid_s);
        tokio::spawn(
            async move {
                let next_line = ctx.next_line.clone();
                let run = body(ctx);
                let result = tokio::select! {
                    // Biased: a body that finishes as the cancel arrives keeps its result,
                    // and the choice never depends on tokio's per-process RNG.
                    biased;
                    r = run => r,
                    _ = cancel_rx.wait_for(|stop| *stop) => Err(EXIT_INTERRUPTED.to_string()),
                };
                this.finish(record, next_line, result).await;
            }
            .instrument(span),
        );
        Ok(upid)
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<bool>>> {
        // A poisoned map only means a panic elsewhere while holding it; the map stays valid.
        self.inner
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn finish(
        &self,
        mut record: TaskRecord,
        next_line: Arc<AtomicU32>,
        result: Result<(), String>,
    ) {
        let (exit, last_line) = match result {
            Ok(()) => ("OK".to_string(), "TASK OK".to_string()),
            Err(e) => (e.clone(), format!("TASK ERROR: {e}")),
        };
        record.exitstatus = Some(exit);
        record.endtime = Some(now_s());
        let n = next_line.fetch_add(1, Ordering::SeqCst) as u64;
        let upid = record.upid.clone();
        let rec = record.clone();
        let started = tokio::time::Instant::now();
        let mut pause_ms = 100;
        let outcome = loop {
            let outcome = self
                .inner
                .store
                .transact(|tx| {
                    let line_key = Key::pack(&(TASKLOG, upid.as_str(), n));
                    let rec_key = Key::pack(&(TASKS, upid.as_str()));
                    let res = tx
                        .put_json(&line_key, &last_line)
                        .and_then(|()| tx.put_json(&rec_key, &rec));
                    Box::pin(async move { res })
                })
                .await;
            match outcome {
                Err(e)
                    if e.is_retryable()
                        || matches!(e, gpve_store::StoreError::RetriesExhausted { .. }) =>
                {
                    if started.elapsed()
                        >= std::time::Duration::from_millis(FINISH_PERSIST_BOUND_MS)
                    {
                        break Err(e);
                    }
                    tracing::warn!(error = %e, "persisting the end of a task failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
                    pause_ms = (pause_ms * 2).min(FINISH_RETRY_MAX_MS);
                }
                other => break other,
            }
        };
        if let Err(e) = outcome {
            tracing::error!(error = %e, "persisting the end of a task failed");
        } else {
            tracing::info!(exitstatus = ?record.exitstatus, "task finished");
        }
        self.lock_running().remove(&record.upid);
    }

    /// A task's status.
    pub async fn status(&self, upid: &str) -> Result<TaskRecord, TaskError> {
        upid.parse::<Upid>()?;
        self.inner
            .store
            .get_json(&Key::pack(&(TASKS, upid)))
            .await?
            .ok_or_else(|| TaskError::NotFound(upid.to_string()))
    }

    /// Log lines `start..start+limit` (0-based offset, lines numbered from 1) and the total
    /// number of lines.
    pub async fn log(
        &self,
        upid: &str,
        start: usize,
        limit: usize,
    ) -> Result<(Vec<(u64, String)>, usize), TaskError> {
        self.status(upid).await?;
        let prefix = Key::prefix(&(TASKLOG, upid));
        let lines: Vec<(Key, String)> = self.inner.store.list_json(&prefix).await?;
        let total = lines.len();
        let page = lines
            .into_iter()
            .skip(start)
            .take(limit)
            .filter_map(|(k, line)| {
                let n: u64 = k.unpack_suffix(&prefix).ok()?;
                Some((n, line))
            })
            .collect();
        Ok((page, total))
    }

    /// Tasks matching `filter`, newest first.
    pub async fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, TaskError> {
        let all: Vec<(Key, TaskRecord)> =
            self.inner.store.list_json(&Key::prefix(&(TASKS,))).await?;
        let mut tasks: Vec<TaskRecord> = all
            .into_iter()
            .map(|(_, t)| t)
            .filter(|t| t.node == self.inner.node && filter.matches(t))
            .collect();
        tasks.sort_by(|a, b| b.starttime.cmp(&a.starttime).then(b.pid.cmp(&a.pid)));
        Ok(tasks
            .into_iter()
            .skip(filter.start)
            .take(filter.limit)
            .collect())
    }

    /// Ask a running task to stop; it ends with [`EXIT_INTERRUPTED`].
    pub async fn stop(&self, upid: &str) -> Result<(), TaskError> {
        let record = self.status(upid).await?;
        if !record.is_running() {
            return Err(TaskError::NotRunning(upid.to_string()));
        }
        match self.lock_running().get(upid) {
            Some(tx) => {
                // The receiver is gone only if the task already finished.
                let _ = tx.send(true);
                Ok(())
            }
            None => Err(TaskError::NotRunning(upid.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn wait_stopped(m: &TaskManager, upid: &str) -> TaskRecord {
        for _ in 0..200 {
            let r = m.status(upid).await.unwrap();
            if !r.is_running() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("task {upid} did not stop");
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_redb(&dir.path().join("t.redb")).unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn task_runs_logs_and_lists() {
        let (_d, s) = store();
        let m = TaskManager::new(s, "n1");
        let upid = m
            .spawn("startall", "", "root@pam", |ctx| async move {
                ctx.log("hello").await.map_err(|e| e.to_string())?;
                Ok(())
            })
            .await
            .unwrap();
        let rec = wait_stopped(&m, &upid.to_string()).await;
        assert_eq!(rec.exitstatus.as_deref(), Some("OK"));
        let (lines, total) = m.log(&upid.to_string(), 0, 50).await.unwrap();
        assert_eq!(total, 2);
        assert_eq!(lines[0], (1, "hello".to_string()));
        assert_eq!(lines[1], (2, "TASK OK".to_string()));
        let listed = m
            .list(&TaskFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        let active = m
            .list(&TaskFilter {
                limit: 10,
                source: TaskSource::Active,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(active.is_empty());
    }

    #[tokio::test]
    async fn failure_and_stop() {
        let (_d, s) = store();
        let m = TaskManager::new(s, "n1");
        let failed = m
            .spawn("x", "100", "a@pve", |_| async { Err("boom".to_string()) })
            .await
            .unwrap()
            .to_string();
        assert_eq!(
            wait_stopped(&m, &failed).await.exitstatus.as_deref(),
            Some("boom")
        );
        let long = m
            .spawn("y", "", "a@pve", |_| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            })
            .await
            .unwrap()
            .to_string();
        m.stop(&long).await.unwrap();
        assert_eq!(
            wait_stopped(&m, &long).await.exitstatus.as_deref(),
            Some(EXIT_INTERRUPTED)
        );
        assert!(matches!(m.stop(&long).await, Err(TaskError::NotRunning(_))));
        let errors = m
            .list(&TaskFilter {
                limit: 10,
                errors: true,
                vmid: Some(100),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].upid, failed);
    }

    #[tokio::test]
    async fn recover_marks_running_tasks() {
        let (_d, s) = store();
        let rec = TaskRecord {
            upid: "UPID:n1:00000001:00000002:00000003:x::a@pve:".into(),
            node: "n1".into(),
            pid: 1,
            pstart: 2,
            starttime: 3,
            worker_type: "x".into(),
            id: String::new(),
            user: "a@pve".into(),
            exitstatus: None,
            endtime: None,
        };
        s.put_json(&Key::pack(&(TASKS, rec.upid.as_str())), &rec)
            .await
            .unwrap();
        let m = TaskManager::new(s, "n1");
        assert_eq!(m.recover().await.unwrap(), 1);
        let r = m.status(&rec.upid).await.unwrap();
        assert_eq!(r.exitstatus.as_deref(), Some(EXIT_UNEXPECTED));
        assert!(matches!(
            m.status("UPID:n1:00000009:00000002:00000003:x::a@pve:")
                .await,
            Err(TaskError::NotFound(_))
        ));
    }
}
