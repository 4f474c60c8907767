//! The network issue's done-when test, with real QEMU (TCG) behind the real server binary,
//! all inside network namespaces this test makes and removes:
//!
//! - the server runs in namespace N (spawned from a thread that entered N, so the server
//!   and its QEMU see only N's interfaces); a peer namespace P has a veth whose other end
//!   is made a port of the bridge `vmbr0`, created through `/nodes/{node}/network` and
//!   applied by the network actor;
//! - a VM with `net0: virtio,bridge=vmbr0,firewall=1` boots the test guest, which configures
//!   eth0 from `gpve.ip=` on its command line; its tap `tap100i0` is on the bridge and the
//!   peer pings the guest (the guest kernel answers);
//! - a VM firewall rule added through the API cuts the ping off, its removal restores it;
//! - the tap detached behind gpve's back and a kill -9 of the server: the restarted network
//!   actor re-plugs it (the guest answers again);
//! - bad input: a bridge in use cannot be deleted (the VM is named), a bad port is a 400 with
//!   the `errors` map, a tagged NIC is refused on this kernel (no VLAN filtering);
//! - stop removes the tap.

mod gpvectl_common;
mod vm_common;

use gpvectl_common::{ctl, login_root, ok};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gpve_api::client::Fingerprint;
use gpve_hypervisor::test_guest::{self, TestGuest};

use gpve_network::Netns;
use vm_common::*;

const GUEST_IP: &str = "10.99.0.2";
const PEER_IP: &str = "10.99.0.1";
const PING_TRIES_MAX: u32 = 30;
/// The test guest with virtio_net and `gpve.ip=` support.
const GUEST_CACHE_DIR: &str = "/var/cache/gpve/test-guest-net";

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn must(args: &[&str]) {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test's namespaces, deleted on drop (their links go with them).
struct Namespaces {
    node: String,
    peer: String,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.node]);
        let _ = sh(&["ip", "netns", "del", &self.peer]);
    }
}

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces)".into());
    }
    for tool in ["ip", "ping", "qemu-system-x86_64"] {
        if !sh(&["sh", "-c", &format!("command -v {tool}")])
            .status
            .success()
        {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// One ping from the peer namespace to the guest.
fn ping_once(peer: &str) -> bool {
    sh(&[
        "ip", "netns", "exec", peer, "ping", "-c1", "-W1", "-q", GUEST_IP,
    ])
    .status
    .success()
}

/// The guest answers within [`PING_TRIES_MAX`] tries (ARP and the bridge's forwarding
/// delay take a moment after a change).
fn reachable(peer: &str) -> bool {
    (0..PING_TRIES_MAX).any(|_| ping_once(peer))
}

/// Three pings in a row get no answer.
fn cut_off(peer: &str) -> bool {
    (0..3).all(|_| !ping_once(peer))
}

fn tap_master(ns: &str, tap: &str) -> Option<String> {
    let out = sh(&["ip", "-n", ns, "-o", "link", "show", tap]);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let master = text
        .split_whitespace()
        .skip_while(|w| *w != "master")
        .nth(1)
        .unwrap_or("")
        .to_string();
    Some(master)
}

#[test]
fn vm_on_a_bridge_reaches_a_peer_and_obeys_the_firewall() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIP vm_network: {why}");
        return;
    }
    let id = std::process::id();
    let ns = Namespaces {
        node: format!("gpvet-netn{id}"),
        peer: format!("gpvet-netp{id}"),
    };
    must(&["ip", "netns", "add", &ns.node]);
    must(&["ip", "netns", "add", &ns.peer]);
    must(&["ip", "-n", &ns.node, "link", "set", "lo", "up"]);
    must(&["ip", "-n", &ns.peer, "link", "set", "lo", "up"]);
    must(&[
        "ip", "-n", &ns.node, "link", "add", "vpeer0", "type", "veth", "peer", "name", "eth0",
        "netns", &ns.peer,
    ]);
    must(&[
        "ip",
        "-n",
        &ns.peer,
        "addr",
        "add",
        &format!("{PEER_IP}/24"),
        "dev",
        "eth0",
    ]);
    must(&["ip", "-n", &ns.peer, "link", "set", "eth0", "up"]);

    // Built here, in the host namespace (apt needs DNS), in a cache of its own: a test run
    // from an older checkout rebuilding the shared cache must not swap the guest under us.
    let g = test_guest::ensure(Path::new(GUEST_CACHE_DIR)).expect("test guest");
    let netns = Netns::named(&ns.node).expect("netns name");
    let node_ns = ns.node.clone();
    let peer_ns = ns.peer.clone();
    netns
        .run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(scenario(&g, &node_ns, &peer_ns));
        })
        .expect("the scenario ran inside the node namespace");
}

