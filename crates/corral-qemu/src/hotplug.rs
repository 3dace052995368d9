//! Disk hot-plug on a running, confined QEMU.
//!
//! Corral's QEMU drops to an unprivileged uid and chroots into its runtime
//! directory right after start-up, so it cannot open an image by path later.
//! Instead the daemon (root) opens the image and passes the descriptor over
//! QMP into a new *fd set* (`add-fd`, tagged with the node name); QEMU then
//! opens `/dev/fdset/<id>`, which it serves by duplicating a descriptor from
//! the set.
//!
//! What QEMU 7.2 needs (checked against 7.2.22 by `tests/hotplug_real.rs`):
//!
//! - `/dev/fdset/N` is served only from a descriptor whose access mode equals
//!   the one QEMU asks for (`monitor_fdset_dup_fd_add` compares `O_ACCMODE`;
//!   anything else fails with `EACCES`, "Could not dup FD"). A read-write disk
//!   (qcow2 or raw) is opened `O_RDWR` by the `file` driver; a read-only one
//!   `O_RDONLY`. A live snapshot later reopens the frozen image read-only, so a
//!   writable disk's set holds one descriptor of each mode.
//! - Image locking needs nothing extra: `file-posix` takes its OFD locks on
//!   the image descriptor itself; QEMU holds exactly two descriptors on an
//!   attached image, the set's own and the one duplicate (no lock fd, no reopen).
//! - Nothing reopens the image in this flow: `blockdev-add` leaves
//!   `auto-read-only` off, and `block_resize` truncates through the open
//!   descriptor. A reopen to read-only (a live snapshot freezing the image)
//!   takes the set's read-only descriptor.
//! - The duplicate QEMU opens belongs to the block node: `blockdev-del` closes
//!   it, after which `remove-fd` closes the set's own descriptor and the set
//!   disappears. Removing the set first would only mark it; QEMU keeps the
//!   descriptor until the node goes. The set also survives a QMP reconnect
//!   while its descriptor is in use, so a restarted daemon still finds it by
//!   its tag.
//! - QEMU 7.2 frees fd-set descriptors only while the VM *runs*: a
//!   `remove-fd` on a paused (or not yet started) VM merely marks them, and the
//!   set stays listed, holding the image open, until a `remove-fd` on it is
//!   repeated while the VM runs. So a rollback on a paused VM leaves such a
//!   marked set behind; [`attach_disk`] and [`detach_disk`] remove every set
//!   tagged with their node that no block node uses, which finishes the job.
//!
//! Every operation runs to completion in its own task: a caller that gives up
//! (timeout, cancellation) never leaves a disk half attached or half detached.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::device::{run_to_completion, WaitError};
use crate::qmp::{Qmp, QmpError};
use corral_api::DiskFormat;
use serde::Deserialize;
use serde_json::{json, Value};

/// How long [`detach_disk`] waits for the guest to release the device. A Linux
/// guest answers the ACPI unplug request within about a second.
pub const UNPLUG_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest node name QEMU accepts (its `node_name` buffer holds 32 bytes).
const MAX_NODE_NAME: usize = 31;

/// The bus a hot-plugged disk sits on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HotBus {
    /// A `virtio-blk-pci` device; on `pc` it lands in a free slot of the root
    /// bus, which supports ACPI hot-plug.
    #[default]
    VirtioBlk,
}

impl HotBus {
    fn device_driver(self) -> &'static str {
        match self {
            HotBus::VirtioBlk => "virtio-blk-pci",
        }
    }
}

/// A disk to hot-plug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotDisk {
    /// The block node name, e.g. `disk3`. The guest device gets the id
    /// `<node>-dev` and the fd set the tag `<node>`, like cold-plugged disks.
    pub node: String,
    /// The image, opened by the daemon (so it may lie anywhere QEMU cannot reach).
    pub path: PathBuf,
    /// The image format.
    pub format: DiskFormat,
    /// Attach read-only: the image is opened `O_RDONLY` and the guest sees a
    /// read-only disk.
    pub read_only: bool,
    /// The device model.
    pub bus: HotBus,
    /// Spare PCIe root ports to plug into (q35); empty on `pc`, whose root bus
    /// takes hot-plugged devices itself. See [`crate::argv::hotplug_ports`].
    pub ports: Vec<String>,
}

impl HotDisk {
    /// The guest device's qdev id.
    pub fn device_id(&self) -> String {
        device_id(&self.node)
    }
}

/// One block node, from `query-named-block-nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockNode {
    /// The node name (QEMU's own nodes are named `#block…`).
    pub node_name: String,
    /// The driver: `qcow2`, `raw`, `file`, …
    pub driver: String,
    /// The file QEMU believes it has open; `/dev/fdset/<id>` for passed descriptors.
    pub file: String,
    /// Whether the node is read-only.
    pub read_only: bool,
    /// The size the guest sees, in bytes.
    pub virtual_size: u64,
}

