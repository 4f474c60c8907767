//! Typed calls of `qemu-img` (Debian package `qemu-utils`). Every call names the image
//! format explicitly (`-f`): format probing of a raw image whose guest wrote a qcow2
//! header is a known way for a guest to read host files.

use std::path::Path;

use serde::Deserialize;

use crate::command::{self, CommandError};
use crate::volume_id::VolumeFormat;

const QEMU_IMG: &str = "qemu-img";

/// The parts of `qemu-img info --output=json` we use.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageInfo {
    pub format: String,
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    #[serde(rename = "actual-size", default)]
    pub actual_size: u64,
    #[serde(rename = "backing-filename", default)]
    pub backing_filename: Option<String>,
    #[serde(rename = "full-backing-filename", default)]
    pub full_backing_filename: Option<String>,
    #[serde(default)]
    pub snapshots: Vec<ImageSnapshot>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ImageSnapshot {
    pub name: String,
    #[serde(rename = "date-sec", default)]
    pub date_sec: u64,
}

/// `qemu-img measure` result: bytes a conversion needs.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Measure {
    pub required: u64,
    #[serde(rename = "fully-allocated")]
    pub fully_allocated: u64,
}

/// Bounds on how long one qemu-img call may run.
#[derive(Debug, Clone, Copy)]
pub struct QemuImg {
    /// Metadata operations (create, info, resize, snapshot).
    pub meta_timeout_s: u64,
    /// Data copies (convert).
    pub copy_timeout_s: u64,
}

impl QemuImg {
    pub async fn create(
        &self,
        path: &Path,
        format: VolumeFormat,
        size_bytes: u64,
        preallocation: Option<&str>,
    ) -> Result<(), CommandError> {
        let mut args: Vec<String> = vec![
            "create".into(),
            "-q".into(),
            "-f".into(),
            format.to_string(),
        ];
        if let Some(p) = preallocation {
            args.push("-o".into());
            args.push(format!("preallocation={p}"));
        }
        args.push(path_str(path));
        args.push(size_bytes.to_string());
        command::run(QEMU_IMG, &args, self.meta_timeout_s).await?;
        Ok(())
    }

    /// A qcow2 overlay of `backing` (a path relative to the overlay's directory, so the
    /// storage can be mounted elsewhere on another node).
    pub async fn create_overlay(
        &self,
        path: &Path,
        backing_rel: &str,
        backing_format: VolumeFormat,
    ) -> Result<(), CommandError> {
        let args = [
            "create".to_owned(),
            "-q".into(),
            "-f".into(),
            "qcow2".into(),
            "-F".into(),
            backing_format.to_string(),
            "-b".into(),
            backing_rel.to_owned(),
            path_str(path),
        ];
        command::run(QEMU_IMG, &args, self.meta_timeout_s).await?;
        Ok(())
    }

    /// `format` None lets qemu-img probe: only for host files being imported, after which
    /// the probed format is passed explicitly.
    pub async fn info(&self, path: &Path, format: Option<&str>) -> Result<ImageInfo, CommandError> {
        let mut args = vec!["info".to_owned(), "--output=json".into(), "-U".into()];
        if let Some(f) = format {
            args.push("-f".into());
            args.push(f.to_owned());
        }
        args.push(path_str(path));
        let out = command::run(QEMU_IMG, &args, self.meta_timeout_s).await?;
        serde_json::from_str(&out.stdout).map_err(|e| CommandError::BadOutput {
            command: format!("qemu-img info {}", path.display()),
            reason: e.to_string(),
        })
    }

    /// Bytes a copy of `src` will allocate. Measured as qcow2 whatever the target: for a
    /// raw target qemu-img reports the full virtual size, but `convert` writes raw files
    /// sparse, so the qcow2 figure (data plus a little metadata) is the closer bound.
    pub async fn measure(&self, src: &Path, src_format: &str) -> Result<Measure, CommandError> {
        let args = [
            "measure".to_owned(),
            "--output=json".into(),
            "-f".into(),
            src_format.to_owned(),
            "-O".into(),
            "qcow2".into(),
            path_str(src),
        ];
        let out = command::run(QEMU_IMG, &args, self.meta_timeout_s).await?;
        serde_json::from_str(&out.stdout).map_err(|e| CommandError::BadOutput {
            command: format!("qemu-img measure {}", src.display()),
            reason: e.to_string(),
        })
    }

    pub async fn resize(
        &self,
        path: &Path,
        format: VolumeFormat,
        size_bytes: u64,
    ) -> Result<(), CommandError> {
        let args = [
            "resize".to_owned(),
            "-q".into(),
            "-f".into(),
            format.to_string(),
            path_str(path),
            size_bytes.to_string(),
        ];
        command::run(QEMU_IMG, &args, self.meta_timeout_s).await?;
        Ok(())
    }

    /// `op` is `-c` (create), `-d` (delete) or `-a` (apply). qcow2 only. `qemu-img
    /// snapshot` has no `-f` (as of 7.2), so the format is pinned through `--image-opts`.
    pub async fn snapshot(&self, path: &Path, op: &str, name: &str) -> Result<(), CommandError> {
        // In an option string a `,` is escaped by doubling it.
        let opts = format!(
            "driver=qcow2,file.driver=file,file.filename={}",
            path_str(path).replace(',', ",,")
        );
        let args = [
            "snapshot".to_owned(),
            "-q".into(),
            "--image-opts".into(),
            op.to_owned(),
            name.to_owned(),
            opts,
        ];
        command::run(QEMU_IMG, &args, self.meta_timeout_s).await?;
        Ok(())
    }

    /// Copy every block of `src` into the new file `dst`.
    pub async fn convert(
        &self,
        src: &Path,
        src_format: &str,
        dst: &Path,
        dst_format: VolumeFormat,
    ) -> Result<(), CommandError> {
        // -W: out-of-order writes, faster and safe because dst is a fresh temporary that
        // is only renamed into place after the copy completed and was synced.
        let args = [
            "convert".to_owned(),
            "-q".into(),
            "-W".into(),
            "-f".into(),
            src_format.to_owned(),
            "-O".into(),
            dst_format.to_string(),
            path_str(src),
            path_str(dst),
        ];
        command::run(QEMU_IMG, &args, self.copy_timeout_s).await?;
        Ok(())
    }
}

/// qemu-img takes file names as arguments; ours are absolute, so a `:` in a directory
/// name cannot be read as a protocol prefix (`nbd:`, `json:`).
fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
