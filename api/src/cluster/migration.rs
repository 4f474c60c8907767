//! Live migration between processes: how a node reaches the target side
//! ([`gpve_actors::vm::migrate::MigrationPeer`]) of another node.
//!
//! One implementation of the target side exists, [`LocalPeer`]; every node process
//! (server or agent) has one for its own node, held by its `migration` actor
//! ([`NodeMigration`], found by handlers through the directory). The other node's side is
//! reached through the server, keeping one trust rule (agents talk only to the server,
//! the server to agents only with its proxy certificate):
//!
//! ```text
//! source agent ── gRPC Migration (mutual TLS, node cert) ──▶ server ([`ServerRelay`])
//!   [`RelayPeer`]                                              │ checks the caller holds the VM
//!                                    target = server's node ◀─┤ its own LocalPeer
//!                                    target = agent ◀─────────┘ [`AgentPeer`]: HTTPS with the
//!                                                                proxy cert to the agent's
//!                                                                internal route (its LocalPeer)
//! source = server's node: [`AgentPeer`] directly.
//! ```
//!
//! The RAM stream goes directly between the two QEMUs: the target listens on its cluster
//! address (the address of its API listener) and, when the nodes have TLS credentials
//! (every joined node has), accepts only TLS from a client certificate the cluster CA
//! signed; the source checks the target's certificate names `{target}.nodes.gpve-cluster`.
//!
//! What the relay checks, per call (the target's LocalPeer then checks the record again):
//! - prepare: the caller's certificate is the one its node joined with, the VM record is
//!   on the caller, locked `migrate`, and `generation` is the record's next one;
//! - finish: the record already names the target at `generation`, still locked `migrate`;
//! - abort: the record is on the caller, or (a switchover being undone) on the target
//!   and still locked `migrate`. Abort only ever kills a paused, not yet resumed QEMU.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gpve_actors::vm::migrate::{
    IncomingTarget, LocalPeer, LocalTls, MIGRATE_LOCK, MigrationError, MigrationPeer,
};
use gpve_store::Store;
use gpve_supervisor::{ActorStats, ChildSpec, Directory, RestartPolicy};
use gpve_transport::PeerIdentity;
use gpve_transport::async_trait;
use gpve_transport::migration::{IncomingReply, MigrationClient, MigrationRelay, RelayError};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::error::ApiError;
use crate::forward::Forwarder;

/// Id of the `migration` actor under the process root.
pub const MIGRATION_ACTOR_ID: &str = "migration";
/// Directory (under a node's data directory) of its QEMU migration TLS credentials.
pub const MIGRATION_TLS_DIR: &str = "migration-tls";
/// How long a handler waits for the migration actor.
pub const MIGRATION_ACTOR_CALL_TIMEOUT_MS: u64 = 2_000;
/// Path of the agents' internal route for the server's migration calls.
pub const INTERNAL_PATH: &str = "/gpve-internal/migration";

/// Where the server records its own node's name, so agents can offer it as a target
/// (it has no member record: it never joined).
pub fn server_node_key() -> gpve_store::Key {
    gpve_store::Key::pack(&("cluster", "server-node"))
}

/// The server's own node, as it recorded it.
pub async fn server_node(store: &Store) -> Result<Option<String>, gpve_store::StoreError> {
    store.get_json::<String>(&server_node_key()).await
}

/// Failures setting up a node's part in migrations.
#[derive(Debug, Error)]
pub enum MigrationSetupError {
    #[error("could not write the migration TLS credentials in {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not issue the migration certificate of node '{node}'")]
    Pki {
        node: String,
        #[source]
        source: gpve_transport::pki::PkiError,
    },
}

