//! Shared helpers of the server tests: a real server (in-process or the real binary) on a
//! temporary data directory, and an HTTPS client that trusts its certificate.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gpve_api::datadir::{DataDir, NodeConfig};
use gpve_api::server::{RunningServer, ServeOptions, start};
use serde_json::Value;

pub const ROOT_PW: &str = "rootpw-123";
pub const NODE: &str = "n1";
pub const LOGIN_DELAY_MS: u64 = 50;

/// Initialise a data directory with root@pam / ROOT_PW on node n1.
pub async fn init_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    DataDir::new(dir.path().join("data"))
        .init(
            ROOT_PW,
            NodeConfig {
                node_name: NODE.into(),
                cluster_name: Some("testcluster".into()),
            },
        )
        .await
        .expect("init");
    dir
}

pub fn data_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("data")
}

/// A server running in this process.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub server: Option<RunningServer>,
    pub base: String,
    pub client: reqwest::Client,
}

/// An HTTPS client trusting the data directory's certificate (real verification).
pub fn client_for(data: &Path) -> reqwest::Client {
    let pem = std::fs::read(data.join("cert.pem")).expect("cert");
    let cert = reqwest::Certificate::from_pem(&pem).expect("pem");
    reqwest::Client::builder()
        .add_root_certificate(cert)
        .use_rustls_tls()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

impl TestServer {
    pub async fn start() -> TestServer {
        let dir = init_dir().await;
        let server = start(ServeOptions {
            data_dir: data_path(&dir),
            listen: "127.0.0.1:0".parse().expect("addr"),
            login_failure_delay_ms: LOGIN_DELAY_MS,
        })
        .await
        .expect("server start");
        let base = format!("https://127.0.0.1:{}/api2/json", server.addr.port());
        let client = client_for(&data_path(&dir));
        TestServer {
            dir,
            server: Some(server),
            base,
            client,
        }
    }

    pub fn running(&self) -> &RunningServer {
        self.server.as_ref().expect("running")
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Log in as root@pam; returns (ticket, csrf).
    pub async fn login(&self) -> (String, String) {
        login(&self.client, &self.base, "root@pam", ROOT_PW).await
    }
}

/// POST /access/ticket; panics unless 200.
pub async fn login(client: &reqwest::Client, base: &str, user: &str, pw: &str) -> (String, String) {
    let resp = client
        .post(format!("{base}/access/ticket"))
        .form(&[("username", user), ("password", pw)])
        .send()
        .await
        .expect("login request");
    assert_eq!(resp.status(), 200, "login failed");
    let v: Value = resp.json().await.expect("json");
    (
        v["data"]["ticket"].as_str().expect("ticket").to_string(),
        v["data"]["CSRFPreventionToken"]
            .as_str()
            .expect("csrf")
            .to_string(),
    )
}

/// Cookie header value for a ticket.
pub fn cookie(ticket: &str) -> String {
    format!("PVEAuthCookie={ticket}")
}

/// Send and return (status, JSON body or Null).
pub async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The real `gpve-server` binary running on a data directory.
pub struct BinServer {
    pub child: Child,
    pub base: String,
    pub addr: SocketAddr,
}

/// A free loopback port (bound then released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl BinServer {
    pub async fn start(data: &Path) -> BinServer {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut child = Command::new(env!("CARGO_BIN_EXE_gpve-server"))
            .args(["run", "--grpc-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args([
                "--listen",
                &addr.to_string(),
                "--login-failure-delay-ms",
                "50",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn gpve-server");
        let base = format!("https://127.0.0.1:{port}/api2/json");
        let client = client_for(data);
        for _ in 0..300 {
            if let Ok(r) = client.get(format!("{base}/access/ticket")).send().await
                && r.status() == 200
            {
                return BinServer { child, base, addr };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("gpve-server did not come up on {addr}");
    }

    pub fn kill9(mut self) {
        // Child::kill sends SIGKILL on Unix.
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    pub fn sigterm(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("gpve-server did not exit on SIGTERM");
    }
}

impl Drop for BinServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
