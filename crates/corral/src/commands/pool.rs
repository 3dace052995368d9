//! `corral pool …`: define, inspect and delete storage pools.

use std::path::Path;

use anyhow::{Context, Result};

use corral_api::{Pool, PoolSpec};

use super::storage_view::{pool_list_table, pool_page, source};
use crate::cli::{PoolCommand, PoolCreateArgs, PoolDeleteArgs, PoolNameArgs};
use crate::client::{pool_path, Client, API};
use crate::create::absolute;
use crate::output::{emit, print_out, Format};

pub async fn run(client: &Client, command: &PoolCommand) -> Result<()> {
    match command {
        PoolCommand::Create(args) => create(client, args).await,
        PoolCommand::List(out) => list(client, out.output).await,
        PoolCommand::Show(args) => show(client, args).await,
        PoolCommand::Delete(args) => delete(client, args).await,
    }
}

async fn create(client: &Client, args: &PoolCreateArgs) -> Result<()> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let spec = pool_spec(args, &cwd);
    let pool: Pool = client.post(&format!("{API}/pools"), &spec).await?;
    emit(args.output.output, &pool, |pool| {
        format!(
            "created pool {}: {} at {}\n",
            pool.spec.name,
            pool.spec.driver,
            source(&pool.spec)
        )
    })
}

/// The pool's definition as the daemon gets it, with its directory made absolute
/// (the daemon does not share the CLI's working directory).
fn pool_spec(args: &PoolCreateArgs, cwd: &Path) -> PoolSpec {
    PoolSpec {
        name: args.name.clone(),
        driver: args.driver().name().to_string(),
        path: args
            .path
            .as_ref()
            .map(|p| absolute(cwd, p).to_string_lossy().into_owned()),
        volume_group: args.volume_group.clone(),
        thin_pool: args.thin_pool.clone(),
        shared: args.shared,
    }
}

async fn list(client: &Client, format: Format) -> Result<()> {
    let mut pools: Vec<Pool> = client.get(&format!("{API}/pools")).await?;
    pools.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    emit(format, &pools, |pools| pool_list_table(pools))
}

async fn show(client: &Client, args: &PoolNameArgs) -> Result<()> {
    let pool: Pool = client.get(&pool_path(&args.name)).await?;
    emit(args.output.output, &pool, pool_page)
}

async fn delete(client: &Client, args: &PoolDeleteArgs) -> Result<()> {
    let _: serde_json::Value = client.delete(&pool_path(&args.name)).await?;
    print_out(format!("deleted pool {}\n", args.name).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn create_args(argv: &[&str]) -> PoolCreateArgs {
        let mut full = vec!["corral", "pool", "create"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Pool(PoolCommand::Create(args)) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn relative_dir_becomes_absolute() {
        let args = create_args(&["fast", "--path", "./pools/fast", "--shared"]);
        let spec = pool_spec(&args, Path::new("/srv"));
        assert_eq!(
            spec,
            PoolSpec {
                name: "fast".into(),
                driver: "dir".into(),
                path: Some("/srv/pools/fast".into()),
                volume_group: None,
                thin_pool: None,
                shared: true,
            }
        );
        assert!(spec.validate().is_ok());
    }

    #[test]
    fn lvm_thin_spec() {
        let args = create_args(&[
            "thin",
            "--driver",
            "lvm-thin",
            "--volume-group",
            "vg0",
            "--thin-pool",
            "pool0",
        ]);
        let spec = pool_spec(&args, Path::new("/"));
        assert_eq!(spec.driver, "lvm-thin");
        assert_eq!(spec.volume_group.as_deref(), Some("vg0"));
        assert_eq!(spec.thin_pool.as_deref(), Some("pool0"));
        assert!(spec.path.is_none());
        assert!(spec.validate().is_ok());
    }
}
