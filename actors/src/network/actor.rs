//! The `network` actor: owns the node's bridges, the taps of its running VMs and the
//! nftables ruleset, and converges them to the store.
//!
//! One lifecycle state (running); every message is accepted while the actor lives:
//! - [`NetworkMsg::Reconcile`]: re-read the store and converge (sent by itself at start, by
//!   the API after a committed change, by a VM start that needs its firewall, and by a
//!   periodic tick), answering the first failure if asked.
//! - [`NetworkMsg::Status`]: what the last pass did.
//!
//! A pass never deletes a device it did not create: only bridges an apply retired, and
//! nothing else. The ruleset is replaced as one nftables batch: if it fails, the previous
//! one stays in place and the failure is reported.

use std::time::Duration;

use gpve_network::{Firewall, IfName, NetHandle, Netns};
use gpve_store::Store;
use gpve_supervisor::ActorStats;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;

use super::config::{self, parse_if_cidr};
use super::firewall::{self as fw, GuestInput};
use super::nics::nic_plugs;
use crate::vm::list_entries;

/// How often the actor converges without being asked (repairs drift made outside gpve).
pub const RECONCILE_INTERVAL_MS: u64 = 30_000;

/// Commands of the network actor.
#[derive(Debug)]
pub enum NetworkMsg {
    /// Converge to the store; the reply (if any) carries the first failure.
    Reconcile(Option<RpcReplyPort<Result<(), String>>>),
    Status(RpcReplyPort<NetworkStatus>),
}

impl ractor::Message for NetworkMsg {}

/// What the last reconcile pass found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NetworkStatus {
    pub passes: u64,
    pub last_error: Option<String>,
    /// nftables rules installed by the last successful apply.
    pub firewall_rules: usize,
    /// Whether bridges can filter VLANs here (tagged NICs need it).
    pub vlan_filtering: bool,
}

/// Arguments of the network actor.
#[derive(Debug, Clone)]
pub struct NetworkArgs {
    pub node: String,
    pub store: Store,
    /// The namespace of the node's devices: the server's own in production (QEMU opens its
    /// taps in its own namespace, so both must agree).
    pub netns: Netns,
}

/// The network actor.
#[derive(Debug)]
pub struct NetworkActor {
    pub stats: Option<ActorStats>,
}

pub struct NetworkState {
    args: NetworkArgs,
    status: NetworkStatus,
    firewall: Option<Firewall>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    span: tracing::Span,
}

