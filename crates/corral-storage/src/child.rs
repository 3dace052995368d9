//! Child processes (`qemu-img`) that die with the daemon.
//!
//! A `qemu-img convert` or `rebase` that outlives a killed corrald keeps working on
//! files the restarted daemon is recovering: a rebase finishing behind its back moves a
//! backing file the snapshot tree does not know about, and holds the image's write lock
//! so the retried delete fails; a convert recreates the temporary file the start-up
//! sweep just removed. So every child asks the kernel to `SIGKILL` it when its parent
//! goes (`PR_SET_PDEATHSIG`).
//!
//! The kernel sends that signal when the *thread* that forked the child exits, not the
//! process. Tokio's threads come and go (the blocking pool retires idle threads after
//! seconds), which would kill healthy children; so children are forked by one thread
//! of their own that lives as long as the process.

use std::io;
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;

use tokio::process::{Child, Command};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

struct Request {
    cmd: Command,
    runtime: Handle,
    reply: oneshot::Sender<io::Result<Child>>,
}

/// Starts `cmd` so that it is killed when this process dies (or when the returned
/// [`Child`] is dropped). Must be called from within a Tokio runtime.
pub async fn spawn(mut cmd: Command) -> io::Result<Child> {
    let parent = std::process::id();
    cmd.kill_on_drop(true);
    // SAFETY: the closure runs between fork and exec; prctl(2) and getppid(2) are plain
    // system calls, async-signal-safe, and it touches no locks or allocations.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // The parent may have died between fork and prctl: then no signal comes.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(io::Error::other("the parent process has exited"));
            }
            Ok(())
        });
    }
    let (reply, answer) = oneshot::channel();
    let request = Request {
        cmd,
        runtime: Handle::current(),
        reply,
    };
    spawner()?
        .send(request)
        .map_err(|_| io::Error::other("the process spawner thread has stopped"))?;
    answer
        .await
        .map_err(|_| io::Error::other("the process spawner thread has stopped"))?
}

/// Runs `cmd` to completion (stdin empty, stdout and stderr captured), like
/// [`Command::output`], as a child that dies with this process.
pub async fn output(mut cmd: Command) -> io::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    spawn(cmd).await?.wait_with_output().await
}

/// The one long-lived thread that forks children.
fn spawner() -> io::Result<&'static mpsc::Sender<Request>> {
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    if let Some(s) = SPAWNER.get() {
        return Ok(s);
    }
    let (tx, rx) = mpsc::channel::<Request>();
    std::thread::Builder::new()
        .name("corral-spawner".into())
        .spawn(move || {
            for mut req in rx {
                // Tokio's child handles register with the runtime that awaits them.
                let _runtime = req.runtime.enter();
                let _ = req.reply.send(req.cmd.spawn());
            }
        })?;
    // Two first callers may race: the loser's thread ends when its sender is dropped.
    Ok(SPAWNER.get_or_init(|| tx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn children_run_and_report() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let out = output(cmd).await.unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    fn one_spawner_serves_one_runtime_after_another() {
        // Two runtimes one after the other (as tests do): the spawner thread serves both.
        for _ in 0..2 {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let code = rt.block_on(async {
                let mut cmd = Command::new("true");
                cmd.stdin(Stdio::null());
                spawn(cmd).await.unwrap().wait().await.unwrap().code()
            });
            assert_eq!(code, Some(0));
        }
    }

    /// Run by [`children_die_with_their_parent`] in a process of its own: starts a
    /// long child, says its pid, and dies by SIGKILL as a crashed daemon would.
    #[tokio::test]
    async fn helper_spawn_and_die() {
        if std::env::var_os("CORRAL_CHILD_HELPER").is_none() {
            return;
        }
        let mut cmd = Command::new("sleep");
        cmd.arg("60")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn(cmd).await.unwrap();
        println!("CHILD-PID {}", child.id().unwrap());
        // Spawned from a worker thread that lives on: only the process's death kills it.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(std::path::Path::new(&format!("/proc/{}", child.id().unwrap())).exists());
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }

    #[test]
    fn children_die_with_their_parent() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child::tests::helper_spawn_and_die",
                "--nocapture",
            ])
            .env("CORRAL_CHILD_HELPER", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let pid: u32 = text
            .lines()
            .find_map(|l| l.strip_prefix("CHILD-PID "))
            .unwrap_or_else(|| panic!("no child pid in {text}"))
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let alive = stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| !r.trim_start().starts_with(['Z', 'X']));
            if !alive {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "child {pid} outlived its killed parent"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
