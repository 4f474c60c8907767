//! The declarative VM API (`/api/v1/namespaces/{ns}/virtualmachines`) and `gpvectl apply`
//! against the real `gpve-server` binary, its redb store and real QEMU: a manifest with
//! `running: true` boots the test guest (ready marker checked), applying twice changes
//! nothing, a memory change of the running VM is pending, delete removes VM, QEMU and
//! disks; bad manifests are refused by JSON path and leave nothing; names collide with 409.

mod gpvectl_common;
mod vm_common;

use gpvectl_common::{ctl, login_root, ok};

use gpve_api::client::Fingerprint;
use reqwest::Method;
use serde_json::{Value, json};
use vm_common::*;

async fn login(env: &Env, srv: &Server) -> std::path::PathBuf {
    let url = srv.api.base.trim_end_matches("/api2/json").to_string();
    let fp = Fingerprint::of_pem_file(&env.data().join("cert.pem")).expect("fingerprint");
    let config = env.dir.path().join("gpvectl.yaml");
    login_root(&config, &url, &fp.to_string(), ROOT_PW);
    config
}

/// A request to `/api/v1` with a JSON body; (status, body).
async fn v1(api: &Api, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
    let base = api.base.replace("/api2/json", "/api/v1");
    let mut req = api
        .client
        .request(method, format!("{base}{path}"))
        .header("Cookie", format!("PVEAuthCookie={}", api.ticket))
        .header("CSRFPreventionToken", &api.csrf);
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

const VMS: &str = "/namespaces/default/virtualmachines";

fn small(name: &str) -> Value {
    json!({
        "apiVersion": "gpve.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "labels": {"app": "test"}},
        "spec": {
            "cpu": {"cores": 1},
            "memory": "64Mi",
            "disks": [{"name": "root", "storage": "local", "size": "1Gi"}],
            "running": false,
            "proxmox": {"kvm": 0}
        }
    })
}

fn write_yaml(env: &Env, file: &str, docs: &[Value]) -> std::path::PathBuf {
    let text: Vec<String> = docs
        .iter()
        .map(|d| serde_yaml::to_string(d).expect("yaml"))
        .collect();
    let path = env.dir.path().join(file);
    std::fs::write(&path, text.join("---\n")).expect("write manifest");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_boots_is_idempotent_updates_pending_and_deletes() {
    let g = guest().await;
    let env = Env::new().await;
    let srv = Server::start(&env).await;
    let config = login(&env, &srv).await;
    let api = &srv.api;

    let mut manifest = json!({
        "apiVersion": "gpve.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "decl1", "labels": {"app": "web"}},
        "spec": {
            "cpu": {"cores": 1, "sockets": 1},
            "memory": "128Mi",
            "disks": [{"name": "root", "storage": "local", "size": "1Gi"}],
            "networks": [],
            "running": true,
            "proxmox": {"kvm": 0, "serial0": "socket", "args": guest_args(&g)}
        }
    });
    let file = write_yaml(&env, "decl1.yaml", &[manifest.clone()]);
    let file = file.to_str().expect("path");
    let out = ok(&ctl(&config, &["apply", "-f", file], ""));
    assert!(
        out.contains("virtualmachine.gpve.io/decl1 created"),
        "{out}"
    );

    let (code, vm) = v1(api, Method::GET, &format!("{VMS}/decl1"), None).await;
    assert_eq!(code, 200, "{vm}");
    let vm = &vm["data"];
    let vmid = vm["status"]["vmid"].as_u64().expect("vmid") as u32;
    assert_eq!(vm["status"]["phase"], "Running", "{vm}");
    assert_eq!(vm["status"]["node"], NODE);
    assert_eq!(vm["spec"]["memory"], "128Mi");
    assert_eq!(vm["spec"]["disks"][0]["size"], "1Gi");
    assert_eq!(vm["metadata"]["labels"]["app"], "web");
    // No test passes on a VM that never booted.
    wait_ready(&env, vmid).await;

    // The Proxmox API sees the same VM.
    let status = api.status(vmid).await;
    assert_eq!(status["name"], "decl1");
    assert_eq!(status["qmpstatus"], "running");
    let pid = status["pid"].as_u64().expect("pid");

    // Applying the same file again changes nothing.
    let (_, before) = api.get(&format!("/nodes/{NODE}/qemu/{vmid}/config")).await;
    let out = ok(&ctl(&config, &["apply", "-f", file], ""));
    assert!(
        out.contains("virtualmachine.gpve.io/decl1 unchanged"),
        "{out}"
    );
    let (_, after) = api.get(&format!("/nodes/{NODE}/qemu/{vmid}/config")).await;
    assert_eq!(before["data"]["digest"], after["data"]["digest"]);
    assert_eq!(api.status(vmid).await["pid"].as_u64(), Some(pid));

    // More memory for a running VM: pending until the next start, VM untouched.
    manifest["spec"]["memory"] = json!("256Mi");
    let file2 = write_yaml(&env, "decl1b.yaml", &[manifest.clone()]);
    let file2 = file2.to_str().expect("path");
    let out = ok(&ctl(&config, &["apply", "-f", file2], ""));
    assert!(
        out.contains("virtualmachine.gpve.io/decl1 configured"),
        "{out}"
    );
    let (_, vm) = v1(api, Method::GET, &format!("{VMS}/decl1"), None).await;
    assert_eq!(vm["data"]["spec"]["memory"], "256Mi");
    assert_eq!(
        vm["data"]["status"]["pendingChanges"],
        json!(["spec.memory"]),
        "{vm}"
    );
    let (_, pending) = api.get(&format!("/nodes/{NODE}/qemu/{vmid}/pending")).await;
    let memory = pending["data"]
        .as_array()
        .expect("pending list")
        .iter()
        .find(|i| i["key"] == "memory")
        .cloned()
        .expect("memory row");
    assert_eq!(memory["value"], "128");
    assert_eq!(memory["pending"], "256");
    let status = api.status(vmid).await;
    assert_eq!(status["pid"].as_u64(), Some(pid));
    assert_eq!(status["qmpstatus"], "running");
    let out = ok(&ctl(&config, &["apply", "-f", file2], ""));
    assert!(out.contains("decl1 unchanged"), "{out}");

    // `vm get -o yaml` prints the manifest, and it applies as-is.
    let yaml = ok(&ctl(&config, &["vm", "get", "decl1", "-o", "yaml"], ""));
    let printed: Value = serde_yaml::from_str(&yaml).expect("yaml manifest");
    assert_eq!(printed["kind"], "VirtualMachine");
    assert_eq!(printed["spec"]["memory"], "256Mi");
    assert_eq!(printed["status"]["vmid"], vmid);
    let out = ok(&ctl(&config, &["apply", "-f", "-"], &yaml));
    assert!(out.contains("decl1 unchanged"), "{out}");

    // Delete stops the VM and destroys it with its disks.
    assert!(!env.images(vmid).is_empty());
    let (code, gone) = v1(api, Method::DELETE, &format!("{VMS}/decl1"), None).await;
    assert_eq!(code, 200, "{gone}");
    assert_eq!(gone["data"]["status"]["phase"], "Terminating");
    let upid = gone["data"]["status"]["task"].as_str().expect("task");
    assert_eq!(api.wait_task(upid).await, "OK");
    let (code, _) = v1(api, Method::GET, &format!("{VMS}/decl1"), None).await;
    assert_eq!(code, 404);
    let (code, _) = api
        .get(&format!("/nodes/{NODE}/qemu/{vmid}/status/current"))
        .await;
    assert_eq!(code, 404);
    // QEMU is not the server's child: init reaps it shortly after it exits.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    while alive(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "QEMU {pid} still runs after delete"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(env.images(vmid).is_empty(), "{:?}", env.images(vmid));
    srv.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_are_refused_by_path_and_names_collide() {
    let env = Env::new().await;
    let srv = Server::start(&env).await;
    let config = login(&env, &srv).await;
    let api = &srv.api;
    let vm_count = || async {
        let (_, list) = api.get(&format!("/nodes/{NODE}/qemu")).await;
        list["data"].as_array().map(Vec::len).unwrap_or(0)
    };

    // Unknown field, named by its path.
    let mut bad = small("bad1");
    bad["spec"]["disks"][0]["sizee"] = json!("4Gi");
    let (code, body) = v1(api, Method::POST, VMS, Some(&bad)).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["errors"]["spec.disks[0].sizee"]
            .as_str()
            .is_some_and(|e| e.contains("unknown field")),
        "{body}"
    );
    // A bad quantity, named with its value.
    let mut bad = small("bad2");
    bad["spec"]["memory"] = json!("1Gx");
    let (code, body) = v1(api, Method::POST, VMS, Some(&bad)).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["errors"]["spec.memory"]
            .as_str()
            .is_some_and(|e| e.contains("'1Gx'")),
        "{body}"
    );
    // A storage that does not exist: refused by path before anything is made.
    let mut bad = small("bad3");
    bad["spec"]["disks"][0]["storage"] = json!("nosuch");
    let (code, body) = v1(api, Method::POST, VMS, Some(&bad)).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["errors"]["spec.disks[0]"]
            .as_str()
            .is_some_and(|e| e.contains("does not exist")),
        "{body}"
    );
    // gpvectl checks every document before sending any.
    let file = write_yaml(
        &env,
        "mixed.yaml",
        &[small("good0"), {
            let mut b = small("bad4");
            b["spec"]["cpus"] = json!(2);
            b
        }],
    );
    let out = ctl(&config, &["apply", "-f", file.to_str().expect("path")], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("manifest 2 (bad4)"), "{err}");
    assert!(err.contains("spec.cpus: unknown field"), "{err}");
    assert!(err.contains("nothing was applied"), "{err}");
    assert_eq!(vm_count().await, 0, "a refused manifest left a VM behind");

    // Create, then a second create of the name is 409.
    let (code, created) = v1(api, Method::POST, VMS, Some(&small("c1"))).await;
    assert_eq!(code, 201, "{created}");
    let upid = created["data"]["status"]["task"].as_str().expect("task");
    assert_eq!(api.wait_task(upid).await, "OK");
    let (code, body) = v1(api, Method::POST, VMS, Some(&small("c1"))).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("already exists")),
        "{body}"
    );
    // Two parallel creates of one name: exactly one wins.
    let race = small("race");
    let (a, b) = tokio::join!(
        v1(api, Method::POST, VMS, Some(&race)),
        v1(api, Method::POST, VMS, Some(&race))
    );
    let mut codes = [a.0, b.0];
    codes.sort_unstable();
    assert_eq!(codes, [201, 409], "{a:?} {b:?}");
    for (code, body) in [a, b] {
        if code == 201 {
            let upid = body["data"]["status"]["task"].as_str().expect("task");
            assert_eq!(api.wait_task(upid).await, "OK");
        }
    }

    // PUT creates a missing VM (kubectl apply semantics); the URL names it.
    let (code, body) = v1(api, Method::PUT, &format!("{VMS}/c2"), Some(&small("c2"))).await;
    assert_eq!(code, 201, "{body}");
    let upid = body["data"]["status"]["task"].as_str().expect("task");
    assert_eq!(api.wait_task(upid).await, "OK");
    let (code, body) = v1(
        api,
        Method::PUT,
        &format!("{VMS}/other"),
        Some(&small("c2")),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body["errors"]["metadata.name"].is_string(), "{body}");
    // An unchanged PUT is a no-op; a label change only touches the labels.
    let (code, body) = v1(api, Method::PUT, &format!("{VMS}/c2"), Some(&small("c2"))).await;
    assert_eq!(code, 200, "{body}");
    assert!(body["data"]["status"]["task"].is_null(), "{body}");
    let mut relabelled = small("c2");
    relabelled["metadata"]["labels"] = json!({"app": "other"});
    let (code, body) = v1(api, Method::PUT, &format!("{VMS}/c2"), Some(&relabelled)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["metadata"]["labels"]["app"], "other");

    // Listing, with a label selector.
    let (code, list) = v1(api, Method::GET, VMS, None).await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["data"]["kind"], "VirtualMachineList");
    assert_eq!(list["data"]["items"].as_array().map(Vec::len), Some(3));
    let (_, list) = v1(
        api,
        Method::GET,
        &format!("{VMS}?labelSelector=app%3Dother"),
        None,
    )
    .await;
    let items = list["data"]["items"].as_array().expect("items");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["metadata"]["name"], "c2");
    // Another namespace is separate.
    let (_, list) = v1(
        api,
        Method::GET,
        "/namespaces/staging/virtualmachines",
        None,
    )
    .await;
    assert_eq!(list["data"]["items"], json!([]));
    let (code, _) = v1(api, Method::GET, "/namespaces/Bad_NS/virtualmachines", None).await;
    assert_eq!(code, 400);

    // Missing names are 404.
    let (code, _) = v1(api, Method::GET, &format!("{VMS}/nosuch"), None).await;
    assert_eq!(code, 404);
    let (code, _) = v1(api, Method::DELETE, &format!("{VMS}/nosuch"), None).await;
    assert_eq!(code, 404);

    // A VM deleted through the Proxmox API leaves the namespace too.
    let (_, c2) = v1(api, Method::GET, &format!("{VMS}/c2"), None).await;
    let vmid = c2["data"]["status"]["vmid"].as_u64().expect("vmid");
    let (code, body) = api.delete(&format!("/nodes/{NODE}/qemu/{vmid}")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        api.wait_task(body["data"].as_str().expect("upid")).await,
        "OK"
    );
    let (code, _) = v1(api, Method::GET, &format!("{VMS}/c2"), None).await;
    assert_eq!(code, 404);
    // ...and its name can be used again.
    let (code, body) = v1(api, Method::POST, VMS, Some(&small("c2"))).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(
        api.wait_task(body["data"]["status"]["task"].as_str().expect("task"))
            .await,
        "OK"
    );
    srv.stop();
}
