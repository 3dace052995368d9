//! Links and addresses: bridges Corral makes, ports attached to bridges, the host's
//! routes (to refuse overlapping subnets).
//!
//! Everything here speaks rtnetlink (the `rtnetlink` crate), like `ip` and `bridge` do,
//! including bridge VLAN membership; no tool is run. Each call opens its own netlink
//! socket, so it acts in the network namespace of the thread that calls it (tests run
//! each in a private namespace).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    BridgeVlanInfoFlags, InfoBridge, InfoData, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteType};
use rtnetlink::{Handle, LinkBridge, LinkBridgeVlan, LinkUnspec, RouteMessageBuilder};

use crate::{Cidr, NetError};

/// What kind of link `name` is (`Some("bridge")`, `Some("tun")`, `Some("veth")`, …;
/// `Some("device")` for links without a kind, such as physical NICs), `None` if absent.
pub async fn link_kind(name: &str) -> Result<Option<String>, NetError> {
    let h = connect()?;
    Ok(find(&h, name).await?.map(|l| kind_of(&l)))
}

/// Whether link `name` exists and is administratively up.
pub async fn link_up(name: &str) -> Result<bool, NetError> {
    let h = connect()?;
    Ok(find(&h, name)
        .await?
        .is_some_and(|l| l.header.flags.contains(LinkFlags::Up)))
}

/// The bridge `name`'s ports (links whose master it is).
pub async fn bridge_ports(name: &str) -> Result<Vec<String>, NetError> {
    let h = connect()?;
    let Some(bridge) = find(&h, name).await? else {
        return Ok(Vec::new());
    };
    let mut links = h.link().get().execute();
    let mut ports = Vec::new();
    while let Some(l) = links.try_next().await.map_err(nl("listing links"))? {
        let master = l.attributes.iter().find_map(|a| match a {
            LinkAttribute::Controller(i) => Some(*i),
            _ => None,
        });
        if master == Some(bridge.header.index) {
            ports.extend(name_of(&l));
        }
    }
    Ok(ports)
}

/// Makes bridge `name` (if absent) with `address` (if given), up. Idempotent: an
/// existing bridge gets the address if it lacks it; a link of another kind with that
/// name is refused ([`NetError::Invalid`], field `bridge`).
pub async fn ensure_bridge(name: &str, address: Option<Cidr>) -> Result<(), NetError> {
    check_ifname(name, "bridge")?;
    let h = connect()?;
    let link = match find(&h, name).await? {
        Some(l) => l,
        None => {
            let made = h.link().add(LinkBridge::new(name).build()).execute().await;
            match made {
                Ok(()) => {}
                // Made meanwhile by someone else: fine, checked below like any other.
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => return Err(nl(&format!("making bridge {name}"))(e)),
            }
            find(&h, name).await?.ok_or_else(|| NetError::Io {
                what: format!("making bridge {name}"),
                source: std::io::Error::other("the bridge vanished right after it was made"),
            })?
        }
    };
    let kind = kind_of(&link);
    if kind != "bridge" {
        return Err(NetError::Invalid {
            field: "bridge",
            message: format!("{name} exists and is a {kind} link, not a bridge"),
            hint: "choose another bridge name".into(),
        });
    }
    let index = link.header.index;
    if let Some((ip, prefix)) = address {
        ensure_address(&h, name, index, ip, prefix).await?;
    }
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl(&format!("bringing {name} up")))
}

/// Adds `ip/prefix` to link `index` unless it has it; the same address with another
/// prefix is replaced.
async fn ensure_address(
    h: &Handle,
    name: &str,
    index: u32,
    ip: Ipv4Addr,
    prefix: u8,
) -> Result<(), NetError> {
    for a in addresses(h, Some(index)).await? {
        if address_of(&a) == Some(ip) {
            if a.header.prefix_len == prefix {
                return Ok(());
            }
            h.address()
                .del(a)
                .execute()
                .await
                .map_err(nl(&format!("removing the old prefix of {ip} on {name}")))?;
        }
    }
    match h
        .address()
        .add(index, IpAddr::V4(ip), prefix)
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(nl(&format!("adding {ip}/{prefix} to {name}"))(e)),
    }
}

/// Removes a link if it exists.
pub async fn delete_link(name: &str) -> Result<(), NetError> {
    let h = connect()?;
    let Some(link) = find(&h, name).await? else {
        return Ok(());
    };
    match h.link().del(link.header.index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
        Err(e) => Err(nl(&format!("removing {name}"))(e)),
    }
}

