//! `corral top`: the running VMs' newest samples (CPU, memory, disk and network rates),
//! refreshed every collector interval — what `virt-top` shows for libvirt.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Result;
use corral_api::{format_size, VmLatest, VmsMetrics};

use crate::cli::{TopArgs, TopSort};
use crate::client::{Client, API};
use crate::output::{emit, print_out, render, table, Format};

/// "Clear the screen, cursor home": a terminal redraws in place.
const CLEAR: &str = "\x1b[2J\x1b[H";

pub async fn top(client: &Client, args: &TopArgs) -> Result<()> {
    let redraw = args.output.output == Format::Table && std::io::stdout().is_terminal();
    loop {
        let mut m: VmsMetrics = client.get(&format!("{API}/metrics/vms")).await?;
        sort(&mut m.vms, args.sort);
        if redraw && !args.once {
            print_out(format!("{CLEAR}{}", top_table(&m)).as_bytes())?;
        } else {
            emit(args.output.output, &m, top_table)?;
        }
        if args.once {
            return Ok(());
        }
        // Not a terminal (a pipe, a log): one table per interval, like `top -b`.
        if !redraw && args.output.output == Format::Table {
            print_out(b"\n")?;
        }
        tokio::time::sleep(Duration::from_millis(m.interval_ms.max(500))).await;
    }
}

fn sort(vms: &mut [VmLatest], by: TopSort) {
    let key = |v: &VmLatest| -> f64 {
        let s = &v.sample;
        match by {
            TopSort::Cpu => s.cpu_percent,
            TopSort::Memory => s.memory_used_bytes as f64,
            TopSort::Disk => s.disk_read_bytes_per_sec + s.disk_write_bytes_per_sec,
            TopSort::Net => s.net_rx_bytes_per_sec + s.net_tx_bytes_per_sec,
            TopSort::Name => 0.0,
        }
    };
    // Biggest first; names break ties (and are the whole order for `--sort name`).
    vms.sort_by(|a, b| key(b).total_cmp(&key(a)).then_with(|| a.vm.cmp(&b.vm)));
}

fn top_table(m: &VmsMetrics) -> String {
    if m.vms.is_empty() {
        return "No running VMs have been sampled yet.\n".into();
    }
    let mut t = table(&[
        "NAME",
        "CPU%",
        "MEMORY",
        "SOURCE",
        "DISK READ",
        "DISK WRITE",
        "NET RX",
        "NET TX",
    ]);
    for v in &m.vms {
        let s = &v.sample;
        t.add_row(vec![
            v.vm.clone(),
            format!("{:.1}", s.cpu_percent),
            format!(
                "{} / {}",
                format_size(s.memory_used_bytes),
                format_size(s.memory_total_bytes)
            ),
            s.memory_source.as_str().to_string(),
            rate(s.disk_read_bytes_per_sec),
            rate(s.disk_write_bytes_per_sec),
            rate(s.net_rx_bytes_per_sec),
            rate(s.net_tx_bytes_per_sec),
        ]);
    }
    render(t)
}

fn rate(bytes_per_sec: f64) -> String {
    format!("{}/s", format_size(bytes_per_sec.round() as u64))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use corral_api::{MemorySource, VmSample};

    fn vm(name: &str, cpu: f64, mem: u64) -> VmLatest {
        VmLatest {
            vm: name.into(),
            sample: VmSample {
                time_ms: 1,
                cpu_percent: cpu,
                memory_used_bytes: mem,
                memory_total_bytes: 256 << 20,
                memory_source: MemorySource::Balloon,
                disk_read_bytes_per_sec: 1536.0,
                disk_write_bytes_per_sec: 0.0,
                disk_read_ops_per_sec: 0.0,
                disk_write_ops_per_sec: 0.0,
                net_rx_bytes_per_sec: 0.0,
                net_tx_bytes_per_sec: 0.0,
            },
        }
    }

    #[test]
    fn busiest_first_and_names_break_ties() {
        let mut vms = vec![vm("b", 1.0, 9), vm("a", 1.0, 1), vm("c", 50.0, 5)];
        sort(&mut vms, TopSort::Cpu);
        let names: Vec<_> = vms.iter().map(|v| v.vm.as_str()).collect();
        assert_eq!(names, ["c", "a", "b"]);
        sort(&mut vms, TopSort::Memory);
        assert_eq!(vms[0].vm, "b");
        sort(&mut vms, TopSort::Name);
        assert_eq!(vms[0].vm, "a");
    }

    #[test]
    fn the_table_shows_rates_and_the_memory_source() {
        let text = top_table(&VmsMetrics {
            interval_ms: 2000,
            vms: vec![vm("web", 12.34, 100 << 20)],
        });
        assert!(text.contains("web"), "{text}");
        assert!(text.contains("12.3"), "{text}");
        assert!(text.contains("100 MiB / 256 MiB"), "{text}");
        assert!(text.contains("balloon"), "{text}");
        assert!(text.contains("1.5 KiB/s"), "{text}");
    }
}
