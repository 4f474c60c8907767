//! One seeded run: build the cluster, drive the workload through the real API, inject
//! faults on the seeded schedule, check the safety invariants after every step and the
//! liveness properties after the faults stop.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use gpve_actors::vm::{VM_MAX_RESTARTS, VM_RESTART_WINDOW_MS, VmEntry};
use gpve_api::tree::ROOT;
use gpve_store::{SimControl, SimFaults, UnknownResultMode};
use gpve_supervisor::{EventKind, TokioClock, wall_now_ms};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::broadcast::error::TryRecvError;

use crate::cluster::{ApiTarget, Cluster, ClusterError, ROOT_MAX_RESTARTS, ROOT_RESTART_WINDOW_MS};
use crate::model::{Model, RestartLedger, Violation};
use crate::options::SimOptions;
use crate::trace::Trace;
use crate::workload::{Client, Op};

/// Virtual Unix time at which every run starts (2026-01-01T00:00:00Z): timestamps in the
/// store and in tickets are the same in every run of a seed.
pub const EPOCH_MS: u64 = 1_767_225_600_000;
/// Concurrent client operations at most.
pub const MAX_INFLIGHT_OPS: usize = 4;
/// A client polls a task's status this often.
pub const TASK_POLL_MS: u64 = 500;
/// A client gives up waiting for a task after this long (the liveness check then names it).
pub const TASK_WAIT_MS: u64 = 600_000;
/// Virtual time between two steps: uniform in this range.
pub const STEP_MIN_MS: u64 = 10;
pub const STEP_MAX_MS: u64 = 400;
/// A node whose tree cannot start (store unreachable) retries after this long.
pub const NODE_RESTART_RETRY_MS: u64 = 1_000;

/// Failures that stop a run before it could judge anything.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("building the tokio runtime failed")]
    Runtime(#[source] std::io::Error),
    #[error("a run already installed its virtual clock in this process; run one seed per process")]
    ClockTaken,
    #[error("building the cluster failed")]
    Cluster(#[from] ClusterError),
    #[error("opening the trace file {path} failed")]
    TraceFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up HA failed")]
    Ha(#[from] crate::ha::HaSetupError),
    #[error("creating the run directory failed")]
    RunDir(#[source] std::io::Error),
}

/// What a run found.
#[derive(Debug)]
pub struct Outcome {
    pub trace_hash: String,
    pub trace_lines: u64,
    /// The first violation, with the step it was found at.
    pub violation: Option<(u64, Violation)>,
    /// The last trace lines (for a violation report).
    pub tail: Vec<String>,
    pub steps: u64,
    pub simulated_ms: u64,
    pub faults_injected: u64,
    pub ops_done: u64,
}

/// Shared between the driver and the client tasks; never locked across an await.
pub(crate) struct Book {
    trace: Trace,
    pub(crate) model: Model,
    violation: Option<(u64, Violation)>,
    step: u64,
    inflight: usize,
    ops_done: u64,
    /// What each in-flight client operation is, by id (for the liveness report).
    pending_ops: BTreeMap<u64, String>,
    next_op_id: u64,
}

pub(crate) type BookRef = Arc<Mutex<Book>>;

pub(crate) fn lock(book: &BookRef) -> MutexGuard<'_, Book> {
    book.lock().unwrap_or_else(|p| p.into_inner())
}

/// Virtual milliseconds since the run started.
pub fn sim_now_ms() -> u64 {
    wall_now_ms().saturating_sub(EPOCH_MS)
}

pub(crate) fn note(book: &BookRef, line: impl std::fmt::Display) {
    lock(book).trace.record(sim_now_ms(), line);
}

pub(crate) fn violate(book: &BookRef, v: Violation) {
    let mut b = lock(book);
    if b.violation.is_none() {
        let step = b.step;
        b.trace.record(
            sim_now_ms(),
            format!("VIOLATION {}: {}", v.invariant, v.detail),
        );
        b.violation = Some((step, v));
    }
}

/// Runs one seed on a fresh current-thread runtime with paused (virtual) time. Call once
/// per process: the virtual clock is process-wide.
pub fn run(opts: &SimOptions) -> Result<Outcome, RunError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .map_err(RunError::Runtime)?;
    rt.block_on(run_async(opts))
}

async fn run_async(opts: &SimOptions) -> Result<Outcome, RunError> {
    if !gpve_supervisor::install_process_clock(Arc::new(TokioClock::anchored(EPOCH_MS))) {
        return Err(RunError::ClockTaken);
    }
    gpve_supervisor::install_process_seed(opts.seed);
    let out: Option<Box<dyn std::io::Write + Send>> = match &opts.trace_out {
        Some(path) => Some(Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|source| RunError::TraceFile {
                path: path.clone(),
                source,
            })?,
        ))),
        None => None,
    };
    let run_root = std::env::temp_dir().join(format!("gpve-sim-{}", std::process::id()));
    std::fs::create_dir_all(&run_root).map_err(RunError::RunDir)?;
    let result = drive(opts, out, run_root.clone()).await;
    // Only this run's directory (named by our PID) is removed.
    let _ = std::fs::remove_dir_all(&run_root);
    result
}

