//! Golden tests: a spec in, the exact QEMU argv out (one argument per line in
//! `tests/golden/NAME.args`). Run with `UPDATE_GOLDEN=1` to rewrite the files after an
//! intended change, then review the diff.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use corral_api::{
    Accel, CloudInit, Disk, DiskFormat, Firmware, KernelBoot, Machine, NetworkKind, Nic, VmSpec,
};
use corral_qemu::argv::{build_argv, Confinement, DiskFds, LaunchConfig, NicBackend, VmPaths};
use uuid::Uuid;

fn base_spec() -> VmSpec {
    VmSpec {
        name: "web-01".into(),
        uuid: Uuid::parse_str("6f1c2a3e-2d4b-4c1e-9a7f-0123456789ab").unwrap(),
        memory_mib: 256,
        vcpus: 1,
        machine: Machine::Pc,
        firmware: Firmware::Bios,
        nvram: None,
        disks: vec![],
        cdrom: None,
        kernel: None,
        nics: vec![],
        firewall: vec![],
        cloud_init: None,
    }
}

const UNCONFINED: Confinement = Confinement {
    run_as: None,
    chroot: false,
    sandbox: false,
};

fn check(case: &str, spec: &VmSpec, accel: Accel, confinement: Confinement) {
    check_full(case, spec, accel, confinement, (false, None), &[])
}

fn check_with(case: &str, spec: &VmSpec, accel: Accel, confinement: Confinement, incoming: bool) {
    check_full(case, spec, accel, confinement, (incoming, None), &[])
}

/// `block_devices`: the disks that are block devices on the host.
fn check_with_devices(
    case: &str,
    spec: &VmSpec,
    accel: Accel,
    confinement: Confinement,
    block_devices: &[&str],
) {
    check_full(case, spec, accel, confinement, (false, None), block_devices)
}

fn check_full(
    case: &str,
    spec: &VmSpec,
    accel: Accel,
    confinement: Confinement,
    (incoming, machine_type): (bool, Option<&str>),
    block_devices: &[&str],
) {
    // A migration's destination (a machine type given) places its devices as the source
    // has them: here disk0 was hot-plugged, into slot 6 of pc's root bus.
    let placements = machine_type.map(|_| {
        let place = |bus: &str, slot| corral_api::PciPlace {
            bus: bus.into(),
            slot,
            function: 0,
        };
        corral_qemu::placement::Placements::from([
            ("vga0".to_string(), place("pci.0", 2)),
            ("vser0".to_string(), place("pci.0", 3)),
            ("balloon0".to_string(), place("pci.0", 4)),
            ("disk0fd-dev".to_string(), place("pci.0", 6)),
        ])
    });
    // Disks whose id ends in "fd" are passed by descriptor (numbers as a launch would).
    let fds: Vec<DiskFds> = spec
        .disks
        .iter()
        .enumerate()
        .filter(|(_, d)| d.id.ends_with("fd"))
        .map(|(i, d)| DiskFds {
            disk: d.id.clone(),
            set: i as u32 + 1,
            rw: (!d.read_only).then_some(20 + 2 * i as i32),
            ro: 21 + 2 * i as i32,
        })
        .collect();
    let paths = VmPaths::new("/var/lib/corral/run/6f1c2a3e-2d4b-4c1e-9a7f-0123456789ab");
    let block_devices: BTreeSet<String> = block_devices.iter().map(|s| s.to_string()).collect();
    // Even NICs are taps (descriptors as a launch would pass), odd ones user NICs (passt).
    let nics: Vec<NicBackend> = (0..spec.nics.len())
        .map(|i| match i % 2 {
            0 => NicBackend::Tap { fd: 40 + i as i32 },
            _ => NicBackend::Stream {
                socket: paths.dir.join(format!("passt-{i}.sock")),
            },
        })
        .collect();
    // Where the daemon keeps a VM's cloud-init seed.
    let seed = PathBuf::from(format!("/var/lib/corral/cloud-init/{}.iso", spec.uuid));
    let argv = build_argv(&LaunchConfig {
        spec,
        ovmf_code: std::path::Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd"),
        accel,
        paths: &paths,
        confinement,
        incoming,
        machine_type,
        placements: placements.as_ref(),
        disk_fds: &fds,
        block_devices: &block_devices,
        nics: &nics,
        cloud_init_seed: spec.cloud_init.as_ref().map(|_| seed.as_path()),
    });
    let actual = argv.join("\n") + "\n";
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{case}.args"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&file, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            file.display()
        )
    });
    assert_eq!(
        actual, expected,
        "argv for {case} changed; if intended, run with UPDATE_GOLDEN=1 and review"
    );
}

#[test]
fn direct_kernel_boot_no_disks() {
    let mut spec = base_spec();
    spec.kernel = Some(KernelBoot {
        kernel: "/guest/vmlinuz".into(),
        initrd: Some("/guest/initrd.img".into()),
        cmdline: Some("console=ttyS0 quiet".into()),
    });
    check("kernel_boot", &spec, Accel::Tcg, UNCONFINED);
}

