//! User-mode NICs with passt: one passt per NIC, started before QEMU, connected by a
//! Unix stream socket (`-netdev stream,id=netN,server=off,addr.type=unix,addr.path=SOCKET`
//! on QEMU 7.2); it exits when QEMU closes the socket (`--one-off`).
//!
//! passt daemonizes itself (own session, reparented to init, so it outlives corrald
//! with its VM): its first process exits after the socket listens and the pidfile is
//! written, so a zero exit means "ready". It then sandboxes itself (new user, mount,
//! IPC, UTS and PID namespaces, an empty root, no capabilities, seccomp).
//!
//! It runs as root inside that sandbox (`--runas 0`): Debian's passt
//! 0.0~git20230309 drops to `nobody` *before* binding the socket and writing the
//! pidfile, and both live in the VM's root-only runtime directory; that version even
//! ignores the failed bind and waits on a socket that does not exist.

use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_api::network::Protocol;

use crate::NetError;

/// One user NIC's passt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasstConfig {
    pub socket: PathBuf,
    pub pidfile: PathBuf,
    /// (protocol, host port, guest port)
    pub forwards: Vec<(Protocol, u16, u16)>,
}

impl PasstConfig {
    /// The passt of the NIC with this MAC, its files in the VM's runtime directory
    /// `dir`. Named by MAC, not by place, so that a NIC plugged or unplugged while the
    /// VM runs finds its own passt.
    pub fn for_nic(dir: &Path, mac: &str) -> PasstConfig {
        let id = mac.replace(':', "").to_ascii_lowercase();
        PasstConfig {
            socket: dir.join(format!("passt-{id}.sock")),
            pidfile: dir.join(format!("passt-{id}.pid")),
            forwards: Vec::new(),
        }
    }
}

/// passt's argv after the program name (pure). Its log goes next to the pidfile
/// (`<pidfile>.log`, e.g. `passt-0.pid.log`).
pub fn args(cfg: &PasstConfig) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--one-off".into(),
        "--runas".into(),
        "0".into(),
        "--quiet".into(),
        "--socket".into(),
        cfg.socket.display().to_string(),
        "--pid".into(),
        cfg.pidfile.display().to_string(),
        "--log-file".into(),
        log_path(cfg).display().to_string(),
    ];
    for (proto, host, guest) in &cfg.forwards {
        a.push(
            match proto {
                Protocol::Tcp => "--tcp-ports",
                Protocol::Udp => "--udp-ports",
            }
            .into(),
        );
        a.push(format!("{host}:{guest}"));
    }
    a
}

/// Where passt logs (its warnings about the host's interfaces, errors).
pub fn log_path(cfg: &PasstConfig) -> PathBuf {
    let mut name = cfg.pidfile.clone().into_os_string();
    name.push(".log");
    PathBuf::from(name)
}

/// Starts passt detached (own session, dies with its QEMU) and waits until its socket
/// accepts; returns its pid.
pub async fn spawn(cfg: &PasstConfig) -> Result<u32, NetError> {
    let passt = crate::sys::require_tool("passt", "passt")?;
    // A socket or pidfile left by a passt that ended with its VM.
    for stale in [&cfg.socket, &cfg.pidfile] {
        match std::fs::remove_file(stale) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(NetError::Io {
                    what: format!("removing the old {}", stale.display()),
                    source,
                })
            }
        }
    }
    let argv = args(cfg);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    crate::sys::run(&passt, &argv, None)
        .await
        .map_err(no_route_is_the_hosts_state)?;
    let command = || format!("{} {}", passt.display(), argv.join(" "));
    let pid = crate::sys::read_pidfile(&cfg.pidfile).ok_or_else(|| NetError::Command {
        command: command(),
        stderr: format!("passt wrote no pid to {}", cfg.pidfile.display()),
    })?;
    // passt writes the pidfile after listen(2); still, confirm the socket listens
    // without connecting to it: with --one-off, a probe connection would be its client.
    for _ in 0..100 {
        if listening(&cfg.socket) {
            return Ok(pid);
        }
        if !crate::sys::alive(pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = std::fs::read_to_string(log_path(cfg)).unwrap_or_default();
    let _ = crate::sys::signal(pid, nix::sys::signal::Signal::SIGKILL);
    Err(NetError::Command {
        command: command(),
        stderr: format!(
            "its socket {} never listened; passt's log: {}",
            cfg.socket.display(),
            log.trim()
        ),
    })
}

/// Stops the passt of `cfg` if it still runs, and removes its socket, pidfile and log.
/// `--one-off` ends passt when QEMU closes its end, but a NIC unplugged from a running
/// QEMU 7.2 leaves that connection open, so the daemon ends it. The pid is only
/// signalled if its command line names this socket: a reused pid is left alone.
pub fn stop(cfg: &PasstConfig) {
    if let Some(pid) = crate::sys::read_pidfile(&cfg.pidfile) {
        let socket = cfg.socket.display().to_string();
        if crate::sys::cmdline(pid).contains(&socket) {
            let _ = crate::sys::signal(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }
    for file in [&cfg.socket, &cfg.pidfile, &log_path(cfg)] {
        let _ = std::fs::remove_file(file);
    }
}

/// passt refuses to start on a host with no route out (a namespace with only loopback):
/// that is the host's state, not a bug, and a NAT network still works there.
fn no_route_is_the_hosts_state(e: NetError) -> NetError {
    match e {
        NetError::Command { stderr, .. } if stderr.contains("No external routable interface") => {
            NetError::Unsupported {
                message: "a user NIC (passt) needs a route out of this host, and it has none"
                    .into(),
                hint: "put the VM on a NAT or isolated network (`--network nat`), or give the \
                       host a default route"
                    .into(),
            }
        }
        other => other,
    }
}

/// Whether a Unix socket bound at `path` listens in this network namespace
/// (`/proc/thread-self/net/unix`, flag `__SO_ACCEPTCON`: the calling thread's namespace,
/// which `/proc/net`, the process's, need not be).
fn listening(path: &Path) -> bool {
    const ACCEPTCON: u32 = 0x0001_0000;
    let Ok(table) = std::fs::read_to_string("/proc/thread-self/net/unix") else {
        return false;
    };
    let want = path.display().to_string();
    table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() >= 8
            && f[7] == want
            && u32::from_str_radix(f[3], 16).is_ok_and(|flags| flags & ACCEPTCON != 0)
    })
}

/// Whether passt is installed.
pub fn available() -> bool {
    crate::sys::tool("passt").is_some()
}
