//! After a restart: each migration this host was part of is finished or undone from its
//! recorded phase. Runs after the VMs were re-attached (a QEMU survives its daemon, and
//! keeps migrating without it), so the state of every QEMU is known.
//!
//! Source: before `switching` the migration is undone (stream cancelled, guest resumed
//! here, destination aborted); at `switching` the destination is told to resume until
//! it confirms, then ownership moves; at `cleanup` what is left of the departed VM goes.
//! Destination: an arrival whose QEMU is gone is given up; one told to resume resumes;
//! otherwise it waits, as before the restart, for the source's word.

use std::sync::Arc;
use std::time::Duration;

use corral_api::{VmState, VmStatus};
use corral_client::Peer;
use corral_store::{MigrationRecord, MigrationRole};

use super::{body_of, phase, IncomingBody, OutgoingBody};
use crate::clock::now_ms;
use crate::error::{ApiError, ApiResult};
use crate::vm::Manager;

/// How often an unanswered destination is asked again.
const RETRY: Duration = Duration::from_secs(3);
/// Finished records are kept this long, so a late question from the other end still
/// gets a true answer.
const KEEP_FINISHED_MS: u64 = 7 * 24 * 3600 * 1000;

impl Manager {
    /// At start-up, after `reattach_all`.
    pub async fn recover_migrations(self: &Arc<Self>) -> ApiResult<()> {
        for m in self.store.list_migrations()? {
            let mgr = self.clone();
            match m.role {
                MigrationRole::Outgoing => {
                    tokio::spawn(async move { mgr.recover_outgoing(m).await });
                }
                MigrationRole::Incoming => self.recover_incoming(m).await,
            }
        }
        Ok(())
    }

    async fn recover_outgoing(self: Arc<Self>, mut m: MigrationRecord) {
        let body: OutgoingBody = match body_of(&m) {
            Ok(b) => b,
            Err(e) => return tracing::error!("{}", crate::error::chain(&e)),
        };
        let d = &body.destination;
        let peer = match Peer::new(&d.url, &d.fingerprint, &d.token) {
            Ok(p) => p.with_timeout(Duration::from_secs(15)),
            Err(e) => return tracing::error!(vm = %m.vm, "migration {}: {e}", m.id),
        };
        match m.phase.as_str() {
            phase::PREPARING | phase::TRANSFERRING => {
                self.events.emit(
                    Some(&m.vm),
                    "migration",
                    "the migration was cut short by a daemon restart; the VM runs here as before",
                );
                let running = self.running(&m.vm);
                let vm = m.vm.clone();
                self.undo_outgoing(&vm, running.as_ref(), &body, &peer, &mut m)
                    .await;
                self.keep_aborting(&peer, m).await;
            }
            phase::ABORTING => self.keep_aborting(&peer, m).await,
            phase::SWITCHING => self.roll_forward(&peer, m, &body).await,
            phase::CLEANUP => {
                self.clean_up_departed(&m.vm, &body).await;
                let _ = self.store.delete_migration(m.id);
            }
            other => tracing::warn!(vm = %m.vm, "migration {} in unknown phase {other}", m.id),
        }
    }

    /// Asks the destination to give up until it confirms.
    pub(crate) async fn keep_aborting(&self, peer: &Peer, m: MigrationRecord) {
        while self.store.get_migration(m.id).ok().flatten().is_some() {
            self.abort_destination(peer, &m).await;
            if self.store.get_migration(m.id).ok().flatten().is_none() {
                return;
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Past the commit point before the restart: resume at the destination, move the
    /// ownership, clean up here. If the destination has given the arrival up (it never
    /// ran the guest), the guest resumes here instead.
    async fn roll_forward(&self, peer: &Peer, mut m: MigrationRecord, body: &OutgoingBody) {
        let finish = match self.history_for(&m.vm) {
            Ok(f) => f,
            Err(e) => return tracing::error!(vm = %m.vm, "{}", crate::error::chain(&e)),
        };
        match super::handover::retry_finish(peer, m.id, &finish, &m.vm, false).await {
            Ok(()) => {
                if let Err(e) = self.commit_ownership(&m.vm.clone(), &mut m, body) {
                    return tracing::error!(vm = %m.vm, "{}", crate::error::chain(&e));
                }
                self.clean_up_departed(&m.vm, body).await;
                let _ = self.store.delete_migration(m.id);
                self.events.emit(
                    None,
                    "migration",
                    format!(
                        "VM '{}' migrated to {} (finished after a daemon restart)",
                        m.vm, body.destination_host
                    ),
                );
            }
            Err(ApiError::Peer(e)) if e.status() == Some(409) || e.status() == Some(404) => {
                if let Some(running) = self.running(&m.vm) {
                    self.resume_here(&m.vm, &running, body.was_paused).await;
                }
                let _ = self.store.delete_migration(m.id);
                self.events.emit(
                    Some(&m.vm),
                    "migration",
                    "the destination had given the migration up; the VM runs here",
                );
            }
            Err(e) => {
                tracing::error!(vm = %m.vm, "migration {}: {}", m.id, crate::error::chain(&e))
            }
        }
    }

    async fn recover_incoming(self: &Arc<Self>, mut m: MigrationRecord) {
        let body: IncomingBody = match body_of(&m) {
            Ok(b) => b,
            Err(e) => return tracing::error!("{}", crate::error::chain(&e)),
        };
        match m.phase.as_str() {
            phase::RESUMED | phase::ABORTED => {
                if now_ms().saturating_sub(m.updated_ms) > KEEP_FINISHED_MS {
                    let _ = self.store.delete_migration(m.id);
                }
            }
            _ if self.running(&m.vm).is_none() => {
                let _lock = self.lock(&m.vm).await;
                if let Err(e) = self.abort_arrival_locked(m.id).await {
                    tracing::error!(vm = %m.vm, "{}", crate::error::chain(&e));
                }
            }
            phase::RESUMING => {
                // The source had handed over: resume (again), as finish would have.
                let Some(running) = self.running(&m.vm) else {
                    return;
                };
                if !body.was_paused {
                    let _ = running.qmp.cont().await;
                }
                let state = match body.was_paused {
                    true => VmState::Paused,
                    false => VmState::Running,
                };
                if let Ok(rec) = self.record(&m.vm) {
                    let _ = self.set_status(
                        &m.vm,
                        VmStatus {
                            state,
                            ..rec.status
                        },
                    );
                }
                let _ = self.set_phase(&mut m, phase::RESUMED, &body);
            }
            _ => {
                // Still arriving: shown so, waiting for the source.
                if let Ok(rec) = self.record(&m.vm) {
                    let _ = self.set_status(
                        &m.vm,
                        VmStatus {
                            state: VmState::Incoming,
                            ..rec.status
                        },
                    );
                }
            }
        }
    }
}
