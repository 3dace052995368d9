//! `corral monitor`: the event stream, followed as it happens.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use corral_tests::{bin, Daemon, Value};

#[test]
fn monitor_follows_state_changes_of_one_vm_as_they_happen() {
    let d = Daemon::start();
    let mut child = Command::new(bin("corral"))
        .env("CORRAL_SOCKET", &d.socket)
        .args(["monitor", "watched", "-o", "json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<Value>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(serde_json::from_str(&line.unwrap()).unwrap());
        }
    });
    std::thread::sleep(Duration::from_millis(500)); // subscribed before anything happens
    d.define("other", &["--memory", "128M", "--network", "none"]);
    d.define("watched", &["--memory", "128M", "--network", "none"]);
    d.start_and_wait("watched");
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|e: &Value| e["message"].as_str().unwrap_or("").contains("running"))
    {
        let event = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("no running event streamed");
        assert_eq!(event["vm"], "watched", "filtered to one VM: {event}");
        seen.push(event);
    }
    assert_eq!(seen[0]["kind"], "created", "{seen:?}");
    // Long work streams its progress (not stored: id 0).
    d.ok(&["stop", "watched", "--force"]);
    loop {
        let event = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("no progress streamed");
        if event["kind"] == "progress" {
            let op: Value = serde_json::from_str(event["message"].as_str().unwrap()).unwrap();
            assert_eq!(
                (op["kind"].as_str(), event["id"].as_u64()),
                (Some("vm.stop"), Some(0))
            );
            break;
        }
    }
    child.kill().unwrap();
    let _ = child.wait();
}
