//! Issue 9's done-when, through the real HTTPS server and the real (redb) store: two
//! tenants with users and tokens share one server and each sees and touches only its own
//! VMs; quotas hold under parallel creates; an auditor reads but cannot change; privilege
//! escalation attempts are refused and audited; a tampered audit record is detected.
//! VMs are created stopped (no QEMU runs), which keeps the test fast.

mod gpvectl_common;
mod server_common;

use std::time::Duration;

use gpve_api::audit::{AuditFilter, AuditLog, AuditRecord, Verification};
use gpve_api::tenancy::Demand;
use gpve_store::Key;
use serde_json::Value;
use server_common::{NODE, TestServer, send};

/// How one caller authenticates.
#[derive(Clone)]
enum Cred {
    Ticket { ticket: String, csrf: String },
    Token(String),
}

#[derive(Clone)]
struct Caller {
    client: reqwest::Client,
    /// `https://127.0.0.1:PORT` (no API prefix).
    origin: String,
    cred: Cred,
}

impl Caller {
    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self
            .client
            .request(method, format!("{}{path}", self.origin));
        match &self.cred {
            Cred::Ticket { ticket, csrf } => r
                .header("Cookie", format!("PVEAuthCookie={ticket}"))
                .header("CSRFPreventionToken", csrf),
            Cred::Token(t) => r.header("Authorization", t),
        }
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        send(self.req(reqwest::Method::GET, path)).await
    }
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, Value) {
        send(self.req(method, path).form(form)).await
    }
    async fn json(&self, method: reqwest::Method, path: &str, body: &Value) -> (u16, Value) {
        send(self.req(method, path).json(body)).await
    }
    async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, form).await
    }
    async fn put(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, form).await
    }
    async fn delete(&self, path: &str) -> (u16, Value) {
        send(self.req(reqwest::Method::DELETE, path)).await
    }
    async fn ok(&self, method: reqwest::Method, path: &str, form: &[(&str, &str)]) -> Value {
        let (code, body) = self.call(method.clone(), path, form).await;
        assert_eq!(code, 200, "{method} {path} {form:?}: {body}");
        body["data"].clone()
    }
    /// Waits for a task (the caller may read its own tasks); returns its exit status.
    async fn wait_task(&self, upid: &str) -> String {
        let enc: String = url_encode(upid);
        for _ in 0..600 {
            let (code, body) = self
                .get(&format!("/api2/json/nodes/{NODE}/tasks/{enc}/status"))
                .await;
            assert_eq!(code, 200, "task status: {body}");
            if body["data"]["status"] == "stopped" {
                return body["data"]["exitstatus"].as_str().unwrap_or("").into();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("task {upid} did not finish");
    }
    /// Creates a stopped VM; returns (status, body) of the POST, waiting for the task.
    async fn create_vm(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let (code, body) = self
            .post(&format!("/api2/json/nodes/{NODE}/qemu"), form)
            .await;
        if code == 200 {
            let upid = body["data"].as_str().expect("upid");
            assert_eq!(self.wait_task(upid).await, "OK", "create task {form:?}");
        }
        (code, body)
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn origin(srv: &TestServer) -> String {
    srv.base.trim_end_matches("/api2/json").to_string()
}

async fn login_as(srv: &TestServer, user: &str, pw: &str) -> Caller {
    let (ticket, csrf) = server_common::login(&srv.client, &srv.base, user, pw).await;
    Caller {
        client: srv.client.clone(),
        origin: origin(srv),
        cred: Cred::Ticket { ticket, csrf },
    }
}

/// The VMIDs of a `/nodes/{node}/qemu` or `/cluster/resources` listing.
fn vmids(list: &Value) -> Vec<u64> {
    let mut v: Vec<u64> = list
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|i| i["vmid"].as_u64())
        .collect();
    v.sort_unstable();
    v
}

async fn usage(store: &gpve_store::Store, tenant: &str) -> Demand {
    store
        .get_json(&gpve_api::tenancy::usage_key(tenant))
        .await
        .expect("usage")
        .unwrap_or_default()
}

async fn audited(store: &gpve_store::Store, user: &str, path: &str, status: u16) -> bool {
    AuditLog::new(store.clone())
        .list(&AuditFilter {
            user: Some(user.into()),
            ..AuditFilter::default()
        })
        .await
        .expect("audit list")
        .iter()
        .any(|r| r.path == path && r.status == Some(status))
}

/// Root sets up two tenants, a user bound to each with PVEVMAdmin on its pool, a
/// privilege-separated token for alice, and an auditor.
async fn two_tenants(srv: &TestServer) -> (Caller, Caller, Caller, Caller, Caller) {
    let root = login_as(srv, "root@pam", server_common::ROOT_PW).await;
    use reqwest::Method as M;
    for (t, vms) in [("acme", "requests=2"), ("globex", "requests=2")] {
        root.ok(
            M::POST,
            "/api/v1/tenants",
            &[
                ("tenant", t),
                ("vms", vms),
                ("memory", "requests=1024,overcommit=1.5"),
            ],
        )
        .await;
    }
    for (user, pw, tenant) in [
        ("alice@pve", "alice-pw-1", Some("acme")),
        ("bob@pve", "bob-pw-12", Some("globex")),
        ("audrey@pve", "audrey-pw-1", None),
    ] {
        root.ok(
            M::POST,
            "/api2/json/access/users",
            &[("userid", user), ("password", pw)],
        )
        .await;
        if let Some(t) = tenant {
            root.ok(
                M::PUT,
                "/api2/json/access/acl",
                &[
                    ("path", &format!("/pool/{t}")),
                    ("roles", "PVEVMAdmin,PVEPoolUser"),
                    ("users", user),
                ],
            )
            .await;
            root.ok(
                M::POST,
                &format!("/api/v1/tenants/{t}/users"),
                &[("userid", user)],
            )
            .await;
        }
    }
    root.ok(
        M::PUT,
        "/api2/json/access/acl",
        &[
            ("path", "/"),
            ("roles", "PVEAuditor"),
            ("users", "audrey@pve"),
        ],
    )
    .await;
    // alice's token: privilege-separated, PVEVMUser on her pool only.
    let tok = root
        .ok(
            M::POST,
            "/api2/json/access/users/alice@pve/token/ci",
            &[("privsep", "1")],
        )
        .await;
    let secret = tok["value"].as_str().expect("token secret").to_string();
    root.ok(
        M::PUT,
        "/api2/json/access/acl",
        &[
            ("path", "/pool/acme"),
            ("roles", "PVEVMUser"),
            ("tokens", "alice@pve!ci"),
        ],
    )
    .await;
    let alice = login_as(srv, "alice@pve", "alice-pw-1").await;
    let bob = login_as(srv, "bob@pve", "bob-pw-12").await;
    let audrey = login_as(srv, "audrey@pve", "audrey-pw-1").await;
    let token = Caller {
        client: srv.client.clone(),
        origin: origin(srv),
        cred: Cred::Token(format!("PVEAPIToken=alice@pve!ci={secret}")),
    };
    (root, alice, bob, audrey, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_see_and_touch_only_their_own() {
    let srv = TestServer::start().await;
    let store = srv.running().state.store.clone();
    let (root, alice, bob, audrey, token) = two_tenants(&srv).await;
    use reqwest::Method as M;
    let q = format!("/api2/json/nodes/{NODE}/qemu");

    // Each creates in its tenant's pool; a bound user cannot create in the other's.
    let (code, body) = alice
        .create_vm(&[
            ("vmid", "200"),
            ("pool", "acme"),
            ("memory", "512"),
            ("kvm", "0"),
        ])
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = bob
        .create_vm(&[
            ("vmid", "300"),
            ("pool", "globex"),
            ("memory", "512"),
            ("kvm", "0"),
        ])
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = alice
        .create_vm(&[("vmid", "201"), ("pool", "globex"), ("memory", "128")])
        .await;
    assert_eq!(code, 403, "alice created in globex: {body}");
    assert!(
        vm_absent(&store, 201).await,
        "a refused create leaves no VM behind"
    );
    assert_eq!(usage(&store, "acme").await.vms, 1);
    assert_eq!(usage(&store, "acme").await.memory_mib, 512);
    assert_eq!(usage(&store, "globex").await.vms, 1);

    // Listings are filtered.
    assert_eq!(vmids(&alice.ok(M::GET, &q, &[]).await), vec![200]);
    assert_eq!(vmids(&bob.ok(M::GET, &q, &[]).await), vec![300]);
    assert_eq!(
        vmids(&alice.ok(M::GET, "/api2/json/cluster/resources", &[]).await),
        vec![200]
    );
    let pools = alice.ok(M::GET, "/api2/json/pools", &[]).await;
    let names: Vec<&str> = pools
        .as_array()
        .expect("pools")
        .iter()
        .filter_map(|p| p["poolid"].as_str())
        .collect();
    assert_eq!(names, vec!["acme"]);
    let tenants = alice.ok(M::GET, "/api/v1/tenants", &[]).await;
    assert_eq!(tenants.as_array().map(Vec::len), Some(1), "{tenants}");
    assert_eq!(tenants[0]["tenant"], "acme");
    assert_eq!(tenants[0]["resources"]["vms"]["used"], 1);
    let tasks = alice
        .ok(M::GET, &format!("/api2/json/nodes/{NODE}/tasks"), &[])
        .await;
    let users: Vec<&str> = tasks
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["user"].as_str())
        .collect();
    assert!(
        !users.is_empty() && users.iter().all(|u| *u == "alice@pve"),
        "{users:?}"
    );
    assert!(
        alice
            .ok(M::GET, "/api2/json/storage", &[])
            .await
            .as_array()
            .is_some_and(Vec::is_empty),
        "alice has no storage rights"
    );

    // The other tenant's objects: 403 on reads and writes, nothing changes.
    for (code, what) in [
        (alice.get(&format!("{q}/300/config")).await.0, "read config"),
        (alice.delete(&format!("{q}/300")).await.0, "delete"),
        (
            alice
                .put(&format!("{q}/300/config"), &[("memory", "256")])
                .await
                .0,
            "config",
        ),
        (alice.get("/api/v1/tenants/globex").await.0, "read tenant"),
        (bob.get("/api/v1/tenants/acme/usage").await.0, "read usage"),
    ] {
        assert_eq!(code, 403, "alice/bob {what} of the other tenant");
    }
    // Allocating disk space needs Datastore.AllocateSpace on the storage.
    let (code, body) = alice
        .create_vm(&[("pool", "acme"), ("memory", "128"), ("scsi0", "local:1")])
        .await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("Datastore.AllocateSpace"),
        "{body}"
    );

    // The privilege-separated token reads its tenant but cannot allocate (PVEVMUser).
    assert_eq!(vmids(&token.ok(M::GET, &q, &[]).await), vec![200]);
    let (code, _) = token.post(&q, &[("pool", "acme"), ("memory", "128")]).await;
    assert_eq!(code, 403, "PVEVMUser token allocated a VM");

    // The auditor reads everything and changes nothing.
    assert_eq!(vmids(&audrey.ok(M::GET, &q, &[]).await), vec![200, 300]);
    assert_eq!(
        audrey
            .ok(M::GET, "/api/v1/tenants", &[])
            .await
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    for (code, what) in [
        (audrey.post(&q, &[("memory", "128")]).await.0, "create"),
        (
            audrey
                .put("/api/v1/tenants/acme/quota", &[("vms", "requests=99")])
                .await
                .0,
            "raise a quota",
        ),
        (audrey.delete(&format!("{q}/200")).await.0, "delete"),
    ] {
        assert_eq!(code, 403, "auditor could {what}");
    }

    // Escalation attempts: refused AND audited.
    let acl = "/api2/json/access/acl";
    let (code, _) = token
        .put(
            acl,
            &[
                ("path", "/"),
                ("roles", "Administrator"),
                ("tokens", "alice@pve!ci"),
            ],
        )
        .await;
    assert_eq!(code, 403, "token granted itself Administrator");
    let (code, _) = alice
        .put(
            acl,
            &[
                ("path", "/pool/globex"),
                ("roles", "PVEVMAdmin"),
                ("users", "alice@pve"),
            ],
        )
        .await;
    assert_eq!(code, 403, "alice granted herself the other tenant's pool");
    let (code, _) = alice
        .put(
            acl,
            &[
                ("path", "/vms/../"),
                ("roles", "Administrator"),
                ("users", "alice@pve"),
            ],
        )
        .await;
    assert!(code == 403 || code == 400, "path trick answered {code}");
    let (code, _) = alice
        .post("/api/v1/tenants/globex/users", &[("userid", "alice@pve")])
        .await;
    assert_eq!(code, 403, "alice bound herself to globex");
    let (code, _) = alice
        .put("/api/v1/tenants/acme/quota", &[("vms", "requests=100")])
        .await;
    assert_eq!(code, 403, "alice raised her own quota");
    assert!(
        audited(&store, "alice@pve", acl, 403).await,
        "ACL escalation audited"
    );
    assert!(
        audited(&store, "alice@pve", "/api/v1/tenants/globex/users", 403).await,
        "self-binding audited"
    );
    assert!(
        audited(&store, "alice@pve", "/api/v1/tenants/acme/quota", 403).await,
        "quota raise audited"
    );
    let log = AuditLog::new(store.clone())
        .list(&AuditFilter::default())
        .await
        .expect("audit");
    assert!(
        log.iter()
            .any(|r| r.token.as_deref().is_some_and(|t| t.ends_with("ci"))
                && r.path == acl
                && r.status == Some(403)),
        "the token's attempt is audited with its token id"
    );
    assert_eq!(usage(&store, "globex").await.vms, 1, "nothing changed");

    // Deleting a tenant that owns things is refused, naming them.
    let (code, body) = root.delete("/api/v1/tenants/acme").await;
    assert_eq!(code, 400, "{body}");
    let msg = body["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("1 VMs (200)") && msg.contains("alice@pve"),
        "{msg}"
    );

    // Delete releases the charge; then the empty tenant can go, with its pool.
    let upid = alice.ok(M::DELETE, &format!("{q}/200"), &[]).await;
    assert_eq!(alice.wait_task(upid.as_str().expect("upid")).await, "OK");
    assert_eq!(usage(&store, "acme").await, Demand::default());
    root.ok(M::DELETE, "/api/v1/tenants/acme/users/alice@pve", &[])
        .await;
    root.ok(M::DELETE, "/api/v1/tenants/acme", &[]).await;
    let (code, _) = root.get("/api2/json/pools/acme").await;
    assert_ne!(code, 200, "the tenant's pool went with it");

    // The audit chain is intact, and altering one of the refusals is detected.
    let v = AuditLog::new(store.clone()).verify().await.expect("verify");
    assert!(matches!(v, Verification::Intact { .. }), "{v:?}");
    let target = log
        .iter()
        .find(|r| r.path == "/api/v1/tenants/globex/users" && r.status == Some(403))
        .expect("refusal record")
        .seq;
    let key = Key::pack(&("audit", "rec", target));
    let mut rec: AuditRecord = store.get_json(&key).await.expect("get").expect("record");
    rec.status = Some(200);
    store.put_json(&key, &rec).await.expect("tamper");
    let verify = root.ok(M::GET, "/api/v1/audit/verify", &[]).await;
    assert_eq!(verify["ok"], 0, "{verify}");
    assert_eq!(verify["seq"], target);
    srv.stop().await;
}

async fn vm_absent(store: &gpve_store::Store, vmid: u32) -> bool {
    gpve_actors::vm::load_entry(store, vmid)
        .await
        .expect("load")
        .is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_hold_under_parallel_creates_and_follow_config_changes() {
    let srv = TestServer::start().await;
    let store = srv.running().state.store.clone();
    let root = login_as(&srv, "root@pam", server_common::ROOT_PW).await;
    use reqwest::Method as M;
    root.ok(
        M::POST,
        "/api/v1/tenants",
        &[
            ("tenant", "initech"),
            ("vms", "requests=3"),
            ("memory", "requests=1024,limits=1024,overcommit=2"),
        ],
    )
    .await;
    let q = format!("/api2/json/nodes/{NODE}/qemu");
    // Eight concurrent creates against a quota of three VMs (root is no exception).
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let root = root.clone();
        let q = q.clone();
        set.spawn(async move {
            root.post(&q, &[("pool", "initech"), ("memory", "128"), ("kvm", "0")])
                .await
        });
    }
    let mut ok = Vec::new();
    let mut refused = 0;
    while let Some(r) = set.join_next().await {
        let (code, body) = r.expect("join");
        match code {
            200 => ok.push(body["data"].as_str().expect("upid").to_string()),
            403 => {
                assert_eq!(
                    body["message"].as_str().unwrap_or("").trim_end(),
                    "quota vms of tenant initech exceeded: requested 1 VMs, 0 VMs of 3 VMs left"
                );
                refused += 1;
            }
            other => panic!("create answered {other}: {body}"),
        }
    }
    assert_eq!((ok.len(), refused), (3, 5));
    for upid in &ok {
        assert_eq!(root.wait_task(upid).await, "OK");
    }
    let used = usage(&store, "initech").await;
    assert_eq!((used.vms, used.memory_mib), (3, 384));
    let vms = gpve_actors::vm::list_entries(&store).await.expect("list");
    assert_eq!(vms.len(), 3, "nothing half-created");
    assert!(vms.iter().all(|e| e.lock.is_none()), "no VM left locked");
    let pool = root.ok(M::GET, "/api2/json/pools/initech", &[]).await;
    assert_eq!(pool["members"].as_array().map(Vec::len), Some(3));

    // Memory: the limit (1024) binds before requests × overcommit (2048).
    let vmid = vms[0].record.vmid;
    let (code, body) = root
        .put(&format!("{q}/{vmid}/config"), &[("memory", "1024")])
        .await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body["message"].as_str().unwrap_or("").trim_end(),
        "quota memory of tenant initech exceeded: requested 896 MiB, 640 MiB of 1024 MiB left"
    );
    root.ok(M::PUT, &format!("{q}/{vmid}/config"), &[("memory", "512")])
        .await;
    assert_eq!(usage(&store, "initech").await.memory_mib, 768);
    root.ok(M::PUT, &format!("{q}/{vmid}/config"), &[("memory", "256")])
        .await;
    assert_eq!(
        usage(&store, "initech").await.memory_mib,
        512,
        "shrink released"
    );

    // Raising the quota lets the fourth VM in; the usage endpoint shows what is left.
    root.ok(
        M::PUT,
        "/api/v1/tenants/initech/quota",
        &[("vms", "requests=4")],
    )
    .await;
    let (code, body) = root
        .create_vm(&[("pool", "initech"), ("memory", "128"), ("kvm", "0")])
        .await;
    assert_eq!(code, 200, "{body}");
    let u = root.ok(M::GET, "/api/v1/tenants/initech/usage", &[]).await;
    assert_eq!(u["vms"]["used"], 4);
    assert_eq!(u["vms"]["left"], 0);
    assert_eq!(u["memory"]["left"], 1024 - 640);

    // Declarative VMs in a namespace the tenant owns count against it too.
    root.ok(
        M::POST,
        "/api/v1/tenants/initech/namespaces",
        &[("namespace", "ops")],
    )
    .await;
    let vms_path = "/api/v1/namespaces/ops/virtualmachines";
    let mut manifest = serde_json::json!({
        "apiVersion": "gpve.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "decl"},
        "spec": {"cpu": {"cores": 1}, "memory": "64Mi", "running": false, "proxmox": {"kvm": 0}}
    });
    let (code, body) = root.json(M::POST, vms_path, &manifest).await;
    assert_eq!(code, 403, "over the VM quota: {body}");
    assert!(
        body.to_string()
            .contains("quota vms of tenant initech exceeded"),
        "{body}"
    );
    root.ok(
        M::PUT,
        "/api/v1/tenants/initech/quota",
        &[("vms", "requests=5")],
    )
    .await;
    let (code, body) = root.json(M::POST, vms_path, &manifest).await;
    assert_eq!(code, 201, "{body}");
    root.wait_task(body["data"]["status"]["task"].as_str().expect("task"))
        .await;
    assert_eq!(usage(&store, "initech").await.memory_mib, 704);
    manifest["spec"]["memory"] = serde_json::json!("128Mi");
    let (code, body) = root
        .json(M::PUT, &format!("{vms_path}/decl"), &manifest)
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        usage(&store, "initech").await.memory_mib,
        768,
        "apply grew the charge"
    );
    let (code, body) = root.delete(&format!("{vms_path}/decl")).await;
    assert_eq!(code, 200, "{body}");
    root.wait_task(body["data"]["status"]["task"].as_str().expect("task"))
        .await;
    let used = usage(&store, "initech").await;
    assert_eq!(
        (used.vms, used.memory_mib),
        (4, 640),
        "delete released the charge"
    );

    // Bad quotas are refused with the reason.
    let (code, body) = root
        .put(
            "/api/v1/tenants/initech/quota",
            &[("vcpus", "requests=8,limits=4")],
        )
        .await;
    assert_eq!(code, 400, "{body}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpvectl_manages_tenants_and_quotas() {
    use gpvectl_common::{ctl, ok};
    let srv = TestServer::start().await;
    let config = srv.dir.path().join("gpvectl.yaml");
    let fp = gpve_api::client::Fingerprint::of_pem_file(
        &server_common::data_path(&srv.dir).join("cert.pem"),
    )
    .expect("fingerprint")
    .to_string();
    ok(&ctl(
        &config,
        &[
            "login",
            "--server",
            &origin(&srv),
            "--user",
            "root@pam",
            "--password-stdin",
            "--fingerprint",
            &fp,
        ],
        &format!("{}\n", server_common::ROOT_PW),
    ));
    let out = ok(&ctl(
        &config,
        &[
            "tenant",
            "create",
            "acme",
            "--vms",
            "requests=2",
            "--comment",
            "team A",
        ],
        "",
    ));
    assert!(out.contains("tenant acme created"), "{out}");
    ok(&ctl(
        &config,
        &[
            "quota",
            "set",
            "acme",
            "--memory",
            "requests=1024,limits=4096,overcommit=1.5",
        ],
        "",
    ));
    let quota: Value = serde_json::from_str(&ok(&ctl(
        &config,
        &["quota", "get", "acme", "-o", "json"],
        "",
    )))
    .expect("quota JSON");
    assert_eq!(quota["memory"]["allowed"], 1536);
    assert_eq!(quota["vms"]["requests"], 2);
    let list = ok(&ctl(&config, &["tenant", "list", "-o", "yaml"], ""));
    assert!(
        list.contains("tenant: acme") && list.contains("team A"),
        "{list}"
    );
    let table = ok(&ctl(&config, &["tenant", "get", "acme"], ""));
    assert!(
        table.contains("RESOURCE") && table.contains("memory"),
        "{table}"
    );
    // Bad input: a clear refusal, nothing changed.
    let bad = ctl(
        &config,
        &["quota", "set", "acme", "--vcpus", "requests=lots"],
        "",
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("whole number of vCPUs"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let help = ok(&ctl(&config, &["quota", "set", "--help"], ""));
    assert!(
        help.contains("overcommit") && help.contains("Examples"),
        "{help}"
    );
    ok(&ctl(&config, &["tenant", "delete", "acme"], ""));
    let gone = ctl(&config, &["tenant", "get", "acme"], "");
    assert!(!gone.status.success(), "tenant still there");
    srv.stop().await;
}

/// Admission overhead on create: p50/p99 of `POST /nodes/{node}/qemu` (what the client
/// waits for: checks, VMID reservation, admission; the disks and actor are a task) without
/// a pool and into a tenant's pool with quotas. A benchmark, run explicitly:
/// `cargo test --release -p gpve-api --test tenancy -- --ignored --nocapture bench_`
/// (`GPVE_BENCH_CREATES`, default 200 per case).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run explicitly"]
async fn bench_admission_overhead_on_create() {
    let n: usize = std::env::var("GPVE_BENCH_CREATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let srv = TestServer::start().await;
    let root = login_as(&srv, "root@pam", server_common::ROOT_PW).await;
    root.ok(
        reqwest::Method::POST,
        "/api/v1/tenants",
        &[
            ("tenant", "bench"),
            ("vms", "requests=1000000"),
            ("memory", "requests=100000000,overcommit=1.5"),
            ("vcpus", "limits=1000000"),
        ],
    )
    .await;
    let q = format!("/api2/json/nodes/{NODE}/qemu");
    for (case, pool) in [("no tenant", None), ("tenant with quotas", Some("bench"))] {
        let mut ms = Vec::with_capacity(n);
        for _ in 0..n {
            let mut form = vec![("memory", "128"), ("kvm", "0")];
            if let Some(p) = pool {
                form.push(("pool", p));
            }
            let t0 = std::time::Instant::now();
            let (code, body) = root.post(&q, &form).await;
            ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(code, 200, "{body}");
            root.wait_task(body["data"].as_str().expect("upid")).await;
        }
        ms.sort_by(f64::total_cmp);
        println!(
            "create ({case}), {n} sequential: p50 {:.2} ms, p99 {:.2} ms",
            ms[n / 2],
            ms[(n * 99 / 100).min(n - 1)]
        );
    }
    // The admission itself: one durable transaction that admits a VM's demand (reads the
    // tenant and its usage, writes the usage), against one that writes a key only.
    let store = srv.running().state.store.clone();
    let demand = Demand {
        vcpus: 1,
        memory_mib: 128,
        vms: 1,
        ..Demand::default()
    };
    for case in ["plain write", "admit"] {
        let mut ms = Vec::with_capacity(n);
        for i in 0..n {
            let t0 = std::time::Instant::now();
            store
                .transact(|tx| {
                    Box::pin(async move {
                        if case == "admit" {
                            gpve_api::tenancy::admit(tx, "bench", &demand)
                                .await
                                .map_err(|e| gpve_store::StoreError::Aborted(Box::new(e)))?;
                        }
                        tx.put_json(&Key::pack(&("bench-marker", i as u64)), &i)?;
                        Ok(())
                    })
                })
                .await
                .expect("transaction");
            ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        println!(
            "transaction ({case}), {n} sequential: p50 {:.2} ms, p99 {:.2} ms",
            ms[n / 2],
            ms[(n * 99 / 100).min(n - 1)]
        );
    }
    srv.stop().await;
}
