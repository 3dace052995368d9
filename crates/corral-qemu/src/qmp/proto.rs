//! QMP wire format: classifying the JSON objects QEMU sends, and the greeting.
//!
//! Everything here works on [`serde_json::Value`] so that fields added by newer
//! QEMU versions, and events this crate has never heard of, pass through untouched.

use serde_json::Value;

use super::{Event, QemuVersion};

/// The `error` member of a failed command's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommandFailure {
    pub(crate) class: String,
    pub(crate) desc: String,
}

/// One object received from QEMU, sorted by kind.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Message {
    /// A reply to a command. `id` is `None` when QEMU sent no id or one this
    /// client cannot have issued (we only ever send non-negative integers).
    Reply {
        id: Option<u64>,
        result: Result<Value, CommandFailure>,
    },
    /// An asynchronous event.
    Event(Event),
    /// The greeting (`{"QMP": {...}}`), only expected right after connecting.
    Greeting(Value),
    /// Anything else: logged and ignored.
    Other(Value),
}

/// Sort one received object by kind. Never fails: unknown shapes become [`Message::Other`].
pub(crate) fn classify(value: Value) -> Message {
    let Value::Object(mut obj) = value else {
        return Message::Other(value);
    };
    if let Some(ret) = obj.remove("return") {
        let id = obj.get("id").and_then(Value::as_u64);
        return Message::Reply {
            id,
            result: Ok(ret),
        };
    }
    if let Some(err) = obj.remove("error") {
        let id = obj.get("id").and_then(Value::as_u64);
        return Message::Reply {
            id,
            result: Err(command_failure(err)),
        };
    }
    if let Some(Value::String(name)) = obj.remove("event") {
        let data = obj.remove("data").unwrap_or(Value::Null);
        let timestamp = obj.get("timestamp").and_then(|ts| {
            Some((
                ts.get("seconds")?.as_i64()?,
                ts.get("microseconds")?.as_i64()?,
            ))
        });
        return Message::Event(Event {
            name,
            data,
            timestamp,
        });
    }
    if let Some(greeting) = obj.remove("QMP") {
        return Message::Greeting(greeting);
    }
    Message::Other(Value::Object(obj))
}

fn command_failure(err: Value) -> CommandFailure {
    let field = |name: &str| err.get(name).and_then(Value::as_str).map(str::to_owned);
    match (field("class"), field("desc")) {
        (Some(class), Some(desc)) => CommandFailure { class, desc },
        (class, _) => CommandFailure {
            class: class.unwrap_or_else(|| "GenericError".to_owned()),
            desc: err.to_string(),
        },
    }
}

/// Extract the QEMU version from the body of the greeting (the value of its `QMP` member).
pub(crate) fn greeting_version(greeting: &Value) -> Option<QemuVersion> {
    let qemu = greeting.get("version")?.get("qemu")?;
    let part = |name: &str| {
        qemu.get(name)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    };
    Some(QemuVersion {
        major: part("major")?,
        minor: part("minor")?,
        micro: part("micro")?,
    })
}

/// Extract the `Tgid:` (process id) from the text of `/proc/<tid>/status`.
pub(crate) fn parse_tgid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|rest| rest.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classifies_return_with_id() {
        let m = classify(json!({"return": {"running": true}, "id": 7}));
        assert_eq!(
            m,
            Message::Reply {
                id: Some(7),
                result: Ok(json!({"running": true}))
            }
        );
    }

    #[test]
    fn classifies_error_with_id() {
        let m = classify(json!({
            "id": 3,
            "error": {"class": "CommandNotFound", "desc": "The command nosuch has not been found"}
        }));
        assert_eq!(
            m,
            Message::Reply {
                id: Some(3),
                result: Err(CommandFailure {
                    class: "CommandNotFound".into(),
                    desc: "The command nosuch has not been found".into()
                })
            }
        );
    }

    #[test]
    fn malformed_error_keeps_raw_text() {
        let m = classify(json!({"id": 1, "error": {"weird": 1}}));
        let Message::Reply { result: Err(f), .. } = m else {
            panic!("not an error reply: {m:?}");
        };
        assert_eq!(f.class, "GenericError");
        assert!(f.desc.contains("weird"));
    }

    #[test]
    fn foreign_ids_are_not_matched() {
        for id in [json!("abc"), json!(-1), json!({"a": 1}), json!(1.5)] {
            let m = classify(json!({"return": {}, "id": id}));
            assert!(matches!(m, Message::Reply { id: None, .. }), "{m:?}");
        }
        let m = classify(json!({"error": {"class": "GenericError", "desc": "JSON parse error"}}));
        assert!(matches!(m, Message::Reply { id: None, .. }), "{m:?}");
    }

    #[test]
    fn classifies_events_known_and_unknown() {
        let m = classify(json!({
            "timestamp": {"seconds": 1700000000, "microseconds": 12},
            "event": "STOP"
        }));
        assert_eq!(
            m,
            Message::Event(Event {
                name: "STOP".into(),
                data: Value::Null,
                timestamp: Some((1700000000, 12)),
            })
        );
        let m = classify(json!({
            "event": "X_FROM_THE_FUTURE",
            "data": {"a": [1, 2]},
            "extra": true
        }));
        assert_eq!(
            m,
            Message::Event(Event {
                name: "X_FROM_THE_FUTURE".into(),
                data: json!({"a": [1, 2]}),
                timestamp: None,
            })
        );
    }

    #[test]
    fn classifies_greeting_and_other() {
        let g = json!({"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7},
            "package": "Debian"}, "capabilities": ["oob"]}});
        let Message::Greeting(body) = classify(g) else {
            panic!("not a greeting");
        };
        assert_eq!(
            greeting_version(&body),
            Some(QemuVersion {
                major: 7,
                minor: 2,
                micro: 22
            })
        );
        assert_eq!(greeting_version(&json!({"version": {}})), None);
        assert!(matches!(classify(json!({"hello": 1})), Message::Other(_)));
        assert!(matches!(classify(json!([1, 2])), Message::Other(_)));
    }

    #[test]
    fn parses_tgid() {
        let status = "Name:\tqemu\nUmask:\t0022\nState:\tS\nTgid:\t4242\nNgid:\t0\nPid:\t4250\n";
        assert_eq!(parse_tgid(status), Some(4242));
        assert_eq!(parse_tgid("Name:\tx\n"), None);
    }
}
