//! `gpvectl storage ...` / `gpvectl volume ...` and the typed storage client against the
//! real `gpve-server` binary (initialised by `gpve-server init`) over HTTPS on loopback.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gpve_api::client::storage::{StorageSpec, VolumeSpec};
use gpve_api::client::{Client, ClientError, Fingerprint};

const ROOT_PASSWORD: &str = "test-root-password";
const NODE: &str = "stnode";
const SERVER_START_TIMEOUT_MS: u64 = 30_000;

struct Server {
    child: Child,
    dir: tempfile::TempDir,
    url: String,
    fingerprint: Fingerprint,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Server {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let init = Command::new(env!("CARGO_BIN_EXE_gpve-server"))
            .args([
                "init",
                "--node-name",
                NODE,
                "--root-password",
                ROOT_PASSWORD,
            ])
            .arg("--data-dir")
            .arg(&data)
            .output()
            .expect("run gpve-server init");
        assert!(init.status.success(), "init failed: {}", text(&init.stderr));
        let fingerprint = Fingerprint::of_pem_file(&data.join("cert.pem")).expect("fingerprint");
        let addr: SocketAddr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_gpve-server"))
            .args([
                "run",
                "--grpc-listen",
                "127.0.0.1:0",
                "--login-failure-delay-ms",
                "0",
            ])
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen")
            .arg(addr.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn gpve-server run");
        let deadline = Instant::now() + Duration::from_millis(SERVER_START_TIMEOUT_MS);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "gpve-server did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Server {
            child,
            dir,
            url: format!("https://{addr}"),
            fingerprint,
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("gpvectl").join("config.yaml")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn ctl(&self, args: &[&str]) -> Output {
        ctl(&self.config(), args, "")
    }

    fn login(&self) {
        let fp = self.fingerprint.to_string();
        let out = ctl(
            &self.config(),
            &[
                "login",
                "--server",
                &self.url,
                "--user",
                "root@pam",
                "--password-stdin",
                "--fingerprint",
                &fp,
            ],
            &format!("{ROOT_PASSWORD}\n"),
        );
        assert!(out.status.success(), "login failed: {}", text(&out.stderr));
    }

    async fn client(&self) -> Client {
        let client = Client::builder(&self.url)
            .fingerprint(self.fingerprint)
            .build()
            .expect("client");
        client
            .login("root@pam", ROOT_PASSWORD)
            .await
            .expect("login");
        client
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctl(config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpvectl"))
        .args(args)
        .env("GPVE_CONFIG", config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gpvectl");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.as_bytes());
    }
    child.wait_with_output().expect("gpvectl output")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "gpvectl failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).expect("JSON output")
}

#[test]
fn gpvectl_storage_and_volume_commands() {
    let server = Server::start();
    server.login();

    // `local` exists right after `gpve-server init` and is active.
    let list = json(&server.ctl(&["storage", "list", "-o", "json"]));
    let local = &list.as_array().expect("array")[0];
    assert_eq!(local["storage"], "local");
    assert_eq!(local["active"], 1, "{local}");
    let table = ok(&server.ctl(&["storage", "list"]));
    assert!(
        table.contains("STORAGE") && table.contains("local"),
        "{table}"
    );
    let all = json(&server.ctl(&["storage", "list", "--cluster", "-o", "json"]));
    assert_eq!(all[0]["type"], "dir");
    let cfg = json(&server.ctl(&["storage", "get", "local", "-o", "json"]));
    assert_eq!(
        cfg["path"],
        server.data().join("storage/local").to_str().expect("utf-8")
    );

    let pool = server.dir.path().join("pool2");
    let pool_s = pool.to_str().expect("utf-8");
    ok(&server.ctl(&[
        "storage",
        "create",
        "s2",
        "--type",
        "dir",
        "--path",
        pool_s,
        "--content",
        "images",
    ]));
    let out = server.ctl(&["storage", "create", "s3", "--type", "zfs", "--path", pool_s]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not supported"),
        "{}",
        text(&out.stderr)
    );

    let volid = ok(&server.ctl(&[
        "volume", "create", "s2", "--vmid", "200", "--size", "8M", "--format", "qcow2",
    ]));
    assert_eq!(volid.trim(), "s2:200/vm-200-disk-0.qcow2");
    assert!(pool.join("images/200/vm-200-disk-0.qcow2").is_file());
    let vols = json(&server.ctl(&["volume", "list", "s2", "--vmid", "200", "-o", "json"]));
    assert_eq!(vols[0]["volid"], "s2:200/vm-200-disk-0.qcow2");
    assert_eq!(vols[0]["size"], 8 << 20);

    ok(&server.ctl(&["volume", "snapshot", "s2:200/vm-200-disk-0.qcow2", "snap1"]));
    let snaps = json(&server.ctl(&[
        "volume",
        "snapshot",
        "s2:200/vm-200-disk-0.qcow2",
        "--list",
        "-o",
        "json",
    ]));
    assert_eq!(snaps[0]["name"], "snap1");

    let out = ok(&server.ctl(&["volume", "delete", "s2:200/vm-200-disk-0.qcow2"]));
    assert!(out.contains("deleted"), "{out}");
    assert!(!pool.join("images/200/vm-200-disk-0.qcow2").exists());
    let out = server.ctl(&["volume", "delete", "s2:200/vm-200-disk-0.qcow2"]);
    assert!(!out.status.success(), "deleting again fails");

    ok(&server.ctl(&["storage", "delete", "s2"]));
    let out = server.ctl(&["storage", "get", "s2"]);
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_storage_client() {
    let server = Server::start();
    let client = server.client().await;
    let pool = server.dir.path().join("pool");
    client
        .create_storage(
            "lib",
            &StorageSpec {
                storage_type: Some("dir".into()),
                path: Some(pool.to_string_lossy().into_owned()),
                content: Some("images,iso".into()),
                ..StorageSpec::default()
            },
        )
        .await
        .expect("create");
    let s = client.storage("lib").await.expect("get");
    assert_eq!(s.content.as_deref(), Some("images,iso"));
    let st = client.storage_status(NODE, "lib").await.expect("status");
    assert_eq!(st.active, Some(1));
    assert!(st.total.unwrap_or(0) > 0);

    let volid = client
        .allocate_volume(
            NODE,
            "lib",
            &VolumeSpec {
                vmid: 300,
                filename: String::new(),
                size: "2M".into(),
                format: None,
            },
        )
        .await
        .expect("allocate");
    assert_eq!(volid, "lib:300/vm-300-disk-0.raw");
    // The volume id travels as one percent-encoded path segment.
    let v = client.volume(NODE, "lib", &volid).await.expect("volume");
    assert_eq!(v.size, 2 << 20);
    assert!(
        v.path
            .as_deref()
            .is_some_and(|p| p.ends_with("images/300/vm-300-disk-0.raw"))
    );

    let err = client
        .volume(NODE, "lib", "lib:iso/../../etc.iso")
        .await
        .expect_err("traversal refused");
    assert!(
        matches!(err, ClientError::Api { status: 400, .. }),
        "{err:?}"
    );

    client
        .update_storage(
            "lib",
            &StorageSpec {
                disable: Some(1),
                ..StorageSpec::default()
            },
        )
        .await
        .expect("disable");
    let err = client
        .volumes(NODE, "lib", None, None)
        .await
        .expect_err("disabled");
    assert!(
        matches!(err, ClientError::Api { status: 400, .. }),
        "{err:?}"
    );

    let upid = {
        client
            .update_storage(
                "lib",
                &StorageSpec {
                    disable: Some(0),
                    ..StorageSpec::default()
                },
            )
            .await
            .expect("enable");
        client
            .delete_volume(NODE, "lib", &volid)
            .await
            .expect("delete")
    };
    client.wait_task(&upid, 30_000).await.expect("task ok");
    assert!(
        client
            .volumes(NODE, "lib", None, None)
            .await
            .expect("list")
            .is_empty()
    );
    client.delete_storage("lib").await.expect("delete storage");
    assert!(
        client
            .storages()
            .await
            .expect("list")
            .iter()
            .all(|s| s.storage != "lib")
    );
}
