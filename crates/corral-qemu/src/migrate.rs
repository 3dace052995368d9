//! Live migration between two QEMUs over QMP: TLS credentials, QEMU's migration
//! stream, and the NBD export + block mirror that copies local disks while the guest
//! runs (QEMU's documented way: mirror to the destination's NBD export until ready,
//! migrate memory, and once the migration has completed end the mirrors gracefully with
//! `block-job-cancel`, which on a ready job means "in sync, stop here").
//!
//! Nothing here knows about hosts or corrald: callers pass addresses, ports and node
//! names, and sequence the steps (corrald's `migration` module).

use std::os::fd::BorrowedFd;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::qmp::{Qmp, QmpError};

/// The QOM id of a migration's TLS credentials, on both ends.
pub const TLS_CREDS: &str = "corral-migration-tls";
/// "As fast as the link": QEMU's own default cap is only 32 MiB/s.
const UNLIMITED_BANDWIDTH: u64 = 1 << 40;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// QEMU refused a step.
    #[error("QMP `{command}` failed")]
    Qmp {
        command: &'static str,
        #[source]
        source: QmpError,
    },
    /// QEMU reported something this module cannot read.
    #[error("unexpected reply to `{command}`: {detail}")]
    Reply {
        command: &'static str,
        detail: String,
    },
}

fn qmp_err(command: &'static str) -> impl FnOnce(QmpError) -> MigrateError {
    move |source| MigrateError::Qmp { command, source }
}

/// Which side of the TLS connection a QEMU is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The destination: listens, verifies the client's certificate.
    Server,
    /// The source: connects, verifies the server's.
    Client,
}

/// Loads x509 credentials from `dir` (as QEMU sees it: inside its chroot when it has
/// one): `ca-cert.pem` and `server-cert.pem`/`server-key.pem` or `client-cert.pem`/
/// `client-key.pem`. The server also demands a client certificate from the same CA.
pub async fn add_tls_creds(qmp: &Qmp, dir: &str, endpoint: Endpoint) -> Result<(), MigrateError> {
    let (endpoint, verify) = match endpoint {
        Endpoint::Server => ("server", true),
        Endpoint::Client => ("client", true),
    };
    qmp.execute_raw(
        "object-add",
        Some(json!({
            "qom-type": "tls-creds-x509",
            "id": TLS_CREDS,
            "dir": dir,
            "endpoint": endpoint,
            "verify-peer": verify,
        })),
    )
    .await
    .map_err(qmp_err("object-add"))?;
    Ok(())
}

/// Removes the credentials again (best effort: gone already is fine).
pub async fn remove_tls_creds(qmp: &Qmp) {
    let _ = qmp
        .execute_raw("object-del", Some(json!({ "id": TLS_CREDS })))
        .await;
}

/// QEMU's resolved machine type: `pc` runs as `pc-i440fx-7.2`, and the destination must
/// run exactly that one.
pub async fn machine_type(qmp: &Qmp) -> Result<String, MigrateError> {
    let v = qmp
        .execute_raw(
            "qom-get",
            Some(json!({"path": "/machine", "property": "type"})),
        )
        .await
        .map_err(qmp_err("qom-get"))?;
    let text = v.as_str().ok_or_else(|| MigrateError::Reply {
        command: "qom-get",
        detail: v.to_string(),
    })?;
    Ok(text.strip_suffix("-machine").unwrap_or(text).to_string())
}

/// How a migration should behave; the same on both ends (QEMU needs post-copy enabled
/// on both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    pub downtime_ms: u64,
    /// Bytes per second; `None` is as fast as the link.
    pub bandwidth: Option<u64>,
    pub auto_converge: bool,
    pub postcopy: bool,
    /// Whether [`TLS_CREDS`] is to be used.
    pub tls: bool,
    /// The name the destination's certificate must carry (a stream over a passed
    /// descriptor has no host name of its own to check).
    pub tls_hostname: Option<String>,
}

