//! `GET /metrics`: the Prometheus text exposition (format 0.0.4) of the latest samples.

use std::collections::BTreeMap;
use std::fmt::Write;

use corral_api::{HostSample, PoolUsage, VmSample};

use super::Counters;

/// The latest values, copied out of the collector.
pub struct Snapshot {
    pub host: Option<HostSample>,
    pub pools: Vec<PoolUsage>,
    pub by_state: BTreeMap<String, u64>,
    pub vms: Vec<(String, Counters, VmSample)>,
    pub ticks_per_sec: u64,
}

/// A per-VM counter: metric name, help text, and which raw counter it shows (a VM
/// without one has no series).
type CounterDef = (&'static str, &'static str, fn(&Counters) -> Option<u64>);

/// Label values escape `\`, `"` and newlines.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

pub fn render(snap: &Snapshot) -> String {
    let mut out = String::new();
    if let Some(h) = &snap.host {
        head(
            &mut out,
            "corral_host_cpu_percent",
            "gauge",
            "Busy share of all host CPUs, 0-100.",
        );
        let _ = writeln!(out, "corral_host_cpu_percent {}", h.cpu_percent);
        head(
            &mut out,
            "corral_host_memory_used_bytes",
            "gauge",
            "Host MemTotal minus MemAvailable.",
        );
        let _ = writeln!(out, "corral_host_memory_used_bytes {}", h.memory_used_bytes);
        head(
            &mut out,
            "corral_host_memory_total_bytes",
            "gauge",
            "Host MemTotal.",
        );
        let _ = writeln!(
            out,
            "corral_host_memory_total_bytes {}",
            h.memory_total_bytes
        );
    }
    head(
        &mut out,
        "corral_pool_used_bytes",
        "gauge",
        "Bytes used on a storage pool's filesystem.",
    );
    for p in &snap.pools {
        let _ = writeln!(
            out,
            "corral_pool_used_bytes{{pool=\"{}\"}} {}",
            esc(&p.name),
            p.used_bytes
        );
    }
    head(
        &mut out,
        "corral_pool_capacity_bytes",
        "gauge",
        "Size of a storage pool's filesystem.",
    );
    for p in &snap.pools {
        let _ = writeln!(
            out,
            "corral_pool_capacity_bytes{{pool=\"{}\"}} {}",
            esc(&p.name),
            p.capacity_bytes
        );
    }
    head(&mut out, "corral_vms", "gauge", "VMs by state.");
    for (state, n) in &snap.by_state {
        let _ = writeln!(out, "corral_vms{{state=\"{}\"}} {n}", esc(state));
    }
    let mut vms: Vec<_> = snap.vms.iter().collect();
    vms.sort_by(|a, b| a.0.cmp(&b.0));
    let tps = snap.ticks_per_sec.max(1) as f64;
    let counters: [CounterDef; 8] = [
        (
            "corral_vm_disk_read_bytes_total",
            "Bytes read from the VM's disks.",
            |c| Some(c.rd_bytes),
        ),
        (
            "corral_vm_disk_written_bytes_total",
            "Bytes written to the VM's disks.",
            |c| Some(c.wr_bytes),
        ),
        (
            "corral_vm_disk_read_ops_total",
            "Read operations on the VM's disks.",
            |c| Some(c.rd_ops),
        ),
        (
            "corral_vm_disk_write_ops_total",
            "Write operations on the VM's disks.",
            |c| Some(c.wr_ops),
        ),
        (
            "corral_vm_network_receive_bytes_total",
            "Bytes the guest received on tap NICs.",
            |c| Some(c.rx_bytes),
        ),
        (
            "corral_vm_network_transmit_bytes_total",
            "Bytes the guest sent on tap NICs.",
            |c| Some(c.tx_bytes),
        ),
        (
            "corral_vm_user_network_receive_bytes_total",
            "Bytes the guest received on user-mode (passt) NICs, as its guest agent counts them (reset by a guest reboot).",
            |c| c.user_net.map(|t| t.rx_bytes),
        ),
        (
            "corral_vm_user_network_transmit_bytes_total",
            "Bytes the guest sent on user-mode (passt) NICs, as its guest agent counts them (reset by a guest reboot).",
            |c| c.user_net.map(|t| t.tx_bytes),
        ),
    ];
    head(
        &mut out,
        "corral_vm_cpu_seconds_total",
        "counter",
        "CPU time used by the VM's QEMU process.",
    );
    for (name, c, _) in &vms {
        let _ = writeln!(
            out,
            "corral_vm_cpu_seconds_total{{vm=\"{}\"}} {}",
            esc(name),
            c.cpu_ticks as f64 / tps
        );
    }
    for (metric, help, get) in counters {
        head(&mut out, metric, "counter", help);
        for (name, c, _) in &vms {
            if let Some(v) = get(c) {
                let _ = writeln!(out, "{metric}{{vm=\"{}\"}} {v}", esc(name));
            }
        }
    }
    head(
        &mut out,
        "corral_vm_cpu_percent",
        "gauge",
        "CPU of the VM's QEMU process over the last interval, 100 = one host CPU.",
    );
    for (name, _, s) in &vms {
        let _ = writeln!(
            out,
            "corral_vm_cpu_percent{{vm=\"{}\"}} {}",
            esc(name),
            s.cpu_percent
        );
    }
    head(
        &mut out,
        "corral_vm_memory_used_bytes",
        "gauge",
        "Memory the VM uses (source label: balloon or rss).",
    );
    for (name, _, s) in &vms {
        let _ = writeln!(
            out,
            "corral_vm_memory_used_bytes{{vm=\"{}\",source=\"{}\"}} {}",
            esc(name),
            s.memory_source.as_str(),
            s.memory_used_bytes
        );
    }
    head(
        &mut out,
        "corral_vm_memory_total_bytes",
        "gauge",
        "Memory the guest sees (source balloon), else the memory configured for the VM.",
    );
    for (name, _, s) in &vms {
        let _ = writeln!(
            out,
            "corral_vm_memory_total_bytes{{vm=\"{}\"}} {}",
            esc(name),
            s.memory_total_bytes
        );
    }
    out
}
