//! The storage actor's decisions about its volume actors, as a pure state machine.
//!
//! A `volume:{id}` actor exists exactly while operations on that volume are queued or
//! running: the storage actor spawns it for the first operation, counts every operation it
//! forwards, and stops it when the volume actor has reported as many completions as it
//! was sent. Because only the storage actor sends to volume actors and it handles one
//! message at a time, "outstanding == 0" cannot race with a new forward: a stopped volume
//! actor never had a message in its mailbox.

use std::collections::BTreeMap;

/// Most volume actors one storage runs at once; beyond it operations are refused (busy)
/// rather than growing without bound.
pub const MAX_VOLUME_ACTORS: usize = 4096;

/// Where to send an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<H> {
    /// The volume's actor is running: send to it.
    Existing(H),
    /// No actor yet: spawn one, then [`VolumeTable::insert`] it.
    Spawn,
    /// Too many volume actors; refuse the operation.
    Busy,
}

#[derive(Debug, Clone)]
struct Entry<H> {
    handle: H,
    outstanding: u64,
}

/// Volume id → running volume actor, with the count of operations not yet completed.
#[derive(Debug, Clone)]
pub struct VolumeTable<H> {
    entries: BTreeMap<String, Entry<H>>,
    max_actors: usize,
}

impl<H: Clone + PartialEq> VolumeTable<H> {
    pub fn new(max_actors: usize) -> Self {
        VolumeTable {
            entries: BTreeMap::new(),
            max_actors,
        }
    }

    /// Decide where an operation on `volume` goes; counts it when it goes to an existing
    /// actor.
    pub fn route(&mut self, volume: &str) -> Route<H> {
        if let Some(e) = self.entries.get_mut(volume) {
            e.outstanding += 1;
            return Route::Existing(e.handle.clone());
        }
        if self.entries.len() >= self.max_actors {
            Route::Busy
        } else {
            Route::Spawn
        }
    }

    /// Record a freshly spawned actor that is about to receive its first operation.
    pub fn insert(&mut self, volume: &str, handle: H) {
        self.entries.insert(
            volume.to_string(),
            Entry {
                handle,
                outstanding: 1,
            },
        );
    }

    /// One operation on `volume` completed. Returns the handle to stop when nothing is
    /// outstanding any more (the entry is then removed).
    pub fn done(&mut self, volume: &str) -> Option<H> {
        let e = self.entries.get_mut(volume)?;
        e.outstanding = e.outstanding.saturating_sub(1);
        if e.outstanding == 0 {
            self.entries.remove(volume).map(|e| e.handle)
        } else {
            None
        }
    }

    /// The actor `handle` exited (stopped or failed): forget it so the next operation
    /// spawns a fresh one. Returns the volume it served.
    pub fn exited(&mut self, handle: &H) -> Option<String> {
        let volume = self
            .entries
            .iter()
            .find(|(_, e)| &e.handle == handle)
            .map(|(v, _)| v.clone())?;
        self.entries.remove(&volume);
        Some(volume)
    }

    /// Number of running volume actors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Operations outstanding on `volume`.
    pub fn outstanding(&self, volume: &str) -> u64 {
        self.entries.get(volume).map_or(0, |e| e.outstanding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let mut t: VolumeTable<u32> = VolumeTable::new(2);
        assert_eq!(t.route("a"), Route::Spawn);
        t.insert("a", 1);
        assert_eq!(t.route("a"), Route::Existing(1));
        assert_eq!(t.outstanding("a"), 2);
        assert_eq!(t.done("a"), None);
        assert_eq!(t.done("a"), Some(1), "stopped once idle");
        assert!(t.is_empty());
        assert_eq!(t.done("a"), None, "late completion is ignored");
    }

    #[test]
    fn bounded_and_exits() {
        let mut t: VolumeTable<u32> = VolumeTable::new(2);
        t.insert("a", 1);
        t.insert("b", 2);
        assert_eq!(t.route("c"), Route::Busy);
        assert_eq!(
            t.route("a"),
            Route::Existing(1),
            "existing actors still served"
        );
        assert_eq!(t.exited(&2), Some("b".to_string()));
        assert_eq!(t.route("c"), Route::Spawn);
        assert_eq!(t.exited(&9), None);
        assert_eq!(t.len(), 1);
    }
}
