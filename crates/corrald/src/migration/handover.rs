//! The source's side of the switch-over and of its undoing: past the commit point the
//! destination is told to resume until it confirms, ownership moves in one store
//! transaction and what was this host's goes; before it, everything is rolled back and
//! the destination told to give up.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use corral_api::{FinishIncoming, IncomingStatus, MigrationProgress, VmState, VmStatus};
use corral_client::Peer;
use corral_qemu::migrate;
use corral_store::{MigrationRecord, MigrationRole};
use uuid::Uuid;

use super::outgoing::{detail, Plan};
use super::{phase, record, OutgoingBody};
use crate::error::{ApiError, ApiResult};
use crate::operations::OpHandle;
use crate::vm::{Manager, Running};

impl Manager {
    /// The commit point: refuses a cancel from now on (or honours one that came first)
    /// and records `switching`, after which this host never resumes its copy.
    pub(super) fn commit(
        &self,
        plan: &Plan,
        m: &mut MigrationRecord,
        handle: &OpHandle,
    ) -> ApiResult<()> {
        if !handle.commit_point() {
            return Err(ApiError::Cancelled);
        }
        self.set_phase(m, phase::SWITCHING, &plan.body)
    }

    /// After the commit point: the destination resumes the guest, ownership moves, this
    /// host's QEMU and copied disks go.
    pub(super) async fn hand_over(
        &self,
        plan: &Plan,
        m: &mut MigrationRecord,
        handle: &OpHandle,
        mut progress: MigrationProgress,
        started: Instant,
    ) -> ApiResult<serde_json::Value> {
        progress.phase = "switch-over".into();
        handle.detail(96.0, detail(&progress));
        crate::testpoint::reached("migration.switching").await;
        if !progress.postcopy {
            if let Err(e) = self.finish_destination(plan, &progress).await {
                return Err(self.arrival_refused(plan, m, e).await);
            }
        }
        self.commit_ownership(&plan.name, m, &plan.body)?;
        progress.phase = "cleanup".into();
        handle.detail(98.0, detail(&progress));
        crate::testpoint::reached("migration.cleanup").await;
        self.clean_up_departed(&plan.name, &plan.body).await;
        let _ = self.store.delete_migration(m.id);
        progress.phase = "done".into();
        progress.total_ms = Some(started.elapsed().as_millis() as u64);
        self.events.emit(
            Some(&plan.name),
            "migration",
            format!(
                "VM '{}' migrated to {} in {} ms (guest paused {} ms)",
                plan.name,
                plan.body.destination_host,
                progress.total_ms.unwrap_or(0),
                progress.downtime_ms.unwrap_or(0)
            ),
        );
        Ok(serde_json::json!({
            "destination": plan.body.destination.url,
            "destination_host": plan.body.destination_host,
            "migration": m.id,
            "downtime_ms": progress.downtime_ms,
            "total_ms": progress.total_ms,
            "ram_bytes": progress.ram_transferred,
            "disk_bytes": progress.disk_transferred,
            "postcopy": progress.postcopy,
        }))
    }

    /// The destination answered the finish with a refusal (it gave the arrival up: its
    /// QEMU could not load the state, or died): it never ran the guest and never will,
    /// so the guest, paused here since the stream completed, resumes here.
    pub(super) async fn arrival_refused(
        &self,
        plan: &Plan,
        m: &MigrationRecord,
        e: ApiError,
    ) -> ApiError {
        self.resume_here(&plan.name, &plan.running, plan.body.was_paused)
            .await;
        migrate::remove_tls_creds(&plan.running.qmp).await;
        let _ = self.store.delete_migration(m.id);
        let e = ApiError::Conflict {
            message: format!(
                "{} could not take the VM ({}); it runs here as before",
                plan.body.destination_host,
                crate::error::chain(&e)
            ),
            hint: Some("the destination's log says why its QEMU refused the state".into()),
        };
        self.events
            .emit(Some(&plan.name), "migration", e.to_string());
        e
    }

