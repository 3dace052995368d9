//! "Why it will fail" before anything moves: the destination's checks are a pure
//! function of what the source sends ([`IncomingVm`]) and what the destination is
//! ([`DestFacts`]), so every refusal is table-tested. Each failure names the field of
//! the VM at fault and a hint, like create's bad input.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use corral_api::{DiskTransfer, IncomingVm, NetworkKind, NetworkSpec, PoolSpec, PreflightCheck};

/// What the destination is, gathered before the checks run.
#[derive(Debug, Clone, Default)]
pub struct DestFacts {
    pub hostname: String,
    /// This corrald's HTTPS certificate fingerprint.
    pub tls_fingerprint: Option<String>,
    pub qemu_version: String,
    /// Machine types this QEMU runs (`pc-i440fx-7.2`, `q35`, …).
    pub machine_types: BTreeSet<String>,
    pub accel: String,
    pub cpus: u32,
    /// Memory the host could give a new guest now (MemAvailable), bytes.
    pub memory_available: u64,
    pub vm_names: BTreeSet<String>,
    pub vm_uuids: BTreeSet<String>,
    pub macs_in_use: BTreeSet<String>,
    pub volume_names: BTreeSet<String>,
    pub networks: BTreeMap<String, NetworkSpec>,
    /// Addresses reserved on each network.
    pub reserved: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    /// Host bridges that exist (for `bridge=` NICs).
    pub bridges: BTreeSet<String>,
    /// Pools, with the bytes free on each.
    pub pools: BTreeMap<String, (PoolSpec, u64)>,
    /// Of the files the VM needs that are not copied (kernel, initrd, CD, shared disks),
    /// those that exist here, with their sizes.
    pub files: BTreeMap<String, u64>,
    /// OVMF is installed.
    pub uefi: bool,
    /// Running as root (taps for bridged NICs).
    pub root: bool,
    /// This host's (unprivileged) QEMU may use userfaultfd, which post-copy needs.
    pub userfaultfd: bool,
    /// This host CPU's feature flags.
    pub cpu_flags: BTreeSet<String>,
}

/// Memory a host keeps for itself beyond the guest's, so that the arrival does not
/// push the destination into swapping.
const MEMORY_MARGIN: u64 = 256 << 20;

/// Every check, passed or failed, in a stable order.
pub fn check(vm: &IncomingVm, host: &DestFacts) -> Vec<PreflightCheck> {
    let mut checks = vec![identity(vm, host), machine(vm, host), accel(vm, host)];
    checks.push(memory(vm, host));
    checks.push(vcpus(vm, host));
    if vm.postcopy {
        checks.push(postcopy(host));
    }
    checks.extend(networks(vm, host));
    checks.extend(disks(vm, host));
    checks.extend(boot_files(vm, host));
    checks
}

fn identity(vm: &IncomingVm, host: &DestFacts) -> PreflightCheck {
    let name = &vm.spec.name;
    if vm.source_fingerprint.is_some() && vm.source_fingerprint == host.tls_fingerprint {
        return PreflightCheck::fail(
            "reachable",
            "destination.url",
            "the destination is the source's own corrald",
            "migrate to another host's corrald",
        );
    }
    if host.vm_names.contains(name) {
        return PreflightCheck::fail(
            "name",
            "name",
            format!("{} already has a VM named '{name}'", host.hostname),
            "rename or delete the VM there first",
        );
    }
    if host.vm_uuids.contains(&vm.spec.uuid.to_string()) {
        return PreflightCheck::fail(
            "name",
            "uuid",
            format!(
                "{} already has a VM with UUID {}",
                host.hostname, vm.spec.uuid
            ),
            "a clone of this VM lives there; it cannot hold both",
        );
    }
    PreflightCheck::pass("name", format!("'{name}' is free on {}", host.hostname))
}

fn machine(vm: &IncomingVm, host: &DestFacts) -> PreflightCheck {
    if host.machine_types.contains(&vm.machine_type) {
        return PreflightCheck::pass(
            "machine",
            format!(
                "QEMU {} runs machine {}",
                host.qemu_version, vm.machine_type
            ),
        );
    }
    PreflightCheck::fail(
        "machine",
        "machine",
        format!(
            "QEMU {} on {} has no machine type {} (the source runs QEMU {})",
            host.qemu_version, host.hostname, vm.machine_type, vm.qemu_version
        ),
        "migrate to a host with the same or a newer QEMU",
    )
}

