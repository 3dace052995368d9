//! Several hosts on one machine (../shared/CLUSTER.md): each host a network namespace
//! with its own corrald serving HTTPS on its own address, every host joined by a veth
//! pair to one bridge in a "switch" namespace. A host's link is cut on the switch's side
//! (`ip link set … down`), as a pulled cable. Each host's CLI knows every other host as
//! the remote `h<N>`, with an admin token and its pinned certificate.

use std::path::PathBuf;
use std::process::Output;

use crate::{bin, Daemon, NetNs, Value};

pub struct Host {
    pub ns: NetNs,
    pub daemon: Daemon,
    /// The host's address on the switch (`10.88.0.<N+1>`).
    pub addr: String,
    /// `h<N>`: how the other hosts' CLIs name it.
    pub name: String,
    /// The veth end in the switch namespace: down is a cut link.
    switch_port: String,
}

pub struct Hosts {
    pub hosts: Vec<Host>,
    pub switch: NetNs,
    /// Each host's admin token and certificate fingerprint.
    creds: Vec<(String, String)>,
    _dhcp: Option<Dhcp>,
}

/// dnsmasq on the switch's bridge, for guests on the hosts' LAN.
struct Dhcp {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Dhcp {
    fn start(switch: &NetNs) -> Dhcp {
        switch.exec_ok(&["ip", "addr", "add", "10.88.0.254/24", "dev", "br0"]);
        let dir = tempfile::tempdir().unwrap();
        let leases = dir.path().join("leases");
        let child = switch
            .command("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--user=root",
            ])
            .args(["--interface=br0", "--bind-interfaces", "--no-resolv"])
            .args([
                "--dhcp-range=10.88.0.100,10.88.0.199,12h",
                "--dhcp-authoritative",
            ])
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Dhcp { child, _dir: dir }
    }
}

impl Drop for Dhcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Hosts {
    /// `n` hosts, each corrald on TCG with no default network.
    pub fn new(tag: &str, n: usize) -> Hosts {
        Self::with_env(tag, n, &[])
    }

    /// Like [`Hosts::new`]; host `i` gets the environment `env[i]` (when given).
    pub fn with_env(tag: &str, n: usize, env: &[&[(&str, &str)]]) -> Hosts {
        Self::build(tag, n, env, false)
    }

    /// Hosts whose uplink is a Linux bridge `br-lan` (holding the host's address), so
    /// that VMs with `--network bridge=br-lan` on any host share one LAN with the
    /// switch, which has 10.88.0.254 and hands out addresses by DHCP (dnsmasq) from
    /// 10.88.0.100: a guest keeps its address wherever it runs.
    pub fn with_lan(tag: &str, n: usize) -> Hosts {
        Self::build(tag, n, &[], true)
    }

    fn build(tag: &str, n: usize, env: &[&[(&str, &str)]], lan: bool) -> Hosts {
        let switch = NetNs::new(&format!("{tag}-sw"));
        switch.exec_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        switch.exec_ok(&["ip", "link", "set", "br0", "up"]);
        let mut hosts = Vec::new();
        for i in 0..n {
            let ns = NetNs::new(&format!("{tag}-h{i}"));
            let port = format!("sw{i}");
            switch.exec_ok(&[
                "ip", "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns.name,
            ]);
            switch.exec_ok(&["ip", "link", "set", &port, "master", "br0"]);
            switch.exec_ok(&["ip", "link", "set", &port, "up"]);
            let addr = format!("10.88.0.{}", i + 1);
            let uplink = if lan {
                ns.exec_ok(&["ip", "link", "add", "br-lan", "type", "bridge"]);
                ns.exec_ok(&["ip", "link", "set", "eth0", "master", "br-lan"]);
                ns.exec_ok(&["ip", "link", "set", "br-lan", "up"]);
                "br-lan"
            } else {
                "eth0"
            };
            ns.exec_ok(&["ip", "addr", "add", &format!("{addr}/24"), "dev", uplink]);
            ns.exec_ok(&["ip", "link", "set", "eth0", "up"]);
            let listen = format!("{addr}:8443");
            let args = [
                "--accel",
                "tcg",
                "--no-default-network",
                "--listen",
                &listen,
            ];
            let daemon = Daemon::start_in_with_env(&ns, &args, env.get(i).copied().unwrap_or(&[]));
            hosts.push(Host {
                ns,
                daemon,
                addr,
                name: format!("h{i}"),
                switch_port: port,
            });
        }
        let dhcp = lan.then(|| Dhcp::start(&switch));
        let mut all = Hosts {
            hosts,
            switch,
            creds: Vec::new(),
            _dhcp: dhcp,
        };
        all.creds = all.introduce();
        all
    }

