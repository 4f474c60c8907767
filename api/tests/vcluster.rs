//! Virtual clusters against a real server: API, PKI checked with openssl, the kubeconfig
//! with kubectl, a real etcd member with TLS and client-certificate auth, worker VMs and
//! quota through the tenancy module, a supervised control-plane process killed -9, and a
//! delete that leaves nothing behind.
//!
//! No Kubernetes server binary exists on these machines: the control-plane slot is
//! filled by `openssl s_server` (a real process serving HTTPS `/readyz` with the VC's
//! serving certificate) started through a wrapper that reads kube-apiserver's flags.

mod server_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use gpve_api::server::{ServeOptions, start};
use gpve_api::tenancy::{Demand, Quota, ResourceQuota, TenantRecord};
use gpve_api::vcluster::{VcRecord, vc_key};
use serde_json::{Value, json};
use server_common::*;

const TENANT: &str = "acme";

fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

struct Api {
    client: reqwest::Client,
    base: String,
    cookie: String,
    csrf: String,
}

impl Api {
    async fn new(client: reqwest::Client, port: u16) -> Api {
        let b = format!("https://127.0.0.1:{port}/api2/json");
        let (ticket, csrf) = login(&client, &b, "root@pam", ROOT_PW).await;
        Api {
            client,
            base: format!("https://127.0.0.1:{port}/api/v1/tenants/{TENANT}/vclusters"),
            cookie: cookie(&ticket),
            csrf,
        }
    }

    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(m, format!("{}{path}", self.base))
            .header("Cookie", &self.cookie)
            .header("CSRFPreventionToken", &self.csrf)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        send(self.req(reqwest::Method::GET, path)).await
    }

    async fn post(&self, body: &Value) -> (u16, Value) {
        send(self.req(reqwest::Method::POST, "").json(body)).await
    }

    async fn put(&self, name: &str, body: &Value) -> (u16, Value) {
        send(
            self.req(reqwest::Method::PUT, &format!("/{name}"))
                .json(body),
        )
        .await
    }

    async fn delete(&self, name: &str) -> (u16, Value) {
        send(self.req(reqwest::Method::DELETE, &format!("/{name}"))).await
    }

    /// Poll until `cond` holds on the VC's manifest; panics with the last one otherwise.
    async fn wait(&self, name: &str, timeout_ms: u64, cond: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let (s, v) = self.get(&format!("/{name}")).await;
            assert_eq!(s, 200, "{v}");
            if cond(&v["data"]) {
                return v["data"].clone();
            }
            assert!(Instant::now() < deadline, "timed out; last state: {v:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn condition(vc: &Value, kind: &str) -> bool {
    vc["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == kind && c["status"] == "True")
    })
}

fn manifest(name: &str, tier: &str, workers: u64) -> Value {
    json!({
        "apiVersion": "gpve.io/v1", "kind": "VirtualCluster",
        "metadata": {"name": name, "namespace": TENANT},
        "spec": {
            "kubernetesVersion": "1.30",
            "controlPlane": {"tier": tier},
            "workerNodes": {"mode": "private", "count": workers,
                            "resources": {"cpu": 1, "memory": "64Mi", "disk": "1Gi"}},
            "isolationLevel": "L3",
            "scheduling": {"strategy": "spread", "antiAffinity": true}
        }
    })
}

async fn add_tenant(store: &gpve_store::Store, vms: u64) {
    let limit = |n: u64| ResourceQuota {
        limits: Some(n),
        ..ResourceQuota::default()
    };
    let quota = Quota {
        vms: limit(vms),
        vclusters: limit(2),
        ..Quota::default()
    };
    store
        .put_json(
            &gpve_api::tenancy::tenant_key(TENANT),
            &TenantRecord {
                name: TENANT.into(),
                comment: String::new(),
                created_at_s: 0,
                quota,
            },
        )
        .await
        .expect("tenant");
}

