//! `corral migrate VM --to REMOTE`: move a running VM to another host, live.

use clap::Args;
use corral_api::Postcopy;

use crate::output::OutputArgs;

pub const MIGRATE_EXAMPLES: &str = "\
Examples:
  corral remote add lab2 https://lab2:8443 --token corral_…
  corral migrate web --to lab2 --dry-run        # only the pre-flight: why it would fail
  corral migrate web --to lab2                  # shared or local disks, over TLS
  corral migrate db --to lab2 --max-downtime 100ms --bandwidth 200M --postcopy auto";

#[derive(Debug, Args)]
#[command(after_help = MIGRATE_EXAMPLES)]
pub struct MigrateArgs {
    /// The VM to move (running or paused).
    pub name: String,
    /// The destination: a remote made with `corral remote add` (its corrald, over HTTPS,
    /// with an admin token of that host).
    #[arg(long = "to", value_name = "REMOTE")]
    pub to: String,
    /// The longest pause the guest may see at switch-over: `300ms` (the default), `1s`.
    #[arg(long, value_name = "DURATION", value_parser = parse_millis)]
    pub max_downtime: Option<u64>,
    /// Cap the migration stream, bytes per second: `100M`.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub bandwidth: Option<u64>,
    /// Switch to post-copy (the guest runs at the destination while its memory follows;
    /// a failure then loses the guest): `now` after the first pass (the default for
    /// the bare flag), `auto` when pre-copy stops converging.
    #[arg(long, value_name = "WHEN", num_args = 0..=1, default_missing_value = "now")]
    pub postcopy: Option<Postcopy>,
    /// Do not slow a busy guest's vCPUs to make pre-copy converge.
    #[arg(long)]
    pub no_auto_converge: bool,
    /// Only run the pre-flight checks on both hosts; nothing moves.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `300ms`, `2s`, or plain milliseconds.
fn parse_millis(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000)
    } else {
        (t, 1)
    };
    number
        .trim()
        .parse::<u64>()
        .map(|n| n * scale)
        .map_err(|_| format!("'{text}' is not a duration like 300ms or 1s"))
}

/// `100M` (per second), `1G`.
fn parse_rate(text: &str) -> Result<u64, String> {
    corral_api::parse_size(text.trim_end_matches("/s")).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates() {
        assert_eq!(parse_millis("300ms"), Ok(300));
        assert_eq!(parse_millis("2s"), Ok(2000));
        assert_eq!(parse_millis("50"), Ok(50));
        assert!(parse_millis("soon").is_err());
        assert_eq!(parse_rate("100M"), Ok(100 << 20));
        assert_eq!(parse_rate("1G/s"), Ok(1 << 30));
    }
}
