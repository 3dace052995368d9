//! Starting QEMU so that it outlives the daemon, and finding it again after a restart.
//!
//! QEMU is spawned in its own session (no SIGHUP, no shared process group with corrald),
//! joined to its cgroup while it initialises, with stdout/stderr going to the VM's `qemu.log`.
//! The daemon reaps it while alive; if the daemon dies, init inherits it and the guest
//! keeps running. A restarted daemon finds it through the pidfile, checks the process is
//! really this VM's QEMU (its UUID is on the command line), and reconnects to QMP.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::process::Command;

use crate::argv::VmPaths;
use crate::cgroup::VmCgroup;
use crate::qmp::{Qmp, QmpError, QmpOptions};

/// How long QEMU may take to open its monitor socket.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// QEMU could not be executed at all.
    #[error("cannot run {binary}")]
    Spawn {
        binary: String,
        #[source]
        source: io::Error,
    },
    /// The VM's runtime files could not be prepared.
    #[error("cannot prepare {path}")]
    Files {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// QEMU exited during start-up; `log` is what it printed.
    #[error("QEMU exited during start-up: {log}")]
    EarlyExit { log: String },
    /// QEMU did not open its monitor in time.
    #[error("QEMU did not open its monitor within {0:?}")]
    Timeout(Duration),
    /// The monitor handshake failed.
    #[error("QMP handshake failed")]
    Qmp(#[from] QmpError),
}

/// A QEMU process that is up, paused (`-S`), with its monitor connected.
pub struct Launched {
    pub pid: u32,
    pub qmp: Qmp,
}

/// Spawns `binary argv` for the VM in `paths`, in `cgroup` if given, and waits until its
/// QMP monitor answers. QEMU inherits the descriptors `inherit` under their own numbers
/// (the argv names them: `-add-fd fd=N`); they stay close-on-exec in the daemon, so no
/// other child ever gets them. On error the process (if any) is killed before returning.
pub async fn launch(
    binary: &Path,
    argv: &[String],
    paths: &VmPaths,
    cgroup: Option<&VmCgroup>,
    qmp_opts: QmpOptions,
    inherit: &[std::os::fd::BorrowedFd<'_>],
) -> Result<Launched, LaunchError> {
    use std::os::fd::AsRawFd;
    let inherit: Vec<i32> = inherit.iter().map(|fd| fd.as_raw_fd()).collect();
    let log = open_log(&paths.qemu_log())?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let stderr = log.try_clone().map_err(|source| LaunchError::Files {
        path: paths.qemu_log(),
        source,
    })?;
    let mut cmd = Command::new(binary);
    cmd.args(argv)
        .current_dir(&paths.dir)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(stderr)
        .kill_on_drop(false);
    // SAFETY: the closure runs between fork and exec and only calls setsid(2) and
    // fcntl(2), which are async-signal-safe, on descriptors the parent keeps open until
    // the spawn has returned.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(io::Error::from)?;
            for &fd in &inherit {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| LaunchError::Spawn {
        binary: binary.display().to_string(),
        source,
    })?;
    let pid = child.id().unwrap_or(0);

    // Joining a cgroup costs tens of milliseconds on cgroup v1 (the kernel waits for an
    // RCU grace period per hierarchy), so it runs while QEMU initialises rather than
    // before it starts; QEMU is in its cgroup before its vCPUs ever run.
    let joined = cgroup
        .cloned()
        .map(|c| tokio::task::spawn_blocking(move || c.attach(pid)));
    let monitor = wait_for_monitor(&mut child, paths, qmp_opts).await;
    let joined = match joined {
        Some(task) => task
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e.to_string()))),
        None => Ok(()),
    };
    let monitor = match joined {
        Ok(()) => monitor,
        Err(source) => Err(LaunchError::Files {
            path: cgroup.map(|c| c.dirs()[0].clone()).unwrap_or_default(),
            source,
        }),
    };
    let qmp = match monitor {
        Ok(qmp) => qmp,
        Err(e) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(match e {
                LaunchError::EarlyExit { .. } => LaunchError::EarlyExit {
                    log: read_log_since(&paths.qemu_log(), log_start),
                },
                other => other,
            });
        }
    };
    // Reap QEMU when it exits while we are alive; after a daemon restart init does.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(Launched { pid, qmp })
}

