//! The gRPC watch stream against the real server binary (HTTPS port 8006-style listener,
//! HTTP/2) with real QEMU: a root watcher sees the initial list, then VM create / start /
//! stop / delete and every task's start and end, in commit order; a user without rights
//! sees nothing until an ACL grants VM.Audit on one VM (the stream re-checks privileges
//! when access changes); bad credentials are refused with 401 and a deleted token ends its
//! stream with 401; `gpvectl vm list -w` and
//! `gpvectl get tasks -w -o json` print one line per change.

mod gpvectl_common;
mod vm_common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use gpve_api::client::watch::{WatchAction, WatchEvent, WatchKind, WatchOptions, WatchStream};
use gpve_api::client::{ApiToken, Client, Fingerprint};
use vm_common::*;

const EVENT_TIMEOUT_MS: u64 = 120_000;

fn fingerprint(env: &Env) -> Fingerprint {
    Fingerprint::of_pem_file(&env.data().join("cert.pem")).expect("fingerprint")
}

fn server_url(api: &Api) -> String {
    api.base.trim_end_matches("/api2/json").to_string()
}

async fn client(env: &Env, api: &Api, user: &str, pw: &str) -> Client {
    let c = Client::builder(server_url(api))
        .fingerprint(fingerprint(env))
        .build()
        .expect("client");
    c.login(user, pw).await.expect("login");
    c
}

async fn next(stream: &mut WatchStream) -> WatchEvent {
    tokio::time::timeout(Duration::from_millis(EVENT_TIMEOUT_MS), stream.next())
        .await
        .expect("an event in time")
        .expect("the stream is open")
        .expect("an event, not an error")
}

/// Events until (and including) the first that `done` accepts.
async fn until(stream: &mut WatchStream, done: impl Fn(&WatchEvent) -> bool) -> Vec<WatchEvent> {
    let mut seen = Vec::new();
    loop {
        let e = next(stream).await;
        let stop = done(&e);
        seen.push(e);
        if stop {
            return seen;
        }
    }
}

async fn nothing_within(stream: &mut WatchStream, ms: u64) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(ms), stream.next()).await {
        panic!("expected no event, got {item:?}");
    }
}

fn position(events: &[WatchEvent], pred: impl Fn(&WatchEvent) -> bool) -> usize {
    events
        .iter()
        .position(pred)
        .unwrap_or_else(|| panic!("event missing from {events:#?}"))
}

