//! Round-robin archives of the usage samples, in the shape Proxmox's `rrddata` serves.
//!
//! Each series (the node, or one VM) has one archive per timeframe; an archive is a ring
//! of [`ROWS`] rows of `step_s` seconds. A sample is folded into the current row of every
//! archive (sum and count for `AVERAGE`, maximum for `MAX`), so the row being filled is
//! already visible; RRDtool would show it only once its step ends.
//!
//! Persistence: a row is one store key (`("rrd", kind, id, archive, slot)`), so a flush
//! writes only the rows that changed since the last one (one row per archive and series),
//! all series in one transaction. A restart reloads every row and keeps filling them.

use std::collections::{BTreeMap, BTreeSet};

use gpve_store::{Key, RangeOptions, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Rows per archive (Proxmox keeps 70).
pub const ROWS: usize = 70;

/// Store subspace of the archives.
pub const STORE_PREFIX: &str = "rrd";

/// A Proxmox `timeframe` and the archive that serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeframe {
    pub name: &'static str,
    /// Seconds one row covers.
    pub step_s: u64,
}

/// Proxmox's archives: 1 min, 30 min, 3 h, 12 h and 1 week rows, plus `decade` (4 weeks)
/// which Proxmox VE 9 offers for nodes.
pub const TIMEFRAMES: [Timeframe; 6] = [
    Timeframe {
        name: "hour",
        step_s: 60,
    },
    Timeframe {
        name: "day",
        step_s: 1_800,
    },
    Timeframe {
        name: "week",
        step_s: 10_800,
    },
    Timeframe {
        name: "month",
        step_s: 43_200,
    },
    Timeframe {
        name: "year",
        step_s: 604_800,
    },
    Timeframe {
        name: "decade",
        step_s: 2_419_200,
    },
];

/// Consolidation function (`cf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    Average,
    Max,
}

impl Cf {
    /// Parse Proxmox's `AVERAGE` / `MAX`.
    pub fn parse(s: &str) -> Option<Cf> {
        match s {
            "AVERAGE" => Some(Cf::Average),
            "MAX" => Some(Cf::Max),
            _ => None,
        }
    }
}

/// Index into [`TIMEFRAMES`] of a timeframe name.
pub fn timeframe_index(name: &str) -> Option<usize> {
    TIMEFRAMES.iter().position(|t| t.name == name)
}

/// Which series: the node or a VM.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SeriesId {
    Node(String),
    Vm(u32),
}

impl SeriesId {
    fn kind(&self) -> &'static str {
        match self {
            SeriesId::Node(_) => "node",
            SeriesId::Vm(_) => "qemu",
        }
    }

    fn id(&self) -> String {
        match self {
            SeriesId::Node(n) => n.clone(),
            SeriesId::Vm(v) => v.to_string(),
        }
    }

    fn prefix(&self) -> Key {
        Key::prefix(&(STORE_PREFIX, self.kind(), self.id()))
    }

    fn row_key(&self, archive: usize, slot: usize) -> Key {
        Key::pack(&(
            STORE_PREFIX,
            self.kind(),
            self.id(),
            archive as i64,
            slot as i64,
        ))
    }

    fn parse(kind: &str, id: &str) -> Option<SeriesId> {
        match kind {
            "node" => Some(SeriesId::Node(id.to_string())),
            "qemu" => id.parse().ok().map(SeriesId::Vm),
            _ => None,
        }
    }
}

/// One row: per field, the sum, count and maximum of the samples in `[time, time+step)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub time: u64,
    pub fields: BTreeMap<String, Acc>,
}

/// Accumulator of one field in one row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Acc {
    pub sum: f64,
    pub count: u32,
    pub max: f64,
}

impl Acc {
    fn value(&self, cf: Cf) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        Some(match cf {
            Cf::Average => self.sum / f64::from(self.count),
            Cf::Max => self.max,
        })
    }
}

#[derive(Debug, Clone)]
struct Series {
    /// `archives[i][slot]` for timeframe `i`.
    archives: Vec<Vec<Option<Row>>>,
}

impl Default for Series {
    fn default() -> Self {
        Series {
            archives: TIMEFRAMES.iter().map(|_| vec![None; ROWS]).collect(),
        }
    }
}

fn slot_of(time: u64, step_s: u64) -> usize {
    ((time / step_s) % ROWS as u64) as usize
}

