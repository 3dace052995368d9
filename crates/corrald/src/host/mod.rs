//! Facts about this host, found once at start-up: QEMU's version, the accelerator (probed
//! and cached, or forced), and how QEMU processes are confined.

mod tools;

use std::path::{Path, PathBuf};

use corral_api::{Accel, AccelInfo, HostProblem};
use corral_qemu::argv::Confinement;
use corral_qemu::probe::{self, ProbeOutcome};
use serde::{Deserialize, Serialize};

use crate::clock::now_secs;
use crate::config::Config;

pub struct HostFacts {
    pub hostname: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub qemu_version: String,
    pub accel: AccelInfo,
    pub confinement: Confinement,
    pub confinement_text: String,
    pub qemu_img_version: Option<String>,
    /// Machine types this QEMU runs, aliases included (`pc`, `pc-i440fx-7.2`, …): a
    /// migration's destination must run the source's exact one.
    pub machine_types: std::collections::BTreeSet<String>,
    /// What the host lacks (qemu-img, OVMF), each logged as an error at start.
    pub problems: Vec<HostProblem>,
}

impl HostFacts {
    pub async fn discover(cfg: &Config) -> anyhow::Result<HostFacts> {
        let qemu_version = qemu_version(&cfg.qemu_binary).await?;
        let accel = choose_accel(cfg, &qemu_version).await;
        let (confinement, confinement_text) = confinement(cfg);
        let tools = tools::check(Path::new("qemu-img"), &qemu_version).await;
        let machine_types = machine_types(&cfg.qemu_binary).await;
        for p in &tools.problems {
            tracing::error!(
                "{}: {}; {} cannot work: {}",
                p.component,
                p.error,
                p.affects,
                p.hint
            );
        }
        Ok(HostFacts {
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            memory_bytes: total_memory(),
            qemu_version,
            accel,
            confinement,
            confinement_text,
            qemu_img_version: tools.qemu_img_version,
            machine_types,
            problems: tools.problems,
        })
    }
}

async fn qemu_version(binary: &Path) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(binary)
        .arg("--version")
        .output()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run QEMU ({}): {e}; install Debian's qemu-system-x86 (scripts/setup.sh installs QEMU's packages as one matching set)",
                binary.display()
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"
    Ok(text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("QEMU emulator version "))
        .unwrap_or("unknown")
        .to_string())
}

/// `qemu-system-x86_64 -machine help`: one machine per line after the header, an alias
/// naming its target in "(alias of pc-i440fx-7.2)".
async fn machine_types(binary: &Path) -> std::collections::BTreeSet<String> {
    let out = tokio::process::Command::new(binary)
        .args(["-machine", "help"])
        .output()
        .await;
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    parse_machine_types(&text)
}

fn parse_machine_types(text: &str) -> std::collections::BTreeSet<String> {
    let mut types = std::collections::BTreeSet::new();
    for line in text
        .lines()
        .skip_while(|l| !l.starts_with("Supported machines"))
        .skip(1)
    {
        if let Some(name) = line.split_whitespace().next() {
            types.insert(name.to_string());
        }
        if let Some((_, target)) = line.split_once("(alias of ") {
            types.insert(target.trim_end_matches(')').to_string());
        }
    }
    types
}

/// The CPU's feature flags, as the kernel lists them for the first CPU.
pub fn cpu_flags() -> Vec<String> {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("flags"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, f)| f.split_whitespace().map(str::to_string).collect())
        })
        .unwrap_or_default()
}

/// Memory the kernel could give a new process now without swapping (MemAvailable).
pub fn available_memory() -> u64 {
    meminfo_kib("MemAvailable:").map_or(0, |kb| kb * 1024)
}

fn meminfo_kib(key: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
    })
}

