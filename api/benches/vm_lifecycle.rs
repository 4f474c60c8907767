//! VM benchmarks of issue 3 against the real `gpve-server` binary and real QEMU (TCG):
//!
//! (a) create+start latency: from the API request to QMP `running` (observed through
//!     `status/current`; guest boot not included), over GPVE_BENCH_CREATES VMs through the
//!     Proxmox API (`POST /nodes/{node}/qemu start=1`) and as many through the declarative
//!     API (`PUT /api/v1/.../virtualmachines/{name}` with `running: true`);
//! (b) density: GPVE_BENCH_VMS small VMs (GPVE_BENCH_MEM_MIB, no OS: a shared read-only
//!     boot sector halts the CPU with interrupts off, and the PIT and HPET are switched off
//!     because under TCG their timers alone cost about 1 % of a core per halted guest, which
//!     saturates this 2-core machine at 200 VMs and hides what the benchmark is about; an
//!     idle guest under KVM costs next to nothing) running at once: the server's own RSS per VM (QEMU is a separate
//!     process, so it is excluded) and the API latency while they run
//!     (`/cluster/resources` and `status/current`, GPVE_BENCH_CLIENTS closed-loop clients
//!     for GPVE_BENCH_SECS).
//!
//! Run: `cargo bench -p gpve-api --bench vm_lifecycle` (root; about 3 minutes and 8 GiB RAM
//! for 200 QEMUs). Every QEMU whose command line names this run's directory is killed at
//! the end, also when the benchmark fails or panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use gpve_api::datadir::{DataDir, NodeConfig};
use hdrhistogram::Histogram;
use serde_json::{Value, json};

const NODE: &str = "bench";
const PASSWORD: &str = "benchpw1";
/// How often the create+start benchmark polls `status/current`.
const POLL_MS: u64 = 2;
/// Longest wait for one VM to reach `running`.
const RUNNING_TIMEOUT_MS: u64 = 60_000;
/// VMs created at once while filling the node for the density run.
const FILL_PARALLEL: usize = 4;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Kills the server and every QEMU started under `run_root`, whatever happened.
struct Cleanup {
    run_root: PathBuf,
    server: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        let killed = kill_qemus_under(&self.run_root);
        eprintln!("cleanup: killed {killed} QEMU process(es) of this run");
    }
}

/// Pids of the QEMU processes whose command line mentions `root` (each names its pidfile
/// and QMP socket there).
fn qemus_under(root: &Path) -> Vec<i32> {
    let needle = root.to_string_lossy().into_owned();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("qemu-system") && c.contains(&needle)
            })
        })
        .collect()
}

fn signal_all(pids: &[i32], sig: nix::sys::signal::Signal) {
    for &pid in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// SIGKILL every QEMU under `root`; returns how many.
fn kill_qemus_under(root: &Path) -> usize {
    let pids = qemus_under(root);
    signal_all(&pids, nix::sys::signal::Signal::SIGKILL);
    pids.len()
}

/// CPU time (user + system) of a process so far, in clock ticks (1/100 s here).
fn cpu_ticks(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesised command name; utime and stime are 14 and 15.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    ticket: String,
    csrf: String,
    /// QEMU arguments that attach the halting boot sector.
    guest_args: String,
}

/// Write a 512-byte MBR whose code is `cli; hlt; jmp $-1`: the guest parks its only CPU.
fn write_halt_boot_sector(path: &Path) -> anyhow::Result<()> {
    let mut mbr = [0u8; 512];
    mbr[..4].copy_from_slice(&[0xfa, 0xf4, 0xeb, 0xfd]);
    mbr[510..].copy_from_slice(&[0x55, 0xaa]);
    std::fs::write(path, mbr).with_context(|| format!("writing {}", path.display()))
}

impl Api {
    async fn send(
        &self,
        method: reqwest::Method,
        url: String,
        form: Option<&[(&str, String)]>,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, &url)
            .header("Cookie", format!("PVEAuthCookie={}", self.ticket))
            .header("CSRFPreventionToken", &self.csrf);
        if let Some(f) = form {
            req = req.form(f);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        ensure!(status.is_success(), "{url}: {status} {v}");
        Ok(v["data"].clone())
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(
            reqwest::Method::GET,
            format!("{}{path}", self.base),
            None,
            None,
        )
        .await
    }

    async fn qmpstatus(&self, vmid: u32) -> anyhow::Result<String> {
        let v = self
            .get(&format!("/nodes/{NODE}/qemu/{vmid}/status/current"))
            .await?;
        Ok(v["qmpstatus"].as_str().unwrap_or_default().to_string())
    }

    async fn wait_running(&self, vmid: u32) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_millis(RUNNING_TIMEOUT_MS);
        loop {
            if self.qmpstatus(vmid).await? == "running" {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "VM {vmid} not running in time");
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
    }

    /// Proxmox API create with start=1; returns the VMID once QMP says `running`.
    async fn create_proxmox(&self, name: &str, mem_mib: u64) -> anyhow::Result<u32> {
        let form = [
            ("name", name.to_string()),
            ("memory", mem_mib.to_string()),
            ("cores", "1".to_string()),
            ("kvm", "0".to_string()),
            ("args", self.guest_args.clone()),
            ("start", "1".to_string()),
        ];
        let upid = self
            .send(
                reqwest::Method::POST,
                format!("{}/nodes/{NODE}/qemu", self.base),
                Some(&form),
                None,
            )
            .await?;
        let vmid: u32 = upid
            .as_str()
            .and_then(|u| u.split(':').nth(6))
            .and_then(|s| s.parse().ok())
            .context("UPID without VMID")?;
        self.wait_running(vmid).await?;
        Ok(vmid)
    }

    /// Declarative create with `running: true`; returns the VMID once `running`.
    async fn create_manifest(&self, name: &str, mem_mib: u64) -> anyhow::Result<u32> {
        let manifest = json!({
            "apiVersion": "gpve.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": name},
            "spec": {"memory": format!("{mem_mib}Mi"), "running": true,
                "proxmox": {"kvm": 0, "args": self.guest_args}}
        });
        let v1 = self.base.replace("/api2/json", "/api/v1");
        let vm = self
            .send(
                reqwest::Method::PUT,
                format!("{v1}/namespaces/bench/virtualmachines/{name}"),
                None,
                Some(&manifest),
            )
            .await?;
        let vmid = vm["status"]["vmid"]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .context("manifest without status.vmid")?;
        self.wait_running(vmid).await?;
        Ok(vmid)
    }
}