/// Writes the files QEMU's `tls-creds-x509` reads (see
/// [`gpve_hypervisor::migrate::MigrationTls`]) into `dir` (0700, files 0600): the node
/// certificate serves both ends (it has serverAuth and clientAuth).
pub fn write_tls_creds(
    dir: &Path,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), MigrationSetupError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MigrationSetupError::Io { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    for (name, text) in [
        ("ca-cert.pem", ca_pem),
        ("server-cert.pem", cert_pem),
        ("server-key.pem", key_pem),
        ("client-cert.pem", cert_pem),
        ("client-key.pem", key_pem),
    ] {
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(text.as_bytes()).map_err(io(&path))?;
    }
    Ok(())
}

/// The address an incoming QEMU listens on: the first candidate that names one host
/// (an unspecified address such as 0.0.0.0 tells the source nothing).
pub fn listen_host(candidates: &[Option<String>]) -> Result<String, String> {
    for c in candidates.iter().flatten() {
        let host = match c.parse::<SocketAddr>() {
            Ok(a) => a.ip().to_string(),
            Err(_) => match c.rsplit_once(':') {
                Some((h, p)) if p.parse::<u16>().is_ok() => h.to_string(),
                _ => c.clone(),
            },
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
            continue;
        }
        return Ok(host);
    }
    Err("this node reports no specific address (no API listener, or 0.0.0.0): give it one with --listen or --advertise so migrations know where to send the VM".into())
}

/// A node process's part in migrations.
pub struct NodeMigration {
    pub node: String,
    pub store: Store,
    /// This node's target side; the reason when it cannot take VMs.
    pub local: Result<Arc<LocalPeer>, String>,
    /// This node's migration TLS credentials (source side).
    pub tls_creds_dir: Option<PathBuf>,
    /// An agent: the server's `Migration` service.
    pub relay: Option<MigrationClient>,
    /// The server: its client of the agents' API listeners.
    pub forwarder: Option<Arc<Forwarder>>,
}

impl std::fmt::Debug for NodeMigration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMigration")
            .field("node", &self.node)
            .field("tls_creds_dir", &self.tls_creds_dir)
            .finish_non_exhaustive()
    }
}

impl NodeMigration {
    /// The target side of `target` as this process reaches it.
    pub fn peer(&self, target: &str) -> Result<Arc<dyn MigrationPeer>, ApiError> {
        if target == self.node {
            return Err(ApiError::BadRequest(
                MigrationError::SameNode {
                    node: target.into(),
                }
                .to_string(),
            ));
        }
        if let Some(client) = &self.relay {
            return Ok(Arc::new(RelayPeer {
                client: client.clone(),
                target: target.to_string(),
            }));
        }
        if let Some(forwarder) = &self.forwarder {
            return Ok(Arc::new(AgentPeer {
                store: self.store.clone(),
                forwarder: forwarder.clone(),
                target: target.to_string(),
            }));
        }
        Err(ApiError::BadRequest(format!(
            "node '{}' is not part of a cluster: there is no node '{target}' to migrate to",
            self.node
        )))
    }

    /// This node's own target side.
    pub fn local(&self) -> Result<Arc<LocalPeer>, MigrationError> {
        self.local
            .clone()
            .map_err(|message| MigrationError::Target {
                node: self.node.clone(),
                vmid: 0,
                message,
            })
    }
}

// ---------------------------------------------------------------------------------------
// the migration actor

/// Commands of the `migration` actor.
#[derive(Debug)]
pub enum MigrationMsg {
    /// This node's part in migrations.
    Get(RpcReplyPort<Arc<NodeMigration>>),
}
impl ractor::Message for MigrationMsg {}

/// Holds the node's [`NodeMigration`] (and with it the incoming QEMUs its LocalPeer
/// keeps) where handlers and the relay find it. The value outlives restarts of the actor.
#[derive(Debug)]
pub struct MigrationActor {
    pub stats: ActorStats,
}

impl Actor for MigrationActor {
    type Msg = MigrationMsg;
    type State = Arc<NodeMigration>;
    type Arguments = Arc<NodeMigration>;

