//! The typed description of one QEMU process (`QemuSpec`) and its validation.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Largest VM id Proxmox accepts; ids below 100 are reserved.
pub const VMID_MIN: u32 = 100;
pub const VMID_MAX: u32 = 999_999_999;
const NAME_MAX_CHARS: usize = 63;
const MEMORY_MIN_MIB: u64 = 16;
const MEMORY_MAX_MIB: u64 = 4 * 1024 * 1024;
const VCPUS_MAX: u32 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    Q35,
    /// i440fx, QEMU's `pc` machine type.
    #[serde(alias = "i440fx")]
    Pc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bios {
    Seabios,
    Ovmf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when /dev/kvm is usable, else TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    Virtio,
    Scsi,
    Sata,
    Ide,
}

impl DiskBus {
    /// Slots per bus, as Proxmox numbers them (`virtio0..15`, `scsi0..30`, `sata0..5`, `ide0..3`).
    pub fn slot_count(self) -> u8 {
        match self {
            DiskBus::Virtio => 16,
            DiskBus::Scsi => 31,
            DiskBus::Sata => 6,
            DiskBus::Ide => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DiskBus::Virtio => "virtio",
            DiskBus::Scsi => "scsi",
            DiskBus::Sata => "sata",
            DiskBus::Ide => "ide",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    pub bus: DiskBus,
    pub slot: u8,
    pub path: PathBuf,
    pub format: DiskFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NicModel {
    Virtio,
    E1000,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NicBackend {
    /// An existing tap device (created by the network crate), attached without scripts.
    Tap { ifname: String },
    /// QEMU's user-mode (slirp) network.
    User,
    /// A NIC with no backend: the guest sees the card with no link.
    None,
}

/// Number of `netN` slots, as in Proxmox (`net0..net31`).
pub const NIC_SLOTS: u8 = 32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicSpec {
    pub slot: u8,
    pub model: NicModel,
    /// `xx:xx:xx:xx:xx:xx`, hex.
    pub mac: String,
    pub backend: NicBackend,
}

/// Kernel direct boot (used by the test guest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub append: String,
}

/// Everything needed to build one QEMU command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuSpec {
    pub vmid: u32,
    pub name: String,
    pub machine: Machine,
    pub bios: Bios,
    /// QEMU `-cpu` model, e.g. `qemu64`, `max`, `x86-64-v2-AES`.
    pub cpu: String,
    pub sockets: u32,
    pub cores: u32,
    pub memory_mib: u64,
    pub disks: Vec<DiskSpec>,
    pub nics: Vec<NicSpec>,
    pub direct_boot: Option<DirectBoot>,
    /// Extra arguments appended verbatim (Proxmox `args:`).
    pub args: Vec<String>,
    pub accel: Accel,
    /// Leave the guest paused after start (no `cont`), e.g. to attach to the console first.
    pub start_paused: bool,
}

impl QemuSpec {
    /// A small TCG-friendly spec with defaults; callers fill in disks, NICs and boot.
    pub fn new(vmid: u32, name: impl Into<String>) -> Self {
        QemuSpec {
            vmid,
            name: name.into(),
            machine: Machine::Q35,
            bios: Bios::Seabios,
            cpu: "qemu64".to_string(),
            sockets: 1,
            cores: 1,
            memory_mib: 512,
            disks: Vec::new(),
            nics: Vec::new(),
            direct_boot: None,
            args: Vec::new(),
            accel: Accel::Auto,
            start_paused: false,
        }
    }

    /// Rejects anything QEMU would misparse or refuse, with a message naming the field.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !(VMID_MIN..=VMID_MAX).contains(&self.vmid) {
            return Err(SpecError::Vmid { vmid: self.vmid });
        }
        let name_ok = !self.name.is_empty()
            && self.name.chars().count() <= NAME_MAX_CHARS
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            && !self.name.starts_with('-');
        if !name_ok {
            return Err(SpecError::Name {
                name: self.name.clone(),
            });
        }
        let cpu_ok = !self.cpu.is_empty()
            && self
                .cpu
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.+=".contains(c));
        if !cpu_ok {
            return Err(SpecError::Cpu {
                cpu: self.cpu.clone(),
            });
        }
        let vcpus = u64::from(self.sockets) * u64::from(self.cores);
        if self.sockets == 0 || self.cores == 0 || vcpus > u64::from(VCPUS_MAX) {
            return Err(SpecError::Topology {
                sockets: self.sockets,
                cores: self.cores,
            });
        }
        if !(MEMORY_MIN_MIB..=MEMORY_MAX_MIB).contains(&self.memory_mib) {
            return Err(SpecError::Memory {
                memory_mib: self.memory_mib,
            });
        }
        let mut seen_disks = std::collections::BTreeSet::new();
        for disk in &self.disks {
            if disk.slot >= disk.bus.slot_count() {
                return Err(SpecError::DiskSlot {
                    bus: disk.bus.as_str(),
                    slot: disk.slot,
                });
            }
            if !seen_disks.insert((disk.bus.as_str(), disk.slot)) {
                return Err(SpecError::DuplicateDisk {
                    bus: disk.bus.as_str(),
                    slot: disk.slot,
                });
            }
            if disk.path.as_os_str().is_empty() {
                return Err(SpecError::EmptyPath { what: "disk" });
            }
        }
        let mut seen_nics = std::collections::BTreeSet::new();
        for nic in &self.nics {
            if nic.slot >= NIC_SLOTS {
                return Err(SpecError::NicSlot { slot: nic.slot });
            }
            if !seen_nics.insert(nic.slot) {
                return Err(SpecError::DuplicateNic { slot: nic.slot });
            }
            if !valid_mac(&nic.mac) {
                return Err(SpecError::Mac {
                    mac: nic.mac.clone(),
                });
            }
            if let NicBackend::Tap { ifname } = &nic.backend {
                // Linux IFNAMSIZ is 16 including the NUL.
                let ok = !ifname.is_empty()
                    && ifname.len() <= 15
                    && ifname
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                if !ok {
                    return Err(SpecError::TapName {
                        ifname: ifname.clone(),
                    });
                }
            }
        }
        if let Some(boot) = &self.direct_boot
            && boot.kernel.as_os_str().is_empty()
        {
            return Err(SpecError::EmptyPath { what: "kernel" });
        }
        Ok(())
    }
}

fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("vmid {vmid} is outside {VMID_MIN}..={VMID_MAX}")]
    Vmid { vmid: u32 },
    #[error("VM name {name:?} must be 1-63 letters, digits, '-' or '.', not starting with '-'")]
    Name { name: String },
    #[error("CPU model {cpu:?} contains characters QEMU would misparse")]
    Cpu { cpu: String },
    #[error(
        "CPU topology {sockets} sockets x {cores} cores is invalid (each >= 1, at most {VCPUS_MAX} vCPUs)"
    )]
    Topology { sockets: u32, cores: u32 },
    #[error("memory {memory_mib} MiB is outside {MEMORY_MIN_MIB}..={MEMORY_MAX_MIB} MiB")]
    Memory { memory_mib: u64 },
    #[error("disk slot {bus}{slot} does not exist on that bus")]
    DiskSlot { bus: &'static str, slot: u8 },
    #[error("disk slot {bus}{slot} is used twice")]
    DuplicateDisk { bus: &'static str, slot: u8 },
    #[error("NIC slot net{slot} is outside net0..net{}", NIC_SLOTS - 1)]
    NicSlot { slot: u8 },
    #[error("NIC slot net{slot} is used twice")]
    DuplicateNic { slot: u8 },
    #[error("MAC address {mac:?} is not six hex pairs separated by ':'")]
    Mac { mac: String },
    #[error("tap name {ifname:?} must be 1-15 letters, digits, '-', '_' or '.'")]
    TapName { ifname: String },
    #[error("the {what} path is empty")]
    EmptyPath { what: &'static str },
}
