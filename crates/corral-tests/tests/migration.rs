//! Live migration between hosts (network namespaces, one corrald each, real QEMU under
//! TCG): the guest keeps running (a console counter that continues), its disk whole (a
//! guest-written pattern), both daemons agree where it is, and nothing is left behind.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use corral_tests::hosts::{Host, Hosts};
use corral_tests::{guest, Value, BOOT, GUEST_CMDLINE};

/// Creates and boots a test guest on `h` with a disk (`extra` picks it, e.g.
/// `size=64M` or `vol=data`) and no NIC.
fn boot(h: &Host, name: &str, disk: &str) {
    let (k, i) = guest();
    h.daemon.ok(&[
        "create", name, "--memory", "256M", "--disk", disk, "--network", "none", "--start",
        "--kernel", &k.display().to_string(), "--initrd", &i.display().to_string(),
        "--cmdline", GUEST_CMDLINE,
    ]);
    h.daemon.wait_console(name, "CORRAL-GUEST-READY", BOOT);
}

/// In the guest: a counter on the console every 10 ms (`<C…>`), and block `j` of its
/// disk written with `P<j>` (and synced) for j = 0, 1, … (`<W…>` once each is done).
fn start_load(h: &Host, name: &str) {
    h.daemon.guest_run(
        name,
        "(i=0; while :; do echo \"<C$i>\"; i=$((i+1)); usleep 10000; done) & echo $! >/tmp/counter",
    );
    h.daemon.guest_run(
        name,
        "(j=0; while :; do printf 'P%07d' $j | dd of=/dev/vda bs=512 seek=$j conv=notrunc,fsync 2>/dev/null; echo \"<W$j>\"; j=$((j+1)); done) & echo $! >/tmp/writer",
    );
}

/// Stops the guest's disk writer; the last block it reported written.
fn stop_writer(h: &Host, name: &str) -> u64 {
    h.daemon.guest_run(name, "kill $(cat /tmp/writer)");
    let log = h.daemon.console_log(name);
    numbers(&log, "<W").last().copied().unwrap()
}

/// The numbers of every `<X…>` marker in `text`, in order.
fn numbers(text: &str, marker: &str) -> Vec<u64> {
    text.split(marker)
        .skip(1)
        .filter_map(|rest| rest.split('>').next()?.parse().ok())
        .collect()
}

/// Reads the VM's disk image on `h` (the running QEMU's, shared) and checks that block
/// `j` holds `P<j>` for every j up to `last`.
fn assert_pattern_whole(h: &Host, name: &str, last: u64) {
    let path = h.daemon.vm(name)["spec"]["disks"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let n = (last as usize + 1) * 512;
    let head = corral_tests::image_head(&path, n);
    let bytes = head.as_bytes();
    for j in 0..=last as usize {
        let want = format!("P{j:07}");
        let got = String::from_utf8_lossy(&bytes[j * 512..j * 512 + 8]);
        assert_eq!(got, want, "block {j} of {name}'s disk (writer got to {last})");
    }
}

/// The counter went on across the switch: the last number the source printed is
/// followed by the next one at the destination, and none is missing anywhere.
fn assert_counter_continued(dest: &Host, name: &str) {
    let uuid = dest.daemon.vm(name)["spec"]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let run = dest.daemon.state_dir().join("run").join(&uuid);
    let before = std::fs::read_to_string(run.join("console.log.1")).unwrap_or_default();
    let after = std::fs::read_to_string(run.join("console.log")).unwrap_or_default();
    let (b, a) = (numbers(&before, "<C"), numbers(&after, "<C"));
    let (last, first) = (*b.last().unwrap(), *a.first().unwrap());
    assert_eq!(first, last + 1, "the counter stopped at {last} there and went on at {first}");
    let all: Vec<u64> = b.iter().chain(&a).copied().collect();
    for w in all.windows(2) {
        assert_eq!(w[1], w[0] + 1, "a gap in the counter: {} then {}", w[0], w[1]);
    }
}

/// Follows `corral migrate` to its end; its operation.
fn migrate(h: &Host, name: &str, to: &str, extra: &[&str]) -> Value {
    let mut args = vec!["migrate", name, "--to", to];
    args.extend_from_slice(extra);
    h.daemon.json(&args)
}

fn uuid_of(h: &Host, name: &str) -> String {
    h.daemon.vm(name)["spec"]["uuid"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits until exactly one QEMU (on `host`) runs the VM, then returns.
fn assert_one_qemu(hosts: &Hosts, uuid: &str, host: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = hosts.qemus_of(uuid);
        if found.len() == 1 && found[0].0 == host {
            return;
        }
        assert!(Instant::now() < deadline, "QEMUs of {uuid}: {found:?}, want one on h{host}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_local_disk_moves_with_the_running_guest() {
    let hosts = Hosts::new("mig", 2);
    let (a, b) = (hosts.host(0), hosts.host(1));
    boot(a, "web", "size=64M");
    let uuid = uuid_of(a, "web");
    start_load(a, "web");
    a.daemon.wait_console("web", "<W20>", Duration::from_secs(60));

    let report = a.daemon.json(&["migrate", "web", "--to", "h1", "--dry-run"]);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["disks"][0]["transfer"], "copy", "{report}");
    assert!(report["took_ms"].as_u64().unwrap() < 5_000, "{report}");

    let op = migrate(a, "web", "h1", &[]);
    assert_eq!(op["state"], "succeeded", "{op}");
    let result = &op["result"];
    assert!(result["downtime_ms"].as_u64().is_some(), "{op}");
    assert!(result["disk_bytes"].as_u64().unwrap() > 0, "{op}");

    // Exactly one copy, at the destination; both daemons say so.
    assert_one_qemu(&hosts, &uuid, 1);
    assert_eq!(a.vm_names(), Vec::<String>::new());
    assert_eq!(b.vm_names(), vec!["web".to_string()]);
    assert_eq!(b.daemon.state("web"), "running");
    assert!(a.pool_files().is_empty(), "source pool: {:?}", a.pool_files());
    assert_eq!(b.pool_files().len(), 1, "{:?}", b.pool_files());
    assert!(b.daemon.json(&["volume", "show", "web-disk0"])["path"]
        .as_str()
        .unwrap()
        .starts_with(b.daemon.state_dir().to_str().unwrap()));
    // Its history came along.
    let events = b.daemon.events("web");
    assert!(events.contains("VM defined") && events.contains("arrived from"), "{events}");

    // The guest goes on: its counter without a gap, its disk with every block written.
    let written = *numbers(&b.daemon.console_log("web"), "<W").last().unwrap();
    b.daemon
        .wait_console("web", &format!("<W{}>", written + 20), Duration::from_secs(60));
    assert_counter_continued(b, "web");
    let last = stop_writer(b, "web");
    assert_pattern_whole(b, "web", last);
}
