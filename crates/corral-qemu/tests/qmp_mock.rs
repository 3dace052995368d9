//! The QMP client against a mock QMP server speaking the real wire protocol, and
//! against a real QEMU (skipped when `qemu-system-x86_64` is not installed).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_qemu::qmp::{Event, Qmp, QmpError, QmpOptions};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;
use tokio::time::timeout;

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#;
const WAIT: Duration = Duration::from_secs(10);

/// How the mock behaves where tests need it to differ.
#[derive(Clone, Copy, Default)]
struct MockConfig {
    /// On `quit`, close the socket without replying.
    quit_without_reply: bool,
}

/// A QMP server on a unix socket in a temporary directory.
struct Mock {
    dir: tempfile::TempDir,
    path: PathBuf,
    /// Every command the mock received, in order.
    received: Arc<Mutex<Vec<String>>>,
}

impl Mock {
    fn start(config: MockConfig) -> Mock {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, config, Arc::clone(&log)));
            }
        });
        Mock {
            dir,
            path,
            received,
        }
    }

    async fn connect(&self) -> Qmp {
        Qmp::connect(&self.path, QmpOptions::default())
            .await
            .unwrap()
    }

    fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

async fn send(w: &mut OwnedWriteHalf, v: Value) {
    // QEMU ends lines with CRLF; keep the client honest about it.
    let line = format!("{v}\r\n");
    // The client may be gone already; that is its business.
    let _ = w.write_all(line.as_bytes()).await;
}

fn event(name: &str, data: Option<Value>) -> Value {
    let mut ev = json!({
        "timestamp": {"seconds": 1_700_000_000, "microseconds": 4242},
        "event": name,
    });
    if let Some(data) = data {
        ev["data"] = data;
    }
    ev
}

fn ok(id: &Value, ret: Value) -> Value {
    json!({"return": ret, "id": id})
}

fn err(id: &Value, class: &str, desc: &str) -> Value {
    json!({"id": id, "error": {"class": class, "desc": desc}})
}

