//! The node's network: bridges and VM taps (host-side devices) and the nftables firewall,
//! reconciled with the store by the `network` actor ([`actor`]).
//!
//! - [`config`]: the node network configuration (`("netcfg", node)`), Proxmox's
//!   pending-then-apply model for `/nodes/{node}/network`.
//! - [`firewall`]: the firewall configuration (`("firewall", "cluster")`,
//!   `("firewall", "vm", vmid)`), its validation and its compilation into the network
//!   crate's [`gpve_network::firewall::Ruleset`].
//! - [`nics`]: the seam the VM actor plugs its taps through ([`NicPlumbing`]): the real
//!   host ([`HostNics`]) and an in-memory one for the simulation ([`MemNics`]).
//!
//! Crash safety: nothing lives only in memory. The actor's every start, every change
//! notification and a periodic tick re-read the store and converge the kernel to it: bridges
//! are created (or re-addressed), taps of running VMs are re-plugged into their bridge, and
//! the whole ruleset is re-applied as one atomic nftables batch.

pub mod actor;
pub mod config;
pub mod firewall;
pub mod nics;

pub use actor::{NetworkActor, NetworkArgs, NetworkMsg, NetworkStatus};
pub use config::{Iface, NetConfigError, NodeNetwork};
pub use firewall::{ClusterFirewall, FwConfigError, RuleConf, VmFirewall};
pub use nics::{HostNics, MemNics, NicPlug, NicPlumbing, NicsError, nic_plugs};

/// Child id of the network actor under the server root (`gpve-server/network`).
pub const ACTOR_ID: &str = "network";

/// Directory path of the network actor, given the root supervisor's path.
pub fn actor_path(root: &str) -> String {
    format!("{root}/{ACTOR_ID}")
}

/// The network actor as a child of the server's root: permanent (the node always has a
/// network), converging at every start.
pub fn child(node: &str, store: gpve_store::Store) -> gpve_supervisor::ChildSpec {
    let args = actor::NetworkArgs {
        node: node.to_string(),
        store,
        netns: gpve_network::Netns::Current,
    };
    gpve_supervisor::ChildSpec::actor(
        ACTOR_ID,
        "network",
        gpve_supervisor::RestartPolicy::Permanent,
        move |ctx| {
            (
                NetworkActor {
                    stats: Some(ctx.stats.clone()),
                },
                args.clone(),
            )
        },
    )
}