fn accel(vm: &IncomingVm, host: &DestFacts) -> PreflightCheck {
    if vm.accel == host.accel && vm.accel == "kvm" {
        // KVM guests run on `-cpu host`: the destination's CPU must do all the source's.
        let missing: Vec<&str> = vm
            .cpu_flags
            .iter()
            .filter(|f| !host.cpu_flags.contains(*f))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return PreflightCheck::fail(
                "cpu",
                "cpu",
                format!(
                    "{}'s CPU lacks {} feature(s) the guest may use: {}",
                    host.hostname,
                    missing.len(),
                    missing
                        .iter()
                        .take(8)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                "migrate between hosts with the same CPU model, or stop the VM and start it there",
            );
        }
    }
    if vm.accel == host.accel {
        return PreflightCheck::pass("cpu", format!("both hosts run guests on {}", host.accel));
    }
    PreflightCheck::fail(
        "cpu",
        "accel",
        format!(
            "the guest runs on {} here but {} would run it on {}: a running guest cannot change accelerator",
            vm.accel, host.hostname, host.accel
        ),
        "start both corralds with the same --accel, or stop the VM and start it there",
    )
}

fn memory(vm: &IncomingVm, host: &DestFacts) -> PreflightCheck {
    let need = (vm.spec.memory_mib << 20) + MEMORY_MARGIN;
    if host.memory_available >= need {
        return PreflightCheck::pass(
            "memory",
            format!(
                "{} MiB free for {} MiB",
                host.memory_available >> 20,
                vm.spec.memory_mib
            ),
        );
    }
    PreflightCheck::fail(
        "memory",
        "memory_mib",
        format!(
            "{} has {} MiB available; the guest needs {} MiB (and {} MiB for the host)",
            host.hostname,
            host.memory_available >> 20,
            vm.spec.memory_mib,
            MEMORY_MARGIN >> 20
        ),
        "free memory there (stop or migrate VMs away), or pick another host",
    )
}

fn vcpus(vm: &IncomingVm, host: &DestFacts) -> PreflightCheck {
    if vm.spec.vcpus <= host.cpus {
        return PreflightCheck::pass("vcpus", format!("{} CPUs", host.cpus));
    }
    PreflightCheck::fail(
        "vcpus",
        "vcpus",
        format!(
            "{} has {} CPUs; the guest has {} vCPUs",
            host.hostname, host.cpus, vm.spec.vcpus
        ),
        "pick a host with at least as many CPUs",
    )
}

fn postcopy(host: &DestFacts) -> PreflightCheck {
    if host.userfaultfd {
        return PreflightCheck::pass("postcopy", "QEMU may use userfaultfd");
    }
    PreflightCheck::fail(
        "postcopy",
        "postcopy",
        format!(
            "QEMU on {} runs unprivileged and the kernel gives such processes no userfaultfd \
             (vm.unprivileged_userfaultfd = 0); post-copy needs it",
            host.hostname
        ),
        "`sysctl -w vm.unprivileged_userfaultfd=1` there, or migrate without --postcopy",
    )
}

fn networks(vm: &IncomingVm, host: &DestFacts) -> Vec<PreflightCheck> {
    let mut checks = Vec::new();
    for (i, nic) in vm.spec.nics.iter().enumerate() {
        let field = format!("nics[{i}]");
        let source = nic.source.clone().unwrap_or_default();
        if host.macs_in_use.contains(&nic.mac) {
            checks.push(PreflightCheck::fail(
                "network",
                format!("{field}.mac"),
                format!("a VM on {} already has MAC {}", host.hostname, nic.mac),
                "two guests with one MAC would fight over it; change one of them",
            ));
            continue;
        }
        let check = match nic.kind {
            NetworkKind::User => PreflightCheck::pass("network", format!("{field}: user-mode")),
            NetworkKind::Bridge if !host.root => PreflightCheck::fail(
                "network",
                format!("{field}.kind"),
                format!(
                    "bridged NICs need corrald on {} to run as root",
                    host.hostname
                ),
                "run the destination's corrald as root",
            ),
            NetworkKind::Bridge if host.bridges.contains(&source) => {
                PreflightCheck::pass("network", format!("{field}: bridge {source}"))
            }
            NetworkKind::Bridge => PreflightCheck::fail(
                "network",
                format!("{field}.source"),
                format!("{} has no bridge '{source}'", host.hostname),
                "make the bridge there (the same name), or migrate elsewhere",
            ),
            NetworkKind::Network => managed_network(nic, &field, &source, host),
        };
        checks.push(check);
    }
    checks
}

