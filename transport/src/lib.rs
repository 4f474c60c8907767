//! Node-to-node sessions: mutual-TLS streams carrying `ractor_cluster`, heartbeats and
//! store-backed leases, the gRPC join and watch services, and the seam the simulation
//! replaces.
//!
//! Empty until issue 6 (multi-node cluster) fills it; a single-node server needs no
//! transport.
