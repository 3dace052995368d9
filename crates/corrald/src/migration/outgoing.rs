//! The source's half: `corral migrate VM --to REMOTE` as one operation. Pre-flight on
//! both ends, the destination prepared, local disks mirrored into its NBD exports,
//! memory sent over TLS, then the switch-over: the one point past which the source
//! only rolls forward (see the module above).

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use corral_api::{
    DiskPlan, DiskTransfer, IncomingPreflight, IncomingPrepared, IncomingReady, IncomingVm,
    MigrateRequest, MigrationProgress, Operation, Postcopy, PreflightCheck, PreflightReport,
    ValidationError, VmAction, VmState, VmStatus,
};
use corral_client::Peer;
use corral_qemu::migrate::{self, Endpoint, MigrationInfo, Tuning};
use corral_store::{MigrationRecord, MigrationRole};
use uuid::Uuid;

use super::incoming::refusal;
use super::{phase, record, tls, OutgoingBody};
use crate::error::{ApiError, ApiResult};
use crate::operations::OpHandle;
use crate::vm::{check_allowed, Manager, Running};

/// How often memory and mirrors are polled for progress.
const POLL: Duration = Duration::from_millis(100);
/// No progress for this long means the link is gone: give up (and resume here).
const STALL: Duration = Duration::from_secs(20);
/// Each call to the destination is bounded; the finish is retried until it answers.
const PEER_TIMEOUT: Duration = Duration::from_secs(15);
/// A connection whose data stays unacknowledged this long is dead (TCP_USER_TIMEOUT).
const LINK_TIMEOUT: Duration = Duration::from_secs(15);
/// `auto` post-copy: after this many passes without the remaining memory shrinking.
const AUTO_POSTCOPY_PASSES: u64 = 4;

/// What `POST /vms/{name}/migrate` gives back.
pub enum Migration {
    /// `dry_run`: the pre-flight's findings; nothing moved.
    Report(PreflightReport),
    /// The migration runs as this operation.
    Started(Operation),
}

/// Everything the operation needs, found by the pre-flight.
pub(crate) struct Plan {
    pub id: Uuid,
    pub name: String,
    pub peer: Peer,
    pub incoming: IncomingVm,
    pub tuning: Tuning,
    pub postcopy: Postcopy,
    pub running: Arc<Running>,
    pub body: OutgoingBody,
    /// (disk id, its top node) of each mirrored disk.
    pub mirrors: Vec<(String, String)>,
    pub disk_bytes: u64,
    /// Bytes of the chain files in pools (sent if the destination lacks them).
    pub chain_bytes: u64,
    /// This host's ends of the TCP connections QEMU streams over (memory, each
    /// mirror): shut down to end a hung transfer at once.
    pub links: Vec<std::net::TcpStream>,
}

impl Manager {
    /// `POST /api/v1/vms/{name}/migrate`.
    pub async fn migrate(
        self: &Arc<Self>,
        name: &str,
        req: MigrateRequest,
    ) -> ApiResult<Migration> {
        req.validate()?;
        let (report, plan) = self.plan_migration(name, &req).await?;
        if req.dry_run {
            return Ok(Migration::Report(report));
        }
        if let Some(failed) = report.first_failure() {
            return Err(refusal(failed));
        }
        let plan = plan.ok_or_else(|| ApiError::Internal("pre-flight made no plan".into()))?;
        let m = {
            let _lock = self.lock(name).await;
            let rec = self.record(name)?;
            check_allowed(&rec, VmAction::Migrate)?;
            let m = record(
                plan.id,
                name,
                MigrationRole::Outgoing,
                phase::PREPARING,
                &plan.body,
            )?;
            self.store.put_migration(&m)?;
            self.set_status(
                name,
                VmStatus {
                    state: VmState::Migrating,
                    ..rec.status
                },
            )?;
            m
        };
        let (op, handle) = self.ops.begin("vm.migrate", name, true)?;
        let mgr = self.clone();
        tokio::spawn(async move { mgr.run_migration(plan, m, handle).await });
        Ok(Migration::Started(op))
    }

