//! The `vcluster:{tenant}.{name}` actor.
//!
//! Messages, by lifecycle:
//! - any time: [`VcMsg::Tick`] (probe processes, converge workers, publish status),
//!   [`VcMsg::Reconcile`] (the spec changed), [`VcMsg::Kubeconfig`];
//! - while its processes run: [`VcMsg::Exited`] → restart after a backoff under
//!   [`PROCESS_MAX_RESTARTS`] in [`PROCESS_RESTART_WINDOW_MS`], then the VC is `Failed`
//!   with a condition naming the process and its last exit;
//! - [`VcMsg::Upgrade`]: new leaf certificates, then every process restarts on them;
//! - [`VcMsg::Teardown`]: kill the processes, destroy the worker VMs, remove the
//!   directory; the caller then removes the actor and the record.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use gpve_actors::vm::{self, VmOp, ops};
use gpve_supervisor::{ActorStats, Backoff, RestartDecision, RestartIntensity, RestartTracker};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::pki::{self, PkiDir, files};
use super::process::{self, Datastore, EtcdPorts, Exit, Launch, Running};
use super::{Condition, VcHost, VcRecord, VcStatus, Worker, vc_key};
use crate::pve::nodes::qemu::{self as qemu_api, OP_TIMEOUT_MS};
use crate::state::now_s;

/// Probe period.
pub const TICK_MS: u64 = 1_000;
/// A process restarted more often than this within the window fails the VC.
pub const PROCESS_MAX_RESTARTS: u32 = 3;
pub const PROCESS_RESTART_WINDOW_MS: u64 = 60_000;
/// Backoff between restarts of one process.
pub const PROCESS_BACKOFF_INITIAL_MS: u64 = 200;
pub const PROCESS_BACKOFF_MAX_MS: u64 = 5_000;

/// Commands of a VC actor.
#[derive(Debug)]
pub enum VcMsg {
    Tick,
    Reconcile,
    Exited(Exit),
    /// Start process `id` again (after its backoff).
    Restart(String),
    Kubeconfig(RpcReplyPort<Result<String, String>>),
    /// Rotate the leaf certificates and restart the processes on them.
    Upgrade(RpcReplyPort<Result<(), String>>),
    Teardown(RpcReplyPort<Result<(), String>>),
}

impl ractor::Message for VcMsg {}

/// Arguments of each incarnation.
#[derive(Debug, Clone)]
pub struct VcArgs {
    pub host: VcHost,
    pub tenant: String,
    pub name: String,
}

/// The VC actor.
#[derive(Debug)]
pub struct VcActor {
    pub stats: ActorStats,
}

struct Proc {
    launch: Launch,
    running: Option<Running>,
    tracker: RestartTracker,
    incarnations: u64,
}

/// The actor's state.
pub struct VcState {
    args: VcArgs,
    dir: PathBuf,
    pki: PkiDir,
    rec: VcRecord,
    procs: BTreeMap<String, Proc>,
    /// Why the VC failed, once it did (a process exceeded its restart intensity).
    failed: Option<String>,
    torn_down: bool,
    /// Probe clients (built once the PKI exists; rebuilt after rotation).
    etcd_client: Option<reqwest::Client>,
    api_client: Option<reqwest::Client>,
    last_worker_error: Option<String>,
}

impl VcState {
    fn endpoint(&self) -> pki::Endpoint {
        pki::Endpoint {
            hosts: vec!["127.0.0.1".into(), "localhost".into()],
        }
    }
}

fn err(e: impl std::fmt::Display) -> ActorProcessingErr {
    e.to_string().into()
}

