//! VM disks end to end against the real server binary, real files and real QEMU: for dir
//! raw, dir qcow2 and a loop-mounted btrfs, a VM's disk gets a known pattern (qemu-io),
//! is snapshotted, overwritten and rolled back, cloned in full and linked (from a
//! template), resized, moved to the other storage and back while stopped, and the VM
//! boots afterwards. Bad input (shrink, unknown disk, missing storage, move or resize while
//! running, linked clone of a non-template, deleting a template with linked clones) is a
//! clear 4xx that changes neither the configuration nor the files.

mod vm_common;

use std::path::{Path, PathBuf};
use std::process::Command;

use gpve_storage_drivers::loopfs::LoopBtrfs;
use serde_json::Value;
use vm_common::{Api, Env, NODE, Server, guest, guest_args, urlencode, wait_ready};

const Q: &str = "/nodes/n1/qemu";
const PATTERN_BYTES: &str = "1M";
/// Size of the loop-mounted btrfs image (a sparse file): btrfs does not overcommit, and
/// the scenario grows a disk to 3 GiB and moves it there.
const BTRFS_BYTES: u64 = 8 << 30;

fn qemu_io(path: &Path, format: &str, cmd: &str) -> String {
    let out = Command::new("qemu-io")
        .args(["-f", format, "-c", cmd])
        .arg(path)
        .output()
        .expect("run qemu-io");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "qemu-io {cmd} {}: {text}",
        path.display()
    );
    text
}

fn write_pattern(path: &Path, format: &str, byte: u8) {
    qemu_io(path, format, &format!("write -P {byte} 0 {PATTERN_BYTES}"));
}

fn has_pattern(path: &Path, format: &str, byte: u8) -> bool {
    !qemu_io(path, format, &format!("read -P {byte} 0 {PATTERN_BYTES}"))
        .contains("Pattern verification failed")
}

fn format_of(volid: &str) -> &'static str {
    if volid.ends_with(".qcow2") {
        "qcow2"
    } else {
        "raw"
    }
}

/// `(host path, virtual size)` of a volume, from the storage content API.
async fn volume(api: &Api, volid: &str) -> (PathBuf, u64) {
    let storage = volid.split(':').next().expect("storage");
    let (code, v) = api
        .get(&format!(
            "/nodes/{NODE}/storage/{storage}/content/{}",
            urlencode(volid)
        ))
        .await;
    assert_eq!(code, 200, "{volid}: {v}");
    (
        PathBuf::from(v["data"]["path"].as_str().expect("path")),
        v["data"]["size"].as_u64().expect("size"),
    )
}

async fn config(api: &Api, vmid: u32) -> Value {
    let (code, v) = api.get(&format!("{Q}/{vmid}/config")).await;
    assert_eq!(code, 200, "{v}");
    v["data"].clone()
}

/// The volume id of a drive key.
async fn volid(api: &Api, vmid: u32, key: &str) -> String {
    config(api, vmid).await[key]
        .as_str()
        .unwrap_or_else(|| panic!("VM {vmid} has no {key}"))
        .split(',')
        .next()
        .expect("volid")
        .to_string()
}

async fn task_fails(api: &Api, path: &str, form: &[(&str, &str)]) -> String {
    let (code, body) = api.post(path, form).await;
    if code != 200 {
        return body.to_string();
    }
    let status = api.wait_task(body["data"].as_str().expect("upid")).await;
    assert_ne!(status, "OK", "POST {path} should fail");
    status
}

async fn delete_vm(api: &Api, vmid: u32) {
    let (code, body) = api.delete(&format!("{Q}/{vmid}")).await;
    assert_eq!(code, 200, "delete {vmid}: {body}");
    assert_eq!(
        api.wait_task(body["data"].as_str().expect("upid")).await,
        "OK"
    );
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The server, its test directory and a btrfs storage `fast` on a loop device; `None`
/// (with the reason printed) where this machine cannot loop-mount btrfs.
/// Returned in this order so the drop order is server, env (kills leftover QEMUs), then
/// the btrfs (unmounted last).
async fn setup(test: &str) -> Option<(LoopBtrfs, Env, Server)> {
    let fs = match LoopBtrfs::new(BTRFS_BYTES) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("SKIP {test}: cannot loop-mount a btrfs here: {e}");
            return None;
        }
    };
    let env = Env::new().await;
    let server = Server::start(&env).await;
    let pool = fs.path().join("pool");
    let (code, v) = server
        .api
        .post(
            "/storage",
            &[
                ("storage", "fast"),
                ("type", "btrfs"),
                ("path", pool.to_str().expect("utf-8")),
                ("content", "images"),
            ],
        )
        .await;
    assert_eq!(code, 200, "{v}");
    Some((fs, env, server))
}

