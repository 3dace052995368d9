//! The guest agent client against the real `qemu-ga` (Debian's qemu-guest-agent),
//! run on the host listening on a Unix socket, exactly as QEMU exposes a guest's agent.
//! Only read-only commands: on the host, a freeze or shutdown would hit the host.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corral_qemu::agent::{Agent, AgentError};

struct QemuGa {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl QemuGa {
    fn start() -> QemuGa {
        let binary = ["/usr/sbin/qemu-ga", "/usr/bin/qemu-ga"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("qemu-ga not installed: run scripts/setup.sh (Debian's qemu-guest-agent)");
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qga.sock");
        let child = Command::new(binary)
            .args(["-m", "unix-listen", "-p"])
            .arg(&socket)
            .arg("-t")
            .arg(dir.path())
            .arg("-f")
            .arg(dir.path().join("qga.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "qemu-ga did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        QemuGa {
            child,
            socket,
            _dir: dir,
        }
    }
}

impl Drop for QemuGa {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn talks_to_a_real_agent() {
    let ga = QemuGa::start();
    let mut agent = Agent::connect(&ga.socket, Duration::from_secs(5))
        .await
        .unwrap();
    agent.ping().await.unwrap();
    let version = agent.version().await.unwrap();
    assert!(version.starts_with(char::is_numeric), "{version}");
    let ifaces = agent.network_interfaces().await.unwrap();
    let lo = ifaces.iter().find(|i| i.name == "lo").unwrap();
    assert!(
        lo.addresses
            .iter()
            .any(|(ip, prefix)| ip.to_string() == "127.0.0.1" && *prefix == 8),
        "{ifaces:?}"
    );
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let guest_ns = agent.time_ns().await.unwrap();
    assert!(
        (guest_ns - now_ns).abs() < 5_000_000_000,
        "{guest_ns} vs {now_ns}"
    );
    // A command the agent does not know is its refusal, told as such.
    let err = agent
        .execute::<serde_json::Value>("guest-no-such-command", None)
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::Command { .. }), "{err:?}");
    drop(agent);

    // A second connection resynchronises cleanly after the first went away mid-stream.
    let mut again = Agent::connect(&ga.socket, Duration::from_secs(5))
        .await
        .unwrap();
    again.ping().await.unwrap();
}

#[tokio::test]
async fn no_agent_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.sock");
    let err = Agent::connect(&missing, Duration::from_millis(300))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, AgentError::Connect { .. }), "{err:?}");

    // A socket nobody answers on (QEMU's chardev while the guest has no agent).
    let silent = dir.path().join("silent.sock");
    let _listener = tokio::net::UnixListener::bind(&silent).unwrap();
    let err = Agent::connect(&silent, Duration::from_millis(300))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, AgentError::NoAnswer { .. }), "{err:?}");
    assert!(err.to_string().contains("qemu-guest-agent"), "{err}");
}
