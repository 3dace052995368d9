//! The QEMU command line as a pure function of the spec (DESIGN.md §7).
//!
//! Nothing here touches the host: the same [`LaunchConfig`] always yields the same argv,
//! and the golden tests (`tests/golden/`) pin it, so any change to what Corral asks of QEMU
//! shows up in review.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use corral_api::{Accel, Disk, Firmware, Machine, VmSpec};
use serde_json::json;

/// Where a VM's runtime files live. QEMU is chrooted into `dir`, so every path it must
/// open after start-up is opened before it drops privileges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    pub dir: PathBuf,
}

impl VmPaths {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        VmPaths { dir: dir.into() }
    }
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    pub fn console_socket(&self) -> PathBuf {
        self.dir.join("console.sock")
    }
    /// QEMU's VNC server (a Unix socket, never TCP); the daemon proxies it to websockets.
    pub fn vnc_socket(&self) -> PathBuf {
        self.dir.join("vnc.sock")
    }
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// The host end of the guest agent's channel (see [`crate::agent`]).
    pub fn agent_socket(&self) -> PathBuf {
        self.dir.join("qga.sock")
    }
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }
    /// QEMU's own stderr (its error messages).
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }
    /// The QMP traffic log.
    pub fn qmp_log(&self) -> PathBuf {
        self.dir.join("qmp.log")
    }
}

/// How QEMU is confined once it has opened its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confinement {
    /// Drop to this uid:gid after start-up (`-runas`); `None` when not root.
    pub run_as: Option<(u32, u32)>,
    /// chroot into the VM's runtime dir after start-up.
    pub chroot: bool,
    /// QEMU's seccomp filter.
    pub sandbox: bool,
}

pub struct LaunchConfig<'a> {
    pub spec: &'a VmSpec,
    /// OVMF's code image, for UEFI VMs (their variables are `spec.nvram`).
    pub ovmf_code: &'a Path,
    pub accel: Accel,
    pub paths: &'a VmPaths,
    pub confinement: Confinement,
    /// Disks whose top image the daemon opened and passes in by descriptor (see
    /// [`DiskFds`]); the others are opened by QEMU by path.
    pub disk_fds: &'a [DiskFds],
    /// Start waiting for a saved memory/device state (`-incoming defer`): the daemon then
    /// passes the state file and runs `migrate-incoming` (reverting to a memory snapshot).
    pub incoming: bool,
    /// The exact machine type to run (a migration's destination runs the source's
    /// resolved `pc-i440fx-7.2`, whatever `pc` means to its own QEMU); `None`: the
    /// spec's machine.
    pub machine_type: Option<&'a str>,
    /// Where each PCI device goes (a migration's destination: where the source has it);
    /// `None`: in command line order, as on any start.
    pub placements: Option<&'a crate::placement::Placements>,
    /// Ids of the disks whose image is a block device (an LV, a partition), found by
    /// the launcher from the descriptors it opened: QEMU opens those with `host_device`.
    pub block_devices: &'a BTreeSet<String>,
    /// Each NIC's host end, in the spec's order, made by the daemon before launch.
    pub nics: &'a [NicBackend],
    /// The VM's cloud-init seed (an ISO labelled `cidata`), attached as one more
    /// read-only CD-ROM when the spec asks for cloud-init.
    pub cloud_init_seed: Option<&'a Path>,
}

/// The host end of a NIC, made before QEMU starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicBackend {
    /// A tap on a bridge, opened by the daemon; QEMU inherits the descriptor.
    Tap { fd: i32 },
    /// A user-mode NIC: passt listening on this Unix socket (QEMU connects).
    Stream { socket: std::path::PathBuf },
}

/// A disk's top image as descriptors QEMU inherits, gathered in fd set `set` (tagged
/// with the disk id). QEMU, chrooted and unprivileged, cannot open files later; with both
/// a read-write and a read-only descriptor in the set it can still reopen the image in
/// either mode, which a live snapshot does to the image it freezes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFds {
    pub disk: String,
    pub set: u32,
    /// The read-write descriptor (none for a read-only disk).
    pub rw: Option<i32>,
    pub ro: i32,
}

