//! A deterministic in-memory hypervisor for the simulation and for contract tests.
//!
//! VM "processes" live in a [`SimHost`], which outlives any one [`SimHypervisor`]
//! just as QEMU outlives the agent, so a new `SimHypervisor` on the same host can
//! adopt them. Time only passes through the [`SimClock`] seam.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::{broadcast, watch};

use crate::cmdline::RunPaths;
use crate::migrate::{MigrateError, MigrateOptions, MigrationProgress, MigrationStats};
use crate::qmp::QmpError;
use crate::spec::QemuSpec;
use crate::{
    ExitCause, Hypervisor, HypervisorError, IncomingVm, ProgressFn, VM_EVENT_QUEUE_LEN, VmEvent,
    VmExit, VmHandle, VmProcess, VmStatus,
};

/// How long a simulated live migration takes, and its reported downtime.
pub const SIM_MIGRATE_MS: u64 = 300;
pub const SIM_MIGRATE_DOWNTIME_MS: u64 = 20;
/// First port a simulated incoming migration listens on when asked for port 0.
const SIM_PORT_FIRST: u32 = 49_152;

/// Incoming migrations listening, by URI. Process-wide because migrations cross
/// [`SimHost`]s (one per simulated node) the way TCP crosses machines.
#[derive(Default)]
struct SimNet {
    listening: BTreeMap<String, std::sync::Weak<SimProc>>,
    next_port: u32,
}

fn sim_net() -> MutexGuard<'static, SimNet> {
    static NET: std::sync::OnceLock<Mutex<SimNet>> = std::sync::OnceLock::new();
    NET.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The time seam: the simulation supplies virtual time.
pub trait SimClock: Send + Sync + 'static {
    fn sleep_ms(&self, ms: u64) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// `tokio::time::sleep`: deterministic under `tokio::time::pause()` and turmoil.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl SimClock for TokioClock {
    fn sleep_ms(&self, ms: u64) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(std::time::Duration::from_millis(ms)))
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub start_latency_ms: u64,
    /// Time from an ACPI power-button press to the guest powering off.
    pub powerdown_latency_ms: u64,
    /// A hung VM fails QMP commands after this long, like the real client's timeout.
    pub command_timeout_ms: u64,
    pub first_pid: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            start_latency_ms: 50,
            powerdown_latency_ms: 100,
            command_timeout_ms: 5_000,
            first_pid: 10_000,
        }
    }
}

struct SimProc {
    vmid: u32,
    pid: u32,
    run_dir: PathBuf,
    memory_bytes: u64,
    status: Mutex<VmStatus>,
    events: broadcast::Sender<VmEvent>,
    exit_tx: watch::Sender<Option<VmExit>>,
}

#[derive(Default)]
struct HostState {
    procs: BTreeMap<PathBuf, Arc<SimProc>>,
    next_pid: u32,
    fail_next_start: BTreeMap<u32, String>,
    fail_next_migration: BTreeMap<u32, String>,
    ignore_acpi: BTreeSet<u32>,
    hung: BTreeSet<u32>,
}

/// The simulated machine: its VM processes and injected faults.
#[derive(Clone, Default)]
pub struct SimHost {
    state: Arc<Mutex<HostState>>,
}

impl std::fmt::Debug for SimHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHost")
            .field("running", &self.running())
            .finish()
    }
}

impl SimHost {
    pub fn new() -> Self {
        SimHost::default()
    }

