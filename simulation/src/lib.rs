//! Deterministic simulation of a gpve cluster: the real control plane (node trees with the
//! real supervisor, node, storage and VM actors, the real API router, the real heartbeat
//! handler, HA manager and fencing state machines) under one seed, with the OS boundaries
//! simulated: the hypervisor (`SimHypervisor`), the store (`SimBackend` behind cuttable
//! links), the network between nodes (partitions drop heartbeats, store access and API
//! calls), time (tokio's paused clock behind the process clock seam) and randomness (one
//! seeded RNG). See `docs/simulation.md`.

pub mod cluster;
pub mod ha;
pub mod model;
pub mod options;
pub mod run;
pub mod store_link;
pub mod trace;
pub mod workload;

pub use options::{FaultProfile, InjectedBug, SimOptions};
pub use run::{Outcome, RunError, run};
