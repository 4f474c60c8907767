//! The audit log: an append-only, hash-chained record of every state-changing request.
//!
//! Each request that may change state (POST, PUT, DELETE) by an authenticated caller is
//! written twice by the router: a `request` record *before* the handler runs (the handler
//! does not run if it cannot be written: no change without a record), and a `result`
//! record after, naming the request's sequence number and the HTTP status. A request the
//! router refuses (403, 400) gets one `request` record carrying its status.
//!
//! Why not the handler's own transaction: handlers commit through actors (a VM's mailbox)
//! and several transactions, so there is no single commit to join. The consequence of a
//! crash between the handler's commit and the `result` record is a `request` record
//! without a result: "outcome unknown", never an unrecorded change.
//!
//! Chain: `hash = sha256(prev_hash || canonical JSON of the record without its hash)`, and
//! a head key holds the last `(seq, hash)`. Altering a record breaks its hash; removing one
//! breaks the sequence and the next `prev_hash`; removing the tail disagrees with the head.
//!
//! Store layout: `("audit", "rec", seq)` → JSON [`AuditRecord`]; `("audit", "head")` →
//! JSON [`AuditHead`].

use gpve_store::{Key, RangeOptions, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use thiserror::Error;

const AUDIT: &str = "audit";
/// The chain's first `prev_hash`.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Largest page `list` returns.
pub const MAX_LIST_RECORDS: usize = 10_000;
/// Longest parameter value kept in a record, in bytes (uploads and long configs are cut).
pub const MAX_PARAM_VALUE_BYTES: usize = 1024;
/// Parameters whose values are never recorded.
const SECRET_PARAMS: &[&str] = &[
    "password",
    "confirmation-password",
    "cipassword",
    "new-password",
    "secret",
    "value",
    "ticket",
];

/// Failures of the audit log.
#[derive(Debug, Error)]
pub enum AuditError {
    #[error("audit store operation failed")]
    Store(#[from] StoreError),
    #[error("audit record {0} cannot be encoded")]
    Encode(u64),
}

/// Whether a record announces a request or reports its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditKind {
    Request,
    Result,
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub time_ms: i64,
    pub kind: AuditKind,
    /// For `result` records: the `request` record's seq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<u64>,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub method: String,
    pub path: String,
    /// Parameters with secrets replaced by `"<redacted>"`.
    #[serde(default)]
    pub params: Value,
    /// HTTP status; `None` on a `request` record whose handler is running (or never
    /// reported: crash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub prev_hash: String,
    #[serde(default)]
    pub hash: String,
}

/// What a caller supplies; the log fills in seq, time and the chain.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub kind: AuditKind,
    pub request: Option<u64>,
    pub user: String,
    pub token: Option<String>,
    pub source: Option<String>,
    pub method: String,
    pub path: String,
    pub params: Value,
    pub status: Option<u16>,
}

/// The last record's position.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: String,
}

/// Filters of `list`.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub user: Option<String>,
    pub path_prefix: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub limit: Option<usize>,
}

/// Outcome of `verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// The chain is intact: `records` checked.
    Intact { records: u64 },
    /// The first broken record and why.
    Broken { seq: u64, reason: String },
}

fn record_key(seq: u64) -> Key {
    Key::pack(&(AUDIT, "rec", seq))
}

fn head_key() -> Key {
    Key::pack(&(AUDIT, "head"))
}

/// The subspace holding the log (tests exclude it when comparing store dumps).
pub fn subspace() -> Key {
    Key::prefix(&(AUDIT,))
}

/// The hash of `rec` (its `hash` field is ignored).
pub fn record_hash(rec: &AuditRecord) -> Option<String> {
    let mut r = rec.clone();
    r.hash = String::new();
    // serde_json maps are ordered (no preserve_order feature): the encoding is canonical.
    let v = serde_json::to_value(&r).ok()?;
    let bytes = serde_json::to_vec(&v).ok()?;
    let mut h = Sha256::new();
    h.update(rec.prev_hash.as_bytes());
    h.update(&bytes);
    Some(
        h.finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
    )
}

