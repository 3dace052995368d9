use super::*;
use serde_json::json;
use tokio::io::AsyncBufReadExt;

#[test]
fn timeouts_by_command() {
    let d = Duration::from_secs(5);
    for quick in [
        "query-status",
        "cont",
        "stop",
        "system_reset",
        "quit",
        "qmp_capabilities",
        "device_add",
    ] {
        assert_eq!(timeout_for(quick, d), d, "{quick}");
    }
    for slow in [
        "blockdev-add",
        "blockdev-snapshot-sync",
        "block-commit",
        "block_resize",
        "drive-mirror",
        "migrate",
        "migrate-incoming",
        "snapshot-save",
        "job-dismiss",
        "human-monitor-command",
        "transaction",
    ] {
        assert_eq!(timeout_for(slow, d), LONG_TIMEOUT, "{slow}");
    }
    // A generous default is never shortened.
    let big = Duration::from_secs(600);
    assert_eq!(timeout_for("blockdev-add", big), big);
}

#[test]
fn version_orders_and_displays() {
    let v = |major, minor, micro| QemuVersion {
        major,
        minor,
        micro,
    };
    assert!(v(7, 2, 22) > v(7, 1, 99));
    assert!(v(8, 0, 0) > v(7, 2, 22));
    assert_eq!(v(7, 2, 22).to_string(), "7.2.22");
}

#[test]
fn error_helpers() {
    let e = QmpError::Command {
        command: "x".into(),
        class: "CommandNotFound".into(),
        desc: "nope".into(),
    };
    assert!(e.is_class("CommandNotFound"));
    assert!(!e.is_class("GenericError"));
    assert!(!QmpError::Disconnected.is_class("CommandNotFound"));
    assert_eq!(
        e.to_string(),
        "QMP command `x` failed: nope (CommandNotFound)"
    );
}

/// A minimal in-process peer over a socketpair, for the wire details the
/// integration mock does not look at.
async fn pair() -> (Qmp, BufReader<UnixStream>) {
    let (client, server) = UnixStream::pair().unwrap();
    let mut server = BufReader::new(server);
    let peer = async {
        server
            .get_mut()
            .write_all(
                b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 1, \"minor\": 0, \"major\": 9}, \
                  \"package\": \"\"}, \"capabilities\": []}}\r\n",
            )
            .await
            .unwrap();
        let mut line = String::new();
        server.read_line(&mut line).await.unwrap();
        assert_eq!(line.trim_end(), r#"{"execute":"qmp_capabilities","id":0}"#);
        server
            .get_mut()
            .write_all(b"{\"return\": {}, \"id\": 0}\r\n")
            .await
            .unwrap();
    };
    let (qmp, ()) = tokio::join!(Qmp::from_stream(client, QmpOptions::default()), peer);
    (qmp.unwrap(), server)
}

#[tokio::test]
async fn wire_format_of_commands() {
    let (qmp, mut server) = pair().await;
    assert_eq!(qmp.version().to_string(), "9.0.1");
    // The socketpair was made by this process: SO_PEERCRED must not be trusted.
    assert_eq!(qmp.inner.peer_pid, None);

    let call = tokio::spawn({
        let qmp = qmp.clone();
        async move {
            qmp.execute_raw("device_del", Some(json!({"id": "net0"})))
                .await
        }
    });
    let mut line = String::new();
    server.read_line(&mut line).await.unwrap();
    let sent: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(sent["execute"], "device_del");
    assert_eq!(sent["arguments"], json!({"id": "net0"}));
    let id = sent["id"].as_u64().unwrap();
    assert!(id >= 1);
    // Noise that must be tolerated: blank lines, non-JSON, foreign ids.
    let noise = format!(
        "\r\nnot json\r\n{{\"return\": 1, \"id\": \"other\"}}\r\n{{\"return\": {{\"ok\": 1}}, \"id\": {id}}}\r\n"
    );
    server.get_mut().write_all(noise.as_bytes()).await.unwrap();
    assert_eq!(call.await.unwrap().unwrap(), json!({"ok": 1}));

    // Null arguments are omitted entirely.
    let call = tokio::spawn({
        let qmp = qmp.clone();
        async move { qmp.execute_raw("stop", Some(Value::Null)).await }
    });
    line.clear();
    server.read_line(&mut line).await.unwrap();
    let sent: Value = serde_json::from_str(&line).unwrap();
    assert!(sent.get("arguments").is_none(), "{sent}");
    let reply = format!("{{\"return\": {{}}, \"id\": {}}}\n", sent["id"]);
    server.get_mut().write_all(reply.as_bytes()).await.unwrap();
    call.await.unwrap().unwrap();
}

#[tokio::test]
async fn cancelled_command_forgets_its_id() {
    let (qmp, mut server) = pair().await;
    let call = tokio::spawn({
        let qmp = qmp.clone();
        async move { qmp.execute_raw("query-status", None).await }
    });
    let mut line = String::new();
    server.read_line(&mut line).await.unwrap();
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    assert!(qmp.inner.shared.state().pending.is_empty());
}

#[tokio::test]
async fn overlong_line_closes_connection() {
    let (qmp, mut server) = pair().await;
    let pending = tokio::spawn({
        let qmp = qmp.clone();
        async move { qmp.execute_raw("query-status", None).await }
    });
    let chunk = vec![b'x'; 1024 * 1024];
    for _ in 0..=MAX_LINE_BYTES / chunk.len() {
        if server.get_mut().write_all(&chunk).await.is_err() {
            break;
        }
    }
    tokio::time::timeout(Duration::from_secs(10), qmp.closed())
        .await
        .unwrap();
    assert!(matches!(
        pending.await.unwrap(),
        Err(QmpError::Disconnected)
    ));
    // The client hung up although `qmp` is still alive.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), server.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn bad_greeting_is_a_protocol_error() {
    let (client, mut server) = UnixStream::pair().unwrap();
    server.write_all(b"{\"hello\": 1}\n").await.unwrap();
    let err = Qmp::from_stream(client, QmpOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, QmpError::Protocol(_)), "{err}");

    let (client, server) = UnixStream::pair().unwrap();
    drop(server);
    let err = Qmp::from_stream(client, QmpOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, QmpError::Disconnected), "{err}");

    let (client, _server) = UnixStream::pair().unwrap();
    let opts = QmpOptions {
        default_timeout: Duration::from_millis(50),
        ..QmpOptions::default()
    };
    let err = Qmp::from_stream(client, opts).await.unwrap_err();
    assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
}

