//! A scripted QMP peer for unit tests of multi-step QMP operations.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::qmp::{Qmp, QmpOptions};

/// A scripted QMP peer: the test says which command comes next and what
/// to answer, so the order of steps (and rollbacks) is checked exactly.
pub(crate) struct Peer(BufReader<UnixStream>);

impl Peer {
    pub(crate) async fn start() -> (Qmp, Peer) {
        let (client, server) = UnixStream::pair().unwrap();
        let mut peer = Peer(BufReader::new(server));
        let handshake = async {
            peer.send(json!({"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}))
                .await;
            let (id, _) = peer.expect("qmp_capabilities").await;
            peer.ok(id, json!({})).await;
        };
        let (qmp, ()) = tokio::join!(Qmp::from_stream(client, QmpOptions::default()), handshake);
        (qmp.unwrap(), peer)
    }

    pub(crate) async fn send(&mut self, v: Value) {
        let line = format!("{v}\r\n");
        self.0.get_mut().write_all(line.as_bytes()).await.unwrap();
    }

    /// Read the next command (descriptors sent with it are dropped by the
    /// kernel, as plain reads do not take them), check its name, return id and arguments.
    pub(crate) async fn expect(&mut self, command: &str) -> (Value, Value) {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), self.0.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        let msg: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(msg["execute"], command, "{line}");
        (
            msg["id"].clone(),
            msg.get("arguments").cloned().unwrap_or(Value::Null),
        )
    }

    pub(crate) async fn ok(&mut self, id: Value, ret: Value) {
        self.send(json!({"return": ret, "id": id})).await;
    }

    pub(crate) async fn err(&mut self, id: Value, class: &str, desc: &str) {
        self.send(json!({"error": {"class": class, "desc": desc}, "id": id}))
            .await;
    }

    pub(crate) async fn event(&mut self, name: &str, data: Value) {
        self.send(
            json!({"event": name, "data": data, "timestamp": {"seconds": 1, "microseconds": 2}}),
        )
        .await;
    }

    /// Nothing more is sent within a short while (the client hanging up,
    /// once its last handle is dropped, counts as nothing).
    pub(crate) async fn expect_silence(&mut self) {
        let mut line = String::new();
        let read =
            tokio::time::timeout(Duration::from_millis(200), self.0.read_line(&mut line)).await;
        assert!(matches!(read, Err(_) | Ok(Ok(0))), "unexpected: {line}");
    }
}
