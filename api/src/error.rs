//! `ApiError`: every failure a handler can return, and the one place that maps it to an HTTP
//! status and Proxmox's JSON error shape.

use std::collections::BTreeMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use thiserror::Error;

/// Errors surfaced to API clients.
#[derive(Debug, Error)]
pub enum ApiError {
    /// 400 with a per-parameter `errors` map, as Proxmox's parameter verification.
    #[error("Parameter verification failed.")]
    Params(BTreeMap<String, String>),
    /// 400 with a message (a request that is well-formed but not acceptable).
    #[error("{0}")]
    BadRequest(String),
    /// 401: no or invalid credentials. Never says which part was wrong.
    #[error("authentication failure")]
    Unauthorized,
    /// 401: a ticket-authenticated write without a valid CSRF token.
    #[error("Permission denied - invalid csrf token")]
    Csrf,
    /// 403.
    #[error("Permission check failed")]
    Forbidden,
    /// 403 with the reason (a quota refusal names the quota, the request and what is left).
    #[error("{0}")]
    Refused(String),
    /// 404-like: the object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 500 with `no such cluster node`-style messages for unknown nodes. Proxmox answers 595
    /// for an unreachable node; gpve answers 404 for a node that is not a member, because
    /// clients treat 595 as a transient connection error and retry.
    #[error("no such cluster node '{0}'")]
    NoSuchNode(String),
    /// 595, Proxmox's status for a member node that cannot be reached (offline: its lease
    /// expired, or the connection to it failed). Clients retry it later.
    #[error("node '{node}' is offline or unreachable: {reason}")]
    NodeOffline { node: String, reason: String },
    /// 409-like conflict; Proxmox answers these with 500 and a message, gpve with 400 so
    /// clients see a client error.
    #[error("{0}")]
    Conflict(String),
    /// 413.
    #[error("request body too large")]
    PayloadTooLarge,
    /// 507: the storage cannot hold what was asked.
    #[error("{0}")]
    InsufficientStorage(String),
    /// 501 for unknown paths and methods, with Proxmox's message.
    #[error("Method '{method} {path}' not implemented")]
    NotImplemented { method: String, path: String },
    /// 503: an internal service (actor) did not answer.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// 500: the store or another internal component failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// Single-parameter verification error.
    pub fn param(name: &str, reason: impl Into<String>) -> Self {
        let mut m = BTreeMap::new();
        m.insert(name.to_string(), reason.into());
        ApiError::Params(m)
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Params(_) | ApiError::BadRequest(_) | ApiError::Conflict(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Unauthorized | ApiError::Csrf => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden | ApiError::Refused(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) | ApiError::NoSuchNode(_) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::NotImplemented { .. } => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NodeOffline { .. } => {
                StatusCode::from_u16(595).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if matches!(self, ApiError::Internal(_) | ApiError::Unavailable(_)) {
            tracing::error!(error = %self, "request failed");
        }
        // Proxmox ends messages with a newline and repeats them in the HTTP reason phrase.
        let body = match &self {
            ApiError::Params(errors) => json!({
                "data": null,
                "message": "Parameter verification failed.\n",
                "errors": errors,
            }),
            other => json!({ "data": null, "message": format!("{other}\n") }),
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if matches!(self, ApiError::Unauthorized | ApiError::Csrf) {
            // Proxmox does not send WWW-Authenticate; keep the connection reusable.
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
        resp
    }
}

impl From<gpve_actors::task::TaskError> for ApiError {
    fn from(e: gpve_actors::task::TaskError) -> Self {
        use gpve_actors::task::TaskError as T;
        match e {
            T::NotFound(upid) => ApiError::NotFound(format!("no such task '{upid}'")),
            T::NotRunning(upid) => ApiError::BadRequest(format!("task '{upid}' is not running")),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::access_db::AccessDbError> for ApiError {
    fn from(e: crate::access_db::AccessDbError) -> Self {
        use crate::access_db::AccessDbError as A;
        match e {
            A::NoSuchUser(_) | A::NoSuchToken(..) => ApiError::NotFound(e.to_string()),
            A::UserExists(_) | A::TokenExists => ApiError::Conflict(e.to_string()),
            A::RootUndeletable => ApiError::BadRequest(e.to_string()),
            A::Hash(_) | A::Store(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<gpve_actors::vm::VmError> for ApiError {
    fn from(e: gpve_actors::vm::VmError) -> Self {
        use gpve_actors::vm::VmError as V;
        match e {
            V::Config(errors) => ApiError::Params(errors.0),
            V::State(_) | V::Snapshot { .. } | V::Protected { .. } => {
                ApiError::BadRequest(e.to_string())
            }
            V::Locked { .. } | V::PlacedElsewhere { .. } => ApiError::Conflict(e.to_string()),
            V::Migration(m) if m.is_refusal() => ApiError::BadRequest(m.to_string()),
            V::NotFound(_) => ApiError::NotFound(e.to_string()),
            V::Unavailable(_) => ApiError::Unavailable(e.to_string()),
            V::Store(inner) => inner.into(),
            V::Hypervisor { .. }
            | V::Storage(_)
            | V::ShutdownTimeout { .. }
            | V::Network { .. }
            | V::Migration(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<gpve_store::StoreError> for ApiError {
    /// Contention and unknown commit outcomes are transient: 503 tells clients to retry,
    /// and says whether the write may already have happened. Anything else is a fault.
    fn from(e: gpve_store::StoreError) -> Self {
        if e.is_conflict() {
            ApiError::Unavailable(format!(
                "{e}: the store is contended, nothing was changed; retry"
            ))
        } else if e.is_maybe_committed() {
            ApiError::Unavailable(format!(
                "{e}: the change may or may not have been applied; check before retrying"
            ))
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

impl From<gpve_storage_drivers::StorageError> for ApiError {
    /// Storage errors map by their class; the message keeps the causes so a client sees
    /// why (e.g. which VM uses the volume).
    fn from(e: gpve_storage_drivers::StorageError) -> Self {
        use gpve_storage_drivers::ErrorClass as C;
        let msg = gpve_actors::storage::error_chain(&e);
        match e.class() {
            C::BadRequest | C::Conflict => ApiError::BadRequest(msg),
            C::NotFound => ApiError::NotFound(msg),
            C::InsufficientStorage => ApiError::InsufficientStorage(msg),
            C::Unsupported => ApiError::BadRequest(msg),
            C::Internal => ApiError::Internal(msg),
        }
    }
}

impl From<gpve_actors::storage::StorageConfigError> for ApiError {
    fn from(e: gpve_actors::storage::StorageConfigError) -> Self {
        use gpve_actors::storage::StorageConfigError as S;
        match e {
            S::Invalid { field, reason } => ApiError::param(field, reason),
            S::Exists(_) => ApiError::Conflict(e.to_string()),
            S::NotFound(_) => ApiError::NotFound(e.to_string()),
            S::Store(inner) => inner.into(),
            S::Driver(inner) => inner.into(),
        }
    }
}

impl From<gpve_actors::storage::StorageServiceError> for ApiError {
    fn from(e: gpve_actors::storage::StorageServiceError) -> Self {
        use gpve_actors::storage::StorageServiceError as S;
        match e {
            S::Storage(inner) => inner.into(),
            S::Config(inner) => inner.into(),
            S::NotActiveHere(_) | S::Protected(_) => ApiError::BadRequest(e.to_string()),
            S::Busy { .. } | S::Unavailable(_) => ApiError::Unavailable(e.to_string()),
            S::Store(inner) => inner.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpve_store::StoreError;

    fn exhausted(last: StoreError) -> StoreError {
        StoreError::RetriesExhausted {
            attempts: 50,
            last: Box::new(last),
        }
    }

    #[test]
    fn store_contention_is_a_retryable_503_not_a_500() {
        let conflict = ApiError::from(exhausted(StoreError::Conflict));
        assert_eq!(conflict.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(conflict.to_string().contains("nothing was changed"));

        let unknown = ApiError::from(exhausted(StoreError::CommitUnknownResult));
        assert_eq!(unknown.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            unknown
                .to_string()
                .contains("may or may not have been applied")
        );
    }
}
