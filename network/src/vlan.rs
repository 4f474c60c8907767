//! Whether this kernel can do VLAN-aware bridges.
//!
//! Proxmox tags a VM NIC (`tag=N`) on a VLAN-aware bridge. Kernels built without
//! CONFIG_BRIDGE_VLAN_FILTERING refuse `vlan_filtering 1` with EOPNOTSUPP; on such a node
//! a tagged NIC must be refused with [`VlanError::TaggedNicUnsupported`], never silently
//! left untagged.

use std::sync::OnceLock;

use crate::ifname::IfName;
use crate::link::{LinkError, NetHandle};
use crate::netns::{NetnsError, run_in_anonymous_netns};

/// Errors about VLANs.
#[derive(Debug, thiserror::Error)]
pub enum VlanError {
    #[error(
        "NIC {nic} asks for VLAN tag {tag}, but this node's kernel has no bridge VLAN filtering"
    )]
    TaggedNicUnsupported { nic: String, tag: u16 },
    #[error("VLAN tag {0} is outside 1-4094")]
    InvalidTag(u16),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot start the probe's runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// Probes (once per process) whether a bridge with `vlan_filtering 1` can be created, on
/// a scratch bridge in a throw-away namespace. A probe that cannot even run counts as
/// unsupported.
pub fn vlan_filtering_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| probe_vlan_filtering().unwrap_or(false))
}

/// Runs the probe without caching; `Err` if the probe itself could not run.
pub fn probe_vlan_filtering() -> Result<bool, VlanError> {
    run_in_anonymous_netns(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(VlanError::Runtime)?;
        runtime.block_on(async {
            let handle = NetHandle::open(crate::Netns::Current).await?;
            let name = IfName::new("gpve-vlanprobe").map_err(LinkError::from)?;
            match handle.create_vlan_aware_bridge(&name).await {
                Ok(()) => {
                    // The namespace dies with this thread; deleting is only tidiness.
                    let _ = handle.delete_link(&name).await;
                    Ok(true)
                }
                Err(LinkError::Netlink {
                    source: rtnetlink::Error::NetlinkError(e),
                    ..
                }) if e.raw_code() == -libc::EOPNOTSUPP => Ok(false),
                Err(e) => Err(VlanError::Link(e)),
            }
        })
    })?
}

/// Checks that a NIC's VLAN tag can be honoured on this node.
pub fn check_nic_tag(nic: &str, tag: Option<u16>, vlan_filtering: bool) -> Result<(), VlanError> {
    match tag {
        None => Ok(()),
        Some(tag) if !(1..=4094).contains(&tag) => Err(VlanError::InvalidTag(tag)),
        Some(_) if vlan_filtering => Ok(()),
        Some(tag) => Err(VlanError::TaggedNicUnsupported {
            nic: nic.to_owned(),
            tag,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_checked() {
        assert!(check_nic_tag("net0", None, false).is_ok());
        assert!(check_nic_tag("net0", Some(10), true).is_ok());
        assert!(matches!(
            check_nic_tag("net0", Some(10), false),
            Err(VlanError::TaggedNicUnsupported { tag: 10, .. })
        ));
        assert!(matches!(
            check_nic_tag("net0", Some(4095), true),
            Err(VlanError::InvalidTag(4095))
        ));
        assert!(matches!(
            check_nic_tag("net0", Some(0), true),
            Err(VlanError::InvalidTag(0))
        ));
    }
}