    async fn pre_start(
        &self,
        _myself: ActorRef<MigrationMsg>,
        args: Arc<NodeMigration>,
    ) -> Result<Arc<NodeMigration>, ActorProcessingErr> {
        // The server (the one with a forwarder) names its node for the agents.
        if args.forwarder.is_some() && server_node(&args.store).await? != Some(args.node.clone()) {
            args.store.put_json(&server_node_key(), &args.node).await?;
        }
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<MigrationMsg>,
        msg: MigrationMsg,
        state: &mut Arc<NodeMigration>,
    ) -> Result<(), ActorProcessingErr> {
        self.stats.record_handled();
        match msg {
            MigrationMsg::Get(reply) => {
                let _ = reply.send(state.clone());
            }
        }
        Ok(())
    }
}

/// The `migration` child of a node process's root.
pub fn child(migration: Arc<NodeMigration>) -> ChildSpec {
    ChildSpec::actor(
        MIGRATION_ACTOR_ID,
        "migration",
        RestartPolicy::Permanent,
        move |ctx| {
            (
                MigrationActor {
                    stats: ctx.stats.clone(),
                },
                migration.clone(),
            )
        },
    )
}

/// The node's [`NodeMigration`]; 400 where the process runs none (a single node).
pub async fn node_migration(directory: &Directory) -> Result<Arc<NodeMigration>, ApiError> {
    let path = format!("{}/{MIGRATION_ACTOR_ID}", crate::tree::ROOT);
    let Some(actor) = directory.lookup_ref::<MigrationMsg>(&path) else {
        return Err(ApiError::BadRequest(
            "this node is not part of a cluster: there is no other node to migrate to".into(),
        ));
    };
    ractor::call_t!(actor, MigrationMsg::Get, MIGRATION_ACTOR_CALL_TIMEOUT_MS)
        .map_err(|e| ApiError::Unavailable(format!("the migration actor did not answer: {e}")))
}

/// The server's `migration` child (its own node's target side, TLS credentials issued
/// from the cluster CA, and a forwarding client for the agents); `None` without gRPC
/// (a single node: no one to migrate to or from).
pub fn server_child(
    cluster: &super::ClusterOptions,
    api: &crate::tree::ApiArgs,
) -> Option<ChildSpec> {
    let grpc = cluster.grpc_listen?;
    let state = &api.state;
    let node = cluster.node_name.clone();
    let api_listen = api
        .listen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .to_string();
    let host = listen_host(&[
        Some(api_listen),
        cluster.advertise.clone(),
        Some(grpc.to_string()),
    ]);
    let files = super::files::ClusterFiles::new(&cluster.data_dir);
    let setup = (|| -> Result<(PathBuf, Arc<Forwarder>), String> {
        let chain = |e: &dyn std::error::Error| gpve_actors::storage::error_chain(e);
        let ca = files
            .ensure_ca(cluster.cluster_name.as_deref().unwrap_or("gpve"))
            .map_err(|e| chain(&e))?;
        let pki = |source| MigrationSetupError::Pki {
            node: node.clone(),
            source,
        };
        let (key_pem, csr_pem) =
            gpve_transport::pki::node_key_and_csr(&node).map_err(|e| chain(&pki(e)))?;
        let cert_pem = ca
            .sign_node_csr(&csr_pem, &node)
            .map_err(|e| chain(&pki(e)))?;
        let dir = cluster.data_dir.join(MIGRATION_TLS_DIR);
        write_tls_creds(&dir, &ca.cert_pem, &cert_pem, &key_pem).map_err(|e| chain(&e))?;
        let forwarder = Forwarder::from_ca(&ca).map_err(|e| chain(&e))?;
        Ok((dir, Arc::new(forwarder)))
    })();
    let (tls_dir, forwarder) = match setup {
        Ok((dir, f)) => (Some(dir), Some(f)),
        Err(e) => {
            tracing::error!(error = %e, "migrations from and to this node are unavailable");
            (None, None)
        }
    };
    let local = match (&host, &tls_dir) {
        (Ok(h), Some(dir)) => Ok(LocalPeer::with_tls(
            crate::pve::nodes::qemu::host(state),
            h.clone(),
            Some(LocalTls {
                creds_dir: dir.clone(),
                hostname: gpve_transport::tls::node_server_name(&node),
            }),
        )),
        (Err(e), _) => Err(e.clone()),
        (_, None) => Err("its migration TLS credentials could not be set up".into()),
    };
    Some(child(Arc::new(NodeMigration {
        node,
        store: state.store.clone(),
        local,
        tls_creds_dir: tls_dir,
        relay: None,
        forwarder,
    })))
}