impl Actor for VcActor {
    type Msg = VcMsg;
    type State = VcState;
    type Arguments = VcArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<VcMsg>,
        args: VcArgs,
    ) -> Result<VcState, ActorProcessingErr> {
        let key = vc_key(&args.tenant, &args.name);
        let rec: VcRecord = args
            .host
            .store()
            .get_json(&key)
            .await?
            .ok_or_else(|| err(format!("no record for {}/{}", args.tenant, args.name)))?;
        let dir = args.host.vc_dir(&args.tenant, &args.name);
        let pki = PkiDir(dir.join("pki"));
        let mut st = VcState {
            args,
            dir,
            pki,
            rec,
            procs: BTreeMap::new(),
            failed: None,
            torn_down: false,
            etcd_client: None,
            api_client: None,
            last_worker_error: None,
        };
        if st.rec.deleting {
            // A delete was interrupted: the API finishes it; start nothing.
            return Ok(st);
        }
        let vc = format!("{}/{}", st.rec.tenant, st.rec.name);
        let t0 = std::time::Instant::now();
        pki::ensure(&st.pki, &vc, &st.endpoint())?;
        if st.rec.status.pki_issued_at_s == 0 {
            st.rec.status.pki_issued_at_s = now_s();
        }
        allocate_ports(&mut st)?;
        build_clients(&mut st)?;
        start_all(&myself, &mut st)?;
        tracing::info!(%vc, pki_and_spawn_ms = t0.elapsed().as_millis() as u64, "vcluster started");
        // One tick in flight at a time (the next is scheduled when one ends): slow probes
        // never pile ticks up in the mailbox.
        let _ = myself.cast(VcMsg::Tick);
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<VcMsg>,
        msg: VcMsg,
        st: &mut VcState,
    ) -> Result<(), ActorProcessingErr> {
        self.stats.record_handled();
        if st.torn_down {
            if let VcMsg::Teardown(r) = msg {
                let _ = r.send(Ok(()));
            }
            return Ok(());
        }
        match msg {
            VcMsg::Tick | VcMsg::Reconcile => {
                let tick = matches!(msg, VcMsg::Tick);
                if !tick {
                    refresh_spec(st).await?;
                }
                if st.rec.deleting {
                    return Ok(());
                }
                converge_workers(st).await;
                publish(st).await?;
                if tick {
                    myself.send_after(Duration::from_millis(st.args.host.tick_ms), || VcMsg::Tick);
                }
            }
            VcMsg::Exited(exit) => on_exit(&myself, st, exit).await?,
            VcMsg::Restart(id) => {
                if st.failed.is_none()
                    && let Some(p) = st.procs.get_mut(&id)
                    && p.running.is_none()
                {
                    spawn(&myself, p)?;
                    st.rec.status.process_restarts += 1;
                    publish(st).await?;
                }
            }
            VcMsg::Kubeconfig(reply) => {
                let url = st.rec.status.endpoint.clone().unwrap_or_else(|| {
                    format!(
                        "https://127.0.0.1:{}",
                        st.rec
                            .status
                            .apiserver_ports
                            .first()
                            .copied()
                            .unwrap_or(6443)
                    )
                });
                let r =
                    pki::admin_kubeconfig(&st.pki, &st.rec.name, &url).map_err(|e| error_chain(&e));
                let _ = reply.send(r);
            }
            VcMsg::Upgrade(reply) => {
                let r = upgrade(&myself, st).await;
                let _ = reply.send(r);
            }
            VcMsg::Teardown(reply) => {
                let r = teardown(st).await;
                if r.is_ok() {
                    st.torn_down = true;
                }
                let _ = reply.send(r);
            }
        }
        Ok(())
    }
}

/// `a: b: c` from an error and its sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn allocate_ports(st: &mut VcState) -> Result<(), ActorProcessingErr> {
    let members = usize::try_from(st.rec.spec.etcd_members()).unwrap_or(0);
    while st.rec.status.etcd.len() < members {
        st.rec.status.etcd.push(EtcdPorts {
            client: process::free_port()?,
            peer: process::free_port()?,
        });
    }
    let replicas = usize::try_from(st.rec.spec.control_plane.replicas).unwrap_or(1);
    if st.args.host.runtime.apiserver_bin.is_some() {
        while st.rec.status.apiserver_ports.len() < replicas {
            st.rec.status.apiserver_ports.push(process::free_port()?);
        }
        st.rec.status.endpoint = st
            .rec
            .status
            .apiserver_ports
            .first()
            .map(|p| format!("https://127.0.0.1:{p}"));
    }
    Ok(())
}

fn build_clients(st: &mut VcState) -> Result<(), ActorProcessingErr> {
    st.etcd_client = Some(process::probe_client(
        &st.pki,
        Some((files::ETCD_CLIENT_CRT, files::ETCD_CLIENT_KEY)),
    )?);
    st.api_client = Some(process::probe_client(
        &st.pki,
        Some((files::ADMIN_CRT, files::ADMIN_KEY)),
    )?);
    Ok(())
}

fn etcd_urls(st: &VcState) -> Vec<String> {
    st.rec
        .status
        .etcd
        .iter()
        .map(|p| format!("https://127.0.0.1:{}", p.client))
        .collect()
}

