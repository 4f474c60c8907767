//! The model of acknowledged writes the checker compares the store with, and the
//! supervision-intensity bookkeeping.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use gpve_actors::vm::VmEntry;

/// What the clients were told about one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Life {
    /// A create was acknowledged (VMID handed out); its task has not ended.
    Reserved,
    /// The create task ended OK.
    Exists,
    /// The delete task ended OK.
    Deleted,
    /// An operation failed in a way that leaves existence open (the model stops checking).
    Unknown,
}

#[derive(Debug, Clone)]
struct DescWrite {
    id: u64,
    value: String,
    started: u64,
    ended: Option<u64>,
}

/// One VM's model.
#[derive(Debug, Clone)]
pub struct VmModel {
    pub life: Life,
    /// Bumped by every acknowledged create: a delete or create that ends refers to the
    /// incarnation it was acknowledged for.
    pub epoch: u64,
    pub node: String,
    creates_in_flight: u32,
    deletes_in_flight: u32,
    /// When (model sequence) the delete that made it [`Life::Deleted`] ended.
    deleted_seq: u64,
    /// Values of `description` the store may hold given the acknowledged writes.
    allowed_desc: BTreeSet<String>,
    writes: Vec<DescWrite>,
}

impl VmModel {
    fn new(node: &str) -> Self {
        VmModel {
            life: Life::Unknown,
            epoch: 0,
            node: node.into(),
            creates_in_flight: 0,
            deletes_in_flight: 0,
            deleted_seq: 0,
            allowed_desc: BTreeSet::new(),
            writes: Vec::new(),
        }
    }
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

/// Acknowledged writes, per VMID.
#[derive(Debug, Default)]
pub struct Model {
    vms: BTreeMap<u32, VmModel>,
    /// Logical clock ordering write starts and ends.
    seq: u64,
    /// Creates without a VMID in flight: each may have reserved any free VMID.
    unnamed_in_flight: u32,
    /// When the last of them ended (a failed one may leave its reservation behind).
    unnamed_last_end: u64,
}

impl Model {
    fn vm(&mut self, vmid: u32, node: &str) -> &mut VmModel {
        self.vms.entry(vmid).or_insert_with(|| VmModel::new(node))
    }

