//! `gpvectl ha add|remove|status`: HA resources (`/cluster/ha`). `node drain` is not here:
//! it needs live migration.

use std::collections::BTreeMap;

use clap::Subcommand;
use gpve_api::client::Client;
use serde_json::Value;

use crate::output::{self, Format, Table};

#[derive(Debug, Subcommand)]
pub enum HaCommand {
    /// Put a VM under HA: it is kept running, restarted on its node up to
    /// --max-restart times, then relocated up to --max-relocate times.
    #[command(after_help = "Examples:
  gpvectl ha add 100
  gpvectl ha add vm:101 --max-restart 2 --max-relocate 1 --group prod")]
    Add {
        /// VMID or `vm:VMID`.
        sid: String,
        /// started (default), stopped, disabled or ignored.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        max_restart: Option<u32>,
        #[arg(long)]
        max_relocate: Option<u32>,
        /// HA group (preferred nodes).
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Stop managing a VM (it keeps running where it is).
    #[command(after_help = "Examples:
  gpvectl ha remove 100")]
    Remove { sid: String },
    /// Every HA resource with its node, state, generation, restarts and relocations.
    #[command(after_help = "Examples:
  gpvectl ha status
  gpvectl ha status -o json")]
    Status,
}

fn sid(s: &str) -> String {
    if s.contains(':') {
        s.to_string()
    } else {
        format!("vm:{s}")
    }
}

pub async fn run(client: &Client, cmd: HaCommand, format: Format) -> anyhow::Result<()> {
    match cmd {
        HaCommand::Add {
            sid: s,
            state,
            max_restart,
            max_relocate,
            group,
            comment,
        } => {
            let s = sid(&s);
            let mut p = BTreeMap::new();
            p.insert("sid".to_string(), s.clone());
            let optional = [
                ("state", state),
                ("max_restart", max_restart.map(|n| n.to_string())),
                ("max_relocate", max_relocate.map(|n| n.to_string())),
                ("group", group),
                ("comment", comment),
            ];
            for (k, v) in optional {
                if let Some(v) = v {
                    p.insert(k.to_string(), v);
                }
            }
            let _: Value = client.post("/cluster/ha/resources", &p).await?;
            println!("{s} is managed by HA");
            Ok(())
        }
        HaCommand::Remove { sid: s } => {
            let s = sid(&s);
            let _: Value = client
                .delete(
                    &format!("/cluster/ha/resources/{s}"),
                    &BTreeMap::<String, String>::new(),
                )
                .await?;
            println!("{s} is no longer managed by HA");
            Ok(())
        }
        HaCommand::Status => {
            let all: Vec<Value> = client
                .get(
                    "/cluster/ha/status/current",
                    &BTreeMap::<String, String>::new(),
                )
                .await?;
            let services: Vec<Value> = all.into_iter().filter(|e| e["type"] == "service").collect();
            output::print(format, &services, "services", || Table {
                headers: vec![
                    "SID",
                    "NODE",
                    "STATE",
                    "REQUEST",
                    "GENERATION",
                    "RESTARTS",
                    "RELOCATIONS",
                    "ERROR",
                ],
                rows: services
                    .iter()
                    .map(|s| {
                        let text = |k: &str| s[k].as_str().unwrap_or("").to_string();
                        let num = |k: &str| s[k].as_u64().map_or(String::new(), |n| n.to_string());
                        vec![
                            text("sid"),
                            text("node"),
                            text("state"),
                            text("request_state"),
                            num("generation"),
                            num("restarts"),
                            num("relocations"),
                            text("last_error"),
                        ]
                    })
                    .collect(),
            })
        }
    }
}
