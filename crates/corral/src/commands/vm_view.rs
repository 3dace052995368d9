//! How a VM looks to people: the `list` table and the `show` page.

use corral_api::cloud_init::UserDataKind;
use corral_api::{format_size, CloudInit, Disk, Event, Nic, SshPublicKey, Vm, VmAddress, VmState};

use crate::output::{details, format_time, format_time_ms, format_uptime, or_dash, render, table};

/// `corral list`: one row per VM.
pub fn list_table(vms: &[Vm]) -> String {
    let mut t = table(&[
        "NAME", "STATE", "IP", "VCPUS", "MEMORY", "DISKS", "UPTIME", "PID",
    ]);
    for vm in vms {
        t.add_row(vec![
            vm.spec.name.clone(),
            vm.status.state.as_str().to_string(),
            or_dash(vm.addresses.first().map(|a| a.address.as_str())),
            vm.spec.vcpus.to_string(),
            format_size(vm.spec.memory_mib << 20),
            vm.spec.disks.len().to_string(),
            uptime(vm),
            or_dash(vm.status.pid),
        ]);
    }
    render(t)
}

/// `corral show`: the details, then disks, NICs and recent events as indented tables.
pub fn show(vm: &Vm) -> String {
    let mut out = details(&summary_rows(vm));
    section(&mut out, "Disks", vm.spec.disks.is_empty(), || {
        disks_table(&vm.spec.disks)
    });
    section(&mut out, "NICs", vm.spec.nics.is_empty(), || {
        nics_table(&vm.spec.nics)
    });
    section(&mut out, "Addresses", vm.addresses.is_empty(), || {
        addresses_table(&vm.addresses)
    });
    if let Some(ci) = &vm.spec.cloud_init {
        section(&mut out, "Cloud-init", false, || {
            cloud_init_details(ci, &vm.spec.name)
        });
    }
    section(&mut out, "Recent events", vm.events.is_empty(), || {
        events_table(&vm.events)
    });
    out
}

fn summary_rows(vm: &Vm) -> Vec<(&'static str, String)> {
    let (spec, status) = (&vm.spec, &vm.status);
    let mut rows = vec![
        ("Name", spec.name.clone()),
        ("UUID", spec.uuid.to_string()),
        ("State", status.state.as_str().to_string()),
    ];
    if let Some(reason) = &status.reason {
        rows.push(("Reason", reason.clone()));
    }
    rows.extend([
        ("Uptime", uptime(vm)),
        ("PID", or_dash(status.pid)),
        ("Accelerator", or_dash(status.accel.as_deref())),
        ("Guest agent", guest_agent(vm)),
        ("Machine", spec.machine.as_str().to_string()),
        ("vCPUs", spec.vcpus.to_string()),
        ("Memory", format_size(spec.memory_mib << 20)),
        ("Created", format_time(vm.created_at)),
    ]);
    if let Some(cdrom) = &spec.cdrom {
        rows.push(("CD-ROM", cdrom.clone()));
    }
    if let Some(boot) = &spec.kernel {
        rows.push(("Kernel", boot.kernel.clone()));
        rows.push(("Initrd", or_dash(boot.initrd.as_deref())));
        rows.push(("Cmdline", or_dash(boot.cmdline.as_deref())));
    }
    rows
}

/// Appends `Title:` and an indented table, or `Title: none` when there is nothing.
fn section(out: &mut String, title: &str, empty: bool, body: impl FnOnce() -> String) {
    out.push('\n');
    if empty {
        out.push_str(&format!("{title}: none\n"));
        return;
    }
    out.push_str(&format!("{title}:\n"));
    for line in body().lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
}

/// Disks in guest order. ID is the disk's stable name (it survives other disks being
/// detached, unlike a position); VOLUME is `-` for files attached by path; PATH is the
/// active image file.
fn disks_table(disks: &[Disk]) -> String {
    let mut t = table(&[
        "ID",
        "VOLUME",
        "PATH",
        "FORMAT",
        "SIZE",
        "OWNERSHIP",
        "MODE",
    ]);
    for disk in disks {
        t.add_row(vec![
            disk.id.clone(),
            or_dash(disk.volume.as_deref()),
            disk.path.clone(),
            disk.format.as_str().to_string(),
            format_size(disk.size_bytes),
            if disk.owned { "owned" } else { "attached" }.to_string(),
            if disk.read_only { "ro" } else { "rw" }.to_string(),
        ]);
    }
    render(t)
}

