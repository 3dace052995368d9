//! The user's journey with a real guest OS, once per CI run (a Debian boot under TCG
//! takes a minute or more): a Debian 12 cloud image built from Debian's packages, a VM
//! made from it on the default NAT network with an SSH key, its address in `corral
//! list`, SSH into it directly and through a port forward, the guest agent reporting
//! the same address, and `corral stop` shutting it down through the agent.
//!
//! Runs in network namespaces made by the test; nothing leaves them.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use corral_tests::debian::{self, wait_for};
use corral_tests::{Daemon, NetNs, World};
use serde_json::Value;

/// `ssh debian@HOST -p PORT COMMAND` from inside `ns`; its stdout if it succeeded.
fn ssh(ns: &NetNs, key: &Path, host: &str, port: u16, command: &str) -> Option<String> {
    debian::ssh_output(ns, key, host, port, command)
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
    let image = debian::image(tmp.path());
    let key = debian::ssh_key(tmp.path());
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