    /// Both ends' checks, and the plan when every one passed.
    async fn plan_migration(
        &self,
        name: &str,
        req: &MigrateRequest,
    ) -> ApiResult<(PreflightReport, Option<Plan>)> {
        let started = Instant::now();
        let record = self.record(name)?;
        check_allowed(&record, VmAction::Migrate)?;
        let running = self
            .running(name)
            .ok_or_else(|| ApiError::Internal(format!("VM '{name}' has no QEMU attached")))?;
        let d = &req.destination;
        let peer = Peer::new(&d.url, &d.fingerprint, &d.token)
            .map_err(|e| ValidationError::new("destination.url", e.to_string()))?
            .with_timeout(PEER_TIMEOUT);
        let mut checks = Vec::new();
        let (disks, body_disks) = self.disk_plans(&record).await?;
        let tree = self.store.snapshot_tree(name)?;
        if tree.snapshots.iter().any(|s| s.memory.is_some()) {
            checks.push(PreflightCheck::fail(
                "snapshots",
                "snapshots",
                "the VM has snapshots with memory state, which cannot move yet",
                "delete them (`corral snapshot delete`), or keep the VM here",
            ));
        }
        for v in &body_disks.volume_records {
            if let Some(base) = &v.base_snapshot {
                let i = record
                    .spec
                    .disks
                    .iter()
                    .position(|d| d.volume.as_deref() == Some(&v.name))
                    .unwrap_or(0);
                checks.push(PreflightCheck::fail(
                    "disk",
                    format!("disks[{i}]"),
                    format!(
                        "volume {} is a linked clone of VM {}'s snapshot {}, which stays here",
                        v.name, base.vm, base.snapshot
                    ),
                    "make a full clone (`corral clone` without --linked) to move",
                ));
            }
        }
        if tree.snapshots.iter().any(|s| s.nvram.is_some()) {
            checks.push(PreflightCheck::fail(
                "snapshots",
                "snapshots",
                "the VM's snapshots keep copies of its UEFI variables, which cannot move yet",
                "delete the snapshots (`corral snapshot delete`), or keep the VM here",
            ));
        }
        let nvram_b64 = match &record.spec.nvram {
            Some(path) => Some(base64::engine::general_purpose::STANDARD.encode(
                std::fs::read(path).map_err(|e| ApiError::Internal(format!("{path}: {e}")))?,
            )),
            None => None,
        };
        let postcopy = req.postcopy != Postcopy::Off;
        let incoming = IncomingVm {
            id: Uuid::new_v4(),
            source: self.host.hostname.clone(),
            source_fingerprint: self.cfg.tls_fingerprint.clone(),
            spec: record.spec.clone(),
            status: record.status.clone(),
            machine_type: migrate::machine_type(&running.qmp).await?,
            qemu_version: self.host.qemu_version.clone(),
            accel: self.host.accel.accel.as_str().to_string(),
            cpu_flags: crate::host::cpu_flags(),
            destination_address: peer.host().to_string(),
            postcopy,
            volumes: body_disks.volume_records,
            pools: self.store.list_pools()?,
            disks: disks.clone(),
            snapshots: tree,
            chain_files: body_disks.chain.clone(),
            images: body_disks.images.clone(),
            nvram_b64,
            created_at: record.created_at,
            events: self.store.recent_events(name, 1000)?,
            pci: corral_qemu::placement::read(
                &running.qmp,
                &corral_qemu::placement::pci_device_ids(&record.spec),
            )
            .await?,
        };
        let destination = self.ask_destination(&peer, &incoming, &mut checks).await;
        let report = PreflightReport {
            destination: destination.clone(),
            ok: checks.iter().all(|c| c.ok),
            checks,
            disks,
            took_ms: started.elapsed().as_millis() as u64,
        };
        if !report.ok {
            return Ok((report, None));
        }
        let body = OutgoingBody {
            destination: req.destination.clone(),
            destination_host: destination,
            pid: running.pid,
            uuid: record.spec.uuid,
            was_paused: record.status.state == VmState::Paused,
            local_files: body_disks.local_files,
            volumes: body_disks.volumes,
            mirrored: body_disks.mirrors.iter().map(|(d, _)| d.clone()).collect(),
            nics: record.spec.nics.clone(),
        };
        let plan = Plan {
            id: incoming.id,
            name: name.to_string(),
            peer,
            tuning: Tuning {
                downtime_ms: req
                    .max_downtime_ms
                    .unwrap_or(corral_api::DEFAULT_MAX_DOWNTIME_MS),
                bandwidth: req.bandwidth_bytes,
                auto_converge: req.auto_converge.unwrap_or(true),
                postcopy,
                tls: true,
                tls_hostname: Some(incoming.destination_address.clone()),
            },
            postcopy: req.postcopy,
            incoming,
            running,
            body,
            mirrors: body_disks.mirrors,
            disk_bytes: body_disks.bytes,
            chain_bytes: body_disks.chain_bytes,
            links: Vec::new(),
        };
        Ok((report, Some(plan)))
    }

