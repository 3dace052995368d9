//! Corral's nftables tables applied for real in a private network namespace, next to
//! another program's table that must stay untouched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::Ipv4Addr;

use common::{private_netns, sh, Peer};
use corral_api::network::{Direction, FirewallAction, FirewallProtocol, FirewallRule, Protocol};
use corral_net::nft::{self, Dnat, NetRules, Ruleset, VmRules};

/// What Docker leaves: `ip filter FORWARD` with policy drop.
const DOCKER: &str = "table ip filter {
  chain FORWARD { type filter hook forward priority filter; policy drop; jump DOCKER-USER; }
  chain DOCKER-USER { return; }
}";

fn ruleset() -> Ruleset {
    Ruleset {
        networks: vec![
            NetRules {
                bridge: "corral0".into(),
                subnet: Some((Ipv4Addr::new(10, 0, 5, 1), 24)),
                outbound: true,
            },
            NetRules {
                bridge: "corral1".into(),
                subnet: None,
                outbound: false,
            },
        ],
        forwards: vec![Dnat {
            protocol: Protocol::Tcp,
            host_port: 8080,
            to: Ipv4Addr::new(10, 0, 5, 10),
            to_port: 80,
        }],
        vms: vec![VmRules {
            vm: "web".into(),
            taps: vec!["ct6f1c2a3e-0".into()],
            rules: vec![FirewallRule {
                action: FirewallAction::Deny,
                direction: Direction::In,
                protocol: Some(FirewallProtocol::Tcp),
                port: Some(22),
                cidr: Some("192.168.0.0/16".into()),
            }],
        }],
    }
}

fn tables() -> Vec<(String, String)> {
    let json: serde_json::Value = serde_json::from_str(&sh("nft -j list tables")).unwrap();
    json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i.get("table"))
        .map(|t| {
            (
                t["family"].as_str().unwrap().to_string(),
                t["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn apply_replaces_only_corrals_tables_and_reports_a_dropping_forward_chain() {
    private_netns();
    sh(&format!("nft -f - <<'EOF'\n{DOCKER}\nEOF"));
    let docker_before = sh("nft list table ip filter");
    let caps = nft::probe().await.unwrap();

    nft::apply(&ruleset(), caps).await.unwrap();
    // Again, and with a smaller ruleset: each apply replaces the whole tables.
    nft::apply(&ruleset(), caps).await.unwrap();
    let mut smaller = ruleset();
    smaller.forwards.clear();
    nft::apply(&smaller, caps).await.unwrap();
    let ours = sh("nft list table inet corral");
    assert!(
        ours.contains("masquerade") && !ours.contains("dnat ip to"),
        "{ours}"
    );
    assert!(sh("nft list table bridge corral").contains("jump vm-web-in"));
    assert!(tables().contains(&("inet".into(), "corral".into())));
    assert_eq!(sh("nft list table ip filter"), docker_before);

    let found = nft::forward_conflicts(&["corral0".into()]).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("table ip filter chain FORWARD"),
        "{}",
        found[0]
    );
    // Following the hint silences it (the accepts may sit in a jumped-to chain).
    sh("nft insert rule ip filter DOCKER-USER iifname corral0 accept");
    sh("nft insert rule ip filter DOCKER-USER oifname corral0 accept");
    assert!(nft::forward_conflicts(&["corral0".into()])
        .await
        .unwrap()
        .is_empty());

    nft::apply(&Ruleset::default(), caps).await.unwrap();
    let left = tables();
    assert_eq!(
        left,
        vec![("ip".to_string(), "filter".to_string())],
        "{left:?}"
    );
    // Deleting what is not there is fine too.
    nft::apply(&Ruleset::default(), caps).await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_bad_name_is_refused_before_nft_runs() {
    private_netns();
    let mut rs = ruleset();
    rs.networks[0].bridge = "br\"0".into();
    let caps = nft::NftCaps {
        bridge_conntrack: false,
    };
    assert!(matches!(
        nft::apply(&rs, caps).await,
        Err(corral_net::NetError::Invalid { .. })
    ));
    assert!(tables().is_empty());
}

/// Real traffic: a "VM" namespace behind the NAT bridge reaches an "outside" namespace
/// (which has no route back to the VM's subnet, so only masquerade makes it work); the
/// host's own port forward reaches the VM; the VM's firewall drops what it denies and
/// lets the VM's own connections through.
#[tokio::test(flavor = "current_thread")]
async fn nat_port_forward_and_firewall_carry_real_traffic() {
    private_netns();
    let (vm, outside) = (Peer::new(), Peer::new());
    sh("ip link add corral0 type bridge && ip addr add 10.0.5.1/24 dev corral0 && ip link set corral0 up");
    vm.veth("vmtap0", "eth0");
    sh("ip link set vmtap0 master corral0");
    vm.run("ip addr add 10.0.5.10/24 dev eth0 && ip route add default via 10.0.5.1");
    outside.veth("uplink", "eth0");
    sh("ip addr add 192.0.2.1/24 dev uplink");
    outside.run("ip addr add 192.0.2.2/24 dev eth0");
    corral_net::link::enable_ip_forward().unwrap();

    let mut rs = ruleset();
    rs.networks.truncate(1);
    rs.vms[0].taps = vec!["vmtap0".into()];
    rs.vms[0].rules = vec![FirewallRule {
        action: FirewallAction::Deny,
        direction: Direction::In,
        protocol: Some(FirewallProtocol::Tcp),
        port: Some(22),
        cidr: None,
    }];
    nft::apply(&rs, nft::probe().await.unwrap()).await.unwrap();

    serve(&outside, 7000, "outside");
    let reply = vm.run("busybox nc -w 3 192.0.2.2 7000 </dev/null");
    assert_eq!(reply.trim(), "outside", "VM to outside, masqueraded");

    serve(&vm, 80, "from-vm");
    let reply = sh("busybox nc -w 3 192.0.2.1 8080 </dev/null");
    assert_eq!(
        reply.trim(),
        "from-vm",
        "the host's own use of a port forward"
    );

    serve(&vm, 22, "ssh");
    let out = std::process::Command::new("busybox")
        .args(["nc", "-w", "1", "10.0.5.10", "22"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let got = String::from_utf8_lossy(&out.stdout);
    assert!(!got.contains("ssh"), "port 22 passed the firewall: {got}");
    // The firewall's SYN-only matching keeps other ports and replies working.
    serve(&vm, 23, "telnet");
    assert_eq!(
        sh("busybox nc -w 3 10.0.5.10 23 </dev/null").trim(),
        "telnet"
    );
}

/// A one-connection TCP server in `peer` answering `text`.
fn serve(peer: &Peer, port: u16, text: &str) {
    peer.run(&format!(
        "busybox nc -l -p {port} -e echo {text} </dev/null >/dev/null 2>&1 &"
    ));
    // Until it listens (ss from iproute2 sees the peer's sockets through nsenter).
    for _ in 0..100 {
        if peer.run("ss -Hltn").contains(&format!(":{port} ")) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("nothing listens on port {port}");
}
