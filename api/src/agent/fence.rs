//! Self-fencing on an agent, and the node-local watchdog.
//!
//! The `fence` actor reads this node's lease and the HA resources from the server's store
//! every [`FENCE_CHECK_INTERVAL_MS`] (each read bounded by [`FENCE_STORE_TIMEOUT_MS`]).
//! The latest lease deadline it saw is never later than the server's (a renewal only
//! moves it on), so fencing by it is never late. From `deadline - FENCE_MARGIN_MS` on, it
//! SIGKILLs every QEMU of an HA VM placed on this node (found by pidfile), and keeps
//! killing any that appears, until it sees a valid lease again
//! (`gpve_actors::ha::fence::Fencer`). Whenever the store answers, it also kills the local
//! QEMU of an HA VM whose record now names another node: a stale placement (the server
//! relocated it under a newer generation) never keeps running. A VM locked by a migration
//! is left to it: the target's incoming QEMU (paused until the switchover) and the
//! source's (paused after it) are the migration's to keep or kill.
//!
//! The same actor is the node's local resource manager for HA (Proxmox's LRM): when the
//! lease holds and an HA VM placed on this node gets a newer generation with `desired`
//! running (the server's HA manager restarted it here or relocated it here) and no QEMU
//! of it runs, it (re)adds the VM's actor to the local `qemu` supervisor, which starts
//! it. A VM fencing killed starts again only under a newer generation
//! (`Fencer::may_start`).
//!
//! After every check it writes `DATA/fence/pet.json` (deadline, agent pid, the pidfiles to
//! guard). `gpve-agent watchdog --data-dir DATA`, a separate process the actor starts (in
//! its own session, so it outlives a `kill -9` of the agent), kills the guarded QEMUs once
//! that deadline passes without a newer pet: the agent process itself is gone or stuck.
//! One watchdog per data directory (a lock file); it exits when the agent is gone and
//! nothing is left to guard.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gpve_actors::ha::RequestState;
use gpve_actors::ha::fence::{FenceDecision, Fencer};
use gpve_actors::vm::{self, VmHost};
use gpve_hypervisor::qemu::running_pid;
use gpve_supervisor::{ActorStats, ChildSpec, RestartPolicy};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cluster::ha::{ResourceRecord, list_resources};
use crate::cluster::records::{Lease, lease_key};

/// How often the fence actor checks.
pub const FENCE_CHECK_INTERVAL_MS: u64 = 200;
/// Fence this long before the lease deadline.
pub const FENCE_MARGIN_MS: u64 = 1_000;
/// Bound on one round of store reads (the link may be cut or the server stopped).
pub const FENCE_STORE_TIMEOUT_MS: u64 = 500;
/// How often the watchdog reads the pet file.
pub const WATCHDOG_CHECK_INTERVAL_MS: u64 = 100;

/// Failures of the fence files and the watchdog.
#[derive(Debug, Error)]
pub enum FenceIoError {
    #[error("could not access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FenceIoError + '_ {
    move |source| FenceIoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the agent tells its watchdog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pet {
    pub agent_pid: u32,
    /// Unix ms from which the guarded QEMUs must not run (`None`: no lease seen yet).
    pub deadline_ms: Option<u64>,
    pub guarded: Vec<Guarded>,
}

/// One HA VM's QEMU on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guarded {
    pub vmid: u32,
    pub pidfile: PathBuf,
}

/// `DATA/fence`.
pub fn fence_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("fence")
}

fn pet_path(data_dir: &Path) -> PathBuf {
    fence_dir(data_dir).join("pet.json")
}

/// Write the pet file atomically (a reader never sees half of it).
pub fn write_pet(data_dir: &Path, pet: &Pet) -> Result<(), FenceIoError> {
    let dir = fence_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let tmp = dir.join("pet.json.tmp");
    let bytes = serde_json::to_vec(pet).map_err(|e| FenceIoError::Corrupt {
        path: tmp.clone(),
        reason: e.to_string(),
    })?;
    let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(&bytes).map_err(io_err(&tmp))?;
    let path = pet_path(data_dir);
    std::fs::rename(&tmp, &path).map_err(io_err(&path))
}

