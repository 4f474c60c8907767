//! An acknowledged write survives SIGKILL of the real `gpve-server` binary.

mod server_common;

use serde_json::Value;
use server_common::*;

#[tokio::test]
async fn acknowledged_writes_survive_kill9() {
    let dir = init_dir().await;
    let data = data_path(&dir);
    let client = client_for(&data);
    let srv = BinServer::start(&data).await;
    let (ticket, csrf) = login(&client, &srv.base, "root@pam", ROOT_PW).await;

    let (code, _) = send(
        client
            .post(format!("{}/access/users", srv.base))
            .header("Cookie", cookie(&ticket))
            .header("CSRFPreventionToken", &csrf)
            .form(&[("userid", "durable@pve"), ("comment", "acknowledged")]),
    )
    .await;
    assert_eq!(code, 200);
    let (code, body) = send(
        client
            .post(format!("{}/access/users/root@pam/token/durable", srv.base))
            .header("Cookie", cookie(&ticket))
            .header("CSRFPreventionToken", &csrf)
            .form(&[("privsep", "0")]),
    )
    .await;
    assert_eq!(code, 200);
    let secret = body["data"]["value"].as_str().unwrap().to_string();
    // Kill right after the acknowledgement: no graceful shutdown, no flush.
    srv.kill9();

    let srv = BinServer::start(&data).await;
    let (code, body) = send(
        client
            .get(format!("{}/access/users/durable@pve", srv.base))
            .header(
                "Authorization",
                format!("PVEAPIToken=root@pam!durable={secret}"),
            ),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["comment"], Value::from("acknowledged"));
    srv.kill9();
}

#[tokio::test]
async fn init_refuses_existing_dir_and_run_needs_init() {
    let dir = init_dir().await;
    let data = data_path(&dir);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gpve-server"))
        .args([
            "init",
            "--root-password",
            "another1",
            "--node-name",
            "n1",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already initialised"), "{err}");

    let empty = dir.path().join("empty");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gpve-server"))
        .args([
            "run",
            "--grpc-listen",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&empty)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not initialised"), "{err}");

    // --root-password-file works and the password is used.
    let fresh = dir.path().join("fresh");
    let pwfile = dir.path().join("pw");
    std::fs::write(&pwfile, "from-a-file\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gpve-server"))
        .args(["init", "--node-name", "n1", "--root-password-file"])
        .arg(&pwfile)
        .arg("--data-dir")
        .arg(&fresh)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let srv = BinServer::start(&fresh).await;
    login(&client_for(&fresh), &srv.base, "root@pam", "from-a-file").await;
    srv.kill9();
}
