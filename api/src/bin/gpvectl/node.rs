//! `gpvectl node list|cordon|uncordon|drain`: the cluster's nodes.

use clap::Subcommand;
use gpve_api::client::Client;
use gpve_api::client::watch::WatchKind;
use serde_json::Value;

use crate::output::{self, Format, Table};

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Every node: the server's own and each joined agent, with its liveness (online,
    /// offline: lease expired, unknown: not heard since the server started).
    #[command(after_help = "Examples:
  gpvectl node list
  gpvectl node list -o json
  gpvectl node list -w")]
    List {
        /// After the list, print each change (joined, left, online, offline, cordoned)
        /// as it happens, until Ctrl-C.
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Keep new VMs off a joined node (running VMs stay).
    #[command(after_help = "Examples:
  gpvectl node cordon node2")]
    Cordon { node: String },
    /// Let a cordoned node take new VMs again.
    #[command(after_help = "Examples:
  gpvectl node uncordon node2")]
    Uncordon { node: String },
    /// Cordon a node, then migrate every VM off it (running ones live, stopped ones
    /// offline), following the progress; exits non-zero if any VM stayed.
    ///
    /// Without --to, the scheduler picks each VM's node among the online, uncordoned
    /// nodes. Each VM's migration is its own task (see `gpvectl get tasks`). The node
    /// stays cordoned afterwards: `gpvectl node uncordon NODE` when maintenance is done.
    #[command(after_help = "Examples:
  gpvectl node drain node2
  gpvectl node drain node2 --to node3 --max-workers 2")]
    Drain {
        node: String,
        /// Send every VM to this node instead of letting the scheduler choose.
        #[arg(long)]
        to: Option<String>,
        /// Migrations run at the same time (1-64).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=64))]
        max_workers: u8,
    },
}

pub async fn run(client: &Client, cmd: NodeCommand, format: Format) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::List { watch } => {
            let watching = match watch {
                true => Some(crate::watch::open(client, WatchKind::Node, None).await?),
                false => None,
            };
            let nodes: Vec<Value> = client
                .get(
                    "/nodes",
                    &std::collections::BTreeMap::<String, String>::new(),
                )
                .await?;
            output::print(format, &nodes, "nodes", || Table {
                headers: vec!["NAME", "STATUS", "CORDONED", "CPU", "MEMORY", "UPTIME"],
                rows: nodes
                    .iter()
                    .map(|n| {
                        vec![
                            n["node"].as_str().unwrap_or("").to_string(),
                            n["status"].as_str().unwrap_or("").to_string(),
                            if n["cordoned"].as_u64() == Some(1) {
                                "yes"
                            } else {
                                "no"
                            }
                            .to_string(),
                            output::percent(n["cpu"].as_f64()),
                            output::used_of(n["mem"].as_u64(), n["maxmem"].as_u64()),
                            output::duration(n["uptime"].as_u64()),
                        ]
                    })
                    .collect(),
            })?;
            match watching {
                Some(stream) => crate::watch::follow(stream, format).await,
                None => Ok(()),
            }
        }
        NodeCommand::Cordon { node } => {
            client.cordon_node(&node).await?;
            println!("node {node} cordoned");
            Ok(())
        }
        NodeCommand::Uncordon { node } => {
            client.uncordon_node(&node).await?;
            println!("node {node} uncordoned");
            Ok(())
        }
        NodeCommand::Drain {
            node,
            to,
            max_workers,
        } => {
            // The server's own node cannot be cordoned: drain it all the same.
            match client.cordon_node(&node).await {
                Ok(_) => eprintln!("node {node} cordoned"),
                Err(e) if e.status() == Some(400) => eprintln!("note: {e}; not cordoned"),
                Err(e) => return Err(e.into()),
            }
            let mut params = serde_json::json!({ "max-workers": max_workers });
            if let Some(t) = &to {
                params["target"] = serde_json::json!(t);
            }
            let upid: String = client
                .post(&format!("/nodes/{node}/migrateall"), &params)
                .await?;
            eprintln!("draining node {node}: {upid}");
            crate::vm::follow(client, &upid).await?;
            println!("node {node} drained");
            Ok(())
        }
    }
}
