//! Multi-node test harness: the real `gpve-server` and N real `gpve-agent` processes, each
//! agent in its own network namespace, all joined by a bridge in a hub namespace.
//!
//! ```text
//!  root netns (the test)          hub netns {p}-hub                agent netns {p}-n{i}
//!  gpve-server  10.A.B.1 ── {p}s0 ═ {p}s1 ─┐
//!  (API :8006, gRPC :8007)                  br0 ── {p}h{i} ═ {p}a{i} ── 10.A.B.(10+i)
//!                                                                  gpve-agent run (API :8006)
//!                                                                  └ its QEMU processes
//! ```
//!
//! `{p}` is a prefix unique to the test run (`gq` + 5 hex digits, from the process id and a
//! counter) and `10.A.B.0/24` a subnet derived from it, so tests run in parallel with each
//! other and with other engineers' namespaces. Use:
//!
//! ```ignore
//! let Some(mut c) = Cluster::start(&["n1", "n2"]).await else { return }; // skips if not root
//! c.api.post("/nodes/n2/qemu", &[...]).await;       // the server's Proxmox API (root@pam)
//! c.wait_task(&upid).await;                          // polls the UPID's node
//! c.qemu_pids(100);                                  // [(node, pid)] of QEMU for VMID 100
//! c.partition("n1"); c.heal("n1");                  // hub-side veth down / up
//! c.kill9("n2"); c.restart("n2").await;             // SIGKILL the agent; run it again
//! ```
//!
//! Each agent gets `GPVE_QEMU_RUN_DIR={tmp}/run-{node}` and logs to `{tmp}/{node}.log`
//! (the server to `{tmp}/server.log`); the logs are printed when a test fails. Dropping the
//! [`Cluster`] kills the agents, the server and every QEMU whose command line names the
//! test's directory, and deletes the namespaces and veths it made (nothing else).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use gpve_api::datadir::{DataDir, NodeConfig};
use serde_json::Value;

#[path = "../vm_common/mod.rs"]
pub mod vm_common;

pub use vm_common::{Api, ROOT_PW, guest, guest_args, urlencode};

/// The server's own node name (agents are named by the test).
pub const SERVER_NODE: &str = "srv";
/// API and gRPC ports (each process has its own address).
pub const API_PORT: u16 = 8006;
pub const GRPC_PORT: u16 = 8007;
/// How long an agent may take to show online after it starts.
pub const ONLINE_TIMEOUT_MS: u64 = 30_000;
/// How long a task may run.
pub const TASK_TIMEOUT_MS: u64 = 120_000;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command and fails the test with its output unless it succeeds.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sh_quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Why the harness cannot run here, if it cannot.
pub fn unsupported() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("network namespaces need root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("the `ip` command (iproute2) is missing".into());
    }
    None
}

/// One agent.
pub struct AgentNode {
    pub name: String,
    pub index: u32,
    pub netns: String,
    pub ip: String,
    /// Its veth end on the hub bridge (down = partitioned).
    pub hub_veth: String,
    pub data_dir: PathBuf,
    pub run_root: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
}

/// A server and its agents.
pub struct Cluster {
    pub prefix: String,
    pub hub: String,
    pub subnet: String,
    pub server_ip: String,
    pub dir: tempfile::TempDir,
    pub server: Option<Child>,
    pub api: Api,
    pub agents: Vec<AgentNode>,
    token: String,
}

fn log_file(path: &Path) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

