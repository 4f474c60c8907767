//! OpenTelemetry export: the real `gpve-server` binary started with `GPVE_OTLP_ENDPOINT`
//! (the env form of `--otlp-endpoint`) posts OTLP/HTTP protobuf batches to a tiny
//! receiver on loopback, and a batch carries the `request` span of an API call with its
//! path and the service name. The protobuf is checked by its strings (span names and
//! attribute values are plain UTF-8 in the encoding), so no protobuf decoder is needed.

mod server_common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use server_common::*;

const EXPORT_WAIT_MS: u64 = 30_000;

type Batches = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn api_request_spans_reach_an_otlp_http_receiver() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind receiver");
    let endpoint = format!("http://{}/v1/traces", listener.local_addr().expect("addr"));
    // SAFETY: set before the runtime (and any other thread of this single-test binary)
    // starts, so no thread reads the environment concurrently; the server child inherits it.
    unsafe {
        std::env::set_var("GPVE_OTLP_ENDPOINT", &endpoint);
        std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "200");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let batches: Batches = Arc::default();
        let sink = batches.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let sink = sink.clone();
                async move {
                    let ct = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    sink.lock().expect("lock").push((ct, body.to_vec()));
                    // An empty ExportTraceServiceResponse.
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        listener.set_nonblocking(true).expect("nonblocking");
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let receiver = tokio::spawn(async move { axum::serve(listener, app).await });

        let dir = init_dir().await;
        let server = BinServer::start(&data_path(&dir)).await;
        let client = client_for(&data_path(&dir));
        let (code, _) = send(client.get(format!("{}/version", server.base))).await;
        assert_eq!(code, 401, "an unauthenticated call still makes a span");

        let deadline = Instant::now() + Duration::from_millis(EXPORT_WAIT_MS);
        loop {
            let found = batches.lock().expect("lock").iter().any(|(ct, b)| {
                ct == "application/x-protobuf"
                    && contains(b, "request")
                    && contains(b, "/api2/json/version")
                    && contains(b, "gpve-server")
            });
            if found {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no OTLP batch with the request span within {EXPORT_WAIT_MS} ms ({} batches)",
                batches.lock().expect("lock").len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            server.sigterm().success(),
            "clean exit with the exporter on"
        );
        receiver.abort();
    });
}
