//! Usage of a real QEMU test guest (TCG) through the one sampler: `status/current`,
//! `/metrics` and `rrddata` agree; the VM actor publishes its VMID and QEMU pid in the
//! directory; `rrddata` rejects a bad `timeframe` or `cf` with 400; the archives survive a
//! server restart (the QEMU is re-adopted and keeps being sampled).

mod vm_common;

use std::time::{Duration, Instant};

use serde_json::Value;
use vm_common::*;

/// Two samples (10 s apart) plus a loaded machine.
const SAMPLE_WAIT_MS: u64 = 60_000;

fn last_with(points: &[Value], field: &str) -> Option<Value> {
    points
        .iter()
        .rev()
        .find(|p| p.get(field).is_some())
        .cloned()
}

async fn rrd(api: &Api, path: &str, query: &str) -> (u16, Value) {
    api.get(&format!("{path}/rrddata?{query}")).await
}

async fn metrics_text(api: &Api) -> String {
    let url = format!("{}/metrics", api.base.trim_end_matches("/api2/json"));
    let resp = api
        .client
        .get(url)
        .header("Cookie", format!("PVEAuthCookie={}", api.ticket))
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status().as_u16(), 200);
    resp.text().await.expect("body")
}

fn metric(text: &str, name: &str, vmid: &str) -> Option<f64> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition");
    scrape.samples.iter().find_map(|s| {
        if s.metric != name || s.labels.get("vmid") != Some(vmid) {
            return None;
        }
        match s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        }
    })
}

