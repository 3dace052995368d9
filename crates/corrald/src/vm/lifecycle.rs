//! Starting and stopping: QEMU is launched paused, set up over QMP, then continued
//! (DESIGN.md §6); a failed step kills it again. Stops wait for the monitor to record the
//! exit, so a finished stop means the process is gone.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use corral_api::{
    Operation, StopMethod, StopRequest, StopResult, Vm, VmAction, VmSpec, VmState, VmStatus,
};
use corral_qemu::argv::{build_argv, DiskFds, LaunchConfig};
use corral_qemu::cgroup::VmCgroup;
use corral_qemu::launch;
use corral_qemu::qmp::QmpOptions;

use super::{check_allowed, Manager, Running};
use crate::clock::now_secs;
use crate::error::{ApiError, ApiResult};

/// Default wait for a guest to shut down on the ACPI power button.
pub const DEFAULT_STOP_TIMEOUT: u64 = 60;
/// How long QEMU gets to exit after `quit` or SIGKILL.
const POWER_OFF_WAIT: Duration = Duration::from_secs(10);

impl Manager {
    pub async fn start(&self, name: &str, paused: bool) -> ApiResult<Vm> {
        let lock = self.lock(name).await;
        self.start_locked(name, paused, None).await?;
        drop(lock);
        self.get(name)
    }

    /// Starts a stopped VM; the caller holds its lock. With `memory`, QEMU waits for a
    /// saved state (`-incoming defer`) and gets it from that file before it runs, so the
    /// guest resumes where the state was saved (a memory snapshot's revert).
    pub(crate) async fn start_locked(
        &self,
        name: &str,
        paused: bool,
        memory: Option<&std::path::Path>,
    ) -> ApiResult<()> {
        let record = self.record(name)?;
        check_allowed(&record, VmAction::Start)?;
        // Opened before anything starts, so a missing state file changes nothing.
        let memory = memory
            .map(|m| {
                std::fs::File::open(m)
                    .map_err(|e| ApiError::Internal(format!("memory state {}: {e}", m.display())))
            })
            .transpose()?;
        let running = self
            .launch_qemu(&record.spec, memory.is_some(), (None, None))
            .await?;
        let started_at = now_secs();
        let status = |state| VmStatus {
            state,
            pid: Some(running.pid),
            started_at: Some(started_at),
            reason: None,
            accel: Some(self.host.accel.accel.as_str().to_string()),
        };
        self.set_status(name, status(VmState::Starting))?;
        // Set-up that needs a paused, fully built machine goes here.
        let result = async {
            if let Some(state) = &memory {
                corral_qemu::live::load_memory(&running.qmp, state)
                    .await
                    .map_err(|e| ApiError::Internal(crate::error::chain(&e)))?;
            }
            if !paused {
                running.qmp.cont().await?;
            }
            Ok::<(), ApiError>(())
        }
        .await;
        if let Err(e) = result {
            running.set_stop_reason("start failed");
            let _ = running.qmp.quit().await;
            let _ = launch::kill(running.pid);
            return Err(e);
        }
        let state = if paused {
            VmState::Paused
        } else {
            VmState::Running
        };
        self.set_status(name, status(state))?;
        Ok(())
    }