pub fn read_pet(data_dir: &Path) -> Result<Option<Pet>, FenceIoError> {
    let path = pet_path(data_dir);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| FenceIoError::Corrupt {
                path,
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FenceIoError::Io { path, source: e }),
    }
}

/// SIGKILL the QEMU of `pidfile` if it runs; its pid if it was killed.
pub fn kill_qemu(pidfile: &Path) -> Option<u32> {
    let pid = running_pid(pidfile)?;
    let target = nix::unistd::Pid::from_raw(i32::try_from(pid).ok()?);
    nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL).ok()?;
    Some(pid)
}

fn wall_ms() -> u64 {
    crate::cluster::now_ms().max(0) as u64
}

/// The fence actor as a child of the agent's root; `host` is the node's VM host.
pub fn child(data_dir: PathBuf, host: VmHost) -> ChildSpec {
    ChildSpec::actor("fence", "fence", RestartPolicy::Permanent, move |ctx| {
        (
            FenceActor {
                stats: ctx.stats.clone(),
                data_dir: data_dir.clone(),
                host: host.clone(),
            },
            (),
        )
    })
}

/// Commands of the fence actor (one lifecycle state: running).
#[derive(Debug)]
pub enum FenceMsg {
    Check,
}

impl ractor::Message for FenceMsg {}

/// Kills this node's HA QEMUs when its lease is lost.
#[derive(Debug)]
pub struct FenceActor {
    pub stats: ActorStats,
    pub data_dir: PathBuf,
    pub host: VmHost,
}

/// Its state.
pub struct FenceState {
    fencer: Fencer,
    /// HA VMs placed here, with their generation (last seen).
    guarded: BTreeMap<u32, u64>,
    /// The generation each HA VM had when this actor last started it or saw it placed.
    handled: BTreeMap<u32, u64>,
    /// The first successful pass is done.
    initialized: bool,
    /// HA VMs fenced (actor removed), with their generation, until reported back.
    fenced: BTreeMap<u32, u64>,
    /// Last store error, logged once per outage.
    outage: bool,
    watchdog: Option<std::process::Child>,
}

/// One round of store reads.
struct Seen {
    lease: Option<Lease>,
    resources: Vec<ResourceRecord>,
    placements: BTreeMap<u32, Placed>,
}

/// Where an HA VM's record places it.
struct Placed {
    node: String,
    generation: u64,
    desired_running: bool,
    /// Locked by a migration: the source and the target each hold a QEMU of it (the
    /// target's paused until the switchover) and the migration owns both.
    migrating: bool,
}

impl FenceActor {
    fn pidfile(&self, vmid: u32) -> PathBuf {
        gpve_hypervisor::RunPaths::new(&self.host.run_dir(vmid)).pidfile
    }

