//! The time seam: every "now" and every sleep in the supervisor goes through [`Clock`], so
//! the deterministic simulation can own time (STYLE #7).

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;

/// A source of time and a way to wait.
pub trait Clock: Send + Sync + Debug + 'static {
    /// Milliseconds since the Unix epoch. Must never go backwards.
    fn now_ms(&self) -> u64;
    /// A future that completes after `duration_ms`.
    fn sleep(&self, duration_ms: u64) -> BoxFuture<'static, ()>;
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// The default clock: tokio's monotonic time anchored to the wall clock once at creation.
///
/// Reading tokio's `Instant` (not `SystemTime`) keeps `now_ms` monotonic and makes it follow
/// `tokio::time::pause`/`advance` in tests.
#[derive(Debug, Clone)]
pub struct TokioClock {
    base_instant: tokio::time::Instant,
    base_unix_ms: u64,
}

impl TokioClock {
    /// A clock anchored to the current wall-clock time.
    pub fn new() -> Self {
        let base_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self {
            base_instant: tokio::time::Instant::now(),
            base_unix_ms,
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        let elapsed_ms = u64::try_from(self.base_instant.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.base_unix_ms.saturating_add(elapsed_ms)
    }

    fn sleep(&self, duration_ms: u64) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(Duration::from_millis(duration_ms)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_tokio_time() {
        let clock = TokioClock::new();
        let t0 = clock.now_ms();
        clock.sleep(1_500).await;
        let t1 = clock.now_ms();
        assert_eq!(t1 - t0, 1_500);
    }
}