    /// Spawns QEMU for `spec`, paused (`-S`), with its monitor task watching from the
    /// first event on, and records it as the VM's running process. With `incoming`,
    /// QEMU waits for a state to load (`-incoming defer`): a memory snapshot's file or
    /// a live migration's stream, the latter on the source's exact `machine_type`.
    pub(crate) async fn launch_qemu(
        &self,
        spec: &VmSpec,
        incoming: bool,
        (machine_type, placements): (Option<&str>, Option<&corral_qemu::placement::Placements>),
    ) -> ApiResult<Arc<Running>> {
        let paths = self.vm_paths(spec);
        prepare_runtime_dir(&paths.dir)?;
        let cgroup = VmCgroup::create(&self.cfg.cgroup_root, &format!("vm-{}", spec.uuid));
        let ovmf = corral_qemu::argv::ovmf_files();
        if spec.firmware == corral_api::Firmware::Uefi && ovmf.is_none() {
            return Err(ApiError::conflict(
                "UEFI firmware (Debian's ovmf package) is not installed",
            ));
        }
        let ovmf_code = ovmf.map(|(code, _)| code).unwrap_or_default();
        // Rebuilt only if the config changed; renamed into place, so never half-written.
        let seed = self.sync_seed(spec).await?;
        let (opened, disk_fds, block_devices) = open_disks(spec)?;
        let nics = self.plug_nics(spec, &paths).await?;
        let argv = build_argv(&LaunchConfig {
            spec,
            ovmf_code: &ovmf_code,
            accel: self.host.accel.accel,
            paths: &paths,
            confinement: self.host.confinement,
            incoming,
            machine_type,
            placements,
            disk_fds: &disk_fds,
            block_devices: &block_devices,
            nics: &nics.backends,
            cloud_init_seed: seed.as_deref(),
        });
        let opts = QmpOptions {
            log_path: Some(paths.qmp_log()),
            ..QmpOptions::default()
        };
        let inherit: Vec<_> = opened
            .iter()
            .map(|f| f.as_fd())
            .chain(nics.taps.iter().map(|t| t.as_fd()))
            .collect();
        let launched = launch::launch(
            &self.cfg.qemu_binary,
            &argv,
            &paths,
            cgroup.as_ref(),
            opts,
            &inherit,
        )
        .await;
        // QEMU has its own copies now.
        drop(opened);
        let launched = match launched {
            Ok(l) => {
                drop(nics);
                l
            }
            Err(e) => {
                nics.abandon();
                if let Some(c) = &cgroup {
                    let _ = c.remove();
                }
                self.events.emit(
                    Some(&spec.name),
                    "error",
                    format!("start failed: {}", crate::error::chain(&e)),
                );
                return Err(e.into());
            }
        };
        let (running, exited_tx) = Running::new(launched.pid, launched.qmp, paths, cgroup);
        let running = Arc::new(running);
        // Watch events from before `cont`, so no transition is missed.
        self.spawn_monitor(&spec.name, running.clone(), exited_tx);
        self.set_running(&spec.name, Some(running.clone()));
        Ok(running)
    }

    pub async fn pause(&self, name: &str) -> ApiResult<Vm> {
        self.pause_resume(name, VmAction::Pause).await
    }

    pub async fn resume(&self, name: &str) -> ApiResult<Vm> {
        self.pause_resume(name, VmAction::Resume).await
    }

    async fn pause_resume(&self, name: &str, action: VmAction) -> ApiResult<Vm> {
        let lock = self.lock(name).await;
        let record = self.record(name)?;
        check_allowed(&record, action)?;
        let running = self.running(name).ok_or_else(|| not_attached(name))?;
        let state = if action == VmAction::Pause {
            running.qmp.stop().await?;
            VmState::Paused
        } else {
            running.qmp.cont().await?;
            VmState::Running
        };
        self.set_status(
            name,
            VmStatus {
                state,
                ..record.status
            },
        )?;
        if action == VmAction::Resume {
            // The guest's clock stood still while it was paused.
            self.sync_guest_clock(name, running, "resume");
        }
        drop(lock);
        self.get(name)
    }

