//! Shared helpers for tests that boot the real test guest.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use gpve_hypervisor::test_guest::{self, TestGuest};
use gpve_hypervisor::{VmEvent, VmHandle};
use tokio::sync::broadcast;

/// Generous for TCG on a loaded 2-core machine; a boot takes about 2-5 s here.
pub const BOOT_TIMEOUT_MS: u64 = 60_000;
pub const EVENT_TIMEOUT_MS: u64 = 20_000;
pub const SERIAL_TIMEOUT_MS: u64 = 20_000;

/// Builds the test guest once per test binary (the script itself is idempotent).
pub fn guest() -> TestGuest {
    static GUEST: OnceLock<TestGuest> = OnceLock::new();
    GUEST
        .get_or_init(|| {
            let dir = std::env::var_os("GPVE_TEST_GUEST_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(test_guest::DEFAULT_CACHE_DIR));
            match test_guest::ensure(&dir) {
                Ok(g) => g,
                Err(e) => panic!(
                    "cannot build the test guest: {e}: {:?}",
                    std::error::Error::source(&e)
                ),
            }
        })
        .clone()
}

pub async fn wait_ready(handle: &VmHandle) {
    if let Err(e) = test_guest::wait_for_log(
        &handle.serial_log,
        test_guest::READY_MARKER,
        BOOT_TIMEOUT_MS,
    )
    .await
    {
        panic!("VM {} never booted: {e}", handle.vmid);
    }
}

/// Types a shell command on the serial console and waits for its evaluated result (the
/// shell echoes what we type; only the result proves the guest ran it).
pub async fn echo_roundtrip(serial_socket: &Path, n: u32) {
    let mut console = test_guest::SerialConsole::connect(serial_socket)
        .await
        .expect("connect to the serial console");
    console
        .send_line(&format!("echo gpve-$(({n}+1))"))
        .await
        .expect("type into the serial console");
    console
        .wait_for(&format!("gpve-{}", n + 1), SERIAL_TIMEOUT_MS)
        .await
        .expect("the guest answers on its serial console");
}

/// The next lifecycle event, skipping QMP events this test does not model.
pub async fn next_event(rx: &mut broadcast::Receiver<VmEvent>, what: &str) -> VmEvent {
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(VmEvent::Other { .. }) => continue,
                Ok(ev) => return ev,
                Err(e) => panic!("event stream failed waiting for {what}: {e}"),
            }
        }
    };
    match tokio::time::timeout(Duration::from_millis(EVENT_TIMEOUT_MS), wait).await {
        Ok(ev) => ev,
        Err(_) => panic!("no {what} event within {EVENT_TIMEOUT_MS} ms"),
    }
}

/// A temp dir holding run dirs; on drop (also when a test panics) it SIGKILLs any
/// QEMU still recorded in a `*/qemu.pid` below it, since daemonized QEMUs would
/// otherwise outlive the test.
pub struct RunRoot {
    dir: tempfile::TempDir,
}

impl RunRoot {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RunRoot {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        for entry in entries.flatten() {
            let pidfile = entry.path().join("qemu.pid");
            let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            // Only a QEMU started with this very pidfile.
            if String::from_utf8_lossy(&cmdline).contains(&*pidfile.to_string_lossy()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

pub fn run_dir() -> RunRoot {
    // Unix socket paths are limited to 108 bytes: keep run dirs short.
    match tempfile::Builder::new()
        .prefix("gpve-hv")
        .tempdir_in("/tmp")
    {
        Ok(dir) => RunRoot { dir },
        Err(e) => panic!("cannot create a temp run dir: {e}"),
    }
}
