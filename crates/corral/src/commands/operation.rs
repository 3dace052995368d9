//! Operations (long work the daemon does for us) and events.
//!
//! [`follow`] is how every command that starts long work waits for it: the daemon's
//! long-poll `wait` endpoint, so no busy polling, with a progress bar only when a person
//! is watching stderr.

use std::future::Future;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use corral_api::{Event, Operation, OperationState};

use super::vm_view::events_table;
use crate::cli::{EventsArgs, MonitorArgs, OperationArgs};
use crate::client::{encode, Client, API};
use crate::error::CliError;
use crate::output::{details, emit, format_time_ms, or_dash, print_out, render, table, Format};

/// How long one `wait` long-poll may last: short with a spinner so progress stays fresh,
/// long without one since nobody is watching.
const POLL_WITH_SPINNER_SECS: u64 = 1;
const POLL_QUIET_SECS: u64 = 30;

/// Waits until `op` is final; a failed or cancelled operation becomes its error.
/// Ctrl-C stops the waiting, not the work, and says how to pick it up again.
pub async fn follow(client: &Client, op: Operation, what: &str) -> Result<Operation> {
    let id = op.id;
    tokio::select! {
        op = wait_until_final(client, op, what) => succeeded(op?),
        _ = tokio::signal::ctrl_c() => Err(CliError::new(format!(
            "interrupted; {what} goes on in corrald (operation {id})"
        ))
        .with_hint(format!(
            "follow it with `corral operation show {id}`, or stop it with `corral operation cancel {id}`"
        ))
        .into()),
    }
}

async fn wait_until_final(client: &Client, mut op: Operation, what: &str) -> Result<Operation> {
    // Dropped on every way out, which wipes the spinner line.
    let mut spinner = std::io::stderr().is_terminal().then(|| Spinner::new(what));
    let poll = if spinner.is_some() {
        POLL_WITH_SPINNER_SECS
    } else {
        POLL_QUIET_SECS
    };
    while !op.state.is_final() {
        let path = format!("{API}/operations/{}/wait?timeout_secs={poll}", op.id);
        let wait = client.get::<Operation>(&path);
        op = match spinner.as_mut() {
            Some(spinner) => {
                if let Some(line) = super::migrate::progress_line(&op) {
                    spinner.bar.set_message(format!("{what}: {line}"));
                }
                spinner.spin_until(wait, op.progress).await?
            }
            None => wait.await?,
        };
    }
    Ok(op)
}

/// Passes a succeeded operation through; anything else is an error saying why.
fn succeeded(op: Operation) -> Result<Operation> {
    let what = format!("{} of {}", op.kind, op.target);
    let err = match op.state {
        OperationState::Succeeded => return Ok(op),
        OperationState::Cancelled => CliError::new(format!("{what} was cancelled")),
        OperationState::Failed | OperationState::Running => match op.error {
            Some(body) => CliError::from(body),
            None => CliError::new(format!("{what} failed")),
        },
    };
    Err(err.into())
}

/// A progress bar on stderr (indicatif), cleared when dropped (on success or error).
/// Operations that report no progress show a spinner instead of an empty bar.
struct Spinner {
    bar: ProgressBar,
}