    async fn read(&self) -> Result<Seen, String> {
        let work = async {
            let lease = self
                .host
                .store
                .get_json::<Lease>(&lease_key(&self.host.node))
                .await?;
            let resources = list_resources(&self.host.store).await?;
            let mut placements = BTreeMap::new();
            for r in &resources {
                if let Some(e) = vm::load_entry(&self.host.store, r.vmid).await? {
                    placements.insert(
                        r.vmid,
                        Placed {
                            migrating: e.lock.as_deref()
                                == Some(gpve_actors::vm::migrate::MIGRATE_LOCK),
                            node: e.record.node,
                            generation: e.generation,
                            desired_running: e.desired == vm::Desired::Running,
                        },
                    );
                }
            }
            Ok::<_, gpve_store::StoreError>(Seen {
                lease,
                resources,
                placements,
            })
        };
        match tokio::time::timeout(Duration::from_millis(FENCE_STORE_TIMEOUT_MS), work).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(gpve_actors::storage::error_chain(&e)),
            Err(_) => Err(format!(
                "the store did not answer within {FENCE_STORE_TIMEOUT_MS} ms"
            )),
        }
    }

    /// Take the VM's actor off the local supervisor, so nothing restarts its QEMU when the
    /// store answers again; only a newer placement brings it back. Spawned: the
    /// supervisor may be stuck starting that actor (its store read hangs) and this actor
    /// must keep fencing meanwhile.
    fn remove_vm_actor(&self, vmid: u32) {
        let host = self.host.clone();
        tokio::spawn(async move {
            if let Some(sup) = host.supervisor() {
                let _ = sup.remove_child(&vm::actor_id(vmid)).await;
            }
        });
    }

    /// After a fence, tell the server's HA manager about each fenced VM still placed here
    /// at the same generation (the server may never have seen the lease expire): it
    /// decides whether to start it again, under a newer generation.
    fn report_fenced(&self, st: &mut FenceState, seen: &Seen) {
        let fenced = std::mem::take(&mut st.fenced);
        for (vmid, generation) in fenced {
            match seen.placements.get(&vmid) {
                Some(p)
                    if p.desired_running
                        && p.node == self.host.node
                        && p.generation == generation =>
                {
                    gpve_actors::ha::report_vm_failure(
                        self.host.store.clone(),
                        self.host.directory.clone(),
                        crate::tree::ROOT.to_string(),
                        gpve_actors::ha::VmFailure {
                            vmid,
                            node: self.host.node.clone(),
                            reason: format!("fenced by node {} (lease lost)", self.host.node),
                        },
                    );
                }
                _ => {}
            }
        }
    }

    /// Start the HA VMs the server placed here under a newer generation (LRM).
    async fn start_placed(&self, st: &mut FenceState, seen: &Seen) {
        for (&vmid, &generation) in &st.guarded {
            let Some(placed) = seen.placements.get(&vmid) else {
                continue;
            };
            if placed.migrating {
                // The migration starts the target's actor itself at its switchover.
                continue;
            }
            let running = &placed.desired_running;
            let known = st.handled.get(&vmid).copied();
            if !st.initialized {
                // Agent start: the qemu supervisor already started what the store wants;
                // only later placements are this actor's to start.
                st.handled.insert(vmid, generation);
                continue;
            }
            let newer = known.is_none_or(|k| generation > k);
            if !newer || !*running || running_pid(&self.pidfile(vmid)).is_some() {
                st.handled.insert(vmid, known.unwrap_or(0).max(generation));
                continue;
            }
            if let Err(e) = st.fencer.may_start(vmid, generation) {
                tracing::warn!(vmid, error = %e, "not starting the HA VM");
                continue;
            }
            let Some(sup) = self.host.supervisor() else {
                continue;
            };
            let id = vm::actor_id(vmid);
            // A failed (escalated) or idle actor is replaced: the new one reads the store.
            let _ = sup.remove_child(&id).await;
            match sup.add_child(vm::vm_child(self.host.clone(), vmid)).await {
                Ok(()) => {
                    tracing::info!(vmid, generation, "HA: starting the VM placed on this node");
                    st.handled.insert(vmid, generation);
                }
                Err(e) => tracing::error!(vmid, error = %e, "HA: starting the VM failed"),
            }
        }
    }

    fn spawn_watchdog(&self) -> Option<std::process::Child> {
        use std::os::unix::process::CommandExt;
        let exe = match std::env::current_exe() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot find the agent binary; no fence watchdog");
                return None;
            }
        };
        // Only the gpve-agent binary has the subcommand (tests run the tree in-process).
        if exe.file_name().and_then(|n| n.to_str()) != Some("gpve-agent") {
            tracing::info!(exe = %exe.display(), "not the gpve-agent binary: no fence watchdog");
            return None;
        }
        // The watchdog outlives the agent by design, so it must not hold the agent's
        // stdout/stderr open (a supervisor or CI reading them would wait for it): it logs to
        // its own file.
        let log_path = fence_dir(&self.data_dir).join("watchdog.log");
        let log = match std::fs::create_dir_all(fence_dir(&self.data_dir)).and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
        }) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(path = %log_path.display(), error = %e, "cannot open the watchdog log; no fence watchdog");
                return None;
            }
        };
        let log_err = match log.try_clone() {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "cannot open the watchdog log; no fence watchdog");
                return None;
            }
        };
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("watchdog")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own process group: a signal to the agent's group does not reach it.
            .process_group(0);
        match cmd.spawn() {
            Ok(c) => {
                tracing::info!(pid = c.id(), "fence watchdog started");
                Some(c)
            }
            Err(e) => {
                tracing::error!(error = %e, "starting the fence watchdog failed");
                None
            }
        }
    }
}

