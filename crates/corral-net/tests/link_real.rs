//! Links, taps and the drivers for real, each test in a private network namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use common::{private_netns, sh};
use corral_api::network::{NetworkSpec, NetworkType};
use corral_net::{driver, link, tap, NetContext, NetError};

#[tokio::test(flavor = "current_thread")]
async fn ensure_bridge_is_idempotent_and_refuses_other_kinds() {
    private_netns();
    let addr = Some((Ipv4Addr::new(10, 50, 0, 1), 24));
    link::ensure_bridge("corraltest0", addr).await.unwrap();
    link::ensure_bridge("corraltest0", addr).await.unwrap();
    assert_eq!(
        link::link_kind("corraltest0").await.unwrap().as_deref(),
        Some("bridge")
    );
    assert!(link::link_up("corraltest0").await.unwrap());
    let shown = sh("ip -4 -o addr show dev corraltest0");
    assert_eq!(shown.matches("10.50.0.1/24").count(), 1, "{shown}");

    // Brought down and stripped (as after a manual change): ensure repairs it.
    sh("ip link set corraltest0 down && ip addr flush dev corraltest0");
    link::ensure_bridge("corraltest0", addr).await.unwrap();
    assert!(link::link_up("corraltest0").await.unwrap());
    assert!(sh("ip -4 -o addr show dev corraltest0").contains("10.50.0.1/24"));

    sh("ip link add notabridge type veth peer name notabridge-p");
    let err = link::ensure_bridge("notabridge", None).await.unwrap_err();
    assert!(
        matches!(
            &err,
            NetError::Invalid {
                field: "bridge",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("veth"), "{err}");

    link::delete_link("corraltest0").await.unwrap();
    link::delete_link("corraltest0").await.unwrap();
    assert_eq!(link::link_kind("corraltest0").await.unwrap(), None);
}

#[tokio::test(flavor = "current_thread")]
async fn a_tap_opens_attaches_and_vanishes_with_its_descriptor() {
    private_netns();
    link::ensure_bridge("corraltest1", None).await.unwrap();
    let id = uuid::Uuid::new_v4();
    let b = id.as_bytes();
    let name = tap::tap_name(&format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2]));
    let fd = tap::open_tap(&name).unwrap();
    // Close-on-exec: the QEMU launcher picks what QEMU inherits.
    let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
    assert_ne!(flags & libc::FD_CLOEXEC, 0);
    assert_eq!(
        link::link_kind(&name).await.unwrap().as_deref(),
        Some("tun")
    );
    let details = sh(&format!("ip -d link show {name}"));
    assert!(
        details.contains("tap") && details.contains("vnet_hdr"),
        "{details}"
    );

    link::attach(&name, "corraltest1", None).await.unwrap();
    assert_eq!(
        link::bridge_ports("corraltest1").await.unwrap(),
        vec![name.clone()]
    );
    assert!(link::link_up(&name).await.unwrap());
    // Again (a daemon restart re-plugging): no harm.
    link::attach(&name, "corraltest1", None).await.unwrap();

    // A second open of a tap in use is refused with a plain reason.
    let busy = tap::open_tap(&name).unwrap_err();
    assert!(busy.to_string().contains("in use"), "{busy}");

    drop(fd);
    assert_eq!(link::link_kind(&name).await.unwrap(), None);
    assert!(tap::open_tap("bad name").is_err());
}

#[tokio::test(flavor = "current_thread")]
async fn vlan_attach_without_vlan_filtering_is_unsupported() {
    private_netns();
    link::ensure_bridge("corraltest2", None).await.unwrap();
    sh("ip link add vport type veth peer name vport-p");
    let err = link::attach("vport", "corraltest2", Some(10))
        .await
        .unwrap_err();
    let NetError::Unsupported { message, hint } = &err else {
        panic!("{err:?}");
    };
    assert!(message.contains("VLAN 10"), "{message}");
    assert!(!hint.is_empty());
    // Nothing was changed: the port is not on the bridge.
    assert!(link::bridge_ports("corraltest2").await.unwrap().is_empty());

    let err = link::attach("vport", "nosuchbridge", None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NetError::Invalid {
                field: "bridge",
                ..
            }
        ),
        "{err:?}"
    );
}

/// On a kernel with VLAN filtering, the port becomes an untagged member of its VLAN only.
#[tokio::test(flavor = "current_thread")]
async fn vlan_attach_on_a_filtering_bridge() {
    private_netns();
    if !link::vlan_filtering_supported() {
        eprintln!("skipped: this kernel has no bridge VLAN filtering");
        return;
    }
    sh("ip link add corraltest3 type bridge vlan_filtering 1 && ip link set corraltest3 up");
    sh("ip link add vport type veth peer name vport-p");
    link::attach("vport", "corraltest3", Some(10))
        .await
        .unwrap();
    let vlans = sh("bridge -j vlan show dev vport");
    assert!(vlans.contains("\"vlan\":10"), "{vlans}");
    assert!(!vlans.contains("\"vlan\":1,"), "{vlans}");
}