    fn lock(&self) -> MutexGuard<'_, HostState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn find(&self, vmid: u32) -> Vec<Arc<SimProc>> {
        self.lock()
            .procs
            .values()
            .filter(|p| p.vmid == vmid)
            .cloned()
            .collect()
    }

    /// (vmid, run dir) of every live VM, ordered by run dir.
    pub fn running(&self) -> Vec<(u32, PathBuf)> {
        self.lock()
            .procs
            .values()
            .map(|p| (p.vmid, p.run_dir.clone()))
            .collect()
    }

    /// The process dies without a shutdown event (QEMU crash, OOM kill).
    /// Returns how many processes of that vmid were killed.
    pub fn crash(&self, vmid: u32) -> usize {
        let procs = self.find(vmid);
        for p in &procs {
            self.finish(p, ExitCause::Crashed);
        }
        procs.len()
    }

    /// A hung QEMU: QMP commands time out; only SIGKILL ends it.
    pub fn set_hung(&self, vmid: u32, hung: bool) {
        let mut s = self.lock();
        if hung {
            s.hung.insert(vmid);
        } else {
            s.hung.remove(&vmid);
        }
    }

    /// A guest without ACPI support: power-button presses do nothing.
    pub fn set_ignore_acpi(&self, vmid: u32, ignore: bool) {
        let mut s = self.lock();
        if ignore {
            s.ignore_acpi.insert(vmid);
        } else {
            s.ignore_acpi.remove(&vmid);
        }
    }

    /// The next start of `vmid` fails with `message` as QEMU's stderr.
    pub fn fail_next_start(&self, vmid: u32, message: impl Into<String>) {
        self.lock().fail_next_start.insert(vmid, message.into());
    }

    /// The next outgoing migration of `vmid` fails with `message` as QEMU's reason.
    pub fn fail_next_migration(&self, vmid: u32, message: impl Into<String>) {
        self.lock().fail_next_migration.insert(vmid, message.into());
    }

    fn is_hung(&self, vmid: u32) -> bool {
        self.lock().hung.contains(&vmid)
    }

    fn finish(&self, proc_: &SimProc, cause: ExitCause) {
        {
            let mut s = self.lock();
            if s.procs
                .get(&proc_.run_dir)
                .is_some_and(|p| p.pid == proc_.pid)
            {
                s.procs.remove(&proc_.run_dir);
            }
        }
        if proc_.exit_tx.borrow().is_some() {
            return;
        }
        let exit = VmExit {
            vmid: proc_.vmid,
            pid: proc_.pid,
            cause,
        };
        *proc_.status.lock().unwrap_or_else(|p| p.into_inner()) = VmStatus::Shutdown;
        let _ = proc_.exit_tx.send(Some(exit.clone()));
        let _ = proc_.events.send(VmEvent::Exited(exit));
    }
}

/// A simulated hypervisor on a [`SimHost`].
#[derive(Clone)]
pub struct SimHypervisor {
    host: SimHost,
    clock: Arc<dyn SimClock>,
    config: SimConfig,
}

impl std::fmt::Debug for SimHypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHypervisor")
            .field("host", &self.host)
            .field("config", &self.config)
            .finish()
    }
}

impl SimHypervisor {
    pub fn new(host: SimHost, clock: Arc<dyn SimClock>, config: SimConfig) -> Self {
        SimHypervisor {
            host,
            clock,
            config,
        }
    }

    pub fn host(&self) -> &SimHost {
        &self.host
    }

    fn vm(&self, proc_: Arc<SimProc>) -> SimVm {
        let paths = RunPaths::new(&proc_.run_dir);
        SimVm {
            handle: VmHandle::new(proc_.vmid, proc_.pid, &paths),
            exit_rx: proc_.exit_tx.subscribe(),
            proc_,
            host: self.host.clone(),
            clock: self.clock.clone(),
            config: self.config.clone(),
        }
    }
}

#[async_trait]
impl Hypervisor for SimHypervisor {
    async fn start(
        &self,
        spec: &QemuSpec,
        run_dir: &Path,
    ) -> Result<Box<dyn VmProcess>, HypervisorError> {
        spec.validate()?;
        let vmid = spec.vmid;
        if let Some(p) = self.host.lock().procs.get(run_dir) {
            return Err(HypervisorError::AlreadyRunning {
                vmid,
                pid: p.pid,
                run_dir: run_dir.to_path_buf(),
            });
        }
        let failure = self.host.lock().fail_next_start.remove(&vmid);
        self.clock.sleep_ms(self.config.start_latency_ms).await;
        if let Some(stderr) = failure {
            return Err(HypervisorError::StartFailed {
                vmid,
                status: "exit status: 1".into(),
                stderr,
            });
        }
        let proc_ = {
            let mut s = self.host.lock();
            if let Some(p) = s.procs.get(run_dir) {
                return Err(HypervisorError::AlreadyRunning {
                    vmid,
                    pid: p.pid,
                    run_dir: run_dir.to_path_buf(),
                });
            }
            let pid = self.config.first_pid.saturating_add(s.next_pid);
            s.next_pid += 1;
            let (events, _) = broadcast::channel(VM_EVENT_QUEUE_LEN);
            let (exit_tx, _) = watch::channel(None);
            let status = if spec.start_paused {
                VmStatus::Prelaunch
            } else {
                VmStatus::Running
            };
            let p = Arc::new(SimProc {
                vmid,
                pid,
                run_dir: run_dir.to_path_buf(),
                memory_bytes: spec.memory_mib.saturating_mul(1024 * 1024),
                status: Mutex::new(status),
                events,
                exit_tx,
            });
            s.procs.insert(run_dir.to_path_buf(), p.clone());
            p
        };
        Ok(Box::new(self.vm(proc_)))
    }

