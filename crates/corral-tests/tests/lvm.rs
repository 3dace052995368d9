//! The `lvm-thin` pool driver, end to end.
//!
//! With the kernel's device-mapper (`/dev/mapper/control`), a volume group and thin pool
//! are made on a loop device over a sparse file, and pools, thin volumes, resize, hot and
//! cold attach, a booting VM and the refusals of overlay work are exercised on it; the
//! loop device and group are removed even when the test fails. Without device-mapper
//! (the Firecracker kernels of the CI hosts have none, so this is the branch that runs
//! there) `pool create --driver lvm-thin` must fail with the reason and make nothing.
//!
//! Block devices as VM disks do not need device-mapper: a loop device stands in for a
//! thin LV in `block_device_disk_boots`, which runs everywhere.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use corral_tests::{Daemon, BOOT, SEEN};

const NO_DM: &str = "lvm-thin needs the kernel's device-mapper (dm-thin-pool); this host has none";

/// As the driver decides it: the kernel lists device-mapper among its misc devices
/// (after opening the control node, which loads `dm_mod` where it is a module). A
/// `/dev/mapper/control` node alone is no proof: libdevmapper makes one itself.
fn has_device_mapper() -> bool {
    let _ = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control");
    std::fs::read_to_string("/proc/misc")
        .unwrap()
        .lines()
        .any(|l| l.ends_with(" device-mapper"))
}

/// Runs a host command, asserting success; returns stdout.
fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop device over a sparse file in /tmp; detached and removed on drop.
struct LoopDevice {
    file: PathBuf,
    device: String,
}

