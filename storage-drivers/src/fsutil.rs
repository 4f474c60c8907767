//! Filesystem helpers shared by the file-based drivers: confinement to the storage root,
//! crash-safe publication (temporary name + atomic rename), space accounting.

use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::driver::PoolStatus;

/// Prefix of every temporary this crate creates. Volume names can never start with `.`
/// (see `volume_id::validate_component`), so this namespace is ours alone.
pub const TEMP_PREFIX: &str = ".gpve-tmp.";

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{op} {path} failed")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} resolves to {resolved}, outside the storage root {root}")]
    Escape {
        path: PathBuf,
        resolved: PathBuf,
        root: PathBuf,
    },
    #[error("{0} is not a plain relative path")]
    NotRelative(PathBuf),
    #[error("{0} already exists")]
    Exists(PathBuf),
    #[error("path {0} is not valid UTF-8")]
    NotUtf8(PathBuf),
}

pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FsError + use<> {
    let path = path.to_owned();
    move |source| FsError::Io { op, path, source }
}

/// `root/rel`, refusing any result whose existing part resolves (through symlinks)
/// outside `root`. `root` must already be canonical. The deepest existing ancestor is
/// canonicalised, so a symlinked directory or file that points out of the root is caught
/// whether or not the final component exists yet.
///
/// This is a check, not a lock: a local root user could swap a directory for a symlink
/// between check and use. Volume names come from clients, the tree does not, so the
/// check closes the client-controlled hole.
pub fn resolve_beneath(root: &Path, rel: &Path) -> Result<PathBuf, FsError> {
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(FsError::NotRelative(rel.to_owned()));
    }
    let full = root.join(rel);
    let mut probe = full.as_path();
    loop {
        match std::fs::canonicalize(probe) {
            Ok(resolved) => {
                if !resolved.starts_with(root) {
                    return Err(FsError::Escape {
                        path: full.clone(),
                        resolved,
                        root: root.to_owned(),
                    });
                }
                return Ok(full);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A dangling symlink is "not found" too: refuse it unless it stays inside.
                if let Ok(meta) = std::fs::symlink_metadata(probe)
                    && meta.file_type().is_symlink()
                {
                    let target = std::fs::read_link(probe).map_err(io("readlink", probe))?;
                    let abs = probe.parent().unwrap_or(root).join(&target);
                    if !lexically_beneath(&abs, root) {
                        return Err(FsError::Escape {
                            path: full.clone(),
                            resolved: abs,
                            root: root.to_owned(),
                        });
                    }
                }
                match probe.parent() {
                    Some(parent) if parent.starts_with(root) => probe = parent,
                    _ => return Ok(full),
                }
            }
            Err(e) => return Err(io("canonicalize", probe)(e)),
        }
    }
}

fn lexically_beneath(path: &Path, root: &Path) -> bool {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out.starts_with(root)
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary name next to `final_path` (same directory, so the final rename is
/// atomic). It carries the node name so that `reconcile` on a shared directory removes
/// only this node's leftovers, never another node's operation in flight.
pub fn temp_sibling(final_path: &Path, node: &str) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = final_path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = format!("{TEMP_PREFIX}{node}.{}.{n}.{name}", std::process::id());
    final_path.with_file_name(tmp)
}

/// Whether `file_name` is a temporary created by `node`.
pub fn is_temp_of(file_name: &str, node: &str) -> bool {
    file_name
        .strip_prefix(TEMP_PREFIX)
        .and_then(|rest| rest.strip_prefix(node))
        .is_some_and(|rest| rest.starts_with('.'))
}

/// rename(2) that fails instead of replacing an existing target, so two concurrent
/// allocations of the same name cannot overwrite each other.
pub fn rename_noreplace(from: &Path, to: &Path) -> Result<(), FsError> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EEXIST) => Err(FsError::Exists(to.to_owned())),
        Err(e) => Err(FsError::Io {
            op: "rename",
            path: to.to_owned(),
            source: std::io::Error::from(e),
        }),
    }
}

/// Atomically swap two directory entries (renameat2 RENAME_EXCHANGE).
pub fn rename_exchange(a: &Path, b: &Path) -> Result<(), FsError> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE).map_err(|e| FsError::Io {
        op: "exchange",
        path: b.to_owned(),
        source: std::io::Error::from(e),
    })
}

