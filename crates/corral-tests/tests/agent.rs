//! The guest agent end to end: the test guest runs Debian's qemu-ga on the channel every
//! VM gets. Its connection is tracked from QMP events (and re-read after a daemon
//! restart), the guest's addresses show in `list` and `show`, `stop` shuts down through
//! it, snapshots of a running VM freeze the guest's file systems around the switch, and
//! the guest's clock is set after a resume or a restore from saved memory. A guest
//! without an agent (`corral.noagent`) stops by ACPI and refuses `--quiesce` plainly.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use corral_tests::{guest, Daemon, Value, World, BOOT, GUEST_CMDLINE};

/// How long a booted guest's agent may take to connect, or anything it reports to show.
const AGENT: Duration = Duration::from_secs(90);

/// Creates and starts a test-guest VM with a 64 MiB disk and a user-mode NIC; `extra` is
/// added to the kernel command line.
fn boot_with_disk(d: &Daemon, name: &str, extra: &str) {
    let (k, i) = guest();
    let cmdline = format!("{GUEST_CMDLINE} {extra}");
    d.ok(&[
        "create",
        name,
        "--memory",
        "256M",
        "--disk",
        "size=64M",
        "--network",
        "user",
        "--start",
        "--kernel",
        &k.display().to_string(),
        "--initrd",
        &i.display().to_string(),
        "--cmdline",
        cmdline.trim(),
    ]);
    d.wait_console(name, "CORRAL-GUEST-READY", BOOT);
}

