//! VM creation through the Proxmox API: invalid configurations are refused with the
//! `errors` map and leave nothing behind; parallel creates get distinct VMIDs and disks;
//! parallel deletes remove everything.

mod vm_common;

use std::collections::BTreeSet;

use serde_json::Value;
use vm_common::*;

/// A request's form, the parameter its error must name, and a part of the message.
type Case = (
    &'static [(&'static str, &'static str)],
    &'static str,
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configs_leave_nothing_and_parallel_creates_get_distinct_vmids() {
    let env = Env::new().await;
    let srv = Server::start(&env).await;
    let api = srv.api.clone();
    let q = format!("/nodes/{NODE}/qemu");

    let cases: &[Case] = &[
        (&[("bogus", "1")], "bogus", "not defined in schema"),
        (&[("memory", "0")], "memory", "memory (MiB) must be"),
        (&[("scsi0", "local:4,format=vmdk")], "scsi0", "vmdk"),
        (
            &[("scsi0", "nope:1")],
            "scsi0",
            "storage 'nope' does not exist",
        ),
        (&[("net0", "rtl9999,bridge=vmbr0")], "net0", "not supported"),
        (&[("scsi31", "local:1")], "scsi31", "not defined in schema"),
        (
            &[("scsi0", "local:1"), ("memory", "abc")],
            "memory",
            "not an integer",
        ),
        (
            &[
                ("scsi0", "local:100/vm-100-disk-0.qcow2"),
                ("scsi1", "local:100/vm-100-disk-0.qcow2"),
            ],
            "scsi1",
            "already used by 'scsi0'",
        ),
        (&[("args", "-kernel")], "args", "needs a value"),
        (&[("vmid", "99")], "vmid", "minimum value of 100"),
    ];
    for (form, key, wanted) in cases {
        let (code, body) = api.post(&q, form).await;
        assert_eq!(code, 400, "{form:?}: {body}");
        let msg = body["errors"][key].as_str().unwrap_or("");
        assert!(
            msg.contains(wanted),
            "{form:?}: errors.{key} = {msg:?} ({body})"
        );
    }
    // The same slot twice in one request.
    let (code, body) = api
        .post(&q, &[("scsi0", "local:1"), ("scsi0", "local:2")])
        .await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["errors"]["scsi0"], "duplicate parameter");

    // nothing was left behind: no VM, no disk, the first VMID still free
    let (_, list) = api.get(&q).await;
    assert_eq!(list["data"], Value::Array(vec![]));
    assert!(env.images(100).is_empty());
    let (_, next) = api.get("/cluster/nextid").await;
    assert_eq!(next["data"], "100");

    // 20 parallel creates, each with a disk: distinct VMIDs and distinct disks
    const N: usize = 20;
    let mut calls = Vec::new();
    for i in 0..N {
        let api = api.clone();
        let q = q.clone();
        calls.push(tokio::spawn(async move {
            let name = format!("par{i}");
            let (code, body) = api
                .post(
                    &q,
                    &[("name", &name), ("memory", "64"), ("scsi0", "local:1")],
                )
                .await;
            assert_eq!(code, 200, "create {i}: {body}");
            let upid = body["data"].as_str().expect("upid").to_string();
            let status = api.wait_task(&upid).await;
            assert_eq!(status, "OK", "create {i}");
            // the UPID names the VMID
            upid.split(':')
                .nth(6)
                .expect("id")
                .parse::<u32>()
                .expect("vmid")
        }));
    }
    let mut vmids = BTreeSet::new();
    for c in calls {
        vmids.insert(c.await.expect("join"));
    }
    assert_eq!(vmids.len(), N, "VMIDs must be distinct: {vmids:?}");
    assert_eq!(
        vmids.iter().copied().collect::<Vec<_>>(),
        (100..100 + N as u32).collect::<Vec<_>>()
    );
    for &vmid in &vmids {
        assert_eq!(env.images(vmid).len(), 1, "VM {vmid} has its own disk");
    }
    let (_, list) = api.get(&q).await;
    assert_eq!(list["data"].as_array().unwrap().len(), N);
    // they are listed in /cluster/resources from the same records
    let (code, res) = api.get("/cluster/resources?type=vm").await;
    assert_eq!(code, 200, "{res}");
    let listed = res["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "qemu")
        .count();
    assert_eq!(listed, N, "{res}");

    // an explicit VMID that exists is refused
    let (code, body) = api.post(&q, &[("vmid", "100")]).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["errors"]["vmid"]
            .as_str()
            .unwrap()
            .contains("already exists")
    );

    // parallel deletes remove everything
    let mut calls = Vec::new();
    for &vmid in &vmids {
        let api = api.clone();
        let q = q.clone();
        calls.push(tokio::spawn(async move {
            let (code, body) = api.delete(&format!("{q}/{vmid}")).await;
            assert_eq!(code, 200, "delete {vmid}: {body}");
            assert_eq!(api.wait_task(body["data"].as_str().unwrap()).await, "OK");
        }));
    }
    for c in calls {
        c.await.expect("join");
    }
    let (_, list) = api.get(&q).await;
    assert_eq!(list["data"], Value::Array(vec![]));
    for &vmid in &vmids {
        assert!(env.images(vmid).is_empty(), "VM {vmid} disk left");
    }
    srv.stop();
}
