//! The firewall configuration as Proxmox's API shapes it (rules with `type`, `action`,
//! `macro`, `source`, `dport`…; options; security groups, IP sets, aliases), stored in the
//! store and compiled into the network crate's [`Ruleset`] for the VMs of one node.
//!
//! Decisions (see docs/architecture.md, "Network"):
//! - gpve filters guest traffic only (the network crate has no host chains): cluster-level
//!   rules are applied to every guest NIC with `firewall=1`, before the guest's own rules.
//! - A guest is filtered when the cluster firewall *and* the guest's firewall are enabled
//!   (Proxmox's `enable` options, both default off); its policies default to Proxmox's
//!   (in DROP, out ACCEPT).
//! - Rules follow Proxmox: a rule without `enable=1` is stored but inactive.
//! - Address lists (`a,b`) and `icmp-type` are refused with a clear message rather than
//!   half-supported.

use std::collections::BTreeMap;

use gpve_network::firewall::model::parse_iface;
use gpve_network::firewall::{
    Action, AddrMatch, Cidr, Direction, FirewallRule, GuestFirewall, IpSet, PortSpec, Proto,
    RuleError, Ruleset,
};
use gpve_store::{Key, Store, StoreError};
use serde::{Deserialize, Serialize};

/// Store subspace of firewall configuration.
pub const FIREWALL_SUBSPACE: &str = "firewall";
/// Most rules in one rule list (cluster, group or VM).
pub const RULES_MAX: usize = 4096;
/// Longest group or alias name (Proxmox: 18 for groups; gpve allows up to 64 for both).
pub const NAME_BYTES_MAX: usize = 64;

/// Errors of the firewall configuration; `Field` names the API parameter at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FwConfigError {
    #[error("invalid {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("no rule at position {0}")]
    NoRule(usize),
    #[error("at most {RULES_MAX} rules are allowed in one list")]
    TooManyRules,
    #[error("{kind} {name} does not exist")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} {name} already exists")]
    Exists { kind: &'static str, name: String },
    #[error("{kind} {name} is still used by {user}")]
    InUse {
        kind: &'static str,
        name: String,
        user: String,
    },
    #[error("the ruleset is invalid")]
    Ruleset(#[from] RuleError),
}

fn field(field: &'static str, reason: impl Into<String>) -> FwConfigError {
    FwConfigError::Field {
        field,
        reason: reason.into(),
    }
}

/// One rule as the API reads and writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleConf {
    /// `in`, `out` or `group` (then `action` names the security group).
    #[serde(rename = "type")]
    pub kind: String,
    pub action: String,
    #[serde(rename = "macro", default, skip_serializing_if = "Option::is_none")]
    pub macro_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default)]
    pub enable: bool,
}

/// Cluster (and VM) firewall options gpve honours.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwOptions {
    #[serde(default)]
    pub enable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_in: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_out: Option<String>,
}

/// A security group: a named list of rules that rules of type `group` include.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub rules: Vec<RuleConf>,
}

/// An IP set entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpSetEntry {
    pub cidr: String,
    #[serde(default)]
    pub comment: Option<String>,
}

/// A named set of networks, referenced as `+name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpSetConf {
    #[serde(default)]
    pub comment: Option<String>,
    #[serde(default)]
    pub entries: Vec<IpSetEntry>,
}

/// A named address or network, usable as `source`/`dest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alias {
    pub cidr: String,
    #[serde(default)]
    pub comment: Option<String>,
}

/// Cluster-wide firewall configuration at `("firewall", "cluster")`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFirewall {
    #[serde(default)]
    pub options: FwOptions,
    #[serde(default)]
    pub rules: Vec<RuleConf>,
    #[serde(default)]
    pub groups: BTreeMap<String, Group>,
    #[serde(default)]
    pub ipsets: BTreeMap<String, IpSetConf>,
    #[serde(default)]
    pub aliases: BTreeMap<String, Alias>,
}

