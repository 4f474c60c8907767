//! The OS processes a VC supervises (its etcd members and control-plane replicas): how
//! each is started, how it is watched, and the readiness probes over TLS with the VC's
//! certificates.
//!
//! Each process runs from a watcher task that owns the `Child`: the task reports the exit
//! to the VC actor, or kills the process when its [`Running`] handle is dropped (the
//! actor stopped, restarted or was killed: ractor drops its state in every case). The pid
//! is also written to `run/{id}.pid`, so an incarnation that did not see its predecessor
//! stop (server killed) finds and kills a leftover before it starts its own.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::oneshot;

use super::pki::{PkiDir, files};

/// Longest a readiness probe waits for its answer.
pub const PROBE_TIMEOUT_MS: u64 = 2_000;
/// How long a killed process may take to exit before its watcher gives up waiting.
pub const KILL_WAIT_MS: u64 = 5_000;

/// Failures of process management.
#[derive(Debug, Error)]
pub enum ProcessError {
    #[error("starting {bin} failed")]
    Spawn {
        bin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("preparing {path} failed")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no free loopback port")]
    NoPort(#[source] std::io::Error),
    #[error("building the TLS client for probes failed")]
    Client(#[source] reqwest::Error),
    #[error("reading the VC certificates failed")]
    Pki(#[from] super::pki::PkiError),
}

/// What a watcher reports when its process ends on its own.
#[derive(Debug, Clone)]
pub struct Exit {
    pub id: String,
    pub incarnation: u64,
    pub status: String,
}

/// A started process; dropping it kills the process.
#[derive(Debug)]
pub struct Running {
    pub pid: u32,
    pub incarnation: u64,
    kill: Option<oneshot::Sender<()>>,
}

impl Running {
    /// Kill the process and wait (bounded) until it is gone.
    pub async fn stop(mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(KILL_WAIT_MS);
        while pid_alive(self.pid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Whether `pid` is a live (not zombie) process.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// A free TCP port on 127.0.0.1 (the OS picks it; it is free again once we close it).
pub fn free_port() -> Result<u16, ProcessError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(ProcessError::NoPort)?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(ProcessError::NoPort)
}

/// How to start one process.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Unique within the VC: `etcd-0`, `apiserver-0`.
    pub id: String,
    pub bin: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// Where the pid and the output log go.
    pub run_dir: PathBuf,
}

impl Launch {
    pub fn pidfile(&self) -> PathBuf {
        self.run_dir.join(format!("{}.pid", self.id))
    }
}

/// Kill a process left by an earlier incarnation (its pidfile names a live process
/// running the same binary).
pub fn kill_leftover(launch: &Launch) {
    let Ok(s) = std::fs::read_to_string(launch.pidfile()) else {
        return;
    };
    let Ok(pid) = s.trim().parse::<i32>() else {
        return;
    };
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    // Its arguments name this VC's directory: not a recycled pid of something else.
    let ours = exe.as_deref() == Some(launch.bin.as_path())
        || String::from_utf8_lossy(&cmdline).contains(&*launch.cwd.to_string_lossy());
    if pid > 1 && ours {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        // Bounded wait until its ports are free: the successor binds the same ones.
        let deadline = std::time::Instant::now() + Duration::from_millis(KILL_WAIT_MS);
        while pid_alive(pid.unsigned_abs()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Start `launch`; `on_exit` is called once if the process ends by itself.
pub fn start(
    launch: &Launch,
    incarnation: u64,
    on_exit: impl FnOnce(Exit) + Send + 'static,
) -> Result<Running, ProcessError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ProcessError::Io { path, source }
    };
    std::fs::create_dir_all(&launch.run_dir).map_err(io(&launch.run_dir))?;
    kill_leftover(launch);
    let log_path = launch.run_dir.join(format!("{}.log", launch.id));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(&log_path))?;
    let log2 = log.try_clone().map_err(io(&log_path))?;
    let mut cmd = tokio::process::Command::new(&launch.bin);
    cmd.args(&launch.args)
        .current_dir(&launch.cwd)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .kill_on_drop(true);
    // SAFETY: prctl only sets a flag of the child; it allocates nothing and is
    // async-signal-safe, as required between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // The process dies with the server even when the server is killed -9.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
        bin: launch.bin.display().to_string(),
        source,
    })?;
    let pid = child.id().unwrap_or(0);
    let pidfile = launch.pidfile();
    std::fs::write(&pidfile, format!("{pid}\n")).map_err(io(&pidfile))?;
    let (kill_tx, kill_rx) = oneshot::channel::<()>();
    let id = launch.id.clone();
    tokio::spawn(async move {
        tokio::select! {
            status = child.wait() => {
                let status = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("waiting failed: {e}"),
                };
                on_exit(Exit { id, incarnation, status });
            }
            // A send or a dropped handle both mean: stop it.
            _ = kill_rx => {
                let _ = child.kill().await;
                let _ = std::fs::remove_file(&pidfile);
            }
        }
    });
    Ok(Running {
        pid,
        incarnation,
        kill: Some(kill_tx),
    })
}

/// The HTTPS client of the probes: trusts only the VC CA and presents `identity`
/// (certificate and key file names under `pki/`).
pub fn probe_client(
    pki: &PkiDir,
    identity: Option<(&str, &str)>,
) -> Result<reqwest::Client, ProcessError> {
    let ca = pki.read(files::CA_CRT)?;
    let ca = reqwest::Certificate::from_pem(ca.as_bytes()).map_err(ProcessError::Client)?;
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .timeout(Duration::from_millis(PROBE_TIMEOUT_MS));
    if let Some((crt, key)) = identity {
        let pem = format!("{}{}", pki.read(crt)?, pki.read(key)?);
        let id = reqwest::Identity::from_pem(pem.as_bytes()).map_err(ProcessError::Client)?;
        b = b.identity(id);
    }
    b.build().map_err(ProcessError::Client)
}

/// Whether the etcd member at `client_url` answers `/health` as healthy.
pub async fn etcd_healthy(client: &reqwest::Client, client_url: &str) -> bool {
    let Ok(r) = client.get(format!("{client_url}/health")).send().await else {
        return false;
    };
    let Ok(v) = r.json::<serde_json::Value>().await else {
        return false;
    };
    v.get("health").and_then(|h| h.as_str()) == Some("true")
}

/// Whether the apiserver at `url` answers `GET /readyz` with 200.
pub async fn apiserver_ready(client: &reqwest::Client, url: &str) -> bool {
    client
        .get(format!("{url}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Ports of one etcd member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EtcdPorts {
    pub client: u16,
    pub peer: u16,
}

/// The launch of etcd member `i` of `members` (client and peer TLS with the VC's
/// certificates, client certificates required, data under `{vc_dir}/etcd/{i}`).
pub fn etcd_launch(
    bin: &Path,
    vc_dir: &Path,
    pki: &PkiDir,
    i: usize,
    members: &[EtcdPorts],
) -> Launch {
    let name = |j: usize| format!("m{j}");
    let cluster: Vec<String> = members
        .iter()
        .enumerate()
        .map(|(j, p)| format!("{}=https://127.0.0.1:{}", name(j), p.peer))
        .collect();
    let p = members[i];
    let f = |n: &str| pki.file(n).display().to_string();
    let id = format!("etcd-{i}");
    Launch {
        args: vec![
            format!("--name={}", name(i)),
            format!(
                "--data-dir={}",
                vc_dir.join("etcd").join(i.to_string()).display()
            ),
            format!("--listen-client-urls=https://127.0.0.1:{}", p.client),
            format!("--advertise-client-urls=https://127.0.0.1:{}", p.client),
            format!("--listen-peer-urls=https://127.0.0.1:{}", p.peer),
            format!("--initial-advertise-peer-urls=https://127.0.0.1:{}", p.peer),
            format!("--initial-cluster={}", cluster.join(",")),
            "--initial-cluster-state=new".into(),
            format!("--initial-cluster-token={}", vc_dir.display()),
            format!("--cert-file={}", f(files::ETCD_SERVER_CRT)),
            format!("--key-file={}", f(files::ETCD_SERVER_KEY)),
            format!("--trusted-ca-file={}", f(files::CA_CRT)),
            "--client-cert-auth=true".into(),
            format!("--peer-cert-file={}", f(files::ETCD_SERVER_CRT)),
            format!("--peer-key-file={}", f(files::ETCD_SERVER_KEY)),
            format!("--peer-trusted-ca-file={}", f(files::CA_CRT)),
            "--peer-client-cert-auth=true".into(),
            // Small VCs: keep etcd's memory and disk footprint small.
            "--quota-backend-bytes=268435456".into(),
            "--snapshot-count=10000".into(),
            "--logger=zap".into(),
        ],
        bin: bin.to_path_buf(),
        cwd: vc_dir.to_path_buf(),
        run_dir: vc_dir.join("run"),
        id,
    }
}

/// The launch of control-plane replica `i`: kube-apiserver's flags, against etcd or
/// (for k3s-style runtimes) the sqlite file.
pub fn apiserver_launch(
    bin: &Path,
    extra_args: &[String],
    vc_dir: &Path,
    pki: &PkiDir,
    i: usize,
    port: u16,
    datastore: &Datastore,
) -> Launch {
    let f = |n: &str| pki.file(n).display().to_string();
    let mut args = vec![
        format!("--secure-port={port}"),
        "--bind-address=127.0.0.1".into(),
        format!("--tls-cert-file={}", f(files::APISERVER_CRT)),
        format!("--tls-private-key-file={}", f(files::APISERVER_KEY)),
        format!("--client-ca-file={}", f(files::CA_CRT)),
        format!("--service-account-key-file={}", f(files::SA_PUB)),
        format!("--service-account-signing-key-file={}", f(files::SA_KEY)),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        "--service-cluster-ip-range=10.96.0.0/12".into(),
        format!("--proxy-client-cert-file={}", f(files::FRONT_PROXY_CRT)),
        format!("--proxy-client-key-file={}", f(files::FRONT_PROXY_KEY)),
        "--authorization-mode=Node,RBAC".into(),
    ];
    match datastore {
        Datastore::Etcd { client_urls } => {
            args.push(format!("--etcd-servers={}", client_urls.join(",")));
            args.push(format!("--etcd-cafile={}", f(files::CA_CRT)));
            args.push(format!("--etcd-certfile={}", f(files::ETCD_CLIENT_CRT)));
            args.push(format!("--etcd-keyfile={}", f(files::ETCD_CLIENT_KEY)));
        }
        Datastore::Sqlite { path } => {
            args.push(format!("--datastore-endpoint=sqlite://{}", path.display()));
        }
    }
    args.extend(extra_args.iter().cloned());
    Launch {
        id: format!("apiserver-{i}"),
        bin: bin.to_path_buf(),
        args,
        cwd: vc_dir.to_path_buf(),
        run_dir: vc_dir.join("run"),
    }
}

/// What the control plane stores its state in.
#[derive(Debug, Clone)]
pub enum Datastore {
    Etcd {
        client_urls: Vec<String>,
    },
    /// The file handed to the control plane (k3s's kine); no process of its own.
    Sqlite {
        path: PathBuf,
    },
}
