//! `gpvectl apply -f FILE|-`: create or update VMs from `gpve.io/v1 VirtualMachine`
//! manifests (YAML or JSON, several YAML documents per file). Every document is checked
//! before anything is sent, so a typo in the third VM does not leave the first two applied.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use gpve_api::client::Client;
use gpve_api::client::manifest::ApplyResult;
use gpve_api::v1::virtualmachines::manifest::{self, LIST_KIND, VirtualMachine};
use serde_json::Value;

use crate::output::{self, Format, Table};

/// Largest manifest file read, in bytes.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

pub const EXAMPLES: &str = "\
Examples:
  # Create or update the VMs of a file (YAML or JSON; separate YAML documents with ---)
  gpvectl apply -f web.yaml

  # From stdin, into namespace 'staging' (for manifests that name no namespace)
  cat web.yaml | gpvectl apply -f - -n staging

  # A manifest:
  apiVersion: gpve.io/v1
  kind: VirtualMachine
  metadata:
    name: web1
    labels: {app: web}
  spec:
    cpu: {cores: 2, sockets: 1}
    memory: 1Gi
    disks:
      - {name: root, storage: local, size: 4Gi}
    networks:
      - {name: lan, bridge: vmbr0, model: virtio, firewall: true}
    running: true
    proxmox: {ostype: l26}     # Proxmox keys the manifest does not model

Applying the same file again changes nothing and prints 'unchanged'. A changed memory
or CPU count of a running VM is pending until its next start (status.pendingChanges).
Disks are matched by name: a new name adds a disk, a missing one detaches it (kept as
unusedN, as Proxmox does); resizing or moving disks is not done by apply.
`gpvectl vm get NAME -o yaml` prints a VM's manifest.";

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Manifest file, or `-` for stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: PathBuf,
    /// Namespace for manifests that do not name one.
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    namespace: Option<String>,
    /// Return once the server accepted each change, without waiting for the create,
    /// start or stop task.
    #[arg(long)]
    no_wait: bool,
}

/// The documents of a YAML (or JSON) text as JSON values; empty documents are skipped and
/// `VirtualMachineList` / `List` documents contribute their items.
pub fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let yaml = serde_yaml::Value::deserialize(doc)
            .with_context(|| format!("document {} is not valid YAML", i + 1))?;
        if yaml.is_null() {
            continue;
        }
        let json = serde_json::to_value(&yaml).with_context(|| {
            format!(
                "document {} cannot be represented as JSON (non-string keys?)",
                i + 1
            )
        })?;
        let kind = json.get("kind").and_then(Value::as_str);
        if kind == Some(LIST_KIND) || kind == Some("List") {
            match json.get("items") {
                Some(Value::Array(items)) => out.extend(items.iter().cloned()),
                _ => bail!("document {}: a {} needs a list of items", i + 1, LIST_KIND),
            }
        } else {
            out.push(json);
        }
    }
    Ok(out)
}

/// Every document parsed strictly; all errors of all documents in one message.
pub fn parse_all(docs: &[Value]) -> anyhow::Result<Vec<VirtualMachine>> {
    let mut vms = Vec::new();
    let mut problems = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        match manifest::parse(doc) {
            Ok(vm) => vms.push(vm),
            Err(errors) => {
                let name = doc
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                let mut text = format!("manifest {} ({name}) is invalid:", i + 1);
                for (path, why) in errors {
                    text.push_str(&format!("\n  {path}: {why}"));
                }
                problems.push(text);
            }
        }
    }
    if problems.is_empty() {
        Ok(vms)
    } else {
        bail!("{}\nnothing was applied", problems.join("\n"))
    }
}

fn read_input(file: &PathBuf) -> anyhow::Result<String> {
    let mut text = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .take(MAX_MANIFEST_BYTES + 1)
            .read_to_string(&mut text)
            .context("cannot read the manifest from stdin")?;
    } else {
        std::fs::File::open(file)
            .with_context(|| format!("cannot open {}", file.display()))?
            .take(MAX_MANIFEST_BYTES + 1)
            .read_to_string(&mut text)
            .with_context(|| format!("cannot read {}", file.display()))?;
    }
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        bail!("the manifest is larger than {MAX_MANIFEST_BYTES} bytes");
    }
    Ok(text)
}

pub async fn run(client: &Client, args: ApplyArgs, format: Format) -> anyhow::Result<()> {
    let text = read_input(&args.file)?;
    let (vc_docs, docs): (Vec<Value>, Vec<Value>) = documents(&text)?
        .into_iter()
        .partition(|d| d.get("kind").and_then(Value::as_str) == Some(crate::vc::KIND));
    // Both kinds are checked before anything is sent.
    let vcs = crate::vc::parse_all(&vc_docs)?;
    let vms = parse_all(&docs)?;
    if vms.is_empty() && vcs.is_empty() {
        bail!("no manifest found in {}", args.file.display());
    }
    let mut applied: Vec<Value> =
        crate::vc::apply(client, &vc_docs, &vcs, args.namespace.as_deref(), format).await?;
    for vm in &vms {
        let (result, out) = client
            .apply_virtual_machine(args.namespace.as_deref(), vm)
            .await
            .with_context(|| format!("virtualmachine '{}'", vm.metadata.name))?;
        if format == Format::Table {
            println!(
                "virtualmachine.gpve.io/{} {}",
                vm.metadata.name,
                result.as_str()
            );
        }
        let task = out.status.as_ref().and_then(|s| s.task.clone());
        if let Some(upid) = task.filter(|_| !args.no_wait && result != ApplyResult::Unchanged) {
            crate::vm::follow(client, &upid)
                .await
                .with_context(|| format!("virtualmachine '{}'", vm.metadata.name))?;
        }
        applied.push(serde_json::to_value(&out)?);
    }
    if format != Format::Table {
        output::print(format, &applied, "virtualmachines", || Table {
            headers: vec![],
            rows: vec![],
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_documents_and_lists() {
        let text = "\
apiVersion: gpve.io/v1
kind: VirtualMachine
metadata: {name: a}
spec: {memory: 64Mi}
---
---
kind: VirtualMachineList
items:
  - {apiVersion: gpve.io/v1, kind: VirtualMachine, metadata: {name: b}, spec: {memory: 1Gi}}
";
        let docs = documents(text).expect("yaml");
        assert_eq!(docs.len(), 2);
        let vms = parse_all(&docs).expect("valid");
        assert_eq!(vms[1].metadata.name, "b");
        // JSON is YAML too.
        let json = r#"{"apiVersion":"gpve.io/v1","kind":"VirtualMachine","metadata":{"name":"c"},"spec":{"memory":"1Gi"}}"#;
        assert_eq!(documents(json).expect("json").len(), 1);
    }

    #[test]
    fn every_bad_document_is_reported_by_path() {
        let text = "\
apiVersion: gpve.io/v1
kind: VirtualMachine
metadata: {name: a}
spec: {memory: 64Mi, disks: [{name: d, storage: local, sizee: 4Gi}]}
---
apiVersion: gpve.io/v1
kind: VirtualMachine
metadata: {name: b}
spec: {memory: 1Gx}
";
        let err = parse_all(&documents(text).expect("yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("manifest 1 (a)"), "{err}");
        assert!(err.contains("spec.disks[0].sizee: unknown field"), "{err}");
        assert!(err.contains("manifest 2 (b)"), "{err}");
        assert!(err.contains("spec.memory: '1Gx'"), "{err}");
        assert!(err.contains("nothing was applied"), "{err}");
        assert!(documents("a: [").is_err());
    }
}
