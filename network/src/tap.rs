//! Tap devices for VM NICs, and their MAC addresses.
//!
//! The kernel refuses to create tun/tap devices over rtnetlink, so taps are made
//! persistent with the TUNSETIFF/TUNSETPERSIST ioctls on `/dev/net/tun` (what
//! `ip tuntap add` does) inside the target namespace, then plugged into a bridge with
//! rtnetlink. QEMU later opens the same tap by name.

use std::collections::HashSet;
use std::fmt;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use sha2::{Digest, Sha256};

use crate::ifname::{IFNAME_MAX_BYTES, IfName, IfNameError};
use crate::link::{LinkError, NetHandle};
use crate::netns::NetnsError;

/// Proxmox's range of VM ids.
pub const VMID_MIN: u32 = 100;
pub const VMID_MAX: u32 = 999_999_999;
/// Proxmox allows net0..net31.
pub const NIC_INDEX_MAX: u8 = 31;
/// Candidates tried before giving up on a free MAC address.
pub const MAC_ALLOCATION_ATTEMPTS_MAX: u32 = 64;

// From <linux/if_tun.h>: _IOW('T', 202, int) and _IOW('T', 203, int).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;

/// Errors of tap and MAC handling.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("VM id {0} is outside {VMID_MIN}-{VMID_MAX}")]
    InvalidVmid(u32),
    #[error("NIC index {0} is outside 0-{NIC_INDEX_MAX}")]
    InvalidNicIndex(u8),
    #[error(transparent)]
    Name(#[from] IfNameError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] std::io::Error),
    #[error("{op} failed for tap {name}")]
    Ioctl {
        op: &'static str,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tap {0} already exists")]
    AlreadyExists(String),
    #[error("MAC address {0:?} is not six hexadecimal octets separated by ':'")]
    InvalidMac(String),
    #[error("no free MAC address for VM {vmid} NIC {nic} after {attempts} attempts")]
    MacExhausted { vmid: u32, nic: u8, attempts: u32 },
}

/// The Proxmox tap name of a VM NIC: `tap{vmid}i{nic}`.
pub fn tap_name(vmid: u32, nic: u8) -> Result<IfName, TapError> {
    if !(VMID_MIN..=VMID_MAX).contains(&vmid) {
        return Err(TapError::InvalidVmid(vmid));
    }
    if nic > NIC_INDEX_MAX {
        return Err(TapError::InvalidNicIndex(nic));
    }
    let name = format!("tap{vmid}i{nic}");
    // "tap999999999i31" is exactly IFNAMSIZ - 1: the bounds above keep every name legal.
    debug_assert!(name.len() <= IFNAME_MAX_BYTES);
    Ok(IfName::new(&name)?)
}

/// Options of a new tap.
#[derive(Debug, Clone, Default)]
pub struct TapOptions {
    /// Must match how QEMU opens it (`queues=N>1` opens with IFF_MULTI_QUEUE).
    pub multi_queue: bool,
    /// Bridge to plug the tap into.
    pub bridge: Option<IfName>,
    pub mtu: Option<u32>,
}

/// Creates a persistent tap in the handle's namespace, optionally plugs it into a
/// bridge, and brings it up.
pub async fn create_tap(
    handle: &NetHandle,
    name: &IfName,
    opts: &TapOptions,
) -> Result<(), TapError> {
    // TUNSETIFF on an existing persistent tap would silently attach to it.
    if handle.find_index(name.as_str()).await?.is_some() {
        return Err(TapError::AlreadyExists(name.to_string()));
    }
    let owned = name.clone();
    let multi_queue = opts.multi_queue;
    handle
        .netns()
        .run(move || make_persistent_tap(&owned, multi_queue))??;
    let plugged = async {
        if let Some(mtu) = opts.mtu {
            handle.set_mtu(name, mtu).await?;
        }
        if let Some(bridge) = &opts.bridge {
            handle.attach_to_bridge(name, bridge).await?;
        }
        handle.set_up(name).await
    };
    if let Err(e) = plugged.await {
        // Do not leave a half-configured tap behind; the first error is the one to report.
        let _ = handle.delete_link(name).await;
        return Err(e.into());
    }
    Ok(())
}

/// Deletes a tap (works while QEMU still holds it open).
pub async fn delete_tap(handle: &NetHandle, name: &IfName) -> Result<(), TapError> {
    Ok(handle.delete_link(name).await?)
}

fn make_persistent_tap(name: &IfName, multi_queue: bool) -> Result<(), TapError> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(TapError::OpenTun)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.as_str().bytes()) {
        *dst = src as libc::c_char;
    }
    let mut flags = IFF_TAP | IFF_NO_PI;
    if multi_queue {
        flags |= IFF_MULTI_QUEUE;
    }
    ifr.ifr_ifru.ifru_flags = flags;
    let ioctl_err = |op| {
        let source = std::io::Error::last_os_error();
        TapError::Ioctl {
            op,
            name: name.to_string(),
            source,
        }
    };
    // SAFETY: `tun` is an open /dev/net/tun descriptor and `ifr` a valid, NUL-terminated
    // (the name is at most 15 bytes of a zeroed 16-byte array) ifreq that outlives the call.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut ifr) } < 0 {
        return Err(ioctl_err("TUNSETIFF"));
    }
    // SAFETY: TUNSETPERSIST takes an integer argument, on a descriptor attached above.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(ioctl_err("TUNSETPERSIST"));
    }
    Ok(())
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Locally administered (bit 1 of the first octet) and unicast (bit 0 clear).
    pub fn is_local_unicast(&self) -> bool {
        self.0[0] & 0x03 == 0x02
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02X}:{b:02X}:{c:02X}:{d:02X}:{e:02X}:{g:02X}")
    }
}

