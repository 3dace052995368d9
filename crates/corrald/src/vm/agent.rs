//! The guest agent (qemu-guest-agent) of each running VM, as the daemon keeps it: whether
//! one is connected (the guest has its port open, from QMP's `VSERPORT_CHANGE`, or
//! `query-chardev` after a re-attach), the addresses it last reported, and one session at
//! a time on its channel (QEMU's chardev takes one client; the agent one command).
//!
//! Nothing a client reads waits on the agent: `list` and `show` read what the refresher
//! task stored; requests that use the agent (stop, snapshots, clock sync) give it short
//! timeouts and go on without it.

use std::net::IpAddr;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_api::{AddressSource, VmAddress};
use corral_qemu::agent::{Agent, AgentError, GuestInterface, Traffic};
use tokio::sync::{watch, OwnedMutexGuard};

use super::{Manager, Running};

/// An ordinary agent command (interfaces, ping, clock).
const SESSION_TIMEOUT: Duration = Duration::from_secs(5);
/// Freezing syncs every guest file system first, which may take a while.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(30);
const THAW_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a connected agent is asked for the guest's addresses.
const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// Right after the agent connects the guest is often still waiting for a DHCP lease:
/// until an address shows (for at most [`QUICK_REFRESH_FOR`]), ask more often.
const QUICK_REFRESH: Duration = Duration::from_secs(2);
const QUICK_REFRESH_FOR: Duration = Duration::from_secs(60);
/// `guest-shutdown` answers only when it fails (the guest's shutdown command exited
/// non-zero); silence this long means it is under way.
const SHUTDOWN_REPLY_WAIT: Duration = Duration::from_secs(2);
/// How long to wait for a freshly started guest's agent before a clock sync gives up.
const CLOCK_SYNC_WAIT: Duration = Duration::from_secs(30);

/// One VM's guest agent.
pub struct GuestAgent {
    socket: PathBuf,
    connected: watch::Sender<bool>,
    addresses: Mutex<Vec<VmAddress>>,
    /// Held for each session, and from a freeze to its thaw.
    session: Arc<tokio::sync::Mutex<()>>,
}

/// A connection to the agent, holding the channel for its lifetime.
pub struct Session {
    agent: Agent,
    _turn: OwnedMutexGuard<()>,
}

impl Deref for Session {
    type Target = Agent;
    fn deref(&self) -> &Agent {
        &self.agent
    }
}

impl DerefMut for Session {
    fn deref_mut(&mut self) -> &mut Agent {
        &mut self.agent
    }
}

