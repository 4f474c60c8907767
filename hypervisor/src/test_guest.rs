//! The test guest (Debian cloud kernel + busybox initramfs, built by
//! `scripts/build-test-guest.sh`) and helpers to talk to its serial console.
//! Used by this crate's tests and by other crates' tests that boot real VMs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::spec::{Accel, DirectBoot, QemuSpec};

/// Printed by the guest's init on ttyS0 once it is up.
pub const READY_MARKER: &str = "GPVE-TEST-GUEST-READY";
/// Printed by the guest just before it powers off on an ACPI power-button press.
pub const POWEROFF_MARKER: &str = "GPVE-TEST-GUEST-POWEROFF";
/// Printed before [`READY_MARKER`] once eth0 has the address given on the kernel command
/// line as `gpve.ip=ADDR/PREFIX` (see [`NET_ARG`]).
pub const NET_MARKER: &str = "GPVE-TEST-GUEST-NET";
/// Kernel command-line key the guest's init reads to configure eth0.
pub const NET_ARG: &str = "gpve.ip";
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/gpve/test-guest";
/// The Debian cloud kernel does not boot in 64 MiB (it hangs silently while
/// decompressing), so the test guest gets 128 MiB.
pub const TEST_GUEST_MEMORY_MIB: u64 = 128;
const SERIAL_POLL_MS: u64 = 20;
const SERIAL_READ_MAX_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestGuest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TestGuestError {
    #[error("cannot run {script}")]
    Run {
        script: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{script} failed ({status}): {stderr}")]
    Failed {
        script: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("serial console I/O failed")]
    Io(#[from] std::io::Error),
    #[error(
        "{wanted:?} did not appear on the serial console within {timeout_ms} ms; last output: {tail:?}"
    )]
    SerialTimeout {
        wanted: String,
        timeout_ms: u64,
        tail: String,
    },
}

/// The build script in this repository.
pub fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-test-guest.sh")
}

/// Builds the guest into `cache_dir` unless it is already there (blocking).
pub fn ensure(cache_dir: &Path) -> Result<TestGuest, TestGuestError> {
    let script = script_path();
    let out = std::process::Command::new("sh")
        .arg(&script)
        .arg(cache_dir)
        .output()
        .map_err(|source| TestGuestError::Run {
            script: script.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(TestGuestError::Failed {
            script,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(TestGuest {
        kernel: cache_dir.join("vmlinuz"),
        initrd: cache_dir.join("initramfs.gz"),
    })
}

/// A spec that boots the test guest under TCG (KVM here is nested PVM, see DESIGN.md).
pub fn spec(vmid: u32, guest: &TestGuest) -> QemuSpec {
    let mut spec = QemuSpec::new(vmid, format!("test{vmid}"));
    spec.memory_mib = TEST_GUEST_MEMORY_MIB;
    spec.accel = Accel::Tcg;
    spec.direct_boot = Some(DirectBoot {
        kernel: guest.kernel.clone(),
        initrd: Some(guest.initrd.clone()),
        append: "console=ttyS0 quiet panic=-1".into(),
    });
    spec
}

fn tail(text: &str) -> String {
    let start = text.len().saturating_sub(400);
    let mut i = start;
    while !text.is_char_boundary(i) {
        i += 1;
    }
    text[i..].to_string()
}

/// Waits until `wanted` appears in the serial log file (QEMU writes everything the
/// guest prints there, whether or not a client is connected).
pub async fn wait_for_log(log: &Path, wanted: &str, timeout_ms: u64) -> Result<(), TestGuestError> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        let text = tokio::fs::read(log)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if text.contains(wanted) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(TestGuestError::SerialTimeout {
                wanted: wanted.into(),
                timeout_ms,
                tail: tail(&text),
            });
        }
        tokio::time::sleep(Duration::from_millis(SERIAL_POLL_MS)).await;
    }
}

/// An interactive connection to the guest's serial console socket.
/// QEMU serves one client at a time: drop it before another connects.
pub struct SerialConsole {
    stream: UnixStream,
    seen: String,
}

impl SerialConsole {
    pub async fn connect(socket: &Path) -> Result<Self, TestGuestError> {
        Ok(SerialConsole {
            stream: UnixStream::connect(socket).await?,
            seen: String::new(),
        })
    }

    pub async fn send_line(&mut self, line: &str) -> Result<(), TestGuestError> {
        self.stream.write_all(line.as_bytes()).await?;
        self.stream.write_all(b"\n").await?;
        Ok(())
    }

    /// Reads until `wanted` has been received since the last successful wait.
    pub async fn wait_for(&mut self, wanted: &str, timeout_ms: u64) -> Result<(), TestGuestError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        let mut buf = [0u8; 4096];
        loop {
            if let Some(i) = self.seen.find(wanted) {
                self.seen.drain(..i + wanted.len());
                return Ok(());
            }
            let timeout = || TestGuestError::SerialTimeout {
                wanted: wanted.into(),
                timeout_ms,
                tail: tail(&self.seen),
            };
            let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => return Err(timeout()),
                Ok(r) => r?,
            };
            if n == 0 {
                return Err(timeout());
            }
            self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if self.seen.len() > SERIAL_READ_MAX_BYTES {
                let keep = tail(&self.seen);
                self.seen = keep;
            }
        }
    }
}
