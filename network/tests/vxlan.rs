//! Two "nodes" (namespaces) joined by a veth underlay reach each other over a VXLAN
//! overlay bridged on each side.

mod common;

use std::net::IpAddr;

use common::{TestNs, ifname, plug_guest};
use gpve_network::link::{VXLAN_DEFAULT_DSTPORT, VxlanSpec};
use gpve_network::{LinkError, NetHandle};

const UNDERLAY: [&str; 2] = ["192.168.77.1", "192.168.77.2"];

/// Sets up a node: VXLAN 100 over `uplink` (its underlay veth) bridged into `vmbr0`.
async fn node(
    ns: &TestNs,
    uplink: &str,
    local: &str,
    peer: &str,
    peer_on_device: bool,
) -> NetHandle {
    let h = ns.handle().await;
    let local: IpAddr = local.parse().expect("ip");
    let peer: IpAddr = peer.parse().expect("ip");
    let (vx, br) = (ifname("vxlan100"), ifname("vmbr0"));
    h.create_vxlan(&VxlanSpec {
        name: vx.clone(),
        vni: 100,
        local,
        dstport: VXLAN_DEFAULT_DSTPORT,
        underlay: Some(ifname(uplink)),
        remote: peer_on_device.then_some(peer),
        mtu: Some(1450),
    })
    .await
    .expect("create vxlan");
    if !peer_on_device {
        h.add_vxlan_peer(&vx, peer).await.expect("add peer");
    }
    h.create_bridge(&br, Some(1450)).await.expect("bridge");
    h.attach_to_bridge(&vx, &br).await.expect("attach vxlan");
    h.set_up(&vx).await.expect("vxlan up");
    h.set_up(&br).await.expect("bridge up");
    h
}

/// A veth underlay: `uplink1` in n1 (192.168.77.1) <-> `uplink2` in n2 (192.168.77.2).
async fn underlay(n1: &TestNs, n2: &TestNs) {
    let h1 = n1.handle().await;
    let (u1, u2) = (ifname("uplink1"), ifname("uplink2"));
    h1.create_veth(&u1, &u2).await.expect("underlay veth");
    h1.move_to_netns(&u2, &n2.netns).await.expect("move");
    h1.add_address(&u1, UNDERLAY[0].parse().expect("ip"), 24)
        .await
        .expect("addr");
    h1.set_up(&u1).await.expect("up");
    let h2 = n2.handle().await;
    h2.add_address(&u2, UNDERLAY[1].parse().expect("ip"), 24)
        .await
        .expect("addr");
    h2.set_up(&u2).await.expect("up");
}

async fn overlay_works(peer_on_device: bool) {
    let (n1, n2) = (TestNs::new("node1"), TestNs::new("node2"));
    let (g1, g2) = (TestNs::new("g1"), TestNs::new("g2"));
    underlay(&n1, &n2).await;
    let h1 = node(&n1, "uplink1", UNDERLAY[0], UNDERLAY[1], peer_on_device).await;
    let h2 = node(&n2, "uplink2", UNDERLAY[1], UNDERLAY[0], peer_on_device).await;
    assert!(n1.ping(UNDERLAY[1]), "underlay is broken");
    plug_guest(&h1, &ifname("vmbr0"), &g1, "tap100i0", "10.88.0.1").await;
    plug_guest(&h2, &ifname("vmbr0"), &g2, "tap200i0", "10.88.0.2").await;
    // The guests share no link: only the overlay can carry this.
    assert!(
        g1.ping("10.88.0.2"),
        "guest on node 1 cannot reach guest on node 2"
    );
    assert!(
        g2.ping("10.88.0.1"),
        "guest on node 2 cannot reach guest on node 1"
    );
    let kind = h1.link("vxlan100").await.expect("link").kind;
    assert_eq!(kind.as_deref(), Some("vxlan"));

    if !peer_on_device {
        let fdb = n1.exec(&["bridge", "fdb", "show", "dev", "vxlan100"]);
        let fdb = String::from_utf8_lossy(&fdb.stdout).into_owned();
        assert!(fdb.contains("00:00:00:00:00:00 dst 192.168.77.2"), "{fdb}");
        h1.remove_vxlan_peer(&ifname("vxlan100"), UNDERLAY[1].parse().expect("ip"))
            .await
            .expect("remove peer");
        let fdb = n1.exec(&["bridge", "fdb", "show", "dev", "vxlan100"]);
        let fdb = String::from_utf8_lossy(&fdb.stdout).into_owned();
        assert!(
            !fdb.contains("00:00:00:00:00:00"),
            "peer entry survived: {fdb}"
        );
    }
}

#[tokio::test]
async fn overlay_with_fdb_peers() {
    skip_unless_netns!();
    overlay_works(false).await;
}

#[tokio::test]
async fn overlay_with_single_remote() {
    skip_unless_netns!();
    overlay_works(true).await;
}

#[tokio::test]
async fn vxlan_input_is_validated() {
    skip_unless_netns!();
    let ns = TestNs::new("vxbad");
    let h = ns.handle().await;
    let mut spec = VxlanSpec {
        name: ifname("vx0"),
        vni: 0,
        local: "192.0.2.1".parse().expect("ip"),
        dstport: VXLAN_DEFAULT_DSTPORT,
        underlay: None,
        remote: None,
        mtu: None,
    };
    assert!(matches!(
        h.create_vxlan(&spec).await,
        Err(LinkError::InvalidVni(0))
    ));
    spec.vni = 1 << 24;
    assert!(matches!(
        h.create_vxlan(&spec).await,
        Err(LinkError::InvalidVni(_))
    ));
    spec.vni = 5;
    spec.remote = Some("fd00::1".parse().expect("ip"));
    assert!(matches!(
        h.create_vxlan(&spec).await,
        Err(LinkError::MixedFamilies { .. })
    ));
}