#[derive(Debug, Clone)]
enum Heal {
    StoreLatency,
    Unhang { node: usize, vmid: u32 },
    Restart { node: usize },
    Reconnect { node: usize },
}

struct Driver {
    opts: SimOptions,
    rng: StdRng,
    cluster: Cluster,
    control: SimControl,
    book: BookRef,
    targets: Arc<Mutex<Vec<ApiTarget>>>,
    heals: BTreeMap<(u64, u64), Heal>,
    heal_seq: u64,
    ledger: RestartLedger,
    faults_injected: u64,
    /// A node crash or partition is in progress (at most one at a time, so a majority of
    /// nodes always works).
    node_fault_active: bool,
    ha: Option<crate::ha::HaDriver>,
}

async fn drive(
    opts: &SimOptions,
    out: Option<Box<dyn std::io::Write + Send>>,
    run_root: std::path::PathBuf,
) -> Result<Outcome, RunError> {
    let run_root_nodes = run_root.join("nodes");
    let clock: gpve_supervisor::SharedClock = Arc::new(TokioClock::anchored(EPOCH_MS));
    let faults = SimFaults {
        seed: opts.seed,
        ..SimFaults::default()
    };
    let (mut cluster, control) =
        Cluster::new(opts.seed, opts.nodes.max(1), clock, faults, run_root_nodes).await?;
    let book = Arc::new(Mutex::new(Book {
        trace: Trace::new(out, opts.echo),
        model: Model::default(),
        violation: None,
        step: 0,
        inflight: 0,
        ops_done: 0,
        pending_ops: BTreeMap::new(),
        next_op_id: 0,
    }));
    for i in 0..cluster.nodes.len() {
        cluster.start_node(i).await?;
    }
    note(
        &book,
        format!(
            "start seed={} nodes={} vms={} duration_ms={} faults={:?} bug={:?}",
            opts.seed, opts.nodes, opts.vms, opts.duration_ms, opts.faults, opts.bug
        ),
    );
    let targets = Arc::new(Mutex::new(Vec::new()));
    let ha = if cluster.nodes.len() > 1 {
        let scratch = run_root.join("server");
        std::fs::create_dir_all(&scratch).map_err(RunError::RunDir)?;
        Some(crate::ha::HaDriver::new(&cluster, opts, book_hooks(&book), &scratch).await?)
    } else {
        None
    };
    let mut d = Driver {
        opts: opts.clone(),
        rng: StdRng::seed_from_u64(opts.seed),
        cluster,
        control,
        book: book.clone(),
        targets,
        heals: BTreeMap::new(),
        heal_seq: 0,
        ledger: RestartLedger::default(),
        faults_injected: 0,
        node_fault_active: false,
        ha,
    };
    d.refresh_targets();

    // Faulty phase.
    while sim_now_ms() < opts.duration_ms && lock(&book).violation.is_none() {
        d.step(true).await;
    }
    // Liveness phase: heal everything, let the workload finish, and wait (bounded) for the
    // cluster to converge.
    if lock(&book).violation.is_none() {
        d.liveness().await;
    }
    if let Some(ha) = d.ha.as_ref() {
        ha.stop().await;
    }
    let digest = d.store_digest().await;
    note(&book, format!("end store-digest={digest}"));
    for i in 0..d.cluster.nodes.len() {
        d.cluster.crash_node(i).await;
    }
    let mut b = lock(&book);
    b.trace.flush();
    Ok(Outcome {
        trace_hash: b.trace.hash_hex(),
        trace_lines: b.trace.len(),
        violation: b.violation.clone(),
        tail: b.trace.tail().cloned().collect(),
        steps: b.step,
        simulated_ms: sim_now_ms(),
        faults_injected: d.faults_injected,
        ops_done: b.ops_done,
    })
}

