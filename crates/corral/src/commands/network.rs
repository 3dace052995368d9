//! `corral network …` and `corral firewall …`.

use anyhow::Result;

use corral_api::{
    AddForwardRequest, CreateNetworkRequest, Direction, FirewallAction, FirewallProtocol,
    FirewallRule, FirewallRules, Network, NetworkType, Protocol, Vm,
};

use crate::cli::{
    DirectionArg, FirewallActionArg, FirewallAddArgs, FirewallCommand, FirewallProtocolArg,
    ForwardAddArgs, ForwardCommand, ForwardRemoveArgs, NetworkCommand, NetworkCreateArgs,
    NetworkTypeArg, NicCommand, ProtocolArg,
};
use crate::client::{encode, vm_path, Client, API};
use crate::output::{details, emit, or_dash, print_out, render, table, Format};

pub async fn run(client: &Client, command: &NetworkCommand) -> Result<()> {
    match command {
        NetworkCommand::Create(args) => create(client, args).await,
        NetworkCommand::List(out) => {
            let nets: Vec<Network> = client.get(&format!("{API}/networks")).await?;
            emit(out.output, &nets, |n| list_table(n))
        }
        NetworkCommand::Show(args) => {
            let net: Network = client.get(&network_path(&args.name)).await?;
            emit(args.output.output, &net, page)
        }
        NetworkCommand::Delete(args) => {
            let _: serde_json::Value = client.delete(&network_path(&args.name)).await?;
            print_out(format!("deleted network {}\n", args.name).as_bytes())
        }
        NetworkCommand::Forward(ForwardCommand::Add(args)) => add_forward(client, args).await,
        NetworkCommand::Forward(ForwardCommand::Remove(args)) => remove_forward(client, args).await,
    }
}

fn network_path(name: &str) -> String {
    format!("{API}/networks/{}", encode(name))
}

async fn create(client: &Client, args: &NetworkCreateArgs) -> Result<()> {
    let req = CreateNetworkRequest {
        name: args.name.clone(),
        kind: match args.kind {
            NetworkTypeArg::Nat => NetworkType::Nat,
            NetworkTypeArg::Isolated => NetworkType::Isolated,
            NetworkTypeArg::Bridge => NetworkType::Bridge,
        },
        subnet: args.subnet.clone(),
        dhcp: args.dhcp,
        bridge: args.bridge.clone(),
    };
    let net: Network = client.post(&format!("{API}/networks"), &req).await?;
    emit(args.output.output, &net, |n| {
        let mut out = format!(
            "created network {}: {} on bridge {}{}\n",
            n.spec.name,
            n.spec.kind.as_str(),
            n.spec.bridge,
            n.spec
                .subnet
                .as_deref()
                .map(|s| format!(", {s}"))
                .unwrap_or_default()
        );
        warnings(&mut out, &n.status.warnings);
        out
    })
}

fn protocol(p: ProtocolArg) -> Protocol {
    match p {
        ProtocolArg::Tcp => Protocol::Tcp,
        ProtocolArg::Udp => Protocol::Udp,
    }
}

async fn add_forward(client: &Client, args: &ForwardAddArgs) -> Result<()> {
    let req = AddForwardRequest {
        protocol: protocol(args.protocol),
        host_port: args.host_port,
        vm: args.target.0.clone(),
        guest_port: args.target.1,
    };
    let path = format!("{}/forwards", network_path(&args.network));
    let net: Network = client.post(&path, &req).await?;
    emit(args.output.output, &net, |_| {
        format!(
            "forwarding host port {}/{} to {}:{}\n",
            req.host_port,
            req.protocol.as_str(),
            req.vm,
            req.guest_port
        )
    })
}

async fn remove_forward(client: &Client, args: &ForwardRemoveArgs) -> Result<()> {
    let p = protocol(args.protocol);
    let path = format!(
        "{}/forwards/{}/{}",
        network_path(&args.network),
        p.as_str(),
        args.host_port
    );
    let _: Network = client.delete(&path).await?;
    print_out(format!("removed the forward of {}/{}\n", args.host_port, p.as_str()).as_bytes())
}

pub fn list_table(nets: &[Network]) -> String {
    let mut t = table(&["NAME", "TYPE", "BRIDGE", "SUBNET", "DHCP", "STATE", "VMS"]);
    for n in nets {
        let state = match (n.status.bridge_up, n.status.warnings.is_empty()) {
            (false, _) => "down",
            (true, true) => "up",
            (true, false) => "up, warnings",
        };
        t.add_row(vec![
            n.spec.name.clone(),
            n.spec.kind.as_str().to_string(),
            n.spec.bridge.clone(),
            or_dash(n.spec.subnet.as_deref()),
            if n.spec.dhcp { "yes" } else { "no" }.to_string(),
            state.to_string(),
            n.used_by.len().to_string(),
        ]);
    }
    render(t)
}