impl Actor for NetworkActor {
    type Msg = NetworkMsg;
    type State = NetworkState;
    type Arguments = NetworkArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<NetworkMsg>,
        args: NetworkArgs,
    ) -> Result<NetworkState, ActorProcessingErr> {
        // Quick: the first pass runs as a message so the supervisor is not held up.
        myself.cast(NetworkMsg::Reconcile(None))?;
        let me = myself.clone();
        let ticker = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(RECONCILE_INTERVAL_MS));
            tick.tick().await;
            loop {
                tick.tick().await;
                if me.cast(NetworkMsg::Reconcile(None)).is_err() {
                    break;
                }
            }
        });
        Ok(NetworkState {
            span: tracing::info_span!("network", node = %args.node),
            args,
            status: NetworkStatus::default(),
            firewall: None,
            ticker: Some(ticker),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<NetworkMsg>,
        st: &mut NetworkState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = st.ticker.take() {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<NetworkMsg>,
        msg: NetworkMsg,
        st: &mut NetworkState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(s) = &self.stats {
            s.record_handled();
        }
        match msg {
            NetworkMsg::Reconcile(reply) => {
                let span = st.span.clone();
                let result = {
                    let _g = span.enter();
                    reconcile(st).await
                };
                st.status.passes += 1;
                st.status.last_error = result.as_ref().err().cloned();
                if let Err(e) = &result {
                    let _g = span.enter();
                    tracing::warn!(error = %e, "network reconcile incomplete");
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            NetworkMsg::Status(reply) => {
                let _ = reply.send(st.status.clone());
            }
        }
        Ok(())
    }
}

/// One pass: bridges, then taps of running VMs, then the ruleset. Every step runs even if
/// an earlier one failed (a missing uplink must not keep the firewall stale).
async fn reconcile(st: &mut NetworkState) -> Result<(), String> {
    let mut errors = Vec::new();
    let handle = NetHandle::open(st.args.netns.clone())
        .await
        .map_err(|e| format!("cannot open netlink: {e}"))?;
    if let Err(e) = bridges(&st.args, &handle).await {
        errors.push(e);
    }
    if let Err(e) = taps(&st.args, &handle).await {
        errors.push(e);
    }
    match firewall(st).await {
        Ok(n) => st.status.firewall_rules = n,
        Err(e) => errors.push(e),
    }
    st.status.vlan_filtering = gpve_network::vlan_filtering_supported();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn ifname(s: &str) -> Result<IfName, String> {
    IfName::new(s).map_err(|e| e.to_string())
}

async fn bridges(args: &NetworkArgs, h: &NetHandle) -> Result<(), String> {
    let doc = config::load(&args.store, &args.node)
        .await
        .map_err(|e| format!("cannot read the network configuration: {e}"))?;
    let mut errors = Vec::new();
    for name in &doc.retired {
        let Ok(n) = ifname(name) else { continue };
        if let Ok(l) = h.link(name).await
            && l.kind.as_deref() == Some("bridge")
            && let Err(e) = h.delete_link(&n).await
        {
            errors.push(format!("cannot delete bridge {name}: {e}"));
            continue;
        }
        let gone = name.clone();
        if let Err(e) = config::update(&args.store, &args.node, move |d| {
            d.retired.remove(&gone);
        })
        .await
        {
            errors.push(format!("cannot record that {name} was deleted: {e}"));
        }
    }
    for iface in doc.ifaces.values() {
        if let Err(e) = bridge(h, iface).await {
            errors.push(format!("bridge {}: {e}", iface.iface));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

async fn bridge(h: &NetHandle, iface: &config::Iface) -> Result<(), String> {
    let name = ifname(&iface.iface)?;
    match h.link(&iface.iface).await {
        Ok(l) if l.kind.as_deref() == Some("bridge") => {
            if let Some(mtu) = iface.mtu
                && l.mtu != Some(mtu)
            {
                h.set_mtu(&name, mtu).await.map_err(|e| e.to_string())?;
            }
        }
        Ok(_) => return Err("an interface of that name exists and is not a bridge".into()),
        Err(_) => h
            .create_bridge(&name, iface.mtu)
            .await
            .map_err(|e| e.to_string())?,
    }
    if let Some(cidr) = &iface.cidr {
        let (addr, prefix) = parse_if_cidr(cidr).map_err(|e| e.to_string())?;
        let have = h.addresses(&name).await.map_err(|e| e.to_string())?;
        if !have.contains(&(addr, prefix)) {
            h.add_address(&name, addr, prefix)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    let index = h.index(&iface.iface).await.map_err(|e| e.to_string())?;
    for port in &iface.bridge_ports {
        let p = ifname(port)?;
        let l = h
            .link(port)
            .await
            .map_err(|_| format!("port {port} does not exist"))?;
        if l.master != Some(index) {
            h.attach_to_bridge(&p, &name)
                .await
                .map_err(|e| format!("port {port}: {e}"))?;
        }
        h.set_up(&p).await.map_err(|e| e.to_string())?;
    }
    if iface.autostart {
        h.set_up(&name).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Re-plugs the taps of running VMs (a tap detached by hand or by a bridge re-creation).
/// A missing tap cannot be recreated under a running QEMU; it is reported.
async fn taps(args: &NetworkArgs, h: &NetHandle) -> Result<(), String> {
    let entries = list_entries(&args.store)
        .await
        .map_err(|e| format!("cannot list VMs: {e}"))?;
    let mut errors = Vec::new();
    for e in entries
        .iter()
        .filter(|e| e.record.node == args.node && e.runtime.pid.is_some())
    {
        let Ok(plugs) = nic_plugs(&e.config) else {
            continue;
        };
        for p in plugs {
            let Ok(tap) = gpve_network::tap_name(e.record.vmid, p.slot) else {
                continue;
            };
            let Ok(link) = h.link(tap.as_str()).await else {
                errors.push(format!(
                    "tap {tap} of running VM {} is missing",
                    e.record.vmid
                ));
                continue;
            };
            let Ok(bridge) = ifname(&p.bridge) else {
                continue;
            };
            let Ok(index) = h.index(&p.bridge).await else {
                errors.push(format!("bridge {} of {tap} is missing", p.bridge));
                continue;
            };
            if link.master != Some(index)
                && let Err(err) = h.attach_to_bridge(&tap, &bridge).await
            {
                errors.push(format!("cannot re-plug {tap} into {}: {err}", p.bridge));
            }
            let want_up = !p.link_down;
            if link.up != want_up {
                let r = if want_up {
                    h.set_up(&tap).await
                } else {
                    h.set_down(&tap).await
                };
                if let Err(err) = r {
                    errors.push(format!("cannot set {tap} up/down: {err}"));
                }
            }
        }
    }
    // Taps of VMs that are stopped for good (a guest that powered itself off leaves its
    // persistent taps). Only VMs of this node's store: other taps are not ours.
    let stopped: Vec<u32> = entries
        .iter()
        .filter(|e| {
            e.record.node == args.node
                && e.runtime.pid.is_none()
                && e.desired == crate::vm::Desired::Stopped
        })
        .map(|e| e.record.vmid)
        .collect();
    if !stopped.is_empty() {
        let links = h.list_links().await.map_err(|e| e.to_string())?;
        for l in links {
            let Some((vmid, _)) = parse_tap(&l.name) else {
                continue;
            };
            if stopped.contains(&vmid)
                && let Ok(n) = ifname(&l.name)
                && let Err(err) = h.delete_link(&n).await
            {
                errors.push(format!(
                    "cannot remove {} of stopped VM {vmid}: {err}",
                    l.name
                ));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// `tap{vmid}i{n}` into `(vmid, n)`.
fn parse_tap(name: &str) -> Option<(u32, u8)> {
    let (vmid, n) = name.strip_prefix("tap")?.split_once('i')?;
    Some((vmid.parse().ok()?, n.parse().ok()?))
}

/// Compiles the node's ruleset from the store and applies it atomically.
async fn firewall(st: &mut NetworkState) -> Result<usize, String> {
    let args = &st.args;
    let cluster = fw::load_cluster(&args.store)
        .await
        .map_err(|e| format!("cannot read the cluster firewall: {e}"))?;
    let entries = list_entries(&args.store)
        .await
        .map_err(|e| format!("cannot list VMs: {e}"))?;
    let mut vm_fws = Vec::new();
    for e in entries.iter().filter(|e| e.record.node == args.node) {
        let f = fw::load_vm(&args.store, e.record.vmid)
            .await
            .map_err(|e| format!("cannot read a VM firewall: {e}"))?;
        vm_fws.push((e, f));
    }
    let inputs: Vec<GuestInput<'_>> = vm_fws
        .iter()
        .map(|(e, f)| GuestInput {
            vmid: e.record.vmid,
            config: &e.config,
            firewall: Some(f),
        })
        .collect();
    let ruleset = fw::compile(&cluster, &inputs).map_err(|e| format!("firewall: {e}"))?;
    let firewall = st
        .firewall
        .get_or_insert_with(|| Firewall::new(args.netns.clone()))
        .clone();
    let plan = tokio::task::spawn_blocking(move || firewall.apply(&ruleset))
        .await
        .map_err(|e| format!("the firewall apply task failed: {e}"))?
        .map_err(|e| {
            format!(
                "the firewall was not applied (the previous ruleset stays): {}",
                crate::storage::error_chain(&e)
            )
        })?;
    Ok(plan.rule_count())
}