    async fn adopt(
        &self,
        vmid: u32,
        run_dir: &Path,
    ) -> Result<Option<Box<dyn VmProcess>>, HypervisorError> {
        let found = self
            .host
            .lock()
            .procs
            .get(run_dir)
            .filter(|p| p.vmid == vmid)
            .cloned();
        Ok(found.map(|p| Box::new(self.vm(p)) as Box<dyn VmProcess>))
    }

    async fn start_incoming(
        &self,
        spec: &QemuSpec,
        run_dir: &Path,
        listen: &str,
        // The simulated stream has no bytes to encrypt.
        _tls_dir: Option<&Path>,
    ) -> Result<IncomingVm, HypervisorError> {
        let vmid = spec.vmid;
        let (host, port) = crate::migrate::parse_tcp_uri(listen)
            .map_err(|source| HypervisorError::Migration { vmid, source })?;
        let mut spec = spec.clone();
        spec.start_paused = true;
        let process = self.start(&spec, run_dir).await?;
        let proc_ = self.host.lock().procs.get(run_dir).cloned();
        let Some(proc_) = proc_ else {
            return Err(HypervisorError::Exited { vmid });
        };
        *proc_.status.lock().unwrap_or_else(|p| p.into_inner()) = VmStatus::InMigrate;
        let uri = {
            let mut net = sim_net();
            let port = if port == 0 {
                let p = SIM_PORT_FIRST + net.next_port;
                net.next_port = (net.next_port + 1) % 16_384;
                p
            } else {
                u32::from(port)
            };
            let uri = format!("tcp:{host}:{port}");
            net.listening.insert(uri.clone(), Arc::downgrade(&proc_));
            uri
        };
        Ok(IncomingVm { process, uri })
    }
}

struct SimVm {
    handle: VmHandle,
    proc_: Arc<SimProc>,
    exit_rx: watch::Receiver<Option<VmExit>>,
    host: SimHost,
    clock: Arc<dyn SimClock>,
    config: SimConfig,
}

impl SimVm {
    /// The common preamble of a QMP command: exited VMs refuse, hung ones time out.
    async fn command(&self, name: &'static str) -> Result<(), HypervisorError> {
        let vmid = self.handle.vmid;
        if self.exit_rx.borrow().is_some() {
            return Err(HypervisorError::Exited { vmid });
        }
        if self.host.is_hung(vmid) {
            self.clock.sleep_ms(self.config.command_timeout_ms).await;
            return Err(HypervisorError::Qmp {
                vmid,
                source: QmpError::Timeout {
                    command: name,
                    timeout_ms: self.config.command_timeout_ms,
                },
            });
        }
        Ok(())
    }

    fn set_status(&self, status: VmStatus, event: VmEvent) {
        let mut s = self.proc_.status.lock().unwrap_or_else(|p| p.into_inner());
        // Like QEMU, a no-op transition emits no event.
        if *s != status {
            *s = status;
            let _ = self.proc_.events.send(event);
        }
    }

    async fn wait_exit_for(&self, ms: u64) -> Option<VmExit> {
        tokio::select! {
            // Biased: an exit at the deadline wins, the same way in every run of a seed.
            biased;
            exit = self.wait_exit() => Some(exit),
            () = self.clock.sleep_ms(ms) => None,
        }
    }
}

#[async_trait]
impl VmProcess for SimVm {
    fn handle(&self) -> &VmHandle {
        &self.handle
    }

    fn subscribe(&self) -> broadcast::Receiver<VmEvent> {
        self.proc_.events.subscribe()
    }

    fn exit(&self) -> Option<VmExit> {
        self.exit_rx.borrow().clone()
    }

    async fn status(&self) -> Result<VmStatus, HypervisorError> {
        self.command("query-status").await?;
        Ok(self
            .proc_
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone())
    }

    async fn pause(&self) -> Result<(), HypervisorError> {
        self.command("stop").await?;
        self.set_status(VmStatus::Paused, VmEvent::Stopped);
        Ok(())
    }

    async fn resume(&self) -> Result<(), HypervisorError> {
        self.command("cont").await?;
        self.set_status(VmStatus::Running, VmEvent::Resumed);
        Ok(())
    }