    /// How each disk gets there: shared pools and files attached by path are opened
    /// there as they are; disks on this host's own pools are mirrored (their top; the
    /// files below it are listed, to be sent whole).
    async fn disk_plans(
        &self,
        record: &corral_store::VmRecord,
    ) -> ApiResult<(Vec<DiskPlan>, SourceDisks)> {
        let mut plans = Vec::new();
        let mut out = SourceDisks::default();
        for disk in &record.spec.disks {
            let volume = match &disk.volume {
                Some(v) => self.store.get_volume(v)?,
                None => None,
            };
            let pool = match &volume {
                Some(v) => self.store.get_pool(&v.pool)?,
                None => None,
            };
            let transfer = match (&volume, &pool) {
                (Some(_), Some(p)) if !p.shared => DiskTransfer::Copy,
                _ => DiskTransfer::Shared,
            };
            let mut bytes = 0;
            if transfer == DiskTransfer::Copy {
                let pools = self.store.list_pools()?;
                let chain = super::chain::files_below(&disk.id, Path::new(&disk.path), &pools);
                out.chain_bytes += chain
                    .iter()
                    .filter(|f| f.pool.is_some())
                    .map(|f| f.size_bytes)
                    .sum::<u64>();
                // Of the files below the top, this VM's own snapshot images go with it;
                // an image (`corral image`) or the user's file may serve others and stays.
                let own: Vec<String> =
                    tree_files(&self.store.snapshot_tree(&record.spec.name)?, &disk.id);
                out.local_files.extend(
                    chain
                        .iter()
                        .filter(|f| own.contains(&f.path))
                        .map(|f| f.path.clone()),
                );
                out.chain.extend(chain);
                if let Some(image) = volume.as_ref().and_then(|v| v.base_image.clone()) {
                    out.images.extend(self.store.get_image(&image)?);
                }
                bytes = std::fs::metadata(&disk.path)
                    .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
                    .unwrap_or(disk.size_bytes);
                let top = corral_qemu::live::top_node(
                    &self
                        .running(&record.spec.name)
                        .ok_or_else(|| ApiError::Internal("no QEMU".into()))?
                        .qmp,
                    &disk.id,
                )
                .await
                .map_err(|e| ApiError::Internal(crate::error::chain(&e)))?;
                out.mirrors.push((disk.id.clone(), top));
                out.local_files.push(disk.path.clone());
                out.bytes += bytes;
            }
            if let Some(v) = volume {
                out.volumes.push(v.name.clone());
                out.volume_records.push(v);
            }
            plans.push(DiskPlan {
                disk: disk.id.clone(),
                transfer,
                bytes,
            });
        }
        Ok((plans, out))
    }

    /// The destination's answer, in one call: reachable and authenticated, and each of
    /// its checks (one of which says whether it is this very host). Returns its name.
    async fn ask_destination(
        &self,
        peer: &Peer,
        vm: &IncomingVm,
        checks: &mut Vec<PreflightCheck>,
    ) -> String {
        match peer
            .post::<_, IncomingPreflight>("/api/v1/migrations/preflight", vm)
            .await
        {
            Ok(theirs) => {
                checks.push(PreflightCheck::pass(
                    "reachable",
                    format!(
                        "{} answers as {} (QEMU {})",
                        peer.url(),
                        theirs.hostname,
                        theirs.qemu_version
                    ),
                ));
                checks.extend(theirs.checks);
                theirs.hostname
            }
            Err(e) => {
                let (field, hint) = match e.status() {
                    Some(401) | Some(403) => (
                        "destination.token",
                        "give an admin token of the destination (`corral token create NAME --role admin` there)",
                    ),
                    Some(_) => (
                        "destination.url",
                        "the destination's corrald may be another version; check its log",
                    ),
                    None => (
                        "destination.url",
                        "is corrald running there with --listen, and is it reachable from this host?",
                    ),
                };
                checks.push(PreflightCheck::fail(
                    "reachable",
                    field,
                    corral_client::peer_chain(&e),
                    hint,
                ));
                peer.url().to_string()
            }
        }
    }

