//! Corral's nftables tables: `inet corral` (NAT, forwarding, port forwards) and
//! `bridge corral` (per-VM firewall on tap ports). Rendered from the desired state
//! and replaced in one `nft -f` transaction; other tables are never changed.
//!
//! # `inet corral`
//!
//! - `forward` (filter, policy accept): Corral's table only ever *drops* what must not
//!   pass; an `accept` here just ends this chain, other tables still decide. Rules that
//!   guard traffic *into* a bridge come first for every network, then rules for traffic
//!   *out of* one, so one network's "out" accept never lets its traffic into another
//!   network. NAT networks: replies and DNAT'ed (port-forwarded) traffic may enter,
//!   anything else entering from another interface is dropped; traffic leaving must
//!   come from the subnet. Isolated networks: nothing is forwarded to or from them.
//!   The `iifname != BRIDGE` guards keep bridged VM-to-VM traffic flowing where
//!   `br_netfilter` sends it through this hook (Docker loads it).
//! - `prerouting` / `output` (dstnat): port forwards, `fib daddr type local` so any of
//!   the host's addresses works, from outside and from VMs (hairpin). `output` does the
//!   same for the host's own connections, except to 127.0.0.0/8: DNAT from loopback to
//!   another host would need `route_localnet`, so `127.0.0.1:PORT` is left alone (it
//!   reaches whatever listens on the host itself); use one of the host's addresses.
//! - `postrouting` (srcnat): masquerade each NAT subnet to anywhere outside it, and a
//!   VM reaching another VM of its network through a port forward (hairpin), so the
//!   reply returns through the host.
//!
//! # `bridge corral`
//!
//! Per-VM firewall on the VM's tap ports: `postrouting` sends frames leaving to a tap
//! (direction `in`) and `prerouting` frames coming from a tap (direction `out`) to the
//! VM's chains. Rules are checked in order, first match wins, the default allows. ARP
//! and the VM's own DHCP always pass, or a "deny everything" rule would cut the VM off.
//!
//! Statefulness: with `nf_conntrack_bridge` ([`NftCaps::bridge_conntrack`]) each chain
//! accepts established/related traffic first, so rules are about new connections.
//! Without it (this machine's kernel) the chains are stateless: TCP segments that do not
//! open a connection (not a bare SYN) and ICMP replies/errors always pass, so TCP rules
//! act on connection attempts and replies to the VM's own connections pass. UDP has no
//! such marker: a rule denying inbound UDP also drops the replies to the VM's own UDP
//! queries (DNS answers from a server outside the rule's scope, for instance), and a
//! rule denying all inbound traffic drops UDP replies as well.

mod conflicts;

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use corral_api::network::{
    parse_cidr, Direction, FirewallAction, FirewallProtocol, FirewallRule, Protocol,
};

use crate::link::network_of;
use crate::{Cidr, NetError};

pub use conflicts::forward_conflicts;

/// Everything Corral's tables should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub networks: Vec<NetRules>,
    pub forwards: Vec<Dnat>,
    pub vms: Vec<VmRules>,
}

/// One bridge Corral manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRules {
    pub bridge: String,
    pub subnet: Option<Cidr>,
    /// Masquerade the subnet and forward it out (nat); else traffic stays on the bridge.
    pub outbound: bool,
}

/// A host port DNAT'ed to a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dnat {
    pub protocol: Protocol,
    pub host_port: u16,
    pub to: Ipv4Addr,
    pub to_port: u16,
}

/// One VM's firewall rules, applied on its tap ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRules {
    pub vm: String,
    pub taps: Vec<String>,
    pub rules: Vec<FirewallRule>,
}

/// What this kernel's nftables can do (probed once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NftCaps {
    /// Connection tracking in the bridge family (`nf_conntrack_bridge`).
    pub bridge_conntrack: bool,
}

const HEADER: &str = "\
# Corral's own tables, replaced as a whole by corrald: edits made here are lost.
add table inet corral
delete table inet corral
add table bridge corral
delete table bridge corral
";

/// The script that replaces Corral's tables with `rs` (pure; golden-tested). An empty
/// ruleset only deletes them. Entries [`validate`] refuses are left out.
pub fn render(rs: &Ruleset, caps: NftCaps) -> String {
    let mut out = String::from(HEADER);
    if *rs == Ruleset::default() {
        return out;
    }
    render_inet(&mut out, rs);
    render_bridge(&mut out, rs, caps);
    out
}

