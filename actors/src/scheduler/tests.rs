//! Table-driven placement tests.

use super::*;

const GIB: u64 = 1 << 30;

fn node(name: &str, cpus: u32, mem_gib: u64) -> NodeCapacity {
    NodeCapacity {
        node: name.into(),
        cpus,
        mem_bytes: mem_gib * GIB,
        online: true,
        cordoned: false,
    }
}

fn vm(vmid: u32, cpus: u32, mem_gib: u64) -> PlacementRequest {
    PlacementRequest {
        vmid,
        cpus,
        mem_bytes: mem_gib * GIB,
        affinity: vec![],
        restricted: false,
        anti_affinity: None,
        exclude: vec![],
    }
}

fn on(vmid: u32, node: &str, cpus: u32, mem_gib: u64) -> Placement {
    Placement {
        vmid,
        node: node.into(),
        cpus,
        mem_bytes: mem_gib * GIB,
        anti_affinity: None,
    }
}

fn pack() -> SchedulerPolicy {
    SchedulerPolicy {
        strategy: Strategy::Pack,
        ..SchedulerPolicy::default()
    }
}

/// Name, request, nodes, existing placements, policy, expected node.
type Case = (
    &'static str,
    PlacementRequest,
    Vec<NodeCapacity>,
    Vec<Placement>,
    SchedulerPolicy,
    &'static str,
);

#[test]
fn table() {
    let three = vec![node("n1", 4, 8), node("n2", 4, 8), node("n3", 4, 8)];
    let mut cordoned = three.clone();
    cordoned[0].cordoned = true;
    let mut offline = three.clone();
    offline[1].online = false;
    let busy_n1 = vec![on(1, "n1", 2, 4)];
    let mut anti = vm(200, 1, 1);
    anti.anti_affinity = Some("db".into());
    let anti_existing = vec![
        Placement {
            anti_affinity: Some("db".into()),
            ..on(10, "n1", 1, 1)
        },
        Placement {
            anti_affinity: Some("db".into()),
            ..on(11, "n2", 1, 1)
        },
    ];
    let mut restricted = vm(300, 1, 1);
    restricted.affinity = vec![NodePriority {
        node: "n3".into(),
        priority: 1,
    }];
    restricted.restricted = true;
    let mut preferred = vm(301, 1, 1);
    preferred.affinity = vec![
        NodePriority {
            node: "n2".into(),
            priority: 2,
        },
        NodePriority {
            node: "n3".into(),
            priority: 1,
        },
    ];
    let mut excluded = vm(302, 1, 1);
    excluded.exclude = vec!["n1".into()];

    let cases: Vec<Case> = vec![
        (
            "empty cluster, tie by name",
            vm(100, 1, 1),
            three.clone(),
            vec![],
            SchedulerPolicy::default(),
            "n1",
        ),
        (
            "spread avoids the busy node",
            vm(100, 1, 1),
            three.clone(),
            busy_n1.clone(),
            SchedulerPolicy::default(),
            "n2",
        ),
        (
            "pack fills the busy node",
            vm(100, 1, 1),
            three.clone(),
            busy_n1.clone(),
            pack(),
            "n1",
        ),
        (
            "cordoned node gets nothing",
            vm(100, 1, 1),
            cordoned.clone(),
            vec![],
            SchedulerPolicy::default(),
            "n2",
        ),
        (
            "cordoned node gets nothing under pack",
            vm(100, 1, 1),
            cordoned.clone(),
            vec![on(1, "n1", 1, 1)],
            pack(),
            "n2",
        ),
        (
            "offline node gets nothing",
            vm(100, 1, 1),
            offline,
            vec![on(1, "n1", 1, 4)],
            SchedulerPolicy::default(),
            "n3",
        ),
        (
            "anti-affinity",
            anti,
            three.clone(),
            anti_existing,
            pack(),
            "n3",
        ),
        (
            "restricted affinity",
            restricted,
            three.clone(),
            vec![],
            SchedulerPolicy::default(),
            "n3",
        ),
        (
            "affinity priority beats spread",
            preferred,
            three.clone(),
            vec![on(1, "n2", 2, 6)],
            SchedulerPolicy::default(),
            "n2",
        ),
        (
            "excluded node",
            excluded,
            three.clone(),
            vec![],
            SchedulerPolicy::default(),
            "n2",
        ),
        (
            "memory decides before cpu",
            vm(100, 1, 1),
            three[..2].to_vec(),
            vec![on(1, "n1", 8, 1), on(2, "n2", 1, 2)],
            SchedulerPolicy::default(),
            "n1",
        ),
        (
            "cpu overcommit lets 16 vCPUs onto 4 CPUs",
            vm(100, 16, 1),
            vec![node("n1", 4, 8)],
            vec![],
            SchedulerPolicy::default(),
            "n1",
        ),
    ];
    for (name, req, nodes, existing, policy, want) in cases {
        assert_eq!(
            place(&req, &nodes, &existing, &policy).as_deref(),
            Ok(want),
            "{name}"
        );
    }
}

