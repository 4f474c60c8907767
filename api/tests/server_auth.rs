//! Authentication, users, tokens, validation and error shapes against a real HTTPS server.

mod server_common;

use gpve_api::auth::TicketKey;
use gpve_store::Key;
use serde_json::{Value, json};
use server_common::*;

#[tokio::test]
async fn login_ticket_and_csrf_flow() {
    let s = TestServer::start().await;
    // No credentials: 401 in Proxmox's shape.
    let (code, body) = send(s.client.get(s.url("/version"))).await;
    assert_eq!(code, 401);
    assert_eq!(body["data"], Value::Null);
    assert!(body["message"].is_string());

    let (ticket, csrf) = s.login().await;
    assert!(ticket.starts_with("PVE:root@pam:"));
    let (code, body) = send(
        s.client
            .get(s.url("/version"))
            .header("Cookie", cookie(&ticket)),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(body["data"]["release"], "9.1");

    // JSON login works too and reports the cluster name.
    let (code, body) = send(
        s.client
            .post(s.url("/access/ticket"))
            .json(&json!({"username": "root", "realm": "pam", "password": ROOT_PW})),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(body["data"]["username"], "root@pam");
    assert_eq!(body["data"]["clustername"], "testcluster");

    // A write with the ticket but without CSRF token: 401.
    let create = |csrf: Option<&str>| {
        let mut r = s
            .client
            .post(s.url("/access/users"))
            .header("Cookie", cookie(&ticket))
            .form(&[("userid", "bob@pve")]);
        if let Some(c) = csrf {
            r = r.header("CSRFPreventionToken", c);
        }
        r
    };
    assert_eq!(send(create(None)).await.0, 401);
    assert_eq!(send(create(Some("6B000000:forged"))).await.0, 401);
    assert_eq!(send(create(Some(&csrf))).await.0, 200);

    // Wrong password and unknown user look the same.
    for (u, p) in [
        ("root@pam", "wrong"),
        ("nobody@pve", "wrong"),
        ("root@pam", ""),
    ] {
        let (code, body) = send(
            s.client
                .post(s.url("/access/ticket"))
                .form(&[("username", u), ("password", p)]),
        )
        .await;
        assert_eq!(code, 401, "{u}");
        assert_eq!(body["message"], "authentication failure\n");
    }
    s.stop().await;
}

#[tokio::test]
async fn login_failure_is_delayed() {
    let s = TestServer::start().await;
    let t0 = std::time::Instant::now();
    let (code, _) = send(
        s.client
            .post(s.url("/access/ticket"))
            .form(&[("username", "root@pam"), ("password", "nope")]),
    )
    .await;
    assert_eq!(code, 401);
    assert!(t0.elapsed() >= std::time::Duration::from_millis(LOGIN_DELAY_MS));
    s.stop().await;
}

#[tokio::test]
async fn ticket_renewal_expiry_and_forgery() {
    let s = TestServer::start().await;
    let (ticket, _) = s.login().await;
    // Renew: post the ticket as password.
    let (code, body) = send(
        s.client
            .post(s.url("/access/ticket"))
            .form(&[("username", "root@pam"), ("password", ticket.as_str())]),
    )
    .await;
    assert_eq!(code, 200);
    let renewed = body["data"]["ticket"].as_str().unwrap().to_string();
    assert_eq!(
        send(
            s.client
                .get(s.url("/nodes"))
                .header("Cookie", cookie(&renewed))
        )
        .await
        .0,
        200
    );
    // A ticket cannot be renewed for another user.
    let (code, _) = send(
        s.client
            .post(s.url("/access/ticket"))
            .form(&[("username", "alice@pve"), ("password", ticket.as_str())]),
    )
    .await;
    assert_eq!(code, 401);

    // An expired ticket signed with the real key: 401.
    let key_hex = std::fs::read_to_string(data_path(&s.dir).join("authkey.hex")).unwrap();
    let key = TicketKey::from_hex(&key_hex).unwrap();
    let now = gpve_api::state::now_s();
    let expired = key.ticket("root@pam", now - 7201);
    let (code, _) = send(
        s.client
            .get(s.url("/nodes"))
            .header("Cookie", cookie(&expired)),
    )
    .await;
    assert_eq!(code, 401);
    // ...and it cannot be renewed either.
    let (code, _) = send(
        s.client
            .post(s.url("/access/ticket"))
            .form(&[("username", "root@pam"), ("password", expired.as_str())]),
    )
    .await;
    assert_eq!(code, 401);
    // A fresh ticket for an unknown user, and forged signatures: 401.
    let ghost = key.ticket("ghost@pve", now);
    let forged = TicketKey::generate().ticket("root@pam", now);
    let tampered = ticket.replace("root@pam", "alice@pve");
    for bad in [
        ghost,
        forged,
        tampered,
        "garbage".to_string(),
        String::new(),
    ] {
        let (code, _) = send(s.client.get(s.url("/nodes")).header("Cookie", cookie(&bad))).await;
        assert_eq!(code, 401, "{bad}");
    }
    s.stop().await;
}

#[tokio::test]
async fn tokens_create_use_delete_and_hashed() {
    let s = TestServer::start().await;
    let (ticket, csrf) = s.login().await;
    let auth = |r: reqwest::RequestBuilder| {
        r.header("Cookie", cookie(&ticket))
            .header("CSRFPreventionToken", &csrf)
    };
    let (code, body) = send(auth(
        s.client
            .post(s.url("/access/users/root@pam/token/ci"))
            .form(&[("privsep", "0"), ("comment", "for CI")]),
    ))
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["full-tokenid"], "root@pam!ci");
    assert_eq!(body["data"]["info"]["privsep"], 0);
    let secret = body["data"]["value"].as_str().unwrap().to_string();

    // Creating it twice fails.
    let (code, _) = send(auth(
        s.client.post(s.url("/access/users/root@pam/token/ci")),
    ))
    .await;
    assert_eq!(code, 400);

    // Use it: no CSRF needed for token writes.
    let header = format!("PVEAPIToken=root@pam!ci={secret}");
    let (code, _) = send(
        s.client
            .get(s.url("/nodes"))
            .header("Authorization", &header),
    )
    .await;
    assert_eq!(code, 200);
    let (code, _) = send(
        s.client
            .post(s.url("/access/users"))
            .header("Authorization", &header)
            .form(&[("userid", "tok-made@pve")]),
    )
    .await;
    assert_eq!(code, 200);
    // Wrong secret, unknown token: 401.
    for bad in [
        "PVEAPIToken=root@pam!ci=00000000-0000-0000-0000-000000000000".to_string(),
        format!("PVEAPIToken=root@pam!other={secret}"),
        "PVEAPIToken=garbage".to_string(),
    ] {
        let (code, _) = send(s.client.get(s.url("/nodes")).header("Authorization", &bad)).await;
        assert_eq!(code, 401, "{bad}");
    }

    // Listing and reading never show the secret.
    let (code, body) = send(auth(s.client.get(s.url("/access/users/root@pam/token")))).await;
    assert_eq!(code, 200);
    assert_eq!(body["data"][0]["tokenid"], "ci");
    assert!(!body.to_string().contains(&secret));
    let (_, body) = send(auth(s.client.get(s.url("/access/users/root@pam")))).await;
    assert_eq!(body["data"]["tokens"]["ci"]["comment"], "for CI");

    // The store holds only a hash of the secret.
    let store = &s.running().state.store;
    let raw = store
        .get(&Key::pack(&("tokens", "root@pam", "ci")))
        .await
        .unwrap()
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    assert!(!raw.contains(&secret));
    assert!(raw.contains("sha256:"));

    // A privilege-separated token has no ACLs yet: 403 (on a route that needs a privilege;
    // `/nodes` is open to every user, as in Proxmox).
    let (_, body) = send(auth(
        s.client.post(s.url("/access/users/root@pam/token/sep")),
    ))
    .await;
    let sep = body["data"]["value"].as_str().unwrap().to_string();
    let (code, body) = send(
        s.client
            .get(s.url(&format!("/nodes/{NODE}/status")))
            .header("Authorization", format!("PVEAPIToken=root@pam!sep={sep}")),
    )
    .await;
    assert_eq!(code, 403);
    assert_eq!(body["message"], "Permission check failed\n");

    // Update, then delete; the deleted token stops working.
    let (code, body) = send(auth(
        s.client
            .put(s.url("/access/users/root@pam/token/ci"))
            .form(&[("comment", "renamed")]),
    ))
    .await;
    assert_eq!(code, 200);
    assert_eq!(body["data"]["comment"], "renamed");
    let (code, _) = send(auth(
        s.client.delete(s.url("/access/users/root@pam/token/ci")),
    ))
    .await;
    assert_eq!(code, 200);
    let (code, _) = send(
        s.client
            .get(s.url("/nodes"))
            .header("Authorization", &header),
    )
    .await;
    assert_eq!(code, 401);
    let (code, _) = send(auth(s.client.get(s.url("/access/users/root@pam/token/ci")))).await;
    assert_eq!(code, 404);
    s.stop().await;
}

#[tokio::test]
async fn users_crud_and_privileges() {
    let s = TestServer::start().await;
    let (ticket, csrf) = s.login().await;
    let auth = |r: reqwest::RequestBuilder| {
        r.header("Cookie", cookie(&ticket))
            .header("CSRFPreventionToken", &csrf)
    };
    // Groups must exist before users join them.
    for g in ["ops", "dev", "qa"] {
        let (code, body) = send(auth(
            s.client
                .post(s.url("/access/groups"))
                .form(&[("groupid", g)]),
        ))
        .await;
        assert_eq!(code, 200, "{body}");
    }
    let (code, _) = send(auth(s.client.post(s.url("/access/users")).json(&json!({
        "userid": "alice@pve", "password": "alicepw1", "email": "alice@example.com",
        "groups": "ops,dev", "enable": true, "comment": "ünïcödé"
    }))))
    .await;
    assert_eq!(code, 200);
    let (code, body) = send(auth(
        s.client
            .post(s.url("/access/users"))
            .form(&[("userid", "alice@pve")]),
    ))
    .await;
    assert_eq!(code, 400, "duplicate user: {body}");

    let (_, body) = send(auth(s.client.get(s.url("/access/users")))).await;
    let users: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["userid"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["alice@pve", "root@pam"]);
    assert_eq!(body["data"][0]["enable"], 1);
    assert_eq!(body["data"][0]["groups"], "ops,dev");

    let (code, _) = send(auth(s.client.put(s.url("/access/users/alice@pve")).form(
        &[
            ("firstname", "Alice"),
            ("enable", "1"),
            ("groups", "qa"),
            ("append", "1"),
        ],
    )))
    .await;
    assert_eq!(code, 200);
    let (_, body) = send(auth(s.client.get(s.url("/access/users/alice@pve")))).await;
    assert_eq!(body["data"]["firstname"], "Alice");
    assert_eq!(body["data"]["comment"], "ünïcödé");
    assert_eq!(body["data"]["groups"], json!(["ops", "dev", "qa"]));

    // alice may read her own record and nothing else.
    let (aticket, acsrf) = login(&s.client, &s.base, "alice@pve", "alicepw1").await;
    let (code, _) = send(
        s.client
            .get(s.url("/access/users/alice@pve"))
            .header("Cookie", cookie(&aticket)),
    )
    .await;
    assert_eq!(code, 200);
    for path in [
        "/access/users/root@pam",
        "/nodes/n1/status",
        "/access/users/root@pam/token",
    ] {
        let (code, body) = send(s.client.get(s.url(path)).header("Cookie", cookie(&aticket))).await;
        assert_eq!(code, 403, "{path}");
        assert_eq!(body["message"], "Permission check failed\n");
    }
    // `user: all` listings answer with what she may see: herself, no resources.
    let (code, body) = send(
        s.client
            .get(s.url("/access/users"))
            .header("Cookie", cookie(&aticket)),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(body["data"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["data"][0]["userid"], "alice@pve");
    let (code, body) = send(
        s.client
            .get(s.url("/cluster/resources"))
            .header("Cookie", cookie(&aticket)),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(body["data"], json!([]), "{body}");
    let (code, _) = send(
        s.client
            .put(s.url("/access/users/alice@pve"))
            .header("Cookie", cookie(&aticket))
            .header("CSRFPreventionToken", &acsrf)
            .form(&[("comment", "x")]),
    )
    .await;
    assert_eq!(code, 403);

    // Disabling alice invalidates her ticket.
    send(auth(
        s.client
            .put(s.url("/access/users/alice@pve"))
            .form(&[("enable", "0")]),
    ))
    .await;
    let (code, _) = send(
        s.client
            .get(s.url("/access/users/alice@pve"))
            .header("Cookie", cookie(&aticket)),
    )
    .await;
    assert_eq!(code, 401);

    // Delete; root@pam cannot be deleted; unknown users are 404.
    assert_eq!(
        send(auth(s.client.delete(s.url("/access/users/alice@pve"))))
            .await
            .0,
        200
    );
    assert_eq!(
        send(auth(s.client.get(s.url("/access/users/alice@pve"))))
            .await
            .0,
        404
    );
    assert_eq!(
        send(auth(s.client.delete(s.url("/access/users/alice@pve"))))
            .await
            .0,
        404
    );
    assert_eq!(
        send(auth(s.client.delete(s.url("/access/users/root@pam"))))
            .await
            .0,
        400
    );
    s.stop().await;
}

#[tokio::test]
async fn validation_error_shapes() {
    let s = TestServer::start().await;
    let (ticket, csrf) = s.login().await;
    let auth = |r: reqwest::RequestBuilder| {
        r.header("Cookie", cookie(&ticket))
            .header("CSRFPreventionToken", &csrf)
    };
    let cases: Vec<(reqwest::RequestBuilder, &str, &str)> = vec![
        (
            s.client
                .post(s.url("/access/users"))
                .form(&[("email", "x@y")]),
            "userid",
            "property is missing and it is not optional",
        ),
        (
            s.client
                .post(s.url("/access/users"))
                .form(&[("userid", "nouser")]),
            "userid",
            "value does not match the format 'pve-userid'",
        ),
        (
            s.client
                .post(s.url("/access/users"))
                .form(&[("userid", "a@pve"), ("bogus", "1")]),
            "bogus",
            "property is not defined in schema and the schema does not allow additional properties",
        ),
        (
            s.client
                .post(s.url("/access/users"))
                .form(&[("userid", "a@pve"), ("enable", "maybe")]),
            "enable",
            "type check ('boolean') failed - got 'maybe'",
        ),
        (
            s.client
                .post(s.url("/access/users"))
                .form(&[("userid", "a@pve"), ("expire", "-1")]),
            "expire",
            "value must have a minimum value of 0",
        ),
        (
            s.client
                .post(s.url("/access/users"))
                .form(&[("userid", "a@pve"), ("expire", "soon")]),
            "expire",
            "type check ('integer') failed - got 'soon'",
        ),
        (
            s.client
                .post(s.url("/access/users"))
                .form(&[("userid", "a@pve"), ("comment", &"x".repeat(3000))]),
            "comment",
            "value may only be 2048 characters long",
        ),
        (
            s.client.get(s.url("/cluster/resources?type=disk")),
            "type",
            "value 'disk' does not have a value in the enumeration 'vm, storage, node, sdn'",
        ),
        (
            s.client.get(s.url("/cluster/nextid?vmid=99")),
            "vmid",
            "value must have a minimum value of 100",
        ),
        (
            s.client.get(s.url("/nodes/n1/tasks?limit=1&limit=2")),
            "limit",
            "duplicate parameter",
        ),
        (
            s.client.post(s.url("/access/users/root@pam/token/1bad")),
            "tokenid",
            "value does not match the format 'pve-tokenid'",
        ),
    ];
    for (req, param, reason) in cases {
        let (code, body) = send(auth(req)).await;
        assert_eq!(code, 400, "{param}: {body}");
        assert_eq!(body["data"], Value::Null);
        assert_eq!(body["message"], "Parameter verification failed.\n");
        assert_eq!(body["errors"][param], reason, "{body}");
    }
    // JSON bodies are validated the same way.
    let (code, body) = send(auth(
        s.client
            .post(s.url("/access/users"))
            .json(&json!({"userid": 5, "enable": "x"})),
    ))
    .await;
    assert_eq!(code, 400);
    assert!(
        body["errors"]["enable"]
            .as_str()
            .unwrap()
            .contains("boolean")
    );
    // Malformed JSON.
    let (code, body) = send(auth(
        s.client
            .post(s.url("/access/users"))
            .header("Content-Type", "application/json")
            .body("{not json"),
    ))
    .await;
    assert_eq!(code, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON body")
    );
    // nextid: a taken or free VMID.
    let (code, body) = send(auth(s.client.get(s.url("/cluster/nextid?vmid=150")))).await;
    assert_eq!((code, body["data"].clone()), (200, json!("150")));
    s.stop().await;
}

#[tokio::test]
async fn error_shapes_and_body_limit() {
    let s = TestServer::start().await;
    let (ticket, csrf) = s.login().await;
    // 501 for unknown paths and unknown methods, with Proxmox's message.
    let (code, body) = send(
        s.client
            .get(s.url("/no/such/path"))
            .header("Cookie", cookie(&ticket)),
    )
    .await;
    assert_eq!(code, 501);
    assert_eq!(
        body["message"],
        "Method 'GET /no/such/path' not implemented\n"
    );
    let (code, body) = send(
        s.client
            .patch(s.url("/version"))
            .header("Cookie", cookie(&ticket)),
    )
    .await;
    assert_eq!(code, 501);
    assert_eq!(body["message"], "Method 'PATCH /version' not implemented\n");
    let base = s.base.trim_end_matches("/api2/json").to_string();
    assert_eq!(send(s.client.get(format!("{base}/"))).await.0, 501);

    // Unknown node: 404 "no such cluster node".
    let (code, body) = send(
        s.client
            .get(s.url("/nodes/other/status"))
            .header("Cookie", cookie(&ticket)),
    )
    .await;
    assert_eq!(code, 404);
    assert_eq!(body["message"], "no such cluster node 'other'\n");

    // Bodies over 512 KiB are refused with 413.
    let big = "x".repeat(600 * 1024);
    let (code, _) = send(
        s.client
            .post(s.url("/access/users"))
            .header("Cookie", cookie(&ticket))
            .header("CSRFPreventionToken", &csrf)
            .form(&[("userid", "big@pve"), ("comment", big.as_str())]),
    )
    .await;
    assert_eq!(code, 413);
    // Just under the limit is parsed (and then rejected by the schema, not the limit).
    let under = "x".repeat(500 * 1024);
    let (code, body) = send(
        s.client
            .post(s.url("/access/users"))
            .header("Cookie", cookie(&ticket))
            .header("CSRFPreventionToken", &csrf)
            .form(&[("userid", "big@pve"), ("comment", under.as_str())]),
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(
        body["errors"]["comment"],
        "value may only be 2048 characters long"
    );
    s.stop().await;
}

#[tokio::test]
async fn nodes_and_resources() {
    let s = TestServer::start().await;
    let (ticket, _) = s.login().await;
    let get = |p: &str| s.client.get(s.url(p)).header("Cookie", cookie(&ticket));
    let (code, body) = send(get("/nodes")).await;
    assert_eq!(code, 200);
    assert_eq!(body["data"][0]["node"], NODE);
    assert_eq!(body["data"][0]["status"], "online");
    assert!(body["data"][0]["maxmem"].as_u64().unwrap() > 0);
    let (code, body) = send(get("/nodes/n1/status")).await;
    assert_eq!(code, 200);
    assert!(body["data"]["memory"]["total"].as_u64().unwrap() > 0);
    assert_eq!(body["data"]["loadavg"].as_array().unwrap().len(), 3);
    assert!(
        body["data"]["kversion"]
            .as_str()
            .unwrap()
            .starts_with("Linux")
    );

    // VM records from the store appear in /cluster/resources.
    let store = &s.running().state.store;
    for vmid in [100u32, 101, 103] {
        let rec = gpve_actors::vm::VmRecord {
            vmid,
            name: format!("vm{vmid}"),
            node: NODE.into(),
            status: "stopped".into(),
            maxcpu: 2,
            maxmem_bytes: 1 << 30,
            maxdisk_bytes: 8 << 30,
            template: vmid == 103,
            onboot: false,
            pool: None,
            uptime_s: 0,
        };
        store
            .put_json(&gpve_actors::vm::vm_key(vmid), &rec)
            .await
            .unwrap();
    }
    s.running().state.resources.invalidate();
    let (_, body) = send(get("/cluster/resources?type=vm")).await;
    let vms = body["data"].as_array().unwrap();
    assert_eq!(vms.len(), 3);
    assert_eq!(vms[0]["id"], "qemu/100");
    assert_eq!(vms[2]["template"], 1);
    let (_, body) = send(get("/cluster/resources?type=node")).await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    let (_, body) = send(get("/cluster/resources?type=storage")).await;
    let storages = body["data"].as_array().unwrap();
    assert_eq!(storages.len(), 1, "the default `local` storage");
    assert_eq!(storages[0]["id"], format!("storage/{NODE}/local"));
    // Three VMs, the node and its storage.
    let (_, body) = send(get("/cluster/resources")).await;
    assert_eq!(body["data"].as_array().unwrap().len(), 5);
    let (_, body) = send(get("/cluster/nextid")).await;
    assert_eq!(body["data"], "102");
    let (code, body) = send(get("/cluster/nextid?vmid=101")).await;
    assert_eq!(code, 400);
    assert_eq!(body["message"], "VM 101 already exists\n");
    s.stop().await;
}
