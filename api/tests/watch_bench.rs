//! Benchmark of the watch stream (run explicitly, it is `#[ignore]`d):
//! `cargo test -p gpve-api --release --test watch_bench -- --ignored --nocapture`.
//!
//! Event latency: from just before a VM record's commit in the server's store (the real
//! redb store, fsync included) to the moment each of N watchers (each its own HTTPS/HTTP/2
//! connection through the Rust client, in the same process) has the event. One write at a
//! time; the next is committed when every watcher has the previous one.
//! `GPVE_BENCH_WATCHERS` (default `1,10,100`) and `GPVE_BENCH_WATCH_EVENTS` (default 300).

mod server_common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use gpve_api::client::watch::{WatchKind, WatchOptions};
use gpve_api::client::{Client, Fingerprint};
use hdrhistogram::Histogram;
use serde_json::json;
use server_common::*;

const BENCH_VMID: u32 = 990_000;
const RECEIPT_TIMEOUT_MS: u64 = 30_000;

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn bench_watch_event_latency() {
    let srv = TestServer::start().await;
    let store = srv.running().state.store.clone();
    let fp = Fingerprint::of_pem_file(&data_path(&srv.dir).join("cert.pem")).expect("fingerprint");
    let url = srv.base.trim_end_matches("/api2/json").to_string();
    let events = env_list("GPVE_BENCH_WATCH_EVENTS", "300")
        .first()
        .copied()
        .unwrap_or(300);
    println!("| watchers | events | p50 | p99 | max | commit p50 |");
    println!("|---|---|---|---|---|---|");
    let mut round = 0u64;
    for watchers in env_list("GPVE_BENCH_WATCHERS", "1,10,100") {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
        let mut tasks = Vec::new();
        for _ in 0..watchers {
            let client = Client::builder(url.clone())
                .fingerprint(fp)
                .build()
                .expect("client");
            client.login("root@pam", ROOT_PW).await.expect("login");
            let mut stream = client
                .watch(&WatchOptions::kinds(&[WatchKind::Vm]))
                .await
                .expect("watch");
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(Ok(e)) = stream.next().await {
                    let at = Instant::now();
                    if let Some(i) = e.data["name"]
                        .as_str()
                        .and_then(|n| n.strip_prefix('b'))
                        .and_then(|n| n.parse::<u64>().ok())
                        && tx.send((i, at)).is_err()
                    {
                        return;
                    }
                }
            }));
        }
        let mut latency = Histogram::<u64>::new(3).expect("histogram");
        let mut commit = Histogram::<u64>::new(3).expect("histogram");
        for _ in 0..events {
            round += 1;
            let record = json!({"vmid": BENCH_VMID, "name": format!("b{round}"), "node": NODE,
                                "status": "stopped", "maxcpu": 1, "maxmem_bytes": 1,
                                "maxdisk_bytes": 0});
            let t0 = Instant::now();
            store
                .put_json(&gpve_actors::vm::vm_key(BENCH_VMID), &record)
                .await
                .expect("commit");
            commit
                .record(t0.elapsed().as_micros() as u64)
                .expect("record");
            let mut got = 0;
            while got < watchers {
                let (i, at) =
                    tokio::time::timeout(Duration::from_millis(RECEIPT_TIMEOUT_MS), rx.recv())
                        .await
                        .expect("every watcher got the event in time")
                        .expect("watchers alive");
                if i == round {
                    got += 1;
                    latency
                        .record(at.duration_since(t0).as_micros() as u64)
                        .expect("record");
                }
            }
        }
        println!(
            "| {watchers} | {events} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            ms(&latency, 0.5),
            ms(&latency, 0.99),
            latency.max() as f64 / 1000.0,
            ms(&commit, 0.5)
        );
        for t in tasks {
            t.abort();
        }
    }
    srv.stop().await;
}
