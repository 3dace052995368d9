//! How results reach stdout: the wire object as JSON or YAML for scripts, or tables for
//! people; plus the small formatters (uptime, timestamps) those tables use.
//!
//! Tables are borderless and column-aligned (like `kubectl get`), so they read well in a
//! terminal and still split cleanly with `awk`. Cells are never wrapped: ids and paths
//! stay whole for copy and paste, and a terminal of unknown width (under `script`, in CI)
//! cannot squeeze columns to nothing. Headers are bold only on a terminal, and never when
//! `NO_COLOR` is set.

use std::io::{self, Write};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use comfy_table::{presets, Attribute, Cell, Table};
use serde::Serialize;

/// `-o table|json|yaml`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    // Variants carry no doc comments so clap keeps `-o` help to one line.
    #[default]
    Table,
    Json,
    Yaml,
}

/// The `-o` flag, flattened into every command that prints an object.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct OutputArgs {
    /// Output format: table for people; json or yaml for the API's own objects.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value_t,
        value_name = "FORMAT"
    )]
    pub output: Format,
}

/// Prints `value` as JSON or YAML, or as whatever `human` makes of it for a table.
pub fn emit<T: Serialize + ?Sized>(
    format: Format,
    value: &T,
    human: impl FnOnce(&T) -> String,
) -> Result<()> {
    let text = match format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(value).context("encoding JSON")?;
            s.push('\n');
            s
        }
        Format::Yaml => serde_yaml::to_string(value).context("encoding YAML")?,
        Format::Table => human(value),
    };
    print_out(text.as_bytes())
}

/// Writes to stdout; a closed pipe (`corral list | head -1`) is not an error.
pub fn print_out(bytes: &[u8]) -> Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

/// A borderless table with these column headers.
pub fn table(headers: &[&str]) -> Table {
    let mut t = bare_table();
    t.set_header(
        headers
            .iter()
            .map(|h| Cell::new(h).add_attribute(Attribute::Bold)),
    );
    t
}

/// Two columns, `Key:` and value, for one object's details.
pub fn details(rows: &[(&str, String)]) -> String {
    let mut t = bare_table();
    for (key, value) in rows {
        t.add_row(vec![
            Cell::new(format!("{key}:")).add_attribute(Attribute::Bold),
            Cell::new(value),
        ]);
    }
    render(t)
}

fn bare_table() -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    if std::env::var_os("NO_COLOR").is_some() {
        t.force_no_tty();
    }
    t
}

/// Renders a table flush left, with no trailing blanks, ending in a newline.
pub fn render(mut t: Table) -> String {
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    let mut out = String::new();
    for line in t.to_string().lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `-` for what is absent, so columns never collapse.
pub fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// `1h 2m 3s`; days when it gets long (`3d 4h 0m 1s`); zero leading units are left out.
pub fn format_uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    let parts = [(d, "d"), (h, "h"), (m, "m"), (s, "s")];
    let first = parts.iter().position(|(n, _)| *n > 0).unwrap_or(3);
    parts[first..]
        .iter()
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` (UTC: the daemon's hosts run in UTC, and a
/// time-zone database would be a heavy dependency for one column).
pub fn format_time(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let rem = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60
    )
}

/// [`format_time`] for the API's millisecond timestamps.
pub fn format_time_ms(unix_ms: u64) -> String {
    format_time(unix_ms / 1_000)
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm, proleptic Gregorian).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime() {
        assert_eq!(format_uptime(0), "0s");
        assert_eq!(format_uptime(45), "45s");
        assert_eq!(format_uptime(62), "1m 2s");
        assert_eq!(format_uptime(3_723), "1h 2m 3s");
        assert_eq!(format_uptime(3_600), "1h 0m 0s");
        assert_eq!(format_uptime(2 * 86_400 + 5), "2d 0h 0m 5s");
    }

    #[test]
    fn times() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(format_time(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(format_time_ms(1_709_251_199_999), "2024-02-29 23:59:59");
    }

    #[test]
    fn tables_are_flush_and_trimmed() {
        let mut t = table(&["NAME", "STATE"]);
        t.add_row(vec!["a", "running"]);
        t.add_row(vec!["longer", "-"]);
        let text = render(t);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "NAME    STATE");
        assert_eq!(lines[1], "a       running");
        assert_eq!(lines[2], "longer  -");
    }

    #[test]
    fn details_align_keys() {
        let text = details(&[("Name", "web".into()), ("Memory", "512 MiB".into())]);
        assert_eq!(text, "Name:    web\nMemory:  512 MiB\n");
    }
}
