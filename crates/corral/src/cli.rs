//! The command line: flat verbs for VMs (`create`, `start`, …), nouns for the rest
//! (`host info`, `operation list`), as DESIGN.md's CLI conventions ask.
//!
//! Everything clap can check (sizes, `--disk` specs, flags that need `--kernel`) is
//! checked here, so a mistyped command is a usage error (exit 2) before anything is sent.
//! Pools and volumes have their own modules, [`pool`] and [`volume`].

mod access;
mod image;
mod migrate;
mod network;
mod pool;
mod snapshot;
mod volume;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use corral_api::{DiskRequest, Machine};

use crate::create::{parse_disk_spec, parse_memory_mib, CloudInitArgs};
use crate::output::OutputArgs;

pub use access::*;
pub use image::*;
pub use migrate::*;
pub use network::*;
pub use pool::*;
pub use snapshot::*;
pub use volume::*;

const EXAMPLES: &str = "\
Examples:
  corral create web --memory 1G --vcpus 2 --disk size=10G --cdrom debian.iso --start
  corral list
  corral console web            (detach with Ctrl-])
  corral stop web --timeout 30
  corral show web -o yaml
  corral volume create data --size 10G && corral volume attach data web";

/// Manage KVM/QEMU virtual machines through corrald, Corral's per-host daemon.
#[derive(Debug, Parser)]
#[command(name = "corral", version, propagate_version = true, after_help = EXAMPLES)]
pub struct Cli {
    /// corrald's API socket.
    #[arg(
        long,
        global = true,
        display_order = 900,
        env = "CORRAL_SOCKET",
        hide_env_values = true,
        default_value = "/run/corral/corral.sock",
        value_name = "PATH"
    )]
    pub socket: PathBuf,

    /// Send the command to this remote (`corral remote list`) instead of the default
    /// (`local` is the socket).
    #[arg(
        long,
        global = true,
        display_order = 901,
        env = "CORRAL_REMOTE",
        value_name = "NAME"
    )]
    pub remote: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Define a new VM, and start it with --start
    Create(CreateArgs),
    /// List VMs
    #[command(visible_alias = "ls")]
    List(OutputArgs),
    /// Show a VM: spec, state, disks, NICs and recent events
    Show(NameArgs),
    /// Start a stopped VM
    Start(StartArgs),
    /// Shut a VM down (ACPI), or power it off with --force
    Stop(StopArgs),
    /// Stop a VM, then start it again
    Restart(StopArgs),
    /// Pause a running VM's vCPUs
    Pause(NameArgs),
    /// Resume a paused VM
    Resume(NameArgs),
    /// Delete a VM and the disks it owns (attached volumes and files are kept)
    #[command(visible_alias = "rm")]
    Delete(DeleteArgs),
    /// Change a stopped VM's memory, vCPUs, kernel command line or cloud-init config
    Update(UpdateArgs),
    /// Copy a stopped VM into a new one (own disks, new UUID and MACs)
    Clone(CloneArgs),
    /// Move a running VM to another host live (shared or local disks, over TLS)
    Migrate(MigrateArgs),
    /// Attach to a VM's serial console, or print its log with --log
    Console(ConsoleArgs),
    /// Storage pools: where volumes live
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Volumes: disks that can outlive VMs, be attached, detached and grown
    #[command(subcommand, visible_alias = "vol")]
    Volume(VolumeCommand),
    /// Read-only images that VMs are made from as linked clones
    #[command(subcommand)]
    Image(ImageCommand),
    /// Snapshots of a VM's disks, as a tree you can revert to and branch from
    #[command(subcommand, visible_alias = "snap")]
    Snapshot(SnapshotCommand),
    /// Networks: NAT, isolated and bridged, with port forwards
    #[command(subcommand, visible_alias = "net")]
    Network(NetworkCommand),
    /// A VM's NICs: add, list, remove
    #[command(subcommand)]
    Nic(NicCommand),
    /// A VM's firewall rules (nftables on its bridged NICs)
    #[command(subcommand, visible_alias = "fw")]
    Firewall(FirewallCommand),
    /// This host: hardware, QEMU, accelerator
    #[command(subcommand)]
    Host(HostCommand),
    /// Long-running work: follow, inspect, cancel
    #[command(subcommand, visible_alias = "op")]
    Operation(OperationCommand),
    /// What happened recently, oldest first
    Events(EventsArgs),
    /// Follow events as they happen (state changes, operations, consoles); Ctrl-C ends
    Monitor(MonitorArgs),
    /// Running VMs' CPU, memory, disk and network, refreshed live (like virt-top)
    Top(TopArgs),
    /// API tokens for scripts, the CLI on other machines and Prometheus
    #[command(subcommand)]
    Token(TokenCommand),
    /// Users of the web console
    #[command(subcommand)]
    User(UserCommand),
    /// Who did what through the API: changes, consoles, refusals
    Audit(AuditArgs),
    /// Who the daemon takes you for, and your role
    Whoami(OutputArgs),
    /// Other hosts' corrald over HTTPS: add (trusting its certificate), list, switch
    #[command(subcommand)]
    Remote(RemoteCommand),
}

