//! The nftables firewall, proven with traffic across a bridge in test namespaces.

mod common;

use common::{LAN_A, LAN_B, Lan, TestNs};
use gpve_network::firewall::nft::NftError;
use gpve_network::firewall::plan::{FORWARD_CHAIN, NftRule, NftVerdict};
use gpve_network::firewall::{
    Action, Direction, FirewallRule, GuestFirewall, IpSet, Proto, RuleError, Ruleset,
    bridge_reject_supported, compile,
};
use gpve_network::{Firewall, FirewallError};

fn guest(vmid: u32, policy_in: Action, rules: Vec<FirewallRule>) -> GuestFirewall {
    GuestFirewall {
        vmid,
        nics: vec![0],
        enable: true,
        policy_in,
        policy_out: Action::Accept,
        rules,
    }
}

/// Guest b (VM 101) drops everything coming in, except what `rules` accept.
fn protect_b(rules: Vec<FirewallRule>, ipsets: Vec<IpSet>) -> Ruleset {
    Ruleset {
        ipsets,
        guests: vec![guest(101, Action::Drop, rules)],
    }
}

fn accept_icmp_from(source: &str) -> FirewallRule {
    let mut r = FirewallRule::new(Direction::In, Action::Accept);
    r.proto = Some(Proto::Icmp);
    r.source = Some(source.parse().expect("source"));
    r.comment = Some(format!("icmp from {source}"));
    r
}

#[test]
fn rules_block_and_release_traffic() {
    skip_unless_netns!();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let lan = rt.block_on(Lan::new());
    let fw = Firewall::new(lan.br.netns.clone());
    assert!(lan.a.ping(LAN_B), "no traffic before any firewall");

    fw.apply(&protect_b(vec![], vec![])).expect("apply drop");
    assert!(
        !lan.a.ping_once(LAN_B),
        "a reaches b although b drops all incoming traffic"
    );
    // Stateful: b's own connections get their replies.
    assert!(lan.b.ping(LAN_A), "b's outgoing ping got no reply");

    fw.apply(&protect_b(vec![accept_icmp_from("10.77.0.0/30")], vec![]))
        .expect("apply accept");
    assert!(
        lan.a.ping(LAN_B),
        "accept rule for a's network did not let a in"
    );
    fw.apply(&protect_b(vec![accept_icmp_from("10.77.0.8/29")], vec![]))
        .expect("apply other network");
    assert!(
        !lan.a.ping_once(LAN_B),
        "accept rule for another network let a in"
    );

    // IP sets: interval sets with merged CIDRs.
    let set = |entries: &[&str]| IpSet {
        name: "friends".into(),
        entries: entries.iter().map(|e| e.parse().expect("cidr")).collect(),
    };
    fw.apply(&protect_b(
        vec![accept_icmp_from("+friends")],
        vec![set(&["10.77.0.0/31", "192.0.2.0/24", "fd00::/64"])],
    ))
    .expect("apply set");
    assert!(lan.a.ping(LAN_B), "a is in the set but was not let in");
    fw.apply(&protect_b(
        vec![accept_icmp_from("+friends")],
        vec![set(&["10.77.0.2/31", "10.77.0.4/30"])],
    ))
    .expect("apply set without a");
    assert!(
        !lan.a.ping_once(LAN_B),
        "a is not in the set but was let in"
    );

    // A disabled rule or a disabled guest firewall does nothing.
    let mut off = accept_icmp_from("10.77.0.1");
    off.enable = false;
    fw.apply(&protect_b(vec![off], vec![]))
        .expect("apply disabled rule");
    assert!(!lan.a.ping_once(LAN_B));
    let mut disabled = protect_b(vec![], vec![]);
    disabled.guests[0].enable = false;
    fw.apply(&disabled).expect("apply disabled guest");
    assert!(lan.a.ping(LAN_B), "a disabled guest firewall still drops");

    fw.apply(&protect_b(vec![], vec![]))
        .expect("apply drop again");
    assert!(!lan.a.ping_once(LAN_B));
    fw.remove().expect("remove");
    assert!(
        lan.a.ping(LAN_B),
        "traffic does not flow after removing the firewall"
    );
    assert!(!lan.br.nft_list().contains("gpve"));
    fw.remove().expect("removing twice is fine");
}

