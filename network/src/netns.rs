//! Which network namespace an operation runs in.
//!
//! Netlink sockets, `/dev/net/tun` file descriptors and `/proc/sys/net` files belong to
//! the namespace of the thread that opened them. `setns(CLONE_NEWNET)` only moves the
//! calling thread, so work for another namespace runs on a short-lived dedicated thread
//! and the rest of the process (and the host's interfaces) is never touched.

use std::fs::File;
use std::path::PathBuf;

use nix::sched::{CloneFlags, setns, unshare};

/// Where named namespaces live (the `ip netns` convention).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// A network namespace to operate in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Netns {
    /// The namespace of the calling process: production on a node.
    Current,
    /// A namespace bind-mounted at `/run/netns/<name>` (`ip netns add <name>`).
    Named(String),
}

/// Errors while entering a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "network namespace name {0:?} is invalid (1-64 characters, [A-Za-z0-9_.-], not . or ..)"
    )]
    InvalidName(String),
    #[error("cannot open network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {path}")]
    Enter {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot create an anonymous network namespace")]
    Unshare(#[source] nix::Error),
    #[error("cannot start a thread to work in a network namespace")]
    Thread(#[source] std::io::Error),
    #[error("the thread working in a network namespace panicked")]
    ThreadPanicked,
}

impl Netns {
    /// A named namespace, with its name validated.
    pub fn named(name: &str) -> Result<Self, NetnsError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if valid {
            Ok(Self::Named(name.to_owned()))
        } else {
            Err(NetnsError::InvalidName(name.to_owned()))
        }
    }

    /// The bind-mount path of a named namespace.
    pub fn path(&self) -> Option<PathBuf> {
        match self {
            Self::Current => None,
            Self::Named(name) => Some(PathBuf::from(NETNS_RUN_DIR).join(name)),
        }
    }

    /// Opens the namespace file (used to move a link into it).
    pub fn open(&self) -> Result<Option<File>, NetnsError> {
        match self.path() {
            None => Ok(None),
            Some(path) => File::open(&path)
                .map(Some)
                .map_err(|source| NetnsError::Open { path, source }),
        }
    }

    /// Runs `work` inside this namespace and returns its result.
    ///
    /// For [`Netns::Current`] `work` runs on the calling thread; otherwise on a new
    /// thread that enters the namespace first, so the caller's thread never moves.
    pub fn run<T, F>(&self, work: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let Some(path) = self.path() else {
            return Ok(work());
        };
        let file = File::open(&path).map_err(|source| NetnsError::Open {
            path: path.clone(),
            source,
        })?;
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name("gpve-netns".into())
                .spawn_scoped(scope, move || {
                    setns(&file, CloneFlags::CLONE_NEWNET)
                        .map_err(|source| NetnsError::Enter { path, source })?;
                    Ok(work())
                })
                .map_err(NetnsError::Thread)?;
            worker.join().map_err(|_| NetnsError::ThreadPanicked)?
        })
    }
}

/// Runs `work` inside a fresh anonymous network namespace that disappears with the
/// thread (and any socket `work` opened there once it is closed).
pub fn run_in_anonymous_netns<T, F>(work: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("gpve-netns-scratch".into())
            .spawn_scoped(scope, move || {
                unshare(CloneFlags::CLONE_NEWNET).map_err(NetnsError::Unshare)?;
                Ok(work())
            })
            .map_err(NetnsError::Thread)?;
        worker.join().map_err(|_| NetnsError::ThreadPanicked)?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(Netns::named("gpve-test-1").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(
                matches!(Netns::named(bad), Err(NetnsError::InvalidName(_))),
                "{bad}"
            );
        }
        assert_eq!(
            Netns::named("n1").ok().and_then(|n| n.path()),
            Some(PathBuf::from("/run/netns/n1"))
        );
        assert_eq!(Netns::Current.path(), None);
    }
}
