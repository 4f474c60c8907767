//! Storage driver benchmark (not a timed test; run it by hand, as root):
//!
//!     cargo bench -p gpve-storage-drivers --bench storage
//!
//! Measures, through the driver API (so every figure includes the checks, fsyncs and
//! atomic renames the driver does):
//! - linked clone of a 10 GiB qcow2 holding 256 MiB of data (target < 100 ms);
//! - btrfs snapshot and linked clone of a 10 GiB disk holding 256 MiB (target < 100 ms);
//! - full clone throughput in MiB/s: dir qcow2 → raw, and btrfs raw → raw, on a 1 GiB
//!   volume written in full.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gpve_storage_drivers::btrfs::{BtrfsConfig, BtrfsDriver};
use gpve_storage_drivers::dir::{DirConfig, DirDriver};
use gpve_storage_drivers::loopfs::LoopBtrfs;
use gpve_storage_drivers::{CloneMode, SnapshotName, StorageDriver, VolumeFormat, VolumeId};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
const ROUNDS: u32 = 20;

fn main() {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run()) {
        eprintln!("benchmark failed: {e}");
        std::process::exit(1);
    }
}

fn qemu_io_write(path: &Path, format: VolumeFormat, len: u64) -> Result<(), String> {
    // 64 MiB per request keeps qemu-io's buffer small.
    let mut args = vec!["-f".to_owned(), format.to_string()];
    let chunk = 64 * MIB;
    let mut off = 0;
    while off < len {
        args.push("-c".into());
        args.push(format!("write -P 90 {off} {}", chunk.min(len - off)));
        off += chunk;
    }
    let out = Command::new("qemu-io")
        .args(&args)
        .arg(path)
        .output()
        .map_err(|e| format!("qemu-io: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn summary(name: &str, mut samples: Vec<Duration>, target_ms: Option<f64>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = samples[samples.len() / 2];
    let verdict = match target_ms {
        Some(t) if ms(median) < t => format!(" (target < {t} ms: met)"),
        Some(t) => format!(" (target < {t} ms: MISSED)"),
        None => String::new(),
    };
    println!(
        "{name}: n={} min={:.1} ms median={:.1} ms max={:.1} ms{verdict}",
        samples.len(),
        ms(samples[0]),
        ms(median),
        ms(samples[samples.len() - 1]),
    );
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let scratch = tempfile::Builder::new()
        .prefix("gpve-bench-")
        .tempdir_in("/var/tmp")?;
    println!(
        "scratch: {} (qemu-img {})",
        scratch.path().display(),
        qemu_img_version()
    );

    // --- dir / qcow2 ---
    let dir = DirDriver::new(DirConfig::new("bench", scratch.path().join("dir"), "bench"))?;
    dir.create_pool().await?;
    dir.mount_pool().await?;
    let base = VolumeId::disk("bench", 100, 0, Some(VolumeFormat::Qcow2))?;
    dir.create_volume(&base, 10 * GIB).await?;
    let base_path = location(&dir, &base).await?;
    qemu_io_write(&base_path, VolumeFormat::Qcow2, 256 * MIB)?;
    let mut samples = Vec::new();
    for i in 0..ROUNDS {
        let target = VolumeId::disk("bench", 200 + i, 0, Some(VolumeFormat::Qcow2))?;
        let t = Instant::now();
        dir.clone_volume(&base, &target, CloneMode::Linked).await?;
        samples.push(t.elapsed());
    }
    summary(
        "dir: linked clone of 10 GiB qcow2 (256 MiB data)",
        samples,
        Some(100.0),
    );

    let full = VolumeId::disk("bench", 101, 0, Some(VolumeFormat::Qcow2))?;
    dir.create_volume(&full, GIB).await?;
    qemu_io_write(&location(&dir, &full).await?, VolumeFormat::Qcow2, GIB)?;
    let target = VolumeId::disk("bench", 101, 1, Some(VolumeFormat::Raw))?;
    let t = Instant::now();
    dir.clone_volume(&full, &target, CloneMode::Full).await?;
    let s = t.elapsed().as_secs_f64();
    println!(
        "dir: full clone qcow2 -> raw, 1 GiB written: {:.2} s = {:.0} MiB/s",
        s,
        1024.0 / s
    );

    // --- btrfs ---
    let fs = match LoopBtrfs::new(16 * GIB) {
        Ok(fs) => fs,
        Err(e) => {
            println!("btrfs: skipped: {e}");
            return Ok(());
        }
    };
    let bt = BtrfsDriver::new(BtrfsConfig::new(
        "bench-btrfs",
        fs.path().join("pve"),
        "bench",
    ))?;
    bt.create_pool().await?;
    bt.mount_pool().await?;
    let bbase = VolumeId::disk("bench-btrfs", 100, 0, None)?;
    bt.create_volume(&bbase, 10 * GIB).await?;
    qemu_io_write(&location(&bt, &bbase).await?, VolumeFormat::Raw, 256 * MIB)?;
    let mut snaps = Vec::new();
    let mut clones = Vec::new();
    for i in 0..ROUNDS {
        let name = SnapshotName::new(&format!("s{i}"))?;
        let t = Instant::now();
        bt.create_snapshot(&bbase, &name).await?;
        snaps.push(t.elapsed());
        let target = VolumeId::disk("bench-btrfs", 200 + i, 0, None)?;
        let t = Instant::now();
        bt.clone_volume(&bbase, &target, CloneMode::Linked).await?;
        clones.push(t.elapsed());
    }
    summary(
        "btrfs: snapshot of 10 GiB disk (256 MiB data)",
        snaps,
        Some(100.0),
    );
    summary(
        "btrfs: linked clone of 10 GiB disk (256 MiB data)",
        clones,
        Some(100.0),
    );

    let bfull = VolumeId::disk("bench-btrfs", 101, 0, None)?;
    bt.create_volume(&bfull, GIB).await?;
    qemu_io_write(&location(&bt, &bfull).await?, VolumeFormat::Raw, GIB)?;
    let target = VolumeId::disk("bench-btrfs", 101, 1, None)?;
    let t = Instant::now();
    bt.clone_volume(&bfull, &target, CloneMode::Full).await?;
    let s = t.elapsed().as_secs_f64();
    println!(
        "btrfs: full clone raw -> raw, 1 GiB written: {:.2} s = {:.0} MiB/s",
        s,
        1024.0 / s
    );
    Ok(())
}

async fn location(
    d: &dyn StorageDriver,
    id: &VolumeId,
) -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
    let loc = d.volume_location(id).await?;
    Ok(loc.host_path().ok_or("not a file volume")?.to_owned())
}

fn qemu_img_version() -> String {
    Command::new("qemu-img")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(2)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".into())
}
