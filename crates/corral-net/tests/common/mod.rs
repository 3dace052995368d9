//! Shared by the real tests: each test runs in a private network namespace, so it can
//! make bridges, taps and nftables tables without touching the host's.
//!
//! unshare(2) with CLONE_NEWNET moves only the calling thread (and what it spawns later)
//! into the new namespace; tests use tokio's current-thread runtime so every netlink
//! socket and child process is made on that thread. nextest runs each test in its own
//! process; under `cargo test` each test has its own thread, which works the same.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};

/// Moves this thread into a fresh network namespace with `lo` up.
pub fn private_netns() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("unshare(CLONE_NEWNET): these tests need root");
    sh("ip link set lo up");
}

/// Runs a shell command in this thread's namespace; panics with its stderr on failure.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A second network namespace, held open by a sleeping process (killed on drop), for
/// the far end of a veth: a "guest" or "outside host".
pub struct Peer {
    child: Child,
}

impl Peer {
    pub fn new() -> Peer {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "60"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let peer = Peer { child };
        // unshare(1) switches namespaces before exec'ing sleep: wait for that.
        let own = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        for _ in 0..200 {
            let exe = std::fs::read_link(format!("/proc/{}/exe", peer.pid()));
            let ns = std::fs::read_link(format!("/proc/{}/ns/net", peer.pid()));
            if exe.is_ok_and(|e| e.ends_with("sleep")) && ns.is_ok_and(|n| n != own) {
                peer.run("ip link set lo up");
                return peer;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the peer namespace did not come up");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs a shell command inside the peer's namespace.
    pub fn run(&self, cmd: &str) -> String {
        sh(&format!(
            "nsenter --net=/proc/{}/ns/net sh -c '{cmd}'",
            self.pid()
        ))
    }

    /// A veth pair `here`/`there` with `there` moved into the peer and up.
    pub fn veth(&self, here: &str, there: &str) {
        sh(&format!(
            "ip link add {here} type veth peer name {there} && ip link set {there} netns {} && ip link set {here} up",
            self.pid()
        ));
        self.run(&format!("ip link set {there} up"));
    }
}

impl Drop for Peer {
    /// Kills every process in the peer's namespace (servers a test started there
    /// through nsenter, too), then the holder.
    fn drop(&mut self) {
        let ns = std::fs::read_link(format!("/proc/{}/ns/net", self.pid()));
        if let (Ok(ns), Ok(procs)) = (ns, std::fs::read_dir("/proc")) {
            for entry in procs.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net"));
                if pid as u32 != self.pid() && theirs.is_ok_and(|n| n == ns) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