/// Read one line from the peer end of the socket, with every descriptor
/// that arrived alongside it (as QEMU's socket chardev does).
async fn recv_line_with_fds(server: &UnixStream) -> (String, Vec<OwnedFd>) {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::io::IoSliceMut;
    use std::os::fd::{AsRawFd, FromRawFd, RawFd};
    use tokio::io::Interest;

    let (mut data, mut fds) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; 64 * 1024];
    while !data.ends_with(b"\n") {
        server.readable().await.unwrap();
        let got = server.try_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!([RawFd; 32]);
            let msg = recvmsg::<()>(
                server.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )?;
            let mut raw = Vec::new();
            for cmsg in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(r) = cmsg {
                    raw.extend(r);
                }
            }
            Ok((msg.bytes, raw))
        });
        match got {
            Ok((n, raw)) => {
                assert!(n > 0, "EOF in the middle of a line");
                data.extend_from_slice(&buf[..n]);
                // SAFETY: SCM_RIGHTS installed these descriptors in this
                // process just now; nothing else owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("recvmsg: {e}"),
        }
    }
    (String::from_utf8(data).unwrap(), fds)
}

fn same_file(a: &std::fs::File, b: OwnedFd) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (
        a.metadata().unwrap(),
        std::fs::File::from(b).metadata().unwrap(),
    );
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

async fn reply(server: &mut UnixStream, line: &str, ret: Value) {
    let sent: Value = serde_json::from_str(line).unwrap();
    let reply = json!({"return": ret, "id": sent["id"]});
    server
        .write_all(format!("{reply}\r\n").as_bytes())
        .await
        .unwrap();
}

