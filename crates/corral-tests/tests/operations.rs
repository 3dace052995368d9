//! Long work and its edges: a guest that ignores the power button, cancelling a stop,
//! updating a VM, and the bounded console log.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use corral_tests::{guest, Daemon, BOOT};

fn boot_deaf(d: &Daemon, name: &str) {
    let (k, i) = guest();
    d.ok(&[
        "create",
        name,
        "--memory",
        "256M",
        "--network",
        "none",
        "--start",
        "--kernel",
        &k.display().to_string(),
        "--initrd",
        &i.display().to_string(),
        "--cmdline",
        "console=ttyS0 quiet no_timer_check corral.noacpi",
    ]);
    d.wait_console(name, "CORRAL-GUEST-READY", BOOT);
    assert!(d.console_log(name).contains("ignoring the power button"));
}

#[test]
fn graceful_stop_times_out_and_can_be_cancelled() {
    let d = Daemon::start();
    boot_deaf(&d, "deaf");

    let err = d.fails(&["stop", "deaf", "--timeout", "2"]);
    assert!(err.contains("did not shut down within 2 s"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(
        d.state("deaf"),
        "running",
        "a stop that timed out leaves the VM running"
    );

    // Cancel a graceful stop through the operations API.
    let (status, op) = d.http("POST", "/api/v1/vms/deaf/stop", r#"{"timeout_secs":60}"#);
    assert_eq!(status, 202, "{op}");
    assert_eq!(op["state"], "running");
    assert_eq!(d.state("deaf"), "stopping");
    let id = op["id"].as_str().unwrap();
    d.ok(&["operation", "cancel", id]);
    let op = d.json(&["operation", "show", id]);
    assert_eq!(op["state"], "cancelled");
    d.wait_state("deaf", "running", Duration::from_secs(5));
    // A finished operation cannot be cancelled again.
    let (status, _) = d.http("DELETE", &format!("/api/v1/operations/{id}"), "");
    assert_eq!(status, 409);

    d.ok(&["stop", "deaf", "--force"]);
    assert_eq!(d.state("deaf"), "stopped");
    let ops = d.json(&["operation", "list"]);
    let kinds: Vec<&str> = ops
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["state"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"failed") && kinds.contains(&"cancelled") && kinds.contains(&"succeeded"),
        "{kinds:?}"
    );
}

#[test]
fn update_applies_to_stopped_vms_only() {
    let d = Daemon::start();
    d.boot("upd", &["--network", "none"]);
    let err = d.fails(&["update", "upd", "--memory", "128M"]);
    assert!(err.contains("stopped"), "{err}");
    d.ok(&["stop", "upd", "--force"]);
    d.ok(&[
        "update",
        "upd",
        "--memory",
        "128M",
        "--vcpus",
        "2",
        "--cmdline",
        "console=ttyS0 quiet no_timer_check loglevel=3",
    ]);
    let vm = d.vm("upd");
    assert_eq!(vm["spec"]["memory_mib"], 128);
    assert_eq!(vm["spec"]["vcpus"], 2);
    assert_eq!(
        vm["spec"]["kernel"]["cmdline"],
        "console=ttyS0 quiet no_timer_check loglevel=3"
    );
    let err = d.fails(&["update", "upd", "--vcpus", "999"]);
    assert!(err.contains("vcpus"), "{err}");
    // The new spec is what the next start runs.
    d.ok(&["start", "upd"]);
    d.wait_console("upd", "CORRAL-GUEST-READY", BOOT);
    d.ok(&["delete", "upd", "--force"]);
}

#[test]
fn console_log_is_bounded() {
    let limit = 16 * 1024;
    let d = Daemon::start_with(&["--accel", "tcg", "--console-log-limit", &limit.to_string()]);
    d.boot("chatty", &["--network", "none"]);
    d.wait_console("chatty", "CORRAL-GUEST-READY", BOOT);
    // ~100 KiB of output, then a marker.
    let script = b"i=0; while [ $i -lt 4000 ]; do echo line-$i-xxxxxxxxxxxx; i=$((i+1)); done; echo DONE-$((6*7))\n";
    d.console_session("chatty", script, Duration::from_secs(1));
    d.wait_console("chatty", "DONE-42", Duration::from_secs(60));
    // Rotation runs every second; give it a moment after the burst.
    std::thread::sleep(Duration::from_secs(3));
    let log = d.console_log("chatty");
    assert!(
        log.len() <= 2 * limit + 4096,
        "console log is {} bytes",
        log.len()
    );
    assert!(log.contains("DONE-42"));
    assert!(
        !log.contains("CORRAL-GUEST-READY"),
        "old output has been dropped"
    );
    let on_disk: u64 = std::fs::read_dir(d.state_dir().join("run"))
        .unwrap()
        .flatten()
        .flat_map(|e| ["console.log", "console.log.1"].map(|f| e.path().join(f)))
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    assert!(
        on_disk <= 2 * limit as u64 + 4096,
        "{on_disk} bytes on disk"
    );
}
