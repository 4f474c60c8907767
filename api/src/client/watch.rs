//! The gRPC watch stream of cluster events ([`Client::watch`]): VM, task and node changes
//! as they commit, over HTTP/2 on the same HTTPS port and with the same credentials as
//! REST.
//!
//! ```no_run
//! # async fn demo(client: gpve_api::client::Client) -> Result<(), gpve_api::client::ClientError> {
//! use futures::StreamExt;
//! use gpve_api::client::watch::{WatchKind, WatchOptions};
//! let mut events = client.watch(&WatchOptions::kinds(&[WatchKind::Vm]).initial()).await?;
//! while let Some(event) = events.next().await {
//!     let event = event?;
//!     println!("{:?} {} {}", event.action, event.id, event.status);
//! }
//! # Ok(()) }
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use gpve_transport::watch_pb::{self, ClusterEvent, WatchRequest, watch_client::WatchClient};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::tls::{PinnedVerifier, pinned_config};
use super::{Auth, Client, ClientError, DEFAULT_PORT, TlsError, Trust};

/// Largest event the client accepts (an event is a summary of one object: a few KiB).
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchKind {
    Vm,
    Task,
    Node,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchAction {
    Added,
    Modified,
    Deleted,
    /// The initial list is complete; every later event is a change.
    Synced,
}

/// One event of the stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchEvent {
    /// `None` only on [`WatchAction::Synced`].
    pub kind: Option<WatchKind>,
    pub action: WatchAction,
    /// vmid, UPID or node name.
    pub id: String,
    pub node: String,
    /// VM: running|stopped; task: running|OK|the error; node: online|offline|unknown.
    pub status: String,
    /// Position in the server's change feed (0 for the initial list).
    pub seq: u64,
    /// The object's summary (the `/cluster/resources` or task-list fields).
    pub data: serde_json::Value,
}

/// What to watch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchOptions {
    /// Empty: every kind.
    pub kinds: Vec<WatchKind>,
    /// Only objects on this node.
    pub node: Option<String>,
    /// Start with an `added` event for every current object, then `synced`.
    pub initial: bool,
}

impl WatchOptions {
    pub fn kinds(kinds: &[WatchKind]) -> WatchOptions {
        WatchOptions {
            kinds: kinds.to_vec(),
            ..WatchOptions::default()
        }
    }

    /// Ask for the initial list.
    pub fn initial(mut self) -> WatchOptions {
        self.initial = true;
        self
    }

    pub fn node(mut self, node: impl Into<String>) -> WatchOptions {
        self.node = Some(node.into());
        self
    }
}

/// The stream [`Client::watch`] returns; it ends only with an error (or the server's
/// shutdown).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, ClientError>> + Send>>;

fn decode(e: ClusterEvent) -> Result<WatchEvent, ClientError> {
    let bad = |reason: String| ClientError::Decode {
        path: crate::watch::WATCH_PATH.into(),
        reason,
    };
    let action = match watch_pb::Action::try_from(e.action) {
        Ok(watch_pb::Action::Added) => WatchAction::Added,
        Ok(watch_pb::Action::Modified) => WatchAction::Modified,
        Ok(watch_pb::Action::Deleted) => WatchAction::Deleted,
        Ok(watch_pb::Action::Synced) => WatchAction::Synced,
        _ => return Err(bad(format!("unknown action {}", e.action))),
    };
    let kind = match watch_pb::Kind::try_from(e.kind) {
        Ok(watch_pb::Kind::Vm) => Some(WatchKind::Vm),
        Ok(watch_pb::Kind::Task) => Some(WatchKind::Task),
        Ok(watch_pb::Kind::Node) => Some(WatchKind::Node),
        Ok(watch_pb::Kind::Unspecified) if action == WatchAction::Synced => None,
        _ => return Err(bad(format!("unknown kind {}", e.kind))),
    };
    let data = if e.json.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&e.json).map_err(|err| bad(format!("event JSON: {err}")))?
    };
    Ok(WatchEvent {
        kind,
        action,
        id: e.id,
        node: e.node,
        status: e.status,
        seq: e.seq,
        data,
    })
}

/// gRPC status → the client's error (401/403/400-like codes keep their meaning; a lost
/// connection, which tonic reports as `Unknown`, is unreachability, not a server answer).
fn status_error(url: &str, s: &tonic::Status) -> ClientError {
    let status = match s.code() {
        tonic::Code::Unauthenticated => 401,
        tonic::Code::PermissionDenied => 403,
        tonic::Code::InvalidArgument => 400,
        tonic::Code::Unimplemented => 501,
        tonic::Code::ResourceExhausted | tonic::Code::Unavailable => 503,
        tonic::Code::Internal => 500,
        _ => {
            return ClientError::Unreachable {
                url: url.to_string(),
                reason: s.message().to_string(),
            };
        }
    };
    ClientError::Api {
        status,
        message: s.message().to_string(),
        errors: Default::default(),
    }
}