/// What the HA driver may do to the run's books.
#[derive(Clone)]
pub struct BookHooks {
    book: BookRef,
}

impl BookHooks {
    /// Appends a trace line.
    pub fn note(&self, line: impl std::fmt::Display) {
        note(&self.book, line);
    }

    /// Reports a violation.
    pub fn violate(&self, v: Violation) {
        violate(&self.book, v);
    }

    /// The model learned that `vmid` now lives on `node`.
    pub fn moved(&self, vmid: u32, node: &str) {
        lock(&self.book).model.moved(vmid, node);
    }
}

fn book_hooks(book: &BookRef) -> BookHooks {
    BookHooks { book: book.clone() }
}

impl Driver {
    fn refresh_targets(&mut self) {
        let t: Vec<ApiTarget> = (0..self.cluster.nodes.len())
            .map(|i| self.cluster.target(i))
            .collect();
        *self.targets.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    fn schedule(&mut self, after_ms: u64, heal: Heal) {
        self.heal_seq += 1;
        self.heals
            .insert((sim_now_ms() + after_ms, self.heal_seq), heal);
    }

    async fn step(&mut self, faults_on: bool) {
        lock(&self.book).step += 1;
        self.apply_due_heals().await;
        if faults_on && self.rng.random_bool(self.opts.faults.fault_probability()) {
            self.inject_fault().await;
        }
        if faults_on {
            let inflight = lock(&self.book).inflight;
            if inflight < MAX_INFLIGHT_OPS && self.rng.random_bool(0.5) {
                self.start_op().await;
            }
        }
        let pause = self.rng.random_range(STEP_MIN_MS..=STEP_MAX_MS);
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
        if let Some(ha) = self.ha.as_mut() {
            ha.tick(&mut self.cluster).await;
            self.refresh_targets();
        }
        self.check_roots().await;
        self.drain_events();
        self.check_safety().await;
    }

    async fn apply_due_heals(&mut self) {
        let now = sim_now_ms();
        while let Some(entry) = self.heals.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let heal = entry.remove();
            self.heal(heal).await;
        }
    }

