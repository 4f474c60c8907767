//! `GET /nodes/{node}/qemu/{vmid}/rrddata`: a VM's usage history from the usage sampler's
//! round-robin archives, in Proxmox's `pve2-vm` fields: `time`, `cpu`, `maxcpu`, `mem`,
//! `maxmem`, `netin`, `netout`, `diskread`, `diskwrite` (I/O in bytes per second). Rows
//! while the VM was stopped have only `time`.

use serde_json::json;

use super::{entry, vmid};
use crate::error::ApiError;
use crate::metrics::rrd::SeriesId;
use crate::pve::nodes::rrddata::{CFS, archive_params};
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::{Param, ParamSchema};

/// `GET /nodes/{node}/qemu/{vmid}/rrddata`.
pub const GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[
        Param::node(),
        Param::vmid(),
        Param::enumeration("timeframe", &["hour", "day", "week", "month", "year"]),
        Param::enumeration("cf", CFS).opt(),
    ]),
    privilege: Privilege::Perm("/vms/{vmid}", &["VM.Audit"]),
    description: "Read VM RRD statistics",
};

pub async fn get(ctx: Ctx) -> Result<Reply, ApiError> {
    let vmid = vmid(&ctx)?;
    entry(&ctx, vmid).await?;
    let (tf, cf) = archive_params(&ctx)?;
    let now_s = u64::try_from(crate::state::now_s()).unwrap_or(0);
    let points = ctx
        .state
        .metrics
        .usage()
        .points(&SeriesId::Vm(vmid), tf, cf, now_s);
    Ok(Reply::Data(json!(points)))
}
