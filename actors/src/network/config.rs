//! The node network configuration: the bridges gpve manages on a node, and the pending
//! changes that `PUT /nodes/{node}/network` applies (Proxmox's `interfaces.new` model).
//!
//! Stored as one JSON document at `("netcfg", node)`, so an apply is one transaction:
//! `ifaces` is what the network actor converges the kernel to; `pending` (when present) is
//! the whole next configuration; `retired` are bridges removed by an apply that the actor
//! still has to delete (kept in the store so a crash between the two cannot leak them).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use gpve_network::IfName;
use gpve_store::{Key, Store, StoreError};
use serde::{Deserialize, Serialize};

/// Store subspace of node network configurations.
pub const NETCFG_SUBSPACE: &str = "netcfg";
/// Smallest and largest MTU accepted for a bridge.
pub const MTU_MIN_BYTES: u32 = 576;
pub const MTU_MAX_BYTES: u32 = 65_535;
/// Most bridges one node may have (each is reconciled on every pass).
pub const BRIDGES_MAX: usize = 256;
/// Most ports one bridge may list.
pub const BRIDGE_PORTS_MAX: usize = 64;
/// Longest comment, in bytes.
pub const COMMENT_BYTES_MAX: usize = 4096;

/// Errors in a node network configuration, keyed by the parameter they concern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetConfigError {
    #[error("invalid {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("interface {0} does not exist")]
    NotFound(String),
    #[error("interface {0} already exists")]
    Exists(String),
    #[error("bridge {bridge} is used by VM {vmid} ({nic}); change or remove that NIC first")]
    InUse {
        bridge: String,
        vmid: u32,
        nic: String,
    },
    #[error("a node may have at most {BRIDGES_MAX} bridges")]
    TooMany,
}

impl NetConfigError {
    fn field(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Field {
            field,
            reason: reason.into(),
        }
    }
}

/// One interface gpve manages: today always a Linux bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Iface {
    pub iface: String,
    /// `bridge` (the only type gpve manages).
    #[serde(rename = "type")]
    pub kind: String,
    /// Host address on the bridge, `ADDR/PREFIX` (IPv4 or IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Existing interfaces enslaved to the bridge (uplinks, veths).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bridge_ports: Vec<String>,
    #[serde(default = "yes")]
    pub autostart: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comments: Option<String>,
}

fn yes() -> bool {
    true
}

/// Parses `ADDR/PREFIX` keeping the host bits (it is an interface address, not a network).
pub fn parse_if_cidr(s: &str) -> Result<(IpAddr, u8), NetConfigError> {
    let bad = || NetConfigError::field("cidr", format!("{s:?} is not ADDRESS/PREFIX"));
    let (a, p) = s.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = a.parse().map_err(|_| bad())?;
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let prefix: u8 = p.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(NetConfigError::field(
            "cidr",
            format!("prefix /{prefix} is too long for {addr}"),
        ));
    }
    Ok((addr, prefix))
}

