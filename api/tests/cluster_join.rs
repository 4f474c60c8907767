//! Multi-node join, node sessions and leases with the real binaries: a `gpve-server` and a
//! `gpve-agent` process in separate data directories, gRPC over (mutual) TLS on loopback.

mod server_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gpve_transport::grpc::GrpcTransport;
use gpve_transport::pki::{ClusterCa, node_key_and_csr};
use gpve_transport::{Heartbeat, NodeCredentials, Transport};
use serde_json::Value;
use server_common::*;

/// The lease TTL the server uses (`gpve_api::cluster::LEASE_TTL_MS`).
const LEASE_TTL_MS: u64 = gpve_api::cluster::LEASE_TTL_MS;

/// A `gpve-server` process with HTTPS and gRPC on fixed loopback ports (kept across
/// restarts, so the agent finds it again).
struct ClusterServer {
    child: Child,
    data: PathBuf,
    api_port: u16,
    grpc_port: u16,
}

impl ClusterServer {
    async fn start(data: &Path, api_port: u16, grpc_port: u16) -> ClusterServer {
        let child = Command::new(env!("CARGO_BIN_EXE_gpve-server"))
            .args(["run", "--data-dir"])
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{api_port}")])
            .args(["--grpc-listen", &format!("127.0.0.1:{grpc_port}")])
            .args(["--login-failure-delay-ms", "50"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn gpve-server");
        let srv = ClusterServer {
            child,
            data: data.to_path_buf(),
            api_port,
            grpc_port,
        };
        let client = client_for(data);
        for _ in 0..300 {
            let api_up = client
                .get(format!("{}/access/ticket", srv.base()))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            let grpc_up = std::net::TcpStream::connect(("127.0.0.1", grpc_port)).is_ok();
            if api_up && grpc_up {
                return srv;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gpve-server did not come up on {api_port}/{grpc_port}");
    }

    fn base(&self) -> String {
        format!("https://127.0.0.1:{}/api2/json", self.api_port)
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ClusterServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A `gpve-agent run` process.
struct Agent(Child);

impl Agent {
    fn run(dir: &Path) -> Agent {
        Agent(
            Command::new(env!("CARGO_BIN_EXE_gpve-agent"))
                .args(["run", "--reconnect-max-ms", "1000", "--data-dir"])
                .arg(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn gpve-agent"),
        )
    }

    fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn token_create(data: &Path, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gpve-server"))
        .args(["token", "create", "--data-dir"])
        .arg(data)
        .args(extra)
        .output()
        .expect("token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `gpve-agent join`; returns (success, stderr).
fn join(srv: &ClusterServer, dir: &Path, token: &str, node: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gpve-agent"))
        .args([
            "join",
            "--server",
            &format!("https://127.0.0.1:{}", srv.api_port),
        ])
        .args(["--grpc-port", &srv.grpc_port.to_string()])
        .args(["--token", token, "--node-name", node, "--data-dir"])
        .arg(dir)
        .output()
        .expect("gpve-agent join");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

struct Api {
    client: reqwest::Client,
    base: String,
    ticket: String,
    csrf: String,
}

impl Api {
    async fn new(srv: &ClusterServer) -> Api {
        let client = client_for(&srv.data);
        let (ticket, csrf) = login(&client, &srv.base(), "root@pam", ROOT_PW).await;
        Api {
            client,
            base: srv.base(),
            ticket,
            csrf,
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        send(
            self.client
                .get(format!("{}{path}", self.base))
                .header("Cookie", cookie(&self.ticket)),
        )
        .await
    }

    async fn v1(&self, method: reqwest::Method, path: &str) -> (u16, Value) {
        let base = self.base.replace("/api2/json", "/api/v1");
        send(
            self.client
                .request(method, format!("{base}{path}"))
                .header("Cookie", cookie(&self.ticket))
                .header("CSRFPreventionToken", &self.csrf),
        )
        .await
    }

    /// The `/nodes` entry of `node`, if listed.
    async fn node(&self, node: &str) -> Option<Value> {
        let (code, body) = self.get("/nodes").await;
        assert_eq!(code, 200, "{body}");
        body["data"]
            .as_array()
            .expect("list")
            .iter()
            .find(|n| n["node"] == node)
            .cloned()
    }

    /// Wait until `node` shows `status`; returns how long it took.
    async fn wait_status(&self, node: &str, status: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let seen = self.node(node).await;
            if seen.as_ref().is_some_and(|n| n["status"] == status) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "{node} not {status} within {limit:?}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn agent_joins_heartbeats_fails_over_and_reconnects() {
    let dir = init_dir().await;
    let data = data_path(&dir);
    let (api_port, grpc_port) = (free_port(), free_port());
    let token = token_create(&data, &["--ttl", "10m"]);
    assert!(token.starts_with("gpve1."), "{token}");
    let mut srv = ClusterServer::start(&data, api_port, grpc_port).await;
    let api = Api::new(&srv).await;

    let agent_dir = dir.path().join("agent-a1");
    let (ok, err) = join(&srv, &agent_dir, &token, "a1");
    assert!(ok, "join failed: {err}");
    for f in ["agent.json", "ca.pem", "cert.pem", "key.pem"] {
        assert!(agent_dir.join(f).exists(), "{f} missing");
    }
    // Known but never heard since the server started.
    assert_eq!(api.node("a1").await.expect("listed")["status"], "unknown");

    // A single-use token is spent.
    let other_dir = dir.path().join("agent-a2");
    let (ok, err) = join(&srv, &other_dir, &token, "a2");
    assert!(!ok);
    assert!(err.contains("unknown or was already used"), "{err}");
    assert!(!other_dir.join("agent.json").exists());
    assert!(api.node("a2").await.is_none());

    // Online within 2 s of starting the agent.
    let started = Instant::now();
    let mut agent = Agent::run(&agent_dir);
    api.wait_status("a1", "online", Duration::from_secs(10))
        .await;
    let online_after = started.elapsed();
    eprintln!("online {online_after:?} after starting the agent");
    assert!(online_after < Duration::from_secs(2), "{online_after:?}");
    let entry = api.node("a1").await.expect("listed");
    assert!(entry["maxmem"].as_u64().unwrap_or(0) > 0, "{entry}");
    assert!(entry["uptime"].as_u64().is_some(), "{entry}");
    assert_eq!(entry["cordoned"], 0);
    let (code, body) = api.get("/nodes/a1/status").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body["data"]["memory"]["total"].as_u64().unwrap_or(0) > 0,
        "{body}"
    );
    assert_eq!(body["data"]["lease"]["generation"], 1, "{body}");

    // Cordon and uncordon.
    let (code, body) = api.v1(reqwest::Method::POST, "/nodes/a1/cordon").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(api.node("a1").await.expect("listed")["cordoned"], 1);
    let (code, _) = api.v1(reqwest::Method::DELETE, "/nodes/a1/cordon").await;
    assert_eq!(code, 200);
    assert_eq!(api.node("a1").await.expect("listed")["cordoned"], 0);
    let (code, _) = api.v1(reqwest::Method::POST, "/nodes/nope/cordon").await;
    assert_ne!(code, 200);

    // kill -9: offline once the lease expires, and its monitor failed.
    agent.kill9();
    let killed = Instant::now();
    api.wait_status("a1", "offline", Duration::from_secs(15))
        .await;
    let offline_after = killed.elapsed();
    eprintln!("offline {offline_after:?} after kill -9");
    let ttl = Duration::from_millis(LEASE_TTL_MS);
    assert!(
        offline_after + Duration::from_millis(1_500) >= ttl,
        "offline before the lease could expire: {offline_after:?}"
    );
    // The monitor fails at its next lease check (every 100 ms) after the expiry.
    let path = "gpve-server%2Fcluster%2Fmembership%2Fnode-monitor%3Aa1";
    let mut body = Value::Null;
    for _ in 0..40 {
        let (code, b) = api
            .v1(reqwest::Method::GET, &format!("/actors/{path}"))
            .await;
        assert_eq!(code, 200, "{b}");
        body = b;
        if !body["data"]["last_failure"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failure = body["data"]["last_failure"]["reason"]
        .as_str()
        .unwrap_or("");
    assert!(failure.contains("lease of node a1 expired"), "{body}");
    assert!(
        body["data"]["restarts"].as_u64().unwrap_or(0) >= 1,
        "{body}"
    );
    let (code, body) = api.get("/nodes/a1/status").await;
    assert_eq!(code, 503, "{body}");

    // Restart the agent: online again without joining again, with a new lease generation.
    let mut agent = Agent::run(&agent_dir);
    api.wait_status("a1", "online", Duration::from_secs(10))
        .await;
    let (_, body) = api.get("/nodes/a1/status").await;
    assert_eq!(body["data"]["lease"]["generation"], 2, "{body}");

    // Restart the server: the agent reconnects by itself.
    srv.kill9();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let srv = ClusterServer::start(&data, api_port, grpc_port).await;
    let api = Api::new(&srv).await;
    let back = api
        .wait_status("a1", "online", Duration::from_secs(15))
        .await;
    eprintln!("online {back:?} after the server came back");
    agent.kill9();
}

#[tokio::test]
async fn bad_tokens_and_foreign_certificates_are_refused() {
    let dir = init_dir().await;
    let data = data_path(&dir);
    let srv = ClusterServer::start(&data, free_port(), free_port()).await;
    let api = Api::new(&srv).await;
    let good = token_create(&data, &["--ttl", "10m"]);
    let fp = good.split('.').nth(1).expect("fingerprint").to_string();
    let agent_dir = dir.path().join("agent");

    let cases = [
        // Unknown id and secret, right cluster.
        (
            format!("gpve1.{fp}.0123456789ab.{}", "5".repeat(32)),
            "unknown or was already used",
        ),
        // Right id, wrong secret.
        (
            format!(
                "gpve1.{fp}.{}.{}",
                good.split('.').nth(2).expect("id"),
                "5".repeat(32)
            ),
            "secret is wrong",
        ),
        // Pinned to another CA: the agent refuses the server before sending anything.
        (
            format!("gpve1.{}.0123456789ab.{}", "ab".repeat(32), "5".repeat(32)),
            "pinned",
        ),
        ("not-a-token".to_string(), "malformed"),
    ];
    for (token, expect) in &cases {
        let (ok, err) = join(&srv, &agent_dir, token, "b1");
        assert!(!ok, "{token} was accepted");
        assert!(err.contains(expect), "{token}: {err}");
    }
    // Expired.
    let short = token_create(&data, &["--ttl", "1s"]);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let (ok, err) = join(&srv, &agent_dir, &short, "b1");
    assert!(!ok);
    assert!(err.contains("expired"), "{err}");
    // Nothing stored anywhere.
    assert!(!agent_dir.join("agent.json").exists());
    assert!(api.node("b1").await.is_none());

    // The good token still works once, and a second node may not take the same name.
    let (ok, err) = join(&srv, &agent_dir, &good, "b1");
    assert!(ok, "{err}");
    let reusable = token_create(&data, &["--ttl", "10m", "--reusable"]);
    let (ok, err) = join(&srv, &dir.path().join("agent-dup"), &reusable, "b1");
    assert!(!ok);
    assert!(err.contains("already joined"), "{err}");

    // A certificate for "b1" from another CA: the TLS layer refuses it, no lease renewed.
    let endpoint = format!("127.0.0.1:{}", srv.grpc_port);
    let ca_pem = std::fs::read_to_string(agent_dir.join("ca.pem")).expect("ca");
    let other = ClusterCa::generate("evil").expect("ca");
    let (key_pem, csr) = node_key_and_csr("b1").expect("csr");
    let forged = NodeCredentials {
        ca_pem,
        cert_pem: other.sign_node_csr(&csr, "b1").expect("sign"),
        key_pem,
    };
    let result = match GrpcTransport::default().connect(&endpoint, &forged).await {
        Ok(link) => link.heartbeat(Heartbeat::default()).await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(result.is_err(), "a foreign certificate was accepted");
    assert_eq!(api.node("b1").await.expect("listed")["status"], "unknown");

    // The real credentials work through the same path.
    let (_, creds) = gpve_api::agent::AgentDir::new(&agent_dir)
        .load()
        .expect("creds");
    let link = GrpcTransport::default()
        .connect(&endpoint, &creds)
        .await
        .expect("connect");
    let ack = link
        .heartbeat(Heartbeat::default())
        .await
        .expect("heartbeat");
    assert_eq!(ack.node, "b1");
    assert_eq!(api.node("b1").await.expect("listed")["status"], "online");

    // gpvectl node list|cordon|uncordon against the same server.
    let pem = std::fs::read_to_string(data.join("cert.pem")).expect("cert");
    let der = gpve_transport::pki::certs_from_pem(&pem)
        .expect("pem")
        .remove(0);
    let fp = gpve_api::datadir::fingerprint(&der);
    let config = dir.path().join("gpvectl.yaml");
    let url = format!("https://127.0.0.1:{}", srv.api_port);
    let out = gpvectl(
        &config,
        &[
            "login",
            "--server",
            &url,
            "--user",
            "root@pam",
            "--password-stdin",
            "--fingerprint",
            &fp,
        ],
        ROOT_PW,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = gpvectl(&config, &["node", "cordon", "b1"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = gpvectl(&config, &["node", "list", "-o", "json"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("json");
    let b1 = list
        .as_array()
        .and_then(|l| l.iter().find(|n| n["node"] == "b1"))
        .expect("b1 listed");
    assert_eq!(b1["cordoned"], 1, "{list}");
    assert_eq!(b1["status"], "online", "{list}");
    let out = gpvectl(&config, &["node", "uncordon", "b1"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = gpvectl(&config, &["node", "cordon", "n1"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("own node"));
}

fn gpvectl(config: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpvectl"))
        .args(args)
        .env("GPVE_CONFIG", config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gpvectl");
    if let Some(mut input) = child.stdin.take() {
        let _ = writeln!(input, "{stdin}");
    }
    child.wait_with_output().expect("gpvectl output")
}

/// Heartbeat round trip (mutual TLS, gRPC, lease renewal committed to redb) on loopback.
/// `cargo test -p gpve-api --release --test cluster_join -- --ignored --nocapture`
#[tokio::test]
#[ignore = "benchmark; run with make bench"]
async fn bench_heartbeat_round_trip() {
    let n: u64 = std::env::var("GPVE_BENCH_HEARTBEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let dir = init_dir().await;
    let data = data_path(&dir);
    let srv = ClusterServer::start(&data, free_port(), free_port()).await;
    let token = token_create(&data, &["--ttl", "10m"]);
    let agent_dir = dir.path().join("agent");
    let (ok, err) = join(&srv, &agent_dir, &token, "bench1");
    assert!(ok, "{err}");
    let (_, creds) = gpve_api::agent::AgentDir::new(&agent_dir)
        .load()
        .expect("creds");
    let endpoint = format!("127.0.0.1:{}", srv.grpc_port);
    let link = GrpcTransport::default()
        .connect(&endpoint, &creds)
        .await
        .expect("connect");
    let mut hist = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    for seq in 0..n {
        let t = Instant::now();
        link.heartbeat(Heartbeat {
            seq,
            ..Default::default()
        })
        .await
        .expect("heartbeat");
        hist.record(t.elapsed().as_micros() as u64).expect("record");
    }
    println!(
        "heartbeat round trip over {n}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.max() as f64 / 1000.0
    );
}

/// The same server logic and agent over the in-memory transport (the simulation's seam):
/// join, online, a partition fails the node's monitor once the lease expires, healing
/// brings it back with a new lease generation.
#[tokio::test]
async fn agent_over_the_in_memory_transport() {
    use std::sync::Arc;

    use gpve_api::agent::{JoinOptions, SessionTiming};
    use gpve_api::cluster::files::ClusterFiles;
    use gpve_api::cluster::monitor::{Liveness, Monitors, monitor_path, monitor_view};
    use gpve_api::cluster::service::ServerCluster;
    use gpve_api::cluster::{ClusterOptions, now_ms, supervisor_child};
    use gpve_supervisor::{Directory, Supervisor, SupervisorSpec};
    use gpve_transport::mem::{MemNetwork, MemTransport};

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("server");
    std::fs::create_dir_all(&data).expect("mkdir");
    let store = gpve_store::Store::open_redb(&data.join("store.redb")).expect("store");
    let directory = Directory::new();
    let opts = ClusterOptions::single(data.clone(), "srv".into());
    let root = Supervisor::spawn(
        SupervisorSpec::new(gpve_api::tree::ROOT).child(supervisor_child(
            opts,
            store.clone(),
            None,
        )),
        directory.clone(),
    )
    .await
    .expect("tree");
    let files = ClusterFiles::new(&data);
    let ca = files.ensure_ca("mem").expect("ca");
    let (token, _) = files
        .create_token(&ca, 60, false, None, gpve_api::state::now_s())
        .expect("token");
    let network = MemNetwork::new();
    let endpoint = "srv:8007";
    let ca_pem = ca.cert_pem.clone();
    network.register(
        endpoint,
        &ca_pem,
        Arc::new(ServerCluster {
            store: store.clone(),
            ca: Arc::new(ca),
            files,
            monitors: Monitors {
                directory: directory.clone(),
                store,
                started_at_ms: now_ms(),
            },
            local_node: "srv".into(),
            cluster_name: None,
            advertise: None,
            lease_ttl_ms: 1_000,
        }),
    );
    let transport = Arc::new(MemTransport {
        network: network.clone(),
    });
    let agent_dir = dir.path().join("agent");
    gpve_api::agent::join(
        &*transport,
        JoinOptions {
            data_dir: agent_dir.clone(),
            endpoint: endpoint.into(),
            token: token.to_string(),
            node_name: "m1".into(),
        },
    )
    .await
    .expect("join");
    let agent = gpve_api::agent::start(
        &agent_dir,
        transport,
        SessionTiming {
            heartbeat_interval_ms: 100,
            reconnect_initial_ms: 50,
            reconnect_max_ms: 200,
        },
    )
    .await
    .expect("agent");

    let wait = |want: Liveness| {
        let directory = directory.clone();
        async move {
            for _ in 0..100 {
                if let Some(v) = monitor_view(&directory, "m1", 1_000).await
                    && v.liveness == want
                {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("m1 never became {want:?}");
        }
    };
    let v = wait(Liveness::Online).await;
    assert_eq!(v.lease.expect("lease").generation, 1);

    network.set_reachable(endpoint, false);
    let mut failed = false;
    for _ in 0..100 {
        if directory
            .get(&monitor_path("m1"))
            .is_some_and(|s| s.last_failure.is_some())
        {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failed, "the monitor did not fail after the partition");
    wait(Liveness::Offline).await;

    network.set_reachable(endpoint, true);
    let v = wait(Liveness::Online).await;
    assert_eq!(v.lease.expect("lease").generation, 2);
    agent.shutdown().await;
    let _ = root.stop().await;
}
