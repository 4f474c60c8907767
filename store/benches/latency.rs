//! Acknowledged-write latency of the store: time from calling `transact` to its `Ok`, i.e. to a
//! durable (fsynced) commit for redb. Not a timed test: it prints p50/p99 per scenario.
//!
//! `cargo bench -p gpve-store --bench latency` (env `GPVE_BENCH_WRITES`, default 2000 per
//! scenario; the redb file lives in `$TMPDIR`, which must be a real disk for the figures to
//! mean anything).

use std::time::Instant;

use gpve_store::{Key, SimFaults, Store, StoreError};
use hdrhistogram::Histogram;

/// Concurrent writers in the concurrent scenarios.
const WRITERS: u64 = 8;

fn writes_per_scenario() -> u64 {
    std::env::var("GPVE_BENCH_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= WRITERS)
        .unwrap_or(2000)
}

async fn blind_write(store: &Store, i: u64) -> Result<(), StoreError> {
    let value = vec![0x5a; 100];
    store.set(&Key::pack(&("bench", "blind", i)), &value).await
}

async fn increment(store: &Store, counter: u64) -> Result<(), StoreError> {
    store
        .transact(|tx| {
            let k = Key::pack(&("bench", "counter", counter));
            Box::pin(async move {
                let n: u64 = tx.get_json(&k).await?.unwrap_or(0);
                tx.put_json(&k, &(n + 1))?;
                Ok(())
            })
        })
        .await
}

#[derive(Clone, Copy)]
enum Op {
    Blind,
    /// Read-modify-write of one counter per writer (no contention).
    Increment,
    /// Read-modify-write of one shared counter (contention, retries).
    SharedIncrement,
}

/// Latencies of acknowledged writes, failed writes (retries exhausted), wall time.
async fn run(store: &Store, op: Op, writers: u64, total: u64) -> (Histogram<u64>, u64, f64) {
    let started = Instant::now();
    let per_writer = total / writers;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut failed = 0u64;
            for j in 0..per_writer {
                let t = Instant::now();
                let r = match op {
                    Op::Blind => blind_write(&store, w * per_writer + j).await,
                    Op::Increment => increment(&store, w).await,
                    Op::SharedIncrement => increment(&store, u64::MAX).await,
                };
                if r.is_err() {
                    failed += 1;
                    continue;
                }
                let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                h.saturating_record(us.max(1));
            }
            (h, failed)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut failed = 0;
    for t in tasks {
        let (h, f) = t.await.expect("writer task");
        all.add(h).expect("merge histograms");
        failed += f;
    }
    (all, failed, started.elapsed().as_secs_f64())
}

fn report(backend: &str, scenario: &str, h: &Histogram<u64>, failed: u64, secs: f64) {
    println!(
        "{backend:<9} {scenario:<28} ok={:<5} failed={failed:<3} p50={:>7}us p99={:>7}us max={:>8}us mean={:>8.1}us {:>8.0} commits/s",
        h.len(),
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.99),
        h.max(),
        h.mean(),
        h.len() as f64 / secs
    );
}

async fn scenarios(backend: &str, store: &Store, total: u64) {
    let cases = [
        ("blind put, 1 writer", Op::Blind, 1),
        ("read-modify-write, 1 writer", Op::Increment, 1),
        ("blind put, 8 writers", Op::Blind, WRITERS),
        ("rmw own key, 8 writers", Op::Increment, WRITERS),
        ("rmw shared key, 8 writers", Op::SharedIncrement, WRITERS),
    ];
    for (name, op, writers) in cases {
        let (h, failed, secs) = run(store, op, writers, total).await;
        report(backend, name, &h, failed, secs);
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing special. Either way
    // run the scenarios, smaller under `cargo test` so the suite stays fast.
    let total = if std::env::args().any(|a| a == "--bench") {
        writes_per_scenario()
    } else {
        WRITERS * 4
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let redb = Store::open_redb(&dir.path().join("bench.redb")).expect("open redb");
        println!(
            "acknowledged-write latency, {total} writes per scenario, tmp dir {}",
            dir.path().display()
        );
        scenarios("redb", &redb, total).await;
        let (sim, _control) = Store::simulated(SimFaults::default());
        scenarios("simulated", &sim, total).await;
    });
}
