//! The guest's own view of its memory, from the virtio balloon's statistics.
//!
//! Every VM has `-device virtio-balloon-pci,id=balloon0`. A guest with the balloon
//! driver reports its free and available memory through the stats queue once QEMU
//! polls it (`guest-stats-polling-interval`); until then, and for guests without the
//! driver, `guest-stats` has `last-update` 0 and every stat unset, and the collector
//! falls back to QEMU's RSS. QEMU 7.2 prints an unset stat as 2^64−1 (its docs say -1;
//! both are taken as unset). QEMU keeps the last report when the guest reboots, so a
//! report older than [`STALE_SECS`] (a guest that lost its driver) counts as none.

use corral_qemu::qmp::Qmp;
use serde_json::{json, Value};

const BALLOON: &str = "/machine/peripheral/balloon0";

/// How often the guest is asked for statistics, in seconds (its driver answers on
/// its own schedule; two seconds matches the collector's default interval).
const POLL_SECS: u64 = 2;

/// A report older than this is stale: the driver polls every [`POLL_SECS`].
const STALE_SECS: u64 = 30;

/// Memory the guest uses and has, in bytes, as the guest reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestMemory {
    pub used: u64,
    pub total: u64,
}

/// Reads the balloon's statistics; turns polling on when the guest has not reported
/// yet (a fresh VM, or one reattached after a daemon restart). `None` when the VM has
/// no balloon device or the guest no driver.
pub async fn guest_memory(qmp: &Qmp) -> Option<GuestMemory> {
    let reply = qmp
        .execute_raw(
            "qom-get",
            Some(json!({ "path": BALLOON, "property": "guest-stats" })),
        )
        .await
        .ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let parsed = parse(&reply, now);
    if parsed.is_none() {
        // Idempotent; a VM started before balloon devices existed just says no.
        let _ = qmp
            .execute_raw(
                "qom-set",
                Some(json!({
                    "path": BALLOON,
                    "property": "guest-stats-polling-interval",
                    "value": POLL_SECS,
                })),
            )
            .await;
    }
    parsed
}

/// `guest-stats` → used = total − available (or − free, from a driver too old to
/// report available memory). `now` is Unix seconds, to tell a stale report.
pub fn parse(reply: &Value, now: u64) -> Option<GuestMemory> {
    let updated = reply
        .get("last-update")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if updated == 0 || now.saturating_sub(updated) > STALE_SECS {
        return None;
    }
    let stats = reply.get("stats")?;
    // Unset stats: 2^64−1 from QEMU 7.2, -1 per its docs (which as_u64 rejects).
    let stat = |k: &str| {
        stats
            .get(k)
            .and_then(Value::as_u64)
            .filter(|v| *v != u64::MAX)
    };
    let total = stat("stat-total-memory").filter(|t| *t > 0)?;
    let left = stat("stat-available-memory").or_else(|| stat("stat-free-memory"))?;
    Some(GuestMemory {
        used: total.saturating_sub(left),
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn reported_stats_give_used_and_total() {
        let reply = json!({
            "last-update": NOW - 1,
            "stats": {
                "stat-total-memory": 1000, "stat-available-memory": 600,
                "stat-free-memory": 300, "stat-swap-in": -1
            }
        });
        assert_eq!(
            parse(&reply, NOW),
            Some(GuestMemory {
                used: 400,
                total: 1000
            })
        );
    }

    #[test]
    fn free_memory_stands_in_for_available_from_old_drivers() {
        // As QEMU 7.2 prints an unset stat.
        let reply = json!({
            "last-update": NOW,
            "stats": { "stat-total-memory": 1000, "stat-available-memory": u64::MAX, "stat-free-memory": 300 }
        });
        assert_eq!(parse(&reply, NOW).map(|m| m.used), Some(700));
    }

    #[test]
    fn no_driver_or_no_report_yet_is_none() {
        let nothing = json!({
            "last-update": 0,
            "stats": { "stat-total-memory": u64::MAX, "stat-available-memory": u64::MAX, "stat-free-memory": u64::MAX }
        });
        assert_eq!(parse(&nothing, NOW), None);
        let unreported = json!({ "last-update": NOW, "stats": { "stat-total-memory": -1 } });
        assert_eq!(parse(&unreported, NOW), None);
        let no_available = json!({ "last-update": NOW, "stats": { "stat-total-memory": 1000, "stat-available-memory": u64::MAX } });
        assert_eq!(parse(&no_available, NOW), None, "not used = 0");
    }

    #[test]
    fn a_report_from_before_a_reboot_without_the_driver_is_stale() {
        let old = json!({
            "last-update": NOW - 120,
            "stats": { "stat-total-memory": 1000, "stat-available-memory": 600 }
        });
        assert_eq!(parse(&old, NOW), None);
    }
}
