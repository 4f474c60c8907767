//! Host status as Proxmox reports it in `/nodes/{node}/status`, read from `/proc` and
//! `statvfs`. Parsing is pure (strings in, numbers out) so it is unit-tested without a host.

use serde::Serialize;
use thiserror::Error;

/// Why the host status could not be read.
#[derive(Debug, Error)]
pub enum NodeStatusError {
    #[error("could not read {path}")]
    Read {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has an unexpected format")]
    Format { path: &'static str },
    #[error("statvfs on / failed")]
    Statvfs(#[source] nix::Error),
}

/// Cumulative CPU jiffies from the first line of `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

impl CpuTimes {
    /// Fraction of CPU time spent busy between `earlier` and `self` (0.0..=1.0).
    pub fn usage_since(&self, earlier: &CpuTimes) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        let busy = self.busy.saturating_sub(earlier.busy);
        (busy as f64 / total as f64).clamp(0.0, 1.0)
    }
}

/// Parse the aggregate `cpu` line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if fields.len() < 4 {
        return None;
    }
    let total: u64 = fields.iter().take(8).sum();
    // idle + iowait are not busy.
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// Memory figures in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemoryBytes {
    pub total: u64,
    pub used: u64,
    pub free: u64,
    pub available: u64,
}

/// Parse `/proc/meminfo` (values in kB).
pub fn parse_meminfo(text: &str) -> Option<(MemoryBytes, MemoryBytes)> {
    let get = |key: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.split(':').next() == Some(key))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|kib| kib * 1024)
    };
    let total = get("MemTotal")?;
    let available = get("MemAvailable").or_else(|| get("MemFree"))?;
    let free = get("MemFree")?;
    let mem = MemoryBytes {
        total,
        used: total.saturating_sub(available),
        free: available,
        available,
    };
    let swap_total = get("SwapTotal").unwrap_or(0);
    let swap_free = get("SwapFree").unwrap_or(0);
    let swap = MemoryBytes {
        total: swap_total,
        used: swap_total.saturating_sub(swap_free),
        free: swap_free,
        available: swap_free,
    };
    let _ = free;
    Some((mem, swap))
}

/// Parse `/proc/loadavg` into the three load averages, as strings like Proxmox.
pub fn parse_loadavg(text: &str) -> Option<[String; 3]> {
    let mut it = text.split_whitespace();
    let a = it.next()?.parse::<f64>().ok()?;
    let b = it.next()?.parse::<f64>().ok()?;
    let c = it.next()?.parse::<f64>().ok()?;
    Some([format!("{a:.2}"), format!("{b:.2}"), format!("{c:.2}")])
}

/// Parse `/proc/uptime` into whole seconds.
pub fn parse_uptime_s(text: &str) -> Option<u64> {
    let secs = text.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(secs as u64)
}

/// CPU model and topology from `/proc/cpuinfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CpuInfo {
    pub model: String,
    pub cpus: u32,
    pub sockets: u32,
    pub cores: u32,
    pub mhz: String,
}

/// Parse `/proc/cpuinfo`.
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let mut sockets = std::collections::BTreeSet::new();
    let mut cores_per_socket = 0u32;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "processor" => info.cpus += 1,
            "model name" if info.model.is_empty() => info.model = v.to_string(),
            "physical id" => {
                sockets.insert(v.to_string());
            }
            "cpu cores" => cores_per_socket = v.parse().unwrap_or(cores_per_socket),
            "cpu MHz" if info.mhz.is_empty() => info.mhz = v.to_string(),
            _ => {}
        }
    }
    info.sockets = (sockets.len() as u32).max(1);
    info.cores = if cores_per_socket == 0 {
        info.cpus
    } else {
        cores_per_socket * info.sockets
    };
    info
}

/// Root filesystem usage in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FsBytes {
    pub total: u64,
    pub used: u64,
    pub free: u64,
    pub avail: u64,
}

/// Everything `/nodes/{node}/status` reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeStatus {
    pub node: String,
    pub uptime_s: u64,
    pub loadavg: [String; 3],
    /// CPU usage fraction since the previous sample (0.0..=1.0).
    pub cpu: f64,
    /// Fraction of time waiting for IO: not sampled yet, always 0.
    pub wait: f64,
    pub cpuinfo: CpuInfo,
    pub memory: MemoryBytes,
    pub swap: MemoryBytes,
    pub rootfs: FsBytes,
    /// `sysname release version`, as Proxmox's `kversion`.
    pub kversion: String,
    pub sysname: String,
    pub release: String,
    pub machine: String,
    /// `gpve/{crate version}`, in the place of Proxmox's `pve-manager/x.y.z`.
    pub pveversion: String,
}

