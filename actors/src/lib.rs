//! Domain actors of gpve.
//!
//! - [`ha`]: the HA manager's state machine and the agent's fencing decision (pure).
//! - [`network`]: the `network` actor (bridges, VM taps, firewall) and its configuration.
//! - [`node`]: the `node:{name}` actor, answering host status read from `/proc` and `statvfs`.
//! - [`scheduler`]: deterministic placement of VMs on nodes (pure).
//! - [`task`]: Proxmox-style tasks (UPIDs, persisted status and logs, cancellation).
//! - [`storage`]: storage configuration records and the `storage:{id}` / `volume:{id}` actors.
//! - [`vm`]: VM records and configuration, the `vm:{vmid}` actor owning one QEMU process,
//!   its state machine, and the `qemu` supervisor that re-adopts running VMs.

pub mod ha;
pub mod network;
pub mod node;
pub mod scheduler;
pub mod storage;
pub mod task;
pub mod vm;