/// What the guest is provisioned with; keys by fingerprint and comment, as
/// `ssh-keygen -l` shows them.
fn cloud_init_details(ci: &CloudInit, vm_name: &str) -> String {
    let keys: Vec<String> = ci
        .ssh_authorized_keys
        .iter()
        .map(|k| match SshPublicKey::parse(k) {
            Ok(key) => {
                let comment = key.comment.as_deref().unwrap_or("no comment");
                format!("{} {comment} ({})", key.fingerprint(), key.kind)
            }
            Err(_) => "(unreadable key)".to_string(),
        })
        .collect();
    let user_data = match &ci.user_data {
        None => "generated".to_string(),
        Some(own) => {
            let kind = match UserDataKind::of(own) {
                Some(UserDataKind::Script) => "script",
                Some(UserDataKind::Mime) => "MIME",
                _ => "cloud-config",
            };
            format!(
                "generated + yours ({kind}, {})",
                format_size(own.len() as u64)
            )
        }
    };
    details(&[
        (
            "User",
            ci.user
                .clone()
                .unwrap_or_else(|| "- (keys go to the image's default user)".into()),
        ),
        (
            "Hostname",
            ci.hostname
                .clone()
                .unwrap_or_else(|| format!("{vm_name} (the VM's name)")),
        ),
        (
            "SSH keys",
            if keys.is_empty() {
                "none".to_string()
            } else {
                format!("{}\n{}", keys.len(), keys.join("\n"))
            },
        ),
        ("User-data", user_data),
        (
            "Network config",
            match &ci.network_config {
                Some(c) => format!("yours ({})", format_size(c.len() as u64)),
                None => "the image's default (DHCP)".to_string(),
            },
        ),
    ])
}

pub fn nics_table(nics: &[Nic]) -> String {
    let mut t = table(&["#", "KIND", "SOURCE", "MAC", "RESERVED IP", "VLAN"]);
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for (i, nic) in nics.iter().enumerate() {
        t.add_row(vec![
            i.to_string(),
            nic.kind.as_str().to_string(),
            or_dash(nic.source.clone()),
            nic.mac.clone(),
            or_dash(nic.ip.map(|a| a.to_string())),
            or_dash(nic.vlan.map(|v| v.to_string())),
        ]);
    }
    render(t)
}

/// Whether a guest agent answers for the running guest.
fn guest_agent(vm: &Vm) -> String {
    match (vm.guest_agent, vm.status.state) {
        (true, _) => "connected".into(),
        (false, VmState::Stopped) => "-".into(),
        (false, _) => "not connected".into(),
    }
}

/// The guest's IP addresses, with the NIC (by MAC) and who reported them.
fn addresses_table(addresses: &[VmAddress]) -> String {
    let mut t = table(&["ADDRESS", "MAC", "SOURCE"]);
    for a in addresses {
        t.add_row(vec![
            format!("{}/{}", a.address, a.prefix),
            or_dash(a.mac.as_deref()),
            a.source.as_str().to_string(),
        ]);
    }
    render(t)
}

/// Events as a table; shared with `corral events`, which adds the ID and VM columns.
pub fn events_table(events: &[Event]) -> String {
    let mut t = table(&["TIME", "KIND", "MESSAGE"]);
    for e in events {
        t.add_row(vec![
            format_time_ms(e.time_ms),
            e.kind.clone(),
            e.message.clone(),
        ]);
    }
    render(t)
}

