//! Real QEMU processes: spawn (daemonized), adopt by pidfile, control over QMP.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncReadExt;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::cmdline::{HostFacts, RunPaths, build_argv, esc, resolve_accel};
use crate::migrate::{
    MigrateError, MigrateOptions, MigrationProgress, MigrationStats, parse_query_migrate,
};
use crate::qmp::{QmpClient, QmpError, QmpEvent};
use crate::spec::QemuSpec;
use crate::{
    ExitCause, Hypervisor, HypervisorError, IncomingVm, ProgressFn, VM_EVENT_QUEUE_LEN, VmEvent,
    VmExit, VmHandle, VmProcess, VmStatus,
};

/// QEMU's stderr kept for the start error message.
const STDERR_MAX_BYTES: usize = 64 * 1024;
/// How long to collect stderr after QEMU failed to start.
const STDERR_DRAIN_MS: u64 = 1_000;
const EXIT_POLL_FAST_MS: u64 = 20;
const EXIT_POLL_SLOW_MS: u64 = 200;

#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub binary: PathBuf,
    /// Probed for `accel: auto`.
    pub kvm_device: PathBuf,
    /// The first existing file is used for `bios: ovmf`.
    pub ovmf_code_candidates: Vec<PathBuf>,
    /// Bound on QEMU's own initialisation (until its daemonizing parent exits).
    pub start_timeout_ms: u64,
    pub qmp_connect_timeout_ms: u64,
    pub qmp_command_timeout_ms: u64,
    /// After QMP closes or SIGKILL, how long the process may take to disappear.
    pub exit_wait_ms: u64,
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig {
            binary: PathBuf::from("qemu-system-x86_64"),
            kvm_device: PathBuf::from("/dev/kvm"),
            ovmf_code_candidates: vec![
                PathBuf::from("/usr/share/OVMF/OVMF_CODE.fd"),
                PathBuf::from("/usr/share/OVMF/OVMF_CODE_4M.fd"),
            ],
            start_timeout_ms: 30_000,
            qmp_connect_timeout_ms: 5_000,
            qmp_command_timeout_ms: 5_000,
            exit_wait_ms: 10_000,
        }
    }
}

/// The real hypervisor: one `qemu-system-x86_64` per VM.
#[derive(Debug, Clone, Default)]
pub struct Qemu {
    config: QemuConfig,
}

impl Qemu {
    pub fn new(config: QemuConfig) -> Self {
        Qemu { config }
    }

    /// Facts about this host that the command line depends on.
    pub fn host_facts(&self, spec: &QemuSpec) -> HostFacts {
        let kvm_usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.config.kvm_device)
            .is_ok();
        HostFacts {
            accel: resolve_accel(spec.accel, kvm_usable),
            ovmf_code: self
                .config
                .ovmf_code_candidates
                .iter()
                .find(|p| p.is_file())
                .cloned(),
        }
    }

    async fn attach(
        &self,
        vmid: u32,
        pid: u32,
        paths: &RunPaths,
    ) -> Result<QemuVm, HypervisorError> {
        let (qmp, raw_events) = QmpClient::connect(
            &paths.qmp_socket,
            self.config.qmp_connect_timeout_ms,
            self.config.qmp_command_timeout_ms,
        )
        .await
        .map_err(|source| HypervisorError::Qmp { vmid, source })?;
        let (events, _) = broadcast::channel(VM_EVENT_QUEUE_LEN);
        let (exit_tx, exit_rx) = watch::channel(None);
        let killed = Arc::new(AtomicBool::new(false));
        let monitor = tokio::spawn(monitor(
            vmid,
            pid,
            paths.clone(),
            raw_events,
            events.clone(),
            exit_tx,
            killed.clone(),
            self.config.exit_wait_ms,
        ));
        Ok(QemuVm {
            handle: VmHandle::new(vmid, pid, paths),
            pidfile: paths.pidfile.clone(),
            qmp,
            events,
            exit_rx,
            killed,
            monitor,
            exit_wait_ms: self.config.exit_wait_ms,
        })
    }
}

fn prepare_run_dir(dir: &Path) -> Result<(), HypervisorError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| HypervisorError::RunDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    // Sockets in here control the VM: only the agent's user may reach them.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    Ok(())
}

