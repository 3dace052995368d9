//! Table tests of the destination's pre-flight: one change to a VM or host that
//! passes, and the check that must fail with its field.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use corral_api::{
    Disk, DiskFormat, DiskPlan, DiskTransfer, Firmware, IncomingVm, KernelBoot, Machine,
    NetworkKind, NetworkSpec, NetworkType, Nic, PoolSpec, SnapshotTree, VmSpec, VmStatus, Volume,
};
use uuid::Uuid;

use super::*;

fn pool(name: &str, shared: bool) -> PoolSpec {
    PoolSpec {
        name: name.into(),
        driver: "dir".into(),
        path: Some(format!("/srv/{name}")),
        volume_group: None,
        thin_pool: None,
        shared,
    }
}

fn volume(name: &str, pool: &str) -> Volume {
    Volume {
        name: name.into(),
        pool: pool.into(),
        format: DiskFormat::Qcow2,
        size_bytes: 1 << 30,
        path: format!("/srv/{pool}/{name}.qcow2"),
        owner: Some("web".into()),
        created_at: 1,
        used_by: vec![],
        allocation_bytes: None,
        base_image: None,
        base_snapshot: None,
        base_file: None,
    }
}

/// A running VM with a copied disk, a shared disk, a NAT NIC and a kernel boot.
fn vm() -> IncomingVm {
    let copied = volume("web-disk0", "default");
    let shared = volume("web-data", "san");
    let disk = |id: &str, v: &Volume| Disk {
        id: id.into(),
        volume: Some(v.name.clone()),
        path: v.path.clone(),
        format: DiskFormat::Qcow2,
        size_bytes: v.size_bytes,
        owned: true,
        read_only: false,
    };
    IncomingVm {
        id: Uuid::new_v4(),
        source: "h1".into(),
        source_fingerprint: Some("aa".into()),
        spec: VmSpec {
            name: "web".into(),
            uuid: Uuid::new_v4(),
            memory_mib: 512,
            vcpus: 2,
            machine: Machine::Pc,
            firmware: Firmware::Bios,
            nvram: None,
            disks: vec![disk("disk0", &copied), disk("disk1", &shared)],
            cdrom: None,
            kernel: Some(KernelBoot {
                kernel: "/boot/vmlinuz".into(),
                initrd: Some("/boot/initrd.img".into()),
                cmdline: None,
            }),
            nics: vec![Nic {
                kind: NetworkKind::Network,
                source: Some("default".into()),
                mac: "52:54:00:00:00:01".into(),
                ip: Some("10.0.7.20".parse().unwrap()),
                vlan: None,
            }],
            firewall: vec![],
            cloud_init: None,
        },
        status: VmStatus::stopped(None),
        machine_type: "pc-i440fx-7.2".into(),
        qemu_version: "7.2.22".into(),
        accel: "tcg".into(),
        cpu_flags: vec!["sse2".into(), "avx2".into()],
        destination_address: "10.0.0.2".into(),
        postcopy: false,
        volumes: vec![copied, shared],
        pools: vec![pool("default", false), pool("san", true)],
        disks: vec![
            DiskPlan {
                disk: "disk0".into(),
                transfer: DiskTransfer::Copy,
                bytes: 100 << 20,
            },
            DiskPlan {
                disk: "disk1".into(),
                transfer: DiskTransfer::Shared,
                bytes: 0,
            },
        ],
        snapshots: SnapshotTree {
            snapshots: vec![],
            current: None,
        },
        chain_files: vec![],
        nvram_b64: None,
        created_at: 1,
        events: vec![],
        pci: Default::default(),
        images: vec![],
    }
}