/// QEMU's protocol driver for an image: `file` refuses block devices ("'file' driver
/// requires '/dev/…' to be a regular file"), `host_device` refuses regular files.
pub fn protocol_driver(block_device: bool) -> &'static str {
    if block_device {
        "host_device"
    } else {
        "file"
    }
}

/// How many empty PCIe root ports a q35 VM gets for devices plugged while it runs
/// (its root bus takes none); libvirt likewise adds spare ports.
pub const HOTPLUG_PORTS: usize = 4;

/// The ids of the spare root ports hot-plugged devices go into: none on `pc`, whose
/// root bus takes them (ACPI hot-plug), [`HOTPLUG_PORTS`] on q35.
pub fn hotplug_ports(machine: Machine) -> Vec<String> {
    match machine {
        Machine::Pc => Vec::new(),
        Machine::Q35 => (0..HOTPLUG_PORTS).map(|i| format!("hp{i}")).collect(),
    }
}

/// A NIC's netdev id, from its MAC (unique on the host): stable whatever the NIC's
/// place in the spec, so a NIC plugged or unplugged while the VM runs is found again.
pub fn nic_netdev_id(mac: &str) -> String {
    format!("net-{}", mac.replace(':', "").to_ascii_lowercase())
}

/// A NIC's guest device id (see [`nic_netdev_id`]).
pub fn nic_device_id(mac: &str) -> String {
    format!("{}-dev", nic_netdev_id(mac))
}

/// Builds QEMU's arguments (without the binary itself).
pub fn build_argv(cfg: &LaunchConfig<'_>) -> Vec<String> {
    let spec = cfg.spec;
    let mut a = Args::default();
    a.push2("-name", format!("guest={},debug-threads=on", spec.name));
    a.push2("-uuid", spec.uuid.to_string());
    a.push2("-machine", machine_arg(spec.machine, cfg.machine_type));
    a.push2("-accel", cfg.accel.as_str());
    if cfg.accel == Accel::Kvm {
        a.push2("-cpu", "host");
    }
    if spec.firmware == Firmware::Uefi {
        // Code read-only and shared; variables the VM's own (kept in its snapshots).
        a.push2(
            "-drive",
            format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                path(cfg.ovmf_code)
            ),
        );
        if let Some(vars) = &spec.nvram {
            a.push2("-drive", format!("if=pflash,format=raw,unit=1,file={vars}"));
        }
    }
    a.push2("-m", format!("{}M", spec.memory_mib));
    a.push2("-smp", spec.vcpus.to_string());
    // Only the devices we ask for; no ~/.qemu config; no window.
    a.push("-nodefaults");
    a.push("-no-user-config");
    a.push2("-display", "none");
    // Start paused: the daemon sets up over QMP, then sends `cont` (DESIGN.md §6).
    a.push("-S");
    if cfg.incoming {
        a.push2("-incoming", "defer");
    }
    a.push2("-msg", "timestamp=on");
    a.push2("-pidfile", path(&cfg.paths.pidfile()));
    a.push2(
        "-qmp",
        format!("unix:{},server=on,wait=off", path(&cfg.paths.qmp_socket())),
    );
    let place = |id: &str| crate::placement::suffix(cfg.placements, id);
    serial_args(&mut a, cfg.paths);
    display_args(&mut a, cfg.paths, &place("vga0"));
    agent_args(&mut a, cfg.paths, &place("vser0"));
    // Placed devices may sit on the spare root ports, which must then exist first;
    // otherwise they come last (where they always have: moving them would move every
    // device after them, and with them the guest's names for its NICs).
    if cfg.placements.is_some() {
        root_port_args(&mut a, spec, &place);
    }
    for (i, disk) in spec.disks.iter().enumerate() {
        let fds = cfg.disk_fds.iter().find(|f| f.disk == disk.id);
        let block_device = cfg.block_devices.contains(&disk.id);
        let placed = place(&format!("{}-dev", disk.id));
        disk_args(&mut a, i + 1, disk, (fds, block_device), &placed);
    }
    if let Some(iso) = &spec.cdrom {
        cdrom_args(&mut a, "cdrom0", iso, Some(spec.disks.len() + 1), None);
    }
    if let Some(seed) = cfg.cloud_init_seed {
        // Never booted from: cloud-init finds it by its label. Its own bus, whatever
        // the CD-ROM: the secondary IDE channel on `pc`, the second AHCI port on q35
        // (whose ports take one device each, so QEMU's pick of a bus would collide).
        cdrom_args(&mut a, "cidata", &path(seed), None, Some("ide.1"));
    }
    if let Some(k) = &spec.kernel {
        a.push2("-kernel", k.kernel.clone());
        if let Some(initrd) = &k.initrd {
            a.push2("-initrd", initrd.clone());
        }
        if let Some(cmdline) = &k.cmdline {
            a.push2("-append", cmdline.clone());
        }
    }
    for (nic, backend) in spec.nics.iter().zip(cfg.nics) {
        let id = nic_netdev_id(&nic.mac);
        match backend {
            NicBackend::Tap { fd } => a.push2("-netdev", format!("tap,id={id},fd={fd}")),
            NicBackend::Stream { socket } => a.push2(
                "-netdev",
                format!(
                    "stream,id={id},server=off,addr.type=unix,addr.path={}",
                    socket.display()
                ),
            ),
        }
        let dev = nic_device_id(&nic.mac);
        a.push2(
            "-device",
            format!(
                "virtio-net-pci,netdev={id},id={dev},mac={}{}",
                nic.mac,
                place(&dev)
            ),
        );
    }
    if cfg.placements.is_none() {
        root_port_args(&mut a, spec, &place);
    }
    // The guest reports its own memory use through the balloon's statistics (the
    // metrics collector reads them); the balloon is never inflated by Corral, and
    // deflates by itself should the guest run out of memory.
    a.push2(
        "-device",
        format!(
            "virtio-balloon-pci,id=balloon0,deflate-on-oom=on{}",
            place("balloon0")
        ),
    );
    // A panicking guest tells QEMU (pvpanic), which keeps it paused for inspection;
    // the daemon shows the VM as crashed instead of silently hung.
    a.push2("-device", "pvpanic");
    a.push2("-action", "panic=pause");
    confinement_args(&mut a, cfg.confinement, cfg.paths);
    a.0
}

