//! `gpvectl vc ...` and `gpvectl apply -f` with VirtualCluster manifests against a real
//! in-process server (dev tier: no processes; isolation L1/L2 and L3 workers).

mod gpvectl_common;
mod server_common;

use gpve_api::client::Fingerprint;
use gpve_api::tenancy::{Quota, TenantRecord};
use gpvectl_common::{ctl, login_root, ok};
use serde_json::Value;
use server_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpvectl_vc_and_apply() {
    let srv = TestServer::start().await;
    let store = srv.running().state.store.clone();
    store
        .put_json(
            &gpve_api::tenancy::tenant_key("acme"),
            &TenantRecord {
                name: "acme".into(),
                comment: String::new(),
                created_at_s: 0,
                quota: Quota::default(),
            },
        )
        .await
        .expect("tenant");
    let url = format!("https://127.0.0.1:{}", srv.running().addr.port());
    let fp = Fingerprint::of_pem_file(&data_path(&srv.dir).join("cert.pem")).expect("fp");
    let config = srv.dir.path().join("gpvectl.yaml");
    login_root(&config, &url, &fp.to_string(), ROOT_PW);

    // Refused with the supported values, before anything is sent.
    let out = ctl(
        &config,
        &[
            "vc",
            "create",
            "bad",
            "--k8s-version",
            "1.12",
            "--tenant",
            "acme",
        ],
        "",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("supported versions: 1.28, 1.29, 1.30, 1.31"),
        "{err}"
    );
    let out = ctl(
        &config,
        &[
            "vc",
            "create",
            "bad",
            "--isolation-level",
            "L5",
            "--tenant",
            "acme",
        ],
        "",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("L1, L2, L3"));

    let stdout = ok(&ctl(
        &config,
        &[
            "vc",
            "create",
            "c1",
            "--k8s-version",
            "1.30",
            "--control-plane-tier",
            "dev",
            "--worker-nodes",
            "3",
            "--isolation-level",
            "L2",
            "--tenant",
            "acme",
        ],
        "",
    ));
    assert!(
        stdout.contains("virtualcluster.gpve.io/c1 created"),
        "{stdout}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let vc = loop {
        let v: Value = serde_json::from_str(&ok(&ctl(
            &config,
            &["-o", "json", "vc", "get", "c1", "--tenant", "acme"],
            "",
        )))
        .expect("json");
        if v["status"]["conditions"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
        {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let nodes = vc["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "NodesReady")
        .expect("NodesReady")
        .clone();
    assert_eq!(nodes["status"], "False");
    assert_eq!(nodes["reason"], "NoKubernetesRuntime", "{vc}");
    assert_eq!(
        vc["status"]["workers"].as_array().map(Vec::len),
        Some(0),
        "L2 makes no VMs"
    );
    let table = ok(&ctl(&config, &["vc", "list", "--tenant", "acme"], ""));
    assert!(
        table.contains("c1") && table.contains("L2") && table.contains("Provisioning"),
        "{table}"
    );
    let kc = ok(&ctl(
        &config,
        &["vc", "kubeconfig", "c1", "--tenant", "acme"],
        "",
    ));
    assert!(
        kc.contains("certificate-authority-data") && kc.contains("current-context: c1"),
        "{kc}"
    );
    let up = ok(&ctl(
        &config,
        &[
            "-o",
            "json",
            "vc",
            "upgrade",
            "c1",
            "--k8s-version",
            "1.31",
            "--tenant",
            "acme",
        ],
        "",
    ));
    assert!(up.contains("\"kubernetesVersion\": \"1.31\""), "{up}");

    // apply -f: the tenant from the label, created, unchanged, then scaled.
    let file = srv.dir.path().join("vc.yaml");
    let doc = |count: u64| {
        format!(
            "apiVersion: gpve.io/v1\nkind: VirtualCluster\nmetadata:\n  name: c2\n  labels: {{gpve.io/tenant: acme}}\n\
         spec:\n  kubernetesVersion: \"1.29\"\n  controlPlane: {{tier: dev}}\n  isolationLevel: L3\n\
         \x20 workerNodes: {{mode: private, count: {count}, resources: {{cpu: 1, memory: 32Mi, disk: 1Gi}}}}\n"
        )
    };
    std::fs::write(&file, doc(1)).expect("write");
    let f = file.display().to_string();
    assert!(
        ok(&ctl(&config, &["apply", "-f", &f], "")).contains("virtualcluster.gpve.io/c2 created")
    );
    assert!(
        ok(&ctl(&config, &["apply", "-f", &f], "")).contains("virtualcluster.gpve.io/c2 unchanged")
    );
    std::fs::write(&file, doc(2)).expect("write");
    assert!(
        ok(&ctl(&config, &["apply", "-f", &f], ""))
            .contains("virtualcluster.gpve.io/c2 configured")
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let v: Value = serde_json::from_str(&ok(&ctl(
            &config,
            &["-o", "json", "vc", "get", "c2", "--tenant", "acme"],
            "",
        )))
        .expect("json");
        if v["status"]["workers"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    std::fs::write(
        &file,
        doc(1).replace(
            "kubernetesVersion: \"1.29\"",
            "kubernetesVersion: \"1.29\"\n  extra: 1",
        ),
    )
    .expect("write");
    let out = ctl(&config, &["apply", "-f", &f], "");
    assert!(String::from_utf8_lossy(&out.stderr).contains("spec.extra: unknown field"));

    for name in ["c1", "c2"] {
        let out = ok(&ctl(
            &config,
            &["vc", "delete", name, "--tenant", "acme"],
            "",
        ));
        assert!(out.contains("deleted"), "{out}");
    }
    let list: Value = serde_json::from_str(&ok(&ctl(
        &config,
        &["-o", "json", "vc", "list", "--tenant", "acme"],
        "",
    )))
    .expect("json");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0));
    srv.stop().await;
}