async fn create_vm(api: &Api, vmid: u32, name: &str, scsi0: &str) {
    let g = guest().await;
    let args = guest_args(&g);
    let id = vmid.to_string();
    api.task_ok(
        Q,
        &[
            ("vmid", &id),
            ("name", name),
            ("memory", "128"),
            ("kvm", "0"),
            ("serial0", "socket"),
            ("args", &args),
            ("scsi0", scsi0),
        ],
    )
    .await;
}

/// The whole life of one disk on storage `home` in `format` (`other` is where it moves).
async fn scenario(test: &str, home: &str, format: &str, other: &str) {
    let Some((_fs, env, server)) = setup(test).await else {
        return;
    };
    let api = &server.api;
    create_vm(api, 100, "disks", &format!("{home}:1,format={format}")).await;
    let vol = volid(api, 100, "scsi0").await;
    assert!(vol.starts_with(&format!("{home}:")), "{vol}");
    let fmt = format_of(&vol);
    assert_eq!(fmt, format, "{vol}");
    let (path, size) = volume(api, &vol).await;
    assert_eq!(size, 1 << 30);
    write_pattern(&path, fmt, 0xa1);

    // snapshot, overwrite, rollback: the first pattern is back (raw on dir has no
    // snapshots: refused, and nothing changes)
    let snapshots = !(home == "local" && format == "raw");
    if snapshots {
        api.task_ok(&format!("{Q}/100/snapshot"), &[("snapname", "s1")])
            .await;
        write_pattern(&path, fmt, 0xb2);
        assert!(has_pattern(&path, fmt, 0xb2));
        api.task_ok(&format!("{Q}/100/snapshot/s1/rollback"), &[])
            .await;
        assert!(has_pattern(&path, fmt, 0xa1), "rollback restored the data");
    } else {
        let why = task_fails(api, &format!("{Q}/100/snapshot"), &[("snapname", "s1")]).await;
        assert!(why.contains("raw"), "{why}");
        let (_, snaps) = api.get(&format!("{Q}/100/snapshot")).await;
        assert_eq!(snaps["data"].as_array().map(Vec::len), Some(1), "{snaps}");
    }

    // full clone: its own copy of the data
    api.task_ok(
        &format!("{Q}/100/clone"),
        &[("newid", "110"), ("name", "full1"), ("full", "1")],
    )
    .await;
    let full_vol = volid(api, 110, "scsi0").await;
    assert_ne!(full_vol, vol);
    let (full_path, _) = volume(api, &full_vol).await;
    assert!(has_pattern(&full_path, format_of(&full_vol), 0xa1));

    // linked clone of a template: shares the template's data
    api.task_ok(&format!("{Q}/110/template"), &[]).await;
    api.task_ok(
        &format!("{Q}/110/clone"),
        &[("newid", "111"), ("name", "linked1"), ("full", "0")],
    )
    .await;
    let linked_vol = volid(api, 111, "scsi0").await;
    let (linked_path, _) = volume(api, &linked_vol).await;
    assert!(has_pattern(&linked_path, format_of(&linked_vol), 0xa1));
    if home == "local" {
        // a qcow2 overlay whose backing file is the template's disk
        assert_eq!(format_of(&linked_vol), "qcow2", "{linked_vol}");
        let info = Command::new("qemu-img")
            .args(["info", "-U", "--output=json"])
            .arg(&linked_path)
            .output()
            .expect("qemu-img info");
        let info: Value = serde_json::from_slice(&info.stdout).expect("json");
        let backing = info["backing-filename"].as_str().unwrap_or_default();
        assert!(
            backing.ends_with(full_path.file_name().unwrap().to_str().unwrap()),
            "{info}"
        );
    }
    // the template cannot lose its base disk while the linked clone exists
    let (code, body) = api.delete(&format!("{Q}/110")).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.to_string().contains("111"), "names the clone: {body}");
    assert!(full_path.exists());
    delete_vm(api, 111).await;
    assert!(!linked_path.exists(), "the linked clone's disk is gone");
    delete_vm(api, 110).await;
    assert!(!full_path.exists());

    // resize: +1G, then to 3G; the config and the image agree
    let r = format!("{Q}/100/resize");
    let (code, body) = api.put(&r, &[("disk", "scsi0"), ("size", "+1G")]).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        api.wait_task(body["data"].as_str().unwrap()).await,
        "OK",
        "resize +1G"
    );
    assert_eq!(volume(api, &vol).await.1, 2 << 30);
    assert!(
        config(api, 100).await["scsi0"]
            .as_str()
            .unwrap()
            .ends_with("size=2G")
    );
    api.task_ok(&r, &[("disk", "scsi0"), ("size", "3G")]).await;
    assert_eq!(volume(api, &vol).await.1, 3 << 30);
    assert!(has_pattern(&path, fmt, 0xa1), "data survives the resize");

    // move to the other storage (old volume kept as unused0), then back with delete=1
    if snapshots {
        // Proxmox refuses delete=1 while snapshots reference the disk
        let (code, body) = api
            .post(
                &format!("{Q}/100/move_disk"),
                &[("disk", "scsi0"), ("storage", other), ("delete", "1")],
            )
            .await;
        assert_eq!(code, 400, "{body}");
        let (code, body) = api.delete(&format!("{Q}/100/snapshot/s1")).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(api.wait_task(body["data"].as_str().unwrap()).await, "OK");
    }
    api.task_ok(
        &format!("{Q}/100/move_disk"),
        &[("disk", "scsi0"), ("storage", other)],
    )
    .await;
    let cfg = config(api, 100).await;
    let moved = volid(api, 100, "scsi0").await;
    assert!(moved.starts_with(&format!("{other}:")), "{cfg}");
    assert_eq!(cfg["unused0"], vol.as_str(), "{cfg}");
    let (moved_path, moved_size) = volume(api, &moved).await;
    assert_eq!(moved_size, 3 << 30);
    assert!(has_pattern(&moved_path, format_of(&moved), 0xa1));
    assert!(path.exists(), "the old volume is kept");

    api.task_ok(
        &format!("{Q}/100/move_disk"),
        &[
            ("disk", "scsi0"),
            ("storage", home),
            ("format", format),
            ("delete", "1"),
        ],
    )
    .await;
    let cfg = config(api, 100).await;
    let back = volid(api, 100, "scsi0").await;
    assert!(back.starts_with(&format!("{home}:")), "{cfg}");
    assert_eq!(format_of(&back), format);
    assert!(
        !moved_path.exists(),
        "delete=1 removed the moved-from volume"
    );
    assert_eq!(cfg["unused0"], vol.as_str(), "unused0 untouched: {cfg}");
    let (back_path, _) = volume(api, &back).await;
    assert!(has_pattern(&back_path, format, 0xa1), "pattern intact");

    // the VM boots with the moved disk attached
    api.task_ok(&format!("{Q}/100/status/start"), &[]).await;
    wait_ready(&env, 100).await;
    let before = config(api, 100).await;
    let files_before = files_under(back_path.parent().unwrap());
    let (code, body) = api
        .post(
            &format!("{Q}/100/move_disk"),
            &[("disk", "scsi0"), ("storage", other)],
        )
        .await;
    assert_eq!(code, 400, "move while running: {body}");
    assert!(body.to_string().contains("live move"), "{body}");
    let (code, body) = api
        .put(
            &format!("{Q}/100/resize"),
            &[("disk", "scsi0"), ("size", "+1G")],
        )
        .await;
    assert_eq!(code, 400, "resize while running: {body}");
    assert!(body.to_string().contains("running"), "{body}");
    assert_eq!(config(api, 100).await, before, "nothing changed");
    assert_eq!(files_under(back_path.parent().unwrap()), files_before);
    api.task_ok(&format!("{Q}/100/status/stop"), &[]).await;
    delete_vm(api, 100).await;
    assert!(
        !back_path.exists() && !path.exists(),
        "disks removed with the VM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_qcow2_disk_life() {
    scenario("dir_qcow2_disk_life", "local", "qcow2", "fast").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_raw_disk_life() {
    scenario("dir_raw_disk_life", "local", "raw", "fast").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_disk_life() {
    scenario("btrfs_disk_life", "fast", "raw", "local").await;
}

/// Bad requests are 400s that change neither the configuration nor the files; storages
/// appear in `/cluster/resources`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_disk_requests_change_nothing() {
    let Some((_fs, env, server)) = setup("bad_disk_requests_change_nothing").await else {
        return;
    };
    let api = &server.api;
    create_vm(api, 100, "bad", "local:1,format=qcow2").await;
    let local = gpve_api::datadir::DataDir::new(env.data()).local_storage();
    let before = config(api, 100).await;
    let files = files_under(&local);
    let r = format!("{Q}/100/resize");
    let m = format!("{Q}/100/move_disk");

    let (code, body) = api.put(&r, &[("disk", "scsi0"), ("size", "512M")]).await;
    assert_eq!(code, 400, "shrink: {body}");
    let msg = body["errors"]["size"].as_str().unwrap_or_default();
    assert!(
        msg.contains("shrinking") && msg.contains("1G"),
        "names the size: {body}"
    );
    let (code, body) = api.put(&r, &[("disk", "scsi5"), ("size", "+1G")]).await;
    assert_eq!(code, 400, "unknown disk: {body}");
    assert!(body["errors"]["disk"].is_string(), "{body}");
    let (code, body) = api.put(&r, &[("disk", "scsi0"), ("size", "-1G")]).await;
    assert_eq!(code, 400, "bad size: {body}");
    let (code, body) = api
        .post(&m, &[("disk", "scsi0"), ("storage", "nope")])
        .await;
    assert_eq!(code, 400, "missing storage: {body}");
    assert!(body.to_string().contains("does not exist"), "{body}");
    let (code, body) = api.post(&m, &[("disk", "net0"), ("storage", "fast")]).await;
    assert_eq!(code, 400, "not a disk: {body}");
    let (code, body) = api
        .post(
            &m,
            &[("disk", "scsi0"), ("storage", "fast"), ("format", "qcow2")],
        )
        .await;
    assert_eq!(code, 400, "btrfs holds raw only: {body}");
    let (code, body) = api
        .post(&m, &[("disk", "scsi0"), ("storage", "local")])
        .await;
    assert_eq!(code, 400, "already there: {body}");
    let (code, body) = api
        .post(
            &format!("{Q}/100/clone"),
            &[("newid", "120"), ("full", "0")],
        )
        .await;
    assert_eq!(code, 400, "linked clone of a non-template: {body}");
    assert!(body.to_string().contains("template"), "{body}");
    let (code, _) = api.get(&format!("{Q}/120/config")).await;
    assert_ne!(code, 200, "no VM 120 was left behind");
    assert_eq!(config(api, 100).await, before, "configuration unchanged");
    assert_eq!(files_under(&local), files, "files unchanged");

    // storages in /cluster/resources, with the type filter
    let (code, v) = api.get("/cluster/resources?type=storage").await;
    assert_eq!(code, 200, "{v}");
    let items = v["data"].as_array().expect("array");
    assert!(items.iter().all(|i| i["type"] == "storage"), "{v}");
    let fast = items
        .iter()
        .find(|i| i["id"] == format!("storage/{NODE}/fast"))
        .expect("fast listed");
    assert_eq!(fast["plugintype"], "btrfs");
    assert_eq!(fast["status"], "available");
    assert_eq!(fast["content"], "images");
    assert_eq!(fast["shared"], 0);
    assert!(
        fast["maxdisk"].as_u64().unwrap() > 0 && fast["maxdisk"].as_u64().unwrap() <= BTRFS_BYTES
    );
    assert!(fast["disk"].as_u64().is_some());
    let local_item = items
        .iter()
        .find(|i| i["id"] == format!("storage/{NODE}/local"))
        .expect("local listed");
    assert_eq!(local_item["plugintype"], "dir");
    let (_, all) = api.get("/cluster/resources").await;
    let kinds: Vec<&str> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["type"].as_str())
        .collect();
    assert!(kinds.contains(&"storage") && kinds.contains(&"qemu") && kinds.contains(&"node"));
    delete_vm(api, 100).await;
}