fn root_port_args(a: &mut Args, spec: &VmSpec, place: &dyn Fn(&str) -> String) {
    for (chassis, port) in (1..).zip(hotplug_ports(spec.machine)) {
        a.push2(
            "-device",
            format!("pcie-root-port,id={port},chassis={chassis}{}", place(&port)),
        );
    }
}

fn machine_arg(machine: Machine, exact: Option<&str>) -> String {
    let name = exact.unwrap_or(match machine {
        Machine::Pc => "pc",
        Machine::Q35 => "q35",
    });
    // vmport is an emulated VMware backdoor nobody here needs; off is less attack surface.
    format!("{name},vmport=off")
}

fn serial_args(a: &mut Args, paths: &VmPaths) {
    // The console is a socket the daemon proxies for `corral console`; QEMU itself also
    // logs every byte, so output is kept even while no one (not even corrald) listens.
    a.push2(
        "-chardev",
        format!(
            "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
            path(&paths.console_socket()),
            path(&paths.console_log())
        ),
    );
    a.push2("-serial", "chardev:serial0");
}

fn display_args(a: &mut Args, paths: &VmPaths, placed: &str) {
    // A graphical console for every VM: a VGA card whose screen QEMU's VNC server shows
    // on a Unix socket (no TCP port: the daemon proxies it, behind its auth). `-display
    // none` above only rules out a local window; the VNC server is separate from it.
    a.push2("-device", format!("VGA,id=vga0{placed}"));
    a.push2("-vnc", format!("unix:{}", path(&paths.vnc_socket())));
}

