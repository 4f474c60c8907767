//! One VM through its whole life with real QEMU (TCG) behind the real server binary:
//! create → start (the guest boots: ready marker) → status → illegal start refused →
//! 20 concurrent operations → kill -9 of QEMU restarts it → server restart re-adopts the
//! running VM (same pid) → shutdown → snapshot, rollback → delete leaves nothing.

mod vm_common;

use std::time::Duration;

use serde_json::Value;
use vm_common::*;

async fn wait_new_pid(api: &Api, vmid: u32, old: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = api.status(vmid).await;
        if let Some(pid) = s["pid"].as_u64()
            && pid != old
            && s["status"] == "running"
            && alive(pid)
        {
            return pid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "VM {vmid} was not restarted after its QEMU died: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// QEMU is not our child: init reaps it shortly after it exits.
async fn wait_dead(pid: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while alive(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "QEMU {pid} still alive"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_lifecycle_with_real_qemu() {
    let g = guest().await;
    let env = Env::new().await;
    let srv = Server::start(&env).await;
    let api = srv.api.clone();
    let q = format!("/nodes/{NODE}/qemu");

    // create (VMID allocated by the server), with a 1 GiB qcow2 disk on `local`
    let args = guest_args(&g);
    let (code, body) = api
        .post(
            &q,
            &[
                ("name", "life1"),
                ("memory", "128"),
                ("cores", "1"),
                ("kvm", "0"),
                ("scsi0", "local:1,format=qcow2"),
                ("net0", "virtio"),
                ("serial0", "socket"),
                ("args", &args),
            ],
        )
        .await;
    assert_eq!(code, 200, "create: {body}");
    let upid = body["data"].as_str().expect("upid").to_string();
    assert!(upid.contains(":qmcreate:"), "{upid}");
    assert_eq!(api.wait_task(&upid).await, "OK");
    let (code, list) = api.get(&q).await;
    assert_eq!(code, 200);
    let vmid = list["data"][0]["vmid"].as_u64().expect("vmid") as u32;
    assert_eq!(vmid, 100);
    let (code, cfg) = api.get(&format!("{q}/{vmid}/config")).await;
    assert_eq!(code, 200, "{cfg}");
    let scsi0 = cfg["data"]["scsi0"].as_str().expect("scsi0").to_string();
    assert!(
        scsi0.starts_with("local:100/vm-100-disk-0.qcow2"),
        "{scsi0}"
    );
    assert!(
        cfg["data"]["net0"]
            .as_str()
            .unwrap()
            .starts_with("virtio=BC:24:11:"),
        "{cfg}"
    );
    assert_eq!(env.images(vmid).len(), 1, "one disk image");

    // start: the guest really boots
    api.task_ok(&format!("{q}/{vmid}/status/start"), &[]).await;
    wait_ready(&env, vmid).await;
    let s = api.status(vmid).await;
    assert_eq!(s["status"], "running", "{s}");
    assert_eq!(s["qmpstatus"], "running", "{s}");
    assert_eq!(s["name"], "life1");
    assert_eq!(s["maxmem"], Value::from(128u64 << 20));
    let pid = s["pid"].as_u64().expect("pid");
    assert!(alive(pid));
    assert!(s["mem"].as_u64().unwrap_or(0) > 0, "{s}");

    // starting a running VM is refused with the state named
    let (code, body) = api.post(&format!("{q}/{vmid}/status/start"), &[]).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("cannot start VM 100: it is running"),
        "{body}"
    );
    // deleting a running VM too
    let (code, _) = api.delete(&format!("{q}/{vmid}")).await;
    assert_eq!(code, 400);

    // 20 concurrent operations on the running VM: config changes (serialised by the VM's
    // mailbox, none fails), status reads, suspend/resume pairs through tasks
    let mut calls = Vec::new();
    for i in 0..20 {
        let api = api.clone();
        let q = q.clone();
        calls.push(tokio::spawn(async move {
            if i % 4 == 3 {
                let (code, body) = api.get(&format!("{q}/{vmid}/status/current")).await;
                (code, body, i)
            } else {
                let desc = format!("change {i}");
                let (code, body) = api
                    .put(
                        &format!("{q}/{vmid}/config"),
                        &[("description", &desc), ("memory", &format!("{}", 128 + i))],
                    )
                    .await;
                (code, body, i)
            }
        }));
    }
    for c in calls {
        let (code, body, i) = c.await.expect("join");
        assert_eq!(code, 200, "concurrent call {i}: {body}");
    }
    // description is hot, memory becomes pending while running
    let (_, pending) = api.get(&format!("{q}/{vmid}/pending")).await;
    let mem = pending["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["key"] == "memory")
        .cloned()
        .expect("memory in pending");
    assert_eq!(mem["value"], "128", "{pending}");
    assert!(mem["pending"].as_str().is_some(), "{pending}");
    let (_, cfg) = api.get(&format!("{q}/{vmid}/config?current=1")).await;
    assert!(
        cfg["data"]["description"]
            .as_str()
            .unwrap()
            .starts_with("change ")
    );
    assert_eq!(cfg["data"]["memory"], 128);
    // revert the pending memory change
    let (code, body) = api
        .put(&format!("{q}/{vmid}/config"), &[("revert", "memory")])
        .await;
    assert_eq!(code, 200, "{body}");

    // kill -9 QEMU: the VM actor fails, its supervisor restarts it, QEMU starts again
    std::fs::remove_file(env.serial_log(vmid)).ok();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 QEMU");
    let pid2 = wait_new_pid(&api, vmid, pid).await;
    wait_ready(&env, vmid).await;

    // server restart: the running VM is re-adopted with the same pid and stays controllable
    srv.stop();
    assert!(alive(pid2), "QEMU must survive a server restart");
    let srv = Server::start(&env).await;
    let api = srv.api.clone();
    // the VM actor reconciles right after start; give it a moment to adopt
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = api.status(vmid).await;
        if s["status"] == "running" && s["pid"].as_u64() == Some(pid2) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not re-adopted: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // suspend and resume through the adopted process
    api.task_ok(&format!("{q}/{vmid}/status/suspend"), &[])
        .await;
    assert_eq!(api.status(vmid).await["qmpstatus"], "paused");
    api.task_ok(&format!("{q}/{vmid}/status/resume"), &[]).await;
    assert_eq!(api.status(vmid).await["qmpstatus"], "running");

    // shutdown (ACPI, re-pressed; forced stop as the fallback)
    api.task_ok(
        &format!("{q}/{vmid}/status/shutdown"),
        &[("timeout", "60"), ("forceStop", "1")],
    )
    .await;
    let s = api.status(vmid).await;
    assert_eq!(s["status"], "stopped", "{s}");
    assert!(s.get("pid").is_none(), "{s}");
    wait_dead(pid2).await;
    let (code, body) = api.post(&format!("{q}/{vmid}/status/stop"), &[]).await;
    assert_eq!(code, 400, "stop of a stopped VM: {body}");

    // snapshot, change, rollback on the stopped VM's qcow2 disk
    api.task_ok(
        &format!("{q}/{vmid}/snapshot"),
        &[("snapname", "before"), ("description", "d")],
    )
    .await;
    let (_, snaps) = api.get(&format!("{q}/{vmid}/snapshot")).await;
    let names: Vec<&str> = snaps["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, vec!["before", "current"], "{snaps}");
    let (code, body) = api
        .put(
            &format!("{q}/{vmid}/config"),
            &[("name", "renamed"), ("cores", "2")],
        )
        .await;
    assert_eq!(code, 200, "{body}");
    api.task_ok(&format!("{q}/{vmid}/snapshot/before/rollback"), &[])
        .await;
    let (_, cfg) = api.get(&format!("{q}/{vmid}/config")).await;
    assert_eq!(cfg["data"]["name"], "life1", "{cfg}");
    assert_eq!(cfg["data"]["scsi0"].as_str(), Some(scsi0.as_str()));
    let (code, body) = api.delete(&format!("{q}/{vmid}/snapshot/before")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(api.wait_task(body["data"].as_str().unwrap()).await, "OK");

    // the VM still boots after the rollback: started by startall (onboot=1), stopped by
    // stopall
    let (code, body) = api
        .put(&format!("{q}/{vmid}/config"), &[("onboot", "1")])
        .await;
    assert_eq!(code, 200, "{body}");
    api.task_ok(&format!("/nodes/{NODE}/startall"), &[]).await;
    wait_ready(&env, vmid).await;
    let pid3 = api.status(vmid).await["pid"].as_u64().expect("pid");
    api.task_ok(&format!("/nodes/{NODE}/stopall"), &[]).await;
    wait_dead(pid3).await;
    assert_eq!(api.status(vmid).await["status"], "stopped");

    // full clone into a new VM (VMID allocated): its own disk, new MAC, and it boots
    api.task_ok(&format!("{q}/{vmid}/clone"), &[("name", "copy1")])
        .await;
    let clone = 101u32;
    let (code, ccfg) = api.get(&format!("{q}/{clone}/config")).await;
    assert_eq!(code, 200, "{ccfg}");
    assert_eq!(ccfg["data"]["name"], "copy1");
    assert!(
        ccfg["data"]["scsi0"]
            .as_str()
            .unwrap()
            .starts_with("local:101/vm-101-disk-0.qcow2"),
        "{ccfg}"
    );
    assert_ne!(
        ccfg["data"]["net0"], cfg["data"]["net0"],
        "the clone gets a new MAC"
    );
    assert_eq!(env.images(clone).len(), 1);
    api.task_ok(&format!("{q}/{clone}/status/start"), &[]).await;
    wait_ready(&env, clone).await;
    let cpid = api.status(clone).await["pid"].as_u64().expect("pid");
    api.task_ok(&format!("{q}/{clone}/status/stop"), &[]).await;
    wait_dead(cpid).await;
    let (code, body) = api.delete(&format!("{q}/{clone}")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(api.wait_task(body["data"].as_str().unwrap()).await, "OK");
    assert!(env.images(clone).is_empty());
    assert_eq!(env.images(vmid).len(), 1, "the source disk is untouched");

    // a template never starts
    api.task_ok(&format!("{q}/{vmid}/template"), &[]).await;
    let (code, body) = api.post(&format!("{q}/{vmid}/status/start"), &[]).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("it is a template"),
        "{body}"
    );

    // delete: no disk, no run dir, no record, no QEMU
    let (code, body) = api.delete(&format!("{q}/{vmid}")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(api.wait_task(body["data"].as_str().unwrap()).await, "OK");
    let (code, _) = api.get(&format!("{q}/{vmid}/config")).await;
    assert_eq!(code, 404);
    assert!(
        env.images(vmid).is_empty(),
        "disks left: {:?}",
        env.images(vmid)
    );
    assert!(!env.run_dir(vmid).exists(), "run dir left behind");
    let (_, list) = api.get(&q).await;
    assert_eq!(list["data"], Value::Array(vec![]));
    srv.stop();
}
