//! Real QEMU under TCG, booting the test guest.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{BOOT_TIMEOUT_MS, echo_roundtrip, next_event, run_dir, wait_ready};
use gpve_hypervisor::test_guest::{self, READY_MARKER};
use gpve_hypervisor::{
    DiskBus, DiskFormat, DiskSpec, ExitCause, Hypervisor, HypervisorError, Qemu, RunPaths, VmEvent,
    VmStatus,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn pid_of(raw: u32) -> Pid {
    Pid::from_raw(i32::try_from(raw).expect("pid fits in i32"))
}

fn ready_count(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(READY_MARKER)
        .count()
}

/// Boot, serial echo, reset (the guest boots again), detach and re-adopt from a
/// fresh `Qemu` (an agent restart), serial still answers, stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_answers_resets_and_survives_agent_restart() {
    let guest = common::guest();
    let root = run_dir();
    let dir = root.path().join("vm");
    let spec = test_guest::spec(4201, &guest);

    let started = Instant::now();
    let vm = Qemu::default().start(&spec, &dir).await.expect("start");
    let qmp_ready = started.elapsed();
    wait_ready(vm.handle()).await;
    eprintln!(
        "test guest: QMP up after {} ms, {READY_MARKER} after {} ms",
        qmp_ready.as_millis(),
        started.elapsed().as_millis()
    );
    assert_eq!(vm.status().await.expect("status"), VmStatus::Running);
    echo_roundtrip(&vm.handle().serial_socket, 41).await;

    let mut events = vm.subscribe();
    vm.reset().await.expect("reset");
    assert_eq!(
        next_event(&mut events, "Reset").await,
        VmEvent::Reset { guest: false }
    );
    let deadline = Instant::now() + Duration::from_millis(BOOT_TIMEOUT_MS);
    while ready_count(&vm.handle().serial_log) < 2 {
        assert!(
            Instant::now() < deadline,
            "the guest did not boot again after reset"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(vm.status().await.expect("status"), VmStatus::Running);

    let pid = vm.handle().pid;
    drop(events);
    drop(vm);
    let vm = Qemu::default()
        .adopt(4201, &dir)
        .await
        .expect("adopt")
        .expect("QEMU survived the detach");
    assert_eq!(vm.handle().pid, pid);
    echo_roundtrip(&vm.handle().serial_socket, 99).await;
    let mut events = vm.subscribe();
    vm.pause().await.expect("pause");
    assert_eq!(next_event(&mut events, "Stopped").await, VmEvent::Stopped);
    vm.resume().await.expect("resume");
    assert_eq!(next_event(&mut events, "Resumed").await, VmEvent::Resumed);

    let exit = vm.stop(10_000).await.expect("stop");
    assert_eq!(exit.cause, ExitCause::HostQuit);
    let paths = RunPaths::new(&dir);
    assert!(!paths.pidfile.exists() && !paths.qmp_socket.exists());
}

/// Someone else SIGKILLs QEMU: the exit is observed as a crash and cleaned up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_kill_is_observed_as_crash() {
    let guest = common::guest();
    let root = run_dir();
    let dir = root.path().join("vm");
    let vm = Qemu::default()
        .start(&test_guest::spec(4202, &guest), &dir)
        .await
        .expect("start");
    wait_ready(vm.handle()).await;
    let mut events = vm.subscribe();
    kill(pid_of(vm.handle().pid), Signal::SIGKILL).expect("kill -9 QEMU");
    let exit = tokio::time::timeout(Duration::from_secs(10), vm.wait_exit())
        .await
        .expect("the exit is noticed");
    assert_eq!(exit.cause, ExitCause::Crashed);
    assert_eq!(
        next_event(&mut events, "Exited").await,
        VmEvent::Exited(exit)
    );
    assert!(matches!(
        vm.status().await,
        Err(HypervisorError::Exited { .. })
    ));
    let paths = RunPaths::new(&dir);
    assert!(!paths.pidfile.exists(), "pidfile removed");
    assert!(!paths.qmp_socket.exists(), "QMP socket removed");
    assert!(
        Qemu::default()
            .adopt(4202, &dir)
            .await
            .expect("adopt")
            .is_none()
    );
}

/// A QEMU that ignores `quit` (here: SIGSTOPped) is SIGKILLed after the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_falls_back_to_sigkill() {
    let guest = common::guest();
    let root = run_dir();
    let mut spec = test_guest::spec(4203, &guest);
    spec.start_paused = true;
    let vm = Qemu::default()
        .start(&spec, &root.path().join("vm"))
        .await
        .expect("start");
    assert_eq!(vm.status().await.expect("status"), VmStatus::Prelaunch);
    kill(pid_of(vm.handle().pid), Signal::SIGSTOP).expect("SIGSTOP QEMU");
    let started = Instant::now();
    let exit = vm.stop(500).await.expect("stop");
    assert_eq!(exit.cause, ExitCause::Killed);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500),
        "killed before the timeout: {took:?}"
    );
    // The stop timeout bounds the whole stop, not only the wait after quit.
    assert!(took < Duration::from_millis(3_000), "stop took {took:?}");
}

/// Stale run files (dead pid, or a pid that is not our QEMU) are removed, and a
/// new QEMU starts in their place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pidfile_is_cleaned() {
    let guest = common::guest();
    let root = run_dir();
    let dir = root.path().join("vm");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let paths = RunPaths::new(&dir);
    let dead = std::process::Command::new("true")
        .spawn()
        .and_then(|mut c| c.wait().map(|_| c.id()))
        .expect("run true");
    for pid in [dead, std::process::id()] {
        std::fs::write(&paths.pidfile, format!("{pid}\n")).expect("write pidfile");
        std::fs::write(&paths.qmp_socket, b"").expect("fake socket");
        std::fs::write(&paths.serial_socket, b"").expect("fake socket");
        let adopted = Qemu::default().adopt(4204, &dir).await.expect("adopt");
        assert!(adopted.is_none(), "pid {pid} is not our QEMU");
        assert!(!paths.pidfile.exists() && !paths.qmp_socket.exists());
        assert!(!paths.serial_socket.exists());
    }
    assert!(
        Qemu::default()
            .adopt(4204, &dir)
            .await
            .expect("adopt")
            .is_none()
    );

    std::fs::write(&paths.pidfile, format!("{}\n", std::process::id())).expect("pidfile");
    let mut spec = test_guest::spec(4204, &guest);
    spec.start_paused = true;
    let vm = Qemu::default()
        .start(&spec, &dir)
        .await
        .expect("start over stale files");
    assert_ne!(vm.handle().pid, std::process::id());
    assert_eq!(vm.kill().await.expect("kill").cause, ExitCause::Killed);
}

/// QEMU's own error reaches the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_failure_includes_qemu_stderr() {
    let guest = common::guest();
    let root = run_dir();
    let mut spec = test_guest::spec(4205, &guest);
    spec.disks.push(DiskSpec {
        bus: DiskBus::Virtio,
        slot: 0,
        path: "/nonexistent/gpve-disk.raw".into(),
        format: DiskFormat::Raw,
    });
    match Qemu::default().start(&spec, &root.path().join("vm")).await {
        Err(HypervisorError::StartFailed { stderr, .. }) => {
            assert!(
                stderr.contains("/nonexistent/gpve-disk.raw"),
                "stderr: {stderr}"
            );
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("QEMU started with a missing disk"),
    }
    let paths = RunPaths::new(&root.path().join("vm"));
    assert!(!paths.pidfile.exists());
}
