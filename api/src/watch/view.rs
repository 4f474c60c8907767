//! The watch's view of the cluster, decoded from store writes: what each VM, running task
//! and node looks like to a watcher, and which writes are events. Pure (time is passed in),
//! so it is tested without a server.
//!
//! What counts as a change:
//! - VM (`("vms", vmid)`): created, deleted, or a change of status, node, name, lock or
//!   pool; usage samples and config edits that leave those alone are not events.
//! - Task (`("tasks", upid)`): started (`added`), finished (`modified`, status `OK` or the
//!   error). Finished tasks are history: the snapshot holds only running ones.
//! - Node (`("nodes", name)` and `("leases", name)`): joined, left, cordoned/uncordoned,
//!   online/offline. A lease renewal is an event only when it brings the node back online;
//!   a lease that expires writes nothing, so [`ClusterView::tick`] finds it by the clock.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use gpve_actors::task::TaskRecord;
use gpve_actors::vm::VmRecord;
use gpve_store::{Key, WriteSet};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cluster::records::{Lease, NodeRecord};
use crate::pve::cluster::resources::vm_entry;

/// Finished tasks remembered so a rewrite of a finished record is not announced twice.
pub const FINISHED_TASKS_REMEMBERED: usize = 4096;

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Vm,
    Task,
    Node,
}

/// What happened to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Added,
    Modified,
    Deleted,
}

/// Who may see an event (checked per watcher).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// `VM.Audit` on `/vms/{vmid}` (with the VM's pool).
    Vm(u32),
    /// `Sys.Audit` on `/nodes/{node}`.
    Node(String),
    /// `Sys.Audit` on `/nodes/{node}`, or the task's own user (Proxmox's task-list rule).
    Task { node: String, user: String },
}

/// One change of one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: Kind,
    pub action: Action,
    pub id: String,
    pub node: String,
    pub status: String,
    /// Feed position of the commit (0: snapshot or clock).
    pub seq: u64,
    pub json: Value,
    pub audience: Audience,
}

/// What a watcher sees of a VM entry: the summary record and the lock (the rest of the
/// entry, config and runtime, is ignored when decoding).
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct VmFields {
    #[serde(flatten)]
    record: VmRecord,
    #[serde(default)]
    lock: Option<String>,
}

impl VmFields {
    /// Whether a watcher should hear about the difference.
    fn same_for_watchers(&self, o: &VmFields) -> bool {
        let (a, b) = (&self.record, &o.record);
        (&a.status, &a.node, &a.name, &self.lock, &a.pool)
            == (&b.status, &b.node, &b.name, &o.lock, &b.pool)
    }

    fn event(&self, action: Action, seq: u64) -> Event {
        // `/cluster/resources`-shaped, so RBAC filtering and clients read it like the list.
        let mut json = vm_entry(&self.record);
        if let Some(lock) = &self.lock {
            json["lock"] = json!(lock);
        }
        Event {
            kind: Kind::Vm,
            action,
            id: self.record.vmid.to_string(),
            node: self.record.node.clone(),
            status: self.record.status.clone(),
            seq,
            json,
            audience: Audience::Vm(self.record.vmid),
        }
    }
}

fn task_status(t: &TaskRecord) -> String {
    t.exitstatus.clone().unwrap_or_else(|| "running".into())
}

fn task_event(t: &TaskRecord, action: Action, seq: u64) -> Event {
    let mut json = json!({
        "upid": t.upid,
        "node": t.node,
        "type": t.worker_type,
        "id": t.id,
        "user": t.user,
        "starttime": t.starttime,
        "status": task_status(t),
    });
    if let Some(end) = t.endtime {
        json["endtime"] = json!(end);
    }
    Event {
        kind: Kind::Task,
        action,
        id: t.upid.clone(),
        node: t.node.clone(),
        status: task_status(t),
        seq,
        json,
        audience: Audience::Task {
            node: t.node.clone(),
            user: t.user.clone(),
        },
    }
}

/// A member node as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeState {
    /// The server's own node: online while it answers, whether or not it has a record.
    local: bool,
    /// `None`: not (or not yet) a member; such an entry only remembers a lease.
    record: Option<NodeRecord>,
    lease_deadline_ms: Option<i64>,
    /// The liveness last announced.
    status: &'static str,
}

impl NodeState {
    /// A member (or would-be member) not yet heard of.
    fn member() -> NodeState {
        NodeState {
            local: false,
            record: None,
            lease_deadline_ms: None,
            status: "unknown",
        }
    }

