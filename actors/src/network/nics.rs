//! VM NICs on the host: the taps `tap{vmid}i{n}` QEMU opens (`-netdev tap,ifname=…`),
//! created and plugged into their bridge before QEMU starts and removed when it stops.
//!
//! The VM actor reaches the host through [`NicPlumbing`]: [`HostNics`] (real taps through
//! the network crate, then the firewall refreshed by the network actor) or [`MemNics`]
//! (in memory, for the simulation and unit tests).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use gpve_hypervisor::{NicBackend, QemuSpec};
use gpve_network::{IfName, NetHandle, Netns, TapOptions, check_nic_tag, tap_name};
use gpve_supervisor::Directory;

use super::actor::NetworkMsg;
use crate::vm::config::parse_net;

/// How long a VM start waits for the network actor to apply the firewall.
pub const FIREWALL_REFRESH_TIMEOUT_MS: u64 = 10_000;

/// Errors while plugging or unplugging VM NICs.
#[derive(Debug, thiserror::Error)]
pub enum NicsError {
    /// A NIC's configuration cannot be honoured on this node (the key is `netN`).
    #[error("{key}: {reason}")]
    Config { key: String, reason: String },
    #[error("cannot plug {tap} into {bridge}: {reason}")]
    Plug {
        tap: String,
        bridge: String,
        reason: String,
    },
    #[error("cannot remove tap {tap}: {reason}")]
    Unplug { tap: String, reason: String },
    #[error("the firewall for VM {vmid} could not be applied: {reason}")]
    Firewall { vmid: u32, reason: String },
    #[error("cannot open netlink: {0}")]
    Netlink(String),
}

/// What one NIC needs on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicPlug {
    pub slot: u8,
    pub bridge: String,
    pub mtu: Option<u32>,
    pub link_down: bool,
    pub firewall: bool,
    pub tag: Option<u16>,
    pub multi_queue: bool,
}

fn flag(opts: &BTreeMap<String, String>, key: &str) -> bool {
    opts.get(key).is_some_and(|v| v == "1")
}

/// The bridged NICs of a VM configuration (a NIC without `bridge=` uses QEMU's user-mode
/// network, as in Proxmox, and needs nothing on the host).
pub fn nic_plugs(config: &BTreeMap<String, String>) -> Result<Vec<NicPlug>, NicsError> {
    let mut out = Vec::new();
    for (key, value) in config {
        let Some(slot) = key.strip_prefix("net").and_then(|n| n.parse::<u8>().ok()) else {
            continue;
        };
        let net = parse_net(value).map_err(|reason| NicsError::Config {
            key: key.clone(),
            reason,
        })?;
        let Some(bridge) = net.bridge else { continue };
        let bad = |reason: String| NicsError::Config {
            key: key.clone(),
            reason,
        };
        let mtu = match net.options.get("mtu") {
            None => None,
            // Proxmox: mtu=1 means "the bridge's MTU", which a plugged port gets anyway.
            Some(m) if m == "1" => None,
            Some(m) => Some(
                m.parse::<u32>()
                    .ok()
                    .filter(|m| (576..=65_520).contains(m))
                    .ok_or_else(|| bad(format!("mtu {m:?} is not 576-65520 (or 1)")))?,
            ),
        };
        if net.options.contains_key("trunks") {
            return Err(bad(
                "trunks need bridge VLAN filtering, which gpve does not configure yet".into(),
            ));
        }
        // Refused rather than ignored: a guest must not run unlimited when a limit was asked.
        if net.options.contains_key("rate") {
            return Err(bad(
                "rate limits (tc on the tap) are not built yet; remove rate= to start the VM"
                    .into(),
            ));
        }
        let multi_queue = net
            .options
            .get("queues")
            .and_then(|q| q.parse::<u32>().ok())
            .is_some_and(|q| q > 1);
        out.push(NicPlug {
            slot,
            bridge,
            mtu,
            link_down: flag(&net.options, "link_down"),
            firewall: net.firewall,
            tag: net.tag,
            multi_queue,
        });
    }
    Ok(out)
}

/// Points each bridged NIC of `spec` at its tap; NICs without a bridge get QEMU's user
/// network. Called on the spec built from the same configuration as `plugs`.
pub fn attach_taps(spec: &mut QemuSpec, plugs: &[NicPlug]) -> Result<(), NicsError> {
    for nic in &mut spec.nics {
        nic.backend = match plugs.iter().find(|p| p.slot == nic.slot) {
            Some(p) => NicBackend::Tap {
                ifname: tap(spec.vmid, p.slot)?.to_string(),
            },
            None => NicBackend::User,
        };
    }
    Ok(())
}

fn tap(vmid: u32, slot: u8) -> Result<IfName, NicsError> {
    tap_name(vmid, slot).map_err(|e| NicsError::Config {
        key: format!("net{slot}"),
        reason: e.to_string(),
    })
}