async fn usage(store: &gpve_store::Store) -> Demand {
    store
        .get_json::<Demand>(&gpve_api::tenancy::usage_key(TENANT))
        .await
        .expect("usage")
        .unwrap_or_default()
}

fn openssl(args: &[&str]) -> String {
    let o = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn pid_of(vc_dir: &Path, id: &str) -> Option<u32> {
    std::fs::read_to_string(vc_dir.join("run").join(format!("{id}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: u32) -> bool {
    gpve_api::vcluster::process::pid_alive(pid)
}

/// Every process whose command line names `dir` (what a VC started).
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&needle) && alive(pid) {
            out.push(format!("{pid}: {cmd}"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_tier_pki_kubeconfig_workers_quota_and_delete() {
    if !Path::new("/usr/bin/etcd").exists() {
        println!("SKIPPED: /usr/bin/etcd is missing (Debian package etcd-server)");
        return;
    }
    let srv = TestServer::start().await;
    let store = srv.running().state.store.clone();
    add_tenant(&store, 3).await;
    let api = Api::new(srv.client.clone(), srv.running().addr.port()).await;
    let vc_root = data_path(&srv.dir).join("vclusters");

    // Bad input is refused with the supported values, before anything exists.
    let mut bad = manifest("bad", "gold", 1);
    bad["spec"]["kubernetesVersion"] = json!("1.12");
    bad["spec"]["isolationLevel"] = json!("L7");
    bad["spec"]["extra"] = json!(1);
    let (s, v) = api.post(&bad).await;
    assert_eq!(s, 400, "{v}");
    let errs = &v["errors"];
    assert!(
        errs["spec.kubernetesVersion"]
            .as_str()
            .unwrap_or("")
            .contains("1.28, 1.29, 1.30, 1.31"),
        "{v}"
    );
    assert!(
        errs["spec.controlPlane.tier"]
            .as_str()
            .unwrap_or("")
            .contains("dev, standard, ha"),
        "{v}"
    );
    assert!(
        errs["spec.isolationLevel"]
            .as_str()
            .unwrap_or("")
            .contains("L1, L2, L3"),
        "{v}"
    );
    assert!(
        errs["spec.extra"]
            .as_str()
            .unwrap_or("")
            .contains("unknown field"),
        "{v}"
    );

    // Over quota (5 worker VMs, 3 allowed): refused, nothing created.
    let (s, v) = api.post(&manifest("big", "standard", 5)).await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["message"].as_str().unwrap_or("").contains("quota vms"),
        "{v}"
    );
    assert!(
        store
            .get(&vc_key(TENANT, "big"))
            .await
            .expect("get")
            .is_none()
    );
    assert!(!vc_root.join(TENANT).join("big").exists());
    assert_eq!(usage(&store).await, Demand::default());

    // Create: PKI and etcd ready (the benchmark figure), workers created.
    let t0 = Instant::now();
    let (s, v) = api.post(&manifest("prod", "standard", 2)).await;
    assert_eq!(s, 201, "{v}");
    let (s, _) = api.post(&manifest("prod", "standard", 2)).await;
    assert_eq!(s, 409);
    let vc = api
        .wait("prod", 60_000, |v| condition(v, "BackingStoreReady"))
        .await;
    println!(
        "BENCH vcluster etcd tier: PKI + backing store ready in {} ms",
        t0.elapsed().as_millis()
    );
    assert_eq!(
        vc["status"]["phase"], "Provisioning",
        "no control plane here: {vc:#}"
    );
    let cp = vc["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "ControlPlaneReady")
        .expect("cp")
        .clone();
    assert_eq!(cp["reason"], "NoControlPlaneBinary");
    let vc = api
        .wait("prod", 60_000, |v| condition(v, "NodesReady"))
        .await;
    let workers = vc["status"]["workers"].as_array().expect("workers").clone();
    assert_eq!(workers.len(), 2);
    for w in &workers {
        let vmid = u32::try_from(w["vmid"].as_u64().expect("vmid")).expect("u32");
        let e = gpve_actors::vm::load_entry(&store, vmid)
            .await
            .expect("load")
            .expect("vm exists");
        assert_eq!(e.config.get("name").map(String::as_str), w["name"].as_str());
        assert!(w["name"].as_str().unwrap_or("").starts_with("prod-worker-"));
    }
    let u = usage(&store).await;
    assert_eq!((u.vms, u.vclusters, u.vcpus, u.memory_mib), (2, 1, 2, 128));

    // PKI: chain, SANs, admin identity, private keys.
    let dir = vc_root.join(TENANT).join("prod");
    let pki = dir.join("pki");
    let p = |f: &str| pki.join(f).display().to_string();
    for leaf in [
        "apiserver.crt",
        "admin.crt",
        "etcd-server.crt",
        "apiserver-etcd-client.crt",
    ] {
        let out = openssl(&["verify", "-CAfile", &p("ca.crt"), &p(leaf)]);
        assert!(out.contains(": OK"), "{leaf}: {out}");
    }
    let sans = openssl(&[
        "x509",
        "-noout",
        "-ext",
        "subjectAltName",
        "-in",
        &p("apiserver.crt"),
    ]);
    for san in [
        "DNS:kubernetes.default.svc.cluster.local",
        "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default",
        "DNS:kubernetes",
        "IP Address:10.96.0.1",
        "IP Address:127.0.0.1",
    ] {
        assert!(sans.contains(san), "{san} missing from {sans}");
    }
    let subject = openssl(&["x509", "-noout", "-subject", "-in", &p("admin.crt")]);
    assert!(subject.contains("O = system:masters"), "{subject}");
    use std::os::unix::fs::PermissionsExt;
    for k in ["ca.key", "admin.key", "sa.key", "etcd-server.key"] {
        let mode = std::fs::metadata(pki.join(k))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{k} is readable by others");
    }

    // The kubeconfig is accepted by kubectl.
    let (s, v) = api.get("/prod/kubeconfig").await;
    assert_eq!(s, 200, "{v}");
    let kc_path = srv.dir.path().join("prod.kubeconfig");
    std::fs::write(&kc_path, v["data"].as_str().expect("yaml")).expect("write");
    if have("kubectl") {
        let kc = kc_path.display().to_string();
        let o = Command::new("kubectl")
            .args(["config", "view", "--kubeconfig", &kc, "--raw"])
            .output()
            .expect("kubectl");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stdout).contains("client-certificate-data"));
        let o = Command::new("kubectl")
            .args(["--kubeconfig", &kc, "config", "get-contexts"])
            .output()
            .expect("kubectl");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success() && out.contains("prod"), "{out}");
    } else {
        println!(
            "SKIPPED kubectl checks: kubectl is not installed (Debian package kubernetes-client)"
        );
    }

    // etcd is real: TLS, client certificates required.
    let port = vc["status"]["etcd"][0]["client"]
        .as_u64()
        .expect("etcd port");
    let url = format!("https://127.0.0.1:{port}");
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.join("ca.crt")).expect("ca"))
        .expect("pem");
    let ident = [
        std::fs::read(pki.join("apiserver-etcd-client.crt")).expect("crt"),
        std::fs::read(pki.join("apiserver-etcd-client.key")).expect("key"),
    ]
    .concat();
    let etcd = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca.clone())
        .identity(reqwest::Identity::from_pem(&ident).expect("identity"))
        .build()
        .expect("client");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let r = etcd
        .post(format!("{url}/v3/kv/put"))
        .json(&json!({"key": b64("/registry/gpve-test"), "value": b64("hello")}))
        .send()
        .await
        .expect("put");
    assert!(r.status().is_success(), "{:?}", r.text().await);
    let r: Value = etcd
        .post(format!("{url}/v3/kv/range"))
        .json(&json!({"key": b64("/registry/gpve-test")}))
        .send()
        .await
        .expect("range")
        .json()
        .await
        .expect("json");
    assert_eq!(r["kvs"][0]["value"], b64("hello"), "{r}");
    let anon = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca)
        .build()
        .expect("client");
    assert!(
        anon.post(format!("{url}/v3/kv/range"))
            .json(&json!({"key": b64("/registry/gpve-test")}))
            .send()
            .await
            .is_err(),
        "etcd must refuse clients without a certificate"
    );

    // The VC actor is killed: its supervisor restarts it, it rebuilds from the store, and
    // its etcd member comes back on the same ports and data (the key is still there).
    let etcd_pid = pid_of(&dir, "etcd-0").expect("etcd pid");
    let path = gpve_api::vcluster::actor_path(TENANT, "prod");
    srv.running()
        .directory
        .lookup(&path)
        .expect("vc actor")
        .kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    let value = loop {
        let new_pid = pid_of(&dir, "etcd-0");
        if new_pid.is_some_and(|p| p != etcd_pid && alive(p)) {
            let r = etcd
                .post(format!("{url}/v3/kv/range"))
                .json(&json!({"key": b64("/registry/gpve-test")}))
                .send()
                .await;
            if let Ok(r) = r
                && let Ok(v) = r.json::<Value>().await
                && v["kvs"].is_array()
            {
                break v["kvs"][0]["value"].clone();
            }
        }
        assert!(Instant::now() < deadline, "etcd did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(value, b64("hello"));
    assert!(!alive(etcd_pid), "the old etcd must be gone");
    assert_eq!(
        processes_under(&dir).len(),
        1,
        "{:?}",
        processes_under(&dir)
    );

    // Scale down: one worker VM goes, the quota follows.
    let gone = u32::try_from(workers[1]["vmid"].as_u64().expect("vmid")).expect("u32");
    let (s, v) = api.put("prod", &manifest("prod", "standard", 1)).await;
    assert_eq!(s, 200, "{v}");
    api.wait("prod", 60_000, |v| {
        v["status"]["workers"]
            .as_array()
            .is_some_and(|w| w.len() == 1)
            && condition(v, "NodesReady")
    })
    .await;
    assert!(
        gpve_actors::vm::load_entry(&store, gone)
            .await
            .expect("load")
            .is_none()
    );
    assert_eq!(usage(&store).await.vms, 1);
    let mut changed = manifest("prod", "dev", 1);
    changed["spec"]["kubernetesVersion"] = json!("1.31");
    let (s, v) = api.put("prod", &changed).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["errors"]["spec.controlPlane"].is_string()
            && v["errors"]["spec.kubernetesVersion"].is_string(),
        "{v}"
    );

    // Delete leaves nothing: processes, files, VMs, keys, quota usage.
    let etcd_pid = pid_of(&dir, "etcd-0").expect("etcd pid");
    assert!(alive(etcd_pid));
    let left = u32::try_from(workers[0]["vmid"].as_u64().expect("vmid")).expect("u32");
    let (s, v) = api.delete("prod").await;
    assert_eq!(s, 200, "{v}");
    assert!(!alive(etcd_pid), "etcd still runs");
    assert!(
        processes_under(&dir).is_empty(),
        "{:?}",
        processes_under(&dir)
    );
    assert!(!dir.exists(), "{} remains", dir.display());
    assert!(
        gpve_actors::vm::load_entry(&store, left)
            .await
            .expect("load")
            .is_none()
    );
    assert!(
        store
            .get(&vc_key(TENANT, "prod"))
            .await
            .expect("get")
            .is_none()
    );
    assert_eq!(usage(&store).await, Demand::default());
    assert!(
        srv.running()
            .directory
            .get(&gpve_api::vcluster::actor_path(TENANT, "prod"))
            .is_none()
    );
    let (s, _) = api.get("/prod").await;
    assert_eq!(s, 404);
    srv.stop().await;
}