fn start_all(myself: &ActorRef<VcMsg>, st: &mut VcState) -> Result<(), ActorProcessingErr> {
    let rt = st.args.host.runtime.clone();
    let members = st.rec.status.etcd.clone();
    let mut launches = Vec::new();
    for i in 0..members.len() {
        launches.push(process::etcd_launch(
            &rt.etcd_bin,
            &st.dir,
            &st.pki,
            i,
            &members,
        ));
    }
    if let Some(bin) = &rt.apiserver_bin {
        let ds = if members.is_empty() {
            Datastore::Sqlite {
                path: st.dir.join("state.db"),
            }
        } else {
            Datastore::Etcd {
                client_urls: etcd_urls(st),
            }
        };
        for (i, port) in st.rec.status.apiserver_ports.iter().enumerate() {
            launches.push(process::apiserver_launch(
                bin,
                &rt.apiserver_args,
                &st.dir,
                &st.pki,
                i,
                *port,
                &ds,
            ));
        }
    }
    for launch in launches {
        let mut p = Proc {
            launch,
            running: None,
            tracker: RestartTracker::default(),
            incarnations: 0,
        };
        spawn(myself, &mut p)?;
        st.procs.insert(p.launch.id.clone(), p);
    }
    Ok(())
}

fn spawn(myself: &ActorRef<VcMsg>, p: &mut Proc) -> Result<(), ActorProcessingErr> {
    p.incarnations += 1;
    let me = myself.clone();
    let running = process::start(&p.launch, p.incarnations, move |exit| {
        // Gone only when the actor stopped, which killed the process anyway.
        let _ = me.cast(VcMsg::Exited(exit));
    })?;
    p.running = Some(running);
    Ok(())
}

async fn on_exit(
    myself: &ActorRef<VcMsg>,
    st: &mut VcState,
    exit: Exit,
) -> Result<(), ActorProcessingErr> {
    let Some(p) = st.procs.get_mut(&exit.id) else {
        return Ok(());
    };
    if p.running.as_ref().map(|r| r.incarnation) != Some(exit.incarnation) {
        return Ok(()); // an incarnation we already replaced
    }
    p.running = None;
    let now_ms = u64::try_from(now_s()).unwrap_or(0) * 1000;
    let decision = p.tracker.on_failure(
        now_ms,
        RestartIntensity {
            max_restarts: PROCESS_MAX_RESTARTS,
            restart_window_ms: PROCESS_RESTART_WINDOW_MS,
        },
        Backoff {
            backoff_initial_ms: PROCESS_BACKOFF_INITIAL_MS,
            backoff_max_ms: PROCESS_BACKOFF_MAX_MS,
        },
    );
    match decision {
        RestartDecision::Restart { delay_ms, .. } => {
            tracing::warn!(process = %exit.id, status = %exit.status, delay_ms, "vcluster process exited; restarting");
            myself.send_after(Duration::from_millis(delay_ms), move || {
                VcMsg::Restart(exit.id)
            });
        }
        RestartDecision::Escalate { restarts_in_window } => {
            let why = format!(
                "{} exited ({}) after {restarts_in_window} restarts within {} s",
                exit.id,
                exit.status,
                PROCESS_RESTART_WINDOW_MS / 1000
            );
            tracing::error!(vc = %st.rec.name, %why, "vcluster failed");
            st.failed = Some(why);
        }
    }
    publish(st).await?;
    Ok(())
}

async fn refresh_spec(st: &mut VcState) -> Result<(), ActorProcessingErr> {
    let key = vc_key(&st.rec.tenant, &st.rec.name);
    if let Some(r) = st.args.host.store().get_json::<VcRecord>(&key).await? {
        st.rec.spec = r.spec;
        st.rec.generation = r.generation;
        st.rec.deleting = r.deleting;
    }
    Ok(())
}

/// Create or destroy worker VMs until their number matches the spec. Failures are kept
/// for the NodesReady condition and retried on the next tick.
async fn converge_workers(st: &mut VcState) {
    let want = st.rec.spec.worker_vms();
    let host = qemu_api::host(&st.args.host.state);
    st.last_worker_error = None;
    while (st.rec.status.workers.len() as u64) < want {
        let index = st
            .rec
            .status
            .workers
            .iter()
            .map(|w| w.index + 1)
            .max()
            .unwrap_or(0);
        match create_worker(st, &host, index).await {
            Ok(w) => {
                st.rec.status.workers.push(w);
                // Persist at once: a VM the record does not name would leak on delete.
                if let Err(e) = persist_status(st).await {
                    st.last_worker_error = Some(error_chain(&e));
                    return;
                }
            }
            Err(e) => {
                st.last_worker_error = Some(e);
                return;
            }
        }
    }
    while (st.rec.status.workers.len() as u64) > want {
        let Some(w) = st.rec.status.workers.last().cloned() else {
            break;
        };
        if let Err(e) = destroy_worker(&host, w.vmid).await {
            st.last_worker_error = Some(e);
            return;
        }
        st.rec.status.workers.pop();
        if let Err(e) = persist_status(st).await {
            st.last_worker_error = Some(error_chain(&e));
            return;
        }
    }
}

