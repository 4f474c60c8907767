//! Host networking: Linux bridges, VXLAN overlays, veth pairs and VM taps driven through
//! rtnetlink, and the nftables firewall applied through nftnl.
//!
//! Empty until issue 5 (network) fills it.