#[test]
fn reject_follows_what_the_kernel_supports() {
    skip_unless_netns!();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let lan = rt.block_on(Lan::new());
    let direct = lan
        .br
        .exec(&[
            "nft",
            "add table bridge probe; add chain bridge probe c { type filter hook forward priority 0; }; add rule bridge probe c reject",
        ])
        .status
        .success();
    assert_eq!(
        bridge_reject_supported(),
        direct,
        "probe disagrees with nft"
    );
    eprintln!("nftables bridge reject on this kernel: {direct}");

    let fw = Firewall::new(lan.br.netns.clone());
    let mut reject = FirewallRule::new(Direction::Out, Action::Reject);
    reject.proto = Some(Proto::Icmp);
    let rs = Ruleset {
        ipsets: vec![],
        guests: vec![guest(100, Action::Accept, vec![reject])],
    };
    if direct {
        fw.apply(&rs).expect("apply reject");
        let out = lan.a.exec(&["ping", "-c1", "-W1", "-n", LAN_B]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(!out.status.success(), "{text}");
        assert!(
            text.contains("Unreachable"),
            "no ICMP unreachable came back: {text}"
        );
    } else {
        assert!(matches!(
            fw.apply(&rs),
            Err(FirewallError::Invalid(RuleError::RejectUnsupported))
        ));
    }
}

#[test]
fn failing_batch_leaves_the_previous_ruleset() {
    skip_unless_netns!();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let lan = rt.block_on(Lan::new());
    let fw = Firewall::new(lan.br.netns.clone());
    fw.apply(&protect_b(vec![], vec![])).expect("apply drop");
    let before = lan.br.nft_list();
    assert!(before.contains("tap101i0-in"), "{before}");

    // A plan whose last rule the kernel refuses (a jump to a chain that does not
    // exist). Everything before it in the batch (deleting the old tables, creating the
    // new ones and their chains and rules) must be rolled back.
    let opts = fw.options();
    let mut plan = compile(
        &protect_b(vec![accept_icmp_from("10.0.0.0/8")], vec![]),
        &opts,
    )
    .expect("compile");
    let last = plan.chains.last_mut().expect("a guest chain");
    last.rules.push(NftRule {
        matches: vec![],
        verdict: NftVerdict::Jump("missing".into()),
        comment: None,
    });
    match fw.apply_plan(&plan) {
        Err(FirewallError::Nft(NftError::Refused { what, source })) => {
            assert!(what.contains("tap101i0-in"), "{what}");
            // The kernel's own reason, not a sequence mismatch in our reader.
            assert_eq!(source.raw_os_error(), Some(libc::ENOENT), "{source}");
        }
        other => panic!("expected a refused batch, got {other:?}"),
    }
    assert_eq!(lan.br.nft_list(), before, "the old ruleset changed");
    assert!(
        !lan.a.ping_once(LAN_B),
        "the old drop rule is no longer in force"
    );

    // A jump loop is refused the same way.
    let mut plan = compile(&Ruleset::default(), &opts).expect("compile");
    let forward = plan
        .chains
        .iter_mut()
        .find(|c| c.name == FORWARD_CHAIN)
        .expect("forward chain");
    forward.rules.push(NftRule {
        matches: vec![],
        verdict: NftVerdict::Jump(FORWARD_CHAIN.into()),
        comment: None,
    });
    assert!(fw.apply_plan(&plan).is_err());
    assert_eq!(lan.br.nft_list(), before, "the old ruleset changed");

    // Invalid input never reaches the kernel.
    let mut bad = FirewallRule::new(Direction::In, Action::Accept);
    bad.dport = Some("22".parse().expect("port"));
    assert!(matches!(
        fw.apply(&protect_b(vec![bad], vec![])),
        Err(FirewallError::Invalid(_))
    ));
    assert_eq!(lan.br.nft_list(), before);
}

#[test]
fn other_tables_are_never_touched() {
    skip_unless_netns!();
    let ns = TestNs::new("fwother");
    let other = "table inet other {\n chain c {\n type filter hook input priority 0; policy accept;\n counter\n }\n}\n";
    let out = ns.exec(&["nft", other]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fw = Firewall::new(ns.netns.clone());
    fw.apply(&protect_b(vec![accept_icmp_from("10.0.0.0/8")], vec![]))
        .expect("apply");
    let listed = ns.nft_list();
    assert!(
        listed.contains("table inet other") && listed.contains("table bridge gpve"),
        "{listed}"
    );
    assert!(
        listed.contains("comment \"icmp from 10.0.0.0/8\""),
        "{listed}"
    );
    fw.remove().expect("remove");
    let listed = ns.nft_list();
    assert!(
        listed.contains("table inet other") && !listed.contains("gpve"),
        "{listed}"
    );
}

#[test]
fn port_rules_match_tcp_ports_and_ranges() {
    skip_unless_netns!();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let lan = rt.block_on(Lan::new());
    // b listens on three ports; the kernel completes handshakes without accept().
    let server = "import socket,time\nls=[]\nfor p in (22,5201,8080):\n s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0',p)); s.listen(8); ls.append(s)\nprint('ready',flush=True)\ntime.sleep(30)\n";
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &lan.b.name, "python3", "-c", server])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start listener");
    let mut ready = String::new();
    let stdout = child.stdout.take().expect("stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut ready).expect("read");
    assert_eq!(ready.trim(), "ready");
    let connects = |port: u16| {
        let code =
            format!("import socket; socket.create_connection(('{LAN_B}', {port}), timeout=1)");
        lan.a.exec(&["python3", "-c", &code]).status.success()
    };
    assert!(connects(5201) && connects(22) && connects(8080));

    let fw = Firewall::new(lan.br.netns.clone());
    let mut ssh_and_range = FirewallRule::new(Direction::In, Action::Accept);
    ssh_and_range.proto = Some(Proto::Tcp);
    ssh_and_range.dport = Some("22,8000:8100".parse().expect("ports"));
    fw.apply(&protect_b(vec![ssh_and_range], vec![]))
        .expect("apply");
    assert!(connects(22), "port 22 is accepted but blocked");
    assert!(connects(8080), "port 8080 is in 8000:8100 but blocked");
    assert!(!connects(5201), "port 5201 is not accepted but got through");

    let mut udp_only = FirewallRule::new(Direction::In, Action::Accept);
    udp_only.proto = Some(Proto::Udp);
    udp_only.dport = Some("1:65535".parse().expect("ports"));
    fw.apply(&protect_b(vec![udp_only], vec![])).expect("apply");
    assert!(!connects(22), "a UDP rule let TCP through");

    let _ = child.kill();
    let _ = child.wait();
}

/// More than one nftnl batch page (128 KiB): must still be one transaction.
#[test]
fn large_ruleset_is_one_transaction() {
    skip_unless_netns!();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let lan = rt.block_on(Lan::new());
    let fw = Firewall::new(lan.br.netns.clone());
    let many = |n: u16| -> Vec<FirewallRule> {
        (1..=n)
            .map(|i| {
                let mut r = FirewallRule::new(Direction::In, Action::Accept);
                r.proto = Some(Proto::Tcp);
                r.dport = Some(i.to_string().parse().expect("port"));
                r.source = Some(format!("172.16.{}.0/24", i % 256).parse().expect("cidr"));
                r.comment = Some(format!("rule number {i} with a comment of some length"));
                r
            })
            .collect()
    };
    fw.apply(&protect_b(many(1_500), vec![]))
        .expect("apply 1500 rules");
    let before = lan.br.nft_list();
    assert_eq!(before.matches("rule number").count(), 1_500);
    assert!(!lan.a.ping_once(LAN_B));

    let mut plan = compile(&protect_b(many(2_000), vec![]), &fw.options()).expect("compile");
    plan.chains.last_mut().expect("chain").rules.push(NftRule {
        matches: vec![],
        verdict: NftVerdict::Jump("missing".into()),
        comment: None,
    });
    assert!(fw.apply_plan(&plan).is_err());
    assert_eq!(
        lan.br.nft_list(),
        before,
        "part of the refused batch was applied"
    );
}
