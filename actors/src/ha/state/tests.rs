//! HA manager scenarios: each feeds inputs at given times and checks the actions.

use super::*;
use crate::scheduler::NodeCapacity;

const GIB: u64 = 1 << 30;
const GRACE: u64 = 5_000;

fn cap(node: &str) -> NodeCapacity {
    NodeCapacity {
        node: node.into(),
        cpus: 4,
        mem_bytes: 8 * GIB,
        online: true,
        cordoned: false,
    }
}

fn res(vmid: u32, max_restart: u32, max_relocate: u32) -> ResourceConfig {
    ResourceConfig {
        vmid,
        state: RequestState::Started,
        max_restart,
        max_relocate,
        affinity: vec![],
        restricted: false,
        anti_affinity: None,
        cpus: 1,
        mem_bytes: GIB,
    }
}

/// A manager with nodes n1..n3 and VM 100 (max_restart 1, max_relocate 1) started on n1.
fn cluster(nodes: &[&str]) -> HaManager {
    let mut m = HaManager::new(HaConfig {
        fence_grace_ms: GRACE,
        policy: Default::default(),
    });
    m.handle(
        0,
        HaInput::NodesUpdated {
            nodes: nodes.iter().map(|n| cap(n)).collect(),
            unmanaged: vec![],
        },
    );
    let a = m.handle(
        0,
        HaInput::ResourceSet {
            config: res(100, 1, 1),
            node: "n1".into(),
            running: false,
        },
    );
    assert_eq!(
        a,
        vec![
            HaAction::RestartOnNode {
                vmid: 100,
                node: "n1".into(),
                generation: 1
            },
            HaAction::SetVmState {
                vmid: 100,
                ha_state: ServiceStatus::Started
            },
        ]
    );
    m
}

fn relocations(actions: &[HaAction]) -> Vec<(u32, String, String, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            HaAction::Relocate {
                vmid,
                from,
                to,
                generation,
            } => Some((*vmid, from.clone(), to.clone(), *generation)),
            _ => None,
        })
        .collect()
}

#[test]
fn lease_expiry_relocates_only_after_the_grace() {
    // (tick time after a deadline of 10_000, relocated yet?)
    let cases = [
        (10_000, false),
        (10_000 + GRACE - 1, false),
        (10_000 + GRACE, true),
        (60_000, true),
    ];
    for (at, relocated) in cases {
        let mut m = cluster(&["n1", "n2", "n3"]);
        let a = m.handle(
            10_050,
            HaInput::NodeLeaseExpired {
                node: "n1".into(),
                lease_deadline_ms: 10_000,
            },
        );
        assert!(
            a.contains(&HaAction::FenceNode { node: "n1".into() }),
            "{a:?}"
        );
        assert!(a.contains(&HaAction::SetVmState {
            vmid: 100,
            ha_state: ServiceStatus::Fence
        }));
        assert!(relocations(&a).is_empty() || at <= 10_050);
        let a = m.handle(at.max(10_050), HaInput::Tick);
        let r = relocations(&a);
        if relocated {
            assert!(
                a.contains(&HaAction::MarkFenced { node: "n1".into() }),
                "at {at}: {a:?}"
            );
            assert_eq!(r, vec![(100, "n1".into(), "n2".into(), 2)], "at {at}");
            assert_eq!(m.resource(100).unwrap().status, ServiceStatus::Relocate);
            // Seen running: started on n2; a late failure report from n1 changes nothing.
            m.handle(
                at + 1,
                HaInput::VmStarted {
                    vmid: 100,
                    node: "n2".into(),
                },
            );
            assert_eq!(m.resource(100).unwrap().status, ServiceStatus::Started);
            assert!(
                m.handle(
                    at + 2,
                    HaInput::VmFailed {
                        vmid: 100,
                        node: "n1".into()
                    }
                )
                .is_empty()
            );
        } else {
            assert!(r.is_empty(), "at {at}: {a:?}");
            assert_eq!(m.resource(100).unwrap().status, ServiceStatus::Fence);
        }
        // Repeating the expiry is harmless.
        let again = m.handle(
            at.max(10_050),
            HaInput::NodeLeaseExpired {
                node: "n1".into(),
                lease_deadline_ms: 10_000,
            },
        );
        assert!(relocations(&again).is_empty());
    }
}