// ---------------------------------------------------------------------------------------
// the internal protocol between the server and an agent

/// One call of the server on an agent's target side (JSON on [`INTERNAL_PATH`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum InternalCall {
    Prepare {
        vmid: u32,
        config: BTreeMap<String, String>,
        generation: u64,
    },
    Finish {
        vmid: u32,
        generation: u64,
    },
    Abort {
        vmid: u32,
    },
}

/// The agent's answer: `uri` (and `tls_hostname`) for a prepare, `error` on failure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InternalReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Runs `call` on this node's target side.
pub async fn run_internal(local: &LocalPeer, call: InternalCall) -> InternalReply {
    let outcome = match call {
        InternalCall::Prepare {
            vmid,
            config,
            generation,
        } => local
            .prepare_incoming(vmid, config, generation)
            .await
            .map(Some),
        InternalCall::Finish { vmid, generation } => {
            local.finish_incoming(vmid, generation).await.map(|()| None)
        }
        InternalCall::Abort { vmid } => local.abort_incoming(vmid).await.map(|()| None),
    };
    match outcome {
        Ok(Some(t)) => InternalReply {
            uri: Some(t.uri),
            tls_hostname: t.tls_hostname,
            error: None,
        },
        Ok(None) => InternalReply::default(),
        Err(e) => InternalReply {
            error: Some(e.to_string()),
            ..InternalReply::default()
        },
    }
}

/// An agent's target side, called by the server over its proxy channel.
pub struct AgentPeer {
    store: Store,
    forwarder: Arc<Forwarder>,
    target: String,
}

impl AgentPeer {
    async fn call(&self, vmid: u32, call: InternalCall) -> Result<InternalReply, MigrationError> {
        let unreachable = |message: String| MigrationError::Unreachable {
            node: self.target.clone(),
            vmid,
            message,
        };
        let route = crate::cluster::records::node_route(&self.store, &self.target)
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .ok_or_else(|| MigrationError::UnknownNode {
                node: self.target.clone(),
            })?;
        let (client, base) = crate::forward::agent_client(&self.forwarder, &self.target, route)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let resp = client
            .post(format!("{base}{INTERNAL_PATH}"))
            .json(&call)
            .send()
            .await
            .map_err(|e| unreachable(gpve_actors::storage::error_chain(&e)))?;
        let status = resp.status();
        let reply: InternalReply = resp.json().await.map_err(|e| {
            unreachable(format!(
                "its answer ({status}) is not a migration reply: {}",
                gpve_actors::storage::error_chain(&e)
            ))
        })?;
        if let Some(message) = reply.error.clone() {
            return Err(MigrationError::Remote {
                node: self.target.clone(),
                message,
            });
        }
        Ok(reply)
    }
}

#[async_trait]
impl MigrationPeer for AgentPeer {
    fn node(&self) -> &str {
        &self.target
    }

    async fn prepare_incoming(
        &self,
        vmid: u32,
        config: BTreeMap<String, String>,
        generation: u64,
    ) -> Result<IncomingTarget, MigrationError> {
        let reply = self
            .call(
                vmid,
                InternalCall::Prepare {
                    vmid,
                    config,
                    generation,
                },
            )
            .await?;
        let uri = reply.uri.ok_or_else(|| MigrationError::Unreachable {
            node: self.target.clone(),
            vmid,
            message: "it answered without the address it listens on".into(),
        })?;
        Ok(IncomingTarget {
            uri,
            tls_hostname: reply.tls_hostname,
        })
    }

