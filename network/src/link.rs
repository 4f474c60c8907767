//! Links over rtnetlink: bridges, VXLAN, veth, MTU, up/down, addresses, bridge ports.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::{AddressFamily, route::RouteType};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan};

use crate::ifname::{IfName, IfNameError};
use crate::netns::{Netns, NetnsError};

/// The IANA VXLAN port (Proxmox SDN uses it too).
pub const VXLAN_DEFAULT_DSTPORT: u16 = 4789;
/// Largest VXLAN network identifier (24 bits).
pub const VXLAN_VNI_MAX: u32 = (1 << 24) - 1;

/// Errors of link operations.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Name(#[from] IfNameError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot open a netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("link {0} does not exist")]
    NotFound(String),
    #[error("{op} failed for {name}")]
    Netlink {
        op: &'static str,
        name: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("VXLAN network identifier {0} is outside 1-16777215")]
    InvalidVni(u32),
    #[error("MTU {0} is outside 68-65535")]
    InvalidMtu(u32),
    #[error("prefix length {prefix_len} is too long for {addr}")]
    InvalidPrefix { addr: IpAddr, prefix_len: u8 },
    #[error(
        "VXLAN {name}: the local address {local} and the peer {peer} are not the same IP family"
    )]
    MixedFamilies {
        name: String,
        local: IpAddr,
        peer: IpAddr,
    },
}

/// What a VXLAN device is built from.
#[derive(Debug, Clone)]
pub struct VxlanSpec {
    pub name: IfName,
    /// VXLAN network identifier, 1-16777215.
    pub vni: u32,
    /// Source address of the encapsulated packets (this node's underlay address).
    pub local: IpAddr,
    /// UDP destination port, normally [`VXLAN_DEFAULT_DSTPORT`].
    pub dstport: u16,
    /// Underlay device to bind to, if any.
    pub underlay: Option<IfName>,
    /// A single unicast remote set on the device itself (`remote` in `ip link`); for
    /// several peers leave it empty and add FDB entries with [`NetHandle::add_vxlan_peer`].
    pub remote: Option<IpAddr>,
    pub mtu: Option<u32>,
}

/// One link as listed by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSummary {
    pub index: u32,
    pub name: String,
    /// `bridge`, `vxlan`, `veth`, `tun`, ... (`None` for plain devices such as `lo`).
    pub kind: Option<String>,
    pub mtu: Option<u32>,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// Index of the bridge this link is a port of.
    pub master: Option<u32>,
    pub mac: Option<[u8; 6]>,
}

/// An rtnetlink connection bound to one network namespace.
///
/// The socket is opened inside the namespace, so every request (including link listing)
/// sees only that namespace; the connection task runs on the caller's tokio runtime.
#[derive(Debug, Clone)]
pub struct NetHandle {
    handle: Handle,
    netns: Netns,
}

fn nl(op: &'static str, name: &str) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let name = name.to_owned();
    move |source| LinkError::Netlink { op, name, source }
}

fn check_mtu(mtu: u32) -> Result<u32, LinkError> {
    if (68..=65535).contains(&mtu) {
        Ok(mtu)
    } else {
        Err(LinkError::InvalidMtu(mtu))
    }
}

