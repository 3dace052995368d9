//! Images and linked clones: a base copied from a volume, VMs made from it instantly,
//! and the base kept for as long as anything reads through it.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use corral_tests::{image_head, Daemon};

#[test]
fn linked_clones_from_an_image() {
    let d = Daemon::start();
    d.define_with_disk("golden", "64M");
    d.start_and_wait("golden");
    d.guest_run("golden", "printf gold > /dev/vda; sync");
    // A running VM's volume cannot be copied consistently.
    let err = d.fails(&["image", "create", "base", "--from-volume", "golden-disk0"]);
    assert!(err.contains("stop"), "{err}");
    d.ok(&["stop", "golden"]);

    d.ok(&["image", "create", "base", "--from-volume", "golden-disk0"]);
    let image = d.json(&["image", "show", "base"]);
    assert_eq!(image["source"], "golden-disk0");
    assert_eq!(image_head(image["path"].as_str().unwrap(), 4), "gold");

    for vm in ["c1", "c2"] {
        let started = Instant::now();
        d.define(
            vm,
            &["--memory", "128M", "--image", "base", "--network", "none"],
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        let disk = &d.vm(vm)["spec"]["disks"][0];
        assert_eq!(disk["volume"], format!("{vm}-disk0"));
        assert_eq!(image_head(disk["path"].as_str().unwrap(), 4), "gold");
        let vol = d.json(&["volume", "show", &format!("{vm}-disk0")]);
        assert_eq!(vol["base_image"], "base");
        assert!(
            vol["allocation_bytes"].as_u64().unwrap() < 1 << 20,
            "linked, not copied: {vol}"
        );
    }
    // The clones are independent of each other and of the image.
    d.start_and_wait("c2");
    d.guest_run("c2", "printf c2c2 > /dev/vda; sync");
    d.ok(&["stop", "c2"]);
    assert_eq!(
        image_head(d.vm("c2")["spec"]["disks"][0]["path"].as_str().unwrap(), 4),
        "c2c2"
    );
    assert_eq!(
        image_head(d.vm("c1")["spec"]["disks"][0]["path"].as_str().unwrap(), 4),
        "gold"
    );
    assert_eq!(image_head(image["path"].as_str().unwrap(), 4), "gold");

    // Snapshots on a clone never merge into (or remove) the base.
    d.ok(&["snapshot", "create", "c1", "s"]);
    d.ok(&["snapshot", "delete", "c1", "s"]);
    assert!(std::path::Path::new(image["path"].as_str().unwrap()).exists());
    assert_eq!(
        image_head(d.vm("c1")["spec"]["disks"][0]["path"].as_str().unwrap(), 4),
        "gold"
    );

    let err = d.fails(&["image", "delete", "base"]);
    assert!(
        err.contains("c1-disk0") && err.contains("c2-disk0"),
        "{err}"
    );
    assert_eq!(
        d.json(&["image", "show", "base"])["used_by"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let pool = d.json(&["pool", "show", "default"]);
    assert!(pool["orphans"].as_array().unwrap().is_empty(), "{pool}");

    let err = d.fails(&["create", "nobase", "--image", "nope", "--memory", "128M"]);
    assert!(err.contains("image"), "{err}");
    let err = d.fails(&["image", "create", "base", "--from-volume", "golden-disk0"]);
    assert!(err.contains("already exists"), "{err}");

    d.ok(&["delete", "c1"]);
    d.ok(&["delete", "c2"]);
    d.ok(&["image", "delete", "base"]);
    assert!(!std::path::Path::new(image["path"].as_str().unwrap()).exists());
}