/// A destination that takes [`vm`].
fn host() -> DestFacts {
    let net = NetworkSpec {
        name: "default".into(),
        kind: NetworkType::Nat,
        bridge: "corral0".into(),
        subnet: Some("10.0.7.1/24".into()),
        dhcp: true,
        forwards: vec![],
    };
    DestFacts {
        hostname: "h2".into(),
        tls_fingerprint: Some("bb".into()),
        qemu_version: "7.2.22".into(),
        machine_types: ["pc-i440fx-7.2", "pc", "q35"].map(String::from).into(),
        accel: "tcg".into(),
        cpus: 2,
        memory_available: 4 << 30,
        networks: BTreeMap::from([("default".to_string(), net)]),
        pools: BTreeMap::from([
            ("default".to_string(), (pool("default", false), 10 << 30)),
            ("san".to_string(), (pool("san", true), 10 << 30)),
        ]),
        files: [
            "/srv/san/web-data.qcow2",
            "/boot/vmlinuz",
            "/boot/initrd.img",
        ]
        .map(|f| (f.to_string(), 1_u64 << 20))
        .into(),
        uefi: true,
        root: true,
        userfaultfd: false,
        ..DestFacts::default()
    }
}

/// A file below disk0's top, in `pool` (none: the user's `--image`).
fn chain_file(pool: Option<&str>) -> corral_api::ChainFile {
    corral_api::ChainFile {
        disk: "disk0".into(),
        path: "/srv/base.qcow2".into(),
        pool: pool.map(str::to_string),
        size_bytes: 1 << 20,
        format: DiskFormat::Qcow2,
        sha256: String::new(),
    }
}

/// The failed checks, as (check, field).
fn failures(vm: &IncomingVm, host: &DestFacts) -> Vec<(String, String)> {
    check(vm, host)
        .into_iter()
        .filter(|c| !c.ok)
        .map(|c| {
            assert!(c.hint.is_some(), "every failure has a hint: {c:?}");
            (c.check, c.field.unwrap_or_default())
        })
        .collect()
}

#[test]
fn a_fitting_destination_passes_every_check() {
    let checks = check(&vm(), &host());
    assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
    assert!(checks.iter().any(|c| c.check == "disk-space"));
}

