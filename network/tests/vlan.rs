//! The VLAN-filtering probe reports what the kernel really does.

mod common;

use common::TestNs;
use gpve_network::vlan::{
    VlanError, check_nic_tag, probe_vlan_filtering, vlan_filtering_supported,
};

#[test]
fn probe_matches_a_direct_attempt() {
    skip_unless_netns!();
    let ns = TestNs::new("vlan");
    let direct = ns
        .exec(&[
            "ip",
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "vlan_filtering",
            "1",
        ])
        .status
        .success();
    let probed = probe_vlan_filtering().expect("probe runs");
    assert_eq!(probed, direct, "probe says {probed}, ip link says {direct}");
    assert_eq!(vlan_filtering_supported(), direct);
    eprintln!("bridge VLAN filtering on this kernel: {direct}");

    let tagged = check_nic_tag("net0", Some(10), vlan_filtering_supported());
    if direct {
        assert!(tagged.is_ok());
    } else {
        assert!(matches!(
            tagged,
            Err(VlanError::TaggedNicUnsupported { tag: 10, .. })
        ));
    }
}
