//! Test infrastructure for end-to-end tests (like Cloud Hypervisor's `test_infra`): each
//! test starts its own `corrald` with its own state dir and socket, drives it through the
//! real `corral` CLI, and boots the real test guest under QEMU (TCG). Dropping a
//! [`Daemon`] kills the daemon and every QEMU it started, so nothing outlives a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use serde_json::Value;

/// The workspace root.
pub mod debian;
pub mod hosts;
pub mod netns;
pub mod remote;
pub use netns::{NetNs, World};

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Where cargo put the binaries (next to the test executable's `deps/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built; run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// The test guest (kernel + initrd), built once from Debian packages and cached under
/// `build/guest` (or `$CORRAL_TEST_GUEST`).
pub fn guest() -> &'static (PathBuf, PathBuf) {
    static GUEST: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    GUEST.get_or_init(|| {
        let dir = std::env::var_os("CORRAL_TEST_GUEST")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("build/guest"));
        // The script is cached and takes a lock, so concurrent tests share one build.
        let status = Command::new("bash")
            .arg(workspace().join("scripts/build-test-guest.sh"))
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "building the test guest failed");
        (dir.join("vmlinuz"), dir.join("initrd.img"))
    })
}

/// The test guest's kernel command line.
pub const GUEST_CMDLINE: &str = "console=ttyS0 quiet no_timer_check";

/// The standard `corral create` arguments that boot the test guest.
pub fn guest_args() -> Vec<String> {
    let (k, i) = guest();
    vec![
        "--kernel".into(),
        k.display().to_string(),
        "--initrd".into(),
        i.display().to_string(),
        "--cmdline".into(),
        // no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check
        // can fail and panic the guest at boot; virtual machines do not need it.
        GUEST_CMDLINE.into(),
    ]
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
    /// The namespace the daemon (and so its networks) lives in; `None`: the host's,
    /// where it must make no networks.
    netns: Option<String>,
    /// Environment the daemon gets on top of the test's (e.g. a PATH without a tool).
    env: Vec<(String, String)>,
}

impl Daemon {
    /// Starts a daemon on TCG (the only accelerator that boots guests on these hosts).
    pub fn start() -> Daemon {
        Self::start_with(&["--accel", "tcg"])
    }

    pub fn start_with(extra: &[&str]) -> Daemon {
        Self::start_full(extra, None)
    }

    /// Starts a daemon inside a test's network namespace, free to make networks there
    /// (including the `default` NAT network of a first start).
    pub fn start_in(ns: &NetNs, extra: &[&str]) -> Daemon {
        Self::start_full(extra, Some(ns.name.clone()))
    }

