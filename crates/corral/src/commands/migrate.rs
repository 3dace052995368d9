//! `corral migrate VM --to REMOTE`: the source's corrald does the work, talking to the
//! destination's itself; the CLI hands it the remote (URL, pinned fingerprint, token)
//! and follows the operation.

use anyhow::Result;
use corral_api::{
    format_size, MigrateRequest, MigrationProgress, MigrationTarget, Operation, PreflightReport,
};

use super::operation::follow;
use crate::cli::MigrateArgs;
use crate::client::{vm_path, Client};
use crate::error::CliError;
use crate::output::{emit, render, table};
use crate::remote::RemoteConfig;

pub async fn migrate(client: &Client, args: &MigrateArgs) -> Result<()> {
    let config = RemoteConfig::load()?;
    let Some((name, remote)) = config.pick(Some(&args.to))? else {
        return Err(CliError::new("--to names this host's own socket")
            .with_hint("give a remote of the destination (`corral remote list`)")
            .into());
    };
    let request = MigrateRequest {
        destination: MigrationTarget {
            url: remote.url,
            fingerprint: remote.fingerprint,
            token: remote.token,
            name: Some(name.clone()),
        },
        max_downtime_ms: args.max_downtime,
        bandwidth_bytes: args.bandwidth,
        postcopy: args.postcopy.unwrap_or_default(),
        auto_converge: args.no_auto_converge.then_some(false),
        dry_run: args.dry_run,
    };
    let path = format!("{}/migrate", vm_path(&args.name));
    if args.dry_run {
        let report: PreflightReport = client.post(&path, &request).await?;
        emit(args.output.output, &report, report_table)?;
        if !report.ok {
            let first = report.first_failure().map(|c| c.message.clone());
            return Err(CliError::new(format!(
                "vm {} cannot be migrated to {name}: {}",
                args.name,
                first.unwrap_or_default()
            ))
            .into());
        }
        return Ok(());
    }
    let op: Operation = client.post(&path, &request).await?;
    let op = follow(client, op, &format!("migrating vm {} to {name}", args.name)).await?;
    emit(args.output.output, &op, |op| {
        let r = op.result.clone().unwrap_or_default();
        let ms = |k: &str| r[k].as_u64().unwrap_or(0);
        format!(
            "migrated vm {} to {name} ({}) in {:.1} s; the guest paused {} ms{}\n",
            args.name,
            r["destination_host"].as_str().unwrap_or("?"),
            ms("total_ms") as f64 / 1000.0,
            ms("downtime_ms"),
            if r["postcopy"] == true {
                " (post-copy)"
            } else {
                ""
            }
        )
    })
}

/// The pre-flight as a table: each check, whether it passed, what it found.
fn report_table(report: &PreflightReport) -> String {
    let mut t = table(&["CHECK", "OK", "FINDING", "FIELD", "HINT"]);
    for c in &report.checks {
        t.add_row(vec![
            c.check.clone(),
            if c.ok { "yes" } else { "NO" }.to_string(),
            c.message.clone(),
            c.field.clone().unwrap_or_default(),
            c.hint.clone().unwrap_or_default(),
        ]);
    }
    let disks: Vec<String> = report
        .disks
        .iter()
        .map(|d| match d.bytes {
            0 => format!("{}: {:?}", d.disk, d.transfer).to_lowercase(),
            b => format!("{}: copy {}", d.disk, format_size(b)),
        })
        .collect();
    format!(
        "{}\ndestination {}: {} ({} ms); disks: {}\n",
        render(t).trim_end(),
        report.destination,
        if report.ok { "ready" } else { "refused" },
        report.took_ms,
        if disks.is_empty() {
            "none".into()
        } else {
            disks.join(", ")
        }
    )
}

/// One line of a migration's progress, for the spinner.
pub fn progress_line(op: &Operation) -> Option<String> {
    let p: MigrationProgress = serde_json::from_value(op.detail.clone()?).ok()?;
    Some(match p.phase.as_str() {
        "mirroring" => format!(
            "copying disks {} / {}",
            format_size(p.disk_transferred),
            format_size(p.disk_total)
        ),
        "memory" | "postcopy" => format!(
            "{} pass {}: {} sent, {} left, dirtied {}/s, ~{} ms pause",
            p.phase,
            p.pass,
            format_size(p.ram_transferred),
            format_size(p.ram_remaining),
            format_size(p.dirty_rate),
            p.expected_downtime_ms
        ),
        other => other.to_string(),
    })
}
