//! `GET /api2/json/cluster/resources` with 1,000 VM records in the store, served by the real
//! `gpve-server` binary over HTTPS on loopback, hit by concurrent keep-alive clients.
//!
//! Run: `cargo bench -p gpve-api --bench cluster_resources`
//! Knobs (environment): GPVE_BENCH_CLIENTS (256), GPVE_BENCH_SECS (10), GPVE_BENCH_VMS (1000),
//! GPVE_BENCH_INTERVAL_MS (0 = closed loop; otherwise each client sends one request per
//! interval, an open-loop load that measures latency below saturation).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpve_actors::vm::{VmRecord, vm_key};
use gpve_api::datadir::{DataDir, NodeConfig};
use gpve_store::Store;
use hdrhistogram::Histogram;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let clients = env_u64("GPVE_BENCH_CLIENTS", 256) as usize;
    let secs = env_u64("GPVE_BENCH_SECS", 10);
    let vms = env_u64("GPVE_BENCH_VMS", 1000) as u32;
    let interval_ms = env_u64("GPVE_BENCH_INTERVAL_MS", 0);

    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    DataDir::new(&data)
        .init(
            "benchpw1",
            NodeConfig {
                node_name: "bench".into(),
                cluster_name: None,
            },
        )
        .await?;
    {
        let store = Store::open_redb(&data.join("gpve.redb"))?;
        let records: Vec<VmRecord> = (0..vms)
            .map(|i| VmRecord {
                vmid: 100 + i,
                name: format!("vm-{}", 100 + i),
                node: "bench".into(),
                status: if i % 3 == 0 { "running" } else { "stopped" }.into(),
                maxcpu: 2,
                maxmem_bytes: 2 << 30,
                maxdisk_bytes: 32 << 30,
                template: false,
                onboot: false,
                pool: None,
                uptime_s: 0,
            })
            .collect();
        store
            .transact(|tx| {
                let res = records
                    .iter()
                    .try_for_each(|r| tx.put_json(&vm_key(r.vmid), r));
                Box::pin(async move { res })
            })
            .await?;
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpve-server"))
        .args(["run", "--grpc-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let base = format!("https://127.0.0.1:{port}/api2/json");
    let cert = reqwest::Certificate::from_pem(&std::fs::read(data.join("cert.pem"))?)?;
    let make_client = || {
        reqwest::Client::builder()
            .add_root_certificate(cert.clone())
            .use_rustls_tls()
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(30))
            .build()
    };
    let setup = make_client()?;
    let mut up = false;
    for _ in 0..200 {
        if setup
            .get(format!("{base}/access/ticket"))
            .send()
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(up, "gpve-server did not start");
    let login: serde_json::Value = setup
        .post(format!("{base}/access/ticket"))
        .form(&[("username", "root@pam"), ("password", "benchpw1")])
        .send()
        .await?
        .json()
        .await?;
    let ticket = login["data"]["ticket"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let csrf = login["data"]["CSRFPreventionToken"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let token: serde_json::Value = setup
        .post(format!("{base}/access/users/root@pam/token/bench"))
        .header("Cookie", format!("PVEAuthCookie={ticket}"))
        .header("CSRFPreventionToken", csrf)
        .form(&[("privsep", "0")])
        .send()
        .await?
        .json()
        .await?;
    let auth = Arc::new(format!(
        "PVEAPIToken=root@pam!bench={}",
        token["data"]["value"].as_str().unwrap_or_default()
    ));
    let url = Arc::new(format!("{base}/cluster/resources"));

    // Check the answer once.
    let first: serde_json::Value = setup
        .get(url.as_str())
        .header("Authorization", auth.as_str())
        .send()
        .await?
        .json()
        .await?;
    let entries = first["data"].as_array().map(Vec::len).unwrap_or(0);
    anyhow::ensure!(
        entries == vms as usize + 1,
        "expected {} entries, got {entries}",
        vms + 1
    );
    let body_bytes = serde_json::to_vec(&first)?.len();

    let warmup = Duration::from_secs(2);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..clients {
        let client = make_client()?;
        let (url, auth) = (url.clone(), auth.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut errors = 0u64;
            // Spread the clients' first requests over one interval: starting them together
            // would measure a synchronised burst of `clients` requests, not a steady load.
            let mut next =
                Instant::now() + Duration::from_millis(interval_ms * i as u64 / clients as u64);
            while Instant::now() < end {
                if interval_ms > 0 {
                    tokio::time::sleep_until(next.into()).await;
                    next += Duration::from_millis(interval_ms);
                }
                let t0 = Instant::now();
                let ok = match client
                    .get(url.as_str())
                    .header("Authorization", auth.as_str())
                    .send()
                    .await
                {
                    Ok(resp) => resp.status().is_success() && resp.bytes().await.is_ok(),
                    Err(_) => false,
                };
                let t1 = Instant::now();
                if t0 >= measure_from && t1 <= end {
                    if ok {
                        hist.record((t1 - t0).as_micros() as u64)?;
                    } else {
                        errors += 1;
                    }
                }
            }
            anyhow::Ok((hist, errors))
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await??;
        hist.add(&h)?;
        errors += e;
    }
    let _ = child.kill();
    let _ = child.wait();

    let mode = if interval_ms == 0 {
        "closed loop".to_string()
    } else {
        format!("open loop, 1 request per {interval_ms} ms per client")
    };
    println!(
        "GET /cluster/resources: {vms} VMs ({entries} entries, {body_bytes} bytes/response), {clients} HTTPS keep-alive clients, {mode}, {secs} s after {} s warm-up",
        warmup.as_secs()
    );
    println!(
        "requests {}  errors {}  throughput {:.0} req/s",
        hist.len(),
        errors,
        hist.len() as f64 / secs as f64
    );
    println!(
        "latency p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        hist.value_at_quantile(0.50) as f64 / 1000.0,
        hist.value_at_quantile(0.90) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.value_at_quantile(0.999) as f64 / 1000.0,
        hist.max() as f64 / 1000.0
    );
    Ok(())
}
