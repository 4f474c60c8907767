//! The firewall ruleset as the API sees it (Proxmox-like), with validation.
//!
//! Parsing follows Proxmox's notation where it has one: ports `22`, ranges `1000:2000`,
//! lists `80,443`; an IP set is referenced as `+name`; a NIC as `net0`.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::tap::{NIC_INDEX_MAX, TapError, tap_name};

/// Most entries of one port list (each entry becomes its own nftables rule).
pub const PORT_LIST_ENTRIES_MAX: usize = 16;
/// Longest rule comment; nftables stores comments in at most 128 bytes of user data.
pub const COMMENT_BYTES_MAX: usize = 127;
/// Longest IP set name (Proxmox allows 64 characters).
pub const IPSET_NAME_BYTES_MAX: usize = 64;
/// Most entries in one IP set.
pub const IPSET_ENTRIES_MAX: usize = 65_536;

/// Errors in a ruleset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("{0:?} is not an address or CIDR (like 10.0.0.0/8 or fd00::/64)")]
    InvalidCidr(String),
    #[error("prefix length {prefix_len} is too long for {addr}")]
    InvalidPrefix { addr: IpAddr, prefix_len: u8 },
    #[error("{0:?} is not a port (1-65535), a range (lo:hi) or a comma-separated list of these")]
    InvalidPort(String),
    #[error("port range {lo}:{hi} is reversed")]
    ReversedPortRange { lo: u16, hi: u16 },
    #[error("port list has {0} entries, at most {PORT_LIST_ENTRIES_MAX} are allowed")]
    TooManyPorts(usize),
    #[error("protocol {0:?} is not one of tcp, udp, icmp, icmpv6")]
    InvalidProto(String),
    #[error("action {0:?} is not one of ACCEPT, DROP, REJECT")]
    InvalidAction(String),
    #[error("direction {0:?} is not one of in, out")]
    InvalidDirection(String),
    #[error("ports need protocol tcp or udp, the rule has {0}")]
    PortsWithoutTcpUdp(String),
    #[error("interface {0:?} is not a NIC name net0..net31")]
    InvalidIface(String),
    #[error("comment is longer than {COMMENT_BYTES_MAX} bytes or contains control characters")]
    InvalidComment,
    #[error(
        "IP set name {0:?} must start with a letter and contain only A-Z, a-z, 0-9, '-' and '_' (at most 64)"
    )]
    InvalidIpSetName(String),
    #[error("IP set {0} is defined twice")]
    DuplicateIpSet(String),
    #[error("IP set {name} has {len} entries, at most {IPSET_ENTRIES_MAX} are allowed")]
    IpSetTooLarge { name: String, len: usize },
    #[error("rule refers to IP set {0}, which is not defined")]
    UnknownIpSet(String),
    #[error("source {source_addr} and destination {dest} are different IP families")]
    MixedFamilies { source_addr: String, dest: String },
    #[error("protocol {proto} cannot match {addr}, an address of the other IP family")]
    ProtoFamilyMismatch { proto: Proto, addr: String },
    #[error(
        "REJECT needs nftables bridge reject support (CONFIG_NFT_BRIDGE_REJECT), which this kernel lacks; use DROP"
    )]
    RejectUnsupported,
    #[error("VM {0} is configured twice")]
    DuplicateVm(u32),
    #[error(transparent)]
    Tap(#[from] TapErrorText),
}

/// A [`TapError`] kept as text so [`RuleError`] stays `Clone + Eq`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TapErrorText(pub String);

impl From<TapError> for RuleError {
    fn from(e: TapError) -> Self {
        Self::Tap(TapErrorText(e.to_string()))
    }
}

/// Traffic direction, seen from the guest (Proxmox's meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// To the guest.
    In,
    /// From the guest.
    Out,
}

impl FromStr for Direction {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "in" | "IN" => Ok(Self::In),
            "out" | "OUT" => Ok(Self::Out),
            _ => Err(RuleError::InvalidDirection(s.to_owned())),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Accept,
    Drop,
    Reject,
}

impl FromStr for Action {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "ACCEPT" => Ok(Self::Accept),
            "DROP" => Ok(Self::Drop),
            "REJECT" => Ok(Self::Reject),
            _ => Err(RuleError::InvalidAction(s.to_owned())),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => libc::IPPROTO_TCP as u8,
            Self::Udp => libc::IPPROTO_UDP as u8,
            Self::Icmp => libc::IPPROTO_ICMP as u8,
            Self::Icmpv6 => libc::IPPROTO_ICMPV6 as u8,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
            Self::Icmpv6 => "icmpv6",
        })
    }
}