fn managed_network(
    nic: &corral_api::Nic,
    field: &str,
    source: &str,
    host: &DestFacts,
) -> PreflightCheck {
    let Some(net) = host.networks.get(source) else {
        return PreflightCheck::fail(
            "network",
            format!("{field}.source"),
            format!("{} has no network '{source}'", host.hostname),
            format!("make it there with `corral network create {source}` (same type and subnet)"),
        );
    };
    if let Some(ip) = nic.ip {
        let reserved = host.reserved.get(source).is_some_and(|r| r.contains(&ip));
        if reserved {
            return PreflightCheck::fail(
                "network",
                format!("{field}.ip"),
                format!(
                    "{ip} is already reserved on network '{source}' of {}",
                    host.hostname
                ),
                "the guest keeps its address; free it there first",
            );
        }
        if !net.subnet.as_deref().is_some_and(|s| in_subnet(ip, s)) {
            return PreflightCheck::fail(
                "network",
                format!("{field}.ip"),
                format!(
                    "network '{source}' of {} is {}, which does not hold the guest's {ip}",
                    host.hostname,
                    net.subnet.as_deref().unwrap_or("without a subnet")
                ),
                "give the network the same subnet on both hosts",
            );
        }
    }
    PreflightCheck::pass("network", format!("{field}: network {source}"))
}

/// Whether `ip` is inside `cidr` (`10.0.7.1/24`).
fn in_subnet(ip: Ipv4Addr, cidr: &str) -> bool {
    let Some((addr, prefix)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(addr), Ok(prefix)) = (addr.parse::<Ipv4Addr>(), prefix.parse::<u32>()) else {
        return false;
    };
    if prefix > 32 {
        return false;
    }
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(addr) & mask
}

fn disks(vm: &IncomingVm, host: &DestFacts) -> Vec<PreflightCheck> {
    let mut checks = Vec::new();
    let mut copy_per_pool: BTreeMap<String, u64> = BTreeMap::new();
    for (i, disk) in vm.spec.disks.iter().enumerate() {
        let field = format!("disks[{i}]");
        let plan = vm.disks.iter().find(|p| p.disk == disk.id);
        let volume = disk
            .volume
            .as_ref()
            .and_then(|v| vm.volumes.iter().find(|vol| &vol.name == v));
        let check = match (plan.map(|p| p.transfer), volume) {
            (Some(DiskTransfer::Shared), _) => shared_disk(disk, &field, volume, host),
            (Some(DiskTransfer::Copy), Some(vol)) => {
                let bytes = plan.map_or(0, |p| p.bytes);
                *copy_per_pool.entry(vol.pool.clone()).or_default() += bytes;
                copied_disk(vol, &field, host)
            }
            (Some(DiskTransfer::Copy), None) | (None, _) => PreflightCheck::fail(
                "disk",
                format!("{field}.path"),
                format!(
                    "disk {} ({}) is a file attached by path on local storage",
                    disk.id, disk.path
                ),
                "put it on a shared pool, or import it as a volume (`corral volume import`)",
            ),
        };
        checks.push(check);
    }
    checks.extend(chain_files(vm, host, &mut copy_per_pool));
    for (pool, bytes) in copy_per_pool {
        // A missing pool has failed its own check already.
        let Some((_, free)) = host.pools.get(&pool) else {
            continue;
        };
        let free = *free;
        checks.push(if free >= bytes {
            PreflightCheck::pass(
                "disk-space",
                format!(
                    "pool {pool}: {} MiB free for {} MiB",
                    free >> 20,
                    bytes >> 20
                ),
            )
        } else {
            PreflightCheck::fail(
                "disk-space",
                "disks",
                format!(
                    "pool '{pool}' on {} has {} MiB free; the copied disks need {} MiB",
                    host.hostname,
                    free >> 20,
                    bytes >> 20
                ),
                "free space in that pool, or migrate elsewhere",
            )
        });
    }
    checks
}

/// The files below copied disks' tops: a pool file needs its pool here (and counts
/// toward its space, in case it is not here yet); a user's file must be here already,
/// at the same path and of the same size (its bytes are compared when it moves).
fn chain_files(
    vm: &IncomingVm,
    host: &DestFacts,
    copy_per_pool: &mut BTreeMap<String, u64>,
) -> Vec<PreflightCheck> {
    let mut checks = Vec::new();
    for f in &vm.chain_files {
        let i = vm
            .spec
            .disks
            .iter()
            .position(|d| d.id == f.disk)
            .unwrap_or(0);
        let field = format!("disks[{i}]");
        match &f.pool {
            Some(pool) if host.pools.contains_key(pool) => {
                *copy_per_pool.entry(pool.clone()).or_default() += f.size_bytes;
            }
            Some(pool) => checks.push(PreflightCheck::fail(
                "pool",
                field,
                format!(
                    "disk {} reads through {} in pool '{pool}', which {} lacks",
                    f.disk, f.path, host.hostname
                ),
                format!("create a pool named {pool} there"),
            )),
            None if host.files.get(&f.path) == Some(&f.size_bytes) => {
                checks.push(PreflightCheck::pass(
                    "files",
                    format!("{field} reads through {}, also there", f.path),
                ))
            }
            None => checks.push(PreflightCheck::fail(
                "files",
                field,
                format!(
                    "disk {} reads through {}, which {} does not have (of {} bytes)",
                    f.disk, f.path, host.hostname, f.size_bytes
                ),
                "copy that image there at the same path (Corral never writes your files)",
            )),
        }
    }
    checks
}

