//! `gpvectl network list|create|delete|apply|revert` and
//! `gpvectl firewall rules list|add|delete`, `gpvectl firewall enable|disable`.

use anyhow::Context;
use clap::{Args, Subcommand};
use gpve_api::client::Client;
use gpve_api::client::network::{BridgeSpec, FirewallOptions, FirewallRule, FirewallScope};

use crate::output::{self, Format, Table};

/// How long `network create|delete|apply` waits for the apply task.
const APPLY_WAIT_MS: u64 = 60_000;

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Bridges of a node; PENDING marks changes not applied yet.
    #[command(after_help = "Examples:
  gpvectl network list
  gpvectl network list --node pve1 -o yaml")]
    List {
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
    },
    /// Create a Linux bridge and apply it (VM NICs then use it: net0 virtio,bridge=NAME).
    #[command(after_help = "Examples:
  # A bridge with a host address and an uplink port
  gpvectl network create vmbr0 --cidr 192.168.10.1/24 --ports eth1
  # Stage several changes, then apply them together
  gpvectl network create vmbr1 --no-apply
  gpvectl network create vmbr2 --mtu 9000 --no-apply
  gpvectl network apply

Changes are staged (Proxmox's pending network configuration) and applied by the
node's network actor; without --no-apply this command applies at once.")]
    Create {
        /// Bridge name (1-15 characters of A-Z a-z 0-9 . _ -; not tap*).
        iface: String,
        /// Host address on the bridge, ADDRESS/PREFIX (IPv4 or IPv6).
        #[arg(long, value_name = "CIDR")]
        cidr: Option<String>,
        #[arg(long, value_name = "BYTES")]
        mtu: Option<u32>,
        /// Existing interfaces to enslave, space- or comma-separated.
        #[arg(long, value_name = "LIST")]
        ports: Option<String>,
        #[arg(long)]
        comment: Option<String>,
        /// Stage the change only; `gpvectl network apply` applies.
        #[arg(long)]
        no_apply: bool,
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
    },
    /// Delete a bridge (refused while a VM NIC uses it; the VM is named).
    #[command(after_help = "Examples:
  gpvectl network delete vmbr1
  gpvectl network delete vmbr1 --no-apply")]
    Delete {
        iface: String,
        #[arg(long)]
        no_apply: bool,
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
    },
    /// Apply the staged changes.
    Apply {
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
    },
    /// Drop the staged changes.
    Revert {
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
    },
}

// Parsed once per process: the size of a command line value does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum FirewallCommand {
    /// Firewall rules of the cluster (every guest NIC with firewall=1) or of one VM.
    Rules {
        #[command(subcommand)]
        what: RulesCommand,
    },
    /// Turn the firewall on for the cluster or a VM (both must be on to filter a VM).
    #[command(after_help = "Examples:
  gpvectl firewall enable                 # cluster-wide switch
  gpvectl firewall enable --vm 100 --policy-in DROP")]
    Enable {
        #[command(flatten)]
        scope: ScopeArgs,
        /// Default for traffic to the VM: ACCEPT, DROP or REJECT (VM scope).
        #[arg(long, value_name = "POLICY")]
        policy_in: Option<String>,
        /// Default for traffic from the VM.
        #[arg(long, value_name = "POLICY")]
        policy_out: Option<String>,
    },
    /// Turn the firewall off for the cluster or a VM.
    Disable {
        #[command(flatten)]
        scope: ScopeArgs,
    },
}

