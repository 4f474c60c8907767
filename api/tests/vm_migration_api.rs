//! `GET|POST /nodes/{node}/qemu/{vmid}/migrate` and `gpvectl vm migrate` against the real
//! single-node server: the precheck's Proxmox fields (a local disk is listed; there is no
//! other node to allow), and refusals that name their reason and change nothing (no
//! target, the VM's own node, an unknown node, a storage mapping, an unsupported
//! option). The migration itself is tested between node trees in
//! `actors/tests/vm_migration.rs`.

mod gpvectl_common;
mod vm_common;

use gpve_api::client::Fingerprint;
use gpvectl_common::{ctl, login_root};
use vm_common::{Env, NODE, ROOT_PW, Server};

const VMID: u32 = 7200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precheck_and_refusals() {
    let env = Env::new().await;
    let srv = Server::start(&env).await;
    let api = srv.api.clone();
    let q = format!("/nodes/{NODE}/qemu");
    api.task_ok(
        &q,
        &[
            ("vmid", &VMID.to_string()),
            ("name", "migr1"),
            ("memory", "128"),
            ("scsi0", "local:1"),
        ],
    )
    .await;
    let path = format!("{q}/{VMID}/migrate");

    let (code, v) = api.get(&path).await;
    assert_eq!(code, 200, "{v}");
    let d = &v["data"];
    assert_eq!(d["running"], 0);
    assert_eq!(d["allowed_nodes"], serde_json::json!([]));
    assert_eq!(d["not_allowed_nodes"], serde_json::json!({}));
    assert_eq!(d["local_resources"], serde_json::json!([]));
    let disks = d["local_disks"].as_array().expect("local_disks");
    assert_eq!(disks.len(), 1, "{d}");
    assert!(
        disks[0]["volid"]
            .as_str()
            .is_some_and(|s| s.starts_with("local:")),
        "{d}"
    );
    assert_eq!(disks[0]["drivename"], "scsi0");

    // The own node as explicit target: listed as not allowed, with the reason.
    let (code, v) = api.get(&format!("{path}?target={NODE}")).await;
    assert_eq!(code, 200, "{v}");
    let reason = v["data"]["not_allowed_nodes"][NODE]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("is the node the VM is on"), "{v}");
    let (code, v) = api.get(&format!("{path}?target=nowhere")).await;
    assert_eq!(code, 400, "{v}");

    let refusals: [(&[(&str, &str)], &str); 5] = [
        (&[], "target"),
        (&[("target", NODE)], "is the node the VM is on"),
        (
            &[("target", "nowhere")],
            "target node 'nowhere' does not exist",
        ),
        (
            &[("target", "nowhere"), ("targetstorage", "other")],
            "targetstorage",
        ),
        (
            &[("target", "nowhere"), ("with-conntrack-state", "1")],
            "with-conntrack-state",
        ),
    ];
    for (form, why) in refusals {
        let (code, v) = api.post(&path, form).await;
        assert_eq!(code, 400, "{form:?}: {v}");
        assert!(v.to_string().contains(why), "{form:?}: {v}");
    }
    let (code, v) = api.get(&format!("{q}/{VMID}/config")).await;
    assert_eq!(code, 200, "{v}");
    assert!(v["data"].get("lock").is_none(), "{v}");

    // gpvectl says why.
    let url = api.base.trim_end_matches("/api2/json").to_string();
    let fp = Fingerprint::of_pem_file(&env.data().join("cert.pem")).expect("fingerprint");
    let config = env.dir.path().join("gpvectl.yaml");
    login_root(&config, &url, &fp.to_string(), ROOT_PW);
    let out = ctl(&config, &["vm", "migrate", "migr1", "--to", "nowhere"], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist"), "{err}");
    let out = ctl(
        &config,
        &["vm", "migrate", "migr1", "--to", NODE, "--online"],
        "",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is the node the VM is on"), "{err}");
}
