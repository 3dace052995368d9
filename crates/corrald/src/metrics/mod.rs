//! Live metrics: a collector task sampling the host and every running VM each interval,
//! a bounded history per VM and for the host, and the Prometheus rendering of it.
//!
//! The collector reads /proc and /sys directly and asks QEMU for block statistics over
//! QMP, all VMs at once with a short timeout each, so one stuck monitor delays nothing
//! and the API never waits on the collector (readers take a snapshot under a mutex).

mod balloon;
mod probe;
pub mod prometheus;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_api::{
    HostMetrics, HostSample, MemorySource, NetworkKind, Nic, PoolUsage, VmLatest, VmMetrics,
    VmSample, VmsMetrics,
};
use corral_qemu::agent::Traffic;
use serde_json::Value;

use crate::clock::now_ms;
use crate::vm::Manager;

/// Samples kept per VM and for the host: one hour at the default 2 s interval.
pub const HISTORY: usize = 1800;
/// How long one VM's QMP query may take before the sample goes without it.
const QMP_TIMEOUT: Duration = Duration::from_millis(1500);

/// Monotonic counters of one VM at one instant; samples are their deltas.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    pub cpu_ticks: u64,
    pub rd_bytes: u64,
    pub wr_bytes: u64,
    pub rd_ops: u64,
    pub wr_ops: u64,
    /// Tap NICs, from the host's side (turned around: the tap's rx is the guest's tx).
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// User-mode (passt) NICs have no host device to count on: the guest agent's
    /// counters for their MACs, when it answers. Reset by a guest reboot.
    pub user_net: Option<Traffic>,
}

#[derive(Default)]
pub struct VmHistory {
    pub samples: VecDeque<VmSample>,
    /// Counters at the last collection and when; None while the VM is not running.
    pub last: Option<(Instant, Counters)>,
}

#[derive(Default)]
struct State {
    host: VecDeque<HostSample>,
    host_cpu: Option<(u64, u64)>,
    pools: Vec<PoolUsage>,
    by_state: BTreeMap<String, u64>,
    vms: HashMap<String, VmHistory>,
}

pub struct Metrics {
    interval_ms: AtomicU64,
    state: Mutex<State>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            interval_ms: AtomicU64::new(2000),
            state: Mutex::new(State::default()),
        }
    }
}

fn push<T>(ring: &mut VecDeque<T>, item: T) {
    if ring.len() >= HISTORY {
        ring.pop_front();
    }
    ring.push_back(item);
}

