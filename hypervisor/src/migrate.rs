//! Live migration between two VM processes: what the caller asks for
//! ([`MigrateOptions`]), what QEMU reports while it runs ([`MigrationProgress`]) and when
//! it is done ([`MigrationStats`]), and the pure parsing of QEMU's `query-migrate`.
//!
//! The protocol (as Proxmox runs it): the target QEMU is started with `-incoming defer`
//! and paused (`-S`), then `migrate-incoming` makes it listen
//! ([`crate::Hypervisor::start_incoming`]); the source gets its capabilities and
//! parameters set and runs `migrate` ([`crate::VmProcess::migrate`]), polling
//! `query-migrate` until it completes. The source is then paused (`postmigrate`) and the
//! target paused with the whole state: the caller switches ownership, resumes the target
//! and quits the source. A failure resumes the source (QEMU does so itself) and ends the
//! target process.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Proxmox's default `migrate_downtime` (0.1 s).
pub const MIGRATE_DOWNTIME_LIMIT_MS_DEFAULT: u64 = 100;
/// Upper bound on one migration unless the caller sets another.
pub const MIGRATE_TIMEOUT_MS_DEFAULT: u64 = 600_000;
/// How often `query-migrate` is polled.
pub const MIGRATE_POLL_MS_DEFAULT: u64 = 100;
/// Bandwidth when no limit is asked for: Proxmox sets a high explicit value because
/// QEMU's own default (128 MiB/s) would make every migration slow.
pub const MIGRATE_UNLIMITED_BYTES_PER_S: u64 = 16 * 1024 * 1024 * 1024;

/// Failures of a migration, beyond the QMP transport's own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrateError {
    #[error("migration URI {uri:?} is not of the form tcp:HOST:PORT")]
    Uri { uri: String },
    #[error("query-migrate returned an unexpected reply: {reason}")]
    Reply { reason: String },
    #[error("QEMU reports the migration {status}: {reason}")]
    Failed { status: String, reason: String },
    #[error("the migration did not complete within {timeout_ms} ms and was cancelled")]
    Timeout { timeout_ms: u64 },
    #[error("the migration target is not listening at {uri}")]
    NoTarget { uri: String },
    #[error("the VM is {status}; only a running or paused VM can be migrated")]
    NotRunning { status: String },
    #[error("the incoming side did not report where it listens")]
    NoListenAddress,
    #[error("TLS credentials directory {dir:?} cannot be used on a QEMU command line: {reason}")]
    TlsDir { dir: PathBuf, reason: String },
}

/// The QOM id of the TLS credentials object a migration uses on either side.
pub const MIGRATION_TLS_OBJECT_ID: &str = "gpve-migration-tls";

/// The source side of a TLS migration (QEMU `tls-creds-x509`, `endpoint=client`).
///
/// `creds_dir` holds the files QEMU's x509 credentials read: `ca-cert.pem` (the cluster
/// CA, which must have signed the peer), `client-cert.pem` / `client-key.pem` for the
/// source and `server-cert.pem` / `server-key.pem` for the target. `hostname` is the name
/// the target's certificate must carry: the URI holds an address, which the node
/// certificates do not name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationTls {
    pub creds_dir: PathBuf,
    pub hostname: String,
}

/// The `-object` value of the credentials of a TLS migration `endpoint` (`server` on the
/// target, `client` on the source). QEMU's option parser splits on commas, so a
/// directory with one is refused instead of being misread.
pub fn tls_object_arg(dir: &Path, endpoint: &str) -> Result<String, MigrateError> {
    let text = dir.to_str().ok_or_else(|| MigrateError::TlsDir {
        dir: dir.to_path_buf(),
        reason: "the path is not UTF-8".into(),
    })?;
    if text.contains(',') || !dir.is_absolute() {
        return Err(MigrateError::TlsDir {
            dir: dir.to_path_buf(),
            reason: "the path must be absolute and contain no comma".into(),
        });
    }
    Ok(format!(
        "tls-creds-x509,id={MIGRATION_TLS_OBJECT_ID},endpoint={endpoint},dir={text},verify-peer=on"
    ))
}

/// What the source does, as Proxmox sets it up (`QemuMigrate::phase2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateOptions {
    /// QEMU `downtime-limit`: the pause QEMU aims for at switchover.
    pub downtime_limit_ms: u64,
    /// Proxmox `bwlimit` (KiB/s); `None` for no limit.
    pub bwlimit_kib_s: Option<u64>,
    /// Whole migration; cancelled (`migrate_cancel`) after this.
    pub timeout_ms: u64,
    pub poll_interval_ms: u64,
    /// Encrypt the stream (Proxmox `migration_type=secure`); `None`: plain TCP.
    pub tls: Option<MigrationTls>,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            downtime_limit_ms: MIGRATE_DOWNTIME_LIMIT_MS_DEFAULT,
            bwlimit_kib_s: None,
            timeout_ms: MIGRATE_TIMEOUT_MS_DEFAULT,
            poll_interval_ms: MIGRATE_POLL_MS_DEFAULT,
            tls: None,
        }
    }
}

