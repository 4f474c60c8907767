//! Garbage at every route: wrong methods, bad JSON, huge and ill-typed parameters, unicode,
//! path traversal in ids, missing and garbage credentials. No answer may be a 5xx, the
//! server must stay up, and the store must be byte-for-byte unchanged.

mod server_common;

use std::sync::Arc;

use gpve_store::{Key, KeyRange, RangeOptions, Store};
use server_common::*;
use tokio::io::AsyncWriteExt;

const ROUTES: &[&str] = &[
    "/version",
    "/nodes",
    "/nodes/{node}",
    "/nodes/{node}/status",
    "/nodes/{node}/tasks",
    "/nodes/{node}/tasks/{upid}",
    "/nodes/{node}/tasks/{upid}/status",
    "/nodes/{node}/tasks/{upid}/log",
    "/nodes/{node}/startall",
    "/nodes/{node}/stopall",
    "/cluster/resources",
    "/cluster/nextid",
    "/access/ticket",
    "/access/users",
    "/access/users/{userid}",
    "/access/users/{userid}/token",
    "/access/users/{userid}/token/{tokenid}",
];

/// Path segment values: traversal, encodings, unicode, huge, control characters.
const SEGMENTS: &[&str] = &[
    "..%2F..%2Fetc%2Fpasswd",
    "..",
    "%00",
    "%FF%FE",
    "%ZZ",
    "%C3%BC%C3%B1%C3%AF",
    "root@pam%0Aevil",
    "UPID:n1:zz:::",
    "a%20b@pve",
];

async fn snapshot(store: &Store) -> Vec<(Key, Vec<u8>)> {
    store
        .transact(|tx| {
            let range = KeyRange::new(Key::from_bytes(Vec::new()), Key::from_bytes(vec![0xff]));
            Box::pin(async move { tx.get_range(&range, RangeOptions::all()).await })
        })
        .await
        .expect("snapshot")
}

fn fill(route: &str, seg: &str) -> String {
    route
        .replace("{node}", seg)
        .replace("{upid}", seg)
        .replace("{userid}", seg)
        .replace("{tokenid}", seg)
}

