//! Persistent taps made with TUNSETIFF in a test namespace and plugged into a bridge.

mod common;

use common::{TestNs, ifname};
use gpve_network::{TapError, TapOptions, create_tap, delete_tap, tap_name};

#[tokio::test]
async fn tap_is_created_plugged_and_deleted() {
    skip_unless_netns!();
    let ns = TestNs::new("tap");
    let h = ns.handle().await;
    let bridge = ifname("vmbr0");
    h.create_bridge(&bridge, None).await.expect("bridge");
    let tap = tap_name(100, 0).expect("name");
    let opts = TapOptions {
        bridge: Some(bridge.clone()),
        mtu: Some(1400),
        ..TapOptions::default()
    };
    create_tap(&h, &tap, &opts).await.expect("create tap");

    let link = h.link(tap.as_str()).await.expect("tap exists");
    assert_eq!(link.kind.as_deref(), Some("tun"));
    assert_eq!(
        link.master,
        Some(h.index("vmbr0").await.expect("bridge index"))
    );
    assert_eq!(link.mtu, Some(1400));
    assert!(link.up);
    // Persistent and a tap (not tun), as `ip` sees it.
    let detail = ns.exec(&["ip", "-d", "link", "show", tap.as_str()]);
    let detail = String::from_utf8_lossy(&detail.stdout).into_owned();
    assert!(
        detail.contains("tun type tap") && detail.contains("persist on"),
        "{detail}"
    );
    // The host namespace did not get it.
    assert!(!std::path::Path::new(&format!("/sys/class/net/{tap}")).exists());

    assert!(matches!(
        create_tap(&h, &tap, &opts).await,
        Err(TapError::AlreadyExists(_))
    ));
    delete_tap(&h, &tap).await.expect("delete");
    assert_eq!(h.find_index(tap.as_str()).await.expect("lookup"), None);

    // A failure after creation (unknown bridge) leaves no tap behind.
    let bad = TapOptions {
        bridge: Some(ifname("nobridge")),
        ..TapOptions::default()
    };
    let tap1 = tap_name(100, 1).expect("name");
    assert!(create_tap(&h, &tap1, &bad).await.is_err());
    assert_eq!(h.find_index(tap1.as_str()).await.expect("lookup"), None);
}

#[tokio::test]
async fn multi_queue_tap() {
    skip_unless_netns!();
    let ns = TestNs::new("mq");
    let h = ns.handle().await;
    let tap = tap_name(4242, 31).expect("name");
    let opts = TapOptions {
        multi_queue: true,
        ..TapOptions::default()
    };
    create_tap(&h, &tap, &opts).await.expect("create");
    let detail = ns.exec(&["ip", "-d", "link", "show", tap.as_str()]);
    let detail = String::from_utf8_lossy(&detail.stdout).into_owned();
    assert!(detail.contains("multi_queue"), "{detail}");
}
