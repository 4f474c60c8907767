//! `gpvectl storage list|get|create|delete` and `gpvectl volume list|create|delete|snapshot`.

use anyhow::Context;
use clap::Subcommand;
use gpve_api::client::Client;
use gpve_api::client::storage::{StorageSpec, VolumeSpec};

use crate::output::{self, Format, Table};

/// How long `volume delete` waits for its task.
const DELETE_WAIT_MS: u64 = 10 * 60 * 1000;

#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Storages of a node with their status (or every storage's configuration with
    /// --cluster).
    #[command(after_help = "Examples:
  gpvectl storage list --node pve1
  gpvectl storage list --cluster -o yaml")]
    List {
        /// Node whose view to show (status, space); defaults to the first node.
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        /// Show the cluster-wide configuration instead of one node's status.
        #[arg(long)]
        cluster: bool,
    },
    /// One storage's configuration.
    Get { storage: String },
    /// Create a storage.
    #[command(after_help = "Examples:
  gpvectl storage create fast --type btrfs --path /mnt/btrfs/pve --content images,iso
  gpvectl storage create nas --type dir --path /mnt/nas --shared --nodes pve1,pve2")]
    Create {
        storage: String,
        /// dir or btrfs.
        #[arg(long = "type", value_name = "TYPE")]
        storage_type: String,
        #[arg(long, value_name = "DIR")]
        path: String,
        /// Comma-separated: images, iso, backup, snippets.
        #[arg(long, value_name = "LIST")]
        content: Option<String>,
        /// Comma-separated nodes the storage is available on.
        #[arg(long, value_name = "LIST")]
        nodes: Option<String>,
        #[arg(long)]
        shared: bool,
        #[arg(long)]
        disable: bool,
    },
    /// Delete a storage's configuration (its data stays on disk).
    Delete { storage: String },
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Volumes of a storage.
    #[command(after_help = "Examples:
  gpvectl volume list local
  gpvectl volume list local --content images --vmid 100")]
    List {
        storage: String,
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        #[arg(long, value_name = "TYPE")]
        content: Option<String>,
        #[arg(long)]
        vmid: Option<u32>,
    },
    /// Allocate a disk image; prints its volume id.
    #[command(after_help = "Examples:
  gpvectl volume create local --vmid 100 --size 32G --format qcow2
  gpvectl volume create local --vmid 100 --size 512M --name vm-100-data")]
    Create {
        storage: String,
        #[arg(long)]
        vmid: u32,
        /// Proxmox size: KiB, or with suffix M or G.
        #[arg(long)]
        size: String,
        /// raw or qcow2 (dir storages).
        #[arg(long)]
        format: Option<String>,
        /// vm-VMID-NAME; default: the next free vm-VMID-disk-N.
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
    },
    /// Delete a volume and wait for the task (refused while a VM uses it).
    Delete {
        /// Volume id, e.g. local:100/vm-100-disk-0.qcow2.
        volume: String,
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
    },
    /// Snapshot a volume (no VM may have it open), or list its snapshots with --list.
    #[command(after_help = "Examples:
  gpvectl volume snapshot local:100/vm-100-disk-0.qcow2 before-upgrade
  gpvectl volume snapshot local:100/vm-100-disk-0.qcow2 --list")]
    Snapshot {
        volume: String,
        /// Snapshot name (a letter, then letters, digits, - or _).
        #[arg(required_unless_present = "list")]
        name: Option<String>,
        #[arg(long)]
        list: bool,
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
    },
}

/// The node to talk to: the one given, else the first the server lists.
async fn node_or_first(client: &Client, node: Option<String>) -> anyhow::Result<String> {
    if let Some(n) = node {
        return Ok(n);
    }
    let nodes = client.nodes().await?;
    nodes
        .into_iter()
        .next()
        .map(|n| n.node)
        .context("the server lists no nodes; pass --node")
}

/// `STORAGE:...` → `STORAGE`.
fn storage_of(volume: &str) -> anyhow::Result<&str> {
    volume
        .split_once(':')
        .map(|(s, _)| s)
        .filter(|s| !s.is_empty())
        .with_context(|| format!("'{volume}' is not a volume id (STORAGE:NAME)"))
}

fn flag(v: Option<u8>) -> String {
    match v {
        Some(1) => "yes".into(),
        Some(_) => "no".into(),
        None => output::dash(),
    }
}