/// Benchmark, run explicitly (root, as the other tests):
/// `cargo test -p gpve-api --release --test vm_disks -- --ignored --nocapture bench_`.
/// Through the API and the VM actor: a full clone of a qcow2 disk holding 1 GiB of data
/// on dir storage (one driver copy), and moves dir qcow2 → btrfs raw → dir qcow2 (each an
/// export to a qcow2 staging file plus an import, so two copies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with make bench"]
async fn bench_full_clone_and_move_throughput() {
    let Some((_fs, _env, server)) = setup("bench_full_clone_and_move_throughput").await else {
        return;
    };
    let api = &server.api;
    create_vm(api, 100, "bench", "local:2,format=qcow2").await;
    let vol = volid(api, 100, "scsi0").await;
    let (path, _) = volume(api, &vol).await;
    qemu_io(&path, "qcow2", "write -P 90 0 1G");
    let data_mib = 1024.0;
    let timed = |what: &'static str, path: String, form: Vec<(&'static str, String)>| {
        let api = api.clone();
        async move {
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let t = std::time::Instant::now();
            api.task_ok(&path, &form).await;
            let s = t.elapsed().as_secs_f64();
            println!(
                "BENCH {what}: {s:.2} s for {data_mib} MiB of data = {:.0} MiB/s",
                data_mib / s
            );
        }
    };
    timed(
        "full clone, dir qcow2 -> dir qcow2",
        format!("{Q}/100/clone"),
        vec![("newid", "101".into()), ("full", "1".into())],
    )
    .await;
    timed(
        "move_disk, dir qcow2 -> btrfs raw",
        format!("{Q}/100/move_disk"),
        vec![
            ("disk", "scsi0".into()),
            ("storage", "fast".into()),
            ("delete", "1".into()),
        ],
    )
    .await;
    timed(
        "move_disk, btrfs raw -> dir qcow2",
        format!("{Q}/100/move_disk"),
        vec![
            ("disk", "scsi0".into()),
            ("storage", "local".into()),
            ("format", "qcow2".into()),
            ("delete", "1".into()),
        ],
    )
    .await;
    let back = volid(api, 100, "scsi0").await;
    let (back_path, _) = volume(api, &back).await;
    assert!(has_pattern(&back_path, "qcow2", 90));
    delete_vm(api, 101).await;
    delete_vm(api, 100).await;
}

