//! Deterministic simulation of a gpve cluster: the real actors under one seed, with the OS
//! boundaries (hypervisor, store, transport, clock, randomness) simulated.
//!
//! Empty until issue 7 (deterministic simulation) fills it; it exits with an error so that
//! nobody mistakes it for a passing run.

fn main() -> std::process::ExitCode {
    eprintln!("gpve-simulation: not built yet (issue 7)");
    std::process::ExitCode::FAILURE
}