fn shared_disk(
    disk: &corral_api::Disk,
    field: &str,
    volume: Option<&corral_api::Volume>,
    host: &DestFacts,
) -> PreflightCheck {
    if let Some(vol) = volume {
        match host.pools.get(&vol.pool) {
            Some((pool, _)) if pool.shared => {}
            _ => {
                return PreflightCheck::fail(
                    "pool",
                    format!("{field}.volume"),
                    format!(
                        "{} has no shared pool '{}' for volume {}",
                        host.hostname, vol.pool, vol.name
                    ),
                    format!(
                        "create it there on the same storage: `corral pool create {} --path … --shared`",
                        vol.pool
                    ),
                )
            }
        }
        if let Some(taken) = volume_name_taken(vol, field, host) {
            return taken;
        }
    }
    match host.files.get(&disk.path) {
        Some(size) if *size > 0 => PreflightCheck::pass(
            "disk",
            format!("{field}: {} is on shared storage", disk.path),
        ),
        _ => PreflightCheck::fail(
            "disk",
            format!("{field}.path"),
            format!(
                "{} does not see {} (shared storage)",
                host.hostname, disk.path
            ),
            "mount the shared storage at the same path on both hosts",
        ),
    }
}

/// A volume's record moves with the VM: its name must be free there.
fn volume_name_taken(
    vol: &corral_api::Volume,
    field: &str,
    host: &DestFacts,
) -> Option<PreflightCheck> {
    host.volume_names.contains(&vol.name).then(|| {
        PreflightCheck::fail(
            "pool",
            format!("{field}.volume"),
            format!("{} already has a volume named {}", host.hostname, vol.name),
            "rename or delete that volume there first",
        )
    })
}

fn copied_disk(vol: &corral_api::Volume, field: &str, host: &DestFacts) -> PreflightCheck {
    let Some((pool, _)) = host.pools.get(&vol.pool) else {
        return PreflightCheck::fail(
            "pool",
            format!("{field}.volume"),
            format!(
                "{} has no pool '{}' for volume {}",
                host.hostname, vol.pool, vol.name
            ),
            format!("create a pool named {} there", vol.pool),
        );
    };
    if pool.driver != "dir" {
        return PreflightCheck::fail(
            "pool",
            format!("{field}.volume"),
            format!(
                "pool '{}' on {} is a {} pool; disks are copied into dir pools only",
                vol.pool, host.hostname, pool.driver
            ),
            "give the destination a dir pool of that name, or use shared storage",
        );
    }
    if let Some(taken) = volume_name_taken(vol, field, host) {
        return taken;
    }
    PreflightCheck::pass(
        "disk",
        format!(
            "{field}: volume {} is copied into pool {}",
            vol.name, vol.pool
        ),
    )
}

fn boot_files(vm: &IncomingVm, host: &DestFacts) -> Vec<PreflightCheck> {
    let mut checks = Vec::new();
    let mut need = |field: &str, path: &str, what: &str| {
        checks.push(if host.files.contains_key(path) {
            PreflightCheck::pass("files", format!("{what} {path}"))
        } else {
            PreflightCheck::fail(
                "files",
                field,
                format!("{} has no {what} {path}", host.hostname),
                "copy it there at the same path, or migrate to a host that has it",
            )
        });
    };
    if let Some(k) = &vm.spec.kernel {
        need("kernel.kernel", &k.kernel, "kernel");
        if let Some(initrd) = &k.initrd {
            need("kernel.initrd", initrd, "initrd");
        }
    }
    if let Some(cd) = &vm.spec.cdrom {
        need("cdrom", cd, "CD image");
    }
    if vm.spec.firmware == corral_api::Firmware::Uefi && !host.uefi {
        checks.push(PreflightCheck::fail(
            "firmware",
            "firmware",
            format!("{} has no UEFI firmware (OVMF)", host.hostname),
            "install Debian's ovmf there",
        ));
    }
    checks
}

#[cfg(test)]
#[path = "preflight_tests.rs"]
mod tests;