/// Cluster (default) or one VM.
#[derive(Debug, Args)]
pub struct ScopeArgs {
    /// The VM whose own rules to use instead of the cluster's.
    #[arg(long, value_name = "VMID")]
    vm: Option<u32>,
    /// The VM's node (defaults to the first node).
    #[arg(long, value_name = "NODE")]
    node: Option<String>,
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// List rules in evaluation order (POS).
    #[command(after_help = "Examples:
  gpvectl firewall rules list
  gpvectl firewall rules list --vm 100 -o json")]
    List {
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Add a rule (first, unless --pos). Directions are seen from the guest: in = to it.
    #[command(after_help = "Examples:
  # Let SSH in from the office network to VM 100
  gpvectl firewall rules add --vm 100 --direction in --action ACCEPT --macro SSH --source 192.0.2.0/24
  # Drop pings to every firewalled guest
  gpvectl firewall rules add --direction in --action DROP --proto icmp
  # Include a security group in VM 100's rules
  gpvectl firewall rules add --vm 100 --group webserver

Addresses: a CIDR, an alias name, or +ipset. Ports: 22, 1000:2000, 80,443.
Macros: DNS FTP HTTP HTTPS IMAP IMAPS NTP Ping POP3 RDP SMTP SMTPS SNMP SSH Telnet VNC Web.")]
    Add {
        #[command(flatten)]
        scope: ScopeArgs,
        /// in or out (not with --group).
        #[arg(long, value_name = "DIR", required_unless_present = "group")]
        direction: Option<String>,
        /// ACCEPT, DROP or REJECT.
        #[arg(long, value_name = "ACTION", required_unless_present = "group")]
        action: Option<String>,
        /// Include this security group instead of a single rule.
        #[arg(long, value_name = "NAME", conflicts_with_all = ["direction", "action"])]
        group: Option<String>,
        #[arg(long = "macro", value_name = "NAME")]
        macro_name: Option<String>,
        /// tcp, udp, icmp or icmpv6.
        #[arg(long)]
        proto: Option<String>,
        #[arg(long)]
        source: Option<String>,
        #[arg(long)]
        dest: Option<String>,
        #[arg(long)]
        dport: Option<String>,
        #[arg(long)]
        sport: Option<String>,
        /// Only this NIC of the VM (net0..net31).
        #[arg(long)]
        iface: Option<String>,
        #[arg(long)]
        comment: Option<String>,
        /// Position in the list (0 = first).
        #[arg(long)]
        pos: Option<u32>,
        /// Store the rule without activating it.
        #[arg(long)]
        disabled: bool,
    },
    /// Delete the rule at POS (see `rules list`).
    #[command(after_help = "Examples:
  gpvectl firewall rules delete 0
  gpvectl firewall rules delete 2 --vm 100")]
    Delete {
        pos: u32,
        #[command(flatten)]
        scope: ScopeArgs,
    },
}

async fn scope(client: &Client, args: ScopeArgs) -> anyhow::Result<FirewallScope> {
    Ok(match args.vm {
        None => FirewallScope::Cluster,
        Some(vmid) => FirewallScope::Vm {
            node: crate::vm::node_or_first(client, args.node).await?,
            vmid,
        },
    })
}

async fn apply(client: &Client, node: &str) -> anyhow::Result<()> {
    let upid = client.apply_network(node).await?;
    let status = client.wait_task(&upid, APPLY_WAIT_MS).await?;
    match status.exitstatus.as_deref() {
        Some("OK") => {
            println!("network configuration of {node} applied");
            Ok(())
        }
        other => anyhow::bail!(
            "applying the network of {node} failed: {}",
            other.unwrap_or("?")
        ),
    }
}

pub async fn run_network(
    client: &Client,
    cmd: NetworkCommand,
    format: Format,
) -> anyhow::Result<()> {
    match cmd {
        NetworkCommand::List { node } => {
            let node = crate::vm::node_or_first(client, node).await?;
            let list = client.network_ifaces(&node).await?;
            output::print(format, &list, "bridges", || Table {
                headers: vec!["IFACE", "TYPE", "CIDR", "MTU", "PORTS", "ACTIVE", "PENDING"],
                rows: list
                    .iter()
                    .map(|i| {
                        vec![
                            i.iface.clone(),
                            i.iface_type.clone(),
                            output::opt(i.cidr.as_deref()),
                            i.mtu.map_or_else(output::dash, |m| m.to_string()),
                            output::opt(i.bridge_ports.as_deref()),
                            yes_no(i.active),
                            yes_no(i.pending),
                        ]
                    })
                    .collect(),
            })
        }
        NetworkCommand::Create {
            iface,
            cidr,
            mtu,
            ports,
            comment,
            no_apply,
            node,
        } => {
            let node = crate::vm::node_or_first(client, node).await?;
            let spec = BridgeSpec {
                cidr,
                mtu,
                bridge_ports: ports,
                comments: comment,
            };
            client
                .create_bridge(&node, &iface, &spec)
                .await
                .with_context(|| format!("cannot create {iface}"))?;
            if no_apply {
                println!("{iface} staged; run `gpvectl network apply` to apply");
                Ok(())
            } else {
                apply(client, &node).await
            }
        }
        NetworkCommand::Delete {
            iface,
            no_apply,
            node,
        } => {
            let node = crate::vm::node_or_first(client, node).await?;
            client
                .delete_iface(&node, &iface)
                .await
                .with_context(|| format!("cannot delete {iface}"))?;
            if no_apply {
                println!("deletion of {iface} staged; run `gpvectl network apply` to apply");
                Ok(())
            } else {
                apply(client, &node).await
            }
        }
        NetworkCommand::Apply { node } => {
            let node = crate::vm::node_or_first(client, node).await?;
            apply(client, &node).await
        }
        NetworkCommand::Revert { node } => {
            let node = crate::vm::node_or_first(client, node).await?;
            client.revert_network(&node).await?;
            println!("staged network changes of {node} dropped");
            Ok(())
        }
    }
}

fn yes_no(v: u8) -> String {
    if v == 1 { "yes".into() } else { "no".into() }
}

pub async fn run_firewall(
    client: &Client,
    cmd: FirewallCommand,
    format: Format,
) -> anyhow::Result<()> {
    match cmd {
        FirewallCommand::Rules { what } => run_rules(client, what, format).await,
        FirewallCommand::Enable {
            scope: s,
            policy_in,
            policy_out,
        } => {
            let s = scope(client, s).await?;
            let opts = FirewallOptions {
                enable: Some(1),
                policy_in,
                policy_out,
            };
            client.set_firewall_options(&s, &opts).await?;
            println!("firewall enabled");
            Ok(())
        }
        FirewallCommand::Disable { scope: s } => {
            let s = scope(client, s).await?;
            let opts = FirewallOptions {
                enable: Some(0),
                ..FirewallOptions::default()
            };
            client.set_firewall_options(&s, &opts).await?;
            println!("firewall disabled");
            Ok(())
        }
    }
}

async fn run_rules(client: &Client, cmd: RulesCommand, format: Format) -> anyhow::Result<()> {
    match cmd {
        RulesCommand::List { scope: s } => {
            let s = scope(client, s).await?;
            let list = client.firewall_rules(&s).await?;
            output::print(format, &list, "rules", || Table {
                headers: vec![
                    "POS", "TYPE", "ACTION", "MACRO", "PROTO", "SOURCE", "DEST", "DPORT", "ON",
                    "COMMENT",
                ],
                rows: list
                    .iter()
                    .map(|r| {
                        vec![
                            r.pos.map_or_else(output::dash, |p| p.to_string()),
                            r.rule_type.clone(),
                            r.action.clone(),
                            output::opt(r.macro_name.as_deref()),
                            output::opt(r.proto.as_deref()),
                            output::opt(r.source.as_deref()),
                            output::opt(r.dest.as_deref()),
                            output::opt(r.dport.as_deref()),
                            yes_no(r.enable),
                            output::opt(r.comment.as_deref()),
                        ]
                    })
                    .collect(),
            })
        }
        RulesCommand::Add {
            scope: s,
            direction,
            action,
            group,
            macro_name,
            proto,
            source,
            dest,
            dport,
            sport,
            iface,
            comment,
            pos,
            disabled,
        } => {
            let s = scope(client, s).await?;
            let (rule_type, action) = match group {
                Some(g) => ("group".to_string(), g),
                None => (
                    direction.context("--direction is required")?,
                    action.context("--action is required")?,
                ),
            };
            let rule = FirewallRule {
                pos,
                rule_type,
                action,
                macro_name,
                proto,
                source,
                dest,
                dport,
                sport,
                iface,
                comment,
                enable: u8::from(!disabled),
            };
            client.add_firewall_rule(&s, &rule).await?;
            println!("rule added");
            Ok(())
        }
        RulesCommand::Delete { pos, scope: s } => {
            let s = scope(client, s).await?;
            client.delete_firewall_rule(&s, pos).await?;
            println!("rule {pos} deleted");
            Ok(())
        }
    }
}