    /// Tells the destination to resume the guest, until it confirms. Past the commit
    /// point there is no way back, so an unanswered call is retried (the guest stays
    /// paused here meanwhile, never lost); only the destination's final "given up"
    /// (it never ran the guest) lets this host resume it after all.
    pub(crate) async fn finish_destination(
        &self,
        plan: &Plan,
        progress: &MigrationProgress,
    ) -> ApiResult<()> {
        // Only what must be there before the guest runs: its variable store.
        let finish = FinishIncoming {
            console_log_b64: String::new(),
            nvram_b64: self.nvram_of(&plan.name)?,
        };
        retry_finish(&plan.peer, plan.id, &finish, &plan.name, progress.postcopy).await?;
        // The console's history follows, once the guest runs there.
        let history = FinishIncoming {
            console_log_b64: self.console_log_of(&plan.name)?,
            nvram_b64: None,
        };
        let path = format!("/api/v1/migrations/{}/history", plan.id);
        if let Err(e) = plan
            .peer
            .post::<_, serde_json::Value>(&path, &history)
            .await
        {
            tracing::warn!(vm = %plan.name, "the console's history did not reach the destination: {}", corral_client::peer_chain(&e));
        }
        Ok(())
    }

    /// The VM's console output and NVRAM, which move with it, in one finish (after a
    /// restart, when speed matters less than getting it done).
    pub(crate) fn history_for(&self, name: &str) -> ApiResult<FinishIncoming> {
        Ok(FinishIncoming {
            console_log_b64: self.console_log_of(name)?,
            nvram_b64: self.nvram_of(name)?,
        })
    }

    fn console_log_of(&self, name: &str) -> ApiResult<String> {
        let (rotated, current) = self.console_log_files(name)?;
        let log = crate::console::read_log(&rotated, &current, self.cfg.console_log_limit);
        Ok(base64::engine::general_purpose::STANDARD.encode(log))
    }