/// The host side of VM NICs.
#[async_trait]
pub trait NicPlumbing: Send + Sync {
    /// Creates the VM's taps, plugged into their bridges (MTU, link state), before QEMU
    /// starts; stale taps of an earlier run are replaced. All or nothing.
    async fn plug(&self, vmid: u32, nics: &[NicPlug]) -> Result<(), NicsError>;
    /// Removes every tap of the VM (none left is success).
    async fn unplug(&self, vmid: u32) -> Result<(), NicsError>;
}

/// Real taps in the server's network namespace, firewall applied by the network actor.
#[derive(Debug, Clone)]
pub struct HostNics {
    pub netns: Netns,
    pub directory: Directory,
    /// Directory path of the network actor.
    pub network_path: String,
    /// Whether this kernel can filter VLANs on a bridge (tagged NICs need it).
    pub vlan_filtering: bool,
}

impl HostNics {
    pub fn new(directory: Directory, network_path: String) -> Self {
        Self {
            netns: Netns::Current,
            directory,
            network_path,
            vlan_filtering: gpve_network::vlan_filtering_supported(),
        }
    }

    async fn refresh_firewall(&self, vmid: u32) -> Result<(), NicsError> {
        let fail = |reason: String| NicsError::Firewall { vmid, reason };
        let actor = self
            .directory
            .lookup_ref::<NetworkMsg>(&self.network_path)
            .ok_or_else(|| fail("the network actor is not running".into()))?;
        let answer = actor
            .call(
                |reply| NetworkMsg::Reconcile(Some(reply)),
                Some(Duration::from_millis(FIREWALL_REFRESH_TIMEOUT_MS)),
            )
            .await
            .map_err(|e| fail(e.to_string()))?;
        match answer {
            ractor::rpc::CallResult::Success(Ok(_)) => Ok(()),
            ractor::rpc::CallResult::Success(Err(e)) => Err(fail(e)),
            ractor::rpc::CallResult::Timeout => Err(fail(format!(
                "no answer within {FIREWALL_REFRESH_TIMEOUT_MS} ms"
            ))),
            ractor::rpc::CallResult::SenderError => Err(fail("the network actor stopped".into())),
        }
    }
}