impl NetHandle {
    /// Opens a handle in `netns`. Must be called within a tokio runtime.
    pub async fn open(netns: Netns) -> Result<Self, LinkError> {
        let runtime = tokio::runtime::Handle::current();
        // The socket is created on a thread inside the namespace but registered with the
        // caller's reactor, so it stays in the namespace while being driven from here.
        let (connection, handle, _) = netns
            .run(move || {
                let _guard = runtime.enter();
                rtnetlink::new_connection()
            })?
            .map_err(LinkError::Socket)?;
        tokio::spawn(connection);
        Ok(Self { handle, netns })
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Index of the link called `name`, `None` if it does not exist.
    pub async fn find_index(&self, name: &str) -> Result<Option<u32>, LinkError> {
        let name = IfName::new(name)?;
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.as_str().to_owned())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link.map(|l| l.header.index)),
            // The kernel answers ENODEV for an unknown name.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(source) => Err(LinkError::Netlink {
                op: "get link",
                name: name.to_string(),
                source,
            }),
        }
    }

    /// Index of the link called `name`, an error if it does not exist.
    pub async fn index(&self, name: &str) -> Result<u32, LinkError> {
        self.find_index(name)
            .await?
            .ok_or_else(|| LinkError::NotFound(name.to_owned()))
    }

    /// All links of the namespace.
    pub async fn list_links(&self) -> Result<Vec<LinkSummary>, LinkError> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("list links", "*"))?;
        Ok(links.iter().map(summarize).collect())
    }

    /// One link's summary.
    pub async fn link(&self, name: &str) -> Result<LinkSummary, LinkError> {
        let index = self.index(name).await?;
        let mut links = self.handle.link().get().match_index(index).execute();
        match links.try_next().await.map_err(nl("get link", name))? {
            Some(link) => Ok(summarize(&link)),
            None => Err(LinkError::NotFound(name.to_owned())),
        }
    }

    /// Creates a Linux bridge (`vmbr0` style), left down.
    pub async fn create_bridge(&self, name: &IfName, mtu: Option<u32>) -> Result<(), LinkError> {
        let mut builder = LinkBridge::new(name.as_str());
        if let Some(mtu) = mtu {
            builder = builder.mtu(check_mtu(mtu)?);
        }
        self.handle
            .link()
            .add(builder.build())
            .execute()
            .await
            .map_err(nl("create bridge", name.as_str()))
    }

    /// Creates a bridge with VLAN filtering on. Fails on kernels without
    /// CONFIG_BRIDGE_VLAN_FILTERING (see [`crate::vlan`]).
    pub async fn create_vlan_aware_bridge(&self, name: &IfName) -> Result<(), LinkError> {
        self.handle
            .link()
            .add(LinkBridge::new(name.as_str()).vlan_filtering(true).build())
            .execute()
            .await
            .map_err(nl("create VLAN-aware bridge", name.as_str()))
    }

    /// Creates a VXLAN device, left down.
    pub async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<(), LinkError> {
        if spec.vni == 0 || spec.vni > VXLAN_VNI_MAX {
            return Err(LinkError::InvalidVni(spec.vni));
        }
        let name = spec.name.as_str();
        let mut builder = LinkVxlan::new(name, spec.vni)
            .port(spec.dstport)
            .learning(true);
        builder = match spec.local {
            IpAddr::V4(a) => builder.local(a),
            IpAddr::V6(a) => builder.local6(a),
        };
        if let Some(peer) = spec.remote {
            builder = match (spec.local, peer) {
                (IpAddr::V4(_), IpAddr::V4(p)) => builder.remote(p),
                (IpAddr::V6(_), IpAddr::V6(p)) => builder.remote6(p),
                (local, peer) => {
                    return Err(LinkError::MixedFamilies {
                        name: name.to_owned(),
                        local,
                        peer,
                    });
                }
            };
        }
        if let Some(dev) = &spec.underlay {
            builder = builder.dev(self.index(dev.as_str()).await?);
        }
        if let Some(mtu) = spec.mtu {
            builder = builder.mtu(check_mtu(mtu)?);
        }
        self.handle
            .link()
            .add(builder.build())
            .execute()
            .await
            .map_err(nl("create vxlan", name))
    }

    /// Adds a head-end replication peer to a VXLAN device: the FDB entry
    /// `00:00:00:00:00:00 dst PEER` (like `bridge fdb append`), so broadcast and unknown
    /// unicast go to every peer.
    pub async fn add_vxlan_peer(&self, vxlan: &IfName, peer: IpAddr) -> Result<(), LinkError> {
        let index = self.index(vxlan.as_str()).await?;
        let mut req =
            NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(fdb_all_zero(index, peer)));
        // APPEND, not EXCL: several peers share the all-zero MAC.
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        self.send_ack(req)
            .await
            .map_err(nl("add vxlan peer", vxlan.as_str()))
    }

    /// Removes a peer added with [`NetHandle::add_vxlan_peer`].
    pub async fn remove_vxlan_peer(&self, vxlan: &IfName, peer: IpAddr) -> Result<(), LinkError> {
        let index = self.index(vxlan.as_str()).await?;
        self.handle
            .neighbours()
            .del(fdb_all_zero(index, peer))
            .execute()
            .await
            .map_err(nl("remove vxlan peer", vxlan.as_str()))
    }

    async fn send_ack(
        &self,
        req: NetlinkMessage<RouteNetlinkMessage>,
    ) -> Result<(), rtnetlink::Error> {
        let mut handle = self.handle.clone();
        let mut response = handle.request(req)?;
        while let Some(message) = futures::StreamExt::next(&mut response).await {
            if let NetlinkPayload::Error(err) = message.payload {
                return Err(rtnetlink::Error::NetlinkError(err));
            }
        }
        Ok(())
    }

    /// Creates a veth pair `name` <-> `peer` in this namespace.
    pub async fn create_veth(&self, name: &IfName, peer: &IfName) -> Result<(), LinkError> {
        self.handle
            .link()
            .add(LinkVeth::new(name.as_str(), peer.as_str()).build())
            .execute()
            .await
            .map_err(nl("create veth", name.as_str()))
    }

    /// Moves a link into another namespace (it disappears from this one).
    pub async fn move_to_netns(&self, name: &IfName, target: &Netns) -> Result<(), LinkError> {
        let index = self.index(name.as_str()).await?;
        let Some(file) = target.open()? else {
            // Moving into the namespace a Current handle already lives in is a no-op
            // only when this handle is Current too.
            if self.netns == Netns::Current {
                return Ok(());
            }
            let pid = std::process::id();
            return self
                .handle
                .link()
                .set(LinkUnspec::new_with_index(index).setns_by_pid(pid).build())
                .execute()
                .await
                .map_err(nl("move link to netns", name.as_str()));
        };
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .setns_by_fd(file.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("move link to netns", name.as_str()))
    }

    pub async fn set_up(&self, name: &IfName) -> Result<(), LinkError> {
        let index = self.index(name.as_str()).await?;
        self.set(
            LinkUnspec::new_with_index(index).up().build(),
            "set up",
            name,
        )
        .await
    }

    pub async fn set_down(&self, name: &IfName) -> Result<(), LinkError> {
        let index = self.index(name.as_str()).await?;
        self.set(
            LinkUnspec::new_with_index(index).down().build(),
            "set down",
            name,
        )
        .await
    }

    pub async fn set_mtu(&self, name: &IfName, mtu: u32) -> Result<(), LinkError> {
        let index = self.index(name.as_str()).await?;
        let mtu = check_mtu(mtu)?;
        self.set(
            LinkUnspec::new_with_index(index).mtu(mtu).build(),
            "set mtu",
            name,
        )
        .await
    }

    /// Makes `port` a port of `bridge` (`ip link set PORT master BRIDGE`).
    pub async fn attach_to_bridge(&self, port: &IfName, bridge: &IfName) -> Result<(), LinkError> {
        let bridge_index = self.index(bridge.as_str()).await?;
        let index = self.index(port.as_str()).await?;
        self.set(
            LinkUnspec::new_with_index(index)
                .controller(bridge_index)
                .build(),
            "attach to bridge",
            port,
        )
        .await
    }

    /// Removes `port` from its bridge (`ip link set PORT nomaster`).
    pub async fn detach_from_bridge(&self, port: &IfName) -> Result<(), LinkError> {
        let index = self.index(port.as_str()).await?;
        self.set(
            LinkUnspec::new_with_index(index).nocontroller().build(),
            "detach from bridge",
            port,
        )
        .await
    }

    async fn set(
        &self,
        msg: LinkMessage,
        op: &'static str,
        name: &IfName,
    ) -> Result<(), LinkError> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(nl(op, name.as_str()))
    }

    /// Deletes a link (a veth pair goes with its peer).
    pub async fn delete_link(&self, name: &IfName) -> Result<(), LinkError> {
        let index = self.index(name.as_str()).await?;
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(nl("delete link", name.as_str()))
    }

    /// Adds `addr/prefix_len` to a link.
    pub async fn add_address(
        &self,
        name: &IfName,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), LinkError> {
        check_prefix(addr, prefix_len)?;
        let index = self.index(name.as_str()).await?;
        self.handle
            .address()
            .add(index, addr, prefix_len)
            .execute()
            .await
            .map_err(nl("add address", name.as_str()))
    }

    /// Removes `addr/prefix_len` from a link; an error if it is not there.
    pub async fn remove_address(
        &self,
        name: &IfName,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), LinkError> {
        check_prefix(addr, prefix_len)?;
        let index = self.index(name.as_str()).await?;
        let found = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(addr)
            .set_prefix_length_filter(prefix_len)
            .execute()
            .try_next()
            .await
            .map_err(nl("get address", name.as_str()))?;
        let Some(message) = found else {
            return Err(LinkError::NotFound(format!(
                "{addr}/{prefix_len} on {name}"
            )));
        };
        self.handle
            .address()
            .del(message)
            .execute()
            .await
            .map_err(nl("remove address", name.as_str()))
    }

    /// Addresses of a link as `(address, prefix length)`.
    pub async fn addresses(&self, name: &IfName) -> Result<Vec<(IpAddr, u8)>, LinkError> {
        let index = self.index(name.as_str()).await?;
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl("list addresses", name.as_str()))?;
        Ok(messages
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some((*ip, m.header.prefix_len)),
                    _ => None,
                })
            })
            .collect())
    }
}

