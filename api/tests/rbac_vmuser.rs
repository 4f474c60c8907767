//! A PVEVMUser on `/vms/100`, through the real server and real QEMU: starts and stops 100,
//! cannot touch 101 or reconfigure 100, and sees only 100 in the listings. An auditor reads
//! everything and changes nothing. The audit log records all of it.

mod vm_common;

use serde_json::Value;
use vm_common::{Api, Env, NODE, Server, guest, guest_args, urlencode, wait_ready};

async fn login_as(api: &Api, user: &str, pw: &str) -> Api {
    let r = api
        .client
        .post(format!("{}/access/ticket", api.base))
        .form(&[("username", user), ("password", pw)])
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 200, "login {user}");
    let v: Value = r.json().await.expect("json");
    Api {
        client: api.client.clone(),
        base: api.base.clone(),
        ticket: v["data"]["ticket"].as_str().expect("ticket").into(),
        csrf: v["data"]["CSRFPreventionToken"]
            .as_str()
            .expect("csrf")
            .into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_user_starts_only_its_vm() {
    let g = guest().await;
    let env = Env::new().await;
    let srv = Server::start(&env).await;
    let root = srv.api.clone();
    let q = format!("/nodes/{NODE}/qemu");
    let args = guest_args(&g);
    for vmid in ["100", "101"] {
        let (code, body) = root
            .post(
                &q,
                &[
                    ("vmid", vmid),
                    ("memory", "128"),
                    ("kvm", "0"),
                    ("serial0", "socket"),
                    ("args", &args),
                ],
            )
            .await;
        assert_eq!(code, 200, "create {vmid}: {body}");
        assert_eq!(
            root.wait_task(body["data"].as_str().expect("upid")).await,
            "OK"
        );
    }
    for (user, pw) in [("alice@pve", "alice-pw"), ("audrey@pve", "audrey-pw")] {
        let (code, body) = root
            .post("/access/users", &[("userid", user), ("password", pw)])
            .await;
        assert_eq!(code, 200, "{body}");
    }
    let (code, body) = root
        .put(
            "/access/acl",
            &[
                ("path", "/vms/100"),
                ("roles", "PVEVMUser"),
                ("users", "alice@pve"),
            ],
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = root
        .put(
            "/access/acl",
            &[
                ("path", "/"),
                ("roles", "PVEAuditor"),
                ("users", "audrey@pve"),
            ],
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let alice = login_as(&root, "alice@pve", "alice-pw").await;
    let audrey = login_as(&root, "audrey@pve", "audrey-pw").await;

    // Alice starts 100 (and may follow her own task), the guest really boots.
    let (code, body) = alice.post(&format!("{q}/100/status/start"), &[]).await;
    assert_eq!(code, 200, "alice start 100: {body}");
    let upid = body["data"].as_str().expect("upid").to_string();
    assert_eq!(alice.wait_task(&upid).await, "OK");
    wait_ready(&env, 100).await;
    assert_eq!(alice.status(100).await["status"], "running");

    // ...but not 101, and she cannot reconfigure or delete 100.
    let (code, _) = alice.post(&format!("{q}/101/status/start"), &[]).await;
    assert_eq!(code, 403);
    let (code, _) = alice.get(&format!("{q}/101/status/current")).await;
    assert_eq!(code, 403);
    let (code, _) = alice
        .put(&format!("{q}/100/config"), &[("memory", "256")])
        .await;
    assert_eq!(code, 403);
    let (code, _) = alice.delete(&format!("{q}/100")).await;
    assert_eq!(code, 403);

    // Listings show her only VM 100; root sees both.
    let (code, list) = alice.get(&q).await;
    assert_eq!(code, 200);
    let ids: Vec<u64> = list["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|v| v["vmid"].as_u64())
        .collect();
    assert_eq!(ids, vec![100]);
    let (code, res) = alice.get("/cluster/resources").await;
    assert_eq!(code, 200);
    let items = res["data"].as_array().expect("resources");
    assert_eq!(items.len(), 1, "{res}");
    assert_eq!(items[0]["vmid"], 100);
    let (_, res) = root.get("/cluster/resources?type=vm").await;
    assert_eq!(res["data"].as_array().expect("vms").len(), 2);

    // The auditor reads everything and changes nothing.
    let (_, res) = audrey.get("/cluster/resources?type=vm").await;
    assert_eq!(res["data"].as_array().expect("vms").len(), 2);
    let (code, _) = audrey.get(&format!("{q}/101/config")).await;
    assert_eq!(code, 200);
    let (code, _) = audrey.post(&format!("{q}/100/status/stop"), &[]).await;
    assert_eq!(code, 403);
    let (code, _) = audrey
        .put(
            "/access/acl",
            &[
                ("path", "/"),
                ("roles", "Administrator"),
                ("users", "audrey@pve"),
            ],
        )
        .await;
    assert_eq!(code, 403);
    let (code, audit) = audrey.get_v1("/audit?user=alice@pve").await;
    assert_eq!(code, 200, "{audit}");
    let recs = audit["data"].as_array().expect("records");
    let start_req = recs
        .iter()
        .find(|r| r["path"] == format!("/api2/json{q}/100/status/start") && r["kind"] == "request")
        .expect("start request audited");
    let seq = start_req["seq"].as_u64().expect("seq");
    assert!(
        recs.iter()
            .any(|r| r["kind"] == "result" && r["request"] == seq && r["status"] == 200),
        "{audit}"
    );
    assert!(
        recs.iter()
            .any(|r| r["path"] == format!("/api2/json{q}/101/status/start") && r["status"] == 403)
    );
    let (code, v) = audrey.get_v1("/audit/verify").await;
    assert_eq!(code, 200);
    assert_eq!(v["data"]["ok"], 1, "{v}");

    // Alice stops her VM.
    let (code, body) = alice.post(&format!("{q}/100/status/stop"), &[]).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        alice.wait_task(body["data"].as_str().expect("upid")).await,
        "OK"
    );
    // Her task is hers: another user's task status is not readable without Sys.Audit.
    let (code, _) = alice
        .get(&format!(
            "/nodes/{NODE}/tasks/{}/status",
            urlencode(&upid.replace("alice@pve", "root@pam"))
        ))
        .await;
    assert_eq!(code, 403);
    srv.stop();
}

trait V1 {
    async fn get_v1(&self, path: &str) -> (u16, Value);
}

impl V1 for Api {
    async fn get_v1(&self, path: &str) -> (u16, Value) {
        let base = self.base.replace("/api2/json", "/api/v1");
        let resp = self
            .client
            .get(format!("{base}{path}"))
            .header("Cookie", format!("PVEAuthCookie={}", self.ticket))
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}
