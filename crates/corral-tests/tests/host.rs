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
