//! The VM actor's decisions as a pure state machine: `(state, input) → (new state, effects)`.
//! No tokio, no I/O: the actor executes the effects in order and reports back.
//!
//! Phases (the running QEMU process as the actor owns it):
//!
//! ```text
//!            start / reconcile(desired running)
//!  Stopped ───────────────────────────────────────► Running ◄──┐ resume
//!     ▲  ▲        stop, shutdown, guest poweroff      │  │      │
//!     │  └────────────────────────────────────────────┘  └─► Paused
//!     │                                        suspend          │
//!     └─────────────────── stop, shutdown(forceStop) ───────────┘
//!  Stopped ── delete ──► Deleted (terminal; every command is refused)
//! ```
//!
//! An unexpected exit of QEMU while the desired state is running (crash, kill -9, guest
//! panic) makes the actor *fail*: its supervisor restarts it under the VM's policy, and the
//! new incarnation starts QEMU again because the desired state in the store is still
//! running (see [`reconcile`]).

use serde::{Deserialize, Serialize};

/// What the actor holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Stopped,
    Running,
    /// QEMU runs with the guest paused (`suspend`).
    Paused,
    /// The VM was deleted; the actor waits to be removed.
    Deleted,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Stopped => "stopped",
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Deleted => "deleted",
        }
    }

    /// Proxmox's `status` (`running` also while paused, as `qm status` says).
    pub fn pve_status(self) -> &'static str {
        match self {
            Phase::Running | Phase::Paused => "running",
            Phase::Stopped | Phase::Deleted => "stopped",
        }
    }
}

/// What the user asked for, persisted in the store so a restarted actor (or server) knows
/// whether QEMU should be running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    #[default]
    Stopped,
    Running,
}

/// The state machine's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmState {
    pub vmid: u32,
    pub phase: Phase,
    pub desired: Desired,
    /// Templates never run.
    pub template: bool,
}

/// Commands, with the phases each is allowed in (STYLE #1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Stopped → Running (applies pending changes first). Refused for templates.
    Start,
    /// Running | Paused → Stopped: QMP quit, SIGKILL after the stop timeout.
    Stop,
    /// Running → Stopped: ACPI power button (pressed again while waiting), then a forced
    /// stop after `timeout_ms` if `force_stop`, else an error leaving the VM running.
    /// Paused: only with `force_stop` (a paused guest cannot react to ACPI).
    Shutdown { timeout_ms: u64, force_stop: bool },
    /// Running → Running: shutdown (with forced fallback) then start again, applying
    /// pending changes.
    Reboot { timeout_ms: u64 },
    /// Running | Paused → same phase: hardware reset.
    Reset,
    /// Running → Paused.
    Suspend,
    /// Paused → Running.
    Resume,
    /// Stopped → Deleted: remove disks (and with `purge` the VM's other references).
    Delete,
    /// Any phase but Deleted: change the configuration; keys that cannot apply to a
    /// running process become pending while Running or Paused.
    UpdateConfig,
    /// Stopped: disk snapshots (create, delete, rollback) through the storage drivers.
    Snapshot,
    /// Stopped: copy the disks into a new VM.
    Clone,
    /// Stopped: turn the VM into a template.
    Template,
    /// Hand the VM to another node (see [`super::migrate`]): Running | Paused with
    /// `online` (live migration), Stopped either way (the configuration moves; Proxmox
    /// also migrates a stopped VM offline when asked for online). On success this actor
    /// no longer owns the VM: Deleted, as far as it is concerned.
    Migrate { online: bool },
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Start => "start",
            Command::Stop => "stop",
            Command::Shutdown { .. } => "shutdown",
            Command::Reboot { .. } => "reboot",
            Command::Reset => "reset",
            Command::Suspend => "suspend",
            Command::Resume => "resume",
            Command::Delete => "delete",
            Command::UpdateConfig => "update the configuration of",
            Command::Snapshot => "snapshot",
            Command::Clone => "clone",
            Command::Template => "convert to a template",
            Command::Migrate { online: true } => "migrate",
            Command::Migrate { online: false } => "migrate offline (without 'online')",
        }
    }
}