    /// The `destination` of a migration request to host `i`, as the CLI sends it.
    pub fn target(&self, i: usize) -> Value {
        let (token, fingerprint) = &self.creds[i];
        serde_json::json!({
            "url": format!("https://{}:8443", self.hosts[i].addr),
            "fingerprint": fingerprint, "token": token, "name": self.hosts[i].name,
        })
    }

    /// Every host's CLI gets every other host as a remote; returns each host's
    /// credentials.
    fn introduce(&self) -> Vec<(String, String)> {
        let creds: Vec<(String, String)> = self
            .hosts
            .iter()
            .map(|h| {
                let token = h
                    .daemon
                    .json(&["token", "create", "peers", "--role", "admin"]);
                let info = h.daemon.json(&["host", "info"]);
                (
                    token["token"].as_str().unwrap().to_string(),
                    info["tls_fingerprint"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        for h in &self.hosts {
            for (other, (token, fp)) in self.hosts.iter().zip(&creds) {
                if other.name == h.name {
                    continue;
                }
                let url = format!("https://{}:8443", other.addr);
                let out = h.cli_in_ns(&[
                    "remote",
                    "add",
                    &other.name,
                    &url,
                    "--token",
                    token,
                    "--fingerprint",
                    fp,
                ]);
                assert!(
                    out.status.success(),
                    "remote add {} on {}: {}",
                    other.name,
                    h.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        creds
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    pub fn host_mut(&mut self, i: usize) -> &mut Host {
        &mut self.hosts[i]
    }

    /// Cuts host `i` off the switch.
    pub fn cut(&self, i: usize) {
        let port = &self.hosts[i].switch_port;
        self.switch.exec_ok(&["ip", "link", "set", port, "down"]);
    }

    pub fn heal(&self, i: usize) {
        let port = &self.hosts[i].switch_port;
        self.switch.exec_ok(&["ip", "link", "set", port, "up"]);
    }

    /// The QEMU processes, on any host, running the VM with this UUID.
    pub fn qemus_of(&self, uuid: &str) -> Vec<(usize, u32)> {
        let mut found = Vec::new();
        for (i, h) in self.hosts.iter().enumerate() {
            for pid in h.ns.pids() {
                let pid = pid as u32;
                if crate::pid_alive(pid) && cmdline(pid).iter().any(|a| a == uuid) {
                    found.push((i, pid));
                }
            }
        }
        found
    }
}

impl Host {
    /// `corral ARGS` run inside this host's namespace (needed to reach other hosts:
    /// `remote add` talks to the remote).
    pub fn cli_in_ns(&self, args: &[&str]) -> Output {
        self.ns
            .command(bin("corral").to_str().unwrap())
            .env("CORRAL_SOCKET", self.daemon.socket_path())
            .env("CORRAL_CONFIG_DIR", self.daemon.config_dir())
            .env("NO_COLOR", "1")
            .args(args)
            .output()
            .unwrap()
    }

    /// Files left in this host's default pool.
    pub fn pool_files(&self) -> Vec<PathBuf> {
        let dir = self.daemon.state_dir().join("pools/default");
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect();
        files.sort();
        files
    }

    /// The VMs this host lists.
    pub fn vm_names(&self) -> Vec<String> {
        self.daemon
            .json(&["list"])
            .as_array()
            .unwrap()
            .iter()
            .map(|v: &Value| v["spec"]["name"].as_str().unwrap().to_string())
            .collect()
    }
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}