    /// Starts a daemon with these environment variables set (on TCG unless `extra` says
    /// otherwise), e.g. a `PATH` that lacks a tool.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut d = Self::new_unstarted(extra, None);
        d.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        d.spawn();
        d
    }

    /// [`Self::start_in`] with environment variables set (e.g. `CORRAL_TESTPOINTS`).
    pub fn start_in_with_env(ns: &NetNs, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut d = Self::new_unstarted(extra, Some(ns.name.clone()));
        d.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        d.spawn();
        d
    }

    /// The daemon's API socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Where this daemon's CLI keeps its remotes (`corral remote add`).
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    fn start_full(extra: &[&str], netns: Option<String>) -> Daemon {
        let mut d = Self::new_unstarted(extra, netns);
        d.spawn();
        d
    }

    fn new_unstarted(extra: &[&str], netns: Option<String>) -> Daemon {
        // Short paths: QEMU's socket paths must fit in 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("corral-")
            .tempdir_in("/tmp")
            .unwrap();
        let socket = dir.path().join("corral.sock");
        Daemon {
            dir,
            socket,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            netns,
            env: Vec::new(),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn spawn(&mut self) {
        let ready_before = self.log().matches("corrald ready").count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("corrald.log"))
            .unwrap();
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("corrald"));
                c
            }
            None => {
                let mut c = Command::new(bin("corrald"));
                c.arg("--no-default-network");
                c
            }
        };
        let child = command
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--socket")
            .arg(&self.socket)
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Up when this daemon says so and its socket answers. The socket alone is not
        // enough after a kill -9: a connect to the old path can still succeed for a moment
        // (seen once in CI: the next command then met a dead socket).
        while self.log().matches("corrald ready").count() <= ready_before
            || std::os::unix::net::UnixStream::connect(&self.socket).is_err()
        {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("corrald exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "corrald did not come up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` the daemon (VMs must survive).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Starts the daemon again on the same state dir and socket.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("corrald.log")).unwrap_or_default()
    }

    /// Runs `corral ARGS` against this daemon.
    pub fn corral(&self, args: &[&str]) -> Output {
        Command::new(bin("corral"))
            .env("CORRAL_SOCKET", &self.socket)
            .env("CORRAL_CONFIG_DIR", self.dir.path().join("config"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Starts `corral ARGS` against this daemon without waiting for it.
    pub fn corral_spawn(&self, args: &[&str]) -> std::process::Child {
        Command::new(bin("corral"))
            .env("CORRAL_SOCKET", &self.socket)
            .env("CORRAL_CONFIG_DIR", self.dir.path().join("config"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Runs `corral ARGS`, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.corral(args);
        assert!(
            out.status.success(),
            "corral {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `corral ARGS`, asserting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.corral(args);
        assert!(
            !out.status.success(),
            "corral {args:?} should have failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `corral ARGS -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// Types `input` into an interactive `corral console NAME` session (stdin piped, so
    /// no raw mode; EOF detaches after `linger`) and returns what the session printed.
    pub fn console_session(&self, name: &str, input: &[u8], linger: Duration) -> String {
        use std::io::Write;
        let mut child = Command::new(bin("corral"))
            .env("CORRAL_SOCKET", &self.socket)
            .env("CORRAL_CONFIG_DIR", self.dir.path().join("config"))
            .args(["console", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        {
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(input).unwrap();
            std::thread::sleep(linger);
        }
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A raw HTTP request to the API socket: (status, JSON body or Null).
    pub fn http(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status: u16 = resp[9..12].parse().unwrap();
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
        // Tolerate chunked encoding: from the first '{' or '[' to the last '}' or ']'.
        let start = body.find(['{', '[']).unwrap_or(0);
        let end = body.rfind(['}', ']']).map(|i| i + 1).unwrap_or(body.len());
        (
            status,
            serde_json::from_str(&body[start..end]).unwrap_or(Value::Null),
        )
    }

    /// Defines (does not start) a test-guest VM: `corral create NAME EXTRA… <guest args>`.
    pub fn define(&self, name: &str, extra: &[&str]) {
        let mut args: Vec<String> = vec!["create".into(), name.into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(guest_args());
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(&a);
    }

    /// Defines a 256 MiB test-guest VM with one new disk of `disk_size`, no network.
    pub fn define_with_disk(&self, name: &str, disk_size: &str) {
        let disk = format!("size={disk_size}");
        self.define(
            name,
            &["--memory", "256M", "--disk", &disk, "--network", "none"],
        );
    }

    /// Runs a shell command in a running test guest and waits until it has finished:
    /// the completion marker is computed by the guest, so the echo of the typed line
    /// cannot be mistaken for it.
    pub fn guest_run(&self, name: &str, command: &str) {
        let tag = unique_tag();
        let line = format!("{command}; echo DONE-{tag}-$((6*7))\n");
        self.wait_for_shell(name);
        self.console_session(name, line.as_bytes(), Duration::from_secs(1));
        self.wait_console(name, &format!("DONE-{tag}-42"), Duration::from_secs(30));
    }

    /// Runs `command` in the running test guest until it prints `want` (the guest polls
    /// every half second, at most `timeout`) and returns its last output. Hot-plugged
    /// devices and resizes reach a TCG guest with a delay that grows with host load, so
    /// a single look after a fixed sleep is not enough.
    pub fn guest_poll(&self, name: &str, command: &str, want: &str, timeout: Duration) -> String {
        let tag = format!("OUT-{}-", unique_tag());
        let tries = timeout.as_millis().div_ceil(500);
        let line = format!(
            "i=0; while [ \"$({command} 2>&1)\" != '{want}' ] && [ $i -lt {tries} ]; \
             do sleep 0.5; i=$((i+1)); done; echo \"{tag}$((6*7)):$({command} 2>&1)\"\n"
        );
        self.wait_for_shell(name);
        self.console_session(name, line.as_bytes(), Duration::from_millis(500));
        let marker = format!("{tag}42:");
        self.wait_console(name, &marker, timeout + Duration::from_secs(30));
        let log = self.console_log(name);
        let start = log.rfind(&marker).map_or(0, |i| i + marker.len());
        log[start..].lines().next().unwrap_or("").trim().to_string()
    }

    /// Waits until the guest's shell reads lines: right after boot, ash may still be
    /// setting up its line editor (which drops what was typed before), so an empty line
    /// is sent until a new prompt answers it.
    fn wait_for_shell(&self, name: &str) {
        const PROMPT: &str = "corral-guest# ";
        let deadline = Instant::now() + Duration::from_secs(30);
        let before = self.console_log(name).matches(PROMPT).count();
        while self.console_log(name).matches(PROMPT).count() <= before {
            assert!(
                Instant::now() < deadline,
                "{name}'s shell does not answer:\n{}",
                self.console_log(name)
            );
            self.console_session(name, b"\n", Duration::from_millis(500));
        }
    }

    /// Creates and starts a test-guest VM.
    pub fn boot(&self, name: &str, extra: &[&str]) {
        let mut args: Vec<String> = ["create", name, "--memory", "256M", "--start"]
            .map(String::from)
            .to_vec();
        args.extend(guest_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(&a);
    }

    /// The VM's events, oldest first, as "kind: message" lines.
    pub fn events(&self, name: &str) -> String {
        self.json(&["events", "--vm", name])
            .as_array()
            .unwrap()
            .iter()
            .map(|e| format!("{}: {}\n", e["kind"], e["message"]))
            .collect()
    }

    pub fn vm(&self, name: &str) -> Value {
        self.json(&["show", name])
    }

    pub fn state(&self, name: &str) -> String {
        self.vm(name)["status"]["state"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn console_log(&self, name: &str) -> String {
        self.ok(&["console", name, "--log"])
    }

    /// Waits until the VM's console shows `text`.
    pub fn wait_console(&self, name: &str, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.console_log(name);
            if log.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "'{text}' not on {name}'s console:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts a stopped VM and waits for this boot's ready marker (the console log
    /// keeps earlier boots' output too).
    pub fn start_and_wait(&self, name: &str) {
        let before = self.console_log(name).matches("CORRAL-GUEST-READY").count();
        self.ok(&["start", name]);
        let deadline = Instant::now() + BOOT;
        while self.console_log(name).matches("CORRAL-GUEST-READY").count() <= before {
            assert!(
                Instant::now() < deadline,
                "{name} did not boot:\n{}",
                self.console_log(name)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `corral pool show POOL` reports no orphan and no missing file.
    pub fn assert_pool_clean(&self, pool: &str) {
        let shown = self.json(&["pool", "show", pool]);
        assert!(shown["orphans"].as_array().unwrap().is_empty(), "{shown}");
        assert!(shown["missing"].as_array().unwrap().is_empty(), "{shown}");
    }

    /// Runs an operation-returning command (`-o json`) and checks it succeeded.
    pub fn op_succeeds(&self, args: &[&str]) {
        let op = self.json(args);
        assert_eq!(op["state"], "succeeded", "{op}");
    }

    pub fn wait_state(&self, name: &str, state: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.state(name);
            if now == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} is {now}, expected {state}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// PIDs of every QEMU this daemon's state dir knows about.
    pub fn qemu_pids(&self) -> Vec<u32> {
        let run = self.state_dir().join("run");
        std::fs::read_dir(run)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("qemu.pid")).ok())
            .filter_map(|p| p.trim().parse().ok())
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        for pid in self.qemu_pids() {
            if pid_alive(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // The daemon is gone, so its VMs' cgroups are this test's to remove.
        std::thread::sleep(Duration::from_millis(100));
        let runs = std::fs::read_dir(self.state_dir().join("run"))
            .into_iter()
            .flatten()
            .flatten();
        for uuid in runs.map(|e| e.file_name().to_string_lossy().into_owned()) {
            for ctrl in ["cpu", "memory", "pids", ""] {
                let _ = std::fs::remove_dir(
                    Path::new("/sys/fs/cgroup")
                        .join(ctrl)
                        .join(format!("corral-vm-{uuid}")),
                );
            }
        }
        if std::thread::panicking() {
            eprintln!("--- corrald log ---\n{}", self.log());
        }
    }
}

/// Whether a process is alive (zombies count as dead).
/// A tag no other guest command of this test process uses: markers on a console log
/// that also holds earlier commands' output.
fn unique_tag() -> String {
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:x}-{run}", std::process::id())
}

pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(true),
        Err(_) => false,
    }
}

/// The first `n` bytes of a disk image as a guest would read them (through its whole
/// backing chain), via `qemu-img convert`.
pub fn image_head(image: &str, n: usize) -> String {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("r.raw");
    let ok = Command::new("qemu-img")
        .args(["convert", "-U", "-O", "raw", image])
        .arg(&raw)
        .status()
        .unwrap();
    assert!(ok.success(), "cannot read {image}");
    String::from_utf8_lossy(&std::fs::read(raw).unwrap()[..n]).into_owned()
}

/// Whether `path` exists.
pub fn exists(path: &str) -> bool {
    Path::new(path).exists()
}

pub const BOOT: Duration = Duration::from_secs(60);

/// `qemu-img check` finds the image clean.
pub fn qemu_img_check(path: &str) {
    let ok = std::process::Command::new("qemu-img")
        .args(["check", "-q", path])
        .status()
        .unwrap();
    assert!(ok.success(), "qemu-img check {path}");
}

/// How long a running TCG guest may take to notice a hot-plug, unplug or resize.
pub const SEEN: Duration = Duration::from_secs(20);
