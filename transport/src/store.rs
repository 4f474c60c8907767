//! The server's store for agents: the gRPC `Store` service ([`StoreSvc`], served next to
//! `Node` on the mutual-TLS endpoint) and the client side, [`GrpcStoreWire`], the wire of
//! `gpve_store`'s remote backend ([`connect_store`] gives an agent its `Store`).
//!
//! Only nodes (a client certificate the cluster CA signed) may call it. Reads return the
//! server's latest state; `Commit` validates the client's read set by value and applies its
//! writes in one step ([`gpve_store::Store::commit_checked`]), so agents' transactions are
//! serializable with the server's own.
//!
//! Error mapping: a conflict is an answer (`committed: false` → [`StoreError::Conflict`]);
//! a read that fails on the way is [`RemoteStoreError::Unreachable`] (retryable); a commit
//! whose answer is lost is [`StoreError::CommitUnknownResult`] (retryable: it may have
//! applied); an error the server reports for good is [`RemoteStoreError::Refused`].

use std::sync::Arc;

use async_trait::async_trait;
use gpve_store::remote::{RemoteStoreError, RemoteWire};
use gpve_store::{ReadRecord, ReadSet, Rows, Store, StoreError, WriteSet};
use tonic::{Code, Request, Response, Status};

use crate::grpc::{GrpcTransport, PeerInfo, chain, pb};
use crate::{LinkError, NodeCredentials};

/// Largest store message either side accepts: range reads of whole subspaces (every VM)
/// and commits of up to a few hundred 100 KB values.
pub const MAX_STORE_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Marker in the status message of a commit whose outcome the server does not know.
const UNKNOWN_RESULT: &str = "commit outcome unknown";

// ---------------------------------------------------------------------------------------
// server

/// The `Store` service over the server's store.
pub struct StoreSvc {
    store: Store,
}

impl StoreSvc {
    pub fn new(store: Store) -> StoreSvc {
        StoreSvc { store }
    }
}

fn require_node<T>(request: &Request<T>) -> Result<(), Status> {
    request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.identity.as_ref())
        .map(|_| ())
        .ok_or_else(|| {
            Status::unauthenticated(
                "store requests need a node certificate signed by the cluster CA (join first)",
            )
        })
}

fn store_status(e: StoreError) -> Status {
    if e.is_maybe_committed() {
        return Status::aborted(UNKNOWN_RESULT);
    }
    if e.is_retryable() {
        return Status::unavailable(chain(&e));
    }
    Status::internal(chain(&e))
}

fn pairs(rows: Rows) -> Vec<pb::StorePair> {
    rows.into_iter()
        .map(|(key, value)| pb::StorePair { key, value })
        .collect()
}

fn rows(pairs: Vec<pb::StorePair>) -> Rows {
    pairs.into_iter().map(|p| (p.key, p.value)).collect()
}