fn total_memory() -> u64 {
    meminfo_kib("MemTotal:").map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_types_include_aliases_and_their_targets() {
        let text = "Supported machines are:\n\
microvm              microvm (i386)\n\
pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)\n\
pc-i440fx-7.2        Standard PC (i440FX + PIIX, 1996) (default)\n\
q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)\n\
pc-q35-7.2           Standard PC (Q35 + ICH9, 2009)\n";
        let types = parse_machine_types(text);
        for t in ["pc", "pc-i440fx-7.2", "q35", "pc-q35-7.2", "microvm"] {
            assert!(types.contains(t), "{t}: {types:?}");
        }
        assert!(!types.contains("Supported"));
    }
}

/// A probe result, cached in the state dir for as long as its key holds: same QEMU,
/// same host kernel, same boot, same probe kernel.
#[derive(Serialize, Deserialize)]
struct CachedProbe {
    key: String,
    accel: Accel,
    reason: String,
    probed_at: u64,
}

async fn choose_accel(cfg: &Config, qemu_version: &str) -> AccelInfo {
    if let Some(accel) = cfg.accel {
        return AccelInfo {
            accel,
            reason: format!("forced by --accel {}", accel.as_str()),
            forced: true,
            probed_at: None,
        };
    }
    let kernel = probe_kernel(cfg);
    let key = cache_key(qemu_version, kernel.as_deref());
    let cache_path = cfg.state_dir.join("accel-probe.json");
    if let Some(cached) = std::fs::read(&cache_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<CachedProbe>(&b).ok())
        .filter(|c| c.key == key)
    {
        return AccelInfo {
            accel: cached.accel,
            reason: format!("{} (cached probe)", cached.reason),
            forced: false,
            probed_at: Some(cached.probed_at),
        };
    }
    let (accel, reason) =
        match probe::probe(&cfg.qemu_binary, kernel.as_deref(), &cfg.state_dir).await {
            ProbeOutcome::KvmWorks { detail } => (Accel::Kvm, detail),
            ProbeOutcome::UseTcg { reason } => (Accel::Tcg, reason),
        };
    let probed_at = now_secs();
    let cached = CachedProbe {
        key,
        accel,
        reason: reason.clone(),
        probed_at,
    };
    if let Ok(body) = serde_json::to_vec_pretty(&cached) {
        let _ = std::fs::write(&cache_path, body);
    }
    AccelInfo {
        accel,
        reason,
        forced: false,
        probed_at: Some(probed_at),
    }
}

fn probe_kernel(cfg: &Config) -> Option<PathBuf> {
    if let Some(k) = &cfg.probe_kernel {
        return Some(k.clone());
    }
    probe::default_kernel_candidates()
        .into_iter()
        .find(|p| p.is_file())
}

fn cache_key(qemu_version: &str, kernel: Option<&Path>) -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    format!(
        "qemu={qemu_version};host={};boot={};kernel={}",
        read("/proc/sys/kernel/osrelease"),
        read("/proc/sys/kernel/random/boot_id"),
        kernel.map(|k| k.display().to_string()).unwrap_or_default()
    )
}

/// Root drops QEMU to the configured user and chroots it into the VM's runtime dir; a
/// daemon that is not root can do neither and says so.
fn confinement(cfg: &Config) -> (Confinement, String) {
    let sandbox = true;
    if !nix::unistd::Uid::effective().is_root() {
        let c = Confinement {
            run_as: None,
            chroot: false,
            sandbox,
        };
        return (
            c,
            "seccomp sandbox; runs as the daemon's own user (corrald is not root)".into(),
        );
    }
    let user = nix::unistd::User::from_name(&cfg.qemu_user).ok().flatten();
    let (uid, gid, name) = match user {
        Some(u) => (u.uid.as_raw(), u.gid.as_raw(), cfg.qemu_user.clone()),
        None => {
            tracing::warn!("user {} does not exist; QEMU runs as nobody", cfg.qemu_user);
            (65534, 65534, "nobody".to_string())
        }
    };
    let cgroups = corral_qemu::cgroup::describe(&cfg.cgroup_root);
    let c = Confinement {
        run_as: Some((uid, gid)),
        chroot: true,
        sandbox,
    };
    let text = format!(
        "user {name} (uid {uid}), chroot into the VM's runtime dir, seccomp sandbox, own cgroup ({cgroups})"
    );
    (c, text)
}