impl std::str::FromStr for Mac {
    type Err = TapError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || TapError::InvalidMac(s.to_owned());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut out {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self(out))
    }
}

/// A stable MAC for a VM NIC: SHA-256 of (cluster, vmid, nic, attempt), first six bytes,
/// with the locally-administered bit set and the multicast bit clear. The same inputs
/// always give the same address, so a re-created VM keeps its MAC (and its DHCP lease),
/// and two clusters on one L2 segment are unlikely to collide.
pub fn stable_mac(cluster: &str, vmid: u32, nic: u8, attempt: u32) -> Mac {
    let mut hasher = Sha256::new();
    hasher.update(b"gpve-mac\0");
    hasher.update(cluster.as_bytes());
    hasher.update([0]);
    hasher.update(vmid.to_be_bytes());
    hasher.update([nic]);
    hasher.update(attempt.to_be_bytes());
    let digest = hasher.finalize();
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&digest[..6]);
    mac[0] = (mac[0] & 0xfc) | 0x02;
    Mac(mac)
}

/// The first [`stable_mac`] candidate not in `taken`.
pub fn allocate_mac(
    cluster: &str,
    vmid: u32,
    nic: u8,
    taken: &HashSet<Mac>,
) -> Result<Mac, TapError> {
    (0..MAC_ALLOCATION_ATTEMPTS_MAX)
        .map(|attempt| stable_mac(cluster, vmid, nic, attempt))
        .find(|mac| !taken.contains(mac))
        .ok_or(TapError::MacExhausted {
            vmid,
            nic,
            attempts: MAC_ALLOCATION_ATTEMPTS_MAX,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_follow_proxmox_and_fit_ifnamsiz() {
        assert_eq!(
            tap_name(100, 0).map(|n| n.to_string()).ok(),
            Some("tap100i0".into())
        );
        assert_eq!(
            tap_name(VMID_MAX, NIC_INDEX_MAX)
                .map(|n| n.to_string())
                .ok(),
            Some("tap999999999i31".into())
        );
        assert!(matches!(tap_name(99, 0), Err(TapError::InvalidVmid(99))));
        assert!(matches!(
            tap_name(1_000_000_000, 0),
            Err(TapError::InvalidVmid(_))
        ));
        assert!(matches!(
            tap_name(100, 32),
            Err(TapError::InvalidNicIndex(32))
        ));
    }

    #[test]
    fn macs_are_stable_local_unicast_and_avoid_taken() {
        let a = stable_mac("c1", 100, 0, 0);
        assert_eq!(a, stable_mac("c1", 100, 0, 0));
        assert_ne!(a, stable_mac("c1", 100, 1, 0));
        assert_ne!(a, stable_mac("c2", 100, 0, 0));
        for vmid in 100..1100 {
            assert!(stable_mac("c1", vmid, 0, 0).is_local_unicast());
        }
        let mut taken = HashSet::new();
        assert_eq!(allocate_mac("c1", 100, 0, &taken).ok(), Some(a));
        taken.insert(a);
        let b = allocate_mac("c1", 100, 0, &taken).ok();
        assert!(b.is_some_and(|b| b != a && b.is_local_unicast()));
        let all: HashSet<Mac> = (0..MAC_ALLOCATION_ATTEMPTS_MAX)
            .map(|i| stable_mac("c1", 100, 0, i))
            .collect();
        assert!(matches!(
            allocate_mac("c1", 100, 0, &all),
            Err(TapError::MacExhausted { .. })
        ));
    }

    #[test]
    fn mac_parses_and_prints() {
        let mac: Result<Mac, _> = "02:AB:cd:00:11:ff".parse();
        assert_eq!(
            mac.as_ref().map(|m| m.to_string()).ok(),
            Some("02:AB:CD:00:11:FF".into())
        );
        for bad in [
            "",
            "02:ab",
            "02:ab:cd:00:11:ff:00",
            "0g:ab:cd:00:11:ff",
            "2:ab:cd:00:11:fff",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }
}
