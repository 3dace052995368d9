//! Snapshots through the daemon with a real guest writing its disk: create, revert,
//! branch, delete any node (root and current included), and nothing lost or left over.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use corral_tests::{image_head, Daemon};

fn guest_writes(d: &Daemon, vm: &str, text: &str) {
    d.start_and_wait(vm);
    d.guest_run(vm, &format!("printf {text} > /dev/vda; sync"));
    d.ok(&["stop", vm]);
}

fn active(d: &Daemon, vm: &str) -> String {
    d.vm(vm)["spec"]["disks"][0]["path"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn snapshot_tree_revert_branch_delete() {
    let d = Daemon::start();
    d.define_with_disk("snap", "64M");

    guest_writes(&d, "snap", "one");
    d.ok(&["snapshot", "create", "snap", "s1", "--description", "first"]);
    guest_writes(&d, "snap", "two");
    d.ok(&["snapshot", "create", "snap", "s2"]);
    guest_writes(&d, "snap", "tri");
    assert_eq!(image_head(&active(&d, "snap"), 3), "tri");

    // The volume and the VM agree on the active image (the top of the chain).
    let vol = d.json(&["volume", "show", "snap-disk0"]);
    assert_eq!(vol["path"].as_str().unwrap(), active(&d, "snap"));

    // Revert to s1 and branch from there.
    d.ok(&["snapshot", "revert", "snap", "s1"]);
    assert_eq!(image_head(&active(&d, "snap"), 3), "one");
    guest_writes(&d, "snap", "alt");
    d.ok(&["snapshot", "create", "snap", "s3"]);
    let tree = d.json(&["snapshot", "list", "snap"]);
    assert_eq!(tree["current"], "s3");
    let text = d.ok(&["snapshot", "list", "snap"]);
    assert!(
        text.contains("s1") && text.contains("└─ s3") && text.contains("(current)"),
        "{text}"
    );

    // Delete the root, which both branches stand on: each keeps its data.
    d.ok(&["snapshot", "delete", "snap", "s1"]);
    assert_eq!(image_head(&active(&d, "snap"), 3), "alt");
    d.ok(&["snapshot", "revert", "snap", "s2"]);
    assert_eq!(image_head(&active(&d, "snap"), 3), "two");
    // Delete the snapshot the VM runs on.
    d.ok(&["snapshot", "delete", "snap", "s2"]);
    assert_eq!(image_head(&active(&d, "snap"), 3), "two");
    let tree = d.json(&["snapshot", "list", "snap"]);
    assert_eq!(tree["snapshots"].as_array().unwrap().len(), 1);
    assert!(tree["current"].is_null());
    // The guest boots from the merged chain.
    d.start_and_wait("snap");

    // (Running VMs: see live_snapshots.rs.)
    d.ok(&["stop", "snap"]);
    let err = d.fails(&["snapshot", "create", "snap", "s3"]);
    assert!(err.contains("already"), "{err}");
    let err = d.fails(&["snapshot", "revert", "snap", "nope"]);
    assert!(err.contains("not found"), "{err}");
    let err = d.fails(&["snapshot", "create", "snap", "Bad/Name"]);
    assert!(err.contains("name"), "{err}");

    let pool = d.json(&["pool", "show", "default"]);
    assert!(pool["orphans"].as_array().unwrap().is_empty(), "{pool}");
    assert!(pool["missing"].as_array().unwrap().is_empty(), "{pool}");

    d.ok(&["delete", "snap"]);
    let left: Vec<_> = std::fs::read_dir(d.state_dir().join("pools/default"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        left.iter().all(|p| Path::new(p)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with('.')),
        "{left:?}"
    );
}

#[test]
fn a_volume_with_snapshots_cannot_be_detached() {
    let d = Daemon::start();
    d.ok(&["volume", "create", "keep", "--size", "16M"]);
    let mut args = vec![
        "create",
        "sv",
        "--memory",
        "128M",
        "--disk",
        "vol=keep",
        "--network",
        "none",
    ];
    let g = corral_tests::guest_args();
    args.extend(g.iter().map(String::as_str));
    d.ok(&args);
    d.ok(&["snapshot", "create", "sv", "a"]);
    let err = d.fails(&["volume", "detach", "keep", "sv"]);
    assert!(err.contains("snapshots"), "{err}");
    // Deleting the VM keeps the volume it did not own, with everything it reads through.
    d.ok(&["delete", "sv"]);
    let vol = d.json(&["volume", "show", "keep"]);
    let out = std::process::Command::new("qemu-img")
        .args(["check", "-q", vol["path"].as_str().unwrap()])
        .status()
        .unwrap();
    assert!(out.success());
    let pool = d.json(&["pool", "show", "default"]);
    assert!(
        pool["orphans"].as_array().unwrap().is_empty(),
        "backing images are accounted for: {pool}"
    );
}

#[test]
fn uefi_vm_nvram_is_part_of_every_snapshot() {
    let d = Daemon::start();
    d.define(
        "efi",
        &[
            "--memory",
            "256M",
            "--machine",
            "q35",
            "--firmware",
            "uefi",
            "--disk",
            "size=32M",
            "--network",
            "none",
        ],
    );
    let nvram = d.vm("efi")["spec"]["nvram"].as_str().unwrap().to_string();
    let original = std::fs::read(&nvram).unwrap();
    // OVMF boots the guest kernel.
    d.start_and_wait("efi");
    d.ok(&["stop", "efi", "--force"]);

    d.ok(&["snapshot", "create", "efi", "s1"]);
    let tree = d.json(&["snapshot", "list", "efi"]);
    let saved = tree["snapshots"][0]["nvram"].as_str().unwrap().to_string();
    let at_s1 = std::fs::read(&nvram).unwrap();
    assert_eq!(std::fs::read(&saved).unwrap(), at_s1);

    // The firmware changes a variable after the snapshot…
    let mut changed = at_s1.clone();
    let last = changed.len() - 1;
    changed[last] ^= 0xff;
    std::fs::write(&nvram, &changed).unwrap();
    // …and reverting puts the snapshot's variables back.
    d.ok(&["snapshot", "revert", "efi", "s1"]);
    assert_eq!(std::fs::read(&nvram).unwrap(), at_s1);
    assert_eq!(original.len(), at_s1.len());

    d.ok(&["snapshot", "delete", "efi", "s1"]);
    assert!(
        !Path::new(&saved).exists(),
        "the snapshot's NVRAM copy goes with it"
    );
    d.ok(&["snapshot", "create", "efi", "s2"]);
    let saved2 = d.json(&["snapshot", "list", "efi"])["snapshots"][0]["nvram"]
        .as_str()
        .unwrap()
        .to_string();
    d.ok(&["delete", "efi"]);
    assert!(!Path::new(&nvram).exists() && !Path::new(&saved2).exists());
}

/// Three disk-only snapshots of a stopped VM with the guest's writes in between, the
/// middle one deleted, reverts to the first and the last: the VM boots, and every
/// snapshot still holds what the guest wrote before it.
#[test]
fn boots_after_deleting_the_middle_snapshot_and_reverting_both_ways() {
    let d = Daemon::start();
    d.define_with_disk("mid", "1G");
    guest_writes(&d, "mid", "one");
    d.ok(&["snapshot", "create", "mid", "s1"]);
    guest_writes(&d, "mid", "two");
    d.ok(&["snapshot", "create", "mid", "s2"]);
    guest_writes(&d, "mid", "tri");
    d.ok(&["snapshot", "create", "mid", "s3"]);
    guest_writes(&d, "mid", "for");

    d.ok(&["snapshot", "delete", "mid", "s2"]);
    d.ok(&["snapshot", "revert", "mid", "s1"]);
    assert_eq!(image_head(&active(&d, "mid"), 3), "one");
    d.ok(&["snapshot", "revert", "mid", "s3"]);
    assert_eq!(image_head(&active(&d, "mid"), 3), "tri");
    let before = d.console_log("mid").matches("CORRAL-GUEST-READY").count();
    let started = std::time::Instant::now();
    d.ok(&["start", "mid"]);
    while d.console_log("mid").matches("CORRAL-GUEST-READY").count() <= before {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(40),
            "no new ready marker within 40 s ({before} before):\n{}",
            d.console_log("mid")
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    eprintln!("ready after {:?}", started.elapsed());
    d.guest_run("mid", "head -c 3 /dev/vda; echo");
    d.ok(&["stop", "mid"]);
    d.assert_pool_clean("default");
}