const CREATE_EXAMPLES: &str = "\
Examples:
  corral create web --memory 1G --disk size=10G --cdrom ./debian.iso --start
  corral create tiny --memory 256M --kernel vmlinuz --initrd initrd.img \\
      --cmdline \"console=ttyS0\" --network none
  corral create db --disk path=/srv/db.raw,format=raw --disk size=20G
  corral create app --disk size=8G --disk vol=data,readonly=on
  corral create vm1 --image ./debian-12.qcow2 --ssh-key ~/.ssh/id_ed25519.pub --start
  corral create vm2 --image base --user alice --ssh-key alice.pub \\
      --cloud-init user-data=./init.yaml

Relative paths are taken from the current directory.";

/// `corral create`.
#[derive(Debug, Args)]
#[command(after_help = CREATE_EXAMPLES)]
pub struct CreateArgs {
    /// Name of the VM: 1-63 lowercase letters, digits and '-'.
    pub name: String,

    /// Guest memory, e.g. 512M or 2G (a bare number is MiB) [default: 512M, or the OVA's].
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_mib)]
    pub memory: Option<u64>,

    /// Number of virtual CPUs [default: 1, or the OVA's].
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u32>,

    /// Import an OVA appliance: its disks become volumes attached in order, its CPU and
    /// memory are used unless --vcpus/--memory say otherwise.
    #[arg(long, value_name = "FILE")]
    pub from_ova: Option<PathBuf>,

    /// QEMU machine type: pc (i440FX, most compatible) or q35 (PCIe).
    #[arg(long, value_enum, default_value_t = MachineArg::Pc)]
    pub machine: MachineArg,

    /// Firmware: bios (SeaBIOS) or uefi (OVMF, with the VM's own NVRAM, kept in every
    /// snapshot).
    #[arg(long, value_enum, default_value_t = FirmwareArg::Bios)]
    pub firmware: FirmwareArg,

    /// A disk, in guest order; repeatable: size=SIZE (new volume owned by the VM),
    /// vol=NAME[,readonly=on] (an existing volume) or
    /// path=FILE[,format=raw|qcow2][,readonly=on] (an existing image).
    #[arg(long = "disk", value_name = "SPEC", value_parser = parse_disk_spec)]
    pub disks: Vec<DiskRequest>,

    /// An ISO image, attached as a read-only CD-ROM.
    #[arg(long, value_name = "ISO")]
    pub cdrom: Option<PathBuf>,

    /// The first disk's base: an image's name (a linked clone of it, see `corral image
    /// list`) or the path of a qcow2 or raw file (with a '/', e.g. ./debian.qcow2): a new
    /// overlay on it, which Corral never writes, moves or deletes.
    #[arg(long, value_name = "IMAGE|PATH")]
    pub image: Option<String>,

    /// Boot this kernel directly instead of firmware.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,

    /// Initramfs for --kernel.
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line for --kernel, e.g. "console=ttyS0".
    #[arg(
        long,
        value_name = "ARGS",
        requires = "kernel",
        allow_hyphen_values = true
    )]
    pub cmdline: Option<String>,

    /// A NIC, in guest order; repeatable: user, nat (the default NAT network),
    /// network=NAME, bridge=BRIDGE, with ,mac=…,ip=…,vlan=…; `none` for no NIC.
    /// Without it: the default network if there is one, else user-mode.
    #[arg(long = "network", value_name = "SPEC", value_parser = crate::create::parse_nic_spec)]
    pub networks: Vec<crate::create::NicSpec>,

    /// Start the VM once it is defined.
    #[arg(long)]
    pub start: bool,

    #[command(flatten)]
    pub cloud_init: CloudInitArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// clap's view of [`Machine`] (the wire type cannot derive clap traits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MachineArg {
    Pc,
    Q35,
}

impl From<MachineArg> for Machine {
    fn from(m: MachineArg) -> Self {
        match m {
            MachineArg::Pc => Machine::Pc,
            MachineArg::Q35 => Machine::Q35,
        }
    }
}

/// A command on one VM that prints it.
#[derive(Debug, Args)]
pub struct NameArgs {
    /// Name of the VM.
    pub name: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// clap's view of [`corral_api::Firmware`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FirmwareArg {
    Bios,
    Uefi,
}

impl From<FirmwareArg> for corral_api::Firmware {
    fn from(f: FirmwareArg) -> Self {
        match f {
            FirmwareArg::Bios => corral_api::Firmware::Bios,
            FirmwareArg::Uefi => corral_api::Firmware::Uefi,
        }
    }
}