/// Puts `port` on `bridge` and up; with `vlan`, as an untagged member of that VLAN only
/// (needs a VLAN-filtering bridge: [`NetError::Unsupported`] with a hint otherwise).
pub async fn attach(port: &str, bridge: &str, vlan: Option<u16>) -> Result<(), NetError> {
    let h = connect()?;
    let Some(br) = find(&h, bridge).await? else {
        return Err(NetError::Invalid {
            field: "bridge",
            message: format!("bridge {bridge} does not exist"),
            hint: "create it on the host, or check the network's bridge".into(),
        });
    };
    if kind_of(&br) != "bridge" {
        return Err(NetError::Invalid {
            field: "bridge",
            message: format!("{bridge} is a {} link, not a bridge", kind_of(&br)),
            hint: "name a Linux bridge".into(),
        });
    }
    let Some(p) = find(&h, port).await? else {
        return Err(NetError::Io {
            what: format!("attaching {port} to {bridge}"),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such link"),
        });
    };
    let (bidx, pidx) = (br.header.index, p.header.index);
    let what = format!("attaching {port} to {bridge}");
    if let Some(vid) = vlan {
        if !bridge_info(&br)
            .iter()
            .any(|i| matches!(i, InfoBridge::VlanFiltering(true)))
        {
            return Err(vlan_unsupported(bridge, vid));
        }
    }
    h.link()
        .set(LinkUnspec::new_with_index(pidx).controller(bidx).build())
        .execute()
        .await
        .map_err(nl(&what))?;
    if let Some(vid) = vlan {
        set_port_vlan(&h, &br, pidx, vid).await.map_err(nl(&what))?;
    }
    h.link()
        .set(LinkUnspec::new_with_index(pidx).up().build())
        .execute()
        .await
        .map_err(nl(&what))
}

/// Makes port `pidx` an untagged member of `vid` only (`bridge vlan add dev PORT vid N
/// pvid untagged`, then the bridge's default VLAN removed), before the port goes up so
/// no frame passes on the default VLAN.
async fn set_port_vlan(
    h: &Handle,
    br: &LinkMessage,
    pidx: u32,
    vid: u16,
) -> Result<(), rtnetlink::Error> {
    let default_pvid = bridge_info(br)
        .iter()
        .find_map(|i| match i {
            InfoBridge::VlanDefaultPvid(v) => Some(*v),
            _ => None,
        })
        .unwrap_or(1);
    let flags = BridgeVlanInfoFlags::Pvid | BridgeVlanInfoFlags::Untagged;
    h.link()
        .set(LinkBridgeVlan::new(pidx).vlan(vid, flags).build())
        .execute()
        .await?;
    if default_pvid != 0 && default_pvid != vid {
        let del = LinkBridgeVlan::new(pidx)
            .vlan(default_pvid, BridgeVlanInfoFlags::empty())
            .build();
        match h.link().del_with_message(del).execute().await {
            Ok(()) => {}
            // Not a member (already removed, or the bridge has no default VLAN).
            Err(e) if matches!(errno(&e), Some(libc::ENOENT) | Some(libc::EINVAL)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn vlan_unsupported(bridge: &str, vid: u16) -> NetError {
    if vlan_filtering_supported() {
        NetError::Unsupported {
            message: format!(
                "bridge {bridge} does not filter VLANs, so a NIC cannot be put on VLAN {vid}"
            ),
            hint: format!(
                "turn VLAN filtering on (ip link set {bridge} type bridge vlan_filtering 1), \
                 or drop the NIC's vlan"
            ),
        }
    } else {
        NetError::Unsupported {
            message: format!(
                "this kernel cannot filter VLANs on bridges (no CONFIG_BRIDGE_VLAN_FILTERING), \
                 so a NIC cannot be put on VLAN {vid}"
            ),
            hint: "drop the NIC's vlan, or use a host bridge that carries only that VLAN".into(),
        }
    }
}

/// Whether this kernel can make VLAN-filtering bridges. Probed once, by making one in a
/// throwaway network namespace (so the host never sees it), then cached.
pub fn vlan_filtering_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        std::thread::spawn(probe_vlan_filtering)
            .join()
            .unwrap_or(false)
    })
}

/// Runs on a thread of its own: unshare(2) moves only this thread into the new
/// namespace, which disappears with the thread.
fn probe_vlan_filtering() -> bool {
    if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
        return false;
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return false;
    };
    rt.block_on(async {
        let Ok(h) = connect() else { return false };
        h.link()
            .add(LinkBridge::new("corral-probe").vlan_filtering(true).build())
            .execute()
            .await
            .is_ok()
    })
}

