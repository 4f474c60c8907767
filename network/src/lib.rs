//! Host networking: Linux bridges, VXLAN overlays, veth pairs and VM taps driven through
//! rtnetlink, and the nftables firewall applied through nftnl.
//!
//! Every operation is bound to a [`Netns`]: production uses [`Netns::Current`], tests
//! create their own namespaces so the host's interfaces are never touched.
//!
//! - [`link`]: [`NetHandle`], an rtnetlink connection opened inside one namespace.
//! - [`tap`]: persistent VM taps (TUNSETIFF), Proxmox names, stable MAC addresses.
//! - [`vlan`]: whether this kernel can do VLAN-aware bridges.
//! - [`firewall`]: ruleset model, compiler and atomic nftables apply.

pub mod firewall;
pub mod ifname;
pub mod link;
pub mod netns;
pub mod tap;
pub mod vlan;

pub use firewall::{Firewall, FirewallError};
pub use ifname::{IfName, IfNameError};
pub use link::{LinkError, LinkSummary, NetHandle, VxlanSpec};
pub use netns::{Netns, NetnsError};
pub use tap::{Mac, TapError, TapOptions, allocate_mac, create_tap, delete_tap, tap_name};
pub use vlan::{VlanError, check_nic_tag, vlan_filtering_supported};
