//! `corrald`: the per-host daemon. Owns the host's VMs and serves the REST API on a Unix
//! socket. VMs outlive it: stopping or killing corrald never stops a guest.

mod auth;
mod clock;
mod config;
mod console;
mod error;
mod events;
mod host;
mod http;
mod metrics;
mod migration;
mod network;
mod operations;
mod revert;
mod storage;
mod testpoint;
mod vm;
mod vnc;

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
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("CORRAL_WEB_CONSOLE"), ")"),
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
    /// Also serve the API and the web console over HTTPS here (repeatable), e.g.
    /// `0.0.0.0:8443`. Callers need a token or a login; the Unix socket stays local.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<std::net::SocketAddr>,
    /// The HTTPS certificate (PEM). Without it, a self-signed one is made in
    /// `<state-dir>/tls/` on first start and kept.
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// How long a web console login lasts: `90s`, `30m`, `12h`, `7d`.
    #[arg(long, default_value = "12h", value_parser = parse_duration)]
    session_ttl: std::time::Duration,
    /// How often the metrics collector samples the host and VMs: `2s`, `1m`.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    metrics_interval: std::time::Duration,
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
    let mut cfg = Config {
        state_dir: args.state_dir.clone(),
        socket: args.socket.clone(),
        accel: args.accel,
        qemu_binary: resolve_binary(&args.qemu),
        qemu_user: args.qemu_user.clone(),
        probe_kernel: args.probe_kernel.clone(),
        cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        console_log_limit: args.console_log_limit,
        default_network: !args.no_default_network,
        listen: args.listen.clone(),
        tls_fingerprint: None,
        session_ttl: args.session_ttl,
    };
    cfg.check().map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    std::fs::set_permissions(&cfg.state_dir, std::fs::Permissions::from_mode(0o711))?;
    let _state_lock = lock_state_dir(&cfg.state_dir)?;
    std::fs::create_dir_all(cfg.runtime_dir())?;
    let tls = match args.listen.is_empty() {
        true => None,
        false => Some(load_tls(&cfg, &args)?),
    };
    cfg.tls_fingerprint = tls.as_ref().map(|t| t.fingerprint.clone());
    let cfg = Arc::new(cfg);

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
    mgr.recover_migrations().await?;
    tokio::spawn(console::rotate_logs_forever(mgr.clone()));
    mgr.metrics.set_interval(args.metrics_interval);
    tokio::spawn(metrics::run(mgr.clone()));

    let listener = bind(&cfg.socket)?;
    let router = http::router(mgr);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(tls) = tls {
        for addr in &cfg.listen {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--listen {addr}"))?;
            tracing::info!(%addr, fingerprint = %tls.fingerprint, "serving HTTPS");
            tokio::spawn(auth::tls::serve(
                tcp,
                tls.config.clone(),
                router.clone(),
                stop_rx.clone(),
            ));
        }
    }
    tracing::info!(socket = %cfg.socket.display(), state_dir = %cfg.state_dir.display(), "corrald ready");
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<auth::Peer>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    let _ = stop_tx.send(true);
    // VMs keep running: they are separate processes in their own sessions.
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
}

/// The HTTPS certificate, made on first start when none is given. Its fingerprint is
/// printed so an admin can compare it with what `corral remote add` shows.
fn load_tls(cfg: &Config, args: &Args) -> anyhow::Result<auth::tls::TlsSetup> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(h) = nix::unistd::gethostname() {
        names.push(h.to_string_lossy().into_owned());
    }
    names.extend(
        args.listen
            .iter()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified())
            .map(|ip| ip.to_string()),
    );
    names.dedup();
    let given = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
    let tls = auth::tls::load_or_make(&cfg.state_dir.join("tls"), given, &names)?;
    let made = if tls.generated {
        "made a self-signed certificate"
    } else {
        "certificate"
    };
    eprintln!(
        "corrald: {made} {} — SHA-256 fingerprint {}",
        tls.cert_path.display(),
        auth::tls::colon_form(&tls.fingerprint)
    );
    Ok(tls)
}

/// `90s`, `30m`, `12h`, `7d`.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    corral_api::parse_duration_secs(text).map(std::time::Duration::from_secs)
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
