//! A daemon reachable over HTTPS (`corrald --listen 127.0.0.1:PORT`), and requests to it
//! with curl — a real TLS client that checks the daemon's certificate.

use std::process::Command;

use crate::{Daemon, Value};

/// A free loopback port (the kernel's pick; released at once for the daemon to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A reply: status, JSON body (or Null), and the raw headers.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: String,
}

impl Daemon {
    /// A TCG daemon that also serves HTTPS on a free loopback port.
    pub fn start_remote(extra: &[&str]) -> (Daemon, String) {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["--accel", "tcg", "--listen", &listen];
        args.extend_from_slice(extra);
        (
            Daemon::start_with(&args),
            format!("https://127.0.0.1:{port}"),
        )
    }

    /// The daemon's self-signed certificate, which curl is told to trust.
    pub fn tls_cert(&self) -> std::path::PathBuf {
        self.state_dir().join("tls/server.crt")
    }

    /// An HTTPS request with extra headers (`"Authorization: Bearer …"`) and an optional
    /// cookie jar file (read and written, as a browser keeps cookies).
    pub fn https(
        &self,
        url: &str,
        method: &str,
        path: &str,
        headers: &[&str],
        body: Option<&str>,
        jar: Option<&std::path::Path>,
    ) -> Reply {
        let head = tempfile::NamedTempFile::new().unwrap();
        let mut c = Command::new("curl");
        c.args(["-sS", "-X", method, "--cacert"])
            .arg(self.tls_cert())
            .arg("-D")
            .arg(head.path())
            .args(["-w", "\n%{http_code}"]);
        for h in headers {
            c.args(["-H", h]);
        }
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        if let Some(j) = jar {
            c.arg("-b").arg(j).arg("-c").arg(j);
        }
        let out = c.arg(format!("{url}{path}")).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (body, status) = text.rsplit_once('\n').unwrap();
        Reply {
            status: status.trim().parse().unwrap(),
            body: serde_json::from_str(body).unwrap_or(Value::Null),
            headers: std::fs::read_to_string(head.path()).unwrap_or_default(),
        }
    }
}