    async fn powerdown(&self) -> Result<(), HypervisorError> {
        self.command("system_powerdown").await?;
        let _ = self.proc_.events.send(VmEvent::Powerdown);
        if self.host.lock().ignore_acpi.contains(&self.handle.vmid) {
            return Ok(());
        }
        let (proc_, host, clock) = (self.proc_.clone(), self.host.clone(), self.clock.clone());
        let latency_ms = self.config.powerdown_latency_ms;
        tokio::spawn(async move {
            clock.sleep_ms(latency_ms).await;
            if proc_.exit_tx.borrow().is_none() {
                let _ = proc_.events.send(VmEvent::Shutdown {
                    guest: true,
                    reason: "guest-shutdown".into(),
                });
                host.finish(&proc_, ExitCause::GuestShutdown);
            }
        });
        Ok(())
    }

    async fn reset(&self) -> Result<(), HypervisorError> {
        self.command("system_reset").await?;
        let _ = self.proc_.events.send(VmEvent::Reset { guest: false });
        Ok(())
    }

    async fn stop(&self, stop_timeout_ms: u64) -> Result<VmExit, HypervisorError> {
        if let Some(exit) = self.exit() {
            return Ok(exit);
        }
        if self.host.is_hung(self.handle.vmid) {
            // quit is never answered; the real client kills after the timeout.
            if let Some(exit) = self.wait_exit_for(stop_timeout_ms).await {
                return Ok(exit);
            }
            return self.kill().await;
        }
        let _ = self.proc_.events.send(VmEvent::Shutdown {
            guest: false,
            reason: "host-qmp-quit".into(),
        });
        self.host.finish(&self.proc_, ExitCause::HostQuit);
        Ok(self.wait_exit().await)
    }

    async fn kill(&self) -> Result<VmExit, HypervisorError> {
        self.host.finish(&self.proc_, ExitCause::Killed);
        Ok(self.wait_exit().await)
    }

    async fn migrate(
        &self,
        uri: &str,
        options: &MigrateOptions,
        progress: ProgressFn<'_>,
    ) -> Result<MigrationStats, HypervisorError> {
        let vmid = self.handle.vmid;
        let mig = |source| HypervisorError::Migration { vmid, source };
        crate::migrate::check_source(vmid, uri, &self.status().await?)?;
        let target = sim_net().listening.remove(uri).and_then(|w| w.upgrade());
        let Some(target) = target.filter(|t| t.exit_tx.borrow().is_none()) else {
            return Err(mig(MigrateError::Failed {
                status: "failed".into(),
                reason: format!("Failed to connect socket {uri}: Connection refused"),
            }));
        };
        let total = self.proc_.memory_bytes;
        progress(&MigrationProgress {
            status: "active".into(),
            total_bytes: total,
            remaining_bytes: total,
            ..MigrationProgress::default()
        });
        let duration_ms = SIM_MIGRATE_MS.min(options.timeout_ms);
        self.clock.sleep_ms(duration_ms).await;
        let failure = self.host.lock().fail_next_migration.remove(&vmid);
        let failure = failure.or_else(|| {
            (target.exit_tx.borrow().is_some()).then(|| "the target closed the connection".into())
        });
        if let Some(reason) = failure {
            // The incoming side gives up and exits, as QEMU does.
            self.host
                .finish(&target, ExitCause::Other("migration-failed".into()));
            let p = MigrationProgress {
                status: "failed".into(),
                error: Some(reason),
                ..MigrationProgress::default()
            };
            progress(&p);
            return crate::migrate::finish(&p).map_err(mig);
        }
        if options.timeout_ms < SIM_MIGRATE_MS {
            self.host
                .finish(&target, ExitCause::Other("migration-failed".into()));
            return Err(mig(MigrateError::Timeout {
                timeout_ms: options.timeout_ms,
            }));
        }
        self.set_status(VmStatus::PostMigrate, VmEvent::Stopped);
        *target.status.lock().unwrap_or_else(|p| p.into_inner()) = VmStatus::Paused;
        let done = MigrationProgress {
            status: "completed".into(),
            transferred_bytes: total,
            total_bytes: total,
            total_time_ms: Some(duration_ms),
            setup_time_ms: Some(1),
            downtime_ms: Some(SIM_MIGRATE_DOWNTIME_MS),
            ..MigrationProgress::default()
        };
        progress(&done);
        crate::migrate::finish(&done).map_err(mig)
    }

    async fn wait_exit(&self) -> VmExit {
        let mut rx = self.exit_rx.clone();
        loop {
            if let Some(exit) = rx.borrow_and_update().clone() {
                return exit;
            }
            if rx.changed().await.is_err() {
                // SimProc owns the sender and we hold the SimProc: unreachable in
                // practice, but never spin.
                std::future::pending::<()>().await;
            }
        }
    }
}