impl GuestAgent {
    pub fn new(socket: PathBuf) -> GuestAgent {
        GuestAgent {
            socket,
            connected: watch::channel(false).0,
            addresses: Mutex::new(Vec::new()),
            session: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The guest has the agent's port open (a qemu-ga is running in it).
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Records the port's state; returns whether it changed. A closed port forgets the
    /// addresses: they were the last guest's (it may be rebooting into another).
    pub fn set_connected(&self, open: bool) -> bool {
        if !open {
            self.set_addresses(Vec::new());
        }
        self.connected
            .send_if_modified(|c| std::mem::replace(c, open) != open)
    }

    /// The addresses the agent last reported.
    pub fn addresses(&self) -> Vec<VmAddress> {
        self.addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_addresses(&self, addresses: Vec<VmAddress>) {
        *self.addresses.lock().unwrap_or_else(|p| p.into_inner()) = addresses;
    }

    /// Waits until the agent is connected, for at most `within`.
    pub async fn wait_connected(&self, within: Duration) -> bool {
        let mut rx = self.connected.subscribe();
        let connected = tokio::time::timeout(within, rx.wait_for(|c| *c)).await;
        matches!(connected, Ok(Ok(_)))
    }

    /// Opens a session: waits for the channel, connects and resynchronises.
    pub async fn session(&self, timeout: Duration) -> Result<Session, AgentError> {
        let turn = self.session.clone().lock_owned().await;
        let agent = Agent::connect(&self.socket, timeout).await?;
        Ok(Session { agent, _turn: turn })
    }

    /// Bytes received and sent by the guest's interfaces with these (lower-case) MACs,
    /// as the guest counts them; `None` without a connected agent or its counters.
    pub async fn traffic(&self, macs: &[String], timeout: Duration) -> Option<Traffic> {
        if !self.is_connected() {
            return None;
        }
        let mut session = self.session(timeout).await.ok()?;
        let interfaces = session.network_interfaces().await.ok()?;
        traffic_of(&interfaces, macs)
    }

    /// Asks the agent for the guest's interfaces and keeps their addresses.
    pub async fn refresh_addresses(&self) -> Result<(), AgentError> {
        let mut session = self.session(SESSION_TIMEOUT).await?;
        let interfaces = session.network_interfaces().await?;
        drop(session);
        // The port may have closed while we asked; a closed port has no addresses.
        if self.is_connected() {
            self.set_addresses(agent_addresses(&interfaces));
        }
        Ok(())
    }

    /// Asks the guest to power off (`guest-shutdown`). An error means the agent did not
    /// take the request (unreachable, or the guest's shutdown command failed).
    pub async fn shutdown(&self) -> Result<(), AgentError> {
        let mut session = self.session(SESSION_TIMEOUT).await?;
        session.set_timeout(SHUTDOWN_REPLY_WAIT);
        session.shutdown().await
    }

    /// Freezes the guest's file systems. The channel stays held until [`Frozen::thaw`]
    /// (or the drop of the [`Frozen`]), so nothing else talks to a frozen guest. A freeze
    /// that fails after it was sent is thawed before the error is returned: it may have
    /// frozen some file systems before failing or timing out.
    pub async fn freeze(&self) -> Result<Frozen, AgentError> {
        let turn = self.session.clone().lock_owned().await;
        let mut agent = Agent::connect(&self.socket, FREEZE_TIMEOUT).await?;
        let mut frozen = Frozen {
            socket: self.socket.clone(),
            turn: Some(turn),
            count: 0,
        };
        match agent.fsfreeze().await {
            Ok(count) => {
                frozen.count = count;
                Ok(frozen)
            }
            Err(e) => {
                drop(agent);
                if let Err(thaw) = frozen.thaw().await {
                    tracing::warn!("thaw after a failed freeze: {thaw}");
                }
                Err(e)
            }
        }
    }
}

/// Frozen guest file systems; thaw them with [`Frozen::thaw`]. Dropped without that (the
/// request was cut short), a task thaws them.
pub struct Frozen {
    socket: PathBuf,
    turn: Option<OwnedMutexGuard<()>>,
    /// How many file systems the agent froze.
    pub count: u32,
}

impl Frozen {
    /// Thaws the file systems on a new connection (the freeze's may hold a late reply),
    /// with its own timeout, and lets go of the channel.
    pub async fn thaw(mut self) -> Result<u32, AgentError> {
        let turn = self.turn.take();
        let result = thaw(&self.socket).await;
        drop(turn);
        result
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let Some(turn) = self.turn.take() else { return };
        let socket = self.socket.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = thaw(&socket).await {
                    tracing::warn!("thawing guest file systems: {e}");
                }
                drop(turn);
            });
        }
    }
}

async fn thaw(socket: &std::path::Path) -> Result<u32, AgentError> {
    let mut agent = Agent::connect(socket, THAW_TIMEOUT).await?;
    agent.fsthaw().await
}

/// The summed counters of the interfaces with these MACs; `None` if none reported any.
pub fn traffic_of(interfaces: &[GuestInterface], macs: &[String]) -> Option<Traffic> {
    interfaces
        .iter()
        .filter(|i| i.mac.as_ref().is_some_and(|m| macs.contains(m)))
        .filter_map(|i| i.traffic)
        .reduce(|a, b| Traffic {
            rx_bytes: a.rx_bytes + b.rx_bytes,
            tx_bytes: a.tx_bytes + b.tx_bytes,
        })
}