    async fn run_migration(
        self: Arc<Self>,
        mut plan: Plan,
        mut m: MigrationRecord,
        mut handle: OpHandle,
    ) {
        let started = Instant::now();
        let result = self.transfer(&mut plan, &mut m, &mut handle, started).await;
        match result {
            Ok(progress) => {
                let done = self
                    .hand_over(&plan, &mut m, &handle, progress, started)
                    .await;
                handle.finish_with(done);
            }
            Err(e) => {
                self.roll_back(&plan, &mut m).await;
                match e {
                    ApiError::Cancelled => handle.cancelled_done(),
                    e => {
                        self.events.emit(
                            Some(&plan.name),
                            "migration",
                            format!(
                                "migration to {} failed, the VM runs here as before: {}",
                                plan.body.destination_host,
                                crate::error::chain(&e)
                            ),
                        );
                        handle.finish_with(Err(e))
                    }
                }
            }
        }
    }

    /// Everything up to the commit point: the destination prepared, mirrors in sync,
    /// memory sent, the source's guest paused at the end. Returns once `switching` is
    /// recorded; any error before it means the destination must be aborted.
    async fn transfer(
        &self,
        plan: &mut Plan,
        m: &mut MigrationRecord,
        handle: &mut OpHandle,
        started: Instant,
    ) -> ApiResult<MigrationProgress> {
        let mut progress = MigrationProgress {
            phase: "preparing".into(),
            disk_total: plan.disk_bytes,
            ..Default::default()
        };
        handle.detail(0.0, detail(&progress));
        let ready = self
            .prepare_destination(plan, handle, &mut progress)
            .await?;
        crate::testpoint::reached("migration.prepared").await;
        let qmp = plan.running.qmp.clone();
        self.load_client_tls(&plan.running, &ready).await?;
        migrate::configure(&qmp, &plan.tuning).await?;
        let host = plan.peer.host().to_string();
        if !plan.mirrors.is_empty() {
            let port = ready
                .nbd_port
                .ok_or_else(|| ApiError::Internal("the destination exports no disks".into()))?;
            for (disk, top) in plan.mirrors.clone() {
                let link = dial(&host, port).await?;
                // With its chain at the destination, only the top is copied.
                let whole = !plan.incoming.chain_files.iter().any(|f| f.disk == disk);
                let limits = (whole, plan.tuning.bandwidth);
                let started =
                    migrate::mirror_start(&qmp, &disk, &top, link.as_fd(), &host, limits).await;
                plan.links.push(link);
                started?;
            }
            progress.phase = "mirroring".into();
            crate::testpoint::reached("migration.mirroring").await;
            self.wait_mirrors(plan, handle, &mut progress).await?;
        }
        self.set_phase(m, phase::TRANSFERRING, &plan.body)?;
        progress.phase = "memory".into();
        let link = dial(&host, ready.migration_port).await?;
        let sent = migrate::start(&qmp, link.as_fd()).await;
        plan.links.push(link);
        sent?;
        crate::testpoint::reached("migration.memory").await;
        let info = self.follow_memory(plan, m, handle, &mut progress).await?;
        progress.downtime_ms = info.downtime;
        progress.total_ms = Some(started.elapsed().as_millis() as u64);
        Ok(progress)
    }