/// Sets capabilities and parameters for the next migration.
pub async fn configure(qmp: &Qmp, t: &Tuning) -> Result<(), MigrateError> {
    let caps = json!([
        {"capability": "events", "state": true},
        {"capability": "auto-converge", "state": t.auto_converge},
        {"capability": "postcopy-ram", "state": t.postcopy},
    ]);
    qmp.execute_raw(
        "migrate-set-capabilities",
        Some(json!({ "capabilities": caps })),
    )
    .await
    .map_err(qmp_err("migrate-set-capabilities"))?;
    let mut params = json!({
        "downtime-limit": t.downtime_ms,
        "max-bandwidth": t.bandwidth.unwrap_or(UNLIMITED_BANDWIDTH),
    });
    if t.tls {
        params["tls-creds"] = json!(TLS_CREDS);
    }
    if let Some(h) = &t.tls_hostname {
        params["tls-hostname"] = json!(h);
    }
    qmp.execute_raw("migrate-set-parameters", Some(params))
        .await
        .map_err(qmp_err("migrate-set-parameters"))?;
    Ok(())
}

/// Destination: listen for the stream on `addr:port` (QEMU was started with
/// `-incoming defer`).
pub async fn listen(qmp: &Qmp, addr: &str, port: u16) -> Result<(), MigrateError> {
    qmp.execute_raw(
        "migrate-incoming",
        Some(json!({ "uri": tcp_uri(addr, port) })),
    )
    .await
    .map_err(qmp_err("migrate-incoming"))?;
    Ok(())
}

/// The `getfd` name of the migration stream's connection.
const STREAM_FD: &str = "corral-migration";

/// Source: send the VM's memory and device state over `conn`, a TCP connection to the
/// destination's listener that the caller made (and can shut down, should the link
/// hang: QEMU's own socket would wait for TCP's timeouts, many minutes).
pub async fn start(qmp: &Qmp, conn: BorrowedFd<'_>) -> Result<(), MigrateError> {
    qmp.getfd(STREAM_FD, conn).await.map_err(qmp_err("getfd"))?;
    let started = qmp
        .execute_raw("migrate", Some(json!({ "uri": format!("fd:{STREAM_FD}") })))
        .await
        .map_err(qmp_err("migrate"));
    if started.is_err() {
        let _ = qmp.closefd(STREAM_FD).await;
    }
    started.map(|_| ())
}

fn tcp_uri(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("tcp:[{host}]:{port}")
    } else {
        format!("tcp:{host}:{port}")
    }
}

/// Source: from now on the guest runs at the destination, its memory fetched on demand.
pub async fn start_postcopy(qmp: &Qmp) -> Result<(), MigrateError> {
    qmp.execute_raw("migrate-start-postcopy", None)
        .await
        .map_err(qmp_err("migrate-start-postcopy"))?;
    Ok(())
}

/// Source: abandons the migration; the guest goes on here.
pub async fn cancel(qmp: &Qmp) -> Result<(), MigrateError> {
    qmp.execute_raw("migrate_cancel", None)
        .await
        .map_err(qmp_err("migrate_cancel"))?;
    Ok(())
}

/// Tells the guest's network peers where it is now (gratuitous ARP / RARP from each
/// NIC), as QEMU also does by itself once after an incoming migration.
pub async fn announce(qmp: &Qmp) -> Result<(), MigrateError> {
    qmp.execute_raw(
        "announce-self",
        Some(json!({"initial": 50, "max": 550, "rounds": 5, "step": 100})),
    )
    .await
    .map_err(qmp_err("announce-self"))?;
    Ok(())
}

/// What `query-migrate` says, on either end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationInfo {
    /// `none`, `setup`, `active`, `postcopy-active`, `completed`, `failed`,
    /// `cancelling`, `cancelled`, `device`, `pre-switchover`, …
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub ram: Option<RamInfo>,
    #[serde(default)]
    pub expected_downtime: Option<u64>,
    /// The pause the guest saw, ms (once completed).
    #[serde(default)]
    pub downtime: Option<u64>,
    #[serde(default)]
    pub total_time: Option<u64>,
    #[serde(default)]
    pub error_desc: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RamInfo {
    #[serde(default)]
    pub transferred: u64,
    #[serde(default)]
    pub remaining: u64,
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub dirty_pages_rate: u64,
    #[serde(default)]
    pub page_size: u64,
    #[serde(default)]
    pub dirty_sync_count: u64,
}

