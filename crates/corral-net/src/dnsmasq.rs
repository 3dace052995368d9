//! One dnsmasq per network with DHCP: DHCP + DNS on the bridge, detached from the daemon
//! (it keeps serving while corrald restarts), found again by its pidfile.
//!
//! Files in the network's directory: `dnsmasq.conf` (rendered by [`render`]), `hosts`
//! (static reservations, `MAC,IP,NAME`, re-read on SIGHUP), `leases` (dnsmasq's own),
//! `dnsmasq.pid`, `dnsmasq.log`. dnsmasq daemonizes itself (own session, reparented to
//! init): its first process exits only once the server is up, with dnsmasq's own error
//! message when it could not start, so a zero exit means "serving".
//!
//! dnsmasq drops root for Debian's `dnsmasq` user after opening its sockets, pidfile and
//! lease file. It re-reads the hosts file as that user, so that needs the directory to
//! be reachable by others (`o+x` on every parent); where it is not (or the user does
//! not exist), dnsmasq keeps running as root and a warning says why.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_api::network::Lease;

use crate::driver::Reservation;
use crate::link::network_of;
use crate::{Cidr, NetError};

/// What one network's dnsmasq serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsmasqConfig {
    pub network: String,
    pub bridge: String,
    /// The host's address on the bridge and the prefix.
    pub subnet: Cidr,
    /// Hand out the host's address as the default gateway (nat). Off for isolated
    /// networks: a VM with another NIC keeps its own default route.
    pub router: bool,
}

/// How long leases last; clients renew at half of it.
const LEASE_TIME: &str = "1h";
const CONF: &str = "dnsmasq.conf";
const HOSTS: &str = "hosts";
const LEASES: &str = "leases";
const PIDFILE: &str = "dnsmasq.pid";
const LOG: &str = "dnsmasq.log";
/// The unprivileged user Debian's dnsmasq-base makes.
const USER: &str = "dnsmasq";

/// The config file's text (pure; golden-tested).
pub fn render(cfg: &DnsmasqConfig, dir: &Path) -> String {
    let d = dir.display();
    let (net, bridge) = (&cfg.network, &cfg.bridge);
    let mask = Ipv4Addr::from(if cfg.subnet.1 == 0 {
        0
    } else {
        u32::MAX << (32 - cfg.subnet.1)
    });
    let mut lines = vec![
        format!("# dnsmasq for Corral network {net}, written by corrald: edits are lost."),
        // Only the bridge, even when other interfaces appear later (bind-dynamic
        // follows the bridge's address without binding the wildcard address).
        format!("interface={bridge}"),
        "except-interface=lo".into(),
        "bind-dynamic".into(),
        "strict-order".into(),
        // Neither the host's /etc/hosts nor its names: VM names come from DHCP.
        "no-hosts".into(),
        format!("domain={net}"),
        format!("local=/{net}/"),
        "expand-hosts".into(),
    ];
    if let Some((first, last)) = dhcp_range(cfg.subnet) {
        let size = u32::from(last) - u32::from(first) + 1;
        lines.push(format!("dhcp-range={first},{last},{mask},{LEASE_TIME}"));
        lines.push(format!("dhcp-lease-max={size}"));
    }
    if !cfg.router {
        // An empty option 3: no default gateway.
        lines.push("dhcp-option=3".into());
    }
    lines.extend([
        "dhcp-authoritative".into(),
        format!("dhcp-hostsfile={d}/{HOSTS}"),
        format!("dhcp-leasefile={d}/{LEASES}"),
        format!("pid-file={d}/{PIDFILE}"),
        format!("log-facility={d}/{LOG}"),
        // Leases are in the lease file; the log keeps startup and errors only.
        "quiet-dhcp".into(),
    ]);
    lines.join("\n") + "\n"
}

/// The addresses DHCP hands out: the larger side of the subnet around the host's
/// address, network and broadcast addresses excluded (`.2`–`.254` for `.1/24`).
pub fn dhcp_range(subnet: Cidr) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if subnet.1 > 30 {
        return None;
    }
    let net = u32::from(network_of(subnet));
    let bcast = net | (u32::MAX >> subnet.1);
    let host = u32::from(subnet.0);
    let below = (net + 1, host.saturating_sub(1));
    let above = (host + 1, bcast - 1);
    let len = |(a, b): (u32, u32)| if b >= a { b - a + 1 } else { 0 };
    let best = if len(above) >= len(below) {
        above
    } else {
        below
    };
    (len(best) > 0).then(|| (Ipv4Addr::from(best.0), Ipv4Addr::from(best.1)))
}

