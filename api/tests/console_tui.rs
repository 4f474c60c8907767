//! `gpvectl console` as a user sees it: the real binary in a tmux pane against a real
//! server (in-process, so the test can grow the tree and restart the server on the same
//! port), read back with `tmux capture-pane`.
//!
//! Proves: the tree and its actors appear; an actor restarted through the API shows its
//! new restart count on screen within seconds (detail pane, event pane); the `/` filter
//! finds one actor among 1,000 and keys stay responsive at that size; a server restart
//! shows "disconnected, retrying" and recovers; `q` exits with status 0.
//!
//! Needs tmux (`apt-get install -y tmux`); without it the test says so and passes.

mod server_common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use gpve_api::client::{Client, Fingerprint};
use gpve_api::server::{ServeOptions, start};
use gpve_supervisor::{ChildSpec, RestartPolicy, SupervisorHandle};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use server_common::*;

const SCREEN_WAIT_MS: u64 = 15_000;
const IDLE_ACTORS: usize = 1_000;
/// A key press must show on screen within this, even with 1,000 actors.
const KEY_RESPONSE_MAX_MS: u128 = 2_000;
/// Tree reads timed at 1,000 actors.
const TREE_READS: u128 = 20;

struct Tmux {
    socket: String,
    dir: PathBuf,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    fn screen(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-t", "console"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "console"];
        args.extend_from_slice(keys);
        let out = self.run(&args);
        assert!(out.status.success(), "send-keys {keys:?} failed");
    }

    fn alive(&self) -> bool {
        self.run(&["has-session", "-t", "console"]).status.success()
    }