#[derive(Debug, Args)]
pub struct CloneArgs {
    /// The VM to copy.
    pub source: String,
    /// Name of the new VM.
    pub name: String,
    /// Make a linked clone: qcow2 overlays on a snapshot of SOURCE, instant whatever the
    /// disks' size. The snapshot and SOURCE cannot be deleted while the clone exists.
    #[arg(long)]
    pub linked: bool,
    /// With --linked: build on this existing snapshot of SOURCE (default: take a new
    /// snapshot named linked-NAME).
    #[arg(long, value_name = "SNAPSHOT")]
    pub snapshot: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Name of the VM.
    pub name: String,
    /// Set the VM up but leave its vCPUs paused (resume it later).
    #[arg(long)]
    pub paused: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `stop` and `restart` (for restart, these apply to its stop half).
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Name of the VM.
    pub name: String,
    /// Seconds to wait for the guest to shut down before giving up (daemon default: 60).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Power off at once instead of asking the guest to shut down.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Name of the VM.
    pub name: String,
    /// Power the VM off first if it is running.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("changes")
        .required(true)
        .multiple(true)
        .args(["ssh_keys", "user", "hostname", "files"])
))]
pub struct UpdateArgs {
    /// Name of the VM.
    pub name: String,
    /// New guest memory, e.g. 1G (a bare number is MiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_mib, group = "changes")]
    pub memory: Option<u64>,
    /// New number of virtual CPUs.
    #[arg(long, value_name = "N", group = "changes")]
    pub vcpus: Option<u32>,
    /// New kernel command line (direct-kernel-boot VMs only).
    #[arg(
        long,
        value_name = "ARGS",
        allow_hyphen_values = true,
        group = "changes"
    )]
    pub cmdline: Option<String>,
    /// Changes to the cloud-init config (the guest applies them at its next start).
    #[command(flatten)]
    pub cloud_init: CloudInitArgs,
    /// Remove the cloud-init config and its seed CD.
    #[arg(long, group = "changes", conflicts_with_all = ["ssh_keys", "user", "hostname", "files"])]
    pub no_cloud_init: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// Name of the VM.
    pub name: String,
    /// Print what the serial port has written so far, and exit.
    #[arg(long)]
    pub log: bool,
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Hostname, CPUs, memory, QEMU, accelerator and VM counts
    Info(OutputArgs),
}

#[derive(Debug, Subcommand)]
pub enum OperationCommand {
    /// List operations
    #[command(visible_alias = "ls")]
    List(OutputArgs),
    /// Show one operation
    Show(OperationArgs),
    /// Cancel a running operation
    Cancel(OperationArgs),
}

#[derive(Debug, Args)]
pub struct OperationArgs {
    /// Operation id (a UUID).
    pub id: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `corral monitor [VM]`.
#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Only events about this VM.
    pub vm: Option<String>,
    /// `json`: one JSON event per line.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `corral top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Print one table and exit (a script's or a log's view).
    #[arg(long)]
    pub once: bool,
    /// Which column orders the VMs, biggest first.
    #[arg(long, value_enum, default_value_t = TopSort::Cpu)]
    pub sort: TopSort,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TopSort {
    Cpu,
    Memory,
    Disk,
    Net,
    Name,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events about this VM.
    #[arg(long, value_name = "NAME")]
    pub vm: Option<String>,
    /// Only events after this event id.
    #[arg(long, value_name = "ID")]
    pub since: Option<u64>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Format;
    use clap::CommandFactory;

    /// Parses `corral ARGV…` (shared with the pool and volume modules' tests).
    pub(crate) fn parse(argv: &[&str]) -> Result<Command, clap::Error> {
        let mut full = vec!["corral"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).map(|cli| cli.command)
    }

    /// Asserts `corral ARGV…` is a usage error (exit 2) whose message has `expected`.
    pub(crate) fn usage_error(argv: &[&str], expected: &str) {
        let err = parse(argv).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{argv:?}");
        assert!(err.to_string().contains(expected), "{argv:?}: {err}");
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn socket_defaults_and_global() {
        let cli = Cli::try_parse_from(["corral", "list"]).unwrap();
        if std::env::var_os("CORRAL_SOCKET").is_none() {
            assert_eq!(cli.socket, PathBuf::from("/run/corral/corral.sock"));
        }
        let cli = Cli::try_parse_from(["corral", "list", "--socket", "/tmp/c.sock", "-o", "json"])
            .unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/c.sock"));
        match cli.command {
            Command::List(out) => assert_eq!(out.output, Format::Json),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn update_needs_a_change() {
        let err = Cli::try_parse_from(["corral", "update", "a"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let cli = Cli::try_parse_from(["corral", "update", "a", "--memory", "1G"]).unwrap();
        match cli.command {
            Command::Update(u) => assert_eq!(u.memory, Some(1024)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stop_flags() {
        let cli =
            Cli::try_parse_from(["corral", "stop", "a", "--timeout", "5", "--force"]).unwrap();
        match cli.command {
            Command::Stop(s) => {
                assert_eq!(s.timeout, Some(5));
                assert!(s.force);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn output_format_is_checked() {
        let err = Cli::try_parse_from(["corral", "list", "-o", "xml"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
