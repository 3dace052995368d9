//! `kill -9` of the daemon in the middle of each long operation, then a restart. Either
//! the operation finished (and what it made is whole and usable) or it failed saying
//! the daemon restarted and nothing of it exists; either way nothing is referenced but
//! missing, nothing is orphaned, no hidden temporary file and no `qemu-img` child
//! outlives the kill, and every image passes `qemu-img check`.
//!
//! Each test makes its operation slow enough (hundreds of MiB of data written with
//! `qemu-io`, a slow HTTP server) for the kill to land mid-way most of the time, and
//! prints which way it went; the assertions hold whichever way it goes. With
//! `CORRAL_CRASH_LATE=1` every kill waits for its operation to end, to exercise the
//! other way. The clone of a stopped VM is covered in clone.rs.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_tests::{Daemon, Value};
use serde_json::json;

/// Data written into the sources: enough that copying it takes a good fraction of a
/// second, little enough for a 2-core CI machine.
const DATA: &str = "384M";

/// How the restarted daemon says the interrupted operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// It had finished before the kill.
    Finished,
    /// The kill cut it short; it is marked failed.
    RolledBack,
}

/// Starts long work through the API (202 + an operation); returns the operation's id.
/// `body` is sent only if not null: a body the handler does not read makes the server
/// close a Unix socket with unread data, which resets the connection.
fn begin(d: &Daemon, method: &str, path: &str, body: Value) -> String {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let (status, op) = d.http(method, path, &body);
    assert_eq!(status, 202, "{method} {path}: {op}");
    op["id"].as_str().unwrap().to_string()
}

fn operation(d: &Daemon, id: &str) -> Value {
    d.http("GET", &format!("/api/v1/operations/{id}"), "").1
}

/// `CORRAL_CRASH_LATE`: kill only once the operation has ended.
fn late() -> bool {
    std::env::var_os("CORRAL_CRASH_LATE").is_some()
}

/// Waits until the operation is visibly under way (`progress` above `percent`) or has
/// ended; returns it as last seen.
fn wait_progress(d: &Daemon, id: &str, percent: f64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let op = operation(d, id);
        let progress = op["progress"].as_f64().unwrap_or(0.0);
        if (progress > percent && !late()) || op["state"] != "running" {
            return op;
        }
        assert!(Instant::now() < deadline, "no progress: {op}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `kill -9` the daemon, start it again, and read what it says of operation `id`.
fn crash_and_restart(d: &mut Daemon, id: &str, what: &str) -> Ended {
    let before = operation(d, id);
    d.restart();
    assert_no_leftover_children(d);
    let op = d.json(&["operation", "show", id]);
    let ended = match op["state"].as_str().unwrap() {
        "succeeded" => Ended::Finished,
        "failed" => {
            let error = op["error"]["error"].as_str().unwrap_or_default();
            assert!(error.contains("restarted"), "{op}");
            Ended::RolledBack
        }
        other => panic!("{what} is {other} after a restart: {op}"),
    };
    eprintln!(
        "{what}: killed at {}% ({}); after the restart: {ended:?}",
        before["progress"], before["state"]
    );
    ended
}

/// What every crash must leave: no operation still running, a pool whose files and
/// records agree (no orphans, nothing missing), no hidden temporary files, no
/// `qemu-img` the dead daemon started, every image passing `qemu-img check`.
fn assert_recovered(d: &Daemon) {
    assert_recovered_but(d, Leaks::Refused);
}

/// Whether `qemu-img check` may find leaked clusters (exit code 3: wasted space, no
/// harm to data). A `qemu-img resize` killed with its daemon leaves a few, which only
/// show once the image is grown again, so no recovery can reclaim them in advance.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Leaks {
    Refused,
    Accepted,
}

fn assert_recovered_but(d: &Daemon, leaks: Leaks) {
    assert_no_leftover_children(d);
    for op in d.json(&["operation", "list"]).as_array().unwrap() {
        assert_ne!(op["state"], "running", "{op}");
    }
    let pool = d.json(&["pool", "show", "default"]);
    assert!(pool["orphans"].as_array().unwrap().is_empty(), "{pool}");
    assert!(pool["missing"].as_array().unwrap().is_empty(), "{pool}");
    let dir = pool_dir(d);
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with(".corral-"), "temporary file left: {name}");
        if name.ends_with(".qcow2") {
            qemu_img_check(&entry.path(), leaks);
        }
    }
}

/// A `qemu-img` of the dead daemon would go on writing into files the restarted one
/// is recovering: none may outlive it. (The restarted daemon waits for killed ones to
/// finish dying before it serves, so this looks once, without a grace period.)
fn assert_no_leftover_children(d: &Daemon) {
    let dir = pool_dir(d).display().to_string();
    let alive: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.starts_with("qemu-img ") && c.contains(&dir))
        .collect();
    assert!(alive.is_empty(), "qemu-img outlived the daemon: {alive:?}");
}

