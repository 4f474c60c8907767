//! Restart intensity and backoff as pure functions of time, so they are tested without tokio.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// At most `max_restarts` restarts of one child within any `restart_window_ms`; the next
/// failure inside the window escalates instead of restarting (Erlang's MaxR/MaxT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartIntensity {
    pub max_restarts: u32,
    pub restart_window_ms: u64,
}

impl Default for RestartIntensity {
    /// 3 restarts in 60 s, the design brief's VM policy.
    fn default() -> Self {
        Self {
            max_restarts: 3,
            restart_window_ms: 60_000,
        }
    }
}

/// Exponential backoff between restarts of one child: the n-th restart within the intensity
/// window waits `min(backoff_max_ms, backoff_initial_ms * 2^(n-1))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            backoff_initial_ms: 100,
            backoff_max_ms: 10_000,
        }
    }
}

impl Backoff {
    /// No delay at all (tests, and children whose start is itself slow).
    pub const NONE: Backoff = Backoff {
        backoff_initial_ms: 0,
        backoff_max_ms: 0,
    };

    /// Delay before the `restart_number`-th restart within the window (1-based).
    pub fn delay_ms(&self, restart_number: u32) -> u64 {
        let exponent = restart_number.saturating_sub(1).min(63);
        let factor = 1u64 << exponent;
        self.backoff_initial_ms
            .saturating_mul(factor)
            .min(self.backoff_max_ms)
    }
}

/// Sliding-window record of one child's restart times.
#[derive(Debug, Clone, Default)]
pub struct RestartTracker {
    /// Restart times within the window, oldest first; never longer than `max_restarts + 1`.
    times_ms: VecDeque<u64>,
}

/// The decision for one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart after `delay_ms`; this is restart number `restarts_in_window`.
    Restart {
        delay_ms: u64,
        restarts_in_window: u32,
    },
    /// The intensity is exceeded: `restarts_in_window` restarts already happened.
    Escalate { restarts_in_window: u32 },
}

impl RestartTracker {
    /// Record a failure at `now_ms` and decide whether to restart.
    pub fn on_failure(
        &mut self,
        now_ms: u64,
        intensity: RestartIntensity,
        backoff: Backoff,
    ) -> RestartDecision {
        let window_start_ms = now_ms.saturating_sub(intensity.restart_window_ms);
        while self.times_ms.front().is_some_and(|t| *t < window_start_ms) {
            self.times_ms.pop_front();
        }
        let so_far = u32::try_from(self.times_ms.len()).unwrap_or(u32::MAX);
        if so_far >= intensity.max_restarts {
            return RestartDecision::Escalate {
                restarts_in_window: so_far,
            };
        }
        self.times_ms.push_back(now_ms);
        let restarts_in_window = so_far + 1;
        RestartDecision::Restart {
            delay_ms: backoff.delay_ms(restarts_in_window),
            restarts_in_window,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTENSITY: RestartIntensity = RestartIntensity {
        max_restarts: 3,
        restart_window_ms: 1_000,
    };
    const BACKOFF: Backoff = Backoff {
        backoff_initial_ms: 10,
        backoff_max_ms: 35,
    };

    #[test]
    fn backoff_doubles_and_is_bounded() {
        assert_eq!(BACKOFF.delay_ms(1), 10);
        assert_eq!(BACKOFF.delay_ms(2), 20);
        assert_eq!(BACKOFF.delay_ms(3), 35);
        assert_eq!(BACKOFF.delay_ms(u32::MAX), 35);
        assert_eq!(Backoff::NONE.delay_ms(7), 0);
    }

    #[test]
    fn fourth_failure_in_window_escalates() {
        let mut t = RestartTracker::default();
        let d: Vec<_> = (0..4)
            .map(|i| t.on_failure(i * 10, INTENSITY, BACKOFF))
            .collect();
        assert_eq!(
            d,
            vec![
                RestartDecision::Restart {
                    delay_ms: 10,
                    restarts_in_window: 1
                },
                RestartDecision::Restart {
                    delay_ms: 20,
                    restarts_in_window: 2
                },
                RestartDecision::Restart {
                    delay_ms: 35,
                    restarts_in_window: 3
                },
                RestartDecision::Escalate {
                    restarts_in_window: 3
                },
            ]
        );
    }

    #[test]
    fn old_restarts_leave_the_window() {
        let mut t = RestartTracker::default();
        for i in 0..3 {
            t.on_failure(i, INTENSITY, BACKOFF);
        }
        // 1_002 ms later the first two restarts (at 0 and 1) are outside the 1_000 ms window.
        let d = t.on_failure(1_002, INTENSITY, BACKOFF);
        assert_eq!(
            d,
            RestartDecision::Restart {
                delay_ms: 20,
                restarts_in_window: 2
            }
        );
    }

    #[test]
    fn zero_max_restarts_escalates_at_once() {
        let mut t = RestartTracker::default();
        let intensity = RestartIntensity {
            max_restarts: 0,
            restart_window_ms: 1_000,
        };
        assert_eq!(
            t.on_failure(5, intensity, BACKOFF),
            RestartDecision::Escalate {
                restarts_in_window: 0
            }
        );
    }
}