#[tokio::test]
async fn garbage_everywhere_no_5xx_no_writes() {
    let s = TestServer::start().await;
    let (ticket, csrf) = s.login().await;
    let before = snapshot(&s.running().state.store).await;
    let huge = "9".repeat(20 * 1024);
    let long_seg = "x".repeat(5000);

    // Every request built below carries an unknown parameter or a malformed part, so even
    // administrator credentials cannot make it a valid write.
    let mut reqs: Vec<(String, reqwest::RequestBuilder)> = Vec::new();
    let methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"];
    let auths: Vec<Vec<(&str, String)>> = vec![
        vec![],
        vec![("Cookie", "PVEAuthCookie=garbage".into())],
        vec![("Cookie", "PVEAuthCookie=PVE:root@pam:00000000::AAAA".into())],
        vec![("Authorization", "PVEAPIToken=root@pam!x=y".into())],
        vec![("Authorization", "PVEAPIToken=".into())],
        vec![("Authorization", "Basic cm9vdDpwYXNz".into())],
        vec![("Cookie", cookie(&ticket))],
        vec![
            ("Cookie", cookie(&ticket)),
            ("CSRFPreventionToken", csrf.clone()),
        ],
    ];
    for route in ROUTES {
        let mut paths: Vec<String> = SEGMENTS.iter().map(|seg| fill(route, seg)).collect();
        paths.push(fill(route, &long_seg));
        paths.push(
            route
                .replace("{node}", NODE)
                .replace("{upid}", "UPID:n1:00000001:00000002:00000003:x::root@pam:")
                .replace("{userid}", "root@pam")
                .replace("{tokenid}", "tok"),
        );
        paths.dedup();
        for path in &paths {
            for method in methods {
                for auth in &auths {
                    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                    let url = format!("{}{}?zz_garbage=1", s.base, path);
                    let mut r = s.client.request(m, &url);
                    for (k, v) in auth {
                        r = r.header(*k, v);
                    }
                    reqs.push((format!("{method} {path}"), r));
                }
            }
        }
    }
    // Body garbage against every route with administrator credentials.
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("application/json", b"{not json".to_vec()),
        ("application/json", b"[1,2,3]".to_vec()),
        ("application/json", b"\"just a string\"".to_vec()),
        (
            "application/json",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        ),
        (
            "application/json",
            br#"{"userid":{"nested":[1,2]},"enable":"maybe","zz":null}"#.to_vec(),
        ),
        (
            "application/json",
            br#"{"vmid":1e400,"limit":-99999999999999999999}"#.to_vec(),
        ),
        (
            "application/x-www-form-urlencoded",
            b"userid=%FF%FE&enable=%00".to_vec(),
        ),
        (
            "application/x-www-form-urlencoded",
            format!("userid=a@pve&comment={huge}").into_bytes(),
        ),
        (
            "application/x-www-form-urlencoded",
            vec![0xff, 0xfe, 0x00, 0x80],
        ),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\n\r\nfoo\r\n--x--".to_vec(),
        ),
        ("text/plain", "ünïcödé 🦀".as_bytes().to_vec()),
    ];
    for route in ROUTES {
        let path = route
            .replace("{node}", NODE)
            .replace("{upid}", "UPID:n1:00000001:00000002:00000003:x::root@pam:")
            .replace("{userid}", "root@pam")
            .replace("{tokenid}", "tok");
        for method in ["POST", "PUT", "DELETE"] {
            for (ctype, body) in &bodies {
                let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                let r = s
                    .client
                    .request(m, format!("{}{}?zz_garbage=1", s.base, path))
                    .header("Cookie", cookie(&ticket))
                    .header("CSRFPreventionToken", &csrf)
                    .header("Content-Type", *ctype)
                    .body(body.clone());
                reqs.push((format!("{method} {path} [{ctype}]"), r));
            }
            // Wrong types and huge values as query parameters, plus the unknown one.
            for q in [
                format!("limit={huge}"),
                "vmid=abc&start=-1&errors=2&source=everything".to_string(),
                format!("userid={}", "ü".repeat(100)),
                "type=%00&userid=..%2F..".to_string(),
            ] {
                let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                let r = s
                    .client
                    .request(m, format!("{}{}?{q}&zz_garbage=1", s.base, path))
                    .header("Cookie", cookie(&ticket))
                    .header("CSRFPreventionToken", &csrf);
                reqs.push((format!("{method} {path}?{q:.40}"), r));
            }
        }
    }
    let total = reqs.len();
    let limit = Arc::new(tokio::sync::Semaphore::new(32));
    let mut handles = Vec::new();
    for (label, req) in reqs {
        let limit = limit.clone();
        handles.push(tokio::spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            let resp = req
                .send()
                .await
                .unwrap_or_else(|e| panic!("{label:.200}: {e}"));
            (label, resp.status().as_u16())
        }));
    }
    let mut by_status = std::collections::BTreeMap::new();
    for h in handles {
        let (label, status) = h.await.unwrap();
        assert!(
            status < 500 || status == 501,
            "{label:.200} answered {status}"
        );
        *by_status.entry(status).or_insert(0usize) += 1;
    }
    println!("{total} garbage requests, statuses: {by_status:?}");

    // Garbage below HTTP: plain bytes and a half handshake on the TLS port.
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0xff, 0xff][..],
        &[0u8; 4096][..],
    ] {
        let mut tcp = tokio::net::TcpStream::connect(s.running().addr)
            .await
            .unwrap();
        let _ = tcp.write_all(junk).await;
        drop(tcp);
    }

    // Still up, and nothing was written.
    let (code, _) = send(
        s.client
            .get(s.url("/version"))
            .header("Cookie", cookie(&ticket)),
    )
    .await;
    assert_eq!(code, 200);
    // The audit log records every refused write; nothing else may change, and every
    // record it gained is a refusal.
    let audit = Key::prefix(&("audit",));
    let (before, _) = split_audit(before, &audit);
    let (after, audit_records) = split_audit(snapshot(&s.running().state.store).await, &audit);
    assert_eq!(before.len(), after.len(), "store keys changed");
    assert!(before == after, "store contents changed");
    assert!(!audit_records.is_empty(), "refused writes are audited");
    let head = Key::pack(&("audit", "head"));
    for (key, value) in audit_records.iter().filter(|(k, _)| *k != head) {
        let rec: serde_json::Value = serde_json::from_slice(value).expect("audit record");
        let status = rec["status"].as_u64();
        assert!(
            status.is_some_and(|c| (400..500).contains(&c) || c == 501),
            "audit record {key:?} is not a refusal: {rec}"
        );
    }
    s.stop().await;
}

/// Entries outside and inside the audit log's key space.
type Entries = Vec<(Key, Vec<u8>)>;
fn split_audit(entries: Entries, audit: &Key) -> (Entries, Entries) {
    entries
        .into_iter()
        .partition(|(k, _)| !k.as_bytes().starts_with(audit.as_bytes()))
}