    async fn finish_incoming(&self, vmid: u32, generation: u64) -> Result<(), MigrationError> {
        self.call(vmid, InternalCall::Finish { vmid, generation })
            .await
            .map(|_| ())
    }

    async fn abort_incoming(&self, vmid: u32) -> Result<(), MigrationError> {
        self.call(vmid, InternalCall::Abort { vmid })
            .await
            .map(|_| ())
    }
}

// ---------------------------------------------------------------------------------------
// an agent as the source: through the server's relay

/// Another node's target side as an agent reaches it: through the server.
pub struct RelayPeer {
    client: MigrationClient,
    target: String,
}

impl RelayPeer {
    fn error(&self, vmid: u32, e: RelayError) -> MigrationError {
        match e {
            RelayError::Unreachable(message) => MigrationError::Unreachable {
                node: self.target.clone(),
                vmid,
                message,
            },
            other => MigrationError::Remote {
                node: self.target.clone(),
                message: other.to_string(),
            },
        }
    }
}

#[async_trait]
impl MigrationPeer for RelayPeer {
    fn node(&self) -> &str {
        &self.target
    }

    async fn prepare_incoming(
        &self,
        vmid: u32,
        config: BTreeMap<String, String>,
        generation: u64,
    ) -> Result<IncomingTarget, MigrationError> {
        let reply = self
            .client
            .prepare_incoming(vmid, &self.target, config, generation)
            .await
            .map_err(|e| self.error(vmid, e))?;
        Ok(IncomingTarget {
            uri: reply.uri,
            tls_hostname: reply.tls_hostname,
        })
    }

    async fn finish_incoming(&self, vmid: u32, generation: u64) -> Result<(), MigrationError> {
        self.client
            .finish_incoming(vmid, &self.target, generation)
            .await
            .map_err(|e| self.error(vmid, e))
    }

    async fn abort_incoming(&self, vmid: u32) -> Result<(), MigrationError> {
        self.client
            .abort_incoming(vmid, &self.target)
            .await
            .map_err(|e| self.error(vmid, e))
    }
}

// ---------------------------------------------------------------------------------------
// the server's relay

/// The server's side of the `Migration` service.
pub struct ServerRelay {
    pub store: Store,
    pub directory: Directory,
}

/// What a call needs of the VM record (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayStep {
    Prepare { generation: u64 },
    Finish { generation: u64 },
    Abort,
}

/// Whether `caller` may make `step` on VM `vmid` towards `target`, given its record.
pub fn check_call(
    caller: &str,
    target: &str,
    vmid: u32,
    entry: Option<&gpve_actors::vm::VmEntry>,
    step: RelayStep,
) -> Result<(), RelayError> {
    if caller == target {
        return Err(RelayError::Invalid(format!(
            "node '{caller}' cannot migrate VM {vmid} to itself"
        )));
    }
    let Some(e) = entry else {
        return Err(RelayError::Refused(format!("VM {vmid} does not exist")));
    };
    let locked = e.lock.as_deref() == Some(MIGRATE_LOCK);
    let holder = &e.record.node;
    let refused = |why: String| Err(RelayError::Refused(why));
    match step {
        RelayStep::Prepare { generation } => {
            if holder != caller {
                return refused(format!(
                    "node '{caller}' does not hold VM {vmid} (it is on '{holder}')"
                ));
            }
            if !locked {
                return refused(format!("VM {vmid} is not locked for a migration"));
            }
            if generation != e.generation + 1 {
                return refused(format!(
                    "VM {vmid} is at generation {}, the migration asks for {generation}",
                    e.generation
                ));
            }
        }
        RelayStep::Finish { generation } => {
            if holder != target || e.generation != generation || !locked {
                return refused(format!(
                    "VM {vmid} has not been switched over to '{target}' at generation {generation} (it is on '{holder}' at {})",
                    e.generation
                ));
            }
        }
        RelayStep::Abort => {
            if holder != caller && !(locked && holder == target) {
                return refused(format!(
                    "node '{caller}' does not hold VM {vmid} (it is on '{holder}')"
                ));
            }
        }
    }
    Ok(())
}