/// One QMP session, modelled on QEMU 7.2's behaviour (events before the reply
/// of the command that caused them, CRLF line ends, extra reply fields).
async fn serve(stream: UnixStream, config: MockConfig, received: Arc<Mutex<Vec<String>>>) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    send(&mut w, serde_json::from_str(GREETING).unwrap()).await;

    let mut negotiated = false;
    let mut status = "prelaunch";
    let mut held_pair: Option<(Value, Value)> = None;

    while let Ok(Some(line)) = lines.next_line().await {
        let msg: Value = serde_json::from_str(&line).unwrap();
        let id = msg.get("id").cloned().unwrap_or(Value::Null);
        let args = msg.get("arguments").cloned().unwrap_or(json!({}));
        let cmd = msg["execute"].as_str().unwrap().to_owned();
        received.lock().unwrap().push(cmd.clone());

        if !negotiated && cmd != "qmp_capabilities" {
            let desc = "Expecting capabilities negotiation with 'qmp_capabilities'";
            send(&mut w, err(&id, "CommandNotFound", desc)).await;
            continue;
        }
        match cmd.as_str() {
            "qmp_capabilities" if negotiated => {
                let desc = "Capabilities negotiation is already complete, command ignored";
                send(&mut w, err(&id, "CommandNotFound", desc)).await;
            }
            "qmp_capabilities" => {
                negotiated = true;
                send(&mut w, ok(&id, json!({}))).await;
            }
            "query-status" => {
                let ret = json!({
                    "status": status,
                    "singlestep": false,
                    "running": status == "running",
                    "x-field-from-the-future": [1, 2, 3],
                });
                send(&mut w, ok(&id, ret)).await;
            }
            "stop" => {
                if status == "running" {
                    status = "paused";
                    send(&mut w, event("STOP", None)).await;
                }
                send(&mut w, ok(&id, json!({}))).await;
            }
            "cont" => {
                if status != "running" {
                    status = "running";
                    send(&mut w, event("RESUME", None)).await;
                }
                send(&mut w, ok(&id, json!({}))).await;
            }
            "system_reset" => {
                let data = json!({"guest": false, "reason": "host-qmp-system-reset"});
                send(&mut w, event("RESET", Some(data))).await;
                send(&mut w, ok(&id, json!({}))).await;
            }
            "system_powerdown" => {
                send(&mut w, event("POWERDOWN", None)).await;
                send(&mut w, ok(&id, json!({}))).await;
            }
            "query-cpus-fast" => {
                // The main thread's id is the process id, so Tgid maps back to it.
                let ret = json!([{
                    "cpu-index": 0,
                    "qom-path": "/machine/unattached/device[0]",
                    "thread-id": std::process::id(),
                    "props": {"core-id": 0, "thread-id": 0, "socket-id": 0},
                    "target": "x86_64"
                }]);
                send(&mut w, ok(&id, ret)).await;
            }
            "x-never-answer" => {}
            "x-late" => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                send(&mut w, ok(&id, json!({"late": true}))).await;
            }
            // Two of these are answered in reverse order of arrival.
            "x-pair" => match held_pair.take() {
                None => held_pair = Some((id, args)),
                Some((first_id, first_args)) => {
                    send(&mut w, ok(&id, json!({"tag": args["tag"]}))).await;
                    send(&mut w, ok(&first_id, json!({"tag": first_args["tag"]}))).await;
                }
            },
            "x-emit-unknown-event" => {
                let data = json!({"answer": 42, "nested": {"list": ["a", "b"]}});
                send(&mut w, event("X_FROM_THE_FUTURE", Some(data))).await;
                send(&mut w, ok(&id, json!({}))).await;
            }
            "x-close" => return,
            "quit" => {
                if config.quit_without_reply {
                    return;
                }
                let data = json!({"guest": false, "reason": "host-qmp-quit"});
                send(&mut w, event("SHUTDOWN", Some(data))).await;
                send(&mut w, ok(&id, json!({}))).await;
                return;
            }
            other => {
                let desc = format!("The command {other} has not been found");
                send(&mut w, err(&id, "CommandNotFound", &desc)).await;
            }
        }
    }
}

async fn next_event(rx: &mut broadcast::Receiver<Event>) -> Event {
    timeout(WAIT, rx.recv())
        .await
        .expect("no event within the wait")
        .expect("event stream ended")
}

#[tokio::test]
async fn handshake_version_and_status() {
    let mock = Mock::start(MockConfig::default());
    let qmp = mock.connect().await;
    let v = qmp.version();
    assert_eq!((v.major, v.minor, v.micro), (7, 2, 0));

    let status = qmp.query_status().await.unwrap();
    assert!(!status.running);
    assert_eq!(status.status, "prelaunch");
    assert_eq!(mock.received(), ["qmp_capabilities", "query-status"]);
    assert!(!qmp.is_closed());
}

#[tokio::test]
async fn stop_and_cont_emit_events() {
    let mock = Mock::start(MockConfig::default());
    let qmp = mock.connect().await;
    let mut events = qmp.events();

    qmp.cont().await.unwrap();
    let ev = next_event(&mut events).await;
    assert_eq!(ev.name, "RESUME");
    assert_eq!(ev.timestamp, Some((1_700_000_000, 4242)));
    assert_eq!(ev.data, Value::Null);
    let status = qmp.query_status().await.unwrap();
    assert!(status.running);
    assert_eq!(status.status, "running");

    qmp.stop().await.unwrap();
    assert_eq!(next_event(&mut events).await.name, "STOP");
    let status = qmp.query_status().await.unwrap();
    assert!(!status.running);
    assert_eq!(status.status, "paused");
}

#[tokio::test]
async fn reset_and_powerdown() {
    let mock = Mock::start(MockConfig::default());
    let qmp = mock.connect().await;
    let mut events = qmp.events();
    qmp.system_reset().await.unwrap();
    let ev = next_event(&mut events).await;
    assert_eq!(ev.name, "RESET");
    assert_eq!(ev.data["reason"], "host-qmp-system-reset");
    qmp.system_powerdown().await.unwrap();
    assert_eq!(next_event(&mut events).await.name, "POWERDOWN");
}

