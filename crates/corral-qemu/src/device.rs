//! What disk and NIC hot-plug share: waiting for the guest to release a device,
//! placing a new device where the machine can take it, and running a multi-step
//! QMP operation to completion whatever its caller does.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use crate::qmp::{Event, Qmp, QmpError};

/// Why waiting for a device's removal ended without it.
#[derive(Debug)]
pub(crate) enum WaitError {
    /// The guest did not release it in time; the unplug request stays pending.
    TimedOut,
    /// A QMP step (`command`) failed, or the connection closed.
    Qmp(&'static str, QmpError),
}

/// Wait for `DEVICE_DELETED` naming `device`. QEMU also sends one for the
/// device's virtio backend (a QOM path, no `device` member); that one is skipped.
/// Subscribe (`events`) before sending `device_del`: the event may come first.
pub(crate) async fn wait_deleted(
    qmp: &Qmp,
    events: &mut tokio::sync::broadcast::Receiver<Event>,
    device: &str,
    timeout: Duration,
) -> Result<(), WaitError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => return Err(WaitError::TimedOut),
            Ok(Ok(ev)) if is_deleted(&ev, device) => return Ok(()),
            Ok(Ok(_)) => {}
            // Missed some events: ask QEMU instead whether the device is still there.
            Ok(Err(RecvError::Lagged(_))) => {
                let exists = device_exists(qmp, device)
                    .await
                    .map_err(|e| WaitError::Qmp("qom-list", e))?;
                if !exists {
                    return Ok(());
                }
            }
            Ok(Err(RecvError::Closed)) => {
                return Err(WaitError::Qmp("device_del", QmpError::Disconnected))
            }
        }
    }
}

/// `device_del` of `device`, then wait until the guest has released it. `Ok(false)`:
/// QEMU had no such device. A request still pending from an earlier timed-out unplug
/// is waited for again rather than failed.
pub(crate) async fn unplug(qmp: &Qmp, device: &str, timeout: Duration) -> Result<bool, WaitError> {
    // Subscribe first: the event may arrive before device_del's reply.
    let mut events = qmp.events();
    match qmp
        .execute_raw("device_del", Some(json!({ "id": device })))
        .await
    {
        Ok(_) => {}
        Err(e) if e.is_class("DeviceNotFound") => return Ok(false),
        Err(QmpError::Command { desc, .. })
            if desc.contains("already in the process of unplug") => {}
        Err(e) => return Err(WaitError::Qmp("device_del", e)),
    }
    wait_deleted(qmp, &mut events, device, timeout).await?;
    Ok(true)
}

pub(crate) fn is_deleted(ev: &Event, device: &str) -> bool {
    ev.name == "DEVICE_DELETED" && ev.data.get("device").and_then(Value::as_str) == Some(device)
}

/// Whether a device with this id exists (user-created devices live under
/// `/machine/peripheral`).
pub(crate) async fn device_exists(qmp: &Qmp, device: &str) -> Result<bool, QmpError> {
    let children: Vec<Value> = qmp
        .execute("qom-list", Some(json!({ "path": "/machine/peripheral" })))
        .await?;
    Ok(children
        .iter()
        .any(|c| c.get("name").and_then(Value::as_str) == Some(device)))
}

/// `device_add` of `args`. With no `ports` (an i440FX `pc`) QEMU picks a free slot of
/// the root bus, which supports ACPI hot-plug. With ports (q35, whose root bus does
/// not take hot-plugged devices) the device goes into the first empty one of the
/// machine's spare PCIe root ports (see [`crate::argv::hotplug_ports`]).
pub(crate) async fn add_in_free_port(
    qmp: &Qmp,
    args: Value,
    ports: &[String],
) -> Result<(), QmpError> {
    if ports.is_empty() {
        return qmp.execute_raw("device_add", Some(args)).await.map(drop);
    }
    let mut last = None;
    for port in ports {
        let mut args = args.clone();
        args["bus"] = json!(port);
        match qmp.execute_raw("device_add", Some(args)).await {
            Ok(_) => return Ok(()),
            // A root port has one slot: taken means try the next port.
            Err(e @ QmpError::Command { .. }) if slot_taken(&e) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(QmpError::Disconnected))
}

fn slot_taken(e: &QmpError) -> bool {
    matches!(e, QmpError::Command { desc, .. } if desc.contains("not available") || desc.contains("in use"))
}

/// Run `op` in its own task and wait for it, so dropping the caller's future
/// cannot interrupt a multi-step operation halfway. `interrupted` is the error
/// when the task was stopped (runtime shutdown).
pub(crate) async fn run_to_completion<F, E>(op: F, interrupted: impl FnOnce() -> E) -> Result<(), E>
where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: Send + 'static,
{
    match tokio::spawn(op).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(interrupted()),
    }
}