fn target_error(e: MigrationError) -> RelayError {
    match e {
        MigrationError::Unreachable { message, .. } => RelayError::Unreachable(message),
        other => RelayError::Target(other.to_string()),
    }
}

impl ServerRelay {
    /// Checks the caller (its certificate and the VM record) and finds the target.
    async fn admit(
        &self,
        caller: &PeerIdentity,
        vmid: u32,
        target: &str,
        step: RelayStep,
    ) -> Result<Arc<dyn MigrationPeer>, RelayError> {
        let unavailable = |e: &dyn std::fmt::Display| RelayError::Unreachable(e.to_string());
        let member = self
            .store
            .get_json::<super::records::NodeRecord>(&super::records::node_key(&caller.node))
            .await
            .map_err(|e| unavailable(&e))?;
        match member {
            Some(r) if r.cert_fingerprint == caller.cert_fingerprint => {}
            _ => {
                return Err(RelayError::Refused(format!(
                    "node '{}' is not a member with this certificate",
                    caller.node
                )));
            }
        }
        let entry = gpve_actors::vm::load_entry(&self.store, vmid)
            .await
            .map_err(|e| unavailable(&e))?;
        check_call(&caller.node, target, vmid, entry.as_ref(), step)?;
        let node = node_migration(&self.directory)
            .await
            .map_err(|e| unavailable(&e))?;
        if target == node.node {
            let local = node.local().map_err(target_error)?;
            return Ok(local);
        }
        node.peer(target)
            .map_err(|e| RelayError::Invalid(e.to_string()))
    }
}

#[async_trait]
impl MigrationRelay for ServerRelay {
    async fn prepare_incoming(
        &self,
        caller: PeerIdentity,
        vmid: u32,
        target: String,
        config: BTreeMap<String, String>,
        generation: u64,
    ) -> Result<IncomingReply, RelayError> {
        let peer = self
            .admit(&caller, vmid, &target, RelayStep::Prepare { generation })
            .await?;
        let t = peer
            .prepare_incoming(vmid, config, generation)
            .await
            .map_err(target_error)?;
        tracing::info!(vmid, from = %caller.node, to = %target, uri = %t.uri, "relayed an incoming migration");
        Ok(IncomingReply {
            uri: t.uri,
            tls_hostname: t.tls_hostname,
        })
    }

    async fn finish_incoming(
        &self,
        caller: PeerIdentity,
        vmid: u32,
        target: String,
        generation: u64,
    ) -> Result<(), RelayError> {
        let peer = self
            .admit(&caller, vmid, &target, RelayStep::Finish { generation })
            .await?;
        peer.finish_incoming(vmid, generation)
            .await
            .map_err(target_error)
    }

