//! `corral snapshot …`: a VM's snapshot tree.

use clap::{Args, Subcommand};

use crate::output::OutputArgs;

const SNAPSHOT_EXAMPLES: &str = "\
Examples:
  corral snapshot create web before-upgrade --description \"kernel 6.1\"
  corral snapshot create web mid-install --memory
  corral snapshot create web nightly --quiesce
  corral snapshot list web
  corral snapshot revert web before-upgrade
  corral snapshot delete web before-upgrade";

#[derive(Debug, Subcommand)]
#[command(after_help = SNAPSHOT_EXAMPLES)]
pub enum SnapshotCommand {
    /// Take a snapshot of a VM's disks (stopped or running; --memory also saves its RAM)
    Create(SnapshotCreateArgs),
    /// Show the VM's snapshots as a tree, with the current position marked
    #[command(visible_alias = "ls")]
    List(SnapshotListArgs),
    /// Return the VM to a snapshot (the state since the current one is dropped); a
    /// running VM is powered off first and started again, from saved memory if any
    Revert(SnapshotNameArgs),
    /// Delete a snapshot; its data is merged into its neighbours, nothing else is lost
    #[command(visible_alias = "rm")]
    Delete(SnapshotNameArgs),
}

#[derive(Debug, Args)]
pub struct SnapshotCreateArgs {
    /// The VM.
    pub vm: String,
    /// Name of the snapshot: 1-63 lowercase letters, digits and '-'.
    pub name: String,
    /// A note kept with the snapshot.
    #[arg(long)]
    pub description: Option<String>,
    /// Also save the running guest's RAM and device state; it is paused while that is
    /// written, and reverting resumes it exactly where it was.
    #[arg(long)]
    pub memory: bool,
    /// Freeze the guest's file systems through its guest agent while the disks switch,
    /// and fail (making nothing) if that cannot be done. Without --quiesce or
    /// --no-quiesce, a running VM with a connected agent is quiesced, others are not.
    #[arg(long, conflicts_with = "no_quiesce")]
    pub quiesce: bool,
    /// Never freeze the guest's file systems (the snapshot is crash-consistent).
    #[arg(long)]
    pub no_quiesce: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

impl SnapshotCreateArgs {
    /// The request's `quiesce`: absent (when an agent can), `true` or `false`.
    pub fn quiesce(&self) -> Option<bool> {
        match (self.quiesce, self.no_quiesce) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

#[derive(Debug, Args)]
pub struct SnapshotListArgs {
    /// The VM.
    pub vm: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct SnapshotNameArgs {
    /// The VM.
    pub vm: String,
    /// The snapshot.
    pub name: String,
    #[command(flatten)]
    pub output: OutputArgs,
}