/// Parses a `pve-iface-list` (`eth0 veth1` or `eth0,veth1`).
pub fn parse_ports(s: &str) -> Result<Vec<String>, NetConfigError> {
    let ports: Vec<String> = s
        .split([' ', ',', ';'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            IfName::new(p)
                .map(|n| n.to_string())
                .map_err(|e| NetConfigError::field("bridge_ports", e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    if ports.len() > BRIDGE_PORTS_MAX {
        return Err(NetConfigError::field(
            "bridge_ports",
            format!("at most {BRIDGE_PORTS_MAX} ports"),
        ));
    }
    Ok(ports)
}

impl Iface {
    /// Checks every field; the name must be a bridge name gpve may own.
    pub fn validate(&self) -> Result<(), NetConfigError> {
        IfName::new(&self.iface).map_err(|e| NetConfigError::field("iface", e.to_string()))?;
        // Taps are named tap{vmid}i{n} by the VM actor and veths of tests are arbitrary;
        // a bridge called tap… would be mistaken for a VM's tap.
        if self.iface.starts_with("tap") {
            return Err(NetConfigError::field(
                "iface",
                "names starting with 'tap' are reserved for VM NICs",
            ));
        }
        if self.kind != "bridge" {
            return Err(NetConfigError::field(
                "type",
                format!(
                    "type {:?} is not supported: gpve manages Linux bridges only",
                    self.kind
                ),
            ));
        }
        if let Some(c) = &self.cidr {
            parse_if_cidr(c)?;
        }
        if let Some(mtu) = self.mtu
            && !(MTU_MIN_BYTES..=MTU_MAX_BYTES).contains(&mtu)
        {
            return Err(NetConfigError::field(
                "mtu",
                format!("{mtu} is outside {MTU_MIN_BYTES}-{MTU_MAX_BYTES}"),
            ));
        }
        for p in &self.bridge_ports {
            IfName::new(p).map_err(|e| NetConfigError::field("bridge_ports", e.to_string()))?;
            if p == &self.iface {
                return Err(NetConfigError::field(
                    "bridge_ports",
                    "a bridge cannot be its own port",
                ));
            }
        }
        if let Some(c) = &self.comments
            && (c.len() > COMMENT_BYTES_MAX || c.chars().any(|c| c.is_control() && c != '\n'))
        {
            return Err(NetConfigError::field(
                "comments",
                "too long or contains control characters",
            ));
        }
        Ok(())
    }
}

/// The whole network configuration of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeNetwork {
    /// Applied configuration, by interface name.
    #[serde(default)]
    pub ifaces: BTreeMap<String, Iface>,
    /// The next configuration, when changes wait for `PUT /nodes/{node}/network`.
    #[serde(default)]
    pub pending: Option<BTreeMap<String, Iface>>,
    /// Bridges removed by an apply that the actor has not deleted yet.
    #[serde(default)]
    pub retired: BTreeSet<String>,
}

impl NodeNetwork {
    /// The configuration as it will be after an apply.
    pub fn effective(&self) -> &BTreeMap<String, Iface> {
        self.pending.as_ref().unwrap_or(&self.ifaces)
    }

    /// Mutable pending configuration, started from the applied one.
    pub fn pending_mut(&mut self) -> &mut BTreeMap<String, Iface> {
        let ifaces = &self.ifaces;
        self.pending.get_or_insert_with(|| ifaces.clone())
    }

    /// Makes the pending configuration the applied one; bridges it drops are retired.
    /// Refused when a VM still uses a bridge that would disappear.
    pub fn apply_pending(&mut self, users: &[BridgeUser]) -> Result<bool, NetConfigError> {
        let Some(next) = self.pending.take() else {
            return Ok(false);
        };
        for gone in self.ifaces.keys().filter(|k| !next.contains_key(*k)) {
            if let Some(u) = users.iter().find(|u| &u.bridge == gone) {
                let err = NetConfigError::InUse {
                    bridge: gone.clone(),
                    vmid: u.vmid,
                    nic: u.nic.clone(),
                };
                self.pending = Some(next);
                return Err(err);
            }
        }
        for gone in self.ifaces.keys().filter(|k| !next.contains_key(*k)) {
            self.retired.insert(gone.clone());
        }
        for kept in next.keys() {
            self.retired.remove(kept);
        }
        self.ifaces = next;
        Ok(true)
    }
}

/// A VM NIC plugged into a bridge (for "bridge in use" refusals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeUser {
    pub bridge: String,
    pub vmid: u32,
    pub nic: String,
}

/// The NICs of every VM placed on `node` and their bridges (configuration and pending
/// changes both count: a pending NIC will use the bridge at the next start).
pub async fn bridge_users(store: &Store, node: &str) -> Result<Vec<BridgeUser>, StoreError> {
    let mut out = Vec::new();
    for e in crate::vm::list_entries(store).await? {
        if e.record.node != node {
            continue;
        }
        for (key, value) in e.config.iter().chain(e.pending.iter()) {
            if !key.starts_with("net") {
                continue;
            }
            if let Ok(net) = crate::vm::config::parse_net(value)
                && let Some(bridge) = net.bridge
            {
                out.push(BridgeUser {
                    bridge,
                    vmid: e.record.vmid,
                    nic: key.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// Store key of a node's network configuration.
pub fn netcfg_key(node: &str) -> Key {
    Key::pack(&(NETCFG_SUBSPACE, node))
}

/// A node's network configuration (empty when never written).
pub async fn load(store: &Store, node: &str) -> Result<NodeNetwork, StoreError> {
    Ok(store
        .get_json::<NodeNetwork>(&netcfg_key(node))
        .await?
        .unwrap_or_default())
}

/// Changes a node's network configuration in one transaction.
pub async fn update<T, F>(store: &Store, node: &str, change: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: Fn(&mut NodeNetwork) -> T + Send + Sync + Clone + 'static,
{
    let key = netcfg_key(node);
    store
        .transact(move |tx| {
            let change = change.clone();
            let key = key.clone();
            Box::pin(async move {
                let mut doc = tx.get_json::<NodeNetwork>(&key).await?.unwrap_or_default();
                let out = change(&mut doc);
                tx.put_json(&key, &doc)?;
                Ok(out)
            })
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge(name: &str) -> Iface {
        Iface {
            iface: name.into(),
            kind: "bridge".into(),
            cidr: Some("10.0.0.1/24".into()),
            mtu: Some(1500),
            bridge_ports: vec![],
            autostart: true,
            comments: None,
        }
    }

    #[test]
    fn ifaces_are_validated() {
        assert_eq!(bridge("vmbr0").validate(), Ok(()));
        for (name, field) in [
            ("", "iface"),
            ("a234567890123456", "iface"),
            ("tap100i0", "iface"),
        ] {
            assert!(
                matches!(bridge(name).validate(), Err(NetConfigError::Field { field: f, .. }) if f == field),
                "{name}"
            );
        }
        let mut b = bridge("vmbr0");
        b.kind = "bond".into();
        assert!(matches!(
            b.validate(),
            Err(NetConfigError::Field { field: "type", .. })
        ));
        let mut b = bridge("vmbr0");
        b.cidr = Some("10.0.0.1/33".into());
        assert!(matches!(
            b.validate(),
            Err(NetConfigError::Field { field: "cidr", .. })
        ));
        b.cidr = Some("10.0.0.1".into());
        assert!(b.validate().is_err());
        let mut b = bridge("vmbr0");
        b.mtu = Some(100);
        assert!(matches!(
            b.validate(),
            Err(NetConfigError::Field { field: "mtu", .. })
        ));
        assert_eq!(parse_ports("eth0 veth1,x").ok().map(|p| p.len()), Some(3));
        assert!(parse_ports("bad/name").is_err());
    }

    #[test]
    fn apply_retires_and_refuses_bridges_in_use() {
        let mut doc = NodeNetwork::default();
        doc.pending_mut().insert("vmbr0".into(), bridge("vmbr0"));
        doc.pending_mut().insert("vmbr1".into(), bridge("vmbr1"));
        assert_eq!(doc.apply_pending(&[]), Ok(true));
        assert_eq!(doc.ifaces.len(), 2);
        assert_eq!(doc.apply_pending(&[]), Ok(false));

        doc.pending_mut().remove("vmbr1");
        let users = [BridgeUser {
            bridge: "vmbr1".into(),
            vmid: 100,
            nic: "net0".into(),
        }];
        assert!(matches!(
            doc.apply_pending(&users),
            Err(NetConfigError::InUse { vmid: 100, .. })
        ));
        // The refused change stays pending; nothing was applied.
        assert!(doc.pending.is_some());
        assert_eq!(doc.ifaces.len(), 2);
        assert_eq!(doc.apply_pending(&[]), Ok(true));
        assert!(doc.retired.contains("vmbr1"));
    }
}
