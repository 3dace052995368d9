//! The one shape every failure is told in: what went wrong, which field, what to do.
//!
//! The daemon answers errors as an [`ErrorBody`]; the CLI's own failures (no socket, a
//! reply it cannot read) use the same three parts, so the user sees one format whatever
//! went wrong and wherever.

use std::fmt;

use corral_api::ErrorBody;

/// A failure worth telling plainly, with the field at fault and a hint when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    pub error: String,
    pub field: Option<String>,
    pub hint: Option<String>,
}

impl CliError {
    pub fn new(error: impl Into<String>) -> Self {
        CliError {
            error: error.into(),
            field: None,
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error)
    }
}

impl std::error::Error for CliError {}

impl From<ErrorBody> for CliError {
    fn from(body: ErrorBody) -> Self {
        CliError {
            error: body.error,
            field: body.field,
            hint: body.hint,
        }
    }
}

/// Renders an error for stderr: `error: …`, then `  field: …` and `  hint: …` when known.
///
/// The message is the whole context chain (`cannot stop web: …`); field and hint come from
/// the first [`CliError`] found in that chain, wherever context was layered on top of it.
pub fn render(err: &anyhow::Error) -> String {
    let mut out = format!("error: {err:#}\n");
    let detail = err
        .chain()
        .find_map(|cause| cause.downcast_ref::<CliError>());
    if let Some(detail) = detail {
        if let Some(field) = &detail.field {
            out.push_str(&format!("  field: {field}\n"));
        }
        if let Some(hint) = &detail.hint {
            out.push_str(&format!("  hint: {hint}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn renders_plain_error() {
        let err = anyhow::anyhow!("something broke");
        assert_eq!(render(&err), "error: something broke\n");
    }

    #[test]
    fn renders_field_and_hint_from_daemon_body() {
        let body = ErrorBody {
            error: "memory 8 MiB is too small".into(),
            field: Some("memory_mib".into()),
            hint: Some("give at least 16M".into()),
        };
        let err = anyhow::Error::new(CliError::from(body));
        assert_eq!(
            render(&err),
            "error: memory 8 MiB is too small\n  field: memory_mib\n  hint: give at least 16M\n"
        );
    }

    #[test]
    fn renders_hint_through_context() {
        let inner: Result<(), CliError> =
            Err(CliError::new("no such socket").with_hint("is corrald running?"));
        let err = inner.context("cannot list VMs").unwrap_err();
        assert_eq!(
            render(&err),
            "error: cannot list VMs: no such socket\n  hint: is corrald running?\n"
        );
    }
}
