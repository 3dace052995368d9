//! passt for real, in a private network namespace with a stand-in uplink (passt copies
//! the addresses and routes of the host's default-route interface for its guest).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{private_netns, sh};
use corral_api::network::Protocol;
use corral_net::passt::{self, PasstConfig};

fn config(dir: &std::path::Path) -> PasstConfig {
    PasstConfig {
        socket: dir.join("passt-0.sock"),
        pidfile: dir.join("passt-0.pid"),
        forwards: vec![(Protocol::Tcp, 8080, 80), (Protocol::Udp, 5353, 53)],
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

#[tokio::test(flavor = "current_thread")]
async fn passt_listens_forwards_and_leaves_with_its_client() {
    private_netns();
    assert!(passt::available());
    sh(
        "ip link add up0 type veth peer name up0-p && ip addr add 10.98.0.2/24 dev up0 \
        && ip link set up0 up && ip link set up0-p up && ip route add default via 10.98.0.1",
    );
    let tmp = tempfile::tempdir().unwrap();
    // Like the VM's runtime directory: root's only.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let cfg = config(tmp.path());
    let pid = passt::spawn(&cfg).await.unwrap();
    assert!(alive(pid));
    let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid as i32))).unwrap();
    assert_eq!(sid.as_raw() as u32, pid, "passt leads its own session");
    let listening = sh("ss -Hltun");
    assert!(
        listening.contains(":8080 ") && listening.contains(":5353 "),
        "{listening}"
    );

    // QEMU's side: one connection; when it closes, passt leaves (--one-off).
    let client = std::os::unix::net::UnixStream::connect(&cfg.socket).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(alive(pid));
    drop(client);
    for _ in 0..100 {
        if !alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("passt did not exit after its client left");
}

#[tokio::test(flavor = "current_thread")]
async fn passt_without_an_uplink_says_why() {
    private_netns();
    let tmp = tempfile::tempdir().unwrap();
    let err = passt::spawn(&config(tmp.path())).await.unwrap_err();
    // The host's state, told as such (409 in the API), with what to do instead.
    match err {
        corral_net::NetError::Unsupported { message, hint } => {
            assert!(message.contains("route out"), "{message}");
            assert!(hint.contains("NAT"), "{hint}");
        }
        other => panic!("expected Unsupported, got {other}"),
    }
}