/// The host's IPv4 routes and addresses as subnets, to refuse overlaps: every address
/// (loopback's 127.0.0.0/8 included) and every route but default routes, from all
/// routing tables.
pub async fn host_subnets() -> Result<Vec<Cidr>, NetError> {
    let h = connect()?;
    let mut out: Vec<Cidr> = addresses(&h, None)
        .await?
        .iter()
        .filter_map(|a| address_of(a).map(|ip| (ip, a.header.prefix_len)))
        .collect();
    let mut routes = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(r) = routes.try_next().await.map_err(nl("listing routes"))? {
        let prefix = r.header.destination_prefix_length;
        // Local and broadcast routes repeat the addresses; a default route overlaps
        // everything and says nothing about which subnets are in use.
        if prefix == 0
            || matches!(
                r.header.kind,
                RouteType::Local | RouteType::Broadcast | RouteType::Multicast
            )
        {
            continue;
        }
        let dest = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = dest {
            out.push((ip, prefix));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Turns on IPv4 forwarding (NAT networks need it), like libvirt does. Acts on the
/// network namespace of the calling thread.
pub fn enable_ip_forward() -> Result<(), NetError> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    let io = |source| NetError::Io {
        what: format!("turning on IPv4 forwarding ({PATH})"),
        source,
    };
    if std::fs::read_to_string(PATH).map_err(io)?.trim() == "1" {
        return Ok(());
    }
    std::fs::write(PATH, "1\n").map_err(io)
}

/// Whether two subnets overlap.
pub fn overlaps(a: Cidr, b: Cidr) -> bool {
    let mask = |p: u8| if p == 0 { 0 } else { u32::MAX << (32 - p) };
    let m = mask(a.1.min(b.1));
    u32::from(a.0) & m == u32::from(b.0) & m
}

/// The network address of a subnet.
pub fn network_of(c: Cidr) -> Ipv4Addr {
    let mask = if c.1 == 0 { 0 } else { u32::MAX << (32 - c.1) };
    Ipv4Addr::from(u32::from(c.0) & mask)
}

/// Refuses names Linux would refuse (or that would need quoting in an nftables rule):
/// 1 to 15 characters of letters, digits, `-`, `_`, `.`.
pub fn check_ifname(name: &str, field: &'static str) -> Result<(), NetError> {
    let ok = !name.is_empty()
        && name.len() <= corral_api::network::MAX_IFNAME
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(NetError::Invalid {
            field,
            message: format!("{name:?} is not a usable interface name"),
            hint: "1 to 15 letters, digits, '-', '_' or '.'".into(),
        })
    }
}

/// A netlink connection driven by a task on the current runtime; the socket belongs to
/// the calling thread's network namespace.
fn connect() -> Result<Handle, NetError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| NetError::Io {
        what: "opening a netlink socket".into(),
        source,
    })?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn find(h: &Handle, name: &str) -> Result<Option<LinkMessage>, NetError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl(&format!("looking up {name}"))(e)),
    }
}

async fn addresses(h: &Handle, index: Option<u32>) -> Result<Vec<AddressMessage>, NetError> {
    let mut req = h.address().get();
    if let Some(i) = index {
        req = req.set_link_index_filter(i);
    }
    let mut stream = req.execute();
    let mut out = Vec::new();
    while let Some(a) = stream.try_next().await.map_err(nl("listing addresses"))? {
        out.push(a);
    }
    Ok(out)
}

fn address_of(a: &AddressMessage) -> Option<Ipv4Addr> {
    // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on
    // point-to-point links); plain links carry both, equal.
    let local = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        })
    })
}

fn name_of(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn link_info(l: &LinkMessage) -> &[LinkInfo] {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::LinkInfo(i) => Some(i.as_slice()),
            _ => None,
        })
        .unwrap_or(&[])
}

fn kind_of(l: &LinkMessage) -> String {
    link_info(l)
        .iter()
        .find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k.to_string()),
            _ => None,
        })
        .unwrap_or_else(|| "device".into())
}

fn bridge_info(l: &LinkMessage) -> &[InfoBridge] {
    link_info(l)
        .iter()
        .find_map(|i| match i {
            LinkInfo::Data(InfoData::Bridge(b)) => Some(b.as_slice()),
            _ => None,
        })
        .unwrap_or(&[])
}

/// The errno of a kernel refusal.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// Wraps a netlink failure as [`NetError::Io`] with the kernel's errno, so the message
/// reads like `ip`'s ("making bridge corral0: Operation not permitted").
fn nl(what: &str) -> impl Fn(rtnetlink::Error) -> NetError + '_ {
    move |e| NetError::Io {
        what: what.to_string(),
        source: match &e {
            rtnetlink::Error::NetlinkError(m) => m.to_io(),
            other => std::io::Error::other(other.to_string()),
        },
    }
}