#[test]
fn node_back_before_the_grace_restarts_its_vms_there_with_a_new_generation() {
    let mut m = cluster(&["n1", "n2"]);
    m.handle(
        10_000,
        HaInput::NodeLeaseExpired {
            node: "n1".into(),
            lease_deadline_ms: 10_000,
        },
    );
    let a = m.handle(12_000, HaInput::NodeRecovered { node: "n1".into() });
    assert_eq!(
        a,
        vec![
            HaAction::RestartOnNode {
                vmid: 100,
                node: "n1".into(),
                generation: 2
            },
            HaAction::SetVmState {
                vmid: 100,
                ha_state: ServiceStatus::Started
            },
        ]
    );
    // The grace passing later does nothing: the node is online again.
    assert!(m.handle(20_000, HaInput::Tick).is_empty());
}

#[test]
fn restart_then_relocate_then_error() {
    let mut m = cluster(&["n1", "n2"]);
    // max_restart 1: first failure restarts on n1.
    let a = m.handle(
        1,
        HaInput::VmFailed {
            vmid: 100,
            node: "n1".into(),
        },
    );
    assert_eq!(
        a,
        vec![HaAction::RestartOnNode {
            vmid: 100,
            node: "n1".into(),
            generation: 2
        }]
    );
    assert_eq!(m.resource(100).unwrap().restarts, 1);
    // Second: relocated (max_relocate 1) to n2, restarts counted afresh there.
    let a = m.handle(
        2,
        HaInput::VmFailed {
            vmid: 100,
            node: "n1".into(),
        },
    );
    assert_eq!(relocations(&a), vec![(100, "n1".into(), "n2".into(), 3)]);
    m.handle(
        3,
        HaInput::VmStarted {
            vmid: 100,
            node: "n2".into(),
        },
    );
    let a = m.handle(
        4,
        HaInput::VmFailed {
            vmid: 100,
            node: "n2".into(),
        },
    );
    assert_eq!(
        a,
        vec![HaAction::RestartOnNode {
            vmid: 100,
            node: "n2".into(),
            generation: 4
        }]
    );
    // Out of both: error, and nothing is started any more.
    let a = m.handle(
        5,
        HaInput::VmFailed {
            vmid: 100,
            node: "n2".into(),
        },
    );
    assert_eq!(
        a,
        vec![HaAction::SetVmState {
            vmid: 100,
            ha_state: ServiceStatus::Error
        }]
    );
    assert!(m.resource(100).unwrap().last_error.is_some());
    assert!(
        m.handle(
            6,
            HaInput::VmFailed {
                vmid: 100,
                node: "n2".into()
            }
        )
        .is_empty()
    );
    // `started` does not clear an error; `disabled` then `started` does.
    assert!(
        m.handle(
            7,
            HaInput::ResourceSet {
                config: res(100, 1, 1),
                node: "n2".into(),
                running: false
            }
        )
        .is_empty()
    );
    let mut off = res(100, 1, 1);
    off.state = RequestState::Disabled;
    m.handle(
        8,
        HaInput::ResourceSet {
            config: off,
            node: "n2".into(),
            running: false,
        },
    );
    let a = m.handle(
        9,
        HaInput::ResourceSet {
            config: res(100, 1, 1),
            node: "n2".into(),
            running: false,
        },
    );
    assert_eq!(
        a[0],
        HaAction::RestartOnNode {
            vmid: 100,
            node: "n2".into(),
            generation: 5
        }
    );
    assert_eq!(m.resource(100).unwrap().restarts, 0);
}

