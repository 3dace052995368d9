//! Quiesced snapshots of a running VM: its guest agent freezes the guest's file systems
//! just around the instant its disks switch onto new overlays, so the snapshot holds
//! them clean on disk, not only crash-consistent. The thaw always follows, whether the
//! switch worked or not, on its own connection and with its own timeout.

use std::future::Future;
use std::sync::Mutex;

use corral_api::{ValidationError, VmState};
use corral_qemu::agent::AgentError;
use corral_storage::snapshot::SnapshotError;

use crate::error::{ApiError, ApiResult};
use crate::vm::agent::GuestAgent;

/// Whether a snapshot freezes the guest's file systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Skip,
    /// Freeze; if that fails, take the snapshot anyway (crash-consistent) and say so.
    Try,
    /// Freeze, or make nothing (`--quiesce`).
    Require,
}

/// Decides from the request (`quiesce`: absent, `true`, `false`) and the VM. Absent
/// quiesces whenever it can; `true` refuses, before anything is made, where it cannot.
pub fn plan(
    vm: &str,
    quiesce: Option<bool>,
    memory: bool,
    state: VmState,
    agent_connected: bool,
) -> ApiResult<Plan> {
    let required = match quiesce {
        Some(false) => return Ok(Plan::Skip),
        Some(true) => true,
        None => false,
    };
    if memory {
        if required {
            return Err(ValidationError::new(
                "quiesce",
                "a memory snapshot needs no quiescing: the guest is paused while its disks \
                 and memory are saved",
            )
            .hint("drop --quiesce")
            .into());
        }
        return Ok(Plan::Skip);
    }
    let refused = match state {
        VmState::Running if agent_connected => None,
        VmState::Running => Some((
            format!("VM '{vm}' has no guest agent connected, so its file systems cannot be frozen"),
            "install and start qemu-guest-agent in the guest (docs/guest-agent.md), \
             or snapshot with --no-quiesce",
        )),
        VmState::Stopped => Some((
            format!("VM '{vm}' is stopped: there is no running guest to quiesce"),
            "a stopped VM's disks are at rest; snapshot without --quiesce",
        )),
        other => Some((
            format!(
                "VM '{vm}' is {}: its guest agent cannot freeze file systems",
                other.as_str()
            ),
            "resume it first, or snapshot with --no-quiesce",
        )),
    };
    match refused {
        None => Ok(if required { Plan::Require } else { Plan::Try }),
        Some(_) if !required => Ok(Plan::Skip),
        Some((message, hint)) => Err(ApiError::Conflict {
            message,
            hint: Some(hint.into()),
        }),
    }
}

/// A required freeze failed: the snapshot was not made.
#[derive(Debug, thiserror::Error)]
#[error("the guest agent could not freeze the guest's file systems")]
pub struct FreezeFailed(#[source] pub AgentError);

/// What a quiesce did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Outcome {
    #[default]
    NotTried,
    /// Frozen for the switch; `thaw_error` if the thaw then failed.
    Frozen {
        count: u32,
        thaw_error: Option<String>,
    },
    /// The freeze failed (the snapshot went on only if it was not required).
    Failed(String),
}

/// One snapshot's quiesce: the agent, whether it is required, and what happened.
pub struct Quiesce<'a> {
    agent: &'a GuestAgent,
    required: bool,
    outcome: Mutex<Outcome>,
}

impl<'a> Quiesce<'a> {
    pub fn new(agent: &'a GuestAgent, required: bool) -> Self {
        Quiesce {
            agent,
            required,
            outcome: Mutex::new(Outcome::NotTried),
        }
    }

    pub fn outcome(&self) -> Outcome {
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, outcome: Outcome) {
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = outcome;
    }

    /// Runs `switch` with the guest's file systems frozen, and thaws them after it,
    /// whatever it returned (and, through the freeze guard's drop, if this future is
    /// dropped mid-way).
    pub async fn around<T>(
        &self,
        switch: impl Future<Output = Result<T, SnapshotError>>,
    ) -> Result<T, SnapshotError> {
        let frozen = match self.agent.freeze().await {
            Ok(frozen) => Some(frozen),
            Err(e) => {
                self.set(Outcome::Failed(e.to_string()));
                if self.required {
                    return Err(SnapshotError::Live(Box::new(FreezeFailed(e))));
                }
                None
            }
        };
        let switched = switch.await;
        if let Some(frozen) = frozen {
            let count = frozen.count;
            let thaw_error = frozen.thaw().await.err().map(|e| e.to_string());
            self.set(Outcome::Frozen { count, thaw_error });
        }
        switched
    }
}

/// The API error for a required freeze that failed (nothing was made).
pub fn freeze_failed(e: &FreezeFailed) -> ApiError {
    ApiError::Conflict {
        message: format!("{e}: {}; no snapshot was made", e.0),
        hint: Some(
            "check qemu-guest-agent in the guest and try again, or snapshot with --no-quiesce"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflict_hint(r: ApiResult<Plan>) -> String {
        match r {
            Err(ApiError::Conflict { hint, .. }) => hint.unwrap(),
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn default_quiesces_only_when_it_can() {
        use VmState::*;
        assert_eq!(plan("a", None, false, Running, true).unwrap(), Plan::Try);
        for (state, agent) in [(Running, false), (Paused, true), (Stopped, false)] {
            assert_eq!(plan("a", None, false, state, agent).unwrap(), Plan::Skip);
        }
        // Memory snapshots pause the guest: no freeze needed.
        assert_eq!(plan("a", None, true, Running, true).unwrap(), Plan::Skip);
    }

    #[test]
    fn no_quiesce_always_skips() {
        for state in [VmState::Running, VmState::Paused, VmState::Stopped] {
            assert_eq!(
                plan("a", Some(false), false, state, true).unwrap(),
                Plan::Skip
            );
        }
    }

    #[test]
    fn required_quiesce_refuses_plainly_where_it_cannot() {
        use VmState::*;
        assert_eq!(
            plan("a", Some(true), false, Running, true).unwrap(),
            Plan::Require
        );
        let hint = conflict_hint(plan("a", Some(true), false, Running, false));
        assert!(hint.contains("qemu-guest-agent") && hint.contains("--no-quiesce"));
        assert!(conflict_hint(plan("a", Some(true), false, Paused, true)).contains("resume"));
        assert!(conflict_hint(plan("a", Some(true), false, Stopped, false)).contains("at rest"));
        match plan("a", Some(true), true, Running, true) {
            Err(ApiError::Invalid(v)) => assert_eq!(v.field, "quiesce"),
            other => panic!("{other:?}"),
        }
    }
}
