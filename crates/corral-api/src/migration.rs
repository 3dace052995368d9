//! Live migration of a running VM to another host's corrald.
//!
//! The user asks the *source* (`POST /api/v1/vms/{name}/migrate`, [`MigrateRequest`]);
//! the source's corrald drives everything, talking to the destination's corrald over
//! HTTPS (`/api/v1/migrations/...`, the `Incoming*` types here), and QEMU's migration and
//! NBD streams flow host to host over TLS. The CLI only follows the operation.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ValidationError;
use crate::storage::{PoolSpec, SnapshotTree, Volume};
use crate::vm::{VmSpec, VmStatus};

/// QEMU's default is 300 ms; so is Corral's.
pub const DEFAULT_MAX_DOWNTIME_MS: u64 = 300;

/// Another host's corrald, as `corral remote` knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrationTarget {
    /// `https://host:port` of the destination's `corrald --listen`.
    pub url: String,
    /// SHA-256 of its certificate (lowercase hex), pinned.
    pub fingerprint: String,
    /// An admin token of the destination.
    pub token: String,
    /// The remote's name, for messages and events (`lab2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `POST /api/v1/vms/{name}/migrate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    pub destination: MigrationTarget,
    /// The longest pause the guest may see at switch-over (QEMU's `downtime-limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_downtime_ms: Option<u64>,
    /// Cap on the migration stream, bytes per second (none: as fast as the link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_bytes: Option<u64>,
    /// Whether and when to switch to post-copy (the guest runs on the destination while
    /// the rest of its memory follows). See docs/migration.md for the risk: a failure
    /// during post-copy loses the guest.
    #[serde(default)]
    pub postcopy: Postcopy,
    /// Slow the guest's vCPUs when it dirties memory faster than the link carries it
    /// (QEMU's auto-converge). On unless set to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_converge: Option<bool>,
    /// Only run the pre-flight checks: nothing moves.
    #[serde(default)]
    pub dry_run: bool,
}

/// When a migration switches from pre-copy to post-copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Postcopy {
    /// Never: pre-copy until it converges (auto-converge slows a busy guest).
    #[default]
    Off,
    /// When pre-copy stops converging: several passes without the remaining memory
    /// shrinking.
    Auto,
    /// Right after the first pass over memory.
    Now,
}

impl std::str::FromStr for Postcopy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Postcopy::Off),
            "auto" => Ok(Postcopy::Auto),
            "now" => Ok(Postcopy::Now),
            other => Err(format!("'{other}' is not off, auto or now")),
        }
    }
}

impl MigrateRequest {
    pub fn validate(&self) -> Result<(), ValidationError> {
        let d = &self.destination;
        if !d.url.starts_with("https://") {
            return Err(ValidationError::new(
                "destination.url",
                format!("'{}' is not an https:// URL", d.url),
            )
            .hint("the destination's corrald must run with --listen; give its https://HOST:PORT"));
        }
        if d.fingerprint.len() != 64 || !d.fingerprint.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ValidationError::new(
                "destination.fingerprint",
                "not a SHA-256 fingerprint (64 hex digits)",
            )
            .hint("`corral host info` on the destination shows it; `corral remote add` pins it"));
        }
        if d.token.is_empty() {
            return Err(ValidationError::new("destination.token", "no token given")
                .hint("`corral token create NAME --role admin` on the destination makes one"));
        }
        if let Some(ms) = self.max_downtime_ms {
            if !(1..=60_000).contains(&ms) {
                return Err(ValidationError::new(
                    "max_downtime_ms",
                    format!("{ms} ms is outside 1 ms to 60 s"),
                )
                .hint("e.g. --max-downtime 300ms"));
            }
        }
        if self.bandwidth_bytes == Some(0) {
            return Err(
                ValidationError::new("bandwidth_bytes", "a bandwidth of 0 never finishes")
                    .hint("give a rate such as --bandwidth 100M (bytes per second), or none"),
            );
        }
        Ok(())
    }
}

/// What the pre-flight found, check by check. `ok` is whether every check passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PreflightReport {
    /// The destination's host name.
    pub destination: String,
    pub ok: bool,
    pub checks: Vec<PreflightCheck>,
    /// `shared` (only memory moves) or `local` (disks are copied too), per disk id.
    pub disks: Vec<DiskPlan>,
    /// How long the pre-flight took, milliseconds.
    pub took_ms: u64,
}

