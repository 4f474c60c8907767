//! Every registered route (from the server's route table, not a list kept here) refuses a
//! token of a user without any ACL entry, and nothing in the store changes; ACL escalation
//! attempts are refused and audited.

mod server_common;

use gpve_api::audit::{AuditFilter, AuditKind, AuditLog, Verification};
use gpve_api::rbac::{Privs, normalize_path};
use gpve_api::router::{Method, Privilege};
use gpve_store::{Key, KeyRange, RangeOptions, Store};
use serde_json::Value;
use server_common::{NODE, TestServer, cookie, send};

/// Sample values for path parameters.
fn sample(name: &str) -> &'static str {
    match name {
        "node" => NODE,
        "vmid" => "100",
        "newid" => "101",
        "storage" => "local",
        "userid" => "root@pam",
        "tokenid" => "t1",
        "upid" => "UPID:n1:00000001:00000001:00000001:qmstart:100:root@pam:",
        "snapname" => "s1",
        "volume" => "local:100/vm-100-disk-0.raw",
        "path" => "gpve-server/api/restart",
        "groupid" => "g1",
        "roleid" => "R1",
        "poolid" => "p1",
        "ns" => "default",
        "name" => "vm1",
        "iface" => "vmbr0",
        "pos" => "0",
        _ => "x1",
    }
}