async fn create_worker(st: &VcState, host: &vm::VmHost, index: u64) -> Result<Worker, String> {
    let spec = &st.rec.spec.worker_nodes.resources;
    let name = format!("{}-worker-{index}", st.rec.name);
    let mut set = BTreeMap::new();
    set.insert("name".to_string(), name.clone());
    set.insert("cores".to_string(), spec.cpu.to_string());
    set.insert("memory".to_string(), spec.memory_mib.to_string());
    // Nested PVM: guests boot under TCG only.
    set.insert("kvm".to_string(), "0".to_string());
    set.insert(
        "tags".to_string(),
        format!("gpve-vcluster;vc-{}-{}", st.rec.tenant, st.rec.name),
    );
    let canon = gpve_actors::vm::config::parse_changes(&set, 0, gpve_supervisor::seeded_u64())
        .map_err(|e| format!("worker configuration refused: {:?}", e.0))?;
    let vmid = ops::reserve(host, None, canon.clone())
        .await
        .map_err(|e| error_chain(&e))?;
    if let Err(e) = ops::create(host, vmid, canon).await {
        return Err(error_chain(&e));
    }
    Ok(Worker { index, name, vmid })
}

async fn destroy_worker(host: &vm::VmHost, vmid: u32) -> Result<(), String> {
    let Some(entry) = vm::load_entry(&host.store, vmid)
        .await
        .map_err(|e| error_chain(&e))?
    else {
        return Ok(()); // already gone
    };
    if entry.runtime.qmpstatus != "stopped" {
        ops::call(host, vmid, VmOp::Stop, OP_TIMEOUT_MS)
            .await
            .map_err(|e| error_chain(&e))?;
    }
    ops::call(host, vmid, VmOp::Delete { purge: true }, OP_TIMEOUT_MS)
        .await
        .map_err(|e| error_chain(&e))?;
    ops::remove_actor(host, vmid)
        .await
        .map_err(|e| error_chain(&e))?;
    Ok(())
}

fn condition(kind: &str, ok: bool, reason: &str, message: String) -> Condition {
    Condition {
        kind: kind.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_s: now_s(),
    }
}

