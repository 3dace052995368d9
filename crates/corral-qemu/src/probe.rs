//! Which accelerator really works here (DESIGN.md §11).
//!
//! `/dev/kvm` opening is not evidence: on nested setups (PVM) it opens, creates VMs and
//! runs small snippets, yet a real Linux guest hangs in early boot. So the probe boots a
//! real kernel under KVM with no root file system and a bounded time: a working KVM gets
//! to the "VFS: Unable to mount root fs" panic in well under a second and, with
//! `-no-reboot`, QEMU exits. A hang or any other ending means TCG.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::process::Command;

/// How long a KVM boot to the root-fs panic may take before KVM is called broken.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(6);

/// The outcome, with the evidence in words for `host info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    KvmWorks { detail: String },
    UseTcg { reason: String },
}

/// Where a kernel to probe with may be found, best first.
pub fn default_kernel_candidates() -> Vec<PathBuf> {
    let mut c = vec![PathBuf::from("/usr/share/corral/guest/vmlinuz")];
    if let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        c.push(PathBuf::from(format!("/boot/vmlinuz-{}", release.trim())));
    }
    c.push(PathBuf::from("/boot/vmlinuz"));
    c
}

/// Runs the probe. `kernel` is a bootable x86 Linux kernel image.
pub async fn probe(qemu: &Path, kernel: Option<&Path>, work_dir: &Path) -> ProbeOutcome {
    if let Err(e) = OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        return ProbeOutcome::UseTcg {
            reason: format!("/dev/kvm cannot be opened ({e})"),
        };
    }
    let Some(kernel) = kernel else {
        return ProbeOutcome::UseTcg {
            reason:
                "/dev/kvm opens, but no guest kernel was found to prove a guest boots under it \
                     (install one at /usr/share/corral/guest/vmlinuz or pass --probe-kernel)"
                    .to_string(),
        };
    };
    match boot_to_panic(qemu, kernel, work_dir).await {
        Ok(elapsed) => ProbeOutcome::KvmWorks {
            detail: format!(
                "a Linux guest booted under KVM in {} ms",
                elapsed.as_millis()
            ),
        },
        Err(reason) => ProbeOutcome::UseTcg { reason },
    }
}

async fn boot_to_panic(qemu: &Path, kernel: &Path, work_dir: &Path) -> Result<Duration, String> {
    let serial = work_dir.join("kvm-probe.serial");
    let _ = std::fs::remove_file(&serial);
    let start = Instant::now();
    let mut child = Command::new(qemu)
        .args([
            "-accel",
            "kvm",
            "-M",
            "pc",
            "-m",
            "128",
            "-nodefaults",
            "-no-user-config",
        ])
        .args(["-display", "none", "-no-reboot", "-kernel"])
        .arg(kernel)
        .args([
            "-append",
            "console=ttyS0 panic=-1 root=/dev/corral-probe-none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    let status = match tokio::time::timeout(PROBE_TIMEOUT, child.wait()).await {
        Ok(status) => status.map_err(|e| format!("waiting for the probe guest: {e}"))?,
        Err(_) => {
            let _ = child.kill().await;
            return Err(format!(
                "/dev/kvm opens, but a Linux guest under KVM did not finish booting within {} s \
                 (broken or nested KVM); using TCG",
                PROBE_TIMEOUT.as_secs()
            ));
        }
    };
    let elapsed = start.elapsed();
    let console = std::fs::read_to_string(&serial).unwrap_or_default();
    if console.contains("Kernel panic") || console.contains("VFS:") {
        return Ok(elapsed);
    }
    Err(format!(
        "/dev/kvm opens, but the KVM probe guest ended without booting ({status}); using TCG"
    ))
}
