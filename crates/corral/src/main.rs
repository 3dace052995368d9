//! `corral`: the command-line client of corrald, Corral's per-host VM daemon.
//!
//! Module map: [`cli`] defines the command line; [`commands`] runs each command against
//! the daemon through [`client`] (HTTP and WebSocket over the Unix socket); [`output`]
//! prints tables, JSON or YAML; [`create`] turns `create` flags into a request;
//! [`console`] is the interactive serial console; [`error`] renders failures.

mod cli;
mod client;
mod commands;
mod console;
mod create;
mod error;
mod output;
mod remote;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Usage errors exit 2 here, inside clap, before anything else happens.
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Tells the error on stderr and exits 1.
fn fail(e: &anyhow::Error) -> ExitCode {
    eprint!("{}", error::render(e));
    ExitCode::FAILURE
}