fn fill(template: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').expect("closing brace") + open;
        let name = rest[open + 1..close].trim_start_matches('*');
        out.push_str(sample(name));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Every key and value of the store except the audit log.
async fn dump(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
    let audit = gpve_api::audit::subspace();
    let rows = store
        .transact(|tx| {
            Box::pin(async move {
                tx.get_range(
                    &KeyRange::new(Key::from_bytes(vec![]), Key::from_bytes(vec![0xff; 4])),
                    RangeOptions::all(),
                )
                .await
            })
        })
        .await
        .expect("dump");
    rows.into_iter()
        .filter(|(k, _)| !k.starts_with(&audit))
        .map(|(k, v)| (k.as_bytes().to_vec(), v))
        .collect()
}

async fn root_call(
    srv: &TestServer,
    auth: &(String, String),
    method: reqwest::Method,
    path: &str,
    form: &[(&str, &str)],
) -> (u16, Value) {
    send(
        srv.client
            .request(method, srv.url(path))
            .header("Cookie", cookie(&auth.0))
            .header("CSRFPreventionToken", &auth.1)
            .form(form),
    )
    .await
}

#[test]
fn route_declarations_name_known_privileges_and_paths() {
    let table = gpve_api::server::route_table();
    assert!(table.len() > 60, "only {} routes", table.len());
    for e in &table {
        let names = e.endpoint.privilege.names();
        assert!(
            Privs::parse(names.iter().copied()).is_ok(),
            "{} {:?}: unknown privilege in {names:?}",
            e.path,
            e.endpoint.method
        );
        fn paths(p: &Privilege, out: &mut Vec<&'static str>) {
            match p {
                Privilege::Perm(path, _) | Privilege::Any(path, _) => out.push(path),
                Privilege::Or(l) | Privilege::And(l) => l.iter().for_each(|x| paths(x, out)),
                _ => {}
            }
        }
        let mut ps = Vec::new();
        paths(&e.endpoint.privilege, &mut ps);
        for p in ps {
            let concrete = if p == "{+path}" {
                "/vms/100".to_string()
            } else {
                fill(p)
            };
            assert!(
                normalize_path(&concrete).is_ok(),
                "{}: ACL path template {p} does not name an ACL object",
                e.path
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprivileged_token_gets_403_everywhere_and_changes_nothing() {
    let srv = TestServer::start().await;
    let root = srv.login().await;
    let store = srv.running().state.store.clone();
    // Something to touch: a user, a group, a pool, a custom role, a VM config.
    let mut secret = String::new();
    for (path, form) in [
        ("/access/groups", vec![("groupid", "g1")]),
        ("/pools", vec![("poolid", "p1")]),
        (
            "/access/roles",
            vec![("roleid", "R1"), ("privs", "VM.Audit")],
        ),
        (
            "/access/users",
            vec![("userid", "nobody@pve"), ("password", "nobody-pw")],
        ),
        ("/access/users/nobody@pve/token/t1", vec![("privsep", "0")]),
        (
            "/nodes/n1/qemu",
            vec![("vmid", "100"), ("memory", "128"), ("kvm", "0")],
        ),
    ] {
        let (code, body) = root_call(&srv, &root, reqwest::Method::POST, path, &form).await;
        assert_eq!(code, 200, "POST {path}: {body}");
        if let Some(v) = body["data"]["value"].as_str() {
            secret = v.to_string();
        }
    }
    let token = format!("PVEAPIToken=nobody@pve!t1={secret}");
    // Let the create task finish before the snapshot.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let before = dump(&store).await;
    let audit = AuditLog::new(store.clone());
    let audited_before = audit
        .list(&AuditFilter::default())
        .await
        .expect("list")
        .len();

    let table = gpve_api::server::route_table();
    let mut writes = 0usize;
    let mut checked = 0usize;
    for e in &table {
        let ep = e.endpoint;
        if ep.privilege == Privilege::World {
            continue;
        }
        let url = format!(
            "https://127.0.0.1:{}{}",
            srv.running().addr.port(),
            fill(&e.path)
        );
        let method = match ep.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Delete => reqwest::Method::DELETE,
        };
        let is_write = ep.method != Method::Get;
        // Plausible parameters, so a route that forgot its check would act.
        let form = [
            ("vmid", "100"),
            ("poolid", "p1"),
            ("groupid", "g1"),
            ("userid", "root@pam"),
            ("path", "/"),
            ("roles", "Administrator"),
            ("users", "nobody@pve"),
            ("password", "hijacked-pw"),
            ("storage", "local"),
        ];
        let req = srv
            .client
            .request(method, &url)
            .header("Authorization", &token);
        let req = if is_write { req.form(&form) } else { req };
        let (code, body) = send(req).await;
        checked += 1;
        if ep.privilege == Privilege::User {
            // `user: all` routes answer, but only with what the caller may see.
            assert_ne!(code, 500, "{:?} {}: {body}", ep.method, e.path);
            assert!(!is_write, "{}: a write open to every user", e.path);
            if code == 200
                && let Some(items) = body["data"].as_array()
            {
                for item in items {
                    assert!(
                        item.get("vmid").is_none() && item.get("storage").is_none(),
                        "{} leaks {item}",
                        e.path
                    );
                }
            }
            continue;
        }
        assert_eq!(code, 403, "{:?} {}: {body}", ep.method, e.path);
        if is_write {
            writes += 1;
        }
    }
    assert!(checked > 60, "walked only {checked} routes");

    let after = dump(&store).await;
    if before != after {
        let b: std::collections::BTreeMap<_, _> = before.into_iter().collect();
        let a: std::collections::BTreeMap<_, _> = after.into_iter().collect();
        let changed: Vec<String> = a
            .keys()
            .chain(b.keys())
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        panic!("the store changed: {changed:?}");
    }
    // Every refused write was audited, with the token named.
    let recs = audit.list(&AuditFilter::default()).await.expect("list");
    let denied: Vec<_> = recs[audited_before..]
        .iter()
        .filter(|r| r.user == "nobody@pve" && r.status == Some(403))
        .collect();
    assert_eq!(denied.len(), writes, "one record per refused write");
    for r in &denied {
        assert!(
            r.kind == AuditKind::Request
                && r.token.as_deref() == Some("t1")
                && r.source
                    .as_deref()
                    .is_some_and(|s| s.starts_with("127.0.0.1:"))
                && (r.path.starts_with("/api2/json/") || r.path.starts_with("/api/v1/")),
            "{r:?}"
        );
    }
    // Secrets never reach the log.
    assert!(
        recs.iter()
            .all(|r| !r.params.to_string().contains("hijacked-pw")),
        "a password was recorded"
    );
    assert!(matches!(
        audit.verify().await.expect("verify"),
        Verification::Intact { .. }
    ));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_escalation_is_refused_and_audited() {
    let srv = TestServer::start().await;
    let root = srv.login().await;
    let put = reqwest::Method::PUT;
    for (path, form) in [
        (
            "/access/users",
            vec![("userid", "vmadm@pve"), ("password", "vmadm-pw")],
        ),
        (
            "/access/users",
            vec![("userid", "other@pve"), ("password", "other-pw")],
        ),
    ] {
        let (code, body) = root_call(&srv, &root, reqwest::Method::POST, path, &form).await;
        assert_eq!(code, 200, "{body}");
    }
    // vmadm may administer VMs under /vms and modify permissions there (PVEAdmin-like
    // on /vms), nothing else.
    let (code, body) = root_call(
        &srv,
        &root,
        put.clone(),
        "/access/acl",
        &[
            ("path", "/vms"),
            ("roles", "PVEAdmin"),
            ("users", "vmadm@pve"),
        ],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let vmadm = server_common::login(&srv.client, &srv.base, "vmadm@pve", "vmadm-pw").await;

    // Within its rights: grant PVEVMUser on /vms/100 to another user.
    let (code, body) = root_call(
        &srv,
        &vmadm,
        put.clone(),
        "/access/acl",
        &[
            ("path", "/vms/100"),
            ("roles", "PVEVMUser"),
            ("users", "other@pve"),
        ],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    // Above its rights: Administrator (has Sys.Modify etc.) on /vms/100, even for itself.
    let (code, _) = root_call(
        &srv,
        &vmadm,
        put.clone(),
        "/access/acl",
        &[
            ("path", "/vms/100"),
            ("roles", "Administrator"),
            ("users", "vmadm@pve"),
        ],
    )
    .await;
    assert_eq!(code, 403);
    // Outside its subtree: anything on /.
    let (code, _) = root_call(
        &srv,
        &vmadm,
        put.clone(),
        "/access/acl",
        &[
            ("path", "/"),
            ("roles", "PVEVMUser"),
            ("users", "vmadm@pve"),
        ],
    )
    .await;
    assert_eq!(code, 403);
    // Path tricks do not climb out of /vms.
    for trick in ["/vms/../", "/vms/..", "/vms/./../access", "/vms/100/../../"] {
        let (code, body) = root_call(
            &srv,
            &vmadm,
            put.clone(),
            "/access/acl",
            &[
                ("path", trick),
                ("roles", "PVEAdmin"),
                ("users", "vmadm@pve"),
            ],
        )
        .await;
        assert_eq!(code, 403, "{trick}: {body}");
    }
    // A user cannot give itself a new password-less root either.
    let (code, _) = root_call(
        &srv,
        &vmadm,
        put.clone(),
        "/access/password",
        &[("userid", "root@pam"), ("password", "owned-root")],
    )
    .await;
    assert_eq!(code, 403);
    // Effective permissions: other@pve has exactly PVEVMUser on /vms/100.
    let (code, body) = root_call(
        &srv,
        &root,
        reqwest::Method::GET,
        "/access/permissions?userid=other@pve&path=/vms/100",
        &[],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["/vms/100"]["VM.PowerMgmt"], 1, "{body}");
    assert!(body["data"]["/vms/100"]["VM.Allocate"].is_null(), "{body}");

    // Every refusal is in the audit log under vmadm@pve.
    let store = srv.running().state.store.clone();
    let recs = AuditLog::new(store)
        .list(&AuditFilter {
            user: Some("vmadm@pve".into()),
            path_prefix: Some("/api2/json/access".into()),
            ..Default::default()
        })
        .await
        .expect("list");
    let refused = recs.iter().filter(|r| r.status == Some(403)).count();
    assert_eq!(refused, 2 + 4 + 1, "{recs:#?}");
    assert!(
        recs.iter()
            .all(|r| !r.params.to_string().contains("owned-root"))
    );
    srv.stop().await;
}