#[tokio::test]
async fn unknown_command_is_a_typed_error() {
    let mock = Mock::start(MockConfig::default());
    let qmp = mock.connect().await;
    let e = qmp
        .execute_raw("x-no-such-command", Some(json!({"a": 1})))
        .await
        .unwrap_err();
    match &e {
        QmpError::Command {
            command,
            class,
            desc,
        } => {
            assert_eq!(command, "x-no-such-command");
            assert_eq!(class, "CommandNotFound");
            assert!(desc.contains("x-no-such-command"), "{desc}");
        }
        other => panic!("expected a command error, got {other:?}"),
    }
    assert!(e.is_class("CommandNotFound"));
    // The connection is still fine.
    qmp.query_status().await.unwrap();
}

#[tokio::test]
async fn unanswered_command_times_out_and_late_reply_is_ignored() {
    let mock = Mock::start(MockConfig::default());
    let opts = QmpOptions {
        default_timeout: Duration::from_millis(200),
        ..QmpOptions::default()
    };
    let qmp = Qmp::connect(&mock.path, opts).await.unwrap();

    let started = tokio::time::Instant::now();
    let e = qmp.execute_raw("x-never-answer", None).await.unwrap_err();
    match e {
        QmpError::Timeout { command, timeout } => {
            assert_eq!(command, "x-never-answer");
            assert_eq!(timeout, Duration::from_millis(200));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));

    // Answered after 300 ms, we give up after 100 ms; the stray reply must not
    // be handed to the next command (query-status would fail to decode `{"late": true}`).
    let e = qmp
        .execute_with_timeout("x-late", None, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(e, QmpError::Timeout { .. }), "{e:?}");
    let status = qmp
        .execute_with_timeout("query-status", None, WAIT)
        .await
        .unwrap();
    assert_eq!(status["status"], "prelaunch");
    assert!(!qmp.is_closed());
}

#[tokio::test]
async fn out_of_order_replies_are_matched_by_id() {
    let mock = Mock::start(MockConfig::default());
    let qmp = mock.connect().await;
    let (a, b) = tokio::join!(
        qmp.execute_raw("x-pair", Some(json!({"tag": "first"}))),
        qmp.execute_raw("x-pair", Some(json!({"tag": "second"}))),
    );
    assert_eq!(a.unwrap(), json!({"tag": "first"}));
    assert_eq!(b.unwrap(), json!({"tag": "second"}));
}

#[tokio::test]
async fn many_concurrent_callers() {
    let mock = Mock::start(MockConfig::default());
    let qmp = mock.connect().await;
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let qmp = qmp.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    qmp.query_status().await.map(|s| s.status)
                } else {
                    qmp.execute_raw("x-unknown", None)
                        .await
                        .map(|v| v.to_string())
                }
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        if i % 2 == 0 {
            assert_eq!(r.unwrap(), "prelaunch");
        } else {
            assert!(r.unwrap_err().is_class("CommandNotFound"));
        }
    }
    assert_eq!(mock.received().len(), 65);
}

#[tokio::test]
async fn unknown_events_are_delivered_to_every_subscriber() {
    let mock = Mock::start(MockConfig::default());
    let qmp = mock.connect().await;
    let mut one = qmp.events();
    let mut two = qmp.clone().events();
    qmp.execute_raw("x-emit-unknown-event", None).await.unwrap();
    for rx in [&mut one, &mut two] {
        let ev = next_event(rx).await;
        assert_eq!(ev.name, "X_FROM_THE_FUTURE");
        assert_eq!(
            ev.data,
            json!({"answer": 42, "nested": {"list": ["a", "b"]}})
        );
        assert_eq!(ev.timestamp, Some((1_700_000_000, 4242)));
    }
}