/// A server whose node config names `apiserver_bin` as the control-plane binary, with
/// the tenant added and a logged-in Rust client.
async fn server_with_apiserver(
    dir: &tempfile::TempDir,
    apiserver_bin: &str,
) -> (gpve_api::server::RunningServer, gpve_api::client::Client) {
    let data = data_path(dir);
    let cfg_path = data.join("config.json");
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).expect("cfg")).expect("json");
    cfg["kubernetes"] = json!({ "apiserver_bin": apiserver_bin });
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).expect("json")).expect("write");
    let server = start(ServeOptions {
        data_dir: data.clone(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        login_failure_delay_ms: LOGIN_DELAY_MS,
    })
    .await
    .expect("server");
    add_tenant(&server.state.store, 3).await;
    let client =
        gpve_api::client::Client::builder(format!("https://127.0.0.1:{}", server.addr.port()))
            .ca_file(data.join("cert.pem"))
            .build()
            .expect("client");
    client.login("root@pam", ROOT_PW).await.expect("login");
    (server, client)
}

/// A stand-in for kube-apiserver: reads its TLS flags and serves `/readyz` over HTTPS.
fn fake_apiserver(dir: &Path) -> PathBuf {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("readyz"), "ok").expect("readyz");
    let script = dir.join("kube-apiserver");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