/// Polls `show` until `check` holds.
fn wait_vm(d: &Daemon, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + AGENT;
    loop {
        let vm = d.vm(name);
        if check(&vm) {
            return vm;
        }
        assert!(Instant::now() < deadline, "{name}: {what}:\n{vm}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn agent_connected(d: &Daemon, name: &str, connected: bool) {
    wait_vm(d, name, &format!("guest_agent != {connected}"), |vm| {
        vm["guest_agent"] == connected
    });
}

fn wait_event(d: &Daemon, name: &str, text: &str) {
    let deadline = Instant::now() + AGENT;
    while !d.events(name).contains(text) {
        assert!(
            Instant::now() < deadline,
            "no event '{text}':\n{}",
            d.events(name)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn snapshot(d: &Daemon, vm: &str, name: &str, extra: &[&str]) -> Value {
    let mut args = vec!["snapshot", "create", vm, name];
    args.extend(extra);
    let tree = d.json(&args);
    tree["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap()
}

#[test]
fn agent_reports_addresses_quiesces_snapshots_and_shuts_down() {
    // In a namespace of its own, so the user NIC's address is known: passt hands the
    // guest the host's own, 198.51.100.1/24 there.
    let w = World::new("ga");
    let mut d = Daemon::start_in(&w.host, &["--accel", "tcg", "--no-default-network"]);
    boot_with_disk(&d, "ga", "");
    agent_connected(&d, "ga", true);
    assert!(d.events("ga").contains("guest agent connected"));

    // passt hands the guest's udhcpc the namespace's address; the agent reports it.
    let address = |vm: &Value| {
        vm["addresses"]
            .as_array()
            .and_then(|a| a.first().cloned())
            .unwrap_or_default()
    };
    wait_vm(&d, "ga", "no address reported", |vm| {
        address(vm)["address"] == "198.51.100.1"
    });
    let listed = d.json(&["list"]);
    let ga = &listed.as_array().unwrap()[0];
    assert_eq!(ga["guest_agent"], true);
    assert_eq!(address(ga)["source"], "agent", "{ga}");
    assert_eq!(address(ga)["prefix"], 24, "{ga}");
    assert_eq!(address(ga)["mac"], ga["spec"]["nics"][0]["mac"], "{ga}");
    // Loopback and link-local addresses are left out.
    let all = ga["addresses"].to_string();
    assert!(!all.contains("127.0.0.1") && !all.contains("fe80"), "{all}");
    let table = d.ok(&["list"]);
    assert!(
        table.contains("IP") && table.contains("198.51.100.1"),
        "{table}"
    );
    let shown = d.ok(&["show", "ga"]);
    assert!(shown.contains("Guest agent:  connected"), "{shown}");
    assert!(shown.contains("198.51.100.1/24"), "{shown}");

    // A file system on the VM's disk, for the agent to freeze.
    d.guest_run(
        "ga",
        "mke2fs -q /dev/vda && mkdir -p /mnt && mount /dev/vda /mnt && echo one >/mnt/a && sync",
    );
    let s1 = snapshot(&d, "ga", "s1", &[]);
    assert_eq!(s1["quiesced"], true, "{s1}");
    assert!(
        d.events("ga")
            .contains("froze 1 file system(s) around the switch and thawed them"),
        "{}",
        d.events("ga")
    );
    // Thawed: the guest writes to the file system again (a frozen one would block).
    d.guest_run("ga", "echo two >/mnt/b && sync && echo WROTE-$((40+2))");
    d.wait_console("ga", "WROTE-42", Duration::from_secs(30));
    let s2 = snapshot(&d, "ga", "s2", &["--no-quiesce"]);
    assert_eq!(s2["quiesced"], false, "{s2}");
    let s3 = snapshot(&d, "ga", "s3", &["--quiesce"]);
    assert_eq!(s3["quiesced"], true, "{s3}");
    let listing = d.ok(&["snapshot", "list", "ga"]);
    assert_eq!(listing.matches("quiesced").count(), 2, "{listing}");

    // A restarted daemon missed the port's opening: it asks QEMU.
    d.restart();
    assert_eq!(d.vm("ga")["guest_agent"], true);
    wait_vm(&d, "ga", "no address after re-attach", |vm| {
        address(vm)["address"] == "198.51.100.1"
    });

    // The guest's clock is set after a resume, and after a restore from saved memory
    // (the port reopens in the restored guest).
    d.ok(&["pause", "ga"]);
    d.ok(&["resume", "ga"]);
    wait_event(&d, "ga", "guest clock set from the host after resume");
    let m = snapshot(&d, "ga", "m", &["--memory"]);
    assert_eq!(m["quiesced"], false, "memory snapshots pause instead: {m}");
    d.ok(&["snapshot", "revert", "ga", "m"]);
    agent_connected(&d, "ga", true);
    wait_event(
        &d,
        "ga",
        "guest clock set from the host after reverting to snapshot 'm'",
    );

    // The agent going away is seen; so is it coming back.
    d.guest_run("ga", "kill $(cat /run/qemu-ga.pid)");
    agent_connected(&d, "ga", false);
    assert!(d.vm("ga")["addresses"].as_array().is_none());
    d.guest_run("ga", "start-guest-agent");
    agent_connected(&d, "ga", true);

    // A graceful stop goes through the agent, which runs the guest's shutdown.
    let op = d.json(&["stop", "ga", "--timeout", "60"]);
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(op["result"]["method"], "agent", "{op}");
    let vm = d.vm("ga");
    assert_eq!(vm["status"]["state"], "stopped");
    assert_eq!(vm["guest_agent"], false);
    let reason = vm["status"]["reason"].as_str().unwrap();
    assert!(reason.contains("guest agent"), "{reason}");
    assert!(d
        .console_log("ga")
        .contains("shutdown requested (-h -P +0 hypervisor initiated shutdown)"));
}

#[test]
fn without_an_agent_stop_is_acpi_and_quiesce_is_refused() {
    let d = Daemon::start();
    boot_with_disk(&d, "plain", "corral.noagent");
    d.wait_console("plain", "not starting the guest agent", BOOT);
    let vm = d.vm("plain");
    assert_eq!(vm["guest_agent"], false, "{vm}");
    assert!(d
        .ok(&["show", "plain"])
        .contains("Guest agent:  not connected"));

    let err = d.fails(&["snapshot", "create", "plain", "s1", "--quiesce"]);
    assert!(err.contains("no guest agent connected"), "{err}");
    assert!(err.contains("--no-quiesce"), "{err}");
    let tree = d.json(&["snapshot", "list", "plain"]);
    assert!(tree["snapshots"].as_array().unwrap().is_empty(), "{tree}");
    d.assert_pool_clean("default");
    let (status, body) = d.http(
        "POST",
        "/api/v1/vms/plain/snapshots",
        r#"{"name":"s1","quiesce":true}"#,
    );
    assert_eq!(status, 409, "{body}");
    let (status, body) = d.http(
        "POST",
        "/api/v1/vms/plain/snapshots",
        r#"{"name":"s1","memory":true,"quiesce":true}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "quiesce", "{body}");

    // By default, a VM without an agent is snapshotted without quiescing.
    let s = snapshot(&d, "plain", "s2", &[]);
    assert_eq!(s["quiesced"], false, "{s}");

    let op = d.json(&["stop", "plain", "--timeout", "60"]);
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(op["result"]["method"], "acpi", "{op}");
    let reason = d.vm("plain")["status"]["reason"].to_string();
    assert!(reason.contains("ACPI"), "{reason}");
}

/// A re-attached QEMU is not corrald's child: a graceful stop through the guest agent
/// must still return only once that process has exited, so that a start right after
/// never meets the image locks of a QEMU still on its way out.
#[test]
fn stop_after_reattach_returns_only_when_qemu_has_exited() {
    let mut d = Daemon::start();
    boot_with_disk(&d, "gr", "");
    agent_connected(&d, "gr", true);
    let pid = d.vm("gr")["status"]["pid"].as_u64().unwrap() as u32;
    d.restart();
    assert_eq!(d.state("gr"), "running");
    agent_connected(&d, "gr", true);

    // QEMU takes its time between closing its monitor and exiting (as a loaded host
    // makes it): strace holds its exit_group(2) back by 4 s.
    let mut strace = std::process::Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=exit_group"])
        .args(["-e", "inject=exit_group:delay_enter=4000000", "-p"])
        .arg(pid.to_string())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let op = d.json(&["stop", "gr", "--timeout", "30"]);
    let _ = strace.kill();
    let _ = strace.wait();
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(op["result"]["method"], "agent", "{op}");
    assert!(
        !corral_tests::pid_alive(pid),
        "stop returned while QEMU (pid {pid}) is alive:\n{}",
        std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
    );
    assert_eq!(d.state("gr"), "stopped");
    // Starting again at once works: no image lock of the old QEMU is in the way.
    d.ok(&["start", "gr"]);
    d.wait_console("gr", "CORRAL-GUEST-READY", BOOT);
    d.op_succeeds(&["stop", "gr", "--force"]);
}
