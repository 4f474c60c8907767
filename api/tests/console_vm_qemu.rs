//! The final target: a VM actor owning a real QEMU (TCG) is restarted by its
//! supervisor after QEMU is killed with SIGKILL, and that shows in `/api/v1/actors`
//! (describe: restart count, last failure), in the event stream (failed → restarted), in
//! `/metrics`, and on the `gpvectl console` screen (tmux; that part is skipped, saying
//! so, without tmux).

mod vm_common;

use std::process::Command;
use std::time::{Duration, Instant};

use gpve_api::client::{ActorView, Client, Fingerprint, WatchLine};
use gpve_supervisor::EventKind;
use vm_common::*;

const RESTART_WAIT_MS: u64 = 60_000;

fn tmux(socket: &str, args: &[&str]) -> std::process::Output {
    Command::new("tmux")
        .arg("-L")
        .arg(socket)
        .args(args)
        .output()
        .expect("run tmux")
}

fn screen_field(screen: &str, label: &str) -> Option<String> {
    screen.lines().find_map(|l| {
        let rest = &l[l.find(label)? + label.len()..];
        rest.split_whitespace().next().map(str::to_string)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_qemu_restarts_the_vm_actor_visibly() {
    let g = guest().await;
    let env = Env::new().await;
    let srv = Server::start(&env).await;
    let api = srv.api.clone();
    let q = format!("/nodes/{NODE}/qemu");
    let args = guest_args(&g);
    let (code, body) = api
        .post(
            &q,
            &[
                ("vmid", "100"),
                ("name", "obs1"),
                ("memory", "128"),
                ("cores", "1"),
                ("kvm", "0"),
                ("serial0", "socket"),
                ("args", &args),
            ],
        )
        .await;
    assert_eq!(code, 200, "create: {body}");
    assert_eq!(
        api.wait_task(body["data"].as_str().expect("upid")).await,
        "OK"
    );
    api.task_ok(&format!("{q}/100/status/start"), &[]).await;
    wait_ready(&env, 100).await;
    let pid = api.status(100).await["pid"].as_u64().expect("pid");

    let url = api.base.trim_end_matches("/api2/json").to_string();
    let fp = Fingerprint::of_pem_file(&env.data().join("cert.pem")).expect("fingerprint");
    let client = Client::builder(&url)
        .fingerprint(fp)
        .build()
        .expect("client");
    client.login("root@pam", ROOT_PW).await.expect("login");

    // The VM actor is in the tree.
    let list = client.actors(None).await.expect("tree");
    let vm: ActorView = list.nodes[0]
        .roots
        .iter()
        .flat_map(|r| r.flatten())
        .map(|(_, a)| a.clone())
        .find(|a| a.kind == "vm" && a.id == "vm:100")
        .expect("a vm:100 actor in the tree");
    assert_eq!(vm.restarts, 0);
    assert_eq!(format!("{:?}", vm.state), "Running");
    let path = vm.path.clone();

    // The console, filtered to the VM actor.
    let socket = format!("gpve-console-vm-{}", std::process::id());
    let has_tmux = Command::new("tmux").arg("-V").output().is_ok();
    let work = tempfile::tempdir().expect("tempdir");
    if has_tmux {
        let config = work.path().join("gpvectl.yaml");
        let mut login = Command::new(env!("CARGO_BIN_EXE_gpvectl"))
            .args([
                "login",
                "--server",
                &url,
                "--user",
                "root@pam",
                "--password-stdin",
            ])
            .args(["--fingerprint", &fp.to_string()])
            .env("GPVE_CONFIG", &config)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("gpvectl login");
        if let Some(mut input) = login.stdin.take() {
            use std::io::Write;
            let _ = input.write_all(format!("{ROOT_PW}\n").as_bytes());
        }
        assert!(login.wait().expect("login exit").success());
        let command = format!(
            "GPVE_CONFIG='{}' '{}' console",
            config.display(),
            env!("CARGO_BIN_EXE_gpvectl")
        );
        let out = tmux(
            &socket,
            &[
                "new-session",
                "-d",
                "-s",
                "c",
                "-x",
                "160",
                "-y",
                "50",
                &command,
            ],
        );
        assert!(out.status.success());
        let deadline = Instant::now() + Duration::from_millis(RESTART_WAIT_MS);
        loop {
            let out = tmux(&socket, &["capture-pane", "-p", "-t", "c"]);
            let screen = String::from_utf8_lossy(&out.stdout).into_owned();
            if screen.contains(" connected") && screen.contains("vm:100") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the console never came up:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tmux(&socket, &["send-keys", "-t", "c", "/"]);
        tmux(&socket, &["send-keys", "-t", "c", "-l", "vm:100"]);
        tmux(&socket, &["send-keys", "-t", "c", "Enter"]);
    } else {
        println!("SKIPPED (screen part): tmux is not installed (apt-get install -y tmux)");
    }

    // Kill QEMU; watch the stream for failed → restarted.
    let mut events = client.actor_events(None).await.expect("events");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 QEMU");
    let deadline = Instant::now() + Duration::from_millis(RESTART_WAIT_MS);
    let mut failed = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = tokio::time::timeout(left, events.next())
            .await
            .expect("failed and restarted events in time")
            .expect("stream ok")
            .expect("stream open");
        let WatchLine::Actor { event, .. } = line else {
            continue;
        };
        if event.path != path {
            continue;
        }
        match event.kind {
            EventKind::Failed { reason } => failed = Some(reason),
            EventKind::Restarted { restarts } => {
                assert_eq!(restarts, 1);
                break;
            }
            _ => {}
        }
    }
    let reason = failed.expect("a failed event before the restart");
    println!("VM actor failure reason: {reason}");

    let d = client.actor(&path).await.expect("describe");
    assert_eq!(d.actor.restarts, 1);
    assert!(d.actor.last_failure.is_some(), "{d:?}");
    assert_eq!(d.recent_restarts.len(), 1);
    let metrics = client.metrics_text().await.expect("metrics");
    assert!(
        metrics.contains(&format!(
            "gpve_actor_restarts_total{{node=\"{NODE}\",path=\"{path}\",kind=\"vm\"}} 1"
        )),
        "restart counter of {path} in /metrics"
    );

    if has_tmux {
        let deadline = Instant::now() + Duration::from_millis(RESTART_WAIT_MS);
        let screen = loop {
            let out = tmux(&socket, &["capture-pane", "-p", "-t", "c"]);
            let screen = String::from_utf8_lossy(&out.stdout).into_owned();
            if screen_field(&screen, "Restarts:").as_deref() == Some("1")
                && screen.contains(&format!("{path} restarted (restarts=1)"))
            {
                break screen;
            }
            assert!(
                Instant::now() < deadline,
                "the console never showed the VM restart:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(screen.contains(&format!("{path} FAILED")), "{screen}");
        tmux(&socket, &["send-keys", "-t", "c", "q"]);
        let _ = tmux(&socket, &["kill-server"]);
    }

    // QEMU runs again; stop it so nothing outlives the test.
    api.task_ok(&format!("{q}/100/status/stop"), &[]).await;
    srv.stop();
}