#[test]
fn disks_cdrom_and_nics_on_q35() {
    let mut spec = base_spec();
    spec.machine = Machine::Q35;
    spec.vcpus = 4;
    spec.memory_mib = 4096;
    spec.disks = vec![
        Disk {
            id: "disk0".into(),
            volume: Some("web-01-disk0".into()),
            path: "/var/lib/corral/pools/default/web-01-disk0.qcow2".into(),
            format: DiskFormat::Qcow2,
            size_bytes: 2 << 30,
            owned: true,
            read_only: false,
        },
        Disk {
            id: "disk1".into(),
            volume: None,
            path: "/srv/images/data,with-comma.raw".into(),
            format: DiskFormat::Raw,
            size_bytes: 1 << 30,
            owned: false,
            read_only: true,
        },
    ];
    spec.cdrom = Some("/srv/iso/debian-12.iso".into());
    spec.nics = vec![
        Nic {
            kind: NetworkKind::Network,
            source: Some("default".into()),
            mac: "52:54:00:12:34:56".into(),
            ip: Some("10.161.0.2".parse().unwrap()),
            vlan: None,
        },
        Nic {
            kind: NetworkKind::User,
            source: None,
            mac: "52:54:00:12:34:57".into(),
            ip: None,
            vlan: None,
        },
    ];
    check("q35_disks_cdrom_nics", &spec, Accel::Tcg, UNCONFINED);
}

#[test]
fn kvm_confined() {
    let mut spec = base_spec();
    spec.disks = vec![Disk {
        id: "disk0".into(),
        volume: Some("web-01-disk0".into()),
        path: "/var/lib/corral/pools/default/web-01-disk0.qcow2".into(),
        format: DiskFormat::Qcow2,
        size_bytes: 2 << 30,
        owned: true,
        read_only: false,
    }];
    let confinement = Confinement {
        run_as: Some((996, 994)),
        chroot: true,
        sandbox: true,
    };
    check("kvm_confined", &spec, Accel::Kvm, confinement);
}

#[test]
fn uefi_on_q35() {
    let mut spec = base_spec();
    spec.machine = Machine::Q35;
    spec.firmware = Firmware::Uefi;
    spec.nvram = Some("/var/lib/corral/nvram/web-01.fd".into());
    spec.kernel = Some(KernelBoot {
        kernel: "/guest/vmlinuz".into(),
        initrd: None,
        cmdline: None,
    });
    check("uefi_q35", &spec, Accel::Tcg, UNCONFINED);
}

/// Reverting to a memory snapshot: the same machine, waiting for its saved state.
#[test]
fn restore_from_memory_snapshot() {
    let mut spec = base_spec();
    spec.disks = vec![Disk {
        id: "disk0".into(),
        volume: Some("web-01-disk0".into()),
        path: "/var/lib/corral/pools/default/web-01-disk0-1a2b3c4d.qcow2".into(),
        format: DiskFormat::Qcow2,
        size_bytes: 2 << 30,
        owned: true,
        read_only: false,
    }];
    check_with("restore_memory", &spec, Accel::Tcg, UNCONFINED, true);
}

/// A live migration's destination: the source's exact machine type (not the `pc`
/// alias, which a newer QEMU resolves to a newer machine), waiting for the stream.
#[test]
fn incoming_live_migration() {
    let mut spec = base_spec();
    spec.disks = vec![Disk {
        id: "disk0fd".into(),
        volume: Some("web-01-disk0".into()),
        path: "/var/lib/corral/pools/default/web-01-disk0.qcow2".into(),
        format: DiskFormat::Qcow2,
        size_bytes: 2 << 30,
        owned: true,
        read_only: false,
    }];
    check_full(
        "incoming_migration",
        &spec,
        Accel::Tcg,
        UNCONFINED,
        (true, Some("pc-i440fx-7.2")),
        &[],
    );
}

/// How the daemon starts VMs: each disk's top image passed in by descriptor, read-write
/// and read-only, so a confined QEMU can reopen it in either mode.
#[test]
fn disks_passed_by_descriptor() {
    let mut spec = base_spec();
    let disk = |id: &str, read_only| Disk {
        id: id.into(),
        volume: Some(format!("web-01-{id}")),
        path: format!("/var/lib/corral/pools/default/web-01-{id}.qcow2"),
        format: DiskFormat::Qcow2,
        size_bytes: 2 << 30,
        owned: true,
        read_only,
    };
    spec.disks = vec![disk("disk0fd", false), disk("disk1fd", true)];
    check("disk_fds", &spec, Accel::Tcg, UNCONFINED);
}

/// A thin LV of an lvm-thin pool next to an image file: the LV is opened with
/// `host_device` (QEMU's `file` driver refuses block devices), the file with `file`.
#[test]
fn block_device_disk() {
    let mut spec = base_spec();
    spec.disks = vec![
        Disk {
            id: "disk0".into(),
            volume: Some("data".into()),
            path: "/dev/vg0/data".into(),
            format: DiskFormat::Raw,
            size_bytes: 8 << 30,
            owned: false,
            read_only: false,
        },
        Disk {
            id: "disk1".into(),
            volume: Some("web-01-disk1".into()),
            path: "/var/lib/corral/pools/default/web-01-disk1.qcow2".into(),
            format: DiskFormat::Qcow2,
            size_bytes: 2 << 30,
            owned: true,
            read_only: false,
        },
    ];
    check_with_devices(
        "block_device_disk",
        &spec,
        Accel::Tcg,
        UNCONFINED,
        &["disk0"],
    );
}

/// cloud-init: the seed CD comes after the VM's own CD-ROM, with no boot index.
#[test]
fn cloud_init_seed_after_cdrom() {
    let mut spec = base_spec();
    spec.disks = vec![Disk {
        id: "disk0".into(),
        volume: Some("web-01-disk0".into()),
        path: "/var/lib/corral/pools/default/web-01-disk0.qcow2".into(),
        format: DiskFormat::Qcow2,
        size_bytes: 2 << 30,
        owned: true,
        read_only: false,
    }];
    spec.cdrom = Some("/srv/iso/tools.iso".into());
    spec.cloud_init = Some(CloudInit::default());
    check("cloud_init_pc", &spec, Accel::Tcg, UNCONFINED);
    spec.machine = Machine::Q35;
    spec.cdrom = None;
    check("cloud_init_q35", &spec, Accel::Tcg, UNCONFINED);
}
