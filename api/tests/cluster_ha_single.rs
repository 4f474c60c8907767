//! HA on a single node with real QEMU (TCG) behind the real server binary: an HA resource
//! starts its VM; each time the node's VM supervisor gives up on a crash-looping VM
//! (restart intensity exceeded), the HA manager restarts it on its node, up to
//! `max_restart`, then (no other node to relocate to) leaves it in `error`. Every step is
//! read from `/cluster/ha/status/current`.

#[path = "gpvectl_common/mod.rs"]
mod gpvectl_common;
mod vm_common;

use std::time::Duration;

use gpvectl_common::{ctl, login_root, ok};
use serde_json::Value;
use vm_common::*;

/// The VM supervisor's restart intensity: this many crashes are restarted locally, the
/// next one escalates to HA (`gpve_actors::vm::VM_MAX_RESTARTS`).
const LOCAL_RESTARTS: u32 = gpve_actors::vm::VM_MAX_RESTARTS;

async fn service(api: &Api, sid: &str) -> Value {
    let (code, body) = api.get("/cluster/ha/status/current").await;
    assert_eq!(code, 200, "{body}");
    body["data"]
        .as_array()
        .expect("list")
        .iter()
        .find(|e| e["sid"] == sid)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn wait_service(api: &Api, sid: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = service(api, sid).await;
        if ok(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "HA service {sid} never became {what}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The running QEMU's pid once it differs from `old`.
async fn running_pid(api: &Api, vmid: u32, old: Option<u64>) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = api.status(vmid).await;
        if let Some(pid) = s["pid"].as_u64()
            && Some(pid) != old
            && s["status"] == "running"
            && alive(pid)
        {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "VM {vmid} is not running with a new QEMU: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kill9(pid: u64) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 QEMU");
}

/// Crash the VM until its node's supervisor gives up: `LOCAL_RESTARTS` crashes are
/// restarted locally, the last one escalates. Returns the last pid killed.
async fn crash_until_escalated(api: &Api, vmid: u32, mut pid: u64) -> u64 {
    for _ in 0..LOCAL_RESTARTS {
        kill9(pid);
        pid = running_pid(api, vmid, Some(pid)).await;
    }
    kill9(pid);
    pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_restarts_on_its_node_up_to_max_restart_then_error() {
    let g = guest().await;
    let env = Env::new().await;
    let srv = Server::start(&env).await;
    let api = srv.api.clone();
    let q = format!("/nodes/{NODE}/qemu");
    let args = guest_args(&g);
    let (code, body) = api
        .post(
            &q,
            &[
                ("vmid", "100"),
                ("name", "ha1"),
                ("memory", "128"),
                ("kvm", "0"),
                ("serial0", "socket"),
                ("args", &args),
            ],
        )
        .await;
    assert_eq!(code, 200, "create: {body}");
    assert_eq!(
        api.wait_task(body["data"].as_str().expect("upid")).await,
        "OK"
    );

    // Bad input first: unknown VM, container ids, bad group, duplicate.
    let (code, body) = api
        .post("/cluster/ha/resources", &[("sid", "vm:999")])
        .await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = api
        .post("/cluster/ha/resources", &[("sid", "ct:100")])
        .await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = api
        .post(
            "/cluster/ha/resources",
            &[("sid", "vm:100"), ("group", "nope")],
        )
        .await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = api
        .post(
            "/cluster/ha/groups",
            &[("group", "g1"), ("nodes", &format!("{NODE}:2"))],
        )
        .await;
    assert_eq!(code, 200, "{body}");

    // The HA resource (state started) starts the stopped VM by itself.
    let (code, body) = api
        .post(
            "/cluster/ha/resources",
            &[
                ("sid", "vm:100"),
                ("max_restart", "1"),
                ("max_relocate", "1"),
                ("group", "g1"),
                ("comment", "ha test"),
            ],
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = api
        .post("/cluster/ha/resources", &[("sid", "vm:100")])
        .await;
    assert_eq!(code, 400, "duplicate: {body}");
    let (code, body) = api.get("/cluster/ha/resources/vm:100").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["group"], "g1");
    assert_eq!(body["data"]["max_restart"], 1);
    let (code, body) = api.delete("/cluster/ha/groups/g1").await;
    assert_eq!(code, 400, "a group in use is not deleted: {body}");
    let mut pid = running_pid(&api, 100, None).await;
    let s = wait_service(&api, "vm:100", "started", |s| s["state"] == "started").await;
    assert_eq!(s["node"], NODE, "{s}");
    assert_eq!(s["restarts"], 0, "{s}");
    let generation = s["generation"].as_u64().expect("generation");

    // Local restarts are the node's; the escalation after them is HA's first restart.
    pid = crash_until_escalated(&api, 100, pid).await;
    pid = running_pid(&api, 100, Some(pid)).await;
    let s = wait_service(&api, "vm:100", "restarted once", |s| s["restarts"] == 1).await;
    assert_eq!(s["state"], "started", "{s}");
    assert!(s["generation"].as_u64().unwrap() > generation, "{s}");
    assert_eq!(s["node"], NODE);

    // Out of restarts, and relocation has no other node: error, and the VM stays down.
    crash_until_escalated(&api, 100, pid).await;
    let s = wait_service(&api, "vm:100", "error", |s| s["state"] == "error").await;
    let why = s["last_error"].as_str().unwrap_or_default();
    assert!(why.contains(&format!("{NODE}: excluded")), "{s}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let st = api.status(100).await;
    if let Some(p) = st["pid"].as_u64() {
        assert!(!alive(p), "QEMU {p} runs although HA gave up: {st}");
    }

    // disabled clears the error; started again starts it.
    let (code, body) = api
        .put("/cluster/ha/resources/vm:100", &[("state", "disabled")])
        .await;
    assert_eq!(code, 200, "{body}");
    wait_service(&api, "vm:100", "disabled", |s| s["state"] == "disabled").await;
    let (code, body) = api
        .put("/cluster/ha/resources/vm:100", &[("state", "started")])
        .await;
    assert_eq!(code, 200, "{body}");
    running_pid(&api, 100, None).await;
    let s = wait_service(&api, "vm:100", "started", |s| s["state"] == "started").await;
    assert_eq!(s["restarts"], 0, "{s}");

    // gpvectl shows it, and removing it leaves the VM running, unmanaged.
    let url = api.base.trim_end_matches("/api2/json").to_string();
    let fp = gpve_api::client::Fingerprint::of_pem_file(&env.data().join("cert.pem"))
        .expect("fingerprint");
    let config = env.data().join("gpvectl.yaml");
    login_root(&config, &url, &fp.to_string(), ROOT_PW);
    let table = ok(&ctl(&config, &["ha", "status"], ""));
    assert!(
        table.contains("vm:100") && table.contains("started"),
        "{table}"
    );
    ok(&ctl(&config, &["ha", "remove", "100"], ""));
    let (code, body) = api.get("/cluster/ha/resources").await;
    assert_eq!(code, 200);
    assert_eq!(body["data"], serde_json::json!([]), "{body}");
    assert_eq!(api.status(100).await["status"], "running");
    api.task_ok(&format!("{q}/100/status/stop"), &[]).await;
    srv.stop();
}
