//! Resource usage of the node and its VMs, sampled by one actor (`usage-sampler` in the
//! server's tree) every [`SAMPLE_INTERVAL_MS`]. The same sample feeds `/metrics`,
//! `status/current` and the `rrddata` archives ([`super::rrd`]), so the three agree.
//!
//! Sources, all read on the host (no message to the VM actors, so a VM busy with a long
//! operation does not hold the sampler up):
//! - VMs: the QEMU pid each VM actor publishes in the directory (`qemu_pid`); CPU time from
//!   `/proc/{pid}/stat`, RSS from `/proc/{pid}/status`, the process's storage I/O from
//!   `/proc/{pid}/io` (`read_bytes`, `write_bytes`), network I/O from the VM's taps
//!   `tap{vmid}i{n}` in `/sys/class/net` (the guest's `netin` is what the host sent to the
//!   tap); configured vCPUs and memory from the VM records.
//! - The node: the node actor's status (CPU, memory, swap, root file system, load) and
//!   `/proc/net/dev` summed over physical-looking interfaces.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gpve_supervisor::{ActorStats, Directory};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::Serialize;

use super::rrd::{self, Rrd, SeriesId};
use crate::state::AppState;

/// How often the sampler reads usage.
pub const SAMPLE_INTERVAL_MS: u64 = 10_000;
/// Samples between two writes of the archives to the store (one minute of samples: the
/// finest archive has one-minute rows).
pub const FLUSH_EVERY_SAMPLES: u64 = 6;
/// Most tap devices read per VM.
pub const MAX_TAPS_PER_VM: usize = 32;

/// Cumulative counters of one QEMU process and its taps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct VmCounters {
    pub cpu_s: f64,
    pub diskread_bytes: u64,
    pub diskwrite_bytes: u64,
    pub netin_bytes: u64,
    pub netout_bytes: u64,
}

/// One VM in a sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmUsage {
    pub vmid: u32,
    pub pid: u32,
    pub maxcpu: u32,
    pub maxmem_bytes: u64,
    pub mem_bytes: u64,
    pub counters: VmCounters,
    /// CPU use over the last interval as a fraction of the VM's vCPUs (0..=1); `None` on
    /// the first sample of a process.
    pub cpu: Option<f64>,
    /// Bytes per second over the last interval: netin, netout, diskread, diskwrite.
    pub rates: Option<[f64; 4]>,
}

/// The node in a sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeUsage {
    pub cpu: f64,
    pub maxcpu: u32,
    pub loadavg: f64,
    pub memused: u64,
    pub memtotal: u64,
    pub swapused: u64,
    pub swaptotal: u64,
    pub rootused: u64,
    pub roottotal: u64,
    pub netin_bytes: u64,
    pub netout_bytes: u64,
    /// Bytes per second over the last interval: netin, netout.
    pub net_rates: Option<[f64; 2]>,
}

/// One sample of everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsageSample {
    /// Unix seconds.
    pub at_s: u64,
    pub node: Option<NodeUsage>,
    pub vms: BTreeMap<u32, VmUsage>,
}

/// Failures of reading usage from the host.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has an unexpected format")]
    Format { path: String },
}

fn read(path: String) -> Result<String, UsageError> {
    std::fs::read_to_string(&path).map_err(|source| UsageError::Read { path, source })
}