impl Actor for FenceActor {
    type Msg = FenceMsg;
    type State = FenceState;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<FenceMsg>,
        _: (),
    ) -> Result<FenceState, ActorProcessingErr> {
        myself.send_message(FenceMsg::Check)?;
        Ok(FenceState {
            fencer: Fencer::new(),
            guarded: BTreeMap::new(),
            handled: BTreeMap::new(),
            initialized: false,
            fenced: BTreeMap::new(),
            outage: false,
            watchdog: self.spawn_watchdog(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<FenceMsg>,
        msg: FenceMsg,
        st: &mut FenceState,
    ) -> Result<(), ActorProcessingErr> {
        self.stats.record_handled();
        let FenceMsg::Check = msg;
        match self.read().await {
            Ok(seen) => {
                if st.outage {
                    tracing::info!("the store answers again");
                    st.outage = false;
                }
                if let Some(l) = &seen.lease {
                    st.fencer
                        .lease_seen(l.deadline_ms.max(0) as u64, FENCE_MARGIN_MS);
                }
                st.guarded.clear();
                for r in &seen.resources {
                    let Some(Placed {
                        node,
                        generation,
                        migrating,
                        ..
                    }) = seen.placements.get(&r.vmid)
                    else {
                        continue;
                    };
                    if *node == self.host.node && r.state != RequestState::Ignored {
                        st.guarded.insert(r.vmid, *generation);
                    } else if *node != self.host.node
                        && !migrating
                        && let Some(pid) = kill_qemu(&self.pidfile(r.vmid))
                    {
                        tracing::error!(vmid = r.vmid, pid, placed_on = %node, generation,
                            "killed a QEMU of a VM placed on another node (stale placement)");
                    }
                }
                st.handled.retain(|vmid, _| st.guarded.contains_key(vmid));
                if st.fencer.poll(wall_ms()) == FenceDecision::Hold {
                    self.report_fenced(st, &seen);
                    self.start_placed(st, &seen).await;
                    st.initialized = true;
                }
            }
            Err(e) => {
                if !st.outage {
                    tracing::warn!(error = %e, "cannot read the lease; fencing at its deadline unless it is renewed");
                    st.outage = true;
                }
            }
        }
        let now = wall_ms();
        if st.fencer.poll(now) == FenceDecision::Fence {
            for (&vmid, &generation) in &st.guarded {
                // Whoever kills it (this actor or the watchdog), it ran under this
                // generation: it starts again only under a newer one.
                st.fencer.killed(vmid, generation);
                if let Some(pid) = kill_qemu(&self.pidfile(vmid)) {
                    tracing::error!(
                        vmid,
                        pid,
                        generation,
                        "self-fence: the lease is lost; killed the HA VM's QEMU"
                    );
                }
                if st.fenced.insert(vmid, generation).is_none() {
                    self.remove_vm_actor(vmid);
                }
            }
        }
        self.stats.set_owned(
            "fenced",
            if st.fencer.fenced_since_ms().is_some() {
                1
            } else {
                0
            },
        );
        let pet = Pet {
            agent_pid: std::process::id(),
            deadline_ms: st.fencer.clock().map(|c| c.deadline_ms()),
            guarded: st
                .guarded
                .keys()
                .map(|&vmid| Guarded {
                    vmid,
                    pidfile: self.pidfile(vmid),
                })
                .collect(),
        };
        if let Err(e) = write_pet(&self.data_dir, &pet) {
            tracing::error!(error = %e, "writing the watchdog's pet file failed");
        }
        myself.send_after(Duration::from_millis(FENCE_CHECK_INTERVAL_MS), || {
            FenceMsg::Check
        });
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<FenceMsg>,
        st: &mut FenceState,
    ) -> Result<(), ActorProcessingErr> {
        // The watchdog keeps guarding after the agent stops (its QEMUs keep running);
        // reap it if it already exited.
        if let Some(mut c) = st.watchdog.take() {
            let _ = c.try_wait();
        }
        Ok(())
    }
}

/// `gpve-agent watchdog --data-dir DIR`: guard the QEMUs named in the pet file. Returns
/// when the agent is gone and nothing is left to guard, or at once if another watchdog
/// holds the data directory.
pub fn run_watchdog(data_dir: &Path) -> Result<(), FenceIoError> {
    let dir = fence_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let lock_path = dir.join("watchdog.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    let Ok(_held) = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
    else {
        eprintln!("another fence watchdog guards {}", data_dir.display());
        return Ok(());
    };
    eprintln!("fence watchdog guarding {}", data_dir.display());
    loop {
        std::thread::sleep(Duration::from_millis(WATCHDOG_CHECK_INTERVAL_MS));
        let pet = match read_pet(data_dir) {
            Ok(Some(p)) => p,
            // A removed data directory takes the agent's run files with it: nothing is
            // left that this watchdog could find or guard.
            Ok(None) if !data_dir.exists() => {
                eprintln!(
                    "fence watchdog: {} was removed; exiting",
                    data_dir.display()
                );
                return Ok(());
            }
            Ok(None) => continue,
            Err(e) => {
                // A torn write cannot happen (rename); keep the last decision for later.
                eprintln!("fence watchdog: {e}");
                continue;
            }
        };
        let now = wall_ms();
        let expired = pet.deadline_ms.is_some_and(|d| now >= d);
        let mut alive = 0;
        for g in &pet.guarded {
            if expired {
                if let Some(pid) = kill_qemu(&g.pidfile) {
                    eprintln!(
                        "fence watchdog: no lease renewal seen by the agent; killed QEMU {pid} of VM {}",
                        g.vmid
                    );
                }
            } else if running_pid(&g.pidfile).is_some() {
                alive += 1;
            }
        }
        let agent_alive = i32::try_from(pet.agent_pid)
            .ok()
            .is_some_and(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok());
        if !agent_alive && alive == 0 {
            eprintln!("fence watchdog: the agent is gone and nothing is left to guard; exiting");
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pet_round_trip_and_foreign_pids_are_never_killed() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_pet(dir.path()).unwrap(), None);
        let pet = Pet {
            agent_pid: 42,
            deadline_ms: Some(7),
            guarded: vec![Guarded {
                vmid: 100,
                pidfile: dir.path().join("100/qemu.pid"),
            }],
        };
        write_pet(dir.path(), &pet).unwrap();
        assert_eq!(read_pet(dir.path()).unwrap(), Some(pet));
        // A pidfile naming a live process that is not a QEMU with that pidfile (this test).
        let pidfile = dir.path().join("qemu.pid");
        std::fs::write(&pidfile, std::process::id().to_string()).unwrap();
        assert_eq!(running_pid(&pidfile), None);
        assert_eq!(kill_qemu(&pidfile), None);
        std::fs::write(&pidfile, "garbage").unwrap();
        assert_eq!(running_pid(&pidfile), None);
        std::fs::write(dir.path().join("fence/pet.json"), "{").unwrap();
        assert!(matches!(
            read_pet(dir.path()),
            Err(FenceIoError::Corrupt { .. })
        ));
    }
}
