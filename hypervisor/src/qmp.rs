//! A small QMP client over a unix socket.
//!
//! Commands are the typed ones from `qapi-qmp` (QEMU 9.1 schema); the transport is
//! our own so that an event or reply the 9.1 schema does not know (this host runs
//! QEMU 7.2) is passed through as raw JSON instead of ending the stream, which is
//! what `qapi`'s strictly typed decoder would do.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;

/// Raw events buffered between the socket reader and the consumer.
pub const QMP_EVENT_QUEUE_LEN: usize = 1024;
/// A reply or event line longer than this is treated as a broken peer.
const QMP_LINE_MAX_BYTES: usize = 16 * 1024 * 1024;
const QMP_CONNECT_RETRY_MS: u64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {path} did not accept a connection within {timeout_ms} ms")]
    ConnectTimeout {
        path: String,
        timeout_ms: u64,
        #[source]
        last: Option<std::io::Error>,
    },
    #[error("QMP socket I/O failed")]
    Io(#[from] std::io::Error),
    #[error("QMP greeting was not received or was malformed: {0}")]
    Greeting(String),
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: &'static str,
        class: String,
        desc: String,
    },
    #[error("QMP command {command} got no reply within {timeout_ms} ms")]
    Timeout {
        command: &'static str,
        timeout_ms: u64,
    },
    #[error("QMP connection closed before command {command} was answered")]
    Disconnected { command: &'static str },
    #[error("QMP reply to {command} did not match the schema")]
    Decode {
        command: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// An event as QEMU sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    pub name: String,
    pub data: Value,
}

type Pending =
    Arc<std::sync::Mutex<BTreeMap<u64, oneshot::Sender<Result<Value, (String, String)>>>>>;

/// One QMP session. Dropping it closes the socket (QEMU then accepts the next client).
pub struct QmpClient {
    writer: Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    command_timeout_ms: u64,
    reader: JoinHandle<()>,
}

impl Drop for QmpClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl QmpClient {
    /// Connects (retrying while the socket is not there yet), reads the greeting and
    /// negotiates capabilities. Events arrive on the returned receiver, which closes
    /// when QEMU closes the socket; it must be drained, or the reader stalls.
    pub async fn connect(
        path: &Path,
        connect_timeout_ms: u64,
        command_timeout_ms: u64,
    ) -> Result<(QmpClient, mpsc::Receiver<QmpEvent>), QmpError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(connect_timeout_ms);
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(QmpError::ConnectTimeout {
                            path: path.display().to_string(),
                            timeout_ms: connect_timeout_ms,
                            last: Some(e),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(QMP_CONNECT_RETRY_MS)).await;
                }
            }
        };
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read);
        let mut greeting = String::new();
        let n = tokio::time::timeout(
            Duration::from_millis(connect_timeout_ms),
            lines.read_line(&mut greeting),
        )
        .await
        .map_err(|_| QmpError::Greeting(format!("none within {connect_timeout_ms} ms")))??;
        if n == 0 {
            return Err(QmpError::Greeting("socket closed".into()));
        }
        let parsed: Value = serde_json::from_str(&greeting)
            .map_err(|e| QmpError::Greeting(format!("{e}: {}", greeting.trim())))?;
        if parsed.get("QMP").is_none() {
            return Err(QmpError::Greeting(greeting.trim().to_string()));
        }

        let pending: Pending = Arc::default();
        let (events_tx, events_rx) = mpsc::channel(QMP_EVENT_QUEUE_LEN);
        let reader = tokio::spawn(read_loop(lines, pending.clone(), events_tx));
        let client = QmpClient {
            writer: Mutex::new(write),
            pending,
            next_id: AtomicU64::new(1),
            command_timeout_ms,
            reader,
        };
        client
            .execute(qapi::qmp::qmp_capabilities { enable: None })
            .await?;
        Ok((client, events_rx))
    }

    /// Runs one typed command and decodes its reply.
    pub async fn execute<C: qapi::Command>(&self, command: C) -> Result<C::Ok, QmpError> {
        let name = C::NAME;
        let raw = self
            .execute_raw(
                name,
                serde_json::to_value(&command).map_err(|source| QmpError::Decode {
                    command: name,
                    source,
                })?,
            )
            .await?;
        // Commands returning nothing reply `{}`; their Ok type is `Empty`.
        serde_json::from_value(raw).map_err(|source| QmpError::Decode {
            command: name,
            source,
        })
    }

    /// Runs a command with JSON arguments and returns its raw reply: for commands whose
    /// arguments or reply differ between the 9.1 schema and the QEMU running here
    /// (the migration commands: 7.2 lacks fields 9.1 requires).
    pub async fn execute_raw(
        &self,
        name: &'static str,
        arguments: Value,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let mut msg = serde_json::json!({ "execute": name, "id": id });
        if arguments.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = arguments;
        }
        let mut line = msg.to_string();
        line.push('\n');
        let write = async {
            let mut w = self.writer.lock().await;
            w.write_all(line.as_bytes()).await
        };
        let outcome = tokio::time::timeout(Duration::from_millis(self.command_timeout_ms), async {
            write.await?;
            Ok::<_, std::io::Error>(rx.await)
        })
        .await;
        let result = match outcome {
            Err(_) => Err(QmpError::Timeout {
                command: name,
                timeout_ms: self.command_timeout_ms,
            }),
            Ok(Err(io)) => {
                if io.kind() == std::io::ErrorKind::BrokenPipe {
                    Err(QmpError::Disconnected { command: name })
                } else {
                    Err(QmpError::Io(io))
                }
            }
            Ok(Ok(Err(_closed))) => Err(QmpError::Disconnected { command: name }),
            Ok(Ok(Ok(Err((class, desc))))) => Err(QmpError::Command {
                command: name,
                class,
                desc,
            }),
            Ok(Ok(Ok(Ok(v)))) => Ok(v),
        };
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        result
    }
}