/// Failures of persisting or loading the archives.
#[derive(Debug, thiserror::Error)]
pub enum RrdError {
    #[error("the store failed while persisting the usage archives")]
    Store(#[from] StoreError),
}

/// The archives of every series on this node.
#[derive(Debug, Default)]
pub struct Rrd {
    series: BTreeMap<SeriesId, Series>,
    /// Rows changed since the last flush: (series, archive, slot).
    dirty: BTreeSet<(SeriesId, usize, usize)>,
    /// Series to delete from the store at the next flush.
    removed: BTreeSet<SeriesId>,
}

impl Rrd {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fold one sample of `id` taken at `at_s` into every archive. Non-finite values are
    /// skipped (unknown, as RRDtool's `U`).
    pub fn update(&mut self, id: &SeriesId, at_s: u64, values: &BTreeMap<&'static str, f64>) {
        let series = self.series.entry(id.clone()).or_default();
        for (i, tf) in TIMEFRAMES.iter().enumerate() {
            let time = at_s - at_s % tf.step_s;
            let slot = slot_of(time, tf.step_s);
            let row = &mut series.archives[i][slot];
            // A row left from an earlier lap of the ring starts over.
            if row.as_ref().is_none_or(|r| r.time != time) {
                *row = Some(Row {
                    time,
                    fields: BTreeMap::new(),
                });
            }
            let Some(row) = row.as_mut() else { continue };
            for (name, v) in values {
                if !v.is_finite() {
                    continue;
                }
                let acc = row.fields.entry((*name).to_string()).or_insert(Acc {
                    sum: 0.0,
                    count: 0,
                    max: f64::MIN,
                });
                acc.sum += v;
                acc.count += 1;
                acc.max = acc.max.max(*v);
            }
            self.dirty.insert((id.clone(), i, slot));
        }
    }

    /// Drop every series not in `keep` (VMs deleted since); the store copy goes at the
    /// next flush.
    pub fn retain(&mut self, keep: &BTreeSet<SeriesId>) {
        let gone: Vec<SeriesId> = self
            .series
            .keys()
            .filter(|k| !keep.contains(k))
            .cloned()
            .collect();
        for id in gone {
            self.series.remove(&id);
            self.dirty.retain(|(s, _, _)| s != &id);
            self.removed.insert(id);
        }
    }

    /// Known series.
    pub fn contains(&self, id: &SeriesId) -> bool {
        self.series.contains_key(id)
    }

    /// Proxmox's `rrddata` answer: one object per row of the timeframe's archive, oldest
    /// first, ending with the row holding `now_s`; a row without samples has only `time`.
    pub fn points(&self, id: &SeriesId, timeframe: usize, cf: Cf, now_s: u64) -> Vec<Value> {
        let Some(tf) = TIMEFRAMES.get(timeframe) else {
            return Vec::new();
        };
        let series = self.series.get(id);
        let last = now_s - now_s % tf.step_s;
        let first = last.saturating_sub(tf.step_s * (ROWS as u64 - 1));
        let mut out = Vec::with_capacity(ROWS);
        let mut time = first;
        while time <= last {
            let mut point = Map::new();
            point.insert("time".into(), json!(time));
            let row = series
                .and_then(|s| s.archives[timeframe][slot_of(time, tf.step_s)].as_ref())
                .filter(|r| r.time == time);
            if let Some(row) = row {
                for (name, acc) in &row.fields {
                    if let Some(v) = acc.value(cf) {
                        point.insert(name.clone(), json!(v));
                    }
                }
            }
            out.push(Value::Object(point));
            time += tf.step_s;
        }
        out
    }

    /// Rows waiting to be written.
    pub fn dirty_rows(&self) -> usize {
        self.dirty.len()
    }

    /// Take the pending writes (changed rows and removed series) for [`persist`].
    pub fn take_pending(&mut self) -> Pending {
        let dirty = std::mem::take(&mut self.dirty);
        let removed = std::mem::take(&mut self.removed);
        let mut writes = Vec::with_capacity(dirty.len());
        for (id, archive, slot) in &dirty {
            let row = self
                .series
                .get(id)
                .and_then(|s| s.archives[*archive][*slot].as_ref());
            if let Some(row) = row
                && let Ok(bytes) = serde_json::to_vec(row)
            {
                writes.push((id.row_key(*archive, *slot), bytes));
            }
        }
        let clears = removed.iter().map(SeriesId::prefix).collect();
        Pending {
            writes,
            clears,
            dirty,
            removed,
        }
    }

    /// Put back writes that could not be persisted, so the next flush retries them (it
    /// writes the rows as they are then).
    pub fn restore_pending(&mut self, pending: Pending) {
        self.dirty.extend(pending.dirty);
        self.removed.extend(pending.removed);
    }

