//! The agent's fencing decisions. An agent that cannot renew its lease before the
//! deadline kills its HA-managed QEMUs, because after `deadline + fence_grace_ms` the
//! server starts them elsewhere. A killed VM is started again only under a newer
//! placement generation (the server's decision), never by the node on its own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Refusals of the fencing rules.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FenceError {
    #[error(
        "node is fenced: it has not held its lease since {since_ms} (Unix ms); HA VMs stay stopped"
    )]
    Fenced { since_ms: u64 },
    #[error(
        "VM {vmid} was fenced at generation {fenced}; a start needs a newer placement (got {offered})"
    )]
    FencedGeneration {
        vmid: u32,
        fenced: u64,
        offered: u64,
    },
    #[error(
        "stale generation {offered} for VM {vmid}: the current placement is generation {current}"
    )]
    StaleGeneration {
        vmid: u32,
        current: u64,
        offered: u64,
    },
}

/// The lease deadline the node last saw, and how early to act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceClock {
    /// Unix ms until which the server counts the lease (the latest deadline seen: the
    /// real one can only be later, so fencing by it is never late).
    pub lease_deadline_ms: u64,
    /// Fence this long before the deadline, so the kill is done when the lease ends.
    pub margin_ms: u64,
}

impl FenceClock {
    /// When HA VMs must be dead.
    pub fn deadline_ms(&self) -> u64 {
        self.lease_deadline_ms.saturating_sub(self.margin_ms)
    }

    pub fn should_fence(&self, now_ms: u64) -> bool {
        now_ms >= self.deadline_ms()
    }
}

/// What the fence loop must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceDecision {
    /// The lease holds (or was never seen: nothing to protect yet).
    Hold,
    /// The lease is lost: kill every HA-managed QEMU, now and whenever one is found.
    Fence,
}

/// The fencing state of one node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Fencer {
    clock: Option<FenceClock>,
    /// Since when the node counts as fenced.
    fenced_since_ms: Option<u64>,
    /// VMs killed by fencing, with the generation they had.
    killed: BTreeMap<u32, u64>,
}

impl Fencer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The lease was read (or a renewal acknowledged) with this deadline.
    pub fn lease_seen(&mut self, lease_deadline_ms: u64, margin_ms: u64) {
        let later = self
            .clock
            .is_none_or(|c| lease_deadline_ms >= c.lease_deadline_ms);
        if later {
            self.clock = Some(FenceClock {
                lease_deadline_ms,
                margin_ms,
            });
        }
    }

    pub fn clock(&self) -> Option<FenceClock> {
        self.clock
    }

    pub fn fenced_since_ms(&self) -> Option<u64> {
        self.fenced_since_ms
    }

    /// Check the clock: fenced from the deadline until a later lease is seen.
    pub fn poll(&mut self, now_ms: u64) -> FenceDecision {
        match self.clock {
            Some(c) if c.should_fence(now_ms) => {
                self.fenced_since_ms.get_or_insert(now_ms);
                FenceDecision::Fence
            }
            _ => {
                self.fenced_since_ms = None;
                FenceDecision::Hold
            }
        }
    }

    /// Fencing killed `vmid`, which ran under `generation`.
    pub fn killed(&mut self, vmid: u32, generation: u64) {
        let g = self.killed.entry(vmid).or_insert(generation);
        *g = (*g).max(generation);
    }

    /// May an HA VM be started under `generation`?
    pub fn may_start(&self, vmid: u32, generation: u64) -> Result<(), FenceError> {
        if let Some(since_ms) = self.fenced_since_ms {
            return Err(FenceError::Fenced { since_ms });
        }
        match self.killed.get(&vmid) {
            Some(&fenced) if generation <= fenced => Err(FenceError::FencedGeneration {
                vmid,
                fenced,
                offered: generation,
            }),
            _ => Ok(()),
        }
    }
}

/// A command for `vmid` carrying `offered` against the placement the node holds.
pub fn check_generation(vmid: u32, current: u64, offered: u64) -> Result<(), FenceError> {
    if offered < current {
        return Err(FenceError::StaleGeneration {
            vmid,
            current,
            offered,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_at_the_deadline_minus_margin_until_a_later_lease_is_seen() {
        let mut f = Fencer::new();
        assert_eq!(
            f.poll(1_000_000),
            FenceDecision::Hold,
            "never held: nothing to fence"
        );
        f.lease_seen(15_000, 500);
        // An older deadline read late changes nothing.
        f.lease_seen(14_000, 500);
        let cases = [
            (10_000, FenceDecision::Hold),
            (14_499, FenceDecision::Hold),
            (14_500, FenceDecision::Fence),
            (20_000, FenceDecision::Fence),
        ];
        for (now, want) in cases {
            assert_eq!(f.poll(now), want, "at {now}");
        }
        assert_eq!(
            f.may_start(100, 9),
            Err(FenceError::Fenced { since_ms: 14_500 })
        );
        f.killed(100, 3);
        f.lease_seen(26_000, 500);
        assert_eq!(f.poll(20_001), FenceDecision::Hold);
        assert_eq!(
            f.may_start(100, 3),
            Err(FenceError::FencedGeneration {
                vmid: 100,
                fenced: 3,
                offered: 3
            })
        );
        assert_eq!(f.may_start(100, 4), Ok(()));
        assert_eq!(f.may_start(101, 1), Ok(()));
    }

    #[test]
    fn stale_generations_are_refused() {
        assert!(check_generation(100, 5, 5).is_ok());
        assert!(check_generation(100, 5, 6).is_ok());
        let e = check_generation(100, 5, 4).unwrap_err();
        assert_eq!(
            e.to_string(),
            "stale generation 4 for VM 100: the current placement is generation 5"
        );
    }
}