    async fn wait_for(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_millis(SCREEN_WAIT_MS);
        loop {
            let screen = self.screen();
            if check(&screen) {
                return screen;
            }
            if Instant::now() > deadline {
                panic!("screen never showed {what}; last screen:\n{screen}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn exit_code(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("exit_code"))
            .ok()
            .map(|s| s.trim().to_string())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The value after `label` on the screen line holding it (the detail pane).
fn field(screen: &str, label: &str) -> Option<String> {
    screen.lines().find_map(|l| {
        let rest = &l[l.find(label)? + label.len()..];
        rest.split_whitespace().next().map(str::to_string)
    })
}

fn gpvectl_login(config: &Path, url: &str, fp: &Fingerprint) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpvectl"))
        .args([
            "login",
            "--server",
            url,
            "--user",
            "root@pam",
            "--password-stdin",
        ])
        .args(["--fingerprint", &fp.to_string()])
        .env("GPVE_CONFIG", config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gpvectl login");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(format!("{ROOT_PW}\n").as_bytes());
    }
    let out = child.wait_with_output().expect("login output");
    assert!(
        out.status.success(),
        "login failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A do-nothing supervised actor, to grow the tree.
struct Idle;

/// Idle's message: it takes none (a unit struct, as ractor's `cluster` feature has no
/// `Message` impl for `()`).
struct Nothing;

impl ractor::Message for Nothing {}

impl Actor for Idle {
    type Msg = Nothing;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _me: ActorRef<Nothing>, _args: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_tmux_shows_tree_restarts_filter_reconnect_and_quits() {
    if Command::new("tmux").arg("-V").output().is_err() {
        println!("SKIPPED: tmux is not installed (apt-get install -y tmux)");
        return;
    }
    let mut s = TestServer::start().await;
    let addr = s.running().addr;
    let data = data_path(&s.dir);
    let fp = Fingerprint::of_pem_file(&data.join("cert.pem")).expect("fingerprint");
    let url = format!("https://127.0.0.1:{}", addr.port());
    let work = tempfile::tempdir().expect("tempdir");
    let config = work.path().join("gpvectl.yaml");
    gpvectl_login(&config, &url, &fp);

    let tmux = Tmux {
        socket: format!("gpve-console-test-{}", std::process::id()),
        dir: work.path().to_path_buf(),
    };
    let command = format!(
        "GPVE_CONFIG='{}' '{}' console; echo $? > '{}'",
        config.display(),
        env!("CARGO_BIN_EXE_gpvectl"),
        work.path().join("exit_code").display()
    );
    let out = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "console",
        "-x",
        "160",
        "-y",
        "50",
        &command,
    ]);
    assert!(
        out.status.success(),
        "tmux new-session: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The tree with its actors.
    let screen = tmux
        .wait_for("the tree", |s| {
            s.contains("connected")
                && s.contains("node n1")
                && s.contains("gpve-server")
                && s.contains("store")
                && s.contains("node:n1")
                && s.contains("api")
        })
        .await;
    assert!(
        screen.contains("ACTOR") && screen.contains("RESTARTS"),
        "{screen}"
    );

    // Select the store actor with the filter; its detail shows 0 restarts.
    tmux.keys(&["/"]);
    tmux.keys(&["-l", "store"]);
    tmux.keys(&["Enter"]);
    let screen = tmux
        .wait_for("the store's detail", |s| {
            s.contains("gpve-server/store") && field(s, "Restarts:").as_deref() == Some("0")
        })
        .await;
    assert!(
        !screen.contains("node:n1 "),
        "the filter hides other actors:\n{screen}"
    );

    // Restart it through the API: the count changes on screen within seconds.
    let client = Client::builder(&url)
        .fingerprint(fp)
        .build()
        .expect("client");
    client.login("root@pam", ROOT_PW).await.expect("login");
    client
        .restart_actor("gpve-server/store")
        .await
        .expect("restart via API");
    let screen = tmux
        .wait_for("restarts 1 for the store", |s| {
            field(s, "Restarts:").as_deref() == Some("1")
                && s.contains("gpve-server/store restarted (restarts=1)")
        })
        .await;
    assert!(
        screen.contains("restart requested by root@pam"),
        "the reason shows in the detail pane:\n{screen}"
    );

    // 1,000 more actors: the filter finds one and keys stay responsive.
    tmux.keys(&["Escape"]);
    let cluster =
        SupervisorHandle::lookup(&s.running().directory, "gpve-server/cluster").expect("cluster");
    for i in 0..IDLE_ACTORS {
        cluster
            .add_child(ChildSpec::actor(
                format!("idle:{i:04}"),
                "idle",
                RestartPolicy::Permanent,
                |_ctx| (Idle, ()),
            ))
            .await
            .expect("add idle actor");
    }
    let total = s.running().directory.snapshot().len();
    assert!(total > IDLE_ACTORS);
    // What the console asks for every refresh, at this size.
    let timer = Instant::now();
    for _ in 0..TREE_READS {
        let list = client.actors(None).await.expect("tree");
        assert_eq!(list.nodes[0].count, total);
    }
    println!(
        "GET /api/v1/actors with {total} actors: {} ms per call (mean of {TREE_READS})",
        timer.elapsed().as_millis() / TREE_READS
    );
    tmux.wait_for("the grown tree", |s| {
        s.contains(&format!("actors: {total}"))
    })
    .await;
    let pressed = Instant::now();
    tmux.keys(&["s"]);
    tmux.wait_for("sorting by restarts", |s| s.contains("sort: restarts"))
        .await;
    let key_ms = pressed.elapsed().as_millis();
    assert!(
        key_ms < KEY_RESPONSE_MAX_MS,
        "a key took {key_ms} ms with {total} actors"
    );
    println!("key-to-screen with {total} actors: {key_ms} ms");
    tmux.keys(&["t", "/"]);
    tmux.keys(&["-l", "idle:0999"]);
    tmux.keys(&["Enter"]);
    tmux.wait_for("the filtered idle actor", |s| {
        s.contains("gpve-server/cluster/idle:0999") && s.contains("filter: idle:0999")
    })
    .await;
    tmux.keys(&["Escape"]);

    // Server restart on the same port: "disconnected, retrying", then recovery.
    if let Some(server) = s.server.take() {
        server.shutdown().await;
    }
    tmux.wait_for("the disconnection", |s| {
        s.contains("disconnected, retrying")
    })
    .await;
    let server = start(ServeOptions {
        data_dir: data.clone(),
        listen: addr,
        login_failure_delay_ms: LOGIN_DELAY_MS,
    })
    .await
    .expect("server restart on the same port");
    let fresh_total = server.directory.snapshot().len();
    s.server = Some(server);
    let screen = tmux
        .wait_for("the reconnection", |s| {
            s.contains("connected")
                && !s.contains("disconnected")
                && s.contains(&format!("actors: {fresh_total} "))
        })
        .await;
    assert!(screen.contains("store"), "{screen}");

    // q quits with status 0.
    tmux.keys(&["q"]);
    let deadline = Instant::now() + Duration::from_millis(SCREEN_WAIT_MS);
    while tmux.exit_code().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        tmux.exit_code().as_deref(),
        Some("0"),
        "gpvectl console exit status"
    );
    let deadline = Instant::now() + Duration::from_millis(SCREEN_WAIT_MS);
    while tmux.alive() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!tmux.alive(), "the pane closes when the console exits");
    s.stop().await;
}
