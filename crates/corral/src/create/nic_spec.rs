//! `--network` specs, like virt-install's: `user`, `nat` (the `default` NAT network),
//! `network=NAME`, `bridge=BR` or a bare network name, each with `mac=`, `ip=` and
//! `vlan=` options; `none` for no NIC.
//!
//! A clap value parser: mistakes are usage errors naming `--network`.

use corral_api::{NetworkKind, NicRequest, DEFAULT_NETWORK};

const HINT: &str = "use user, nat, network=NAME, bridge=BRIDGE or none, then ,mac=…,ip=…,vlan=…";

/// One `--network`: `None` for `none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec(pub Option<NicRequest>);

pub fn parse_nic_spec(spec: &str) -> Result<NicSpec, String> {
    let mut items = spec.split(',');
    let head = items.next().unwrap_or_default();
    let mut nic = match head.split_once('=') {
        None if head == "none" => {
            return match items.next() {
                None => Ok(NicSpec(None)),
                Some(_) => Err("'none' takes no options".into()),
            }
        }
        None if head == "user" => NicRequest::user(),
        None if head == "nat" => on(NetworkKind::Network, DEFAULT_NETWORK),
        None if !head.is_empty() => on(NetworkKind::Network, head),
        Some(("network", name)) if !name.is_empty() => on(NetworkKind::Network, name),
        Some(("bridge", name)) if !name.is_empty() => on(NetworkKind::Bridge, name),
        _ => return Err(format!("'{head}' is not a network ({HINT})")),
    };
    for item in items {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("'{item}' is not key=value ({HINT})"))?;
        match key {
            "mac" => nic.mac = Some(value.to_ascii_lowercase()),
            "ip" => {
                nic.ip = Some(
                    value
                        .parse()
                        .map_err(|_| format!("ip={value} is not an IPv4 address"))?,
                )
            }
            "vlan" => {
                nic.vlan = Some(
                    value
                        .parse()
                        .map_err(|_| format!("vlan={value} is not a VLAN id (1-4094)"))?,
                )
            }
            other => return Err(format!("unknown option '{other}' (use mac, ip or vlan)")),
        }
    }
    nic.validate("--network")
        .map_err(|e| format!("{} ({})", e.message, e.hint.unwrap_or_default()))?;
    Ok(NicSpec(Some(nic)))
}

fn on(kind: NetworkKind, source: &str) -> NicRequest {
    NicRequest {
        kind,
        source: Some(source.to_string()),
        ..NicRequest::user()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(parse_nic_spec("none").unwrap(), NicSpec(None));
        let nat = parse_nic_spec("nat").unwrap().0.unwrap();
        assert_eq!(nat.kind, NetworkKind::Network);
        assert_eq!(nat.source.as_deref(), Some("default"));
        let lab = parse_nic_spec("lab,ip=10.0.7.20,mac=52:54:00:AA:BB:CC")
            .unwrap()
            .0
            .unwrap();
        assert_eq!(lab.source.as_deref(), Some("lab"));
        assert_eq!(lab.ip, Some("10.0.7.20".parse().unwrap()));
        assert_eq!(lab.mac.as_deref(), Some("52:54:00:aa:bb:cc"));
        let br = parse_nic_spec("bridge=br0,vlan=10").unwrap().0.unwrap();
        assert_eq!((br.kind, br.vlan), (NetworkKind::Bridge, Some(10)));
        assert_eq!(
            parse_nic_spec("user").unwrap().0.unwrap().kind,
            NetworkKind::User
        );
    }

    #[test]
    fn mistakes_name_the_problem() {
        assert!(parse_nic_spec("none,mac=52:54:00:00:00:01").is_err());
        assert!(parse_nic_spec("bridge=")
            .unwrap_err()
            .contains("not a network"));
        assert!(parse_nic_spec("user,ip=10.0.0.2")
            .unwrap_err()
            .contains("managed network"));
        assert!(parse_nic_spec("nat,vlan=5000")
            .unwrap_err()
            .contains("VLAN"));
        assert!(parse_nic_spec("nat,mtu=9000")
            .unwrap_err()
            .contains("unknown option"));
        assert!(parse_nic_spec("nat,mac=01:00:00:00:00:01")
            .unwrap_err()
            .contains("unicast"));
    }
}