/// Side effects, executed by the actor in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Write the desired state to the store before acting on QEMU, so a crash in between
    /// is reconciled towards what was asked.
    PersistDesired(Desired),
    /// Move pending configuration changes into the configuration.
    ApplyPending,
    /// Start QEMU from the configuration.
    SpawnQemu,
    /// Attach to the QEMU process found in the run directory.
    AdoptQemu,
    /// ACPI power button, re-pressed while waiting; after `timeout_ms` stop QEMU forcibly
    /// when `force_stop`, else fail the command (the VM keeps running).
    Powerdown {
        timeout_ms: u64,
        force_stop: bool,
    },
    /// QMP quit, SIGKILL after the stop timeout.
    StopQemu,
    Reset,
    Pause,
    Resume,
    /// Remove the VM's volumes and its record.
    Destroy,
    /// Let the command's own work run (config change, snapshot, clone, template).
    Work,
    /// Fail the actor so its supervisor restarts it (QEMU died unexpectedly).
    Fail(String),
}

/// A decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The state once every effect succeeded.
    pub next: VmState,
    pub effects: Vec<Effect>,
}

/// A command that is not allowed in the current phase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("cannot {action} VM {vmid}: it is {phase}")]
    IllegalInPhase {
        vmid: u32,
        action: &'static str,
        phase: &'static str,
    },
    #[error("cannot {action} VM {vmid}: it is a template")]
    Template { vmid: u32, action: &'static str },
}

fn illegal(s: &VmState, cmd: &Command) -> StateError {
    let phase = match s.phase {
        Phase::Running => "running",
        Phase::Paused => "paused (suspended)",
        Phase::Stopped => "not running",
        Phase::Deleted => "deleted",
    };
    StateError::IllegalInPhase {
        vmid: s.vmid,
        action: cmd.name(),
        phase,
    }
}

fn to(s: &VmState, phase: Phase, desired: Desired, effects: Vec<Effect>) -> Transition {
    Transition {
        next: VmState {
            phase,
            desired,
            ..*s
        },
        effects,
    }
}

/// Decides a command.
pub fn command(s: &VmState, cmd: &Command) -> Result<Transition, StateError> {
    use Phase::*;
    if s.phase == Deleted {
        return Err(illegal(s, cmd));
    }
    match (s.phase, cmd) {
        (Stopped, Command::Start) if s.template => Err(StateError::Template {
            vmid: s.vmid,
            action: cmd.name(),
        }),
        (Stopped, Command::Start) => Ok(to(
            s,
            Running,
            Desired::Running,
            vec![
                Effect::PersistDesired(Desired::Running),
                Effect::ApplyPending,
                Effect::SpawnQemu,
            ],
        )),
        (Running | Paused, Command::Stop) => Ok(to(
            s,
            Stopped,
            Desired::Stopped,
            vec![Effect::PersistDesired(Desired::Stopped), Effect::StopQemu],
        )),
        (
            Running,
            Command::Shutdown {
                timeout_ms,
                force_stop,
            },
        ) => Ok(to(
            s,
            Stopped,
            Desired::Stopped,
            vec![
                Effect::PersistDesired(Desired::Stopped),
                Effect::Powerdown {
                    timeout_ms: *timeout_ms,
                    force_stop: *force_stop,
                },
            ],
        )),
        (
            Paused,
            Command::Shutdown {
                force_stop: true, ..
            },
        ) => Ok(to(
            s,
            Stopped,
            Desired::Stopped,
            vec![Effect::PersistDesired(Desired::Stopped), Effect::StopQemu],
        )),
        (Running, Command::Reboot { timeout_ms }) => Ok(to(
            s,
            Running,
            Desired::Running,
            vec![
                Effect::Powerdown {
                    timeout_ms: *timeout_ms,
                    force_stop: true,
                },
                Effect::ApplyPending,
                Effect::SpawnQemu,
            ],
        )),
        (Running | Paused, Command::Reset) => Ok(to(s, s.phase, s.desired, vec![Effect::Reset])),
        (Running, Command::Suspend) => Ok(to(s, Paused, s.desired, vec![Effect::Pause])),
        (Paused, Command::Resume) => Ok(to(s, Running, s.desired, vec![Effect::Resume])),
        (Stopped, Command::Delete) => Ok(to(s, Deleted, Desired::Stopped, vec![Effect::Destroy])),
        (_, Command::UpdateConfig) => Ok(to(s, s.phase, s.desired, vec![Effect::Work])),
        (Stopped, Command::Snapshot | Command::Clone) => {
            Ok(to(s, s.phase, s.desired, vec![Effect::Work]))
        }
        (Stopped, Command::Template) if !s.template => {
            let mut t = to(s, s.phase, s.desired, vec![Effect::Work]);
            t.next.template = true;
            Ok(t)
        }
        (Stopped, Command::Template) => Err(StateError::Template {
            vmid: s.vmid,
            action: cmd.name(),
        }),
        (Running | Paused, Command::Migrate { online: true })
        | (Stopped, Command::Migrate { .. }) => Ok(to(s, Deleted, s.desired, vec![Effect::Work])),
        _ => Err(illegal(s, cmd)),
    }
}