/// One VM's firewall configuration at `("firewall", "vm", vmid)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmFirewall {
    #[serde(default)]
    pub options: FwOptions,
    #[serde(default)]
    pub rules: Vec<RuleConf>,
}

/// What a macro expands to: (proto, dport) pairs.
pub type MacroEntries = &'static [(&'static str, Option<&'static str>)];

/// Proxmox macros gpve knows: (name, [(proto, dport)]).
pub const MACROS: &[(&str, MacroEntries)] = &[
    ("DNS", &[("udp", Some("53")), ("tcp", Some("53"))]),
    ("FTP", &[("tcp", Some("21"))]),
    ("HTTP", &[("tcp", Some("80"))]),
    ("HTTPS", &[("tcp", Some("443"))]),
    ("IMAP", &[("tcp", Some("143"))]),
    ("IMAPS", &[("tcp", Some("993"))]),
    ("NTP", &[("udp", Some("123"))]),
    ("Ping", &[("icmp", None)]),
    ("POP3", &[("tcp", Some("110"))]),
    ("RDP", &[("tcp", Some("3389"))]),
    ("SMTP", &[("tcp", Some("25"))]),
    ("SMTPS", &[("tcp", Some("465"))]),
    ("SNMP", &[("udp", Some("161:162")), ("tcp", Some("161"))]),
    ("SSH", &[("tcp", Some("22"))]),
    ("Telnet", &[("tcp", Some("23"))]),
    ("VNC", &[("tcp", Some("5900:5999"))]),
    ("Web", &[("tcp", Some("80")), ("tcp", Some("443"))]),
];

fn lookup_macro(name: &str) -> Option<MacroEntries> {
    MACROS
        .iter()
        .find(|(m, _)| m.eq_ignore_ascii_case(name))
        .map(|(_, entries)| *entries)
}

/// Group and alias names: a letter, then letters, digits, `-` and `_`.
pub fn check_name(kind: &'static str, name: &str) -> Result<(), FwConfigError> {
    let mut b = name.bytes();
    let ok = name.len() <= NAME_BYTES_MAX
        && b.next().is_some_and(|c| c.is_ascii_alphabetic())
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    if ok {
        Ok(())
    } else {
        Err(field(
            kind,
            format!(
                "{name:?} must start with a letter and contain only A-Z, a-z, 0-9, '-' and '_' (at most {NAME_BYTES_MAX})"
            ),
        ))
    }
}

fn policy(s: Option<&str>, default: Action, name: &'static str) -> Result<Action, FwConfigError> {
    match s {
        None => Ok(default),
        Some(p) => p.parse().map_err(|e: RuleError| field(name, e.to_string())),
    }
}

impl FwOptions {
    /// Checks the policies.
    pub fn validate(&self) -> Result<(), FwConfigError> {
        policy(self.policy_in.as_deref(), Action::Drop, "policy_in")?;
        policy(self.policy_out.as_deref(), Action::Accept, "policy_out")?;
        Ok(())
    }
}

/// What rule compilation needs to resolve names.
struct Names<'a> {
    cluster: &'a ClusterFirewall,
}