#[tokio::test(flavor = "current_thread")]
async fn host_subnets_include_loopback_and_routes() {
    private_netns();
    sh("ip link add up0 type veth peer name up0-p && ip addr add 10.77.1.2/16 dev up0 && ip link set up0 up && ip link set up0-p up");
    sh("ip route add 172.30.0.0/20 via 10.77.0.1 && ip route add default via 10.77.0.1");
    let subnets = link::host_subnets().await.unwrap();
    assert!(
        subnets.contains(&(Ipv4Addr::new(127, 0, 0, 1), 8)),
        "{subnets:?}"
    );
    assert!(
        subnets.contains(&(Ipv4Addr::new(10, 77, 1, 2), 16)),
        "{subnets:?}"
    );
    assert!(
        subnets.contains(&(Ipv4Addr::new(172, 30, 0, 0), 20)),
        "{subnets:?}"
    );
    assert!(
        subnets.iter().all(|s| s.1 > 0),
        "default routes are left out"
    );
}

fn spec(
    name: &str,
    kind: NetworkType,
    bridge: &str,
    subnet: Option<&str>,
    dhcp: bool,
) -> NetworkSpec {
    NetworkSpec {
        name: name.into(),
        kind,
        bridge: bridge.into(),
        subnet: subnet.map(String::from),
        dhcp,
        forwards: vec![],
    }
}

#[tokio::test(flavor = "current_thread")]
async fn drivers_refuse_overlapping_subnets_and_taken_names() {
    private_netns();
    sh("ip link add up0 type veth peer name up0-p && ip addr add 10.77.1.2/16 dev up0 && ip link set up0 up");
    let nat = driver("nat").unwrap();
    let err = nat
        .check(&spec(
            "n",
            NetworkType::Nat,
            "corral9",
            Some("10.77.5.1/24"),
            true,
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            NetError::Invalid {
                field: "subnet",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("10.77.0.0/16"), "{err}");
    let err = nat
        .check(&spec(
            "n",
            NetworkType::Nat,
            "corral9",
            Some("127.1.0.1/24"),
            true,
        ))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("127.0.0.0/8"), "{err}");
    let err = nat
        .check(&spec(
            "n",
            NetworkType::Nat,
            "up0",
            Some("10.88.0.1/24"),
            true,
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NetError::Invalid {
                field: "bridge",
                ..
            }
        ),
        "{err:?}"
    );
    let err = nat
        .check(&spec(
            "n",
            NetworkType::Nat,
            "corral9",
            Some("10.88.0.0/24"),
            true,
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NetError::Invalid {
                field: "subnet",
                ..
            }
        ),
        "{err:?}"
    );
    nat.check(&spec(
        "n",
        NetworkType::Nat,
        "corral9",
        Some("10.88.0.1/24"),
        true,
    ))
    .await
    .unwrap();

    let host = driver("bridge").unwrap();
    let err = host
        .check(&spec("h", NetworkType::Bridge, "nosuchbr", None, false))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NetError::Invalid {
                field: "bridge",
                ..
            }
        ),
        "{err:?}"
    );
    let err = host
        .check(&spec("h", NetworkType::Bridge, "up0", None, false))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a bridge"), "{err}");
}

#[tokio::test(flavor = "current_thread")]
async fn isolated_and_host_bridge_drivers_ensure_status_teardown() {
    private_netns();
    let dir = tempfile::tempdir().unwrap();
    let ctx = NetContext {
        dir: dir.path().join("iso"),
    };
    let iso = driver("isolated").unwrap();
    let s = spec("iso", NetworkType::Isolated, "corraliso", None, false);
    iso.check(&s).await.unwrap();
    iso.ensure(&s, &ctx).await.unwrap();
    iso.ensure(&s, &ctx).await.unwrap();
    let st = iso.status(&s, &ctx).await;
    assert!(st.bridge_up && !st.dhcp_running, "{st:?}");
    assert!(iso.leases(&ctx).is_empty());
    let r = corral_net::driver::Reservation {
        mac: "52:54:00:00:00:01".into(),
        ip: Ipv4Addr::new(10, 1, 1, 1),
        name: "vm".into(),
    };
    assert!(iso.set_reservations(&s, &ctx, &[r]).await.is_err());

    // The same bridge as a host bridge network: used, never changed or removed.
    let host = driver("bridge").unwrap();
    let hs = spec("hb", NetworkType::Bridge, "corraliso", None, false);
    host.check(&hs).await.unwrap();
    let hctx = NetContext {
        dir: dir.path().join("hb"),
    };
    host.ensure(&hs, &hctx).await.unwrap();
    host.teardown(&hs, &hctx).await.unwrap();
    assert!(host.status(&hs, &hctx).await.bridge_up);

    iso.teardown(&s, &ctx).await.unwrap();
    assert_eq!(link::link_kind("corraliso").await.unwrap(), None);
    assert!(!ctx.dir.exists());
    assert!(!iso.status(&s, &ctx).await.bridge_up);
}

#[test]
fn the_registry_knows_every_driver() {
    for name in corral_net::DRIVERS {
        let d = driver(name).unwrap();
        assert!(d.capabilities().firewall, "{name}");
    }
    assert!(driver("macvtap").is_none());
    assert!(driver("nat").unwrap().capabilities().port_forwards);
    assert!(!driver("isolated").unwrap().capabilities().outbound);
    let vlan = driver("bridge").unwrap().capabilities().vlan;
    assert_eq!(vlan, link::vlan_filtering_supported());
}
