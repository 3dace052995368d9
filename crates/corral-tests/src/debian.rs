//! What the tests with a real Debian guest share: the image (built from Debian's
//! packages once, cached), an SSH key for cloud-init to install, and SSH from inside a
//! test's namespace.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{workspace, NetNs};

/// The image: `CORRAL_DEBIAN_IMAGE` (scripts/test.sh builds it once), else built into
/// `dir` (cached under build/images by the script).
pub fn image(dir: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("CORRAL_DEBIAN_IMAGE") {
        return PathBuf::from(p);
    }
    let out = dir.join("debian-12.qcow2");
    let status = Command::new("bash")
        .arg(workspace().join("scripts/build-debian-image.sh"))
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "building the Debian image failed");
    out
}

/// A new ed25519 key pair in `dir`; the private key's path (`.pub` beside it).
pub fn ssh_key(dir: &Path) -> PathBuf {
    let key = dir.join("id_ed25519");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "corral-test", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success());
    key
}

/// `ssh debian@HOST -p PORT COMMAND` from inside `ns`, not yet run. Keepalives every
/// 2 s let a session ride out a short pause (a migration's switch-over).
pub fn ssh(ns: &NetNs, key: &Path, host: &str, port: u16, command: &str) -> Command {
    let mut c = ns.command("ssh");
    c.arg("-i").arg(key).args(["-p", &port.to_string()]);
    for option in [
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "BatchMode=yes",
        "ConnectTimeout=5",
        "LogLevel=ERROR",
        "ServerAliveInterval=2",
        "ServerAliveCountMax=10",
    ] {
        c.args(["-o", option]);
    }
    c.arg(format!("debian@{host}")).arg(command);
    c
}

/// [`ssh`] run to its end: its stdout if it succeeded.
pub fn ssh_output(ns: &NetNs, key: &Path, host: &str, port: u16, command: &str) -> Option<String> {
    let out = ssh(ns, key, host, port, command).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `f` every 2 s until it gives a value.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_secs(2));
    }
}