/// Clock ticks per second of `/proc/{pid}/stat` times.
fn clk_tck() -> f64 {
    // SAFETY: sysconf only reads a configuration value; it has no memory preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// `utime + stime` in ticks from the text of `/proc/{pid}/stat`. The command name may
/// contain spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `(read_bytes, write_bytes)` from the text of `/proc/{pid}/io`.
pub fn parse_proc_io(io: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some((field("read_bytes:")?, field("write_bytes:")?))
}

/// Interfaces whose traffic is the node's own: not loopback and not the guests' or the
/// bridges' (which would count each packet twice).
fn is_node_interface(name: &str) -> bool {
    !(name == "lo"
        || [
            "tap", "veth", "fwbr", "fwln", "fwpr", "vmbr", "vxlan", "docker", "virbr",
        ]
        .iter()
        .any(|p| name.starts_with(p)))
}

/// Summed `(received, transmitted)` bytes of the node's interfaces from `/proc/net/dev`.
pub fn parse_net_dev(text: &str) -> (u64, u64) {
    let mut rx = 0u64;
    let mut tx = 0u64;
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if !is_node_interface(name.trim()) {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if f.len() >= 9 {
            rx = rx.saturating_add(f[0]);
            tx = tx.saturating_add(f[8]);
        }
    }
    (rx, tx)
}

/// The counters of QEMU process `pid` (no taps).
pub fn read_process(pid: u32) -> Result<(VmCounters, u64), UsageError> {
    let stat_path = format!("/proc/{pid}/stat");
    let ticks = parse_stat_cpu_ticks(&read(stat_path.clone())?)
        .ok_or(UsageError::Format { path: stat_path })?;
    // /proc/{pid}/io needs ptrace rights over the process: QEMU runs as our user or we are
    // root, but a hardened host may refuse; disk I/O then reads 0 rather than failing all.
    let (diskread_bytes, diskwrite_bytes) = read(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|t| parse_proc_io(&t))
        .unwrap_or((0, 0));
    let mem = crate::pve::nodes::qemu::status::rss_bytes(pid);
    Ok((
        VmCounters {
            cpu_s: ticks as f64 / clk_tck(),
            diskread_bytes,
            diskwrite_bytes,
            netin_bytes: 0,
            netout_bytes: 0,
        },
        mem,
    ))
}

/// `(netin, netout)` of VM `vmid`'s taps `tap{vmid}i{n}` under `sys_class_net`: the guest
/// receives what the host transmits on the tap.
pub fn read_taps(sys_class_net: &std::path::Path, vmid: u32) -> (u64, u64) {
    let prefix = format!("tap{vmid}i");
    let Ok(dir) = std::fs::read_dir(sys_class_net) else {
        return (0, 0);
    };
    let counter = |dev: &std::path::Path, name: &str| -> u64 {
        std::fs::read_to_string(dev.join("statistics").join(name))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let mut netin = 0u64;
    let mut netout = 0u64;
    for entry in dir.flatten().take(4_096) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(index) = name.strip_prefix(&prefix) else {
            continue;
        };
        if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let dev = entry.path();
        netin = netin.saturating_add(counter(&dev, "tx_bytes"));
        netout = netout.saturating_add(counter(&dev, "rx_bytes"));
    }
    (netin, netout)
}

/// The (vmid, qemu pid) pairs the VM actors publish in `directory`.
pub fn running_qemus(directory: &Directory) -> BTreeMap<u32, u32> {
    directory
        .snapshot()
        .into_iter()
        .filter_map(|a| {
            let vmid = a.owns.get("vmid")?.parse().ok()?;
            let pid = a.owns.get("qemu_pid")?.parse().ok()?;
            Some((vmid, pid))
        })
        .collect()
}

fn rate(new: u64, old: u64, dt_s: f64) -> f64 {
    // A counter that went down (tap re-created) restarts: no rate rather than a spike.
    if new < old {
        0.0
    } else {
        (new - old) as f64 / dt_s
    }
}

/// Fill the rates of `next` from `prev` (the same process only).
pub fn derive_rates(prev: &UsageSample, next: &mut UsageSample) {
    let dt_s = next.at_s.saturating_sub(prev.at_s) as f64;
    if dt_s <= 0.0 {
        return;
    }
    for (vmid, vm) in &mut next.vms {
        let Some(old) = prev.vms.get(vmid).filter(|o| o.pid == vm.pid) else {
            continue;
        };
        let (n, o) = (&vm.counters, &old.counters);
        let cpus = f64::from(vm.maxcpu.max(1));
        vm.cpu = Some(((n.cpu_s - o.cpu_s).max(0.0) / dt_s / cpus).min(1.0));
        vm.rates = Some([
            rate(n.netin_bytes, o.netin_bytes, dt_s),
            rate(n.netout_bytes, o.netout_bytes, dt_s),
            rate(n.diskread_bytes, o.diskread_bytes, dt_s),
            rate(n.diskwrite_bytes, o.diskwrite_bytes, dt_s),
        ]);
    }
    if let (Some(old), Some(node)) = (&prev.node, &mut next.node) {
        node.net_rates = Some([
            rate(node.netin_bytes, old.netin_bytes, dt_s),
            rate(node.netout_bytes, old.netout_bytes, dt_s),
        ]);
    }
}

/// The archive fields of a VM (Proxmox's `pve2-vm` names; I/O as bytes per second).
pub fn vm_fields(vm: &VmUsage) -> BTreeMap<&'static str, f64> {
    let mut f = BTreeMap::from([
        ("maxcpu", f64::from(vm.maxcpu)),
        ("maxmem", vm.maxmem_bytes as f64),
        ("mem", vm.mem_bytes as f64),
    ]);
    if let Some(cpu) = vm.cpu {
        f.insert("cpu", cpu);
    }
    if let Some([netin, netout, diskread, diskwrite]) = vm.rates {
        f.extend([
            ("netin", netin),
            ("netout", netout),
            ("diskread", diskread),
            ("diskwrite", diskwrite),
        ]);
    }
    f
}

