//! `corral volume …`: disks that outlive VMs, attached, detached and grown.
//!
//! Sizes are checked here against the daemon's limits, so a typo is a usage error
//! (exit 2) rather than a round trip.

use clap::{Args, Subcommand, ValueEnum};

use corral_api::{format_size, parse_size, DiskFormat, MAX_VOLUME_BYTES, MIN_VOLUME_BYTES};

use crate::output::OutputArgs;

const VOLUME_EXAMPLES: &str = "\
Examples:
  corral volume create data --size 10G --pool fast
  corral volume attach data web
  corral volume resize data --size +5G
  corral create db --disk size=4G --disk vol=data
  corral volume detach data web";

#[derive(Debug, Subcommand)]
#[command(after_help = VOLUME_EXAMPLES)]
pub enum VolumeCommand {
    /// Create a standalone volume (it outlives any VM it is attached to)
    Create(VolumeCreateArgs),
    /// List volumes, with the VM using each
    #[command(visible_alias = "ls")]
    List(VolumeListArgs),
    /// Show a volume
    Show(VolumeNameArgs),
    /// Grow a volume, online when its VM is running (volumes never shrink)
    Resize(VolumeResizeArgs),
    /// Delete a volume no VM uses, and its data
    #[command(visible_alias = "rm")]
    Delete(VolumeDeleteArgs),
    /// Import a disk image (qcow2, raw, vmdk, vhdx, vdi) or an OVA, from a file or URL
    Import(VolumeImportArgs),
    /// Attach a volume to a VM, hot-plugged when the VM is running
    Attach(VolumeAttachArgs),
    /// Detach a volume from a VM; a volume the VM owned is kept as a standalone one
    Detach(VolumeDetachArgs),
}

/// clap's view of [`DiskFormat`] (the wire type cannot derive clap traits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Qcow2,
    Raw,
}

impl From<FormatArg> for DiskFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Qcow2 => DiskFormat::Qcow2,
            FormatArg::Raw => DiskFormat::Raw,
        }
    }
}

#[derive(Debug, Args)]
pub struct VolumeCreateArgs {
    /// Name of the volume: 1-63 lowercase letters, digits and '-'.
    pub name: String,
    /// Size the guest sees, e.g. 10G (a bare number is bytes).
    #[arg(long, value_name = "SIZE", value_parser = parse_volume_size)]
    pub size: u64,
    /// Pool to create it in (daemon default: the `default` pool).
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,
    /// Image format (default: the pool's first format, qcow2 on dir pools).
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct VolumeListArgs {
    /// Only volumes in this pool.
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct VolumeNameArgs {
    /// Name of the volume.
    pub name: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `--size` of `volume resize`: a new size, or `+SIZE` to grow by that much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeChange {
    To(u64),
    By(u64),
}

#[derive(Debug, Args)]
pub struct VolumeResizeArgs {
    /// Name of the volume.
    pub name: String,
    /// New size, e.g. 20G, or +5G to grow by 5 GiB. Volumes only grow.
    #[arg(long, value_name = "SIZE", value_parser = parse_size_change, allow_hyphen_values = true)]
    pub size: SizeChange,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct VolumeDeleteArgs {
    /// Name of the volume.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct VolumeAttachArgs {
    /// Name of the volume.
    pub name: String,
    /// Name of the VM.
    pub vm: String,
    /// The guest may read the volume but not write it.
    #[arg(long)]
    pub read_only: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct VolumeDetachArgs {
    /// Name of the volume.
    pub name: String,
    /// Name of the VM.
    pub vm: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// A volume size within what the daemon accepts (1M to 64T), checked here so a typo like
/// `--size 10` (10 bytes) is a usage error rather than a round trip.
pub fn parse_volume_size(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if !(MIN_VOLUME_BYTES..=MAX_VOLUME_BYTES).contains(&bytes) {
        return Err(format!(
            "'{text}' is {} (give a size from 1M to 64T, e.g. 10G; a bare number is bytes)",
            format_size(bytes)
        ));
    }
    Ok(bytes)
}

/// `20G` (grow to) or `+5G` (grow by); `-5G` is refused, since volumes never shrink.
pub fn parse_size_change(text: &str) -> Result<SizeChange, String> {
    let trimmed = text.trim();
    if let Some(delta) = trimmed.strip_prefix('+') {
        let bytes = parse_size(delta)?;
        if bytes == 0 {
            return Err(format!("'{text}' would not change the size"));
        }
        return Ok(SizeChange::By(bytes));
    }
    if trimmed.starts_with('-') {
        return Err(format!(
            "'{text}': volumes only grow (shrinking would cut off the guest's data)"
        ));
    }
    parse_volume_size(trimmed).map(SizeChange::To)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::{parse, usage_error};
    use crate::cli::Command;

    #[test]
    fn volume_create() {
        let argv = [
            "volume", "create", "data", "--size", "10G", "--pool", "fast", "--format", "raw",
        ];
        match parse(&argv).unwrap() {
            Command::Volume(VolumeCommand::Create(a)) => {
                assert_eq!(a.size, 10 << 30);
                assert_eq!(a.pool.as_deref(), Some("fast"));
                assert_eq!(a.format.map(DiskFormat::from), Some(DiskFormat::Raw));
            }
            other => panic!("{other:?}"),
        }
        usage_error(&["volume", "create", "data"], "--size");
        usage_error(&["volume", "create", "data", "--size", "10"], "1M to 64T");
        usage_error(
            &["volume", "create", "d", "--size", "1G", "--format", "vmdk"],
            "vmdk",
        );
    }

    #[test]
    fn volume_attach_and_list() {
        match parse(&["volume", "attach", "data", "web", "--read-only"]).unwrap() {
            Command::Volume(VolumeCommand::Attach(a)) => {
                assert_eq!((a.name.as_str(), a.vm.as_str()), ("data", "web"));
                assert!(a.read_only);
            }
            other => panic!("{other:?}"),
        }
        usage_error(&["volume", "detach", "data"], "<VM>");
        match parse(&["vol", "ls", "--pool", "fast", "-o", "yaml"]).unwrap() {
            Command::Volume(VolumeCommand::List(a)) => assert_eq!(a.pool.as_deref(), Some("fast")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resize_sizes() {
        assert_eq!(parse_size_change("20G"), Ok(SizeChange::To(20 << 30)));
        assert_eq!(parse_size_change("+5G"), Ok(SizeChange::By(5 << 30)));
        assert!(parse_size_change("-5G").unwrap_err().contains("only grow"));
        assert!(parse_size_change("+0").unwrap_err().contains("not change"));
        assert!(parse_size_change("100T").unwrap_err().contains("1M to 64T"));
        match parse(&["volume", "resize", "data", "--size", "+1G"]).unwrap() {
            Command::Volume(VolumeCommand::Resize(a)) => {
                assert_eq!(a.size, SizeChange::By(1 << 30))
            }
            other => panic!("{other:?}"),
        }
        usage_error(&["volume", "resize", "data", "--size", "-1G"], "only grow");
    }
}

#[derive(Debug, Args)]
pub struct VolumeImportArgs {
    /// A file on this host, or an http(s) URL the daemon downloads.
    pub source: String,
    /// Name of the new volume (an OVA's further disks get -disk1, -disk2, …).
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// Pool to import into (default: the `default` pool).
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,
    /// Format of the new volume (default: qcow2).
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    #[command(flatten)]
    pub output: OutputArgs,
}