async fn read_loop(
    mut lines: BufReader<tokio::net::unix::OwnedReadHalf>,
    pending: Pending,
    events: mpsc::Sender<QmpEvent>,
) {
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if line.len() > QMP_LINE_MAX_BYTES {
            tracing::warn!(bytes = line.len(), "QMP line too long; closing");
            break;
        }
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            tracing::warn!(line = line.trim(), "ignoring unparsable QMP line");
            continue;
        };
        if let Some(name) = msg.get("event").and_then(Value::as_str) {
            let ev = QmpEvent {
                name: name.to_string(),
                data: msg.get("data").cloned().unwrap_or(Value::Null),
            };
            // A closed receiver means nobody listens any more; keep routing replies.
            let _ = events.send(ev).await;
            continue;
        }
        let Some(id) = msg.get("id").and_then(Value::as_u64) else {
            tracing::warn!(line = line.trim(), "ignoring QMP reply without id");
            continue;
        };
        let reply = if let Some(ret) = msg.get("return") {
            Ok(ret.clone())
        } else {
            let err = msg.get("error");
            let class = err
                .and_then(|e| e.get("class"))
                .and_then(Value::as_str)
                .unwrap_or("GenericError")
                .to_string();
            let desc = err
                .and_then(|e| e.get("desc"))
                .and_then(Value::as_str)
                .unwrap_or("no description")
                .to_string();
            Err((class, desc))
        };
        let waiter = pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        if let Some(tx) = waiter {
            let _ = tx.send(reply);
        }
    }
    // Dropping the senders wakes every waiting command with Disconnected.
    pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    /// A scripted QMP peer: answers each command line by its name.
    async fn fake_qemu(listener: UnixListener) {
        let Ok((sock, _)) = listener.accept().await else {
            return;
        };
        let (r, mut w) = sock.into_split();
        let mut lines = BufReader::new(r).lines();
        let _ = w
            .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": [\"oob\"]}}\n")
            .await;
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(cmd) = serde_json::from_str::<Value>(&line) else {
                return;
            };
            let id = cmd["id"].clone();
            let reply = match cmd["execute"].as_str() {
                Some("qmp_capabilities") => serde_json::json!({"return": {}, "id": id}),
                Some("stop") => {
                    // An event this client's schema has never heard of, and garbage:
                    // both must not end the session.
                    let _ = w
                        .write_all(b"{\"event\": \"FROM_THE_FUTURE\", \"data\": {\"x\": [1]}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\nnot json\n")
                        .await;
                    serde_json::json!({"return": {}, "id": id})
                }
                Some("query-status") => serde_json::json!({
                    "error": {"class": "GenericError", "desc": "nope"}, "id": id
                }),
                // "cont" is never answered.
                _ => continue,
            };
            let _ = w.write_all(format!("{reply}\n").as_bytes()).await;
        }
    }

    #[tokio::test]
    async fn unknown_events_errors_and_timeouts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = tokio::spawn(fake_qemu(listener));

        let (client, mut events) = QmpClient::connect(&path, 2_000, 300)
            .await
            .expect("connect");
        client.execute(qapi::qmp::stop {}).await.expect("stop");
        let ev = events.recv().await.expect("event");
        assert_eq!(ev.name, "FROM_THE_FUTURE");
        assert_eq!(ev.data, serde_json::json!({"x": [1]}));
        match client.execute(qapi::qmp::query_status {}).await {
            Err(QmpError::Command { class, desc, .. }) => {
                assert_eq!((class.as_str(), desc.as_str()), ("GenericError", "nope"));
            }
            other => panic!("expected a command error, got {other:?}"),
        }
        assert!(matches!(
            client.execute(qapi::qmp::cont {}).await,
            Err(QmpError::Timeout {
                command: "cont",
                ..
            })
        ));
        server.abort();
        let _ = server.await;
        assert!(matches!(
            client.execute(qapi::qmp::stop {}).await,
            Err(QmpError::Disconnected { .. }) | Err(QmpError::Io(_))
        ));
    }

    #[tokio::test]
    async fn connect_times_out_on_a_missing_socket() {
        let err = QmpClient::connect(Path::new("/nonexistent/qmp.sock"), 50, 50).await;
        assert!(matches!(
            err,
            Err(QmpError::ConnectTimeout { timeout_ms: 50, .. })
        ));
    }
}
