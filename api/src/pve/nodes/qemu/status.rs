//! `/nodes/{node}/qemu/{vmid}/status/*`: the VM's runtime status and its power operations.
//! `current` reads what the VM actor last persisted (never waits behind a long operation
//! in the VM's mailbox); the operations run as tasks.

use gpve_actors::vm::VmOp;
use gpve_actors::vm::state::Command;
use serde_json::json;

use super::{checked_entry, entry, list_item, precheck, spawn_op, vmid};
use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::{Format, Param, ParamSchema};

/// Largest shutdown timeout accepted, in seconds.
pub const MAX_SHUTDOWN_TIMEOUT_S: i64 = 24 * 3600;

/// Resident memory of a process in bytes (`VmRSS`), 0 if unreadable.
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// `GET .../status`.
pub const INDEX: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::node(), Param::vmid()]),
    privilege: Privilege::Perm("/vms/{vmid}", &["VM.Audit"]),
    description: "Directory index.",
};

pub async fn index(ctx: Ctx) -> Result<Reply, ApiError> {
    let vmid = vmid(&ctx)?;
    entry(&ctx, vmid).await?;
    Ok(Reply::Data(json!([
        {"subdir": "current"}, {"subdir": "start"}, {"subdir": "stop"},
        {"subdir": "reset"}, {"subdir": "shutdown"}, {"subdir": "suspend"},
        {"subdir": "reboot"}, {"subdir": "resume"},
    ])))
}

/// `GET .../status/current`.
pub const CURRENT: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::node(), Param::vmid()]),
    privilege: Privilege::Perm("/vms/{vmid}", &["VM.Audit"]),
    description: "Get virtual machine status.",
};

pub async fn current(ctx: Ctx) -> Result<Reply, ApiError> {
    let vmid = vmid(&ctx)?;
    let e = entry(&ctx, vmid).await?;
    let mut v = list_item(&e);
    v["qmpstatus"] = json!(e.runtime.qmpstatus);
    v["ha"] = json!({ "managed": 0 });
    v["running-machine"] = json!(
        e.config
            .get("machine")
            .cloned()
            .unwrap_or_else(|| "q35".into())
    );
    if e.config.contains_key("serial0") {
        v["serial"] = json!(1);
    }
    // Usage from the sampler's latest sample, the same numbers /metrics and rrddata show
    // (counters cumulative since QEMU started, as Proxmox reports them here).
    let pid = v["pid"].as_u64();
    if let Some(sample) = ctx.state.metrics.usage().latest()
        && let Some(u) = sample
            .vms
            .get(&vmid)
            .filter(|u| Some(u64::from(u.pid)) == pid)
    {
        v["cpu"] = json!(u.cpu.unwrap_or(0.0));
        v["mem"] = json!(u.mem_bytes);
        v["diskread"] = json!(u.counters.diskread_bytes);
        v["diskwrite"] = json!(u.counters.diskwrite_bytes);
        v["netin"] = json!(u.counters.netin_bytes);
        v["netout"] = json!(u.counters.netout_bytes);
        v["usage-sampled-at"] = json!(sample.at_s);
    }
    Ok(Reply::Data(v))
}

macro_rules! simple_op {
    ($ep:ident, $handler:ident, $desc:literal, $worker:literal, $cmd:expr, $op:expr) => {
        #[doc = concat!("`POST .../status/", stringify!($handler), "`.")]
        pub const $ep: Endpoint = Endpoint {
            method: Method::Post,
            params: ParamSchema(&[
                Param::node(),
                Param::vmid(),
                Param::boolean("skiplock").opt(),
            ]),
            privilege: Privilege::Perm("/vms/{vmid}", &["VM.PowerMgmt"]),
            description: $desc,
        };

        pub async fn $handler(ctx: Ctx) -> Result<Reply, ApiError> {
            let (vmid, _) = checked_entry(&ctx, &$cmd).await?;
            spawn_op(&ctx, $worker, vmid, $op).await
        }
    };
}

simple_op!(
    RESET,
    reset,
    "Reset virtual machine.",
    "qmreset",
    Command::Reset,
    VmOp::Reset
);
simple_op!(
    RESUME,
    resume,
    "Resume virtual machine.",
    "qmresume",
    Command::Resume,
    VmOp::Resume
);

/// `POST .../status/start`.
pub const START: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        Param::node(),
        Param::vmid(),
        Param::boolean("skiplock").opt(),
        Param::int("timeout", Some(0), Some(86_400)).opt(),
        Param::string("machine", 64, Some(Format::Text)).opt(),
    ]),
    privilege: Privilege::Perm("/vms/{vmid}", &["VM.PowerMgmt"]),
    description: "Start virtual machine.",
};