/// Replace secret parameter values and cut long ones.
pub fn redact(params: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    for (k, v) in params {
        let lower = k.to_ascii_lowercase();
        let v = if SECRET_PARAMS.contains(&lower.as_str()) || lower.contains("password") {
            Value::String("<redacted>".into())
        } else {
            match v {
                Value::String(s) if s.len() > MAX_PARAM_VALUE_BYTES => {
                    let mut end = MAX_PARAM_VALUE_BYTES;
                    while !s.is_char_boundary(end) {
                        end -= 1;
                    }
                    Value::String(format!("{}...", &s[..end]))
                }
                other => other.clone(),
            }
        };
        out.insert(k.clone(), v);
    }
    Value::Object(out)
}

/// The audit log over the store.
#[derive(Debug, Clone)]
pub struct AuditLog {
    store: Store,
}

impl AuditLog {
    pub fn new(store: Store) -> Self {
        AuditLog { store }
    }

    /// Append one record at the end of the chain; returns its seq once committed.
    /// Concurrent appends conflict on the head key and are retried by the store.
    pub async fn append(&self, entry: AuditEntry, time_ms: i64) -> Result<u64, AuditError> {
        self.store
            .transact(|tx| {
                let entry = entry.clone();
                Box::pin(async move {
                    let head: AuditHead = tx.get_json(&head_key()).await?.unwrap_or(AuditHead {
                        seq: 0,
                        hash: GENESIS_HASH.to_string(),
                    });
                    let seq = head.seq + 1;
                    let mut rec = AuditRecord {
                        seq,
                        time_ms,
                        kind: entry.kind,
                        request: entry.request,
                        user: entry.user,
                        token: entry.token,
                        source: entry.source,
                        method: entry.method,
                        path: entry.path,
                        params: entry.params,
                        status: entry.status,
                        prev_hash: head.hash,
                        hash: String::new(),
                    };
                    let Some(hash) = record_hash(&rec) else {
                        return Ok(Err(AuditError::Encode(seq)));
                    };
                    rec.hash = hash.clone();
                    tx.put_json(&record_key(seq), &rec)?;
                    tx.put_json(&head_key(), &AuditHead { seq, hash })?;
                    Ok(Ok(seq))
                })
            })
            .await?
    }

    /// Records matching `f`, oldest first (the newest `limit` of them).
    pub async fn list(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError> {
        let rows: Vec<(Key, AuditRecord)> = self
            .store
            .transact(|tx| {
                Box::pin(async move {
                    tx.list_json(&Key::prefix(&(AUDIT, "rec")), RangeOptions::all())
                        .await
                })
            })
            .await?;
        let limit = f.limit.unwrap_or(MAX_LIST_RECORDS).min(MAX_LIST_RECORDS);
        let mut out: Vec<AuditRecord> = rows
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| f.user.as_ref().is_none_or(|u| &r.user == u))
            .filter(|r| {
                f.path_prefix
                    .as_ref()
                    .is_none_or(|p| r.path.starts_with(p.as_str()))
            })
            .filter(|r| f.since_ms.is_none_or(|s| r.time_ms >= s))
            .filter(|r| f.until_ms.is_none_or(|u| r.time_ms <= u))
            .collect();
        if out.len() > limit {
            out.drain(..out.len() - limit);
        }
        Ok(out)
    }

