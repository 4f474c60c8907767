//! `gpve-simulation`: run one seed, a range of seeds (one process per seed), or one seed
//! twice to check determinism.

use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use gpve_simulation::options::{parse_duration_ms, parse_seed_range};
use gpve_simulation::{FaultProfile, InjectedBug, SimOptions};

/// Deterministic simulation of a gpve cluster under one seed.
#[derive(Debug, Parser)]
#[command(name = "gpve-simulation")]
struct Cli {
    /// The seed of the run.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run every seed of a range (`A..B`, `A..=B`), each in its own process.
    #[arg(long, value_parser = parse_seed_range)]
    seeds: Option<std::ops::Range<u64>>,
    /// Number of nodes (more than one runs HA).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// VMs the workload keeps around.
    #[arg(long, default_value_t = 5)]
    vms: usize,
    /// Virtual time of the faulty phase (600s, 10m, 1500ms).
    #[arg(long, default_value = "600s", value_parser = parse_duration_ms)]
    duration: u64,
    /// After faults stop, how long liveness may take.
    #[arg(long, default_value = "60s", value_parser = parse_duration_ms)]
    liveness_bound: u64,
    #[arg(long, value_enum, default_value_t = FaultProfile::Default)]
    faults: FaultProfile,
    /// Break something on purpose, to see the invariants catch it.
    #[arg(long, value_enum)]
    inject_bug: Option<InjectedBug>,
    /// Run each seed twice (in two processes) and compare the trace hashes.
    #[arg(long)]
    check_determinism: bool,
    /// Write the trace of a single run to this file.
    #[arg(long)]
    trace_out: Option<std::path::PathBuf>,
    /// Echo the trace to stderr.
    #[arg(long)]
    echo: bool,
    /// Log the control plane's tracing output to stderr (RUST_LOG syntax).
    #[arg(long)]
    log: Option<String>,
    /// Internal: run exactly one seed in this process and print its result line.
    #[arg(long, hide = true)]
    child: bool,
}

impl Cli {
    fn options(&self, seed: u64) -> SimOptions {
        SimOptions {
            seed,
            nodes: self.nodes.max(1),
            vms: self.vms,
            duration_ms: self.duration,
            faults: self.faults,
            bug: self.inject_bug,
            liveness_bound_ms: self.liveness_bound,
            trace_out: self.trace_out.clone(),
            echo: self.echo,
        }
    }

    /// The arguments a child process gets for `seed`.
    fn child_args(&self, seed: u64) -> Vec<String> {
        let mut a = vec![
            "--child".to_string(),
            format!("--seed={seed}"),
            format!("--nodes={}", self.nodes),
            format!("--vms={}", self.vms),
            format!("--duration={}ms", self.duration),
            format!("--liveness-bound={}ms", self.liveness_bound),
            format!(
                "--faults={}",
                match self.faults {
                    FaultProfile::None => "none",
                    FaultProfile::Default => "default",
                    FaultProfile::Heavy => "heavy",
                }
            ),
        ];
        if let Some(InjectedBug::SkipFenceGrace) = self.inject_bug {
            a.push("--inject-bug=skip-fence-grace".into());
        }
        a
    }
}

/// What a child reports on its last stdout line.
struct ChildResult {
    hash: String,
    violation: bool,
    simulated_ms: u64,
}

fn run_child(cli: &Cli, seed: u64) -> anyhow::Result<ChildResult> {
    let exe = std::env::current_exe().context("finding the simulation binary")?;
    let out = Command::new(exe)
        .args(cli.child_args(seed))
        .output()
        .with_context(|| format!("running seed {seed}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().rev().find(|l| l.starts_with("result ")) else {
        bail!(
            "seed {seed}: the child printed no result (exit {:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .to_string()
    };
    if field("violation") == "yes" {
        // The child's report (seed, step, invariant, reproduce command, trace tail).
        print!("{stdout}");
    }
    Ok(ChildResult {
        hash: field("hash"),
        violation: field("violation") == "yes",
        simulated_ms: field("sim_ms").parse().unwrap_or(0),
    })
}

fn single(cli: &Cli) -> anyhow::Result<ExitCode> {
    let opts = cli.options(cli.seed);
    let started = Instant::now();
    let outcome = gpve_simulation::run(&opts).context("the run could not start")?;
    let wall_ms = started.elapsed().as_millis().max(1);
    if let Some((step, v)) = &outcome.violation {
        println!("VIOLATION seed={} step={step}", opts.seed);
        println!("  invariant: {}", v.invariant);
        println!("  detail:    {}", v.detail);
        println!("  reproduce: {}", opts.reproduce_command());
        println!("  last trace lines:");
        for l in &outcome.tail {
            println!("    {l}");
        }
    }
    println!(
        "result seed={} hash={} violation={} steps={} sim_ms={} wall_ms={} speedup={:.0}x faults={} ops={} trace_lines={}",
        opts.seed,
        outcome.trace_hash,
        if outcome.violation.is_some() {
            "yes"
        } else {
            "no"
        },
        outcome.steps,
        outcome.simulated_ms,
        wall_ms,
        outcome.simulated_ms as f64 / wall_ms as f64,
        outcome.faults_injected,
        outcome.ops_done,
        outcome.trace_lines
    );
    Ok(if outcome.violation.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(filter) = &cli.log {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    match real_main(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gpve-simulation: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: &Cli) -> anyhow::Result<ExitCode> {
    if cli.child || (cli.seeds.is_none() && !cli.check_determinism) {
        return single(cli);
    }
    let seeds = cli.seeds.clone().unwrap_or(cli.seed..cli.seed + 1);
    let started = Instant::now();
    let (mut failed, mut nondet, mut sim_ms) = (Vec::new(), Vec::new(), 0u64);
    let count = seeds.end - seeds.start;
    for seed in seeds {
        let a = run_child(cli, seed)?;
        sim_ms += a.simulated_ms;
        if a.violation {
            failed.push(seed);
        }
        if cli.check_determinism {
            let b = run_child(cli, seed)?;
            if a.hash != b.hash {
                println!(
                    "NONDETERMINISM seed={seed}: trace hashes {} and {} differ",
                    a.hash, b.hash
                );
                println!(
                    "  reproduce: {} --check-determinism",
                    cli.options(seed).reproduce_command()
                );
                nondet.push(seed);
            }
        }
        println!(
            "seed {seed}: {} {}",
            if a.violation { "VIOLATION" } else { "ok" },
            a.hash
        );
    }
    let wall_s = started.elapsed().as_secs_f64().max(0.001);
    let runs = if cli.check_determinism {
        count * 2
    } else {
        count
    };
    println!(
        "summary seeds={count} runs={runs} violations={failed:?} nondeterministic={nondet:?} wall_s={wall_s:.1} seeds_per_min={:.1} sim_s={}",
        runs as f64 * 60.0 / wall_s,
        sim_ms / 1_000
    );
    Ok(if failed.is_empty() && nondet.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
