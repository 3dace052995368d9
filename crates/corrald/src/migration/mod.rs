//! Live migration between two corralds. The source owns the operation (outgoing.rs):
//! pre-flight, the destination prepared (incoming.rs, through the destination's
//! `/api/v1/migrations` routes), disks mirrored, memory sent, switch-over, cleanup.
//!
//! Never two copies, never none: the destination's QEMU resumes only when the source
//! says so (`finish`), and the source says so only after it has recorded `switching`
//! in its store; from then on the source never resumes its own copy, it only rolls
//! forward. Before that record, any failure or cancel resumes the source and aborts
//! the destination, whose abort is final (an aborted arrival never runs). Each end
//! records its phase, so a daemon killed at any point finishes or undoes its half when
//! it starts again (recovery.rs).

mod arrival;
mod chain;
mod handover;
mod incoming;
mod outgoing;
mod preflight;
mod recovery;
mod tls;

pub use outgoing::Migration;

use corral_api::MigrationTarget;
use corral_store::{MigrationRecord, MigrationRole};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::now_ms;
use crate::error::{ApiError, ApiResult};
use crate::vm::Manager;

/// The outgoing phases, in order.
pub(crate) mod phase {
    /// The destination is being asked and prepared; nothing has moved.
    pub const PREPARING: &str = "preparing";
    /// Disks are mirrored and memory sent; the source's guest is the only one running.
    pub const TRANSFERRING: &str = "transferring";
    /// The commit point: the source's guest is paused for good and will never resume
    /// here; the destination is told to resume until it confirms.
    pub const SWITCHING: &str = "switching";
    /// The destination owns the VM; the source's QEMU and copied disks go.
    pub const CLEANUP: &str = "cleanup";
    /// Given up before switching: the guest runs here; the destination still has to
    /// confirm its abort.
    pub const ABORTING: &str = "aborting";

    /// Incoming: QEMU receives the stream.
    pub const RECEIVING: &str = "receiving";
    /// Incoming: told to resume; QEMU may or may not run the guest yet.
    pub const RESUMING: &str = "resuming";
    /// Incoming: the guest runs here and the VM is this host's.
    pub const RESUMED: &str = "resumed";
    /// Incoming: given up; nothing of the VM is left here, and it never ran here.
    pub const ABORTED: &str = "aborted";
}

/// What the source keeps of an outgoing migration, enough to finish or undo it after a
/// restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OutgoingBody {
    pub destination: MigrationTarget,
    /// The destination's host name, for messages.
    pub destination_host: String,
    /// The source QEMU, to end it once the destination owns the VM.
    pub pid: u32,
    pub uuid: Uuid,
    /// Whether the guest was paused when the migration began (it is left so).
    pub was_paused: bool,
    /// Files of this host's copied disks, removed once the destination owns the VM.
    pub local_files: Vec<String>,
    /// Volumes whose records move with the VM.
    pub volumes: Vec<String>,
    /// Disk ids being mirrored.
    pub mirrored: Vec<String>,
    /// The VM's NICs: their networks' DHCP reservations are dropped here once it left.
    pub nics: Vec<corral_api::Nic>,
}

/// What the destination keeps of an incoming migration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct IncomingBody {
    pub source: String,
    /// Files made here for copied disks: removed if the arrival is given up.
    pub made: Vec<String>,
    /// Disk ids exported to the source's mirrors.
    pub exported: Vec<String>,
    /// Volumes recorded with the VM (removed with it on abort).
    pub volumes: Vec<String>,
    /// The guest's start time on the source, kept as its uptime's start.
    pub started_at: Option<u64>,
    pub was_paused: bool,
    /// Chain files this host lacks, to arrive before QEMU starts.
    #[serde(default)]
    pub needed: Vec<arrival::Needed>,
    /// What QEMU starts with here (`start`): the source's exact machine type and device
    /// places, the address the source dials, post-copy allowed.
    pub machine_type: String,
    #[serde(default)]
    pub pci: std::collections::BTreeMap<String, corral_api::PciPlace>,
    pub destination_address: String,
    #[serde(default)]
    pub postcopy: bool,
}

fn record<B: Serialize>(
    id: Uuid,
    vm: &str,
    role: MigrationRole,
    phase: &str,
    body: &B,
) -> ApiResult<MigrationRecord> {
    Ok(MigrationRecord {
        id,
        vm: vm.to_string(),
        role,
        phase: phase.to_string(),
        body: serde_json::to_value(body)
            .map_err(|e| ApiError::Internal(format!("encoding migration {id}: {e}")))?,
        updated_ms: now_ms(),
    })
}

fn body_of<B: for<'de> Deserialize<'de>>(m: &MigrationRecord) -> ApiResult<B> {
    serde_json::from_value(m.body.clone())
        .map_err(|e| ApiError::Internal(format!("migration {}: stored record: {e}", m.id)))
}

impl Manager {
    pub(crate) fn migration(&self, id: Uuid) -> ApiResult<MigrationRecord> {
        self.store
            .get_migration(id)?
            .ok_or_else(|| ApiError::NotFound {
                kind: "migration",
                name: id.to_string(),
            })
    }

    /// Stores a migration's new phase (and body).
    pub(crate) fn set_phase<B: Serialize>(
        &self,
        m: &mut MigrationRecord,
        phase: &str,
        body: &B,
    ) -> ApiResult<()> {
        *m = record(m.id, &m.vm, m.role, phase, body)?;
        self.store.put_migration(m)?;
        Ok(())
    }
}