#[test]
fn restarts_exhausted_on_a_single_node_end_in_error() {
    let mut m = cluster(&["n1"]);
    let mut r = res(100, 2, 1);
    r.state = RequestState::Started;
    m.handle(
        0,
        HaInput::ResourceSet {
            config: r,
            node: "n1".into(),
            running: false,
        },
    );
    for g in [2, 3] {
        let a = m.handle(
            1,
            HaInput::VmFailed {
                vmid: 100,
                node: "n1".into(),
            },
        );
        assert_eq!(
            a,
            vec![HaAction::RestartOnNode {
                vmid: 100,
                node: "n1".into(),
                generation: g
            }]
        );
    }
    let a = m.handle(
        2,
        HaInput::VmFailed {
            vmid: 100,
            node: "n1".into(),
        },
    );
    assert_eq!(
        a,
        vec![HaAction::SetVmState {
            vmid: 100,
            ha_state: ServiceStatus::Error
        }]
    );
    let err = m.resource(100).unwrap().last_error.clone().unwrap();
    assert!(err.contains("n1: excluded"), "{err}");
}

#[test]
fn recovery_respects_cordon_and_anti_affinity_and_waits_for_room() {
    let mut m = HaManager::new(HaConfig {
        fence_grace_ms: GRACE,
        policy: Default::default(),
    });
    let mut n3 = cap("n3");
    n3.cordoned = true;
    m.handle(
        0,
        HaInput::NodesUpdated {
            nodes: vec![cap("n1"), cap("n2"), n3, cap("n4")],
            unmanaged: vec![],
        },
    );
    for (vmid, node) in [(100, "n1"), (101, "n2")] {
        let mut r = res(vmid, 0, 0);
        r.anti_affinity = Some("db".into());
        m.handle(
            0,
            HaInput::ResourceSet {
                config: r,
                node: node.into(),
                running: false,
            },
        );
    }
    // n4 is lost at the same time: only n2 (anti-affinity) and n3 (cordoned) remain.
    m.handle(
        100,
        HaInput::NodeLeaseExpired {
            node: "n1".into(),
            lease_deadline_ms: 100,
        },
    );
    m.handle(
        100,
        HaInput::NodeLeaseExpired {
            node: "n4".into(),
            lease_deadline_ms: 100,
        },
    );
    let a = m.handle(100 + GRACE, HaInput::Tick);
    assert!(relocations(&a).is_empty(), "{a:?}");
    let r = m.resource(100).unwrap();
    assert_eq!(r.status, ServiceStatus::Recovery);
    let err = r.last_error.as_deref().unwrap();
    assert!(
        err.contains("n2: runs VM 101 of anti-affinity group 'db'") && err.contains("n3: cordoned"),
        "{err}"
    );
    // n4 comes back: recovered there on the next tick.
    let a = m.handle(200 + GRACE, HaInput::NodeRecovered { node: "n4".into() });
    assert_eq!(relocations(&a), vec![(100, "n1".into(), "n4".into(), 2)]);
    m.check_invariants().unwrap();
}

#[test]
fn stopped_disabled_ignored() {
    let mut m = cluster(&["n1", "n2"]);
    let mut r = res(100, 1, 1);
    r.state = RequestState::Stopped;
    let a = m.handle(
        1,
        HaInput::ResourceSet {
            config: r.clone(),
            node: "n1".into(),
            running: false,
        },
    );
    assert_eq!(
        a,
        vec![
            HaAction::StopVm {
                vmid: 100,
                node: "n1".into()
            },
            HaAction::SetVmState {
                vmid: 100,
                ha_state: ServiceStatus::Stopped
            },
        ]
    );
    // A stopped resource on a lost node is not recovered.
    m.handle(
        10,
        HaInput::NodeLeaseExpired {
            node: "n1".into(),
            lease_deadline_ms: 10,
        },
    );
    assert!(relocations(&m.handle(10 + GRACE, HaInput::Tick)).is_empty());
    // Started again while its node is fenced: recovered elsewhere at once.
    r.state = RequestState::Started;
    let a = m.handle(
        11 + GRACE,
        HaInput::ResourceSet {
            config: r.clone(),
            node: "n1".into(),
            running: false,
        },
    );
    assert_eq!(relocations(&a), vec![(100, "n1".into(), "n2".into(), 2)]);
    r.state = RequestState::Ignored;
    let a = m.handle(
        12 + GRACE,
        HaInput::ResourceSet {
            config: r,
            node: "n2".into(),
            running: false,
        },
    );
    assert_eq!(
        a,
        vec![HaAction::SetVmState {
            vmid: 100,
            ha_state: ServiceStatus::Ignored
        }]
    );
    assert!(
        m.handle(
            13 + GRACE,
            HaInput::VmFailed {
                vmid: 100,
                node: "n2".into()
            }
        )
        .is_empty()
    );
    m.handle(14 + GRACE, HaInput::ResourceRemoved { vmid: 100 });
    assert!(m.resource(100).is_none());
}