    async fn abort_incoming(
        &self,
        caller: PeerIdentity,
        vmid: u32,
        target: String,
    ) -> Result<(), RelayError> {
        let peer = self.admit(&caller, vmid, &target, RelayStep::Abort).await?;
        peer.abort_incoming(vmid).await.map_err(target_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_hosts_skip_unspecified_addresses() {
        assert_eq!(
            listen_host(&[Some("0.0.0.0:8006".into()), Some("10.1.2.3:8006".into())]),
            Ok("10.1.2.3".into())
        );
        assert_eq!(
            listen_host(&[None, Some("node1.example:8007".into())]),
            Ok("node1.example".into())
        );
        assert_eq!(
            listen_host(&[Some("[fd00::5]:8006".into())]),
            Ok("fd00::5".into())
        );
        assert!(listen_host(&[Some("[::]:8006".into()), None]).is_err());
    }

    #[test]
    fn internal_calls_round_trip_as_json() {
        let call = InternalCall::Prepare {
            vmid: 100,
            config: BTreeMap::from([("memory".to_string(), "128".to_string())]),
            generation: 4,
        };
        let text = serde_json::to_string(&call).expect("json");
        assert!(text.contains(r#""op":"prepare""#), "{text}");
        assert_eq!(
            serde_json::from_str::<InternalCall>(&text).expect("parse"),
            call
        );
        assert!(serde_json::from_str::<InternalCall>(r#"{"op":"reboot","vmid":1}"#).is_err());
    }

    fn entry(node: &str, generation: u64, lock: Option<&str>) -> gpve_actors::vm::VmEntry {
        serde_json::from_value(serde_json::json!({
            "vmid": 100, "name": "vm100", "node": node, "status": "running",
            "maxcpu": 1, "maxmem_bytes": 0, "maxdisk_bytes": 0,
            "lock": lock, "generation": generation,
        }))
        .expect("entry")
    }

    #[test]
    fn the_relay_admits_only_the_holder_of_the_vm() {
        let lock = Some(MIGRATE_LOCK);
        let on_n1 = entry("n1", 3, lock);
        let prepare = RelayStep::Prepare { generation: 4 };
        assert_eq!(check_call("n1", "n2", 100, Some(&on_n1), prepare), Ok(()));
        let refusals = [
            // Another node cannot prepare a migration of a VM it does not hold.
            ("n3", "n2", Some(on_n1.clone()), prepare, "does not hold"),
            (
                "n1",
                "n2",
                Some(entry("n1", 3, None)),
                prepare,
                "not locked",
            ),
            (
                "n1",
                "n2",
                Some(entry("n1", 3, Some("backup"))),
                prepare,
                "not locked",
            ),
            (
                "n1",
                "n2",
                Some(on_n1.clone()),
                RelayStep::Prepare { generation: 9 },
                "generation",
            ),
            ("n1", "n2", None, prepare, "does not exist"),
            // Finish only after the switchover to that target.
            (
                "n1",
                "n2",
                Some(on_n1.clone()),
                RelayStep::Finish { generation: 4 },
                "switched",
            ),
            (
                "n3",
                "n2",
                Some(on_n1.clone()),
                RelayStep::Abort,
                "does not hold",
            ),
        ];
        for (caller, target, e, step, why) in refusals {
            let err = check_call(caller, target, 100, e.as_ref(), step).expect_err(why);
            assert!(matches!(err, RelayError::Refused(_)), "{err:?}");
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
        assert!(matches!(
            check_call("n1", "n1", 100, Some(&on_n1), prepare),
            Err(RelayError::Invalid(_))
        ));
        let switched = entry("n2", 4, lock);
        let finish = RelayStep::Finish { generation: 4 };
        assert_eq!(check_call("n1", "n2", 100, Some(&switched), finish), Ok(()));
        // Undoing a switchover: the record is on the target, still locked.
        assert_eq!(
            check_call("n1", "n2", 100, Some(&switched), RelayStep::Abort),
            Ok(())
        );
        assert_eq!(
            check_call("n1", "n2", 100, Some(&on_n1), RelayStep::Abort),
            Ok(())
        );
        assert!(
            check_call(
                "n1",
                "n2",
                100,
                Some(&entry("n2", 4, None)),
                RelayStep::Abort
            )
            .is_err()
        );
    }

    #[test]
    fn tls_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let creds = dir.path().join("tls");
        write_tls_creds(&creds, "CA", "CERT", "KEY").expect("write");
        for name in ["ca-cert.pem", "server-key.pem", "client-key.pem"] {
            let meta = std::fs::metadata(creds.join(name)).expect(name);
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
        }
        assert_eq!(
            std::fs::read_to_string(creds.join("client-cert.pem")).expect("read"),
            "CERT"
        );
    }
}