fn render_inet(out: &mut String, rs: &Ruleset) {
    let nets: Vec<&NetRules> = rs.networks.iter().filter(|n| safe(&n.bridge)).collect();
    out.push_str("table inet corral {\n");
    chain(out, "forward", "filter hook forward priority filter");
    for n in &nets {
        let br = &n.bridge;
        match (n.outbound, n.subnet) {
            (true, Some(subnet)) => {
                let s = cidr(subnet);
                rule(
                    out,
                    &format!("oifname \"{br}\" ip daddr {s} ct state established,related accept"),
                );
                rule(out, &format!("oifname \"{br}\" ct status dnat accept"));
                rule(out, &format!("oifname \"{br}\" iifname != \"{br}\" drop"));
            }
            _ => {
                rule(out, &format!("oifname \"{br}\" iifname != \"{br}\" drop"));
                rule(out, &format!("iifname \"{br}\" oifname != \"{br}\" drop"));
            }
        }
    }
    for n in &nets {
        if let (true, Some(subnet)) = (n.outbound, n.subnet) {
            let br = &n.bridge;
            rule(
                out,
                &format!("iifname \"{br}\" ip saddr {} accept", cidr(subnet)),
            );
            rule(out, &format!("iifname \"{br}\" oifname != \"{br}\" drop"));
        }
    }
    out.push_str("\t}\n\n");

    chain(out, "prerouting", "nat hook prerouting priority dstnat");
    for f in &rs.forwards {
        rule(out, &format!("fib daddr type local {}", dnat(f)));
    }
    out.push_str("\t}\n\n");
    // `priority dstnat` is not accepted for the output hook: -100 is its value.
    chain(out, "output", "nat hook output priority -100");
    for f in &rs.forwards {
        rule(
            out,
            &format!("ip daddr != 127.0.0.0/8 fib daddr type local {}", dnat(f)),
        );
    }
    out.push_str("\t}\n\n");

    chain(out, "postrouting", "nat hook postrouting priority srcnat");
    for n in &nets {
        if let (true, Some(subnet)) = (n.outbound, n.subnet) {
            let (br, s) = (&n.bridge, cidr(subnet));
            rule(out, &format!("ip saddr {s} ip daddr != {s} masquerade"));
            rule(
                out,
                &format!("oifname \"{br}\" ip saddr {s} ip daddr {s} ct status dnat masquerade"),
            );
        }
    }
    out.push_str("\t}\n}\n");
}

fn render_bridge(out: &mut String, rs: &Ruleset, caps: NftCaps) {
    let vms: Vec<&VmRules> = rs
        .vms
        .iter()
        .filter(|v| safe(&v.vm) && !v.rules.is_empty())
        .collect();
    out.push_str("table bridge corral {\n");
    chain(out, "prerouting", "filter hook prerouting priority filter");
    for v in &vms {
        for tap in v.taps.iter().filter(|t| safe(t)) {
            rule(out, &format!("iifname \"{tap}\" jump vm-{}-out", v.vm));
        }
    }
    out.push_str("\t}\n\n");
    chain(
        out,
        "postrouting",
        "filter hook postrouting priority filter",
    );
    for v in &vms {
        for tap in v.taps.iter().filter(|t| safe(t)) {
            rule(out, &format!("oifname \"{tap}\" jump vm-{}-in", v.vm));
        }
    }
    out.push_str("\t}\n");
    for v in &vms {
        for dir in [Direction::In, Direction::Out] {
            vm_chain(out, v, dir, caps);
        }
    }
    out.push_str("}\n");
}

fn vm_chain(out: &mut String, v: &VmRules, dir: Direction, caps: NftCaps) {
    let (name, dhcp) = match dir {
        Direction::In => ("in", "udp sport 67 udp dport 68 accept"),
        Direction::Out => ("out", "udp sport 68 udp dport 67 accept"),
    };
    let _ = writeln!(out, "\n\tchain vm-{}-{name} {{", v.vm);
    rule(out, "ether type arp accept");
    rule(out, dhcp);
    if caps.bridge_conntrack {
        rule(out, "ct state established,related accept");
    } else {
        rule(out, "tcp flags & (syn | ack) != syn accept");
        rule(
            out,
            "icmp type { echo-reply, destination-unreachable, time-exceeded } accept",
        );
    }
    for r in v.rules.iter().filter(|r| r.direction == dir) {
        if let Some(line) = firewall_rule(r) {
            rule(out, &line);
        }
    }
    out.push_str("\t}\n");
}

