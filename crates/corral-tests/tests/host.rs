//! Host facts: the accelerator probe tells the truth, QEMU is confined, the API documents
//! itself.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};

use corral_tests::{Daemon, BOOT};

#[test]
fn accelerator_probe_and_cache() {
    let (kernel, _) = corral_tests::guest();
    let k = kernel.display().to_string();
    let d = Daemon::start_with(&["--probe-kernel", &k]);
    let host = d.json(&["host", "info"]);
    let accel = &host["accel"];
    assert_eq!(accel["forced"], false);
    assert!(accel["probed_at"].is_u64());
    let reason = accel["reason"].as_str().unwrap();
    match accel["accel"].as_str().unwrap() {
        "kvm" => assert!(reason.contains("booted under KVM"), "{reason}"),
        "tcg" => assert!(!reason.is_empty()),
        other => panic!("unknown accel {other}"),
    }
    if !std::path::Path::new("/dev/kvm").exists() {
        assert_eq!(accel["accel"], "tcg");
    }
    let table = d.ok(&["host", "info"]);
    assert!(
        table.contains(reason),
        "host info table shows the reason:\n{table}"
    );
    drop(d);

    // Forced.
    let d = Daemon::start_with(&["--accel", "tcg"]);
    let host = d.json(&["host", "info"]);
    assert_eq!(host["accel"]["accel"], "tcg");
    assert_eq!(host["accel"]["forced"], true);
    assert!(host["qemu_version"]
        .as_str()
        .unwrap()
        .starts_with(char::is_numeric));
    assert!(host["cpus"].as_u64().unwrap() >= 1);
}

#[test]
fn probe_result_is_cached() {
    let (kernel, _) = corral_tests::guest();
    let k = kernel.display().to_string();
    let mut d = Daemon::start_with(&["--probe-kernel", &k]);
    let first = d.json(&["host", "info"])["accel"].clone();
    d.restart();
    let second = d.json(&["host", "info"])["accel"].clone();
    assert_eq!(first["accel"], second["accel"]);
    assert_eq!(first["probed_at"], second["probed_at"]);
    assert!(second["reason"].as_str().unwrap().contains("cached"));
}

#[test]
fn qemu_is_confined() {
    let d = Daemon::start();
    d.boot("conf", &[]);
    d.wait_console("conf", "CORRAL-GUEST-READY", BOOT);
    let vm = d.vm("conf");
    let pid = vm["status"]["pid"].as_u64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let seccomp = status.lines().find(|l| l.starts_with("Seccomp:")).unwrap();
    if nix::unistd::Uid::effective().is_root() {
        let uids: Vec<u32> = uid_line
            .split_whitespace()
            .skip(1)
            .map(|u| u.parse().unwrap())
            .collect();
        assert!(
            uids.iter().all(|u| *u != 0),
            "QEMU must not run as root: {uid_line}"
        );
        // chrooted into its own runtime dir: it can open nothing else by path.
        let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
        let uuid = vm["spec"]["uuid"].as_str().unwrap();
        assert!(root.ends_with(uuid), "QEMU root is {}", root.display());
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(cgroup.contains(&format!("corral-vm-{uuid}")), "{cgroup}");
        let ps = std::process::Command::new("ps")
            .args(["-o", "user=", "-p", &pid.to_string()])
            .output()
            .unwrap();
        assert_ne!(String::from_utf8_lossy(&ps.stdout).trim(), "root");
    }
    assert!(
        seccomp.ends_with('2'),
        "seccomp filter mode expected: {seccomp}"
    );
    let host = d.json(&["host", "info"]);
    assert!(host["confinement"].as_str().unwrap().contains("seccomp"));
}

#[test]
fn openapi_document_is_served_and_matches_the_checked_in_copy() {
    let d = Daemon::start();
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    write!(
        s,
        "GET /api/openapi.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"));
    let body = &resp[resp.find('{').unwrap()..=resp.rfind('}').unwrap()];
    let served: serde_json::Value = serde_json::from_str(body).unwrap();
    let file = corral_tests::workspace().join("docs/openapi.json");
    let checked_in: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    assert_eq!(served, checked_in);
    assert!(served["paths"]["/api/v1/vms"]["post"].is_object());
}

/// A host without qemu-img (as a fresh machine was after apt removed its qemu-utils):
/// corrald says so at start, `host info` names it with the package, and a VM that needs
/// a disk is refused with that error instead of ENOENT, with nothing half-made.
#[test]
fn a_missing_qemu_img_is_named_with_its_package() {
    let bin = tempfile::tempdir().unwrap();
    let qemu = which("qemu-system-x86_64");
    std::os::unix::fs::symlink(qemu, bin.path().join("qemu-system-x86_64")).unwrap();
    let path = bin.path().display().to_string();
    let d = Daemon::start_with_env(&["--accel", "tcg"], &[("PATH", &path)]);
    assert!(
        d.log().contains("qemu-img: cannot run qemu-img"),
        "corrald names it at start:\n{}",
        d.log()
    );
    let out = d.corral(&["host", "info"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("qemu-img:") && stdout.contains("not found"),
        "{stdout}"
    );
    assert!(
        stderr.contains("error: cannot run qemu-img") && stderr.contains("qemu-utils"),
        "{stderr}"
    );
    let host = d.json(&["host", "info"]);
    assert_eq!(host["problems"][0]["component"], "qemu-img");
    assert!(host["qemu_img_version"].is_null());

    let err = d.fails(&["create", "nodisk", "--memory", "128M", "--disk", "size=1G"]);
    assert!(
        err.contains("cannot run qemu-img") && err.contains("qemu-utils"),
        "{err}"
    );
    let (status, _) = d.http(
        "POST",
        "/api/v1/volumes",
        r#"{"name":"v1","size_bytes":1073741824}"#,
    );
    assert_eq!(status, 409, "a missing tool is the host's state, not a bug");
    assert_eq!(d.json(&["list"]), serde_json::json!([]));
    d.assert_pool_clean("default");
}

/// A host with every tool shows no problems and qemu-img's version next to QEMU's.
#[test]
fn a_complete_host_has_no_problems() {
    let d = Daemon::start();
    let host = d.json(&["host", "info"]);
    assert_eq!(host["problems"], serde_json::json!([]), "{host}");
    let img = host["qemu_img_version"].as_str().unwrap();
    let qemu = host["qemu_version"].as_str().unwrap();
    assert_eq!(
        img.split('.').take(2).collect::<Vec<_>>(),
        qemu.split('.').take(2).collect::<Vec<_>>(),
        "qemu-img {img} matches QEMU {qemu}"
    );
}

/// The check scripts/setup.sh runs after every apt step, run by the test suite too: a
/// host that lacks a tool fails here, named, even where the tool was once installed by
/// hand and CI's machine has kept it so far.
#[test]
fn setup_verification_passes_on_this_host() {
    let script = corral_tests::workspace().join("scripts/setup.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg("--verify")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "setup.sh --verify:\n{stderr}");
    assert!(stderr.contains("verified"), "{stderr}");
}

fn which(program: &str) -> std::path::PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}
