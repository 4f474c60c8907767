//! Pure translation of a [`QemuSpec`] into a QEMU argv.

use std::path::{Path, PathBuf};

use crate::spec::{
    Accel, Bios, DiskBus, DiskFormat, Machine, NicBackend, NicModel, QemuSpec, SpecError,
};

/// The per-process files of one QEMU, all inside a run dir owned by the caller
/// (`/run/gpve/qemu/{vmid}/` in production, a temp dir in tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPaths {
    pub dir: PathBuf,
    pub pidfile: PathBuf,
    pub qmp_socket: PathBuf,
    pub serial_socket: PathBuf,
    /// Everything the guest wrote to its serial console since start (QEMU chardev logfile).
    pub serial_log: PathBuf,
}

impl RunPaths {
    pub fn new(dir: &Path) -> Self {
        RunPaths {
            dir: dir.to_path_buf(),
            pidfile: dir.join("qemu.pid"),
            qmp_socket: dir.join("qmp.sock"),
            serial_socket: dir.join("serial.sock"),
            serial_log: dir.join("serial.log"),
        }
    }
}

/// The accelerator actually used, after probing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedAccel {
    Kvm,
    Tcg,
}

/// `auto` picks KVM only when the caller found /dev/kvm usable.
pub fn resolve_accel(accel: Accel, kvm_usable: bool) -> ResolvedAccel {
    match accel {
        Accel::Kvm => ResolvedAccel::Kvm,
        Accel::Tcg => ResolvedAccel::Tcg,
        Accel::Auto if kvm_usable => ResolvedAccel::Kvm,
        Accel::Auto => ResolvedAccel::Tcg,
    }
}

/// Facts about the host the argv depends on, gathered by the caller so this stays pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub accel: ResolvedAccel,
    /// The OVMF code image, if installed.
    pub ovmf_code: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("the VM spec is invalid")]
    Spec(#[from] SpecError),
    #[error("bios ovmf was requested but no OVMF firmware is installed (package ovmf)")]
    OvmfMissing,
    #[error(
        "disk slot ide{slot} does not exist on the q35 machine (AHCI ports ide0..ide5 only hold 1 unit each)"
    )]
    IdeSlot { slot: u8 },
}

