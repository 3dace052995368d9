//! `corral network …` (managed networks and port forwards) and `corral firewall …`
//! (a VM's rules).

use clap::{Args, Subcommand, ValueEnum};

use crate::output::OutputArgs;

const NETWORK_EXAMPLES: &str = "\
Examples:
  corral network create lab --type nat --subnet 10.0.7.1/24
  corral network create backend --type isolated
  corral network create lan --type bridge --bridge br0
  corral create web --network lab --image debian --start
  corral network forward add lab 2222 web:22
  corral network show lab";

#[derive(Debug, Subcommand)]
#[command(after_help = NETWORK_EXAMPLES)]
pub enum NetworkCommand {
    /// Define a network: nat (bridge + DHCP/DNS + masquerade), isolated, or an existing bridge
    Create(NetworkCreateArgs),
    /// List networks with their bridge, subnet and users
    #[command(visible_alias = "ls")]
    List(OutputArgs),
    /// Show a network: status, warnings, port forwards, DHCP leases
    Show(NetworkNameArgs),
    /// Delete a network no VM uses (a host bridge itself is never removed)
    #[command(visible_alias = "rm")]
    Delete(NetworkNameArgs),
    /// Port forwards from the host into VMs on a nat network
    #[command(subcommand)]
    Forward(ForwardCommand),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkTypeArg {
    Nat,
    Isolated,
    Bridge,
}

#[derive(Debug, Args)]
pub struct NetworkCreateArgs {
    /// Name of the network: 1-63 lowercase letters, digits and '-'.
    pub name: String,
    /// nat: a bridge with DHCP/DNS and masquerade; isolated: a bridge with no way out;
    /// bridge: an existing host bridge.
    #[arg(long = "type", value_enum, default_value_t = NetworkTypeArg::Nat)]
    pub kind: NetworkTypeArg,
    /// The host's address and prefix on the network, e.g. 10.0.7.1/24 [nat default: a free 10.161.X.1/24].
    #[arg(long)]
    pub subnet: Option<String>,
    /// Serve DHCP/DNS [default: on when the network has a subnet].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub dhcp: Option<bool>,
    /// bridge: the existing host bridge; nat/isolated: the bridge to make [default: corralN].
    #[arg(long)]
    pub bridge: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct NetworkNameArgs {
    pub name: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum ForwardCommand {
    /// Forward HOSTPORT on the host's addresses to VM:PORT
    Add(ForwardAddArgs),
    /// Remove the forward of HOSTPORT
    #[command(visible_alias = "rm")]
    Remove(ForwardRemoveArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    Tcp,
    Udp,
}

#[derive(Debug, Args)]
pub struct ForwardAddArgs {
    /// The nat network the VM is on.
    pub network: String,
    /// The host port.
    pub host_port: u16,
    /// VM:PORT, e.g. web:22.
    #[arg(value_parser = parse_target)]
    pub target: (String, u16),
    #[arg(long, value_enum, default_value_t = ProtocolArg::Tcp)]
    pub protocol: ProtocolArg,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ForwardRemoveArgs {
    pub network: String,
    pub host_port: u16,
    #[arg(long, value_enum, default_value_t = ProtocolArg::Tcp)]
    pub protocol: ProtocolArg,
}

fn parse_target(text: &str) -> Result<(String, u16), String> {
    let (vm, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("'{text}' is not VM:PORT (e.g. web:22)"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("'{port}' is not a port (1-65535)"))?;
    Ok((vm.to_string(), port))
}

const FIREWALL_EXAMPLES: &str = "\
Examples:
  corral firewall add web allow --protocol tcp --port 22 --cidr 10.0.0.0/8
  corral firewall add web deny --protocol tcp --port 22
  corral firewall list web
  corral firewall remove web 2
  corral firewall clear web

Rules are checked in order; the first that matches decides; what matches none is allowed.";

#[derive(Debug, Subcommand)]
#[command(after_help = FIREWALL_EXAMPLES)]
pub enum FirewallCommand {
    /// Append a rule to a VM's firewall
    Add(FirewallAddArgs),
    /// A VM's rules, numbered
    #[command(visible_alias = "ls")]
    List(FirewallVmArgs),
    /// Remove rule N (as `firewall list` numbers them)
    #[command(visible_alias = "rm")]
    Remove(FirewallRemoveArgs),
    /// Remove all of a VM's rules
    Clear(FirewallVmArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FirewallActionArg {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DirectionArg {
    In,
    Out,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FirewallProtocolArg {
    Tcp,
    Udp,
    Icmp,
}

#[derive(Debug, Args)]
pub struct FirewallAddArgs {
    pub vm: String,
    #[arg(value_enum)]
    pub action: FirewallActionArg,
    /// in: traffic to the VM; out: traffic from it.
    #[arg(long, value_enum, default_value_t = DirectionArg::In)]
    pub direction: DirectionArg,
    #[arg(long, value_enum)]
    pub protocol: Option<FirewallProtocolArg>,
    /// The VM's port (in) or the remote port (out); needs --protocol tcp or udp.
    #[arg(long)]
    pub port: Option<u16>,
    /// The remote side's addresses, e.g. 192.168.1.0/24.
    #[arg(long)]
    pub cidr: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct FirewallVmArgs {
    pub vm: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct FirewallRemoveArgs {
    pub vm: String,
    /// The rule's number, from 1.
    pub number: usize,
}

/// `corral nic …`: a VM's NICs (hot-plugged while it runs).
#[derive(Debug, Subcommand)]
pub enum NicCommand {
    /// Add a NIC (hot-plugged if the VM runs): the same SPEC as `create --network`
    Add(NicAddArgs),
    /// A VM's NICs
    #[command(visible_alias = "ls")]
    List(FirewallVmArgs),
    /// Remove the NIC with this MAC (unplugged if the VM runs: the guest must let go)
    #[command(visible_alias = "rm")]
    Remove(NicRemoveArgs),
}

#[derive(Debug, Args)]
pub struct NicAddArgs {
    pub vm: String,
    /// user, nat, network=NAME, bridge=BRIDGE, then ,mac=…,ip=…,vlan=…
    #[arg(long, value_name = "SPEC", value_parser = crate::create::parse_nic_spec)]
    pub network: crate::create::NicSpec,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct NicRemoveArgs {
    pub vm: String,
    pub mac: String,
}
