//! Bad input: a clear error naming the field with a hint, a non-zero exit from the CLI, a
//! 4xx from the API, and nothing half-made.

#![allow(clippy::unwrap_used)]

use corral_tests::{guest_args, Daemon};

fn assert_nothing_made(d: &Daemon) {
    assert!(
        d.json(&["list"]).as_array().unwrap().is_empty(),
        "no VM may be left"
    );
    let pool = d.state_dir().join("pools/default");
    let files: Vec<_> = std::fs::read_dir(&pool)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "no volume may be left: {files:?}");
}

#[test]
fn cli_rejects_bad_input_naming_the_field() {
    let d = Daemon::start();
    let g = guest_args();
    let g: Vec<&str> = g.iter().map(String::as_str).collect();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["create", "Bad_Name", "--disk", "size=1G"], "name"),
        (vec!["create", "../etc", "--disk", "size=1G"], "name"),
        (
            vec!["create", "ok", "--vcpus", "0", "--disk", "size=1G"],
            "vcpus",
        ),
        (
            vec!["create", "ok", "--vcpus", "4096", "--disk", "size=1G"],
            "vcpus",
        ),
        (
            vec!["create", "ok", "--memory", "1M", "--disk", "size=1G"],
            "memory",
        ),
        (
            vec!["create", "ok", "--memory", "100T", "--disk", "size=1G"],
            "memory",
        ),
        (vec!["create", "ok", "--disk", "size=0"], "size"),
        (
            vec!["create", "ok", "--disk", "path=/nonexistent/disk.qcow2"],
            "disks[0].path",
        ),
        (vec!["create", "ok", "--cdrom", "/nonexistent.iso"], "cdrom"),
        (
            vec!["create", "ok", "--kernel", "/nonexistent/vmlinuz"],
            "kernel",
        ),
        (
            vec!["create", "ok", "--disk", "size=1G", "--disk", "path=/etc"],
            "disks[1].path",
        ),
    ];
    for (args, field) in cases {
        let err = d.fails(&args);
        assert!(
            err.contains(field),
            "corral {args:?}: error does not name '{field}':\n{err}"
        );
        assert!(err.contains("hint") || err.contains("error"), "{err}");
        assert_nothing_made(&d);
    }
    // A valid disk followed by a bad one: the new volume must not be left behind.
    let mut args = vec![
        "create",
        "half",
        "--disk",
        "size=1G",
        "--disk",
        "path=/nonexistent.raw",
    ];
    args.extend(&g);
    d.fails(&args);
    assert_nothing_made(&d);
}

#[test]
fn api_rejects_bad_bodies_with_4xx() {
    let d = Daemon::start();
    let (status, body) = d.http(
        "POST",
        "/api/v1/vms",
        r#"{"name":"a","memory_mib":256,"vcpus":1,"colour":"red","disks":[{"new":{"size_bytes":1048576}}]}"#,
    );
    assert_eq!(status, 400);
    assert_eq!(body["field"], "colour");
    assert!(body["hint"].is_string());
    let (status, body) = d.http(
        "POST",
        "/api/v1/vms",
        r#"{"name":"a","memory_mib":"lots","vcpus":1}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "memory_mib");
    let (status, _) = d.http("POST", "/api/v1/vms", "not json");
    assert_eq!(status, 400);
    let (status, body) = d.http("GET", "/api/v1/vms/nope", "");
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("nope"));
    let (status, _) = d.http("GET", "/api/v1/vms/..%2Fetc", "");
    assert_eq!(status, 400);
    let (status, _) = d.http("POST", "/api/v1/vms/nope/start", "");
    assert_eq!(status, 404);
    let (status, _) = d.http("GET", "/api/v1/operations/not-a-uuid", "");
    assert_eq!(status, 400);
    assert_nothing_made(&d);
}

#[test]
fn wrong_state_is_409_and_duplicates_are_refused() {
    let d = Daemon::start();
    let mut args = vec!["create", "dup", "--memory", "128M"];
    let g = guest_args();
    args.extend(g.iter().map(String::as_str));
    d.ok(&args);
    let err = d.fails(&args);
    assert!(err.contains("already exists"), "{err}");
    let err = d.fails(&["pause", "dup"]);
    assert!(err.contains("stopped"), "{err}");
    let (status, body) = d.http("POST", "/api/v1/vms/dup/resume", "");
    assert_eq!(status, 409, "{body}");
    let (status, _) = d.http("POST", "/api/v1/vms/dup/stop", "{}");
    assert_eq!(status, 409);
}

#[test]
fn concurrent_creates_of_one_name_one_wins() {
    let d = Daemon::start();
    let body =
        r#"{"name":"race","memory_mib":128,"vcpus":1,"disks":[{"new":{"size_bytes":1073741824}}]}"#;
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| d.http("POST", "/api/v1/vms", body).0))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}"
    );
    assert_eq!(d.json(&["list"]).as_array().unwrap().len(), 1);
    let pool = d.state_dir().join("pools/default");
    assert_eq!(
        std::fs::read_dir(pool).unwrap().count(),
        1,
        "one volume, the winner's"
    );
}

#[test]
fn missing_daemon_is_a_clear_error() {
    let out = std::process::Command::new(corral_tests::bin("corral"))
        .env("CORRAL_SOCKET", "/tmp/corral-no-such.sock")
        .args(["list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("corrald"), "{err}");
}