for a in "$@"; do case "$a" in
  --tls-cert-file=*) C="${{a#*=}}";; --tls-private-key-file=*) K="${{a#*=}}";;
  --secure-port=*) P="${{a#*=}}";; esac; done
cd {www}
exec openssl s_server -quiet -accept 127.0.0.1:$P -cert "$C" -key "$K" -WWW
"#,
            www = www.display()
        ),
    )
    .expect("script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    script
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_process_is_supervised_and_ready() {
    println!(
        "NOTE: `kubectl get nodes` against a real control plane is SKIPPED: no Kubernetes server binary (kube-apiserver/k3s) exists on this machine; the control-plane slot runs openssl s_server serving /readyz with the VC's certificate"
    );
    let dir = init_dir().await;
    let data = data_path(&dir);
    let bin = fake_apiserver(dir.path());
    let (server, client) = server_with_apiserver(&dir, &bin.display().to_string()).await;
    let port = server.addr.port();
    let api = Api::new(client_for(&data), port).await;
    let t0 = Instant::now();
    client
        .create_vcluster(TENANT, &manifest("dev1", "dev", 1))
        .await
        .expect("create");
    let vc = client
        .wait_for_ready(TENANT, "dev1", 60_000)
        .await
        .expect("ready");
    println!(
        "BENCH vcluster dev tier: Ready (PKI, control-plane /readyz, 1 worker VM) in {} ms",
        t0.elapsed().as_millis()
    );
    assert_eq!(vc["status"]["phase"], "Ready");
    let vc_dir = data.join("vclusters").join(TENANT).join("dev1");
    let endpoint = vc["status"]["endpoint"]
        .as_str()
        .expect("endpoint")
        .to_string();

    // kill -9 the control plane: the VC actor restarts it and it is ready again.
    let pid = pid_of(&vc_dir, "apiserver-0").expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let vc = api
        .wait("dev1", 30_000, |v| {
            v["status"]["processRestarts"].as_u64() >= Some(1) && v["status"]["phase"] == "Ready"
        })
        .await;
    let new_pid = pid_of(&vc_dir, "apiserver-0").expect("pid");
    assert_ne!(pid, new_pid);
    assert!(alive(new_pid));
    assert_eq!(vc["status"]["endpoint"], endpoint.as_str());
    // The wrapper trusts the VC CA: /readyz answers through it.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(vc_dir.join("pki/ca.crt")).expect("ca"))
        .expect("pem");
    let c = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca)
        .build()
        .expect("client");
    assert!(
        c.get(format!("{endpoint}/readyz"))
            .send()
            .await
            .expect("readyz")
            .status()
            .is_success()
    );

    // Upgrade: new leaf certificates under the same CA, processes restarted, still Ready.
    let serial = |f: &str| {
        openssl(&[
            "x509",
            "-noout",
            "-serial",
            "-in",
            &vc_dir.join("pki").join(f).display().to_string(),
        ])
    };
    let (ca_before, api_before) = (serial("ca.crt"), serial("apiserver.crt"));
    let up = client
        .upgrade_vcluster(TENANT, "dev1", "1.31")
        .await
        .expect("upgrade");
    assert_eq!(up["spec"]["kubernetesVersion"], "1.31");
    assert_eq!(up["status"]["version"], "1.31");
    assert_eq!(serial("ca.crt"), ca_before);
    assert_ne!(serial("apiserver.crt"), api_before);
    let e = client
        .upgrade_vcluster(TENANT, "dev1", "1.29")
        .await
        .expect_err("downgrade");
    assert!(e.to_string().contains("downgrading"), "{e}");
    client
        .wait_for_ready(TENANT, "dev1", 30_000)
        .await
        .expect("ready after upgrade");

    // Delete: nothing left.
    let cp_pid = pid_of(&vc_dir, "apiserver-0").expect("pid");
    client
        .delete_vcluster(TENANT, "dev1")
        .await
        .expect("delete");
    assert!(!alive(cp_pid));
    assert!(processes_under(&vc_dir).is_empty());
    assert!(!vc_dir.exists());
    assert_eq!(usage(&server.state.store).await, Demand::default());
    assert!(
        server
            .state
            .store
            .get_json::<VcRecord>(&vc_key(TENANT, "dev1"))
            .await
            .expect("get")
            .is_none()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_that_keeps_dying_fails_the_vc() {
    let dir = init_dir().await;
    let data = data_path(&dir);
    let (server, client) = server_with_apiserver(&dir, "/bin/false").await;
    let mut m = manifest("crash", "dev", 0);
    m["spec"]["isolationLevel"] = json!("L1");
    client.create_vcluster(TENANT, &m).await.expect("create");
    let e = client
        .wait_for_ready(TENANT, "crash", 30_000)
        .await
        .expect_err("must fail");
    let msg = e.to_string();
    assert!(
        msg.contains("apiserver-0 exited") && msg.contains("after 3 restarts"),
        "{msg}"
    );
    let vc = client.vcluster(TENANT, "crash").await.expect("get");
    assert_eq!(vc["status"]["phase"], "Failed");
    assert_eq!(vc["status"]["processRestarts"], 3);
    client
        .delete_vcluster(TENANT, "crash")
        .await
        .expect("delete");
    assert!(!data.join("vclusters").join(TENANT).join("crash").exists());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_tier_runs_three_etcd_members() {
    if !Path::new("/usr/bin/etcd").exists() {
        println!("SKIPPED: /usr/bin/etcd is missing (Debian package etcd-server)");
        return;
    }
    let srv = TestServer::start().await;
    add_tenant(&srv.running().state.store, 3).await;
    let api = Api::new(srv.client.clone(), srv.running().addr.port()).await;
    let t0 = Instant::now();
    let (s, v) = api.post(&manifest("ha1", "ha", 0)).await;
    assert_eq!(s, 201, "{v}");
    let vc = api
        .wait("ha1", 60_000, |v| condition(v, "BackingStoreReady"))
        .await;
    println!(
        "BENCH vcluster ha tier: PKI + 3-member etcd ready in {} ms",
        t0.elapsed().as_millis()
    );
    let msg = vc["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "BackingStoreReady")
        .expect("cond")["message"]
        .clone();
    assert_eq!(msg, "3 of 3 etcd members healthy");
    let dir = data_path(&srv.dir)
        .join("vclusters")
        .join(TENANT)
        .join("ha1");
    assert_eq!(
        processes_under(&dir).len(),
        3,
        "{:?}",
        processes_under(&dir)
    );
    let (s, v) = api.delete("ha1").await;
    assert_eq!(s, 200, "{v}");
    assert!(
        processes_under(&dir).is_empty(),
        "{:?}",
        processes_under(&dir)
    );
    assert!(!dir.exists());
    srv.stop().await;
}
