//! The daemon's settings, from its command line.

use std::path::PathBuf;

use corral_api::Accel;

/// QEMU's unix socket paths must fit in `sun_path` (108 bytes with the NUL); the longest
/// one Corral makes is `<state>/run/<uuid>/console.sock`.
const MAX_STATE_DIR_LEN: usize = 107 - "/run/".len() - 36 - "/console.sock".len();

#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// `Some` when `--accel` overrides the probe.
    pub accel: Option<Accel>,
    pub qemu_binary: PathBuf,
    /// The user QEMU drops to when the daemon runs as root.
    pub qemu_user: String,
    /// A kernel the accelerator probe may boot; `None` searches the usual places.
    pub probe_kernel: Option<PathBuf>,
    /// Where cgroups are made.
    pub cgroup_root: PathBuf,
    /// Bytes of serial console output kept per VM (twice this at most on disk).
    pub console_log_limit: u64,
    /// Make the `default` NAT network on the first start as root (like libvirt's).
    pub default_network: bool,
    /// HTTPS listen addresses (`--listen`); empty: the Unix socket only.
    pub listen: Vec<std::net::SocketAddr>,
    /// The HTTPS certificate's SHA-256 fingerprint, once it is loaded.
    pub tls_fingerprint: Option<String>,
    /// How long a browser login lasts.
    pub session_ttl: std::time::Duration,
}

impl Config {
    pub fn check(&self) -> Result<(), String> {
        let dir = self.state_dir.to_string_lossy();
        if !self.state_dir.is_absolute() {
            return Err(format!("--state-dir {dir} must be an absolute path"));
        }
        if dir.len() > MAX_STATE_DIR_LEN {
            return Err(format!(
                "--state-dir {dir} is {} characters; at most {MAX_STATE_DIR_LEN} fit QEMU's socket paths",
                dir.len()
            ));
        }
        if dir.contains(',') {
            return Err(format!(
                "--state-dir {dir} must not contain ',' (QEMU option syntax)"
            ));
        }
        Ok(())
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.state_dir.join("run")
    }

    /// The default `dir` pool, where VM-owned volumes are made.
    pub fn default_pool(&self) -> PathBuf {
        self.state_dir.join("pools").join("default")
    }
}
