//! Test fixtures: throw-away network namespaces made with `ip netns`, so nothing touches
//! the host's interfaces. Every test calls `skip_unless_netns!()` first.

#![allow(dead_code)]

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use gpve_network::{IfName, NetHandle, Netns};

pub const PING_ATTEMPTS_MAX: u32 = 3;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Why namespaces cannot be used here, if they cannot.
pub fn netns_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    for tool in ["ip", "ping", "nft"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    let probe = format!("gpve-test-probe-{}", std::process::id());
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Ok(o) if o.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).output();
            None
        }
        Ok(o) => Some(format!(
            "ip netns add failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run ip: {e}")),
    }
}

#[macro_export]
macro_rules! skip_unless_netns {
    () => {
        if let Some(reason) = common::netns_unavailable() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

/// A named namespace removed on drop.
pub struct TestNs {
    pub name: String,
    pub netns: Netns,
}

impl TestNs {
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("gpve-test-{}-{tag}{n}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let netns = Netns::named(&name).expect("valid namespace name");
        Self { name, netns }
    }

    pub async fn handle(&self) -> NetHandle {
        NetHandle::open(self.netns.clone())
            .await
            .expect("open netlink in namespace")
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }

    /// One ping, one second to answer: for asserting that traffic is blocked.
    pub fn ping_once(&self, addr: &str) -> bool {
        self.exec(&["ping", "-c1", "-W1", "-n", addr])
            .status
            .success()
    }

    /// Up to [`PING_ATTEMPTS_MAX`] pings: for asserting that traffic flows, so a first
    /// packet lost to ARP or a port still coming up does not fail the test.
    pub fn ping(&self, addr: &str) -> bool {
        (0..PING_ATTEMPTS_MAX).any(|_| self.ping_once(addr))
    }

    pub fn nft_list(&self) -> String {
        let out = self.exec(&["nft", "list", "ruleset"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

pub fn ifname(s: &str) -> IfName {
    IfName::new(s).expect("valid interface name")
}

/// Namespace `br` with bridge `vmbr0`, and two "guests" `a` (10.77.0.1) and
/// `b` (10.77.0.2) whose veths are plugged into it as `tap100i0` and `tap101i0`.
pub struct Lan {
    pub br: TestNs,
    pub a: TestNs,
    pub b: TestNs,
}

pub const LAN_A: &str = "10.77.0.1";
pub const LAN_B: &str = "10.77.0.2";

impl Lan {
    pub async fn new() -> Self {
        let lan = Self {
            br: TestNs::new("br"),
            a: TestNs::new("a"),
            b: TestNs::new("b"),
        };
        let h = lan.br.handle().await;
        let bridge = ifname("vmbr0");
        h.create_bridge(&bridge, None).await.expect("create bridge");
        h.set_up(&bridge).await.expect("bridge up");
        for (guest, port, addr) in [(&lan.a, "tap100i0", LAN_A), (&lan.b, "tap101i0", LAN_B)] {
            plug_guest(&h, &bridge, guest, port, addr).await;
        }
        lan
    }
}

/// Connects `guest` to `bridge` (in `h`'s namespace) with a veth: the bridge side is
/// called `port`, the guest side `eth0` with `addr/24`.
pub async fn plug_guest(h: &NetHandle, bridge: &IfName, guest: &TestNs, port: &str, addr: &str) {
    let port = ifname(port);
    let peer = ifname(&format!("{port}p"));
    h.create_veth(&port, &peer).await.expect("create veth");
    h.attach_to_bridge(&port, bridge)
        .await
        .expect("attach veth");
    h.set_up(&port).await.expect("port up");
    h.move_to_netns(&peer, &guest.netns)
        .await
        .expect("move veth");
    let g = guest.handle().await;
    g.add_address(&peer, addr.parse().expect("ip"), 24)
        .await
        .expect("add address");
    g.set_up(&peer).await.expect("guest veth up");
}
