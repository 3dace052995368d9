//! dnsmasq for real: started on a bridge in a private network namespace, with DHCP
//! clients (busybox udhcpc) in other namespaces connected by veths.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{private_netns, Peer};
use corral_net::dnsmasq::{self, DnsmasqConfig};
use corral_net::driver::Reservation;

/// Stops the test's dnsmasq even when an assertion fails (it would outlive the test).
struct Stop<'a>(&'a Path);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        if let Some(pid) = dnsmasq::running(self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Whether process `pid` has exited (a zombie waiting for its reaper counts: dnsmasq
/// daemonized, so its parent is whichever process adopts orphans here).
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// A client namespace on the bridge with MAC `mac`; returns the peer and the address
/// udhcpc was given.
fn dhcp_client(dir: &Path, port: &str, mac: &str, hostname: &str) -> (Peer, String) {
    let peer = Peer::new();
    peer.veth(port, "eth0");
    common::sh(&format!("ip link set {port} master corraldh"));
    peer.run(&format!("ip link set eth0 address {mac}"));
    let script = dir.join("udhcpc.sh");
    if !script.exists() {
        std::fs::write(
            &script,
            "#!/bin/sh\n[ \"$1\" = bound ] && echo \"lease=$ip\"\nexit 0\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = peer.run(&format!(
        "busybox udhcpc -i eth0 -f -q -n -t 8 -T 1 -x hostname:{hostname} -s {}",
        script.display()
    ));
    let ip = out
        .lines()
        .find_map(|l| l.strip_prefix("lease="))
        .unwrap_or_else(|| panic!("no lease: {out}"))
        .to_string();
    (peer, ip)
}

#[tokio::test(flavor = "current_thread")]
async fn dnsmasq_serves_leases_and_reservations_and_survives_restarts() {
    private_netns();
    let tmp = tempfile::tempdir().unwrap();
    // Reachable by the unprivileged dnsmasq user, as <state>/networks/NAME is.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("testnet");
    let _stop = Stop(&dir);
    corral_net::link::ensure_bridge("corraldh", Some((Ipv4Addr::new(10, 60, 0, 1), 24)))
        .await
        .unwrap();
    let cfg = DnsmasqConfig {
        network: "testnet".into(),
        bridge: "corraldh".into(),
        subnet: (Ipv4Addr::new(10, 60, 0, 1), 24),
        router: true,
    };
    let pid = dnsmasq::ensure_running(&cfg, &dir).await.unwrap();
    assert_eq!(dnsmasq::running(&dir), Some(pid));
    assert_eq!(
        dnsmasq::ensure_running(&cfg, &dir).await.unwrap(),
        pid,
        "idempotent"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = nix::unistd::User::from_name("dnsmasq")
        .unwrap()
        .map(|u| u.uid.as_raw());
    if let Some(uid) = uid {
        let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(
            line.contains(&format!("\t{uid}\t")),
            "dnsmasq keeps root: {line}"
        );
    }

    // A reservation made after the start: dnsmasq re-reads it on SIGHUP.
    let web = Reservation {
        mac: "52:54:00:aa:bb:01".into(),
        ip: Ipv4Addr::new(10, 60, 0, 50),
        name: "web".into(),
    };
    dnsmasq::set_reservations(&dir, std::slice::from_ref(&web)).unwrap();
    let (web_ns, ip) = dhcp_client(&dir, "dh1", &web.mac, "ignored");
    assert_eq!(ip, "10.60.0.50");
    let (_other_ns, other_ip) = dhcp_client(&dir, "dh2", "52:54:00:aa:bb:02", "other");
    let other_ip: Ipv4Addr = other_ip.parse().unwrap();
    let n = u32::from(other_ip) - u32::from(Ipv4Addr::new(10, 60, 0, 0));
    assert!((2..=254).contains(&n), "{other_ip} is outside .2-.254");

    let leases = dnsmasq::leases(&dir);
    let find = |mac: &str| leases.iter().find(|l| l.mac == mac).cloned();
    let l = find(&web.mac).unwrap_or_else(|| panic!("{leases:?}"));
    assert_eq!((l.address, l.hostname.as_deref()), (web.ip, Some("web")));
    assert!(l.expires > 0);
    let l = find("52:54:00:aa:bb:02").unwrap_or_else(|| panic!("{leases:?}"));
    assert_eq!(
        (l.address, l.hostname.as_deref()),
        (other_ip, Some("other"))
    );

    // VM names resolve in the network's domain.
    web_ns.run("ip addr add 10.60.0.50/24 dev eth0");
    let answer = web_ns.run("busybox nslookup other.testnet 10.60.0.1");
    assert!(answer.contains(&other_ip.to_string()), "{answer}");

    // A changed config restarts it; the leases survive in the lease file.
    let isolated = DnsmasqConfig {
        router: false,
        ..cfg.clone()
    };
    let pid2 = dnsmasq::ensure_running(&isolated, &dir).await.unwrap();
    assert_ne!(pid2, pid);
    assert!(gone(pid));
    assert_eq!(dnsmasq::leases(&dir).len(), 2);

    dnsmasq::stop(&dir).await.unwrap();
    assert_eq!(dnsmasq::running(&dir), None);
    assert!(gone(pid2));
    dnsmasq::stop(&dir).await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn dnsmasq_keeps_root_where_its_user_cannot_reach_the_directory() {
    private_netns();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let dir = tmp.path().join("net");
    let _stop = Stop(&dir);
    corral_net::link::ensure_bridge("corraldh", Some((Ipv4Addr::new(10, 61, 0, 1), 24)))
        .await
        .unwrap();
    let cfg = DnsmasqConfig {
        network: "net".into(),
        bridge: "corraldh".into(),
        subnet: (Ipv4Addr::new(10, 61, 0, 1), 24),
        router: true,
    };
    let pid = dnsmasq::ensure_running(&cfg, &dir).await.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.lines().any(|l| l.starts_with("Uid:\t0\t")),
        "{status}"
    );
    // SIGHUP still re-reads the reservations (as root).
    let r = Reservation {
        mac: "52:54:00:aa:bb:03".into(),
        ip: Ipv4Addr::new(10, 61, 0, 9),
        name: "db".into(),
    };
    dnsmasq::set_reservations(&dir, &[r]).unwrap();
    assert_eq!(dnsmasq::running(&dir), Some(pid));
    dnsmasq::stop(&dir).await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_failing_start_says_why() {
    private_netns();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("net");
    let _stop = Stop(&dir);
    corral_net::link::ensure_bridge("corraldh", Some((Ipv4Addr::new(10, 62, 0, 1), 24)))
        .await
        .unwrap();
    // Something else serves DNS on the bridge's address.
    let _taken = std::net::TcpListener::bind("10.62.0.1:53").unwrap();
    let cfg = DnsmasqConfig {
        network: "net".into(),
        bridge: "corraldh".into(),
        subnet: (Ipv4Addr::new(10, 62, 0, 1), 24),
        router: true,
    };
    let err = dnsmasq::ensure_running(&cfg, &dir).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("dnsmasq") && text.contains("in use"),
        "{text}"
    );
    assert_eq!(dnsmasq::running(&dir), None);
}
