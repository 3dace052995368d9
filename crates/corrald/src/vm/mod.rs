//! The VM manager: the core every request goes through after the HTTP layer has parsed
//! it. It owns the per-VM locks, the table of running QEMUs, and every state change.

pub(crate) mod agent;
mod clone;
mod cloud_init;
mod create;
mod lifecycle;
mod linked_clone;
mod monitor;
mod seed;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};

use corral_api::{UpdateVmRequest, Vm, VmAction, VmSpec, VmState, VmStatus};
use corral_qemu::argv::VmPaths;
use corral_qemu::cgroup::VmCgroup;
use corral_qemu::qmp::Qmp;
use corral_store::{Store, VmRecord};
use tokio::sync::{watch, OwnedMutexGuard};

use crate::clock::now_secs;
use crate::config::Config;
use crate::error::{ApiError, ApiResult};
use crate::events::EventLog;
use crate::host::HostFacts;
use crate::operations::Operations;

/// How many recent events `GET /vms/{name}` carries.
const RECENT_EVENTS: u32 = 20;

/// A QEMU process the daemon is attached to.
pub struct Running {
    pub pid: u32,
    pub qmp: Qmp,
    pub paths: VmPaths,
    cgroup: Option<VmCgroup>,
    /// Set once the monitor has recorded the exit.
    exited: watch::Receiver<bool>,
    /// Why QEMU is going away, when we asked it to (shown as the stopped reason).
    stop_reason: Mutex<Option<String>>,
    /// A console client is attached (QEMU's socket takes one client at a time).
    pub console_busy: AtomicBool,
    /// The guest agent's channel and what it last reported.
    pub agent: Arc<agent::GuestAgent>,
}

impl Running {
    /// A freshly attached QEMU, and the sender its monitor sets once QEMU has exited.
    pub(crate) fn new(
        pid: u32,
        qmp: Qmp,
        paths: VmPaths,
        cgroup: Option<VmCgroup>,
    ) -> (Running, watch::Sender<bool>) {
        let (exited_tx, exited) = watch::channel(false);
        let agent = Arc::new(agent::GuestAgent::new(paths.agent_socket()));
        let running = Running {
            pid,
            qmp,
            paths,
            cgroup,
            exited,
            stop_reason: Mutex::new(None),
            console_busy: AtomicBool::new(false),
            agent,
        };
        (running, exited_tx)
    }

    pub(crate) fn set_stop_reason(&self, reason: &str) {
        *self.stop_reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
    }

    fn take_stop_reason(&self) -> Option<String> {
        self.stop_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Resolves once the monitor has marked the VM stopped.
    pub async fn wait_exited(&self) {
        let mut rx = self.exited.clone();
        let _ = rx.wait_for(|e| *e).await;
    }
}

pub struct Manager {
    pub cfg: Arc<Config>,
    pub host: Arc<HostFacts>,
    pub store: Arc<dyn Store>,
    pub events: EventLog,
    pub ops: Operations,
    pub auth: crate::auth::Auth,
    pub metrics: crate::metrics::Metrics,
    running: Mutex<HashMap<String, Arc<Running>>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Names whose create is in flight (so concurrent creates of one name: one wins).
    creating: Mutex<HashSet<String>>,
    /// Background tasks (monitors, operations) hold the manager through this.
    me: Weak<Manager>,
}

impl Manager {
    pub fn new(cfg: Arc<Config>, host: Arc<HostFacts>, store: Arc<dyn Store>) -> Arc<Self> {
        let events = EventLog::new(store.clone());
        let ops = Operations::new(store.clone(), events.clone());
        let auth = crate::auth::Auth::new(store.clone(), cfg.session_ttl);
        Arc::new_cyclic(|me| Manager {
            me: me.clone(),
            auth,
            metrics: crate::metrics::Metrics::default(),
            cfg,
            host,
            store,
            events,
            ops,
            running: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
        })
    }

    pub fn list(&self) -> ApiResult<Vec<Vm>> {
        let leases = self.leases_by_mac();
        Ok(self
            .store
            .list_vms()?
            .into_iter()
            .map(|r| self.to_wire(r, Vec::new(), &leases))
            .collect())
    }

    pub fn get(&self, name: &str) -> ApiResult<Vm> {
        let record = self.record(name)?;
        let events = self.store.recent_events(name, RECENT_EVENTS)?;
        Ok(self.to_wire(record, events, &self.leases_by_mac()))
    }

