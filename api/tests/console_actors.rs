//! The actor introspection API over real HTTPS against an in-process server: the root
//! tree, describe (plain and URL-encoded paths), 404s, the event watch stream, an
//! administrator restart seen in describe and in the stream, privileges, and refusals.

mod server_common;

use std::time::{Duration, Instant};

use gpve_api::client::{ActorsList, Client, Fingerprint, WatchLine};
use gpve_supervisor::EventKind;
use serde_json::Value;
use server_common::*;

const EVENT_WAIT_MS: u64 = 10_000;

fn v1(s: &TestServer, path: &str) -> String {
    format!("https://127.0.0.1:{}/api/v1{path}", s.running().addr.port())
}

async fn client_for_server(s: &TestServer) -> Client {
    let fp = Fingerprint::of_pem_file(&data_path(&s.dir).join("cert.pem")).expect("fingerprint");
    let client = Client::builder(format!("https://127.0.0.1:{}", s.running().addr.port()))
        .fingerprint(fp)
        .build()
        .expect("client");
    client.login("root@pam", ROOT_PW).await.expect("login");
    client
}

#[tokio::test]
async fn tree_describe_events_restart_and_refusals() {
    let s = TestServer::start().await;
    let (ticket, csrf) = s.login().await;

    // The tree: one node, the root supervisor with store, cluster, node, storage and api.
    let (code, body) = send(
        s.client
            .get(v1(&s, "/actors"))
            .header("Cookie", cookie(&ticket)),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let list: ActorsList = serde_json::from_value(body["data"].clone()).expect("tree shape");
    assert_eq!(list.nodes.len(), 1);
    assert_eq!(list.nodes[0].node, NODE);
    let root = &list.nodes[0].roots[0];
    assert_eq!(root.actor.path, "gpve-server");
    let kids: Vec<&str> = root.children.iter().map(|c| c.actor.id.as_str()).collect();
    for id in ["store", "api", "cluster", "node:n1"] {
        assert!(kids.contains(&id), "{id} missing from {kids:?}");
    }
    assert_eq!(list.nodes[0].count, root.size());
    assert_eq!(
        list.nodes[0].count,
        s.running().directory.snapshot().len(),
        "the API shows every directory entry"
    );
    assert!(root.children.iter().all(|c| c.actor.node == NODE));

    // ?node= filter: unknown node is a 404, the local one works.
    let (code, _) = send(
        s.client
            .get(v1(&s, "/actors?node=other"))
            .header("Cookie", cookie(&ticket)),
    )
    .await;
    assert_eq!(code, 404);
    let (code, _) = send(
        s.client
            .get(v1(&s, "/actors?node=n1"))
            .header("Cookie", cookie(&ticket)),
    )
    .await;
    assert_eq!(code, 200);

    // Describe, as a plain tail and URL-encoded.
    for path in ["/actors/gpve-server/store", "/actors/gpve-server%2Fstore"] {
        let (code, body) = send(s.client.get(v1(&s, path)).header("Cookie", cookie(&ticket))).await;
        assert_eq!(code, 200, "{path}: {body}");
        let d = &body["data"];
        assert_eq!(d["path"], "gpve-server/store");
        assert_eq!(d["kind"], "store");
        assert_eq!(d["parent"], "gpve-server");
        assert_eq!(d["state"], "running");
        assert_eq!(d["node"], NODE);
        assert_eq!(d["restarts"], 0);
        assert!(d["uptime_s"].is_u64(), "{d}");
        assert!(d["msgs_per_s"].is_number(), "{d}");
    }
    let (code, body) = send(
        s.client
            .get(v1(&s, "/actors/gpve-server%2Fnode%3An1"))
            .header("Cookie", cookie(&ticket)),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["kind"], "node");
    let (code, body) = send(
        s.client
            .get(v1(&s, "/actors/gpve-server"))
            .header("Cookie", cookie(&ticket)),
    )
    .await;
    assert_eq!(code, 200);
    let children = body["data"]["children"].as_array().expect("children");
    assert!(
        children.iter().any(|c| c == "gpve-server/api"),
        "{children:?}"
    );

    // Unknown paths and actions: 404 with a JSON message.
    for (method, path) in [
        ("GET", "/actors/gpve-server/nope"),
        ("GET", "/actors/no%2Fsuch%3Aactor"),
        ("POST", "/actors/gpve-server/nope/restart"),
        ("POST", "/actors/gpve-server/store/explode"),
    ] {
        let mut req = if method == "GET" {
            s.client.get(v1(&s, path))
        } else {
            s.client
                .post(v1(&s, path))
                .header("CSRFPreventionToken", &csrf)
        };
        req = req.header("Cookie", cookie(&ticket));
        let (code, body) = send(req).await;
        assert_eq!(code, 404, "{method} {path}: {body}");
        assert!(body["message"].is_string(), "{body}");
    }

    // Credentials: none → 401; a ticket write without CSRF → 401.
    let (code, _) = send(s.client.get(v1(&s, "/actors"))).await;
    assert_eq!(code, 401);
    let (code, _) = send(s.client.get(v1(&s, "/actors/events"))).await;
    assert_eq!(code, 401);
    let (code, _) = send(
        s.client
            .post(v1(&s, "/actors/gpve-server/store/restart"))
            .header("Cookie", cookie(&ticket)),
    )
    .await;
    assert_eq!(code, 401);

    // A non-administrator may neither read nor act.
    let (code, body) = send(
        s.client
            .post(s.url("/access/users"))
            .header("Cookie", cookie(&ticket))
            .header("CSRFPreventionToken", &csrf)
            .form(&[("userid", "bob@pve"), ("password", "bobpw-1234")]),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (bob, bob_csrf) = login(&s.client, &s.base, "bob@pve", "bobpw-1234").await;
    let (code, _) = send(
        s.client
            .get(v1(&s, "/actors"))
            .header("Cookie", cookie(&bob)),
    )
    .await;
    assert_eq!(code, 403);
    let (code, _) = send(
        s.client
            .post(v1(&s, "/actors/gpve-server/store/restart"))
            .header("Cookie", cookie(&bob))
            .header("CSRFPreventionToken", &bob_csrf),
    )
    .await;
    assert_eq!(code, 403);
    let (code, _) = send(
        s.client
            .get(v1(&s, "/actors/events"))
            .header("Cookie", cookie(&bob)),
    )
    .await;
    assert_eq!(code, 403);

    // Watch, then restart the store actor through the API.
    let client = client_for_server(&s).await;
    let mut events = client.actor_events(None).await.expect("event stream");
    match events.next().await.expect("first line") {
        Some(WatchLine::Stream { .. }) => {}
        other => panic!("the stream should open with a heartbeat, got {other:?}"),
    }
    let result = client
        .restart_actor("gpve-server/store")
        .await
        .expect("restart");
    assert_eq!(result.restarts_before, 0);
    assert_eq!(result.how, "restarted");

    let deadline = Instant::now() + Duration::from_millis(EVENT_WAIT_MS);
    let mut seen_stopped = false;
    let restarts = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = tokio::time::timeout(left, events.next())
            .await
            .expect("a restarted event within the deadline")
            .expect("stream ok")
            .expect("stream open");
        if let WatchLine::Actor { node, event } = line {
            assert_eq!(node, NODE);
            if event.path != "gpve-server/store" {
                continue;
            }
            match event.kind {
                EventKind::Stopped { .. } => seen_stopped = true,
                EventKind::Restarted { restarts } => break restarts,
                _ => {}
            }
        }
    };
    assert!(seen_stopped, "a graceful restart shows the stop first");
    assert_eq!(restarts, 1);

    let d = client.actor("gpve-server/store").await.expect("describe");
    assert_eq!(d.actor.restarts, 1);
    assert_eq!(d.recent_restarts.len(), 1);
    assert_eq!(d.recent_restarts[0].reason, "restart requested by root@pam");
    assert_eq!(format!("{:?}", d.actor.state), "Running");

    // Refusals: the root and the api actor cannot be stopped through the API.
    for path in ["gpve-server", "gpve-server/api"] {
        let err = client.stop_actor(path).await.expect_err("refused");
        assert_eq!(err.status(), Some(400), "{path}: {err}");
    }
    let err = client
        .restart_actor("gpve-server")
        .await
        .expect_err("a root has no supervisor");
    assert!(err.to_string().contains("root supervisor"), "{err}");

    // Stop: the supervisor stops the child and forgets it.
    let stopped = client
        .stop_actor("gpve-server/cluster")
        .await
        .expect("stop");
    assert_eq!(stopped.how, "removed");
    let err = client
        .actor("gpve-server/cluster")
        .await
        .expect_err("gone after stop");
    assert_eq!(err.status(), Some(404));
    let body: Value = serde_json::to_value(client.actors(None).await.expect("tree")).expect("json");
    assert!(
        !body.to_string().contains("gpve-server/cluster\""),
        "{body}"
    );

    // Closing the streams (what a listener shutdown does) ends the response cleanly.
    s.running().state.metrics.close_event_streams();
    let end = tokio::time::timeout(Duration::from_millis(EVENT_WAIT_MS), async {
        loop {
            match events.next().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends after close_event_streams");
    assert!(matches!(end, Ok(None)), "{end:?}");
    s.stop().await;
}
