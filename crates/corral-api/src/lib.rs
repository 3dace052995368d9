//! Corral's wire types, shared by the daemon and every client.
//!
//! Everything here is plain data: serde structs that are at once the REST bodies and the
//! stored records, plus the checks that need nothing but the data itself (names, sizes,
//! counts). Checks that need the host (files, limits, uniqueness) live in the daemon.

pub mod auth;
pub mod cloud_init;
pub mod error;
pub mod event;
pub mod host;
pub mod metrics;
pub mod migration;
pub mod network;
pub mod operation;
pub mod size;
pub mod storage;
pub mod vm;

pub use auth::*;
pub use cloud_init::{CloudInit, SshPublicKey};
pub use error::{ErrorBody, ValidationError};
pub use event::Event;
pub use host::{Accel, AccelInfo, HostInfo, HostProblem, StorageDriverInfo};
pub use metrics::{
    HostMetrics, HostSample, MemorySource, PoolUsage, VmLatest, VmMetrics, VmSample, VmsMetrics,
};
pub use migration::*;
pub use network::*;
pub use operation::{Operation, OperationState};
pub use size::{format_size, parse_duration_secs, parse_size};
pub use storage::*;
pub use vm::*;
