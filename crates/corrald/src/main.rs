//! `corrald`: the per-host daemon. Owns the host's VMs and serves the REST API on a Unix
//! socket. VMs outlive it: stopping or killing corrald never stops a guest.

mod clock;
mod config;
mod console;
mod error;
mod events;
mod host;
mod http;
mod network;
mod operations;
mod revert;
mod storage;
mod vm;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;
use corral_api::Accel;
use corral_store::SqliteStore;
use tokio::net::UnixListener;

use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "corrald",
    version,
    about = "Corral's per-host daemon: runs KVM/QEMU virtual machines"
)]
struct Args {
    /// Where state lives: the database, VM runtime dirs, the default storage pool.
    #[arg(long, env = "CORRAL_STATE_DIR", default_value = "/var/lib/corral")]
    state_dir: PathBuf,
    /// The API's Unix socket.
    #[arg(long, env = "CORRAL_SOCKET", default_value = "/run/corral/corral.sock")]
    socket: PathBuf,
    /// Use this accelerator instead of probing (kvm or tcg).
    #[arg(long)]
    accel: Option<Accel>,
    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// The user QEMU runs as when corrald is root.
    #[arg(long, default_value = "corral-qemu")]
    qemu_user: String,
    /// A Linux kernel the accelerator probe may boot.
    #[arg(long)]
    probe_kernel: Option<PathBuf>,
    /// Serial console output kept per VM, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    console_log_limit: u64,
    /// Do not make the `default` NAT network on the first start (tests, hosts whose
    /// networks are all bridges).
    #[arg(long)]
    no_default_network: bool,
    /// Print the OpenAPI document and exit.
    #[arg(long)]
    openapi: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.openapi {
        println!("{}", http::openapi::document());
        return Ok(());
    }
    let cfg = Arc::new(Config {
        state_dir: args.state_dir,
        socket: args.socket,
        accel: args.accel,
        qemu_binary: resolve_binary(&args.qemu),
        qemu_user: args.qemu_user,
        probe_kernel: args.probe_kernel,
        cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        console_log_limit: args.console_log_limit,
        default_network: !args.no_default_network,
    });
    cfg.check().map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    std::fs::set_permissions(&cfg.state_dir, std::fs::Permissions::from_mode(0o711))?;
    let _state_lock = lock_state_dir(&cfg.state_dir)?;
    std::fs::create_dir_all(cfg.runtime_dir())?;

    let store = Arc::new(
        SqliteStore::open(&cfg.state_dir.join("corral.db"))
            .context("opening the state database")?,
    );
    let host = Arc::new(host::HostFacts::discover(&cfg).await?);
    tracing::info!(accel = host.accel.accel.as_str(), reason = %host.accel.reason, "accelerator chosen");
    let mgr = vm::Manager::new(cfg.clone(), host, store);
    mgr.ensure_default_pool().await?;
    let interrupted = mgr.ops.fail_orphans()?;
    mgr.recover_interrupted_work(&interrupted).await?;
    mgr.reattach_all().await?;
    mgr.restore_networks().await?;
    tokio::spawn(console::rotate_logs_forever(mgr.clone()));

    let listener = bind(&cfg.socket)?;
    tracing::info!(socket = %cfg.socket.display(), state_dir = %cfg.state_dir.display(), "corrald ready");
    axum::serve(listener, http::router(mgr))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    // VMs keep running: they are separate processes in their own sessions.
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
}

/// `qemu-system-x86_64` → its full path, so `host info` says which binary runs.
fn resolve_binary(name: &Path) -> PathBuf {
    if name.components().count() > 1 {
        return name.to_path_buf();
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| name.to_path_buf())
}

/// One daemon per state dir: a second one would fight the first over every VM.
fn lock_state_dir(dir: &Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("corrald.lock"))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!(
            "another corrald is using {} ({e}); give each daemon its own --state-dir",
            dir.display()
        )
    })
}

fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            bail!(
                "{} is in use by another daemon; pass another --socket",
                socket.display()
            );
        }
        std::fs::remove_file(socket)?;
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    // root and the `corral` group only (DESIGN.md §8).
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))?;
    if let Ok(Some(group)) = nix::unistd::Group::from_name("corral") {
        let _ = nix::unistd::chown(socket, None, Some(group.gid));
    }
    Ok(listener)
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down; VMs keep running");
}
