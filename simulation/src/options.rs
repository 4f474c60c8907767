//! What one simulation run is asked to do.

use std::path::PathBuf;

/// How often and how hard faults are injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultProfile {
    /// No faults: the workload alone.
    None,
    /// About one fault every 20 steps.
    Default,
    /// About one fault every 5 steps, longer partitions and outages.
    Heavy,
}

impl FaultProfile {
    /// Probability that a step injects a fault.
    pub fn fault_probability(self) -> f64 {
        match self {
            FaultProfile::None => 0.0,
            FaultProfile::Default => 0.05,
            FaultProfile::Heavy => 0.2,
        }
    }

    /// Multiplier of fault durations (partitions, hangs, latency, node downtime).
    pub fn duration_factor(self) -> u64 {
        match self {
            FaultProfile::None | FaultProfile::Default => 1,
            FaultProfile::Heavy => 2,
        }
    }
}

/// A deliberately broken behaviour, to prove the invariants catch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InjectedBug {
    /// The HA manager restarts a lost node's VMs without waiting out the fence grace.
    SkipFenceGrace,
}

/// One run.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub seed: u64,
    pub nodes: usize,
    /// VMs the workload keeps around (it creates up to this many and deletes some).
    pub vms: usize,
    /// Virtual time of the faulty phase.
    pub duration_ms: u64,
    pub faults: FaultProfile,
    pub bug: Option<InjectedBug>,
    /// After faults stop: how long every liveness property may take to hold.
    pub liveness_bound_ms: u64,
    /// Write the trace here.
    pub trace_out: Option<PathBuf>,
    /// Echo the trace to stderr.
    pub echo: bool,
}

impl SimOptions {
    /// Defaults for `seed`.
    pub fn new(seed: u64) -> Self {
        SimOptions {
            seed,
            nodes: 1,
            vms: 5,
            duration_ms: 600_000,
            faults: FaultProfile::Default,
            bug: None,
            liveness_bound_ms: 60_000,
            trace_out: None,
            echo: false,
        }
    }

    /// The command line that reproduces this run.
    pub fn reproduce_command(&self) -> String {
        let faults = match self.faults {
            FaultProfile::None => "none",
            FaultProfile::Default => "default",
            FaultProfile::Heavy => "heavy",
        };
        let mut cmd = format!(
            "cargo run --release -p gpve-simulation -- --seed {} --nodes {} --vms {} --duration {}ms --faults {faults}",
            self.seed, self.nodes, self.vms, self.duration_ms
        );
        if let Some(InjectedBug::SkipFenceGrace) = self.bug {
            cmd.push_str(" --inject-bug skip-fence-grace");
        }
        cmd
    }
}

/// Parses `600s`, `10m`, `1500ms` or a bare number of seconds into milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000)
    } else {
        (s, 1_000)
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (examples: 600s, 10m, 1500ms)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("duration '{s}' is too large"))
}

/// Parses a seed range `A..B` (B exclusive) or `A..=B`.
pub fn parse_seed_range(s: &str) -> Result<std::ops::Range<u64>, String> {
    let bad = || format!("'{s}' is not a seed range (examples: 0..100, 5..=9)");
    let (a, b, inclusive) = if let Some((a, b)) = s.split_once("..=") {
        (a, b, true)
    } else if let Some((a, b)) = s.split_once("..") {
        (a, b, false)
    } else {
        return Err(bad());
    };
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let mut b: u64 = b.trim().parse().map_err(|_| bad())?;
    if inclusive {
        b = b.checked_add(1).ok_or_else(bad)?;
    }
    if a >= b {
        return Err(format!("seed range '{s}' is empty"));
    }
    Ok(a..b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("600s"), Ok(600_000));
        assert_eq!(parse_duration_ms("10m"), Ok(600_000));
        assert_eq!(parse_duration_ms("1500ms"), Ok(1_500));
        assert_eq!(parse_duration_ms("7"), Ok(7_000));
        assert!(parse_duration_ms("ten").is_err());
    }

    #[test]
    fn seed_ranges() {
        assert_eq!(parse_seed_range("0..3"), Ok(0..3));
        assert_eq!(parse_seed_range("5..=9"), Ok(5..10));
        assert!(parse_seed_range("3..3").is_err());
        assert!(parse_seed_range("x").is_err());
    }
}