    fn tick(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// A create naming `vmid` is about to be sent (its reserve may commit whatever the
    /// client hears).
    pub fn create_sent(&mut self, vmid: u32, node: &str) {
        self.vm(vmid, node).creates_in_flight += 1;
    }

    /// A create was acknowledged with `vmid`: the VMID is handed out. `named` says whether
    /// [`Model::create_sent`] was called for it. Returns the VM's new epoch.
    pub fn create_acked(
        &mut self,
        vmid: u32,
        node: &str,
        desc: &str,
        named: bool,
    ) -> Result<u64, Violation> {
        let vm = self.vm(vmid, node);
        if !named {
            vm.creates_in_flight += 1;
        }
        if matches!(vm.life, Life::Reserved | Life::Exists) && vm.deletes_in_flight == 0 {
            return Err(Violation {
                invariant: "no VMID handed out twice",
                detail: format!(
                    "VMID {vmid} was acknowledged to a create on {node} while an acknowledged VM {vmid} (on {}) exists",
                    vm.node
                ),
            });
        }
        *vm = VmModel {
            life: Life::Reserved,
            epoch: vm.epoch + 1,
            node: node.into(),
            creates_in_flight: vm.creates_in_flight,
            deletes_in_flight: vm.deletes_in_flight,
            deleted_seq: 0,
            allowed_desc: BTreeSet::from([desc.to_string()]),
            writes: Vec::new(),
        };
        Ok(vm.epoch)
    }

    /// A create naming `vmid` was refused or got no answer.
    pub fn create_refused(&mut self, vmid: u32) {
        if let Some(vm) = self.vms.get_mut(&vmid) {
            vm.creates_in_flight = vm.creates_in_flight.saturating_sub(1);
        }
    }

    /// The create task of `vmid` acknowledged at `epoch` ended (`ok`: exit status OK).
    pub fn create_ended(&mut self, vmid: u32, epoch: u64, ok: bool) {
        if let Some(vm) = self.vms.get_mut(&vmid) {
            vm.creates_in_flight = vm.creates_in_flight.saturating_sub(1);
            if vm.life == Life::Reserved && vm.epoch == epoch {
                vm.life = if ok { Life::Exists } else { Life::Unknown };
            }
        }
    }

    /// A create without a VMID is about to be sent.
    pub fn unnamed_create_sent(&mut self) {
        self.unnamed_in_flight += 1;
    }

    /// A create without a VMID got its answer.
    pub fn unnamed_create_answered(&mut self) {
        self.unnamed_in_flight = self.unnamed_in_flight.saturating_sub(1);
        self.unnamed_last_end = self.tick();
    }

    /// A delete of `vmid` is about to be sent; returns the epoch it deletes. From here on
    /// the VM may vanish: the API starts the delete task before its answer reaches the
    /// client, so a check between the two must not call the VM lost.
    pub fn delete_sent(&mut self, vmid: u32) -> Option<u64> {
        let vm = self.vms.get_mut(&vmid)?;
        vm.deletes_in_flight += 1;
        Some(vm.epoch)
    }

    /// The delete of `vmid` was refused: no task ran, the VM is as before.
    pub fn delete_refused(&mut self, vmid: u32) {
        if let Some(vm) = self.vms.get_mut(&vmid) {
            vm.deletes_in_flight = vm.deletes_in_flight.saturating_sub(1);
        }
    }

    /// The delete task of `vmid` acknowledged at `epoch` ended.
    pub fn delete_ended(&mut self, vmid: u32, epoch: Option<u64>, ok: bool) {
        let now = self.tick();
        if let Some(vm) = self.vms.get_mut(&vmid) {
            vm.deleted_seq = now;
            vm.deletes_in_flight = vm.deletes_in_flight.saturating_sub(1);
            // A create acknowledged since made a new incarnation this delete did not touch.
            if Some(vm.epoch) == epoch {
                vm.life = if ok { Life::Deleted } else { Life::Unknown };
            }
        }
    }

    /// The VM moved (HA relocation acknowledged in the store).
    pub fn moved(&mut self, vmid: u32, node: &str) {
        if let Some(vm) = self.vms.get_mut(&vmid) {
            vm.node = node.into();
        }
    }

    /// A `description` write is about to be sent; returns its id.
    pub fn desc_sent(&mut self, vmid: u32, node: &str, value: &str) -> u64 {
        let id = self.tick();
        self.vm(vmid, node).writes.push(DescWrite {
            id,
            value: value.into(),
            started: id,
            ended: None,
        });
        id
    }

    /// The write `id` ended; `acked`: the client was told it committed.
    pub fn desc_ended(&mut self, vmid: u32, id: u64, acked: bool) {
        let now = self.tick();
        let Some(vm) = self.vms.get_mut(&vmid) else {
            return;
        };
        let Some(pos) = vm.writes.iter().position(|w| w.id == id) else {
            return;
        };
        vm.writes[pos].ended = Some(now);
        let this = vm.writes[pos].clone();
        if acked {
            // After an acknowledged write only it, or a write that overlapped it, can be
            // the latest value.
            let mut allowed = BTreeSet::from([this.value.clone()]);
            for w in &vm.writes {
                if w.id != id && w.ended.is_none_or(|e| e > this.started) {
                    allowed.insert(w.value.clone());
                }
            }
            vm.allowed_desc = allowed;
            vm.writes
                .retain(|w| w.id == id || w.ended.is_none_or(|e| e > this.started));
        } else {
            // Unacknowledged: it may or may not have applied.
            vm.allowed_desc.insert(this.value);
        }
    }

    /// VMIDs the model believes exist.
    pub fn live(&self) -> Vec<u32> {
        self.vms
            .iter()
            .filter(|(_, v)| matches!(v.life, Life::Exists | Life::Reserved))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Compares the model with the store's VM entries.
    pub fn check(&self, entries: &BTreeMap<u32, VmEntry>) -> Result<(), Violation> {
        for (vmid, vm) in &self.vms {
            let entry = entries.get(vmid);
            match vm.life {
                Life::Exists if vm.deletes_in_flight == 0 => {
                    let Some(e) = entry else {
                        return Err(Violation {
                            invariant: "no acknowledged write lost",
                            detail: format!(
                                "VM {vmid} was created (task OK) but is gone from the store"
                            ),
                        });
                    };
                    let desc = e.config.get("description").cloned().unwrap_or_default();
                    let open = vm.writes.iter().filter(|w| w.ended.is_none());
                    if !vm.allowed_desc.contains(&desc) && !open.clone().any(|w| w.value == desc) {
                        return Err(Violation {
                            invariant: "no acknowledged write lost",
                            detail: format!(
                                "VM {vmid} description is {desc:?}; acknowledged writes allow only {:?}",
                                vm.allowed_desc
                            ),
                        });
                    }
                }
                // A create without a VMID that overlapped may have reserved it again.
                Life::Deleted
                    if vm.creates_in_flight == 0
                        && self.unnamed_in_flight == 0
                        && self.unnamed_last_end < vm.deleted_seq =>
                {
                    if let Some(e) = entry {
                        return Err(Violation {
                            invariant: "no acknowledged write lost",
                            detail: format!(
                                "VM {vmid} was deleted (task OK) but is back in the store (lock {:?}, desired {:?}, qmpstatus {})",
                                e.lock, e.desired, e.runtime.qmpstatus
                            ),
                        });
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Restart timestamps per supervised path, to check restart intensity.
#[derive(Debug, Default)]
pub struct RestartLedger {
    restarts: BTreeMap<String, VecDeque<u64>>,
}

impl RestartLedger {
    /// Records a restart of `path` at `at_ms` against its intensity (`max` restarts in
    /// `window_ms`).
    pub fn restarted(
        &mut self,
        path: &str,
        at_ms: u64,
        max: u32,
        window_ms: u64,
    ) -> Result<(), Violation> {
        let q = self.restarts.entry(path.to_string()).or_default();
        q.push_back(at_ms);
        while q
            .front()
            .is_some_and(|t| at_ms.saturating_sub(*t) >= window_ms)
        {
            q.pop_front();
        }
        if q.len() > max as usize {
            return Err(Violation {
                invariant: "supervision restarts within intensity",
                detail: format!(
                    "{path} restarted {} times within {window_ms} ms (intensity {max})",
                    q.len()
                ),
            });
        }
        Ok(())
    }

    /// Forgets a node's paths (a new incarnation starts its own intensity windows).
    pub fn forget_prefix(&mut self, prefix: &str) {
        self.restarts.retain(|p, _| !p.starts_with(prefix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(vmid: u32, desc: &str) -> VmEntry {
        let mut config = BTreeMap::new();
        config.insert("description".to_string(), desc.to_string());
        VmEntry::new(vmid, "n1", config)
    }

    #[test]
    fn acknowledged_description_must_be_kept() {
        let mut m = Model::default();
        let e = m.create_acked(100, "n1", "a", false).unwrap();
        m.create_ended(100, e, true);
        let w = m.desc_sent(100, "n1", "b");
        m.desc_ended(100, w, true);
        let mut store = BTreeMap::from([(100, entry(100, "b"))]);
        assert!(m.check(&store).is_ok());
        store.insert(100, entry(100, "a"));
        assert_eq!(
            m.check(&store).unwrap_err().invariant,
            "no acknowledged write lost"
        );
        // An unacknowledged write may or may not have applied.
        let w = m.desc_sent(100, "n1", "c");
        m.desc_ended(100, w, false);
        store.insert(100, entry(100, "c"));
        assert!(m.check(&store).is_ok());
    }

    #[test]
    fn vmid_twice_is_caught() {
        let mut m = Model::default();
        let e = m.create_acked(100, "n1", "", false).unwrap();
        assert!(m.create_acked(100, "n2", "", false).is_err());
        m.create_ended(100, e, true);
        let d = m.delete_sent(100);
        m.delete_ended(100, d, true);
        assert!(m.create_acked(100, "n2", "", false).is_ok());
    }

    #[test]
    fn delete_ending_after_a_recreate_does_not_touch_the_new_vm() {
        let mut m = Model::default();
        let e = m.create_acked(100, "n1", "a", false).unwrap();
        m.create_ended(100, e, true);
        let d = m.delete_sent(100);
        // The store record is gone before the delete task is seen to end; a new create
        // takes the VMID.
        let e2 = m.create_acked(100, "n1", "b", false).unwrap();
        m.delete_ended(100, d, true);
        m.create_ended(100, e2, true);
        let store = BTreeMap::from([(100, entry(100, "b"))]);
        assert!(m.check(&store).is_ok());
    }

    #[test]
    fn intensity_window() {
        let mut l = RestartLedger::default();
        for t in [0, 10, 20] {
            l.restarted("a", t, 3, 100).unwrap();
        }
        assert!(l.restarted("a", 30, 3, 100).is_err());
        let mut l = RestartLedger::default();
        for t in [0, 50, 100, 150] {
            l.restarted("a", t, 3, 100).unwrap();
        }
    }
}
