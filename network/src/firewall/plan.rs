//! The nftables objects the firewall installs, as plain data, and the compiler from a
//! [`Ruleset`].
//!
//! Layout (the two tables named `gpve` are the only ones this crate ever touches):
//! - `table bridge gpve`: base chains `forward`, `input` and `output` (priority 0, policy
//!   accept) dispatch on the bridge port: `iifname tapXiN jump tapXiN-out` (traffic from
//!   the guest) and `oifname tapXiN jump tapXiN-in` (traffic to it). The per-tap chains
//!   hold the guest's rules then its policy. ACCEPT is `return`, so a packet between two
//!   guests passes the sender's out chain *and* the receiver's in chain.
//! - `table inet gpve`: chains at prerouting and output that set [`ESTABLISHED_MARK`] on
//!   packets of established or related connections; the bridge chains accept those first.
//!
//! Why two tables: with br_netfilter the inet hooks see bridged packets (and conntrack
//! tracks them) but report the bridge, not the port, as the interface, while the bridge
//! hooks see the port but cannot use conntrack without nf_conntrack_bridge (absent on
//! this kernel). The packet mark carries the conntrack verdict from one to the other.
//! ARP is accepted before any guest chain (the firewall filters IP, like Proxmox's).

use std::net::IpAddr;

use super::model::{
    Action, AddrMatch, Cidr, Direction, FirewallRule, GuestFirewall, Proto, RuleError, Ruleset,
};
use crate::ifname::IfName;
use crate::tap::tap_name;

/// The project's tables (one `bridge`, one `inet`).
pub const TABLE_NAME: &str = "gpve";
/// Packet-mark bit meaning "conntrack says established or related"; other bits of the
/// mark are preserved.
pub const ESTABLISHED_MARK: u32 = 0x0010_0000;
pub const FORWARD_CHAIN: &str = "forward";
pub const INPUT_CHAIN: &str = "input";
pub const OUTPUT_CHAIN: &str = "output";

/// Which of the two tables a chain lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFamily {
    Bridge,
    Inet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseHook {
    Prerouting,
    Input,
    Forward,
    Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Dest,
}

/// One match expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NftMatch {
    Family(IpFamily),
    L4Proto(u8),
    IifName(IfName),
    OifName(IfName),
    Addr {
        side: Side,
        cidr: Cidr,
    },
    AddrInSet {
        side: Side,
        set: String,
        family: IpFamily,
    },
    /// TCP or UDP port in `lo..=hi`.
    Port {
        side: Side,
        proto: Proto,
        lo: u16,
        hi: u16,
    },
    CtEstablishedOrRelated,
    /// The [`ESTABLISHED_MARK`] bit is set.
    EstablishedMark,
    /// The frame is ARP.
    Arp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NftVerdict {
    Accept,
    Drop,
    /// ICMP(v6) port unreachable.
    Reject,
    Jump(String),
    Return,
    /// Statement, not a verdict: sets [`ESTABLISHED_MARK`] and continues.
    SetEstablishedMark,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftRule {
    pub matches: Vec<NftMatch>,
    pub verdict: NftVerdict,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftChain {
    pub table: TableFamily,
    pub name: String,
    pub base: Option<BaseHook>,
    pub rules: Vec<NftRule>,
}

/// An interval set of addresses of one family, in the bridge table; `ranges` are inclusive, sorted and
/// non-overlapping (what the kernel's interval sets require).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftSet {
    pub name: String,
    pub family: IpFamily,
    pub ranges: Vec<(u128, u128)>,
}

/// Everything that goes into the `gpve` tables, applied as one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftPlan {
    pub sets: Vec<NftSet>,
    pub chains: Vec<NftChain>,
}

impl NftPlan {
    pub fn rule_count(&self) -> usize {
        self.chains.iter().map(|c| c.rules.len()).sum()
    }
}

/// Name of the kernel set holding one family of an IP set.
pub fn set_name(ipset: &str, family: IpFamily) -> String {
    match family {
        IpFamily::V4 => format!("{ipset}-v4"),
        IpFamily::V6 => format!("{ipset}-v6"),
    }
}

