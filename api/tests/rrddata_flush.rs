//! Cost of persisting the usage archives: one flush (one transaction) after a minute of
//! samples of a node with 100 VMs, on the real redb store, and a reload. Prints the
//! figures for docs/benchmarks.md; asserts only loose bounds (a debug build on a loaded
//! 2-core machine).

use std::collections::BTreeMap;
use std::time::Instant;

use gpve_api::metrics::rrd::{self, Rrd, SeriesId, TIMEFRAMES};
use gpve_store::Store;

const VMS: u32 = 100;
const SAMPLES_PER_FLUSH: u64 = 6;
const FLUSHES: u64 = 10;

#[tokio::test]
async fn a_flush_of_100_vms_is_one_small_transaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_redb(&dir.path().join("s.redb")).expect("store");
    let mut archives = Rrd::new();
    let fields: BTreeMap<&'static str, f64> = [
        "cpu",
        "maxcpu",
        "mem",
        "maxmem",
        "netin",
        "netout",
        "diskread",
        "diskwrite",
    ]
    .into_iter()
    .map(|f| (f, 1.0))
    .collect();
    let start_s: u64 = 1_800_000_000;
    let mut times_ms = Vec::new();
    let mut rows = 0;
    let mut bytes = 0;
    for flush in 0..FLUSHES {
        for s in 0..SAMPLES_PER_FLUSH {
            let at_s = start_s + flush * 60 + s * 10;
            for vmid in 0..VMS {
                archives.update(&SeriesId::Vm(100 + vmid), at_s, &fields);
            }
        }
        let pending = archives.take_pending();
        rows = pending.writes.len();
        bytes = pending
            .writes
            .iter()
            .map(|(k, v)| k.as_bytes().len() + v.len())
            .sum();
        let t = Instant::now();
        rrd::persist(&store, &pending).await.expect("persist");
        times_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times_ms.sort_by(f64::total_cmp);
    let t = Instant::now();
    let loaded = Rrd::load(&store).await.expect("load");
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "rrd flush: {VMS} VMs, {rows} rows ({} KB) per flush in one transaction: median {:.1} ms, max {:.1} ms; reload of {} flushes' rows {:.1} ms",
        bytes / 1024,
        times_ms[times_ms.len() / 2],
        times_ms[times_ms.len() - 1],
        FLUSHES,
        load_ms
    );
    assert_eq!(
        rows,
        VMS as usize * TIMEFRAMES.len(),
        "one row per archive and VM"
    );
    assert!(loaded.contains(&SeriesId::Vm(100 + VMS - 1)));
    assert!(times_ms[times_ms.len() / 2] < 2_000.0);
}