/// One firewall rule as an nftables rule; `None` if its CIDR does not parse.
fn firewall_rule(r: &FirewallRule) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(text) = &r.cidr {
        let c = parse_cidr(text).ok()?;
        let side = match r.direction {
            Direction::In => "saddr",
            Direction::Out => "daddr",
        };
        parts.push(format!("ip {side} {}", cidr_net(c)));
    }
    let proto = r.protocol.map(|p| match p {
        FirewallProtocol::Tcp => "tcp",
        FirewallProtocol::Udp => "udp",
        FirewallProtocol::Icmp => "icmp",
    });
    match (proto, r.port) {
        (Some(p @ ("tcp" | "udp")), Some(port)) => parts.push(format!("{p} dport {port}")),
        (Some(p), _) => parts.push(format!("meta l4proto {p}")),
        (None, _) => {}
    }
    parts.push(
        match r.action {
            FirewallAction::Allow => "accept",
            FirewallAction::Deny => "drop",
        }
        .into(),
    );
    Some(parts.join(" "))
}

fn chain(out: &mut String, name: &str, hook: &str) {
    let _ = writeln!(out, "\tchain {name} {{\n\t\ttype {hook}; policy accept;");
}

fn rule(out: &mut String, text: &str) {
    let _ = writeln!(out, "\t\t{text}");
}

fn dnat(f: &Dnat) -> String {
    format!(
        "{} dport {} dnat ip to {}:{}",
        f.protocol.as_str(),
        f.host_port,
        f.to,
        f.to_port
    )
}

/// A subnet given as host address/prefix, as its network.
fn cidr(c: Cidr) -> String {
    format!("{}/{}", network_of(c), c.1)
}

/// A CIDR from a firewall rule: a single address stays bare.
fn cidr_net(c: Cidr) -> String {
    if c.1 == 32 {
        c.0.to_string()
    } else {
        cidr(c)
    }
}

/// Names that go into the script inside quotes or as chain names: no character that
/// could end a string or start a new statement.
fn safe(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Refuses what [`render`] would have to leave out: names with characters outside
/// `[A-Za-z0-9_.-]`, CIDRs that do not parse.
pub fn validate(rs: &Ruleset) -> Result<(), NetError> {
    let bad = |field: &'static str, what: &str| NetError::Invalid {
        field,
        message: format!("{what:?} cannot be used in a firewall rule"),
        hint: "names are letters, digits, '-', '_' and '.'; CIDRs look like 10.0.0.0/8".into(),
    };
    for n in &rs.networks {
        if !safe(&n.bridge) {
            return Err(bad("bridge", &n.bridge));
        }
    }
    for v in &rs.vms {
        if !safe(&v.vm) {
            return Err(bad("name", &v.vm));
        }
        if let Some(t) = v.taps.iter().find(|t| !safe(t)) {
            return Err(bad("tap", t));
        }
        for r in &v.rules {
            if let Some(c) = r.cidr.as_deref().filter(|c| parse_cidr(c).is_err()) {
                return Err(bad("cidr", c));
            }
        }
    }
    Ok(())
}

fn nft() -> Result<std::path::PathBuf, NetError> {
    crate::sys::require_tool("nft", "nftables")
}

/// Probes the kernel once: whether the bridge family has connection tracking. The test
/// rule goes into a throwaway table in `nft --check` mode, so nothing is ever made.
pub async fn probe() -> Result<NftCaps, NetError> {
    const PROBE: &str = "\
add table bridge corral_probe
add chain bridge corral_probe c { type filter hook prerouting priority filter; }
add rule bridge corral_probe c ct state established,related accept
delete table bridge corral_probe
";
    let nft = nft()?;
    // The base case must pass, or the failure says nothing about conntrack.
    let base = PROBE.replace("ct state established,related accept", "accept");
    crate::sys::run(&nft, &["--check", "-f", "-"], Some(&base)).await?;
    let bridge_conntrack = crate::sys::run(&nft, &["--check", "-f", "-"], Some(PROBE))
        .await
        .is_ok();
    Ok(NftCaps { bridge_conntrack })
}

/// Replaces Corral's tables with `rs` atomically (one `nft -f -` transaction: either
/// the whole new ruleset is in force or the old one still is).
pub async fn apply(rs: &Ruleset, caps: NftCaps) -> Result<(), NetError> {
    validate(rs)?;
    let nft = nft()?;
    crate::sys::run(&nft, &["-f", "-"], Some(&render(rs, caps))).await?;
    Ok(())
}