/// QEMU option values separate keys with ',', so a literal comma is doubled.
pub(crate) fn esc(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// Builds the argv (without the binary) for `qemu-system-x86_64`.
///
/// QEMU starts stopped (`-S`) and daemonized so it outlives the agent; the caller
/// connects to QMP and sends `cont`.
pub fn build_argv(
    spec: &QemuSpec,
    paths: &RunPaths,
    host: &HostFacts,
) -> Result<Vec<String>, CmdlineError> {
    spec.validate()?;
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));

    push(&["-name", &spec.name]);
    push(&["-S", "-nodefaults", "-no-user-config", "-daemonize"]);
    push(&["-pidfile", &esc(&paths.pidfile)]);
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", esc(&paths.qmp_socket)),
    ]);
    push(&["-display", "none"]);
    push(&[
        "-chardev",
        &format!(
            "socket,id=serial0,path={},server=on,wait=off,logfile={}",
            esc(&paths.serial_socket),
            esc(&paths.serial_log)
        ),
    ]);
    push(&["-serial", "chardev:serial0"]);

    let machine = match spec.machine {
        Machine::Q35 => "q35",
        Machine::Pc => "pc",
    };
    push(&["-machine", &format!("type={machine}")]);
    let accel = match host.accel {
        ResolvedAccel::Kvm => "kvm",
        ResolvedAccel::Tcg => "tcg",
    };
    push(&["-accel", accel]);
    push(&["-cpu", &spec.cpu]);
    let vcpus = spec.sockets * spec.cores;
    push(&[
        "-smp",
        &format!(
            "{vcpus},sockets={},cores={},threads=1",
            spec.sockets, spec.cores
        ),
    ]);
    push(&["-m", &spec.memory_mib.to_string()]);

    if spec.bios == Bios::Ovmf {
        let code = host.ovmf_code.as_ref().ok_or(CmdlineError::OvmfMissing)?;
        push(&[
            "-drive",
            &format!("if=pflash,unit=0,format=raw,readonly=on,file={}", esc(code)),
        ]);
    }

    // Controllers first, once, only when a disk needs them.
    let mut disks = spec.disks.clone();
    disks.sort_by_key(|d| (d.bus.as_str(), d.slot));
    if disks.iter().any(|d| d.bus == DiskBus::Scsi) {
        push(&["-device", "virtio-scsi-pci,id=scsihw0"]);
    }
    if disks.iter().any(|d| d.bus == DiskBus::Sata) {
        push(&["-device", "ahci,id=ahci0"]);
    }
    for disk in &disks {
        let bus = disk.bus.as_str();
        let id = format!("{bus}{}", disk.slot);
        let format = match disk.format {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        };
        push(&[
            "-drive",
            &format!(
                "file={},if=none,id=drive-{id},format={format}",
                esc(&disk.path)
            ),
        ]);
        let device = match disk.bus {
            DiskBus::Virtio => format!("virtio-blk-pci,drive=drive-{id},id={id}"),
            DiskBus::Scsi => format!(
                "scsi-hd,bus=scsihw0.0,scsi-id={},drive=drive-{id},id={id}",
                disk.slot
            ),
            DiskBus::Sata => format!("ide-hd,bus=ahci0.{},drive=drive-{id},id={id}", disk.slot),
            DiskBus::Ide => match spec.machine {
                // i440fx: two IDE channels with master and slave each.
                Machine::Pc => format!(
                    "ide-hd,bus=ide.{},unit={},drive=drive-{id},id={id}",
                    disk.slot / 2,
                    disk.slot % 2
                ),
                // q35: the built-in AHCI exposes ports ide.0..ide.5.
                Machine::Q35 => {
                    if disk.slot >= 6 {
                        return Err(CmdlineError::IdeSlot { slot: disk.slot });
                    }
                    format!("ide-hd,bus=ide.{},drive=drive-{id},id={id}", disk.slot)
                }
            },
        };
        push(&["-device", &device]);
    }

    let mut nics = spec.nics.clone();
    nics.sort_by_key(|n| n.slot);
    for nic in &nics {
        let id = format!("net{}", nic.slot);
        let model = match nic.model {
            NicModel::Virtio => "virtio-net-pci",
            NicModel::E1000 => "e1000",
        };
        match &nic.backend {
            NicBackend::Tap { ifname } => {
                push(&[
                    "-netdev",
                    &format!("tap,id={id},ifname={ifname},script=no,downscript=no"),
                ]);
                push(&[
                    "-device",
                    &format!("{model},netdev={id},mac={},id=nic{}", nic.mac, nic.slot),
                ]);
            }
            NicBackend::User => {
                push(&["-netdev", &format!("user,id={id}")]);
                push(&[
                    "-device",
                    &format!("{model},netdev={id},mac={},id=nic{}", nic.mac, nic.slot),
                ]);
            }
            NicBackend::None => {
                push(&[
                    "-device",
                    &format!("{model},mac={},id=nic{}", nic.mac, nic.slot),
                ]);
            }
        }
    }

    if let Some(boot) = &spec.direct_boot {
        push(&["-kernel", &boot.kernel.to_string_lossy()]);
        if let Some(initrd) = &boot.initrd {
            push(&["-initrd", &initrd.to_string_lossy()]);
        }
        if !boot.append.is_empty() {
            push(&["-append", &boot.append]);
        }
    }

    a.extend(spec.args.iter().cloned());
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{DirectBoot, DiskSpec, NicSpec};

    fn paths() -> RunPaths {
        RunPaths::new(Path::new("/run/gpve/qemu/100"))
    }

    fn tcg() -> HostFacts {
        HostFacts {
            accel: ResolvedAccel::Tcg,
            ovmf_code: None,
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    const PREFIX: &[&str] = &[
        "-name",
        "vm1",
        "-S",
        "-nodefaults",
        "-no-user-config",
        "-daemonize",
        "-pidfile",
        "/run/gpve/qemu/100/qemu.pid",
        "-qmp",
        "unix:/run/gpve/qemu/100/qmp.sock,server=on,wait=off",
        "-display",
        "none",
        "-chardev",
        "socket,id=serial0,path=/run/gpve/qemu/100/serial.sock,server=on,wait=off,logfile=/run/gpve/qemu/100/serial.log",
        "-serial",
        "chardev:serial0",
    ];

    #[test]
    fn minimal_spec_gives_exact_argv() {
        let spec = QemuSpec::new(100, "vm1");
        let mut want = s(PREFIX);
        want.extend(s(&[
            "-machine",
            "type=q35",
            "-accel",
            "tcg",
            "-cpu",
            "qemu64",
            "-smp",
            "1,sockets=1,cores=1,threads=1",
            "-m",
            "512",
        ]));
        assert_eq!(build_argv(&spec, &paths(), &tcg()), Ok(want));
    }

    #[test]
    fn full_spec_gives_exact_argv() {
        let mut spec = QemuSpec::new(100, "vm1");
        spec.machine = Machine::Pc;
        spec.cpu = "max".into();
        spec.sockets = 2;
        spec.cores = 2;
        spec.memory_mib = 2048;
        spec.disks = vec![
            DiskSpec {
                bus: DiskBus::Virtio,
                slot: 1,
                path: "/img/a,b.qcow2".into(),
                format: DiskFormat::Qcow2,
            },
            DiskSpec {
                bus: DiskBus::Scsi,
                slot: 0,
                path: "/img/s.raw".into(),
                format: DiskFormat::Raw,
            },
            DiskSpec {
                bus: DiskBus::Sata,
                slot: 2,
                path: "/img/t.raw".into(),
                format: DiskFormat::Raw,
            },
            DiskSpec {
                bus: DiskBus::Ide,
                slot: 3,
                path: "/img/i.raw".into(),
                format: DiskFormat::Raw,
            },
        ];
        spec.nics = vec![
            NicSpec {
                slot: 1,
                model: NicModel::E1000,
                mac: "52:54:00:00:00:02".into(),
                backend: NicBackend::User,
            },
            NicSpec {
                slot: 0,
                model: NicModel::Virtio,
                mac: "52:54:00:00:00:01".into(),
                backend: NicBackend::Tap {
                    ifname: "tap100i0".into(),
                },
            },
            NicSpec {
                slot: 2,
                model: NicModel::Virtio,
                mac: "52:54:00:00:00:03".into(),
                backend: NicBackend::None,
            },
        ];
        spec.direct_boot = Some(DirectBoot {
            kernel: "/k/vmlinuz".into(),
            initrd: Some("/k/initrd".into()),
            append: "console=ttyS0".into(),
        });
        spec.args = s(&["-rtc", "base=localtime"]);
        let host = HostFacts {
            accel: ResolvedAccel::Kvm,
            ovmf_code: None,
        };
        let mut want = s(PREFIX);
        want.extend(s(&[
            "-machine",
            "type=pc",
            "-accel",
            "kvm",
            "-cpu",
            "max",
            "-smp",
            "4,sockets=2,cores=2,threads=1",
            "-m",
            "2048",
            "-device",
            "virtio-scsi-pci,id=scsihw0",
            "-device",
            "ahci,id=ahci0",
            "-drive",
            "file=/img/i.raw,if=none,id=drive-ide3,format=raw",
            "-device",
            "ide-hd,bus=ide.1,unit=1,drive=drive-ide3,id=ide3",
            "-drive",
            "file=/img/t.raw,if=none,id=drive-sata2,format=raw",
            "-device",
            "ide-hd,bus=ahci0.2,drive=drive-sata2,id=sata2",
            "-drive",
            "file=/img/s.raw,if=none,id=drive-scsi0,format=raw",
            "-device",
            "scsi-hd,bus=scsihw0.0,scsi-id=0,drive=drive-scsi0,id=scsi0",
            "-drive",
            "file=/img/a,,b.qcow2,if=none,id=drive-virtio1,format=qcow2",
            "-device",
            "virtio-blk-pci,drive=drive-virtio1,id=virtio1",
            "-netdev",
            "tap,id=net0,ifname=tap100i0,script=no,downscript=no",
            "-device",
            "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,id=nic0",
            "-netdev",
            "user,id=net1",
            "-device",
            "e1000,netdev=net1,mac=52:54:00:00:00:02,id=nic1",
            "-device",
            "virtio-net-pci,mac=52:54:00:00:00:03,id=nic2",
            "-kernel",
            "/k/vmlinuz",
            "-initrd",
            "/k/initrd",
            "-append",
            "console=ttyS0",
            "-rtc",
            "base=localtime",
        ]));
        assert_eq!(build_argv(&spec, &paths(), &host), Ok(want));
    }

    #[test]
    fn ovmf_needs_firmware() {
        let mut spec = QemuSpec::new(100, "vm1");
        spec.bios = Bios::Ovmf;
        assert_eq!(
            build_argv(&spec, &paths(), &tcg()),
            Err(CmdlineError::OvmfMissing)
        );
        let host = HostFacts {
            accel: ResolvedAccel::Tcg,
            ovmf_code: Some("/usr/share/OVMF/OVMF_CODE.fd".into()),
        };
        let argv = build_argv(&spec, &paths(), &host).expect("ovmf argv");
        let i = argv
            .iter()
            .position(|x| x.starts_with("if=pflash"))
            .expect("pflash drive");
        assert_eq!(
            argv[i],
            "if=pflash,unit=0,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd"
        );
    }

    #[test]
    fn bad_specs_are_rejected_with_the_field() {
        let base = QemuSpec::new(100, "vm1");
        let cases: Vec<(QemuSpec, SpecError)> = vec![
            (
                QemuSpec {
                    vmid: 99,
                    ..base.clone()
                },
                SpecError::Vmid { vmid: 99 },
            ),
            (
                QemuSpec {
                    name: "a,b".into(),
                    ..base.clone()
                },
                SpecError::Name { name: "a,b".into() },
            ),
            (
                QemuSpec {
                    cpu: "host,-x".into(),
                    ..base.clone()
                },
                SpecError::Cpu {
                    cpu: "host,-x".into(),
                },
            ),
            (
                QemuSpec {
                    cores: 0,
                    ..base.clone()
                },
                SpecError::Topology {
                    sockets: 1,
                    cores: 0,
                },
            ),
            (
                QemuSpec {
                    memory_mib: 1,
                    ..base.clone()
                },
                SpecError::Memory { memory_mib: 1 },
            ),
            (
                QemuSpec {
                    disks: vec![DiskSpec {
                        bus: DiskBus::Sata,
                        slot: 6,
                        path: "/x".into(),
                        format: DiskFormat::Raw,
                    }],
                    ..base.clone()
                },
                SpecError::DiskSlot {
                    bus: "sata",
                    slot: 6,
                },
            ),
            (
                QemuSpec {
                    nics: vec![NicSpec {
                        slot: 0,
                        model: NicModel::Virtio,
                        mac: "52:54:00:00:00".into(),
                        backend: NicBackend::User,
                    }],
                    ..base.clone()
                },
                SpecError::Mac {
                    mac: "52:54:00:00:00".into(),
                },
            ),
            (
                QemuSpec {
                    nics: vec![NicSpec {
                        slot: 0,
                        model: NicModel::Virtio,
                        mac: "52:54:00:00:00:01".into(),
                        backend: NicBackend::Tap {
                            ifname: "tap,x".into(),
                        },
                    }],
                    ..base.clone()
                },
                SpecError::TapName {
                    ifname: "tap,x".into(),
                },
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(
                build_argv(&spec, &paths(), &tcg()),
                Err(CmdlineError::Spec(want))
            );
        }
    }

    #[test]
    fn auto_accel_follows_the_probe() {
        assert_eq!(resolve_accel(Accel::Auto, true), ResolvedAccel::Kvm);
        assert_eq!(resolve_accel(Accel::Auto, false), ResolvedAccel::Tcg);
        assert_eq!(resolve_accel(Accel::Tcg, true), ResolvedAccel::Tcg);
        assert_eq!(resolve_accel(Accel::Kvm, false), ResolvedAccel::Kvm);
    }
}
