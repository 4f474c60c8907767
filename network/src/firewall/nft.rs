//! Encodes an [`NftPlan`] into one nftables netlink batch (via nftnl) and sends it.
//!
//! The batch is, for each of `bridge gpve` and `inet gpve`, `add table; delete table;
//! add table`, then sets, chains and rules: the first `add` makes the `delete` valid when
//! the table does not exist yet, and because the kernel applies a batch as one
//! transaction, a refused message anywhere leaves the previous ruleset fully in place.
//! No other table is ever named.

use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::BorrowedFd;
use std::time::Duration;

use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Conntrack, IcmpCode, InterfaceName, Lookup, Meta, Payload, RejectionType,
    TcpHeaderField, TransportHeaderField, UdpHeaderField, Verdict,
};
use nftnl::nftnl_sys::{self as sys, libc as nlibc};
use nftnl::set::{Set, SetKey};
use nftnl::{Batch, Chain, FinalizedBatch, Hook, MsgType, Policy, ProtoFamily, Rule, Table};

use super::model::Proto;
use super::plan::{
    BaseHook, ESTABLISHED_MARK, IpFamily, NftMatch, NftPlan, NftSet, NftVerdict, Side, TABLE_NAME,
    TableFamily,
};
use crate::netns::{Netns, NetnsError, run_in_anonymous_netns};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;

/// Receive buffer reserved per acknowledged message (an ack skb's true size is well
/// below this), with bounds.
const ACK_BUFFER_BYTES_PER_MESSAGE: usize = 1024;
const ACK_BUFFER_BYTES_MIN: usize = 256 * 1024;
const ACK_BUFFER_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Netlink refuses a message larger than the send buffer minus a small overhead.
const SEND_BUFFER_MARGIN_BYTES: usize = 64 * 1024;

/// How long to wait for the kernel's answers to a batch.
pub const NFT_ACK_TIMEOUT_MS: u64 = 5_000;

