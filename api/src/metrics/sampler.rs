//! Messages per second of every actor over the last sampling interval.
//!
//! The directory only counts messages handled (a monotonic counter per path, shared by all
//! incarnations of one child); a rate needs two samples in time. One background task per
//! server samples the directory every [`RATE_SAMPLE_INTERVAL_MS`]; it starts with the
//! first reader and ends when the server's state is dropped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use gpve_supervisor::{ActorSnapshot, Directory};

/// How often the message counters are sampled.
pub const RATE_SAMPLE_INTERVAL_MS: u64 = 1_000;

#[derive(Debug, Default)]
struct Samples {
    /// Last sample per path: (messages handled, at_ms).
    last: BTreeMap<String, (u64, u64)>,
    /// Messages per second between the last two samples.
    rates: BTreeMap<String, f64>,
}

/// The sampler; one per server.
#[derive(Debug, Clone, Default)]
pub struct RateSampler {
    samples: Arc<Mutex<Samples>>,
    started: Arc<AtomicBool>,
}

impl RateSampler {
    pub fn new() -> Self {
        Self::default()
    }

    fn samples(&self) -> MutexGuard<'_, Samples> {
        self.samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Start the sampling task over `directory` unless it runs already. Call from inside a
    /// tokio runtime (any handler).
    pub fn ensure_running(&self, directory: &Directory) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Mutex<Samples>> = Arc::downgrade(&self.samples);
        let directory = directory.clone();
        let clock = directory.clock().clone();
        self.record(&directory.snapshot(), clock.now_ms());
        tokio::spawn(async move {
            loop {
                clock.sleep(RATE_SAMPLE_INTERVAL_MS).await;
                let Some(samples) = weak.upgrade() else {
                    break;
                };
                let sampler = RateSampler {
                    samples,
                    started: Arc::new(AtomicBool::new(true)),
                };
                sampler.record(&directory.snapshot(), clock.now_ms());
            }
        });
    }

    /// Take one sample of `actors` at `now_ms`.
    pub fn record(&self, actors: &[ActorSnapshot], now_ms: u64) {
        let mut s = self.samples();
        let mut last = BTreeMap::new();
        let mut rates = BTreeMap::new();
        for a in actors {
            let rate = match s.last.get(&a.path) {
                // A count that went down is a new entry at a reused path: no rate yet.
                Some(&(count, at_ms)) if now_ms > at_ms && a.messages_handled >= count => {
                    (a.messages_handled - count) as f64 * 1_000.0 / (now_ms - at_ms) as f64
                }
                _ => 0.0,
            };
            rates.insert(a.path.clone(), rate);
            last.insert(a.path.clone(), (a.messages_handled, now_ms));
        }
        s.last = last;
        s.rates = rates;
    }

    /// Every actor's rate at once (one lock for a whole tree).
    pub fn rates(&self) -> BTreeMap<String, f64> {
        self.samples().rates.clone()
    }

    /// Messages per second of the actor at `path` over the last interval (0 before two
    /// samples exist).
    pub fn rate(&self, path: &str) -> f64 {
        self.samples().rates.get(path).copied().unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpve_supervisor::ActorState;

    fn snap(path: &str, handled: u64) -> ActorSnapshot {
        ActorSnapshot {
            path: path.into(),
            kind: "k".into(),
            id: path.into(),
            parent: None,
            state: ActorState::Running,
            messages_handled: handled,
            mailbox_depth: 0,
            restarts: 0,
            recent_restarts: Vec::new(),
            last_failure: None,
            started_at_ms: Some(0),
            owns: Default::default(),
        }
    }

    #[test]
    fn rate_is_delta_over_interval_and_resets_on_reuse() {
        let s = RateSampler::new();
        s.record(&[snap("a", 10)], 1_000);
        assert_eq!(s.rate("a"), 0.0);
        s.record(&[snap("a", 30)], 3_000);
        assert!((s.rate("a") - 10.0).abs() < 1e-9);
        s.record(&[snap("a", 5)], 4_000);
        assert_eq!(s.rate("a"), 0.0);
        s.record(&[], 5_000);
        assert_eq!(s.rate("a"), 0.0);
        assert_eq!(s.rate("unknown"), 0.0);
    }
}