impl MigrateOptions {
    /// QEMU `max-bandwidth` in bytes per second.
    pub fn max_bandwidth_bytes_s(&self) -> u64 {
        match self.bwlimit_kib_s {
            Some(kib) if kib > 0 => kib.saturating_mul(1024),
            _ => MIGRATE_UNLIMITED_BYTES_PER_S,
        }
    }
}

/// One `query-migrate` reply.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MigrationProgress {
    /// QEMU's `MigrationStatus` name (`setup`, `active`, `completed`, `failed`, ...).
    pub status: String,
    pub transferred_bytes: u64,
    pub remaining_bytes: u64,
    pub total_bytes: u64,
    /// Throughput QEMU measured in its last iteration, megabits per second.
    pub mbps: f64,
    pub total_time_ms: Option<u64>,
    pub setup_time_ms: Option<u64>,
    pub downtime_ms: Option<u64>,
    pub expected_downtime_ms: Option<u64>,
    pub error: Option<String>,
}

impl MigrationProgress {
    pub fn is_completed(&self) -> bool {
        self.status == "completed"
    }

    /// A state the migration never leaves.
    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "cancelled")
    }
}

/// A completed migration, as QEMU reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationStats {
    /// Time the guest was paused at switchover.
    pub downtime_ms: u64,
    pub total_time_ms: u64,
    pub setup_time_ms: u64,
    pub transferred_bytes: u64,
    pub total_bytes: u64,
}

impl MigrationStats {
    /// Average bytes per second over the whole migration.
    pub fn average_bytes_s(&self) -> u64 {
        if self.total_time_ms == 0 {
            return 0;
        }
        self.transferred_bytes.saturating_mul(1000) / self.total_time_ms
    }
}