/// fsync a file or directory so a rename published after it survives power loss.
pub fn sync_path(path: &Path) -> Result<(), FsError> {
    let f = std::fs::File::open(path).map_err(io("open", path))?;
    f.sync_all().map_err(io("fsync", path))
}

/// Publish `tmp` as `final_path`: fsync its data, rename without replacing, fsync the
/// directory. Removes `tmp` when the rename fails.
pub fn publish(tmp: &Path, final_path: &Path) -> Result<(), FsError> {
    if let Err(e) = sync_path(tmp).and_then(|()| rename_noreplace(tmp, final_path)) {
        remove_any(tmp);
        return Err(e);
    }
    if let Some(dir) = final_path.parent() {
        sync_path(dir)?;
    }
    Ok(())
}

/// Best-effort removal of a file or directory tree, for cleanup after a failure (the
/// original error is what the caller reports).
pub fn remove_any(path: &Path) {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => return,
    };
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "could not remove temporary");
    }
}

/// Space of the filesystem holding `path`.
pub fn statvfs(path: &Path) -> Result<PoolStatus, FsError> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| FsError::Io {
        op: "statvfs",
        path: path.to_owned(),
        source: std::io::Error::from(e),
    })?;
    let frag = st.fragment_size();
    let total_bytes = st.blocks().saturating_mul(frag);
    let free_bytes = st.blocks_free().saturating_mul(frag);
    let available_bytes = st.blocks_available().saturating_mul(frag);
    Ok(PoolStatus {
        total_bytes,
        used_bytes: total_bytes.saturating_sub(free_bytes),
        available_bytes,
    })
}

/// Bytes allocated to a file (st_blocks × 512).
pub fn allocated_bytes(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.blocks().saturating_mul(512)
}

/// Copy a plain file to a temporary next to `final_path`, then publish it.
pub async fn copy_publish(src: &Path, final_path: &Path, node: &str) -> Result<(), FsError> {
    let tmp = temp_sibling(final_path, node);
    if let Err(e) = tokio::fs::copy(src, &tmp).await {
        remove_any(&tmp);
        return Err(io("copy", src)(e));
    }
    publish(&tmp, final_path)
}

/// The entries of `dir` that are this node's temporaries.
pub fn find_temporaries(dir: &Path, node: &str) -> Result<Vec<PathBuf>, FsError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io("read_dir", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io("read_dir", dir))?;
        if is_temp_of(&entry.file_name().to_string_lossy(), node) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

pub fn path_utf8(p: &Path) -> Result<&str, FsError> {
    p.to_str().ok_or_else(|| FsError::NotUtf8(p.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_symlinks_out_of_root() {
        let outside = tempfile::tempdir().unwrap();
        let base = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(base.path()).unwrap();
        std::fs::create_dir(root.join("inside")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("out")).unwrap();
        std::os::unix::fs::symlink(root.join("inside"), root.join("ok")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/x", root.join("dangling")).unwrap();

        assert!(resolve_beneath(&root, Path::new("inside/new")).is_ok());
        assert!(resolve_beneath(&root, Path::new("ok/new")).is_ok());
        for bad in ["out", "out/new", "out/a/b", "dangling"] {
            let err = resolve_beneath(&root, Path::new(bad)).expect_err(bad);
            assert!(matches!(err, FsError::Escape { .. }), "{bad}: {err}");
        }
        for bad in ["../x", "/etc/passwd", "a/../../x"] {
            assert!(resolve_beneath(&root, Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn rename_noreplace_keeps_existing() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::write(&a, "new").unwrap();
        std::fs::write(&b, "old").unwrap();
        assert!(matches!(rename_noreplace(&a, &b), Err(FsError::Exists(_))));
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "old");
    }

    #[test]
    fn temp_names_belong_to_their_node() {
        let t = temp_sibling(Path::new("/r/images/100/vm-100-disk-0.raw"), "n1");
        let name = t.file_name().unwrap().to_str().unwrap();
        assert!(is_temp_of(name, "n1"));
        assert!(!is_temp_of(name, "n"));
        assert!(!is_temp_of("vm-100-disk-0.raw", "n1"));
        assert_eq!(t.parent(), Some(Path::new("/r/images/100")));
    }
}
