//! Proxmox unique process ids: `UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{type}:{id}:{user}:`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a string is not a UPID.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum UpidError {
    #[error("a UPID starts with 'UPID:' and has 8 colon-terminated fields")]
    Shape,
    #[error("the UPID field '{0}' is not valid")]
    Field(&'static str),
}

/// A parsed UPID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Upid {
    pub node: String,
    /// Proxmox puts the worker's process id here. gpve tasks are tokio tasks in one process,
    /// so this is a per-process task serial seeded with the server's pid: two tasks started
    /// in the same second stay distinct.
    pub pid: u32,
    /// Start time of the issuing server process, in clock ticks since boot (as Proxmox).
    pub pstart: u64,
    /// Unix seconds.
    pub starttime: i64,
    pub worker_type: String,
    pub id: String,
    pub user: String,
}

fn valid_node(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn valid_word(s: &str, allow_empty: bool) -> bool {
    (allow_empty || !s.is_empty())
        && s.len() <= 128
        && s.chars()
            .all(|c| !c.is_whitespace() && c != ':' && !c.is_control())
}

impl Upid {
    /// Check every field against the syntax Proxmox clients parse.
    pub fn validate(&self) -> Result<(), UpidError> {
        if !valid_node(&self.node) {
            return Err(UpidError::Field("node"));
        }
        if self.starttime < 0 || self.starttime > u32::MAX as i64 {
            return Err(UpidError::Field("starttime"));
        }
        if !valid_word(&self.worker_type, false) {
            return Err(UpidError::Field("type"));
        }
        if !valid_word(&self.id, true) {
            return Err(UpidError::Field("id"));
        }
        if !valid_word(&self.user, false) {
            return Err(UpidError::Field("user"));
        }
        Ok(())
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UPID:{}:{:08X}:{:08X}:{:08X}:{}:{}:{}:",
            self.node, self.pid, self.pstart, self.starttime, self.worker_type, self.id, self.user
        )
    }
}

fn hex_field<T: TryFrom<u64>>(s: &str, name: &'static str) -> Result<T, UpidError> {
    if s.len() < 8 || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(UpidError::Field(name));
    }
    let v = u64::from_str_radix(s, 16).map_err(|_| UpidError::Field(name))?;
    T::try_from(v).map_err(|_| UpidError::Field(name))
}

impl FromStr for Upid {
    type Err = UpidError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix("UPID:").ok_or(UpidError::Shape)?;
        let rest = rest.strip_suffix(':').ok_or(UpidError::Shape)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let [node, pid, pstart, starttime, worker_type, id, user] = parts.as_slice() else {
            return Err(UpidError::Shape);
        };
        let upid = Upid {
            node: (*node).to_string(),
            pid: hex_field(pid, "pid")?,
            pstart: hex_field(pstart, "pstart")?,
            starttime: hex_field(starttime, "starttime")?,
            worker_type: (*worker_type).to_string(),
            id: (*id).to_string(),
            user: (*user).to_string(),
        };
        upid.validate()?;
        Ok(upid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_proxmox_example() {
        let s = "UPID:pve1:0000B1C2:00A3F1D4:6560A1B2:qmstart:100:root@pam:";
        let u: Upid = s.parse().unwrap();
        assert_eq!(u.node, "pve1");
        assert_eq!(u.pid, 0xB1C2);
        assert_eq!(u.worker_type, "qmstart");
        assert_eq!(u.id, "100");
        assert_eq!(u.user, "root@pam");
        assert_eq!(u.to_string(), s);
    }

    #[test]
    fn empty_id_allowed() {
        let s = "UPID:n1:00000001:00000002:00000003:startall::root@pam:";
        assert_eq!(s.parse::<Upid>().unwrap().to_string(), s);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "UPID:",
            "UPID:n1:1:2:3:t:i:u:",
            "UPID:n1:00000001:00000002:00000003:t:i:u",
            "UPID:../etc:00000001:00000002:00000003:t:i:u:",
            "UPID:n1:0000000G:00000002:00000003:t:i:u:",
            "UPID:n1:00000001:00000002:00000003::i:u:",
            "UPID:n1:00000001:00000002:00000003:t:i:u:extra:",
        ] {
            assert!(bad.parse::<Upid>().is_err(), "{bad}");
        }
    }
}
