//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4).
//!
//! Access: `Sys.Audit` on `/` (an auditor's or administrator's token or ticket), like
//! Kubernetes' `/metrics` and unlike node_exporter:
//! the series name actors, VMs and storages, which a tenant must not enumerate. Scrape it
//! with a dedicated token (`docs/logging.md` shows the Prometheus configuration).
//!
//! Every value is read at scrape time from the component that owns it; a family whose
//! source is missing (no VM records yet, node actor restarting) is left out, never filled
//! with zeros.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use gpve_actors::task::{TaskFilter, TaskSource};
use gpve_supervisor::ActorState;

use super::{LATENCY_BUCKETS_S, RequestStats};
use crate::router::{Endpoint, Method, Privilege};
use crate::schema::ParamSchema;
use crate::state::AppState;

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`.
pub const METRICS_GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[]),
    privilege: Privilege::Perm("/", &["Sys.Audit"]),
    description: "Prometheus metrics of this server (text exposition format).",
};

/// Writes families and samples.
#[derive(Default)]
struct Exposition {
    out: String,
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", fmt_value(value));
    }
}

fn state_name(s: ActorState) -> &'static str {
    match s {
        ActorState::Starting => "starting",
        ActorState::Running => "running",
        ActorState::Restarting => "restarting",
        ActorState::Stopped => "stopped",
        ActorState::Failed => "failed",
    }
}

fn write_requests(e: &mut Exposition, requests: &[(super::RequestKey, RequestStats)]) {
    e.family(
        "gpve_api_requests_total",
        "counter",
        "API requests answered, by HTTP method, route template and status.",
    );
    for (k, s) in requests {
        let status = k.status.to_string();
        e.sample(
            "gpve_api_requests_total",
            &[
                ("method", &k.method),
                ("route", &k.route),
                ("status", &status),
            ],
            s.count as f64,
        );
    }
    e.family(
        "gpve_api_request_duration_seconds",
        "histogram",
        "Time from request to response head, by HTTP method, route template and status.",
    );
    for (k, s) in requests {
        let status = k.status.to_string();
        let mut cumulative = 0u64;
        for (i, le) in LATENCY_BUCKETS_S.iter().enumerate() {
            cumulative += s.buckets[i];
            let le = fmt_value(*le);
            e.sample(
                "gpve_api_request_duration_seconds_bucket",
                &[
                    ("method", &k.method),
                    ("route", &k.route),
                    ("status", &status),
                    ("le", &le),
                ],
                cumulative as f64,
            );
        }
        let labels = [
            ("method", k.method.as_str()),
            ("route", k.route.as_str()),
            ("status", status.as_str()),
        ];
        let mut inf = labels.to_vec();
        inf.push(("le", "+Inf"));
        e.sample(
            "gpve_api_request_duration_seconds_bucket",
            &inf,
            s.count as f64,
        );
        e.sample("gpve_api_request_duration_seconds_sum", &labels, s.sum_s);
        e.sample(
            "gpve_api_request_duration_seconds_count",
            &labels,
            s.count as f64,
        );
    }
}

fn write_actors(e: &mut Exposition, node: &str, actors: &[gpve_supervisor::ActorSnapshot]) {
    let mut by_kind_state: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for a in actors {
        *by_kind_state
            .entry((a.kind.as_str(), state_name(a.state)))
            .or_default() += 1;
    }
    e.family(
        "gpve_actors",
        "gauge",
        "Supervised actors in the node's directory, by kind and state.",
    );
    for ((kind, state), n) in &by_kind_state {
        e.sample(
            "gpve_actors",
            &[("node", node), ("kind", kind), ("state", state)],
            *n as f64,
        );
    }
    e.family(
        "gpve_actor_mailbox_depth",
        "gauge",
        "Messages queued for an actor (counted sends minus handled; an underestimate).",
    );
    for a in actors {
        e.sample(
            "gpve_actor_mailbox_depth",
            &[("node", node), ("path", &a.path), ("kind", &a.kind)],
            a.mailbox_depth as f64,
        );
    }
    e.family(
        "gpve_actor_messages_handled_total",
        "counter",
        "Messages an actor handled since it was first started (all incarnations).",
    );
    for a in actors {
        e.sample(
            "gpve_actor_messages_handled_total",
            &[("node", node), ("path", &a.path), ("kind", &a.kind)],
            a.messages_handled as f64,
        );
    }
    e.family(
        "gpve_actor_restarts_total",
        "counter",
        "Restarts of an actor by its supervisor.",
    );
    for a in actors {
        e.sample(
            "gpve_actor_restarts_total",
            &[("node", node), ("path", &a.path), ("kind", &a.kind)],
            a.restarts as f64,
        );
    }
}

async fn write_tasks(e: &mut Exposition, state: &AppState) {
    let filter = TaskFilter {
        limit: usize::MAX,
        source: TaskSource::All,
        ..TaskFilter::default()
    };
    let tasks = match state.tasks.list(&filter).await {
        Ok(t) => t,
        Err(err) => {
            tracing::warn!(error = %err, "metrics: listing tasks failed");
            return;
        }
    };
    let mut counts: BTreeMap<&str, u64> = [("running", 0), ("ok", 0), ("error", 0)].into();
    for t in &tasks {
        let key = match t.exitstatus.as_deref() {
            None => "running",
            Some("OK") => "ok",
            Some(_) => "error",
        };
        *counts.entry(key).or_default() += 1;
    }
    e.family(
        "gpve_tasks",
        "gauge",
        "Tasks of this node in the store, by state (running, ok, error).",
    );
    let node = state.config.node_name.as_str();
    for (s, n) in counts {
        e.sample("gpve_tasks", &[("node", node), ("state", s)], n as f64);
    }
}

async fn write_node(e: &mut Exposition, state: &AppState) {
    let s = match crate::pve::nodes::node_status(state).await {
        Ok(s) => s,
        Err(err) => {
            tracing::debug!(error = %err, "metrics: node status unavailable");
            return;
        }
    };
    let node = [("node", s.node.as_str())];
    let gauges: [(&str, &str, f64); 7] = [
        (
            "gpve_node_cpu_ratio",
            "CPU utilisation of the node over the node actor's last sample (0..1).",
            s.cpu,
        ),
        (
            "gpve_node_cpus",
            "Logical CPUs of the node.",
            f64::from(s.cpuinfo.cpus),
        ),
        (
            "gpve_node_memory_total_bytes",
            "Memory of the node.",
            s.memory.total as f64,
        ),
        (
            "gpve_node_memory_used_bytes",
            "Memory in use on the node.",
            s.memory.used as f64,
        ),
        (
            "gpve_node_rootfs_total_bytes",
            "Size of the node's root file system.",
            s.rootfs.total as f64,
        ),
        (
            "gpve_node_rootfs_used_bytes",
            "Used space of the node's root file system.",
            s.rootfs.used as f64,
        ),
        (
            "gpve_node_uptime_seconds",
            "Time since the node booted.",
            s.uptime_s as f64,
        ),
    ];
    for (name, help, value) in gauges {
        e.family(name, "gauge", help);
        e.sample(name, &node, value);
    }
    if let Ok(load1) = s.loadavg[0].parse::<f64>() {
        e.family(
            "gpve_node_load1",
            "gauge",
            "One-minute load average of the node.",
        );
        e.sample("gpve_node_load1", &node, load1);
    }
}

async fn write_vms(e: &mut Exposition, state: &AppState) {
    let vms = match gpve_actors::vm::list_vms(&state.store).await {
        Ok(v) => v,
        Err(err) => {
            tracing::warn!(error = %err, "metrics: listing VM records failed");
            return;
        }
    };
    if vms.is_empty() {
        return;
    }
    e.family(
        "gpve_vm_info",
        "gauge",
        "One series per VM record, labelled with its name, node and status.",
    );
    for v in &vms {
        let vmid = v.vmid.to_string();
        e.sample(
            "gpve_vm_info",
            &[
                ("vmid", &vmid),
                ("name", &v.name),
                ("node", &v.node),
                ("status", &v.status),
            ],
            1.0,
        );
    }
    type Field = fn(&gpve_actors::vm::VmRecord) -> f64;
    let gauges: [(&str, &str, Field); 4] = [
        ("gpve_vm_running", "1 if the VM's status is running.", |v| {
            f64::from(u8::from(v.status == "running"))
        }),
        ("gpve_vm_cpus", "Configured vCPUs.", |v| f64::from(v.maxcpu)),
        ("gpve_vm_memory_bytes", "Configured memory.", |v| {
            v.maxmem_bytes as f64
        }),
        (
            "gpve_vm_uptime_seconds",
            "Time since the VM started.",
            |v| v.uptime_s as f64,
        ),
    ];
    for (name, help, field) in gauges {
        e.family(name, "gauge", help);
        for v in &vms {
            let vmid = v.vmid.to_string();
            e.sample(name, &[("vmid", &vmid), ("node", &v.node)], field(v));
        }
    }
}

/// Usage families from the sampler's latest sample (see [`super::usage`]): the numbers
/// `status/current` and `rrddata` show.
fn write_usage(e: &mut Exposition, node: &str, sample: &super::UsageSample) {
    if let Some(n) = &sample.node {
        type NodeField = fn(&super::usage::NodeUsage) -> u64;
        let counters: [(&str, &str, NodeField); 2] = [
            (
                "gpve_node_network_receive_bytes_total",
                "Bytes received by the node's own interfaces (not taps or bridges).",
                |n| n.netin_bytes,
            ),
            (
                "gpve_node_network_transmit_bytes_total",
                "Bytes sent by the node's own interfaces (not taps or bridges).",
                |n| n.netout_bytes,
            ),
        ];
        for (name, help, field) in counters {
            e.family(name, "counter", help);
            e.sample(name, &[("node", node)], field(n) as f64);
        }
    }
    if sample.vms.is_empty() {
        return;
    }
    type VmField = fn(&super::usage::VmUsage) -> Option<f64>;
    let families: [(&str, &str, &str, VmField); 7] = [
        (
            "gpve_vm_cpu_seconds_total",
            "counter",
            "CPU time of the VM's QEMU process (all threads), from /proc.",
            |v| Some(v.counters.cpu_s),
        ),
        (
            "gpve_vm_cpu_ratio",
            "gauge",
            "CPU use over the last sampling interval as a fraction of the VM's vCPUs.",
            |v| v.cpu,
        ),
        (
            "gpve_vm_memory_rss_bytes",
            "gauge",
            "Resident memory of the VM's QEMU process.",
            |v| Some(v.mem_bytes as f64),
        ),
        (
            "gpve_vm_disk_read_bytes_total",
            "counter",
            "Bytes the VM's QEMU process read from storage (/proc/PID/io read_bytes).",
            |v| Some(v.counters.diskread_bytes as f64),
        ),
        (
            "gpve_vm_disk_write_bytes_total",
            "counter",
            "Bytes the VM's QEMU process wrote to storage (/proc/PID/io write_bytes).",
            |v| Some(v.counters.diskwrite_bytes as f64),
        ),
        (
            "gpve_vm_network_receive_bytes_total",
            "counter",
            "Bytes the VM received through its taps (the taps' transmit counters).",
            |v| Some(v.counters.netin_bytes as f64),
        ),
        (
            "gpve_vm_network_transmit_bytes_total",
            "counter",
            "Bytes the VM sent through its taps (the taps' receive counters).",
            |v| Some(v.counters.netout_bytes as f64),
        ),
    ];
    for (name, kind, help, field) in families {
        e.family(name, kind, help);
        for v in sample.vms.values() {
            if let Some(value) = field(v) {
                let vmid = v.vmid.to_string();
                e.sample(name, &[("vmid", &vmid), ("node", node)], value);
            }
        }
    }
}

async fn write_storage(e: &mut Exposition, state: &AppState) {
    use gpve_actors::storage::{SUPERVISOR_ID, StorageService, config};
    let node = state.config.node_name.clone();
    let configs = match config::list(&state.store).await {
        Ok(c) => c,
        Err(err) => {
            tracing::warn!(error = %err, "metrics: listing storages failed");
            return;
        }
    };
    let service = StorageService {
        directory: state.node.directory.clone(),
        supervisor_path: format!("{}/{SUPERVISOR_ID}", crate::tree::ROOT),
        node: node.clone(),
        store: state.store.clone(),
        call_timeout_ms: state.config.actor_call_timeout_ms,
        data_timeout_ms: state.config.actor_call_timeout_ms,
    };
    let mut rows = Vec::new();
    for cfg in configs.iter().filter(|c| c.active_on(&node)) {
        match service.status(&cfg.storage).await {
            Ok(status) => rows.push(status),
            Err(err) => {
                tracing::debug!(storage = %cfg.storage, error = %err, "metrics: storage status unavailable");
            }
        }
    }
    if rows.is_empty() {
        return;
    }
    e.family(
        "gpve_storage_active",
        "gauge",
        "1 if the storage's pool is mounted and usable on this node.",
    );
    for r in &rows {
        e.sample(
            "gpve_storage_active",
            &[
                ("node", &node),
                ("storage", &r.config.storage),
                ("type", r.config.kind.as_str()),
            ],
            f64::from(u8::from(r.active)),
        );
    }
    type Field = fn(&gpve_storage_drivers::PoolStatus) -> u64;
    let gauges: [(&str, &str, Field); 3] = [
        (
            "gpve_storage_total_bytes",
            "Size of the storage pool.",
            |p| p.total_bytes,
        ),
        (
            "gpve_storage_used_bytes",
            "Used space of the storage pool.",
            |p| p.used_bytes,
        ),
        (
            "gpve_storage_available_bytes",
            "Space an unprivileged writer can still allocate.",
            |p| p.available_bytes,
        ),
    ];
    for (name, help, field) in gauges {
        e.family(name, "gauge", help);
        for r in &rows {
            if let Some(pool) = &r.pool {
                e.sample(
                    name,
                    &[("node", &node), ("storage", &r.config.storage)],
                    field(pool) as f64,
                );
            }
        }
    }
}

/// Render every family.
pub async fn render(state: &AppState) -> String {
    let mut e = Exposition::default();
    e.family("gpve_build_info", "gauge", "The running gpve version.");
    e.sample(
        "gpve_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    let requests: Vec<_> = state
        .metrics
        .requests()
        .iter()
        .map(|(k, s)| (k.clone(), s.clone()))
        .collect();
    write_requests(&mut e, &requests);
    e.family(
        "gpve_api_requests_in_flight",
        "gauge",
        "Requests being handled now (this scrape included).",
    );
    e.sample(
        "gpve_api_requests_in_flight",
        &[],
        state
            .metrics
            .0
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    e.family(
        "gpve_api_event_streams",
        "gauge",
        "Open actor event watch streams.",
    );
    e.sample(
        "gpve_api_event_streams",
        &[],
        state.metrics.open_event_streams() as f64,
    );
    let actors = state.node.directory.snapshot();
    write_actors(&mut e, &state.config.node_name, &actors);
    write_tasks(&mut e, state).await;
    write_node(&mut e, state).await;
    write_vms(&mut e, state).await;
    if let Some(sample) = state.metrics.usage().latest() {
        write_usage(&mut e, &state.config.node_name, &sample);
    }
    write_storage(&mut e, state).await;
    e.out
}

/// The `/metrics` handler.
pub async fn scrape(State(state): State<AppState>, req: Request) -> Response {
    let (parts, _body) = req.into_parts();
    if let Err(resp) = crate::v1::guard::authorize(&state, &METRICS_GET, &parts).await {
        return resp;
    }
    let body = render(&state).await;
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_values_formatted() {
        let mut e = Exposition::default();
        e.sample("m", &[("a", "x\"y\\z\nw")], 1.5);
        e.sample("m", &[], f64::INFINITY);
        assert_eq!(e.out, "m{a=\"x\\\"y\\\\z\\nw\"} 1.5\nm +Inf\n");
        assert_eq!(fmt_value(3.0), "3");
    }
}
