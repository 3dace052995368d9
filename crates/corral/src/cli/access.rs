//! `corral token …`, `corral user …`, `corral audit`, `corral whoami`: who may use the
//! remote API (`corrald --listen`), and what they did.

use clap::{Args, Subcommand};
use corral_api::Role;

use crate::output::OutputArgs;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make an API token; it is printed once (`-o json`: the `token` field)
    Create(TokenCreateArgs),
    /// List tokens (never their secrets)
    #[command(visible_alias = "ls")]
    List(OutputArgs),
    /// Revoke a token by its id
    #[command(visible_alias = "rm")]
    Revoke(IdArgs),
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// What the token is for, e.g. ci or prometheus.
    pub name: String,
    /// viewer (read), operator (run VMs, consoles, snapshots) or admin.
    #[arg(long, value_parser = parse_role)]
    pub role: Role,
    /// How long it lasts, e.g. 90s, 30m, 12h, 30d [default: until revoked].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_secs)]
    pub expires: Option<u64>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    pub id: String,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user of the web console (password asked twice, or --password-stdin)
    Add(UserAddArgs),
    /// List users
    #[command(visible_alias = "ls")]
    List(OutputArgs),
    /// Remove a user (their sessions end)
    #[command(visible_alias = "rm")]
    Remove(UserNameArgs),
    /// Set a new password (the user's sessions end)
    Passwd(UserPasswdArgs),
    /// Change a user's role
    SetRole(UserSetRoleArgs),
}

#[derive(Debug, Args)]
pub struct UserAddArgs {
    pub username: String,
    #[arg(long, value_parser = parse_role)]
    pub role: Role,
    /// Read the password from the first line of stdin instead of asking.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Args)]
pub struct UserNameArgs {
    pub username: String,
}

#[derive(Debug, Args)]
pub struct UserPasswdArgs {
    pub username: String,
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Args)]
pub struct UserSetRoleArgs {
    pub username: String,
    #[arg(value_parser = parse_role)]
    pub role: Role,
}

/// `corral audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// At most this many entries, newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Trust a corrald's certificate and remember it with a token
    Add(RemoteAddArgs),
    /// List remotes (`local` is this host's socket)
    #[command(visible_alias = "ls")]
    List(OutputArgs),
    /// Forget a remote
    #[command(visible_alias = "rm")]
    Remove(RemoteNameArgs),
    /// Make a remote the default for later commands (`local` for the socket)
    Switch(RemoteNameArgs),
}

#[derive(Debug, Args)]
pub struct RemoteAddArgs {
    pub name: String,
    /// `https://HOST:PORT` of a `corrald --listen`.
    pub url: String,
    /// An API token made on that host (`corral token create`).
    #[arg(long)]
    pub token: String,
    /// Trust the certificate shown without asking (scripts).
    #[arg(long, conflicts_with = "fingerprint")]
    pub accept_certificate: bool,
    /// Trust only a certificate with this SHA-256 fingerprint (from `corral host info`
    /// on that host), without asking.
    #[arg(long, value_name = "HEX")]
    pub fingerprint: Option<String>,
}

#[derive(Debug, Args)]
pub struct RemoteNameArgs {
    pub name: String,
}

fn parse_role(text: &str) -> Result<Role, String> {
    text.parse()
}

/// `90s`, `30m`, `12h`, `30d` → seconds.
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    corral_api::parse_duration_secs(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration_secs("30d"), Ok(30 * 86400));
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert!(parse_duration_secs("0s").is_err());
        assert!(parse_duration_secs("3w").unwrap_err().contains("unit"));
        assert!(parse_duration_secs("x").is_err());
    }
}
