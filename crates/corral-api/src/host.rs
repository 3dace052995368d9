//! `GET /api/v1/host`: what this host is and what it runs VMs with.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(format!("unknown accelerator '{other}' (use kvm or tcg)")),
        }
    }
}

/// The accelerator in use and the evidence for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AccelInfo {
    pub accel: Accel,
    /// Why this accelerator was chosen, in words.
    pub reason: String,
    /// `true` when set by `--accel` rather than by the probe.
    pub forced: bool,
    /// When the probe ran (Unix seconds); absent when forced.
    #[serde(default)]
    pub probed_at: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HostInfo {
    pub hostname: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub qemu_binary: String,
    pub qemu_version: String,
    pub accel: AccelInfo,
    pub corral_version: String,
    pub state_dir: String,
    /// How QEMU processes are confined (uid, sandbox, cgroup), in words.
    pub confinement: String,
    pub vms_total: u32,
    pub vms_running: u32,
    /// Every pool driver this build has, and whether this host can use it.
    #[serde(default)]
    pub storage_drivers: Vec<StorageDriverInfo>,
    /// Every network driver, what it can do, and whether this host can use it.
    #[serde(default)]
    pub network_drivers: Vec<crate::network::NetworkDriverInfo>,
    /// HTTPS addresses the API and web console are served on (`corrald --listen`).
    #[serde(default)]
    pub listen: Vec<String>,
    /// SHA-256 of the HTTPS certificate (lowercase hex), for clients to pin.
    #[serde(default)]
    pub tls_fingerprint: Option<String>,
    /// qemu-img's version, when it runs.
    #[serde(default)]
    pub qemu_img_version: Option<String>,
    /// What this host lacks that part of Corral needs (a missing qemu-img or OVMF),
    /// found when corrald started; empty when nothing is missing.
    #[serde(default)]
    pub problems: Vec<HostProblem>,
}

/// A program or file the host lacks, what it breaks, and what to install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HostProblem {
    /// `qemu-img`, `ovmf`.
    pub component: String,
    /// What is wrong, in words.
    pub error: String,
    /// What cannot work until it is fixed.
    pub affects: String,
    /// What to install.
    pub hint: String,
}

/// A pool driver and whether it works on this host (checked when asked, not cached).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StorageDriverInfo {
    /// `dir`, `lvm-thin`.
    pub name: String,
    pub available: bool,
    /// Why not, when unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
