//! `gpvectl vm list|get|create|start|stop|shutdown|reboot|suspend|resume|delete|clone|snapshot|
//! resize|move-disk|migrate`:
//! VMs through the Proxmox API, waiting on each task and printing its log as it runs.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use gpve_api::client::Client;
use gpve_api::client::vm::{VmAction, VmEntry};
use gpve_api::client::watch::WatchKind;

use crate::output::{self, Format, Table};

/// How long a command waits for its task.
const TASK_WAIT_MS: u64 = 30 * 60 * 1000;
const TASK_POLL_MS: u64 = 300;
/// Log lines fetched per poll.
const LOG_PAGE_LINES: u64 = 500;

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// VMs of a node.
    #[command(after_help = "Examples:
  gpvectl vm list
  gpvectl vm list --node pve1 -o json
  gpvectl vm list -w")]
    List {
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        /// After the list, print each change (created, started, stopped, moved, locked,
        /// deleted) as it happens, until Ctrl-C.
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// One VM's status and configuration (by VMID or name); with -o yaml or -o json, the
    /// VM's gpve.io/v1 manifest when it is in the namespace (see `gpvectl apply`).
    #[command(after_help = "Examples:
  gpvectl vm get web1
  gpvectl vm get web1 -o yaml > web1.yaml   # edit, then: gpvectl apply -f web1.yaml
  gpvectl vm get web1 -n staging -o json")]
    Get {
        vm: String,
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        /// Namespace of the manifest (-o yaml/json).
        #[arg(short = 'n', long, value_name = "NAMESPACE", default_value = "default")]
        namespace: String,
    },
    /// Create a VM (and optionally start it).
    #[command(after_help = "Examples:
  gpvectl vm create web1 --cpu 2 --memory 1Gi --disk size=4Gi,storage=local
  gpvectl vm create web2 --memory 2Gi --disk size=8Gi,storage=local \\
      --network bridge=vmbr0,firewall=1 --network bridge=vmbr1,model=e1000
  gpvectl vm create t1 --memory 128Mi --tcg --kernel /boot/vmlinuz --initrd /boot/initrd.img \\
      --append 'console=ttyS0' --start")]
    Create {
        name: String,
        /// vCPUs (cores of one socket).
        #[arg(long, default_value_t = 1)]
        cpu: u32,
        /// Memory, e.g. 512Mi, 1Gi (a bare number is MiB).
        #[arg(long, default_value = "512Mi")]
        memory: String,
        /// A disk: size=SIZE,storage=STORAGE[,bus=scsi|virtio|sata|ide][,format=qcow2|raw];
        /// repeat for more disks.
        #[arg(long, value_name = "SPEC")]
        disk: Vec<String>,
        /// A NIC on a bridge (net0, net1, ... in order).
        #[arg(long, value_name = "BRIDGE")]
        bridge: Vec<String>,
        /// A NIC: bridge=BRIDGE[,model=virtio|e1000][,firewall=0|1]; repeat for more
        /// (after the --bridge ones).
        #[arg(long, value_name = "SPEC")]
        network: Vec<String>,
        /// Use this VMID instead of the next free one.
        #[arg(long)]
        vmid: Option<u32>,
        #[arg(long, value_name = "NODE")]
        node: Option<String>,
        /// Run under TCG (software emulation) instead of KVM.
        #[arg(long)]
        tcg: bool,
        /// Direct kernel boot (passed as the root-only `args`).
        #[arg(long, value_name = "FILE")]
        kernel: Option<String>,
        #[arg(long, value_name = "FILE", requires = "kernel")]
        initrd: Option<String>,
        #[arg(long, value_name = "CMDLINE", requires = "kernel")]
        append: Option<String>,
        /// Start the VM once created.
        #[arg(long)]
        start: bool,
    },
    /// Start a VM.
    Start {
        vm: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Stop a VM at once (like pulling the plug).
    Stop {
        vm: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// ACPI shutdown; with --force, stop it after --timeout seconds.
    Shutdown {
        vm: String,
        #[arg(long)]
        node: Option<String>,
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
        #[arg(long)]
        force: bool,
    },
    /// ACPI shutdown, then start again (forced stop if the guest ignores ACPI).
    Reboot {
        vm: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Pause the guest's vCPUs (QMP stop); memory stays in place.
    Suspend {
        vm: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Resume a suspended guest.
    Resume {
        vm: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Delete a stopped VM and its disks.
    Delete {
        vm: String,
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        purge: bool,
    },
    /// Copy a stopped VM or template into a new VM: a full copy of every disk, or with
    /// --linked a linked clone of a template (it shares the template's unchanged data: a
    /// qcow2 overlay on dir storage, a btrfs snapshot on btrfs; made in well under a
    /// second whatever the disk size). A template with linked clones cannot be deleted.
    #[command(after_help = "Examples:
  gpvectl vm clone web1 web2                  # full copy
  gpvectl vm clone 9000 web3 --newid 120      # full copy with a chosen VMID
  gpvectl vm clone debian-tpl web4 --linked   # linked clone of a template")]
    Clone {
        vm: String,
        /// Name of the new VM.
        name: String,
        #[arg(long)]
        newid: Option<u32>,
        /// Linked clone (the source must be a template; see `gpvectl vm template`).
        #[arg(long)]
        linked: bool,
        #[arg(long)]
        node: Option<String>,
    },
    /// Grow a disk. SIZE is +SIZE to grow by, or SIZE to grow to (K, M, G or T; a bare
    /// number is bytes). Disks only grow: shrinking is refused with the current size.
    /// The VM must be stopped for now; afterwards grow the partition inside the guest.
    #[command(after_help = "Examples:
  gpvectl vm resize web1 scsi0 +2G    # 2 GiB more
  gpvectl vm resize web1 scsi0 20G    # to 20 GiB")]
    Resize {
        vm: String,
        /// The disk key, as `gpvectl vm get` shows it (scsi0, virtio1, ...).
        disk: String,
        size: String,
        #[arg(long)]
        node: Option<String>,
    },
    /// Copy a disk of a stopped VM to another storage and switch the VM to the copy. The
    /// old volume stays as unusedN (reattach or delete it later) unless --delete. The
    /// format follows the source where the target storage holds it (btrfs holds raw).
    #[command(after_help = "Examples:
  gpvectl vm move-disk web1 scsi0 fast-btrfs
  gpvectl vm move-disk web1 scsi0 local --format qcow2 --delete")]
    MoveDisk {
        vm: String,
        /// The disk key (scsi0, virtio1, ...).
        disk: String,
        /// Target storage id (see `gpvectl storage list`).
        storage: String,
        /// Target format: raw or qcow2.
        #[arg(long)]
        format: Option<String>,
        /// Delete the old volume after the copy instead of keeping it as unusedN.
        #[arg(long)]
        delete: bool,
        #[arg(long)]
        node: Option<String>,
    },
    /// Move a VM to another node: live with --online when it runs (its disks must be on
    /// shared storage), else its configuration moves. Prints the migration log as it runs
    /// (progress, downtime).
    #[command(after_help = "Examples:
  gpvectl vm migrate web1 --to pve2 --online
  gpvectl vm migrate web1 --to pve2 --online --bwlimit 102400   # KiB/s")]
    Migrate {
        vm: String,
        /// Target node.
        #[arg(long, value_name = "NODE")]
        to: String,
        /// Live-migrate a running VM.
        #[arg(long)]
        online: bool,
        /// Bandwidth limit in KiB/s.
        #[arg(long, value_name = "KIB_S")]
        bwlimit: Option<u64>,
        #[arg(long)]
        node: Option<String>,
    },
    /// Take a snapshot (stopped VMs), list them with --list, or roll back with --rollback.
    #[command(after_help = "Examples:
  gpvectl vm snapshot web1 before-upgrade
  gpvectl vm snapshot web1 --list
  gpvectl vm snapshot web1 before-upgrade --rollback")]
    Snapshot {
        vm: String,
        name: Option<String>,
        #[arg(long)]
        list: bool,
        #[arg(long, requires = "name")]
        rollback: bool,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        node: Option<String>,
    },
}

/// `1Gi`, `512Mi`, `1G`, `1024` (MiB) → MiB.
pub fn parse_mib(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("Gi").or_else(|| s.strip_suffix('G')) {
        (n, 1024)
    } else if let Some(n) = s.strip_suffix("Mi").or_else(|| s.strip_suffix('M')) {
        (n, 1)
    } else if let Some(n) = s.strip_suffix("Ti").or_else(|| s.strip_suffix('T')) {
        (n, 1024 * 1024)
    } else {
        (s, 1)
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("'{s}' is not a size such as 512Mi or 4Gi"))?;
    n.checked_mul(mult).context("size too large")
}

/// `size=4Gi,storage=local[,bus=scsi][,format=qcow2]` → (`scsi`, `local:4,format=qcow2`).
pub fn parse_disk(spec: &str) -> anyhow::Result<(String, String)> {
    let mut size = None;
    let mut storage = None;
    let mut bus = "scsi".to_string();
    let mut format = None;
    for part in spec.split(',') {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("'{part}' in --disk is not key=value"))?;
        match k {
            "size" => size = Some(parse_mib(v)?),
            "storage" => storage = Some(v.to_string()),
            "bus" => bus = v.to_string(),
            "format" => format = Some(v.to_string()),
            other => bail!("unknown --disk key '{other}' (size, storage, bus, format)"),
        }
    }
    let mib = size.context("--disk needs size=")?;
    if mib % 1024 != 0 || mib == 0 {
        bail!("disk sizes are whole GiB (got {mib} MiB)");
    }
    let storage = storage.unwrap_or_else(|| "local".into());
    let mut value = format!("{storage}:{}", mib / 1024);
    if let Some(f) = format {
        value.push_str(&format!(",format={f}"));
    }
    Ok((bus, value))
}

/// `bridge=vmbr0[,model=virtio][,firewall=1]` → `virtio,bridge=vmbr0,firewall=1`.
pub fn parse_network(spec: &str) -> anyhow::Result<String> {
    let mut bridge = None;
    let mut model = "virtio".to_string();
    let mut firewall = false;
    for part in spec.split(',') {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("'{part}' in --network is not key=value"))?;
        match k {
            "bridge" => bridge = Some(v.to_string()),
            "model" => model = v.to_string(),
            "firewall" => {
                firewall = match v {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => bail!("--network firewall is 0 or 1, not '{v}'"),
                }
            }
            other => bail!("unknown --network key '{other}' (bridge, model, firewall)"),
        }
    }
    let bridge = bridge.context("--network needs bridge=")?;
    let mut value = format!("{model},bridge={bridge}");
    if firewall {
        value.push_str(",firewall=1");
    }
    Ok(value)
}

pub(crate) async fn node_or_first(client: &Client, node: Option<String>) -> anyhow::Result<String> {
    if let Some(n) = node {
        return Ok(n);
    }
    client
        .nodes()
        .await?
        .into_iter()
        .next()
        .map(|n| n.node)
        .context("the server lists no nodes; pass --node")
}

/// A VMID, or the VMID of the VM with that name.
async fn resolve(client: &Client, node: &str, vm: &str) -> anyhow::Result<u32> {
    if let Ok(id) = vm.parse::<u32>() {
        return Ok(id);
    }
    let vms = client.vms(node).await?;
    let matches: Vec<&VmEntry> = vms
        .iter()
        .filter(|v| v.name.as_deref() == Some(vm))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.vmid),
        [] => bail!("no VM named '{vm}' on node '{node}'"),
        _ => bail!("several VMs are named '{vm}'; use the VMID"),
    }
}

/// Wait for a task, printing its log lines as they appear.
pub async fn follow(client: &Client, upid: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(TASK_WAIT_MS);
    let mut seen = 0u64;
    loop {
        let status = client.task_status(upid).await?;
        let lines = client.task_log(upid, seen, LOG_PAGE_LINES).await?;
        for l in &lines {
            if l.n > seen {
                eprintln!("  {}", l.t);
                seen = l.n;
            }
        }
        if !status.is_running() {
            if status.succeeded() {
                return Ok(());
            }
            bail!(
                "task failed: {}",
                status.exitstatus.unwrap_or_else(|| "unknown".into())
            );
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("task {upid} still running after {TASK_WAIT_MS} ms");
        }
        tokio::time::sleep(Duration::from_millis(TASK_POLL_MS)).await;
    }
}

fn table(vms: &[VmEntry]) -> Table {
    Table {
        headers: vec![
            "VMID", "NAME", "STATUS", "CPUS", "MEMORY", "DISK", "PID", "UPTIME",
        ],
        rows: vms
            .iter()
            .map(|v| {
                vec![
                    v.vmid.to_string(),
                    output::opt(v.name.as_deref()),
                    v.qmpstatus.clone().unwrap_or_else(|| v.status.clone()),
                    v.cpus.map(|c| c.to_string()).unwrap_or_else(output::dash),
                    output::bytes(v.maxmem),
                    output::bytes(v.maxdisk),
                    v.pid.map(|p| p.to_string()).unwrap_or_else(output::dash),
                    output::duration(v.uptime),
                ]
            })
            .collect(),
    }
}

async fn action(
    client: &Client,
    node: Option<String>,
    vm: &str,
    what: VmAction,
    params: Vec<(String, String)>,
) -> anyhow::Result<()> {
    let node = node_or_first(client, node).await?;
    let vmid = resolve(client, &node, vm).await?;
    let upid = client.vm_action(&node, vmid, what, params).await?;
    eprintln!("{} VM {vmid}: {upid}", what.as_str());
    follow(client, &upid).await?;
    println!("VM {vmid}: {} done", what.as_str());
    Ok(())
}

pub async fn run(client: &Client, cmd: VmCommand, format: Format) -> anyhow::Result<()> {
    match cmd {
        VmCommand::List { node, watch } => {
            let node = node_or_first(client, node).await?;
            let watching = match watch {
                true => Some(crate::watch::open(client, WatchKind::Vm, Some(&node)).await?),
                false => None,
            };
            let vms = client.vms(&node).await?;
            output::print(format, &vms, "VMs", || table(&vms))?;
            match watching {
                Some(stream) => crate::watch::follow(stream, format).await,
                None => Ok(()),
            }
        }
        VmCommand::Get {
            vm,
            node,
            namespace,
        } => {
            if format != Format::Table {
                match client.virtual_machine(&namespace, &vm).await {
                    Ok(m) => return output::print(format, &m, "VMs", || table(&[])),
                    // Not in that namespace: show the Proxmox view below.
                    Err(e) if e.status() == Some(404) || e.status() == Some(400) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let node = node_or_first(client, node).await?;
            let vmid = resolve(client, &node, &vm).await?;
            let status = client.vm_status(&node, vmid).await?;
            let config = client.vm_config(&node, vmid).await?;
            match format {
                Format::Table => {
                    print!("{}", output::render(&table(std::slice::from_ref(&status))));
                    for (k, v) in &config {
                        let v = v
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string());
                        println!("{k}: {v}");
                    }
                    Ok(())
                }
                _ => output::print(
                    format,
                    &serde_json::json!({ "status": status, "config": config }),
                    "VMs",
                    || table(&[]),
                ),
            }
        }
        VmCommand::Create {
            name,
            cpu,
            memory,
            disk,
            bridge,
            network,
            vmid,
            node,
            tcg,
            kernel,
            initrd,
            append,
            start,
        } => {
            let node = node_or_first(client, node).await?;
            let mut params: Vec<(String, String)> = vec![
                ("name".into(), name.clone()),
                ("cores".into(), cpu.to_string()),
                ("memory".into(), parse_mib(&memory)?.to_string()),
            ];
            let mut slots: std::collections::BTreeMap<String, u32> = Default::default();
            for d in &disk {
                let (bus, value) = parse_disk(d)?;
                let n = slots.entry(bus.clone()).or_insert(0);
                params.push((format!("{bus}{n}"), value));
                *n += 1;
            }
            let nics = bridge
                .iter()
                .map(|b| Ok(format!("virtio,bridge={b}")))
                .chain(network.iter().map(|n| parse_network(n)))
                .collect::<anyhow::Result<Vec<String>>>()?;
            for (i, value) in nics.into_iter().enumerate() {
                params.push((format!("net{i}"), value));
            }
            if let Some(v) = vmid {
                params.push(("vmid".into(), v.to_string()));
            }
            if tcg {
                params.push(("kvm".into(), "0".into()));
            }
            if let Some(k) = kernel {
                let mut args = format!("-kernel '{k}'");
                if let Some(i) = initrd {
                    args.push_str(&format!(" -initrd '{i}'"));
                }
                if let Some(a) = append {
                    args.push_str(&format!(" -append '{a}'"));
                }
                params.push(("args".into(), args));
                params.push(("serial0".into(), "socket".into()));
            }
            if start {
                params.push(("start".into(), "1".into()));
            }
            let upid = client.create_vm(&node, params).await?;
            let id: u32 = upid
                .split(':')
                .nth(6)
                .and_then(|s| s.parse().ok())
                .context("the server returned a UPID without a VMID")?;
            eprintln!("creating VM {id} ({name}): {upid}");
            follow(client, &upid).await?;
            println!(
                "VM {id} ({name}) created{}",
                if start { " and started" } else { "" }
            );
            Ok(())
        }
        VmCommand::Start { vm, node } => action(client, node, &vm, VmAction::Start, vec![]).await,
        VmCommand::Stop { vm, node } => action(client, node, &vm, VmAction::Stop, vec![]).await,
        VmCommand::Shutdown {
            vm,
            node,
            timeout,
            force,
        } => {
            let mut params = Vec::new();
            if let Some(t) = timeout {
                params.push(("timeout".to_string(), t.to_string()));
            }
            if force {
                params.push(("forceStop".to_string(), "1".to_string()));
            }
            action(client, node, &vm, VmAction::Shutdown, params).await
        }
        VmCommand::Reboot { vm, node } => action(client, node, &vm, VmAction::Reboot, vec![]).await,
        VmCommand::Suspend { vm, node } => {
            action(client, node, &vm, VmAction::Suspend, vec![]).await
        }
        VmCommand::Resume { vm, node } => action(client, node, &vm, VmAction::Resume, vec![]).await,
        VmCommand::Delete { vm, node, purge } => {
            let node = node_or_first(client, node).await?;
            let vmid = resolve(client, &node, &vm).await?;
            let upid = client.delete_vm(&node, vmid, purge).await?;
            eprintln!("deleting VM {vmid}: {upid}");
            follow(client, &upid).await?;
            println!("VM {vmid} deleted");
            Ok(())
        }
        VmCommand::Clone {
            vm,
            name,
            newid,
            linked,
            node,
        } => {
            let node = node_or_first(client, node).await?;
            let vmid = resolve(client, &node, &vm).await?;
            let upid = client
                .clone_vm(&node, vmid, newid, Some(&name), !linked)
                .await?;
            eprintln!("cloning VM {vmid} to {name}: {upid}");
            follow(client, &upid).await?;
            let id = resolve(client, &node, &name).await?;
            let kind = if linked { " (linked)" } else { "" };
            println!("VM {vmid} cloned to VM {id} ({name}){kind}");
            Ok(())
        }
        VmCommand::Resize {
            vm,
            disk,
            size,
            node,
        } => {
            let node = node_or_first(client, node).await?;
            let vmid = resolve(client, &node, &vm).await?;
            let upid = client.resize_disk(&node, vmid, &disk, &size).await?;
            eprintln!("resizing {disk} of VM {vmid}: {upid}");
            follow(client, &upid).await?;
            println!("VM {vmid}: {disk} resized ({size})");
            Ok(())
        }
        VmCommand::MoveDisk {
            vm,
            disk,
            storage,
            format,
            delete,
            node,
        } => {
            let node = node_or_first(client, node).await?;
            let vmid = resolve(client, &node, &vm).await?;
            let upid = client
                .move_disk(&node, vmid, &disk, &storage, format.as_deref(), delete)
                .await?;
            eprintln!("moving {disk} of VM {vmid} to {storage}: {upid}");
            follow(client, &upid).await?;
            println!("VM {vmid}: {disk} moved to storage {storage}");
            Ok(())
        }
        VmCommand::Migrate {
            vm,
            to,
            online,
            bwlimit,
            node,
        } => {
            let node = node_or_first(client, node).await?;
            let vmid = resolve(client, &node, &vm).await?;
            let mut params = serde_json::json!({ "target": to, "online": u8::from(online) });
            if let Some(b) = bwlimit {
                params["bwlimit"] = serde_json::json!(b);
            }
            let upid: String = client
                .post(&format!("/nodes/{node}/qemu/{vmid}/migrate"), &params)
                .await?;
            eprintln!("migrating VM {vmid} from {node} to {to}: {upid}");
            follow(client, &upid).await?;
            println!("VM {vmid} migrated to node {to}");
            Ok(())
        }
        VmCommand::Snapshot {
            vm,
            name,
            list,
            rollback,
            description,
            node,
        } => {
            let node = node_or_first(client, node).await?;
            let vmid = resolve(client, &node, &vm).await?;
            if list || name.is_none() {
                let snaps = client.vm_snapshots(&node, vmid).await?;
                return output::print(format, &snaps, "snapshots", || Table {
                    headers: vec!["NAME", "PARENT", "DESCRIPTION"],
                    rows: snaps
                        .iter()
                        .map(|s| {
                            vec![
                                s.name.clone(),
                                output::opt(s.parent.as_deref()),
                                output::opt(s.description.as_deref()),
                            ]
                        })
                        .collect(),
                });
            }
            let name = name.unwrap_or_default();
            let upid = if rollback {
                client.rollback_vm(&node, vmid, &name).await?
            } else {
                client
                    .snapshot_vm(&node, vmid, &name, description.as_deref())
                    .await?
            };
            follow(client, &upid).await?;
            println!(
                "VM {vmid}: {} '{name}' done",
                if rollback { "rollback to" } else { "snapshot" }
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_disks() {
        assert_eq!(parse_mib("1Gi").unwrap(), 1024);
        assert_eq!(parse_mib("512Mi").unwrap(), 512);
        assert_eq!(parse_mib("128").unwrap(), 128);
        assert!(parse_mib("lots").is_err());
        assert_eq!(
            parse_disk("size=4Gi,storage=local").unwrap(),
            ("scsi".into(), "local:4".into())
        );
        assert_eq!(
            parse_disk("size=1Gi,storage=fast,bus=virtio,format=raw").unwrap(),
            ("virtio".into(), "fast:1,format=raw".into())
        );
        assert!(parse_disk("size=512Mi").is_err());
        assert!(parse_disk("storage=local").is_err());
        assert!(parse_disk("size=1Gi,color=red").is_err());
        assert_eq!(
            parse_network("bridge=vmbr0").unwrap(),
            "virtio,bridge=vmbr0"
        );
        assert_eq!(
            parse_network("bridge=vmbr1,model=e1000,firewall=1").unwrap(),
            "e1000,bridge=vmbr1,firewall=1"
        );
        assert!(parse_network("model=e1000").is_err());
        assert!(parse_network("bridge=vmbr0,vlan=3").is_err());
    }
}
