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
        "create",
        name,
        "--memory",
        "256M",
        "--disk",
        disk,
        "--network",
        "none",
        "--start",
        "--kernel",
        &k.display().to_string(),
        "--initrd",
        &i.display().to_string(),
        "--cmdline",
        GUEST_CMDLINE,
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

/// Waits until the guest's disk writer has written `n` more blocks than it reported so
/// far (wherever the console's history is, it is read through the VM's host).
fn wait_writer_past(h: &Host, name: &str, n: u64) {
    let written = *numbers(&h.daemon.console_log(name), "<W").last().unwrap();
    h.daemon.wait_console(
        name,
        &format!("<W{}>", written + n),
        Duration::from_secs(60),
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
        assert_eq!(
            got, want,
            "block {j} of {name}'s disk (writer got to {last})"
        );
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
    assert_eq!(
        first,
        last + 1,
        "the counter stopped at {last} there and went on at {first}"
    );
    let all: Vec<u64> = b.iter().chain(&a).copied().collect();
    for w in all.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "a gap in the counter: {} then {}",
            w[0],
            w[1]
        );
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
        assert!(
            Instant::now() < deadline,
            "QEMUs of {uuid}: {found:?}, want one on h{host}"
        );
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
    a.daemon
        .wait_console("web", "<W20>", Duration::from_secs(60));

    let report = a
        .daemon
        .json(&["migrate", "web", "--to", "h1", "--dry-run"]);
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
    assert!(
        a.pool_files().is_empty(),
        "source pool: {:?}",
        a.pool_files()
    );
    assert_eq!(b.pool_files().len(), 1, "{:?}", b.pool_files());
    assert!(b.daemon.json(&["volume", "show", "web-disk0"])["path"]
        .as_str()
        .unwrap()
        .starts_with(b.daemon.state_dir().to_str().unwrap()));
    // Its history came along.
    let events = b.daemon.events("web");
    assert!(
        events.contains("VM defined") && events.contains("arrived from"),
        "{events}"
    );

    // The guest goes on: its counter without a gap, its disk with every block written.
    wait_writer_past(b, "web", 20);
    assert_counter_continued(b, "web");
    let last = stop_writer(b, "web");
    assert_pattern_whole(b, "web", last);
}

#[test]
fn on_shared_storage_only_memory_moves() {
    let hosts = Hosts::new("mshr", 2);
    let (a, b) = (hosts.host(0), hosts.host(1));
    // One directory both hosts see at the same path: what an NFS mount gives them.
    let san = tempfile::Builder::new()
        .prefix("corral-san-")
        .tempdir_in("/tmp")
        .unwrap();
    let san_path = san.path().display().to_string();
    for h in [a, b] {
        h.daemon
            .ok(&["pool", "create", "san", "--path", &san_path, "--shared"]);
    }
    a.daemon
        .ok(&["volume", "create", "data", "--size", "64M", "--pool", "san"]);
    boot(a, "db", "vol=data");
    let uuid = uuid_of(a, "db");
    let path = a.daemon.vm("db")["spec"]["disks"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    start_load(a, "db");
    a.daemon
        .wait_console("db", "<W20>", Duration::from_secs(60));

    let report = a.daemon.json(&["migrate", "db", "--to", "h1", "--dry-run"]);
    assert_eq!(report["disks"][0]["transfer"], "shared", "{report}");
    let op = migrate(a, "db", "h1", &[]);
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(
        op["result"]["disk_bytes"], 0,
        "nothing but memory moved: {op}"
    );

    assert_one_qemu(&hosts, &uuid, 1);
    // The volume's record moved; its file stayed where both hosts see it.
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is still there"
    );
    assert_eq!(b.daemon.json(&["volume", "show", "data"])["path"], path);
    let gone = a.daemon.fails(&["volume", "show", "data"]);
    assert!(gone.contains("not found"), "{gone}");
    assert_eq!(b.daemon.vm("db")["spec"]["disks"][0]["path"], path);

    wait_writer_past(b, "db", 20);
    assert_counter_continued(b, "db");
    let last = stop_writer(b, "db");
    assert_pattern_whole(b, "db", last);
}