#[tokio::test]
async fn socket_close_fails_pending_and_resolves_closed() {
    let mock = Mock::start(MockConfig::default());
    let qmp = mock.connect().await;
    let mut events = qmp.events();

    let pending = tokio::spawn({
        let qmp = qmp.clone();
        async move { qmp.execute_with_timeout("x-never-answer", None, WAIT).await }
    });
    // Let it reach the mock before the mock hangs up.
    while !mock.received().iter().any(|c| c == "x-never-answer") {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let e = qmp.execute_raw("x-close", None).await.unwrap_err();
    assert!(matches!(e, QmpError::Disconnected), "{e:?}");
    let e = timeout(WAIT, pending).await.unwrap().unwrap().unwrap_err();
    assert!(matches!(e, QmpError::Disconnected), "{e:?}");

    timeout(WAIT, qmp.closed()).await.unwrap();
    assert!(qmp.is_closed());
    // A second waiter, after the fact, resolves at once too.
    timeout(WAIT, qmp.closed()).await.unwrap();

    let started = tokio::time::Instant::now();
    let e = qmp.query_status().await.unwrap_err();
    assert!(matches!(e, QmpError::Disconnected), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(matches!(qmp.quit().await, Err(QmpError::Disconnected)));

    assert!(matches!(
        events.recv().await,
        Err(broadcast::error::RecvError::Closed)
    ));
    assert!(matches!(
        qmp.events().recv().await,
        Err(broadcast::error::RecvError::Closed)
    ));
}

#[tokio::test]
async fn quit_then_closed() {
    let mock = Mock::start(MockConfig::default());
    let qmp = mock.connect().await;
    let mut events = qmp.events();
    qmp.quit().await.unwrap();
    let ev = next_event(&mut events).await;
    assert_eq!(ev.name, "SHUTDOWN");
    assert_eq!(ev.data["reason"], "host-qmp-quit");
    timeout(WAIT, qmp.closed()).await.unwrap();
}

#[tokio::test]
async fn quit_answered_by_hanging_up_is_success() {
    let mock = Mock::start(MockConfig {
        quit_without_reply: true,
    });
    let qmp = mock.connect().await;
    qmp.quit().await.unwrap();
    timeout(WAIT, qmp.closed()).await.unwrap();
}

#[tokio::test]
async fn pid_falls_back_to_vcpu_threads() {
    // The mock's socket belongs to this process, so SO_PEERCRED is not trusted
    // and the pid comes from query-cpus-fast's thread ids.
    let mock = Mock::start(MockConfig::default());
    let qmp = mock.connect().await;
    assert_eq!(qmp.query_pid().await.unwrap(), std::process::id());
    assert_eq!(mock.received().last().unwrap(), "query-cpus-fast");
}

#[tokio::test]
async fn traffic_is_logged() {
    let mock = Mock::start(MockConfig::default());
    let log_path = mock.dir.path().join("qmp.log");
    let opts = QmpOptions {
        log_path: Some(log_path.clone()),
        ..QmpOptions::default()
    };
    let qmp = Qmp::connect(&mock.path, opts).await.unwrap();
    qmp.query_status().await.unwrap();
    qmp.flush_log().await;
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[0].contains(" <- {\"QMP\""), "{text}");
    assert!(
        lines[1].contains(r#" -> {"execute":"qmp_capabilities","id":0}"#),
        "{text}"
    );
    assert!(lines[3].contains(" -> ") && lines[3].contains("query-status"));
    assert!(lines[4].contains(" <- ") && lines[4].contains("prelaunch"));
    assert!(!text.contains('\r'));
}

#[tokio::test]
async fn connect_to_missing_socket_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.sock");
    match Qmp::connect(&path, QmpOptions::default()).await {
        Err(QmpError::Connect { path: p, .. }) => assert_eq!(p, path),
        other => panic!("expected a connect error, got {other:?}"),
    }
}

mod real_qemu {
    //! The same client against a real QEMU, started paused with no guest.

    use super::*;
    use std::process::{Child, Command, Stdio};

    const QEMU: &str = "/usr/bin/qemu-system-x86_64";

    /// Kills and reaps QEMU however the test ends.
    struct QemuGuard(Child);

    impl Drop for QemuGuard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn spawn_qemu(dir: &Path, sock: &Path) -> QemuGuard {
        let stderr = std::fs::File::create(dir.join("qemu.stderr")).unwrap();
        let child = Command::new(QEMU)
            .args([
                "-accel",
                "tcg",
                "-M",
                "pc",
                "-nodefaults",
                "-display",
                "none",
                "-S",
            ])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        QemuGuard(child)
    }

    async fn connect_when_ready(
        qemu: &mut QemuGuard,
        dir: &Path,
        sock: &Path,
        opts: QmpOptions,
    ) -> Qmp {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = qemu.0.try_wait().unwrap() {
                let stderr = std::fs::read_to_string(dir.join("qemu.stderr")).unwrap_or_default();
                panic!("QEMU exited early ({status}): {stderr}");
            }
            if sock.exists() {
                match Qmp::connect(sock, opts.clone()).await {
                    Ok(qmp) => return qmp,
                    Err(QmpError::Connect { .. }) => {}
                    Err(e) => panic!("QMP handshake with QEMU failed: {e}"),
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "QMP socket never came up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn drives_real_qemu() {
        if !Path::new(QEMU).exists() {
            println!("skipping: {QEMU} is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let log_path = dir.path().join("qmp.log");
        let mut qemu = spawn_qemu(dir.path(), &sock);
        let opts = QmpOptions {
            log_path: Some(log_path.clone()),
            ..QmpOptions::default()
        };
        let qmp = connect_when_ready(&mut qemu, dir.path(), &sock, opts).await;

        assert_eq!(qmp.version().major, 7, "version {}", qmp.version());
        assert_eq!(qmp.query_pid().await.unwrap(), qemu.0.id());

        let status = qmp.query_status().await.unwrap();
        assert!(!status.running);
        assert_eq!(status.status, "prelaunch");

        let mut events = qmp.events();
        qmp.cont().await.unwrap();
        let ev = next_event(&mut events).await;
        assert_eq!(ev.name, "RESUME");
        assert!(ev.timestamp.is_some());
        let status = qmp.query_status().await.unwrap();
        assert!(status.running);
        assert_eq!(status.status, "running");

        qmp.stop().await.unwrap();
        assert_eq!(next_event(&mut events).await.name, "STOP");
        let status = qmp.query_status().await.unwrap();
        assert!(!status.running);
        assert_eq!(status.status, "paused");

        let e = qmp
            .execute_raw("x-no-such-command", None)
            .await
            .unwrap_err();
        assert!(e.is_class("CommandNotFound"), "{e:?}");

        // No guest is loaded, so these only produce their events.
        qmp.system_reset().await.unwrap();
        let ev = next_event(&mut events).await;
        assert_eq!(ev.name, "RESET");
        assert_eq!(ev.data["reason"], "host-qmp-system-reset");
        qmp.system_powerdown().await.unwrap();
        assert_eq!(next_event(&mut events).await.name, "POWERDOWN");

        qmp.quit().await.unwrap();
        let ev = next_event(&mut events).await;
        assert_eq!(ev.name, "SHUTDOWN");
        assert_eq!(ev.data["reason"], "host-qmp-quit");
        timeout(WAIT, qmp.closed()).await.unwrap();
        assert!(matches!(
            qmp.query_status().await,
            Err(QmpError::Disconnected)
        ));

        let deadline = tokio::time::Instant::now() + WAIT;
        let exit = loop {
            if let Some(status) = qemu.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "QEMU did not exit after quit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(exit.success(), "QEMU exit status {exit}");

        qmp.flush_log().await;
        let log = std::fs::read_to_string(&log_path).unwrap();
        assert!(log.contains("\"RESUME\""), "{log}");
        assert!(log.contains("\"execute\":\"quit\""), "{log}");
    }
}
