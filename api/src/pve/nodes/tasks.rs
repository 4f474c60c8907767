//! `/nodes/{node}/tasks`: task list, status, log and stop.

use gpve_actors::task::{TaskFilter, TaskRecord, TaskSource, Upid};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::{Format, Param, ParamSchema};

/// Most entries one task list or log page returns.
pub const MAX_PAGE_ENTRIES: i64 = 10_000;

const UPID: Param = Param::string("upid", 512, Some(Format::Upid));

/// `GET /nodes/{node}/tasks`.
pub const LIST: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[
        Param::node(),
        Param::int("start", Some(0), Some(i32::MAX as i64)).opt(),
        Param::int("limit", Some(0), Some(MAX_PAGE_ENTRIES)).opt(),
        Param::boolean("errors").opt(),
        Param::string("typefilter", 64, None).opt(),
        Param::string("userfilter", 64, None).opt(),
        Param::vmid().opt(),
        Param::enumeration("source", &["archive", "active", "all"]).opt(),
        Param::int("since", Some(0), None).opt(),
        Param::int("until", Some(0), None).opt(),
    ]),
    privilege: Privilege::User,
    description: "Read task list for one node (finished tasks); without Sys.Audit on /nodes/{node}, only the caller's own tasks.",
};

fn list_entry(t: &TaskRecord) -> Value {
    let mut v = json!({
        "upid": t.upid,
        "node": t.node,
        "pid": t.pid,
        "pstart": t.pstart,
        "starttime": t.starttime,
        "type": t.worker_type,
        "id": t.id,
        "user": t.user,
    });
    if let Some(end) = t.endtime {
        v["endtime"] = json!(end);
    }
    if let Some(status) = &t.exitstatus {
        v["status"] = json!(status);
    }
    v
}

/// List tasks, newest first.
pub async fn list(ctx: Ctx) -> Result<Reply, ApiError> {
    let node = ctx.local_node()?.to_string();
    let p = &ctx.params;
    // Proxmox's rule: node auditors see every task, others only their own.
    let own_only = !ctx
        .allowed(&format!("/nodes/{node}"), &["Sys.Audit"])
        .await?;
    let me = ctx.userid()?.to_string();
    let mut filter = TaskFilter {
        start: p.int("start").unwrap_or(0) as usize,
        limit: p.int("limit").unwrap_or(50) as usize,
        errors: p.bool("errors").unwrap_or(false),
        typefilter: p.str("typefilter").map(str::to_string),
        userfilter: p.str("userfilter").map(str::to_string),
        vmid: p.int("vmid").map(|v| v as u32),
        source: match p.str("source") {
            Some("active") => TaskSource::Active,
            Some("all") => TaskSource::All,
            _ => TaskSource::Archive,
        },
        since: p.int("since"),
        until: p.int("until"),
    };
    if own_only {
        filter.userfilter = Some(me.clone());
    }
    let tasks = ctx.state.tasks.list(&filter).await?;
    let mine = |t: &&TaskRecord| {
        !own_only
            || t.user == me
            || t.user
                .strip_prefix(me.as_str())
                .is_some_and(|r| r.starts_with('!'))
    };
    Ok(Reply::Data(Value::Array(
        tasks.iter().filter(mine).map(list_entry).collect(),
    )))
}

fn checked_upid(ctx: &Ctx) -> Result<String, ApiError> {
    let node = ctx.local_node()?;
    let upid = ctx.str("upid")?;
    let parsed: Upid = upid
        .parse()
        .map_err(|e: gpve_actors::task::UpidError| ApiError::param("upid", e.to_string()))?;
    if parsed.node != node {
        return Err(ApiError::param(
            "upid",
            "the task does not belong to this node",
        ));
    }
    Ok(upid.to_string())
}

/// `GET /nodes/{node}/tasks/{upid}`.
pub const INDEX: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::node(), UPID]),
    privilege: Privilege::Or(&[
        Privilege::TaskOwner,
        Privilege::Perm("/nodes/{node}", &["Sys.Audit"]),
    ]),
    description: "Task index.",
};

/// The subdirectories of a task.
pub async fn index(ctx: Ctx) -> Result<Reply, ApiError> {
    let upid = checked_upid(&ctx)?;
    ctx.state.tasks.status(&upid).await?;
    Ok(Reply::Data(json!([{"name": "log"}, {"name": "status"}])))
}

/// `GET /nodes/{node}/tasks/{upid}/status`.
pub const STATUS: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[Param::node(), UPID]),
    privilege: Privilege::Or(&[
        Privilege::TaskOwner,
        Privilege::Perm("/nodes/{node}", &["Sys.Audit"]),
    ]),
    description: "Read task status.",
};

/// `status` running|stopped, and `exitstatus` once stopped.
pub async fn status(ctx: Ctx) -> Result<Reply, ApiError> {
    let upid = checked_upid(&ctx)?;
    let t = ctx.state.tasks.status(&upid).await?;
    let mut v = json!({
        "upid": t.upid,
        "node": t.node,
        "pid": t.pid,
        "pstart": t.pstart,
        "starttime": t.starttime,
        "type": t.worker_type,
        "id": t.id,
        "user": t.user,
        "status": if t.is_running() { "running" } else { "stopped" },
    });
    if let Some(exit) = &t.exitstatus {
        v["exitstatus"] = json!(exit);
    }
    Ok(Reply::Data(v))
}

/// `GET /nodes/{node}/tasks/{upid}/log`.
pub const LOG: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[
        Param::node(),
        UPID,
        Param::int("start", Some(0), Some(i32::MAX as i64)).opt(),
        Param::int("limit", Some(0), Some(MAX_PAGE_ENTRIES)).opt(),
    ]),
    privilege: Privilege::Or(&[
        Privilege::TaskOwner,
        Privilege::Perm("/nodes/{node}", &["Sys.Audit"]),
    ]),
    description: "Read task log.",
};

/// Log lines as `[{n, t}]`.
pub async fn log(ctx: Ctx) -> Result<Reply, ApiError> {
    let upid = checked_upid(&ctx)?;
    let start = ctx.params.int("start").unwrap_or(0) as usize;
    let limit = ctx.params.int("limit").unwrap_or(50) as usize;
    let (lines, total) = ctx.state.tasks.log(&upid, start, limit).await?;
    let data: Vec<Value> = lines
        .into_iter()
        .map(|(n, t)| json!({"n": n, "t": t}))
        .collect();
    Ok(Reply::Paged {
        data: Value::Array(data),
        total: total as u64,
    })
}

/// `DELETE /nodes/{node}/tasks/{upid}`.
pub const STOP: Endpoint = Endpoint {
    method: Method::Delete,
    params: ParamSchema(&[Param::node(), UPID]),
    privilege: Privilege::Or(&[
        Privilege::TaskOwner,
        Privilege::Perm("/nodes/{node}", &["Sys.Modify"]),
    ]),
    description: "Stop a task.",
};

/// Ask a running task to stop.
pub async fn stop(ctx: Ctx) -> Result<Reply, ApiError> {
    let upid = checked_upid(&ctx)?;
    ctx.state.tasks.stop(&upid).await?;
    Ok(Reply::Data(Value::Null))
}
