//! A pool that runs out of space: a clear error naming the problem, and nothing
//! half-made (no volume record, no partial or hidden file).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use corral_tests::Daemon;

/// A small tmpfs, unmounted when dropped (also when the test fails).
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(size: &str) -> SmallFs {
        let dir = tempfile::Builder::new()
            .prefix("corral-fullpool-")
            .tempdir()
            .unwrap()
            .keep();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(ok.success(), "mount tmpfs");
        SmallFs(dir)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_full_pool_is_a_clear_error_and_leaves_nothing() {
    let fs = SmallFs::mount("48m");
    let pool_dir = fs.0.join("pool");
    let d = Daemon::start();
    d.ok(&[
        "pool",
        "create",
        "small",
        "--path",
        pool_dir.to_str().unwrap(),
    ]);

    // A qcow2 image holding 96 MiB of data.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.qcow2");
    let run = |cmd: &mut Command| {
        assert!(cmd
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success())
    };
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&src)
        .arg("128M"));
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 7 0 96M"])
        .arg(&src));
    let err = d.fails(&[
        "volume",
        "import",
        src.to_str().unwrap(),
        "--name",
        "big",
        "--pool",
        "small",
    ]);
    println!("{err}");
    assert!(
        err.contains("space") || err.contains("full"),
        "the error should say the pool is full: {err}"
    );
    d.fails(&["volume", "show", "big"]);
    assert!(files_in(&pool_dir).is_empty(), "{:?}", files_in(&pool_dir));
    let pool = d.json(&["pool", "show", "small"]);
    assert!(pool["orphans"].as_array().unwrap().is_empty(), "{pool}");

    // Thin volumes may promise more than the pool holds (as with LVM thin and qcow2
    // everywhere); the pool's numbers say how much is really free.
    d.ok(&[
        "volume", "create", "thin", "--size", "1G", "--pool", "small",
    ]);
    let pool = d.json(&["pool", "show", "small"]);
    assert!(
        pool["capacity_bytes"].as_u64().unwrap() <= 48 << 20,
        "{pool}"
    );
    d.ok(&["volume", "delete", "thin"]);
    d.ok(&["pool", "delete", "small"]);
}