/// The archive fields of the node (Proxmox's `pve2-node` names).
pub fn node_fields(n: &NodeUsage) -> BTreeMap<&'static str, f64> {
    let mut f = BTreeMap::from([
        ("cpu", n.cpu),
        ("maxcpu", f64::from(n.maxcpu)),
        ("loadavg", n.loadavg),
        ("memused", n.memused as f64),
        ("memtotal", n.memtotal as f64),
        ("swapused", n.swapused as f64),
        ("swaptotal", n.swaptotal as f64),
        ("rootused", n.rootused as f64),
        ("roottotal", n.roottotal as f64),
    ]);
    if let Some([netin, netout]) = n.net_rates {
        f.extend([("netin", netin), ("netout", netout)]);
    }
    f
}

#[derive(Debug, Default)]
struct UsageInner {
    latest: Option<Arc<UsageSample>>,
    rrd: Rrd,
    /// The archives were loaded from the store (once per server, not per sampler restart).
    loaded: bool,
    samples: u64,
}

/// The latest sample and the archives; one per server, in [`super::Metrics`].
#[derive(Debug, Clone, Default)]
pub struct Usage(Arc<Mutex<UsageInner>>);

impl Usage {
    fn lock(&self) -> MutexGuard<'_, UsageInner> {
        // Plain data: a panic while holding the lock cannot leave it inconsistent.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The latest sample, if one was taken.
    pub fn latest(&self) -> Option<Arc<UsageSample>> {
        self.lock().latest.clone()
    }

    /// `rrddata` points of a series (see [`Rrd::points`]).
    pub fn points(
        &self,
        id: &SeriesId,
        timeframe: usize,
        cf: rrd::Cf,
        now_s: u64,
    ) -> Vec<serde_json::Value> {
        self.lock().rrd.points(id, timeframe, cf, now_s)
    }

    /// Record `sample` (rates derived from the previous one) in the archives; returns
    /// whether the archives are due to be flushed.
    pub fn record(&self, mut sample: UsageSample, node: &str) -> bool {
        let mut inner = self.lock();
        if let Some(prev) = &inner.latest {
            derive_rates(prev, &mut sample);
        }
        let at_s = sample.at_s;
        if let Some(n) = &sample.node {
            inner
                .rrd
                .update(&SeriesId::Node(node.to_string()), at_s, &node_fields(n));
        }
        for vm in sample.vms.values() {
            inner
                .rrd
                .update(&SeriesId::Vm(vm.vmid), at_s, &vm_fields(vm));
        }
        inner.latest = Some(Arc::new(sample));
        inner.samples += 1;
        inner.samples.is_multiple_of(FLUSH_EVERY_SAMPLES)
    }

    /// Drop the archives of VMs not in `vmids` (deleted VMs).
    pub fn retain_vms(&self, node: &str, vmids: &BTreeSet<u32>) {
        let mut keep: BTreeSet<SeriesId> = vmids.iter().map(|v| SeriesId::Vm(*v)).collect();
        keep.insert(SeriesId::Node(node.to_string()));
        self.lock().rrd.retain(&keep);
    }