impl Names<'_> {
    fn addr(&self, name: &'static str, s: &str) -> Result<AddrMatch, FwConfigError> {
        if s.contains([',', ' ']) {
            return Err(field(
                name,
                "address lists are not supported; use an IP set (+name)",
            ));
        }
        if let Some(set) = s.strip_prefix('+') {
            if !self.cluster.ipsets.contains_key(set) {
                return Err(field(name, format!("IP set {set} is not defined")));
            }
            return s.parse().map_err(|e: RuleError| field(name, e.to_string()));
        }
        if let Some(alias) = self.cluster.aliases.get(s) {
            return alias
                .cidr
                .parse::<Cidr>()
                .map(AddrMatch::Cidr)
                .map_err(|e| field(name, format!("alias {s}: {e}")));
        }
        if s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic()) && !s.contains(':') {
            return Err(field(name, format!("alias {s} is not defined")));
        }
        s.parse().map_err(|e: RuleError| field(name, e.to_string()))
    }

    /// One rule into zero (disabled), one or several (macros, groups) model rules.
    fn rule(&self, r: &RuleConf, depth: u8) -> Result<Vec<FirewallRule>, FwConfigError> {
        if r.kind == "group" {
            if depth > 0 {
                return Err(field("type", "a security group cannot include a group"));
            }
            let group = self.cluster.groups.get(&r.action).ok_or_else(|| {
                field(
                    "action",
                    format!("security group {} does not exist", r.action),
                )
            })?;
            let mut out = Vec::new();
            for gr in &group.rules {
                for mut m in self.rule(gr, depth + 1)? {
                    m.enable &= r.enable;
                    if r.iface.is_some() {
                        m.iface = r
                            .iface
                            .as_deref()
                            .map(parse_iface)
                            .transpose()
                            .map_err(|e| field("iface", e.to_string()))?;
                    }
                    out.push(m);
                }
            }
            return Ok(out);
        }
        let direction: Direction = r
            .kind
            .parse()
            .map_err(|_| field("type", format!("{:?} is not one of in, out, group", r.kind)))?;
        let action: Action = r
            .action
            .parse()
            .map_err(|e: RuleError| field("action", e.to_string()))?;
        let source = r
            .source
            .as_deref()
            .map(|s| self.addr("source", s))
            .transpose()?;
        let dest = r
            .dest
            .as_deref()
            .map(|s| self.addr("dest", s))
            .transpose()?;
        let sport = r
            .sport
            .as_deref()
            .map(|s| s.parse::<PortSpec>())
            .transpose()
            .map_err(|e| field("sport", e.to_string()))?;
        let iface = r
            .iface
            .as_deref()
            .map(parse_iface)
            .transpose()
            .map_err(|e| field("iface", e.to_string()))?;
        if let Some(c) = &r.comment
            && (c.len() > gpve_network::firewall::model::COMMENT_BYTES_MAX
                || c.chars().any(char::is_control))
        {
            return Err(field("comment", RuleError::InvalidComment.to_string()));
        }
        let protos: Vec<(Option<Proto>, Option<PortSpec>)> = match &r.macro_name {
            Some(m) => {
                if r.proto.is_some() || r.dport.is_some() {
                    return Err(field("macro", "a macro sets proto and dport itself"));
                }
                let entries = lookup_macro(m).ok_or_else(|| {
                    let known: Vec<&str> = MACROS.iter().map(|(n, _)| *n).collect();
                    field(
                        "macro",
                        format!("unknown macro {m:?}; known: {}", known.join(", ")),
                    )
                })?;
                entries
                    .iter()
                    .map(|(p, d)| {
                        let proto = p.parse::<Proto>().ok();
                        let dport = d.and_then(|d| d.parse::<PortSpec>().ok());
                        (proto, dport)
                    })
                    .collect()
            }
            None => {
                let proto = r
                    .proto
                    .as_deref()
                    .map(|p| p.parse::<Proto>())
                    .transpose()
                    .map_err(|e| field("proto", e.to_string()))?;
                let dport = r
                    .dport
                    .as_deref()
                    .map(|s| s.parse::<PortSpec>())
                    .transpose()
                    .map_err(|e| field("dport", e.to_string()))?;
                vec![(proto, dport)]
            }
        };
        let mut out = Vec::new();
        for (proto, dport) in protos {
            let mut m = FirewallRule::new(direction, action);
            m.proto = proto;
            m.dport = dport;
            m.sport = sport.clone();
            m.source = source.clone();
            m.dest = dest.clone();
            m.iface = iface;
            m.comment = r.comment.clone();
            m.enable = r.enable;
            out.push(m);
        }
        Ok(out)
    }
}

