//! Virtual machines: the create request, the stored spec (desired state), the status
//! (observed state) and the state machine that says which actions are legal.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::cloud_init::CloudInit;
use crate::error::ValidationError;
use crate::event::Event;
use crate::network::{FirewallRule, Nic, NicRequest};

/// Most vCPUs a VM may ask for, whatever the host (QEMU's `pc` machine limit is 255).
pub const MAX_VCPUS: u32 = 255;
/// Smallest useful guest memory.
pub const MIN_MEMORY_MIB: u64 = 16;

/// `POST /api/v1/vms`: what a user asks for. Becomes a [`VmSpec`] once volumes exist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    /// `[a-z0-9][a-z0-9-]{0,62}`, unique on the host.
    pub name: String,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    pub vcpus: u32,
    #[serde(default)]
    pub machine: Machine,
    #[serde(default)]
    pub firmware: Firmware,
    /// Disks in guest order.
    #[serde(default)]
    pub disks: Vec<DiskRequest>,
    /// An ISO image attached as a read-only CD-ROM.
    #[serde(default)]
    pub cdrom: Option<String>,
    /// Boot a kernel directly instead of firmware.
    #[serde(default)]
    pub kernel: Option<KernelBoot>,
    /// NICs in guest order. Absent: one NIC on the host's default network (the
    /// `default` NAT network when it exists, else user-mode); empty: no network.
    #[serde(default)]
    pub networks: Option<Vec<NicRequest>>,
    /// Start the VM once it is defined.
    #[serde(default)]
    pub start: bool,
    /// The first disk's base: a registered image's name (the disk is a linked clone of
    /// it, instant whatever its size), or the absolute path of a qcow2 or raw file (the
    /// disk is a new qcow2 overlay on it; Corral never writes, moves or deletes the file).
    /// A value with a `/` is a path.
    #[serde(default)]
    pub image: Option<String>,
    /// Provision the guest with cloud-init (a NoCloud seed CD).
    #[serde(default)]
    pub cloud_init: Option<CloudInit>,
}

/// One disk of a create request: either a new volume the VM owns, or an existing file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum DiskRequest {
    /// A new thin qcow2 volume of this many bytes, owned by the VM (deleted with it).
    New { size_bytes: u64 },
    /// An existing Corral volume (see `corral volume create`), attached, not owned.
    Volume {
        name: String,
        #[serde(default)]
        read_only: bool,
    },
    /// An existing image file, attached but never modified in shape, moved or deleted.
    Path {
        path: String,
        #[serde(default)]
        format: Option<DiskFormat>,
        #[serde(default)]
        read_only: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

/// What the VM boots with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// SeaBIOS, QEMU's default.
    #[default]
    Bios,
    /// OVMF (UEFI) from Debian's `ovmf` package, with a per-VM NVRAM (variables) file.
    Uefi,
}

/// QEMU machine type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// i440FX, the most compatible (and under TCG the fastest to boot) PC.
    #[default]
    Pc,
    /// Q35 with PCIe.
    Q35,
}

impl Machine {
    pub fn as_str(self) -> &'static str {
        match self {
            Machine::Pc => "pc",
            Machine::Q35 => "q35",
        }
    }
}

/// Direct kernel boot, like `virt-install --boot kernel=…,initrd=…,kernel_args=…`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KernelBoot {
    pub kernel: String,
    #[serde(default)]
    pub initrd: Option<String>,
    #[serde(default)]
    pub cmdline: Option<String>,
}

/// The desired state of a VM: everything needed to start it, and nothing observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub name: String,
    /// Stable machine identity (SMBIOS UUID), fixed at create.
    pub uuid: Uuid,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub machine: Machine,
    #[serde(default)]
    pub firmware: Firmware,
    /// UEFI only: the VM's own copy of the firmware variables (its NVRAM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvram: Option<String>,
    pub disks: Vec<Disk>,
    pub cdrom: Option<String>,
    pub kernel: Option<KernelBoot>,
    pub nics: Vec<Nic>,
    /// Per-VM firewall rules, in order (see [`FirewallRule`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub firewall: Vec<FirewallRule>,
    /// cloud-init provisioning; its seed CD is attached read-only after any `cdrom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<CloudInit>,
}