fn u64_field(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// Parses a `query-migrate` reply (QEMU 7.2's field names, which later versions keep).
pub fn parse_query_migrate(v: &Value) -> Result<MigrationProgress, MigrateError> {
    let Some(obj) = v.as_object() else {
        return Err(MigrateError::Reply {
            reason: format!("not an object: {v}"),
        });
    };
    // An idle QEMU (no migration ever started) replies `{}`.
    let status = obj
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("none")
        .to_string();
    let ram = obj.get("ram").cloned().unwrap_or(Value::Null);
    Ok(MigrationProgress {
        status,
        transferred_bytes: u64_field(&ram, "transferred").unwrap_or(0),
        remaining_bytes: u64_field(&ram, "remaining").unwrap_or(0),
        total_bytes: u64_field(&ram, "total").unwrap_or(0),
        mbps: ram.get("mbps").and_then(Value::as_f64).unwrap_or(0.0),
        total_time_ms: u64_field(v, "total-time"),
        setup_time_ms: u64_field(v, "setup-time"),
        downtime_ms: u64_field(v, "downtime"),
        expected_downtime_ms: u64_field(v, "expected-downtime"),
        error: obj
            .get("error-desc")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// The statistics of a completed migration; an error for any other final state.
pub fn finish(progress: &MigrationProgress) -> Result<MigrationStats, MigrateError> {
    if !progress.is_completed() {
        return Err(MigrateError::Failed {
            status: progress.status.clone(),
            reason: progress
                .error
                .clone()
                .unwrap_or_else(|| "QEMU gave no reason".into()),
        });
    }
    Ok(MigrationStats {
        downtime_ms: progress.downtime_ms.unwrap_or(0),
        total_time_ms: progress.total_time_ms.unwrap_or(0),
        setup_time_ms: progress.setup_time_ms.unwrap_or(0),
        transferred_bytes: progress.transferred_bytes,
        total_bytes: progress.total_bytes,
    })
}

/// Checks a `tcp:HOST:PORT` URI (the only transport gpve uses) and returns (host, port).
pub fn parse_tcp_uri(uri: &str) -> Result<(String, u16), MigrateError> {
    let bad = || MigrateError::Uri {
        uri: uri.to_string(),
    };
    let rest = uri.strip_prefix("tcp:").ok_or_else(bad)?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c))
    {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    Ok((host.to_string(), port))
}

/// The URI the incoming side really listens on, from its `query-migrate`
/// `socket-address` list (the port is QEMU's choice when 0 was asked for).
pub fn listen_uri_from(v: &Value) -> Result<String, MigrateError> {
    let addr = v
        .get("socket-address")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .ok_or(MigrateError::NoListenAddress)?;
    let host = addr.get("host").and_then(Value::as_str);
    // InetSocketAddress.port is a string in the QAPI schema.
    let port = match addr.get("port") {
        Some(Value::String(s)) => s.parse::<u16>().ok(),
        Some(Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        _ => None,
    };
    match (host, port) {
        (Some(h), Some(p)) if h.contains(':') => Ok(format!("tcp:[{h}]:{p}")),
        (Some(h), Some(p)) => Ok(format!("tcp:{h}:{p}")),
        _ => Err(MigrateError::NoListenAddress),
    }
}

/// The checks every `VmProcess::migrate` makes first: a tcp URI, a running or paused VM.
pub(crate) fn check_source(
    vmid: u32,
    uri: &str,
    status: &crate::VmStatus,
) -> Result<(), crate::HypervisorError> {
    let mig = |source| crate::HypervisorError::Migration { vmid, source };
    parse_tcp_uri(uri).map_err(mig)?;
    match status {
        crate::VmStatus::Running | crate::VmStatus::Paused => Ok(()),
        other => Err(mig(MigrateError::NotRunning {
            status: format!("{other:?}").to_lowercase(),
        })),
    }
}

/// Bytes as Proxmox's task log renders them (`render_bytes`: `1.5 GiB`).
pub fn render_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_active_and_completed_replies() {
        let active = parse_query_migrate(&json!({
            "status": "active", "setup-time": 3, "total-time": 250, "expected-downtime": 40,
            "ram": {"transferred": 1000, "remaining": 500, "total": 2000, "mbps": 812.5}
        }))
        .expect("parse");
        assert_eq!(active.status, "active");
        assert_eq!(
            (
                active.transferred_bytes,
                active.remaining_bytes,
                active.total_bytes
            ),
            (1000, 500, 2000)
        );
        assert!(!active.is_final());
        assert!(matches!(finish(&active), Err(MigrateError::Failed { .. })));

        let done = parse_query_migrate(&json!({
            "status": "completed", "setup-time": 3, "total-time": 900, "downtime": 27,
            "ram": {"transferred": 4000, "remaining": 0, "total": 2000, "mbps": 900.0}
        }))
        .expect("parse");
        let stats = finish(&done).expect("completed");
        assert_eq!(stats.downtime_ms, 27);
        assert_eq!(stats.total_time_ms, 900);
        assert_eq!(stats.average_bytes_s(), 4444);
    }

    #[test]
    fn a_failed_migration_carries_qemus_reason() {
        let failed = parse_query_migrate(&json!({
            "status": "failed", "error-desc": "Failed to connect socket: Connection refused"
        }))
        .expect("parse");
        assert!(failed.is_final());
        match finish(&failed) {
            Err(MigrateError::Failed { status, reason }) => {
                assert_eq!(status, "failed");
                assert!(reason.contains("Connection refused"));
            }
            other => panic!("expected a failure, got {other:?}"),
        }
        assert_eq!(
            parse_query_migrate(&json!({})).expect("idle").status,
            "none"
        );
        assert!(parse_query_migrate(&json!([1])).is_err());
    }

    #[test]
    fn tcp_uris_and_listen_addresses() {
        assert_eq!(
            parse_tcp_uri("tcp:127.0.0.1:4444").expect("ok"),
            ("127.0.0.1".into(), 4444)
        );
        assert_eq!(parse_tcp_uri("tcp:[::1]:0").expect("ok"), ("::1".into(), 0));
        for bad in [
            "unix:/x",
            "tcp:127.0.0.1",
            "tcp::1",
            "tcp:a b:1",
            "tcp:h:99999",
        ] {
            assert!(parse_tcp_uri(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            listen_uri_from(&json!({"status": "setup", "socket-address": [
                {"type": "inet", "host": "127.0.0.1", "port": "41234"}]}))
            .expect("uri"),
            "tcp:127.0.0.1:41234"
        );
        assert_eq!(
            listen_uri_from(&json!({"status": "setup"})),
            Err(MigrateError::NoListenAddress)
        );
    }

    #[test]
    fn tls_objects_name_the_endpoint_and_refuse_unsafe_dirs() {
        assert_eq!(
            tls_object_arg(Path::new("/var/lib/gpve/migration-tls"), "server").expect("ok"),
            "tls-creds-x509,id=gpve-migration-tls,endpoint=server,dir=/var/lib/gpve/migration-tls,verify-peer=on"
        );
        for bad in ["relative/dir", "/a,b"] {
            assert!(matches!(
                tls_object_arg(Path::new(bad), "client"),
                Err(MigrateError::TlsDir { .. })
            ));
        }
    }

    #[test]
    fn bandwidth_and_bytes() {
        let mut o = MigrateOptions::default();
        assert_eq!(o.max_bandwidth_bytes_s(), MIGRATE_UNLIMITED_BYTES_PER_S);
        o.bwlimit_kib_s = Some(1024);
        assert_eq!(o.max_bandwidth_bytes_s(), 1024 * 1024);
        assert_eq!(render_bytes(512), "512 B");
        assert_eq!(render_bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
    }
}
