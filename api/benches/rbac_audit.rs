//! RBAC and audit costs: the evaluator's answer for one path (pure, over a large ACL) and
//! the latency of appending to the hash-chained audit log on the real redb store, with 1
//! and 8 concurrent writers (every append is a read-modify-write of the chain head).
//!
//! `cargo bench -p gpve-api --bench rbac_audit` (`GPVE_BENCH_APPENDS`, default 400).

use std::collections::BTreeSet;
use std::time::Instant;

use gpve_api::audit::{AuditEntry, AuditKind, AuditLog, Verification};
use gpve_api::rbac::{AccessConfig, AclNode, Principal};
use hdrhistogram::Histogram;

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn evaluator() {
    // 10,000 VMs each with a user entry, 100 groups on /vms, a pool of 1,000 VMs.
    let mut cfg = AccessConfig::builtin();
    for vmid in 100..10_100u32 {
        let mut node = AclNode::default();
        node.users
            .entry(format!("u{}@pve", vmid % 500))
            .or_default()
            .insert("PVEVMUser".into(), true);
        cfg.acl.insert(format!("/vms/{vmid}"), node);
        if vmid < 1_100 {
            cfg.vm_pool.insert(vmid, "p1".into());
        }
    }
    let mut vms = AclNode::default();
    for g in 0..100 {
        vms.groups
            .entry(format!("g{g}"))
            .or_default()
            .insert("PVEAuditor".into(), true);
    }
    cfg.acl.insert("/vms".into(), vms);
    let p = Principal::User {
        userid: "u7@pve".into(),
        groups: ["g3".to_string(), "g50".to_string()]
            .into_iter()
            .collect::<BTreeSet<_>>(),
    };
    let n = 200_000u32;
    let start = Instant::now();
    let mut granted = 0u32;
    for i in 0..n {
        let path = format!("/vms/{}", 100 + (i % 10_000));
        if !cfg.privileges(&p, &path).is_empty() {
            granted += 1;
        }
    }
    let per = start.elapsed().as_nanos() as f64 / f64::from(n);
    println!(
        "evaluator: {per:.0} ns per path ({n} checks over 10,000 ACL paths, {granted} granted)"
    );
}

fn entry(i: u64) -> AuditEntry {
    AuditEntry {
        kind: AuditKind::Request,
        request: None,
        user: "bench@pve".into(),
        token: Some("t".into()),
        source: Some("127.0.0.1:4000".into()),
        method: "POST".into(),
        path: format!("/api2/json/nodes/n1/qemu/{}/status/start", 100 + i),
        params: serde_json::json!({"node": "n1", "vmid": 100 + i, "password": "<redacted>"}),
        status: None,
    }
}

async fn appends(writers: u64, total: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = gpve_store::Store::open_redb(&dir.path().join("bench.redb")).expect("store");
    let log = AuditLog::new(store);
    let per_writer = total / writers;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("histogram");
            for i in 0..per_writer {
                let t = Instant::now();
                log.append(entry(w * per_writer + i), 0)
                    .await
                    .expect("append");
                h.record(t.elapsed().as_micros() as u64).expect("record");
            }
            h
        }));
    }
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    for t in tasks {
        h.add(t.await.expect("join")).expect("merge");
    }
    let secs = start.elapsed().as_secs_f64();
    let n = per_writer * writers;
    println!(
        "audit append, {writers} writer(s): p50 {:.1} ms, p99 {:.1} ms, {:.0} appends/s",
        ms(&h, 0.5),
        ms(&h, 0.99),
        n as f64 / secs
    );
    let t = Instant::now();
    let v = log.verify().await.expect("verify");
    assert_eq!(v, Verification::Intact { records: n });
    println!(
        "audit verify: {n} records in {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
}

fn main() {
    let total: u64 = std::env::var("GPVE_BENCH_APPENDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    evaluator();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        appends(1, total).await;
        appends(8, total).await;
    });
}