/// Name of a tap's chain for one direction.
pub fn tap_chain(tap: &IfName, direction: Direction) -> String {
    match direction {
        Direction::In => format!("{tap}-in"),
        Direction::Out => format!("{tap}-out"),
    }
}

fn verdict(action: Action) -> NftVerdict {
    match action {
        // Return to the base chain, which may still send the packet through the
        // receiving guest's chain.
        Action::Accept => NftVerdict::Return,
        Action::Drop => NftVerdict::Drop,
        Action::Reject => NftVerdict::Reject,
    }
}

/// Sorts and merges address ranges so they can go into an interval set.
fn merge_ranges(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

/// What the kernel can do, as far as the compiler cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileOptions {
    /// `reject` works in bridge chains (see [`super::nft::probe_bridge_reject`]).
    pub reject_supported: bool,
}

fn rule(matches: Vec<NftMatch>, verdict: NftVerdict, comment: Option<String>) -> NftRule {
    NftRule {
        matches,
        verdict,
        comment,
    }
}

/// Validates `ruleset` and compiles it.
pub fn compile(ruleset: &Ruleset, opts: &CompileOptions) -> Result<NftPlan, RuleError> {
    ruleset.validate()?;
    if !opts.reject_supported {
        let rejects = ruleset.guests.iter().any(|g| {
            g.policy_in == Action::Reject
                || g.policy_out == Action::Reject
                || g.rules.iter().any(|r| r.action == Action::Reject)
        });
        if rejects {
            return Err(RuleError::RejectUnsupported);
        }
    }
    let mut plan = NftPlan::default();
    for set in &ruleset.ipsets {
        for family in [IpFamily::V4, IpFamily::V6] {
            let ranges = set
                .entries
                .iter()
                .filter(|c| c.is_ipv4() == (family == IpFamily::V4))
                .map(Cidr::range)
                .collect();
            plan.sets.push(NftSet {
                name: set_name(&set.name, family),
                family,
                ranges: merge_ranges(ranges),
            });
        }
    }
    for (name, hook) in [
        ("prerouting", BaseHook::Prerouting),
        ("output", BaseHook::Output),
    ] {
        plan.chains.push(NftChain {
            table: TableFamily::Inet,
            name: name.into(),
            base: Some(hook),
            rules: vec![rule(
                vec![NftMatch::CtEstablishedOrRelated],
                NftVerdict::SetEstablishedMark,
                None,
            )],
        });
    }
    let head = || {
        vec![
            rule(vec![NftMatch::EstablishedMark], NftVerdict::Accept, None),
            rule(vec![NftMatch::Arp], NftVerdict::Accept, None),
        ]
    };
    let base = |name: &str, hook| NftChain {
        table: TableFamily::Bridge,
        name: name.into(),
        base: Some(hook),
        rules: head(),
    };
    let mut forward = base(FORWARD_CHAIN, BaseHook::Forward);
    let mut input = base(INPUT_CHAIN, BaseHook::Input);
    let mut output = base(OUTPUT_CHAIN, BaseHook::Output);
    let mut to_guest = Vec::new();
    let mut guest_chains = Vec::new();
    for guest in ruleset.guests.iter().filter(|g| g.enable) {
        for &nic in &guest.nics {
            let tap = tap_name(guest.vmid, nic)?;
            let comment = Some(format!("vm {} net{nic}", guest.vmid));
            for direction in [Direction::Out, Direction::In] {
                let chain = tap_chain(&tap, direction);
                let jump = NftVerdict::Jump(chain.clone());
                match direction {
                    Direction::Out => {
                        let m = vec![NftMatch::IifName(tap.clone())];
                        forward
                            .rules
                            .push(rule(m.clone(), jump.clone(), comment.clone()));
                        input.rules.push(rule(m, jump, comment.clone()));
                    }
                    Direction::In => {
                        let m = vec![NftMatch::OifName(tap.clone())];
                        to_guest.push(rule(m.clone(), jump.clone(), comment.clone()));
                        output.rules.push(rule(m, jump, comment.clone()));
                    }
                }
                guest_chains.push(NftChain {
                    table: TableFamily::Bridge,
                    rules: guest_rules(guest, nic, direction),
                    name: chain,
                    base: None,
                });
            }
        }
    }
    // Sender's out chains first, then the receiver's in chains.
    forward.rules.extend(to_guest);
    plan.chains.extend([forward, input, output]);
    plan.chains.extend(guest_chains);
    Ok(plan)
}