/// A disk as stored: where its data lives and who owns the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// Stable id within the VM (`disk0`, `disk1`, …): QEMU's node name for it, kept
    /// while other disks come and go.
    pub id: String,
    /// The Corral volume holding it; `None` for a file attached by path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// The active image file (top of its chain).
    pub path: String,
    pub format: DiskFormat,
    /// Virtual size in bytes, as the image reports it.
    pub size_bytes: u64,
    /// `true` when the VM owns the file (created with it, deleted with it).
    pub owned: bool,
    #[serde(default)]
    pub read_only: bool,
}

/// `PATCH /api/v1/vms/{name}`: changes to a stopped VM. Absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateVmRequest {
    #[serde(default)]
    pub memory_mib: Option<u64>,
    #[serde(default)]
    pub vcpus: Option<u32>,
    /// Replaces the kernel command line of a direct-kernel-boot VM.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Replaces the whole cloud-init configuration (the guest gets a new instance id,
    /// so cloud-init applies it at the next start).
    #[serde(default)]
    pub cloud_init: Option<CloudInit>,
    /// Removes the cloud-init configuration and its seed CD.
    #[serde(default)]
    pub remove_cloud_init: bool,
}

impl UpdateVmRequest {
    /// Checks everything that needs only the request itself.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(m) = self.memory_mib {
            validate_memory(m)?;
        }
        if let Some(v) = self.vcpus {
            validate_vcpus(v)?;
        }
        if let Some(ci) = &self.cloud_init {
            if self.remove_cloud_init {
                return Err(ValidationError::new(
                    "remove_cloud_init",
                    "cloud_init cannot be both replaced and removed",
                )
                .hint("give one of them"));
            }
            ci.validate("cloud_init")?;
        }
        Ok(())
    }
}

/// The observed state of a VM, kept by the daemon from QMP events and process checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Defined, no QEMU process.
    Stopped,
    /// QEMU launched, being set up while paused.
    Starting,
    Running,
    /// vCPUs paused by the user.
    Paused,
    /// A graceful shutdown was requested and the guest has not gone yet.
    Stopping,
    /// The guest reported a panic; QEMU is still there for inspection.
    Crashed,
    /// Running here while it is being moved to another host (`corral migrate`).
    Migrating,
    /// Arriving from another host: QEMU here receives it and the guest does not run
    /// here yet.
    Incoming,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopping => "stopping",
            VmState::Crashed => "crashed",
            VmState::Migrating => "migrating",
            VmState::Incoming => "incoming",
        }
    }

    /// Whether a QEMU process should exist in this state.
    pub fn has_process(self) -> bool {
        self != VmState::Stopped
    }

    /// Whether `action` may run now; `Err` says why not, in words for the user.
    pub fn allows(self, action: VmAction) -> Result<(), String> {
        use VmAction as A;
        use VmState as S;
        let ok = match action {
            A::Start => matches!(self, S::Stopped),
            A::Stop => matches!(self, S::Running),
            // A migration is cancelled through its operation, not by pulling the plug.
            A::ForceStop => self.has_process() && !matches!(self, S::Migrating | S::Incoming),
            A::Restart => matches!(self, S::Running | S::Paused | S::Crashed),
            A::Pause => matches!(self, S::Running),
            A::Resume => matches!(self, S::Paused),
            A::Delete => matches!(self, S::Stopped),
            A::Update => matches!(self, S::Stopped),
            A::Console => matches!(
                self,
                S::Running | S::Paused | S::Stopping | S::Crashed | S::Migrating
            ),
            A::Migrate => matches!(self, S::Running | S::Paused),
        };
        if ok {
            return Ok(());
        }
        let why = match (action, self) {
            (A::Stop, S::Paused) => "it is paused; resume it first or use --force",
            (A::Stop, S::Stopping) => {
                "a shutdown is already in progress; use --force to power it off"
            }
            (A::Delete, _) => "it is not stopped; stop it first or use --force",
            (A::Update, _) => "changes apply only to a stopped VM; stop it first",
            (A::Start, S::Running | S::Paused | S::Starting | S::Stopping) => {
                "it is already running"
            }
            (_, S::Migrating) => {
                "it is being migrated; cancel the migration (`corral operation cancel ID`) first"
            }
            (_, S::Incoming) => {
                "it is arriving from another host; its source's migration decides what happens"
            }
            (A::Migrate, _) => "only a running or paused VM is migrated live; a stopped one has nothing to move but its disks",
            _ => "",
        };
        let mut msg = format!("cannot {} a VM that is {}", action.as_str(), self.as_str());
        if !why.is_empty() {
            msg = format!("cannot {}: {why}", action.as_str());
        }
        Err(msg)
    }
}