impl FromStr for Proto {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            "icmp" => Ok(Self::Icmp),
            "icmpv6" | "ipv6-icmp" => Ok(Self::Icmpv6),
            _ => Err(RuleError::InvalidProto(s.to_owned())),
        }
    }
}

/// An address or network; host bits are cleared on parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, RuleError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(RuleError::InvalidPrefix { addr, prefix_len });
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_v4(prefix_len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_v6(prefix_len))),
        };
        Ok(Self { addr, prefix_len })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// The network mask in network byte order (4 or 16 bytes).
    pub fn mask_bytes(&self) -> Vec<u8> {
        match self.addr {
            IpAddr::V4(_) => mask_v4(self.prefix_len).to_be_bytes().to_vec(),
            IpAddr::V6(_) => mask_v6(self.prefix_len).to_be_bytes().to_vec(),
        }
    }

    /// First and last address as integers (IPv4 widened to u128).
    pub fn range(&self) -> (u128, u128) {
        match self.addr {
            IpAddr::V4(a) => {
                let lo = u32::from(a);
                (u128::from(lo), u128::from(lo | !mask_v4(self.prefix_len)))
            }
            IpAddr::V6(a) => {
                let lo = u128::from(a);
                (lo, lo | !mask_v6(self.prefix_len))
            }
        }
    }
}

fn mask_v4(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

fn mask_v6(prefix_len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix_len))
        .unwrap_or(0)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RuleError::InvalidCidr(s.to_owned());
        let (addr, prefix_len) = match s.split_once('/') {
            Some((a, p)) => {
                let addr: IpAddr = a.parse().map_err(|_| bad())?;
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                (addr, p.parse::<u8>().map_err(|_| bad())?)
            }
            None => {
                let addr: IpAddr = s.parse().map_err(|_| bad())?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        Self::new(addr, prefix_len)
    }
}

/// A source or destination match: a network, or a named IP set (`+name`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AddrMatch {
    Cidr(Cidr),
    IpSet(String),
}

impl FromStr for AddrMatch {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix('+') {
            Some(name) => Ok(Self::IpSet(check_ipset_name(name)?.to_owned())),
            None => Ok(Self::Cidr(s.parse()?)),
        }
    }
}

impl fmt::Display for AddrMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cidr(c) => c.fmt(f),
            Self::IpSet(n) => write!(f, "+{n}"),
        }
    }
}

/// Port list: single ports and inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortSpec(Vec<(u16, u16)>);

impl PortSpec {
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }
}

impl FromStr for PortSpec {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RuleError::InvalidPort(s.to_owned());
        let port = |p: &str| -> Result<u16, RuleError> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(bad()),
                Ok(v) => Ok(v),
            }
        };
        let mut ranges = Vec::new();
        for entry in s.split(',') {
            let (lo, hi) = match entry.split_once(':') {
                Some((lo, hi)) => (port(lo)?, port(hi)?),
                None => {
                    let p = port(entry)?;
                    (p, p)
                }
            };
            if lo > hi {
                return Err(RuleError::ReversedPortRange { lo, hi });
            }
            ranges.push((lo, hi));
        }
        if ranges.len() > PORT_LIST_ENTRIES_MAX {
            return Err(RuleError::TooManyPorts(ranges.len()));
        }
        Ok(Self(ranges))
    }
}

/// One firewall rule of a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallRule {
    pub direction: Direction,
    pub action: Action,
    pub proto: Option<Proto>,
    pub source: Option<AddrMatch>,
    pub dest: Option<AddrMatch>,
    pub dport: Option<PortSpec>,
    pub sport: Option<PortSpec>,
    /// Restricts the rule to one NIC of the guest (`net0`); `None` for all its NICs.
    pub iface: Option<u8>,
    pub comment: Option<String>,
    pub enable: bool,
}

impl FirewallRule {
    /// An enabled rule matching everything in `direction`.
    pub fn new(direction: Direction, action: Action) -> Self {
        Self {
            direction,
            action,
            proto: None,
            source: None,
            dest: None,
            dport: None,
            sport: None,
            iface: None,
            comment: None,
            enable: true,
        }
    }
}

/// Parses a Proxmox NIC name (`net0`..`net31`) into its index.
pub fn parse_iface(s: &str) -> Result<u8, RuleError> {
    let bad = || RuleError::InvalidIface(s.to_owned());
    let n = s.strip_prefix("net").ok_or_else(bad)?;
    if n.is_empty() || n.len() > 2 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u8 = n.parse().map_err(|_| bad())?;
    if n > NIC_INDEX_MAX {
        return Err(bad());
    }
    Ok(n)
}