/// Probe everything and compute the conditions and phase.
async fn observe(st: &VcState) -> VcStatus {
    let mut s = st.rec.status.clone();
    let spec = &st.rec.spec;
    let urls = etcd_urls(st);
    let backing = if spec.etcd_members() == 0 {
        condition(
            "BackingStoreReady",
            true,
            "Sqlite",
            format!("sqlite datastore {}", st.dir.join("state.db").display()),
        )
    } else {
        let mut healthy = 0;
        if let Some(c) = &st.etcd_client {
            for u in &urls {
                if process::etcd_healthy(c, u).await {
                    healthy += 1;
                }
            }
        }
        condition(
            "BackingStoreReady",
            healthy == urls.len(),
            if healthy == urls.len() {
                "EtcdHealthy"
            } else {
                "EtcdNotHealthy"
            },
            format!("{healthy} of {} etcd members healthy", urls.len()),
        )
    };
    let has_cp = st.args.host.runtime.apiserver_bin.is_some();
    let control = if !has_cp {
        condition(
            "ControlPlaneReady",
            false,
            "NoControlPlaneBinary",
            format!(
                "no control-plane binary on this node: set {} in the node config",
                super::APISERVER_BIN_KEY
            ),
        )
    } else {
        let mut ready = 0;
        if let Some(c) = &st.api_client {
            for p in &s.apiserver_ports {
                if process::apiserver_ready(c, &format!("https://127.0.0.1:{p}")).await {
                    ready += 1;
                }
            }
        }
        let n = s.apiserver_ports.len();
        condition(
            "ControlPlaneReady",
            ready == n && n > 0,
            if ready == n {
                "ReadyzOk"
            } else {
                "ReadyzFailing"
            },
            format!("{ready} of {n} apiserver replicas answer /readyz"),
        )
    };
    let nodes = if spec.has_worker_vms() {
        let have = s.workers.len() as u64;
        let ok = have == spec.worker_nodes.count && st.last_worker_error.is_none();
        let msg = match &st.last_worker_error {
            Some(e) => format!(
                "{have} of {} worker VMs exist; last error: {e}",
                spec.worker_nodes.count
            ),
            None => format!(
                "{have} of {} worker VMs exist (created stopped)",
                spec.worker_nodes.count
            ),
        };
        condition(
            "NodesReady",
            ok,
            if ok {
                "WorkerVMsCreated"
            } else {
                "WorkerVMsPending"
            },
            msg,
        )
    } else if spec.worker_nodes.mode == "shared" {
        condition(
            "NodesReady",
            false,
            "SharedNodesUnsupported",
            "shared worker nodes are not implemented; use mode private".into(),
        )
    } else {
        condition(
            "NodesReady",
            false,
            "NoKubernetesRuntime",
            format!(
                "isolation {} runs pods on a Kubernetes runtime ({}), which needs a control-plane binary and node agents",
                spec.isolation_level,
                if spec.isolation_level == "L2" {
                    "Kata"
                } else {
                    "runc"
                }
            ),
        )
    };
    let all = [&backing, &control, &nodes]
        .iter()
        .all(|c| c.status == "True");
    let ready = condition(
        "Ready",
        all && st.failed.is_none(),
        if all { "AllReady" } else { "NotReady" },
        String::new(),
    );
    let failed = condition(
        "Failed",
        st.failed.is_some(),
        if st.failed.is_some() {
            "RestartIntensityExceeded"
        } else {
            "None"
        },
        st.failed.clone().unwrap_or_default(),
    );
    let provisioning = condition(
        "Provisioning",
        ready.status != "True" && st.failed.is_none(),
        "",
        String::new(),
    );
    s.phase = if st.rec.deleting {
        "Deleting"
    } else if st.failed.is_some() {
        "Failed"
    } else if ready.status == "True" {
        "Ready"
    } else {
        "Provisioning"
    }
    .into();
    // Keep transition times of conditions whose status did not change.
    let mut conds = vec![provisioning, backing, control, nodes, ready, failed];
    for c in &mut conds {
        if let Some(old) = st.rec.status.conditions.iter().find(|o| o.kind == c.kind)
            && old.status == c.status
        {
            c.last_transition_s = old.last_transition_s;
        }
    }
    s.conditions = conds;
    s.observed_generation = st.rec.generation;
    if s.version.is_empty() {
        s.version = spec.kubernetes_version.clone();
    }
    s
}

/// Probe and write the status when it changed.
async fn publish(st: &mut VcState) -> Result<(), ActorProcessingErr> {
    let s = observe(st).await;
    if s != st.rec.status {
        st.rec.status = s;
        persist_status(st).await?;
    }
    Ok(())
}

async fn persist_status(st: &VcState) -> Result<(), gpve_store::StoreError> {
    let key = vc_key(&st.rec.tenant, &st.rec.name);
    let status = st.rec.status.clone();
    st.args
        .host
        .store()
        .transact(move |tx| {
            let (key, status) = (key.clone(), status.clone());
            Box::pin(async move {
                if let Some(mut r) = tx.get_json::<VcRecord>(&key).await? {
                    r.status = status;
                    tx.put_json(&key, &r)?;
                }
                Ok(())
            })
        })
        .await
}

async fn upgrade(myself: &ActorRef<VcMsg>, st: &mut VcState) -> Result<(), String> {
    refresh_spec(st).await.map_err(|e| e.to_string())?;
    pki::rotate(&st.pki, &st.endpoint()).map_err(|e| error_chain(&e))?;
    build_clients(st).map_err(|e| e.to_string())?;
    st.rec.status.pki_issued_at_s = now_s();
    st.rec.status.version = st.rec.spec.kubernetes_version.clone();
    // Restart each process on the new certificates; a restart for an upgrade is not a
    // failure and does not count against the intensity.
    for p in st.procs.values_mut() {
        if let Some(r) = p.running.take() {
            r.stop().await;
        }
        spawn(myself, p).map_err(|e| e.to_string())?;
    }
    publish(st).await.map_err(|e| e.to_string())
}

async fn teardown(st: &mut VcState) -> Result<(), String> {
    for p in st.procs.values_mut() {
        if let Some(r) = p.running.take() {
            r.stop().await;
        }
    }
    let host = qemu_api::host(&st.args.host.state);
    while let Some(w) = st.rec.status.workers.last().cloned() {
        destroy_worker(&host, w.vmid).await?;
        st.rec.status.workers.pop();
        persist_status(st).await.map_err(|e| error_chain(&e))?;
    }
    match std::fs::remove_dir_all(&st.dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing {} failed: {e}", st.dir.display())),
    }
    // The tenant's directory goes when its last VC does.
    if let Some(parent) = st.dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(())
}