pub async fn start(ctx: Ctx) -> Result<Reply, ApiError> {
    let (vmid, _) = checked_entry(&ctx, &Command::Start).await?;
    if ctx.params.has("machine") {
        return Err(ApiError::param(
            "machine",
            "set 'machine' in the configuration instead",
        ));
    }
    spawn_op(&ctx, "qmstart", vmid, VmOp::Start).await
}

/// `POST .../status/stop`.
pub const STOP: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        Param::node(),
        Param::vmid(),
        Param::boolean("skiplock").opt(),
        Param::boolean("keepActive").opt(),
        Param::int("timeout", Some(0), Some(MAX_SHUTDOWN_TIMEOUT_S)).opt(),
        Param::boolean("overrule-shutdown").opt(),
    ]),
    privilege: Privilege::Perm("/vms/{vmid}", &["VM.PowerMgmt"]),
    description: "Stop virtual machine (like pulling the plug).",
};

pub async fn stop(ctx: Ctx) -> Result<Reply, ApiError> {
    let (vmid, _) = checked_entry(&ctx, &Command::Stop).await?;
    spawn_op(&ctx, "qmstop", vmid, VmOp::Stop).await
}

/// `POST .../status/shutdown`.
pub const SHUTDOWN: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        Param::node(),
        Param::vmid(),
        Param::boolean("skiplock").opt(),
        Param::boolean("keepActive").opt(),
        Param::boolean("forceStop").opt(),
        Param::int("timeout", Some(0), Some(MAX_SHUTDOWN_TIMEOUT_S)).opt(),
    ]),
    privilege: Privilege::Perm("/vms/{vmid}", &["VM.PowerMgmt"]),
    description: "Shutdown virtual machine (ACPI power button, forced stop after 'timeout' with forceStop).",
};

pub async fn shutdown(ctx: Ctx) -> Result<Reply, ApiError> {
    let vmid = vmid(&ctx)?;
    let e = entry(&ctx, vmid).await?;
    let force_stop = ctx.params.bool("forceStop").unwrap_or(false);
    let timeout_ms = ctx.params.int("timeout").map(|s| s as u64 * 1000);
    precheck(
        &e,
        &Command::Shutdown {
            timeout_ms: timeout_ms.unwrap_or(0),
            force_stop,
        },
    )?;
    spawn_op(
        &ctx,
        "qmshutdown",
        vmid,
        VmOp::Shutdown {
            timeout_ms,
            force_stop,
        },
    )
    .await
}

/// `POST .../status/reboot`.
pub const REBOOT: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        Param::node(),
        Param::vmid(),
        Param::int("timeout", Some(0), Some(MAX_SHUTDOWN_TIMEOUT_S)).opt(),
    ]),
    privilege: Privilege::Perm("/vms/{vmid}", &["VM.PowerMgmt"]),
    description: "Reboot the VM by shutting it down and starting it again; applies pending changes.",
};

pub async fn reboot(ctx: Ctx) -> Result<Reply, ApiError> {
    let vmid = vmid(&ctx)?;
    let e = entry(&ctx, vmid).await?;
    let timeout_ms = ctx.params.int("timeout").map(|s| s as u64 * 1000);
    precheck(&e, &Command::Reboot { timeout_ms: 0 })?;
    spawn_op(&ctx, "qmreboot", vmid, VmOp::Reboot { timeout_ms }).await
}

/// `POST .../status/suspend`.
pub const SUSPEND: Endpoint = Endpoint {
    method: Method::Post,
    params: ParamSchema(&[
        Param::node(),
        Param::vmid(),
        Param::boolean("skiplock").opt(),
        Param::boolean("todisk").opt(),
        Param::string("statestorage", 64, Some(Format::Text)).opt(),
    ]),
    privilege: Privilege::Perm("/vms/{vmid}", &["VM.PowerMgmt"]),
    description: "Suspend virtual machine (pause; suspend to disk is not supported).",
};

pub async fn suspend(ctx: Ctx) -> Result<Reply, ApiError> {
    let vmid = vmid(&ctx)?;
    let e = entry(&ctx, vmid).await?;
    if ctx.params.bool("todisk").unwrap_or(false) {
        return Err(ApiError::param(
            "todisk",
            "suspend to disk is not supported yet",
        ));
    }
    precheck(&e, &Command::Suspend)?;
    spawn_op(&ctx, "qmsuspend", vmid, VmOp::Suspend).await
}