async fn wait_for_monitor(
    child: &mut tokio::process::Child,
    paths: &VmPaths,
    opts: QmpOptions,
) -> Result<Qmp, LaunchError> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let socket = paths.qmp_socket();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return Err(LaunchError::EarlyExit { log: String::new() });
        }
        if socket.exists() {
            match Qmp::connect(&socket, opts.clone()).await {
                Ok(qmp) => return Ok(qmp),
                // The socket file appears a moment before QEMU listens on it.
                Err(QmpError::Connect { .. }) | Err(QmpError::Io(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if Instant::now() > deadline {
            return Err(LaunchError::Timeout(STARTUP_TIMEOUT));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn open_log(path: &Path) -> Result<fs::File, LaunchError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LaunchError::Files {
            path: path.to_path_buf(),
            source,
        })
}

/// What QEMU wrote to its log since `offset`, trimmed, for error messages.
pub fn read_log_since(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.take(64 * 1024).read_to_string(&mut text);
        }
    }
    let text = text.trim();
    if text.is_empty() {
        "no message".to_string()
    } else {
        text.to_string()
    }
}

/// Finds the running QEMU of a VM after a daemon restart: the pid from the pidfile, if
/// that process is alive and its command line carries the VM's UUID.
pub fn find_running(paths: &VmPaths, uuid: &str) -> Option<u32> {
    let pid: u32 = fs::read_to_string(paths.pidfile())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    is_our_qemu(pid, uuid).then_some(pid)
}

/// Whether `pid` is a live (not zombie) process whose argv contains `uuid`.
pub fn is_our_qemu(pid: u32, uuid: &str) -> bool {
    let stat = match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(_) => return false,
    };
    // The state letter follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z') | Some('X') | None) {
        return false;
    }
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    cmdline.split(|b| *b == 0).any(|arg| arg == uuid.as_bytes())
}

/// Whether a process exists at all (zombies count as gone).
pub fn process_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
        })
        .map(|zombie| !zombie)
        .unwrap_or(false)
}

/// Waits until process `pid` has exited, whoever its parent is (a re-attached QEMU is
/// init's child, not ours), for at most `limit`. True once it is gone; a zombie counts as
/// gone, since it holds no files and no image locks any more.
pub async fn wait_exit(pid: u32, limit: Duration) -> bool {
    match open_pidfd(pid) {
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the same
        // descriptor until the AsyncFd is dropped.
        Ok(fd) => match unsafe { tokio::io::unix::AsyncFd::register(fd) } {
            // A pidfd becomes readable when its process exits.
            Ok(fd) => tokio::time::timeout(limit, fd.readable()).await.is_ok(),
            Err(_) => poll_exit(pid, limit).await,
        },
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => true,
        // Kernels before 5.3 have no pidfd: look at /proc instead.
        Err(_) => poll_exit(pid, limit).await,
    }
}

fn open_pidfd(pid: u32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1;
    // it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

async fn poll_exit(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Kills a QEMU process outright (when QMP `quit` cannot be delivered).
pub fn kill(pid: u32) -> io::Result<()> {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A process that is not our child (as a re-attached QEMU is not): its exit is seen
    /// through its pidfd, and not before it happens.
    #[tokio::test]
    async fn wait_exit_sees_a_process_that_is_not_our_child_exit() {
        // `sh` forks `sleep` into the background and exits: sleep's parent is init.
        let out = std::process::Command::new("sh")
            .args(["-c", "sleep 0.6 >/dev/null 2>&1 & echo $!"])
            .output()
            .unwrap();
        let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        assert!(process_alive(pid));
        assert!(!wait_exit(pid, Duration::from_millis(100)).await);
        assert!(wait_exit(pid, Duration::from_secs(10)).await);
        assert!(!process_alive(pid));
        // Gone already (or never there): nothing to wait for.
        assert!(wait_exit(pid, Duration::from_millis(10)).await);
    }
}
