//! `gpvectl node list|cordon|uncordon`: the cluster's nodes. (`drain` needs live
//! migration, which gpve does not have yet.)

use clap::Subcommand;
use gpve_api::client::Client;
use serde_json::Value;

use crate::output::{self, Format, Table};

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Every node: the server's own and each joined agent, with its liveness (online,
    /// offline: lease expired, unknown: not heard since the server started).
    #[command(after_help = "Examples:
  gpvectl node list
  gpvectl node list -o json")]
    List,
    /// Keep new VMs off a joined node (running VMs stay).
    #[command(after_help = "Examples:
  gpvectl node cordon node2")]
    Cordon { node: String },
    /// Let a cordoned node take new VMs again.
    #[command(after_help = "Examples:
  gpvectl node uncordon node2")]
    Uncordon { node: String },
}

pub async fn run(client: &Client, cmd: NodeCommand, format: Format) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::List => {
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
            })
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
    }
}