fn read(path: &'static str) -> Result<String, NodeStatusError> {
    std::fs::read_to_string(path).map_err(|source| NodeStatusError::Read { path, source })
}

/// Read the current cumulative CPU times.
pub fn read_cpu_times() -> Result<CpuTimes, NodeStatusError> {
    parse_proc_stat(&read("/proc/stat")?).ok_or(NodeStatusError::Format { path: "/proc/stat" })
}

/// Read the host status; `cpu` is supplied by the caller, which keeps the previous sample.
pub fn read_node_status(node: &str, cpu: f64) -> Result<NodeStatus, NodeStatusError> {
    let (memory, swap) = parse_meminfo(&read("/proc/meminfo")?).ok_or(NodeStatusError::Format {
        path: "/proc/meminfo",
    })?;
    let loadavg = parse_loadavg(&read("/proc/loadavg")?).ok_or(NodeStatusError::Format {
        path: "/proc/loadavg",
    })?;
    let uptime_s = parse_uptime_s(&read("/proc/uptime")?).ok_or(NodeStatusError::Format {
        path: "/proc/uptime",
    })?;
    let cpuinfo = parse_cpuinfo(&read("/proc/cpuinfo")?);
    let vfs = nix::sys::statvfs::statvfs("/").map_err(NodeStatusError::Statvfs)?;
    let frag = vfs.fragment_size() as u64;
    let total = vfs.blocks() as u64 * frag;
    let free = vfs.blocks_free() as u64 * frag;
    let avail = vfs.blocks_available() as u64 * frag;
    let rootfs = FsBytes {
        total,
        used: total.saturating_sub(free),
        free,
        avail,
    };
    let sysname = read("/proc/sys/kernel/ostype")?.trim().to_string();
    let release = read("/proc/sys/kernel/osrelease")?.trim().to_string();
    let version = read("/proc/sys/kernel/version")?.trim().to_string();
    Ok(NodeStatus {
        node: node.to_string(),
        uptime_s,
        loadavg,
        cpu,
        wait: 0.0,
        cpuinfo,
        memory,
        swap,
        rootfs,
        kversion: format!("{sysname} {release} {version}"),
        sysname,
        release,
        machine: std::env::consts::ARCH.to_string(),
        pveversion: format!("gpve/{}", env!("CARGO_PKG_VERSION")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_usage() {
        let a = parse_proc_stat("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n").unwrap();
        let b = parse_proc_stat("cpu  150 0 150 900 0 0 0 0 0 0\n").unwrap();
        assert_eq!(a.total, 1000);
        assert!((b.usage_since(&a) - 0.5).abs() < 1e-9);
        assert_eq!(a.usage_since(&a), 0.0);
        assert!(parse_proc_stat("garbage").is_none());
    }

    #[test]
    fn meminfo() {
        let text = "MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 400 kB\nSwapTotal: 10 kB\nSwapFree: 4 kB\n";
        let (m, s) = parse_meminfo(text).unwrap();
        assert_eq!(m.total, 1_024_000);
        assert_eq!(m.used, 600 * 1024);
        assert_eq!(s.used, 6 * 1024);
        assert!(parse_meminfo("nothing").is_none());
    }

    #[test]
    fn loadavg_uptime_cpuinfo() {
        assert_eq!(
            parse_loadavg("0.5 1.25 2.00 1/100 42").unwrap(),
            ["0.50".to_string(), "1.25".into(), "2.00".into()]
        );
        assert_eq!(parse_uptime_s("123.99 5.0").unwrap(), 123);
        let info = parse_cpuinfo(
            "processor\t: 0\nmodel name\t: Foo CPU\nphysical id\t: 0\ncpu cores\t: 2\n\nprocessor\t: 1\nmodel name\t: Foo CPU\nphysical id\t: 0\ncpu cores\t: 2\n",
        );
        assert_eq!(info.cpus, 2);
        assert_eq!(info.sockets, 1);
        assert_eq!(info.cores, 2);
        assert_eq!(info.model, "Foo CPU");
    }

    #[test]
    fn reads_this_host() {
        let s = read_node_status("n1", 0.0).unwrap();
        assert!(s.memory.total > 0);
        assert!(s.cpuinfo.cpus >= 1);
        assert!(s.rootfs.total > 0);
        assert!(s.kversion.starts_with("Linux"));
    }
}
