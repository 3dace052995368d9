//! Pools and volumes, end to end: dir pools, thin volumes, cold and hot attach/detach,
//! online grow, refusal to delete what is in use, and orphans reported, never lost.

#![allow(clippy::unwrap_used)]

use corral_tests::{exists, Daemon, BOOT, SEEN};

#[test]
fn pools_default_custom_and_bad_input() {
    let d = Daemon::start();
    let pools = d.json(&["pool", "list"]);
    assert_eq!(pools[0]["spec"]["name"], "default");
    assert!(pools[0]["capacity_bytes"].as_u64().unwrap() > 0);
    assert_eq!(pools[0]["capabilities"]["thin"], true);

    let dir = d.dir.path().join("fast");
    let dir_s = dir.display().to_string();
    d.ok(&[
        "pool", "create", "fast", "--driver", "dir", "--path", &dir_s,
    ]);
    assert!(dir.is_dir());
    let pool = d.json(&["pool", "show", "fast"]);
    assert_eq!(pool["spec"]["path"], dir_s);
    assert_eq!(pool["volumes"], 0);

    // Bad input: each names its field, nothing is made.
    let err = d.fails(&[
        "pool", "create", "fast2", "--driver", "dir", "--path", &dir_s,
    ]);
    assert!(
        err.contains("path") && err.contains("already pool"),
        "{err}"
    );
    let err = d.fails(&["pool", "create", "x", "--driver", "zfs", "--path", "/tmp"]);
    assert!(err.contains("driver"), "{err}");
    let err = d.fails(&[
        "pool",
        "create",
        "y",
        "--driver",
        "dir",
        "--path",
        "/nonexistent/a/b",
    ]);
    assert!(err.contains("path"), "{err}");
    let err = d.fails(&[
        "pool", "create", "Bad/Name", "--driver", "dir", "--path", "/tmp",
    ]);
    assert!(err.contains("name"), "{err}");
    let (status, body) = d.http(
        "POST",
        "/api/v1/pools",
        r#"{"name":"z","driver":"dir","path":"../etc"}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "path");
    assert_eq!(d.json(&["pool", "list"]).as_array().unwrap().len(), 2);

    d.ok(&["volume", "create", "v1", "--size", "64M", "--pool", "fast"]);
    let err = d.fails(&["pool", "delete", "fast"]);
    assert!(err.contains("volume"), "{err}");
    d.ok(&["volume", "delete", "v1"]);
    d.ok(&["pool", "delete", "fast"]);
    let err = d.fails(&["pool", "delete", "default"]);
    assert!(err.contains("default"), "{err}");
}

#[test]
fn volumes_create_grow_delete_and_bad_input() {
    let d = Daemon::start();
    d.ok(&["volume", "create", "data", "--size", "1G"]);
    d.ok(&[
        "volume", "create", "rawvol", "--size", "16M", "--format", "raw",
    ]);
    let v = d.json(&["volume", "show", "data"]);
    assert_eq!(v["format"], "qcow2");
    assert_eq!(v["size_bytes"], 1u64 << 30);
    assert!(
        v["allocation_bytes"].as_u64().unwrap() < 1 << 20,
        "thin: {v}"
    );
    let path = v["path"].as_str().unwrap().to_string();
    assert!(exists(&path));
    let list = d.json(&["volume", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2);

    d.ok(&["volume", "resize", "data", "--size", "2G"]);
    assert_eq!(
        d.json(&["volume", "show", "data"])["size_bytes"],
        2u64 << 30
    );
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json", &path])
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["virtual-size"], 2u64 << 30);

    let err = d.fails(&["volume", "resize", "data", "--size", "1G"]);
    assert!(err.contains("only grow"), "{err}");
    let err = d.fails(&["volume", "create", "data", "--size", "1G"]);
    assert!(err.contains("already exists"), "{err}");
    for (args, field) in [
        (vec!["volume", "create", "../x", "--size", "1G"], "name"),
        (vec!["volume", "create", "a/b", "--size", "1G"], "name"),
        (vec!["volume", "create", "huge", "--size", "100P"], "size"),
        (
            vec![
                "volume", "create", "nopool", "--size", "1G", "--pool", "nope",
            ],
            "pool",
        ),
    ] {
        let err = d.fails(&args);
        assert!(err.contains(field), "{args:?}: {err}");
    }
    let (status, body) = d.http(
        "POST",
        "/api/v1/volumes",
        r#"{"name":"f","size_bytes":1048576,"format":"vmdk"}"#,
    );
    assert_eq!(status, 400);
    assert_eq!(body["field"], "format");
    let (status, _) = d.http("POST", "/api/v1/volumes", r#"{"name":"f","size_bytes":0}"#);
    assert_eq!(status, 400);
    assert_eq!(
        d.json(&["volume", "list"]).as_array().unwrap().len(),
        2,
        "nothing half-made"
    );

    d.ok(&["volume", "delete", "data"]);
    assert!(!exists(&path));
    let err = d.fails(&["volume", "show", "data"]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn orphans_and_missing_files_are_reported_not_removed() {
    let d = Daemon::start();
    d.ok(&["volume", "create", "gone", "--size", "16M"]);
    let path = d.json(&["volume", "show", "gone"])["path"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::remove_file(&path).unwrap();
    let stray = d.state_dir().join("pools/default/stray.qcow2");
    std::fs::write(&stray, b"not ours").unwrap();
    let pool = d.json(&["pool", "show", "default"]);
    assert!(
        pool["orphans"].to_string().contains("stray.qcow2"),
        "{pool}"
    );
    assert!(pool["missing"].to_string().contains("gone"), "{pool}");
    let table = d.ok(&["pool", "show", "default"]);
    assert!(table.contains("stray.qcow2"), "{table}");
    assert!(stray.exists(), "orphans are reported, never deleted");
    // A file in the way of a new volume is never overwritten.
    std::fs::write(
        d.state_dir().join("pools/default/blocked.qcow2"),
        b"precious",
    )
    .unwrap();
    let err = d.fails(&["volume", "create", "blocked", "--size", "16M"]);
    assert!(err.contains("already"), "{err}");
    assert_eq!(
        std::fs::read(d.state_dir().join("pools/default/blocked.qcow2")).unwrap(),
        b"precious"
    );
}

#[test]
fn vm_owned_and_attached_volumes() {
    let d = Daemon::start();
    d.ok(&["volume", "create", "shared-data", "--size", "64M"]);
    d.boot(
        "owner",
        &[
            "--disk",
            "size=256M",
            "--disk",
            "vol=shared-data",
            "--network",
            "none",
        ],
    );
    d.wait_console("owner", "CORRAL-GUEST-READY", BOOT);
    let vm = d.vm("owner");
    let disks = vm["spec"]["disks"].as_array().unwrap();
    assert_eq!(disks[0]["volume"], "owner-disk0");
    assert_eq!(disks[0]["owned"], true);
    assert_eq!(disks[1]["volume"], "shared-data");
    assert_eq!(disks[1]["owned"], false);
    let owned = d.json(&["volume", "show", "owner-disk0"]);
    assert_eq!(owned["owner"], "owner");
    assert_eq!(owned["used_by"][0], "owner");
    let err = d.fails(&["volume", "delete", "shared-data"]);
    assert!(err.contains("in use"), "{err}");
    // Another VM cannot take a volume that is attached.
    let err = d.fails(&["create", "thief", "--disk", "vol=shared-data"]);
    assert!(err.contains("attached"), "{err}");

    d.ok(&["delete", "owner", "--force"]);
    let err = d.fails(&["volume", "show", "owner-disk0"]);
    assert!(
        err.contains("not found"),
        "owned volume goes with its VM: {err}"
    );
    let shared = d.json(&["volume", "show", "shared-data"]);
    assert!(shared["used_by"].as_array().unwrap().is_empty());
    assert!(
        exists(shared["path"].as_str().unwrap()),
        "an attached volume outlives the VM"
    );
}

#[test]
fn cold_and_hot_attach_detach_and_online_grow() {
    let d = Daemon::start();
    d.ok(&["volume", "create", "cold", "--size", "32M"]);
    d.ok(&[
        "volume", "create", "hot", "--size", "48M", "--format", "raw",
    ]);
    let mut args = vec!["create", "hp", "--memory", "256M", "--network", "none"];
    let g = corral_tests::guest_args();
    args.extend(g.iter().map(String::as_str));
    d.ok(&args);

    // Cold: the spec changes, the next start sees the disk.
    d.ok(&["volume", "attach", "cold", "hp"]);
    d.ok(&["start", "hp"]);
    d.wait_console("hp", "CORRAL-GUEST-READY", BOOT);
    assert!(
        d.console_log("hp").contains("disk /dev/vda 65536 sectors"),
        "{}",
        d.console_log("hp")
    );

    // Hot attach into the running guest.
    d.ok(&["volume", "attach", "hot", "hp"]);
    let out = d.guest_poll("hp", "cat /sys/block/vdb/size", "98304", SEEN);
    assert_eq!(out, "98304", "guest should see the 48M disk");
    let vm = d.vm("hp");
    assert_eq!(vm["spec"]["disks"][1]["id"], "disk1");

    // Online grow through QMP: the guest sees the new size.
    d.ok(&["volume", "resize", "hot", "--size", "64M"]);
    let out = d.guest_poll("hp", "cat /sys/block/vdb/size", "131072", SEEN);
    assert_eq!(out, "131072", "guest should see 64M");
    assert_eq!(d.vm("hp")["spec"]["disks"][1]["size_bytes"], 64u64 << 20);

    // Hot detach: the guest lets go, the volume is free again.
    d.ok(&["volume", "detach", "hot", "hp"]);
    let out = d.guest_poll("hp", "ls /sys/block | grep -c vdb", "0", SEEN);
    assert_eq!(out, "0", "the guest should have let go of vdb");
    assert!(d.json(&["volume", "show", "hot"])["used_by"]
        .as_array()
        .unwrap()
        .is_empty());
    let err = d.fails(&["volume", "detach", "hot", "hp"]);
    assert!(err.contains("not attached"), "{err}");

    // Re-attach reuses the free id; the running VM keeps working.
    d.ok(&["volume", "attach", "hot", "hp"]);
    assert_eq!(d.vm("hp")["spec"]["disks"][1]["id"], "disk1");
    d.ok(&["stop", "hp"]);
    d.ok(&["volume", "detach", "cold", "hp"]);
    assert_eq!(d.vm("hp")["spec"]["disks"].as_array().unwrap().len(), 1);
    d.ok(&["start", "hp"]);
    d.wait_console("hp", "CORRAL-GUEST-READY", BOOT);
    d.ok(&["delete", "hp", "--force"]);
    assert!(d.json(&["volume", "show", "cold"])["used_by"]
        .as_array()
        .unwrap()
        .is_empty());
}
