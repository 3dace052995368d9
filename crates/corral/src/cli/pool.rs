//! `corral pool …`: where volumes live.
//!
//! As for the VM verbs, clap checks all it can here (which flags go with which driver),
//! so a mistyped command exits 2 before the daemon hears of it.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::output::OutputArgs;

const POOL_EXAMPLES: &str = "\
Examples:
  corral pool create fast --path /srv/fast
  corral pool create nfs --path /mnt/nfs/corral --shared
  corral pool create thin --driver lvm-thin --volume-group vg0 --thin-pool pool0
  corral pool show fast";

#[derive(Debug, Subcommand)]
#[command(after_help = POOL_EXAMPLES)]
pub enum PoolCommand {
    /// Define a pool: a directory (dir) or an LVM thin pool (lvm-thin)
    Create(PoolCreateArgs),
    /// List pools with their space and health
    #[command(visible_alias = "ls")]
    List(OutputArgs),
    /// Show a pool: driver, capabilities, space, and files no volume accounts for
    Show(PoolNameArgs),
    /// Delete an empty pool (files Corral did not make are never removed)
    #[command(visible_alias = "rm")]
    Delete(PoolDeleteArgs),
}

/// `--driver` values; the wire takes the name as a string, spelled as clap prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PoolDriverArg {
    // Volumes are files in a directory (qcow2 or raw).
    Dir,
    // Volumes are thin logical volumes in an LVM thin pool (raw).
    LvmThin,
}

impl PoolDriverArg {
    /// The driver's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            PoolDriverArg::Dir => "dir",
            PoolDriverArg::LvmThin => "lvm-thin",
        }
    }
}

#[derive(Debug, Args)]
pub struct PoolCreateArgs {
    /// Name of the pool: 1-63 lowercase letters, digits and '-'.
    pub name: String,

    /// How the pool stores volumes [default: lvm-thin with --volume-group, else dir].
    // No clap default: clap's `required_if_eq` ignores defaults, so the driver is
    // inferred in `driver()` and the flags below are tied to each other instead.
    #[arg(long, value_enum)]
    pub driver: Option<PoolDriverArg>,

    /// dir: the directory holding the volumes (relative to the current directory, or
    /// absolute).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "volume_group",
        conflicts_with_all = ["volume_group", "thin_pool"]
    )]
    pub path: Option<PathBuf>,

    /// lvm-thin: the volume group.
    #[arg(
        long,
        value_name = "VG",
        required_if_eq("driver", "lvm-thin"),
        requires = "thin_pool"
    )]
    pub volume_group: Option<String>,

    /// lvm-thin: the thin pool LV inside the volume group, made beforehand (e.g.
    /// `lvcreate --type thin-pool -L 100G -n pool0 vg0`); volumes are thin LVs in it.
    #[arg(long, value_name = "LV", requires = "volume_group")]
    pub thin_pool: Option<String>,

    /// The directory is shared by several hosts (e.g. NFS), so any of them may use its
    /// volumes.
    #[arg(long, conflicts_with = "volume_group")]
    pub shared: bool,

    #[command(flatten)]
    pub output: OutputArgs,
}

impl PoolCreateArgs {
    /// The driver asked for, or the one the other flags imply.
    pub fn driver(&self) -> PoolDriverArg {
        match (self.driver, &self.volume_group) {
            (Some(driver), _) => driver,
            (None, Some(_)) => PoolDriverArg::LvmThin,
            (None, None) => PoolDriverArg::Dir,
        }
    }
}

#[derive(Debug, Args)]
pub struct PoolNameArgs {
    /// Name of the pool.
    pub name: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct PoolDeleteArgs {
    /// Name of the pool.
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::{parse, usage_error};
    use crate::cli::Command;

    #[test]
    fn pool_create_dir() {
        match parse(&["pool", "create", "fast", "--path", "srv", "--shared"]).unwrap() {
            Command::Pool(PoolCommand::Create(a)) => {
                assert_eq!(a.driver(), PoolDriverArg::Dir);
                assert_eq!(a.path, Some(PathBuf::from("srv")));
                assert!(a.shared);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pool_create_lvm_thin() {
        let argv = [
            "pool",
            "create",
            "thin",
            "--driver",
            "lvm-thin",
            "--volume-group",
            "vg0",
            "--thin-pool",
            "pool0",
        ];
        match parse(&argv).unwrap() {
            Command::Pool(PoolCommand::Create(a)) => {
                assert_eq!(a.driver().name(), "lvm-thin");
                assert_eq!(a.volume_group.as_deref(), Some("vg0"));
                assert_eq!(a.thin_pool.as_deref(), Some("pool0"));
                assert!(a.path.is_none());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pool_create_flags_must_fit_the_driver() {
        usage_error(&["pool", "create", "p"], "--path");
        usage_error(
            &["pool", "create", "p", "--driver", "lvm-thin"],
            "--volume-group",
        );
        usage_error(
            &[
                "pool",
                "create",
                "p",
                "--driver",
                "lvm-thin",
                "--volume-group",
                "v",
            ],
            "--thin-pool",
        );
        let argv = ["pool", "create", "p", "--path", "/a", "--volume-group", "v"];
        usage_error(&argv, "--volume-group");
        usage_error(
            &["pool", "create", "p", "--path", "/a", "--thin-pool", "t"],
            "--thin-pool",
        );
        let argv = [
            "pool",
            "create",
            "p",
            "--driver",
            "lvm-thin",
            "--volume-group",
            "v",
            "--thin-pool",
            "t",
            "--shared",
        ];
        usage_error(&argv, "--shared");
        usage_error(
            &["pool", "create", "p", "--driver", "zfs", "--path", "/a"],
            "zfs",
        );
        usage_error(&["pool", "create", "p", "--driver", "dir"], "--path");
    }

    #[test]
    fn pool_driver_is_inferred() {
        let argv = [
            "pool",
            "create",
            "thin",
            "--volume-group",
            "vg0",
            "--thin-pool",
            "p0",
        ];
        match parse(&argv).unwrap() {
            Command::Pool(PoolCommand::Create(a)) => assert_eq!(a.driver(), PoolDriverArg::LvmThin),
            other => panic!("{other:?}"),
        }
    }
}
