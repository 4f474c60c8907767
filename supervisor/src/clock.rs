//! The time seam: every "now" and every sleep in the supervisor goes through [`Clock`], so
//! the deterministic simulation can own time (STYLE #7).

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
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
    /// A clock anchored to the current wall-clock time (the installed process clock's, if
    /// any: see [`install_process_clock`]).
    pub fn new() -> Self {
        Self::anchored(wall_now_ms())
    }

    /// A clock that reads `base_unix_ms` now and follows tokio time from here; the
    /// simulation anchors it to a fixed epoch so every run sees the same timestamps.
    pub fn anchored(base_unix_ms: u64) -> Self {
        Self {
            base_instant: tokio::time::Instant::now(),
            base_unix_ms,
        }
    }
}

/// The clock that [`wall_now_ms`] reads once installed (the simulation installs its virtual
/// clock; production never does and reads the system clock).
static PROCESS_CLOCK: OnceLock<SharedClock> = OnceLock::new();

/// Installs the process-wide clock behind [`wall_now_ms`]; returns `false` (and changes
/// nothing) if one was installed already. Process-wide because timestamps are read deep in
/// handlers and actors that have no clock to hand; one simulated cluster per process.
pub fn install_process_clock(clock: SharedClock) -> bool {
    PROCESS_CLOCK.set(clock).is_ok()
}

/// Milliseconds since the Unix epoch: the installed process clock, else the system clock.
/// Every timestamp a decision or a stored record depends on goes through here (STYLE #7).
pub fn wall_now_ms() -> u64 {
    match PROCESS_CLOCK.get() {
        Some(clock) => clock.now_ms(),
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
    }
}

/// [`wall_now_ms`] in whole seconds, as Proxmox's timestamps are.
pub fn wall_now_s() -> i64 {
    i64::try_from(wall_now_ms() / 1_000).unwrap_or(i64::MAX)
}

/// The process-wide seed of [`seeded_u64`] unless [`install_process_seed`] sets one.
static PROCESS_RNG: AtomicU64 = AtomicU64::new(0);
static PROCESS_RNG_SEEDED: OnceLock<()> = OnceLock::new();

/// Seeds [`seeded_u64`] (the simulation passes its seed); returns `false` if seeded before.
pub fn install_process_seed(seed: u64) -> bool {
    if PROCESS_RNG_SEEDED.set(()).is_err() {
        return false;
    }
    PROCESS_RNG.store(seed, Ordering::Relaxed);
    true
}

/// A pseudo-random `u64` for non-secret choices (generated MAC addresses, temp names): from
/// the installed seed (splitmix64) in a simulation, from the OS otherwise. Never for keys,
/// tickets or salts.
pub fn seeded_u64() -> u64 {
    if PROCESS_RNG_SEEDED.get().is_none() {
        return rand::random();
    }
    let mut z = PROCESS_RNG
        .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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
