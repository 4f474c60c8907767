//! `--watch`/`-w` of `vm list`, `node list` and `get tasks`: the list, then one line per
//! change as it commits, until Ctrl-C (like `kubectl get -w`).
//!
//! The stream is opened before the list is read, so no change between the two is lost
//! (one may show twice: in the list and as a line).

use std::io::Write;

use anyhow::Context;
use futures::StreamExt;
use gpve_api::client::Client;
use gpve_api::client::watch::{WatchAction, WatchEvent, WatchKind, WatchOptions, WatchStream};

use crate::output::Format;

/// Opens the watch for `kind` (on `node` only, if given).
pub async fn open(
    client: &Client,
    kind: WatchKind,
    node: Option<&str>,
) -> anyhow::Result<WatchStream> {
    let mut opts = WatchOptions::kinds(&[kind]);
    opts.node = node.map(str::to_string);
    client
        .watch(&opts)
        .await
        .context("cannot open the watch stream")
}

fn action(a: WatchAction) -> &'static str {
    match a {
        WatchAction::Added => "ADDED",
        WatchAction::Modified => "MODIFIED",
        WatchAction::Deleted => "DELETED",
        WatchAction::Synced => "SYNCED",
    }
}

/// One line of table output: ACTION, ID, NODE, STATUS, then what names the object.
pub fn line(e: &WatchEvent) -> String {
    let text = |k: &str| e.data[k].as_str().unwrap_or("").to_string();
    let detail = match e.kind {
        Some(WatchKind::Vm) => {
            let mut d = text("name");
            if let Some(lock) = e.data["lock"].as_str() {
                d.push_str(&format!(" lock={lock}"));
            }
            d
        }
        Some(WatchKind::Task) => format!("{} {} {}", text("type"), text("id"), text("user")),
        Some(WatchKind::Node) => {
            if e.data["cordoned"].as_u64() == Some(1) {
                "cordoned".into()
            } else {
                String::new()
            }
        }
        None => String::new(),
    };
    format!(
        "{:<9} {:<10} {:<10} {:<10} {}",
        action(e.action),
        e.id,
        e.node,
        e.status,
        detail
    )
    .trim_end()
    .to_string()
}

/// Prints every event until the stream fails (Ctrl-C ends the process).
pub async fn follow(mut stream: WatchStream, format: Format) -> anyhow::Result<()> {
    while let Some(event) = stream.next().await {
        let event = event.context("the watch stream ended")?;
        let mut out = std::io::stdout().lock();
        match format {
            Format::Table => writeln!(out, "{}", line(&event))?,
            Format::Json => {
                serde_json::to_writer(&mut out, &event).context("cannot write JSON")?;
                writeln!(out)?;
            }
            Format::Yaml => {
                let text = serde_yaml::to_string(&event).context("cannot write YAML")?;
                write!(out, "---\n{text}")?;
            }
        }
        // Each change must reach a pipe reader at once.
        out.flush()?;
    }
    anyhow::bail!("the server closed the watch stream")
}
