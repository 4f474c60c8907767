//! CI for the simulation: a fixed seed set, each seed run twice in two processes with the
//! trace hashes compared; the regression seeds of bugs the simulation found; and the proof
//! that the invariants catch a deliberately injected bug within a bounded number of seeds
//! while the same seeds pass without it.
//!
//! Every run is its own process (`--check-determinism` spawns two per seed): the virtual
//! clock is process-wide.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_gpve-simulation");

struct Summary {
    violations: String,
    nondeterministic: String,
    stdout: String,
}

fn run(args: &[&str]) -> Summary {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run gpve-simulation");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let line = stdout
        .lines()
        .find(|l| l.starts_with("summary "))
        .unwrap_or_else(|| {
            panic!(
                "no summary from {args:?}:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_string();
    let field = |k: &str| -> String {
        let start = line.find(&format!("{k}=[")).map(|i| i + k.len() + 2);
        start
            .and_then(|s| line[s..].find(']').map(|e| line[s..s + e].to_string()))
            .unwrap_or_else(|| panic!("no {k} in {line}"))
    };
    Summary {
        violations: field("violations"),
        nondeterministic: field("nondeterministic"),
        stdout,
    }
}

#[test]
fn single_node_seeds_pass_and_are_deterministic() {
    // Seed 2 is the regression seed of the task-end bug (docs/simulation.md, bug 1).
    let s = run(&[
        "--seeds=1..7",
        "--nodes=1",
        "--vms=5",
        "--duration=120s",
        "--faults=default",
        "--check-determinism",
    ]);
    assert_eq!(s.violations, "", "{}", s.stdout);
    assert_eq!(s.nondeterministic, "", "{}", s.stdout);
}

#[test]
fn three_node_ha_seeds_pass_and_are_deterministic() {
    // Seed 7 is the regression seed of the refused-relocation bug (docs/simulation.md,
    // bug 2); the same seeds find the injected bug below.
    let s = run(&[
        "--seeds=1..9",
        "--nodes=3",
        "--vms=10",
        "--duration=120s",
        "--faults=default",
        "--check-determinism",
    ]);
    assert_eq!(s.violations, "", "{}", s.stdout);
    assert_eq!(s.nondeterministic, "", "{}", s.stdout);
}

#[test]
fn a_delete_in_flight_is_not_a_lost_vm() {
    // Regression seed of the checker's delete race (docs/simulation.md, bug 4): a VM
    // deleted while its DELETE was still unanswered was reported as an acknowledged loss.
    let s = run(&[
        "--seeds=7..8",
        "--nodes=3",
        "--vms=50",
        "--duration=600s",
        "--faults=default",
    ]);
    assert_eq!(s.violations, "", "{}", s.stdout);
}

#[test]
fn heavy_faults_pass() {
    let s = run(&[
        "--seeds=100..103",
        "--nodes=3",
        "--vms=10",
        "--duration=120s",
        "--faults=heavy",
    ]);
    assert_eq!(s.violations, "", "{}", s.stdout);
}

#[test]
fn skipping_the_fence_grace_is_caught_within_eight_seeds() {
    let s = run(&[
        "--seeds=1..9",
        "--nodes=3",
        "--vms=10",
        "--duration=120s",
        "--faults=default",
        "--inject-bug=skip-fence-grace",
    ]);
    assert_ne!(
        s.violations, "",
        "the injected bug went unnoticed:\n{}",
        s.stdout
    );
    assert!(
        s.stdout
            .contains("invariant: never two running copies of one VM"),
        "{}",
        s.stdout
    );
    assert!(s.stdout.contains("reproduce: cargo run"), "{}", s.stdout);
}