impl LoopDevice {
    fn new(tag: &str, size: &str) -> LoopDevice {
        let file = PathBuf::from(format!("/tmp/corral-{tag}-{}.img", std::process::id()));
        sh("truncate", &["-s", size, file.to_str().unwrap()]);
        let mut dev = LoopDevice {
            file,
            device: String::new(),
        };
        dev.device = sh("losetup", &["--find", "--show", dev.file.to_str().unwrap()])
            .trim()
            .to_string();
        dev
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if !self.device.is_empty() {
            let _ = Command::new("losetup").args(["-d", &self.device]).status();
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

/// A volume group with a thin pool `pool` on a loop device; the group (with every LV
/// in it) and the PV label are removed on drop, before the loop device goes.
struct ThinVg {
    vg: String,
    // Dropped after `ThinVg::drop` has run: fields drop after the struct's own drop.
    dev: LoopDevice,
}

impl ThinVg {
    fn new() -> ThinVg {
        let dev = LoopDevice::new("lvm", "1G");
        let t = ThinVg {
            vg: format!("corraltest{}", std::process::id()),
            dev,
        };
        sh("lvm", &["pvcreate", "-q", &t.dev.device]);
        sh("lvm", &["vgcreate", "-q", &t.vg, &t.dev.device]);
        sh(
            "lvm",
            &[
                "lvcreate",
                "-q",
                "--type",
                "thin-pool",
                "-L",
                "256M",
                "-n",
                "pool",
                &t.vg,
            ],
        );
        t
    }

    fn lvs(&self) -> String {
        sh(
            "lvm",
            &["lvs", "--noheadings", "-o", "lv_name,lv_tags", &self.vg],
        )
    }
}

impl Drop for ThinVg {
    fn drop(&mut self) {
        let _ = Command::new("lvm")
            .args(["vgremove", "-ff", "-y", &self.vg])
            .status();
        let _ = Command::new("lvm")
            .args(["pvremove", "-ff", "-y", &self.dev.device])
            .status();
    }
}

#[test]
fn lvm_thin_pool() {
    let d = Daemon::start();
    if has_device_mapper() {
        eprintln!("device-mapper present: running the lvm-thin pool end to end");
        thin_pool_end_to_end(&d);
    } else {
        eprintln!("no device-mapper: checking lvm-thin is refused plainly");
        refused_without_device_mapper(&d);
    }
}

fn refused_without_device_mapper(d: &Daemon) {
    let vg = format!("corraltest{}", std::process::id());
    let err = d.fails(&[
        "pool",
        "create",
        "thin",
        "--driver",
        "lvm-thin",
        "--volume-group",
        &vg,
        "--thin-pool",
        "pool",
    ]);
    assert!(err.contains(NO_DM), "{err}");
    assert!(err.contains("field: driver"), "{err}");
    assert!(err.contains("hint:") && err.contains("dir pool"), "{err}");

    let body = format!(
        r#"{{"name":"thin","driver":"lvm-thin","volume_group":"{vg}","thin_pool":"pool"}}"#
    );
    let (status, body) = d.http("POST", "/api/v1/pools", &body);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "driver");
    assert!(body["error"].as_str().unwrap().contains(NO_DM), "{body}");

    // Nothing was made: no pool record, no event.
    let pools = d.json(&["pool", "list"]);
    let names: Vec<&str> = pools
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["spec"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default"]);
    assert!(d.fails(&["pool", "show", "thin"]).contains("not found"));
    let events = d.ok(&["events"]);
    assert!(!events.contains("pool 'thin'"), "{events}");

    // `host info` says which drivers this host has, and why not.
    let host = d.json(&["host", "info"]);
    let drivers = host["storage_drivers"].as_array().unwrap();
    let find = |name: &str| drivers.iter().find(|x| x["name"] == name).unwrap().clone();
    assert_eq!(find("dir")["available"], true);
    let lvm = find("lvm-thin");
    assert_eq!(lvm["available"], false);
    assert_eq!(lvm["reason"], NO_DM);
    let table = d.ok(&["host", "info"]);
    assert!(
        table.contains(&format!("lvm-thin: unavailable ({NO_DM})")),
        "{table}"
    );
}

fn thin_pool_end_to_end(d: &Daemon) {
    let t = ThinVg::new();
    let create = ["pool", "create", "thin", "--driver", "lvm-thin"];
    let mut args = create.to_vec();
    args.extend(["--volume-group", &t.vg, "--thin-pool", "nosuch"]);
    let err = d.fails(&args);
    assert!(err.contains("field: thin_pool"), "{err}");
    let mut args = create.to_vec();
    args.extend(["--volume-group", &t.vg, "--thin-pool", "pool"]);
    d.ok(&args);
    let pool = d.json(&["pool", "show", "thin"]);
    assert_eq!(pool["capabilities"]["block_devices"], true);
    assert_eq!(pool["capabilities"]["overlays"], false);
    assert_eq!(pool["capacity_bytes"], 256u64 << 20);
    assert!(d.json(&["host", "info"])["storage_drivers"][1]["available"] == true);

    // Volumes: raw thin LVs in whole extents, tagged as Corral's.
    d.ok(&[
        "volume", "create", "data", "--size", "32M", "--pool", "thin",
    ]);
    let v = d.json(&["volume", "show", "data"]);
    assert_eq!(v["format"], "raw");
    let path = format!("/dev/{}/data", t.vg);
    assert_eq!(v["path"], path);
    assert!(Path::new(&path).exists());
    assert!(t.lvs().contains("corral"), "{}", t.lvs());
    let err = d.fails(&["volume", "create", "odd", "--size", "10M", "--pool", "thin"]);
    assert!(
        err.contains("size_bytes") && err.contains("extents"),
        "{err}"
    );
    let err = d.fails(&[
        "volume", "create", "q", "--size", "32M", "--pool", "thin", "--format", "qcow2",
    ]);
    assert!(err.contains("format"), "{err}");
    assert_eq!(
        d.json(&["volume", "list", "--pool", "thin"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A VM boots with the thin LV as its disk; it grows online.
    d.boot("lv", &["--network", "none", "--disk", "vol=data"]);
    d.wait_console("lv", "CORRAL-GUEST-READY", BOOT);
    assert!(d.console_log("lv").contains("disk /dev/vda 65536 sectors"));
    d.ok(&["volume", "resize", "data", "--size", "48M"]);
    let out = d.guest_poll("lv", "cat /sys/block/vda/size", "98304", SEEN);
    assert_eq!(out, "98304", "guest should see 48M");

    // Hot attach and detach of a second thin LV.
    d.ok(&["volume", "create", "hot", "--size", "16M", "--pool", "thin"]);
    d.ok(&["volume", "attach", "hot", "lv"]);
    let out = d.guest_poll("lv", "cat /sys/block/vdb/size", "32768", SEEN);
    assert_eq!(out, "32768", "guest should see the 16M disk");
    d.ok(&["volume", "detach", "hot", "lv"]);
    d.ok(&["volume", "delete", "hot"]);
    assert!(!t.lvs().contains("hot"), "{}", t.lvs());

    // No overlays on this pool: snapshots and images are refused, naming the pool.
    d.ok(&["stop", "lv", "--force"]);
    let err = d.fails(&["snapshot", "create", "lv", "s1"]);
    assert!(
        err.contains("pool 'thin'") && err.contains("overlays"),
        "{err}"
    );
    let err = d.fails(&["image", "create", "img", "--from-volume", "data"]);
    assert!(
        err.contains("pool 'thin'") && err.contains("--pool default"),
        "{err}"
    );
    let err = d.fails(&["clone", "lv", "lv2"]);
    assert!(err.contains("pool 'thin'"), "{err}");

    // Deleting: the VM leaves the volume; the volume's LV goes; the thin pool stays.
    d.ok(&["delete", "lv"]);
    let err = d.fails(&["pool", "delete", "thin"]);
    assert!(err.contains("volume"), "{err}");
    d.ok(&["volume", "delete", "data"]);
    assert!(!Path::new(&path).exists());
    d.ok(&["pool", "delete", "thin"]);
    assert!(
        t.lvs().contains("pool"),
        "the thin pool is the user's: {}",
        t.lvs()
    );
}

/// A block device as a VM disk boots (QEMU needs `host_device` for it): what an
/// lvm-thin volume is to QEMU, with a loop device in place of the thin LV.
#[test]
fn block_device_disk_boots() {
    let dev = LoopDevice::new("blk", "24M");
    let d = Daemon::start();
    let disk = format!("path={},format=raw", dev.device);
    d.boot("blk", &["--network", "none", "--disk", &disk]);
    d.wait_console("blk", "CORRAL-GUEST-READY", BOOT);
    assert!(
        d.console_log("blk").contains("disk /dev/vda 49152 sectors"),
        "{}",
        d.console_log("blk")
    );
    // The guest writes through to the device.
    d.guest_run("blk", "echo corral-on-a-block-device > /dev/vda; sync");
    d.ok(&["stop", "blk", "--force"]);
    let head = std::fs::read(&dev.file).unwrap();
    assert!(
        head.starts_with(b"corral-on-a-block-device"),
        "{:?}",
        String::from_utf8_lossy(&head[..32])
    );
    d.ok(&["delete", "blk"]);
    assert!(
        Path::new(&dev.device).exists(),
        "a disk attached by path is never removed"
    );
}