/// The pid of the live QEMU started with `pidfile`, if any (a recycled pid is never
/// mistaken for it). For processes outside a [`Qemu`] instance, e.g. the fence watchdog.
pub fn running_pid(pidfile: &Path) -> Option<u32> {
    read_pidfile(pidfile).filter(|&pid| qemu_alive(pid, pidfile))
}

fn read_pidfile(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().parse().ok().filter(|&pid| pid > 1)
}

/// True when `pid` is a live (non-zombie) QEMU that was started with this pidfile,
/// so a recycled pid is never mistaken for our VM.
fn qemu_alive(pid: u32, pidfile: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let want = esc(pidfile);
    let mut args = cmdline.split(|&b| b == 0);
    while let Some(arg) = args.next() {
        if arg == b"-pidfile" {
            return args.next() == Some(want.as_bytes());
        }
    }
    false
}

fn remove_if_exists(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove stale run file");
    }
}

fn remove_run_files(paths: &RunPaths) {
    remove_if_exists(&paths.pidfile);
    remove_if_exists(&paths.qmp_socket);
    remove_if_exists(&paths.serial_socket);
}

fn sigkill(vmid: u32, pid: u32) -> Result<(), HypervisorError> {
    let raw = i32::try_from(pid).map_err(|_| HypervisorError::Signal {
        vmid,
        pid,
        source: nix::Error::EINVAL,
    })?;
    match nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(raw),
        nix::sys::signal::Signal::SIGKILL,
    ) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(source) => Err(HypervisorError::Signal { vmid, pid, source }),
    }
}

impl Qemu {
    /// Spawns QEMU and attaches to it (the body of [`Hypervisor::start`]).
    async fn launch(&self, spec: &QemuSpec, run_dir: &Path) -> Result<QemuVm, HypervisorError> {
        spec.validate()?;
        let vmid = spec.vmid;
        let paths = RunPaths::new(run_dir);
        prepare_run_dir(run_dir)?;
        if let Some(pid) = read_pidfile(&paths.pidfile)
            && qemu_alive(pid, &paths.pidfile)
        {
            return Err(HypervisorError::AlreadyRunning {
                vmid,
                pid,
                run_dir: run_dir.to_path_buf(),
            });
        }
        remove_run_files(&paths);
        let argv = build_argv(spec, &paths, &self.host_facts(spec))?;
        tracing::debug!(vmid, ?argv, "starting QEMU");

        let mut child = tokio::process::Command::new(&self.config.binary)
            .args(&argv)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|source| HypervisorError::Spawn {
                binary: self.config.binary.display().to_string(),
                source,
            })?;
        let stderr_reader = child.stderr.take().map(|mut err| {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let _ = (&mut err)
                    .take(STDERR_MAX_BYTES as u64)
                    .read_to_end(&mut buf)
                    .await;
                String::from_utf8_lossy(&buf).trim().to_string()
            })
        });
        // With -daemonize the first process exits once QEMU is initialised (QMP
        // socket listening) or has failed; the VM itself lives on in a grandchild.
        let waited = tokio::time::timeout(
            Duration::from_millis(self.config.start_timeout_ms),
            child.wait(),
        )
        .await;
        let failure = match waited {
            Err(_) => {
                let _ = child.start_kill();
                Some(HypervisorError::StartTimeout {
                    vmid,
                    timeout_ms: self.config.start_timeout_ms,
                })
            }
            Ok(Err(source)) => Some(HypervisorError::Spawn {
                binary: self.config.binary.display().to_string(),
                source,
            }),
            Ok(Ok(status)) if !status.success() => {
                let stderr = match stderr_reader {
                    Some(h) => tokio::time::timeout(Duration::from_millis(STDERR_DRAIN_MS), h)
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or_default(),
                    None => String::new(),
                };
                return Err(HypervisorError::StartFailed {
                    vmid,
                    status: status.to_string(),
                    stderr,
                });
            }
            Ok(Ok(_)) => {
                if let Some(h) = stderr_reader {
                    h.abort();
                }
                None
            }
        };
        let pid = read_pidfile(&paths.pidfile);
        if let Some(err) = failure {
            if let Some(pid) = pid.filter(|&p| qemu_alive(p, &paths.pidfile)) {
                let _ = sigkill(vmid, pid);
            }
            remove_run_files(&paths);
            return Err(err);
        }
        let Some(pid) = pid else {
            return Err(HypervisorError::Pidfile {
                path: paths.pidfile.clone(),
                reason: "QEMU started but wrote no pid".into(),
            });
        };

        let vm = match self.attach(vmid, pid, &paths).await {
            Ok(vm) => vm,
            Err(e) => {
                let _ = sigkill(vmid, pid);
                remove_run_files(&paths);
                return Err(e);
            }
        };
        if !spec.start_paused
            && let Err(e) = vm.resume().await
        {
            let _ = vm.kill().await;
            return Err(e);
        }
        Ok(vm)
    }
}

