//! Host networking benchmark (needs root and `ip netns`; everything happens in namespaces
//! it creates): applying a 1,000-rule ruleset, creating and plugging a tap, and TCP
//! throughput between two namespaces across a bridge with and without the firewall.
//!
//! Run: `cargo bench -p gpve-network --bench network`

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{LAN_B, Lan, TestNs, ifname};
use gpve_network::firewall::{Action, Direction, FirewallRule, GuestFirewall, Proto, Ruleset};
use gpve_network::{Firewall, TapOptions, create_tap, delete_tap, tap_name};

const RULESET_RULES: u16 = 1_000;
const APPLY_RUNS: usize = 20;
const TAP_RUNS: u32 = 100;
const IPERF_SECONDS: u32 = 3;

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "min {:.2} ms, median {:.2} ms, max {:.2} ms over {} runs",
        ms(samples[0]),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1]),
        samples.len()
    )
}

/// Guest b (VM 101): `RULESET_RULES - 1` TCP rules that never match iperf, then one
/// that accepts it; everything else is dropped.
fn big_ruleset() -> Ruleset {
    let mut rules: Vec<FirewallRule> = (1..RULESET_RULES)
        .map(|i| {
            let mut r = FirewallRule::new(Direction::In, Action::Accept);
            r.proto = Some(Proto::Tcp);
            r.dport = Some(format!("{}", 10_000 + i).parse().expect("port"));
            r.source = Some(format!("172.16.{}.0/24", i % 256).parse().expect("cidr"));
            r.comment = Some(format!("bench rule {i}"));
            r
        })
        .collect();
    let mut iperf = FirewallRule::new(Direction::In, Action::Accept);
    iperf.proto = Some(Proto::Tcp);
    iperf.dport = Some("5201".parse().expect("port"));
    rules.push(iperf);
    Ruleset {
        ipsets: vec![],
        guests: vec![GuestFirewall {
            vmid: 101,
            nics: vec![0],
            enable: true,
            policy_in: Action::Drop,
            policy_out: Action::Accept,
            rules,
        }],
    }
}

fn iperf(lan: &Lan) -> f64 {
    let mut server = Command::new("ip")
        .args(["netns", "exec", &lan.b.name, "iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let out = lan.a.exec(&[
        "iperf3",
        "-c",
        LAN_B,
        "-t",
        &IPERF_SECONDS.to_string(),
        "-J",
    ]);
    let _ = server.wait();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 json");
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
        / 1e9
}

fn main() {
    if let Some(reason) = common::netns_unavailable() {
        eprintln!("skipped: {reason}");
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    // 1. Ruleset apply.
    let ns = TestNs::new("bench-fw");
    let fw = Firewall::new(ns.netns.clone());
    let ruleset = big_ruleset();
    let mut samples = Vec::new();
    let mut kernel_rules = 0;
    for _ in 0..APPLY_RUNS {
        let start = Instant::now();
        let plan = fw.apply(&ruleset).expect("apply");
        samples.push(start.elapsed());
        kernel_rules = plan.rule_count();
    }
    println!(
        "apply {RULESET_RULES}-rule ruleset ({kernel_rules} nftables rules, compile + one batch): {}",
        summary(samples)
    );

    // 2. Tap create + plug (+ up), then delete.
    let (create, delete) = rt.block_on(async {
        let h = ns.handle().await;
        let bridge = ifname("vmbr0");
        h.create_bridge(&bridge, None).await.expect("bridge");
        let opts = TapOptions {
            bridge: Some(bridge),
            ..TapOptions::default()
        };
        let (mut create, mut delete) = (Vec::new(), Vec::new());
        for i in 0..TAP_RUNS {
            let tap = tap_name(100 + i, 0).expect("name");
            let start = Instant::now();
            create_tap(&h, &tap, &opts).await.expect("create tap");
            create.push(start.elapsed());
            let start = Instant::now();
            delete_tap(&h, &tap).await.expect("delete tap");
            delete.push(start.elapsed());
        }
        (create, delete)
    });
    println!("tap create + attach to bridge + up: {}", summary(create));
    println!("tap delete: {}", summary(delete));
    drop(ns);

    // 3. Throughput across the bridge.
    let lan = rt.block_on(Lan::new());
    let bare = iperf(&lan);
    let fw = Firewall::new(lan.br.netns.clone());
    fw.apply(&ruleset).expect("apply");
    let filtered = iperf(&lan);
    println!(
        "iperf3 TCP a -> b across the bridge, {IPERF_SECONDS} s: no firewall {bare:.2} Gbit/s, \
         firewall with {RULESET_RULES} rules on b {filtered:.2} Gbit/s"
    );
}