#[test]
fn rejections_name_every_node() {
    let mut nodes = vec![
        node("n3", 2, 4),
        node("n1", 2, 4),
        node("n2", 2, 4),
        node("n4", 2, 4),
    ];
    nodes[1].cordoned = true;
    nodes[2].online = false;
    let policy = SchedulerPolicy {
        cpu_overcommit_pct: 100,
        ..SchedulerPolicy::default()
    };
    let existing = vec![on(1, "n4", 1, 1)];
    let err = place(&vm(100, 2, 5), &nodes, &existing, &policy).unwrap_err();
    assert_eq!(
        err,
        PlacementError::NoneFits {
            vmid: 100,
            rejected: vec![
                ("n1".to_string(), Rejection::Cordoned),
                ("n2".to_string(), Rejection::Offline),
                (
                    "n3".to_string(),
                    Rejection::Memory {
                        needed_bytes: 5 * GIB,
                        free_bytes: 4 * GIB
                    }
                ),
                ("n4".to_string(), Rejection::Cpu { needed: 2, free: 1 }),
            ],
        }
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "no node can take VM 100: n1: cordoned; n2: offline; n3: not enough memory"
        ),
        "{msg}"
    );
    assert_eq!(
        place(&vm(7, 1, 1), &[], &[], &policy),
        Err(PlacementError::NoNodes { vmid: 7 })
    );
}

#[test]
fn same_input_same_answer_whatever_the_order() {
    let nodes: Vec<NodeCapacity> = (1..=4).map(|i| node(&format!("n{i}"), 64, 256)).collect();
    let mut reversed = nodes.clone();
    reversed.reverse();
    let mut placed_a = Vec::new();
    let mut placed_b = Vec::new();
    for vmid in 100..400u32 {
        let req = vm(vmid, 1 + vmid % 2, 1 + u64::from(vmid % 3));
        let a = place(&req, &nodes, &placed_a, &SchedulerPolicy::default()).unwrap();
        let b = place(&req, &reversed, &placed_b, &SchedulerPolicy::default()).unwrap();
        assert_eq!(a, b, "vmid {vmid}");
        placed_a.push(on(vmid, &a, req.cpus, req.mem_bytes / GIB));
        placed_b.insert(0, on(vmid, &b, req.cpus, req.mem_bytes / GIB));
    }
    // Spread keeps the nodes within one VM's memory of each other.
    let mem = |n: &str| {
        placed_a
            .iter()
            .filter(|p| p.node == n)
            .map(|p| p.mem_bytes)
            .sum::<u64>()
    };
    let loads: Vec<u64> = (1..=4).map(|i| mem(&format!("n{i}"))).collect();
    let (lo, hi) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
    assert!(hi - lo <= 3 * GIB, "{loads:?}");
}

#[test]
fn a_vm_being_replaced_does_not_count_against_its_old_node() {
    let nodes = vec![node("n1", 1, 1)];
    let policy = SchedulerPolicy {
        cpu_overcommit_pct: 100,
        ..SchedulerPolicy::default()
    };
    assert_eq!(
        place(&vm(100, 1, 1), &nodes, &[on(100, "n1", 1, 1)], &policy).as_deref(),
        Ok("n1")
    );
}

/// Benchmark figure for docs/benchmarks.md: place 300 VMs one after another over 4 nodes
/// (each placement sees all earlier ones), as the HA manager does after a node loss.
#[test]
fn placement_time_300_vms_over_4_nodes() {
    let nodes: Vec<NodeCapacity> = (1..=4).map(|i| node(&format!("n{i}"), 64, 512)).collect();
    let mut placed = Vec::new();
    let mut one_us = Vec::new();
    let start = std::time::Instant::now();
    for vmid in 100..400u32 {
        let req = vm(vmid, 1 + vmid % 4, 1 + u64::from(vmid % 4));
        let t = std::time::Instant::now();
        let n = place(&req, &nodes, &placed, &SchedulerPolicy::default()).unwrap();
        one_us.push(t.elapsed().as_micros());
        placed.push(on(vmid, &n, req.cpus, req.mem_bytes / GIB));
    }
    let total = start.elapsed();
    one_us.sort_unstable();
    println!(
        "scheduler: 300 VMs over 4 nodes in {} µs total; per placement p50 {} µs, p99 {} µs, max {} µs",
        total.as_micros(),
        one_us[150],
        one_us[296],
        one_us[299]
    );
    assert_eq!(placed.len(), 300);
}