/// Starts dnsmasq for `cfg` unless the one in `dir` runs with the same config; returns its pid.
/// A dnsmasq running with another config is restarted.
pub async fn ensure_running(cfg: &DnsmasqConfig, dir: &Path) -> Result<u32, NetError> {
    let io = |what: &str| {
        let what = format!("{what} {}", dir.display());
        move |source| NetError::Io { what, source }
    };
    std::fs::create_dir_all(dir).map_err(io("making"))?;
    // dnsmasq re-reads the hosts file after dropping root.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(io("opening up"))?;
    let text = render(cfg, dir);
    let conf = dir.join(CONF);
    if let Some(pid) = running(dir) {
        if std::fs::read_to_string(&conf).ok().as_deref() == Some(text.as_str()) {
            return Ok(pid);
        }
        stop(dir).await?;
    }
    if !dir.join(HOSTS).exists() {
        crate::sys::write_atomic(&dir.join(HOSTS), "", 0o644)?;
    }
    crate::sys::write_atomic(&conf, &text, 0o644)?;
    start(dir).await
}

async fn start(dir: &Path) -> Result<u32, NetError> {
    let dnsmasq = crate::sys::require_tool("dnsmasq", "dnsmasq-base")?;
    let conf_arg = conf_arg(dir);
    let (user, group) = match run_as(dir) {
        Ok(ids) => ids,
        Err(why) => {
            tracing::warn!("dnsmasq for {} runs as root: {why}", dir.display());
            ("root".to_string(), "root".to_string())
        }
    };
    let (user_arg, group_arg) = (format!("--user={user}"), format!("--group={group}"));
    // The first process exits once the daemon serves (or with its error).
    crate::sys::run(&dnsmasq, &[&conf_arg, &user_arg, &group_arg], None).await?;
    // The pidfile is written before that exit; a short grace covers slow filesystems.
    for _ in 0..50 {
        if let Some(pid) = running(dir) {
            return Ok(pid);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(NetError::Command {
        command: format!("{} {conf_arg}", dnsmasq.display()),
        stderr: format!(
            "dnsmasq exited without a running server; see {}",
            dir.join(LOG).display()
        ),
    })
}

/// Who dnsmasq runs as: its own user where that user can reach `dir`, else why not.
fn run_as(dir: &Path) -> Result<(String, String), String> {
    let user = nix::unistd::User::from_name(USER)
        .ok()
        .flatten()
        .ok_or_else(|| format!("there is no user {USER:?}"))?;
    let group = nix::unistd::Group::from_gid(user.gid)
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| user.gid.to_string());
    let abs = std::path::absolute(dir).map_err(|e| e.to_string())?;
    for parent in abs.ancestors().skip(1) {
        let mode = std::fs::metadata(parent)
            .map_err(|e| format!("{}: {e}", parent.display()))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            return Err(format!(
                "user {USER} cannot reach {} ({} is mode {:o})",
                dir.display(),
                parent.display(),
                mode & 0o7777
            ));
        }
    }
    Ok((user.name, group))
}

fn conf_arg(dir: &Path) -> String {
    format!("--conf-file={}", dir.join(CONF).display())
}

/// The pid of the dnsmasq in `dir`, if it runs (the pidfile's process is alive, is
/// dnsmasq and was started with this directory's config).
pub fn running(dir: &Path) -> Option<u32> {
    let pid = crate::sys::read_pidfile(&dir.join(PIDFILE))?;
    if !crate::sys::alive(pid) {
        return None;
    }
    let args = crate::sys::cmdline(pid);
    let is_dnsmasq = args
        .first()
        .is_some_and(|a| Path::new(a).file_name().is_some_and(|n| n == "dnsmasq"));
    (is_dnsmasq && args.contains(&conf_arg(dir))).then_some(pid)
}