fn guest_rules(guest: &GuestFirewall, nic: u8, direction: Direction) -> Vec<NftRule> {
    let mut out = Vec::new();
    for rule in &guest.rules {
        if !rule.enable || rule.direction != direction || rule.iface.is_some_and(|i| i != nic) {
            continue;
        }
        compile_rule(rule, &mut out);
    }
    let policy = match direction {
        Direction::In => guest.policy_in,
        Direction::Out => guest.policy_out,
    };
    out.push(NftRule {
        matches: vec![],
        verdict: verdict(policy),
        comment: Some("policy".into()),
    });
    out
}

/// Which IP families a rule must be emitted for; `None` means "any family, no check".
fn families(rule: &FirewallRule) -> Vec<Option<IpFamily>> {
    let cidr_family = [&rule.source, &rule.dest]
        .into_iter()
        .flatten()
        .find_map(|a| match a {
            AddrMatch::Cidr(c) => Some(if c.is_ipv4() {
                IpFamily::V4
            } else {
                IpFamily::V6
            }),
            AddrMatch::IpSet(_) => None,
        });
    let proto_family = match rule.proto {
        Some(Proto::Icmp) => Some(IpFamily::V4),
        Some(Proto::Icmpv6) => Some(IpFamily::V6),
        _ => None,
    };
    let uses_set = [&rule.source, &rule.dest]
        .into_iter()
        .flatten()
        .any(|a| matches!(a, AddrMatch::IpSet(_)));
    match cidr_family.or(proto_family) {
        Some(f) => vec![Some(f)],
        // A set lookup needs the family to know which header field to load.
        None if uses_set => vec![Some(IpFamily::V4), Some(IpFamily::V6)],
        None => vec![None],
    }
}

fn compile_rule(rule: &FirewallRule, out: &mut Vec<NftRule>) {
    let all_ports = [(1u16, u16::MAX)];
    let dports = rule.dport.as_ref().map(|p| p.ranges());
    let sports = rule.sport.as_ref().map(|p| p.ranges());
    for family in families(rule) {
        for &(dlo, dhi) in dports.unwrap_or(&all_ports) {
            for &(slo, shi) in sports.unwrap_or(&all_ports) {
                let mut matches = Vec::new();
                if let Some(f) = family {
                    matches.push(NftMatch::Family(f));
                }
                if let Some(proto) = rule.proto {
                    matches.push(NftMatch::L4Proto(proto.number()));
                }
                for (side, addr) in [(Side::Source, &rule.source), (Side::Dest, &rule.dest)] {
                    match (addr, family) {
                        (Some(AddrMatch::Cidr(cidr)), _) => {
                            matches.push(NftMatch::Addr { side, cidr: *cidr })
                        }
                        (Some(AddrMatch::IpSet(name)), Some(f)) => {
                            matches.push(NftMatch::AddrInSet {
                                side,
                                set: set_name(name, f),
                                family: f,
                            })
                        }
                        _ => {}
                    }
                }
                if let Some(proto) = rule.proto {
                    if dports.is_some() {
                        matches.push(NftMatch::Port {
                            side: Side::Dest,
                            proto,
                            lo: dlo,
                            hi: dhi,
                        });
                    }
                    if sports.is_some() {
                        matches.push(NftMatch::Port {
                            side: Side::Source,
                            proto,
                            lo: slo,
                            hi: shi,
                        });
                    }
                }
                out.push(NftRule {
                    matches,
                    verdict: verdict(rule.action),
                    comment: rule.comment.clone(),
                });
            }
        }
    }
}

