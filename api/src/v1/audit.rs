//! `/api/v1/audit`: read and verify the audit log ([`crate::audit`]). Auditors need
//! `Sys.Audit` on `/`.

use serde_json::json;

use crate::audit::{AuditFilter, AuditLog, MAX_LIST_RECORDS, Verification};
use crate::error::ApiError;
use crate::router::{Ctx, Endpoint, Method, Privilege, Reply, Routes, endpoint};
use crate::schema::{Format, Param, ParamSchema};

/// The routes of `/api/v1/audit`.
pub fn router() -> Routes {
    Routes::new()
        .route("/audit", endpoint(&LIST, list))
        .route("/audit/verify", endpoint(&VERIFY, verify))
}

/// `GET /api/v1/audit`.
pub const LIST: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[
        Param::string("user", 128, Some(Format::Text)).opt(),
        Param::string("path", 1024, Some(Format::Text)).opt(),
        Param::int("since", Some(0), None).opt(),
        Param::int("until", Some(0), None).opt(),
        Param::int("limit", Some(1), Some(MAX_LIST_RECORDS as i64)).opt(),
    ]),
    privilege: Privilege::Perm("/", &["Sys.Audit"]),
    description: "Audit records, oldest first: filter by user, path prefix, time (since/until, Unix seconds); the newest `limit`.",
};

pub async fn list(ctx: Ctx) -> Result<Reply, ApiError> {
    let p = &ctx.params;
    let f = AuditFilter {
        user: p.str("user").map(str::to_string),
        path_prefix: p.str("path").map(str::to_string),
        since_ms: p.int("since").map(|s| s.saturating_mul(1000)),
        until_ms: p
            .int("until")
            .map(|s| s.saturating_mul(1000).saturating_add(999)),
        limit: p.int("limit").map(|l| l as usize),
    };
    let recs = AuditLog::new(ctx.state.store.clone())
        .list(&f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let data = serde_json::to_value(recs).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Reply::Data(data))
}

/// `GET /api/v1/audit/verify`.
pub const VERIFY: Endpoint = Endpoint {
    method: Method::Get,
    params: ParamSchema(&[]),
    privilege: Privilege::Perm("/", &["Sys.Audit"]),
    description: "Check the audit log's hash chain: `ok`, the record count, or the first broken record and why.",
};

pub async fn verify(ctx: Ctx) -> Result<Reply, ApiError> {
    let v = AuditLog::new(ctx.state.store.clone())
        .verify()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Reply::Data(match v {
        Verification::Intact { records } => json!({"ok": 1, "records": records}),
        Verification::Broken { seq, reason } => json!({"ok": 0, "seq": seq, "reason": reason}),
    }))
}