fn limit_of(limit: Option<u64>) -> Option<usize> {
    limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// The request's read set and write set.
fn decode_commit(r: pb::StoreCommitRequest) -> Result<(ReadSet, WriteSet), Status> {
    let mut reads = ReadSet::default();
    for read in r.reads {
        let record = match read.kind {
            Some(pb::store_read::Kind::Key(k)) => ReadRecord::Key {
                key: k.key,
                value: k.value,
            },
            Some(pb::store_read::Kind::Range(rg)) => ReadRecord::Range {
                begin: rg.begin,
                end: rg.end,
                rows: rows(rg.rows),
            },
            None => return Err(Status::invalid_argument("a read record has no kind")),
        };
        reads.records.push(record);
    }
    let mut writes = WriteSet::default();
    for c in r.cleared {
        if c.begin > c.end {
            return Err(Status::invalid_argument("a cleared range is inverted"));
        }
        writes.cleared.push((c.begin, c.end));
    }
    for p in r.points {
        writes.points.insert(p.key, p.value);
    }
    Ok((reads, writes))
}

fn encode_commit(reads: ReadSet, writes: WriteSet) -> pb::StoreCommitRequest {
    pb::StoreCommitRequest {
        reads: reads
            .records
            .into_iter()
            .map(|r| pb::StoreRead {
                kind: Some(match r {
                    ReadRecord::Key { key, value } => {
                        pb::store_read::Kind::Key(pb::StoreReadKey { key, value })
                    }
                    ReadRecord::Range { begin, end, rows } => {
                        pb::store_read::Kind::Range(pb::StoreReadRange {
                            begin,
                            end,
                            rows: pairs(rows),
                        })
                    }
                }),
            })
            .collect(),
        cleared: writes
            .cleared
            .into_iter()
            .map(|(begin, end)| pb::StoreClearRange { begin, end })
            .collect(),
        points: writes
            .points
            .into_iter()
            .map(|(key, value)| pb::StorePointWrite { key, value })
            .collect(),
    }
}

#[tonic::async_trait]
impl pb::store_server::Store for StoreSvc {
    async fn get(
        &self,
        request: Request<pb::StoreGetRequest>,
    ) -> Result<Response<pb::StoreGetReply>, Status> {
        require_node(&request)?;
        let key = request.into_inner().key;
        let value = self.store.get_raw(&key).await.map_err(store_status)?;
        Ok(Response::new(pb::StoreGetReply { value }))
    }

    async fn get_range(
        &self,
        request: Request<pb::StoreGetRangeRequest>,
    ) -> Result<Response<pb::StoreGetRangeReply>, Status> {
        require_node(&request)?;
        let r = request.into_inner();
        let found = self
            .store
            .get_range_raw(&r.begin, &r.end, limit_of(r.limit), r.reverse)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::StoreGetRangeReply {
            pairs: pairs(found),
        }))
    }

    async fn commit(
        &self,
        request: Request<pb::StoreCommitRequest>,
    ) -> Result<Response<pb::StoreCommitReply>, Status> {
        require_node(&request)?;
        let (reads, writes) = decode_commit(request.into_inner())?;
        match self.store.commit_checked(reads, writes).await {
            Ok(()) => Ok(Response::new(pb::StoreCommitReply { committed: true })),
            Err(StoreError::Conflict) => {
                Ok(Response::new(pb::StoreCommitReply { committed: false }))
            }
            Err(e) => Err(store_status(e)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// client

/// The remote backend's wire over one gRPC channel (which reconnects by itself).
pub struct GrpcStoreWire {
    client: pb::store_client::StoreClient<tonic::transport::Channel>,
}

fn read_error(status: Status) -> StoreError {
    let msg = if status.message().is_empty() {
        chain(&status)
    } else {
        status.message().to_string()
    };
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            RemoteStoreError::Unreachable(msg).into()
        }
        _ => RemoteStoreError::Refused(msg).into(),
    }
}

fn commit_error(status: Status) -> StoreError {
    match status.code() {
        // The request may have been applied before the answer was lost.
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            StoreError::CommitUnknownResult
        }
        Code::Aborted if status.message() == UNKNOWN_RESULT => StoreError::CommitUnknownResult,
        _ => read_error(status),
    }
}

#[async_trait]
impl RemoteWire for GrpcStoreWire {
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let mut client = self.client.clone();
        let reply = client
            .get(pb::StoreGetRequest { key: key.to_vec() })
            .await
            .map_err(read_error)?;
        Ok(reply.into_inner().value)
    }

    async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<Rows, StoreError> {
        let mut client = self.client.clone();
        let reply = client
            .get_range(pb::StoreGetRangeRequest {
                begin: begin.to_vec(),
                end: end.to_vec(),
                limit: limit.map(|n| n as u64),
                reverse,
            })
            .await
            .map_err(read_error)?;
        Ok(rows(reply.into_inner().pairs))
    }

    async fn commit(&self, reads: ReadSet, writes: WriteSet) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        let reply = client
            .commit(encode_commit(reads, writes))
            .await
            .map_err(commit_error)?;
        if reply.into_inner().committed {
            Ok(())
        } else {
            Err(StoreError::Conflict)
        }
    }
}

/// The server's store as seen from a node: a `Store` on the remote backend over a mutual-TLS
/// channel to `endpoint`. Connects lazily, so it can be made while the server is down; its
/// operations then fail retryably until the server answers.
pub async fn connect_store(
    transport: &GrpcTransport,
    endpoint: &str,
    creds: &NodeCredentials,
) -> Result<Store, LinkError> {
    let tls =
        crate::tls::node_client_config(creds).map_err(|e| LinkError::Credentials(chain(&e)))?;
    let channel = transport.channel_with(endpoint, tls, true).await?;
    let client = pb::store_client::StoreClient::new(channel)
        .max_decoding_message_size(MAX_STORE_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_STORE_MESSAGE_BYTES);
    Ok(Store::remote(Arc::new(GrpcStoreWire { client })))
}