    /// Load every persisted row (rows that do not decode are skipped with a warning).
    pub async fn load(store: &Store) -> Result<Rrd, RrdError> {
        let prefix = Key::prefix(&(STORE_PREFIX,));
        let rows: Vec<(Key, Vec<u8>)> = store
            .transact(|tx| {
                let prefix = prefix.clone();
                Box::pin(async move {
                    tx.get_range(&prefix.subspace_range(), RangeOptions::all())
                        .await
                })
            })
            .await?;
        let mut rrd = Rrd::new();
        for (key, bytes) in rows {
            let parsed = key
                .unpack::<(String, String, String, i64, i64)>()
                .ok()
                .and_then(|(_, kind, id, archive, slot)| {
                    let id = SeriesId::parse(&kind, &id)?;
                    let archive = usize::try_from(archive)
                        .ok()
                        .filter(|a| *a < TIMEFRAMES.len())?;
                    let slot = usize::try_from(slot).ok().filter(|s| *s < ROWS)?;
                    let row: Row = serde_json::from_slice(&bytes).ok()?;
                    (slot_of(row.time, TIMEFRAMES[archive].step_s) == slot)
                        .then_some((id, archive, slot, row))
                });
            match parsed {
                Some((id, archive, slot, row)) => {
                    rrd.series.entry(id).or_default().archives[archive][slot] = Some(row);
                }
                None => tracing::warn!(?key, "skipping an unreadable usage archive row"),
            }
        }
        Ok(rrd)
    }
}

/// Writes of one flush.
#[derive(Debug, Default)]
pub struct Pending {
    /// (row key, JSON row).
    pub writes: Vec<(Key, Vec<u8>)>,
    /// Prefixes of removed series.
    pub clears: Vec<Key>,
    dirty: BTreeSet<(SeriesId, usize, usize)>,
    removed: BTreeSet<SeriesId>,
}

/// Write `pending` in one transaction.
pub async fn persist(store: &Store, pending: &Pending) -> Result<(), RrdError> {
    if pending.writes.is_empty() && pending.clears.is_empty() {
        return Ok(());
    }
    store
        .transact(|tx| {
            for prefix in &pending.clears {
                tx.clear_prefix(prefix);
            }
            for (k, v) in &pending.writes {
                tx.set(k, v);
            }
            Box::pin(async { Ok(()) })
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(pairs: &[(&'static str, f64)]) -> BTreeMap<&'static str, f64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn samples_fold_into_average_and_max_per_step() {
        // Aligned to every archive's step, like a real clock far from the epoch.
        const T: u64 = 2_419_200 * 700;
        let mut r = Rrd::new();
        let id = SeriesId::Vm(100);
        r.update(&id, T, &vals(&[("cpu", 0.2), ("mem", 100.0)]));
        r.update(&id, T + 10, &vals(&[("cpu", 0.4), ("mem", f64::NAN)]));
        r.update(&id, T + 60, &vals(&[("cpu", 1.0)]));
        let hour = timeframe_index("hour").expect("hour");
        let pts = r.points(&id, hour, Cf::Average, T + 70);
        assert_eq!(pts.len(), ROWS);
        assert_eq!(pts[ROWS - 1]["time"], T + 60);
        assert_eq!(pts[ROWS - 1]["cpu"], 1.0);
        assert_eq!(pts[ROWS - 2]["time"], T);
        assert!((pts[ROWS - 2]["cpu"].as_f64().expect("cpu") - 0.3).abs() < 1e-9);
        assert_eq!(pts[ROWS - 2]["mem"], 100.0, "NaN is skipped, not averaged");
        assert!(
            pts[0].get("cpu").is_none(),
            "rows without samples have only time"
        );
        let max = r.points(&id, hour, Cf::Max, T + 70);
        assert_eq!(max[ROWS - 2]["cpu"], 0.4);
        let day = r.points(
            &id,
            timeframe_index("day").expect("day"),
            Cf::Average,
            T + 70,
        );
        assert_eq!(day.len(), ROWS);
        assert_eq!(day[ROWS - 1]["time"], T);
        assert!((day[ROWS - 1]["cpu"].as_f64().expect("cpu") - 1.6 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn a_lap_of_the_ring_replaces_old_rows() {
        const T: u64 = 2_419_200 * 700;
        let mut r = Rrd::new();
        let id = SeriesId::Node("n1".into());
        r.update(&id, T, &vals(&[("cpu", 0.5)]));
        let later = T + 60 * ROWS as u64;
        r.update(&id, later, &vals(&[("cpu", 0.1)]));
        let pts = r.points(&id, 0, Cf::Average, later);
        assert_eq!(pts[ROWS - 1]["cpu"], 0.1);
        assert!(pts.iter().all(|p| p["time"] != T));
    }

    #[tokio::test]
    async fn rows_persist_and_reload_and_removed_series_are_cleared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_redb(&dir.path().join("s.redb")).expect("store");
        let mut r = Rrd::new();
        r.update(&SeriesId::Vm(100), 6_000, &vals(&[("cpu", 0.25)]));
        r.update(&SeriesId::Vm(101), 6_000, &vals(&[("cpu", 0.5)]));
        assert_eq!(r.dirty_rows(), 2 * TIMEFRAMES.len());
        let pending = r.take_pending();
        persist(&store, &pending).await.expect("persist");
        assert_eq!(r.dirty_rows(), 0);
        let loaded = Rrd::load(&store).await.expect("load");
        assert_eq!(
            loaded.points(&SeriesId::Vm(100), 0, Cf::Average, 6_000),
            r.points(&SeriesId::Vm(100), 0, Cf::Average, 6_000)
        );
        r.retain(&[SeriesId::Vm(100)].into());
        let pending = r.take_pending();
        persist(&store, &pending).await.expect("persist");
        let loaded = Rrd::load(&store).await.expect("load");
        assert!(loaded.contains(&SeriesId::Vm(100)));
        assert!(!loaded.contains(&SeriesId::Vm(101)));
    }
}
