//! `GET /version`.

use serde_json::json;

use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply};
use crate::schema::ParamSchema;

/// Proxmox VE release whose API gpve follows.
pub const PVE_RELEASE: &str = "9.1";

/// Any authenticated caller may read the version (Proxmox: `user: all`).
pub const GET: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[]),
    privilege: Privilege::User,
    description: "API version details.",
};

/// Version of the server; `version` carries gpve's own version.
pub async fn get(_ctx: Ctx) -> Result<Reply, ApiError> {
    Ok(Reply::Data(json!({
        "version": format!("gpve-{}", env!("CARGO_PKG_VERSION")),
        "release": PVE_RELEASE,
        "repoid": "00000000",
        "console": "xtermjs",
    })))
}
