//! The client workload: operations the driver decides with its RNG, sent through the real
//! API of the node that owns the VM, with the acknowledgements recorded in the model.

use std::sync::{Arc, Mutex};

use axum::http::Method;

use crate::cluster::ApiTarget;
use crate::run::{BookRef, TASK_POLL_MS, TASK_WAIT_MS, lock, note, sim_now_ms, violate};

/// A client: calls nodes through the current targets and writes to the books.
#[derive(Clone)]
pub(crate) struct Client {
    pub(crate) targets: Arc<Mutex<Vec<ApiTarget>>>,
    pub(crate) book: BookRef,
    pub(crate) names: Vec<String>,
}

impl Client {
    fn target(&self, node: usize) -> ApiTarget {
        self.targets.lock().unwrap_or_else(|p| p.into_inner())[node].clone()
    }

    async fn call(
        &self,
        node: usize,
        method: Method,
        path: &str,
        v1: bool,
        form: &[(&str, String)],
    ) -> crate::cluster::Reply {
        self.target(node).call(method, path, v1, form).await
    }

    /// Waits for a task to end; its exit status, or `None` if the wait bound passed.
    async fn wait_task(&self, upid: &str) -> Option<String> {
        let node_name = upid.split(':').nth(1).unwrap_or_default();
        let node = self.names.iter().position(|n| n == node_name)?;
        let deadline = sim_now_ms() + TASK_WAIT_MS;
        let path = format!("/nodes/{node_name}/tasks/{upid}/status");
        while sim_now_ms() < deadline {
            let r = self.call(node, Method::GET, &path, false, &[]).await;
            if r.ok() && r.data()["status"] == "stopped" {
                return Some(r.data()["exitstatus"].as_str().unwrap_or("").to_string());
            }
            tokio::time::sleep(std::time::Duration::from_millis(TASK_POLL_MS)).await;
        }
        None
    }

    fn note(&self, line: impl std::fmt::Display) {
        note(&self.book, line);
    }
}

/// `type:id` of a UPID (its PID and start fields differ between processes).
fn upid_label(upid: &str) -> String {
    let f: Vec<&str> = upid.split(':').collect();
    format!("{}:{}", f.get(5).unwrap_or(&"?"), f.get(6).unwrap_or(&"?"))
}

/// One client operation, decided by the driver's RNG.
#[derive(Debug)]
pub(crate) enum Op {
    Create {
        node: usize,
        named: bool,
        start: bool,
        desc: String,
    },
    Start {
        node: usize,
        vmid: u32,
    },
    Stop {
        node: usize,
        vmid: u32,
    },
    Delete {
        node: usize,
        vmid: u32,
    },
    Describe {
        node: usize,
        vmid: u32,
        value: String,
    },
    Cordon {
        node: usize,
        on: bool,
    },
    HaAdd {
        vmid: u32,
    },
}

