//! `POST /nodes/{node}/migrateall`: migrate every VM off this node, as a task (Proxmox's
//! call; `gpvectl node drain` cordons the node first, then calls this).
//!
//! Running VMs migrate live, stopped ones offline, each as its own `qmigrate` task (its
//! log is where Proxmox writes it); this task logs the plan and one line per VM. Without
//! `target` (which Proxmox requires) the scheduler picks each VM's node among the online,
//! uncordoned members, counting the VMs already planned, so a drain spreads its VMs as
//! placement of new VMs would. `max-workers` migrations run at once (default 1).

use std::time::Duration;

use futures::StreamExt;
use gpve_actors::scheduler::{
    self, NodeCapacity, Placement, PlacementError, PlacementRequest, SchedulerPolicy,
};
use gpve_actors::vm::{self, VmEntry};
use gpve_hypervisor::MigrateOptions;
use serde_json::json;

use super::qemu::migrate::{self, MigrationAsk};
use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::{Format, Param, ParamSchema};
use crate::state::AppState;

/// How often a worker looks at its migration task.
pub const MIGRATION_POLL_MS: u64 = 250;

/// Proxmox: `VM.Migrate` on `/`.
pub const POST: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        Param::node(),
        Param::string("target", 64, Some(Format::Node)).opt(),
        Param::int("max-workers", Some(1), Some(64)).opt(),
        Param::int("maxworkers", Some(1), Some(64)).opt(),
        Param::string("vms", 4096, Some(Format::VmidList)).opt(),
        Param::boolean("with-local-disks").opt(),
    ]),
    privilege: Privilege::Perm("/", &["VM.Migrate"]),
    description: "Migrate all VMs on this node (running ones live) to 'target', or, without it, to the nodes the scheduler picks.",
};

/// Where each VM goes, or why it cannot go anywhere. `vms` are the VMs to move (on
/// `source`), in order; `others` every other VM (they take room).
pub fn plan(
    source: &str,
    vms: &[VmEntry],
    target: Option<&str>,
    nodes: &[NodeCapacity],
    others: &[Placement],
    policy: &SchedulerPolicy,
) -> Vec<(u32, Result<String, PlacementError>)> {
    let mut existing: Vec<Placement> = others.to_vec();
    vms.iter()
        .map(|e| {
            let vmid = e.record.vmid;
            let chosen = match target {
                Some(t) => Ok(t.to_string()),
                None => scheduler::place(
                    &PlacementRequest {
                        vmid,
                        cpus: e.record.maxcpu,
                        mem_bytes: e.record.maxmem_bytes,
                        affinity: vec![],
                        restricted: false,
                        anti_affinity: None,
                        exclude: vec![source.to_string()],
                    },
                    nodes,
                    &existing,
                    policy,
                ),
            };
            if let Ok(node) = &chosen {
                existing.push(Placement {
                    node: node.clone(),
                    ..e.placement()
                });
            }
            (vmid, chosen)
        })
        .collect()
}

/// The joined nodes as the scheduler sees them.
async fn members(state: &AppState) -> Result<Vec<NodeCapacity>, ApiError> {
    let now_ms = crate::cluster::now_ms();
    let mut out = Vec::new();
    for rec in crate::cluster::records::list_nodes(&state.store).await? {
        if let Some((rec, lease, load)) =
            crate::cluster::records::read_node(&state.store, &rec.node).await?
        {
            out.push(crate::cluster::records::capacity(
                &rec,
                lease.as_ref(),
                load.as_ref(),
                now_ms,
            ));
        }
    }
    Ok(out)
}

/// Starts the migration of one VM and waits for its task; the line for this task's log.
async fn migrate_one(
    state: &AppState,
    user: &str,
    vmid: u32,
    target: String,
    with_local_disks: bool,
) -> Result<String, String> {
    let entry = vm::load_entry(&state.store, vmid)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("VM {vmid} no longer exists"))?;
    let ask = MigrationAsk {
        online: entry.record.status == "running",
        secure: false,
        target: target.clone(),
        with_local_disks,
        options: MigrateOptions::default(),
    };
    let upid = migrate::start(state, user, &entry, ask)
        .await
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(gpve_actors::vm::migrate::MIGRATE_CALL_TIMEOUT_MS);
    loop {
        let rec = state
            .tasks
            .status(&upid)
            .await
            .map_err(|e| format!("{upid}: {e}"))?;
        match rec.exitstatus.as_deref() {
            None if tokio::time::Instant::now() >= deadline => {
                return Err(format!("{upid} still running; not waiting any longer"));
            }
            None => tokio::time::sleep(Duration::from_millis(MIGRATION_POLL_MS)).await,
            Some("OK") => return Ok(format!("VM {vmid}: migrated to {target} ({upid})")),
            Some(why) => return Err(format!("{why} ({upid})")),
        }
    }
}