impl PreflightReport {
    /// The first failed check, as the error a refused migration returns.
    pub fn first_failure(&self) -> Option<&PreflightCheck> {
        self.checks.iter().find(|c| !c.ok)
    }
}

/// One pre-flight check: what was checked, whether it passed, and if not, which field
/// of the VM (or of the request) is at fault and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PreflightCheck {
    /// `reachable`, `memory`, `machine`, `cpu`, `network`, `pool`, `disk-space`, …
    pub check: String,
    pub ok: bool,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl PreflightCheck {
    pub fn pass(check: &str, message: impl Into<String>) -> Self {
        PreflightCheck {
            check: check.to_string(),
            ok: true,
            message: message.into(),
            field: None,
            hint: None,
        }
    }

    pub fn fail(
        check: &str,
        field: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        PreflightCheck {
            check: check.to_string(),
            ok: false,
            message: message.into(),
            field: Some(field.into()),
            hint: Some(hint.into()),
        }
    }
}

/// How one disk gets to the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskTransfer {
    /// On a pool both hosts mount (`--shared`): the destination opens the same file.
    Shared,
    /// Copied while the guest runs (NBD + block mirror), its backing chain first.
    Copy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DiskPlan {
    pub disk: String,
    pub transfer: DiskTransfer,
    /// Bytes to copy (the allocated size of the chain), 0 for shared disks.
    pub bytes: u64,
}

/// What the source tells the destination about the VM: enough to check it
/// (`POST /api/v1/migrations/preflight`) and to prepare for it
/// (`POST /api/v1/migrations/incoming`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IncomingVm {
    /// The migration's id, chosen by the source.
    pub id: Uuid,
    /// The source's host name, for messages.
    pub source: String,
    /// The source's HTTPS certificate fingerprint: a destination that has the same one
    /// is the source itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_fingerprint: Option<String>,
    pub spec: VmSpec,
    pub status: VmStatus,
    /// QEMU's resolved machine type on the source (`pc-i440fx-7.2`): the destination
    /// must run the very same one.
    pub machine_type: String,
    /// The source's QEMU version (`7.2.22`).
    pub qemu_version: String,
    /// The accelerator the guest runs on at the source (`tcg`, `kvm`).
    pub accel: String,
    /// The source CPU's feature flags (`/proc/cpuinfo`): under KVM the guest runs on
    /// the host's own CPU model, so the destination's must have every one of them.
    #[serde(default)]
    pub cpu_flags: Vec<String>,
    /// The address the source reaches the destination at (its URL's host): where the
    /// destination's QEMU listens, and what its TLS certificate names.
    pub destination_address: String,
    /// Post-copy may be used: QEMU needs the capability on both ends from the start.
    #[serde(default)]
    pub postcopy: bool,
    /// Each disk's volume record (pool, format, …) when it has one, by disk id.
    pub volumes: Vec<Volume>,
    /// The pools those volumes live in, as the source knows them.
    pub pools: Vec<PoolSpec>,
    pub disks: Vec<DiskPlan>,
    /// The VM's snapshots (metadata; their files travel with the disks).
    pub snapshots: SnapshotTree,
    /// Backing images below each copied disk's top, oldest first, as
    /// (disk id, path on the source, size in bytes, SHA-256).
    #[serde(default)]
    pub chain_files: Vec<ChainFile>,
    /// UEFI VMs: their variable store as it is now, base64 (QEMU needs the file to
    /// start; the final copy comes with the finish).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvram_b64: Option<String>,
    /// When the VM was created (Unix seconds), kept on the destination.
    #[serde(default)]
    pub created_at: u64,
    /// The VM's events on the source, oldest first: its history moves with it.
    #[serde(default)]
    pub events: Vec<crate::event::Event>,
    /// Each PCI device's place on the source, by device id.
    #[serde(default)]
    pub pci: std::collections::BTreeMap<String, PciPlace>,
    /// The images (`corral image`) the copied disks read through, recorded on the
    /// destination too when it lacks them.
    #[serde(default)]
    pub images: Vec<crate::storage::Image>,
}

/// The destination's answer to `POST /api/v1/migrations/preflight`: who it is and each
/// of its checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IncomingPreflight {
    pub hostname: String,
    pub qemu_version: String,
    pub checks: Vec<PreflightCheck>,
}

/// Where a PCI device sits in a running VM: the bus (`pci.0`, `pcie.0`, a root port's
/// id) and its slot and function. A migration's destination puts every device exactly
/// where the source has it (hot-plugging moves devices off the places a fresh start
/// would give them, and QEMU's device state only loads into the same places).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PciPlace {
    pub bus: String,
    pub slot: u8,
    pub function: u8,
}