/// Names of the existing taps of `vmid`.
async fn taps_of(handle: &NetHandle, vmid: u32) -> Result<Vec<IfName>, NicsError> {
    let prefix = format!("tap{vmid}i");
    let links = handle
        .list_links()
        .await
        .map_err(|e| NicsError::Netlink(e.to_string()))?;
    Ok(links
        .into_iter()
        .filter(|l| {
            l.name
                .strip_prefix(&prefix)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|l| IfName::new(&l.name).ok())
        .collect())
}

#[async_trait]
impl NicPlumbing for HostNics {
    async fn plug(&self, vmid: u32, nics: &[NicPlug]) -> Result<(), NicsError> {
        for n in nics {
            check_nic_tag(&format!("net{}", n.slot), n.tag, self.vlan_filtering).map_err(|e| {
                NicsError::Config {
                    key: format!("net{}", n.slot),
                    reason: e.to_string(),
                }
            })?;
        }
        if nics.is_empty() {
            return Ok(());
        }
        let handle = NetHandle::open(self.netns.clone())
            .await
            .map_err(|e| NicsError::Netlink(e.to_string()))?;
        // A tap left by a crashed run would be silently reused by TUNSETIFF: start clean.
        for stale in taps_of(&handle, vmid).await? {
            let _ = gpve_network::delete_tap(&handle, &stale).await;
        }
        let mut made = Vec::new();
        let result: Result<(), NicsError> = async {
            for n in nics {
                let name = tap(vmid, n.slot)?;
                let bridge = IfName::new(&n.bridge).map_err(|e| NicsError::Config {
                    key: format!("net{}", n.slot),
                    reason: e.to_string(),
                })?;
                let plug_err = |reason: String| NicsError::Plug {
                    tap: name.to_string(),
                    bridge: n.bridge.clone(),
                    reason,
                };
                match handle.link(bridge.as_str()).await {
                    Ok(l) if l.kind.as_deref() == Some("bridge") => {}
                    Ok(_) => return Err(plug_err("it is not a bridge".into())),
                    Err(_) => {
                        return Err(NicsError::Config {
                            key: format!("net{}", n.slot),
                            reason: format!("bridge '{}' does not exist on this node", n.bridge),
                        });
                    }
                }
                let opts = TapOptions {
                    multi_queue: n.multi_queue,
                    bridge: Some(bridge),
                    mtu: n.mtu,
                };
                gpve_network::create_tap(&handle, &name, &opts)
                    .await
                    .map_err(|e| plug_err(error_chain(&e)))?;
                made.push(name.clone());
                if n.link_down {
                    handle
                        .set_down(&name)
                        .await
                        .map_err(|e| plug_err(error_chain(&e)))?;
                }
            }
            if nics.iter().any(|n| n.firewall) {
                self.refresh_firewall(vmid).await?;
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            for name in &made {
                let _ = gpve_network::delete_tap(&handle, name).await;
            }
        }
        result
    }

    async fn unplug(&self, vmid: u32) -> Result<(), NicsError> {
        let handle = NetHandle::open(self.netns.clone())
            .await
            .map_err(|e| NicsError::Netlink(e.to_string()))?;
        for name in taps_of(&handle, vmid).await? {
            gpve_network::delete_tap(&handle, &name)
                .await
                .map_err(|e| NicsError::Unplug {
                    tap: name.to_string(),
                    reason: error_chain(&e),
                })?;
        }
        Ok(())
    }
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    crate::storage::error_chain(e)
}

/// One tap of [`MemNics`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemTap {
    pub bridge: String,
    pub up: bool,
    pub mtu: Option<u32>,
}

/// In-memory NICs: the bridges that exist and the taps plugged into them.
#[derive(Debug, Clone, Default)]
pub struct MemNics {
    inner: Arc<Mutex<MemState>>,
}

#[derive(Debug, Default)]
struct MemState {
    bridges: BTreeSet<String>,
    taps: BTreeMap<String, MemTap>,
}

impl MemNics {
    /// No bridges: every bridged NIC is refused until [`MemNics::add_bridge`].
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_bridge(&self, name: &str) {
        self.lock().bridges.insert(name.to_string());
    }

    /// The taps that exist, by name.
    pub fn taps(&self) -> BTreeMap<String, MemTap> {
        self.lock().taps.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        // A panic while holding this lock leaves plain data behind; keep using it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl NicPlumbing for MemNics {
    async fn plug(&self, vmid: u32, nics: &[NicPlug]) -> Result<(), NicsError> {
        let mut st = self.lock();
        let mut next = BTreeMap::new();
        for n in nics {
            check_nic_tag(&format!("net{}", n.slot), n.tag, false).map_err(|e| {
                NicsError::Config {
                    key: format!("net{}", n.slot),
                    reason: e.to_string(),
                }
            })?;
            if !st.bridges.contains(&n.bridge) {
                return Err(NicsError::Config {
                    key: format!("net{}", n.slot),
                    reason: format!("bridge '{}' does not exist on this node", n.bridge),
                });
            }
            next.insert(
                tap(vmid, n.slot)?.to_string(),
                MemTap {
                    bridge: n.bridge.clone(),
                    up: !n.link_down,
                    mtu: n.mtu,
                },
            );
        }
        let prefix = format!("tap{vmid}i");
        st.taps.retain(|k, _| !k.starts_with(&prefix));
        st.taps.extend(next);
        Ok(())
    }

    async fn unplug(&self, vmid: u32) -> Result<(), NicsError> {
        let prefix = format!("tap{vmid}i");
        self.lock().taps.retain(|k, _| !k.starts_with(&prefix));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn plugs_come_from_the_config() {
        let plugs = nic_plugs(&cfg(&[
            (
                "net0",
                "virtio,bridge=vmbr0,firewall=1,mtu=1400,link_down=1",
            ),
            ("net1", "e1000"),
            ("name", "x"),
        ]))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plugs.len(), 1, "a NIC without bridge needs no tap");
        assert_eq!(
            plugs[0],
            NicPlug {
                slot: 0,
                bridge: "vmbr0".into(),
                mtu: Some(1400),
                link_down: true,
                firewall: true,
                tag: None,
                multi_queue: false,
            }
        );
        assert!(matches!(
            nic_plugs(&cfg(&[("net0", "virtio,bridge=vmbr0,mtu=10")])),
            Err(NicsError::Config { .. })
        ));
        for unsupported in ["rate=10", "trunks=10;20"] {
            let value = format!("virtio,bridge=vmbr0,{unsupported}");
            match nic_plugs(&cfg(&[("net1", &value)])) {
                Err(NicsError::Config { key, .. }) => assert_eq!(key, "net1"),
                other => panic!("{unsupported} must be refused, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn mem_nics_plug_refuse_and_unplug() {
        let nics = MemNics::new();
        let plugs = nic_plugs(&cfg(&[("net0", "virtio,bridge=vmbr0")])).unwrap_or_default();
        let err = nics.plug(100, &plugs).await;
        assert!(
            matches!(&err, Err(NicsError::Config { reason, .. }) if reason.contains("vmbr0")),
            "{err:?}"
        );
        nics.add_bridge("vmbr0");
        assert!(nics.plug(100, &plugs).await.is_ok());
        assert_eq!(nics.taps()["tap100i0"].bridge, "vmbr0");
        let tagged = nic_plugs(&cfg(&[("net0", "virtio,bridge=vmbr0,tag=10")])).unwrap_or_default();
        let err = nics.plug(101, &tagged).await;
        assert!(
            matches!(&err, Err(NicsError::Config { reason, .. }) if reason.contains("VLAN filtering")),
            "{err:?}"
        );
        assert!(nics.unplug(100).await.is_ok());
        assert!(nics.taps().is_empty());
    }
}
