//! `corral image …`: read-only bases that VMs are made from as linked clones.

use clap::{Args, Subcommand};

use crate::output::OutputArgs;

const IMAGE_EXAMPLES: &str = "\
Examples:
  corral image create debian12 --from-volume golden
  corral create web --image debian12 --memory 1G --start
  corral image list";

#[derive(Debug, Subcommand)]
#[command(after_help = IMAGE_EXAMPLES)]
pub enum ImageCommand {
    /// Copy a volume into a new read-only image (follows the copy's progress)
    Create(ImageCreateArgs),
    /// List images, with the volumes made from each
    #[command(visible_alias = "ls")]
    List(ImageListArgs),
    /// Show an image
    Show(ImageNameArgs),
    /// Delete an image no volume is made from
    #[command(visible_alias = "rm")]
    Delete(ImageNameArgs),
}

#[derive(Debug, Args)]
pub struct ImageCreateArgs {
    /// Name of the image: 1-63 lowercase letters, digits and '-'.
    pub name: String,
    /// The volume to copy (stop any VM using it first).
    #[arg(long, value_name = "VOLUME")]
    pub from_volume: String,
    /// Pool to keep the image in (default: the volume's pool).
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ImageListArgs {
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct ImageNameArgs {
    /// Name of the image.
    pub name: String,
    #[command(flatten)]
    pub output: OutputArgs,
}