    /// `POST /vms/{name}/stop`: checks now, then returns an operation that ends when
    /// QEMU is gone (or the graceful timeout passes).
    pub async fn stop(self: &Arc<Self>, name: &str, req: StopRequest) -> ApiResult<Operation> {
        let timeout = Duration::from_secs(req.timeout_secs.unwrap_or(DEFAULT_STOP_TIMEOUT));
        let (running, method) = self.begin_stop(name, req.force).await?;
        let (op, mut handle) = self.ops.begin("vm.stop", name, !req.force)?;
        let mgr = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            tokio::select! {
                r = mgr.finish_stop(&name, running, method, timeout) => {
                    handle.finish_with(r.map(stop_result_json))
                }
                _ = handle.cancelled() => {
                    mgr.abandon_stop(&name).await;
                    handle.cancelled_done();
                }
            }
        });
        Ok(op)
    }

    /// `POST /vms/{name}/restart`: a stop (graceful unless forced), then a start.
    pub async fn restart(self: &Arc<Self>, name: &str, req: StopRequest) -> ApiResult<Operation> {
        let record = self.record(name)?;
        check_allowed(&record, VmAction::Restart)?;
        let timeout = Duration::from_secs(req.timeout_secs.unwrap_or(DEFAULT_STOP_TIMEOUT));
        // A paused or crashed guest cannot answer the power button.
        let force = req.force || record.status.state != VmState::Running;
        let (running, method) = self.begin_stop(name, force).await?;
        let (op, handle) = self.ops.begin("vm.restart", name, false)?;
        let mgr = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let result = async {
                let stopped = mgr.finish_stop(&name, running, method, timeout).await?;
                handle.progress(50.0);
                mgr.start(&name, false).await?;
                Ok(stopped)
            }
            .await;
            handle.finish_with(result.map(stop_result_json));
        });
        Ok(op)
    }

    /// Powers a VM off at once and waits until the monitor has recorded it.
    pub(crate) async fn power_off(&self, name: &str, reason: &str) -> ApiResult<()> {
        let running = {
            let _lock = self.lock(name).await;
            let record = self.record(name)?;
            check_allowed(&record, VmAction::ForceStop)?;
            self.running(name).ok_or_else(|| not_attached(name))?
        };
        running.set_stop_reason(reason);
        kill_qemu(&running).await;
        self.wait_gone(name, &running, POWER_OFF_WAIT).await
    }

    /// Checks the state and starts the stop: a forced one kills QEMU now; a graceful one
    /// presses the ACPI power button now, or, when the guest agent is connected, leaves
    /// the agent's shutdown to [`Self::finish_stop`] (an agent may take seconds to answer
    /// and the request should not wait for it).
    async fn begin_stop(&self, name: &str, force: bool) -> ApiResult<(Arc<Running>, StopMethod)> {
        let _lock = self.lock(name).await;
        let record = self.record(name)?;
        let action = if force {
            VmAction::ForceStop
        } else {
            VmAction::Stop
        };
        check_allowed(&record, action)?;
        let running = self.running(name).ok_or_else(|| not_attached(name))?;
        if force {
            running.set_stop_reason("powered off (forced stop)");
            kill_qemu(&running).await;
            return Ok((running, StopMethod::Force));
        }
        self.set_status(
            name,
            VmStatus {
                state: VmState::Stopping,
                ..record.status
            },
        )?;
        if running.agent.is_connected() {
            return Ok((running, StopMethod::Agent));
        }
        press_power_button(&running).await?;
        Ok((running, StopMethod::Acpi))
    }

    /// Asks the guest agent to shut down when that is the way (falling back to the ACPI
    /// power button if the agent fails), then waits for QEMU to exit: the whole graceful
    /// stop, agent included, within `timeout`.
    async fn finish_stop(
        &self,
        name: &str,
        running: Arc<Running>,
        method: StopMethod,
        timeout: Duration,
    ) -> ApiResult<StopResult> {
        let started = std::time::Instant::now();
        let mut result = StopResult {
            method,
            agent_error: None,
        };
        if method == StopMethod::Agent {
            running.set_stop_reason("guest shut down (guest agent)");
            match running.agent.shutdown().await {
                Ok(()) => self.events.emit(
                    Some(name),
                    "stop",
                    "asked the guest to shut down through its guest agent",
                ),
                Err(e) => {
                    self.events.emit(
                        Some(name),
                        "stop",
                        format!("the guest agent's shutdown failed ({e}); pressing the ACPI power button"),
                    );
                    result = StopResult {
                        method: StopMethod::Acpi,
                        agent_error: Some(e.to_string()),
                    };
                    if let Err(e) = press_power_button(&running).await {
                        self.abandon_stop(name).await;
                        return Err(e);
                    }
                }
            }
        }
        let wait = match method {
            StopMethod::Force => POWER_OFF_WAIT,
            _ => timeout.saturating_sub(started.elapsed()),
        };
        match self.wait_gone(name, &running, wait).await {
            Ok(()) => Ok(result),
            Err(e) if method == StopMethod::Force => Err(e),
            Err(_) => {
                self.abandon_stop(name).await;
                let ignored = match result.method {
                    StopMethod::Agent => "the guest agent accepted the shutdown, but the guest",
                    _ => "the guest may ignore the power button; it",
                };
                Err(ApiError::Conflict {
                    message: format!(
                        "VM '{name}' did not shut down within {} s",
                        timeout.as_secs()
                    ),
                    hint: Some(format!(
                        "{ignored} did not power off; use `corral stop --force`"
                    )),
                })
            }
        }
    }

    /// A graceful stop that will not finish: the VM is running again as far as we know.
    async fn abandon_stop(&self, name: &str) {
        let _lock = self.lock(name).await;
        if let (Ok(record), Some(running)) = (self.record(name), self.running(name)) {
            running.take_stop_reason();
            if record.status.state == VmState::Stopping {
                let _ = self.set_status(
                    name,
                    VmStatus {
                        state: VmState::Running,
                        ..record.status
                    },
                );
            }
        }
    }

    async fn wait_gone(&self, name: &str, running: &Running, wait: Duration) -> ApiResult<()> {
        tokio::time::timeout(wait, running.wait_exited())
            .await
            .map_err(|_| {
                ApiError::Internal(format!(
                    "QEMU of VM '{name}' (pid {}) did not exit",
                    running.pid
                ))
            })
    }
}

