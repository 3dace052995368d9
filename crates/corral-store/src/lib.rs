//! Corral's state behind one trait (DESIGN.md §3): every change of state goes through a
//! [`Store`], so the cluster backend (etcd) will be a second implementation, not a rewrite.
//!
//! The default is [`SqliteStore`]: one SQLite file in the state dir, WAL mode, versioned
//! migrations.

mod access;
mod migration;
mod sqlite;

pub use access::{AccessStore, SessionRecord, AUDIT_KEPT};
pub use migration::{MigrationRecord, MigrationRole, MigrationStore};

pub use sqlite::SqliteStore;

use corral_api::{
    Event, Image, NetworkSpec, Operation, PoolSpec, SnapshotTree, VmSpec, VmStatus, Volume,
};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object already exists.
    #[error("{kind} '{name}' already exists")]
    AlreadyExists { kind: &'static str, name: String },
    /// The object does not exist.
    #[error("{kind} '{name}' not found")]
    NotFound { kind: &'static str, name: String },
    /// The object is still used by others.
    #[error("{kind} '{name}' is in use by {by}")]
    InUse {
        kind: &'static str,
        name: String,
        by: String,
    },
    /// The database failed.
    #[error("state database error")]
    Sqlite(#[from] rusqlite::Error),
    /// A schema migration failed.
    #[error("state database migration failed")]
    Migration(#[from] rusqlite_migration::Error),
    /// A stored record could not be decoded (written by a newer Corral, or damaged).
    #[error("stored record could not be decoded")]
    Decode(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A VM as stored: its spec (desired) and last known status (observed).
#[derive(Debug, Clone, PartialEq)]
pub struct VmRecord {
    pub spec: VmSpec,
    pub status: VmStatus,
    /// Unix seconds.
    pub created_at: u64,
}

/// Where Corral keeps its state. Implementations must be safe to share between threads
/// and must make each call atomic.
pub trait Store: AccessStore + MigrationStore + Send + Sync {
    /// Adds a VM; fails with `AlreadyExists` if the name is taken (exactly one of several
    /// concurrent creates of a name wins).
    fn insert_vm(&self, record: &VmRecord) -> Result<()>;
    fn get_vm(&self, name: &str) -> Result<Option<VmRecord>>;
    fn list_vms(&self) -> Result<Vec<VmRecord>>;
    fn update_vm_spec(&self, spec: &VmSpec) -> Result<()>;
    fn update_vm_status(&self, name: &str, status: &VmStatus) -> Result<()>;
    /// Whether any VM has a NIC with this MAC address.
    fn mac_in_use(&self, mac: &str) -> Result<bool>;
    /// Adds a VM together with new volumes it owns, in one transaction (all or none).
    /// A volume based on a snapshot is recorded only while that snapshot exists, checked
    /// in the same transaction.
    fn insert_vm_with_volumes(&self, record: &VmRecord, volumes: &[Volume]) -> Result<()>;
    /// Removes a VM, its events and its snapshot tree; fails with `InUse` while any
    /// volume is a linked clone of one of its snapshots (checked in the same transaction).
    fn delete_vm(&self, name: &str) -> Result<()>;

    /// Appends an event and returns it with its id.
    fn append_event(
        &self,
        vm: Option<&str>,
        kind: &str,
        message: &str,
        time_ms: u64,
    ) -> Result<Event>;
    /// Events after `since` (an id), oldest first, at most `limit`, optionally of one VM.
    fn events(&self, vm: Option<&str>, since: u64, limit: u32) -> Result<Vec<Event>>;
    /// The newest `limit` events of a VM, oldest first.
    fn recent_events(&self, vm: &str, limit: u32) -> Result<Vec<Event>>;

    fn put_operation(&self, op: &Operation) -> Result<()>;
    fn get_operation(&self, id: Uuid) -> Result<Option<Operation>>;
    fn list_operations(&self) -> Result<Vec<Operation>>;

    /// Adds a network; fails with `AlreadyExists` if the name is taken.
    fn insert_network(&self, spec: &NetworkSpec) -> Result<()>;
    fn update_network(&self, spec: &NetworkSpec) -> Result<()>;
    fn get_network(&self, name: &str) -> Result<Option<NetworkSpec>>;
    fn list_networks(&self) -> Result<Vec<NetworkSpec>>;
    /// Removes a network; fails with `InUse` while any VM has a NIC on it (checked in the
    /// same transaction; inserting a VM checks its networks exist in its own).
    fn delete_network(&self, name: &str) -> Result<()>;
    /// Names of the VMs with a NIC on a network.
    fn vms_on_network(&self, name: &str) -> Result<Vec<String>>;

    fn insert_pool(&self, spec: &PoolSpec) -> Result<()>;
    fn get_pool(&self, name: &str) -> Result<Option<PoolSpec>>;
    fn list_pools(&self) -> Result<Vec<PoolSpec>>;
    /// Removes a pool; fails with `InUse` while any volume is in it.
    fn delete_pool(&self, name: &str) -> Result<()>;

    /// Adds a volume; fails with `AlreadyExists` if the name is taken.
    fn insert_volume(&self, volume: &Volume) -> Result<()>;
    fn update_volume(&self, volume: &Volume) -> Result<()>;
    fn get_volume(&self, name: &str) -> Result<Option<Volume>>;
    fn list_volumes(&self, pool: Option<&str>) -> Result<Vec<Volume>>;
    fn delete_volume(&self, name: &str) -> Result<()>;
    fn insert_image(&self, image: &Image) -> Result<()>;
    fn get_image(&self, name: &str) -> Result<Option<Image>>;
    fn list_images(&self) -> Result<Vec<Image>>;
    /// Removes an image; fails with `InUse` while any volume is a linked clone of it
    /// (checked in the same transaction, so no clone can appear in between).
    fn delete_image(&self, name: &str) -> Result<()>;
    /// Names of the volumes that are linked clones of an image.
    fn volumes_based_on(&self, image: &str) -> Result<Vec<String>>;

    /// A VM's snapshot tree (empty if it has none).
    fn snapshot_tree(&self, vm: &str) -> Result<SnapshotTree>;
    /// Saves a VM's spec, its snapshot tree and the volumes whose files changed, in one
    /// transaction: a snapshot operation's new state is recorded whole or not at all.
    /// Fails with `InUse` if the new tree lacks a snapshot a volume is based on.
    fn save_vm_and_snapshots(
        &self,
        spec: &VmSpec,
        tree: &SnapshotTree,
        volumes: &[Volume],
    ) -> Result<()>;
    /// Volumes that are linked clones of a VM's snapshots (of `snapshot` only, if given).
    fn volumes_based_on_snapshot(&self, vm: &str, snapshot: Option<&str>) -> Result<Vec<Volume>>;
    /// Names of the VMs with a disk on this volume.
    fn vms_using_volume(&self, name: &str) -> Result<Vec<String>>;
}