    /// The destination made ready: the VM's records and images prepared there, the
    /// chain files it lacks sent (hashed first, so it can tell which it has), QEMU
    /// started waiting for the stream.
    async fn prepare_destination(
        &self,
        plan: &mut Plan,
        handle: &OpHandle,
        progress: &mut MigrationProgress,
    ) -> ApiResult<IncomingReady> {
        if !plan.incoming.chain_files.is_empty() {
            progress.phase = "copying-chain".into();
            handle.detail(0.0, detail(progress));
            for f in plan.incoming.chain_files.iter_mut() {
                f.sha256 = super::chain::sha256_of(f.path.clone().into()).await?;
            }
        }
        let prepared: IncomingPrepared = plan
            .peer
            .post("/api/v1/migrations/incoming", &plan.incoming)
            .await?;
        let id = plan.id;
        let mut sent = 0u64;
        for &index in &prepared.needed {
            if handle.is_cancelled() {
                return Err(ApiError::Cancelled);
            }
            let f = plan.incoming.chain_files.get(index).ok_or_else(|| {
                ApiError::Internal(format!("the destination asks for chain file {index}"))
            })?;
            let path = format!("/api/v1/migrations/{id}/files/{index}");
            let _: serde_json::Value = plan.peer.put_file(&path, Path::new(&f.path)).await?;
            sent += f.size_bytes;
            progress.disk_transferred = sent;
            progress.disk_total = plan.chain_bytes;
            handle.detail(percent(sent, plan.chain_bytes) * 0.2, detail(progress));
        }
        let start = format!("/api/v1/migrations/{id}/start");
        Ok(plan.peer.post(&start, &serde_json::json!({})).await?)
    }

    /// The destination's client credentials, loaded into this QEMU (files removed again).
    async fn load_client_tls(&self, running: &Running, ready: &IncomingReady) -> ApiResult<()> {
        let c = self.host.confinement;
        let dir = tls::install(
            &running.paths.dir,
            &tls::client_files(&ready.tls),
            c.run_as,
            c.chroot,
        )?;
        let loaded = migrate::add_tls_creds(&running.qmp, &dir, Endpoint::Client).await;
        tls::remove(&running.paths.dir);
        Ok(loaded?)
    }

    /// Waits until every mirror is ready (in sync and following the guest's writes).
    async fn wait_mirrors(
        &self,
        plan: &Plan,
        handle: &mut OpHandle,
        progress: &mut MigrationProgress,
    ) -> ApiResult<()> {
        let mut stalled = Stall::new();
        loop {
            if handle.is_cancelled() {
                return Err(ApiError::Cancelled);
            }
            let mirrors = migrate::mirrors(&plan.running.qmp).await?;
            if let Some(failed) = mirrors.iter().find(|j| j.error.is_some()) {
                return Err(ApiError::Conflict {
                    message: format!(
                        "copying disk {} failed: {}",
                        failed.disk,
                        failed.error.clone().unwrap_or_default()
                    ),
                    hint: Some(
                        "the VM runs here as before; check the link and the destination's pool"
                            .into(),
                    ),
                });
            }
            if mirrors.len() < plan.mirrors.len() {
                return Err(ApiError::Conflict {
                    message: "a disk's copy ended before it was in sync".into(),
                    hint: Some("see the daemon's log; the VM runs here as before".into()),
                });
            }
            progress.disk_transferred = mirrors.iter().map(|j| j.offset).sum();
            let len: u64 = mirrors.iter().map(|j| j.len).sum();
            progress.disk_total = len;
            handle.detail(
                percent(progress.disk_transferred, len) * 0.5,
                detail(progress),
            );
            if mirrors.iter().all(|j| j.ready) {
                return Ok(());
            }
            stalled.check(progress.disk_transferred, "copying the disks")?;
            tokio::time::sleep(POLL).await;
        }
    }