/// Everything that can go wrong hot-plugging a disk.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// The node name is not one QEMU accepts (checked before anything is done).
    #[error("invalid disk node name {node:?}: {reason}")]
    InvalidNode {
        /// The rejected name.
        node: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The daemon could not open the image.
    #[error("cannot open disk image {} {mode}", path.display())]
    Open {
        /// The image.
        path: PathBuf,
        /// `read-write` or `read-only`.
        mode: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A QMP step failed. During attach, what was done before it has been undone.
    #[error("QMP `{command}` failed for disk {node}")]
    Qmp {
        /// The QMP command that failed.
        command: &'static str,
        /// The disk's node name.
        node: String,
        /// QEMU's (or the connection's) error.
        #[source]
        source: QmpError,
    },
    /// The guest did not release the device in time. The unplug request stays
    /// pending in QEMU and the disk stays attached; calling [`detach_disk`]
    /// again later finishes the job once the guest lets go.
    #[error(
        "the guest did not release device {device} within {timeout:?} \
         (no ACPI hot-plug support, or it refused); the disk is still attached"
    )]
    UnplugTimeout {
        /// The guest device's id.
        device: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// Nothing of the disk exists: no device, no block node, no fd set.
    #[error("disk {node} is not attached")]
    NotAttached {
        /// The node name.
        node: String,
    },
    /// The operation's task was stopped before finishing (runtime shutdown).
    #[error("hot-plug operation on disk {node} was interrupted")]
    Interrupted {
        /// The node name.
        node: String,
    },
}

impl HotplugError {
    /// The underlying QMP error, if this is one.
    pub fn qmp(&self) -> Option<&QmpError> {
        match self {
            HotplugError::Qmp { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Attach `spec` to the running VM: open the image, pass it in as a new fd set,
/// `blockdev-add` the node over `/dev/fdset/<id>`, `device_add` the device.
///
/// On any failure everything done so far is undone (`blockdev-del`,
/// `remove-fd`), so the VM is left as it was — except that on a VM that is
/// not running QEMU 7.2 keeps the removed fd set until it runs (see the module
/// docs; the next attach or detach of this node clears it). The guest needs no
/// cooperation.
pub async fn attach_disk(qmp: &Qmp, spec: &HotDisk) -> Result<(), HotplugError> {
    validate_node(&spec.node)?;
    let (qmp, spec) = (qmp.clone(), spec.clone());
    let node = spec.node.clone();
    run_to_completion(async move { attach(&qmp, &spec).await }, || {
        HotplugError::Interrupted { node }
    })
    .await
}

/// Detach disk `node`: `device_del`, wait up to [`UNPLUG_TIMEOUT`] for the guest
/// to release it (`DEVICE_DELETED`), `blockdev-del`, and remove its fd set.
///
/// Safe to repeat: steps already done (device gone, node gone, set gone) are
/// skipped, so a retry after [`HotplugError::UnplugTimeout`] completes the job.
/// Fails with [`HotplugError::NotAttached`] when none of them existed.
pub async fn detach_disk(qmp: &Qmp, node: &str) -> Result<(), HotplugError> {
    detach_disk_with_timeout(qmp, node, UNPLUG_TIMEOUT).await
}

/// [`detach_disk`] with an explicit wait for the guest.
pub async fn detach_disk_with_timeout(
    qmp: &Qmp,
    node: &str,
    timeout: Duration,
) -> Result<(), HotplugError> {
    validate_node(node)?;
    let (qmp, owned) = (qmp.clone(), node.to_owned());
    let interrupted = || HotplugError::Interrupted {
        node: node.to_owned(),
    };
    run_to_completion(
        async move { detach(&qmp, &owned, timeout).await },
        interrupted,
    )
    .await
}

/// Grow (or, where the format allows, shrink) disk `node` (its guest device's
/// top image) to `new_size_bytes` with `block_resize`. The guest is told of the new capacity at once.
pub async fn resize_disk(qmp: &Qmp, node: &str, new_size_bytes: u64) -> Result<(), HotplugError> {
    validate_node(node)?;
    // After a live snapshot the disk's top is an overlay node, not `node` itself.
    let top = crate::live::top_node(qmp, node)
        .await
        .map_err(|e| match e {
            crate::live::LiveError::Qmp { source, .. } => qmp_err("query-block", node)(source),
            _ => HotplugError::NotAttached {
                node: node.to_owned(),
            },
        })?;
    let args = json!({ "node-name": top, "size": new_size_bytes });
    qmp.execute_raw("block_resize", Some(args))
        .await
        .map(drop)
        .map_err(qmp_err("block_resize", node))
}

/// Every named block node (`query-named-block-nodes`, flat: format nodes and
/// their protocol children alike).
pub async fn list_block(qmp: &Qmp) -> Result<Vec<BlockNode>, QmpError> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "node-name")]
        node_name: String,
        drv: String,
        file: String,
        ro: bool,
        image: RawImage,
    }
    #[derive(Deserialize)]
    struct RawImage {
        #[serde(rename = "virtual-size")]
        virtual_size: u64,
    }
    let raw: Vec<Raw> = qmp
        .execute("query-named-block-nodes", Some(json!({ "flat": true })))
        .await?;
    Ok(raw
        .into_iter()
        .map(|r| BlockNode {
            node_name: r.node_name,
            driver: r.drv,
            file: r.file,
            read_only: r.ro,
            virtual_size: r.image.virtual_size,
        })
        .collect())
}

