//! The store's backend contract suite (store/tests/contract_suite) run against the remote
//! backend: a real gRPC `Store` service on loopback over mutual TLS, in front of a redb store
//! in a temp dir. Then what only the remote backend promises: read-only transactions are
//! validated, an unreachable server is a retryable error (never a silent loss), and only
//! nodes may call the service. `bench_remote_transactions` (ignored) measures round trips.

#[macro_use]
#[path = "../../store/tests/contract_suite/mod.rs"]
mod contract_suite;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use gpve_store::remote::RemoteStoreError;
use gpve_store::{Key, RetryPolicy, Store, StoreError};
use gpve_transport::grpc::GrpcTransport;
use gpve_transport::pki::{ClusterCa, node_key_and_csr};
use gpve_transport::store::connect_store;
use gpve_transport::{
    ClusterService, Heartbeat, HeartbeatAck, JoinGrant, JoinRequest, NodeCredentials, PeerIdentity,
    ServiceError,
};

/// Serves only the store.
struct StoreOnly(Store);

#[async_trait]
impl ClusterService for StoreOnly {
    async fn join(&self, _req: JoinRequest) -> Result<JoinGrant, ServiceError> {
        Err(ServiceError::Refused("no joins here".into()))
    }
    async fn heartbeat(
        &self,
        _peer: PeerIdentity,
        _hb: Heartbeat,
    ) -> Result<HeartbeatAck, ServiceError> {
        Err(ServiceError::Refused("no heartbeats here".into()))
    }
    fn store(&self) -> Option<Store> {
        Some(self.0.clone())
    }
}

/// A remote store and the server behind it.
struct Harness {
    store: Store,
    /// The server's own handle on the same data.
    server_store: Store,
    ca: ClusterCa,
    endpoint: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn creds(&self, node: &str) -> NodeCredentials {
        let (key_pem, csr) = node_key_and_csr(node).expect("csr");
        NodeCredentials {
            ca_pem: self.ca.cert_pem.clone(),
            cert_pem: self.ca.sign_node_csr(&csr, node).expect("sign"),
            key_pem,
        }
    }
}

async fn remote_store() -> Option<Harness> {
    let dir = tempfile::tempdir().expect("temp dir");
    let server_store = Store::open_redb(&dir.path().join("store.redb")).expect("open redb");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = listener.local_addr().expect("addr").to_string();
    let ca = ClusterCa::generate("store-contract").expect("ca");
    let (chain, key) = ca.issue_server(&["127.0.0.1".into()]).expect("server cert");
    let tls = gpve_transport::tls::server_config(&chain, &key, &ca.cert_pem).expect("tls");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(gpve_transport::grpc::serve(
        listener,
        tls,
        Arc::new(StoreOnly(server_store.clone())),
        5_000,
        async {
            let _ = stopped.await;
        },
    ));
    let mut h = Harness {
        store: server_store.clone(),
        server_store,
        ca,
        endpoint,
        stop: Some(stop),
        _dir: dir,
    };
    h.store = connect_store(&GrpcTransport::default(), &h.endpoint, &h.creds("n1"))
        .await
        .expect("connect");
    assert_eq!(h.store.backend_name(), "remote");
    Some(h)
}