    /// Follows the memory stream until QEMU says completed (the source's guest is then
    /// paused), switching to post-copy when asked. Ends the mirrors and records the
    /// commit point before it returns.
    async fn follow_memory(
        &self,
        plan: &Plan,
        m: &mut MigrationRecord,
        handle: &mut OpHandle,
        progress: &mut MigrationProgress,
    ) -> ApiResult<MigrationInfo> {
        let qmp = &plan.running.qmp;
        let mut events = qmp.events();
        let mut stalled = Stall::new();
        let mut passes: Vec<u64> = Vec::new();
        loop {
            if !progress.postcopy && handle.is_cancelled() {
                return Err(ApiError::Cancelled);
            }
            let info = migrate::info(qmp).await?;
            update(progress, &info, &mut passes);
            let base = if plan.mirrors.is_empty() { 0.0 } else { 50.0 };
            let ram = percent(
                progress.ram_transferred,
                progress.ram_transferred + progress.ram_remaining,
            );
            handle.detail(base + ram * (100.0 - base) / 100.0 * 0.95, detail(progress));
            match info.status() {
                "completed" => {
                    for disk in &plan.body.mirrored {
                        migrate::mirror_end(qmp, disk, false).await?;
                    }
                    if !progress.postcopy {
                        self.commit(plan, m, handle)?;
                    }
                    return Ok(final_figures(qmp, info).await);
                }
                "failed" | "cancelled" => {
                    return Err(ApiError::Conflict {
                        message: format!(
                            "the migration stream {}: {}",
                            info.status(),
                            info.error_desc
                                .clone()
                                .unwrap_or_else(|| "no reason given".into())
                        ),
                        hint: Some("the VM runs here as before".into()),
                    })
                }
                "active" if !progress.postcopy && wants_postcopy(plan.postcopy, &passes) => {
                    self.commit(plan, m, handle)?;
                    migrate::start_postcopy(qmp).await?;
                    progress.postcopy = true;
                    progress.phase = "postcopy".into();
                    // The guest runs there from now on; the rest of its memory follows.
                    self.finish_destination(plan, progress).await?;
                }
                _ => {}
            }
            if !progress.postcopy {
                stalled.check(progress.ram_transferred, "sending memory")?;
            }
            // QEMU's MIGRATION event says at once when the status changes (the end
            // above all: the guest is paused from then until the destination runs it).
            migration_event_or(&mut events, POLL).await;
        }
    }
}

/// The frozen images of disk `disk` in a snapshot tree.
fn tree_files(tree: &corral_api::SnapshotTree, disk: &str) -> Vec<String> {
    tree.snapshots
        .iter()
        .flat_map(|s| s.disks.iter())
        .filter(|d| d.disk == disk)
        .map(|d| d.file.clone())
        .collect()
}

/// What the source learns of its disks while planning.
#[derive(Default)]
struct SourceDisks {
    volumes: Vec<String>,
    volume_records: Vec<corral_api::Volume>,
    local_files: Vec<String>,
    mirrors: Vec<(String, String)>,
    bytes: u64,
    /// The read-only files below the copied disks' tops (oldest first per disk).
    chain: Vec<corral_api::ChainFile>,
    chain_bytes: u64,
    images: Vec<corral_api::Image>,
}

/// A TCP connection to the destination for QEMU to stream over: one whose loss shows
/// within seconds (keepalives, and a limit on unacknowledged data), not TCP's minutes.
async fn dial(host: &str, port: u16) -> ApiResult<std::net::TcpStream> {
    let addr = format!("{host}:{port}");
    let connect = tokio::net::TcpStream::connect(addr.clone());
    let stream = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| ApiError::Conflict {
            message: format!("cannot reach {addr} within 10 s"),
            hint: Some("is the link between the hosts up?".into()),
        })?
        .map_err(|e| ApiError::Conflict {
            message: format!("cannot connect to {addr}: {e}"),
            hint: Some("a firewall between the hosts may block QEMU's ports".into()),
        })?
        .into_std()
        .map_err(|e| ApiError::Internal(format!("{addr}: {e}")))?;
    let sock = socket2::SockRef::from(&stream);
    let tuned = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_nodelay(true))
        .and_then(|()| sock.set_tcp_user_timeout(Some(LINK_TIMEOUT)))
        .and_then(|()| {
            sock.set_tcp_keepalive(
                &socket2::TcpKeepalive::new()
                    .with_time(Duration::from_secs(5))
                    .with_interval(Duration::from_secs(2))
                    .with_retries(3),
            )
        });
    tuned.map_err(|e| ApiError::Internal(format!("{addr}: {e}")))?;
    Ok(stream)
}