/// Everything a user can ask a VM to do, for the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmAction {
    Start,
    Stop,
    ForceStop,
    Restart,
    Pause,
    Resume,
    Delete,
    Update,
    Console,
    Migrate,
}

impl VmAction {
    pub fn as_str(self) -> &'static str {
        match self {
            VmAction::Start => "start",
            VmAction::Stop => "stop",
            VmAction::ForceStop => "force-stop",
            VmAction::Restart => "restart",
            VmAction::Pause => "pause",
            VmAction::Resume => "resume",
            VmAction::Delete => "delete",
            VmAction::Update => "update",
            VmAction::Console => "attach a console to",
            VmAction::Migrate => "migrate",
        }
    }
}

/// Observed state plus the facts of the current (or last) run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmStatus {
    pub state: VmState,
    /// PID of the QEMU process while there is one.
    #[serde(default)]
    pub pid: Option<u32>,
    /// When the current QEMU was started (Unix seconds).
    #[serde(default)]
    pub started_at: Option<u64>,
    /// Why the VM is in this state when that is not obvious (how it stopped, a crash).
    #[serde(default)]
    pub reason: Option<String>,
    /// Accelerator of the current run (`kvm` or `tcg`).
    #[serde(default)]
    pub accel: Option<String>,
}

impl VmStatus {
    pub fn stopped(reason: Option<String>) -> Self {
        VmStatus {
            state: VmState::Stopped,
            pid: None,
            started_at: None,
            reason,
            accel: None,
        }
    }
}

/// `GET /api/v1/vms/{name}` and list entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Vm {
    pub spec: VmSpec,
    pub status: VmStatus,
    /// Seconds since the current QEMU started, while running.
    #[serde(default)]
    pub uptime_secs: Option<u64>,
    /// Unix seconds.
    pub created_at: u64,
    /// The most recent events of this VM, newest last (only in `GET /vms/{name}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
    /// A guest agent (qemu-guest-agent) is connected in the running guest now.
    #[serde(default)]
    pub guest_agent: bool,
    /// The guest's IP addresses as far as the host knows them (loopback and link-local
    /// left out), while it runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<VmAddress>,
}

/// One IP address of a running guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmAddress {
    /// The IP address (v4 or v6), without prefix.
    pub address: String,
    /// Prefix length.
    pub prefix: u8,
    /// The MAC of the guest NIC that has it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    pub source: AddressSource,
}

/// Where the host learnt an address from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AddressSource {
    /// Reported by the guest agent from inside the guest.
    Agent,
    /// A lease the host's DHCP server handed out.
    Dhcp,
}

impl AddressSource {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressSource::Agent => "agent",
            AddressSource::Dhcp => "dhcp",
        }
    }
}

