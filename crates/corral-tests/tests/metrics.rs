//! Live metrics: the collector's numbers move with what the guests do, the Prometheus
//! exposition passes `promtool check metrics`, a deleted VM's series go away.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use corral_tests::Daemon;
use serde_json::Value;

/// The raw body of `GET path` on the API socket.
fn get_text(d: &Daemon, path: &str) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200"),
        "{resp}"
    );
    resp.split("\r\n\r\n").nth(1).unwrap().to_string()
}

/// The value of the series `line_prefix` (name and labels) in an exposition.
fn value(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
}

fn promtool_accepts(text: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package, scripts/setup.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls until `pred` holds for the exposition (the collector samples every 500 ms here).
fn wait_scrape(d: &Daemon, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = get_text(d, "/metrics");
        if pred(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}:\n{text}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn metrics_move_and_scrape_is_valid() {
    let d = Daemon::start_with(&["--metrics-interval", "1s"]);
    d.define_with_disk("io", "32M");
    d.start_and_wait("io");
    d.boot("idle", &["--network", "none"]);

    let text = wait_scrape(&d, "both VMs sampled", |t| {
        t.contains("corral_vm_cpu_percent{vm=\"io\"}")
            && t.contains("corral_vm_cpu_percent{vm=\"idle\"}")
    });
    promtool_accepts(&text);
    assert!(value(&text, "corral_vms{state=\"running\"}").unwrap() >= 2.0);
    // `corral top`: the same newest samples, one row per running VM.
    let top = d.ok(&["top", "--once", "--sort", "name"]);
    let rows: Vec<&str> = top.lines().skip(1).collect();
    assert!(
        rows.len() == 2 && rows[0].starts_with("idle") && rows[1].starts_with("io"),
        "{top}"
    );
    let top = d.json(&["top", "--once"]);
    assert_eq!(top["vms"].as_array().unwrap().len(), 2, "{top}");
    assert!(top["vms"][0]["sample"]["cpu_percent"].is_number(), "{top}");
    assert!(value(&text, "corral_host_memory_total_bytes").unwrap() > 0.0);
    let cpu = value(&text, "corral_vm_cpu_seconds_total{vm=\"io\"}").unwrap();
    assert!(cpu > 0.0, "{text}");

    let before = value(&text, "corral_vm_disk_read_bytes_total{vm=\"io\"}").unwrap();
    d.guest_run("io", "dd if=/dev/vda of=/dev/null bs=64k count=256");
    let text = wait_scrape(&d, "disk reads counted", |t| {
        value(t, "corral_vm_disk_read_bytes_total{vm=\"io\"}").unwrap_or(0.0) >= before + 8e6
    });
    promtool_accepts(&text);

    // The JSON history: CPU moved while the guest ran, since_ms filters.
    let (status, m) = d.http("GET", "/api/v1/vms/io/metrics", "");
    assert_eq!(status, 200, "{m}");
    let samples = m["samples"].as_array().unwrap();
    assert!(!samples.is_empty());
    assert!(
        samples
            .iter()
            .any(|s| s["cpu_percent"].as_f64().unwrap() > 0.0),
        "{m}"
    );
    assert!(
        samples
            .iter()
            .any(|s| s["disk_read_bytes_per_sec"].as_f64().unwrap() > 0.0),
        "{m}"
    );
    // Memory as the guest sees it, once its balloon driver reports (QEMU's RSS until then).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let balloon = loop {
        let (_, m) = d.http("GET", "/api/v1/vms/io/metrics", "");
        let last = m["samples"].as_array().unwrap().last().cloned().unwrap();
        if last["memory_source"] == "balloon" {
            break last;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no balloon stats: {last}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let (used, total) = (
        balloon["memory_used_bytes"].as_u64().unwrap(),
        balloon["memory_total_bytes"].as_u64().unwrap(),
    );
    assert!(
        total > 128 << 20 && total <= 256 << 20 && used > 0 && used < total,
        "{balloon}"
    );
    let text = wait_scrape(&d, "the balloon source", |t| {
        t.contains("source=\"balloon\"")
    });
    promtool_accepts(&text);
    let last = samples.last().unwrap()["time_ms"].as_u64().unwrap();
    let (_, newer) = d.http(
        "GET",
        &format!("/api/v1/vms/io/metrics?since_ms={last}"),
        "",
    );
    assert!(newer["samples"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["time_ms"].as_u64().unwrap() > last));
    let (status, host) = d.http("GET", "/api/v1/host/metrics", "");
    assert_eq!(status, 200);
    assert!(
        host["samples"].as_array().is_some_and(|s| !s.is_empty()),
        "{host}"
    );
    assert_eq!(host["vms_by_state"]["running"], Value::from(2));
    let (status, _) = d.http("GET", "/api/v1/vms/nope/metrics", "");
    assert_eq!(status, 404);

    d.ok(&["delete", "idle", "--force"]);
    wait_scrape(&d, "deleted VM gone", |t| !t.contains("vm=\"idle\""));
}

/// A user-mode (passt) NIC has no host device to count on: its traffic comes from the
/// guest agent's counters, as separate series, and into the JSON rates.
#[test]
fn user_nic_traffic_is_counted_by_the_guest_agent() {
    let w = corral_tests::World::new("metuser");
    let d = Daemon::start_in(&w.host, &["--accel", "tcg", "--metrics-interval", "1s"]);
    d.boot("pu", &["--network", "user"]);
    d.wait_console("pu", "CORRAL-GUEST-READY", corral_tests::BOOT);
    let series = "corral_vm_user_network_transmit_bytes_total{vm=\"pu\"}";
    let text = wait_scrape(&d, "the agent's counters", |t| t.contains(series));
    promtool_accepts(&text);
    let before = value(&text, series).unwrap();

    // 20 pings of 1000 bytes leave the guest whether or not anything answers them.
    d.guest_run(
        "pu",
        "ping -c 20 -i 0.2 -s 1000 -W 1 198.51.100.2 >/dev/null",
    );
    wait_scrape(&d, "the pings counted", |t| {
        value(t, series).unwrap_or(0.0) >= before + 20_000.0
    });
    let (_, m) = d.http("GET", "/api/v1/vms/pu/metrics", "");
    assert!(
        m["samples"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["net_tx_bytes_per_sec"].as_f64().unwrap() > 1000.0),
        "{m}"
    );
    d.ok(&["delete", "pu", "--force"]);
}