    /// The wire form of a VM, with what its running QEMU, the networks' DHCP servers
    /// and its guest agent know now (read from memory and lease files: never waits on
    /// the guest).
    fn to_wire(
        &self,
        record: VmRecord,
        events: Vec<corral_api::Event>,
        leases: &crate::network::LeasesByMac,
    ) -> Vm {
        let running = self.running(&record.spec.name);
        let agent = running.as_ref().map(|r| &r.agent);
        let dhcp = match running {
            Some(_) => crate::network::lease_addresses(&record.spec, leases),
            None => Vec::new(),
        };
        let mut vm = to_wire(record, events);
        vm.guest_agent = agent.is_some_and(|a| a.is_connected());
        vm.addresses = dhcp;
        vm.addresses
            .extend(agent.map(|a| a.addresses()).unwrap_or_default());
        vm
    }

    /// Changes a stopped VM: the change is applied to a copy, checked whole, then stored.
    pub async fn update(&self, name: &str, req: UpdateVmRequest) -> ApiResult<Vm> {
        let _lock = self.lock(name).await;
        let record = self.record(name)?;
        check_allowed(&record, VmAction::Update)?;
        let mut spec = record.spec.clone();
        if let Some(m) = req.memory_mib {
            spec.memory_mib = m;
        }
        if let Some(v) = req.vcpus {
            spec.vcpus = v;
        }
        if let Some(cmdline) = req.cmdline {
            let Some(kernel) = spec.kernel.as_mut() else {
                return Err(corral_api::ValidationError::new(
                    "cmdline",
                    "the VM does not boot a kernel directly",
                )
                .hint("--cmdline applies only to VMs created with --kernel")
                .into());
            };
            kernel.cmdline = Some(cmdline);
        }
        if let Some(ci) = req.cloud_init {
            spec.cloud_init = Some(ci);
        }
        if req.remove_cloud_init {
            spec.cloud_init = None;
        }
        self.check_host_limits(spec.memory_mib, spec.vcpus)?;
        self.store.update_vm_spec(&spec)?;
        if spec.cloud_init.is_none() {
            self.remove_seed(spec.uuid);
        }
        self.events.emit(Some(name), "updated", "spec updated");
        self.get(name)
    }

    /// The manager lives as long as the daemon; the Arc is only missing while the
    /// daemon is being torn down, when background work may as well stop.
    pub(crate) fn self_arc(&self) -> Option<Arc<Manager>> {
        self.me.upgrade()
    }

    pub(crate) fn record(&self, name: &str) -> ApiResult<VmRecord> {
        self.store
            .get_vm(name)?
            .ok_or_else(|| ApiError::vm_not_found(name))
    }

    /// Serialises state-changing work on one VM.
    pub(crate) async fn lock(&self, name: &str) -> OwnedMutexGuard<()> {
        let m = self
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone();
        m.lock_owned().await
    }

    pub fn running(&self, name: &str) -> Option<Arc<Running>> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn set_running(&self, name: &str, r: Option<Arc<Running>>) {
        let mut map = self.running.lock().unwrap_or_else(|p| p.into_inner());
        match r {
            Some(r) => map.insert(name.to_string(), r),
            None => map.remove(name),
        };
    }

    /// Stores a new status and reports the transition as an event.
    pub(crate) fn set_status(&self, name: &str, status: VmStatus) -> ApiResult<()> {
        let previous = self.store.get_vm(name)?.map(|r| r.status.state);
        self.store.update_vm_status(name, &status)?;
        if previous != Some(status.state) {
            let mut msg = format!("state {}", status.state.as_str());
            if let Some(reason) = &status.reason {
                msg.push_str(&format!(": {reason}"));
            }
            self.events.emit(Some(name), "state", msg);
        }
        Ok(())
    }

    pub fn vm_paths(&self, spec: &VmSpec) -> VmPaths {
        VmPaths::new(self.cfg.runtime_dir().join(spec.uuid.to_string()))
    }

    pub fn console_log_files(&self, name: &str) -> ApiResult<(PathBuf, PathBuf)> {
        let record = self.record(name)?;
        let log = self.vm_paths(&record.spec).console_log();
        let rotated = log.with_extension("log.1");
        Ok((rotated, log))
    }
}

pub(crate) fn check_allowed(record: &VmRecord, action: VmAction) -> ApiResult<()> {
    record
        .status
        .state
        .allows(action)
        .map_err(|message| ApiError::Conflict {
            message: format!("VM '{}': {message}", record.spec.name),
            hint: None,
        })
}

fn to_wire(record: VmRecord, events: Vec<corral_api::Event>) -> Vm {
    let uptime_secs = match record.status.state {
        VmState::Running | VmState::Paused | VmState::Stopping | VmState::Crashed => record
            .status
            .started_at
            .map(|t| now_secs().saturating_sub(t)),
        _ => None,
    };
    Vm {
        spec: record.spec,
        status: record.status,
        uptime_secs,
        created_at: record.created_at,
        events,
        guest_agent: false,
        addresses: Vec::new(),
    }
}