/// How a QEMU process ended, as far as the decision goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitKind {
    /// The guest powered itself off (or the ACPI shutdown we asked for completed).
    GuestPoweroff,
    /// Anything else: crash, SIGKILL from outside, guest panic, host signal.
    Unexpected(String),
}

/// Decides an exit of QEMU that no command of ours caused.
pub fn exited(s: &VmState, exit: &ExitKind) -> Transition {
    match (s.phase, exit) {
        // A stale event from a process we already gave up.
        (Phase::Stopped | Phase::Deleted, _) => to(s, s.phase, s.desired, vec![]),
        // The guest chose to power off: the VM is stopped and stays so, as in Proxmox.
        (Phase::Running | Phase::Paused, ExitKind::GuestPoweroff) => to(
            s,
            Phase::Stopped,
            Desired::Stopped,
            vec![Effect::PersistDesired(Desired::Stopped)],
        ),
        (Phase::Running | Phase::Paused, ExitKind::Unexpected(why)) => to(
            s,
            Phase::Stopped,
            s.desired,
            vec![Effect::Fail(format!("QEMU of VM {} exited: {why}", s.vmid))],
        ),
    }
}

/// What a (re)started actor does, from the desired state in the store and whether a QEMU
/// process was found in the VM's run directory.
pub fn reconcile(vmid: u32, desired: Desired, template: bool, found_running: bool) -> Transition {
    let s = VmState {
        vmid,
        phase: Phase::Stopped,
        desired,
        template,
    };
    match (desired, found_running) {
        (Desired::Running, true) => to(&s, Phase::Running, desired, vec![Effect::AdoptQemu]),
        (Desired::Running, false) if !template => to(
            &s,
            Phase::Running,
            desired,
            vec![Effect::ApplyPending, Effect::SpawnQemu],
        ),
        (Desired::Running, false) => to(
            &s,
            Phase::Stopped,
            Desired::Stopped,
            vec![Effect::PersistDesired(Desired::Stopped)],
        ),
        // A stop that was persisted but not finished before a crash: finish it.
        (Desired::Stopped, true) => to(
            &s,
            Phase::Stopped,
            desired,
            vec![Effect::AdoptQemu, Effect::StopQemu],
        ),
        (Desired::Stopped, false) => to(&s, Phase::Stopped, desired, vec![]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(phase: Phase) -> VmState {
        VmState {
            vmid: 100,
            phase,
            desired: match phase {
                Phase::Running | Phase::Paused => Desired::Running,
                _ => Desired::Stopped,
            },
            template: false,
        }
    }

    const SHUTDOWN: Command = Command::Shutdown {
        timeout_ms: 1000,
        force_stop: true,
    };

    #[test]
    fn migration_hands_the_vm_over() {
        let online = Command::Migrate { online: true };
        let offline = Command::Migrate { online: false };
        for (phase, cmd) in [
            (Phase::Running, &online),
            (Phase::Paused, &online),
            (Phase::Stopped, &online),
            (Phase::Stopped, &offline),
        ] {
            let t = command(&st(phase), cmd).unwrap();
            // Once handed over, this actor refuses everything.
            assert_eq!(t.next.phase, Phase::Deleted);
            assert_eq!(t.next.desired, st(phase).desired);
            assert_eq!(t.effects, vec![Effect::Work]);
        }
        let err = command(&st(Phase::Running), &offline).unwrap_err();
        assert!(err.to_string().contains("without 'online'"), "{err}");
        assert!(command(&st(Phase::Deleted), &online).is_err());
    }

    #[test]
    fn start_stop_cycle() {
        let t = command(&st(Phase::Stopped), &Command::Start).unwrap();
        assert_eq!(t.next.phase, Phase::Running);
        assert_eq!(t.effects[0], Effect::PersistDesired(Desired::Running));
        assert_eq!(t.effects.last(), Some(&Effect::SpawnQemu));
        let t = command(&t.next, &Command::Stop).unwrap();
        assert_eq!(t.next.phase, Phase::Stopped);
        assert_eq!(t.next.desired, Desired::Stopped);
        assert_eq!(
            t.effects,
            vec![Effect::PersistDesired(Desired::Stopped), Effect::StopQemu]
        );
    }

    #[test]
    fn illegal_transitions_name_the_state() {
        let e = command(&st(Phase::Running), &Command::Start).unwrap_err();
        assert_eq!(e.to_string(), "cannot start VM 100: it is running");
        let e = command(&st(Phase::Stopped), &Command::Stop).unwrap_err();
        assert_eq!(e.to_string(), "cannot stop VM 100: it is not running");
        let e = command(&st(Phase::Running), &Command::Delete).unwrap_err();
        assert_eq!(e.to_string(), "cannot delete VM 100: it is running");
        assert!(command(&st(Phase::Running), &Command::Resume).is_err());
        assert!(command(&st(Phase::Stopped), &Command::Suspend).is_err());
        assert!(command(&st(Phase::Running), &Command::Snapshot).is_err());
        let e = command(
            &st(Phase::Paused),
            &Command::Shutdown {
                timeout_ms: 1,
                force_stop: false,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("paused"), "{e}");
        for cmd in [
            Command::Start,
            Command::Stop,
            Command::UpdateConfig,
            Command::Delete,
        ] {
            let e = command(&st(Phase::Deleted), &cmd).unwrap_err();
            assert!(e.to_string().contains("deleted"), "{e}");
        }
    }

    #[test]
    fn pause_resume_shutdown() {
        let t = command(&st(Phase::Running), &Command::Suspend).unwrap();
        assert_eq!(t.next.phase, Phase::Paused);
        assert_eq!(t.next.desired, Desired::Running);
        let t2 = command(&t.next, &SHUTDOWN).unwrap();
        assert_eq!(t2.effects[1], Effect::StopQemu);
        let t = command(&t.next, &Command::Resume).unwrap();
        assert_eq!(t.next.phase, Phase::Running);
        let t = command(&t.next, &SHUTDOWN).unwrap();
        assert!(matches!(
            t.effects[1],
            Effect::Powerdown {
                force_stop: true,
                ..
            }
        ));
        assert_eq!(t.next.phase, Phase::Stopped);
    }

    #[test]
    fn templates_do_not_start() {
        let mut s = st(Phase::Stopped);
        let t = command(&s, &Command::Template).unwrap();
        assert!(t.next.template);
        s.template = true;
        assert!(matches!(
            command(&s, &Command::Start),
            Err(StateError::Template { .. })
        ));
        assert!(command(&s, &Command::Template).is_err());
        assert!(command(&s, &Command::Clone).is_ok());
    }

    #[test]
    fn exits() {
        let t = exited(&st(Phase::Running), &ExitKind::Unexpected("crashed".into()));
        assert!(matches!(t.effects[0], Effect::Fail(_)));
        // The desired state stays running: the restarted actor starts QEMU again.
        assert_eq!(t.next.desired, Desired::Running);
        let t = exited(&st(Phase::Running), &ExitKind::GuestPoweroff);
        assert_eq!(t.next.phase, Phase::Stopped);
        assert_eq!(t.effects, vec![Effect::PersistDesired(Desired::Stopped)]);
        let t = exited(&st(Phase::Stopped), &ExitKind::Unexpected("late".into()));
        assert!(t.effects.is_empty());
    }

    #[test]
    fn reconcile_cases() {
        let t = reconcile(100, Desired::Running, false, true);
        assert_eq!(
            (t.next.phase, t.effects.clone()),
            (Phase::Running, vec![Effect::AdoptQemu])
        );
        let t = reconcile(100, Desired::Running, false, false);
        assert_eq!(t.effects.last(), Some(&Effect::SpawnQemu));
        let t = reconcile(100, Desired::Stopped, false, true);
        assert_eq!(t.effects, vec![Effect::AdoptQemu, Effect::StopQemu]);
        let t = reconcile(100, Desired::Stopped, false, false);
        assert!(t.effects.is_empty());
        let t = reconcile(100, Desired::Running, true, false);
        assert_eq!(t.next.desired, Desired::Stopped);
    }
}
