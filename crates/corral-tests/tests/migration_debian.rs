//! Live migration of a real guest OS: a Debian 12 VM (the cloud image built from
//! Debian's packages, on the user's `--image` file both hosts see) on a LAN both hosts
//! bridge into, reachable by SSH before and after, with an SSH session kept open across
//! the migration. Slow (a Debian boot under TCG takes a minute or more), so one test.

#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use corral_tests::debian::{self, ssh, ssh_output, wait_for};
use corral_tests::hosts::Hosts;
use corral_tests::Value;

/// The guest's IPv4 address on the LAN, as its agent reports it.
fn agent_address(vm: &Value) -> Option<String> {
    vm["addresses"]
        .as_array()?
        .iter()
        .find(|a| {
            a["source"] == "agent"
                && a["address"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("10.88.0."))
        })
        .and_then(|a| a["address"].as_str().map(str::to_string))
}

#[test]
fn a_debian_guest_keeps_its_ssh_session_across_a_migration() {
    let tmp = tempfile::tempdir().unwrap();
    let image = debian::image(tmp.path());
    let key = debian::ssh_key(tmp.path());
    let hosts = Hosts::with_lan("mdeb", 2);
    let (a, b) = (hosts.host(0), hosts.host(1));
    let pubkey = format!("{}.pub", key.display());
    a.daemon.ok(&[
        "create",
        "deb",
        "--image",
        image.to_str().unwrap(),
        "--memory",
        "768M",
        "--vcpus",
        "1",
        "--network",
        "bridge=br-lan",
        "--ssh-key",
        &pubkey,
        "--start",
    ]);
    let ip = wait_for(
        Duration::from_secs(600),
        "the guest agent's address",
        || agent_address(&a.daemon.vm("deb")),
    );
    let out = wait_for(Duration::from_secs(300), "ssh into the guest", || {
        ssh_output(&hosts.switch, &key, &ip, 22, "echo before-$((6*7))")
    });
    assert!(out.contains("before-42"), "{out}");

    // An SSH session that prints the time every 200 ms for as long as it lives.
    let log = tmp.path().join("session.log");
    let mut session = ssh(
        &hosts.switch,
        &key,
        &ip,
        22,
        "while :; do date +%s.%N; sleep 0.2; done",
    )
    .stdout(std::fs::File::create(&log).unwrap())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    wait_for(Duration::from_secs(30), "the session's first lines", || {
        (std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
            > 3)
        .then_some(())
    });

    let op = a.daemon.json(&["migrate", "deb", "--to", "h1"]);
    assert_eq!(op["state"], "succeeded", "{op}");
    let migrated = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert_eq!(b.daemon.state("deb"), "running");
    assert!(a.vm_names().is_empty());

    // The session lives on and keeps printing after the switch-over.
    wait_for(
        Duration::from_secs(60),
        "the session to go on after the migration",
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let later = text
                .lines()
                .filter_map(|l| l.trim().parse::<f64>().ok())
                .filter(|t| *t > migrated + 1.0)
                .count();
            (later > 5).then_some(())
        },
    );
    assert!(
        session.try_wait().unwrap().is_none(),
        "the SSH session ended"
    );
    let _ = session.kill();
    let _ = session.wait();

    // A new session reaches it at the same address; its agent answers at the new host.
    let out = ssh_output(&hosts.switch, &key, &ip, 22, "echo after-$((6*7))").unwrap_or_default();
    assert!(out.contains("after-42"), "{out}");
    wait_for(
        Duration::from_secs(120),
        "the guest agent at the destination",
        || (agent_address(&b.daemon.vm("deb")).as_deref() == Some(ip.as_str())).then_some(()),
    );
    // Its disk was the user's file plus an overlay: the file is where it was, untouched.
    assert!(image.exists());
    b.daemon.ok(&["stop", "deb", "--timeout", "300"]);
}