    fn nvram_of(&self, name: &str) -> ApiResult<Option<String>> {
        Ok(self
            .record(name)?
            .spec
            .nvram
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| base64::engine::general_purpose::STANDARD.encode(b)))
    }

    /// The switch of ownership, in one store transaction: the VM and its volume records
    /// leave this host's store as the migration enters `cleanup`.
    pub(crate) fn commit_ownership(
        &self,
        name: &str,
        m: &mut MigrationRecord,
        body: &OutgoingBody,
    ) -> ApiResult<()> {
        *m = record(m.id, name, MigrationRole::Outgoing, phase::CLEANUP, body)?;
        self.store.remove_migrated_vm(name, &body.volumes, m)?;
        self.metrics.forget(name);
        Ok(())
    }

    /// Ends the source QEMU (paused for good) and removes what was this host's alone:
    /// copied disks, runtime dir, seed, NVRAM, DHCP reservations, port forwards.
    pub(crate) async fn clean_up_departed(&self, name: &str, body: &OutgoingBody) {
        if let Some(r) = self.running(name) {
            r.set_stop_reason("migrated away");
            if r.qmp.quit().await.is_err() {
                let _ = corral_qemu::launch::kill(r.pid);
            }
        } else if corral_qemu::launch::is_our_qemu(body.pid, &body.uuid.to_string()) {
            let _ = corral_qemu::launch::kill(body.pid);
        }
        if !corral_qemu::launch::wait_exit(body.pid, Duration::from_secs(30)).await {
            let _ = corral_qemu::launch::kill(body.pid);
            corral_qemu::launch::wait_exit(body.pid, Duration::from_secs(10)).await;
        }
        for f in &body.local_files {
            let _ = corral_storage::remove_volume(Path::new(f));
        }
        let run_dir = self.cfg.runtime_dir().join(body.uuid.to_string());
        let _ = std::fs::remove_dir_all(run_dir);
        self.remove_seed(body.uuid);
        let nvram_dir = self.cfg.state_dir.join("nvram");
        let _ = std::fs::remove_file(nvram_dir.join(format!(
            "{name}-{}.fd",
            &body.uuid.simple().to_string()[..8]
        )));
        // Its NICs' rules and forwards (a VM without NICs has neither: the ruleset is
        // not rebuilt while the guest resumes at the other end).
        if !body.nics.is_empty() {
            if let Err(e) = self.drop_forwards_to(name).await {
                tracing::warn!(vm = name, "port forwards: {}", crate::error::chain(&e));
            }
            self.nics_changed(&body.nics).await;
        }
    }

    /// Undoes a migration that did not reach the commit point: the stream and mirrors
    /// stopped, the guest running here as it was, the destination told to give up.
    pub(super) async fn roll_back(&self, plan: &Plan, m: &mut MigrationRecord) {
        // A hung stream or mirror would hold QEMU (and its monitor) until TCP gives up.
        for link in &plan.links {
            let _ = link.shutdown(std::net::Shutdown::Both);
        }
        self.undo_outgoing(&plan.name, Some(&plan.running), &plan.body, &plan.peer, m)
            .await;
    }

    /// [`Self::roll_back`] from its parts (also after a restart, when `running` is the
    /// re-attached QEMU, or `None` if it died meanwhile).
    pub(crate) async fn undo_outgoing(
        &self,
        name: &str,
        running: Option<&Arc<Running>>,
        body: &OutgoingBody,
        peer: &Peer,
        m: &mut MigrationRecord,
    ) {
        if let Some(running) = running {
            let qmp = &running.qmp;
            let _ = migrate::cancel(qmp).await;
            wait_not_migrating(qmp).await;
            for disk in &body.mirrored {
                if let Err(e) = migrate::mirror_end(qmp, disk, true).await {
                    tracing::warn!(
                        vm = name,
                        "ending the mirror of {disk}: {}",
                        crate::error::chain(&e)
                    );
                }
            }
            migrate::remove_tls_creds(qmp).await;
            self.resume_here(name, running, body.was_paused).await;
        }
        let _ = self.set_phase(m, phase::ABORTING, body);
        self.abort_destination(peer, m).await;
        // Unanswered (a cut link): asked again until the destination confirms.
        if self.store.get_migration(m.id).ok().flatten().is_some() {
            if let Some(mgr) = self.self_arc() {
                let (peer, m) = (peer.clone(), m.clone());
                tokio::spawn(async move { mgr.keep_aborting(&peer, m).await });
            }
        }
    }

    /// The guest goes on here as it was before the migration (paused if it was).
    pub(crate) async fn resume_here(&self, name: &str, running: &Running, was_paused: bool) {
        let _lock = self.lock(name).await;
        let status = running.qmp.query_status().await.map(|s| s.status);
        if !was_paused && status.as_deref().is_ok_and(|s| s != "running") {
            if let Err(e) = running.qmp.cont().await {
                tracing::error!(vm = name, "cannot resume after the migration: {e}");
            }
        }
        if let Ok(rec) = self.record(name) {
            let state = if was_paused {
                VmState::Paused
            } else {
                VmState::Running
            };
            let _ = self.set_status(
                name,
                VmStatus {
                    state,
                    ..rec.status
                },
            );
        }
    }

    /// Tells the destination to give up, and forgets the migration once it has (or
    /// never heard of it). Unanswered, the record stays `aborting` and the recovery
    /// task asks again later.
    pub(crate) async fn abort_destination(&self, peer: &Peer, m: &MigrationRecord) {
        let path = format!("/api/v1/migrations/{}/abort", m.id);
        match peer
            .post::<_, IncomingStatus>(&path, &serde_json::json!({}))
            .await
        {
            Ok(_) => {
                let _ = self.store.delete_migration(m.id);
            }
            Err(e) if e.status() == Some(404) => {
                let _ = self.store.delete_migration(m.id);
            }
            Err(e) => tracing::warn!(
                vm = %m.vm,
                "the destination did not confirm giving up migration {}: {}",
                m.id,
                corral_client::peer_chain(&e)
            ),
        }
    }
}

/// Calls the destination's finish until it answers. A "given up" (409) after
/// post-copy started cannot be undone here: the error says the guest is lost.
pub(crate) async fn retry_finish(
    peer: &Peer,
    id: Uuid,
    finish: &FinishIncoming,
    name: &str,
    postcopy: bool,
) -> ApiResult<()> {
    let path = format!("/api/v1/migrations/{id}/finish");
    let mut wait = Duration::from_millis(200);
    loop {
        match peer.post::<_, IncomingStatus>(&path, finish).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_unanswered() || e.status() == Some(502) => {
                tracing::warn!(
                    vm = name,
                    "the destination did not confirm the resume yet: {}",
                    corral_client::peer_chain(&e)
                );
            }
            Err(e) if e.status() == Some(409) && postcopy => {
                return Err(ApiError::Internal(format!(
                    "post-copy migration of '{name}' failed at the destination: {}",
                    corral_client::peer_chain(&e)
                )))
            }
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// Waits (briefly) for QEMU to leave the migration states after a cancel.
async fn wait_not_migrating(qmp: &corral_qemu::qmp::Qmp) {
    for _ in 0..200 {
        match migrate::info(qmp).await {
            Ok(i) if matches!(i.status(), "setup" | "active" | "cancelling" | "device") => {}
            _ => return,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