    async fn heal(&mut self, heal: Heal) {
        match heal {
            Heal::StoreLatency => {
                self.control.set_latency(0, 0);
                note(&self.book, "heal store latency");
            }
            Heal::Unhang { node, vmid } => {
                self.cluster.nodes[node].host.set_hung(vmid, false);
                note(
                    &self.book,
                    format!("heal unhang vm {vmid} on {}", self.cluster.nodes[node].name),
                );
            }
            Heal::Restart { node } => {
                let name = self.cluster.nodes[node].name.clone();
                self.ledger.forget_prefix(&format!("{name}:"));
                // An agent holds its lease before it runs (HA) VMs again.
                if let Some(ha) = self.ha.as_mut()
                    && !ha.heartbeat(&self.cluster, node).await
                {
                    note(
                        &self.book,
                        format!("heal restart {name} deferred: no lease"),
                    );
                    self.schedule(NODE_RESTART_RETRY_MS, Heal::Restart { node });
                    return;
                }
                match self.cluster.start_node(node).await {
                    Ok(()) => {
                        note(&self.book, format!("heal restart {name} ok"));
                        self.node_fault_active = false;
                    }
                    Err(e) => {
                        note(
                            &self.book,
                            format!(
                                "heal restart {name} failed: {}",
                                gpve_actors::storage::error_chain(&e)
                            ),
                        );
                        self.schedule(NODE_RESTART_RETRY_MS, Heal::Restart { node });
                    }
                }
                self.refresh_targets();
            }
            Heal::Reconnect { node } => {
                let n = &self.cluster.nodes[node];
                n.store_cut
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                n.heartbeats_cut
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                n.api_cut.store(false, std::sync::atomic::Ordering::Relaxed);
                note(&self.book, format!("heal partition {}", n.name));
                self.node_fault_active = false;
                self.refresh_targets();
            }
        }
    }