#[async_trait]
impl Hypervisor for Qemu {
    async fn start(
        &self,
        spec: &QemuSpec,
        run_dir: &Path,
    ) -> Result<Box<dyn VmProcess>, HypervisorError> {
        Ok(Box::new(self.launch(spec, run_dir).await?))
    }

    async fn start_incoming(
        &self,
        spec: &QemuSpec,
        run_dir: &Path,
        listen: &str,
        tls_dir: Option<&Path>,
    ) -> Result<IncomingVm, HypervisorError> {
        let vmid = spec.vmid;
        let mig = |source| HypervisorError::Migration { vmid, source };
        crate::migrate::parse_tcp_uri(listen).map_err(mig)?;
        let mut spec = spec.clone();
        spec.start_paused = true;
        spec.args
            .extend(["-incoming".to_string(), "defer".to_string()]);
        if let Some(dir) = tls_dir {
            let object = crate::migrate::tls_object_arg(dir, "server").map_err(mig)?;
            spec.args.extend(["-object".to_string(), object]);
        }
        let vm = self.launch(&spec, run_dir).await?;
        let listening = async {
            if tls_dir.is_some() {
                // The target must know before it listens: it then accepts only TLS
                // from a client certificate the cluster CA signed (verify-peer).
                vm.raw(
                    "migrate-set-parameters",
                    serde_json::json!({ "tls-creds": crate::migrate::MIGRATION_TLS_OBJECT_ID }),
                )
                .await?;
            }
            vm.raw("migrate-incoming", serde_json::json!({ "uri": listen }))
                .await?;
            let info = vm.raw("query-migrate", serde_json::json!({})).await?;
            crate::migrate::listen_uri_from(&info).map_err(mig)
        };
        match listening.await {
            Ok(uri) => Ok(IncomingVm {
                process: Box::new(vm),
                uri,
            }),
            Err(e) => {
                let _ = vm.kill().await;
                Err(e)
            }
        }
    }

    async fn adopt(
        &self,
        vmid: u32,
        run_dir: &Path,
    ) -> Result<Option<Box<dyn VmProcess>>, HypervisorError> {
        let paths = RunPaths::new(run_dir);
        let Some(pid) = read_pidfile(&paths.pidfile) else {
            remove_run_files(&paths);
            return Ok(None);
        };
        if !qemu_alive(pid, &paths.pidfile) {
            tracing::info!(vmid, pid, "removing stale QEMU run files");
            remove_run_files(&paths);
            return Ok(None);
        }
        let vm = self.attach(vmid, pid, &paths).await?;
        Ok(Some(Box::new(vm)))
    }
}

struct QemuVm {
    handle: VmHandle,
    pidfile: PathBuf,
    qmp: QmpClient,
    events: broadcast::Sender<VmEvent>,
    exit_rx: watch::Receiver<Option<VmExit>>,
    killed: Arc<AtomicBool>,
    monitor: JoinHandle<()>,
    exit_wait_ms: u64,
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        // Detach only: QEMU keeps running and can be adopted again.
        self.monitor.abort();
    }
}

impl QemuVm {
    fn qmp_err(&self, source: QmpError) -> HypervisorError {
        if self.exit_rx.borrow().is_some() {
            return HypervisorError::Exited {
                vmid: self.handle.vmid,
            };
        }
        HypervisorError::Qmp {
            vmid: self.handle.vmid,
            source,
        }
    }

