//! Fault injection and determinism of the simulated hypervisor (virtual time).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gpve_hypervisor::{
    ExitCause, Hypervisor, HypervisorError, QemuSpec, SimConfig, SimHost, SimHypervisor,
    TokioClock, VmEvent, VmStatus,
};

fn sim(host: &SimHost) -> SimHypervisor {
    SimHypervisor::new(host.clone(), Arc::new(TokioClock), SimConfig::default())
}

fn spec(vmid: u32) -> QemuSpec {
    QemuSpec::new(vmid, format!("sim{vmid}"))
}

fn dir(vmid: u32) -> PathBuf {
    Path::new("/sim/run").join(vmid.to_string())
}

#[tokio::test(start_paused = true)]
async fn start_takes_the_configured_latency() {
    let host = SimHost::new();
    let hv = SimHypervisor::new(
        host.clone(),
        Arc::new(TokioClock),
        SimConfig {
            start_latency_ms: 700,
            ..SimConfig::default()
        },
    );
    let t0 = tokio::time::Instant::now();
    let vm = hv.start(&spec(100), &dir(100)).await.expect("start");
    assert_eq!(t0.elapsed(), Duration::from_millis(700));
    assert_eq!(host.running(), vec![(100, dir(100))]);
    assert_eq!(vm.status().await.expect("status"), VmStatus::Running);
}

#[tokio::test(start_paused = true)]
async fn crash_is_an_exit_without_shutdown() {
    let host = SimHost::new();
    let vm = sim(&host)
        .start(&spec(101), &dir(101))
        .await
        .expect("start");
    let mut events = vm.subscribe();
    assert_eq!(host.crash(101), 1);
    let exit = vm.wait_exit().await;
    assert_eq!(exit.cause, ExitCause::Crashed);
    assert_eq!(events.recv().await.expect("event"), VmEvent::Exited(exit));
    assert!(host.running().is_empty());
    assert!(matches!(
        vm.status().await,
        Err(HypervisorError::Exited { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn hung_vm_times_out_and_stop_kills_it() {
    let host = SimHost::new();
    let vm = sim(&host)
        .start(&spec(102), &dir(102))
        .await
        .expect("start");
    host.set_hung(102, true);
    let t0 = tokio::time::Instant::now();
    match vm.status().await {
        Err(HypervisorError::Qmp { .. }) => {}
        other => panic!("expected a QMP timeout, got {other:?}"),
    }
    assert_eq!(
        t0.elapsed(),
        Duration::from_millis(SimConfig::default().command_timeout_ms)
    );
    let t0 = tokio::time::Instant::now();
    let exit = vm.stop(2_000).await.expect("stop");
    assert_eq!(exit.cause, ExitCause::Killed);
    assert_eq!(t0.elapsed(), Duration::from_millis(2_000));
}

#[tokio::test(start_paused = true)]
async fn guest_ignoring_acpi_stays_up() {
    let host = SimHost::new();
    let vm = sim(&host)
        .start(&spec(103), &dir(103))
        .await
        .expect("start");
    host.set_ignore_acpi(103, true);
    vm.powerdown().await.expect("powerdown");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(vm.exit(), None);
    assert_eq!(
        vm.stop(1_000).await.expect("stop").cause,
        ExitCause::HostQuit
    );
}

#[tokio::test(start_paused = true)]
async fn injected_start_failure_reports_stderr_once() {
    let host = SimHost::new();
    let hv = sim(&host);
    host.fail_next_start(104, "could not open disk image");
    match hv.start(&spec(104), &dir(104)).await {
        Err(HypervisorError::StartFailed { stderr, .. }) => {
            assert_eq!(stderr, "could not open disk image");
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("start should have failed"),
    }
    assert!(host.running().is_empty());
    hv.start(&spec(104), &dir(104)).await.expect("second start");
}

#[tokio::test(start_paused = true)]
async fn invalid_spec_is_rejected() {
    let host = SimHost::new();
    let mut bad = spec(105);
    bad.memory_mib = 0;
    assert!(matches!(
        sim(&host).start(&bad, &dir(105)).await,
        Err(HypervisorError::Spec(_))
    ));
}

/// The same script gives the same pids, events and virtual timings.
#[test]
fn runs_are_deterministic() {
    fn run() -> Vec<String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        rt.block_on(async {
            let host = SimHost::new();
            let hv = sim(&host);
            let t0 = tokio::time::Instant::now();
            let mut trace = Vec::new();
            for vmid in [110, 111, 112] {
                let vm = hv.start(&spec(vmid), &dir(vmid)).await.expect("start");
                let mut events = vm.subscribe();
                vm.pause().await.expect("pause");
                vm.powerdown().await.expect("powerdown");
                let exit = vm.wait_exit().await;
                while let Ok(ev) = events.try_recv() {
                    trace.push(format!("{vmid} {ev:?}"));
                }
                trace.push(format!("{:?} at {:?}", exit, t0.elapsed()));
            }
            trace
        })
    }
    let a = run();
    assert_eq!(a, run());
    assert!(a.iter().any(|l| l.contains("pid: 10002")), "{a:?}");
}