/// `POST /api/v1/vms/{name}/stop`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Power off at once instead of an ACPI shutdown.
    #[serde(default)]
    pub force: bool,
    /// Seconds to wait for a graceful shutdown before failing (default 60).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// The `result` of a `vm.stop` or `vm.restart` operation: how the guest was stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StopResult {
    pub method: StopMethod,
    /// Why the guest agent was not used although it was connected (its shutdown
    /// failed, and the ACPI power button was pressed instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_error: Option<String>,
}

/// How a VM was asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StopMethod {
    /// `guest-shutdown` through the guest agent (used whenever one is connected).
    Agent,
    /// The ACPI power button.
    Acpi,
    /// Powered off at once (`--force`, or a guest that could not answer).
    Force,
}

impl StopMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            StopMethod::Agent => "agent",
            StopMethod::Acpi => "acpi",
            StopMethod::Force => "force",
        }
    }
}

/// `POST /api/v1/vms/{name}/clone`: a new VM with the source's disks, a new machine
/// identity (UUID) and new MAC addresses. A full clone copies the disks (an operation);
/// a linked clone puts qcow2 overlays on a snapshot's frozen images (instant, the VM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneRequest {
    /// Name of the new VM.
    pub name: String,
    /// Overlays on the source's snapshot instead of copies: no data is copied, and the
    /// snapshot (and the source VM) cannot be deleted while the clone exists.
    #[serde(default)]
    pub linked: bool,
    /// Linked clones only: the source's existing snapshot to build on. Without it a new
    /// snapshot `linked-<name>` of the source is taken first.
    #[serde(default)]
    pub snapshot: Option<String>,
}

/// The snapshot a linked clone without `snapshot` takes of its source.
pub const LINKED_SNAPSHOT_PREFIX: &str = "linked-";

impl CloneRequest {
    /// Checks everything that needs only the request itself.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        match &self.snapshot {
            Some(_) if !self.linked => Err(ValidationError::new(
                "snapshot",
                "a snapshot can only be given for a linked clone",
            )
            .hint("add --linked (a full clone copies the current state)")),
            Some(s) => validate_name("snapshot", s),
            None if self.linked => validate_name(
                "name",
                &format!("{LINKED_SNAPSHOT_PREFIX}{}", self.name),
            )
            .map_err(|_| {
                ValidationError::new(
                    "name",
                    format!(
                        "the snapshot '{LINKED_SNAPSHOT_PREFIX}{}' a linked clone takes would be too long",
                        self.name
                    ),
                )
                .hint("use a clone name of at most 56 characters, or give --snapshot")
            }),
            None => Ok(()),
        }
    }
}

/// `POST /api/v1/vms/{name}/start`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// Leave the vCPUs paused once QEMU is set up.
    #[serde(default)]
    pub paused: bool,
}

/// Checks a VM name: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn validate_name(field: &str, name: &str) -> Result<(), ValidationError> {
    let hint = "use 1-63 lowercase letters, digits and '-', starting with a letter or digit";
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > 63 {
        return Err(
            ValidationError::new(field, format!("name '{name}' must be 1-63 characters"))
                .hint(hint),
        );
    }
    let first_ok = bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit();
    let rest_ok = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if !first_ok || !rest_ok {
        return Err(ValidationError::new(
            field,
            format!("name '{name}' has characters that are not allowed"),
        )
        .hint(hint));
    }
    Ok(())
}

