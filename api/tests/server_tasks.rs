//! Tasks over HTTPS: start, status, log, list filters, stop via DELETE, and persistence
//! across restarts of the real binary (including a task running when the server died).

mod server_common;

use std::time::Duration;

use gpve_actors::task::TaskRecord;
use gpve_store::{Key, Store};
use serde_json::Value;
use server_common::*;

async fn wait_stopped(client: &reqwest::Client, base: &str, ticket: &str, upid: &str) -> Value {
    for _ in 0..200 {
        let (code, body) = send(
            client
                .get(format!("{base}/nodes/n1/tasks/{upid}/status"))
                .header("Cookie", cookie(ticket)),
        )
        .await;
        assert_eq!(code, 200, "{body}");
        if body["data"]["status"] == "stopped" {
            return body["data"].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("task {upid} did not stop");
}

#[tokio::test]
async fn startall_task_status_log_and_list() {
    let s = TestServer::start().await;
    let (ticket, csrf) = s.login().await;
    let (code, body) = send(
        s.client
            .post(s.url("/nodes/n1/startall"))
            .header("Cookie", cookie(&ticket))
            .header("CSRFPreventionToken", &csrf),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let upid = body["data"].as_str().unwrap().to_string();
    assert!(upid.starts_with("UPID:n1:") && upid.ends_with(":startall::root@pam:"));
    let st = wait_stopped(&s.client, &s.base, &ticket, &upid).await;
    assert_eq!(st["exitstatus"], "OK");
    assert_eq!(st["type"], "startall");
    assert_eq!(st["user"], "root@pam");

    let (_, body) = send(
        s.client
            .get(s.url(&format!("/nodes/n1/tasks/{upid}/log")))
            .header("Cookie", cookie(&ticket)),
    )
    .await;
    assert_eq!(body["data"][0]["n"], 1);
    assert_eq!(body["data"][0]["t"], "found 0 VMs to start");
    assert_eq!(body["data"][1]["t"], "TASK OK");
    assert_eq!(body["total"], 2);
    let (_, body) = send(
        s.client
            .get(s.url(&format!("/nodes/n1/tasks/{upid}/log?start=1&limit=1")))
            .header("Cookie", cookie(&ticket)),
    )
    .await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(body["data"][0]["n"], 2);

    // stopall too; then list filters.
    let (_, body) = send(
        s.client
            .post(s.url("/nodes/n1/stopall"))
            .header("Cookie", cookie(&ticket))
            .header("CSRFPreventionToken", &csrf),
    )
    .await;
    let stop_upid = body["data"].as_str().unwrap().to_string();
    wait_stopped(&s.client, &s.base, &ticket, &stop_upid).await;
    let list = |q: &str| {
        s.client
            .get(s.url(&format!("/nodes/n1/tasks{q}")))
            .header("Cookie", cookie(&ticket))
    };
    let (_, body) = send(list("")).await;
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][0]["status"], "OK");
    let (_, body) = send(list("?typefilter=stopall")).await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(body["data"][0]["upid"], stop_upid.as_str());
    let (_, body) = send(list("?limit=1&start=1")).await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    let (_, body) = send(list("?errors=1")).await;
    assert!(body["data"].as_array().unwrap().is_empty());
    let (_, body) = send(list("?userfilter=alice")).await;
    assert!(body["data"].as_array().unwrap().is_empty());
    let (_, body) = send(list("?source=active")).await;
    assert!(body["data"].as_array().unwrap().is_empty());

    // Unknown and malformed UPIDs.
    let ghost = "UPID:n1:00000001:00000002:00000003:x::root@pam:";
    let (code, _) = send(list(&format!("/{ghost}/status"))).await;
    assert_eq!(code, 404);
    let (code, body) = send(list("/UPID:garbage/status")).await;
    assert_eq!(code, 400, "{body}");
    let other_node = "UPID:n2:00000001:00000002:00000003:x::root@pam:";
    let (code, _) = send(list(&format!("/{other_node}/status"))).await;
    assert_eq!(code, 400);
    s.stop().await;
}

#[tokio::test]
async fn delete_stops_a_running_task() {
    let s = TestServer::start().await;
    let (ticket, csrf) = s.login().await;
    let upid = s
        .running()
        .state
        .tasks
        .spawn("longjob", "100", "root@pam", |ctx| async move {
            ctx.log("working").await.map_err(|e| e.to_string())?;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        })
        .await
        .unwrap()
        .to_string();
    let (_, body) = send(
        s.client
            .get(s.url(&format!("/nodes/n1/tasks/{upid}/status")))
            .header("Cookie", cookie(&ticket)),
    )
    .await;
    assert_eq!(body["data"]["status"], "running");
    let (_, body) = send(
        s.client
            .get(s.url("/nodes/n1/tasks?source=active&vmid=100"))
            .header("Cookie", cookie(&ticket)),
    )
    .await;
    assert_eq!(body["data"][0]["upid"], upid.as_str());

    // DELETE needs the CSRF token like every ticket write.
    let del = || {
        s.client
            .delete(s.url(&format!("/nodes/n1/tasks/{upid}")))
            .header("Cookie", cookie(&ticket))
    };
    assert_eq!(send(del()).await.0, 401);
    let (code, body) = send(del().header("CSRFPreventionToken", &csrf)).await;
    assert_eq!(code, 200, "{body}");
    let st = wait_stopped(&s.client, &s.base, &ticket, &upid).await;
    assert_eq!(st["exitstatus"], "interrupted by signal");
    // Stopping a stopped task is a client error.
    assert_eq!(
        send(del().header("CSRFPreventionToken", &csrf)).await.0,
        400
    );
    s.stop().await;
}

#[tokio::test]
async fn tasks_survive_restart_and_running_ones_are_marked() {
    let dir = init_dir().await;
    let data = data_path(&dir);
    let client = client_for(&data);

    // A task that "was running" when a previous server died.
    let stale = TaskRecord {
        upid: "UPID:n1:00000001:00000002:00000003:qmstart:100:root@pam:".into(),
        node: "n1".into(),
        pid: 1,
        pstart: 2,
        starttime: 3,
        worker_type: "qmstart".into(),
        id: "100".into(),
        user: "root@pam".into(),
        exitstatus: None,
        endtime: None,
    };
    {
        let store = Store::open_redb(&data.join("gpve.redb")).unwrap();
        store
            .put_json(&Key::pack(&("tasks", stale.upid.as_str())), &stale)
            .await
            .unwrap();
    }

    let srv = BinServer::start(&data).await;
    let (ticket, csrf) = login(&client, &srv.base, "root@pam", ROOT_PW).await;
    let st = wait_stopped(&client, &srv.base, &ticket, &stale.upid).await;
    assert_eq!(st["exitstatus"], "unexpected status");

    let (_, body) = send(
        client
            .post(format!("{}/nodes/n1/startall", srv.base))
            .header("Cookie", cookie(&ticket))
            .header("CSRFPreventionToken", &csrf),
    )
    .await;
    let upid = body["data"].as_str().unwrap().to_string();
    wait_stopped(&client, &srv.base, &ticket, &upid).await;
    let status = srv.sigterm();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");

    // Same data dir, new process: the task, its log and the ticket's key are still there.
    let srv = BinServer::start(&data).await;
    let st = wait_stopped(&client, &srv.base, &ticket, &upid).await;
    assert_eq!(st["exitstatus"], "OK");
    let (_, body) = send(
        client
            .get(format!("{}/nodes/n1/tasks/{upid}/log", srv.base))
            .header("Cookie", cookie(&ticket)),
    )
    .await;
    assert_eq!(body["data"][1]["t"], "TASK OK");
    let (_, body) = send(
        client
            .get(format!("{}/nodes/n1/tasks?source=all", srv.base))
            .header("Cookie", cookie(&ticket)),
    )
    .await;
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    srv.kill9();
}