    /// Load the archives from the store unless done already (a restarted sampler keeps
    /// the ones in memory, which are newer).
    pub async fn load_once(&self, store: &gpve_store::Store) -> Result<(), rrd::RrdError> {
        if self.lock().loaded {
            return Ok(());
        }
        let loaded = Rrd::load(store).await?;
        let mut inner = self.lock();
        if !inner.loaded {
            inner.rrd = loaded;
            inner.loaded = true;
        }
        Ok(())
    }

    /// Write the rows changed since the last flush, in one transaction. On failure they
    /// stay pending for the next flush.
    pub async fn flush(&self, store: &gpve_store::Store) -> Result<usize, rrd::RrdError> {
        let pending = self.lock().rrd.take_pending();
        let rows = pending.writes.len();
        match rrd::persist(store, &pending).await {
            Ok(()) => Ok(rows),
            Err(e) => {
                self.lock().rrd.restore_pending(pending);
                Err(e)
            }
        }
    }
}

/// Read one sample: the node through its actor, the VMs from the host.
pub async fn take_sample(state: &AppState) -> UsageSample {
    let at_s = u64::try_from(crate::state::now_s()).unwrap_or(0);
    let node = match crate::pve::nodes::node_status(state).await {
        Ok(s) => {
            let (netin_bytes, netout_bytes) = std::fs::read_to_string("/proc/net/dev")
                .map(|t| parse_net_dev(&t))
                .unwrap_or((0, 0));
            Some(NodeUsage {
                cpu: s.cpu,
                maxcpu: s.cpuinfo.cpus,
                loadavg: s.loadavg[0].parse().unwrap_or(0.0),
                memused: s.memory.used,
                memtotal: s.memory.total,
                swapused: s.swap.used,
                swaptotal: s.swap.total,
                rootused: s.rootfs.used,
                roottotal: s.rootfs.total,
                netin_bytes,
                netout_bytes,
                net_rates: None,
            })
        }
        Err(err) => {
            tracing::debug!(error = %err, "usage: node status unavailable");
            None
        }
    };
    let qemus = running_qemus(&state.node.directory);
    let records: BTreeMap<u32, gpve_actors::vm::VmRecord> =
        match gpve_actors::vm::list_vms(&state.store).await {
            Ok(v) => v.into_iter().map(|r| (r.vmid, r)).collect(),
            Err(err) => {
                tracing::warn!(error = %err, "usage: listing VM records failed");
                BTreeMap::new()
            }
        };
    let sys_class_net = std::path::Path::new("/sys/class/net");
    let mut vms = BTreeMap::new();
    for (vmid, pid) in qemus {
        let Some(record) = records.get(&vmid) else {
            continue;
        };
        let (mut counters, mem_bytes) = match read_process(pid) {
            Ok(c) => c,
            Err(err) => {
                // The process ended between the directory snapshot and the read.
                tracing::debug!(vmid, pid, error = %err, "usage: QEMU process unreadable");
                continue;
            }
        };
        let (netin, netout) = read_taps(sys_class_net, vmid);
        counters.netin_bytes = netin;
        counters.netout_bytes = netout;
        vms.insert(
            vmid,
            VmUsage {
                vmid,
                pid,
                maxcpu: record.maxcpu,
                maxmem_bytes: record.maxmem_bytes,
                mem_bytes,
                counters,
                cpu: None,
                rates: None,
            },
        );
    }
    UsageSample { at_s, node, vms }
}

/// Messages of the sampler actor.
#[derive(Debug)]
pub enum SamplerMsg {
    /// Take one sample (from the interval timer).
    Tick,
}

impl ractor::Message for SamplerMsg {}

/// The `usage-sampler` actor.
#[derive(Debug)]
pub struct SamplerActor {
    pub stats: ActorStats,
    pub state: AppState,
}