    async fn run<C: qapi::Command>(&self, command: C) -> Result<C::Ok, HypervisorError> {
        if self.exit_rx.borrow().is_some() {
            return Err(HypervisorError::Exited {
                vmid: self.handle.vmid,
            });
        }
        self.qmp.execute(command).await.map_err(|e| self.qmp_err(e))
    }

    async fn wait_exit_for(&self, timeout_ms: u64) -> Option<VmExit> {
        tokio::time::timeout(Duration::from_millis(timeout_ms), self.wait_exit())
            .await
            .ok()
    }

    async fn raw(
        &self,
        name: &'static str,
        arguments: serde_json::Value,
    ) -> Result<serde_json::Value, HypervisorError> {
        if self.exit_rx.borrow().is_some() {
            return Err(HypervisorError::Exited {
                vmid: self.handle.vmid,
            });
        }
        self.qmp
            .execute_raw(name, arguments)
            .await
            .map_err(|e| self.qmp_err(e))
    }

    async fn query_migrate(&self) -> Result<MigrationProgress, HypervisorError> {
        let v = self.raw("query-migrate", serde_json::json!({})).await?;
        parse_query_migrate(&v).map_err(|source| HypervisorError::Migration {
            vmid: self.handle.vmid,
            source,
        })
    }

    /// Polls `query-migrate` until a final state or the deadline.
    async fn poll_migration(
        &self,
        options: &MigrateOptions,
        progress: ProgressFn<'_>,
    ) -> Result<MigrationProgress, HypervisorError> {
        let vmid = self.handle.vmid;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(options.timeout_ms);
        let poll = Duration::from_millis(options.poll_interval_ms.max(1));
        loop {
            let p = self.query_migrate().await?;
            progress(&p);
            if p.is_final() {
                return Ok(p);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HypervisorError::Migration {
                    vmid,
                    source: MigrateError::Timeout {
                        timeout_ms: options.timeout_ms,
                    },
                });
            }
            tokio::time::sleep(poll).await;
        }
    }
}

#[async_trait]
impl VmProcess for QemuVm {
    fn handle(&self) -> &VmHandle {
        &self.handle
    }

    fn subscribe(&self) -> broadcast::Receiver<VmEvent> {
        self.events.subscribe()
    }

    fn exit(&self) -> Option<VmExit> {
        self.exit_rx.borrow().clone()
    }