// Every case but `snapshot_reads_and_blind_writes`: remote reads see the latest state, not
// one snapshot (validated at commit instead; see `read_only_transactions_are_validated`).
contract_cases!(remote_store().await;
    get_set_clear,
    ordered_range_limit_reverse,
    prefix_scans_of_subspaces,
    read_your_writes,
    clear_range,
    counter_under_50_concurrent_tasks,
    create_json_has_one_winner,
    update_json_changes_only_what_exists,
    conflict_is_retried,
    abort_and_limits,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_only_transactions_are_validated() {
    let h = remote_store().await.expect("harness");
    let (a, b) = (Key::pack(&("ro", "a")), Key::pack(&("ro", "b")));
    h.store.set(&a, b"1").await.expect("set");
    h.store.set(&b, b"1").await.expect("set");
    let calls = Arc::new(AtomicU32::new(0));
    let (ra, rb) = h
        .store
        .transact(|tx| {
            let (server, a, b, calls) = (
                h.server_store.clone(),
                a.clone(),
                b.clone(),
                Arc::clone(&calls),
            );
            Box::pin(async move {
                let ra = tx.get(&a).await?;
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    // Another writer moves both keys between our two reads.
                    server
                        .transact(|t| {
                            t.set(&Key::pack(&("ro", "a")), b"2");
                            t.set(&Key::pack(&("ro", "b")), b"2");
                            Box::pin(async { Ok(()) })
                        })
                        .await?;
                }
                let rb = tx.get(&b).await?;
                Ok((ra, rb))
            })
        })
        .await
        .expect("read-only");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the torn read (a=1, b=2) was refused at commit and the body ran again"
    );
    assert_eq!((ra, rb), (Some(b"2".to_vec()), Some(b"2".to_vec())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_server_is_a_retryable_error_not_a_silent_loss() {
    let mut h = remote_store().await.expect("harness");
    let k = Key::pack(&("gone", "k"));
    h.store.set(&k, b"before").await.expect("set");
    if let Some(stop) = h.stop.take() {
        let _ = stop.send(());
    }
    // Wait until the listener is gone.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let store = h.store.clone().with_retry_policy(RetryPolicy {
        max_attempts: 3,
        ..RetryPolicy::default()
    });
    let err = store.set(&k, b"after").await.expect_err("server gone");
    let StoreError::RetriesExhausted { attempts, last } = &err else {
        panic!("expected retries, got {err:?}");
    };
    assert_eq!(*attempts, 3, "{err:?}");
    assert!(
        matches!(**last, StoreError::CommitUnknownResult),
        "a lost commit is reported as unknown: {err:?}"
    );
    let err = store.get(&k).await.expect_err("server gone");
    let StoreError::RetriesExhausted { last, .. } = &err else {
        panic!("expected retries, got {err:?}");
    };
    assert!(
        matches!(**last, StoreError::Remote(RemoteStoreError::Unreachable(_))),
        "{err:?}"
    );
    assert_eq!(
        h.server_store.get(&k).await.expect("server read"),
        Some(b"before".to_vec()),
        "nothing was applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_nodes_reach_the_store() {
    let h = remote_store().await.expect("harness");
    // A client certificate from another CA fails the handshake.
    let other = ClusterCa::generate("other").expect("ca");
    let (key_pem, csr) = node_key_and_csr("n9").expect("csr");
    let creds = NodeCredentials {
        ca_pem: h.ca.cert_pem.clone(),
        cert_pem: other.sign_node_csr(&csr, "n9").expect("sign"),
        key_pem,
    };
    let store = connect_store(&GrpcTransport::default(), &h.endpoint, &creds)
        .await
        .expect("lazy connect")
        .with_retry_policy(RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        });
    let err = store
        .get(&Key::pack(&("x",)))
        .await
        .expect_err("foreign certificate");
    assert!(!matches!(err, StoreError::Conflict), "{err:?}");
}

/// Remote transaction round trips on loopback (read-modify-write of one key: one Get and
/// one Commit; a read-only get of one key: one Get, no Commit), p50/p99 in µs. Run with
/// `cargo test -p gpve-transport --release --test store_contract bench_remote_transactions
/// -- --ignored --nocapture` (`GPVE_BENCH_ITERS`, default 300).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_remote_transactions() {
    let h = remote_store().await.expect("harness");
    let iters: u64 = std::env::var("GPVE_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let k = Key::pack(&("bench", "counter"));
    let mut rmw = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    let mut read = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
    for _ in 0..iters {
        let t = Instant::now();
        h.store
            .transact(|tx| {
                let k = k.clone();
                Box::pin(async move {
                    let n: u64 = tx.get_json(&k).await?.unwrap_or(0);
                    tx.put_json(&k, &(n + 1))?;
                    Ok(())
                })
            })
            .await
            .expect("rmw");
        rmw.record(t.elapsed().as_micros() as u64).expect("record");
        let t = Instant::now();
        h.store.get(&k).await.expect("read");
        read.record(t.elapsed().as_micros() as u64).expect("record");
    }
    assert_eq!(
        h.server_store.get_json::<u64>(&k).await.expect("get"),
        Some(iters)
    );
    println!(
        "remote store, {iters} transactions: read-modify-write p50 {} µs p99 {} µs; read-only get p50 {} µs p99 {} µs",
        rmw.value_at_quantile(0.5),
        rmw.value_at_quantile(0.99),
        read.value_at_quantile(0.5),
        read.value_at_quantile(0.99)
    );
}
