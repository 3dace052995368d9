//! A client for the QEMU guest agent (`qemu-ga`), which runs inside the guest and talks
//! over a virtio-serial port; QEMU exposes the host end as a Unix socket chardev.
//!
//! The protocol is QMP-like JSON, one command at a time, with two differences that
//! matter: there is no greeting, and a connection may start in the middle of an older
//! client's exchange (the port outlives host connections, and the agent may restart).
//! So every connection first resynchronises: a `0xFF` byte resets the agent's parser,
//! then `guest-sync-delimited` with a fresh id is answered with a `0xFF` sentinel before
//! the reply, and everything before the sentinel is stale and dropped.
//!
//! A guest without an agent never answers: every call has a timeout, and
//! [`AgentError::NoAnswer`] says so plainly.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// How long a guest agent may take to answer an ordinary command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// QEMU's chardev for the agent's channel (the host end, a Unix socket).
pub const AGENT_CHARDEV: &str = "qga0";
/// The id of the guest-side virtio port: `VSERPORT_CHANGE` events name it.
pub const AGENT_PORT: &str = "qga0-dev";
/// The port's name as the guest sees it; qemu-guest-agent looks for this one.
pub const AGENT_PORT_NAME: &str = "org.qemu.guest_agent.0";

/// Whether the guest has the agent's port open now (a running qemu-ga), read from
/// `query-chardev` (`frontend-open` of the agent's chardev): what a daemon that missed
/// the `VSERPORT_CHANGE` events (it was restarted) goes by.
pub async fn channel_open(qmp: &crate::qmp::Qmp) -> Result<bool, crate::qmp::QmpError> {
    #[derive(Deserialize)]
    struct Chardev {
        label: String,
        #[serde(rename = "frontend-open", default)]
        frontend_open: bool,
    }
    let chardevs: Vec<Chardev> = qmp.execute("query-chardev", None).await?;
    Ok(chardevs
        .iter()
        .any(|c| c.label == AGENT_CHARDEV && c.frontend_open))
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent's socket could not be reached (no such VM channel, or QEMU gone).
    #[error("cannot connect to the guest agent socket {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Nothing answered in time: no agent runs in the guest, or it is busy or stuck.
    #[error("the guest agent did not answer `{command}` within {timeout:?} (is qemu-guest-agent running in the guest?)")]
    NoAnswer { command: String, timeout: Duration },
    /// The agent refused the command.
    #[error("the guest agent refused `{command}`: {desc}")]
    Command { command: String, desc: String },
    /// The connection broke or the agent sent something unreadable.
    #[error("guest agent connection: {0}")]
    Protocol(String),
}

/// One guest network interface, as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestInterface {
    pub name: String,
    /// Lower-case `aa:bb:…`; absent for interfaces without one (`lo` on some guests).
    pub mac: Option<String>,
    /// Addresses with their prefix length.
    pub addresses: Vec<(IpAddr, u8)>,
    /// Bytes received and sent, as the guest counts them (since its boot); absent
    /// from agents older than 2.11.
    pub traffic: Option<Traffic>,
}

/// An interface's byte counters, from the guest's side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Traffic {
    #[serde(rename = "rx-bytes")]
    pub rx_bytes: u64,
    #[serde(rename = "tx-bytes")]
    pub tx_bytes: u64,
}

/// A connection to one guest's agent.
pub struct Agent {
    stream: BufReader<UnixStream>,
    timeout: Duration,
    next_id: u64,
}