/// A named set of networks (Proxmox "IPSet").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSet {
    pub name: String,
    pub entries: Vec<Cidr>,
}

/// The firewall of one guest: one pair of chains per NIC tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFirewall {
    pub vmid: u32,
    /// NIC indexes (`netN`) of the guest, each with its tap `tap{vmid}i{N}`.
    pub nics: Vec<u8>,
    pub enable: bool,
    pub policy_in: Action,
    pub policy_out: Action,
    pub rules: Vec<FirewallRule>,
}

/// Everything the project installs in its own nftables table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub ipsets: Vec<IpSet>,
    pub guests: Vec<GuestFirewall>,
}

pub(crate) fn check_ipset_name(name: &str) -> Result<&str, RuleError> {
    let mut bytes = name.bytes();
    let valid = name.len() <= IPSET_NAME_BYTES_MAX
        && bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(name)
    } else {
        Err(RuleError::InvalidIpSetName(name.to_owned()))
    }
}

impl Ruleset {
    /// Checks everything the kernel would otherwise refuse later, or worse, accept with
    /// a different meaning.
    pub fn validate(&self) -> Result<(), RuleError> {
        let mut sets = HashSet::new();
        for set in &self.ipsets {
            check_ipset_name(&set.name)?;
            if !sets.insert(set.name.as_str()) {
                return Err(RuleError::DuplicateIpSet(set.name.clone()));
            }
            if set.entries.len() > IPSET_ENTRIES_MAX {
                return Err(RuleError::IpSetTooLarge {
                    name: set.name.clone(),
                    len: set.entries.len(),
                });
            }
        }
        let mut vmids = HashSet::new();
        for guest in &self.guests {
            if !vmids.insert(guest.vmid) {
                return Err(RuleError::DuplicateVm(guest.vmid));
            }
            for nic in &guest.nics {
                tap_name(guest.vmid, *nic)?;
            }
            for rule in &guest.rules {
                rule.validate(&sets)?;
            }
        }
        Ok(())
    }
}