/// A refused migration says which field and what to do, and leaves nothing on the
/// destination; the VM runs on at the source.
#[test]
fn preflight_refusals_name_the_field_and_leave_nothing() {
    let hosts = Hosts::new("mref", 2);
    let (a, b) = (hosts.host(0), hosts.host(1));
    a.daemon
        .ok(&["network", "create", "lab", "--type", "isolated"]);
    boot(a, "web", "size=32M");
    let refused = |body: Value, field: &str| {
        let (status, reply) = a
            .daemon
            .http("POST", "/api/v1/vms/web/migrate", &body.to_string());
        assert_eq!(status, 400, "{reply}");
        assert_eq!(reply["field"], field, "{reply}");
        assert!(
            reply["hint"].as_str().is_some_and(|h| !h.is_empty()),
            "{reply}"
        );
        reply
    };
    let request = |dest: Value| serde_json::json!({ "destination": dest });

    // The name is taken there.
    b.daemon
        .define("web", &["--memory", "128M", "--network", "none"]);
    let reply = refused(request(hosts.target(1)), "name");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("already has a VM named 'web'"),
        "{reply}"
    );
    let err = a.daemon.fails(&["migrate", "web", "--to", "h1"]);
    assert!(
        err.contains("already has a VM named 'web'") && err.contains("hint"),
        "{err}"
    );
    b.daemon.ok(&["delete", "web"]);

    // A dry run shows every check, and fails the command when one fails.
    let out = a
        .daemon
        .corral(&["migrate", "web", "--to", "h1", "--dry-run"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The wrong token, an unreachable host, a bad fingerprint, a stopped VM.
    let mut wrong = hosts.target(1);
    wrong["token"] = "corral_nope_nope".into();
    refused(request(wrong), "destination.token");
    let mut dead = hosts.target(1);
    dead["url"] = "https://10.88.0.9:8443".into();
    refused(request(dead), "destination.url");
    let mut bad = hosts.target(1);
    bad["fingerprint"] = "abc".into();
    refused(request(bad), "destination.fingerprint");
    let mut bw = request(hosts.target(1));
    bw["bandwidth_bytes"] = 0.into();
    refused(bw, "bandwidth_bytes");

    // A NIC on a network the destination lacks.
    a.daemon.ok(&["stop", "web", "--force"]);
    let (status, reply) = a.daemon.http(
        "POST",
        "/api/v1/vms/web/migrate",
        &request(hosts.target(1)).to_string(),
    );
    assert_eq!(
        status, 409,
        "a stopped VM has nothing to move live: {reply}"
    );
    a.daemon.ok(&["nic", "add", "web", "--network", "lab"]);
    a.daemon.start_and_wait("web");
    refused(request(hosts.target(1)), "nics[0].source");

    // Nothing happened on the destination; the VM runs here.
    assert!(b.vm_names().is_empty());
    assert!(b.pool_files().is_empty(), "{:?}", b.pool_files());
    assert_eq!(a.daemon.state("web"), "running");
    assert_one_qemu(&hosts, &uuid_of(a, "web"), 0);
}

/// Fills the guest's memory with random bytes, so that sending it takes a while at a
/// low bandwidth.
fn fill_memory(h: &Host, name: &str, mib: u32) {
    h.daemon.guest_run(
        name,
        &format!("dd if=/dev/urandom of=/tmp/fill bs=1M count={mib} 2>/dev/null"),
    );
}

/// Starts `corral migrate` in the background and waits until its operation reports
/// `phase`; the operation's id and the CLI's process.
// The CLI's process goes to the caller, which waits for it.
#[allow(clippy::zombie_processes)]
fn migrate_until(
    h: &Host,
    name: &str,
    extra: &[&str],
    phase: &str,
) -> (String, std::process::Child) {
    let mut args = vec!["migrate", name, "--to", "h1"];
    args.extend_from_slice(extra);
    let child = h.daemon.corral_spawn(&args);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ops = h.daemon.json(&["operation", "list"]);
        let op = ops
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|o| o["kind"] == "vm.migrate" && o["state"] == "running")
            .cloned();
        if let Some(op) = op.filter(|o| o["detail"]["phase"] == phase) {
            return (op["id"].as_str().unwrap().to_string(), child);
        }
        assert!(
            Instant::now() < deadline,
            "no migration reached {phase}: {ops}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until host `h` has no trace of the VM: no record, no files, no QEMU.
fn assert_left_nothing(hosts: &Hosts, i: usize, uuid: &str) {
    let h = hosts.host(i);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(h.vm_names().is_empty()
        && h.pool_files().is_empty()
        && hosts.qemus_of(uuid).iter().all(|(host, _)| *host != i))
    {
        assert!(
            Instant::now() < deadline,
            "{} keeps {:?}, files {:?}, QEMUs {:?}",
            h.name,
            h.vm_names(),
            h.pool_files(),
            hosts.qemus_of(uuid)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_cancel_before_switch_over_leaves_the_guest_running_at_the_source() {
    let hosts = Hosts::new("mcan", 2);
    let a = hosts.host(0);
    boot(a, "web", "size=64M");
    let uuid = uuid_of(a, "web");
    fill_memory(a, "web", 120);
    start_load(a, "web");
    let (id, child) = migrate_until(a, "web", &["--bandwidth", "4M"], "memory");
    a.daemon.ok(&["operation", "cancel", &id]);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cancelled"),
        "{out:?}"
    );

    assert_eq!(a.daemon.state("web"), "running");
    assert_left_nothing(&hosts, 1, &uuid);
    assert_one_qemu(&hosts, &uuid, 0);
    // The guest never stopped: its counter and writer go on here.
    wait_writer_past(a, "web", 10);
    // And nothing left over stands in the way of the next migration.
    let op = migrate(a, "web", "h1", &[]);
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_one_qemu(&hosts, &uuid, 1);
    let b = hosts.host(1);
    let last = stop_writer(b, "web");
    assert_pattern_whole(b, "web", last);
}

#[test]
fn a_cut_link_during_transfer_leaves_the_guest_at_the_source() {
    let hosts = Hosts::new("mcut", 2);
    let a = hosts.host(0);
    boot(a, "web", "size=64M");
    let uuid = uuid_of(a, "web");
    fill_memory(a, "web", 120);
    start_load(a, "web");
    let (_, child) = migrate_until(a, "web", &["--bandwidth", "4M"], "memory");
    hosts.cut(1);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no progress") || err.contains("failed"),
        "{err}"
    );
    assert_eq!(a.daemon.state("web"), "running");
    // Cut off, the destination still holds its half, never running: it says so.
    assert_eq!(hosts.host(1).daemon.state("web"), "incoming");
    // Once the link is back, the destination is told to give up, and does.
    hosts.heal(1);
    assert_left_nothing(&hosts, 1, &uuid);
    assert_one_qemu(&hosts, &uuid, 0);
    wait_writer_past(a, "web", 10);
    let last = stop_writer(a, "web");
    assert_pattern_whole(a, "web", last);
}

/// Which daemon a fault hits.
#[derive(Clone, Copy, Debug)]
enum End {
    Source,
    Destination,
}

const PHASES: &str = "migration.prepared=1500,migration.mirroring=1500,migration.memory=1500,\
migration.switching=1500,migration.cleanup=1500,migration.incoming.prepared=1500,\
migration.incoming.resuming=1500";

/// Waits until the VM runs on `owner` alone: one QEMU, there; listed there as running
/// and nowhere else; its disk in `owner`'s pool only.
fn wait_settled(hosts: &Hosts, uuid: &str, owner: usize) {
    let other = 1 - owner;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let qemus = hosts.qemus_of(uuid);
        let (o, x) = (hosts.host(owner), hosts.host(other));
        let settled = qemus.len() == 1
            && qemus[0].0 == owner
            && o.vm_names() == vec!["web".to_string()]
            && o.daemon.state("web") == "running"
            && x.vm_names().is_empty()
            && x.pool_files().is_empty()
            && o.pool_files().len() == 1;
        if settled {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not settled on h{owner}: QEMUs {qemus:?}, h{owner} {:?} {:?}, h{other} {:?} {:?}",
            o.vm_names(),
            o.pool_files(),
            x.vm_names(),
            x.pool_files()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_daemon_killed_at_any_phase_leaves_exactly_one_guest() {
    let env: &[(&str, &str)] = &[("CORRAL_TESTPOINTS", PHASES)];
    let mut hosts = Hosts::with_env("mkill", 2, &[env, env]);
    boot(hosts.host(0), "web", "size=64M");
    let uuid = uuid_of(hosts.host(0), "web");
    start_load(hosts.host(0), "web");
    hosts
        .host(0)
        .daemon
        .wait_console("web", "<W10>", Duration::from_secs(60));
    let mut owner = 0;
    let cases = [
        (End::Source, "migration.prepared", false),
        (End::Source, "migration.mirroring", false),
        (End::Source, "migration.memory", false),
        (End::Source, "migration.switching", true),
        (End::Source, "migration.cleanup", true),
        (End::Destination, "migration.incoming.prepared", false),
        (End::Destination, "migration.incoming.resuming", true),
    ];
    for (end, point, moves) in cases {
        let (src, dst) = (owner, 1 - owner);
        let victim = match end {
            End::Source => src,
            End::Destination => dst,
        };
        let marker = format!("testpoint {point} reached");
        let seen = hosts.host(victim).daemon.log().matches(&marker).count();
        let to = hosts.host(dst).name.clone();
        let cli = hosts
            .host(src)
            .daemon
            .corral_spawn(&["migrate", "web", "--to", &to]);
        let deadline = Instant::now() + Duration::from_secs(90);
        while hosts.host(victim).daemon.log().matches(&marker).count() == seen {
            assert!(Instant::now() < deadline, "{point} never reached");
            std::thread::sleep(Duration::from_millis(50));
        }
        hosts.host_mut(victim).daemon.restart();
        let _ = cli.wait_with_output();
        owner = if moves { dst } else { src };
        wait_settled(&hosts, &uuid, owner);
        // The guest goes on, wherever it is.
        let o = hosts.host(owner);
        wait_writer_past(o, "web", 5);
        eprintln!("{end:?} killed at {point}: the guest runs on h{owner}");
    }
    let o = hosts.host(owner);
    let last = stop_writer(o, "web");
    assert_pattern_whole(o, "web", last);
}

/// What a host holds that a VM's presence leaves behind: taps, runtime dirs, pool
/// files, DHCP reservations, and the length of its nftables ruleset.
fn footprint(h: &Host) -> (usize, usize, usize, usize, usize) {
    let taps =
        h.ns.exec_ok(&["ip", "-o", "link", "show", "type", "tun"])
            .lines()
            .count();
    let runs = std::fs::read_dir(h.daemon.state_dir().join("run"))
        .map(|d| d.count())
        .unwrap_or(0);
    let reservations = std::fs::read_to_string(h.daemon.state_dir().join("networks/lab/hosts"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    let rules = h.ns.exec_ok(&["nft", "list", "ruleset"]).lines().count();
    (taps, runs, h.pool_files().len(), reservations, rules)
}

/// Twenty migrations back and forth of one VM with a NIC on a NAT network (the same
/// network, by name and subnet, on both hosts): the guest keeps its MAC, its address
/// reservation follows it, and nothing accumulates on either host.
#[test]
fn ping_pong_twenty_times_leaks_nothing() {
    let hosts = Hosts::new("mpp", 2);
    for h in &hosts.hosts {
        h.daemon.ok(&[
            "network",
            "create",
            "lab",
            "--type",
            "nat",
            "--subnet",
            "10.90.0.1/24",
        ]);
    }
    let (k, i) = guest();
    let a = hosts.host(0);
    a.daemon.ok(&[
        "create",
        "web",
        "--memory",
        "256M",
        "--disk",
        "size=32M",
        "--network",
        "lab",
        "--start",
        "--kernel",
        &k.display().to_string(),
        "--initrd",
        &i.display().to_string(),
        "--cmdline",
        GUEST_CMDLINE,
    ]);
    a.daemon.wait_console("web", "CORRAL-GUEST-READY", BOOT);
    let uuid = uuid_of(a, "web");
    let nic = a.daemon.vm("web")["spec"]["nics"][0].clone();
    let empty = footprint(hosts.host(1));
    let full = footprint(a);
    assert_eq!(
        (full.0, full.2, full.3),
        (1, 1, 1),
        "one tap, one disk, one reservation: {full:?}"
    );
    start_load(a, "web");

    for n in 0..20 {
        let (src, dst) = (n % 2, 1 - n % 2);
        let op = migrate(hosts.host(src), "web", &hosts.host(dst).name, &[]);
        assert_eq!(op["state"], "succeeded", "migration {n}: {op}");
        assert_one_qemu(&hosts, &uuid, dst);
        let (s, d) = (footprint(hosts.host(src)), footprint(hosts.host(dst)));
        assert_eq!(s, empty, "migration {n}: h{src} keeps something");
        assert_eq!(
            d, full,
            "migration {n}: h{dst} is not as the first host was"
        );
        assert_eq!(hosts.host(dst).daemon.vm("web")["spec"]["nics"][0], nic);
    }
    let home = hosts.host(0);
    assert_eq!(home.vm_names(), vec!["web".to_string()]);
    assert!(hosts.host(1).vm_names().is_empty());
    wait_writer_past(home, "web", 10);
    let last = stop_writer(home, "web");
    assert_pattern_whole(home, "web", last);
}

/// A kernel setting, put back as it was when dropped.
struct Sysctl {
    path: std::path::PathBuf,
    was: String,
}

impl Sysctl {
    fn set(name: &str, value: &str) -> Sysctl {
        let path = std::path::Path::new("/proc/sys").join(name.replace('.', "/"));
        let was = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, value).unwrap();
        Sysctl { path, was }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, self.was.trim());
    }
}

#[test]
fn post_copy_is_refused_without_userfaultfd_and_moves_the_guest_with_it() {
    let hosts = Hosts::new("mpost", 2);
    let a = hosts.host(0);
    boot(a, "web", "size=64M");
    let uuid = uuid_of(a, "web");
    fill_memory(a, "web", 60);
    start_load(a, "web");
    a.daemon
        .wait_console("web", "<W10>", Duration::from_secs(60));

    // Debian's default: unprivileged processes (QEMU here) get no userfaultfd.
    let sysctl = Sysctl::set("vm.unprivileged_userfaultfd", "0");
    let err = a
        .daemon
        .fails(&["migrate", "web", "--to", "h1", "--postcopy"]);
    assert!(err.contains("vm.unprivileged_userfaultfd"), "{err}");
    assert!(hosts.host(1).vm_names().is_empty());

    std::fs::write("/proc/sys/vm/unprivileged_userfaultfd", "1").unwrap();
    let op = migrate(a, "web", "h1", &["--postcopy"]);
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(op["result"]["postcopy"], true, "{op}");
    assert_one_qemu(&hosts, &uuid, 1);
    let b = hosts.host(1);
    wait_writer_past(b, "web", 10);
    assert_counter_continued(b, "web");

    // `auto` switches only when pre-copy stops converging; an idle guest converges.
    let op = migrate(b, "web", "h0", &["--postcopy", "auto"]);
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_one_qemu(&hosts, &uuid, 0);
    drop(sysctl);
    let last = stop_writer(a, "web");
    assert_pattern_whole(a, "web", last);
}

/// Devices plugged into a running VM sit where there was room, not where a fresh start
/// would put them; the destination must put them in the same places (or QEMU cannot
/// load their state). On `pc` two disks are plugged in and the first out again (a gap
/// and a device past it), then a NIC; on q35 a disk goes into a spare root port where a
/// fresh start would put it on the root bus. (This test guest's kernel sees a device in
/// q35's first spare root port only, so q35 gets one.)
#[test]
fn hot_plugged_devices_keep_their_places() {
    let hosts = Hosts::new("mhot", 2);
    let (a, b) = (hosts.host(0), hosts.host(1));
    for h in [a, b] {
        h.daemon
            .ok(&["network", "create", "iso", "--type", "isolated"]);
    }
    let (k, i) = guest();
    for (vm, machine) in [("hp", "pc"), ("hq", "q35")] {
        a.daemon.ok(&[
            "create",
            vm,
            "--machine",
            machine,
            "--memory",
            "256M",
            "--disk",
            "size=16M",
            "--network",
            "none",
            "--start",
            "--kernel",
            &k.display().to_string(),
            "--initrd",
            &i.display().to_string(),
            "--cmdline",
            GUEST_CMDLINE,
        ]);
        a.daemon.wait_console(vm, "CORRAL-GUEST-READY", BOOT);
        // Each step waits for the guest to have seen the one before.
        let seen = |what: &str, command: &str, n: &str| {
            let got = a.daemon.guest_poll(vm, command, n, Duration::from_secs(60));
            assert_eq!(got, n, "{vm}: {what}: {}", a.daemon.console_log(vm));
        };
        let disks = "ls /sys/block | grep -c vd";
        let plugged: &[&str] = if machine == "pc" {
            &["x1", "x2"]
        } else {
            &["x1"]
        };
        for (n, volume) in plugged.iter().enumerate() {
            let volume = format!("{vm}-{volume}");
            a.daemon.ok(&["volume", "create", &volume, "--size", "16M"]);
            a.daemon.ok(&["volume", "attach", &volume, vm]);
            seen("disks", disks, &(n + 2).to_string());
        }
        if machine == "pc" {
            a.daemon.ok(&["volume", "detach", &format!("{vm}-x1"), vm]);
            seen("disks", disks, "2");
            a.daemon.ok(&["nic", "add", vm, "--network", "iso"]);
            seen("NICs", "ls /sys/class/net | grep -c eth", "1");
        }
        let op = migrate(a, vm, "h1", &[]);
        assert_eq!(op["state"], "succeeded", "{vm} on {machine}: {op}");
        assert_one_qemu(&hosts, &uuid_of(b, vm), 1);
        // The guest still has its disks (and NIC), and writes to the plugged one.
        let got = b.daemon.guest_poll(vm, disks, "2", Duration::from_secs(30));
        assert_eq!(got, "2", "{vm}: {}", b.daemon.console_log(vm));
        b.daemon
            .guest_run(vm, "echo hot > /dev/vdb && sync && echo WROTE-$((1+1))");
        b.daemon
            .wait_console(vm, "WROTE-2", Duration::from_secs(30));
    }
}

/// Writes `text` at the start of the guest's first disk, synced.
fn guest_writes(h: &Host, vm: &str, text: &str) {
    h.daemon
        .guest_run(vm, &format!("printf {text} > /dev/vda; sync"));
}

/// What the VM's disk reads (through its whole chain) at its start: `n` bytes.
fn disk_head(h: &Host, vm: &str, n: usize) -> String {
    let path = h.daemon.vm(vm)["spec"]["disks"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    corral_tests::image_head(&path, n)
}

/// A disk with snapshots (a chain of images, in a pool that lies elsewhere on the
/// destination) and one made from a `corral image` keep their shape: the images below
/// the top are sent whole (repointed to where they lie there) and only the top is
/// mirrored; the snapshots move with the VM and revert there; nothing stays behind.
#[test]
fn a_disk_with_snapshots_or_a_base_image_moves_with_its_chain() {
    let hosts = Hosts::new("mchain", 2);
    let (a, b) = (hosts.host(0), hosts.host(1));
    boot(a, "snap", "size=32M");
    guest_writes(a, "snap", "one");
    a.daemon.ok(&["snapshot", "create", "snap", "s1"]);
    guest_writes(a, "snap", "two");
    a.daemon.ok(&["snapshot", "create", "snap", "s2"]);
    guest_writes(a, "snap", "tri");
    // A linked clone of an image: its disk reads through the image.
    a.daemon.ok(&["volume", "create", "gold", "--size", "32M"]);
    a.daemon
        .ok(&["image", "create", "base", "--from-volume", "gold"]);
    let (k, i) = guest();
    a.daemon.ok(&[
        "create",
        "linked",
        "--image",
        "base",
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
        GUEST_CMDLINE,
    ]);
    a.daemon.wait_console("linked", "CORRAL-GUEST-READY", BOOT);
    guest_writes(a, "linked", "lnk");

    for vm in ["snap", "linked"] {
        let report = a.daemon.json(&["migrate", vm, "--to", "h1", "--dry-run"]);
        assert_eq!(report["ok"], true, "{vm}: {report}");
        let op = migrate(a, vm, "h1", &[]);
        assert_eq!(op["state"], "succeeded", "{vm}: {op}");
        assert_one_qemu(&hosts, &uuid_of(b, vm), 1);
    }
    assert_eq!(disk_head(b, "snap", 3), "tri");
    assert_eq!(disk_head(b, "linked", 3), "lnk");
    // The snapshots came along, with their data, and revert there.
    let tree = b.daemon.json(&["snapshot", "list", "snap"]);
    let names: Vec<&str> = tree["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["s1", "s2"], "{tree}");
    // (Reverting a running VM starts it again from the snapshot.)
    let boots = b
        .daemon
        .console_log("snap")
        .matches("CORRAL-GUEST-READY")
        .count();
    b.daemon.ok(&["snapshot", "revert", "snap", "s1"]);
    assert_eq!(disk_head(b, "snap", 3), "one");
    let deadline = Instant::now() + BOOT;
    while b
        .daemon
        .console_log("snap")
        .matches("CORRAL-GUEST-READY")
        .count()
        <= boots
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            b.daemon.console_log("snap")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The image is known there too (its linked clone reads through it), and stays
    // here (others may be made from it): only the VMs' own files left this host.
    assert_eq!(b.daemon.json(&["image", "show", "base"])["name"], "base");
    assert_eq!(a.daemon.json(&["image", "show", "base"])["name"], "base");
    let left: Vec<String> = a
        .pool_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.iter()
            .all(|f| f.starts_with("base") || f.starts_with("gold")),
        "{left:?}"
    );
    b.daemon.assert_pool_clean("default");
    a.daemon.assert_pool_clean("default");
}