impl MigrationInfo {
    pub fn status(&self) -> &str {
        self.status.as_deref().unwrap_or("none")
    }

    /// Bytes per second the guest dirties.
    pub fn dirty_rate(&self) -> u64 {
        self.ram
            .as_ref()
            .map_or(0, |r| r.dirty_pages_rate.saturating_mul(r.page_size))
    }
}

pub async fn info(qmp: &Qmp) -> Result<MigrationInfo, MigrateError> {
    qmp.execute("query-migrate", None)
        .await
        .map_err(qmp_err("query-migrate"))
}

/// Destination: an NBD server for the disks the source mirrors into, on `addr:port`,
/// over TLS with [`TLS_CREDS`].
pub async fn nbd_serve(qmp: &Qmp, addr: &str, port: u16) -> Result<(), MigrateError> {
    qmp.execute_raw(
        "nbd-server-start",
        Some(json!({
            "addr": {"type": "inet", "data": {"host": addr, "port": port.to_string()}},
            "tls-creds": TLS_CREDS,
        })),
    )
    .await
    .map_err(qmp_err("nbd-server-start"))?;
    Ok(())
}

/// The export name (and block export id) of disk `disk`.
pub fn export_name(disk: &str) -> String {
    format!("corral-migrate-{disk}")
}

/// Destination: exports `node` (the disk's format node) writable, for the mirror.
pub async fn nbd_export(qmp: &Qmp, disk: &str, node: &str) -> Result<(), MigrateError> {
    let name = export_name(disk);
    qmp.execute_raw(
        "block-export-add",
        Some(json!({
            "type": "nbd", "id": name, "node-name": node, "name": name, "writable": true,
        })),
    )
    .await
    .map_err(qmp_err("block-export-add"))?;
    Ok(())
}

/// Destination: ends the exports and the server (what is gone already is fine).
pub async fn nbd_stop(qmp: &Qmp, disks: &[String]) {
    for disk in disks {
        let _ = qmp
            .execute_raw(
                "block-export-del",
                Some(json!({"id": export_name(disk), "mode": "hard"})),
            )
            .await;
    }
    let _ = qmp.execute_raw("nbd-server-stop", None).await;
}

/// The node (on the source) that stands for the destination's export of `disk`.
fn target_node(disk: &str) -> String {
    format!("corral-migrate-{disk}")
}

/// The block job copying `disk`.
pub fn mirror_job(disk: &str) -> String {
    format!("corral-migrate-{disk}")
}

/// Source: starts copying `disk` (whose top node is `top`) into the destination's
/// export, over `conn`: a TCP connection to its NBD server that the caller made (see
/// [`start`] for why). `whole_chain`: everything the guest sees (the destination image
/// stands alone); otherwise only the top image (the destination has the same backing
/// chain below it). `speed`: bytes per second at most, none for no cap.
pub async fn mirror_start(
    qmp: &Qmp,
    disk: &str,
    top: &str,
    conn: BorrowedFd<'_>,
    tls_hostname: &str,
    (whole_chain, speed): (bool, Option<u64>),
) -> Result<(), MigrateError> {
    let target = target_node(disk);
    qmp.getfd(&target, conn).await.map_err(qmp_err("getfd"))?;
    let added = qmp
        .execute_raw(
            "blockdev-add",
            Some(json!({
                "driver": "raw",
                "node-name": target,
                "file": {
                    "driver": "nbd",
                    "server": {"type": "fd", "str": target},
                    "export": export_name(disk),
                    "tls-creds": TLS_CREDS,
                    "tls-hostname": tls_hostname,
                },
            })),
        )
        .await
        .map_err(qmp_err("blockdev-add"));
    if added.is_err() {
        let _ = qmp.closefd(&target).await;
    }
    added?;
    let started = qmp
        .execute_raw(
            "blockdev-mirror",
            Some(json!({
                "job-id": mirror_job(disk),
                "device": top,
                "target": target,
                "sync": if whole_chain { "full" } else { "top" },
                "auto-dismiss": true,
                "speed": speed.unwrap_or(0),
            })),
        )
        .await
        .map_err(qmp_err("blockdev-mirror"));
    if started.is_err() {
        let _ = qmp
            .execute_raw("blockdev-del", Some(json!({ "node-name": target })))
            .await;
    }
    started.map(|_| ())
}