pub async fn run_storage(
    client: &Client,
    cmd: StorageCommand,
    format: Format,
) -> anyhow::Result<()> {
    match cmd {
        StorageCommand::List {
            node: _,
            cluster: true,
        } => {
            let list = client.storages().await?;
            output::print(format, &list, "storages", || Table {
                headers: vec![
                    "STORAGE", "TYPE", "PATH", "CONTENT", "SHARED", "NODES", "DISABLED",
                ],
                rows: list
                    .iter()
                    .map(|s| {
                        vec![
                            s.storage.clone(),
                            s.storage_type.clone(),
                            output::opt(s.path.as_deref()),
                            output::opt(s.content.as_deref()),
                            flag(s.shared),
                            s.nodes.clone().unwrap_or_else(|| "all".into()),
                            flag(Some(s.disable.unwrap_or(0))),
                        ]
                    })
                    .collect(),
            })
        }
        StorageCommand::List {
            node,
            cluster: false,
        } => {
            let node = node_or_first(client, node).await?;
            let list = client.node_storages(&node).await?;
            output::print(format, &list, "storages", || Table {
                headers: vec![
                    "STORAGE", "TYPE", "CONTENT", "ACTIVE", "ENABLED", "USED", "AVAIL", "TOTAL",
                ],
                rows: list
                    .iter()
                    .map(|s| {
                        vec![
                            s.storage.clone(),
                            s.storage_type.clone(),
                            output::opt(s.content.as_deref()),
                            flag(s.active),
                            flag(s.enabled),
                            output::bytes(s.used),
                            output::bytes(s.avail),
                            output::bytes(s.total),
                        ]
                    })
                    .collect(),
            })
        }
        StorageCommand::Get { storage } => {
            let s = client
                .storage(&storage)
                .await
                .with_context(|| format!("reading storage {storage}"))?;
            output::print(format, &s, "storage", || Table {
                headers: vec![
                    "STORAGE", "TYPE", "PATH", "CONTENT", "SHARED", "NODES", "DISABLED",
                ],
                rows: vec![vec![
                    s.storage.clone(),
                    s.storage_type.clone(),
                    output::opt(s.path.as_deref()),
                    output::opt(s.content.as_deref()),
                    flag(s.shared),
                    s.nodes.clone().unwrap_or_else(|| "all".into()),
                    flag(Some(s.disable.unwrap_or(0))),
                ]],
            })
        }
        StorageCommand::Create {
            storage,
            storage_type,
            path,
            content,
            nodes,
            shared,
            disable,
        } => {
            let spec = StorageSpec {
                storage_type: Some(storage_type),
                path: Some(path),
                content,
                shared: shared.then_some(1),
                nodes,
                disable: disable.then_some(1),
            };
            client
                .create_storage(&storage, &spec)
                .await
                .with_context(|| format!("creating storage {storage}"))?;
            println!("storage/{storage} created");
            Ok(())
        }
        StorageCommand::Delete { storage } => {
            client
                .delete_storage(&storage)
                .await
                .with_context(|| format!("deleting storage {storage}"))?;
            println!("storage/{storage} deleted");
            Ok(())
        }
    }
}

pub async fn run_volume(client: &Client, cmd: VolumeCommand, format: Format) -> anyhow::Result<()> {
    match cmd {
        VolumeCommand::List {
            storage,
            node,
            content,
            vmid,
        } => {
            let node = node_or_first(client, node).await?;
            let list = client
                .volumes(&node, &storage, content.as_deref(), vmid)
                .await
                .with_context(|| format!("listing volumes of {storage}"))?;
            output::print(format, &list, "volumes", || Table {
                headers: vec!["VOLUME", "CONTENT", "FORMAT", "SIZE", "USED", "VMID"],
                rows: list
                    .iter()
                    .map(|v| {
                        vec![
                            v.volid.clone(),
                            v.content.clone(),
                            v.format.clone(),
                            output::bytes(Some(v.size)),
                            output::bytes(v.used),
                            v.vmid.map(|n| n.to_string()).unwrap_or_else(output::dash),
                        ]
                    })
                    .collect(),
            })
        }
        VolumeCommand::Create {
            storage,
            vmid,
            size,
            format: disk_format,
            name,
            node,
        } => {
            let node = node_or_first(client, node).await?;
            let spec = VolumeSpec {
                vmid,
                filename: name.unwrap_or_default(),
                size,
                format: disk_format,
            };
            let volid = client
                .allocate_volume(&node, &storage, &spec)
                .await
                .with_context(|| format!("allocating a disk on {storage}"))?;
            println!("{volid}");
            let _ = format;
            Ok(())
        }
        VolumeCommand::Delete { volume, node } => {
            let node = node_or_first(client, node).await?;
            let storage = storage_of(&volume)?;
            let upid = client
                .delete_volume(&node, storage, &volume)
                .await
                .with_context(|| format!("deleting {volume}"))?;
            client
                .wait_task(&upid, DELETE_WAIT_MS)
                .await
                .with_context(|| format!("deleting {volume}"))?;
            println!("{volume} deleted");
            Ok(())
        }
        VolumeCommand::Snapshot {
            volume,
            name,
            list,
            node,
        } => {
            let node = node_or_first(client, node).await?;
            let storage = storage_of(&volume)?;
            if list {
                let snaps = client.volume_snapshots(&node, storage, &volume).await?;
                return output::print(format, &snaps, "snapshots", || Table {
                    headers: vec!["SNAPSHOT", "CREATED (UNIX S)"],
                    rows: snaps
                        .iter()
                        .map(|s| {
                            vec![
                                s.name.clone(),
                                s.snaptime
                                    .map(|t| t.to_string())
                                    .unwrap_or_else(output::dash),
                            ]
                        })
                        .collect(),
                });
            }
            let name = name.context("a snapshot name is needed")?;
            client
                .snapshot_volume(&node, storage, &volume, &name)
                .await
                .with_context(|| format!("snapshotting {volume}"))?;
            println!("{volume}@{name} created");
            Ok(())
        }
    }
}