/// Opens each disk's top image for QEMU to inherit: read-write and read-only (see
/// [`DiskFds`]); fd set `i + 1` for disk `i`. Also tells which of them are block devices
/// (from the opened descriptors, so nothing is looked up twice).
fn open_disks(spec: &VmSpec) -> ApiResult<OpenedDisks> {
    use std::os::unix::fs::FileTypeExt;
    let mut files = Vec::new();
    let mut fds = Vec::new();
    let mut block_devices = BTreeSet::new();
    for (i, disk) in spec.disks.iter().enumerate() {
        let open = |write: bool| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(write)
                .open(&disk.path)
                .map_err(|e| ApiError::Conflict {
                    message: format!("cannot open disk {} ({}): {e}", disk.id, disk.path),
                    hint: Some("check that the image exists and is readable".into()),
                })
        };
        let rw = if disk.read_only {
            None
        } else {
            Some(open(true)?)
        };
        let ro = open(false)?;
        if ro.metadata().is_ok_and(|m| m.file_type().is_block_device()) {
            block_devices.insert(disk.id.clone());
        }
        fds.push(DiskFds {
            disk: disk.id.clone(),
            set: i as u32 + 1,
            rw: rw.as_ref().map(|f| f.as_raw_fd()),
            ro: ro.as_raw_fd(),
        });
        files.extend(rw);
        files.push(ro);
    }
    Ok((files, fds, block_devices))
}

/// The open images (kept until QEMU has inherited them), their fd sets, and the ids of
/// the disks that are block devices.
type OpenedDisks = (Vec<std::fs::File>, Vec<DiskFds>, BTreeSet<String>);

/// The graceful stop without an agent: the ACPI power button, and the stopped reason that
/// goes with it.
async fn press_power_button(running: &Running) -> ApiResult<()> {
    running.set_stop_reason("guest shut down (ACPI power button)");
    running.qmp.system_powerdown().await?;
    Ok(())
}

fn stop_result_json(result: StopResult) -> serde_json::Value {
    serde_json::to_value(result).unwrap_or_default()
}

/// `quit` over QMP, and SIGKILL if the monitor cannot deliver it.
async fn kill_qemu(running: &Running) {
    if running.qmp.quit().await.is_err() {
        let _ = launch::kill(running.pid);
    }
}

fn not_attached(name: &str) -> ApiError {
    ApiError::Internal(format!("VM '{name}' has no QEMU attached"))
}

/// The VM's runtime dir: root-only, since QEMU opens what it needs before it drops to its
/// own user and chroots here, and nothing else should reach its sockets.
fn prepare_runtime_dir(dir: &std::path::Path) -> ApiResult<()> {
    let io = |e: std::io::Error| ApiError::Internal(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    for stale in [
        "qmp.sock",
        "console.sock",
        "vnc.sock",
        "qga.sock",
        "qemu.pid",
    ] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    Ok(())
}