fn check_prefix(addr: IpAddr, prefix_len: u8) -> Result<(), LinkError> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix_len > max {
        return Err(LinkError::InvalidPrefix { addr, prefix_len });
    }
    Ok(())
}

fn fdb_all_zero(index: u32, peer: IpAddr) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Bridge;
    message.header.ifindex = index;
    message.header.state = NeighbourState::Permanent;
    message.header.flags = NeighbourFlags::Own;
    message.header.kind = RouteType::Unspec;
    message
        .attributes
        .push(NeighbourAttribute::LinkLayerAddress(vec![0; 6]));
    message
        .attributes
        .push(NeighbourAttribute::Destination(match peer {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
    message
}

fn summarize(link: &LinkMessage) -> LinkSummary {
    let mut summary = LinkSummary {
        index: link.header.index,
        name: String::new(),
        kind: None,
        mtu: None,
        up: link.header.flags.contains(LinkFlags::Up),
        master: None,
        mac: None,
    };
    for attr in &link.attributes {
        match attr {
            LinkAttribute::IfName(n) => summary.name = n.clone(),
            LinkAttribute::Mtu(m) => summary.mtu = Some(*m),
            LinkAttribute::Controller(c) => summary.master = Some(*c),
            LinkAttribute::Address(a) => summary.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            LinkAttribute::LinkInfo(infos) => {
                summary.kind = infos.iter().find_map(|i| match i {
                    LinkInfo::Kind(k) => Some(kind_name(k)),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    summary
}

fn kind_name(kind: &InfoKind) -> String {
    kind.to_string()
}