impl Cluster {
    /// Server plus one joined, running agent per name; `None` (after printing why) where
    /// namespaces are not available.
    pub async fn start(nodes: &[&str]) -> Option<Cluster> {
        if let Some(why) = unsupported() {
            println!("skipped: {why}");
            return None;
        }
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = (std::process::id().wrapping_mul(31).wrapping_add(n)) & 0xfffff;
        let prefix = format!("gq{id:05x}");
        let subnet = format!("10.{}.{}", 100 + (id % 100), (id / 100) % 250);
        let server_ip = format!("{subnet}.1");
        let hub = format!("{prefix}-hub");
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("server");
        DataDir::new(&data)
            .init(
                ROOT_PW,
                NodeConfig {
                    node_name: SERVER_NODE.into(),
                    cluster_name: Some("gq".into()),
                },
            )
            .await
            .expect("init server data dir");

        sh(&["ip", "netns", "add", &hub]);
        let mut cluster = Cluster {
            prefix: prefix.clone(),
            hub: hub.clone(),
            subnet: subnet.clone(),
            server_ip: server_ip.clone(),
            server: None,
            api: Api {
                client: reqwest::Client::new(),
                base: String::new(),
                ticket: String::new(),
                csrf: String::new(),
            },
            agents: Vec::new(),
            token: String::new(),
            dir,
        };
        sh(&["ip", "-n", &hub, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &hub, "link", "set", "br0", "up"]);
        let (s0, s1) = (format!("{prefix}s0"), format!("{prefix}s1"));
        sh(&[
            "ip", "link", "add", &s0, "type", "veth", "peer", "name", &s1,
        ]);
        sh(&["ip", "link", "set", &s1, "netns", &hub]);
        sh(&["ip", "-n", &hub, "link", "set", &s1, "master", "br0", "up"]);
        sh(&["ip", "addr", "add", &format!("{server_ip}/24"), "dev", &s0]);
        sh(&["ip", "link", "set", &s0, "up"]);

        cluster.start_server().await;
        cluster.token = cluster.token_create();
        for (i, name) in nodes.iter().enumerate() {
            cluster.add_agent(name, i as u32 + 1);
        }
        for name in nodes {
            cluster.wait_online(name).await;
        }
        Some(cluster)
    }

    fn server_data(&self) -> PathBuf {
        self.dir.path().join("server")
    }