impl Spinner {
    fn new(label: &str) -> Self {
        let bar = ProgressBar::new(100);
        let style =
            ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos:>3}% ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(100));
        Spinner { bar }
    }

    /// Shows `progress` until `work` completes, and returns what it returned.
    async fn spin_until<T>(&mut self, work: impl Future<Output = T>, progress: f32) -> T {
        self.bar.set_position(progress.clamp(0.0, 100.0) as u64);
        work.await
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

pub async fn list(client: &Client, format: Format) -> Result<()> {
    let ops: Vec<Operation> = client.get(&format!("{API}/operations")).await?;
    emit(format, &ops, |ops| operations_table(ops))
}

pub async fn show(client: &Client, args: &OperationArgs) -> Result<()> {
    let op: Operation = client.get(&operation_path(&args.id)).await?;
    emit(args.output.output, &op, operation_details)
}

pub async fn cancel(client: &Client, args: &OperationArgs) -> Result<()> {
    let reply: serde_json::Value = client.delete(&operation_path(&args.id)).await?;
    emit(args.output.output, &reply, |_| {
        format!("cancelled operation {}\n", args.id)
    })
}

pub async fn events(client: &Client, args: &EventsArgs) -> Result<()> {
    let mut query = Vec::new();
    if let Some(vm) = &args.vm {
        query.push(format!("vm={}", encode(vm)));
    }
    if let Some(since) = args.since {
        query.push(format!("since={since}"));
    }
    let mut path = format!("{API}/events");
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let events: Vec<Event> = client.get(&path).await?;
    emit(args.output.output, &events, |events| {
        if args.vm.is_some() {
            events_table(events)
        } else {
            all_events_table(events)
        }
    })
}

/// Follows `/api/v1/events/stream`: one line per event, as it happens.
pub async fn monitor(client: &Client, args: &MonitorArgs) -> Result<()> {
    client
        .follow(&format!("{API}/events/stream"), |line| {
            let Some(data) = line.strip_prefix("data:") else {
                return Ok(()); // event names, keep-alives, blank separators
            };
            let Ok(event) = serde_json::from_str::<Event>(data.trim()) else {
                return Ok(());
            };
            if args.vm.is_some() && event.vm != args.vm {
                return Ok(());
            }
            let text = match args.output.output {
                Format::Table => format!(
                    "{}  {:<16} {:<10} {}\n",
                    format_time_ms(event.time_ms),
                    event.vm.as_deref().unwrap_or("-"),
                    event.kind,
                    event.message
                ),
                _ => format!("{}\n", serde_json::to_string(&event)?),
            };
            print_out(text.as_bytes())
        })
        .await
}

fn operation_path(id: &str) -> String {
    format!("{API}/operations/{}", encode(id))
}

fn operations_table(ops: &[Operation]) -> String {
    let mut t = table(&["ID", "KIND", "TARGET", "STATE", "PROGRESS", "CREATED"]);
    for op in ops {
        t.add_row(vec![
            op.id.to_string(),
            op.kind.clone(),
            op.target.clone(),
            state_name(op.state).to_string(),
            format!("{:.0}%", op.progress),
            format_time_ms(op.created_ms),
        ]);
    }
    render(t)
}

fn operation_details(op: &Operation) -> String {
    let mut rows = vec![
        ("ID", op.id.to_string()),
        ("Kind", op.kind.clone()),
        ("Target", op.target.clone()),
        ("State", state_name(op.state).to_string()),
        ("Progress", format!("{:.0}%", op.progress)),
        (
            "Cancellable",
            if op.cancellable { "yes" } else { "no" }.to_string(),
        ),
        ("Created", format_time_ms(op.created_ms)),
        ("Updated", format_time_ms(op.updated_ms)),
    ];
    if let Some(line) = super::migrate::progress_line(op) {
        rows.push(("Now", line));
    }
    if let Some(error) = &op.error {
        rows.push(("Error", error.error.clone()));
        rows.push(("Field", or_dash(error.field.as_deref())));
        rows.push(("Hint", or_dash(error.hint.as_deref())));
    }
    details(&rows)
}

fn all_events_table(events: &[Event]) -> String {
    let mut t = table(&["ID", "TIME", "VM", "KIND", "MESSAGE"]);
    for e in events {
        t.add_row(vec![
            e.id.to_string(),
            format_time_ms(e.time_ms),
            or_dash(e.vm.as_deref()),
            e.kind.clone(),
            e.message.clone(),
        ]);
    }
    render(t)
}

fn state_name(state: OperationState) -> &'static str {
    match state {
        OperationState::Running => "running",
        OperationState::Succeeded => "succeeded",
        OperationState::Failed => "failed",
        OperationState::Cancelled => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_api::ErrorBody;

    fn op(state: OperationState, error: Option<ErrorBody>) -> Operation {
        Operation {
            id: Default::default(),
            kind: "vm.stop".into(),
            target: "web".into(),
            state,
            progress: 100.0,
            created_ms: 0,
            updated_ms: 0,
            cancellable: false,
            error,
            result: None,
            detail: None,
        }
    }

    #[test]
    fn failed_operation_carries_daemon_error() {
        let body = ErrorBody {
            error: "the guest did not shut down within 5 s".into(),
            field: None,
            hint: Some("use --force to power it off".into()),
        };
        let err = succeeded(op(OperationState::Failed, Some(body))).unwrap_err();
        assert_eq!(
            crate::error::render(&err),
            "error: the guest did not shut down within 5 s\n  hint: use --force to power it off\n"
        );
    }

    #[test]
    fn cancelled_and_succeeded() {
        let err = succeeded(op(OperationState::Cancelled, None)).unwrap_err();
        assert_eq!(err.to_string(), "vm.stop of web was cancelled");
        assert!(succeeded(op(OperationState::Succeeded, None)).is_ok());
    }
}
