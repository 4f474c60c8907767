//! Bridges, veths, addresses, MTU and up/down over rtnetlink, proven with traffic.

mod common;

use common::{LAN_A, LAN_B, Lan, TestNs, ifname};
use gpve_network::LinkError;

#[tokio::test]
async fn two_guests_on_one_bridge_reach_each_other() {
    skip_unless_netns!();
    let lan = Lan::new().await;
    assert!(lan.a.ping(LAN_B), "a cannot reach b across the bridge");
    assert!(lan.b.ping(LAN_A), "b cannot reach a across the bridge");

    // Unplugging b's port cuts it off; plugging it back restores traffic.
    let h = lan.br.handle().await;
    h.detach_from_bridge(&ifname("tap101i0"))
        .await
        .expect("detach");
    assert!(
        !lan.a.ping_once(LAN_B),
        "a still reaches b with b's port unplugged"
    );
    h.attach_to_bridge(&ifname("tap101i0"), &ifname("vmbr0"))
        .await
        .expect("attach");
    assert!(lan.a.ping(LAN_B), "a cannot reach b after re-plugging");

    // Bringing the bridge down stops forwarding.
    h.set_down(&ifname("vmbr0")).await.expect("down");
    assert!(
        !lan.a.ping_once(LAN_B),
        "a reaches b through a bridge that is down"
    );
    h.set_up(&ifname("vmbr0")).await.expect("up");
    assert!(
        lan.a.ping(LAN_B),
        "a cannot reach b after the bridge is back up"
    );
}

#[tokio::test]
async fn links_are_listed_configured_and_deleted() {
    skip_unless_netns!();
    let ns = TestNs::new("links");
    let h = ns.handle().await;
    let (br, v0, v1) = (ifname("vmbr0"), ifname("v0"), ifname("v1"));
    h.create_bridge(&br, Some(1400)).await.expect("bridge");
    h.create_veth(&v0, &v1).await.expect("veth");
    h.attach_to_bridge(&v0, &br).await.expect("attach");
    h.set_mtu(&v0, 1400).await.expect("mtu");
    h.set_up(&v0).await.expect("up");

    let links = h.list_links().await.expect("list");
    let names: Vec<_> = links.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names.len(), 4, "{names:?}"); // lo, vmbr0, v0, v1: nothing from the host
    let bridge = h.link("vmbr0").await.expect("bridge");
    assert_eq!(bridge.kind.as_deref(), Some("bridge"));
    assert_eq!(bridge.mtu, Some(1400));
    let port = h.link("v0").await.expect("v0");
    assert_eq!(port.kind.as_deref(), Some("veth"));
    assert_eq!(port.master, Some(bridge.index));
    assert!(port.up);
    assert_eq!(port.mtu, Some(1400));
    assert!(port.mac.is_some());

    let addr = "192.0.2.1".parse().expect("ip");
    h.add_address(&br, addr, 24).await.expect("add address");
    // The kernel may add an IPv6 link-local address of its own.
    assert!(
        h.addresses(&br)
            .await
            .expect("addresses")
            .contains(&(addr, 24))
    );
    h.remove_address(&br, addr, 24)
        .await
        .expect("remove address");
    assert!(
        !h.addresses(&br)
            .await
            .expect("addresses")
            .contains(&(addr, 24))
    );
    assert!(matches!(
        h.remove_address(&br, addr, 24).await,
        Err(LinkError::NotFound(_))
    ));

    // Bad input is refused before reaching the kernel.
    assert!(matches!(
        h.set_mtu(&v0, 10).await,
        Err(LinkError::InvalidMtu(10))
    ));
    assert!(matches!(
        h.add_address(&br, addr, 33).await,
        Err(LinkError::InvalidPrefix { .. })
    ));
    assert!(matches!(
        h.set_up(&ifname("nope")).await,
        Err(LinkError::NotFound(_))
    ));
    assert!(matches!(
        h.create_bridge(&br, None).await,
        Err(LinkError::Netlink { .. })
    ));

    h.delete_link(&v0).await.expect("delete veth");
    assert_eq!(
        h.find_index("v1").await.expect("lookup"),
        None,
        "veth peer survived"
    );
    h.delete_link(&br).await.expect("delete bridge");
    assert_eq!(h.list_links().await.expect("list").len(), 1);
}