impl FirewallRule {
    fn validate(&self, sets: &HashSet<&str>) -> Result<(), RuleError> {
        if (self.dport.is_some() || self.sport.is_some())
            && !matches!(self.proto, Some(Proto::Tcp | Proto::Udp))
        {
            let proto = self.proto.map_or("none".to_owned(), |p| p.to_string());
            return Err(RuleError::PortsWithoutTcpUdp(proto));
        }
        if let Some(iface) = self.iface
            && iface > NIC_INDEX_MAX
        {
            return Err(RuleError::InvalidIface(format!("net{iface}")));
        }
        if let Some(comment) = &self.comment
            && (comment.len() > COMMENT_BYTES_MAX || comment.chars().any(char::is_control))
        {
            return Err(RuleError::InvalidComment);
        }
        for addr in [&self.source, &self.dest].into_iter().flatten() {
            if let AddrMatch::IpSet(name) = addr
                && !sets.contains(name.as_str())
            {
                return Err(RuleError::UnknownIpSet(name.clone()));
            }
        }
        if let (Some(AddrMatch::Cidr(s)), Some(AddrMatch::Cidr(d))) = (&self.source, &self.dest)
            && s.is_ipv4() != d.is_ipv4()
        {
            return Err(RuleError::MixedFamilies {
                source_addr: s.to_string(),
                dest: d.to_string(),
            });
        }
        if let Some(proto @ (Proto::Icmp | Proto::Icmpv6)) = self.proto {
            let want_v4 = proto == Proto::Icmp;
            for addr in [&self.source, &self.dest].into_iter().flatten() {
                if let AddrMatch::Cidr(c) = addr
                    && c.is_ipv4() != want_v4
                {
                    return Err(RuleError::ProtoFamilyMismatch {
                        proto,
                        addr: c.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_normalise() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert_eq!(c.range(), (0x0a00_0000, 0x0aff_ffff));
        assert_eq!("192.0.2.1".parse::<Cidr>().map(|c| c.prefix_len()), Ok(32));
        assert_eq!(
            "fd00::1/64".parse::<Cidr>().map(|c| c.to_string()),
            Ok("fd00::/64".into())
        );
        assert_eq!(
            "0.0.0.0/0".parse::<Cidr>().map(|c| c.mask_bytes()),
            Ok(vec![0; 4])
        );
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/x",
            "10.0.0/8",
            "10.0.0.0/+8",
            "host",
        ] {
            assert!(
                matches!(bad.parse::<Cidr>(), Err(RuleError::InvalidCidr(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(RuleError::InvalidPrefix { .. })
        ));
        assert!(matches!(
            "::/129".parse::<Cidr>(),
            Err(RuleError::InvalidPrefix { .. })
        ));
    }

    #[test]
    fn ports_parse() {
        assert_eq!("22".parse::<PortSpec>().map(|p| p.0), Ok(vec![(22, 22)]));
        assert_eq!(
            "80,443,1000:2000".parse::<PortSpec>().map(|p| p.0),
            Ok(vec![(80, 80), (443, 443), (1000, 2000)])
        );
        for bad in ["", "0", "65536", "-1", "a", "1:", ":2", "1,,2", " 22"] {
            assert!(
                matches!(bad.parse::<PortSpec>(), Err(RuleError::InvalidPort(_))),
                "{bad}"
            );
        }
        assert_eq!(
            "2000:1000".parse::<PortSpec>(),
            Err(RuleError::ReversedPortRange { lo: 2000, hi: 1000 })
        );
        let many = (1..=17)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(many.parse::<PortSpec>(), Err(RuleError::TooManyPorts(17)));
    }

    #[test]
    fn words_parse() {
        assert_eq!("ACCEPT".parse::<Action>(), Ok(Action::Accept));
        assert_eq!("reject".parse::<Action>(), Ok(Action::Reject));
        assert!("allow".parse::<Action>().is_err());
        assert_eq!("in".parse::<Direction>(), Ok(Direction::In));
        assert!("both".parse::<Direction>().is_err());
        assert_eq!("TCP".parse::<Proto>(), Ok(Proto::Tcp));
        assert!(matches!(
            "sctp".parse::<Proto>(),
            Err(RuleError::InvalidProto(_))
        ));
        assert_eq!(parse_iface("net31"), Ok(31));
        for bad in ["net32", "eth0", "net", "net-1", "net007"] {
            assert!(parse_iface(bad).is_err(), "{bad}");
        }
        assert_eq!(
            "+trusted".parse::<AddrMatch>(),
            Ok(AddrMatch::IpSet("trusted".into()))
        );
        assert!(matches!(
            "+9bad".parse::<AddrMatch>(),
            Err(RuleError::InvalidIpSetName(_))
        ));
    }

    fn guest(rules: Vec<FirewallRule>) -> Ruleset {
        Ruleset {
            ipsets: vec![IpSet {
                name: "trusted".into(),
                entries: vec![],
            }],
            guests: vec![GuestFirewall {
                vmid: 100,
                nics: vec![0],
                enable: true,
                policy_in: Action::Drop,
                policy_out: Action::Accept,
                rules,
            }],
        }
    }

    #[test]
    fn rulesets_are_validated() {
        let mut ok = FirewallRule::new(Direction::In, Action::Accept);
        ok.proto = Some(Proto::Tcp);
        ok.dport = "22".parse().ok();
        ok.source = "+trusted".parse().ok();
        assert_eq!(guest(vec![ok.clone()]).validate(), Ok(()));

        let mut no_proto = ok.clone();
        no_proto.proto = None;
        assert!(matches!(
            guest(vec![no_proto]).validate(),
            Err(RuleError::PortsWithoutTcpUdp(_))
        ));

        let mut unknown_set = ok.clone();
        unknown_set.source = "+nope".parse().ok();
        assert!(matches!(
            guest(vec![unknown_set]).validate(),
            Err(RuleError::UnknownIpSet(_))
        ));

        let mut mixed = FirewallRule::new(Direction::Out, Action::Drop);
        mixed.source = "10.0.0.0/8".parse().ok();
        mixed.dest = "fd00::/8".parse().ok();
        assert!(matches!(
            guest(vec![mixed]).validate(),
            Err(RuleError::MixedFamilies { .. })
        ));

        let mut icmp6 = FirewallRule::new(Direction::Out, Action::Drop);
        icmp6.proto = Some(Proto::Icmp);
        icmp6.dest = "fd00::/8".parse().ok();
        assert!(matches!(
            guest(vec![icmp6]).validate(),
            Err(RuleError::ProtoFamilyMismatch { .. })
        ));

        let mut comment = ok.clone();
        comment.comment = Some("x".repeat(COMMENT_BYTES_MAX + 1));
        assert_eq!(
            guest(vec![comment]).validate(),
            Err(RuleError::InvalidComment)
        );

        let mut bad_vm = guest(vec![]);
        bad_vm.guests[0].vmid = 5;
        assert!(matches!(bad_vm.validate(), Err(RuleError::Tap(_))));
    }
}
