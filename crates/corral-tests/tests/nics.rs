//! `corral nic add|list|remove`: a stopped VM's NICs changed after create, seen by the
//! real guest at its next boot; and NICs plugged into and out of running VMs (`pc` and
//! q35), with traffic through them and nothing left on the host after.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use corral_tests::{Daemon, World};

/// A guest shell line that finds the interface with `mac`, brings it up and asks
/// DHCP for an address, then prints `tag` with the interface's name.
fn dhcp_on(mac: &str, tag: &str) -> String {
    format!(
        "for n in /sys/class/net/eth*; do [ \"$(cat $n/address)\" = {mac} ] && i=${{n##*/}}; done; \
         ip link set $i up; udhcpc -i $i -n -q -t 5 -s /etc/udhcpc.script >/dev/null 2>&1; echo {tag} $i"
    )
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The MACs the guest's kernel sees, from a fresh listing on its console.
fn guest_macs(d: &Daemon, vm: &str, tag: &str) -> String {
    d.guest_run(
        vm,
        &format!("echo {tag} $(cat /sys/class/net/eth*/address | tr '\\n' ' ')"),
    );
    let log = d.console_log(vm);
    log.lines()
        .rev()
        .find(|l| l.trim_end() == tag || l.starts_with(&format!("{tag} ")))
        .unwrap()
        .to_string()
}

fn macs(d: &Daemon, vm: &str) -> Vec<String> {
    d.json(&["nic", "list", vm])
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["mac"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn nics_are_added_and_removed_on_a_stopped_vm_and_the_guest_sees_them() {
    let w = World::new("nics");
    let mut d = Daemon::start_in(&w.host, &["--accel", "tcg"]);
    d.define("g", &["--memory", "256M", "--network", "user"]);
    let first = macs(&d, "g");
    assert_eq!(first.len(), 1);

    // Refusals name the field and change nothing.
    let bad = d.fails(&["nic", "add", "g", "--network", "nat,mac=zz:00:00:00:00:01"]);
    assert!(bad.contains("not a unicast MAC"), "{bad}");
    let (status, body) = d.http(
        "POST",
        "/api/v1/vms/g/nics",
        r#"{"kind":"network","source":"default","mac":"01:00:00:00:00:01"}"#,
    );
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("nic.mac")),
        "{body}"
    );
    let taken = format!("nat,mac={}", first[0]);
    let bad = d.fails(&["nic", "add", "g", "--network", &taken]);
    assert!(bad.contains("already in use"), "{bad}");
    let bad = d.fails(&["nic", "add", "g", "--network", "network=nope"]);
    assert!(bad.contains("nope"), "{bad}");
    assert_eq!(macs(&d, "g"), first);

    // A NIC on the default NAT network, with a DHCP reservation.
    let added = d.json(&["nic", "add", "g", "--network", "nat"]);
    let mac = added["mac"].as_str().unwrap().to_string();
    assert_eq!(added["source"], "default");
    assert!(added["ip"].is_string(), "{added}");
    assert_eq!(macs(&d, "g"), vec![first[0].clone(), mac.clone()]);

    // Still known after a daemon restart.
    d.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while d.corral(&["show", "g"]).status.code() != Some(0) {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(macs(&d, "g"), vec![first[0].clone(), mac.clone()]);

    // The guest has two NICs, the new one with its MAC.
    d.start_and_wait("g");
    d.guest_run("g", "cat /sys/class/net/eth1/address");
    assert!(d.console_log("g").contains(&mac), "{}", d.console_log("g"));

    d.ok(&["stop", "g", "--force"]);
    d.ok(&["nic", "remove", "g", &mac.to_uppercase()]);
    assert_eq!(macs(&d, "g"), first);
    let gone = d.fails(&["nic", "remove", "g", &mac]);
    assert!(gone.contains("not found"), "{gone}");

    // Booted again: only eth0 is left.
    d.start_and_wait("g");
    d.guest_run(
        "g",
        "ls /sys/class/net/ | tr '\\n' ' ' | sed 's/^/NETS: /'; echo",
    );
    let log = d.console_log("g");
    let last = log.lines().rev().find(|l| l.starts_with("NETS: ")).unwrap();
    assert!(!last.contains("eth1") && last.contains("eth0"), "{last}");
}

#[test]
fn nics_are_plugged_into_and_out_of_running_vms() {
    let w = World::new("hotnic");
    let mut d = Daemon::start_in(&w.host, &["--accel", "tcg"]);
    d.boot("pc", &["--network", "none"]);

    // A NIC on the default NAT network, plugged into the running guest: it sees the
    // device, gets its reserved address by DHCP, and the host reaches it.
    let nat = d.json(&["nic", "add", "pc", "--network", "nat"]);
    let (nat_mac, nat_ip) = (
        nat["mac"].as_str().unwrap().to_string(),
        nat["ip"].as_str().unwrap().to_string(),
    );
    assert_eq!(d.json(&["show", "pc"])["status"]["state"], "running");
    d.guest_run("pc", &dhcp_on(&nat_mac, "NAT-UP"));
    assert!(
        d.console_log("pc").contains("NAT-UP eth"),
        "{}",
        d.console_log("pc")
    );
    wait_until("the hot-plugged NIC to answer ping", || {
        w.host.exec(&["ping", "-c", "1", "-W", "2", &nat_ip])
    });
    let tap = format!("ct{}", nat_mac.replace(':', ""));
    assert!(
        w.host.exec(&["ip", "link", "show", &tap]),
        "the NIC's tap exists"
    );

    // A user NIC (passt) too.
    let user = d.json(&["nic", "add", "pc", "--network", "user"]);
    let user_mac = user["mac"].as_str().unwrap().to_string();
    let seen = guest_macs(&d, "pc", "MACS-TWO");
    assert!(
        seen.contains(&nat_mac) && seen.contains(&user_mac),
        "{seen}"
    );
    // This NIC's passt, by its socket's name ("[p]" keeps pgrep's shell out).
    let pattern = format!("pgrep -f '[p]asst-{}' || true", user_mac.replace(':', ""));
    let passt_pids = || w.host.exec_ok(&["sh", "-c", &pattern]);
    assert!(
        !passt_pids().trim().is_empty(),
        "passt runs for the user NIC"
    );
    let events = d.ok(&["events", "--vm", "pc"]);
    assert!(events.contains("hot-plugged"), "{events}");

    // Paused: unplugging needs the guest, and says so.
    d.ok(&["pause", "pc"]);
    let paused = d.fails(&["nic", "remove", "pc", &nat_mac]);
    assert!(paused.contains("resume"), "{paused}");
    d.ok(&["resume", "pc"]);

    // Out again: the guest lets go of both, the tap is gone, passt has ended.
    d.ok(&["nic", "remove", "pc", &nat_mac]);
    d.ok(&["nic", "remove", "pc", &user_mac]);
    assert!(macs(&d, "pc").is_empty());
    let seen = guest_macs(&d, "pc", "MACS-NONE");
    assert!(
        !seen.contains(&nat_mac) && !seen.contains(&user_mac),
        "{seen}"
    );
    wait_until("the tap to go", || {
        !w.host.exec(&["ip", "link", "show", &tap])
    });
    wait_until("passt to end", || passt_pids().trim().is_empty());

    // q35's root bus takes no hot-plugged device: it goes into a spare root port.
    d.boot("q", &["--machine", "q35", "--network", "none"]);
    let added = d.json(&["nic", "add", "q", "--network", "nat"]);
    let mac = added["mac"].as_str().unwrap().to_string();
    d.guest_run("q", &dhcp_on(&mac, "Q35-UP"));
    assert!(
        d.console_log("q").contains("Q35-UP eth"),
        "{}",
        d.console_log("q")
    );
    let ip = added["ip"].as_str().unwrap().to_string();
    wait_until("the q35 guest's NIC to answer ping", || {
        w.host.exec(&["ping", "-c", "1", "-W", "2", &ip])
    });
    d.ok(&["nic", "remove", "q", &mac]);
    assert!(macs(&d, "q").is_empty());
    // A disk takes a spare root port the same way (the one the NIC left, or another).
    d.ok(&["volume", "create", "qdata", "--size", "16M"]);
    d.ok(&["volume", "attach", "qdata", "q"]);
    d.guest_run("q", "echo Q35-DISK $(ls /sys/block | grep vd)");
    let log = d.console_log("q");
    let disks = log
        .lines()
        .rev()
        .find(|l| l.starts_with("Q35-DISK"))
        .unwrap();
    assert!(disks.contains("vd"), "{disks}");

    // The NICs of a running VM stay across a daemon restart, and a stop/start
    // brings up the hot-plugged one as an ordinary NIC.
    let kept = d.json(&["nic", "add", "q", "--network", "user"]);
    d.restart();
    wait_until("the daemon", || {
        d.corral(&["show", "q"]).status.code() == Some(0)
    });
    d.ok(&["stop", "q", "--force"]);
    d.start_and_wait("q");
    let seen = guest_macs(&d, "q", "MACS-BOOT");
    assert!(seen.contains(kept["mac"].as_str().unwrap()), "{seen}");
}