/// Start the task; returns its UPID.
pub async fn post(ctx: Ctx) -> Result<Reply, ApiError> {
    let node = ctx.local_node()?.to_string();
    let user = ctx.userid()?.to_string();
    let target = ctx.params.str("target").map(str::to_string);
    if let Some(t) = &target {
        let nodes = migrate::cluster_nodes(&ctx.state).await?;
        if let Err(why) = gpve_actors::vm::migrate::check_target(&node, t, &nodes) {
            return Err(ApiError::param("target", why.to_string()));
        }
    }
    let workers = ctx
        .params
        .int("max-workers")
        .or_else(|| ctx.params.int("maxworkers"))
        .and_then(|w| usize::try_from(w).ok())
        .unwrap_or(1);
    let with_local_disks = ctx.params.bool("with-local-disks").unwrap_or(false);
    let only = super::startall::vmid_list(ctx.params.str("vms"));
    let state = ctx.state.clone();
    let owner = user.clone();
    let upid = ctx
        .state
        .tasks
        .spawn("migrateall", "", &owner, move |task| async move {
            let entries = vm::list_entries(&state.store)
                .await
                .map_err(|e| e.to_string())?;
            let (mine, others): (Vec<VmEntry>, Vec<VmEntry>) =
                entries.into_iter().partition(|e| e.record.node == node);
            let mine: Vec<VmEntry> = mine
                .into_iter()
                .filter(|e| only.as_ref().is_none_or(|l| l.contains(&e.record.vmid)))
                .collect();
            let others: Vec<Placement> = others
                .iter()
                .filter(|e| e.desired == vm::Desired::Running)
                .map(VmEntry::placement)
                .collect();
            let nodes = members(&state).await.map_err(|e| e.to_string())?;
            let planned = plan(
                &node,
                &mine,
                target.as_deref(),
                &nodes,
                &others,
                &SchedulerPolicy::default(),
            );
            task.log(format!(
                "migrating {} VMs off node {node}, {workers} at a time",
                planned.len()
            ))
            .await
            .map_err(|e| e.to_string())?;
            let mut failed = Vec::new();
            let mut moves = Vec::new();
            for (vmid, chosen) in planned {
                match chosen {
                    Ok(t) => {
                        task.log(format!("VM {vmid}: to {t}"))
                            .await
                            .map_err(|e| e.to_string())?;
                        moves.push((vmid, t));
                    }
                    Err(why) => {
                        task.log(format!("VM {vmid}: {why}"))
                            .await
                            .map_err(|e| e.to_string())?;
                        failed.push(vmid.to_string());
                    }
                }
            }
            let mut results = futures::stream::iter(moves)
                .map(|(vmid, t)| {
                    let (state, user) = (&state, &user);
                    async move {
                        (
                            vmid,
                            migrate_one(state, user, vmid, t, with_local_disks).await,
                        )
                    }
                })
                .buffer_unordered(workers.max(1));
            while let Some((vmid, outcome)) = results.next().await {
                let line = match outcome {
                    Ok(line) => line,
                    Err(why) => {
                        failed.push(vmid.to_string());
                        format!("VM {vmid}: migration failed: {why}")
                    }
                };
                task.log(line).await.map_err(|e| e.to_string())?;
            }
            if failed.is_empty() {
                Ok(())
            } else {
                failed.sort();
                Err(format!("failed to migrate VM(s) {}", failed.join(", ")))
            }
        })
        .await?;
    Ok(Reply::Data(json!(upid.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const GIB: u64 = 1 << 30;

    fn vm(vmid: u32, node: &str) -> VmEntry {
        let mut e = VmEntry::new(vmid, node, BTreeMap::new());
        e.record.maxcpu = 1;
        e.record.maxmem_bytes = GIB;
        e
    }

    fn cap(node: &str, mem_gib: u64, cordoned: bool) -> NodeCapacity {
        NodeCapacity {
            node: node.into(),
            cpus: 4,
            mem_bytes: mem_gib * GIB,
            online: true,
            cordoned,
        }
    }

    #[test]
    fn the_plan_spreads_over_uncordoned_nodes_and_counts_what_it_placed() {
        let vms: Vec<VmEntry> = (100..104).map(|v| vm(v, "n1")).collect();
        let nodes = [
            cap("n1", 8, true),
            cap("n2", 8, false),
            cap("n3", 8, false),
            cap("n4", 8, true),
        ];
        let p = plan("n1", &vms, None, &nodes, &[], &SchedulerPolicy::default());
        let targets: Vec<String> = p.into_iter().map(|(_, t)| t.unwrap()).collect();
        assert_eq!(targets, ["n2", "n3", "n2", "n3"]);
    }

    #[test]
    fn a_vm_that_fits_nowhere_is_reported_and_the_others_still_go() {
        let mut big = vm(100, "n1");
        big.record.maxmem_bytes = 16 * GIB;
        let vms = [big, vm(101, "n1")];
        let nodes = [cap("n1", 32, true), cap("n2", 4, false)];
        let others = [vm(200, "n2").placement()];
        let p = plan(
            "n1",
            &vms,
            None,
            &nodes,
            &others,
            &SchedulerPolicy::default(),
        );
        assert!(
            matches!(&p[0], (100, Err(PlacementError::NoneFits { .. }))),
            "{p:?}"
        );
        assert_eq!(p[1], (101, Ok("n2".to_string())));
    }

    #[test]
    fn an_explicit_target_is_taken_as_given() {
        let vms = [vm(100, "n1"), vm(101, "n1")];
        let p = plan(
            "n1",
            &vms,
            Some("n3"),
            &[],
            &[],
            &SchedulerPolicy::default(),
        );
        assert_eq!(p, vec![(100, Ok("n3".into())), (101, Ok("n3".into()))]);
    }
}