impl Agent {
    /// Connects to the agent socket at `path` and resynchronises with the agent.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Agent, AgentError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| AgentError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 & 0x7fff_ffff)
            .unwrap_or(1);
        let mut agent = Agent {
            stream: BufReader::new(stream),
            timeout,
            next_id: seed,
        };
        agent.sync().await?;
        Ok(agent)
    }

    /// Changes how long later commands may take to answer.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// `guest-ping`: the agent is there and answering.
    pub async fn ping(&mut self) -> Result<(), AgentError> {
        self.execute::<Value>("guest-ping", None).await.map(drop)
    }

    /// The agent's version (`guest-info`).
    pub async fn version(&mut self) -> Result<String, AgentError> {
        #[derive(Deserialize)]
        struct Info {
            version: String,
        }
        let info: Info = self.execute("guest-info", None).await?;
        Ok(info.version)
    }

    /// The guest's network interfaces and their addresses.
    pub async fn network_interfaces(&mut self) -> Result<Vec<GuestInterface>, AgentError> {
        #[derive(Deserialize)]
        struct Iface {
            name: String,
            #[serde(rename = "hardware-address")]
            mac: Option<String>,
            #[serde(rename = "ip-addresses", default)]
            addresses: Vec<Addr>,
            statistics: Option<Traffic>,
        }
        #[derive(Deserialize)]
        struct Addr {
            #[serde(rename = "ip-address")]
            address: String,
            prefix: u8,
        }
        let raw: Vec<Iface> = self.execute("guest-network-get-interfaces", None).await?;
        Ok(raw
            .into_iter()
            .map(|i| GuestInterface {
                name: i.name,
                mac: i.mac.map(|m| m.to_ascii_lowercase()),
                addresses: i
                    .addresses
                    .iter()
                    // Link-local IPv6 addresses carry a zone ("fe80::1%eth0").
                    .filter_map(|a| {
                        let ip = a.address.split('%').next()?.parse().ok()?;
                        Some((ip, a.prefix))
                    })
                    .collect(),
                traffic: i.statistics,
            })
            .collect())
    }

    /// The guest's clock, in nanoseconds since the epoch (`guest-get-time`).
    pub async fn time_ns(&mut self) -> Result<i64, AgentError> {
        self.execute("guest-get-time", None).await
    }

    /// Sets the guest's clock from the host's (`guest-set-time` without a time reads
    /// the hardware clock QEMU keeps right), e.g. after it was paused for a while.
    pub async fn sync_time(&mut self) -> Result<(), AgentError> {
        self.execute::<Value>("guest-set-time", None)
            .await
            .map(drop)
    }

    /// Freezes the guest's file systems (`guest-fsfreeze-freeze`); returns how many.
    pub async fn fsfreeze(&mut self) -> Result<u32, AgentError> {
        self.execute("guest-fsfreeze-freeze", None).await
    }

    /// Whether the guest's file systems are frozen now (`guest-fsfreeze-status`).
    pub async fn fsfrozen(&mut self) -> Result<bool, AgentError> {
        let status: String = self.execute("guest-fsfreeze-status", None).await?;
        Ok(status == "frozen")
    }

    /// Thaws them again (`guest-fsfreeze-thaw`); returns how many.
    pub async fn fsthaw(&mut self) -> Result<u32, AgentError> {
        self.execute("guest-fsfreeze-thaw", None).await
    }

    /// Asks the guest to power off (`guest-shutdown`). A successful shutdown sends no
    /// reply, so silence and a closed connection count as success.
    pub async fn shutdown(&mut self) -> Result<(), AgentError> {
        match self
            .execute::<Value>("guest-shutdown", Some(json!({"mode": "powerdown"})))
            .await
        {
            Ok(_) | Err(AgentError::NoAnswer { .. }) => Ok(()),
            Err(AgentError::Protocol(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Runs one command and decodes its `return`.
    pub async fn execute<T: DeserializeOwned>(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<T, AgentError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        self.send(&msg).await?;
        let reply = self.read_reply(command).await?;
        serde_json::from_value(reply)
            .map_err(|e| AgentError::Protocol(format!("`{command}` answered oddly: {e}")))
    }

    /// Resets the agent's parser and drops whatever an earlier client left unread.
    async fn sync(&mut self) -> Result<(), AgentError> {
        self.next_id += 1;
        let id = self.next_id;
        self.stream
            .get_mut()
            .write_all(&[0xFF])
            .await
            .map_err(io_error)?;
        self.send(&json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}))
            .await?;
        let command = "guest-sync-delimited";
        let deadline = tokio::time::Instant::now() + self.timeout;
        let wait = async {
            // Everything up to the sentinel is stale.
            loop {
                let byte = self.stream.read_u8().await.map_err(io_error)?;
                if byte == 0xFF {
                    break;
                }
            }
            loop {
                let reply = self.read_line().await?;
                if reply.get("return").and_then(Value::as_u64) == Some(id) {
                    return Ok(());
                }
            }
        };
        tokio::time::timeout_at(deadline, wait)
            .await
            .map_err(|_| self.no_answer(command))?
    }

    async fn send(&mut self, msg: &Value) -> Result<(), AgentError> {
        let line = format!("{msg}\n");
        self.stream
            .get_mut()
            .write_all(line.as_bytes())
            .await
            .map_err(io_error)
    }

    async fn read_reply(&mut self, command: &str) -> Result<Value, AgentError> {
        let reply = tokio::time::timeout(self.timeout, self.read_line())
            .await
            .map_err(|_| self.no_answer(command))??;
        if let Some(e) = reply.get("error") {
            return Err(AgentError::Command {
                command: command.to_string(),
                desc: e["desc"].as_str().unwrap_or("no description").to_string(),
            });
        }
        reply
            .get("return")
            .cloned()
            .ok_or_else(|| AgentError::Protocol(format!("`{command}`: reply without `return`")))
    }

    async fn read_line(&mut self) -> Result<Value, AgentError> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.stream.read_line(&mut line).await.map_err(io_error)?;
            if n == 0 {
                return Err(AgentError::Protocol(
                    "the agent closed the connection".into(),
                ));
            }
            let text = line.trim_matches(|c: char| c.is_whitespace() || c == '\u{FFFD}');
            if text.is_empty() {
                continue;
            }
            return serde_json::from_str(text)
                .map_err(|e| AgentError::Protocol(format!("unreadable reply {text:?}: {e}")));
        }
    }

    fn no_answer(&self, command: &str) -> AgentError {
        AgentError::NoAnswer {
            command: command.to_string(),
            timeout: self.timeout,
        }
    }
}

fn io_error(e: std::io::Error) -> AgentError {
    AgentError::Protocol(e.to_string())
}
