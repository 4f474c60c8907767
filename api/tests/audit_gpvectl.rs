//! The audit log end to end with the real binaries: `gpvectl user|group|role|acl` changes
//! are recorded (secrets redacted), survive a restart, `gpvectl audit verify` passes, and
//! after a record is altered directly in the store it fails naming that record.

mod gpvectl_common;
mod server_common;

use gpvectl_common::{ctl, login_root, ok};
use std::path::Path;

use gpve_api::audit::{AuditRecord, Verification};
use gpve_api::client::Fingerprint;
use gpve_api::datadir::DataDir;
use gpve_store::{Key, Store};
use server_common::{BinServer, ROOT_PW, data_path, init_dir};

fn login(config: &Path, server: &BinServer, fp: &str) {
    let url = format!("https://{}", server.addr);
    login_root(config, &url, fp, ROOT_PW);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpvectl_audit_verify_detects_a_tampered_record() {
    let dir = init_dir().await;
    let data = data_path(&dir);
    let config = dir.path().join("gpvectl.yaml");
    let fp = Fingerprint::of_pem_file(&data.join("cert.pem"))
        .expect("fingerprint")
        .to_string();
    let server = BinServer::start(&data).await;
    login(&config, &server, &fp);
    ok(&ctl(
        &config,
        &["group", "create", "ops", "--comment", "on call"],
        "",
    ));
    ok(&ctl(
        &config,
        &[
            "user",
            "create",
            "carol@pve",
            "--password-stdin",
            "--groups",
            "ops",
        ],
        "carol-secret-pw\n",
    ));
    ok(&ctl(
        &config,
        &[
            "role",
            "create",
            "VMStarter",
            "--privs",
            "VM.PowerMgmt,VM.Audit",
        ],
        "",
    ));
    ok(&ctl(
        &config,
        &[
            "acl",
            "set",
            "/vms/100",
            "--role",
            "VMStarter",
            "--group",
            "ops",
        ],
        "",
    ));
    // Refused: a pam user other than root.
    let out = ctl(&config, &["user", "create", "mallory@pam"], "");
    assert!(!out.status.success());
    let acl = ok(&ctl(&config, &["acl", "list"], ""));
    assert!(
        acl.contains("/vms/100") && acl.contains("VMStarter") && acl.contains("ops"),
        "{acl}"
    );
    let users = ok(&ctl(&config, &["user", "list"], ""));
    assert!(users.contains("carol@pve"), "{users}");
    let roles = ok(&ctl(&config, &["role", "list"], ""));
    assert!(
        roles.contains("PVEVMUser") && roles.contains("VMStarter"),
        "{roles}"
    );

    let list = ok(&ctl(&config, &["audit", "list", "-o", "json"], ""));
    let recs: Vec<AuditRecord> = serde_json::from_str(&list).expect("audit JSON");
    let user_create = recs
        .iter()
        .find(|r| r.path == "/api2/json/access/users" && r.params["userid"] == "carol@pve")
        .expect("user creation audited");
    assert_eq!(user_create.user, "root@pam");
    assert_eq!(user_create.params["password"], "<redacted>");
    assert!(!list.contains("carol-secret-pw"));
    assert!(
        recs.iter()
            .any(|r| r.path == "/api2/json/access/users" && r.status == Some(400)),
        "the refused pam user is audited too"
    );
    let filtered = ok(&ctl(
        &config,
        &[
            "audit",
            "list",
            "--path",
            "/api2/json/access/acl",
            "-o",
            "json",
        ],
        "",
    ));
    let acl_recs: Vec<AuditRecord> = serde_json::from_str(&filtered).expect("json");
    assert!(!acl_recs.is_empty() && acl_recs.iter().all(|r| r.path == "/api2/json/access/acl"));
    let verify = ok(&ctl(&config, &["audit", "verify"], ""));
    assert!(verify.contains("intact"), "{verify}");

    // Stop the server, alter one record in the store directly, start again.
    drop(server);
    let target = user_create.seq;
    {
        let store = Store::open_redb(&DataDir::new(&data).store()).expect("open store");
        let key = Key::pack(&("audit", "rec", target));
        let mut rec: AuditRecord = store.get_json(&key).await.expect("get").expect("record");
        rec.user = "someone-else@pve".into();
        store.put_json(&key, &rec).await.expect("alter");
        assert_eq!(
            gpve_api::audit::AuditLog::new(store.clone())
                .verify()
                .await
                .expect("verify"),
            Verification::Broken {
                seq: target,
                reason: "its content does not match its hash (altered)".into()
            }
        );
    }
    // The log survives the restart (the new server listens on another port).
    let server = BinServer::start(&data).await;
    login(&config, &server, &fp);
    let out = ctl(&config, &["audit", "verify"], "");
    assert!(!out.status.success(), "verify passed on a tampered log");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("record {target}")) && err.contains("altered"),
        "{err}"
    );
    drop(server);
}
