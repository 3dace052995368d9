//! Live migrations in flight, as each end records them: what a restarted daemon needs to
//! finish or undo its half, and the one-transaction steps that move a VM's records from
//! one host's store to another's.

use corral_api::{Image, SnapshotTree, Volume};
use uuid::Uuid;

use crate::{Result, VmRecord};

/// Which end of a migration this host is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationRole {
    Outgoing,
    Incoming,
}

impl MigrationRole {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationRole::Outgoing => "outgoing",
            MigrationRole::Incoming => "incoming",
        }
    }
}

/// One migration as this end records it. `phase` and `body` belong to the daemon (the
/// role decides what they mean); the store keeps them whole.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationRecord {
    pub id: Uuid,
    pub vm: String,
    pub role: MigrationRole,
    pub phase: String,
    pub body: serde_json::Value,
    /// Unix milliseconds of the last change.
    pub updated_ms: u64,
}

/// The migration half of the [`crate::Store`]. Every call is atomic.
pub trait MigrationStore: Send + Sync {
    /// Adds or replaces a record.
    fn put_migration(&self, m: &MigrationRecord) -> Result<()>;
    fn get_migration(&self, id: Uuid) -> Result<Option<MigrationRecord>>;
    fn list_migrations(&self) -> Result<Vec<MigrationRecord>>;
    fn delete_migration(&self, id: Uuid) -> Result<()>;
    /// Destination: records the arriving VM with its volumes, snapshot tree and any
    /// images its disks stand on that this host lacks, and the migration, in one
    /// transaction. Fails with `AlreadyExists` if the VM's or a volume's name is taken.
    fn insert_incoming_vm(
        &self,
        record: &VmRecord,
        volumes: &[Volume],
        images: &[Image],
        tree: &SnapshotTree,
        migration: &MigrationRecord,
    ) -> Result<()>;
    /// Either end: removes a VM that now lives on the other host (or never arrived
    /// here) with its snapshot tree, events and the named volumes, and records the
    /// migration's new phase, in one transaction: the switch of ownership.
    fn remove_migrated_vm(
        &self,
        vm: &str,
        volumes: &[String],
        migration: &MigrationRecord,
    ) -> Result<()>;
}