/// A read-only image under a copied disk's top (a snapshot's frozen image, the volume's
/// base image, the user's `--image` file): sent whole before the mirror starts (the top
/// alone is mirrored), skipped when the destination holds the same bytes there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChainFile {
    pub disk: String,
    /// Where it is on the source.
    pub path: String,
    /// The pool it lies in on the source (it goes into the destination's pool of that
    /// name); none for a file outside every pool (the user's), which the destination
    /// must already have at the same path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    pub size_bytes: u64,
    pub format: crate::DiskFormat,
    /// SHA-256 of its bytes; empty in a pre-flight (hashing takes time).
    #[serde(default)]
    pub sha256: String,
}

/// The destination's answer to `POST /api/v1/migrations/incoming`: the chain files it
/// lacks (their source paths), to be sent with `PUT /api/v1/migrations/{id}/files/{n}`
/// (`n` their index in the request's `chain_files`) before `POST …/start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IncomingPrepared {
    pub needed: Vec<usize>,
}

/// The destination is ready: QEMU waits for the stream here, disks are exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IncomingReady {
    /// TCP port of QEMU's `migrate-incoming` listener on the destination's address.
    pub migration_port: u16,
    /// TCP port of the destination QEMU's NBD server, when disks are copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd_port: Option<u16>,
    /// PEM: the migration's own CA, and a client certificate and key it signed, for the
    /// source QEMU's TLS (the destination's QEMU verifies the client).
    pub tls: MigrationTls,
}

/// A migration's TLS material for the source: made fresh by the destination for this
/// migration only, handed over inside the pinned HTTPS connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MigrationTls {
    pub ca_cert: String,
    pub client_cert: String,
    pub client_key: String,
}

/// Where the destination's side of a migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum IncomingPhase {
    /// QEMU waits for (or is receiving) the stream; the guest is not running here.
    Receiving,
    /// The whole state arrived; QEMU is paused, waiting for the source's word.
    Received,
    /// The source said go: the guest runs here, this host owns the VM.
    Resumed,
    /// Given up: the destination's QEMU and copied disks are gone, and it will never
    /// run the guest.
    Aborted,
}

/// `GET /api/v1/migrations/{id}` on the destination, and the reply to its finish and
/// abort.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IncomingStatus {
    pub id: Uuid,
    pub vm: String,
    pub phase: IncomingPhase,
    /// QEMU's incoming migration status (`active`, `completed`, `failed`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<String>,
}

/// `POST /api/v1/migrations/{id}/finish`: the source has handed over; the destination
/// resumes the guest (with the UEFI variables as they were at the switch-over).
/// `POST /api/v1/migrations/{id}/history` then brings the console's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FinishIncoming {
    /// The serial console's recent output on the source, base64 (it continues here).
    #[serde(default)]
    pub console_log_b64: String,
    /// UEFI variables as the source left them at switch-over, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvram_b64: Option<String>,
}

/// Live progress of a migration, in its operation's `detail`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MigrationProgress {
    /// `preflight`, `preparing`, `copying-chain`, `mirroring`, `memory`, `switch-over`,
    /// `cleanup`, `done`.
    pub phase: String,
    /// RAM sent so far, bytes.
    pub ram_transferred: u64,
    pub ram_remaining: u64,
    pub ram_total: u64,
    /// Bytes per second the guest dirties.
    pub dirty_rate: u64,
    /// QEMU's estimate of the pause at switch-over, ms.
    pub expected_downtime_ms: u64,
    /// The pass over memory (QEMU's dirty-sync count).
    pub pass: u64,
    /// Disk bytes mirrored so far and in all.
    pub disk_transferred: u64,
    pub disk_total: u64,
    /// Set once done: the pause the guest saw (QEMU's figure), total time, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
    /// Whether the migration switched to post-copy.
    #[serde(default)]
    pub postcopy: bool,
}

/// `POST /api/v1/host/probe-certificate`: which certificate an HTTPS corrald shows, for
/// a person to compare with that host's `corral host info` before trusting it (the web
/// console's migrate dialog; `corral remote add` does the same on its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeCertificate {
    /// `https://host:port`.
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProbedCertificate {
    pub url: String,
    /// SHA-256 of the certificate it showed (lowercase hex); not trusted by this.
    pub fingerprint: String,
}