fn pool_dir(d: &Daemon) -> PathBuf {
    d.state_dir().join("pools/default")
}

/// `qemu-img check` (read-only, so also of images a running VM has open).
fn qemu_img_check(image: &Path, leaks: Leaks) {
    let out = Command::new("qemu-img")
        .args(["check", "-U", "-f", "qcow2"])
        .arg(image)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if out.status.code() == Some(3) && leaks == Leaks::Accepted {
        let leaked = text.lines().find(|l| l.contains("leaked clusters"));
        eprintln!("{}: {}", image.display(), leaked.unwrap_or("leaks"));
        return;
    }
    assert!(
        out.status.success(),
        "qemu-img check {}: {}{}",
        image.display(),
        text.lines().last().unwrap_or(""),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn qemu_io(image: &str, read_only: bool, cmd: &str) {
    let mut c = Command::new("qemu-io");
    if read_only {
        c.args(["-r", "-U"]);
    }
    let out = c
        .args(["-f", "qcow2", "-c", cmd, image])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("verification failed"),
        "qemu-io -c '{cmd}' {image}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `len` bytes of `pattern` at `offset` (qemu-io sizes: 16M, 384M, …).
fn write_pattern(image: &str, pattern: u8, offset: &str, len: &str) {
    qemu_io(image, false, &format!("write -P {pattern} {offset} {len}"));
}

/// Asserts the image (through its backing chain) reads `pattern` there.
fn assert_reads(image: &str, pattern: u8, offset: &str, len: &str) {
    qemu_io(image, true, &format!("read -P {pattern} {offset} {len}"));
}

fn volume_path(d: &Daemon, name: &str) -> String {
    d.json(&["volume", "show", name])["path"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A stopped VM with one 1G volume disk (`<name>-disk0`) holding `DATA` of `pattern`.
fn vm_with_data(d: &Daemon, name: &str, pattern: u8) -> String {
    d.define(
        name,
        &["--memory", "256M", "--disk", "size=1G", "--network", "none"],
    );
    let disk = volume_path(d, &format!("{name}-disk0"));
    write_pattern(&disk, pattern, "0", DATA);
    disk
}

#[test]
fn import_of_a_large_file_killed_mid_way() {
    let mut d = Daemon::start();
    let src = d.dir.path().join("big.qcow2");
    let src_s = src.display().to_string();
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", &src_s, "1G"])
        .status()
        .unwrap();
    assert!(ok.success());
    write_pattern(&src_s, 7, "0", DATA);

    let id = begin(
        &d,
        "POST",
        "/api/v1/volumes/import",
        json!({"name": "big", "source": src_s}),
    );
    wait_progress(&d, &id, 0.0);
    match crash_and_restart(&mut d, &id, "import of a local file") {
        Ended::Finished => assert_reads(&volume_path(&d, "big"), 7, "0", DATA),
        Ended::RolledBack => {
            d.fails(&["volume", "show", "big"]);
            assert!(!pool_dir(&d).join("big.qcow2").exists());
        }
    }
    assert_recovered(&d);
    // Nothing of the first try stands in the way of the next.
    d.ok(&["volume", "import", &src_s, "--name", "again"]);
    assert_reads(&volume_path(&d, "again"), 7, "0", DATA);
    assert_recovered(&d);
}

/// An HTTP server on loopback that answers any GET with `len` bytes of `pattern`,
/// slowly (256 KiB every 25 ms, about 10 MB/s), so a download takes seconds.
fn slow_server(len: usize, pattern: u8) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve_slowly(conn, len, pattern));
        }
    });
    port
}

