//! Benchmark (ignored by default): idle VC actors per node. Creates N virtual clusters
//! (dev tier: sqlite, no control-plane binary, isolation L1: no processes, no VMs)
//! through the HTTPS API of an in-process server and reports the create rate and the
//! resident memory each idle VC actor adds.
//!
//! `VC_BENCH_N=1000 cargo test -p gpve-api --release --test vcluster_bench -- --ignored --nocapture`

mod server_common;

use std::time::Instant;

use gpve_api::tenancy::{Quota, TenantRecord};
use serde_json::json;
use server_common::*;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn idle_vcluster_actors_per_node() {
    let n: usize = std::env::var("VC_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let srv = TestServer::start().await;
    srv.running()
        .state
        .store
        .put_json(
            &gpve_api::tenancy::tenant_key("bench"),
            &TenantRecord {
                name: "bench".into(),
                comment: String::new(),
                created_at_s: 0,
                quota: Quota::default(),
            },
        )
        .await
        .expect("tenant");
    let (ticket, csrf) = srv.login().await;
    let url = format!(
        "https://127.0.0.1:{}/api/v1/tenants/bench/vclusters",
        srv.running().addr.port()
    );
    // Warm up the request path before the baseline.
    let _ = send(srv.client.get(&url).header("Cookie", cookie(&ticket))).await;
    let before = rss_kib();
    let t0 = Instant::now();
    for i in 0..n {
        let m = json!({"apiVersion": "gpve.io/v1", "kind": "VirtualCluster",
            "metadata": {"name": format!("vc{i}")},
            "spec": {"kubernetesVersion": "1.30", "controlPlane": {"tier": "dev"},
                     "isolationLevel": "L1", "workerNodes": {"count": 0}}});
        let (s, v) = send(
            srv.client
                .post(&url)
                .header("Cookie", cookie(&ticket))
                .header("CSRFPreventionToken", &csrf)
                .json(&m),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    let create_ms = t0.elapsed().as_millis();
    // Let every actor tick and publish its first status.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let after = rss_kib();
    let alive = srv
        .running()
        .directory
        .snapshot()
        .iter()
        .filter(|a| a.path.contains("/vcluster:bench."))
        .count();
    assert_eq!(alive, n);
    println!(
        "BENCH vcluster idle actors: {n} created in {create_ms} ms ({:.1} ms each, PKI included); RSS {before} KiB -> {after} KiB = {:.1} KiB per VC actor",
        create_ms as f64 / n as f64,
        (after.saturating_sub(before)) as f64 / n as f64
    );
    srv.stop().await;
}