#[test]
fn each_lack_fails_its_own_check_with_the_field_at_fault() {
    type Change = fn(&mut IncomingVm, &mut DestFacts);
    let table: &[(&str, Change, &str, &str)] = &[
        (
            "name taken",
            |_, h| {
                h.vm_names.insert("web".into());
            },
            "name",
            "name",
        ),
        (
            "uuid taken",
            |v, h| {
                h.vm_uuids.insert(v.spec.uuid.to_string());
            },
            "name",
            "uuid",
        ),
        (
            "older QEMU",
            |_, h| {
                h.machine_types.remove("pc-i440fx-7.2");
            },
            "machine",
            "machine",
        ),
        (
            "other accelerator",
            |_, h| h.accel = "kvm".into(),
            "cpu",
            "accel",
        ),
        (
            "too little memory",
            |_, h| h.memory_available = 600 << 20,
            "memory",
            "memory_mib",
        ),
        ("too few CPUs", |_, h| h.cpus = 1, "vcpus", "vcpus"),
        (
            "no such network",
            |_, h| h.networks.clear(),
            "network",
            "nics[0].source",
        ),
        (
            "address taken",
            |_, h| {
                h.reserved.insert(
                    "default".into(),
                    BTreeSet::from(["10.0.7.20".parse().unwrap()]),
                );
            },
            "network",
            "nics[0].ip",
        ),
        (
            "other subnet",
            |_, h| {
                if let Some(n) = h.networks.get_mut("default") {
                    n.subnet = Some("10.9.0.1/24".into());
                }
            },
            "network",
            "nics[0].ip",
        ),
        (
            "MAC in use",
            |_, h| {
                h.macs_in_use.insert("52:54:00:00:00:01".into());
            },
            "network",
            "nics[0].mac",
        ),
        (
            "no bridge",
            |v, h| {
                v.spec.nics[0].kind = NetworkKind::Bridge;
                v.spec.nics[0].source = Some("br0".into());
                h.bridges.clear();
            },
            "network",
            "nics[0].source",
        ),
        (
            "pool missing",
            |_, h| {
                h.pools.remove("default");
            },
            "pool",
            "disks[0].volume",
        ),
        (
            "copy into an lvm pool",
            |_, h| {
                if let Some(p) = h.pools.get_mut("default") {
                    p.0.driver = "lvm-thin".into();
                }
            },
            "pool",
            "disks[0].volume",
        ),
        (
            "volume name taken",
            |_, h| {
                h.volume_names.insert("web-disk0".into());
            },
            "pool",
            "disks[0].volume",
        ),
        (
            "pool full",
            |_, h| {
                if let Some(p) = h.pools.get_mut("default") {
                    p.1 = 10 << 20;
                }
            },
            "disk-space",
            "disks",
        ),
        (
            "shared pool not shared there",
            |_, h| {
                if let Some(p) = h.pools.get_mut("san") {
                    p.0.shared = false;
                }
            },
            "pool",
            "disks[1].volume",
        ),
        (
            "shared file not seen",
            |_, h| {
                h.files.remove("/srv/san/web-data.qcow2");
            },
            "disk",
            "disks[1].path",
        ),
        (
            "path disk on local storage",
            |v, _| {
                v.spec.disks[0].volume = None;
            },
            "disk",
            "disks[0].path",
        ),
        (
            "no kernel there",
            |_, h| {
                h.files.remove("/boot/vmlinuz");
            },
            "files",
            "kernel.kernel",
        ),
        (
            "no initrd there",
            |_, h| {
                h.files.remove("/boot/initrd.img");
            },
            "files",
            "kernel.initrd",
        ),
        (
            "no CD there",
            |v, _| v.spec.cdrom = Some("/iso/x.iso".into()),
            "files",
            "cdrom",
        ),
        (
            "no OVMF there",
            |v, h| {
                v.spec.firmware = Firmware::Uefi;
                h.uefi = false;
            },
            "firmware",
            "firmware",
        ),
        (
            "KVM and a CPU without the source's features",
            |v, h| {
                v.accel = "kvm".into();
                h.accel = "kvm".into();
                h.cpu_flags = ["sse2".to_string()].into();
            },
            "cpu",
            "cpu",
        ),
        (
            "a chain file's pool missing",
            |v, _| v.chain_files.push(chain_file(Some("fast"))),
            "pool",
            "disks[0]",
        ),
        (
            "the user's base image missing",
            |v, _| v.chain_files.push(chain_file(None)),
            "files",
            "disks[0]",
        ),
        (
            "chain files do not fit",
            |v, _| {
                let mut f = chain_file(Some("default"));
                f.size_bytes = 20 << 30;
                v.chain_files.push(f);
            },
            "disk-space",
            "disks",
        ),
        (
            "bridge but not root",
            |v, h| {
                v.spec.nics[0].kind = NetworkKind::Bridge;
                v.spec.nics[0].source = Some("br0".into());
                h.bridges.insert("br0".into());
                h.root = false;
            },
            "network",
            "nics[0].kind",
        ),
    ];
    for (what, change, check, field) in table {
        let (mut v, mut h) = (vm(), host());
        change(&mut v, &mut h);
        let failed = failures(&v, &h);
        assert_eq!(
            failed,
            vec![(check.to_string(), field.to_string())],
            "{what}"
        );
    }
}

#[test]
fn subnets_hold_their_addresses() {
    assert!(in_subnet("10.0.7.20".parse().unwrap(), "10.0.7.1/24"));
    assert!(!in_subnet("10.0.8.20".parse().unwrap(), "10.0.7.1/24"));
    assert!(in_subnet("1.2.3.4".parse().unwrap(), "0.0.0.0/0"));
    assert!(!in_subnet("1.2.3.4".parse().unwrap(), "garbage"));
}