async fn scenario(g: &TestGuest, node_ns: &str, peer_ns: &str) {
    let env = Env::new().await;
    let srv = Server::start(&env).await;
    let api = srv.api.clone();
    let net = format!("/nodes/{NODE}/network");

    // The bridge, through the pending-then-apply model.
    let (code, body) = api
        .post(
            &net,
            &[
                ("iface", "vmbr0"),
                ("type", "bridge"),
                ("bridge_ports", "vpeer0"),
                ("cidr", "10.99.0.254/24"),
            ],
        )
        .await;
    assert_eq!(code, 200, "create vmbr0: {body}");
    let (_, list) = api.get(&net).await;
    assert_eq!(list["data"][0]["pending"], 1, "{list}");
    assert_eq!(list["data"][0]["active"], 0, "not applied yet: {list}");
    let (code, body) = api.put(&net, &[]).await;
    assert_eq!(code, 200, "apply: {body}");
    assert_eq!(
        api.wait_task(body["data"].as_str().expect("upid")).await,
        "OK"
    );
    let (_, list) = api.get(&net).await;
    assert_eq!(list["data"][0]["active"], 1, "applied: {list}");
    assert_eq!(tap_master(node_ns, "vpeer0").as_deref(), Some("vmbr0"));

    // Bad names and addresses are 400 with the errors map.
    for (field, form) in [
        ("iface", [("iface", "bad/name"), ("type", "bridge")]),
        ("cidr", [("iface", "vmbr1"), ("cidr", "10.0.0.1/40")]),
        ("type", [("iface", "bond0"), ("type", "bond")]),
    ] {
        let mut f = form.to_vec();
        if !f.iter().any(|(k, _)| *k == "type") {
            f.push(("type", "bridge"));
        }
        let (code, body) = api.post(&net, &f).await;
        assert_eq!(code, 400, "{f:?}: {body}");
        assert!(body["errors"][field].is_string(), "{f:?}: {body}");
    }

    // Firewall on (cluster and VM), policy in ACCEPT: only rules cut traffic.
    let (code, body) = api
        .put("/cluster/firewall/options", &[("enable", "1")])
        .await;
    assert_eq!(code, 200, "{body}");

    let args = format!(
        "-kernel {} -initrd {} -append 'console=ttyS0 quiet panic=-1 {}={GUEST_IP}/24'",
        g.kernel.display(),
        g.initrd.display(),
        test_guest::NET_ARG
    );
    let q = format!("/nodes/{NODE}/qemu");
    api.task_ok(
        &q,
        &[
            ("vmid", "100"),
            ("name", "net1"),
            ("memory", "128"),
            ("kvm", "0"),
            ("net0", "virtio,bridge=vmbr0,firewall=1"),
            ("serial0", "socket"),
            ("args", &args),
        ],
    )
    .await;
    let fwq = format!("{q}/100/firewall");
    let (code, body) = api
        .put(
            &format!("{fwq}/options"),
            &[("enable", "1"), ("policy_in", "ACCEPT")],
        )
        .await;
    assert_eq!(code, 200, "{body}");

    let start_started = std::time::Instant::now();
    api.task_ok(&format!("{q}/100/status/start"), &[]).await;
    eprintln!(
        "bench: start task with one firewalled NIC (tap + plug + ruleset + QEMU spawn) took {} ms",
        start_started.elapsed().as_millis()
    );
    assert_eq!(
        tap_master(node_ns, "tap100i0").as_deref(),
        Some("vmbr0"),
        "the tap is on the bridge once the VM runs"
    );
    test_guest::wait_for_log(
        &env.serial_log(100),
        test_guest::NET_MARKER,
        BOOT_TIMEOUT_MS,
    )
    .await
    .expect("the guest configured eth0");
    wait_ready(&env, 100).await;
    assert!(reachable(peer_ns), "the peer cannot reach the guest");

    // A bad rule is refused per field; nothing changes.
    let (code, body) = api
        .post(
            &format!("{fwq}/rules"),
            &[
                ("type", "in"),
                ("action", "DROP"),
                ("proto", "tcp"),
                ("dport", "99999"),
                ("enable", "1"),
            ],
        )
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(body["errors"]["dport"].is_string(), "{body}");

    // A rule cuts the guest off; removing it reconnects it.
    let rule_started = std::time::Instant::now();
    let (code, body) = api
        .post(
            &format!("{fwq}/rules"),
            &[
                ("type", "in"),
                ("action", "DROP"),
                ("proto", "icmp"),
                ("enable", "1"),
                ("comment", "cut off pings"),
            ],
        )
        .await;
    assert_eq!(code, 200, "{body}");
    eprintln!(
        "bench: POST VM firewall rule (commit + reconcile + nftables apply) answered in {} ms",
        rule_started.elapsed().as_millis()
    );
    assert!(
        cut_off(peer_ns),
        "the guest still answers despite the DROP rule"
    );
    let (code, body) = api.delete(&format!("{fwq}/rules/0")).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        reachable(peer_ns),
        "the guest is still cut off after the rule was removed"
    );

    // The same through gpvectl.
    let url = srv.api.base.trim_end_matches("/api2/json").to_string();
    let fp = Fingerprint::of_pem_file(&env.data().join("cert.pem")).expect("fingerprint");
    let config = env.dir.path().join("gpvectl.yaml");
    login_root(&config, &url, &fp.to_string(), ROOT_PW);
    let listed = ok(&ctl(&config, &["network", "list", "-o", "json"], ""));
    assert!(listed.contains("\"vmbr0\""), "{listed}");
    ok(&ctl(
        &config,
        &[
            "firewall",
            "rules",
            "add",
            "--vm",
            "100",
            "--direction",
            "in",
            "--action",
            "DROP",
            "--macro",
            "Ping",
        ],
        "",
    ));
    let rules = ok(&ctl(
        &config,
        &["firewall", "rules", "list", "--vm", "100"],
        "",
    ));
    assert!(rules.contains("Ping"), "{rules}");
    assert!(
        cut_off(peer_ns),
        "the gpvectl rule did not cut the guest off"
    );
    ok(&ctl(
        &config,
        &["firewall", "rules", "delete", "0", "--vm", "100"],
        "",
    ));
    assert!(
        reachable(peer_ns),
        "still cut off after gpvectl deleted the rule"
    );
    let refused = ctl(&config, &["network", "delete", "vmbr0"], "");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("VM 100"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // A bridge in use cannot go, and the VM is named.
    let (code, body) = api.delete(&format!("{net}/vmbr0")).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap_or("").contains("VM 100"),
        "{body}"
    );

    // Drift and crash: the tap detached behind gpve's back, then the server killed; the
    // restarted network actor re-plugs it.
    must(&["ip", "-n", node_ns, "link", "set", "tap100i0", "nomaster"]);
    assert!(cut_off(peer_ns), "a detached tap still carries traffic");
    drop(srv);
    let srv = Server::start(&env).await;
    let api = srv.api.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tap_master(node_ns, "tap100i0").as_deref() != Some("vmbr0") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted server did not re-plug tap100i0"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(reachable(peer_ns), "the re-plugged guest does not answer");

    // A tagged NIC is refused on this kernel (no bridge VLAN filtering), naming the NIC.
    if !gpve_network::vlan_filtering_supported() {
        api.task_ok(
            &q,
            &[
                ("vmid", "101"),
                ("memory", "128"),
                ("kvm", "0"),
                ("net0", "virtio,bridge=vmbr0,tag=10"),
            ],
        )
        .await;
        let (code, body) = api.post(&format!("{q}/101/status/start"), &[]).await;
        let refused = if code == 200 {
            let status = api.wait_task(body["data"].as_str().unwrap_or("")).await;
            assert_ne!(status, "OK", "a tagged NIC started");
            status
        } else {
            body.to_string()
        };
        assert!(refused.contains("VLAN filtering"), "{refused}");
        assert_eq!(tap_master(node_ns, "tap101i0"), None, "no tap left behind");
    } else {
        eprintln!("this kernel has bridge VLAN filtering: the tagged-NIC refusal is not exercised");
    }

    // Stop removes the tap.
    api.task_ok(&format!("{q}/100/status/stop"), &[]).await;
    assert_eq!(
        tap_master(node_ns, "tap100i0"),
        None,
        "the tap outlived the VM"
    );
    srv.stop();
}