fn agent_args(a: &mut Args, paths: &VmPaths, placed: &str) {
    // Every VM gets the guest agent's channel: a guest without qemu-ga never opens the
    // port, which the daemon sees (VSERPORT_CHANGE / query-chardev) and then leaves the
    // agent alone. The port needs a device id, or QEMU reports no VSERPORT_CHANGE.
    use crate::agent::{AGENT_CHARDEV, AGENT_PORT, AGENT_PORT_NAME};
    a.push2(
        "-chardev",
        format!(
            "socket,id={AGENT_CHARDEV},path={},server=on,wait=off",
            path(&paths.agent_socket())
        ),
    );
    a.push2("-device", format!("virtio-serial-pci,id=vser0{placed}"));
    a.push2(
        "-device",
        format!(
            "virtserialport,bus=vser0.0,chardev={AGENT_CHARDEV},name={AGENT_PORT_NAME},id={AGENT_PORT}"
        ),
    );
}

fn disk_args(
    a: &mut Args,
    bootindex: usize,
    disk: &Disk,
    (fds, block_device): (Option<&DiskFds>, bool),
    placed: &str,
) {
    let node = &disk.id;
    let filename = match fds {
        Some(f) => {
            for fd in f.rw.iter().chain([&f.ro]) {
                a.push2("-add-fd", format!("fd={fd},set={},opaque={node}", f.set));
            }
            format!("/dev/fdset/{}", f.set)
        }
        None => disk.path.clone(),
    };
    // JSON form: file names may hold commas, which the key=value syntax would split.
    let blockdev = json!({
        "node-name": node,
        "driver": disk.format.as_str(),
        "read-only": disk.read_only,
        "discard": "unmap",
        "file": {
            "driver": protocol_driver(block_device),
            "filename": filename,
            "read-only": disk.read_only,
        },
    });
    a.push2("-blockdev", blockdev.to_string());
    a.push2(
        "-device",
        format!("virtio-blk-pci,drive={node},id={node}-dev,bootindex={bootindex}{placed}"),
    );
}

fn cdrom_args(a: &mut Args, node: &str, iso: &str, bootindex: Option<usize>, bus: Option<&str>) {
    let blockdev = json!({
        "node-name": node,
        "driver": "raw",
        "read-only": true,
        "file": { "driver": "file", "filename": iso, "read-only": true },
    });
    a.push2("-blockdev", blockdev.to_string());
    let mut device = format!("ide-cd,drive={node},id={node}-dev");
    if let Some(bus) = bus {
        device.push_str(&format!(",bus={bus}"));
    }
    if let Some(i) = bootindex {
        device.push_str(&format!(",bootindex={i}"));
    }
    a.push2("-device", device);
}

fn confinement_args(a: &mut Args, c: Confinement, paths: &VmPaths) {
    if c.sandbox {
        // elevateprivileges stays allowed only because -runas needs setuid once; after
        // that the process has no privileges left to elevate to.
        a.push2(
            "-sandbox",
            "on,obsolete=deny,spawn=deny,resourcecontrol=deny",
        );
    }
    if let Some((uid, gid)) = c.run_as {
        a.push2("-runas", format!("{uid}:{gid}"));
    }
    if c.chroot {
        a.push2("-chroot", path(&paths.dir));
    }
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[derive(Default)]
struct Args(Vec<String>);

impl Args {
    fn push(&mut self, s: impl Into<String>) {
        self.0.push(s.into());
    }
    fn push2(&mut self, flag: &str, value: impl Into<String>) {
        self.0.push(flag.to_string());
        self.0.push(value.into());
    }
}

/// Where Debian's `ovmf` package puts the firmware: (code, variables template).
pub fn ovmf_files() -> Option<(PathBuf, PathBuf)> {
    [
        ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"),
        ("OVMF_CODE.fd", "OVMF_VARS.fd"),
    ]
    .iter()
    .map(|(c, v)| {
        (
            Path::new("/usr/share/OVMF").join(c),
            Path::new("/usr/share/OVMF").join(v),
        )
    })
    .find(|(c, v)| c.is_file() && v.is_file())
}