impl CreateVmRequest {
    /// Checks everything that needs only the request itself.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        validate_memory(self.memory_mib)?;
        validate_vcpus(self.vcpus)?;
        for (i, disk) in self.disks.iter().enumerate() {
            match disk {
                DiskRequest::New { size_bytes } if *size_bytes < 1 << 20 => {
                    return Err(ValidationError::new(
                        format!("disks[{i}].size_bytes"),
                        format!("disk size {size_bytes} bytes is too small"),
                    )
                    .hint("give a size of at least 1M, e.g. size=2G"));
                }
                DiskRequest::Path { path, .. } if path.is_empty() => {
                    return Err(
                        ValidationError::new(format!("disks[{i}].path"), "path is empty")
                            .hint("give the path of an existing image file"),
                    );
                }
                _ => {}
            }
        }
        if let Some(k) = &self.kernel {
            if k.kernel.is_empty() {
                return Err(ValidationError::new(
                    "kernel.kernel",
                    "kernel path is empty",
                ));
            }
        }
        if let Some(image) = &self.image {
            validate_image(image)?;
        }
        if let Some(ci) = &self.cloud_init {
            ci.validate("cloud_init")?;
        }
        for (i, nic) in self.networks.iter().flatten().enumerate() {
            nic.validate(&format!("networks[{i}]"))?;
        }
        if self.kernel.is_none()
            && self.cdrom.is_none()
            && self.disks.is_empty()
            && self.image.is_none()
        {
            return Err(
                ValidationError::new("disks", "the VM has nothing to boot from")
                    .hint("add --disk, --cdrom or --kernel"),
            );
        }
        Ok(())
    }
}

/// `image` is an image name, or (with a `/`) an absolute path to an image file.
fn validate_image(image: &str) -> Result<(), ValidationError> {
    if image.contains('/') {
        if !image.starts_with('/') {
            return Err(ValidationError::new(
                "image",
                format!("'{image}' is not an absolute path"),
            )
            .hint("give the full path; the daemon does not know the client's directory"));
        }
        return Ok(());
    }
    validate_name("image", image).map_err(|e| {
        e.hint("give an image's name (`corral image list`), or a file's path with a '/', e.g. ./disk.qcow2")
    })
}

pub fn validate_memory(memory_mib: u64) -> Result<(), ValidationError> {
    if memory_mib < MIN_MEMORY_MIB {
        return Err(ValidationError::new(
            "memory_mib",
            format!("memory {memory_mib} MiB is too small"),
        )
        .hint(format!(
            "give at least {MIN_MEMORY_MIB}M, e.g. --memory 256M"
        )));
    }
    Ok(())
}

