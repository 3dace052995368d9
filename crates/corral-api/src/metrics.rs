//! Live metrics: `GET /api/v1/host/metrics` and `GET /api/v1/vms/{name}/metrics`.
//!
//! The daemon samples every `interval_ms` and keeps a bounded history (one hour by
//! default); `since_ms` asks only for samples newer than a time, so a UI can poll.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One host sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HostSample {
    /// Unix milliseconds.
    pub time_ms: u64,
    /// Busy share of all host CPUs, 0–100 (from /proc/stat).
    pub cpu_percent: f64,
    /// MemTotal − MemAvailable (from /proc/meminfo).
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
}

/// How full a storage pool is (statvfs of its path for directory pools).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolUsage {
    pub name: String,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HostMetrics {
    /// The sampling interval.
    pub interval_ms: u64,
    /// Oldest first.
    pub samples: Vec<HostSample>,
    pub pools: Vec<PoolUsage>,
    /// How many VMs are in each state (`running`, `stopped`, ...).
    pub vms_by_state: BTreeMap<String, u64>,
}

/// Where a VM's memory figure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemorySource {
    /// The guest's balloon driver statistics (memory the guest uses).
    Balloon,
    /// The QEMU process's resident set size (what the VM costs the host).
    Rss,
}

impl MemorySource {
    pub fn as_str(self) -> &'static str {
        match self {
            MemorySource::Balloon => "balloon",
            MemorySource::Rss => "rss",
        }
    }
}

/// One VM sample; rates are per second over the last interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmSample {
    /// Unix milliseconds.
    pub time_ms: u64,
    /// CPU time of the QEMU process as a share of one host CPU (100 = one full CPU;
    /// a VM with n vCPUs can reach n × 100).
    pub cpu_percent: f64,
    pub memory_used_bytes: u64,
    /// With `memory_source` `balloon`: the memory the guest sees (a little under the
    /// configured memory); with `rss`: the VM's configured memory.
    pub memory_total_bytes: u64,
    pub memory_source: MemorySource,
    pub disk_read_bytes_per_sec: f64,
    pub disk_write_bytes_per_sec: f64,
    pub disk_read_ops_per_sec: f64,
    pub disk_write_ops_per_sec: f64,
    /// Tap NICs from their kernel counters; user-mode (passt) NICs from the guest
    /// agent's counters while it answers (0 without one).
    pub net_rx_bytes_per_sec: f64,
    pub net_tx_bytes_per_sec: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmMetrics {
    pub vm: String,
    pub interval_ms: u64,
    /// Oldest first; empty while the VM has not run since the daemon started.
    pub samples: Vec<VmSample>,
}

/// The newest sample of every running VM (`corral top`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmsMetrics {
    pub interval_ms: u64,
    /// By VM name; VMs that have not been sampled since they started are absent.
    pub vms: Vec<VmLatest>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmLatest {
    pub vm: String,
    pub sample: VmSample,
}