impl Op {
    pub(crate) async fn run(self, c: &Client, ha: Option<crate::ha::HaRequests>) {
        match self {
            Op::Create {
                node,
                named,
                start,
                desc,
            } => {
                let name = c.names[node].clone();
                let mut form = vec![
                    ("memory", "128".to_string()),
                    ("description", desc.clone()),
                    ("start", if start { "1" } else { "0" }.to_string()),
                ];
                let mut want = None;
                if named {
                    let r = c
                        .call(node, Method::GET, "/cluster/nextid", false, &[])
                        .await;
                    let id = r.data().as_str().and_then(|s| s.parse::<u32>().ok());
                    c.note(format!("op nextid on {name} -> {} {:?}", r.summary(), id));
                    let Some(id) = id else { return };
                    want = Some(id);
                    form.push(("vmid", id.to_string()));
                    lock(&c.book).model.create_sent(id, &name);
                } else {
                    lock(&c.book).model.unnamed_create_sent();
                }
                let r = c
                    .call(
                        node,
                        Method::POST,
                        &format!("/nodes/{name}/qemu"),
                        false,
                        &form,
                    )
                    .await;
                if want.is_none() {
                    lock(&c.book).model.unnamed_create_answered();
                }
                let upid = r.data().as_str().map(str::to_string);
                let got: Option<u32> = upid
                    .as_deref()
                    .and_then(|u| u.split(':').nth(6))
                    .and_then(|s| s.parse().ok());
                c.note(format!(
                    "op create on {name} vmid={want:?} start={start} -> {} vmid={got:?}",
                    r.summary()
                ));
                let (Some(upid), Some(vmid)) = (upid.filter(|_| r.ok()), got) else {
                    if let Some(id) = want {
                        lock(&c.book).model.create_refused(id);
                    }
                    return;
                };
                let acked = lock(&c.book)
                    .model
                    .create_acked(vmid, &name, &desc, want.is_some());
                let epoch = match acked {
                    Ok(epoch) => epoch,
                    Err(v) => {
                        violate(&c.book, v);
                        return;
                    }
                };
                let exit = c.wait_task(&upid).await;
                c.note(format!("task {} -> {exit:?}", upid_label(&upid)));
                lock(&c.book)
                    .model
                    .create_ended(vmid, epoch, exit.as_deref() == Some("OK"));
            }
            Op::Start { node, vmid } | Op::Stop { node, vmid } => {
                let verb = if matches!(self, Op::Start { .. }) {
                    "start"
                } else {
                    "stop"
                };
                let name = &c.names[node];
                let r = c
                    .call(
                        node,
                        Method::POST,
                        &format!("/nodes/{name}/qemu/{vmid}/status/{verb}"),
                        false,
                        &[],
                    )
                    .await;
                c.note(format!("op {verb} {vmid} on {name} -> {}", r.summary()));
                if let Some(upid) = r.data().as_str().filter(|_| r.ok()) {
                    let exit = c.wait_task(upid).await;
                    c.note(format!("task {} -> {exit:?}", upid_label(upid)));
                }
            }
            Op::Delete { node, vmid } => {
                let name = &c.names[node];
                let epoch = lock(&c.book).model.delete_sent(vmid);
                let r = c
                    .call(
                        node,
                        Method::DELETE,
                        &format!("/nodes/{name}/qemu/{vmid}"),
                        false,
                        &[],
                    )
                    .await;
                c.note(format!("op delete {vmid} on {name} -> {}", r.summary()));
                if let Some(upid) = r.data().as_str().filter(|_| r.ok()) {
                    let exit = c.wait_task(upid).await;
                    c.note(format!("task {} -> {exit:?}", upid_label(upid)));
                    lock(&c.book)
                        .model
                        .delete_ended(vmid, epoch, exit.as_deref() == Some("OK"));
                } else {
                    lock(&c.book).model.delete_refused(vmid);
                }
            }
            Op::Describe { node, vmid, value } => {
                let name = &c.names[node];
                let id = lock(&c.book).model.desc_sent(vmid, name, &value);
                let r = c
                    .call(
                        node,
                        Method::PUT,
                        &format!("/nodes/{name}/qemu/{vmid}/config"),
                        false,
                        &[("description", value.clone())],
                    )
                    .await;
                c.note(format!(
                    "op describe {vmid} on {name} = {value} -> {}",
                    r.summary()
                ));
                lock(&c.book).model.desc_ended(vmid, id, r.ok());
            }
            Op::Cordon { node, on } => {
                let name = &c.names[node];
                let method = if on { Method::POST } else { Method::DELETE };
                let r = c
                    .call(node, method, &format!("/nodes/{name}/cordon"), true, &[])
                    .await;
                c.note(format!(
                    "op {} {name} -> {}",
                    if on { "cordon" } else { "uncordon" },
                    r.summary()
                ));
            }
            Op::HaAdd { vmid } => {
                if let Some(ha) = ha {
                    ha.add(vmid);
                    c.note(format!("op ha-add {vmid}"));
                }
            }
        }
    }
}
