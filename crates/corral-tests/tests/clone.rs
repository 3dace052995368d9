//! `corral clone`: a full, independent copy with a new identity.

#![allow(clippy::unwrap_used)]

use corral_tests::{image_head, Daemon};

#[test]
fn full_clone_is_independent_with_new_identity() {
    let d = Daemon::start();
    d.ok(&["volume", "create", "extra", "--size", "32M"]);
    let g = corral_tests::guest_args();
    let mut args = vec![
        "create",
        "src",
        "--memory",
        "256M",
        "--disk",
        "size=64M",
        "--disk",
        "vol=extra",
    ];
    args.extend(g.iter().map(String::as_str));
    d.ok(&args);
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
    d.define(
        "live",
        &[
            "--memory",
            "256M",
            "--disk",
            "size=64M",
            "--network",
            "none",
        ],
    );
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
    let g = corral_tests::guest_args();
    let mut args = vec![
        "create",
        "big",
        "--memory",
        "128M",
        "--disk",
        "size=1G",
        "--network",
        "none",
    ];
    args.extend(g.iter().map(String::as_str));
    d.ok(&args);
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