/// A mirror's state, from `query-block-jobs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorState {
    pub disk: String,
    pub ready: bool,
    pub offset: u64,
    pub len: u64,
    /// `running`, `ready`, `concluded`, …
    pub status: String,
    pub error: Option<String>,
}

/// The state of each of our mirrors that still exists.
pub async fn mirrors(qmp: &Qmp) -> Result<Vec<MirrorState>, MigrateError> {
    #[derive(Deserialize)]
    struct Job {
        device: String,
        #[serde(default)]
        ready: bool,
        #[serde(default)]
        offset: u64,
        #[serde(default)]
        len: u64,
        #[serde(default)]
        status: String,
        #[serde(default)]
        error: Option<String>,
    }
    let jobs: Vec<Job> = qmp
        .execute("query-block-jobs", None)
        .await
        .map_err(qmp_err("query-block-jobs"))?;
    Ok(jobs
        .into_iter()
        .filter_map(|j| {
            let disk = j.device.strip_prefix("corral-migrate-")?.to_string();
            Some(MirrorState {
                disk,
                ready: j.ready,
                offset: j.offset,
                len: j.len,
                status: j.status,
                error: j.error,
            })
        })
        .collect())
}

/// Source: ends `disk`'s mirror. On a ready job after the migration completed this is
/// the graceful end (everything is at the destination); otherwise an abort. Either way
/// the guest keeps using its own image here, and the target node goes.
pub async fn mirror_end(qmp: &Qmp, disk: &str, force: bool) -> Result<(), MigrateError> {
    let job = mirror_job(disk);
    let r = qmp
        .execute_raw(
            "block-job-cancel",
            Some(json!({"device": job, "force": force})),
        )
        .await;
    match r {
        Ok(_) => {}
        // No such job (ended already): nothing to end.
        Err(QmpError::Command { ref class, .. }) if class == "DeviceNotActive" => {}
        Err(e) => return Err(qmp_err("block-job-cancel")(e)),
    }
    wait_job_gone(qmp, &job, Duration::from_secs(60)).await?;
    let _ = qmp
        .execute_raw(
            "blockdev-del",
            Some(json!({ "node-name": target_node(disk) })),
        )
        .await;
    Ok(())
}

async fn wait_job_gone(qmp: &Qmp, job: &str, limit: Duration) -> Result<(), MigrateError> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let jobs: Vec<Value> = qmp
            .execute("query-block-jobs", None)
            .await
            .map_err(qmp_err("query-block-jobs"))?;
        if !jobs.iter().any(|j| j["device"] == job) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(MigrateError::Reply {
                command: "block-job-cancel",
                detail: format!("job {job} did not end within {} s", limit.as_secs()),
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_bracket_ipv6() {
        assert_eq!(tcp_uri("10.0.0.2", 49152), "tcp:10.0.0.2:49152");
        assert_eq!(tcp_uri("fd00::2", 1), "tcp:[fd00::2]:1");
    }

    #[test]
    fn dirty_rate_is_pages_times_page_size() {
        let info: MigrationInfo = serde_json::from_value(json!({
            "status": "active",
            "ram": {"transferred": 10, "remaining": 5, "total": 20,
                    "dirty-pages-rate": 100, "page-size": 4096, "dirty-sync-count": 2},
            "expected-downtime": 30
        }))
        .expect("decodes");
        assert_eq!(info.status(), "active");
        assert_eq!(info.dirty_rate(), 409_600);
        assert_eq!(info.expected_downtime, Some(30));
        assert_eq!(MigrationInfo::default().status(), "none");
    }
}
