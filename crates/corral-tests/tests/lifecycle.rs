//! What a user does with one VM, end to end, against real QEMU.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use corral_tests::{exists, guest_args, pid_alive, Daemon, BOOT};

#[test]
fn create_start_console_pause_resume_stop_delete() {
    let d = Daemon::start();
    let attached = d.dir.path().join("attached.raw");
    std::fs::write(&attached, vec![0u8; 4 << 20]).unwrap();
    let attached = attached.display().to_string();

    let mut args = vec![
        "create", "vm1", "--memory", "256M", "--vcpus", "1", "--disk", "size=1G",
    ];
    let path_arg = format!("path={attached}");
    args.extend(["--disk", &path_arg, "--network", "user"]);
    let g = guest_args();
    args.extend(g.iter().map(String::as_str));
    d.ok(&args);

    let vm = d.vm("vm1");
    assert_eq!(vm["status"]["state"], "stopped");
    let disks = vm["spec"]["disks"].as_array().unwrap();
    let owned = disks[0]["path"].as_str().unwrap().to_string();
    assert_eq!(disks[0]["owned"], true);
    assert_eq!(disks[1]["owned"], false);
    assert_eq!(disks[1]["path"], attached);
    assert!(exists(&owned));

    d.ok(&["start", "vm1"]);
    assert_eq!(d.state("vm1"), "running");
    d.wait_console("vm1", "CORRAL-GUEST-READY", BOOT);
    let log = d.console_log("vm1");
    assert!(log.contains("disk /dev/vda"), "{log}");
    assert!(log.contains("disk /dev/vdb"), "{log}");
    assert!(log.contains("nic eth0"), "{log}");
    let pid = d.vm("vm1")["status"]["pid"].as_u64().unwrap() as u32;
    assert!(pid_alive(pid));

    let list = d.json(&["list"]);
    assert_eq!(list[0]["spec"]["name"], "vm1");
    let table = d.ok(&["list"]);
    assert!(
        table.contains("vm1") && table.contains("running"),
        "{table}"
    );

    d.ok(&["pause", "vm1"]);
    assert_eq!(d.state("vm1"), "paused");
    // Paused: a graceful stop would never be answered, so it is refused plainly.
    let err = d.fails(&["stop", "vm1"]);
    assert!(err.contains("paused"), "{err}");
    d.ok(&["resume", "vm1"]);
    assert_eq!(d.state("vm1"), "running");

    // A running VM cannot be deleted without --force.
    let err = d.fails(&["delete", "vm1"]);
    assert!(err.contains("--force"), "{err}");

    d.ok(&["stop", "vm1", "--timeout", "30"]);
    let vm = d.vm("vm1");
    assert_eq!(vm["status"]["state"], "stopped");
    let reason = vm["status"]["reason"].as_str().unwrap();
    // Through the guest agent once it has connected, else the power button (tests/agent.rs
    // pins down each way).
    assert!(
        reason.contains("ACPI") || reason.contains("guest agent"),
        "{reason}"
    );
    assert!(!pid_alive(pid), "QEMU still alive after stop");
    let kinds: Vec<&str> = vm["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"created") && kinds.contains(&"state"),
        "{kinds:?}"
    );

    d.ok(&["delete", "vm1"]);
    assert!(!exists(&owned), "owned volume must go with the VM");
    assert!(exists(&attached), "an attached file is never touched");
    assert_eq!(std::fs::metadata(&attached).unwrap().len(), 4 << 20);
    let err = d.fails(&["show", "vm1"]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn force_stop_restart_and_start_paused() {
    let d = Daemon::start();
    d.boot("vm2", &[]);
    d.wait_console("vm2", "CORRAL-GUEST-READY", BOOT);
    let pid1 = d.vm("vm2")["status"]["pid"].as_u64().unwrap();

    d.ok(&["restart", "vm2"]);
    let vm = d.vm("vm2");
    assert_eq!(vm["status"]["state"], "running");
    let pid2 = vm["status"]["pid"].as_u64().unwrap();
    assert_ne!(pid1, pid2, "restart makes a new QEMU");

    d.ok(&["stop", "vm2", "--force"]);
    let vm = d.vm("vm2");
    assert_eq!(vm["status"]["state"], "stopped");
    assert!(vm["status"]["reason"].as_str().unwrap().contains("forced"));
    assert!(!pid_alive(pid2 as u32));

    d.ok(&["start", "vm2", "--paused"]);
    assert_eq!(d.state("vm2"), "paused");
    d.ok(&["resume", "vm2"]);
    d.wait_console("vm2", "CORRAL-GUEST-READY", BOOT);
    d.ok(&["delete", "vm2", "--force"]);
    assert!(d.json(&["list"]).as_array().unwrap().is_empty());
}

#[test]
fn interactive_console() {
    let d = Daemon::start();
    d.boot("con", &[]);
    d.wait_console("con", "CORRAL-GUEST-READY", BOOT);
    let text = d.console_session("con", b"echo hello-$((40+2))\n", Duration::from_secs(3));
    assert!(text.contains("hello-42"), "console output: {text}");
    // The log keeps what the interactive session saw.
    assert!(d.console_log("con").contains("hello-42"));
    d.ok(&["delete", "con", "--force"]);
}

#[test]
fn several_vms_at_once() {
    let d = Daemon::start();
    let names = ["m1", "m2", "m3"];
    for n in names {
        d.boot(n, &["--network", "none"]);
    }
    for n in names {
        d.wait_console(n, "CORRAL-GUEST-READY", BOOT);
    }
    let pids: Vec<u64> = names
        .iter()
        .map(|n| d.vm(n)["status"]["pid"].as_u64().unwrap())
        .collect();
    let mut unique = pids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3);
    let host = d.json(&["host", "info"]);
    assert_eq!(host["vms_running"], 3);
    for n in names {
        d.ok(&["stop", n]);
    }
    for n in names {
        assert_eq!(d.state(n), "stopped");
    }
}

#[test]
fn q35_with_cdrom_boots() {
    let d = Daemon::start();
    let iso = d.dir.path().join("install.iso");
    std::fs::write(&iso, vec![0u8; 2 << 20]).unwrap();
    let iso = iso.display().to_string();
    d.boot(
        "q",
        &[
            "--machine",
            "q35",
            "--cdrom",
            &iso,
            "--disk",
            "size=512M",
            "--vcpus",
            "2",
        ],
    );
    d.wait_console("q", "CORRAL-GUEST-READY", BOOT);
    let vm = d.vm("q");
    assert_eq!(vm["spec"]["machine"], "q35");
    assert_eq!(vm["spec"]["cdrom"], iso);
    assert_eq!(vm["spec"]["vcpus"], 2);
    assert!(d.console_log("q").contains("disk /dev/vda"));
    d.ok(&["delete", "q", "--force"]);
    assert!(exists(&iso), "the ISO is the user's, never deleted");
}

#[test]
fn guest_panic_shows_crashed_and_restart_recovers() {
    let d = Daemon::start();
    d.boot("oops", &["--network", "none"]);
    d.wait_console("oops", "CORRAL-GUEST-READY", BOOT);
    let pid = d.vm("oops")["status"]["pid"].as_u64().unwrap();
    d.console_session(
        "oops",
        b"echo c > /proc/sysrq-trigger\n",
        Duration::from_secs(1),
    );
    d.wait_state("oops", "crashed", Duration::from_secs(30));
    let vm = d.vm("oops");
    assert!(
        vm["status"]["reason"]
            .as_str()
            .unwrap()
            .contains("panicked"),
        "{vm}"
    );
    assert!(
        pid_alive(pid as u32),
        "a crashed guest is kept for inspection"
    );
    d.ok(&["restart", "oops"]);
    assert_eq!(d.state("oops"), "running");
    d.wait_console("oops", "CORRAL-GUEST-READY", BOOT);
    d.ok(&["delete", "oops", "--force"]);
}