pub fn page(n: &Network) -> String {
    let rows = vec![
        ("Name", n.spec.name.clone()),
        ("Type", n.spec.kind.as_str().to_string()),
        (
            "Bridge",
            format!(
                "{} ({})",
                n.spec.bridge,
                if n.status.bridge_up { "up" } else { "down" }
            ),
        ),
        ("Subnet", or_dash(n.spec.subnet.as_deref())),
        (
            "DHCP",
            match (n.spec.dhcp, n.status.dhcp_running) {
                (false, _) => "no".to_string(),
                (true, true) => "yes (dnsmasq running)".to_string(),
                (true, false) => "yes (dnsmasq NOT running)".to_string(),
            },
        ),
        (
            "Used by",
            if n.used_by.is_empty() {
                "-".into()
            } else {
                n.used_by.join(", ")
            },
        ),
    ];
    let mut out = details(&rows);
    if !n.spec.forwards.is_empty() {
        let mut t = table(&["HOST PORT", "PROTOCOL", "TO"]);
        for f in &n.spec.forwards {
            t.add_row(vec![
                f.host_port.to_string(),
                f.protocol.as_str().to_string(),
                format!("{}:{}", f.vm, f.guest_port),
            ]);
        }
        out.push_str("\nPort forwards:\n");
        out.push_str(&render(t));
    }
    if !n.leases.is_empty() {
        let mut t = table(&["MAC", "ADDRESS", "HOSTNAME"]);
        for l in &n.leases {
            t.add_row(vec![
                l.mac.clone(),
                l.address.to_string(),
                or_dash(l.hostname.as_deref()),
            ]);
        }
        out.push_str("\nDHCP leases:\n");
        out.push_str(&render(t));
    }
    warnings(&mut out, &n.status.warnings);
    out
}

fn warnings(out: &mut String, warnings: &[String]) {
    for w in warnings {
        out.push_str(&format!("\nWARNING: {w}\n"));
    }
}

pub async fn firewall(client: &Client, command: &FirewallCommand) -> Result<()> {
    let (vm, output) = match command {
        FirewallCommand::Add(a) => (&a.vm, a.output.output),
        FirewallCommand::List(a) | FirewallCommand::Clear(a) => (&a.vm, a.output.output),
        FirewallCommand::Remove(a) => (&a.vm, Format::Table),
    };
    let current: Vm = client.get(&vm_path(vm)).await?;
    let mut rules = current.spec.firewall.clone();
    match command {
        FirewallCommand::List(_) => return emit(output, &rules, |r| rules_table(r)),
        FirewallCommand::Add(a) => rules.push(rule(a)),
        FirewallCommand::Clear(_) => rules.clear(),
        FirewallCommand::Remove(a) => {
            if a.number == 0 || a.number > rules.len() {
                anyhow::bail!(crate::error::CliError::new(format!(
                    "VM '{vm}' has no rule {} (it has {}; see `corral firewall list {vm}`)",
                    a.number,
                    rules.len()
                )));
            }
            rules.remove(a.number - 1);
        }
    }
    let path = format!("{}/firewall", vm_path(vm));
    let updated: Vm = client.put(&path, &FirewallRules { rules }).await?;
    emit(output, &updated.spec.firewall, |r| rules_table(r))
}

fn rule(a: &FirewallAddArgs) -> FirewallRule {
    FirewallRule {
        action: match a.action {
            FirewallActionArg::Allow => FirewallAction::Allow,
            FirewallActionArg::Deny => FirewallAction::Deny,
        },
        direction: match a.direction {
            DirectionArg::In => Direction::In,
            DirectionArg::Out => Direction::Out,
        },
        protocol: a.protocol.map(|p| match p {
            FirewallProtocolArg::Tcp => FirewallProtocol::Tcp,
            FirewallProtocolArg::Udp => FirewallProtocol::Udp,
            FirewallProtocolArg::Icmp => FirewallProtocol::Icmp,
        }),
        port: a.port,
        cidr: a.cidr.clone(),
    }
}

pub fn rules_table(rules: &[FirewallRule]) -> String {
    if rules.is_empty() {
        return "no rules: all traffic is allowed\n".into();
    }
    let mut t = table(&["#", "ACTION", "DIRECTION", "PROTOCOL", "PORT", "CIDR"]);
    for (i, r) in rules.iter().enumerate() {
        t.add_row(vec![
            (i + 1).to_string(),
            match r.action {
                FirewallAction::Allow => "allow",
                FirewallAction::Deny => "deny",
            }
            .to_string(),
            match r.direction {
                Direction::In => "in",
                Direction::Out => "out",
            }
            .to_string(),
            r.protocol
                .map(|p| match p {
                    FirewallProtocol::Tcp => "tcp",
                    FirewallProtocol::Udp => "udp",
                    FirewallProtocol::Icmp => "icmp",
                })
                .unwrap_or("any")
                .to_string(),
            or_dash(r.port),
            r.cidr.clone().unwrap_or_else(|| "any".into()),
        ]);
    }
    render(t)
}

/// `corral nic add|list|remove`.
pub async fn nic(client: &Client, command: &NicCommand) -> Result<()> {
    match command {
        NicCommand::List(a) => {
            let vm: Vm = client.get(&vm_path(&a.vm)).await?;
            emit(a.output.output, &vm.spec.nics, |n| {
                super::vm_view::nics_table(n)
            })
        }
        NicCommand::Add(a) => {
            let Some(req) = &a.network.0 else {
                anyhow::bail!(crate::error::CliError::new(
                    "`--network none` adds no NIC".to_string()
                ));
            };
            let path = format!("{}/nics", vm_path(&a.vm));
            let nic: corral_api::Nic = client.post(&path, req).await?;
            emit(a.output.output, &nic, |n| format!("added NIC {}\n", n.mac))
        }
        NicCommand::Remove(a) => {
            let path = format!("{}/nics/{}", vm_path(&a.vm), encode(&a.mac));
            let _: serde_json::Value = client.delete(&path).await?;
            print_out(format!("removed NIC {}\n", a.mac).as_bytes())
        }
    }
}
