//! A bounded, timestamped log of every QMP line sent and received.
//!
//! Lines are handed to a background task over a bounded channel so that a slow
//! disk never stalls the QMP reader or a command; if the queue is full, lines are
//! dropped and a marker says how many. The file is truncated to empty (with a
//! marker line) whenever appending would take it past its size limit.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::fs::File;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

/// The size past which the log file is truncated.
pub(crate) const MAX_LOG_BYTES: u64 = 1024 * 1024;
/// How many lines may wait for the writer task before new ones are dropped.
const QUEUE_LEN: usize = 4096;
/// Longest single line kept in the log (e.g. `query-qmp-schema` replies are large).
const MAX_LINE_BYTES: usize = 64 * 1024;

/// Which way a line went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Sent,
    Received,
}

enum Entry {
    Line {
        at: SystemTime,
        dir: Direction,
        line: String,
    },
    Flush(oneshot::Sender<()>),
}

/// Handle to the log; cheap to clone. The writer task ends when every handle is gone.
#[derive(Clone)]
pub(crate) struct TrafficLog {
    tx: mpsc::Sender<Entry>,
    dropped: Arc<AtomicU64>,
}

impl TrafficLog {
    /// Open (append to, creating if needed) the log at `path` and start its writer task.
    pub(crate) async fn open(path: &Path, max_bytes: u64) -> io::Result<TrafficLog> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        let size = file.metadata().await?.len();
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            file,
            size,
            max_bytes,
            dropped: Arc::clone(&dropped),
            path: path.display().to_string(),
        };
        tokio::spawn(writer.run(rx));
        Ok(TrafficLog { tx, dropped })
    }

    /// Queue one line (without its newline). Never blocks.
    pub(crate) fn record(&self, dir: Direction, line: &str) {
        let entry = Entry::Line {
            at: SystemTime::now(),
            dir,
            line: line.to_owned(),
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(entry) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Wait until every line queued so far has been written to the file.
    pub(crate) async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Entry::Flush(tx)).await.is_ok() {
            // An error means the writer task gave up; nothing more to wait for.
            let _ = rx.await;
        }
    }
}

struct Writer {
    file: File,
    size: u64,
    max_bytes: u64,
    dropped: Arc<AtomicU64>,
    path: String,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Entry>) {
        while let Some(entry) = rx.recv().await {
            let result = match entry {
                Entry::Line { at, dir, line } => self.write_line(at, dir, &line).await,
                Entry::Flush(done) => {
                    let r = self.file.flush().await;
                    let _ = done.send(());
                    r
                }
            };
            if let Err(e) = result {
                tracing::warn!(path = %self.path, error = %e, "QMP log write failed; logging stopped");
                return;
            }
        }
        let _ = self.file.flush().await;
    }

    async fn write_line(&mut self, at: SystemTime, dir: Direction, line: &str) -> io::Result<()> {
        let mut text = String::new();
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            text.push_str(&format!(
                "{} -- {dropped} line(s) not logged: queue full --\n",
                rfc3339(at)
            ));
        }
        let arrow = match dir {
            Direction::Sent => "->",
            Direction::Received => "<-",
        };
        let line = line.trim_end_matches(['\r', '\n']);
        let cap = MAX_LINE_BYTES.min(usize::try_from(self.max_bytes / 4).unwrap_or(usize::MAX));
        if line.len() > cap {
            let mut cut = cap;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            text.push_str(&format!(
                "{} {arrow} {}… ({} more bytes not logged)\n",
                rfc3339(at),
                &line[..cut],
                line.len() - cut
            ));
        } else {
            text.push_str(&format!("{} {arrow} {line}\n", rfc3339(at)));
        }

        if self.size + text.len() as u64 > self.max_bytes {
            self.file.set_len(0).await?;
            self.size = 0;
            let marker = format!(
                "{} -- log truncated: it reached {} bytes --\n",
                rfc3339(at),
                self.max_bytes
            );
            self.file.write_all(marker.as_bytes()).await?;
            self.size += marker.len() as u64;
        }
        self.file.write_all(text.as_bytes()).await?;
        self.size += text.len() as u64;
        // Push it to the kernel now so the log is useful right after a crash.
        self.file.flush().await
    }
}

/// Format a time as RFC 3339 UTC with microseconds: `2024-05-01T12:34:56.123456Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_micros()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
/// Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::new(951_782_400, 7_000); // leap day 2000
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000007Z");
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123456Z");
        let t = UNIX_EPOCH + Duration::new(4_102_444_799, 0);
        assert_eq!(rfc3339(t), "2099-12-31T23:59:59.000000Z");
    }

    #[tokio::test]
    async fn logs_lines_with_direction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.log");
        let log = TrafficLog::open(&path, MAX_LOG_BYTES).await.unwrap();
        log.record(Direction::Sent, r#"{"execute":"stop","id":1}"#);
        log.record(Direction::Received, "{\"return\": {}, \"id\": 1}\r\n");
        log.flush().await;
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].ends_with(r#" -> {"execute":"stop","id":1}"#));
        assert!(lines[1].ends_with(r#" <- {"return": {}, "id": 1}"#));
        assert!(lines[0].contains('T') && lines[0].contains("Z "));
    }

    #[tokio::test]
    async fn truncates_past_limit_and_caps_long_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.log");
        std::fs::write(&path, "old content from a previous run\n").unwrap();
        let limit = 1000;
        let log = TrafficLog::open(&path, limit).await.unwrap();
        for i in 0..100 {
            log.record(Direction::Sent, &format!("line number {i:04}"));
            log.flush().await;
            let len = std::fs::metadata(&path).unwrap().len();
            assert!(len <= limit, "log grew to {len}");
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("log truncated"), "{text}");
        assert!(text.contains("line number 0099"), "{text}");
        assert!(!text.contains("old content"), "{text}");

        log.record(Direction::Received, &"x".repeat(5000));
        log.flush().await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("more bytes not logged"), "{text}");
        assert!(std::fs::metadata(&path).unwrap().len() <= limit);
    }
}
