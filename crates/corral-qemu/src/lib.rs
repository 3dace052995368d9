//! The QEMU driver: everything Corral knows about running one QEMU process.
//!
//! - [`agent`]: a client for the guest agent (qemu-ga) inside a VM.
//! - [`argv`]: the command line, a pure function of the spec (golden-tested).
//! - [`backup`]: point-in-time copies of a running VM's disks.
//! - [`hotplug`], [`nic`]: disks and NICs plugged into (and out of) a running VM.
//! - [`launch`]: start QEMU detached and confined, and find it again after a restart.
//! - [`live`]: snapshots of a running VM: overlays, merges by block job, memory state.
//! - [`migrate`]: live migration: TLS credentials, the stream, NBD + block mirror.
//! - [`qmp`]: an async QMP client (id-matched replies, event stream, timeouts).
//! - [`probe`]: which accelerator really works on this host.
//! - [`cgroup`]: one cgroup per VM.

pub mod agent;
pub mod argv;
pub mod backup;
pub mod cgroup;
mod device;
pub mod hotplug;
pub mod launch;
pub mod live;
pub mod migrate;
pub mod nic;
pub mod placement;
pub mod probe;
pub mod qmp;
#[cfg(test)]
mod test_peer;