    async fn status(&self) -> Result<VmStatus, HypervisorError> {
        let info = self.run(qapi::qmp::query_status {}).await?;
        let name = serde_json::to_value(info.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        Ok(VmStatus::from_qemu(&name))
    }

    async fn pause(&self) -> Result<(), HypervisorError> {
        self.run(qapi::qmp::stop {}).await.map(|_| ())
    }

    async fn resume(&self) -> Result<(), HypervisorError> {
        self.run(qapi::qmp::cont {}).await.map(|_| ())
    }

    async fn powerdown(&self) -> Result<(), HypervisorError> {
        self.run(qapi::qmp::system_powerdown {}).await.map(|_| ())
    }

    async fn reset(&self) -> Result<(), HypervisorError> {
        self.run(qapi::qmp::system_reset {}).await.map(|_| ())
    }

    async fn stop(&self, stop_timeout_ms: u64) -> Result<VmExit, HypervisorError> {
        if let Some(exit) = self.exit() {
            return Ok(exit);
        }
        // One deadline for the quit reply and the exit, so a wedged QEMU costs
        // stop_timeout_ms, not the QMP command timeout on top.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(stop_timeout_ms);
        match tokio::time::timeout_at(deadline, self.qmp.execute(qapi::qmp::quit {})).await {
            // QEMU may close the socket before its reply reaches us.
            Ok(Ok(_)) | Ok(Err(QmpError::Disconnected { .. })) | Ok(Err(QmpError::Io(_))) => {}
            Ok(Err(e)) => {
                tracing::warn!(vmid = self.handle.vmid, error = %e, "QMP quit failed");
            }
            Err(_) => {}
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Ok(exit) = tokio::time::timeout(remaining, self.wait_exit()).await {
            return Ok(exit);
        }
        tracing::warn!(
            vmid = self.handle.vmid,
            stop_timeout_ms,
            "QEMU ignored quit; killing"
        );
        self.kill().await
    }

    async fn kill(&self) -> Result<VmExit, HypervisorError> {
        if let Some(exit) = self.exit() {
            return Ok(exit);
        }
        let (vmid, pid) = (self.handle.vmid, self.handle.pid);
        if qemu_alive(pid, &self.pidfile) {
            self.killed.store(true, Ordering::SeqCst);
            sigkill(vmid, pid)?;
        }
        self.wait_exit_for(self.exit_wait_ms)
            .await
            .ok_or(HypervisorError::ExitTimeout {
                vmid,
                pid,
                timeout_ms: self.exit_wait_ms,
            })
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
        // As Proxmox: xbzrle and auto-converge, its downtime limit, and an explicit
        // bandwidth (QEMU's default of 128 MiB/s would slow every migration).
        self.raw(
            "migrate-set-capabilities",
            serde_json::json!({ "capabilities": [
                { "capability": "xbzrle", "state": true },
                { "capability": "auto-converge", "state": true },
            ]}),
        )
        .await?;
        let mut params = serde_json::json!({
            "downtime-limit": options.downtime_limit_ms,
            "max-bandwidth": options.max_bandwidth_bytes_s(),
            // Empty: plain TCP (also undoes the credentials of an earlier TLS attempt).
            "tls-creds": "",
        });
        if let Some(tls) = &options.tls {
            let id = crate::migrate::MIGRATION_TLS_OBJECT_ID;
            // An earlier attempt may have left its object (with other files): replace it.
            let _ = self
                .raw("object-del", serde_json::json!({ "id": id }))
                .await;
            let dir = tls.creds_dir.to_str().ok_or_else(|| {
                mig(MigrateError::TlsDir {
                    dir: tls.creds_dir.clone(),
                    reason: "the path is not UTF-8".into(),
                })
            })?;
            self.raw(
                "object-add",
                serde_json::json!({
                    "qom-type": "tls-creds-x509", "id": id, "endpoint": "client",
                    "dir": dir, "verify-peer": true,
                }),
            )
            .await?;
            params["tls-creds"] = id.into();
            params["tls-hostname"] = tls.hostname.clone().into();
        }
        self.raw("migrate-set-parameters", params).await?;
        self.raw("migrate", serde_json::json!({ "uri": uri }))
            .await?;
        let outcome = self.poll_migration(options, progress).await;
        match outcome {
            Ok(p) => crate::migrate::finish(&p).map_err(mig),
            Err(e) => {
                // Timeout or a QMP failure: leave the guest running here.
                if let Err(c) = self.raw("migrate_cancel", serde_json::json!({})).await {
                    tracing::warn!(vmid, error = %c, "migrate_cancel failed");
                }
                Err(e)
            }
        }
    }

    async fn wait_exit(&self) -> VmExit {
        let mut rx = self.exit_rx.clone();
        loop {
            if let Some(exit) = rx.borrow_and_update().clone() {
                return exit;
            }
            if rx.changed().await.is_err() {
                // The monitor is gone without reporting (detached): fall back to polling.
                loop {
                    if !qemu_alive(self.handle.pid, &self.pidfile) {
                        return VmExit {
                            vmid: self.handle.vmid,
                            pid: self.handle.pid,
                            cause: ExitCause::Crashed,
                        };
                    }
                    tokio::time::sleep(Duration::from_millis(EXIT_POLL_SLOW_MS)).await;
                }
            }
        }
    }
}

fn translate(ev: &QmpEvent) -> VmEvent {
    let flag = |k: &str| {
        ev.data
            .get(k)
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    };
    match ev.name.as_str() {
        "STOP" => VmEvent::Stopped,
        "RESUME" => VmEvent::Resumed,
        "RESET" => VmEvent::Reset {
            guest: flag("guest"),
        },
        "POWERDOWN" => VmEvent::Powerdown,
        "SHUTDOWN" => VmEvent::Shutdown {
            guest: flag("guest"),
            reason: ev
                .data
                .get("reason")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("unknown")
                .to_string(),
        },
        "GUEST_PANICKED" => VmEvent::GuestPanicked,
        other => VmEvent::Other {
            name: other.to_string(),
        },
    }
}

fn exit_cause(killed: bool, shutdown_reason: Option<&str>) -> ExitCause {
    if killed {
        return ExitCause::Killed;
    }
    match shutdown_reason {
        None => ExitCause::Crashed,
        Some("guest-shutdown") => ExitCause::GuestShutdown,
        Some("host-qmp-quit") => ExitCause::HostQuit,
        Some("host-signal") => ExitCause::HostSignal,
        Some("guest-panic") => ExitCause::GuestPanicked,
        Some(other) => ExitCause::Other(other.to_string()),
    }
}

/// Always drains the QMP event stream (so replies keep flowing), forwards events,
/// and turns the end of the stream into the process exit.
#[allow(clippy::too_many_arguments)]
async fn monitor(
    vmid: u32,
    pid: u32,
    paths: RunPaths,
    mut raw: mpsc::Receiver<QmpEvent>,
    events: broadcast::Sender<VmEvent>,
    exit_tx: watch::Sender<Option<VmExit>>,
    killed: Arc<AtomicBool>,
    exit_wait_ms: u64,
) {
    let mut shutdown_reason: Option<String> = None;
    while let Some(ev) = raw.recv().await {
        let vm_event = translate(&ev);
        tracing::debug!(vmid, event = ev.name, "QMP event");
        if let VmEvent::Shutdown { reason, .. } = &vm_event {
            shutdown_reason = Some(reason.clone());
        }
        // No subscriber is fine: the exit watch still records the end.
        let _ = events.send(vm_event);
    }
    // QMP closed: QEMU is exiting. Wait for the process to disappear.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(exit_wait_ms);
    let mut warned = false;
    while qemu_alive(pid, &paths.pidfile) {
        let slow = tokio::time::Instant::now() >= deadline;
        if slow && !warned {
            tracing::warn!(
                vmid,
                pid,
                exit_wait_ms,
                "QMP closed but QEMU is still running"
            );
            warned = true;
        }
        let poll_ms = if slow {
            EXIT_POLL_SLOW_MS
        } else {
            EXIT_POLL_FAST_MS
        };
        tokio::time::sleep(Duration::from_millis(poll_ms)).await;
    }
    // Only remove the pidfile if it is still ours (a new start may have replaced it).
    if read_pidfile(&paths.pidfile).is_none_or(|p| p == pid) {
        remove_run_files(&paths);
    }
    let exit = VmExit {
        vmid,
        pid,
        cause: exit_cause(killed.load(Ordering::SeqCst), shutdown_reason.as_deref()),
    };
    tracing::info!(vmid, pid, cause = ?exit.cause, "QEMU exited");
    let _ = exit_tx.send(Some(exit.clone()));
    let _ = events.send(VmEvent::Exited(exit));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_cause_prefers_our_kill() {
        assert_eq!(exit_cause(true, Some("guest-shutdown")), ExitCause::Killed);
        assert_eq!(exit_cause(false, None), ExitCause::Crashed);
        assert_eq!(
            exit_cause(false, Some("guest-shutdown")),
            ExitCause::GuestShutdown
        );
        assert_eq!(
            exit_cause(false, Some("host-qmp-quit")),
            ExitCause::HostQuit
        );
        assert_eq!(
            exit_cause(false, Some("host-error")),
            ExitCause::Other("host-error".into())
        );
    }

    #[test]
    fn events_are_translated() {
        let ev = |name: &str, data: serde_json::Value| QmpEvent {
            name: name.into(),
            data,
        };
        assert_eq!(
            translate(&ev("STOP", serde_json::Value::Null)),
            VmEvent::Stopped
        );
        assert_eq!(
            translate(&ev(
                "SHUTDOWN",
                serde_json::json!({"guest": true, "reason": "guest-shutdown"})
            )),
            VmEvent::Shutdown {
                guest: true,
                reason: "guest-shutdown".into()
            }
        );
        assert_eq!(
            translate(&ev("RTC_CHANGE", serde_json::json!({"offset": 1}))),
            VmEvent::Other {
                name: "RTC_CHANGE".into()
            }
        );
    }

    #[test]
    fn a_foreign_pid_is_not_our_qemu() {
        // Our own test process has no -pidfile argument.
        assert!(!qemu_alive(
            std::process::id(),
            Path::new("/nonexistent/qemu.pid")
        ));
        assert!(!qemu_alive(
            u32::MAX - 1,
            Path::new("/nonexistent/qemu.pid")
        ));
    }
}