/// Errors while applying nftables changes.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{0:?} contains a NUL byte")]
    Nul(String),
    #[error("comment of a rule in chain {0} is too long for nftables")]
    CommentTooLong(String),
    #[error("set {0} is used by a rule but not part of the plan")]
    UnknownSet(String),
    #[error("cannot talk to nftables over netlink")]
    Socket(#[source] std::io::Error),
    #[error("the kernel refused the ruleset at {what}; the previous ruleset is still in place")]
    Refused {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel did not acknowledge the ruleset within {NFT_ACK_TIMEOUT_MS} ms")]
    Timeout,
}

fn cstring(s: &str) -> Result<CString, NftError> {
    CString::new(s).map_err(|_| NftError::Nul(s.to_owned()))
}

/// A finalized batch plus a description of each message, by sequence number.
struct Encoded {
    batch: FinalizedBatch,
    what: Vec<String>,
}

/// Replaces the `gpve` tables with `plan` in one transaction.
pub fn apply_plan(netns: &Netns, plan: &NftPlan) -> Result<(), NftError> {
    let encoded = encode(plan)?;
    netns.run(|| send(&encoded))?
}

/// Deletes the `gpve` tables if they exist (add-then-delete in one transaction, so a
/// missing table is not an error).
pub fn remove_tables(netns: &Netns) -> Result<(), NftError> {
    let name = cstring(TABLE_NAME)?;
    let tables = [
        Table::new(&name, ProtoFamily::Bridge),
        Table::new(&name, ProtoFamily::Inet),
    ];
    let mut batch = Batch::new();
    let mut what = Vec::new();
    for table in &tables {
        batch.add(table, MsgType::Add);
        batch.add(table, MsgType::Del);
        what.extend(["table add".to_owned(), "table delete".to_owned()]);
    }
    let encoded = Encoded {
        batch: batch.finalize(),
        what,
    };
    netns.run(|| send(&encoded))?
}

/// Whether `reject` is accepted in a bridge chain (CONFIG_NFT_BRIDGE_REJECT), tried in a
/// throw-away namespace.
pub fn probe_bridge_reject() -> Result<bool, NftError> {
    let name = cstring("gpve-probe")?;
    let table = Table::new(&name, ProtoFamily::Bridge);
    let chain_name = cstring("forward")?;
    let mut chain = Chain::new(&chain_name, &table);
    chain.set_hook(Hook::Forward, 0);
    let mut rule = Rule::new(&chain);
    rule.add_expr(&Verdict::Reject(RejectionType::Icmp(IcmpCode::PortUnreach)));
    let mut batch = Batch::new();
    batch.add(&table, MsgType::Add);
    batch.add(&chain, MsgType::Add);
    batch.add(&rule, MsgType::Add);
    let encoded = Encoded {
        batch: batch.finalize(),
        what: vec!["table".into(), "chain".into(), "reject rule".into()],
    };
    match run_in_anonymous_netns(|| send(&encoded))? {
        Ok(()) => Ok(true),
        Err(NftError::Refused { source, .. })
            if source.raw_os_error() == Some(nlibc::EOPNOTSUPP) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

fn encode(plan: &NftPlan) -> Result<Encoded, NftError> {
    let table_name = cstring(TABLE_NAME)?;
    let bridge = Table::new(&table_name, ProtoFamily::Bridge);
    let inet = Table::new(&table_name, ProtoFamily::Inet);
    let mut batch = Batch::new();
    let mut what = Vec::new();
    for (table, family) in [(&bridge, "bridge"), (&inet, "inet")] {
        batch.add(table, MsgType::Add);
        what.push(format!("table {family} {TABLE_NAME} (ensure)"));
        batch.add(table, MsgType::Del);
        what.push(format!("table {family} {TABLE_NAME} (delete previous)"));
        batch.add(table, MsgType::Add);
        what.push(format!("table {family} {TABLE_NAME} (create)"));
    }
    let table = &bridge;

    let mut lookups: HashMap<&str, Lookup> = HashMap::new();
    for (id, set) in plan.sets.iter().enumerate() {
        let id = u32::try_from(id).unwrap_or(u32::MAX);
        let lookup = match set.family {
            IpFamily::V4 => add_set::<Ipv4Addr>(&mut batch, &mut what, table, set, id, |v| {
                Ipv4Addr::from(u32::try_from(v).unwrap_or(u32::MAX))
            })?,
            IpFamily::V6 => {
                add_set::<Ipv6Addr>(&mut batch, &mut what, table, set, id, Ipv6Addr::from)?
            }
        };
        lookups.insert(set.name.as_str(), lookup);
    }

    let chain_names = plan
        .chains
        .iter()
        .map(|c| cstring(&c.name))
        .collect::<Result<Vec<_>, _>>()?;
    let mut chains = Vec::with_capacity(plan.chains.len());
    for (spec, name) in plan.chains.iter().zip(&chain_names) {
        let mut chain = Chain::new(
            name,
            match spec.table {
                TableFamily::Bridge => &bridge,
                TableFamily::Inet => &inet,
            },
        );
        if let Some(base) = spec.base {
            // The bridge hooks have the same numbers as the inet ones (NF_BR_*).
            let hook = match base {
                BaseHook::Prerouting => Hook::PreRouting,
                BaseHook::Input => Hook::In,
                BaseHook::Forward => Hook::Forward,
                BaseHook::Output => Hook::Out,
            };
            chain.set_hook(hook, 0);
            chain.set_policy(Policy::Accept);
        }
        batch.add(&chain, MsgType::Add);
        what.push(format!("chain {} ({:?})", spec.name, spec.table));
        chains.push(chain);
    }
    for (spec, chain) in plan.chains.iter().zip(&chains) {
        for (i, rule_spec) in spec.rules.iter().enumerate() {
            let mut rule = Rule::new(chain);
            for m in &rule_spec.matches {
                add_match(&mut rule, m, &lookups)?;
            }
            let verdict = match &rule_spec.verdict {
                NftVerdict::Accept => Some(Verdict::Accept),
                NftVerdict::Drop => Some(Verdict::Drop),
                NftVerdict::Reject => {
                    Some(Verdict::Reject(RejectionType::Icmp(IcmpCode::PortUnreach)))
                }
                NftVerdict::Jump(target) => Some(Verdict::Jump {
                    chain: cstring(target)?,
                }),
                NftVerdict::Return => Some(Verdict::Return),
                NftVerdict::SetEstablishedMark => {
                    // mark = (mark & !bit) ^ bit, i.e. mark | bit.
                    rule.add_expr(&Meta::Mark { set: false });
                    rule.add_expr(&Bitwise::new(!ESTABLISHED_MARK, ESTABLISHED_MARK));
                    rule.add_expr(&Meta::Mark { set: true });
                    None
                }
            };
            if let Some(verdict) = verdict {
                rule.add_expr(&verdict);
            }
            if let Some(comment) = &rule_spec.comment {
                rule.set_comment(cstring(comment)?)
                    .map_err(|_| NftError::CommentTooLong(spec.name.clone()))?;
            }
            batch.add(&rule, MsgType::Add);
            what.push(format!(
                "rule {} of chain {} ({:?})",
                i + 1,
                spec.name,
                spec.table
            ));
        }
    }
    Ok(Encoded {
        batch: batch.finalize(),
        what,
    })
}

fn add_set<K: SetKey>(
    batch: &mut Batch,
    what: &mut Vec<String>,
    table: &Table,
    spec: &NftSet,
    id: u32,
    key: impl Fn(u128) -> K,
) -> Result<Lookup, NftError> {
    let name = cstring(&spec.name)?;
    let set = Set::<K>::new_named(&name, id, table, table.get_family());
    let max = if K::LEN == 4 {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    };
    // SAFETY: `set` owns a valid nftnl_set; nftnl copies the flag value.
    unsafe {
        sys::nftnl_set_set_u32(
            set.as_ptr().as_ptr(),
            sys::NFTNL_SET_FLAGS as u16,
            nlibc::NFT_SET_INTERVAL as u32,
        )
    };
    // An interval set stores boundaries: each range is a start element and, unless it
    // runs to the last address, an "interval end" element one past its end.
    for &(lo, hi) in &spec.ranges {
        add_elem(&set, &key(lo).data(), false);
        if hi < max {
            add_elem(&set, &key(hi + 1).data(), true);
        }
    }
    batch.add(&set, MsgType::Add);
    what.push(format!("set {}", spec.name));
    if !spec.ranges.is_empty() {
        for msg in set.elems_iter() {
            batch.add(&msg, MsgType::Add);
            what.push(format!("elements of set {}", spec.name));
        }
    }
    Ok(Lookup::new(&set))
}

fn add_elem<K>(set: &Set<'_, K>, key: &[u8], interval_end: bool) {
    // SAFETY: the element is freshly allocated (nftnl aborts on allocation failure in the
    // same way as the safe wrappers), the key bytes are copied by nftnl_set_elem_set, and
    // nftnl_set_elem_add hands ownership of the element to the valid set.
    unsafe {
        let elem = sys::nftnl_set_elem_alloc();
        if elem.is_null() {
            std::process::abort();
        }
        sys::nftnl_set_elem_set(
            elem,
            sys::NFTNL_SET_ELEM_KEY as u16,
            key.as_ptr() as *const c_void,
            key.len() as u32,
        );
        if interval_end {
            sys::nftnl_set_elem_set_u32(
                elem,
                sys::NFTNL_SET_ELEM_FLAGS as u16,
                nlibc::NFT_SET_ELEM_INTERVAL_END as u32,
            );
        }
        sys::nftnl_set_elem_add(set.as_ptr().as_ptr(), elem);
    }
}

fn add_match(
    rule: &mut Rule<'_>,
    m: &NftMatch,
    lookups: &HashMap<&str, Lookup>,
) -> Result<(), NftError> {
    match m {
        NftMatch::Family(f) => {
            // The ethertype (skb->protocol), which both table families see; nfproto
            // would be "bridge" in a bridge chain.
            rule.add_expr(&Meta::Protocol);
            let ethertype: u16 = match f {
                IpFamily::V4 => ETH_P_IP,
                IpFamily::V6 => ETH_P_IPV6,
            };
            rule.add_expr(&Cmp::new(CmpOp::Eq, &ethertype.to_be_bytes()[..]));
        }
        NftMatch::Arp => {
            rule.add_expr(&Meta::Protocol);
            rule.add_expr(&Cmp::new(CmpOp::Eq, &ETH_P_ARP.to_be_bytes()[..]));
        }
        NftMatch::EstablishedMark => {
            rule.add_expr(&Meta::Mark { set: false });
            rule.add_expr(&Bitwise::new(ESTABLISHED_MARK, 0u32));
            rule.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
        }
        NftMatch::L4Proto(p) => {
            rule.add_expr(&Meta::L4Proto);
            rule.add_expr(&Cmp::new(CmpOp::Eq, *p));
        }
        NftMatch::IifName(name) | NftMatch::OifName(name) => {
            rule.add_expr(if matches!(m, NftMatch::IifName(_)) {
                &Meta::IifName
            } else {
                &Meta::OifName
            });
            rule.add_expr(&Cmp::new(
                CmpOp::Eq,
                InterfaceName::Exact(cstring(name.as_str())?),
            ));
        }
        NftMatch::Addr { side, cidr } => {
            rule.add_expr(&addr_payload(*side, super::plan::cidr_family(cidr)));
            let full = if cidr.is_ipv4() { 32 } else { 128 };
            if cidr.prefix_len() < full {
                let mask = cidr.mask_bytes();
                let zero = vec![0u8; mask.len()];
                rule.add_expr(&Bitwise::new(mask.as_slice(), zero.as_slice()));
            }
            rule.add_expr(&Cmp::new(CmpOp::Eq, cidr.addr()));
        }
        NftMatch::AddrInSet { side, set, family } => {
            let lookup = lookups
                .get(set.as_str())
                .ok_or_else(|| NftError::UnknownSet(set.clone()))?;
            rule.add_expr(&addr_payload(*side, *family));
            rule.add_expr(lookup);
        }
        NftMatch::Port {
            side,
            proto,
            lo,
            hi,
        } => {
            let field = match (proto, side) {
                (Proto::Udp, Side::Source) => TransportHeaderField::Udp(UdpHeaderField::Sport),
                (Proto::Udp, Side::Dest) => TransportHeaderField::Udp(UdpHeaderField::Dport),
                (_, Side::Source) => TransportHeaderField::Tcp(TcpHeaderField::Sport),
                (_, Side::Dest) => TransportHeaderField::Tcp(TcpHeaderField::Dport),
            };
            rule.add_expr(&Payload::Transport(field));
            // Ports are big-endian in the register; comparisons are bytewise, so
            // big-endian bytes also order correctly for ranges.
            if lo == hi {
                rule.add_expr(&Cmp::new(CmpOp::Eq, &lo.to_be_bytes()[..]));
            } else {
                rule.add_expr(&Cmp::new(CmpOp::Gte, &lo.to_be_bytes()[..]));
                rule.add_expr(&Cmp::new(CmpOp::Lte, &hi.to_be_bytes()[..]));
            }
        }
        NftMatch::CtEstablishedOrRelated => {
            // ct state is a host-endian bitmask: established = 1 << 1, related = 1 << 2.
            const CT_ESTABLISHED_OR_RELATED: u32 = (1 << 1) | (1 << 2);
            rule.add_expr(&Conntrack::State);
            rule.add_expr(&Bitwise::new(CT_ESTABLISHED_OR_RELATED, 0u32));
            rule.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
        }
    }
    Ok(())
}

fn addr_payload(side: Side, family: IpFamily) -> Payload {
    use nftnl::expr::{Ipv4HeaderField, Ipv6HeaderField, NetworkHeaderField};
    Payload::Network(match (family, side) {
        (IpFamily::V4, Side::Source) => NetworkHeaderField::Ipv4(Ipv4HeaderField::Saddr),
        (IpFamily::V4, Side::Dest) => NetworkHeaderField::Ipv4(Ipv4HeaderField::Daddr),
        (IpFamily::V6, Side::Source) => NetworkHeaderField::Ipv6(Ipv6HeaderField::Saddr),
        (IpFamily::V6, Side::Dest) => NetworkHeaderField::Ipv6(Ipv6HeaderField::Daddr),
    })
}

fn send(encoded: &Encoded) -> Result<(), NftError> {
    let socket = mnl::Socket::new(mnl::Bus::Netfilter).map_err(NftError::Socket)?;
    // SAFETY: the raw socket pointer is valid while `socket` lives; mnl_socket_get_fd
    // only reads its descriptor.
    let raw_fd = unsafe { mnl::mnl_sys::mnl_socket_get_fd(socket.as_raw_socket()) };
    // SAFETY: the descriptor stays open for the whole function (owned by `socket`).
    let fd = unsafe { BorrowedFd::borrow_raw(raw_fd) };
    nix::sys::socket::setsockopt(
        &fd,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::from(libc_timeval(Duration::from_millis(NFT_ACK_TIMEOUT_MS))),
    )
    .map_err(|e| NftError::Socket(e.into()))?;
    // Every message is acknowledged; a large batch overflows the default receive buffer
    // (ENOBUFS) unless it is sized for the answers, as nft does.
    let rcvbuf_bytes = (encoded.what.len() + 2)
        .saturating_mul(ACK_BUFFER_BYTES_PER_MESSAGE)
        .clamp(ACK_BUFFER_BYTES_MIN, ACK_BUFFER_BYTES_MAX);
    use nix::sys::socket::{setsockopt, sockopt};
    if setsockopt(&fd, sockopt::RcvBufForce, &rcvbuf_bytes).is_err() {
        setsockopt(&fd, sockopt::RcvBuf, &rcvbuf_bytes).map_err(|e| NftError::Socket(e.into()))?;
    }
    // The whole batch must reach the kernel in ONE send: mnl's send_all sends each nftnl
    // page separately, and the kernel treats every send as its own batch, so a ruleset
    // larger than a page (128 KiB) would be applied in pieces, non-atomically, or
    // refused half-way. Pages hold whole messages, so concatenating them is exact.
    let bytes: Vec<u8> = encoded.batch.iter().flatten().copied().collect();
    let sndbuf_bytes = bytes.len().saturating_add(SEND_BUFFER_MARGIN_BYTES);
    if setsockopt(&fd, sockopt::SndBufForce, &sndbuf_bytes).is_err() {
        setsockopt(&fd, sockopt::SndBuf, &sndbuf_bytes).map_err(|e| NftError::Socket(e.into()))?;
    }
    let portid = socket.portid();
    let sent = socket.send(&bytes).map_err(NftError::Socket)?;
    if sent < bytes.len() {
        return Err(NftError::Socket(std::io::Error::other(
            "the kernel took only part of the batch",
        )));
    }
    let mut buffer = vec![0; nftnl::nft_nlmsg_maxsize() as usize];
    let seqs = encoded.batch.sequence_numbers();
    // On kernels that acknowledge batch begin/end messages, nftnl numbers them too: the
    // first of our messages then comes one after the start.
    let counted = seqs.len();
    let first_seq = seqs.start + u32::from(counted == encoded.what.len() + 2);
    let mut expected = seqs;
    while !expected.is_empty() {
        let messages = match socket.recv(&mut buffer[..]) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Err(NftError::Timeout),
            Err(e) => return Err(NftError::Socket(e)),
        };
        for message in messages {
            let message = message.map_err(NftError::Socket)?;
            let seq = message_seq(message).unwrap_or(first_seq);
            let Some(expected_seq) = expected.next() else {
                break;
            };
            if let Err(source) = mnl::cb_run(message, expected_seq, portid) {
                let what = seq
                    .checked_sub(first_seq)
                    .and_then(|i| encoded.what.get(i as usize))
                    .cloned()
                    .unwrap_or_else(|| format!("message {seq}"));
                return Err(NftError::Refused { what, source });
            }
        }
    }
    Ok(())
}

/// The sequence number a kernel answer refers to: for an error/ack message, the one of
/// the request it quotes.
fn message_seq(message: &[u8]) -> Option<u32> {
    const NLMSG_HDRLEN: usize = 16;
    let ty = u16::from_ne_bytes(message.get(4..6)?.try_into().ok()?);
    let own = u32::from_ne_bytes(message.get(8..12)?.try_into().ok()?);
    if ty == nlibc::NLMSG_ERROR as u16 {
        let quoted = NLMSG_HDRLEN + 4 + 8;
        return Some(u32::from_ne_bytes(
            message.get(quoted..quoted + 4)?.try_into().ok()?,
        ));
    }
    Some(own)
}

fn libc_timeval(d: Duration) -> nix::libc::timeval {
    nix::libc::timeval {
        tv_sec: d.as_secs() as nix::libc::time_t,
        tv_usec: d.subsec_micros() as nix::libc::suseconds_t,
    }
}