#[tokio::test]
async fn fds_travel_with_their_command() {
    let (qmp, server) = pair().await;
    let mut server = server.into_inner();
    let image = Arc::new(tempfile::tempfile().unwrap());

    let call = tokio::spawn({
        let (qmp, image) = (qmp.clone(), Arc::clone(&image));
        async move { qmp.add_fd(image.as_fd(), Some(3), "disk7").await }
    });
    let (line, fds) = recv_line_with_fds(&server).await;
    let sent: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(sent["execute"], "add-fd");
    assert_eq!(sent["arguments"], json!({"fdset-id": 3, "opaque": "disk7"}));
    assert_eq!(fds.len(), 1);
    assert!(same_file(&image, fds.into_iter().next().unwrap()));
    reply(&mut server, &line, json!({"fdset-id": 3, "fd": 42})).await;
    let info = call.await.unwrap().unwrap();
    assert_eq!(
        info,
        AddFdInfo {
            fdset_id: 3,
            fd: 42
        }
    );

    // Ordinary commands still carry nothing.
    let call = tokio::spawn({
        let qmp = qmp.clone();
        async move { qmp.query_fdsets().await }
    });
    let (line, fds) = recv_line_with_fds(&server).await;
    assert!(fds.is_empty());
    reply(
        &mut server,
        &line,
        json!([{"fdset-id": 3, "fds": [{"fd": 42, "opaque": "disk7"}, {"fd": 43}]}]),
    )
    .await;
    let sets = call.await.unwrap().unwrap();
    assert_eq!(sets[0].fds[0].opaque.as_deref(), Some("disk7"));
    assert_eq!(
        sets[0].fds[1],
        FdsetFdInfo {
            fd: 43,
            opaque: None
        }
    );
}

#[tokio::test]
async fn long_line_with_fds_is_written_whole() {
    let (qmp, server) = pair().await;
    let mut server = server.into_inner();
    let file = Arc::new(tempfile::tempfile().unwrap());
    // Far more than a socket buffer holds: sendmsg takes part, the rest follows.
    let big = "x".repeat(4 * 1024 * 1024);
    let call = tokio::spawn({
        let (qmp, file, big) = (qmp.clone(), Arc::clone(&file), big.clone());
        async move {
            let fds = [file.as_fd(), file.as_fd()];
            qmp.execute_with_fds("getfd", Some(json!({"fdname": big})), &fds)
                .await
        }
    });
    let (line, fds) = recv_line_with_fds(&server).await;
    let sent: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        sent["arguments"]["fdname"].as_str().map(str::len),
        Some(big.len())
    );
    assert_eq!(fds.len(), 2);
    reply(&mut server, &line, json!({})).await;
    call.await.unwrap().unwrap();
}

#[tokio::test]
async fn fd_commands_wait_for_each_other() {
    let (qmp, server) = pair().await;
    let mut server = server.into_inner();
    let file = Arc::new(tempfile::tempfile().unwrap());
    let getfd = |name: &'static str| {
        let (qmp, file) = (qmp.clone(), Arc::clone(&file));
        tokio::spawn(async move { qmp.getfd(name, file.as_fd()).await })
    };
    let first = getfd("a");
    let (line, fds) = recv_line_with_fds(&server).await;
    assert_eq!(fds.len(), 1);
    let second = getfd("b");
    // An ordinary command is not held up by the pending fd command...
    let closefd = tokio::spawn({
        let qmp = qmp.clone();
        async move { qmp.closefd("z").await }
    });
    let (other, fds) = recv_line_with_fds(&server).await;
    assert!(other.contains("closefd") && fds.is_empty(), "{other}");
    reply(&mut server, &other, json!({})).await;
    closefd.await.unwrap().unwrap();
    // ...but the second fd command is, until the first is answered.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut probe = [0u8; 1];
    assert!(matches!(
        server.try_read(&mut probe),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock
    ));
    reply(&mut server, &line, json!({})).await;
    first.await.unwrap().unwrap();
    let (line, fds) = recv_line_with_fds(&server).await;
    assert!(line.contains("\"b\""), "{line}");
    assert_eq!(fds.len(), 1);
    reply(&mut server, &line, json!({})).await;
    second.await.unwrap().unwrap();
}

#[tokio::test]
async fn too_many_fds_are_refused_before_sending() {
    let (qmp, server) = pair().await;
    let file = tempfile::tempfile().unwrap();
    let fds = vec![file.as_fd(); MAX_FDS_PER_COMMAND + 1];
    let e = qmp
        .execute_with_fds("getfd", Some(json!({"fdname": "x"})), &fds)
        .await
        .unwrap_err();
    assert!(
        matches!(e, QmpError::TooManyFds { count: 17, max: 16 }),
        "{e}"
    );
    let mut probe = [0u8; 1];
    assert!(server.get_ref().try_read(&mut probe).is_err());
}

#[tokio::test]
async fn dropping_last_handle_closes_socket() {
    let (qmp, mut server) = pair().await;
    drop(qmp);
    let mut line = String::new();
    let n = tokio::time::timeout(Duration::from_secs(5), server.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "expected EOF, got {line:?}");
}