impl BlockNode {
    /// The fd set this node's file is opened from, if it is `/dev/fdset/<id>`.
    pub fn fdset_id(&self) -> Option<u32> {
        self.file.strip_prefix("/dev/fdset/")?.parse().ok()
    }
}

async fn attach(qmp: &Qmp, spec: &HotDisk) -> Result<(), HotplugError> {
    let node = spec.node.as_str();
    let image = open_image(spec).await?;
    let block_device = is_block_device(&image);
    sweep_stale_fdsets(qmp, node).await;
    let added = qmp
        .add_fd(std::os::fd::AsFd::as_fd(&image), None, node)
        .await
        .map_err(qmp_err("add-fd", node))?;
    // QEMU holds its own copy now; keeping ours would pin the image after detach.
    drop(image);
    // A writable disk also gets a read-only descriptor, so QEMU can reopen it read-only
    // when a live snapshot freezes it.
    if !spec.read_only {
        let read_only = HotDisk {
            read_only: true,
            ..spec.clone()
        };
        let second = match open_image(&read_only).await {
            Ok(ro) => qmp
                .add_fd(std::os::fd::AsFd::as_fd(&ro), Some(added.fdset_id), node)
                .await
                .map_err(qmp_err("add-fd", node)),
            Err(e) => Err(e),
        };
        if let Err(e) = second {
            undo_fdset(qmp, node, added.fdset_id).await;
            return Err(e);
        }
    }

    let blockdev = blockdev_args(spec, added.fdset_id, block_device);
    if let Err(e) = qmp.execute_raw("blockdev-add", Some(blockdev)).await {
        undo_fdset(qmp, node, added.fdset_id).await;
        return Err(qmp_err("blockdev-add", node)(e));
    }
    if let Err(e) = crate::device::add_in_free_port(qmp, device_args(spec), &spec.ports).await {
        undo_blockdev(qmp, node).await;
        undo_fdset(qmp, node, added.fdset_id).await;
        return Err(qmp_err("device_add", node)(e));
    }
    tracing::info!(node, path = %spec.path.display(), fdset = added.fdset_id, "disk hot-plugged");
    Ok(())
}

async fn detach(qmp: &Qmp, node: &str, timeout: Duration) -> Result<(), HotplugError> {
    let device = device_id(node);
    let device_found = match crate::device::unplug(qmp, &device, timeout).await {
        Ok(found) => found,
        Err(WaitError::TimedOut) => return Err(HotplugError::UnplugTimeout { device, timeout }),
        Err(WaitError::Qmp(command, e)) => return Err(qmp_err(command, node)(e)),
    };

    // The disk is its node, plus the overlays live snapshots put on top of it.
    let owned = |nodes: Vec<BlockNode>| {
        nodes
            .into_iter()
            .find(|n| crate::live::owned_by(&n.node_name, node))
    };
    let list = || async {
        list_block(qmp)
            .await
            .map_err(qmp_err("query-named-block-nodes", node))
    };
    let node_found = owned(list().await?).is_some();
    if node_found {
        crate::live::release_unused(qmp, node).await;
        // Whatever is left is still in use somehow: report QEMU's own reason.
        if let Some(left) = owned(list().await?) {
            qmp.execute_raw("blockdev-del", Some(json!({ "node-name": left.node_name })))
                .await
                .map_err(qmp_err("blockdev-del", node))?;
        }
    }

    let mut sets_found = false;
    for set in qmp
        .query_fdsets()
        .await
        .map_err(qmp_err("query-fdsets", node))?
    {
        if set.fds.iter().any(|fd| fd.opaque.as_deref() == Some(node)) {
            sets_found = true;
            qmp.remove_fd(set.fdset_id, None)
                .await
                .map_err(qmp_err("remove-fd", node))?;
        }
    }

    if !(device_found || node_found || sets_found) {
        return Err(HotplugError::NotAttached {
            node: node.to_owned(),
        });
    }
    tracing::info!(node, "disk detached");
    Ok(())
}

