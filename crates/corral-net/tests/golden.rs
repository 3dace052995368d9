//! Golden tests: the nftables script and the dnsmasq config are pure functions of the
//! desired state; the exact text is in `tests/golden/`. Run with `UPDATE_GOLDEN=1` to
//! rewrite the files after an intended change, then review the diff.

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use corral_api::network::{Direction, FirewallAction, FirewallProtocol, FirewallRule, Protocol};
use corral_net::dnsmasq::{self, DnsmasqConfig};
use corral_net::nft::{self, Dnat, NetRules, NftCaps, Ruleset, VmRules};

fn check(case: &str, actual: &str) {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(case);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&file, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            file.display()
        )
    });
    assert_eq!(
        actual, expected,
        "{case} changed (UPDATE_GOLDEN=1 to accept)"
    );
}

fn rule(
    action: FirewallAction,
    direction: Direction,
    protocol: Option<FirewallProtocol>,
    port: Option<u16>,
    cidr: Option<&str>,
) -> FirewallRule {
    FirewallRule {
        action,
        direction,
        protocol,
        port,
        cidr: cidr.map(String::from),
    }
}

/// Two networks (nat, isolated), port forwards, two VMs with firewall rules.
pub fn sample() -> Ruleset {
    use Direction::{In, Out};
    use FirewallAction::{Allow, Deny};
    use FirewallProtocol::{Icmp, Tcp, Udp};
    Ruleset {
        networks: vec![
            NetRules {
                bridge: "corral0".into(),
                subnet: Some((Ipv4Addr::new(10, 0, 5, 1), 24)),
                outbound: true,
            },
            NetRules {
                bridge: "corral1".into(),
                subnet: Some((Ipv4Addr::new(10, 0, 6, 1), 24)),
                outbound: false,
            },
        ],
        forwards: vec![
            Dnat {
                protocol: Protocol::Tcp,
                host_port: 8080,
                to: Ipv4Addr::new(10, 0, 5, 10),
                to_port: 80,
            },
            Dnat {
                protocol: Protocol::Udp,
                host_port: 5353,
                to: Ipv4Addr::new(10, 0, 5, 11),
                to_port: 53,
            },
        ],
        vms: vec![
            VmRules {
                vm: "web".into(),
                taps: vec!["ct6f1c2a3e-0".into(), "ct6f1c2a3e-1".into()],
                rules: vec![
                    rule(Allow, In, Some(Tcp), Some(22), Some("192.168.1.0/24")),
                    rule(Deny, In, Some(Tcp), Some(22), None),
                    rule(Deny, In, Some(Icmp), None, None),
                    rule(Deny, Out, Some(Udp), Some(53), Some("10.9.9.9")),
                    rule(Deny, Out, None, None, Some("10.20.0.1/16")),
                ],
            },
            VmRules {
                vm: "db".into(),
                taps: vec!["ct0a1b2c3d-0".into()],
                rules: vec![
                    rule(Allow, In, Some(Tcp), Some(5432), None),
                    rule(Deny, In, None, None, None),
                ],
            },
            // No rules: no chains.
            VmRules {
                vm: "plain".into(),
                taps: vec!["ct99999999-0".into()],
                rules: vec![],
            },
        ],
    }
}

#[test]
fn nft_full_ruleset_stateless() {
    let caps = NftCaps {
        bridge_conntrack: false,
    };
    check("full_stateless.nft", &nft::render(&sample(), caps));
}

#[test]
fn nft_full_ruleset_with_bridge_conntrack() {
    let caps = NftCaps {
        bridge_conntrack: true,
    };
    check("full_conntrack.nft", &nft::render(&sample(), caps));
}

#[test]
fn nft_one_nat_network_without_vms() {
    let rs = Ruleset {
        networks: vec![sample().networks.remove(0)],
        ..Ruleset::default()
    };
    check(
        "nat_only.nft",
        &nft::render(
            &rs,
            NftCaps {
                bridge_conntrack: false,
            },
        ),
    );
}

#[test]
fn nft_empty_ruleset_only_deletes() {
    check(
        "empty.nft",
        &nft::render(
            &Ruleset::default(),
            NftCaps {
                bridge_conntrack: false,
            },
        ),
    );
}

#[test]
fn nft_refuses_names_that_would_need_quoting() {
    let mut rs = sample();
    rs.vms[0].taps.push("bad\"; flush ruleset".into());
    assert!(nft::validate(&rs).is_err());
    assert!(!nft::render(
        &rs,
        NftCaps {
            bridge_conntrack: false
        }
    )
    .contains("flush"));
    assert!(nft::validate(&sample()).is_ok());
}

fn dnsmasq_cfg(router: bool) -> DnsmasqConfig {
    DnsmasqConfig {
        network: "default".into(),
        bridge: "corral0".into(),
        subnet: (Ipv4Addr::new(10, 0, 5, 1), 24),
        router,
    }
}

#[test]
fn dnsmasq_nat() {
    let dir = Path::new("/var/lib/corral/networks/default");
    check(
        "dnsmasq_nat.conf",
        &dnsmasq::render(&dnsmasq_cfg(true), dir),
    );
}

#[test]
fn dnsmasq_isolated_has_no_router() {
    let dir = Path::new("/var/lib/corral/networks/default");
    check(
        "dnsmasq_isolated.conf",
        &dnsmasq::render(&dnsmasq_cfg(false), dir),
    );
}
