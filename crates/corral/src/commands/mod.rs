//! One function per command; each asks corrald and prints through [`crate::output`].

mod access;
mod host;
mod image;
mod migrate;
mod network;
mod operation;
mod pool;
mod snapshot;
mod storage_view;
mod top;
mod vm;
mod vm_view;
mod volume;

use anyhow::Result;

use crate::cli::{Cli, Command, HostCommand, OperationCommand};
use crate::client::Client;
use crate::console;

/// Runs the parsed command line against the daemon at `--socket`.
pub async fn run(cli: Cli) -> Result<()> {
    if let Command::Remote(command) = &cli.command {
        return access::remote(command).await;
    }
    let client = match crate::remote::RemoteConfig::load()?.pick(cli.remote.as_deref())? {
        Some((name, remote)) => Client::remote(&name, remote)?,
        None => Client::new(&cli.socket),
    };
    match cli.command {
        Command::Create(args) => vm::create(&client, &args).await,
        Command::List(out) => vm::list(&client, out.output).await,
        Command::Show(args) => vm::show(&client, &args).await,
        Command::Start(args) => vm::start(&client, &args).await,
        Command::Stop(args) => vm::stop(&client, &args).await,
        Command::Restart(args) => vm::restart(&client, &args).await,
        Command::Pause(args) => vm::pause(&client, &args).await,
        Command::Resume(args) => vm::resume(&client, &args).await,
        Command::Delete(args) => vm::delete(&client, &args).await,
        Command::Update(args) => vm::update(&client, &args).await,
        Command::Clone(args) => vm::clone(&client, &args).await,
        Command::Migrate(args) => migrate::migrate(&client, &args).await,
        Command::Console(args) if args.log => console::print_log(&client, &args.name).await,
        Command::Console(args) => console::attach(&client, &args.name).await,
        Command::Pool(command) => pool::run(&client, &command).await,
        Command::Network(command) => network::run(&client, &command).await,
        Command::Token(command) => access::token(&client, &command).await,
        Command::User(command) => access::user(&client, &command).await,
        Command::Audit(args) => access::audit(&client, &args).await,
        Command::Whoami(out) => access::whoami(&client, out.output).await,
        Command::Monitor(args) => operation::monitor(&client, &args).await,
        Command::Top(args) => top::top(&client, &args).await,
        Command::Remote(_) => unreachable!("handled before a client is made"),
        Command::Firewall(command) => network::firewall(&client, &command).await,
        Command::Nic(command) => network::nic(&client, &command).await,
        Command::Volume(command) => volume::run(&client, &command).await,
        Command::Snapshot(command) => snapshot::run(&client, &command).await,
        Command::Image(command) => image::run(&client, &command).await,
        Command::Host(HostCommand::Info(out)) => host::info(&client, out.output).await,
        Command::Operation(OperationCommand::List(out)) => {
            operation::list(&client, out.output).await
        }
        Command::Operation(OperationCommand::Show(args)) => operation::show(&client, &args).await,
        Command::Operation(OperationCommand::Cancel(args)) => {
            operation::cancel(&client, &args).await
        }
        Command::Events(args) => operation::events(&client, &args).await,
    }
}