impl Client {
    /// The TLS configuration for the watch connection (HTTP/2), trusting what the REST
    /// client trusts. The watch needs a pinned fingerprint or a CA file.
    fn watch_tls(&self) -> Result<rustls::ClientConfig, ClientError> {
        let mut config = match &self.inner.trust {
            Trust::Fingerprint(fp) => pinned_config(PinnedVerifier::new(Some(*fp)))?,
            Trust::CaFile(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                    .map_err(|_| TlsError::NoCertificate { path: path.clone() })?;
                for cert in certs {
                    let cert = cert.map_err(|_| TlsError::NoCertificate { path: path.clone() })?;
                    roots.add(cert).map_err(|e| TlsError::Config {
                        reason: e.to_string(),
                    })?;
                }
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Config {
                    reason: e.to_string(),
                })?
                .with_root_certificates(roots)
                .with_no_client_auth()
            }
            Trust::SystemRoots | Trust::DangerAcceptAnyCertificate => {
                return Err(ClientError::InvalidArgument {
                    reason: "the watch stream needs a pinned fingerprint or a CA file".into(),
                });
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    /// Watches cluster events; see [`WatchOptions`]. Fails at once on bad credentials
    /// (401) or an unreachable server.
    pub async fn watch(&self, opts: &WatchOptions) -> Result<WatchStream, ClientError> {
        let tls = Arc::new(self.watch_tls()?);
        let url = self.inner.server.clone();
        let unreachable = |reason: String| ClientError::Unreachable {
            url: url.to_string(),
            reason,
        };
        let host = url
            .host_str()
            .ok_or_else(|| unreachable("the server URL has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port().unwrap_or(DEFAULT_PORT);
        let name = ServerName::try_from(host.clone())
            .map_err(|e| unreachable(format!("`{host}` is not a TLS server name: {e}")))?;
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}"))
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(Duration::from_millis(self.inner.connect_timeout_ms))
            .tcp_nodelay(true);
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            let (tls, host, name) = (tls.clone(), host.clone(), name.clone());
            async move {
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                let stream = TlsConnector::from(tls).connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        let channel = endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|e| unreachable(super::error_chain(&e)))?;
        let mut request = tonic::Request::new(WatchRequest {
            kinds: opts
                .kinds
                .iter()
                .map(|k| match k {
                    WatchKind::Vm => watch_pb::Kind::Vm as i32,
                    WatchKind::Task => watch_pb::Kind::Task as i32,
                    WatchKind::Node => watch_pb::Kind::Node as i32,
                })
                .collect(),
            node: opts.node.clone().unwrap_or_default(),
            initial: opts.initial,
        });
        let (key, value) = match self.current_auth().await? {
            Some(Auth::Ticket(t)) => ("cookie", format!("PVEAuthCookie={}", t.ticket)),
            Some(Auth::Token(t)) => (
                "authorization",
                format!("PVEAPIToken={}={}", t.full_tokenid, t.secret),
            ),
            None => {
                return Err(ClientError::InvalidArgument {
                    reason: "watching needs credentials: log in or use an API token".into(),
                });
            }
        };
        let value = value.parse().map_err(|_| ClientError::InvalidArgument {
            reason: "the credentials contain characters a header cannot carry".into(),
        })?;
        request.metadata_mut().insert(key, value);
        let stream = WatchClient::new(channel)
            .max_decoding_message_size(MAX_EVENT_BYTES)
            .watch(request)
            .await
            .map_err(|s| status_error(url.as_str(), &s))?
            .into_inner();
        Ok(Box::pin(stream.map(move |item| match item {
            Ok(e) => decode(e),
            Err(s) => Err(status_error(url.as_str(), &s)),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_decode_and_bad_ones_are_errors() {
        let e = decode(ClusterEvent {
            kind: watch_pb::Kind::Vm as i32,
            action: watch_pb::Action::Modified as i32,
            id: "100".into(),
            node: "n1".into(),
            status: "running".into(),
            seq: 7,
            json: r#"{"vmid":100}"#.into(),
        })
        .expect("decodes");
        assert_eq!(e.kind, Some(WatchKind::Vm));
        assert_eq!(e.action, WatchAction::Modified);
        assert_eq!(e.data["vmid"], 100);
        let synced = decode(ClusterEvent {
            action: watch_pb::Action::Synced as i32,
            ..ClusterEvent::default()
        })
        .expect("synced decodes");
        assert_eq!((synced.kind, synced.data), (None, serde_json::Value::Null));
        for bad in [
            ClusterEvent {
                action: 99,
                ..ClusterEvent::default()
            },
            ClusterEvent {
                kind: 1,
                action: 1,
                json: "{".into(),
                ..ClusterEvent::default()
            },
            ClusterEvent {
                kind: 0,
                action: 1,
                ..ClusterEvent::default()
            },
        ] {
            assert!(matches!(decode(bad), Err(ClientError::Decode { .. })));
        }
    }
}