/// Checks one rule against the cluster configuration (names it refers to, syntax, the
/// combinations the kernel would refuse); errors name the API parameter.
pub fn check_rule(cluster: &ClusterFirewall, r: &RuleConf) -> Result<(), FwConfigError> {
    let names = Names { cluster };
    let compiled = names.rule(r, 0)?;
    let ipsets = ipsets(cluster)?;
    let set_names = ipsets.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    // Validate through the network crate's model, as a one-rule guest.
    let probe = Ruleset {
        ipsets: set_names
            .into_iter()
            .map(|name| IpSet {
                name,
                entries: vec![],
            })
            .collect(),
        guests: vec![GuestFirewall {
            vmid: 100,
            nics: vec![0],
            enable: true,
            policy_in: Action::Drop,
            policy_out: Action::Accept,
            rules: compiled
                .into_iter()
                .map(|mut m| {
                    m.enable = true;
                    m
                })
                .collect(),
        }],
    };
    let opts = gpve_network::firewall::CompileOptions {
        reject_supported: gpve_network::firewall::bridge_reject_supported(),
    };
    gpve_network::firewall::compile(&probe, &opts)
        .map(|_| ())
        .map_err(rule_field)
}

/// Maps a model error to the parameter it concerns.
fn rule_field(e: RuleError) -> FwConfigError {
    let name = match &e {
        RuleError::InvalidPort(_)
        | RuleError::ReversedPortRange { .. }
        | RuleError::TooManyPorts(_)
        | RuleError::PortsWithoutTcpUdp(_) => "dport",
        RuleError::InvalidProto(_) | RuleError::ProtoFamilyMismatch { .. } => "proto",
        RuleError::InvalidAction(_) | RuleError::RejectUnsupported => "action",
        RuleError::InvalidIface(_) => "iface",
        RuleError::InvalidComment => "comment",
        RuleError::MixedFamilies { .. } => "dest",
        RuleError::InvalidCidr(_) | RuleError::InvalidPrefix { .. } => "source",
        _ => return FwConfigError::Ruleset(e),
    };
    field(name, e.to_string())
}

fn ipsets(cluster: &ClusterFirewall) -> Result<Vec<IpSet>, FwConfigError> {
    cluster
        .ipsets
        .iter()
        .map(|(name, set)| {
            let entries = set
                .entries
                .iter()
                .map(|e| e.cidr.parse::<Cidr>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| field("cidr", format!("IP set {name}: {e}")))?;
            Ok(IpSet {
                name: name.clone(),
                entries,
            })
        })
        .collect()
}

/// The NICs with `firewall=1` of a VM configuration, by slot.
pub fn firewalled_nics(config: &BTreeMap<String, String>) -> Vec<u8> {
    config
        .iter()
        .filter_map(|(k, v)| {
            let slot = k.strip_prefix("net")?.parse::<u8>().ok()?;
            let net = crate::vm::config::parse_net(v).ok()?;
            net.firewall.then_some(slot)
        })
        .collect()
}

/// One guest of the ruleset.
pub struct GuestInput<'a> {
    pub vmid: u32,
    pub config: &'a BTreeMap<String, String>,
    pub firewall: Option<&'a VmFirewall>,
}