/// Rewrites the reservations file and makes dnsmasq re-read it (SIGHUP).
pub fn set_reservations(dir: &Path, hosts: &[Reservation]) -> Result<(), NetError> {
    let mut text = String::new();
    for h in hosts {
        if !corral_api::network::valid_mac(&h.mac) {
            return Err(NetError::Invalid {
                field: "mac",
                message: format!("{:?} is not a unicast MAC address", h.mac),
                hint: "six hex bytes like 52:54:00:12:34:56".into(),
            });
        }
        let label = !h.name.is_empty()
            && h.name.len() <= 63
            && h.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !label {
            return Err(NetError::Invalid {
                field: "name",
                message: format!("{:?} cannot be a DNS name", h.name),
                hint: "letters, digits and '-', at most 63".into(),
            });
        }
        text.push_str(&format!(
            "{},{},{}\n",
            h.mac.to_ascii_lowercase(),
            h.ip,
            h.name
        ));
    }
    std::fs::create_dir_all(dir).map_err(|source| NetError::Io {
        what: format!("making {}", dir.display()),
        source,
    })?;
    crate::sys::write_atomic(&dir.join(HOSTS), &text, 0o644)?;
    if let Some(pid) = running(dir) {
        crate::sys::signal(pid, nix::sys::signal::Signal::SIGHUP)?;
    }
    Ok(())
}

/// Stops the dnsmasq in `dir` (and waits for it to exit).
pub async fn stop(dir: &Path) -> Result<(), NetError> {
    if let Some(pid) = running(dir) {
        crate::sys::terminate(pid, Duration::from_secs(5)).await?;
    }
    match std::fs::remove_file(dir.join(PIDFILE)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetError::Io {
            what: format!("removing {}", dir.join(PIDFILE).display()),
            source,
        }),
    }
}

/// The leases file's current leases.
pub fn leases(dir: &Path) -> Vec<Lease> {
    std::fs::read_to_string(dir.join(LEASES))
        .map(|t| parse_leases(&t))
        .unwrap_or_default()
}

/// dnsmasq's lease lines: `expiry mac ip hostname clientid` (`*` for no hostname);
/// DHCPv6 lines (`duid …`, IPv6 addresses) are skipped.
pub fn parse_leases(text: &str) -> Vec<Lease> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [expiry, mac, ip, host, ..] = f.as_slice() else {
                return None;
            };
            Some(Lease {
                mac: mac.to_ascii_lowercase(),
                address: ip.parse().ok()?,
                hostname: (*host != "*").then(|| host.to_string()),
                expires: expiry.parse().ok()?,
            })
        })
        .collect()
}

/// The files a network's dnsmasq keeps in `dir` (for teardown).
pub fn files(dir: &Path) -> Vec<PathBuf> {
    [CONF, HOSTS, LEASES, PIDFILE, LOG]
        .iter()
        .map(|f| dir.join(f))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_skips_the_host_address() {
        let r = |a: [u8; 4], p| dhcp_range((Ipv4Addr::from(a), p));
        assert_eq!(
            r([10, 0, 5, 1], 24),
            Some(([10, 0, 5, 2].into(), [10, 0, 5, 254].into()))
        );
        assert_eq!(
            r([10, 0, 5, 254], 24),
            Some(([10, 0, 5, 1].into(), [10, 0, 5, 253].into()))
        );
        assert_eq!(
            r([10, 0, 5, 1], 30),
            Some(([10, 0, 5, 2].into(), [10, 0, 5, 2].into()))
        );
        assert_eq!(r([10, 0, 5, 1], 31), None);
    }

    #[test]
    fn leases_parse() {
        let text = "1700000000 52:54:00:12:34:56 10.0.5.10 web 01:52:54:00:12:34:56\n\
                    0 52:54:00:ab:cd:ef 10.0.5.11 * *\n\
                    duid 00:01:00:01:2c:3d\n";
        let l = parse_leases(text);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].hostname.as_deref(), Some("web"));
        assert_eq!(l[0].expires, 1_700_000_000);
        assert_eq!(l[1].hostname, None);
        assert_eq!(l[1].address, Ipv4Addr::new(10, 0, 5, 11));
    }
}