/// The addresses worth showing: not loopback, not link-local (every NIC has those).
pub fn agent_addresses(interfaces: &[GuestInterface]) -> Vec<VmAddress> {
    let mut out = Vec::new();
    for iface in interfaces {
        for (ip, prefix) in &iface.addresses {
            if !routable(ip) {
                continue;
            }
            out.push(VmAddress {
                address: ip.to_string(),
                prefix: *prefix,
                mac: iface.mac.clone().filter(|m| m != "00:00:00:00:00:00"),
                source: AddressSource::Agent,
            });
        }
    }
    // IPv4 first: the address people look for in `corral list`.
    out.sort_by_key(|a| a.address.contains(':'));
    out
}

fn routable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
        IpAddr::V6(v6) => {
            !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

impl Manager {
    /// Follows a running VM's agent: reports it connecting and going away, and while it
    /// is connected asks it for the guest's addresses (at once, then every
    /// [`REFRESH_EVERY`]). Ends when QEMU exits.
    pub(crate) fn spawn_agent_watch(&self, name: &str, running: Arc<Running>) {
        let name = name.to_string();
        let mut rx = running.agent.connected.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = rx.wait_for(|c| *c) => if r.is_err() { return },
                    _ = running.wait_exited() => return,
                }
                let since = Instant::now();
                loop {
                    if let Err(e) = running.agent.refresh_addresses().await {
                        tracing::debug!(vm = name, "guest agent interfaces: {e}");
                    }
                    let quick =
                        running.agent.addresses().is_empty() && since.elapsed() < QUICK_REFRESH_FOR;
                    let wait = if quick { QUICK_REFRESH } else { REFRESH_EVERY };
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        r = rx.wait_for(|c| !*c) => if r.is_err() { return } else { break },
                        _ = running.wait_exited() => return,
                    }
                }
            }
        });
    }

    /// The agent's port opened or closed (QMP `VSERPORT_CHANGE`, or read on re-attach).
    pub(crate) fn agent_port_changed(&self, name: &str, running: &Running, open: bool) {
        if !running.agent.set_connected(open) {
            return;
        }
        let message = if open {
            "guest agent connected"
        } else {
            "guest agent disconnected"
        };
        self.events.emit(Some(name), "agent", message);
    }

    /// Sets the guest's clock from the host's through its agent, in the background
    /// (after a resume or a restore from saved memory, the guest's clock is behind).
    /// Best effort: a guest without an agent keeps its clock, and nothing fails.
    pub(crate) fn sync_guest_clock(&self, name: &str, running: Arc<Running>, after: &str) {
        let name = name.to_string();
        let after = after.to_string();
        let events = self.events.clone();
        tokio::spawn(async move {
            if !running.agent.wait_connected(CLOCK_SYNC_WAIT).await {
                return;
            }
            let synced = async {
                let mut session = running.agent.session(SESSION_TIMEOUT).await?;
                session.sync_time().await
            };
            match synced.await {
                Ok(()) => events.emit(
                    Some(&name),
                    "agent",
                    format!("guest clock set from the host after {after}"),
                ),
                Err(e) => {
                    tracing::warn!(vm = name, "cannot set the guest clock after {after}: {e}")
                }
            }
        });
    }

    /// After a re-attach: a daemon that died between a freeze and its thaw left the
    /// guest's file systems frozen; thaw them.
    pub(crate) fn thaw_leftover_freeze(&self, name: &str, running: Arc<Running>) {
        let name = name.to_string();
        let events = self.events.clone();
        tokio::spawn(async move {
            if !running.agent.is_connected() {
                return;
            }
            let frozen = async {
                let mut session = running.agent.session(SESSION_TIMEOUT).await?;
                session.fsfrozen().await
            };
            match frozen.await {
                Ok(true) => {
                    let message = match thaw(&running.agent.socket).await {
                        Ok(n) => format!(
                            "thawed {n} guest file system(s) a snapshot cut short by a \
                             daemon restart had left frozen"
                        ),
                        Err(e) => format!(
                            "the guest's file systems are frozen (a snapshot was cut short by \
                             a daemon restart) and could not be thawed: {e}"
                        ),
                    };
                    events.emit(Some(&name), "agent", message);
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(vm = name, "guest agent freeze status: {e}"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, mac: Option<&str>, addrs: &[(&str, u8)]) -> GuestInterface {
        GuestInterface {
            name: name.into(),
            mac: mac.map(Into::into),
            addresses: addrs
                .iter()
                .map(|(a, p)| (a.parse().unwrap(), *p))
                .collect(),
            traffic: None,
        }
    }

    #[test]
    fn traffic_sums_the_asked_macs_only() {
        let counted = |rx, tx, mac: &str| GuestInterface {
            traffic: Some(Traffic {
                rx_bytes: rx,
                tx_bytes: tx,
            }),
            ..iface("eth", Some(mac), &[])
        };
        let ifaces = [
            counted(10, 1, "52:54:00:00:00:01"),
            counted(20, 2, "52:54:00:00:00:02"),
            counted(400, 4, "52:54:00:00:00:03"),
            iface("lo", None, &[]),
        ];
        let macs = [
            "52:54:00:00:00:01".to_string(),
            "52:54:00:00:00:02".to_string(),
        ];
        assert_eq!(
            traffic_of(&ifaces, &macs),
            Some(Traffic {
                rx_bytes: 30,
                tx_bytes: 3
            })
        );
        // An agent without counters, or no interface of ours: nothing to report.
        assert_eq!(
            traffic_of(&[iface("eth0", Some("52:54:00:00:00:01"), &[])], &macs),
            None
        );
        assert_eq!(
            traffic_of(&ifaces, &["52:54:00:00:00:09".to_string()]),
            None
        );
    }

    #[test]
    fn addresses_skip_loopback_and_link_local() {
        let found = agent_addresses(&[
            iface(
                "lo",
                Some("00:00:00:00:00:00"),
                &[("127.0.0.1", 8), ("::1", 128)],
            ),
            iface(
                "eth0",
                Some("52:54:00:12:34:56"),
                &[
                    ("fe80::5054:ff:fe12:3456", 64),
                    ("fd00::15", 64),
                    ("10.0.2.15", 24),
                    ("169.254.3.4", 16),
                ],
            ),
            iface("tun0", None, &[("192.168.7.2", 32)]),
        ]);
        let seen: Vec<(&str, u8, Option<&str>)> = found
            .iter()
            .map(|a| (a.address.as_str(), a.prefix, a.mac.as_deref()))
            .collect();
        assert_eq!(
            seen,
            [
                ("10.0.2.15", 24, Some("52:54:00:12:34:56")),
                ("192.168.7.2", 32, None),
                ("fd00::15", 64, Some("52:54:00:12:34:56")),
            ]
        );
        assert!(found.iter().all(|a| a.source == AddressSource::Agent));
    }

    #[test]
    fn connection_changes_are_reported_once_and_forget_addresses() {
        let agent = GuestAgent::new("/nonexistent/qga.sock".into());
        assert!(!agent.is_connected());
        assert!(agent.set_connected(true));
        assert!(!agent.set_connected(true), "no change, no report");
        agent.set_addresses(agent_addresses(&[iface(
            "eth0",
            None,
            &[("10.0.2.15", 24)],
        )]));
        assert_eq!(agent.addresses().len(), 1);
        assert!(agent.set_connected(false));
        assert!(agent.addresses().is_empty());
    }
}