fn serve_slowly(mut conn: std::net::TcpStream, len: usize, pattern: u8) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    let chunk = vec![pattern; 256 << 10];
    let mut sent = 0;
    while sent < len {
        let n = chunk.len().min(len - sent);
        // The client went away (the daemon was killed): stop.
        if conn.write_all(&chunk[..n]).is_err() {
            return;
        }
        sent += n;
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn http_import_killed_mid_download() {
    let mut d = Daemon::start();
    let port = slow_server(48 << 20, 0xa5);
    let url = format!("http://127.0.0.1:{port}/disk.raw");
    let id = begin(
        &d,
        "POST",
        "/api/v1/volumes/import",
        json!({"name": "web", "source": url}),
    );
    // Progress moves from the first bytes on (the download is the first half).
    wait_progress(&d, &id, 2.0);
    match crash_and_restart(&mut d, &id, "http import") {
        Ended::Finished => assert_reads(&volume_path(&d, "web"), 0xa5, "0", "48M"),
        Ended::RolledBack => {
            d.fails(&["volume", "show", "web"]);
            assert!(
                d.json(&["events"])
                    .to_string()
                    .contains("left by an interrupted operation"),
                "the restart did not say it swept the partial download"
            );
        }
    }
    assert_recovered(&d);
}

#[test]
fn clone_of_a_running_vm_killed_mid_copy() {
    let mut d = Daemon::start();
    vm_with_data(&d, "src", 3);
    d.start_and_wait("src");
    let id = begin(&d, "POST", "/api/v1/vms/src/clone", json!({"name": "copy"}));
    wait_progress(&d, &id, 0.0);
    let ended = crash_and_restart(&mut d, &id, "clone of a running VM");
    // The VM kept running through it all, and the restarted daemon has it back.
    assert_eq!(d.state("src"), "running");
    match ended {
        Ended::Finished => {
            assert_reads(&volume_path(&d, "copy-disk0"), 3, "0", DATA);
            assert_eq!(d.state("copy"), "stopped");
        }
        Ended::RolledBack => {
            d.fails(&["show", "copy"]);
            d.fails(&["volume", "show", "copy-disk0"]);
        }
    }
    assert_recovered(&d);
    // QEMU holds no copy job or target of the interrupted clone: cloning again works.
    d.ok(&["clone", "src", "again"]);
    assert_reads(&volume_path(&d, "again-disk0"), 3, "0", DATA);
    d.ok(&["stop", "src", "--force"]);
    assert_recovered(&d);
}

/// A stopped VM with the tree s1 ── s2 and the VM back on s1 with its own writes, so
/// deleting s1 merges its `DATA` into two images (s2's and the current one): seconds of
/// `qemu-img rebase`. Returns (s1's image, s2's image).
fn snapshot_tree_to_merge(d: &Daemon) -> (String, String) {
    vm_with_data(d, "snap", 1);
    d.ok(&["snapshot", "create", "snap", "s1"]);
    write_pattern(&volume_path(d, "snap-disk0"), 2, "0", "32M");
    d.ok(&["snapshot", "create", "snap", "s2"]);
    d.ok(&["snapshot", "revert", "snap", "s1"]);
    write_pattern(&volume_path(d, "snap-disk0"), 3, "0", "16M");
    let tree = d.json(&["snapshot", "list", "snap"]);
    let file = |i: usize| {
        tree["snapshots"][i]["disks"][0]["file"]
            .as_str()
            .unwrap()
            .to_string()
    };
    (file(0), file(1))
}

/// What each image of the tree above must read, whatever happened to s1.
fn assert_snapshot_data(d: &Daemon, s2: &str) {
    let current = volume_path(d, "snap-disk0");
    assert_reads(&current, 3, "0", "16M");
    assert_reads(&current, 1, "16M", "368M");
    assert_reads(s2, 2, "0", "32M");
    assert_reads(s2, 1, "32M", "352M");
}

fn backing_of(image: &str) -> Option<String> {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json", image])
        .output()
        .unwrap();
    assert!(out.status.success(), "qemu-img info {image}");
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    info["backing-filename"].as_str().map(str::to_string)
}

/// Kills the daemon during `delete s1` once `killed_when(s2's image, bytes it grew
/// by since)` says so, then checks that the snapshot is gone or the tree and its files
/// are exactly as before (and a second delete then succeeds), and that no image lost
/// data.
fn snapshot_delete_killed(killed_when: impl Fn(&str, u64) -> bool, what: &str) {
    let mut d = Daemon::start();
    let (s1, s2) = snapshot_tree_to_merge(&d);
    let len = |f: &str| std::fs::metadata(f).unwrap().len();
    let before = len(&s2);
    let id = begin(&d, "DELETE", "/api/v1/vms/snap/snapshots/s1", Value::Null);
    let started = Instant::now();
    while (late() || !killed_when(&s2, len(&s2).saturating_sub(before)))
        && operation(&d, &id)["state"] == "running"
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            operation(&d, &id)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let merged = backing_of(&s2).is_none();
    eprintln!(
        "{what}: s2's image {} merged when the daemon was killed",
        if merged { "was" } else { "was not yet" }
    );
    let ended = crash_and_restart(&mut d, &id, what);
    let tree = d.json(&["snapshot", "list", "snap"]);
    let names: Vec<&str> = tree["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    match ended {
        Ended::Finished => {
            assert_eq!(names, ["s2"], "{tree}");
            assert!(!Path::new(&s1).exists(), "{s1} outlived its snapshot");
        }
        Ended::RolledBack => {
            // The tree is unchanged, and so are the files: each image sits on the one
            // the tree says (an image already merged is pointed back).
            assert_eq!(names, ["s1", "s2"], "{tree}");
            assert_eq!(tree["current"], "s1");
            if merged {
                let events = d.json(&["events"]).to_string();
                assert!(events.contains("pointed back"), "{events}");
            }
            assert_eq!(backing_of(&s2).as_deref(), Some(s1.as_str()));
            let current = volume_path(&d, "snap-disk0");
            assert_eq!(backing_of(&current).as_deref(), Some(s1.as_str()));
            assert_snapshot_data(&d, &s2);
            assert_recovered(&d);
            d.ok(&["snapshot", "delete", "snap", "s1"]);
            assert!(!Path::new(&s1).exists());
        }
    }
    assert_snapshot_data(&d, &s2);
    assert_recovered(&d);
    // The VM still boots from its disk chain.
    d.start_and_wait("snap");
    d.ok(&["stop", "snap", "--force"]);
}

#[test]
fn snapshot_delete_killed_mid_merge() {
    // s1's data is being copied into s2's image, which grows (by the time that is seen
    // the copy may be done; the test says which).
    snapshot_delete_killed(
        |_, grown| grown > 8 << 20,
        "snapshot delete, killed inside the first merge",
    );
}

#[test]
fn snapshot_delete_killed_between_merges() {
    // The first image merged (s2's) no longer names s1 as its backing file. qemu-img
    // rewrites that header before it flushes its cluster tables, so killed right now,
    // s2's image may also have lost the entries of the data it copied in: it reads
    // right again only once pointed back at s1.
    snapshot_delete_killed(
        |s2, _| backing_of(s2).is_none(),
        "snapshot delete, killed after the first of two merges",
    );
}

#[test]
fn resize_killed_mid_way() {
    let mut d = Daemon::start();
    vm_with_data(&d, "grow", 4);
    const GIB: u64 = 1 << 30;
    // Growing takes a few milliseconds: kill at several moments to land before, in
    // and after it.
    for (i, delay_ms) in [0u64, 5, 10, 15, 20, 25, 30, 40, 60]
        .into_iter()
        .enumerate()
    {
        let old = d.json(&["volume", "show", "grow-disk0"])["size_bytes"]
            .as_u64()
            .unwrap();
        let new = old + GIB;
        let id = begin(
            &d,
            "POST",
            "/api/v1/volumes/grow-disk0/resize",
            json!({"size_bytes": new}),
        );
        std::thread::sleep(Duration::from_millis(delay_ms));
        let what = format!("resize #{i} after {delay_ms} ms");
        let ended = crash_and_restart(&mut d, &id, &what);
        let path = volume_path(&d, "grow-disk0");
        let on_disk = virtual_size(&path);
        let recorded = d.json(&["volume", "show", "grow-disk0"])["size_bytes"]
            .as_u64()
            .unwrap();
        // The record tells the truth about the file, and the VM agrees.
        assert_eq!(recorded, on_disk, "{what}");
        assert_eq!(d.vm("grow")["spec"]["disks"][0]["size_bytes"], on_disk);
        match ended {
            Ended::Finished => assert_eq!(on_disk, new, "{what}"),
            Ended::RolledBack => {
                assert!(on_disk == old || on_disk == new, "{what}: {on_disk}");
                eprintln!(
                    "{what}: the file was {} when the daemon died",
                    if on_disk == new { "grown" } else { "untouched" }
                );
            }
        }
        assert_reads(&path, 4, "0", DATA);
        assert_recovered_but(&d, Leaks::Accepted);
    }
}

fn virtual_size(image: &str) -> u64 {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json", image])
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    info["virtual-size"].as_u64().unwrap()
}

#[test]
fn image_create_killed_mid_copy() {
    let mut d = Daemon::start();
    d.ok(&["volume", "create", "golden", "--size", "1G"]);
    write_pattern(&volume_path(&d, "golden"), 5, "0", DATA);
    let id = begin(
        &d,
        "POST",
        "/api/v1/images",
        json!({"name": "base", "from_volume": "golden"}),
    );
    wait_progress(&d, &id, 0.0);
    match crash_and_restart(&mut d, &id, "image create") {
        Ended::Finished => {
            let image = d.json(&["image", "show", "base"]);
            assert_reads(image["path"].as_str().unwrap(), 5, "0", DATA);
        }
        Ended::RolledBack => {
            d.fails(&["image", "show", "base"]);
            assert!(!pool_dir(&d).join("base.image.qcow2").exists());
            d.ok(&["image", "create", "base", "--from-volume", "golden"]);
        }
    }
    assert_recovered(&d);
    // The image is usable: a linked clone reads the data through it.
    d.define(
        "linked",
        &["--memory", "128M", "--image", "base", "--network", "none"],
    );
    assert_reads(&volume_path(&d, "linked-disk0"), 5, "0", DATA);
    assert_recovered(&d);
}
