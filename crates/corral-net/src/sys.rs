//! Small host helpers shared by the modules: finding tools, running them, looking at
//! processes through `/proc`, privileges.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::NetError;

/// Where tools are looked for besides `$PATH`: a daemon started by an init system may
/// have a `PATH` without the sbin directories, where `nft`, `dnsmasq` and `ip` live.
const EXTRA_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// The absolute path of an executable named `name`, if installed.
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `tool(name)` or [`NetError::Unsupported`] naming the Debian package to install.
pub fn require_tool(name: &str, package: &str) -> Result<PathBuf, NetError> {
    tool(name).ok_or_else(|| NetError::Unsupported {
        message: format!("`{name}` is not installed"),
        hint: format!("install Debian's {package} package (scripts/setup.sh does)"),
    })
}

/// Runs `program args`, feeding `input` on stdin; its stdout on success, its stderr as
/// [`NetError::Command`] on failure.
pub async fn run(program: &Path, args: &[&str], input: Option<&str>) -> Result<String, NetError> {
    let shown = std::iter::once(program.display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| NetError::Io {
            what: format!("starting `{shown}`"),
            source,
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .await
            .map_err(|source| NetError::Io {
                what: format!("writing to `{shown}`"),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| NetError::Io {
            what: format!("waiting for `{shown}`"),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(NetError::Command {
            command: shown,
            stderr: if stderr.is_empty() {
                out.status.to_string()
            } else {
                stderr
            },
        })
    }
}

/// Whether `pid` is a live process (zombies count as gone).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(false)
}

/// The arguments of process `pid` (empty if it is gone).
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The pid in a pidfile, if it holds one.
pub fn read_pidfile(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether this process may change the network (`CAP_NET_ADMIN` in its effective set).
pub fn has_net_admin() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub fn signal(pid: u32, signal: nix::sys::signal::Signal) -> Result<(), NetError> {
    let Ok(raw) = i32::try_from(pid) else {
        return Ok(());
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(NetError::Io {
            what: format!("sending {signal} to process {pid}"),
            source: e.into(),
        }),
    }
}

/// Stops `pid` with SIGTERM, then SIGKILL if it has not exited within `grace`.
pub async fn terminate(pid: u32, grace: std::time::Duration) -> Result<(), NetError> {
    use nix::sys::signal::Signal;
    signal(pid, Signal::SIGTERM)?;
    let deadline = tokio::time::Instant::now() + grace;
    while alive(pid) {
        if tokio::time::Instant::now() >= deadline {
            signal(pid, Signal::SIGKILL)?;
            // SIGKILL cannot be refused; the kernel needs a moment to tear it down.
            for _ in 0..100 {
                if !alive(pid) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Writes `text` to `path` through a temporary file and a rename, so readers (dnsmasq
/// re-reading its hosts file) never see half a file.
pub fn write_atomic(path: &Path, text: &str, mode: u32) -> Result<(), NetError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| NetError::Io {
        what: format!("writing {}", path.display()),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    // The mode given to open() is filtered by the umask; readers need exactly `mode`.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