    async fn inject_fault(&mut self) {
        let factor = self.opts.faults.duration_factor();
        let nodes = self.cluster.nodes.len();
        let kind = self.rng.random_range(0..8u32);
        let running: Vec<(usize, u32)> = (0..nodes)
            .flat_map(|i| {
                self.cluster.nodes[i]
                    .host
                    .running()
                    .into_iter()
                    .map(move |(vmid, _)| (i, vmid))
            })
            .collect();
        let entries = self.entries().await;
        let line = match kind {
            0 => {
                let n = self.rng.random_range(1..=3u32);
                self.control.fail_next_commits(n);
                format!("fault store: next {n} commits fail")
            }
            1 => {
                let n = self.rng.random_range(1..=2u32);
                self.control
                    .unknown_next_commits(n, UnknownResultMode::Random);
                format!("fault store: next {n} commits have an unknown result")
            }
            2 => {
                let (r, c) = (
                    self.rng.random_range(0..=5u64),
                    self.rng.random_range(1..=50u64),
                );
                let for_ms = self.rng.random_range(2_000..=20_000u64) * factor;
                self.control.set_latency(r, c);
                self.schedule(for_ms, Heal::StoreLatency);
                format!("fault store: latency read {r} ms commit {c} ms for {for_ms} ms")
            }
            3 if !entries.is_empty() => {
                let ids: Vec<&VmEntry> = entries.values().collect();
                let e = ids[self.rng.random_range(0..ids.len())];
                let Some(node) = self.cluster.index(&e.record.node) else {
                    return;
                };
                let vmid = e.record.vmid;
                self.cluster.nodes[node]
                    .host
                    .fail_next_start(vmid, "simulated start failure");
                format!(
                    "fault hypervisor: next start of vm {vmid} on {} fails",
                    e.record.node
                )
            }
            4 if !running.is_empty() => {
                let (node, vmid) = running[self.rng.random_range(0..running.len())];
                self.cluster.nodes[node].host.crash(vmid);
                format!(
                    "fault hypervisor: vm {vmid} crashes on {}",
                    self.cluster.nodes[node].name
                )
            }
            5 if !running.is_empty() => {
                let (node, vmid) = running[self.rng.random_range(0..running.len())];
                let for_ms = self.rng.random_range(1_000..=15_000u64) * factor;
                self.cluster.nodes[node].host.set_hung(vmid, true);
                self.schedule(for_ms, Heal::Unhang { node, vmid });
                format!(
                    "fault hypervisor: vm {vmid} on {} hangs for {for_ms} ms",
                    self.cluster.nodes[node].name
                )
            }
            6 if !self.node_fault_active => {
                let node = self.rng.random_range(0..nodes);
                if self.cluster.nodes[node].tree.is_none() {
                    return;
                }
                let down_ms = self.rng.random_range(500..=10_000u64) * factor;
                self.cluster.crash_node(node).await;
                self.node_fault_active = true;
                self.schedule(down_ms, Heal::Restart { node });
                self.refresh_targets();
                format!(
                    "fault node: {} crashes, restarts in {down_ms} ms",
                    self.cluster.nodes[node].name
                )
            }
            7 if !self.node_fault_active => {
                let node = self.rng.random_range(0..nodes);
                let two_way = self.rng.random_bool(0.5);
                let for_ms = self.rng.random_range(1_000..=20_000u64) * factor;
                let n = &self.cluster.nodes[node];
                n.heartbeats_cut
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                if two_way {
                    n.store_cut
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    n.api_cut.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                let name = n.name.clone();
                self.node_fault_active = true;
                self.schedule(for_ms, Heal::Reconnect { node });
                self.refresh_targets();
                let how = if two_way {
                    "two-way (store, heartbeats, API)"
                } else {
                    "one-way (heartbeats lost; store and API reachable)"
                };
                format!("fault partition: {name} {how} for {for_ms} ms")
            }
            _ => return,
        };
        self.faults_injected += 1;
        note(&self.book, line);
    }

    /// Every VM entry, read through the uncut link (reads never draw faults).
    async fn entries(&self) -> BTreeMap<u32, VmEntry> {
        match gpve_actors::vm::list_entries(&self.cluster.truth).await {
            Ok(list) => list.into_iter().map(|e| (e.record.vmid, e)).collect(),
            Err(e) => {
                note(&self.book, format!("checker read failed: {e}"));
                BTreeMap::new()
            }
        }
    }

    async fn start_op(&mut self) {
        let entries = self.entries().await;
        let live = entries.len();
        let nodes = self.cluster.nodes.len();
        let want = self.opts.vms.max(1);
        // Keep the population near --vms: create more below it, delete more above it.
        let create_weight = if live < want { 4 } else { 1 };
        let delete_weight = if live > want { 4 } else { 1 };
        let weights = [
            create_weight,
            3,
            2,
            delete_weight,
            3,
            1,
            if self.ha.is_some() { 2 } else { 0 },
        ];
        let total: u32 = weights.iter().sum();
        let mut pick = self.rng.random_range(0..total);
        let mut kind = 0;
        for (i, w) in weights.iter().enumerate() {
            if pick < *w {
                kind = i;
                break;
            }
            pick -= w;
        }
        let ids: Vec<&VmEntry> = entries.values().collect();
        let client = Client {
            targets: self.targets.clone(),
            book: self.book.clone(),
            names: self.cluster.nodes.iter().map(|n| n.name.clone()).collect(),
        };
        let op: Op = match kind {
            0 => Op::Create {
                node: self.rng.random_range(0..nodes),
                named: self.rng.random_bool(0.5),
                start: self.rng.random_bool(0.5),
                desc: format!("d{}", self.rng.random_range(0..1_000u32)),
            },
            1..=4 | 6 if !ids.is_empty() => {
                let e = ids[self.rng.random_range(0..ids.len())];
                let Some(node) = self.cluster.index(&e.record.node) else {
                    return;
                };
                let vmid = e.record.vmid;
                match kind {
                    1 => Op::Start { node, vmid },
                    2 => Op::Stop { node, vmid },
                    3 => Op::Delete { node, vmid },
                    4 => Op::Describe {
                        node,
                        vmid,
                        value: format!("d{}", self.rng.random_range(0..1_000u32)),
                    },
                    _ => Op::HaAdd { vmid },
                }
            }
            5 => Op::Cordon {
                node: self.rng.random_range(0..nodes),
                on: self.rng.random_bool(0.5),
            },
            _ => return,
        };
        let op_id = {
            let mut b = lock(&self.book);
            b.inflight += 1;
            b.next_op_id += 1;
            let id = b.next_op_id;
            b.pending_ops.insert(id, format!("{op:?}"));
            id
        };
        let ha = self.ha.as_ref().map(|h| h.requests());
        tokio::spawn(async move {
            op.run(&client, ha).await;
            let mut b = lock(&client.book);
            b.inflight -= 1;
            b.ops_done += 1;
            b.pending_ops.remove(&op_id);
        });
    }

    /// Restart a node whose root supervisor exited on its own (restart intensity exceeded),
    /// as systemd would restart the process.
    async fn check_roots(&mut self) {
        for i in 0..self.cluster.nodes.len() {
            let exited = self.cluster.nodes[i]
                .tree
                .as_ref()
                .is_some_and(|t| t.root.cell().get_status() >= ractor::ActorStatus::Stopping);
            if exited {
                let name = self.cluster.nodes[i].name.clone();
                self.cluster.crash_node(i).await;
                note(
                    &self.book,
                    format!("node {name}: root supervisor exited; restarting it"),
                );
                self.schedule(NODE_RESTART_RETRY_MS, Heal::Restart { node: i });
                self.refresh_targets();
            }
        }
    }

    fn drain_events(&mut self) {
        for i in 0..self.cluster.nodes.len() {
            let name = self.cluster.nodes[i].name.clone();
            let Some(tree) = self.cluster.nodes[i].tree.as_mut() else {
                continue;
            };
            loop {
                let ev = match tree.events.try_recv() {
                    Ok(ev) => ev,
                    Err(TryRecvError::Lagged(n)) => {
                        note(
                            &self.book,
                            format!("{name}: {n} supervision events lost (lagged)"),
                        );
                        continue;
                    }
                    Err(_) => break,
                };
                match &ev.kind {
                    EventKind::Restarted { restarts } => {
                        note(
                            &self.book,
                            format!("sup {name} {} restarted (#{restarts})", ev.path),
                        );
                        let vm_prefix = format!("{ROOT}/{}/vm:", gpve_actors::vm::SUPERVISOR_ID);
                        let bound = if ev.path.starts_with(&vm_prefix) {
                            Some((VM_MAX_RESTARTS, VM_RESTART_WINDOW_MS))
                        } else if ev.path.matches('/').count() == 1 {
                            Some((ROOT_MAX_RESTARTS, ROOT_RESTART_WINDOW_MS))
                        } else {
                            None
                        };
                        if let Some((max, window)) = bound
                            && let Err(v) = self.ledger.restarted(
                                &format!("{name}:{}", ev.path),
                                ev.at_ms,
                                max,
                                window,
                            )
                        {
                            violate(&self.book, v);
                        }
                    }
                    EventKind::Escalated { reason, .. } => {
                        note(
                            &self.book,
                            format!("sup {name} {} escalated: {reason}", ev.path),
                        );
                        let vm_prefix = format!("{ROOT}/{}/vm:", gpve_actors::vm::SUPERVISOR_ID);
                        if let Some(vmid) = ev
                            .path
                            .strip_prefix(&vm_prefix)
                            .and_then(|v| v.parse().ok())
                            && let Some(ha) = self.ha.as_mut()
                        {
                            ha.vm_failed(vmid, &name);
                        }
                    }
                    EventKind::Failed { reason } => {
                        note(
                            &self.book,
                            format!("sup {name} {} failed: {reason}", ev.path),
                        );
                    }
                    EventKind::Started | EventKind::Stopped { .. } => {}
                }
            }
        }
    }

    async fn check_safety(&mut self) {
        for (vmid, nodes) in self.cluster.running_copies() {
            if nodes.len() > 1 {
                violate(
                    &self.book,
                    Violation {
                        invariant: "never two running copies of one VM",
                        detail: format!("VM {vmid} runs on {}", nodes.join(" and ")),
                    },
                );
            }
        }
        let entries = self.entries().await;
        let result = lock(&self.book).model.check(&entries);
        if let Err(v) = result {
            violate(&self.book, v);
        }
    }

    async fn liveness(&mut self) {
        note(&self.book, "faults stop; healing everything");
        self.control.heal();
        let pending: Vec<Heal> = std::mem::take(&mut self.heals).into_values().collect();
        for heal in pending {
            self.heal(heal).await;
        }
        for i in 0..self.cluster.nodes.len() {
            let vmids: Vec<u32> = self.cluster.nodes[i]
                .host
                .running()
                .into_iter()
                .map(|(v, _)| v)
                .collect();
            for vmid in vmids {
                self.cluster.nodes[i].host.set_hung(vmid, false);
            }
        }
        let deadline = sim_now_ms() + self.opts.liveness_bound_ms;
        let mut last_problem = String::new();
        loop {
            self.step(false).await;
            if lock(&self.book).violation.is_some() {
                return;
            }
            let (inflight, first) = {
                let b = lock(&self.book);
                (
                    b.inflight,
                    b.pending_ops.values().next().cloned().unwrap_or_default(),
                )
            };
            let problem = if inflight > 0 {
                Some((
                    "every task ends",
                    format!(
                        "{inflight} client operations still wait for their tasks, first: {first}"
                    ),
                ))
            } else {
                self.converged().await.err()
            };
            match problem {
                None => {
                    note(&self.book, "liveness: converged");
                    return;
                }
                Some((invariant, detail)) => {
                    if sim_now_ms() >= deadline {
                        violate(
                            &self.book,
                            Violation {
                                invariant,
                                detail: format!(
                                    "{detail} ({} ms after faults stopped)",
                                    self.opts.liveness_bound_ms
                                ),
                            },
                        );
                        return;
                    }
                    if detail != last_problem {
                        note(&self.book, format!("liveness: waiting: {detail}"));
                        last_problem = detail;
                    }
                }
            }
        }
    }

    /// Whether the cluster converged: every task ended, every VM's observed state in the
    /// store matches its node's hypervisor, no QEMU runs without a VM or on the wrong node,
    /// and every HA VM that should run runs.
    async fn converged(&mut self) -> Result<(), (&'static str, String)> {
        let tasks: Vec<(gpve_store::Key, gpve_actors::task::TaskRecord)> = self
            .cluster
            .truth
            .list_json(&gpve_store::Key::prefix(&("tasks",)))
            .await
            .unwrap_or_default();
        if let Some((_, t)) = tasks.iter().find(|(_, t)| t.is_running()) {
            return Err((
                "every task ends",
                format!(
                    "task {}:{} on {} is still running",
                    t.worker_type, t.id, t.node
                ),
            ));
        }
        let entries = self.entries().await;
        for node in &self.cluster.nodes {
            for (vmid, _) in node.host.running() {
                match entries.get(&vmid) {
                    None => {
                        return Err((
                            "actor state matches the store",
                            format!(
                                "QEMU of VM {vmid} runs on {} but the VM does not exist",
                                node.name
                            ),
                        ));
                    }
                    Some(e) if e.record.node != node.name => {
                        return Err((
                            "actor state matches the store",
                            format!(
                                "QEMU of VM {vmid} runs on {} but the VM is placed on {}",
                                node.name, e.record.node
                            ),
                        ));
                    }
                    _ => {}
                }
            }
        }
        for e in entries.values() {
            let Some(i) = self.cluster.index(&e.record.node) else {
                continue;
            };
            let node = &self.cluster.nodes[i];
            let runs = node.host.running().iter().any(|(v, _)| *v == e.record.vmid);
            let says = matches!(e.runtime.qmpstatus.as_str(), "running" | "paused");
            if runs != says {
                return Err((
                    "actor state matches the store",
                    format!(
                        "VM {} on {}: the store says {} but QEMU {}",
                        e.record.vmid,
                        e.record.node,
                        e.runtime.qmpstatus,
                        if runs { "runs" } else { "does not run" }
                    ),
                ));
            }
        }
        if let Some(ha) = self.ha.as_ref() {
            ha.converged(&self.cluster, &entries)?;
        }
        Ok(())
    }

    /// SHA-256 of every VM entry (the VM subspace holds no process ids, unlike UPIDs).
    async fn store_digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let entries = self.entries().await;
        let mut h = Sha256::new();
        for e in entries.values() {
            h.update(serde_json::to_vec(e).unwrap_or_default());
        }
        h.finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}
