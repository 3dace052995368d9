//! Snapshots of running VMs: disks switched onto new overlays without stopping the
//! guest, merges by block job while it runs, and memory snapshots that resume the guest
//! exactly where it was.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use corral_tests::{image_head, qemu_img_check, Daemon};

fn active(d: &Daemon, vm: &str) -> String {
    d.vm(vm)["spec"]["disks"][0]["path"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Has the guest print what its disk holds, bypassing its page cache.
fn guest_sees(d: &Daemon, vm: &str, expected: &str) {
    d.guest_run(
        vm,
        "sync; echo 3 > /proc/sys/vm/drop_caches; echo DISK-$(head -c 3 /dev/vda)-END",
    );
    d.wait_console(vm, &format!("DISK-{expected}-END"), Duration::from_secs(30));
}

fn guest_writes(d: &Daemon, vm: &str, text: &str) {
    d.guest_run(vm, &format!("printf {text} > /dev/vda; sync"));
}

#[test]
fn running_vm_snapshots_and_merges_without_stopping() {
    let d = Daemon::start();
    d.define_with_disk("live", "64M");
    d.start_and_wait("live");
    let pid = d.vm("live")["status"]["pid"].as_u64().unwrap();
    guest_writes(&d, "live", "one");
    d.ok(&["snapshot", "create", "live", "s1"]);
    guest_writes(&d, "live", "two");
    d.ok(&["snapshot", "create", "live", "s2"]);
    guest_writes(&d, "live", "tri");
    // The same QEMU ran throughout, and the disk is now the third image of the chain.
    assert_eq!(d.vm("live")["status"]["pid"].as_u64().unwrap(), pid);
    assert_eq!(d.state("live"), "running");
    let tree = d.json(&["snapshot", "list", "live"]);
    assert_eq!(tree["current"], "s2");

    // Delete the root while running: its data is streamed into the running disk.
    d.op_succeeds(&["snapshot", "delete", "live", "s1"]);
    guest_sees(&d, "live", "tri");
    // Delete the snapshot the VM runs on.
    d.op_succeeds(&["snapshot", "delete", "live", "s2"]);
    guest_sees(&d, "live", "tri");
    assert_eq!(d.vm("live")["status"]["pid"].as_u64().unwrap(), pid);

    // Snapshot again, then revert the running VM: it is powered off and boots from the
    // snapshot's disk.
    d.ok(&["snapshot", "create", "live", "s3"]);
    guest_writes(&d, "live", "for");
    let before = d.console_log("live").matches("CORRAL-GUEST-READY").count();
    d.ok(&["snapshot", "revert", "live", "s3"]);
    assert_eq!(d.state("live"), "running");
    assert_ne!(d.vm("live")["status"]["pid"].as_u64().unwrap(), pid);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while d.console_log("live").matches("CORRAL-GUEST-READY").count() <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "no reboot after revert"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    guest_sees(&d, "live", "tri");

    d.ok(&["stop", "live", "--force"]);
    let top = active(&d, "live");
    assert_eq!(image_head(&top, 3), "tri");
    qemu_img_check(&top);
    d.op_succeeds(&["snapshot", "delete", "live", "s3"]);
    assert_eq!(image_head(&active(&d, "live"), 3), "tri");
    d.assert_pool_clean("default");
    d.ok(&["delete", "live"]);
    d.assert_pool_clean("default");
}

#[test]
fn memory_snapshot_resumes_the_guest_where_it_was() {
    let d = Daemon::start();
    d.define_with_disk("mem", "64M");
    // No memory to save while stopped: a 400 naming the field.
    let err = d.fails(&["snapshot", "create", "mem", "m0", "--memory"]);
    assert!(err.contains("memory"), "{err}");
    assert!(d.json(&["snapshot", "list", "mem"])["snapshots"]
        .as_array()
        .unwrap()
        .is_empty());

    d.start_and_wait("mem");
    d.guest_run("mem", "echo before > /tmp/mark");
    guest_writes(&d, "mem", "one");
    // Two live switches first: the overlay added at run time becomes a backing file
    // (reopened read-only) before the memory is saved and the disks reactivated.
    d.ok(&["snapshot", "create", "mem", "d1"]);
    d.ok(&["snapshot", "create", "mem", "d2"]);
    d.ok(&["snapshot", "create", "mem", "m1", "--memory"]);
    assert_eq!(d.state("mem"), "running");
    let tree = d.json(&["snapshot", "list", "mem"]);
    let saved = &tree["snapshots"][2]["memory"];
    assert!(saved["size_bytes"].as_u64().unwrap() > 1 << 20, "{tree}");
    assert_eq!(saved["paused"], false);
    let mem_file = saved["file"].as_str().unwrap().to_string();
    assert!(std::path::Path::new(&mem_file).exists());
    assert!(d.ok(&["snapshot", "list", "mem"]).contains("+memory"));

    d.guest_run("mem", "echo after > /tmp/mark");
    guest_writes(&d, "mem", "two");
    d.ok(&["snapshot", "revert", "mem", "m1"]);
    assert_eq!(d.state("mem"), "running");
    // The guest did not boot again: it carries on with the RAM it had.
    d.guest_run("mem", "echo MARK-$(cat /tmp/mark)-END");
    d.wait_console("mem", "MARK-before-END", Duration::from_secs(30));
    guest_sees(&d, "mem", "one");

    // A paused guest is saved paused and comes back paused.
    d.ok(&["pause", "mem"]);
    d.ok(&["snapshot", "create", "mem", "m2", "--memory"]);
    assert_eq!(d.state("mem"), "paused");
    d.ok(&["resume", "mem"]);
    d.guest_run("mem", "echo later > /tmp/mark");
    d.ok(&["snapshot", "revert", "mem", "m2"]);
    assert_eq!(d.state("mem"), "paused");
    d.ok(&["resume", "mem"]);
    d.guest_run("mem", "echo MARK2-$(cat /tmp/mark)-END");
    d.wait_console("mem", "MARK2-before-END", Duration::from_secs(30));

    // A stopped VM reverted to a memory snapshot starts from it.
    d.ok(&["stop", "mem", "--force"]);
    d.ok(&["snapshot", "revert", "mem", "m1"]);
    assert_eq!(d.state("mem"), "running");
    d.guest_run("mem", "echo MARK3-$(cat /tmp/mark)-END");
    d.wait_console("mem", "MARK3-before-END", Duration::from_secs(30));

    // Deleting the snapshot removes its memory state; nothing is left over.
    d.op_succeeds(&["snapshot", "delete", "mem", "m1"]);
    assert!(!std::path::Path::new(&mem_file).exists());
    d.ok(&["delete", "mem", "--force"]);
    d.assert_pool_clean("default");
    let left: Vec<_> = std::fs::read_dir(d.state_dir().join("memory"))
        .map(|r| r.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn linked_clone_of_a_running_vm() {
    let d = Daemon::start();
    d.define_with_disk("src", "64M");
    d.start_and_wait("src");
    guest_writes(&d, "src", "abc");
    // The source keeps running; the clone sits on snapshot linked-copy of it.
    d.ok(&["clone", "src", "copy", "--linked"]);
    assert_eq!(d.state("src"), "running");
    let tree = d.json(&["snapshot", "list", "src"]);
    assert_eq!(tree["current"], "linked-copy");
    guest_writes(&d, "src", "xyz");
    d.start_and_wait("copy");
    guest_sees(&d, "copy", "abc");
    guest_sees(&d, "src", "xyz");
    d.ok(&["delete", "copy", "--force"]);
    d.op_succeeds(&["snapshot", "delete", "src", "linked-copy"]);
    guest_sees(&d, "src", "xyz");
    d.ok(&["delete", "src", "--force"]);
    d.assert_pool_clean("default");
}

/// kill -9 of the daemon while QEMU streams a deleted snapshot into the running disk:
/// QEMU goes on by itself; after the restart the tree still has the snapshot or not,
/// deleting again finishes, and no data is lost.
#[test]
fn daemon_killed_mid_live_merge() {
    let mut d = Daemon::start();
    d.define_with_disk("merge", "1G");
    let disk = active(&d, "merge");
    let ok = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 7 1M 384M", &disk])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    d.start_and_wait("merge");
    d.ok(&["snapshot", "create", "merge", "root"]);
    guest_writes(&d, "merge", "new");
    let (status, op) = d.http("DELETE", "/api/v1/vms/merge/snapshots/root", "");
    assert_eq!(status, 202, "{op}");
    std::thread::sleep(Duration::from_millis(300));
    d.restart();
    assert_eq!(d.state("merge"), "running");
    let op = d.json(&["operation", "show", op["id"].as_str().unwrap()]);
    let still_there = d.json(&["snapshot", "list", "merge"])["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "root");
    println!(
        "after the kill: operation {}, snapshot kept: {still_there}",
        op["state"]
    );
    if still_there {
        d.op_succeeds(&["snapshot", "delete", "merge", "root"]);
    }
    guest_sees(&d, "merge", "new");
    d.ok(&["stop", "merge", "--force"]);
    let top = active(&d, "merge");
    let read = std::process::Command::new("qemu-io")
        .args(["-r", "-f", "qcow2", "-c", "read -P 7 1M 384M", &top])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&read.stdout);
    assert!(!out.contains("failed"), "{out}");
    qemu_img_check(&top);
    d.assert_pool_clean("default");
}

/// kill -9 of the daemon at several moments of a live snapshot: whatever the record says
/// afterwards, the VM's writes land in the image the record names as its disk (none is
/// lost when the VM is next started from the record), and the pool is consistent.
#[test]
fn daemon_killed_during_live_snapshot_create() {
    let mut d = Daemon::start();
    d.define_with_disk("kill", "64M");
    d.start_and_wait("kill");
    for (round, delay_ms) in [2u64, 15, 40, 90].into_iter().enumerate() {
        let name = format!("k{round}");
        let mut client = d.corral_spawn(&["snapshot", "create", "kill", &name]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        d.restart();
        let _ = client.wait();
        assert_eq!(d.state("kill"), "running");
        let marker = format!("m{round}x");
        guest_writes(&d, "kill", &marker);
        let taken = d.json(&["snapshot", "list", "kill"])["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == name.as_str());
        println!("round {round} (kill after {delay_ms} ms): snapshot recorded: {taken}");
        d.ok(&["stop", "kill", "--force"]);
        // What the record names as the disk holds the write made after the restart.
        assert_eq!(image_head(&active(&d, "kill"), marker.len()), marker);
        qemu_img_check(&active(&d, "kill"));
        // Nothing recorded is missing. An overlay made before the kill but never
        // recorded is an orphan, and `pool show` reports it (never deleted unasked).
        let pool = d.json(&["pool", "show", "default"]);
        assert!(pool["missing"].as_array().unwrap().is_empty(), "{pool}");
        for orphan in pool["orphans"].as_array().unwrap() {
            let orphan = orphan.as_str().unwrap();
            assert!(orphan.contains("/kill-disk0-"), "{pool}");
            assert_ne!(orphan, active(&d, "kill"));
        }
        d.start_and_wait("kill");
    }
}

/// The instant the write-ahead record leaves open: the store already names the new
/// overlay as the disk, QEMU still writes the image below it (the daemon died before the
/// switch). Made exactly here by writing the record with the store while the daemon is
/// dead; the restarted daemon must finish the switch, so the guest's next writes land
/// in the image the record names.
#[test]
fn reattach_finishes_a_recorded_but_unswitched_snapshot() {
    use corral_store::Store;
    let mut d = Daemon::start();
    d.define_with_disk("half", "64M");
    d.start_and_wait("half");
    guest_writes(&d, "half", "old");
    let below = active(&d, "half");
    d.kill9();

    let overlay = below.replace(".qcow2", "-0badc0de.qcow2");
    let ok = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-u", "-F", "qcow2", "-b"])
        .args([&below, &overlay, "64M"])
        .status()
        .unwrap();
    assert!(ok.success());
    {
        let store = corral_store::SqliteStore::open(&d.state_dir().join("corral.db")).unwrap();
        let mut record = store.get_vm("half").unwrap().unwrap();
        record.spec.disks[0].path = overlay.clone();
        let mut volume = store.get_volume("half-disk0").unwrap().unwrap();
        volume.path = overlay.clone();
        let tree = corral_api::SnapshotTree {
            snapshots: vec![corral_api::Snapshot {
                name: "s".into(),
                parent: None,
                created_at: 0,
                description: None,
                disks: vec![corral_api::SnapshotDisk {
                    disk: "disk0".into(),
                    file: below.clone(),
                    format: corral_api::DiskFormat::Qcow2,
                }],
                nvram: None,
                memory: None,
                quiesced: false,
            }],
            current: Some("s".into()),
        };
        store
            .save_vm_and_snapshots(&record.spec, &tree, &[volume])
            .unwrap();
    }
    d.restart();
    assert_eq!(d.state("half"), "running");
    let events = d.ok(&["events", "--vm", "half"]);
    assert!(events.contains("is now complete"), "{events}");
    guest_writes(&d, "half", "new");
    d.ok(&["stop", "half", "--force"]);
    assert_eq!(image_head(&overlay, 3), "new");
    assert_eq!(image_head(&below, 3), "old");
    qemu_img_check(&overlay);
    d.assert_pool_clean("default");
}
