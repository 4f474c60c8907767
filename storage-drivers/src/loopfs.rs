//! Real, throw-away filesystems for tests and benchmarks: a loop-mounted btrfs image and a
//! size-limited tmpfs (a "tiny disk" for out-of-space tests). Both need root; they are
//! unmounted and removed in `Drop`, including when a test panics.
//!
//! These are real filesystems, not fakes; they live in the library (not under `tests/`)
//! so integration tests, unit tests and the benchmark share one implementation.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum LoopFsError {
    #[error("{0}")]
    Unavailable(String),
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("could not prepare the scratch directory")]
    Io(#[from] std::io::Error),
}

fn run(program: &str, args: &[&str]) -> Result<(), LoopFsError> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        LoopFsError::Unavailable(format!("{program} cannot be run ({e}); install it"))
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LoopFsError::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn require_root() -> Result<(), LoopFsError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LoopFsError::Unavailable("mounting needs root".into()))
    }
}

fn unmount(mnt: &Path) {
    let Some(m) = mnt.to_str() else { return };
    if run("umount", &[m]).is_err() {
        // Busy (a leaked fd): detach lazily so the loop device is freed when it closes.
        let _ = run("umount", &["-l", m]);
    }
}

/// A btrfs filesystem in an image file, loop-mounted in a temporary directory.
#[derive(Debug)]
pub struct LoopBtrfs {
    mount_point: PathBuf,
    mounted: bool,
    // Dropped last: removes the image and the mount point directory.
    _dir: tempfile::TempDir,
}

impl LoopBtrfs {
    /// `truncate -s SIZE img; mkfs.btrfs img; mount -o loop img mnt`.
    pub fn new(size_bytes: u64) -> Result<Self, LoopFsError> {
        require_root()?;
        if !Path::new("/dev/loop-control").exists() {
            return Err(LoopFsError::Unavailable("no /dev/loop-control".into()));
        }
        // Under /var/tmp: /tmp may itself be a small tmpfs.
        let dir = tempfile::Builder::new()
            .prefix("gpve-btrfs-")
            .tempdir_in("/var/tmp")?;
        let img = dir.path().join("btrfs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt)?;
        std::fs::File::create(&img)?.set_len(size_bytes)?;
        let img_s = img
            .to_str()
            .ok_or_else(|| LoopFsError::Unavailable("temp path is not UTF-8".into()))?;
        let mnt_s = mnt
            .to_str()
            .ok_or_else(|| LoopFsError::Unavailable("temp path is not UTF-8".into()))?;
        run("mkfs.btrfs", &["-q", img_s]).map_err(|e| match e {
            LoopFsError::Unavailable(_) => LoopFsError::Unavailable(
                "mkfs.btrfs is not installed (Debian package btrfs-progs)".into(),
            ),
            other => other,
        })?;
        run("mount", &["-o", "loop", img_s, mnt_s]).map_err(|e| match e {
            LoopFsError::Command { stderr, .. } => {
                LoopFsError::Unavailable(format!("loop mount failed: {stderr}"))
            }
            other => other,
        })?;
        Ok(Self {
            mount_point: mnt,
            mounted: true,
            _dir: dir,
        })
    }

    pub fn path(&self) -> &Path {
        &self.mount_point
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        if self.mounted {
            unmount(&self.mount_point);
            self.mounted = false;
        }
    }
}

/// A tmpfs of a fixed size: a small real filesystem that fills up.
#[derive(Debug)]
pub struct SmallTmpfs {
    mount_point: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallTmpfs {
    pub fn new(size_bytes: u64) -> Result<Self, LoopFsError> {
        require_root()?;
        let dir = tempfile::Builder::new()
            .prefix("gpve-tmpfs-")
            .tempdir_in("/var/tmp")?;
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt)?;
        let mnt_s = mnt
            .to_str()
            .ok_or_else(|| LoopFsError::Unavailable("temp path is not UTF-8".into()))?;
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_bytes}"),
                "tmpfs",
                mnt_s,
            ],
        )
        .map_err(|e| match e {
            LoopFsError::Command { stderr, .. } => {
                LoopFsError::Unavailable(format!("tmpfs mount failed: {stderr}"))
            }
            other => other,
        })?;
        Ok(Self {
            mount_point: mnt,
            _dir: dir,
        })
    }

    pub fn path(&self) -> &Path {
        &self.mount_point
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        unmount(&self.mount_point);
    }
}
