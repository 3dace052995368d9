//! Keeping observed state true: one monitor task per running QEMU turns QMP events and
//! the monitor socket closing into state changes; at daemon start, VMs that were running
//! are found again (re-attached) or marked stopped with the reason.

use std::sync::Arc;

use corral_api::{VmState, VmStatus};
use corral_qemu::agent;
use corral_qemu::cgroup::VmCgroup;
use corral_qemu::launch;
use corral_qemu::qmp::{Event, Qmp, QmpOptions};
use tokio::sync::{broadcast, watch};

use super::{Manager, Running};
use crate::error::ApiResult;

/// How long a QEMU may take to exit once its monitor has closed before it is killed: a
/// QEMU without its monitor can no longer be driven.
const EXIT_AFTER_MONITOR_CLOSED: std::time::Duration = std::time::Duration::from_secs(30);

impl Manager {
    pub(crate) fn spawn_monitor(
        &self,
        name: &str,
        running: Arc<Running>,
        exited: watch::Sender<bool>,
    ) {
        let mut events = running.qmp.events();
        self.spawn_agent_watch(name, running.clone());
        let name = name.to_string();
        // The monitor needs the manager after this call returns; the manager lives for
        // the whole daemon, behind the Arc every handler holds.
        let Some(mgr) = self.self_arc() else { return };
        tokio::spawn(async move {
            let mut shutdown_reason: Option<String> = None;
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Ok(ev) => mgr.on_event(&name, &running, &ev, &mut shutdown_reason).await,
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!("{name}: missed {n} QMP events; re-reading status");
                            mgr.refresh_state(&name, &running).await;
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    _ = running.qmp.closed() => break,
                }
            }
            mgr.on_exit(&name, &running, shutdown_reason).await;
            let _ = exited.send(true);
        });
    }

    async fn on_event(
        &self,
        name: &str,
        running: &Running,
        ev: &Event,
        shutdown: &mut Option<String>,
    ) {
        match ev.name.as_str() {
            "STOP" | "RESUME" => self.refresh_state(name, running).await,
            "SHUTDOWN" => {
                let guest = ev
                    .data
                    .get("guest")
                    .and_then(|g| g.as_bool())
                    .unwrap_or(false);
                let reason = ev
                    .data
                    .get("reason")
                    .and_then(|r| r.as_str())
                    .unwrap_or("unknown");
                *shutdown = Some(if guest {
                    format!("guest powered off ({reason})")
                } else {
                    format!("QEMU shut down ({reason})")
                });
            }
            "GUEST_PANICKED" => {
                let _lock = self.lock(name).await;
                if let Ok(record) = self.record(name) {
                    let reason = Some(format!("guest panicked: {}", ev.data));
                    let _ = self.set_status(
                        name,
                        VmStatus {
                            state: VmState::Crashed,
                            reason,
                            ..record.status
                        },
                    );
                }
            }
            "RESET" => self.events.emit(Some(name), "qmp", "guest reset"),
            "VSERPORT_CHANGE" => {
                let port = ev.data.get("id").and_then(|i| i.as_str());
                let open = ev.data.get("open").and_then(|o| o.as_bool());
                if let (Some(agent::AGENT_PORT), Some(open)) = (port, open) {
                    self.agent_port_changed(name, running, open);
                }
            }
            other => tracing::debug!("{name}: QMP event {other}"),
        }
    }

    /// Re-reads run state from QEMU under the VM's lock, so that events processed late
    /// never overwrite a newer truth.
    async fn refresh_state(&self, name: &str, running: &Running) {
        let _lock = self.lock(name).await;
        let Ok(record) = self.record(name) else {
            return;
        };
        if !matches!(record.status.state, VmState::Running | VmState::Paused) {
            return;
        }
        let Ok(status) = running.qmp.query_status().await else {
            return;
        };
        let state = match status.status.as_str() {
            "running" => VmState::Running,
            "guest-panicked" => VmState::Crashed,
            "shutdown" => return,
            _ => VmState::Paused,
        };
        let _ = self.set_status(
            name,
            VmStatus {
                state,
                ..record.status
            },
        );
    }

    async fn on_exit(&self, name: &str, running: &Running, shutdown: Option<String>) {
        let _lock = self.lock(name).await;
        // The process is really gone before anyone hears it stopped: a start right
        // after must not meet the image locks of a QEMU still on its way out (it closes
        // its monitor before it exits, and a loaded host stretches the gap to seconds).
        if !launch::wait_exit(running.pid, EXIT_AFTER_MONITOR_CLOSED).await {
            tracing::warn!(
                vm = name,
                pid = running.pid,
                "QEMU still runs {} s after its monitor closed; killing it",
                EXIT_AFTER_MONITOR_CLOSED.as_secs()
            );
            let _ = launch::kill(running.pid);
            launch::wait_exit(running.pid, EXIT_AFTER_MONITOR_CLOSED).await;
        }
        let reason = running.take_stop_reason().or(shutdown).unwrap_or_else(|| {
            let log = launch::read_log_since(&running.paths.qemu_log(), 0);
            format!("QEMU exited unexpectedly: {}", last_line(&log))
        });
        if let Some(c) = running.cgroup.clone() {
            // Removal may wait for the kernel to let go of the exited process.
            let _ = tokio::task::spawn_blocking(move || c.remove()).await;
        }
        for f in [
            "qmp.sock",
            "console.sock",
            "vnc.sock",
            "qga.sock",
            "qemu.pid",
        ] {
            let _ = std::fs::remove_file(running.paths.dir.join(f));
        }
        self.set_running(name, None);
        let record = self.store.get_vm(name).ok().flatten();
        if record.is_some() {
            let _ = self.set_status(name, VmStatus::stopped(Some(reason)));
        }
        // An arrival whose QEMU died is given up (after this lock is released).
        if record.is_some_and(|r| r.status.state == VmState::Incoming) {
            if let Some(mgr) = self.self_arc() {
                let name = name.to_string();
                tokio::spawn(async move { mgr.arrival_died(&name).await });
            }
        }
    }

    /// At start-up: re-attach to every VM whose QEMU survived, mark the rest stopped.
    pub async fn reattach_all(&self) -> ApiResult<()> {
        for record in self.store.list_vms()? {
            if !record.status.state.has_process() {
                continue;
            }
            let name = record.spec.name.clone();
            let paths = self.vm_paths(&record.spec);
            let uuid = record.spec.uuid.to_string();
            let found = launch::find_running(&paths, &uuid);
            let outcome = match found {
                Some(pid) => {
                    self.reattach(&name, pid, paths, &record.spec.uuid.to_string())
                        .await
                }
                None => Err("QEMU exited while corrald was not running".to_string()),
            };
            if let Err(reason) = outcome {
                if let Some(pid) = found {
                    let _ = launch::kill(pid);
                }
                if let Some(c) = VmCgroup::create(&self.cfg.cgroup_root, &format!("vm-{uuid}")) {
                    let _ = c.remove();
                }
                self.set_status(&name, VmStatus::stopped(Some(reason)))?;
            }
        }
        Ok(())
    }

    async fn reattach(
        &self,
        name: &str,
        pid: u32,
        paths: corral_qemu::argv::VmPaths,
        uuid: &str,
    ) -> Result<(), String> {
        let opts = QmpOptions {
            log_path: Some(paths.qmp_log()),
            ..QmpOptions::default()
        };
        let qmp = Qmp::connect(&paths.qmp_socket(), opts).await.map_err(|e| {
            format!("QEMU (pid {pid}) was alive but its monitor did not answer: {e}")
        })?;
        let status = qmp.query_status().await.map_err(|e| e.to_string())?;
        match corral_qemu::backup::clear_leftovers(&qmp).await {
            Ok(0) => {}
            Ok(n) => self.events.emit(
                Some(name),
                "clone",
                format!("cancelled {n} copy job(s) of a clone cut short by a daemon restart"),
            ),
            Err(e) => tracing::warn!(
                vm = name,
                "cannot clear an interrupted clone's copy jobs: {}",
                crate::error::chain(&e)
            ),
        }
        let record = self.record(name).map_err(|e| e.to_string())?;
        let state = match (record.status.state, status.status.as_str()) {
            // A start cut short by the restart: its set-up never finished.
            (VmState::Starting, _) => {
                return Err("start was interrupted by a daemon restart".into())
            }
            // A migration's phase, not QEMU's run state, says what these are; the
            // migration's recovery decides.
            (s @ (VmState::Migrating | VmState::Incoming), _) => s,
            (_, "running") => VmState::Running,
            (_, "guest-panicked") => VmState::Crashed,
            _ => VmState::Paused,
        };
        let cgroup = VmCgroup::create(&self.cfg.cgroup_root, &format!("vm-{uuid}"));
        let (running, exited_tx) = Running::new(pid, qmp, paths, cgroup);
        let running = Arc::new(running);
        self.spawn_monitor(name, running.clone(), exited_tx);
        self.set_running(name, Some(running.clone()));
        // The port's opening was reported to the daemon that died; ask QEMU.
        match agent::channel_open(&running.qmp).await {
            Ok(open) => self.agent_port_changed(name, &running, open),
            Err(e) => tracing::warn!(vm = name, "cannot read the guest agent's channel: {e}"),
        }
        self.thaw_leftover_freeze(name, running.clone());
        self.finish_interrupted_switch(name, &running).await;
        let _ = self.set_status(
            name,
            VmStatus {
                state,
                pid: Some(pid),
                reason: None,
                ..record.status
            },
        );
        self.events.emit(
            Some(name),
            "reattached",
            format!("re-attached to QEMU pid {pid}"),
        );
        Ok(())
    }
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
}
