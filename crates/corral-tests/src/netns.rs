//! Network namespaces made by a test: the only places (with loopback) test traffic may
//! go. A daemon started in one makes its bridges, dnsmasq and nftables tables there;
//! dropping the namespace kills what still runs in it and removes it.

use std::process::Command;
use std::time::Duration;

pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// A fresh namespace with loopback up.
    pub fn new(tag: &str) -> NetNs {
        let name = format!("corral-{tag}-{}", std::process::id());
        let ns = NetNs { name };
        ns.ip(&["netns", "add", &ns.name]);
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `argv` inside the namespace; its output, or a panic with stderr.
    pub fn exec_ok(&self, argv: &[&str]) -> String {
        let out = self.command(argv[0]).args(&argv[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{argv:?} in {}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `argv` inside the namespace and says whether it succeeded.
    pub fn exec(&self, argv: &[&str]) -> bool {
        self.command(argv[0])
            .args(&argv[1..])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Processes in the namespace.
    pub fn pids(&self) -> Vec<i32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The daemon's namespace ("the host") with an uplink to an "outside" namespace that
/// serves HTTP on port 8080 of 198.51.100.2 and .3 and logs who asked.
pub struct World {
    pub host: NetNs,
    pub outside: NetNs,
    /// The outside HTTP server's log (client addresses).
    pub server_log: std::path::PathBuf,
    _server: ChildGuard,
    _dir: tempfile::TempDir,
}

struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl World {
    pub fn new(tag: &str) -> World {
        let host = NetNs::new(tag);
        let outside = NetNs::new(&format!("{tag}-out"));
        let (up, peer) = (format!("up{}", std::process::id() % 100_000), "peer0");
        host.exec_ok(&[
            "ip", "link", "add", &up, "type", "veth", "peer", "name", peer,
        ]);
        host.exec_ok(&["ip", "link", "set", peer, "netns", &outside.name]);
        host.exec_ok(&["ip", "addr", "add", "198.51.100.1/24", "dev", &up]);
        host.exec_ok(&["ip", "link", "set", &up, "up"]);
        host.exec_ok(&["ip", "route", "add", "default", "via", "198.51.100.2"]);
        outside.exec_ok(&["ip", "addr", "add", "198.51.100.2/24", "dev", peer]);
        outside.exec_ok(&["ip", "addr", "add", "198.51.100.3/24", "dev", peer]);
        outside.exec_ok(&["ip", "link", "set", peer, "up"]);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::write(dir.join("index.html"), "hello from outside\n").unwrap();
        let server_log = dir.join("server.log");
        let server = outside
            .command("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "0.0.0.0",
                "8080",
                "--directory",
            ])
            .arg(&dir)
            .stdout(std::fs::File::create(&server_log).unwrap())
            .stderr(
                std::fs::File::options()
                    .append(true)
                    .open(&server_log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        let guard = ChildGuard(server);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !outside.exec(&["python3", "-c", PROBE_8080]) {
            assert!(
                std::time::Instant::now() < deadline,
                "the outside HTTP server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        World {
            host,
            outside,
            server_log,
            _server: guard,
            _dir: tmp,
        }
    }
}

const PROBE_8080: &str =
    "import socket; socket.create_connection(('198.51.100.2', 8080), timeout=1).close()";