/// `gpvectl vm resize`, `vm move-disk` and `vm clone --linked` against the real server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpvectl_resize_move_and_linked_clone() {
    let Some((_fs, env, server)) = setup("gpvectl_resize_move_and_linked_clone").await else {
        return;
    };
    let api = &server.api;
    create_vm(api, 100, "ctl-disks", "local:1,format=qcow2").await;
    let url = api.base.trim_end_matches("/api2/json").to_string();
    let fp = gpve_api::client::Fingerprint::of_pem_file(&env.data().join("cert.pem"))
        .expect("fingerprint");
    let ctl_config = env.dir.path().join("gpvectl.yaml");
    let ctl = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_gpvectl"))
            .args(args)
            .env("GPVE_CONFIG", &ctl_config)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn gpvectl");
        if let Some(mut input) = child.stdin.take() {
            let _ = input.write_all(stdin.as_bytes());
        }
        let out = child.wait_with_output().expect("gpvectl output");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, out) = ctl(
        &[
            "login",
            "--server",
            &url,
            "--user",
            "root@pam",
            "--password-stdin",
            "--fingerprint",
            &fp.to_string(),
        ],
        &format!("{}\n", vm_common::ROOT_PW),
    );
    assert!(ok, "{out}");
    let (ok, out) = ctl(&["vm", "resize", "--help"], "");
    assert!(
        ok && out.contains("+2G") && out.contains("shrinking"),
        "{out}"
    );

    let (ok, out) = ctl(&["vm", "resize", "ctl-disks", "scsi0", "+1G"], "");
    assert!(ok, "{out}");
    assert!(
        config(api, 100).await["scsi0"]
            .as_str()
            .unwrap()
            .ends_with("size=2G")
    );
    let (ok, out) = ctl(&["vm", "resize", "ctl-disks", "scsi0", "1G"], "");
    assert!(!ok && out.contains("shrinking"), "shrink refused: {out}");

    let (ok, out) = ctl(
        &["vm", "move-disk", "ctl-disks", "scsi0", "fast", "--delete"],
        "",
    );
    assert!(ok, "{out}");
    let cfg = config(api, 100).await;
    assert!(cfg["scsi0"].as_str().unwrap().starts_with("fast:"), "{cfg}");
    assert!(
        cfg.get("unused0").is_none(),
        "--delete keeps no unused0: {cfg}"
    );

    let (ok, out) = ctl(&["vm", "clone", "ctl-disks", "lc0", "--linked"], "");
    assert!(!ok && out.contains("template"), "not a template: {out}");
    api.task_ok(&format!("{Q}/100/template"), &[]).await;
    let (ok, out) = ctl(&["vm", "clone", "ctl-disks", "lc1", "--linked"], "");
    assert!(ok && out.contains("(linked)"), "{out}");
    let (code, list) = api.get(Q).await;
    assert_eq!(code, 200);
    let lc1 = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "lc1")
        .and_then(|v| v["vmid"].as_u64())
        .expect("lc1 listed") as u32;
    assert!(volid(api, lc1, "scsi0").await.starts_with("fast:"));
    delete_vm(api, lc1).await;
    delete_vm(api, 100).await;
}