/// The address family of a CIDR match (used by the nftnl encoder).
pub(crate) fn cidr_family(cidr: &Cidr) -> IpFamily {
    match cidr.addr() {
        IpAddr::V4(_) => IpFamily::V4,
        IpAddr::V6(_) => IpFamily::V6,
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::IpSet;
    use super::*;

    const OPTS: CompileOptions = CompileOptions {
        reject_supported: false,
    };

    fn ruleset(rules: Vec<FirewallRule>) -> Ruleset {
        Ruleset {
            ipsets: vec![IpSet {
                name: "trusted".into(),
                entries: ["10.0.0.0/24", "10.0.1.0/24", "10.0.0.5", "fd00::/64"]
                    .iter()
                    .filter_map(|s| s.parse().ok())
                    .collect(),
            }],
            guests: vec![GuestFirewall {
                vmid: 100,
                nics: vec![0, 1],
                enable: true,
                policy_in: Action::Drop,
                policy_out: Action::Accept,
                rules,
            }],
        }
    }

    #[test]
    fn layout_and_dispatch() {
        let plan = compile(&ruleset(vec![]), &OPTS).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<_> = plan.chains.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "prerouting",
                "output",
                "forward",
                "input",
                "output",
                "tap100i0-out",
                "tap100i0-in",
                "tap100i1-out",
                "tap100i1-in"
            ]
        );
        let forward = &plan.chains[2];
        assert_eq!(forward.rules.len(), 6);
        assert_eq!(
            forward.rules[2].verdict,
            NftVerdict::Jump("tap100i0-out".into())
        );
        assert_eq!(
            forward.rules[3].verdict,
            NftVerdict::Jump("tap100i1-out".into())
        );
        assert_eq!(
            forward.rules[4].verdict,
            NftVerdict::Jump("tap100i0-in".into())
        );
        assert_eq!(
            plan.chains[6].rules.last().map(|r| &r.verdict),
            Some(&NftVerdict::Drop)
        );
        assert_eq!(
            plan.chains[5].rules.last().map(|r| &r.verdict),
            Some(&NftVerdict::Return)
        );
        // Overlapping and adjacent networks merge into one interval.
        assert_eq!(plan.sets[0].ranges, vec![(0x0a00_0000, 0x0a00_01ff)]);
        assert_eq!(plan.sets[1].name, "trusted-v6");
        assert_eq!(plan.sets[1].ranges.len(), 1);
    }

    #[test]
    fn rules_expand_per_port_family_and_nic() {
        let mut r = FirewallRule::new(Direction::In, Action::Accept);
        r.proto = Some(Proto::Tcp);
        r.dport = "22,80:90".parse().ok();
        r.source = "+trusted".parse().ok();
        r.iface = Some(1);
        let mut disabled = r.clone();
        disabled.enable = false;
        let plan = compile(&ruleset(vec![r, disabled]), &OPTS).unwrap_or_else(|e| panic!("{e}"));
        // NIC 0 only has its policy; NIC 1 has 2 families x 2 port ranges + policy.
        assert_eq!(plan.chains[6].rules.len(), 1);
        assert_eq!(plan.chains[8].rules.len(), 5);
        assert_eq!(
            plan.chains[8].rules[1].matches,
            vec![
                NftMatch::Family(IpFamily::V4),
                NftMatch::L4Proto(6),
                NftMatch::AddrInSet {
                    side: Side::Source,
                    set: "trusted-v4".into(),
                    family: IpFamily::V4
                },
                NftMatch::Port {
                    side: Side::Dest,
                    proto: Proto::Tcp,
                    lo: 80,
                    hi: 90
                },
            ]
        );
    }

    #[test]
    fn disabled_guest_gets_no_chains() {
        let mut rs = ruleset(vec![]);
        rs.guests[0].enable = false;
        let plan = compile(&rs, &OPTS).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.chains.len(), 5);
        assert_eq!(plan.rule_count(), 8);
    }

    #[test]
    fn reject_needs_kernel_support() {
        let mut r = FirewallRule::new(Direction::Out, Action::Reject);
        r.proto = Some(Proto::Tcp);
        let rs = ruleset(vec![r]);
        assert_eq!(compile(&rs, &OPTS), Err(RuleError::RejectUnsupported));
        let plan = compile(
            &rs,
            &CompileOptions {
                reject_supported: true,
            },
        );
        assert!(plan.is_ok_and(|p| p.chains[5].rules[0].verdict == NftVerdict::Reject));
    }
}
