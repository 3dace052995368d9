//! VMs outlive the daemon (DESIGN.md §5): `kill -9` of corrald leaves guests running, a
//! restarted daemon re-attaches, and a VM that died meanwhile is shown stopped with why.

#![allow(clippy::unwrap_used)]

use corral_tests::{pid_alive, Daemon, BOOT};

#[test]
fn kill9_and_restart_reattaches_running_vms() {
    let mut d = Daemon::start();
    d.boot("keep", &[]);
    d.boot("dies", &[]);
    d.boot("held", &[]);
    for n in ["keep", "dies", "held"] {
        d.wait_console(n, "CORRAL-GUEST-READY", BOOT);
    }
    d.ok(&["pause", "held"]);
    let pid_keep = d.vm("keep")["status"]["pid"].as_u64().unwrap() as u32;
    let pid_dies = d.vm("dies")["status"]["pid"].as_u64().unwrap() as u32;
    let pid_held = d.vm("held")["status"]["pid"].as_u64().unwrap() as u32;

    d.kill9();
    assert!(
        pid_alive(pid_keep) && pid_alive(pid_dies),
        "guests must survive the daemon"
    );
    // While the daemon is down, one QEMU dies.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid_dies as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));

    d.restart();
    let keep = d.vm("keep");
    assert_eq!(keep["status"]["state"], "running");
    assert_eq!(
        keep["status"]["pid"].as_u64().unwrap() as u32,
        pid_keep,
        "same QEMU, re-attached"
    );
    assert_eq!(d.state("held"), "paused");
    assert_eq!(
        d.vm("held")["status"]["pid"].as_u64().unwrap() as u32,
        pid_held
    );
    let dies = d.vm("dies");
    assert_eq!(dies["status"]["state"], "stopped");
    let reason = dies["status"]["reason"].as_str().unwrap();
    assert!(reason.contains("while corrald was not running"), "{reason}");

    // The re-attached VMs are fully controllable: console, pause/resume, graceful stop.
    d.ok(&["resume", "held"]);
    assert_eq!(d.state("held"), "running");
    let before = d.console_log("keep").len();
    assert!(before > 0);
    d.ok(&["stop", "keep"]);
    assert_eq!(d.state("keep"), "stopped");
    assert!(!pid_alive(pid_keep));
    d.ok(&["stop", "held", "--force"]);
    // And a dead VM can start again.
    d.ok(&["start", "dies"]);
    d.wait_console("dies", "CORRAL-GUEST-READY", BOOT);
    d.ok(&["stop", "dies", "--force"]);
}

#[test]
fn guest_exit_while_daemon_alive_is_observed() {
    let d = Daemon::start();
    d.boot("gone", &[]);
    d.wait_console("gone", "CORRAL-GUEST-READY", BOOT);
    let pid = d.vm("gone")["status"]["pid"].as_u64().unwrap() as u32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    d.wait_state("gone", "stopped", std::time::Duration::from_secs(10));
    let reason = d.vm("gone")["status"]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("unexpectedly"), "{reason}");
}