/// Waits for QEMU's next MIGRATION event, at most `limit`.
async fn migration_event_or(
    events: &mut tokio::sync::broadcast::Receiver<corral_qemu::qmp::Event>,
    limit: Duration,
) {
    let next = async {
        loop {
            match events.recv().await {
                Ok(e) if e.name == "MIGRATION" => return,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    return std::future::pending().await
                }
            }
        }
    };
    let _ = tokio::time::timeout(limit, next).await;
}

/// The completed migration's figures: QEMU fills in `downtime` and `total-time` a moment
/// after it reports completed, so they are read again until they are there.
async fn final_figures(qmp: &corral_qemu::qmp::Qmp, first: MigrationInfo) -> MigrationInfo {
    let mut info = first;
    for _ in 0..20 {
        if info.downtime.unwrap_or(0) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        match migrate::info(qmp).await {
            Ok(i) => info = i,
            Err(_) => break,
        }
    }
    info
}

/// Progress figures from QEMU's, and the remaining memory at the start of each pass.
fn update(p: &mut MigrationProgress, info: &MigrationInfo, passes: &mut Vec<u64>) {
    if let Some(ram) = &info.ram {
        p.ram_transferred = ram.transferred;
        p.ram_remaining = ram.remaining;
        p.ram_total = ram.total;
        p.pass = ram.dirty_sync_count;
        if ram.dirty_sync_count as usize > passes.len() {
            passes.push(ram.remaining);
        }
    }
    p.dirty_rate = info.dirty_rate();
    p.expected_downtime_ms = info.expected_downtime.unwrap_or(0);
}

/// Whether to switch to post-copy now: `now` after the first pass; `auto` once several
/// passes have not shrunk what remains.
fn wants_postcopy(policy: Postcopy, passes: &[u64]) -> bool {
    match policy {
        Postcopy::Off => false,
        Postcopy::Now => passes.len() >= 2,
        Postcopy::Auto => {
            let n = passes.len();
            n as u64 > AUTO_POSTCOPY_PASSES
                && passes[n - 1] >= passes[n - 1 - AUTO_POSTCOPY_PASSES as usize]
        }
    }
}

fn percent(done: u64, total: u64) -> f32 {
    match total {
        0 => 0.0,
        t => (done as f64 / t as f64 * 100.0) as f32,
    }
}

pub(super) fn detail(p: &MigrationProgress) -> serde_json::Value {
    serde_json::to_value(p).unwrap_or_default()
}

/// Gives up when a counter stops moving for [`STALL`] (a cut link leaves QEMU's socket
/// waiting for TCP's own, much longer, timeouts).
struct Stall {
    last: u64,
    since: Instant,
}

impl Stall {
    fn new() -> Self {
        Stall {
            last: 0,
            since: Instant::now(),
        }
    }

    fn check(&mut self, now: u64, doing: &str) -> ApiResult<()> {
        if now != self.last {
            self.last = now;
            self.since = Instant::now();
            return Ok(());
        }
        if self.since.elapsed() < STALL {
            return Ok(());
        }
        Err(ApiError::Conflict {
            message: format!("{doing} made no progress for {} s", STALL.as_secs()),
            hint: Some("is the link between the hosts up? The VM runs here as before".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postcopy_switches_when_asked() {
        assert!(!wants_postcopy(Postcopy::Off, &[9, 8, 7, 7, 7, 7]));
        assert!(!wants_postcopy(Postcopy::Now, &[9]));
        assert!(wants_postcopy(Postcopy::Now, &[9, 5]));
        // Auto: only once what remains stops shrinking over several passes.
        assert!(!wants_postcopy(Postcopy::Auto, &[100, 50, 25, 12, 6, 3]));
        assert!(wants_postcopy(Postcopy::Auto, &[100, 50, 40, 40, 45, 50]));
        assert!(!wants_postcopy(Postcopy::Auto, &[100, 50]));
    }

    #[test]
    fn a_stalled_counter_is_an_error_only_after_a_while() {
        let mut s = Stall::new();
        assert!(s.check(5, "x").is_ok());
        assert!(s.check(5, "x").is_ok());
        s.since = Instant::now() - STALL - Duration::from_secs(1);
        let err = s.check(5, "sending memory").unwrap_err();
        assert!(err.to_string().contains("sending memory made no progress"));
        assert!(s.check(6, "x").is_ok());
    }
}