async fn create_vm(api: &Api, vmid: u32, name: &str, args: &str) {
    let vmid = vmid.to_string();
    api.task_ok(
        &format!("/nodes/{NODE}/qemu"),
        &[
            ("vmid", vmid.as_str()),
            ("name", name),
            ("memory", "128"),
            ("cores", "1"),
            ("kvm", "0"),
            ("serial0", "socket"),
            ("args", args),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_vm_and_task_events_in_order_and_only_what_rbac_allows() {
    let g = guest().await;
    let env = Env::new().await;
    let srv = Server::start(&env).await;
    let api = srv.api.clone();
    let q = format!("/nodes/{NODE}/qemu");

    let (code, body) = api
        .post(
            "/access/users",
            &[("userid", "alice@pve"), ("password", "alice-pw")],
        )
        .await;
    assert_eq!(code, 200, "{body}");

    let root = client(&env, &api, "root@pam", ROOT_PW).await;
    let alice = client(&env, &api, "alice@pve", "alice-pw").await;

    // Bad credentials are refused before any event.
    let bad = Client::builder(server_url(&api))
        .fingerprint(fingerprint(&env))
        .token(ApiToken::parse("root@pam!nope=not-the-secret").expect("token syntax"))
        .build()
        .expect("client");
    let err = match bad.watch(&WatchOptions::default()).await {
        Ok(_) => panic!("a bad token was accepted"),
        Err(e) => e,
    };
    assert_eq!(err.status(), Some(401), "{err}");

    // The initial list: root sees the node; alice (no privileges) sees nothing.
    let mut rw = root
        .watch(&WatchOptions::default().initial())
        .await
        .expect("root watch");
    let initial = until(&mut rw, |e| e.action == WatchAction::Synced).await;
    assert_eq!(initial.len(), 2, "{initial:#?}");
    assert_eq!(
        (initial[0].kind, initial[0].action, initial[0].id.as_str()),
        (Some(WatchKind::Node), WatchAction::Added, NODE)
    );
    assert_eq!(initial[0].status, "online");
    let mut aw = alice
        .watch(&WatchOptions::default().initial())
        .await
        .expect("alice watch");
    let a_initial = until(&mut aw, |e| e.action == WatchAction::Synced).await;
    assert_eq!(a_initial.len(), 1, "alice saw {a_initial:#?}");

    // A VM's whole life.
    create_vm(&api, 100, "w1", &guest_args(&g)).await;
    api.task_ok(&format!("{q}/100/status/start"), &[]).await;
    api.task_ok(&format!("{q}/100/status/stop"), &[]).await;
    let (code, body) = api.delete(&format!("{q}/100")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        api.wait_task(body["data"].as_str().expect("upid")).await,
        "OK"
    );

    let mut seen = until(&mut rw, |e| {
        e.kind == Some(WatchKind::Vm) && e.action == WatchAction::Deleted
    })
    .await;
    let deleted = seen.len() - 1;
    // The destroy task ends after the record is gone.
    seen.extend(
        until(&mut rw, |e| {
            e.kind == Some(WatchKind::Task)
                && e.action == WatchAction::Modified
                && e.data["type"] == "qmdestroy"
        })
        .await,
    );
    let vm = |action: WatchAction, status: &'static str| {
        move |e: &WatchEvent| {
            e.kind == Some(WatchKind::Vm)
                && e.id == "100"
                && e.action == action
                && e.status == status
        }
    };
    let added = position(&seen, |e| {
        e.kind == Some(WatchKind::Vm) && e.id == "100" && e.action == WatchAction::Added
    });
    let running = position(&seen, vm(WatchAction::Modified, "running"));
    let stopped =
        running + 1 + position(&seen[running + 1..], vm(WatchAction::Modified, "stopped"));
    assert!(
        added < running && running < stopped && stopped < deleted,
        "VM events out of order: {seen:#?}"
    );
    assert_eq!(seen[added].data["name"], "w1");
    assert_eq!(seen[running].node, NODE);
    // Every task: its start before its end, the end OK; the four operations all appear.
    let mut types = Vec::new();
    for (i, e) in seen.iter().enumerate() {
        if e.kind == Some(WatchKind::Task) && e.action == WatchAction::Added {
            let end = position(&seen, |x| {
                x.kind == Some(WatchKind::Task) && x.id == e.id && x.action == WatchAction::Modified
            });
            assert!(i < end, "task {} ended before it started", e.id);
            assert_eq!(seen[end].status, "OK", "{:?}", seen[end]);
            types.push(e.data["type"].as_str().unwrap_or("").to_string());
        }
    }
    for t in ["qmcreate", "qmstart", "qmstop", "qmdestroy"] {
        assert!(types.iter().any(|x| x == t), "no {t} task in {types:?}");
    }
    // Feed positions only grow.
    let seqs: Vec<u64> = seen.iter().map(|e| e.seq).filter(|s| *s > 0).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // Alice saw none of it.
    nothing_within(&mut aw, 500).await;

    // Granting VM.Audit on /vms/101 shows her that VM, live, but still not root's tasks.
    let (code, body) = api
        .put(
            "/access/acl",
            &[
                ("path", "/vms/101"),
                ("roles", "PVEAuditor"),
                ("users", "alice@pve"),
            ],
        )
        .await;
    assert_eq!(code, 200, "{body}");
    create_vm(&api, 101, "w2", &guest_args(&g)).await;
    let first = next(&mut aw).await;
    assert_eq!(
        (first.kind, first.action, first.id.as_str()),
        (Some(WatchKind::Vm), WatchAction::Added, "101"),
        "{first:?}"
    );
    // Unlocking after the create is her next event; no task ever reaches her.
    let unlocked = next(&mut aw).await;
    assert_eq!(
        (unlocked.kind, unlocked.id.as_str()),
        (Some(WatchKind::Vm), "101")
    );
    nothing_within(&mut aw, 500).await;

    // A stream opened with an API token ends with 401 when the token is deleted.
    let (code, body) = api
        .post("/access/users/root@pam/token/watch1", &[("privsep", "0")])
        .await;
    assert_eq!(code, 200, "{body}");
    let secret = body["data"]["value"].as_str().expect("token secret");
    let by_token = Client::builder(server_url(&api))
        .fingerprint(fingerprint(&env))
        .token(ApiToken::parse(&format!("root@pam!watch1={secret}")).expect("token"))
        .build()
        .expect("client");
    let mut tw = by_token
        .watch(&WatchOptions::default().initial())
        .await
        .expect("token watch");
    until(&mut tw, |e| e.action == WatchAction::Synced).await;
    let (code, body) = api.delete("/access/users/root@pam/token/watch1").await;
    assert_eq!(code, 200, "{body}");
    let end = tokio::time::timeout(Duration::from_millis(EVENT_TIMEOUT_MS), tw.next())
        .await
        .expect("the stream ends in time");
    match end {
        Some(Err(e)) => assert_eq!(e.status(), Some(401), "{e}"),
        other => panic!("expected the stream to end with 401, got {other:?}"),
    }
    drop(srv);
}

/// Reads `child`'s stdout lines on a thread.
fn line_reader(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_line(rx: &std::sync::mpsc::Receiver<String>, what: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_millis(EVENT_TIMEOUT_MS);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if what(&line) => return line,
            Ok(line) => seen.push(line),
            Err(e) => panic!("no matching line ({e}); output so far: {seen:#?}"),
        }
    }
}

struct Spawned(std::process::Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_ctl(
    config: &std::path::Path,
    args: &[&str],
) -> (Spawned, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpvectl"))
        .args(args)
        .env("GPVE_CONFIG", config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn gpvectl");
    let rx = line_reader(child.stdout.take().expect("stdout"));
    (Spawned(child), rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpvectl_watch_prints_changes() {
    let g = guest().await;
    let env = Env::new().await;
    let srv = Server::start(&env).await;
    let api = srv.api.clone();
    let config = env.dir.path().join("gpvectl.toml");
    gpvectl_common::login_root(
        &config,
        &server_url(&api),
        &fingerprint(&env).to_string(),
        ROOT_PW,
    );

    let (_vms, vm_lines) = spawn_ctl(&config, &["vm", "list", "--node", NODE, "-w"]);
    let (_tasks, task_lines) = spawn_ctl(
        &config,
        &["get", "tasks", "--node", NODE, "-w", "-o", "json"],
    );
    // Both print their (empty) list first; the stream is open before that.
    wait_line(&task_lines, |l| l.trim() == "[]");
    tokio::time::sleep(Duration::from_millis(200)).await;

    create_vm(&api, 102, "ctlw", &guest_args(&g)).await;
    let added = wait_line(&vm_lines, |l| l.starts_with("ADDED"));
    let cols: Vec<&str> = added.split_whitespace().collect();
    assert_eq!(&cols[..3], ["ADDED", "102", NODE], "{added}");
    let task_start = wait_line(&task_lines, |l| l.contains("qmcreate"));
    let v: serde_json::Value = serde_json::from_str(&task_start).expect("one JSON object per line");
    assert_eq!(v["kind"], "task");
    assert_eq!(v["action"], "added");
    assert_eq!(v["status"], "running");
    let task_end = wait_line(&task_lines, |l| l.contains("qmcreate"));
    let v: serde_json::Value = serde_json::from_str(&task_end).expect("JSON");
    assert_eq!(
        (v["action"].as_str(), v["status"].as_str()),
        (Some("modified"), Some("OK"))
    );

    api.task_ok(&format!("/nodes/{NODE}/qemu/102/status/start"), &[])
        .await;
    let running = wait_line(&vm_lines, |l| {
        l.starts_with("MODIFIED") && l.contains("running")
    });
    assert!(running.contains("102"), "{running}");
    api.task_ok(&format!("/nodes/{NODE}/qemu/102/status/stop"), &[])
        .await;
    wait_line(&vm_lines, |l| {
        l.starts_with("MODIFIED") && l.contains("stopped")
    });
    drop(srv);
}