    /// Walk the whole chain and report the first broken record.
    pub async fn verify(&self) -> Result<Verification, AuditError> {
        let (rows, head) = self
            .store
            .transact(|tx| {
                Box::pin(async move {
                    let rows = tx
                        .get_prefix(&Key::prefix(&(AUDIT, "rec")), RangeOptions::all())
                        .await?;
                    let head: Option<AuditHead> = tx.get_json(&head_key()).await?;
                    Ok((rows, head))
                })
            })
            .await?;
        let mut prev = GENESIS_HASH.to_string();
        let mut expected_seq = 1u64;
        let prefix = Key::prefix(&(AUDIT, "rec"));
        for (key, bytes) in &rows {
            let key_seq = key.unpack_suffix::<u64>(&prefix).unwrap_or(0);
            let Ok(rec) = serde_json::from_slice::<AuditRecord>(bytes) else {
                return Ok(Verification::Broken {
                    seq: key_seq,
                    reason: "the record is not valid JSON".into(),
                });
            };
            if rec.seq != key_seq || key_seq != expected_seq {
                return Ok(Verification::Broken {
                    seq: expected_seq,
                    reason: format!(
                        "record {expected_seq} is missing (found {key_seq} in its place)"
                    ),
                });
            }
            if rec.prev_hash != prev {
                return Ok(Verification::Broken {
                    seq: rec.seq,
                    reason: "its prev_hash does not match the previous record".into(),
                });
            }
            if record_hash(&rec).as_deref() != Some(rec.hash.as_str()) {
                return Ok(Verification::Broken {
                    seq: rec.seq,
                    reason: "its content does not match its hash (altered)".into(),
                });
            }
            prev = rec.hash.clone();
            expected_seq += 1;
        }
        let last = expected_seq - 1;
        match head {
            None if last == 0 => {}
            Some(h) if h.seq == last && h.hash == prev => {}
            Some(h) => {
                return Ok(Verification::Broken {
                    seq: h.seq,
                    reason: format!(
                        "the head names record {} but the chain ends at {last} (records removed from the end)",
                        h.seq
                    ),
                });
            }
            None => {
                return Ok(Verification::Broken {
                    seq: last,
                    reason: "the head is missing".into(),
                });
            }
        }
        Ok(Verification::Intact { records: last })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(user: &str, path: &str) -> AuditEntry {
        AuditEntry {
            kind: AuditKind::Request,
            request: None,
            user: user.into(),
            token: None,
            source: Some("127.0.0.1:5".into()),
            method: "POST".into(),
            path: path.into(),
            params: serde_json::json!({"password": "x"}),
            status: Some(200),
        }
    }

    async fn log() -> (tempfile::TempDir, Store, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_redb(&dir.path().join("a.redb")).unwrap();
        (dir, store.clone(), AuditLog::new(store))
    }

    #[test]
    fn redaction() {
        let mut m = Map::new();
        m.insert("password".into(), "hunter2".into());
        m.insert("Confirmation-Password".into(), "hunter2".into());
        m.insert("name".into(), "x".repeat(5000).into());
        m.insert("vmid".into(), 100.into());
        let r = redact(&m);
        assert_eq!(r["password"], "<redacted>");
        assert_eq!(r["Confirmation-Password"], "<redacted>");
        assert_eq!(r["vmid"], 100);
        assert!(r["name"].as_str().unwrap().len() < 1100);
        assert!(!r.to_string().contains("hunter2"));
    }

    #[tokio::test]
    async fn chain_detects_alteration_removal_and_truncation() {
        let (_d, store, log) = log().await;
        assert_eq!(
            log.verify().await.unwrap(),
            Verification::Intact { records: 0 }
        );
        for i in 0..5 {
            log.append(entry("a@pve", &format!("/x/{i}")), i)
                .await
                .unwrap();
        }
        assert_eq!(
            log.verify().await.unwrap(),
            Verification::Intact { records: 5 }
        );
        let all = log.list(&AuditFilter::default()).await.unwrap();
        assert_eq!(all.len(), 5);
        let f = AuditFilter {
            path_prefix: Some("/x/3".into()),
            ..Default::default()
        };
        assert_eq!(log.list(&f).await.unwrap()[0].seq, 4);
        let f = AuditFilter {
            limit: Some(2),
            ..Default::default()
        };
        assert_eq!(
            log.list(&f)
                .await
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            vec![4, 5]
        );

        // Alter record 3.
        let mut r3 = all[2].clone();
        r3.status = Some(403);
        store.put_json(&record_key(3), &r3).await.unwrap();
        match log.verify().await.unwrap() {
            Verification::Broken { seq, reason } => {
                assert_eq!(seq, 3);
                assert!(reason.contains("altered"), "{reason}");
            }
            v => panic!("{v:?}"),
        }
        // Restore, then remove record 2.
        store.put_json(&record_key(3), &all[2]).await.unwrap();
        store.delete(&record_key(2)).await.unwrap();
        assert!(matches!(
            log.verify().await.unwrap(),
            Verification::Broken { seq: 2, .. }
        ));
        // Restore, then drop the tail.
        store.put_json(&record_key(2), &all[1]).await.unwrap();
        store.delete(&record_key(5)).await.unwrap();
        assert!(matches!(
            log.verify().await.unwrap(),
            Verification::Broken { seq: 5, .. }
        ));
    }
}