    fn liveness(&self, now_ms: i64) -> &'static str {
        if self.local {
            return "online";
        }
        match (&self.record, self.lease_deadline_ms) {
            (None, _) | (Some(_), None) => "unknown",
            (Some(_), Some(d)) if now_ms < d => "online",
            (Some(_), Some(_)) => "offline",
        }
    }

    /// Whether watchers know this node (the server's own, or a member).
    fn is_listed(&self) -> bool {
        self.local || self.record.is_some()
    }

    fn cordoned(&self) -> bool {
        self.record.as_ref().is_some_and(|r| r.cordoned)
    }

    fn event(&self, name: &str, action: Action, seq: u64) -> Event {
        Event {
            kind: Kind::Node,
            action,
            id: name.to_string(),
            node: name.to_string(),
            status: self.status.to_string(),
            seq,
            json: json!({
                "id": format!("node/{name}"),
                "type": "node",
                "node": name,
                "status": self.status,
                "cordoned": u8::from(self.cordoned()),
            }),
            audience: Audience::Node(name.to_string()),
        }
    }
}

/// Decodes a stored value; `None` (logged) when it does not decode: one bad record must
/// not stop the watch.
fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    id: &dyn std::fmt::Display,
    bytes: &[u8],
) -> Option<T> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(%id, error = %e, "watch: skipping an undecodable {what}");
            None
        }
    }
}

/// Which object a key names.
enum Subject {
    Vm(u32),
    Task(String),
    Node(String),
    Lease(String),
}

fn subject(key: &[u8]) -> Option<Subject> {
    let key = Key::from_bytes(key.to_vec());
    if let Ok(vmid) = key.unpack_suffix::<u32>(&Key::prefix(&("vms",))) {
        return Some(Subject::Vm(vmid));
    }
    if let Ok(upid) = key.unpack_suffix::<String>(&Key::prefix(&("tasks",))) {
        return Some(Subject::Task(upid));
    }
    if let Ok(node) = key.unpack_suffix::<String>(&Key::prefix(&("nodes",))) {
        return Some(Subject::Node(node));
    }
    if let Ok(node) = key.unpack_suffix::<String>(&Key::prefix(&("leases",))) {
        return Some(Subject::Lease(node));
    }
    None
}

/// Prefixes of the records that decide who may see what: a commit touching one of them
/// makes every watcher re-read its credentials and privileges.
const ACCESS_SUBSPACES: [&str; 6] = ["acl", "users", "tokens", "groups", "roles", "pools"];

/// Whether `writes` change users, tokens, groups, roles, ACLs or pools.
pub fn touches_access(writes: &WriteSet) -> bool {
    let prefixes: Vec<Key> = ACCESS_SUBSPACES
        .iter()
        .map(|s| Key::prefix(&(*s,)))
        .collect();
    let within = |k: &[u8]| prefixes.iter().any(|p| k.starts_with(p.as_bytes()));
    writes.points.keys().any(|k| within(k))
        || writes.cleared.iter().any(|(b, e)| {
            prefixes.iter().any(|p| {
                let r = p.subspace_range();
                b.as_slice() < r.end.as_bytes() && r.begin.as_bytes() < e.as_slice()
            })
        })
}

/// The current VMs, running tasks and nodes.
#[derive(Debug, Default)]
pub struct ClusterView {
    vms: BTreeMap<u32, VmFields>,
    running_tasks: BTreeMap<String, TaskRecord>,
    finished: VecDeque<String>,
    finished_set: BTreeSet<String>,
    nodes: BTreeMap<String, NodeState>,
}

impl ClusterView {
    /// An empty view of a cluster whose server node is `local_node`.
    pub fn new(local_node: &str) -> ClusterView {
        let mut view = ClusterView::default();
        view.nodes.insert(
            local_node.to_string(),
            NodeState {
                local: true,
                status: "online",
                ..NodeState::member()
            },
        );
        view
    }

    /// Applies one commit's writes and returns the events they make, in key order.
    /// Undecodable values are skipped (logged): one bad record must not stop the watch.
    pub fn apply(&mut self, writes: &WriteSet, seq: u64, now_ms: i64) -> Vec<Event> {
        let mut events = Vec::new();
        for (begin, end) in &writes.cleared {
            self.clear(begin, end, seq, &mut events);
        }
        for (key, value) in &writes.points {
            let Some(subject) = subject(key) else {
                continue;
            };
            match subject {
                Subject::Vm(vmid) => self.vm(vmid, value.as_deref(), seq, &mut events),
                Subject::Task(upid) => self.task(upid, value.as_deref(), seq, &mut events),
                Subject::Node(node) => {
                    self.node_record(&node, value.as_deref(), seq, now_ms, &mut events)
                }
                Subject::Lease(node) => {
                    self.lease(&node, value.as_deref(), seq, now_ms, &mut events)
                }
            }
        }
        events
    }