#[test]
fn same_inputs_same_actions_and_state_survives_serialization() {
    let run = || {
        let mut m = cluster(&["n3", "n1", "n2", "n4"]);
        let mut all = Vec::new();
        for vmid in 101..121 {
            all.extend(m.handle(
                0,
                HaInput::ResourceSet {
                    config: res(vmid, 1, 1),
                    node: format!("n{}", 1 + vmid % 4),
                    running: false,
                },
            ));
        }
        all.extend(m.handle(
            1_000,
            HaInput::NodeLeaseExpired {
                node: "n2".into(),
                lease_deadline_ms: 1_000,
            },
        ));
        let json = serde_json::to_string(&m).unwrap();
        let mut m: HaManager = serde_json::from_str(&json).unwrap();
        all.extend(m.handle(1_000 + GRACE, HaInput::Tick));
        (all, m)
    };
    let (a, m1) = run();
    let (b, m2) = run();
    assert_eq!(a, b);
    assert_eq!(m1, m2);
    // Every VM of n2 moved, none to n2, each with a bumped generation.
    let moved = relocations(&a);
    assert_eq!(moved.len(), 5);
    assert!(
        moved
            .iter()
            .all(|(_, from, to, g)| from == "n2" && to != "n2" && *g == 2)
    );
    m1.check_invariants().unwrap();
}

#[test]
fn a_running_vm_added_as_started_is_adopted_not_restarted() {
    let mut m = cluster(&["n1", "n2"]);
    let a = m.handle(
        0,
        HaInput::ResourceSet {
            config: res(101, 1, 1),
            node: "n2".into(),
            running: true,
        },
    );
    assert!(a.is_empty(), "{a:?}");
    assert_eq!(m.resource(101).unwrap().status, ServiceStatus::Started);
    let mut stop = res(102, 1, 1);
    stop.state = RequestState::Stopped;
    let a = m.handle(
        0,
        HaInput::ResourceSet {
            config: stop,
            node: "n2".into(),
            running: true,
        },
    );
    assert_eq!(
        a[0],
        HaAction::StopVm {
            vmid: 102,
            node: "n2".into()
        }
    );
}

#[test]
fn a_migrated_vm_is_followed_and_recovered_from_its_new_node() {
    let mut m = cluster(&["n1", "n2", "n3"]);
    // A live migration moved VM 100 to n2: no action, the manager now places it on n2.
    let a = m.handle(
        1_000,
        HaInput::VmMigrated {
            vmid: 100,
            node: "n2".into(),
        },
    );
    assert!(a.is_empty(), "{a:?}");
    assert_eq!(m.resource(100).unwrap().node, "n2");
    assert_eq!(m.resource(100).unwrap().status, ServiceStatus::Started);
    // Losing the old node does not touch it ...
    let a = m.handle(
        2_000,
        HaInput::NodeLeaseExpired {
            node: "n1".into(),
            lease_deadline_ms: 2_000,
        },
    );
    assert!(relocations(&a).is_empty(), "{a:?}");
    assert_eq!(m.resource(100).unwrap().status, ServiceStatus::Started);
    // ... losing the new one recovers it elsewhere after the grace.
    m.handle(
        3_000,
        HaInput::NodeLeaseExpired {
            node: "n2".into(),
            lease_deadline_ms: 3_000,
        },
    );
    let a = m.handle(3_000 + GRACE, HaInput::Tick);
    assert_eq!(relocations(&a), vec![(100, "n2".into(), "n3".into(), 2)]);
    // While the manager relocates it, the record naming the old node is not followed.
    m.handle(
        3_000 + GRACE + 1,
        HaInput::VmMigrated {
            vmid: 100,
            node: "n2".into(),
        },
    );
    assert_eq!(m.resource(100).unwrap().node, "n3");
}