    async fn start_server(&mut self) {
        let listen = format!("{}:{API_PORT}", self.server_ip);
        let child = Command::new(env!("CARGO_BIN_EXE_gpve-server"))
            .args(["run", "--data-dir"])
            .arg(self.server_data())
            .args(["--listen", &listen])
            .args(["--grpc-listen", &format!("{}:{GRPC_PORT}", self.server_ip)])
            .args(["--login-failure-delay-ms", "50"])
            .env(
                gpve_actors::vm::RUN_DIR_ENV,
                self.dir.path().join("run-srv"),
            )
            .stdout(Stdio::null())
            .stderr(log_file(&self.dir.path().join("server.log")))
            .spawn()
            .expect("spawn gpve-server");
        self.server = Some(child);
        let pem = std::fs::read(self.server_data().join("cert.pem")).expect("cert");
        // The certificate names `localhost`; resolve that name to the server's address.
        let addr: std::net::SocketAddr = listen.parse().expect("addr");
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
            .use_rustls_tls()
            .resolve("localhost", addr)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let base = format!("https://localhost:{API_PORT}/api2/json");
        for _ in 0..400 {
            if let Ok(r) = client
                .post(format!("{base}/access/ticket"))
                .form(&[("username", "root@pam"), ("password", ROOT_PW)])
                .send()
                .await
                && r.status() == 200
            {
                let v: Value = r.json().await.expect("json");
                self.api = Api {
                    client,
                    base,
                    ticket: v["data"]["ticket"].as_str().expect("ticket").into(),
                    csrf: v["data"]["CSRFPreventionToken"]
                        .as_str()
                        .expect("csrf")
                        .into(),
                };
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.dump_logs();
        panic!("gpve-server did not come up on {listen}");
    }

    fn token_create(&self) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_gpve-server"))
            .args(["token", "create", "--reusable", "--data-dir"])
            .arg(self.server_data())
            .output()
            .expect("token create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Make agent `name`'s namespace and veth, join it and run it.
    pub fn add_agent(&mut self, name: &str, index: u32) {
        let p = &self.prefix;
        let netns = format!("{p}-n{index}");
        let (a, h) = (format!("{p}a{index}"), format!("{p}h{index}"));
        let ip = format!("{}.{}", self.subnet, 10 + index);
        sh(&["ip", "netns", "add", &netns]);
        sh(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
        sh(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &h]);
        sh(&["ip", "link", "set", &a, "netns", &netns]);
        sh(&["ip", "link", "set", &h, "netns", &self.hub]);
        sh(&[
            "ip", "-n", &self.hub, "link", "set", &h, "master", "br0", "up",
        ]);
        sh(&[
            "ip",
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            &a,
        ]);
        sh(&["ip", "-n", &netns, "link", "set", &a, "up"]);
        let data_dir = self.dir.path().join(format!("agent-{name}"));
        let run_root = self.dir.path().join(format!("run-{name}"));
        std::fs::create_dir_all(&run_root).expect("run dir");
        let log = self.dir.path().join(format!("{name}.log"));
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &netns,
                env!("CARGO_BIN_EXE_gpve-agent"),
                "join",
            ])
            .args([
                "--server",
                &format!("https://{}:{API_PORT}", self.server_ip),
            ])
            .args(["--grpc-port", &GRPC_PORT.to_string()])
            .args(["--token", &self.token, "--node-name", name])
            .args(["--listen", &format!("{ip}:{API_PORT}")])
            .arg("--data-dir")
            .arg(&data_dir)
            .output()
            .expect("gpve-agent join");
        assert!(
            out.status.success(),
            "join {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut agent = AgentNode {
            name: name.to_string(),
            index,
            netns,
            ip,
            hub_veth: h,
            data_dir,
            run_root,
            log,
            child: None,
        };
        agent.child = Some(spawn_agent(&agent));
        self.agents.push(agent);
    }

    pub fn agent(&self, name: &str) -> &AgentNode {
        self.agents
            .iter()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no agent {name}"))
    }

    fn agent_mut(&mut self, name: &str) -> &mut AgentNode {
        self.agents
            .iter_mut()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no agent {name}"))
    }

    /// SIGKILL the agent process (its QEMU processes keep running).
    pub fn kill9(&mut self, name: &str) {
        if let Some(mut child) = self.agent_mut(name).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Run the agent again from its data directory.
    pub fn restart(&mut self, name: &str) {
        let agent = self.agent_mut(name);
        assert!(agent.child.is_none(), "{name} is still running");
        let child = spawn_agent(agent);
        agent.child = Some(child);
    }

    /// Cut the agent off the network (its hub-side veth down).
    pub fn partition(&self, name: &str) {
        let h = &self.agent(name).hub_veth;
        sh(&["ip", "-n", &self.hub, "link", "set", h, "down"]);
    }

    /// Undo [`Cluster::partition`].
    pub fn heal(&self, name: &str) {
        let h = &self.agent(name).hub_veth;
        sh(&["ip", "-n", &self.hub, "link", "set", h, "up"]);
    }

    /// The node's entry in the server's `GET /nodes`.
    pub async fn node_entry(&self, name: &str) -> Option<Value> {
        let (code, body) = self.api.get("/nodes").await;
        assert_eq!(code, 200, "{body}");
        body["data"]
            .as_array()?
            .iter()
            .find(|n| n["node"] == name)
            .cloned()
    }

    /// Wait until the server lists `name` with `status` (online/offline).
    pub async fn wait_node_status(&self, name: &str, status: &str, timeout_ms: u64) {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let entry = self.node_entry(name).await;
            if entry.as_ref().is_some_and(|e| e["status"] == status) {
                return;
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("{name} not {status} within {timeout_ms} ms: {entry:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until the agent is online and the server can forward to it.
    pub async fn wait_online(&self, name: &str) {
        self.wait_node_status(name, "online", ONLINE_TIMEOUT_MS)
            .await;
        let deadline = Instant::now() + Duration::from_millis(ONLINE_TIMEOUT_MS);
        loop {
            let (code, body) = self.api.get(&format!("/nodes/{name}/qemu")).await;
            if code == 200 {
                return;
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("forwarding to {name} does not work: {code} {body}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Wait for a task on the node its UPID names; returns its exit status.
    pub async fn wait_task(&self, upid: &str) -> String {
        self.wait_task_polling(upid, 100).await
    }

    /// [`Cluster::wait_task`], looking every `poll_ms` (benchmarks time the task's end).
    pub async fn wait_task_polling(&self, upid: &str, poll_ms: u64) -> String {
        let node = upid.split(':').nth(1).expect("UPID names a node");
        let path = format!("/nodes/{node}/tasks/{}/status", urlencode(upid));
        let deadline = Instant::now() + Duration::from_millis(TASK_TIMEOUT_MS);
        loop {
            let (code, body) = self.api.get(&path).await;
            assert_eq!(code, 200, "task status: {body}");
            if body["data"]["status"] == "stopped" {
                return body["data"]["exitstatus"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
            }
            assert!(Instant::now() < deadline, "task {upid} still running");
            tokio::time::sleep(Duration::from_millis(poll_ms)).await;
        }
    }

    /// POST that starts a task through the server; asserts it ends OK.
    pub async fn task_ok(&self, path: &str, form: &[(&str, &str)]) {
        let (code, body) = self.api.post(path, form).await;
        assert_eq!(code, 200, "POST {path}: {body}");
        let upid = body["data"].as_str().expect("upid");
        let status = self.wait_task(upid).await;
        if status != "OK" {
            self.dump_logs();
        }
        assert_eq!(status, "OK", "task of POST {path} failed");
    }

    /// QEMU processes of `vmid`, with the agent whose run directory they use.
    pub fn qemu_pids(&self, vmid: u32) -> Vec<(String, i32)> {
        let mut out = Vec::new();
        for (pid, cmd) in processes() {
            if !cmd.contains("qemu-system") {
                continue;
            }
            for a in &self.agents {
                let mark = format!("{}/{vmid}/", a.run_root.display());
                if cmd.contains(&mark) {
                    out.push((a.name.clone(), pid));
                }
            }
        }
        out
    }

    /// Whether `pid` runs in agent `name`'s network namespace.
    pub fn in_netns(&self, name: &str, pid: i32) -> bool {
        use std::os::unix::fs::MetadataExt;
        let ns = std::fs::metadata(format!("/run/netns/{}", self.agent(name).netns));
        let p = std::fs::metadata(format!("/proc/{pid}/ns/net"));
        match (ns, p) {
            (Ok(ns), Ok(p)) => ns.ino() == p.ino() && ns.dev() == p.dev(),
            _ => false,
        }
    }

    /// Print the processes' logs (on failures).
    pub fn dump_logs(&self) {
        let mut logs = vec![("server".to_string(), self.dir.path().join("server.log"))];
        logs.extend(self.agents.iter().map(|a| (a.name.clone(), a.log.clone())));
        for (name, path) in logs {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("----- {name} log (last 40 lines) -----");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

fn spawn_agent(agent: &AgentNode) -> Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &agent.netns,
            env!("CARGO_BIN_EXE_gpve-agent"),
            "run",
        ])
        .arg("--data-dir")
        .arg(&agent.data_dir)
        .env(gpve_actors::vm::RUN_DIR_ENV, &agent.run_root)
        .stdout(Stdio::null())
        .stderr(log_file(&agent.log))
        .spawn()
        .expect("spawn gpve-agent")
}

/// Every process as (pid, command line with spaces).
pub fn processes() -> Vec<(i32, String)> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            Some((pid, cmd))
        })
        .collect()
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for a in &mut self.agents {
            if let Some(mut c) = a.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // QEMU outlives agents by design: kill what this test started.
        let root = self.dir.path().display().to_string();
        for (pid, cmd) in processes() {
            if cmd.contains("qemu-system") && cmd.contains(&root) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        for a in &self.agents {
            sh_quiet(&["ip", "netns", "del", &a.netns]);
        }
        sh_quiet(&["ip", "netns", "del", &self.hub]);
        sh_quiet(&["ip", "link", "del", &format!("{}s0", self.prefix)]);
    }
}