    /// Liveness changes the clock made (expired leases).
    pub fn tick(&mut self, now_ms: i64) -> Vec<Event> {
        let mut events = Vec::new();
        for (name, n) in self.nodes.iter_mut().filter(|(_, n)| n.is_listed()) {
            let now = n.liveness(now_ms);
            if now != n.status {
                n.status = now;
                events.push(n.event(name, Action::Modified, 0));
            }
        }
        events
    }

    /// When the next lease runs out (wake [`ClusterView::tick`] then).
    pub fn next_expiry_ms(&self, now_ms: i64) -> Option<i64> {
        self.nodes
            .values()
            .filter_map(|n| n.lease_deadline_ms)
            .filter(|d| *d > now_ms)
            .min()
    }

    /// An `added` event for every current object, by kind then id.
    pub fn snapshot(&self) -> Vec<Event> {
        let vms = self.vms.values().map(|v| v.event(Action::Added, 0));
        let tasks = self
            .running_tasks
            .values()
            .map(|t| task_event(t, Action::Added, 0));
        let nodes = self
            .nodes
            .iter()
            .filter(|(_, n)| n.is_listed())
            .map(|(name, n)| n.event(name, Action::Added, 0));
        vms.chain(tasks).chain(nodes).collect()
    }

    fn clear(&mut self, begin: &[u8], end: &[u8], seq: u64, events: &mut Vec<Event>) {
        let inside = |k: &Key| begin <= k.as_bytes() && k.as_bytes() < end;
        let vms: Vec<u32> = self
            .vms
            .keys()
            .copied()
            .filter(|id| inside(&gpve_actors::vm::vm_key(*id)))
            .collect();
        for vmid in vms {
            self.vm(vmid, None, seq, events);
        }
        let tasks: Vec<String> = self
            .running_tasks
            .keys()
            .filter(|u| inside(&Key::pack(&("tasks", u.as_str()))))
            .cloned()
            .collect();
        for upid in tasks {
            self.task(upid, None, seq, events);
        }
        let nodes: Vec<String> = self.nodes.keys().cloned().collect();
        for node in nodes {
            if inside(&crate::cluster::records::node_key(&node)) {
                self.node_record(&node, None, seq, 0, events);
            } else if inside(&crate::cluster::records::lease_key(&node)) {
                self.lease(&node, None, seq, 0, events);
            }
        }
    }

    fn node_mut(&mut self, name: &str) -> &mut NodeState {
        self.nodes
            .entry(name.to_string())
            .or_insert_with(NodeState::member)
    }

    fn vm(&mut self, vmid: u32, value: Option<&[u8]>, seq: u64, events: &mut Vec<Event>) {
        let Some(bytes) = value else {
            if let Some(old) = self.vms.remove(&vmid) {
                events.push(old.event(Action::Deleted, seq));
            }
            return;
        };
        let Some(new) = decode::<VmFields>("VM record", &vmid, bytes) else {
            return;
        };
        match self.vms.get(&vmid) {
            Some(old) if old.same_for_watchers(&new) => {
                // Keep the quiet fields (memory, cores) current for the next event.
                self.vms.insert(vmid, new);
            }
            old => {
                let action = if old.is_some() {
                    Action::Modified
                } else {
                    Action::Added
                };
                events.push(new.event(action, seq));
                self.vms.insert(vmid, new);
            }
        }
    }

    fn task(&mut self, upid: String, value: Option<&[u8]>, seq: u64, events: &mut Vec<Event>) {
        let Some(bytes) = value else {
            // Pruning history is not an event; a running task vanishing is.
            if let Some(old) = self.running_tasks.remove(&upid) {
                events.push(task_event(&old, Action::Deleted, seq));
            }
            return;
        };
        let Some(rec) = decode::<TaskRecord>("task record", &upid, bytes) else {
            return;
        };
        if rec.is_running() {
            if !self.running_tasks.contains_key(&upid) {
                events.push(task_event(&rec, Action::Added, seq));
            }
            self.running_tasks.insert(upid, rec);
            return;
        }
        self.running_tasks.remove(&upid);
        if self.finished_set.contains(&upid) {
            return;
        }
        events.push(task_event(&rec, Action::Modified, seq));
        self.finished_set.insert(upid.clone());
        self.finished.push_back(upid);
        if self.finished.len() > FINISHED_TASKS_REMEMBERED
            && let Some(old) = self.finished.pop_front()
        {
            self.finished_set.remove(&old);
        }
    }