/// The ruleset of one node: every guest with at least one `firewall=1` NIC.
pub fn compile(
    cluster: &ClusterFirewall,
    guests: &[GuestInput<'_>],
) -> Result<Ruleset, FwConfigError> {
    let names = Names { cluster };
    let mut baseline = Vec::new();
    for r in &cluster.rules {
        baseline.extend(names.rule(r, 0)?);
    }
    let mut out = Ruleset {
        ipsets: ipsets(cluster)?,
        guests: Vec::new(),
    };
    for g in guests {
        let nics = firewalled_nics(g.config);
        if nics.is_empty() {
            continue;
        }
        let default = VmFirewall::default();
        let fw = g.firewall.unwrap_or(&default);
        let mut rules = baseline.clone();
        for r in &fw.rules {
            rules.extend(names.rule(r, 0)?);
        }
        out.guests.push(GuestFirewall {
            vmid: g.vmid,
            nics,
            enable: cluster.options.enable && fw.options.enable,
            policy_in: policy(fw.options.policy_in.as_deref(), Action::Drop, "policy_in")?,
            policy_out: policy(
                fw.options.policy_out.as_deref(),
                Action::Accept,
                "policy_out",
            )?,
            rules,
        });
    }
    out.validate().map_err(rule_field)?;
    Ok(out)
}

/// Store key of the cluster firewall.
pub fn cluster_key() -> Key {
    Key::pack(&(FIREWALL_SUBSPACE, "cluster"))
}

/// Store key of one VM's firewall.
pub fn vm_key(vmid: u32) -> Key {
    Key::pack(&(FIREWALL_SUBSPACE, "vm", vmid))
}

pub async fn load_cluster(store: &Store) -> Result<ClusterFirewall, StoreError> {
    Ok(store.get_json(&cluster_key()).await?.unwrap_or_default())
}

pub async fn load_vm(store: &Store, vmid: u32) -> Result<VmFirewall, StoreError> {
    Ok(store.get_json(&vm_key(vmid)).await?.unwrap_or_default())
}

/// Reads, changes and writes one firewall document in a transaction; `change` may refuse.
pub async fn update_doc<D, T, F>(
    store: &Store,
    key: Key,
    change: F,
) -> Result<Result<T, FwConfigError>, StoreError>
where
    D: Serialize + serde::de::DeserializeOwned + Default + Send + Sync + 'static,
    T: Send + 'static,
    F: Fn(&mut D) -> Result<T, FwConfigError> + Send + Sync + Clone + 'static,
{
    store
        .transact(move |tx| {
            let change = change.clone();
            let key = key.clone();
            Box::pin(async move {
                let mut doc: D = tx.get_json(&key).await?.unwrap_or_default();
                match change(&mut doc) {
                    Ok(out) => {
                        tx.put_json(&key, &doc)?;
                        Ok(Ok(out))
                    }
                    Err(e) => Ok(Err(e)),
                }
            })
        })
        .await
}

/// Inserts `rule` at `pos` (appended when `None` or past the end), Proxmox's ordering.
pub fn insert_rule(
    rules: &mut Vec<RuleConf>,
    pos: Option<usize>,
    rule: RuleConf,
) -> Result<(), FwConfigError> {
    if rules.len() >= RULES_MAX {
        return Err(FwConfigError::TooManyRules);
    }
    let at = pos.unwrap_or(0).min(rules.len());
    // Proxmox puts a new rule first unless a position is given.
    rules.insert(at, rule);
    Ok(())
}

/// Removes the rule at `pos`.
pub fn delete_rule(rules: &mut Vec<RuleConf>, pos: usize) -> Result<RuleConf, FwConfigError> {
    if pos >= rules.len() {
        return Err(FwConfigError::NoRule(pos));
    }
    Ok(rules.remove(pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: &str, action: &str) -> RuleConf {
        RuleConf {
            kind: kind.into(),
            action: action.into(),
            enable: true,
            ..RuleConf::default()
        }
    }

    fn vm_config(net0: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("net0".to_string(), net0.to_string())])
    }

    #[test]
    fn rules_are_checked_per_field() {
        let cluster = ClusterFirewall::default();
        let mut r = rule("in", "ACCEPT");
        r.proto = Some("tcp".into());
        r.dport = Some("22".into());
        r.source = Some("10.0.0.0/8".into());
        assert_eq!(check_rule(&cluster, &r), Ok(()));
        let bad = |f: &dyn Fn(&mut RuleConf), want: &str| {
            let mut b = r.clone();
            f(&mut b);
            match check_rule(&cluster, &b) {
                Err(FwConfigError::Field { field, .. }) => assert_eq!(field, want),
                other => panic!("{b:?}: {other:?}"),
            }
        };
        bad(&|b| b.kind = "sideways".into(), "type");
        bad(&|b| b.action = "ALLOW".into(), "action");
        bad(&|b| b.dport = Some("70000".into()), "dport");
        bad(&|b| b.proto = Some("sctp".into()), "proto");
        bad(&|b| b.source = Some("10.0.0.0/33".into()), "source");
        bad(&|b| b.source = Some("+nope".into()), "source");
        bad(&|b| b.source = Some("office".into()), "source");
        bad(&|b| b.source = Some("10.0.0.1,10.0.0.2".into()), "source");
        bad(&|b| b.iface = Some("eth0".into()), "iface");
        bad(&|b| b.macro_name = Some("SSH".into()), "macro");
        bad(
            &|b| {
                b.proto = None;
                b.dport = None;
                b.macro_name = Some("Nope".into());
            },
            "macro",
        );
        bad(
            &|b| {
                b.proto = Some("icmp".into());
            },
            "dport",
        );
        bad(&|b| b.kind = "group".into(), "action");
    }

    #[test]
    fn compile_expands_macros_groups_aliases_and_baseline() {
        let mut cluster = ClusterFirewall::default();
        cluster.options.enable = true;
        cluster.aliases.insert(
            "office".into(),
            Alias {
                cidr: "192.0.2.0/24".into(),
                comment: None,
            },
        );
        let mut web = rule("in", "ACCEPT");
        web.macro_name = Some("Web".into());
        web.source = Some("office".into());
        cluster.groups.insert(
            "webserver".into(),
            Group {
                comment: None,
                rules: vec![web],
            },
        );
        cluster.rules.push(rule("out", "DROP"));
        let mut vmfw = VmFirewall::default();
        vmfw.options.enable = true;
        vmfw.rules.push(rule("group", "webserver"));
        let cfg = vm_config("virtio,bridge=vmbr0,firewall=1");
        let plain = vm_config("virtio,bridge=vmbr0");
        let rs = compile(
            &cluster,
            &[
                GuestInput {
                    vmid: 100,
                    config: &cfg,
                    firewall: Some(&vmfw),
                },
                GuestInput {
                    vmid: 101,
                    config: &plain,
                    firewall: None,
                },
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rs.guests.len(), 1, "only NICs with firewall=1 are filtered");
        let g = &rs.guests[0];
        assert!(g.enable);
        assert_eq!(g.nics, vec![0]);
        assert_eq!(g.policy_in, Action::Drop);
        // Baseline first, then the group's two macro rules (80, 443) from the alias.
        assert_eq!(g.rules.len(), 3);
        assert_eq!(g.rules[0].direction, Direction::Out);
        assert!(g.rules[1..].iter().all(|r| r.proto == Some(Proto::Tcp)
            && r.source
                == Some(AddrMatch::Cidr(
                    "192.0.2.0/24".parse().unwrap_or_else(|e| panic!("{e}"))
                ))));

        cluster.options.enable = false;
        let rs = compile(
            &cluster,
            &[GuestInput {
                vmid: 100,
                config: &cfg,
                firewall: Some(&vmfw),
            }],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(!rs.guests[0].enable, "cluster firewall off disables guests");
    }

    #[test]
    fn rule_positions() {
        let mut rules = vec![];
        assert!(insert_rule(&mut rules, None, rule("in", "DROP")).is_ok());
        assert!(insert_rule(&mut rules, Some(5), rule("out", "DROP")).is_ok());
        assert_eq!(rules[1].kind, "out");
        assert!(insert_rule(&mut rules, None, rule("in", "ACCEPT")).is_ok());
        assert_eq!(rules[0].action, "ACCEPT");
        assert_eq!(delete_rule(&mut rules, 9), Err(FwConfigError::NoRule(9)));
        assert_eq!(
            delete_rule(&mut rules, 0).map(|r| r.action),
            Ok("ACCEPT".into())
        );
    }
}