impl Metrics {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.load(Ordering::Relaxed))
    }

    pub fn set_interval(&self, every: Duration) {
        let ms = every.as_millis().clamp(100, 3_600_000) as u64;
        self.interval_ms.store(ms, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn host(&self, since_ms: u64) -> HostMetrics {
        let st = self.lock();
        HostMetrics {
            interval_ms: self.interval_ms.load(Ordering::Relaxed),
            samples: st
                .host
                .iter()
                .filter(|s| s.time_ms > since_ms)
                .cloned()
                .collect(),
            pools: st.pools.clone(),
            vms_by_state: st.by_state.clone(),
        }
    }

    pub fn vm(&self, name: &str, since_ms: u64) -> VmMetrics {
        let st = self.lock();
        let samples = st
            .vms
            .get(name)
            .map(|h| {
                h.samples
                    .iter()
                    .filter(|s| s.time_ms > since_ms)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        VmMetrics {
            vm: name.to_string(),
            interval_ms: self.interval_ms.load(Ordering::Relaxed),
            samples,
        }
    }

    /// The newest sample of every VM that has one and still runs, by name.
    pub fn latest(&self) -> VmsMetrics {
        let st = self.lock();
        let mut vms: Vec<VmLatest> = st
            .vms
            .iter()
            .filter(|(_, h)| h.last.is_some())
            .filter_map(|(name, h)| {
                Some(VmLatest {
                    vm: name.clone(),
                    sample: h.samples.back()?.clone(),
                })
            })
            .collect();
        vms.sort_by(|a, b| a.vm.cmp(&b.vm));
        VmsMetrics {
            interval_ms: self.interval_ms.load(Ordering::Relaxed),
            vms,
        }
    }

    /// Forget a deleted VM's history at once (the next collection would too).
    pub fn forget(&self, name: &str) {
        self.lock().vms.remove(name);
    }

    /// What the Prometheus exposition is made of, copied out under the lock.
    pub fn snapshot(&self) -> prometheus::Snapshot {
        let st = self.lock();
        let vms = st
            .vms
            .iter()
            .filter_map(|(name, h)| {
                let (_, c) = h.last?;
                let s = h.samples.back()?.clone();
                Some((name.clone(), c, s))
            })
            .collect();
        prometheus::Snapshot {
            host: st.host.back().cloned(),
            pools: st.pools.clone(),
            by_state: st.by_state.clone(),
            vms,
            ticks_per_sec: probe::ticks_per_sec(),
        }
    }
}

/// Sample forever, every interval.
pub async fn run(mgr: Arc<Manager>) {
    loop {
        let started = Instant::now();
        collect(&mgr).await;
        let every = mgr.metrics.interval();
        tokio::time::sleep(every.saturating_sub(started.elapsed())).await;
    }
}

/// What one running VM gave this round.
struct Probe {
    name: String,
    memory_total: u64,
    rss: u64,
    guest_memory: Option<balloon::GuestMemory>,
    counters: Counters,
}

async fn collect(mgr: &Arc<Manager>) {
    let records = match mgr.store.list_vms() {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "metrics: listing VMs failed");
            return;
        }
    };
    let mut by_state = BTreeMap::new();
    let names: HashSet<String> = records.iter().map(|r| r.spec.name.clone()).collect();
    let mut probes = Vec::new();
    for r in &records {
        *by_state
            .entry(r.status.state.as_str().to_string())
            .or_insert(0) += 1;
        let Some(running) = mgr.running(&r.spec.name) else {
            continue;
        };
        let (user_macs, taps): (Vec<&Nic>, Vec<&Nic>) = r
            .spec
            .nics
            .iter()
            .partition(|n| n.kind == NetworkKind::User);
        let taps: Vec<String> = taps
            .iter()
            .map(|n| corral_net::tap::tap_name(&n.mac))
            .collect();
        let user_macs: Vec<String> = user_macs
            .iter()
            .map(|n| n.mac.to_ascii_lowercase())
            .collect();
        let (name, memory_total) = (r.spec.name.clone(), r.spec.memory_mib * 1024 * 1024);
        probes.push(async move {
            let user_net = async {
                if user_macs.is_empty() {
                    return None;
                }
                let asked = running.agent.traffic(&user_macs, QMP_TIMEOUT);
                tokio::time::timeout(QMP_TIMEOUT, asked)
                    .await
                    .ok()
                    .flatten()
            };
            let (blocks, guest_memory, user_net) = tokio::join!(
                tokio::time::timeout(
                    QMP_TIMEOUT,
                    running.qmp.execute_raw("query-blockstats", None),
                ),
                tokio::time::timeout(QMP_TIMEOUT, balloon::guest_memory(&running.qmp)),
                user_net,
            );
            let mut c = Counters {
                cpu_ticks: probe::process_cpu_ticks(running.pid).unwrap_or(0),
                user_net,
                ..Counters::default()
            };
            if let Ok(Ok(v)) = blocks {
                add_blockstats(&mut c, &v);
            }
            for t in &taps {
                if let Some((rx, tx)) = probe::net_bytes(t) {
                    // The tap's rx is what the guest sent.
                    c.tx_bytes += rx;
                    c.rx_bytes += tx;
                }
            }
            Probe {
                name,
                memory_total,
                rss: probe::process_rss(running.pid).unwrap_or(0),
                guest_memory: guest_memory.ok().flatten(),
                counters: c,
            }
        });
    }
    let probes = futures_util::future::join_all(probes).await;
    let pools = pool_usage(mgr);
    let now = Instant::now();
    let time_ms = now_ms();
    let host_cpu = probe::host_cpu();
    let mut st = mgr.metrics.lock();
    st.by_state = by_state;
    st.pools = pools;
    st.vms.retain(|name, _| names.contains(name));
    let seen: HashSet<&str> = probes.iter().map(|p| p.name.as_str()).collect();
    for (name, h) in st.vms.iter_mut() {
        if !seen.contains(name.as_str()) {
            h.last = None;
        }
    }
    let tps = probe::ticks_per_sec() as f64;
    for p in probes {
        let h = st.vms.entry(p.name.clone()).or_default();
        if let Some((then, prev)) = h.last {
            let secs = now.duration_since(then).as_secs_f64().max(0.001);
            let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
            let (memory_used_bytes, memory_total_bytes, memory_source) = match p.guest_memory {
                Some(m) => (m.used, m.total, MemorySource::Balloon),
                None => (p.rss, p.memory_total, MemorySource::Rss),
            };
            let sample = VmSample {
                time_ms,
                cpu_percent: rate(p.counters.cpu_ticks, prev.cpu_ticks) / tps * 100.0,
                memory_used_bytes,
                memory_total_bytes,
                memory_source,
                disk_read_bytes_per_sec: rate(p.counters.rd_bytes, prev.rd_bytes),
                disk_write_bytes_per_sec: rate(p.counters.wr_bytes, prev.wr_bytes),
                disk_read_ops_per_sec: rate(p.counters.rd_ops, prev.rd_ops),
                disk_write_ops_per_sec: rate(p.counters.wr_ops, prev.wr_ops),
                net_rx_bytes_per_sec: rate(p.counters.rx_bytes, prev.rx_bytes)
                    + user_bytes(p.counters.user_net, prev.user_net, |t| t.rx_bytes) / secs,
                net_tx_bytes_per_sec: rate(p.counters.tx_bytes, prev.tx_bytes)
                    + user_bytes(p.counters.user_net, prev.user_net, |t| t.tx_bytes) / secs,
            };
            push(&mut h.samples, sample);
        }
        h.last = Some((now, p.counters));
    }
    if let (Some((busy, total)), Some((pb, pt))) = (host_cpu, st.host_cpu) {
        let dt = total.saturating_sub(pt).max(1) as f64;
        let (used, mem_total) = probe::host_memory().unwrap_or((0, 0));
        let sample = HostSample {
            time_ms,
            cpu_percent: busy.saturating_sub(pb) as f64 / dt * 100.0,
            memory_used_bytes: used,
            memory_total_bytes: mem_total,
        };
        push(&mut st.host, sample);
    }
    st.host_cpu = host_cpu;
}

/// Bytes moved on user-mode NICs since the last round. The agent's counters only
/// count when it answered both times: the first answer after a gap holds everything
/// since the guest booted, not one interval.
fn user_bytes(now: Option<Traffic>, prev: Option<Traffic>, bytes: fn(&Traffic) -> u64) -> f64 {
    match (now, prev) {
        (Some(a), Some(b)) => bytes(&a).saturating_sub(bytes(&b)) as f64,
        _ => 0.0,
    }
}

/// Sum `query-blockstats` over the VM's drives.
fn add_blockstats(c: &mut Counters, v: &Value) {
    for dev in v.as_array().into_iter().flatten() {
        let Some(s) = dev.get("stats") else { continue };
        let n = |k: &str| s.get(k).and_then(Value::as_u64).unwrap_or(0);
        c.rd_bytes += n("rd_bytes");
        c.wr_bytes += n("wr_bytes");
        c.rd_ops += n("rd_operations");
        c.wr_ops += n("wr_operations");
    }
}

/// statvfs of each directory pool's path (other pool kinds have no path to ask).
fn pool_usage(mgr: &Manager) -> Vec<PoolUsage> {
    let Ok(specs) = mgr.store.list_pools() else {
        return Vec::new();
    };
    specs
        .into_iter()
        .filter_map(|spec| {
            let path = spec.path.as_deref()?;
            let (used, cap) = probe::fs_usage(std::path::Path::new(path))?;
            Some(PoolUsage {
                name: spec.name,
                used_bytes: used,
                capacity_bytes: cap,
            })
        })
        .collect()
}