/// Uptime while QEMU runs, `-` otherwise.
fn uptime(vm: &Vm) -> String {
    match vm.uptime_secs {
        Some(secs) if vm.status.state != VmState::Stopped => format_uptime(secs),
        _ => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_api::{DiskFormat, Machine, NetworkKind, VmSpec, VmStatus};

    fn sample() -> Vm {
        Vm {
            spec: VmSpec {
                name: "web".into(),
                uuid: Default::default(),
                memory_mib: 512,
                vcpus: 2,
                machine: Machine::Pc,
                firmware: Default::default(),
                nvram: None,
                disks: vec![
                    Disk {
                        id: "disk0".into(),
                        volume: Some("web-disk0".into()),
                        path: "/var/lib/corral/pools/default/web-disk0.qcow2".into(),
                        format: DiskFormat::Qcow2,
                        size_bytes: 2 << 30,
                        owned: true,
                        read_only: false,
                    },
                    Disk {
                        id: "disk2".into(),
                        volume: None,
                        path: "/srv/base.raw".into(),
                        format: DiskFormat::Raw,
                        size_bytes: 1 << 30,
                        owned: false,
                        read_only: true,
                    },
                ],
                cdrom: None,
                kernel: None,
                nics: vec![Nic {
                    kind: NetworkKind::Network,
                    source: Some("default".into()),
                    mac: "52:54:00:12:34:56".into(),
                    ip: Some("10.161.0.2".parse().unwrap()),
                    vlan: None,
                }],
                firewall: vec![],
                cloud_init: None,
            },
            status: VmStatus {
                state: VmState::Running,
                pid: Some(4242),
                started_at: Some(1_700_000_000),
                reason: None,
                accel: Some("tcg".into()),
            },
            uptime_secs: Some(3_723),
            created_at: 1_700_000_000,
            events: vec![Event {
                id: 1,
                time_ms: 1_700_000_000_000,
                vm: Some("web".into()),
                kind: "state".into(),
                message: "running".into(),
            }],
            guest_agent: true,
            addresses: vec![VmAddress {
                address: "10.0.2.15".into(),
                prefix: 24,
                mac: Some("52:54:00:12:34:56".into()),
                source: corral_api::AddressSource::Agent,
            }],
        }
    }

    #[test]
    fn list_row() {
        let text = list_table(&[sample()]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME"));
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "web",
                "running",
                "10.0.2.15",
                "2",
                "512",
                "MiB",
                "2",
                "1h",
                "2m",
                "3s",
                "4242"
            ]
        );
    }

    #[test]
    fn disks_show_id_and_volume() {
        let text = disks_table(&sample().spec.disks);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[0],
            [
                "ID",
                "VOLUME",
                "PATH",
                "FORMAT",
                "SIZE",
                "OWNERSHIP",
                "MODE"
            ]
        );
        assert_eq!(
            rows[1],
            [
                "disk0",
                "web-disk0",
                "/var/lib/corral/pools/default/web-disk0.qcow2",
                "qcow2",
                "2",
                "GiB",
                "owned",
                "rw"
            ]
        );
        assert_eq!(
            rows[2],
            [
                "disk2",
                "-",
                "/srv/base.raw",
                "raw",
                "1",
                "GiB",
                "attached",
                "ro"
            ]
        );
    }

    #[test]
    fn cloud_init_section() {
        let mut vm = sample();
        assert!(!show(&vm).contains("Cloud-init"));
        vm.spec.cloud_init = Some(CloudInit {
            ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKBUasJSkMe8TtrH7UEKsS9dBdmwIEzYpnFf2N/Btl1s alice@example".into()],
            user_data: Some("#!/bin/sh\ntrue\n".into()),
            ..Default::default()
        });
        let text = show(&vm);
        assert!(text.contains("Cloud-init:\n  User:"), "{text}");
        assert!(text.contains("web (the VM's name)"), "{text}");
        assert!(
            text.contains(
                "SHA256:ihu1a+HA77+NGmD+2ilzh1fojGMuSfriuFeZcTGj7Yo alice@example (ssh-ed25519)"
            ),
            "{text}"
        );
        assert!(text.contains("generated + yours (script, 15 B)"), "{text}");
        assert!(!text.contains("AAAAC3"), "no key material: {text}");
    }

    #[test]
    fn show_page() {
        let text = show(&sample());
        assert!(text.contains("State:"), "{text}");
        assert!(text.contains("Uptime:       1h 2m 3s"), "{text}");
        assert!(text.contains("Disks:\n  ID     VOLUME     PATH "), "{text}");
        assert!(text.contains("owned"), "{text}");
        assert!(text.contains("52:54:00:12:34:56"), "{text}");
        assert!(text.contains("Guest agent:  connected"), "{text}");
        assert!(
            text.contains("Addresses:\n  ADDRESS       MAC                SOURCE\n  10.0.2.15/24"),
            "{text}"
        );
        assert!(
            text.contains("2023-11-14 22:13:20  state  running"),
            "{text}"
        );
    }
}