/// Remove fd sets tagged `node` while no block node of that name exists.
///
/// They are leftovers of a `remove-fd` issued while the VM was not running:
/// QEMU 7.2 frees fd-set descriptors only while the VM runs
/// (`monitor_fdset_cleanup` checks `runstate_is_running()`), and otherwise
/// merely marks them removed — the set stays listed and keeps the image open
/// until a later `remove-fd` on it runs while the VM runs. Best effort: a
/// failure here is logged and the attach goes on.
async fn sweep_stale_fdsets(qmp: &Qmp, node: &str) {
    let sweep = async {
        if list_block(qmp).await?.iter().any(|n| n.node_name == node) {
            // In use (or a duplicate name, which blockdev-add will refuse).
            return Ok(());
        }
        for set in qmp.query_fdsets().await? {
            if set.fds.iter().any(|fd| fd.opaque.as_deref() == Some(node)) {
                tracing::debug!(node, fdset_id = set.fdset_id, "removing a stale fd set");
                qmp.remove_fd(set.fdset_id, None).await?;
            }
        }
        Ok::<(), QmpError>(())
    };
    if let Err(e) = sweep.await {
        tracing::warn!(node, error = %e, "cannot sweep stale fd sets; going on");
    }
}

/// Open the image with the access mode QEMU will ask `/dev/fdset/<id>` for.
async fn open_image(spec: &HotDisk) -> Result<std::fs::File, HotplugError> {
    let mode = if spec.read_only {
        "read-only"
    } else {
        "read-write"
    };
    let opened = tokio::fs::OpenOptions::new()
        .read(true)
        .write(!spec.read_only)
        .open(&spec.path)
        .await;
    match opened {
        Ok(file) => Ok(file.into_std().await),
        Err(source) => Err(HotplugError::Open {
            path: spec.path.clone(),
            mode,
            source,
        }),
    }
}

/// Whether the opened image is a block device (an LV): it then needs `host_device`.
fn is_block_device(image: &std::fs::File) -> bool {
    use std::os::unix::fs::FileTypeExt;
    image
        .metadata()
        .is_ok_and(|m| m.file_type().is_block_device())
}

/// `blockdev-add` arguments: the format node over a `file` (or, for a block
/// device, `host_device`) node reading the fd set. Same shape as the
/// cold-plugged disks' `-blockdev` (see `argv`).
fn blockdev_args(spec: &HotDisk, fdset_id: u32, block_device: bool) -> Value {
    json!({
        "node-name": spec.node,
        "driver": spec.format.as_str(),
        "read-only": spec.read_only,
        "discard": "unmap",
        "file": {
            "driver": crate::argv::protocol_driver(block_device),
            "filename": format!("/dev/fdset/{fdset_id}"),
            "read-only": spec.read_only,
        },
    })
}

fn device_args(spec: &HotDisk) -> Value {
    json!({
        "driver": spec.bus.device_driver(),
        "drive": spec.node,
        "id": spec.device_id(),
    })
}

fn device_id(node: &str) -> String {
    format!("{node}-dev")
}

/// Roll back a `blockdev-add`; failures are logged, the original error wins.
async fn undo_blockdev(qmp: &Qmp, node: &str) {
    if let Err(e) = qmp
        .execute_raw("blockdev-del", Some(json!({ "node-name": node })))
        .await
    {
        tracing::warn!(node, error = %e, "rollback: blockdev-del failed; the node may remain");
    }
}

/// Roll back an `add-fd`; failures are logged, the original error wins.
async fn undo_fdset(qmp: &Qmp, node: &str, fdset_id: u32) {
    if let Err(e) = qmp.remove_fd(fdset_id, None).await {
        tracing::warn!(node, fdset_id, error = %e, "rollback: remove-fd failed; the fd set may remain");
    }
}

fn qmp_err(command: &'static str, node: &str) -> impl FnOnce(QmpError) -> HotplugError {
    let node = node.to_owned();
    move |source| HotplugError::Qmp {
        command,
        node,
        source,
    }
}

/// QEMU's rules for node names (`id_wellformed`, 31 bytes), checked up front so
/// that the derived device id and fd-set tag are well-formed too.
fn validate_node(node: &str) -> Result<(), HotplugError> {
    let invalid = |reason| {
        Err(HotplugError::InvalidNode {
            node: node.to_owned(),
            reason,
        })
    };
    let mut chars = node.chars();
    match chars.next() {
        None => return invalid("empty"),
        Some(c) if !c.is_ascii_alphabetic() => return invalid("must start with a letter"),
        Some(_) => {}
    }
    if node.len() > MAX_NODE_NAME {
        return invalid("longer than 31 characters");
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
        return invalid("only letters, digits, '-', '.' and '_' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