impl Actor for SamplerActor {
    type Msg = SamplerMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<SamplerMsg>,
        _args: (),
    ) -> Result<(), ActorProcessingErr> {
        myself.send_interval(Duration::from_millis(SAMPLE_INTERVAL_MS), || {
            SamplerMsg::Tick
        });
        // The first sample now, so a fresh server has data before the first interval.
        myself.cast(SamplerMsg::Tick)?;
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<SamplerMsg>,
        msg: SamplerMsg,
        _st: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        self.stats.record_handled();
        match msg {
            SamplerMsg::Tick => {
                let usage = self.state.metrics.usage();
                if let Err(err) = usage.load_once(&self.state.store).await {
                    // Keep sampling: history in memory beats no history; retry next tick.
                    tracing::warn!(error = %err, "usage: loading the archives failed");
                }
                let sample = take_sample(&self.state).await;
                let node = &self.state.config.node_name;
                if usage.record(sample, node) {
                    if let Ok(vms) = gpve_actors::vm::list_vms(&self.state.store).await {
                        usage.retain_vms(node, &vms.iter().map(|v| v.vmid).collect());
                    }
                    let started = std::time::Instant::now();
                    match usage.flush(&self.state.store).await {
                        Ok(rows) => tracing::debug!(
                            rows,
                            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                            "usage archives flushed"
                        ),
                        Err(err) => {
                            tracing::warn!(error = %err, "usage: flushing the archives failed")
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SamplerMsg>,
        _st: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        // A graceful stop (server shutdown) keeps the samples since the last flush; a
        // crash loses at most FLUSH_EVERY_SAMPLES of them.
        if let Err(err) = self.state.metrics.usage().flush(&self.state.store).await {
            tracing::warn!(error = %err, "usage: flushing the archives at stop failed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_parsers_read_the_right_fields() {
        let stat =
            "1234 (qemu (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 5 0 99 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(300));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        let io = "rchar: 10\nwchar: 20\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n";
        assert_eq!(parse_proc_io(io), Some((4096, 8192)));
        let dev = "Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|bytes\n    lo: 500 5 0 0 0 0 0 0 500 5 0 0 0 0 0 0\n  eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\ntap100i0: 7 1 0 0 0 0 0 0 9 1 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(dev), (1000, 2000));
    }

    #[test]
    fn taps_of_the_vm_are_summed_with_host_tx_as_guest_netin() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, rx, tx) in [
            ("tap100i0", 10, 100),
            ("tap100i1", 1, 5),
            ("tap1000i0", 7, 7),
        ] {
            let stats = dir.path().join(name).join("statistics");
            std::fs::create_dir_all(&stats).expect("mkdir");
            std::fs::write(stats.join("rx_bytes"), format!("{rx}\n")).expect("write");
            std::fs::write(stats.join("tx_bytes"), format!("{tx}\n")).expect("write");
        }
        assert_eq!(read_taps(dir.path(), 100), (105, 11));
        assert_eq!(read_taps(dir.path(), 101), (0, 0));
    }

    #[test]
    fn rates_come_from_the_same_process_only() {
        let vm = |pid, cpu_s, netin| VmUsage {
            vmid: 100,
            pid,
            maxcpu: 2,
            maxmem_bytes: 1 << 27,
            mem_bytes: 1 << 26,
            counters: VmCounters {
                cpu_s,
                netin_bytes: netin,
                ..VmCounters::default()
            },
            cpu: None,
            rates: None,
        };
        let prev = UsageSample {
            at_s: 100,
            node: None,
            vms: [(100, vm(1, 1.0, 1_000))].into(),
        };
        let mut next = UsageSample {
            at_s: 110,
            node: None,
            vms: [(100, vm(1, 6.0, 3_000))].into(),
        };
        derive_rates(&prev, &mut next);
        let v = &next.vms[&100];
        assert_eq!(v.cpu, Some(0.25), "5 CPU seconds over 10 s on 2 vCPUs");
        assert_eq!(v.rates.map(|r| r[0]), Some(200.0));
        let mut other = UsageSample {
            at_s: 110,
            node: None,
            vms: [(100, vm(2, 6.0, 3_000))].into(),
        };
        derive_rates(&prev, &mut other);
        assert_eq!(other.vms[&100].cpu, None, "a new QEMU has no rate yet");
        assert!(!vm_fields(&other.vms[&100]).contains_key("cpu"));
    }

    #[test]
    fn own_process_counters_are_readable() {
        let pid = std::process::id();
        let (c, mem) = read_process(pid).expect("own /proc entry");
        assert!(c.cpu_s >= 0.0);
        assert!(mem > 0);
    }
}
