//! The user's journey with a real guest OS, once per CI run (a Debian boot under TCG
//! takes a minute or more): a Debian 12 cloud image built from Debian's packages, a VM
//! made from it on the default NAT network with an SSH key, its address in `corral
//! list`, SSH into it directly and through a port forward, the guest agent reporting
//! the same address, and `corral stop` shutting it down through the agent.
//!
//! Runs in network namespaces made by the test; nothing leaves them.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use corral_tests::{workspace, Daemon, NetNs, World};
use serde_json::Value;

/// The image: `CORRAL_DEBIAN_IMAGE` (scripts/test.sh builds it once), else built here
/// (cached under build/images by the script).
fn debian_image(dir: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("CORRAL_DEBIAN_IMAGE") {
        return PathBuf::from(p);
    }
    let out = dir.join("debian-12.qcow2");
    let status = Command::new("bash")
        .arg(workspace().join("scripts/build-debian-image.sh"))
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "building the Debian image failed");
    out
}

fn ssh_key(dir: &Path) -> PathBuf {
    let key = dir.join("id_ed25519");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "corral-e2e", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success());
    key
}

/// `ssh debian@HOST -p PORT COMMAND` from inside `ns`; its stdout if it succeeded.
fn ssh(ns: &NetNs, key: &Path, host: &str, port: u16, command: &str) -> Option<String> {
    let out = ns
        .command("ssh")
        .args(["-i"])
        .arg(key)
        .args([
            "-p",
            &port.to_string(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
            &format!("debian@{host}"),
            command,
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The VM's entry in `corral list -o json`.
fn listed(d: &Daemon, name: &str) -> Value {
    d.json(&["list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["spec"]["name"] == name)
        .cloned()
        .unwrap()
}

/// The first IPv4 address `corral list` shows from `source` (dhcp or agent).
fn address_from(vm: &Value, source: &str) -> Option<String> {
    vm["addresses"]
        .as_array()?
        .iter()
        .find(|a| a["source"] == source && a["address"].as_str().is_some_and(|s| s.contains('.')))
        .and_then(|a| a["address"].as_str().map(str::to_string))
}

#[test]
fn debian_guest_over_nat_with_ssh_port_forward_and_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let image = debian_image(tmp.path());
    let key = ssh_key(tmp.path());
    let w = World::new("deb");
    let d = Daemon::start_in(&w.host, &["--accel", "tcg"]);

    let pubkey = format!("{}.pub", key.display());
    d.ok(&[
        "create",
        "web",
        "--image",
        image.to_str().unwrap(),
        "--memory",
        "1G",
        "--vcpus",
        "2",
        "--network",
        "nat",
        "--ssh-key",
        &pubkey,
        "--start",
    ]);

    // Its address shows in `corral list` (from the DHCP lease).
    let ip = wait_for(
        Duration::from_secs(600),
        "an address in corral list",
        || address_from(&listed(&d, "web"), "dhcp"),
    );

    // SSH in with the injected key: cloud-init put it into the default user.
    let out = wait_for(Duration::from_secs(600), "sshd with the key", || {
        ssh(&w.host, &key, &ip, 22, "echo corral-$((6*7)); hostname")
    });
    assert!(out.contains("corral-42"), "{out}");
    assert!(out.contains("web"), "cloud-init set the hostname: {out}");

    // Through a port forward, from outside the host.
    d.ok(&["network", "forward", "add", "default", "2222", "web:22"]);
    let out = ssh(&w.outside, &key, "198.51.100.1", 2222, "echo via-forward").unwrap_or_default();
    assert!(out.contains("via-forward"), "{out}");

    // The guest agent reports the same address.
    let agent_ip = wait_for(
        Duration::from_secs(300),
        "the guest agent's addresses",
        || address_from(&listed(&d, "web"), "agent"),
    );
    assert_eq!(agent_ip, ip);
    assert_eq!(listed(&d, "web")["guest_agent"], true);

    // A graceful stop goes through the agent.
    d.ok(&["stop", "web", "--timeout", "300"]);
    assert_eq!(d.state("web"), "stopped");
    let events = d.json(&["show", "web"])["events"].to_string();
    assert!(events.contains("guest agent"), "{events}");
    d.ok(&["delete", "web"]);
}
