//! `gpvectl actors tree` and `gpvectl actors describe PATH`.

use anyhow::Context;
use clap::Subcommand;
use gpve_api::client::{ActorDetail, ActorView, Client};

use crate::output::{self, Format, Table};

#[derive(Debug, Subcommand)]
pub enum ActorsCommand {
    /// The supervision tree of every node (indented), with state, mailbox depth, message
    /// rate, restarts and uptime.
    #[command(after_help = "Examples:
  gpvectl actors tree
  gpvectl actors tree --node pve1 -o yaml")]
    Tree {
        /// Only this node.
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
    },
    /// One actor: its counters, children, restarts with their reasons and last failure.
    #[command(after_help = "Examples:
  gpvectl actors describe gpve-server/node:pve1
  gpvectl actors describe gpve-server/store -o json
  gpvectl actors describe gpve-server/qemu/vm:100 --node n1")]
    Describe {
        /// Actor path as `actors tree` shows it (e.g. gpve-server/store).
        path: String,
        /// The node running it (default: the server's own node).
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
    },
    /// Have an actor's supervisor restart it (administrators only; counts towards the
    /// supervisor's restart intensity like a failure).
    #[command(after_help = "Examples:
  gpvectl actors restart gpve-server/store
  gpvectl actors restart gpve-server/qemu/vm:100 --node n1")]
    Restart {
        /// Actor path.
        path: String,
        /// The node running it (default: the server's own node).
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
    },
    /// Have an actor's supervisor stop it and forget it (administrators only).
    Stop {
        /// Actor path.
        path: String,
        /// The node running it (default: the server's own node).
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
    },
}

fn rate(v: f64) -> String {
    format!("{v:.1}")
}

/// Local time is unknown to a static binary without tz data: show UTC.
pub fn utc_hms(at_ms: u64) -> String {
    let s = (at_ms / 1_000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3_600, (s / 60) % 60, s % 60)
}

fn row(depth: usize, a: &ActorView) -> Vec<String> {
    vec![
        format!("{}{}", "  ".repeat(depth), a.id),
        a.kind.clone(),
        format!("{:?}", a.state).to_lowercase(),
        a.mailbox_depth.to_string(),
        rate(a.msgs_per_s),
        a.restarts.to_string(),
        output::duration(a.uptime_s),
    ]
}

pub async fn run(client: &Client, cmd: ActorsCommand, format: Format) -> anyhow::Result<()> {
    match cmd {
        ActorsCommand::Tree { node } => {
            let list = client.actors(node.as_deref()).await?;
            output::print(format, &list, "actors", || {
                let mut rows = Vec::new();
                for n in &list.nodes {
                    if let Some(e) = &n.error {
                        let mut r = vec![String::new(); 7];
                        r[0] = format!("(unreachable: {e})");
                        r.insert(0, n.node.clone());
                        rows.push(r);
                    }
                    for root in &n.roots {
                        for (depth, a) in root.flatten() {
                            let mut r = row(depth, a);
                            r.insert(0, n.node.clone());
                            rows.push(r);
                        }
                    }
                }
                Table {
                    headers: vec![
                        "NODE", "ACTOR", "KIND", "STATE", "MAILBOX", "MSGS/S", "RESTARTS", "UPTIME",
                    ],
                    rows,
                }
            })
        }
        ActorsCommand::Restart { path, node } => {
            let r = client
                .restart_actor_on(node.as_deref(), &path)
                .await
                .with_context(|| format!("restarting actor {path}"))?;
            output::print(format, &r, "actor", || Table {
                headers: vec!["ACTOR", "ACTION", "HOW", "RESTARTS BEFORE"],
                rows: vec![vec![
                    r.path.clone(),
                    r.action.clone(),
                    r.how.clone(),
                    r.restarts_before.to_string(),
                ]],
            })
        }
        ActorsCommand::Stop { path, node } => {
            let r = client
                .stop_actor_on(node.as_deref(), &path)
                .await
                .with_context(|| format!("stopping actor {path}"))?;
            output::print(format, &r, "actor", || Table {
                headers: vec!["ACTOR", "ACTION", "HOW"],
                rows: vec![vec![r.path.clone(), r.action.clone(), r.how.clone()]],
            })
        }
        ActorsCommand::Describe { path, node } => {
            let detail = client
                .actor_on(node.as_deref(), &path)
                .await
                .with_context(|| format!("describing actor {path}"))?;
            match format {
                Format::Table => {
                    print!("{}", describe_text(&detail));
                    Ok(())
                }
                other => output::print(other, &detail, "actor", || Table {
                    headers: Vec::new(),
                    rows: Vec::new(),
                }),
            }
        }
    }
}

/// `kubectl describe`-style text of one actor (also the console's detail pane).
pub fn describe_text(d: &ActorDetail) -> String {
    let a = &d.actor;
    let mut out = String::new();
    let mut field = |k: &str, v: String| out.push_str(&format!("{k:<18}{v}\n"));
    field("Path:", a.path.clone());
    field("Kind:", a.kind.clone());
    field("Id:", a.id.clone());
    field("Node:", a.node.clone());
    field("Parent:", output::opt(a.parent.as_deref()));
    field("State:", format!("{:?}", a.state).to_lowercase());
    field("Mailbox depth:", a.mailbox_depth.to_string());
    field("Messages handled:", a.messages_handled.to_string());
    field("Messages/s:", rate(a.msgs_per_s));
    field("Restarts:", a.restarts.to_string());
    field("Uptime:", output::duration(a.uptime_s));
    field(
        "Owns:",
        if a.owns.is_empty() {
            output::dash()
        } else {
            a.owns
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        },
    );
    field(
        "Last failure:",
        a.last_failure
            .as_ref()
            .map(|f| format!("{} UTC  {}", utc_hms(f.at_ms), f.reason))
            .unwrap_or_else(output::dash),
    );
    field(
        "Children:",
        if d.children.is_empty() {
            output::dash()
        } else {
            d.children.join(", ")
        },
    );
    out.push_str("Recent restarts:\n");
    if d.recent_restarts.is_empty() {
        out.push_str("  <none>\n");
    }
    for r in d.recent_restarts.iter().rev() {
        out.push_str(&format!("  {} UTC  {}\n", utc_hms(r.at_ms), r.reason));
    }
    out
}
