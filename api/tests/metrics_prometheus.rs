//! `GET /metrics` of a real server, parsed with a Prometheus text-format parser and
//! cross-checked against the API: actor counts equal the tree, the request counter and
//! histogram move with requests, restarts and node memory match what the API says.

mod server_common;

use std::time::Duration;

use prometheus_parse::{Sample, Scrape, Value as PromValue};
use serde_json::Value;
use server_common::*;

fn root_url(s: &TestServer, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", s.running().addr.port())
}

async fn scrape(s: &TestServer, ticket: &str) -> Scrape {
    let resp = s
        .client
        .get(root_url(s, "/metrics"))
        .header("Cookie", cookie(ticket))
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status(), 200);
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let text = resp.text().await.expect("body");
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid exposition")
}

fn value(s: &Sample) -> f64 {
    match &s.value {
        PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => *v,
        other => panic!("not a scalar: {other:?}"),
    }
}

fn samples<'a>(scrape: &'a Scrape, metric: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
    scrape.samples.iter().filter(move |s| s.metric == metric)
}

fn one(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(scrape, metric)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(value)
}

const VERSION_ROUTE: &str = "/api2/json/version";

#[tokio::test]
async fn metrics_parse_and_match_the_api() {
    let s = TestServer::start().await;
    let (ticket, csrf) = s.login().await;

    let resp = s
        .client
        .get(root_url(&s, "/metrics"))
        .send()
        .await
        .expect("anonymous scrape");
    assert_eq!(resp.status(), 401, "metrics need credentials");

    let (code, _) = send(
        s.client
            .get(s.url("/version"))
            .header("Cookie", cookie(&ticket)),
    )
    .await;
    assert_eq!(code, 200);
    let first = scrape(&s, &ticket).await;

    // Families with a real source are there; help texts are present.
    for family in [
        "gpve_build_info",
        "gpve_api_requests_total",
        "gpve_actors",
        "gpve_actor_mailbox_depth",
        "gpve_actor_restarts_total",
        "gpve_tasks",
        "gpve_node_memory_total_bytes",
        "gpve_node_uptime_seconds",
    ] {
        assert!(samples(&first, family).next().is_some(), "{family} missing");
        assert!(first.docs.contains_key(family), "{family} has no HELP");
    }

    // Actor count equals the tree's size, per state too.
    let (code, tree) = send(
        s.client
            .get(root_url(&s, "/api/v1/actors"))
            .header("Cookie", cookie(&ticket)),
    )
    .await;
    assert_eq!(code, 200);
    let count = tree["data"]["nodes"][0]["count"].as_u64().expect("count");
    let total: f64 = samples(&first, "gpve_actors").map(value).sum();
    assert_eq!(total as u64, count);
    let running: f64 = samples(&first, "gpve_actors")
        .filter(|s| s.labels.get("state") == Some("running"))
        .map(value)
        .sum();
    assert_eq!(running as u64, count, "a fresh server runs every actor");
    assert_eq!(
        samples(&first, "gpve_actor_mailbox_depth").count() as u64,
        count
    );

    // The request counter and histogram move with a request.
    let labels = [
        ("route", VERSION_ROUTE),
        ("method", "GET"),
        ("status", "200"),
    ];
    let before = one(&first, "gpve_api_requests_total", &labels).expect("version counted");
    assert!(before >= 1.0);
    let (code, _) = send(
        s.client
            .get(s.url("/version"))
            .header("Cookie", cookie(&ticket)),
    )
    .await;
    assert_eq!(code, 200);
    let second = scrape(&s, &ticket).await;
    let after = one(&second, "gpve_api_requests_total", &labels).expect("version counted");
    assert_eq!(after, before + 1.0);
    let hist = samples(&second, "gpve_api_request_duration_seconds")
        .find(|s| s.labels.get("route") == Some(VERSION_ROUTE))
        .expect("histogram for the route");
    match &hist.value {
        PromValue::Histogram(buckets) => {
            let inf = buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .expect("+Inf bucket");
            assert_eq!(inf.count, after);
            assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count));
        }
        other => panic!("not a histogram: {other:?}"),
    }
    let count_sample =
        one(&second, "gpve_api_request_duration_seconds_count", &labels).expect("_count");
    assert_eq!(count_sample, after);
    // Unknown paths are one series, not one per URL.
    let (code, _) = send(s.client.get(root_url(&s, "/no/such/path/1234"))).await;
    assert_eq!(code, 501);
    let third = scrape(&s, &ticket).await;
    assert!(
        one(&third, "gpve_api_requests_total", &[("route", "unmatched")]).is_some(),
        "unmatched requests are counted"
    );
    assert!(
        !third
            .samples
            .iter()
            .any(|s| s.labels.values().any(|v| v.contains("1234"))),
        "raw paths never become labels"
    );

    // Node memory matches /nodes/n1/status.
    let (code, status) = send(
        s.client
            .get(s.url("/nodes/n1/status"))
            .header("Cookie", cookie(&ticket)),
    )
    .await;
    assert_eq!(code, 200);
    let mem_total = status["data"]["memory"]["total"].as_u64().expect("mem");
    assert_eq!(
        one(&third, "gpve_node_memory_total_bytes", &[("node", NODE)]),
        Some(mem_total as f64)
    );

    // A restart through the API shows in the restart counter.
    let path = "gpve-server/node:n1";
    let (code, body) = send(
        s.client
            .post(root_url(&s, &format!("/api/v1/actors/{path}/restart")))
            .header("Cookie", cookie(&ticket))
            .header("CSRFPreventionToken", &csrf),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let mut restarted = None;
    for _ in 0..100 {
        let m = scrape(&s, &ticket).await;
        let r = one(&m, "gpve_actor_restarts_total", &[("path", path)]);
        if r == Some(1.0) {
            restarted = r;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(restarted, Some(1.0));
    let (_, d): (u16, Value) = send(
        s.client
            .get(root_url(&s, &format!("/api/v1/actors/{path}")))
            .header("Cookie", cookie(&ticket)),
    )
    .await;
    assert_eq!(d["data"]["restarts"], 1);

    s.stop().await;
}
