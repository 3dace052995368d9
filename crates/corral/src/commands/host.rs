//! `corral host info`: what this host is and how it runs VMs, including why it picked
//! its accelerator (the probe's verdict matters on hosts where KVM only looks usable).

use anyhow::Result;

use corral_api::{format_size, HostInfo};

use crate::client::{Client, API};
use crate::output::{details, emit, format_time, Format};

pub async fn info(client: &Client, format: Format) -> Result<()> {
    let host: HostInfo = client.get(&format!("{API}/host")).await?;
    emit(format, &host, host_details)?;
    // What the host lacks is an error to fix, said where errors go, whatever the format.
    for p in &host.problems {
        eprintln!(
            "error: {}; {} cannot work (hint: {})",
            p.error, p.affects, p.hint
        );
    }
    Ok(())
}

fn host_details(host: &HostInfo) -> String {
    details(&[
        ("Hostname", host.hostname.clone()),
        ("CPUs", host.cpus.to_string()),
        ("Memory", format_size(host.memory_bytes)),
        (
            "QEMU",
            format!("{} ({})", host.qemu_version, host.qemu_binary),
        ),
        (
            "qemu-img",
            host.qemu_img_version
                .clone()
                .unwrap_or_else(|| "not found".into()),
        ),
        ("Problems", problems(host)),
        ("Accelerator", host.accel.accel.as_str().to_string()),
        ("Accel reason", host.accel.reason.clone()),
        ("Accel chosen", accel_origin(host)),
        ("Confinement", host.confinement.clone()),
        ("Pool drivers", pool_drivers(host)),
        ("Network drivers", network_drivers(host)),
        (
            "VMs",
            format!("{} total, {} running", host.vms_total, host.vms_running),
        ),
        ("Remote API", remote_access(host)),
        ("State dir", host.state_dir.clone()),
        ("corrald", host.corral_version.clone()),
    ])
}

/// `none`, or each problem on its own line with what it breaks and the fix.
fn problems(host: &HostInfo) -> String {
    if host.problems.is_empty() {
        return "none".to_string();
    }
    host.problems
        .iter()
        .map(|p| format!("{} ({} cannot work; {})", p.error, p.affects, p.hint))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `dir: available; lvm-thin: unavailable (why)`.
fn pool_drivers(host: &HostInfo) -> String {
    let each: Vec<String> = host
        .storage_drivers
        .iter()
        .map(|d| match (&d.reason, d.available) {
            (_, true) => format!("{}: available", d.name),
            (Some(why), false) => format!("{}: unavailable ({why})", d.name),
            (None, false) => format!("{}: unavailable", d.name),
        })
        .collect();
    if each.is_empty() {
        "-".to_string()
    } else {
        each.join("; ")
    }
}

/// `nat: available (dhcp, outbound, forwards, firewall); bridge: …`.
fn network_drivers(host: &HostInfo) -> String {
    let each: Vec<String> = host
        .network_drivers
        .iter()
        .map(|d| {
            let c = &d.capabilities;
            let can: Vec<&str> = [
                (c.dhcp, "dhcp"),
                (c.outbound, "outbound"),
                (c.port_forwards, "forwards"),
                (c.firewall, "firewall"),
                (c.vlan, "vlan"),
            ]
            .into_iter()
            .filter_map(|(on, what)| on.then_some(what))
            .collect();
            match &d.reason {
                None => format!("{}: available ({})", d.name, can.join(", ")),
                Some(why) => format!("{}: unavailable ({why})", d.name),
            }
        })
        .collect();
    if each.is_empty() {
        "-".to_string()
    } else {
        each.join("; ")
    }
}

/// `https://addr (certificate sha256 …)`, or how to open it.
fn remote_access(host: &HostInfo) -> String {
    match (&host.listen[..], &host.tls_fingerprint) {
        ([], _) => "off (start corrald with --listen ADDR:PORT)".to_string(),
        (addrs, Some(fp)) => format!("{} (certificate sha256 {fp})", addrs.join(", ")),
        (addrs, None) => addrs.join(", "),
    }
}

/// `forced (--accel)` or `probed at <time>`: whether to trust it as measured.
fn accel_origin(host: &HostInfo) -> String {
    if host.accel.forced {
        return "forced (corrald --accel)".to_string();
    }
    match host.accel.probed_at {
        Some(at) => format!("probed at {}", format_time(at)),
        None => "probed".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_api::{Accel, AccelInfo, StorageDriverInfo};

    #[test]
    fn shows_accel_and_reason() {
        let host = HostInfo {
            hostname: "h1".into(),
            cpus: 2,
            memory_bytes: 24 << 30,
            qemu_binary: "/usr/bin/qemu-system-x86_64".into(),
            qemu_version: "7.2.0".into(),
            accel: AccelInfo {
                accel: Accel::Tcg,
                reason: "KVM guest hung in early boot".into(),
                forced: false,
                probed_at: Some(0),
            },
            corral_version: "0.1.0".into(),
            state_dir: "/var/lib/corral".into(),
            confinement: "uid corral-qemu, seccomp sandbox".into(),
            vms_total: 3,
            vms_running: 1,
            storage_drivers: vec![
                StorageDriverInfo {
                    name: "dir".into(),
                    available: true,
                    reason: None,
                },
                StorageDriverInfo {
                    name: "lvm-thin".into(),
                    available: false,
                    reason: Some("no device-mapper".into()),
                },
            ],
            network_drivers: vec![corral_api::NetworkDriverInfo {
                name: "nat".into(),
                capabilities: corral_api::NetworkCapabilities {
                    managed_bridge: true,
                    dhcp: true,
                    outbound: true,
                    port_forwards: true,
                    firewall: true,
                    vlan: false,
                },
                available: true,
                reason: None,
            }],
            listen: vec!["https://0.0.0.0:8443".into()],
            tls_fingerprint: Some("ab12".into()),
            qemu_img_version: None,
            problems: vec![corral_api::HostProblem {
                component: "qemu-img".into(),
                error: "cannot run qemu-img: No such file or directory".into(),
                affects: "disks".into(),
                hint: "install Debian's qemu-utils".into(),
            }],
        };
        // Column widths follow the longest key; compare with single spaces.
        let text = host_details(&host)
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(text.contains("Memory: 24 GiB"), "{text}");
        assert!(text.contains("Accelerator: tcg"), "{text}");
        assert!(text.contains("qemu-img: not found"), "{text}");
        assert!(
            text.contains("Problems: cannot run qemu-img: No such file or directory (disks cannot work; install Debian's qemu-utils)"),
            "{text}"
        );
        assert!(text.contains("KVM guest hung"), "{text}");
        assert!(text.contains("probed at 1970-01-01 00:00:00"), "{text}");
        assert!(text.contains("3 total, 1 running"), "{text}");
        assert!(
            text.contains("Remote API: https://0.0.0.0:8443 (certificate sha256 ab12)"),
            "{text}"
        );
        assert!(
            text.contains("Network drivers: nat: available (dhcp, outbound, forwards, firewall)"),
            "{text}"
        );
        assert!(
            text.contains("Pool drivers: dir: available; lvm-thin: unavailable (no device-mapper)"),
            "{text}"
        );
    }
}
