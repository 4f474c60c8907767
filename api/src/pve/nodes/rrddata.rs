//! `GET /nodes/{node}/rrddata`: the node's usage history from the usage sampler's
//! round-robin archives (see `crate::metrics::rrd`), in Proxmox's `pve2-node` fields:
//! `time`, `cpu`, `maxcpu`, `loadavg`, `memused`, `memtotal`, `swapused`, `swaptotal`,
//! `rootused`, `roottotal`, `netin`, `netout` (bytes per second).

use serde_json::json;

use crate::error::ApiError;
use crate::metrics::rrd::{Cf, SeriesId, timeframe_index};
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::{Param, ParamSchema};

/// `timeframe` values of the node archives.
pub const NODE_TIMEFRAMES: &[&str] = &["hour", "day", "week", "month", "year", "decade"];
/// `cf` values.
pub const CFS: &[&str] = &["AVERAGE", "MAX"];

/// `GET /nodes/{node}/rrddata`.
pub const GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[
        Param::node(),
        Param::enumeration("timeframe", NODE_TIMEFRAMES),
        Param::enumeration("cf", CFS).opt(),
    ]),
    privilege: Privilege::Perm("/nodes/{node}", &["Sys.Audit"]),
    description: "Read node RRD statistics",
};

/// The archive and consolidation a request names (validated by the schema already; the
/// errors here only guard a schema/archive mismatch).
pub fn archive_params(ctx: &Ctx) -> Result<(usize, Cf), ApiError> {
    let timeframe = ctx.params.req_str("timeframe")?;
    let tf = timeframe_index(timeframe)
        .ok_or_else(|| ApiError::param("timeframe", "value is not one of the allowed values"))?;
    let cf = match ctx.params.str("cf") {
        None => Cf::Average,
        Some(s) => Cf::parse(s)
            .ok_or_else(|| ApiError::param("cf", "value is not one of the allowed values"))?,
    };
    Ok((tf, cf))
}

pub async fn get(ctx: Ctx) -> Result<Reply, ApiError> {
    let node = ctx.local_node()?.to_string();
    let (tf, cf) = archive_params(&ctx)?;
    let now_s = u64::try_from(crate::state::now_s()).unwrap_or(0);
    let points = ctx
        .state
        .metrics
        .usage()
        .points(&SeriesId::Node(node), tf, cf, now_s);
    Ok(Reply::Data(json!(points)))
}
