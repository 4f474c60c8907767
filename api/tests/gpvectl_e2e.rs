//! End-to-end tests of `gpvectl` and the client library against a real `gpve-server`
//! (init + run as child processes on a temp dir and a free loopback port, real HTTPS).

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gpve_api::client::{
    ApiToken, Auth, Client, ClientError, Fingerprint, ResourceType, TaskFilter, TokenSpec, UserSpec,
};

const ROOT_PASSWORD: &str = "test-root-password";
const NODE: &str = "testnode";
const SERVER_START_TIMEOUT_MS: u64 = 30_000;

struct Server {
    child: Child,
    dir: tempfile::TempDir,
    url: String,
    fingerprint: Fingerprint,
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
        let fingerprint =
            Fingerprint::of_pem_file(&data.join("cert.pem")).expect("fingerprint of cert.pem");
        // init prints the fingerprint the operator hands to clients: it must be the same.
        assert!(
            text(&init.stdout).contains(&fingerprint.to_string()),
            "init output lacks the certificate fingerprint: {}",
            text(&init.stdout)
        );

        let addr = free_port();
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
        let mut server = Server {
            child,
            dir,
            url: format!("https://{addr}"),
            fingerprint,
        };
        server.wait_listening(addr);
        server
    }

    fn wait_listening(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_millis(SERVER_START_TIMEOUT_MS);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("gpve-server exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "gpve-server not listening on {addr} after {SERVER_START_TIMEOUT_MS} ms: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("gpvectl").join("config.yaml")
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("data").join("cert.pem")
    }

    /// Runs gpvectl with this server's config file and `stdin` as its input.
    fn ctl(&self, args: &[&str], stdin: &str) -> Output {
        ctl_with_config(&self.config(), args, stdin)
    }

    fn login(&self) -> Output {
        let fp = self.fingerprint.to_string();
        let out = self.ctl(
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
        out
    }

    async fn client(&self) -> Client {
        let client = Client::builder(&self.url)
            .fingerprint(self.fingerprint)
            .build()
            .expect("client");
        client
            .login("root@pam", ROOT_PASSWORD)
            .await
            .expect("library login");
        client
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ctl_with_config(config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpvectl"))
        .args(args)
        .env("GPVE_CONFIG", config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gpvectl");
    if let Some(mut input) = child.stdin.take() {
        // gpvectl may exit before reading stdin (e.g. trust refused); that is fine.
        let _ = input.write_all(stdin.as_bytes());
    }
    child.wait_with_output().expect("gpvectl output")
}

fn json_of(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "gpvectl failed: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", text(&out.stdout)))
}

#[test]
fn login_then_get_nodes_tasks_resources_and_version() {
    let server = Server::start();
    let out = server.login();
    assert!(
        text(&out.stderr).contains("logged in"),
        "{}",
        text(&out.stderr)
    );

    // The config holds a ticket: it must be private.
    let mode = std::fs::metadata(server.config())
        .expect("config written")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let config = std::fs::read_to_string(server.config()).expect("read config");
    assert!(config.contains(&server.fingerprint.to_string()));
    assert!(
        config.contains("PVE:root@pam:"),
        "no ticket stored: {config}"
    );

    // Table: a header and one aligned row for the node.
    let out = server.ctl(&["get", "nodes"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("STATUS"),
        "{table}"
    );
    let row = lines
        .iter()
        .find(|l| l.starts_with(NODE))
        .unwrap_or_else(|| panic!("no row for {NODE}: {table}"));
    assert!(row.contains("online"), "{table}");
    assert_eq!(
        lines[0].find("STATUS"),
        row.find("online"),
        "columns not aligned: {table}"
    );

    // JSON: the API's data, parseable.
    let nodes = json_of(&server.ctl(&["get", "nodes", "-o", "json"], ""));
    let nodes = nodes.as_array().expect("nodes array");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["node"], NODE);
    assert_eq!(nodes[0]["status"], "online");
    assert!(nodes[0]["maxmem"].as_u64().is_some_and(|m| m > 0));

    // Tasks of one node and of all nodes (possibly none yet, but the call must work).
    let tasks = json_of(&server.ctl(&["get", "tasks", "--node", NODE, "-o", "json"], ""));
    assert!(tasks.is_array(), "{tasks}");
    let out = server.ctl(&["get", "tasks", "--limit", "5"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Resources filtered by type, as YAML.
    let out = server.ctl(&["get", "resources", "--type", "node", "-o", "yaml"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let res: serde_json::Value = serde_yaml::from_slice(&out.stdout).expect("yaml");
    let res = res.as_array().expect("resources array");
    assert!(res.iter().all(|r| r["type"] == "node"), "{res:?}");
    assert!(res.iter().any(|r| r["node"] == NODE), "{res:?}");

    let version = json_of(&server.ctl(&["version", "-o", "json"], ""));
    assert!(version["server"]["version"].as_str().is_some(), "{version}");
    assert_eq!(version["client"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn wrong_password_fails_clearly_and_stores_nothing() {
    let server = Server::start();
    let fp = server.fingerprint.to_string();
    let out = server.ctl(
        &[
            "login",
            "--server",
            &server.url,
            "--user",
            "root@pam",
            "--password-stdin",
            "--fingerprint",
            &fp,
        ],
        "not-the-password\n",
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("login failed") && err.contains("401"), "{err}");
    assert!(!server.config().exists(), "a failed login wrote a config");
}

#[test]
fn fingerprint_mismatch_is_refused_showing_both() {
    let server = Server::start();
    let wrong = Fingerprint::of_der(b"some other certificate").to_string();
    let out = server.ctl(
        &[
            "login",
            "--server",
            &server.url,
            "--user",
            "root@pam",
            "--password-stdin",
            "--fingerprint",
            &wrong,
        ],
        &format!("{ROOT_PASSWORD}\n"),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains(&wrong), "expected fingerprint missing: {err}");
    assert!(
        err.contains(&server.fingerprint.to_string()),
        "presented one missing: {err}"
    );
    assert!(!server.config().exists());

    // A pinned fingerprint that no longer matches (certificate replaced, or someone in the
    // middle) refuses every command, again showing both.
    server.login();
    let config = std::fs::read_to_string(server.config()).expect("config");
    std::fs::write(
        server.config(),
        config.replace(&server.fingerprint.to_string(), &wrong),
    )
    .expect("rewrite config");
    let out = server.ctl(&["get", "nodes"], "");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&wrong) && err.contains(&server.fingerprint.to_string()),
        "{err}"
    );
    assert!(err.contains("refusing"), "{err}");
}

#[test]
fn unknown_server_is_not_trusted_silently() {
    let server = Server::start();
    // No --fingerprint and nothing pinned: refused before any password is read, and the
    // presented fingerprint is shown for the user to compare.
    let out = server.ctl(
        &[
            "login",
            "--server",
            &server.url,
            "--user",
            "root@pam",
            "--password-stdin",
        ],
        &format!("{ROOT_PASSWORD}\n"),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("not trusted"), "{err}");
    assert!(
        err.contains(&format!("--fingerprint {}", server.fingerprint)),
        "{err}"
    );
    assert!(!server.config().exists());

    // Explicit trust on first use pins what the server presents and says so.
    let out = server.ctl(
        &[
            "login",
            "--server",
            &server.url,
            "--user",
            "root@pam",
            "--password-stdin",
            "--insecure-accept-fingerprint",
        ],
        &format!("{ROOT_PASSWORD}\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&server.fingerprint.to_string()));
    let config = std::fs::read_to_string(server.config()).expect("config");
    assert!(config.contains(&server.fingerprint.to_string()), "{config}");

    // A later login to the same server reuses the pinned fingerprint.
    let out = server.ctl(
        &["login", "--user", "root@pam", "--password-stdin"],
        &format!("{ROOT_PASSWORD}\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    // --ca-file: the self-signed certificate is its own CA (SAN 127.0.0.1).
    let cert = server.cert();
    let out = server.ctl(
        &[
            "login",
            "--server",
            &server.url,
            "--user",
            "root@pam",
            "--password-stdin",
            "--ca-file",
            cert.to_str().expect("utf-8 path"),
        ],
        &format!("{ROOT_PASSWORD}\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = server.ctl(&["get", "nodes", "-o", "json"], "");
    assert_eq!(json_of(&out)[0]["node"], NODE);

    // A CA that did not sign the server certificate: a TLS error, not "unreachable".
    let other_ca = server.dir.path().join("other-ca.pem");
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("rcgen");
    std::fs::write(&other_ca, other.cert.pem()).expect("write other CA");
    let out = server.ctl(
        &[
            "login",
            "--server",
            &server.url,
            "--user",
            "root@pam",
            "--password-stdin",
            "--ca-file",
            other_ca.to_str().expect("utf-8 path"),
        ],
        &format!("{ROOT_PASSWORD}\n"),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("TLS handshake") && err.contains(&server.url),
        "{err}"
    );

    // `gpvectl fingerprint` agrees with the file and with what the server presents.
    let from_cert = server.ctl(&["fingerprint", "--cert", cert.to_str().expect("path")], "");
    let from_server = server.ctl(&["fingerprint", "--server", &server.url], "");
    assert_eq!(
        text(&from_cert.stdout).trim(),
        server.fingerprint.to_string()
    );
    assert_eq!(
        text(&from_server.stdout).trim(),
        server.fingerprint.to_string()
    );
}

#[test]
fn not_logged_in_unreachable_and_expired_are_explained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yaml");
    let out = ctl_with_config(&config, &["get", "nodes"], "");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not logged in"),
        "{}",
        text(&out.stderr)
    );

    // A server that is not there: the message names the URL.
    let addr = free_port();
    let out = ctl_with_config(
        &config,
        &["fingerprint", "--server", &format!("https://{addr}")],
        "",
    );
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot reach") && err.contains(&addr.to_string()),
        "{err}"
    );

    // An expired or revoked ticket: tell the user to log in again.
    let server = Server::start();
    server.login();
    let stored = std::fs::read_to_string(server.config()).expect("config");
    let tampered: String = stored
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("ticket: PVE:") {
                format!("{l}tampered")
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(
        stored.trim_end(),
        tampered,
        "no ticket line found: {stored}"
    );
    std::fs::write(server.config(), tampered).expect("write config");
    let out = server.ctl(&["get", "nodes"], "");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("login expired") && err.contains("gpvectl login"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_library_covers_nodes_tasks_cluster_users_and_tokens() {
    let server = Server::start();
    let client = server.client().await;

    let version = client.version().await.expect("version");
    assert!(!version.version.is_empty());
    let nodes = client.nodes().await.expect("nodes");
    assert_eq!(
        nodes.iter().map(|n| n.node.as_str()).collect::<Vec<_>>(),
        [NODE]
    );
    let status = client.node_status(NODE).await.expect("node status");
    assert!(
        status.uptime.is_some() || !status.extra.is_empty(),
        "{status:?}"
    );
    let resources = client
        .cluster_resources(Some(ResourceType::Node))
        .await
        .expect("resources");
    assert!(resources.iter().all(|r| r.resource_type == "node"));
    let vmid = client.next_id().await.expect("nextid");
    assert!(vmid >= 100, "{vmid}");
    let tasks = client
        .tasks(
            NODE,
            &TaskFilter {
                limit: Some(10),
                ..TaskFilter::default()
            },
        )
        .await
        .expect("tasks");
    assert!(tasks.iter().all(|t| t.node == NODE), "{tasks:?}");

    // A real task through the raw POST: startall with no VMs succeeds and logs why.
    let upid: String = client
        .post(&format!("/nodes/{NODE}/startall"), &())
        .await
        .expect("startall");
    assert!(upid.starts_with(&format!("UPID:{NODE}:")), "{upid}");
    let done = client
        .wait_task(&upid, 10_000)
        .await
        .expect("wait startall");
    assert!(!done.is_running() && done.succeeded(), "{done:?}");
    let log = client.task_log(&upid, 0, 50).await.expect("task log");
    assert!(log.iter().any(|l| l.t.contains("found 0 VMs")), "{log:?}");
    let tasks = client
        .tasks(NODE, &TaskFilter::default())
        .await
        .expect("tasks after startall");
    assert!(
        tasks
            .iter()
            .any(|t| t.upid == upid && t.task_type == "startall"),
        "{tasks:?}"
    );
    let err = client
        .task_status("not-a-upid")
        .await
        .expect_err("bad upid");
    assert!(matches!(err, ClientError::InvalidUpid { .. }), "{err}");

    // Users: create (a write: CSRF header), read, update, list, and a 400 with its map.
    let userid = "alice@pve";
    client
        .create_user(
            userid,
            &UserSpec {
                comment: Some("first".into()),
                password: Some("alice-password".into()),
                ..UserSpec::default()
            },
        )
        .await
        .expect("create user");
    client
        .update_user(
            userid,
            &UserSpec {
                comment: Some("second".into()),
                ..UserSpec::default()
            },
        )
        .await
        .expect("update user");
    let alice = client.user(userid).await.expect("get user");
    assert_eq!(alice.userid, userid);
    assert_eq!(alice.comment.as_deref(), Some("second"));
    let users = client.users().await.expect("users");
    assert!(users.iter().any(|u| u.userid == userid));
    let err = client
        .create_user("no-realm", &UserSpec::default())
        .await
        .expect_err("invalid userid accepted");
    match &err {
        ClientError::Api { status, errors, .. } => {
            assert_eq!(*status, 400, "{err}");
            assert!(errors.contains_key("userid"), "{err}");
        }
        other => panic!("expected a 400, got {other}"),
    }
    let err = client.user("nobody@pve").await.expect_err("unknown user");
    assert!(err.status().is_some_and(|s| s >= 400), "{err}");

    // Tokens: create, use, list, update, delete; a deleted token is refused with 401.
    let created = client
        .create_token(
            "root@pam",
            "ci",
            &TokenSpec {
                comment: Some("from the test".into()),
                privsep: Some(false),
                ..TokenSpec::default()
            },
        )
        .await
        .expect("create token");
    assert_eq!(created.full_tokenid, "root@pam!ci");
    let token =
        ApiToken::parse(&format!("{}={}", created.full_tokenid, created.value)).expect("token");
    let by_token = Client::builder(&server.url)
        .fingerprint(server.fingerprint)
        .token(token)
        .build()
        .expect("token client");
    assert_eq!(by_token.nodes().await.expect("nodes by token").len(), 1);
    let tokens = client.tokens("root@pam").await.expect("tokens");
    assert!(tokens.iter().any(|t| t.tokenid == "ci"));
    client
        .update_token(
            "root@pam",
            "ci",
            &TokenSpec {
                comment: Some("changed".into()),
                ..TokenSpec::default()
            },
        )
        .await
        .expect("update token");
    let info = client.token("root@pam", "ci").await.expect("token info");
    assert_eq!(info.comment.as_deref(), Some("changed"));
    client
        .delete_token("root@pam", "ci")
        .await
        .expect("delete token");
    let err = by_token.nodes().await.expect_err("deleted token accepted");
    assert!(err.is_unauthorized(), "{err}");

    client.delete_user(userid).await.expect("delete user");
    assert!(client.user(userid).await.is_err());

    // Without credentials the server answers 401.
    let anonymous = Client::builder(&server.url)
        .fingerprint(server.fingerprint)
        .build()
        .expect("anonymous client");
    assert!(
        anonymous
            .nodes()
            .await
            .expect_err("anonymous")
            .is_unauthorized()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_renew_before_expiry_and_token_login_works_in_gpvectl() {
    let server = Server::start();
    let client = server.client().await;
    let Some(Auth::Ticket(first)) = client.auth().await else {
        panic!("no ticket after login");
    };
    // A session resumed with a ticket issued an hour ago renews it before the next call.
    let old = gpve_api::client::TicketAuth {
        issued_unix_s: first.issued_unix_s.saturating_sub(3_600),
        ..first.clone()
    };
    let resumed = Client::builder(&server.url)
        .fingerprint(server.fingerprint)
        .ticket(old.clone())
        .build()
        .expect("resumed client");
    resumed.nodes().await.expect("nodes with renewal");
    let Some(Auth::Ticket(renewed)) = resumed.auth().await else {
        panic!("ticket lost");
    };
    assert!(
        renewed.issued_unix_s > old.issued_unix_s,
        "ticket not renewed"
    );
    assert_eq!(renewed.username, "root@pam");
    // The renewed ticket (and its CSRF token) work for writes.
    resumed
        .create_user("bob@pve", &UserSpec::default())
        .await
        .expect("write with renewed ticket");

    // Explicit renewal too.
    let again = client.renew_ticket().await.expect("renew");
    assert_eq!(again.username, "root@pam");

    // gpvectl with an API token.
    let created = client
        .create_token(
            "root@pam",
            "cli",
            &TokenSpec {
                privsep: Some(false),
                ..TokenSpec::default()
            },
        )
        .await
        .expect("create token");
    let token = format!("{}={}", created.full_tokenid, created.value);
    let fp = server.fingerprint.to_string();
    let out = server.ctl(
        &[
            "login",
            "--server",
            &server.url,
            "--token",
            &token,
            "--fingerprint",
            &fp,
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains(&created.value), "secret echoed");
    let nodes = json_of(&server.ctl(&["get", "nodes", "-o", "json"], ""));
    assert_eq!(nodes[0]["node"], NODE);
    // A task made through the library shows in `gpvectl get tasks`.
    let upid: String = client
        .post(&format!("/nodes/{NODE}/startall"), &())
        .await
        .expect("startall");
    client
        .wait_task(&upid, 10_000)
        .await
        .expect("wait startall");
    let out = server.ctl(&["get", "tasks"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table.starts_with("NODE") && table.contains(&upid),
        "{table}"
    );
    let row = table.lines().find(|l| l.contains(&upid)).expect("task row");
    assert!(row.contains("startall") && row.contains("OK"), "{row}");
    let users = json_of(&server.ctl(&["get", "users", "-o", "json"], ""));
    assert!(
        users
            .as_array()
            .expect("users")
            .iter()
            .any(|u| u["userid"] == "bob@pve"),
        "{users}"
    );
}