/// `clients` closed-loop clients for `secs`, each alternating `/cluster/resources` and
/// `status/current` of one VM after another.
async fn latency(
    api: &Api,
    vmids: &[u32],
    clients: usize,
    secs: u64,
    label: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let workers = (0..clients).map(|c| async move {
        let mut res = Histogram::<u64>::new(3)?;
        let mut cur = Histogram::<u64>::new(3)?;
        let mut n = c;
        while Instant::now() < deadline {
            let t = Instant::now();
            api.get("/cluster/resources").await?;
            res.record(t.elapsed().as_micros() as u64)?;
            let vmid = vmids[n % vmids.len()];
            n += 7;
            let t = Instant::now();
            api.get(&format!("/nodes/{NODE}/qemu/{vmid}/status/current"))
                .await?;
            cur.record(t.elapsed().as_micros() as u64)?;
        }
        anyhow::Ok((res, cur))
    });
    let mut res = Histogram::<u64>::new(3)?;
    let mut cur = Histogram::<u64>::new(3)?;
    for r in futures::future::join_all(workers).await {
        let (a, b) = r?;
        res.add(a)?;
        cur.add(b)?;
    }
    summary(
        &format!("GET /cluster/resources, {label}, {clients} clients"),
        &res,
    );
    summary(
        &format!("GET status/current, {label}, {clients} clients"),
        &cur,
    );
    Ok(())
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn summary(label: &str, h: &Histogram<u64>) {
    println!(
        "{label}: n={} p50={:.1} ms p99={:.1} ms max={:.1} ms",
        h.len(),
        ms(h, 0.5),
        ms(h, 0.99),
        h.max() as f64 / 1000.0
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let creates = env_u64("GPVE_BENCH_CREATES", 50) as usize;
    let density = env_u64("GPVE_BENCH_VMS", 200) as usize;
    let mem_mib = env_u64("GPVE_BENCH_MEM_MIB", 32);
    let clients = env_u64("GPVE_BENCH_CLIENTS", 4) as usize;
    let secs = env_u64("GPVE_BENCH_SECS", 10);
    ensure!(
        density >= 2 * creates,
        "GPVE_BENCH_VMS must be at least 2 × GPVE_BENCH_CREATES"
    );

    let dir = tempfile::Builder::new()
        .prefix("gpve-bench-vm-")
        .tempdir()?;
    let data = dir.path().join("data");
    let run_root = dir.path().join("run");
    std::fs::create_dir_all(&run_root)?;
    DataDir::new(&data)
        .init(
            PASSWORD,
            NodeConfig {
                node_name: NODE.into(),
                cluster_name: None,
            },
        )
        .await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let server = Command::new(env!("CARGO_BIN_EXE_gpve-server"))
        .args(["run", "--grpc-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env(gpve_actors::vm::RUN_DIR_ENV, &run_root)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let server_pid = server.id();
    let _cleanup = Cleanup {
        run_root: run_root.clone(),
        server: Some(server),
    };

    let cert = reqwest::Certificate::from_pem(&std::fs::read(data.join("cert.pem"))?)?;
    let http = reqwest::Client::builder()
        .add_root_certificate(cert)
        .use_rustls_tls()
        .timeout(Duration::from_secs(60))
        .build()?;
    let base = format!("https://127.0.0.1:{port}/api2/json");
    let mut login = Value::Null;
    for _ in 0..200 {
        if let Ok(r) = http
            .post(format!("{base}/access/ticket"))
            .form(&[("username", "root@pam"), ("password", PASSWORD)])
            .send()
            .await
            && r.status().is_success()
        {
            login = r.json().await?;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let halt = dir.path().join("halt.img");
    write_halt_boot_sector(&halt)?;
    let api = Api {
        guest_args: format!(
            "-machine pit=off,hpet=off -drive if=none,id=halt,format=raw,readonly=on,file={} -device virtio-blk-pci,drive=halt,bootindex=0",
            halt.display()
        ),
        http,
        base,
        ticket: login["data"]["ticket"]
            .as_str()
            .context("gpve-server did not start")?
            .into(),
        csrf: login["data"]["CSRFPreventionToken"]
            .as_str()
            .unwrap_or_default()
            .into(),
    };
    // Warm up (first TLS handshakes, first QEMU exec from a cold page cache), then idle.
    let warm = api.create_proxmox("warmup", mem_mib).await?;
    api.get(&format!("/nodes/{NODE}/qemu/{warm}/status/current"))
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before_kib = rss_kib(server_pid)?;

    // (a) create+start → QMP running, one at a time.
    let mut proxmox = Histogram::<u64>::new(3)?;
    let mut manifest = Histogram::<u64>::new(3)?;
    for i in 0..creates {
        let t = Instant::now();
        api.create_proxmox(&format!("p{i}"), mem_mib).await?;
        proxmox.record(t.elapsed().as_micros() as u64)?;
        let t = Instant::now();
        api.create_manifest(&format!("m{i}"), mem_mib).await?;
        manifest.record(t.elapsed().as_micros() as u64)?;
    }
    summary("create+start to QMP running, Proxmox API", &proxmox);
    summary("create+start to QMP running, declarative API", &manifest);

    // (b) fill the node up to `density` running VMs (the warm-up VM counts).
    let t_fill = Instant::now();
    let todo: Vec<usize> = (2 * creates + 1..density).collect();
    for chunk in todo.chunks(FILL_PARALLEL) {
        let jobs = chunk.iter().map(|i| {
            let api = api.clone();
            let name = format!("d{i}");
            async move { api.create_proxmox(&name, mem_mib).await }
        });
        for r in futures::future::join_all(jobs).await {
            r?;
        }
    }
    let vms = api.get(&format!("/nodes/{NODE}/qemu")).await?;
    let vmids: Vec<u32> = vms
        .as_array()
        .context("VM list")?
        .iter()
        .filter(|v| v["status"] == "running")
        .filter_map(|v| v["vmid"].as_u64().and_then(|n| u32::try_from(n).ok()))
        .collect();
    if vmids.len() != density {
        bail!("{} of {density} VMs are running", vmids.len());
    }
    println!(
        "filled to {density} running VMs in {:.1} s",
        t_fill.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after_kib = rss_kib(server_pid)?;
    let per_vm_kib = (rss_after_kib.saturating_sub(rss_before_kib)) as f64 / density as f64;
    println!(
        "server RSS: {rss_before_kib} KiB with 1 VM, {rss_after_kib} KiB with {density} VMs: {per_vm_kib:.1} KiB per VM"
    );

    // API latency while they run, with the CPU time QEMU and the server used meanwhile.
    let qemus = qemus_under(&run_root);
    let cpu = |pids: &[i32]| pids.iter().map(|&p| cpu_ticks(p)).sum::<u64>();
    let (q0, s0, t0) = (cpu(&qemus), cpu_ticks(server_pid as i32), Instant::now());
    latency(
        &api,
        &vmids,
        clients,
        secs,
        &format!("{density} running VMs"),
    )
    .await?;
    let wall = t0.elapsed().as_secs_f64();
    println!(
        "meanwhile: QEMUs used {:.2} CPUs, the server {:.2} CPUs (of {} cores)",
        (cpu(&qemus) - q0) as f64 / 100.0 / wall,
        (cpu_ticks(server_pid as i32) - s0) as f64 / 100.0 / wall,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // Control: the same with every QEMU frozen, to tell the server's own cost from the
    // guests' competition for the CPUs.
    signal_all(&qemus, nix::sys::signal::Signal::SIGSTOP);
    let frozen = latency(
        &api,
        &vmids,
        clients,
        secs,
        &format!("{density} VMs, QEMUs frozen (SIGSTOP)"),
    )
    .await;
    signal_all(&qemus, nix::sys::signal::Signal::SIGCONT);
    frozen?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average: {}", load.trim());
    Ok(())
}