    fn node_record(
        &mut self,
        name: &str,
        value: Option<&[u8]>,
        seq: u64,
        now_ms: i64,
        events: &mut Vec<Event>,
    ) {
        let Some(bytes) = value else {
            if let Some(n) = self.nodes.get_mut(name)
                && n.record.take().is_some()
                && !n.local
            {
                events.push(n.event(name, Action::Deleted, seq));
            }
            return;
        };
        let Some(record) = decode::<NodeRecord>("node record", &name, bytes) else {
            return;
        };
        let n = self.node_mut(name);
        let was_listed = n.is_listed();
        let cordon_changed = n.cordoned() != record.cordoned;
        n.record = Some(record);
        let status = n.liveness(now_ms);
        if !was_listed {
            n.status = status;
            events.push(n.event(name, Action::Added, seq));
        } else if cordon_changed || status != n.status {
            n.status = status;
            events.push(n.event(name, Action::Modified, seq));
        }
    }

    fn lease(
        &mut self,
        name: &str,
        value: Option<&[u8]>,
        seq: u64,
        now_ms: i64,
        events: &mut Vec<Event>,
    ) {
        let deadline = match value {
            None => None,
            Some(bytes) => match decode::<Lease>("lease", &name, bytes) {
                Some(lease) => Some(lease.deadline_ms),
                None => return,
            },
        };
        // A lease may be written before the node record (join order): remember it.
        let n = self.node_mut(name);
        n.lease_deadline_ms = deadline;
        if !n.is_listed() {
            return;
        }
        let status = n.liveness(now_ms);
        if status != n.status {
            n.status = status;
            events.push(n.event(name, Action::Modified, seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: Key, value: Value) -> WriteSet {
        let mut w = WriteSet::default();
        w.points
            .insert(key.into_bytes(), Some(value.to_string().into_bytes()));
        w
    }

    fn del(key: Key) -> WriteSet {
        let mut w = WriteSet::default();
        w.points.insert(key.into_bytes(), None);
        w
    }

    fn vm(status: &str, uptime_s: u64, lock: Option<&str>) -> Value {
        json!({"vmid": 100, "name": "web", "node": "n1", "status": status, "maxcpu": 1,
               "maxmem_bytes": 1, "maxdisk_bytes": 0, "uptime_s": uptime_s, "lock": lock,
               "config": {"memory": "512"}})
    }

    fn summary(events: &[Event]) -> Vec<(Kind, Action, String, String)> {
        events
            .iter()
            .map(|e| (e.kind, e.action, e.id.clone(), e.status.clone()))
            .collect()
    }

    #[test]
    fn vm_events_only_for_meaningful_changes() {
        let mut v = ClusterView::new("n1");
        let key = gpve_actors::vm::vm_key(100);
        let added = v.apply(&put(key.clone(), vm("stopped", 0, Some("create"))), 1, 0);
        assert_eq!(
            summary(&added),
            [(Kind::Vm, Action::Added, "100".into(), "stopped".into())]
        );
        assert_eq!(added[0].json["lock"], "create");
        let unlocked = v.apply(&put(key.clone(), vm("stopped", 0, None)), 2, 0);
        assert_eq!(unlocked[0].action, Action::Modified);
        let started = v.apply(&put(key.clone(), vm("running", 0, None)), 3, 0);
        assert_eq!(
            summary(&started),
            [(Kind::Vm, Action::Modified, "100".into(), "running".into())]
        );
        assert_eq!(started[0].seq, 3);
        // A usage sample (uptime) is not an event.
        assert!(
            v.apply(&put(key.clone(), vm("running", 42, None)), 4, 0)
                .is_empty()
        );
        // A broken record is skipped, not fatal, and changes nothing.
        let mut junk = WriteSet::default();
        junk.points
            .insert(key.clone().into_bytes(), Some(b"{".to_vec()));
        assert!(v.apply(&junk, 5, 0).is_empty());
        let gone = v.apply(&del(key), 6, 0);
        assert_eq!(
            summary(&gone),
            [(Kind::Vm, Action::Deleted, "100".into(), "running".into())]
        );
        assert!(v.snapshot().iter().all(|e| e.kind != Kind::Vm));
    }

    #[test]
    fn range_clears_delete_what_they_cover() {
        let mut v = ClusterView::new("n1");
        v.apply(
            &put(gpve_actors::vm::vm_key(100), vm("stopped", 0, None)),
            1,
            0,
        );
        let mut clear = WriteSet::default();
        let r = Key::prefix(&("vms",)).subspace_range();
        clear
            .cleared
            .push((r.begin.into_bytes(), r.end.into_bytes()));
        let events = v.apply(&clear, 2, 0);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].action, Action::Deleted);
    }

    fn task(exitstatus: Option<&str>) -> Value {
        json!({"upid": "UPID:n1:1:1:1:qmstart:100:root@pam:", "node": "n1", "pid": 1,
               "pstart": 1, "starttime": 1, "type": "qmstart", "id": "100",
               "user": "root@pam", "exitstatus": exitstatus,
               "endtime": exitstatus.map(|_| 2)})
    }

    #[test]
    fn task_start_and_end_are_announced_once() {
        let mut v = ClusterView::new("n1");
        let key = Key::pack(&("tasks", "UPID:n1:1:1:1:qmstart:100:root@pam:"));
        let start = v.apply(&put(key.clone(), task(None)), 1, 0);
        assert_eq!(start[0].action, Action::Added);
        assert_eq!(start[0].status, "running");
        assert_eq!(
            start[0].audience,
            Audience::Task {
                node: "n1".into(),
                user: "root@pam".into()
            }
        );
        assert_eq!(
            v.snapshot().iter().filter(|e| e.kind == Kind::Task).count(),
            1
        );
        assert!(v.apply(&put(key.clone(), task(None)), 2, 0).is_empty());
        let end = v.apply(&put(key.clone(), task(Some("OK"))), 3, 0);
        assert_eq!(
            summary(&end),
            [(
                Kind::Task,
                Action::Modified,
                start[0].id.clone(),
                "OK".into()
            )]
        );
        assert!(
            v.apply(&put(key.clone(), task(Some("OK"))), 4, 0)
                .is_empty()
        );
        // Pruning finished history is not an event.
        assert!(v.apply(&del(key), 5, 0).is_empty());
        assert!(v.snapshot().iter().all(|e| e.kind != Kind::Task));
    }

    #[test]
    fn node_liveness_comes_from_lease_writes_and_the_clock() {
        let mut v = ClusterView::new("srv");
        let snap = v.snapshot();
        assert_eq!(
            summary(&snap),
            [(Kind::Node, Action::Added, "srv".into(), "online".into())]
        );
        let record = |cordoned: bool| json!({"node": "n2", "joined_at_s": 1, "cert_fingerprint": "ab", "cordoned": cordoned});
        let lease = |deadline_ms: i64| json!({"deadline_ms": deadline_ms, "generation": 1, "renewed_at_ms": 0, "ttl_ms": 5000});
        let lease_key = crate::cluster::records::lease_key("n2");
        // A lease before the record (join order) is remembered silently.
        assert!(
            v.apply(&put(lease_key.clone(), lease(5_000)), 1, 1_000)
                .is_empty()
        );
        let joined = v.apply(
            &put(crate::cluster::records::node_key("n2"), record(false)),
            2,
            1_000,
        );
        assert_eq!(
            summary(&joined),
            [(Kind::Node, Action::Added, "n2".into(), "online".into())]
        );
        // Renewals while online are not events.
        assert!(
            v.apply(&put(lease_key.clone(), lease(6_000)), 3, 2_000)
                .is_empty()
        );
        assert_eq!(v.next_expiry_ms(2_000), Some(6_000));
        assert!(v.tick(5_999).is_empty());
        let expired = v.tick(6_000);
        assert_eq!(
            summary(&expired),
            [(Kind::Node, Action::Modified, "n2".into(), "offline".into())]
        );
        let back = v.apply(&put(lease_key, lease(20_000)), 4, 15_000);
        assert_eq!(back[0].status, "online");
        let cordoned = v.apply(
            &put(crate::cluster::records::node_key("n2"), record(true)),
            5,
            15_000,
        );
        assert_eq!(cordoned[0].action, Action::Modified);
        assert_eq!(cordoned[0].json["cordoned"], 1);
        let left = v.apply(&del(crate::cluster::records::node_key("n2")), 6, 15_000);
        assert_eq!(left[0].action, Action::Deleted);
        assert_eq!(v.snapshot().len(), 1);
    }

    #[test]
    fn access_writes_are_recognised() {
        assert!(touches_access(&put(
            Key::pack(&("acl", "/vms/100")),
            json!({})
        )));
        assert!(touches_access(&del(Key::pack(&("tokens", "u@pve", "t")))));
        assert!(!touches_access(&put(
            gpve_actors::vm::vm_key(100),
            json!({})
        )));
        let mut clear = WriteSet::default();
        let r = Key::prefix(&("pools",)).subspace_range();
        clear
            .cleared
            .push((r.begin.into_bytes(), r.end.into_bytes()));
        assert!(touches_access(&clear));
    }
}