pub fn validate_vcpus(vcpus: u32) -> Result<(), ValidationError> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(
            ValidationError::new("vcpus", format!("{vcpus} vCPUs is out of range"))
                .hint(format!("give 1 to {MAX_VCPUS} vCPUs")),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "vm1", "0abc", "web-01", &"a".repeat(63)] {
            assert!(validate_name("name", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "A", "a_b", "a/b", "..", "é", &"a".repeat(64)] {
            let err = validate_name("name", bad).unwrap_err();
            assert_eq!(err.field, "name");
            assert!(err.hint.is_some());
        }
    }

    #[test]
    fn clone_requests() {
        let req = |name: &str, linked: bool, snapshot: Option<&str>| CloneRequest {
            name: name.into(),
            linked,
            snapshot: snapshot.map(String::from),
        };
        assert!(req("copy", false, None).validate().is_ok());
        assert!(req("copy", true, None).validate().is_ok());
        assert!(req("copy", true, Some("s1")).validate().is_ok());
        let err = req("copy", false, Some("s1")).validate().unwrap_err();
        assert_eq!(err.field, "snapshot");
        assert!(err.hint.unwrap().contains("--linked"));
        assert_eq!(
            req("copy", true, Some("a/b")).validate().unwrap_err().field,
            "snapshot"
        );
        assert_eq!(req("a/b", true, None).validate().unwrap_err().field, "name");
        // `linked-<name>` must itself be a valid snapshot name.
        let long = "a".repeat(57);
        let err = req(&long, true, None).validate().unwrap_err();
        assert!(err.hint.unwrap().contains("--snapshot"));
        assert!(req(&long, true, Some("s")).validate().is_ok());
        assert!(req(&"a".repeat(56), true, None).validate().is_ok());
    }

    #[test]
    fn state_machine() {
        assert!(VmState::Stopped.allows(VmAction::Start).is_ok());
        assert!(VmState::Running.allows(VmAction::Start).is_err());
        assert!(VmState::Running.allows(VmAction::Pause).is_ok());
        assert!(VmState::Paused.allows(VmAction::Resume).is_ok());
        assert!(VmState::Running.allows(VmAction::Resume).is_err());
        assert!(VmState::Running
            .allows(VmAction::Delete)
            .unwrap_err()
            .contains("--force"));
        assert!(VmState::Paused
            .allows(VmAction::Stop)
            .unwrap_err()
            .contains("resume"));
        assert!(VmState::Paused.allows(VmAction::ForceStop).is_ok());
        assert!(VmState::Stopped.allows(VmAction::ForceStop).is_err());
        assert!(VmState::Stopped.allows(VmAction::Console).is_err());
    }

    #[test]
    fn create_request_rejects_unknown_fields() {
        let body = r#"{"name":"a","memory_mib":256,"vcpus":1,"colour":"red"}"#;
        let err = serde_json::from_str::<CreateVmRequest>(body).unwrap_err();
        assert!(err.to_string().contains("colour"));
    }

    #[test]
    fn create_request_checks() {
        let mut req = CreateVmRequest {
            name: "ok".into(),
            memory_mib: 256,
            vcpus: 1,
            machine: Machine::Pc,
            firmware: Firmware::Bios,
            disks: vec![DiskRequest::New {
                size_bytes: 2 << 30,
            }],
            cdrom: None,
            kernel: None,
            networks: None,
            start: false,
            image: None,
            cloud_init: None,
        };
        assert!(req.validate().is_ok());
        req.vcpus = 0;
        assert_eq!(req.validate().unwrap_err().field, "vcpus");
        req.vcpus = 1;
        req.disks.push(DiskRequest::New { size_bytes: 0 });
        assert_eq!(req.validate().unwrap_err().field, "disks[1].size_bytes");
        req.disks.clear();
        assert_eq!(req.validate().unwrap_err().field, "disks");
        req.image = Some("base".into());
        assert!(req.validate().is_ok());
        req.image = Some("/srv/base.qcow2".into());
        assert!(req.validate().is_ok());
        req.image = Some("disks/base.qcow2".into());
        assert!(req.validate().unwrap_err().message.contains("absolute"));
        req.image = Some("base.qcow2".into());
        let err = req.validate().unwrap_err();
        assert_eq!(err.field, "image");
        assert!(err.hint.unwrap().contains("'/'"));
        req.image = Some("base".into());
        req.cloud_init = Some(CloudInit {
            hostname: Some("-bad".into()),
            ..Default::default()
        });
        assert_eq!(req.validate().unwrap_err().field, "cloud_init.hostname");
    }

    #[test]
    fn update_request_checks() {
        let mut req = UpdateVmRequest {
            cloud_init: Some(CloudInit::default()),
            ..Default::default()
        };
        assert!(req.validate().is_ok());
        req.remove_cloud_init = true;
        assert_eq!(req.validate().unwrap_err().field, "remove_cloud_init");
        req.cloud_init = None;
        assert!(req.validate().is_ok());
        req.vcpus = Some(0);
        assert_eq!(req.validate().unwrap_err().field, "vcpus");
    }

    #[test]
    fn specs_stored_before_cloud_init_still_load() {
        let old = r#"{"name":"a","uuid":"6f1c2a3e-2d4b-4c1e-9a7f-0123456789ab","memory_mib":256,
            "vcpus":1,"machine":"pc","disks":[],"cdrom":null,"kernel":null,"nics":[]}"#;
        let spec: VmSpec = serde_json::from_str(old).unwrap();
        assert_eq!(spec.cloud_init, None);
        // And a spec without it is stored as before.
        assert!(!serde_json::to_string(&spec).unwrap().contains("cloud_init"));
    }
}
