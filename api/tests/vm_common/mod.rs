//! Shared helpers of the VM tests: the real `gpve-server` binary on a temporary data
//! directory with its QEMU run directories in a temporary directory too, an authenticated
//! HTTPS client, task waiting, and the test guest.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gpve_api::datadir::{DataDir, NodeConfig};
use gpve_hypervisor::test_guest::{self, TestGuest};
use serde_json::Value;

pub const ROOT_PW: &str = "rootpw-123";
pub const NODE: &str = "n1";
pub const TASK_TIMEOUT_MS: u64 = 120_000;
/// The ready marker appears 6-10 s after start under TCG here; leave room for a loaded
/// machine.
pub const BOOT_TIMEOUT_MS: u64 = 90_000;

/// A data directory and a QEMU run root, both removed at the end.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub async fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        DataDir::new(dir.path().join("data"))
            .init(
                ROOT_PW,
                NodeConfig {
                    node_name: NODE.into(),
                    cluster_name: None,
                },
            )
            .await
            .expect("init");
        std::fs::create_dir_all(dir.path().join("run")).expect("run dir");
        Env { dir }
    }
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub fn run_root(&self) -> PathBuf {
        self.dir.path().join("run")
    }
    pub fn run_dir(&self, vmid: u32) -> PathBuf {
        self.run_root().join(vmid.to_string())
    }
    pub fn serial_log(&self, vmid: u32) -> PathBuf {
        gpve_hypervisor::RunPaths::new(&self.run_dir(vmid)).serial_log
    }
    /// Image files of the `local` storage for one VM.
    pub fn images(&self, vmid: u32) -> Vec<PathBuf> {
        let dir = DataDir::new(self.data())
            .local_storage()
            .join("images")
            .join(vmid.to_string());
        std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }
}

impl Drop for Env {
    /// QEMU outlives the server by design: a test that fails half-way must not leave its
    /// VMs running, so kill every QEMU whose pidfile is under this test's run root.
    fn drop(&mut self) {
        let Ok(dirs) = std::fs::read_dir(self.run_root()) else {
            return;
        };
        for d in dirs.flatten() {
            let pidfile = gpve_hypervisor::RunPaths::new(&d.path()).pidfile;
            let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            else {
                continue;
            };
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*pidfile.to_string_lossy()));
            if ours {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// The real server binary with `GPVE_QEMU_RUN_DIR` pointing into the test's directory.
pub struct Server {
    pub child: Child,
    pub api: Api,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Server {
    pub async fn start(env: &Env) -> Server {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_gpve-server"))
            .args(["run", "--grpc-listen", "127.0.0.1:0", "--data-dir"])
            .arg(env.data())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--login-failure-delay-ms", "50"])
            .env(gpve_actors::vm::RUN_DIR_ENV, env.run_root())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn gpve-server");
        let base = format!("https://127.0.0.1:{port}/api2/json");
        let pem = std::fs::read(env.data().join("cert.pem")).expect("cert");
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
            .use_rustls_tls()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        for _ in 0..400 {
            if let Ok(r) = client
                .post(format!("{base}/access/ticket"))
                .form(&[("username", "root@pam"), ("password", ROOT_PW)])
                .send()
                .await
                && r.status() == 200
            {
                let v: Value = r.json().await.expect("json");
                let api = Api {
                    client,
                    base,
                    ticket: v["data"]["ticket"].as_str().expect("ticket").into(),
                    csrf: v["data"]["CSRFPreventionToken"]
                        .as_str()
                        .expect("csrf")
                        .into(),
                };
                return Server { child, api };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("gpve-server did not come up on port {port}");
    }

    /// SIGTERM and wait: the server stops its actors; QEMU processes keep running.
    pub fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        for _ in 0..400 {
            if self.child.try_wait().expect("try_wait").is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gpve-server did not exit on SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An authenticated client of one server.
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    pub ticket: String,
    pub csrf: String,
}

impl Api {
    async fn send(&self, req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req
            .header("Cookie", format!("PVEAuthCookie={}", self.ticket))
            .header("CSRFPreventionToken", &self.csrf)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        self.send(self.client.post(format!("{}{path}", self.base)).form(form))
            .await
    }
    pub async fn put(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        self.send(self.client.put(format!("{}{path}", self.base)).form(form))
            .await
    }
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.client.delete(format!("{}{path}", self.base)))
            .await
    }

    /// Wait for a task; returns its exit status.
    pub async fn wait_task(&self, upid: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(TASK_TIMEOUT_MS);
        let path = format!("/nodes/{NODE}/tasks/{}/status", urlencode(upid));
        loop {
            let (code, body) = self.get(&path).await;
            assert_eq!(code, 200, "task status: {body}");
            if body["data"]["status"] == "stopped" {
                return body["data"]["exitstatus"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {upid} still running after {TASK_TIMEOUT_MS} ms"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// POST that starts a task; asserts 200 and that the task ends OK.
    pub async fn task_ok(&self, path: &str, form: &[(&str, &str)]) {
        let (code, body) = self.post(path, form).await;
        assert_eq!(code, 200, "POST {path}: {body}");
        let upid = body["data"].as_str().expect("upid");
        let status = self.wait_task(upid).await;
        assert_eq!(status, "OK", "task of POST {path} failed");
    }

    pub async fn status(&self, vmid: u32) -> Value {
        let (code, body) = self
            .get(&format!("/nodes/{NODE}/qemu/{vmid}/status/current"))
            .await;
        assert_eq!(code, 200, "status/current: {body}");
        body["data"].clone()
    }
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The test guest, built once into the shared cache.
pub async fn guest() -> TestGuest {
    tokio::task::spawn_blocking(|| {
        test_guest::ensure(Path::new(test_guest::DEFAULT_CACHE_DIR)).expect("test guest")
    })
    .await
    .expect("join")
}

/// `args` booting the test guest (root-only Proxmox key).
pub fn guest_args(g: &TestGuest) -> String {
    format!(
        "-kernel {} -initrd {} -append 'console=ttyS0 quiet panic=-1'",
        g.kernel.display(),
        g.initrd.display()
    )
}

/// Whether a process exists.
pub fn alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits until the guest printed the ready marker in its serial log.
pub async fn wait_ready(env: &Env, vmid: u32) {
    test_guest::wait_for_log(
        &env.serial_log(vmid),
        test_guest::READY_MARKER,
        BOOT_TIMEOUT_MS,
    )
    .await
    .expect("the guest booted (ready marker on its serial console)");
}
