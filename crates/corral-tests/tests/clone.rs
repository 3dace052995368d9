//! `corral clone`: a full, independent copy with a new identity.

#![allow(clippy::unwrap_used)]

use corral_tests::{image_head, Daemon};

#[test]
fn full_clone_is_independent_with_new_identity() {
    let d = Daemon::start();
    d.ok(&["volume", "create", "extra", "--size", "32M"]);
    d.define(
        "src",
        &[
            "--memory",
            "256M",
            "--disk",
            "size=64M",
            "--disk",
            "vol=extra",
        ],
    );
    let src = d.vm("src");
    let d0 = src["spec"]["disks"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let d1 = src["spec"]["disks"][1]["path"]
        .as_str()
        .unwrap()
        .to_string();
    std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 65 0 64k", &d0])
        .status()
        .unwrap();
    // A snapshot in between: the clone must read through the chain.
    d.ok(&["snapshot", "create", "src", "s"]);
    let top = d.vm("src")["spec"]["disks"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 66 64k 64k", &top])
        .status()
        .unwrap();
    std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 67 0 4k", &d1])
        .status()
        .unwrap();

    d.ok(&["clone", "src", "dst"]);
    let dst = d.vm("dst");
    assert_ne!(dst["spec"]["uuid"], src["spec"]["uuid"]);
    assert_ne!(dst["spec"]["nics"][0]["mac"], src["spec"]["nics"][0]["mac"]);
    assert_eq!(dst["spec"]["memory_mib"], 256);
    let c0 = dst["spec"]["disks"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let c1 = dst["spec"]["disks"][1]["path"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(dst["spec"]["disks"][0]["volume"], "dst-disk0");
    assert_eq!(dst["spec"]["disks"][1]["volume"], "dst-disk1");
    assert_eq!(dst["spec"]["disks"][1]["owned"], true);
    let same = |a: &str, b: &str| {
        std::process::Command::new("qemu-img")
            .args(["compare", "-q", a, b])
            .status()
            .unwrap()
            .success()
    };
    assert!(same(&top, &c0), "disk0 copied through its snapshot chain");
    assert!(same(&d1, &c1));
    assert!(image_head(&c0, 1) == "A");
    assert!(d.json(&["snapshot", "list", "dst"])["snapshots"]
        .as_array()
        .unwrap()
        .is_empty());

    // Independent: writing the clone leaves the source alone.
    std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 90 0 4k", &c0])
        .status()
        .unwrap();
    assert_eq!(image_head(&top, 1), "A");
    d.start_and_wait("dst");

    let err = d.fails(&["clone", "src", "dst"]);
    assert!(err.contains("already exists"), "{err}");
    let err = d.fails(&["clone", "src", "Bad_Name"]);
    assert!(err.contains("name"), "{err}");
    d.ok(&["delete", "dst", "--force"]);
    assert!(same(&d1, &d1) && std::path::Path::new(&top).exists());
    let pool = d.json(&["pool", "show", "default"]);
    assert!(pool["orphans"].as_array().unwrap().is_empty(), "{pool}");
}

#[test]
fn running_vm_is_cloned_without_stopping() {
    let d = Daemon::start();
    d.define_with_disk("live", "64M");
    d.start_and_wait("live");
    d.guest_run("live", "printf hot! > /dev/vda; sync");
    let pid = d.vm("live")["status"]["pid"].as_u64().unwrap();

    d.ok(&["clone", "live", "copy"]);
    let src = d.vm("live");
    assert_eq!(
        src["status"]["state"], "running",
        "the source never stopped"
    );
    assert_eq!(src["status"]["pid"].as_u64().unwrap(), pid);
    let copy = d.vm("copy");
    assert_eq!(copy["status"]["state"], "stopped");
    let path = copy["spec"]["disks"][0]["path"].as_str().unwrap();
    assert_eq!(image_head(path, 4), "hot!");
    let ok = std::process::Command::new("qemu-img")
        .args(["check", "-q", path])
        .status()
        .unwrap();
    assert!(ok.success());
    d.start_and_wait("copy");
    d.ok(&["delete", "copy", "--force"]);
    d.ok(&["delete", "live", "--force"]);
    let pool = d.json(&["pool", "show", "default"]);
    assert!(pool["orphans"].as_array().unwrap().is_empty(), "{pool}");
}

#[test]
fn daemon_killed_mid_clone_leaves_it_finished_or_rolled_back() {
    let mut d = Daemon::start();
    d.define(
        "big",
        &["--memory", "128M", "--disk", "size=1G", "--network", "none"],
    );
    let disk = d.vm("big")["spec"]["disks"][0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let ok = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 7 0 384M", &disk])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let (status, op) = d.http("POST", "/api/v1/vms/big/clone", r#"{"name":"copy"}"#);
    assert_eq!(status, 202, "{op}");
    std::thread::sleep(std::time::Duration::from_millis(150));
    d.restart();
    let id = op["id"].as_str().unwrap();
    let op = d.json(&["operation", "show", id]);
    match op["state"].as_str().unwrap() {
        // Finished before the kill: the clone is whole.
        "succeeded" => assert_eq!(d.vm("copy")["spec"]["disks"][0]["volume"], "copy-disk0"),
        // Cut short: no VM, no volume, no file — nothing referenced, nothing orphaned.
        "failed" => {
            assert!(
                op["error"]["error"].as_str().unwrap().contains("restarted"),
                "{op}"
            );
            d.fails(&["show", "copy"]);
            d.fails(&["volume", "show", "copy-disk0"]);
        }
        other => panic!("operation is {other} after a restart: {op}"),
    }
    let pool = d.json(&["pool", "show", "default"]);
    assert!(pool["orphans"].as_array().unwrap().is_empty(), "{pool}");
    assert!(pool["missing"].as_array().unwrap().is_empty(), "{pool}");
    let hidden: Vec<_> = std::fs::read_dir(d.state_dir().join("pools/default"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".corral-import")
        })
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
}

// ---- Linked clones (`corral clone SRC DST --linked`) ----

fn qemu_io(path: &str, command: &str) {
    let ok = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", command, path])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success(), "qemu-io {command} {path}");
}

fn sha256(path: &str) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "sha256sum {path}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The backing file `qemu-img info` names for an image.
fn backing_of(path: &str) -> Option<String> {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "--output=json", "-U", path])
        .output()
        .unwrap();
    assert!(out.status.success(), "qemu-img info {path}");
    let info: corral_tests::Value = serde_json::from_slice(&out.stdout).unwrap();
    info["backing-filename"].as_str().map(String::from)
}

fn qemu_img_check(path: &str) {
    let ok = std::process::Command::new("qemu-img")
        .args(["check", "-q", "-U", path])
        .status()
        .unwrap();
    assert!(ok.success(), "qemu-img check {path}");
}

fn disk_path(d: &Daemon, vm: &str, index: usize) -> String {
    d.vm(vm)["spec"]["disks"][index]["path"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Snapshot `name`'s frozen image files of `vm`, in disk order.
fn snapshot_files(d: &Daemon, vm: &str, name: &str) -> Vec<String> {
    let tree = d.json(&["snapshot", "list", vm]);
    let snap = tree["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("{vm} has no snapshot {name}: {tree}"))
        .clone();
    snap["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["file"].as_str().unwrap().to_string())
        .collect()
}

fn assert_pool_clean(d: &Daemon) {
    let pool = d.json(&["pool", "show", "default"]);
    assert!(pool["orphans"].as_array().unwrap().is_empty(), "{pool}");
    assert!(pool["missing"].as_array().unwrap().is_empty(), "{pool}");
}

#[test]
fn linked_clone_is_instant_and_both_vms_run_independently() {
    let d = Daemon::start();
    d.ok(&["volume", "create", "extra", "--size", "32M"]);
    d.define(
        "src",
        &[
            "--memory",
            "256M",
            "--disk",
            "size=64M",
            "--disk",
            "vol=extra",
        ],
    );
    let src = d.vm("src");
    let (d0, d1) = (disk_path(&d, "src", 0), disk_path(&d, "src", 1));
    // 16 MiB of data: a copy would show in the clone's allocation.
    qemu_io(&d0, "write -P 65 0 16M");
    qemu_io(&d1, "write -P 66 0 64k");

    let started = std::time::Instant::now();
    let (status, vm) = d.http(
        "POST",
        "/api/v1/vms/src/clone",
        r#"{"name":"dst","linked":true}"#,
    );
    let took = started.elapsed();
    assert_eq!(status, 201, "a linked clone is not an operation: {vm}");
    assert_eq!(vm["spec"]["name"], "dst");
    assert_eq!(vm["status"]["state"], "stopped");
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");

    // It sits on a new snapshot of the source, taken through the snapshot path.
    let frozen = snapshot_files(&d, "src", "linked-dst");
    assert_eq!(frozen, vec![d0.clone(), d1.clone()]);
    let dst = d.vm("dst");
    assert_ne!(dst["spec"]["uuid"], src["spec"]["uuid"]);
    assert_ne!(dst["spec"]["nics"][0]["mac"], src["spec"]["nics"][0]["mac"]);
    assert_eq!(dst["spec"]["memory_mib"], 256);
    for (i, base) in frozen.iter().enumerate() {
        let disk = &dst["spec"]["disks"][i];
        let path = disk["path"].as_str().unwrap();
        assert_eq!(disk["volume"], format!("dst-disk{i}"));
        assert_eq!(disk["owned"], true);
        // `show` lists the top of the chain: the clone's own overlay on the frozen image.
        assert_eq!(backing_of(path).as_deref(), Some(base.as_str()));
        let allocated = std::fs::metadata(path).unwrap().len();
        assert!(
            allocated < 1 << 20,
            "{path} holds {allocated} bytes: data was copied"
        );
        let vol = d.json(&["volume", "show", &format!("dst-disk{i}")]);
        assert_eq!(vol["owner"], "dst");
        assert_eq!(vol["path"], path);
        assert_eq!(vol["base_snapshot"]["vm"], "src");
        assert_eq!(vol["base_snapshot"]["snapshot"], "linked-dst");
    }
    assert_eq!(dst["spec"]["disks"][0]["size_bytes"], 64 << 20);
    let text = d.ok(&["volume", "show", "dst-disk0"]);
    assert!(text.contains("snapshot linked-dst of VM src"), "{text}");
    assert_eq!(image_head(&disk_path(&d, "dst", 0), 1), "A");
    assert_eq!(image_head(&disk_path(&d, "dst", 1), 1), "B");

    // Writes after the clone stay on their side.
    let (src_top, dst_top) = (disk_path(&d, "src", 0), disk_path(&d, "dst", 0));
    assert_ne!(src_top, d0, "the source moved onto a new overlay");
    qemu_io(&src_top, "write -P 83 0 4k");
    qemu_io(&dst_top, "write -P 68 0 4k");
    assert_eq!(image_head(&src_top, 1), "S");
    assert_eq!(image_head(&dst_top, 1), "D");
    assert_eq!(image_head(&d0, 1), "A", "the frozen image is untouched");

    // Both boot at once, each on its own overlay over the one frozen image.
    d.start_and_wait("src");
    d.start_and_wait("dst");
    d.guest_run("src", "printf src! > /dev/vda; sync");
    d.guest_run("dst", "printf dst! > /dev/vda; sync");
    d.ok(&["stop", "src", "--force"]);
    d.ok(&["stop", "dst", "--force"]);
    assert_eq!(image_head(&src_top, 4), "src!");
    assert_eq!(image_head(&dst_top, 4), "dst!");
    assert_eq!(image_head(&d0, 1), "A");
    for f in [&src_top, &dst_top, &d0] {
        qemu_img_check(f);
    }
    assert_pool_clean(&d);

    // Gone with the clone: its volumes; the source keeps its snapshot.
    d.ok(&["delete", "dst"]);
    assert!(!corral_tests::exists(&dst_top));
    d.fails(&["volume", "show", "dst-disk0"]);
    assert!(corral_tests::exists(&d0));
    assert_eq!(image_head(&src_top, 4), "src!");
    assert_pool_clean(&d);
}

#[test]
fn linked_clone_keeps_its_snapshot_and_source_alive() {
    let d = Daemon::start();
    d.define(
        "src",
        &[
            "--memory",
            "128M",
            "--disk",
            "size=32M",
            "--network",
            "none",
        ],
    );
    qemu_io(&disk_path(&d, "src", 0), "write -P 49 0 64k");
    d.ok(&["snapshot", "create", "src", "s1"]);
    qemu_io(&disk_path(&d, "src", 0), "write -P 50 64k 64k");
    d.ok(&["snapshot", "create", "src", "s2"]);
    qemu_io(&disk_path(&d, "src", 0), "write -P 51 0 4k");

    d.ok(&["clone", "src", "dst", "--linked", "--snapshot", "s2"]);
    let s2 = snapshot_files(&d, "src", "s2");
    let dst_top = disk_path(&d, "dst", 0);
    assert_eq!(backing_of(&dst_top).as_deref(), Some(s2[0].as_str()));
    // No new snapshot of the source was taken.
    let tree = d.json(&["snapshot", "list", "src"]);
    assert_eq!(tree["snapshots"].as_array().unwrap().len(), 2, "{tree}");
    let dst_reads = |d: &Daemon| {
        let top = disk_path(d, "dst", 0);
        (image_head(&top, 1), {
            let raw = image_head(&top, (64 << 10) + 1);
            raw.chars().last().unwrap()
        })
    };
    assert_eq!(dst_reads(&d), ("1".to_string(), '2'));

    // The snapshot and the source cannot go while the clone reads through them.
    let err = d.fails(&["snapshot", "delete", "src", "s2"]);
    assert!(err.contains("linked clone") && err.contains("dst"), "{err}");
    assert!(
        err.contains("corral delete dst"),
        "the hint says what to do: {err}"
    );
    let (status, body) = d.http("DELETE", "/api/v1/vms/src/snapshots/s2", "");
    assert_eq!(status, 409, "{body}");
    let err = d.fails(&["delete", "src"]);
    assert!(err.contains("linked clone") && err.contains("dst"), "{err}");
    d.fails(&["delete", "src", "--force"]);
    assert_eq!(d.state("src"), "stopped");
    assert!(corral_tests::exists(&s2[0]));

    // The clone's own snapshots never write into the frozen images beneath it.
    let before: Vec<String> = s2.iter().map(|f| sha256(f)).collect();
    d.ok(&["snapshot", "create", "dst", "r1"]);
    qemu_io(&disk_path(&d, "dst", 0), "write -P 82 0 4k");
    d.ok(&["snapshot", "create", "dst", "r2"]);
    qemu_io(&disk_path(&d, "dst", 0), "write -P 88 128k 4k");
    // Deleting the clone's root merges it down only as far as its own overlay…
    d.ok(&["snapshot", "delete", "dst", "r1"]);
    d.ok(&["snapshot", "revert", "dst", "r2"]);
    assert_eq!(dst_reads(&d), ("R".to_string(), '2'));
    // …and so does deleting the node it runs on.
    d.ok(&["snapshot", "delete", "dst", "r2"]);
    assert_eq!(dst_reads(&d), ("R".to_string(), '2'));
    let top = disk_path(&d, "dst", 0);
    assert_eq!(backing_of(&top).as_deref(), Some(s2[0].as_str()));
    let after: Vec<String> = s2.iter().map(|f| sha256(f)).collect();
    assert_eq!(before, after, "snapshot s2's images were modified");

    // Reverting the source, and deleting an ancestor of s2, leave what the clone reads;
    // the delete rewrites s2's image in place, which waits until no QEMU holds it.
    d.ok(&["start", "dst"]);
    let err = d.fails(&["snapshot", "delete", "src", "s1"]);
    assert!(
        err.contains("running linked clone 'dst'") && err.contains("corral stop dst"),
        "{err}"
    );
    d.ok(&["stop", "dst", "--force"]);
    d.ok(&["snapshot", "revert", "src", "s1"]);
    d.ok(&["snapshot", "delete", "src", "s1"]);
    assert_eq!(dst_reads(&d), ("R".to_string(), '2'));
    qemu_img_check(&top);
    assert_pool_clean(&d);

    // Once the clone is gone, both deletes go through.
    d.ok(&["delete", "dst"]);
    d.ok(&["snapshot", "delete", "src", "s2"]);
    d.ok(&["delete", "src"]);
    assert!(!corral_tests::exists(&s2[0]));
    assert!(d.json(&["volume", "list"]).as_array().unwrap().is_empty());
    assert_pool_clean(&d);
}

#[test]
fn linked_clone_bad_input_makes_nothing() {
    let d = Daemon::start();
    d.define(
        "src",
        &[
            "--memory",
            "128M",
            "--disk",
            "size=32M",
            "--network",
            "none",
        ],
    );
    d.ok(&["snapshot", "create", "src", "s1"]);
    let snapshots = |d: &Daemon| {
        d.json(&["snapshot", "list", "src"])["snapshots"]
            .as_array()
            .unwrap()
            .len()
    };

    // --snapshot needs --linked.
    let (status, body) = d.http(
        "POST",
        "/api/v1/vms/src/clone",
        r#"{"name":"dst","snapshot":"s1"}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "snapshot");
    assert!(
        body["hint"].as_str().unwrap().contains("--linked"),
        "{body}"
    );
    let err = d.fails(&["clone", "src", "dst", "--snapshot", "s1"]);
    assert!(err.contains("--linked"), "{err}");
    // An unknown snapshot is a 404 naming the field.
    let (status, body) = d.http(
        "POST",
        "/api/v1/vms/src/clone",
        r#"{"name":"dst","linked":true,"snapshot":"nope"}"#,
    );
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["field"], "snapshot");
    assert!(
        body["hint"].as_str().unwrap().contains("snapshot list src"),
        "{body}"
    );
    // Bad names, in the clone's name or the snapshot's.
    for (req, field) in [
        (r#"{"name":"a/b","linked":true}"#, "name"),
        (r#"{"name":"..","linked":true}"#, "name"),
        (
            r#"{"name":"dst","linked":true,"snapshot":"../s1"}"#,
            "snapshot",
        ),
    ] {
        let (status, body) = d.http("POST", "/api/v1/vms/src/clone", req);
        assert_eq!(status, 400, "{req}: {body}");
        assert_eq!(body["field"], field, "{req}: {body}");
    }
    let err = d.fails(&["clone", "src", "a/b", "--linked"]);
    assert!(err.contains("name"), "{err}");
    // An unknown source.
    let (status, _) = d.http(
        "POST",
        "/api/v1/vms/ghost/clone",
        r#"{"name":"x","linked":true}"#,
    );
    assert_eq!(status, 404);
    // The clone's name is taken: no snapshot is taken for it either.
    d.define("taken", &["--memory", "128M", "--network", "none"]);
    let err = d.fails(&["clone", "src", "taken", "--linked"]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(snapshots(&d), 1);
    d.fails(&["show", "dst"]);
    d.fails(&["volume", "show", "dst-disk0"]);

    // A writable file attached by path cannot be shared; refused before any snapshot.
    let file = d.dir.path().join("raw.img");
    std::fs::write(&file, vec![0u8; 1 << 20]).unwrap();
    let spec = format!("path={},format=raw", file.display());
    d.define(
        "withfile",
        &["--memory", "128M", "--network", "none", "--disk", &spec],
    );
    let (status, body) = d.http(
        "POST",
        "/api/v1/vms/withfile/clone",
        r#"{"name":"c2","linked":true}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "disks[0]");
    assert!(d.json(&["snapshot", "list", "withfile"])["snapshots"]
        .as_array()
        .unwrap()
        .is_empty());
    d.fails(&["show", "c2"]);

    // A file in the way of the clone's overlay is never overwritten; no snapshot either.
    let stray = d.state_dir().join("pools/default/dst-disk0.qcow2");
    std::fs::write(&stray, b"not Corral's").unwrap();
    let err = d.fails(&["clone", "src", "dst", "--linked"]);
    assert!(
        err.contains("dst-disk0.qcow2") && err.contains("never overwrites"),
        "{err}"
    );
    assert_eq!(std::fs::read(&stray).unwrap(), b"not Corral's");
    assert_eq!(snapshots(&d), 1);
    d.fails(&["show", "dst"]);
    std::fs::remove_file(&stray).unwrap();

    // A second clone of the same name finds the first one's snapshot and says so.
    d.ok(&["clone", "src", "dst", "--linked"]);
    d.ok(&["delete", "dst"]);
    let err = d.fails(&["clone", "src", "dst", "--linked"]);
    assert!(
        err.contains("linked-dst") && err.contains("--snapshot"),
        "{err}"
    );
    d.ok(&[
        "clone",
        "src",
        "dst",
        "--linked",
        "--snapshot",
        "linked-dst",
    ]);
    assert_eq!(snapshots(&d), 2);
    d.ok(&["delete", "dst"]);
    assert_pool_clean(&d);
}

#[test]
fn uefi_clones_get_their_own_nvram() {
    let d = Daemon::start();
    d.define(
        "efi",
        &[
            "--memory",
            "128M",
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
    d.ok(&["snapshot", "create", "efi", "s1"]);
    let at_s1 = std::fs::read(&nvram).unwrap();
    // The firmware changes a variable after the snapshot.
    let mut changed = at_s1.clone();
    changed[0] ^= 0xff;
    std::fs::write(&nvram, &changed).unwrap();

    // A linked clone starts with the variables of its snapshot, in a file of its own.
    d.ok(&["clone", "efi", "linked", "--linked", "--snapshot", "s1"]);
    let linked = d.vm("linked")["spec"]["nvram"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(linked, nvram);
    assert_eq!(std::fs::read(&linked).unwrap(), at_s1);
    // A full clone starts with the current ones, in a file of its own too.
    d.ok(&["clone", "efi", "full"]);
    let full = d.vm("full")["spec"]["nvram"].as_str().unwrap().to_string();
    assert_ne!(full, nvram);
    assert_eq!(std::fs::read(&full).unwrap(), changed);

    // Deleting the clones leaves the source's variables.
    d.ok(&["delete", "linked"]);
    d.ok(&["delete", "full"]);
    assert!(!corral_tests::exists(&linked) && !corral_tests::exists(&full));
    assert_eq!(std::fs::read(&nvram).unwrap(), changed);
    assert_pool_clean(&d);
}
