//! `gpvectl vm` against the real server: create with a direct-boot test guest and start
//! (the guest boots), list, get, a refused start, stop, snapshot, delete.

mod gpvectl_common;
mod vm_common;

use gpvectl_common::{ctl, login_root, ok};

use gpve_api::client::Fingerprint;
use vm_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpvectl_vm_create_start_stop_delete() {
    let g = guest().await;
    let env = Env::new().await;
    let srv = Server::start(&env).await;
    let url = srv.api.base.trim_end_matches("/api2/json").to_string();
    let fp = Fingerprint::of_pem_file(&env.data().join("cert.pem")).expect("fingerprint");
    let config = env.dir.path().join("gpvectl.yaml");
    login_root(&config, &url, &fp.to_string(), ROOT_PW);

    let kernel = g.kernel.display().to_string();
    let initrd = g.initrd.display().to_string();
    let out = ctl(
        &config,
        &[
            "vm",
            "create",
            "ctl1",
            "--cpu",
            "1",
            "--memory",
            "128Mi",
            "--disk",
            "size=1Gi,storage=local",
            "--tcg",
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--append",
            "console=ttyS0 quiet panic=-1",
            "--start",
        ],
        "",
    );
    let stdout = ok(&out);
    assert!(
        stdout.contains("VM 100 (ctl1) created and started"),
        "{stdout}"
    );
    // the task log was followed
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("VM 100 started (pid"), "{stderr}");
    wait_ready(&env, 100).await;

    let list: serde_json::Value =
        serde_json::from_str(&ok(&ctl(&config, &["-o", "json", "vm", "list"], ""))).expect("json");
    assert_eq!(list[0]["vmid"], 100);
    assert_eq!(list[0]["status"], "running");
    let table = ok(&ctl(&config, &["vm", "get", "ctl1"], ""));
    assert!(
        table.contains("scsi0: local:100/vm-100-disk-0.qcow2"),
        "{table}"
    );

    let refused = ctl(&config, &["vm", "start", "ctl1"], "");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("it is running"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    ok(&ctl(&config, &["vm", "stop", "100"], ""));
    assert_eq!(srv.api.status(100).await["status"], "stopped");
    ok(&ctl(&config, &["vm", "snapshot", "ctl1", "s1"], ""));
    let snaps = ok(&ctl(&config, &["vm", "snapshot", "ctl1", "--list"], ""));
    assert!(snaps.contains("s1"), "{snaps}");
    let cloned = ok(&ctl(&config, &["vm", "clone", "ctl1", "ctl2"], ""));
    assert!(
        cloned.contains("VM 100 cloned to VM 101 (ctl2)"),
        "{cloned}"
    );
    assert_eq!(env.images(101).len(), 1);
    ok(&ctl(&config, &["vm", "delete", "ctl2"], ""));
    ok(&ctl(&config, &["vm", "delete", "ctl1"], ""));
    assert!(env.images(100).is_empty());
    let (code, _) = srv.api.get(&format!("/nodes/{NODE}/qemu/100/config")).await;
    assert_eq!(code, 404);
    srv.stop();
}