/// `status/current`, `/metrics` and the hour archive read from one sample (retried until
/// no new sample landed in between).
async fn consistent_read(api: &Api, vm: &str) -> (Value, String, Vec<Value>, Vec<Value>) {
    loop {
        let before = api.status(100).await;
        let text = metrics_text(api).await;
        let (c1, avg) = rrd(api, vm, "timeframe=hour").await;
        let (c2, max) = rrd(api, vm, "timeframe=hour&cf=MAX").await;
        assert_eq!((c1, c2), (200, 200), "{avg} {max}");
        let after = api.status(100).await;
        if before["usage-sampled-at"] == after["usage-sampled-at"] {
            let avg = avg["data"].as_array().expect("points").clone();
            let max = max["data"].as_array().expect("points").clone();
            return (after, text, avg, max);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rrddata_metrics_and_status_share_one_sampler_and_survive_a_restart() {
    let g = guest().await;
    let env = Env::new().await;
    let srv = Server::start(&env).await;
    let api = srv.api.clone();
    let q = format!("/nodes/{NODE}/qemu");
    let vm = format!("{q}/100");
    let args = guest_args(&g);
    let (code, body) = api
        .post(
            &q,
            &[
                ("vmid", "100"),
                ("name", "rrd1"),
                ("memory", "128"),
                ("cores", "1"),
                ("kvm", "0"),
                ("serial0", "socket"),
                ("args", &args),
            ],
        )
        .await;
    assert_eq!(code, 200, "create: {body}");
    assert_eq!(
        api.wait_task(body["data"].as_str().expect("upid")).await,
        "OK"
    );

    // Bad input first (no sample needed).
    for query in [
        "timeframe=minute",
        "timeframe=decade",
        "timeframe=hour&cf=MIN",
        "cf=AVERAGE",
    ] {
        let (code, body) = rrd(&api, &vm, query).await;
        assert_eq!(code, 400, "{query}: {body}");
    }
    let (code, body) = rrd(&api, &format!("/nodes/{NODE}"), "timeframe=week&cf=LAST").await;
    assert_eq!(code, 400, "{body}");
    let (code, _) = rrd(&api, &format!("{q}/999"), "timeframe=hour").await;
    assert!(code == 404 || code == 500, "unknown VM: {code}");

    api.task_ok(&format!("{vm}/status/start"), &[]).await;
    wait_ready(&env, 100).await;
    let pid = api.status(100).await["pid"].as_u64().expect("pid");

    // The VM actor owns VMID 100 and this QEMU.
    let url = format!("{}/api/v1/actors", api.base.trim_end_matches("/api2/json"));
    let actors: Value = api
        .client
        .get(url)
        .header("Cookie", format!("PVEAuthCookie={}", api.ticket))
        .send()
        .await
        .expect("actors")
        .json()
        .await
        .expect("json");
    let text = actors.to_string();
    assert!(
        text.contains(&format!("\"qemu_pid\":\"{pid}\"")) && text.contains("\"vmid\":\"100\""),
        "the VM actor publishes its VMID and QEMU pid: {text}"
    );

    // Wait for two samples of the running QEMU (a rate needs two).
    let deadline = Instant::now() + Duration::from_millis(SAMPLE_WAIT_MS);
    loop {
        let (_, body) = rrd(&api, &vm, "timeframe=hour").await;
        let pts = body["data"].as_array().cloned().unwrap_or_default();
        if last_with(&pts, "cpu").is_some()
            && api.status(100).await.get("usage-sampled-at").is_some()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no CPU rate after {SAMPLE_WAIT_MS} ms"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let (status, text, avg, max) = consistent_read(&api, &vm).await;
    assert_eq!(avg.len(), 70, "Proxmox's 70 rows per archive");
    assert_eq!(status["pid"].as_u64(), Some(pid));
    let mem = status["mem"].as_f64().expect("mem");
    assert!(
        mem > 16.0 * 1024.0 * 1024.0,
        "a booted TCG guest's QEMU RSS: {mem}"
    );
    // /metrics shows exactly the sample status/current shows.
    assert_eq!(metric(&text, "gpve_vm_memory_rss_bytes", "100"), Some(mem));
    for (m, f) in [
        ("gpve_vm_disk_read_bytes_total", "diskread"),
        ("gpve_vm_disk_write_bytes_total", "diskwrite"),
        ("gpve_vm_network_receive_bytes_total", "netin"),
        ("gpve_vm_network_transmit_bytes_total", "netout"),
        ("gpve_vm_cpu_ratio", "cpu"),
    ] {
        assert_eq!(metric(&text, m, "100"), status[f].as_f64(), "{m} vs {f}");
    }
    let cpu_s = metric(&text, "gpve_vm_cpu_seconds_total", "100").expect("cpu seconds");
    assert!(cpu_s > 1.0, "booting under TCG takes CPU time: {cpu_s}");
    // The newest row holds the latest sample: its MAX bounds it, its AVERAGE is near it.
    let last_avg = last_with(&avg, "mem").expect("a row with samples");
    let last_max = last_with(&max, "mem").expect("a row with samples");
    assert_eq!(last_avg["time"], last_max["time"]);
    assert_eq!(last_avg["maxmem"].as_f64(), status["maxmem"].as_f64());
    assert_eq!(last_avg["maxcpu"].as_f64(), status["cpus"].as_f64());
    let row_max = last_max["mem"].as_f64().expect("mem");
    let row_avg = last_avg["mem"].as_f64().expect("mem");
    assert!(
        row_max >= mem && row_avg <= row_max,
        "{row_avg} {row_max} {mem}"
    );
    assert!(row_avg > mem * 0.5, "{row_avg} vs {mem}");
    let cpu = last_avg["cpu"].as_f64().expect("cpu");
    assert!((0.0..=1.0).contains(&cpu), "{cpu}");
    for f in ["netin", "netout", "diskread", "diskwrite"] {
        assert!(
            last_avg[f].as_f64().is_some_and(|v| v >= 0.0),
            "{f}: {last_avg}"
        );
    }
    // The node's archive has Proxmox's node fields.
    let (code, body) = rrd(&api, &format!("/nodes/{NODE}"), "timeframe=hour").await;
    assert_eq!(code, 200);
    let node_pts = body["data"].as_array().expect("points");
    let last = last_with(node_pts, "memtotal").expect("node row");
    for f in [
        "cpu",
        "maxcpu",
        "loadavg",
        "memused",
        "rootused",
        "roottotal",
    ] {
        assert!(last.get(f).is_some(), "node field {f}: {last}");
    }
    let (code, body) = rrd(&api, &format!("/nodes/{NODE}"), "timeframe=decade&cf=MAX").await;
    assert_eq!(code, 200, "{body}");

    // Restart the server: the rows written before are still there (flushed at stop).
    let before: Vec<Value> = avg
        .iter()
        .filter(|p| p.get("mem").is_some())
        .cloned()
        .collect();
    srv.stop();
    let srv = Server::start(&env).await;
    let api = srv.api.clone();
    let (code, body) = rrd(&api, &vm, "timeframe=hour").await;
    assert_eq!(code, 200);
    let after = body["data"].as_array().expect("points");
    let newest = before.last().map(|p| p["time"].clone());
    for old in &before {
        let again = after
            .iter()
            .find(|p| p["time"] == old["time"])
            .expect("the row is still in the hour window");
        if Some(old["time"].clone()) == newest {
            // The row of the current minute may have taken new samples since.
            assert!(again.get("maxmem").is_some(), "{again}");
        } else {
            assert_eq!(again, old, "a finished row is unchanged after the restart");
        }
    }
    api.task_ok(&format!("{vm}/status/stop"), &[]).await;
    srv.stop();
}
