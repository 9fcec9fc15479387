//! Writes diagnostics to stderr: a [`CliError`] as the user sees it, warnings. With `--json`,
//! everything envc itself writes to stderr is one JSON object per line instead ([`emit`]; the
//! schema is in README, "JSON events").

use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteDiagnostic, Report};

use crate::cli::Color;
use crate::error::{CliError, InvalidSpec, StepFailure};

/// The version of the JSON event schema: a change that could break a reader gets a new one.
pub const EVENTS_VERSION: u64 = 1;

static JSON: AtomicBool = AtomicBool::new(false);

/// Makes everything envc writes to stderr JSON events (`--json`).
pub fn set_json(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

/// Whether stderr gets JSON events.
pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Writes one JSON event to stderr: `event` is its kind; `fields` (an object) are added, after
/// `"v"` and `"event"`.
pub fn emit(event: &str, fields: serde_json::Value) {
    let mut obj = serde_json::Map::new();
    obj.insert("v".into(), EVENTS_VERSION.into());
    obj.insert("event".into(), event.into());
    if let serde_json::Value::Object(f) = fields {
        obj.extend(f);
    }
    let line = serde_json::Value::Object(obj).to_string();
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A notice of envc's own (not a warning): a line `envc: TEXT`, or an event `notice`.
pub fn notice(text: &str) {
    if json() {
        emit("notice", serde_json::json!({ "message": text }));
    } else {
        let _ = writeln!(std::io::stderr().lock(), "envc: {text}");
    }
}

/// A diagnostic as the fields of an `error` event: its code, message, help, and each label's
/// place (`file`, `line`, `column`, 1-based) and text; the first label's place also at the top.
fn diagnostic_fields(diag: &dyn miette::Diagnostic) -> serde_json::Value {
    let mut obj = serde_json::Map::new();
    if let Some(code) = diag.code() {
        obj.insert("code".into(), code.to_string().into());
    }
    obj.insert("message".into(), diag.to_string().into());
    if let Some(help) = diag.help() {
        obj.insert("help".into(), help.to_string().into());
    }
    let mut labels = Vec::new();
    if let (Some(ls), Some(src)) = (diag.labels(), diag.source_code()) {
        for label in ls {
            let Ok(contents) = src.read_span(label.inner(), 0, 0) else {
                continue;
            };
            labels.push(serde_json::json!({
                "file": contents.name().unwrap_or("<spec>"),
                "line": contents.line() + 1,
                "column": contents.column() + 1,
                "label": label.label(),
            }));
        }
    }
    if let Some(first) = labels.first().and_then(|l| l.as_object()).cloned() {
        for k in ["file", "line", "column"] {
            if let Some(v) = first.get(k) {
                obj.insert(k.into(), v.clone());
            }
        }
    }
    obj.insert("labels".into(), labels.into());
    serde_json::Value::Object(obj)
}

/// `e` as `error` events (and a `checked` event per invalid spec).
fn render_json(e: &CliError) {
    match e {
        CliError::Usage(u) => emit(
            "error",
            serde_json::json!({ "kind": "usage", "message": u.render().to_string().trim() }),
        ),
        CliError::InvalidSpec(specs) => {
            for spec in specs {
                for d in &spec.errors {
                    let mut f = diagnostic_fields(d);
                    f["kind"] = "invalid-spec".into();
                    emit("error", f);
                }
                emit(
                    "checked",
                    serde_json::json!({
                        "spec": spec.spec.display().to_string(),
                        "valid": false,
                        "errors": spec.errors.len(),
                    }),
                );
            }
        }
        CliError::Failed(e) => emit(
            "error",
            serde_json::json!({ "kind": "failed", "message": e.to_string() }),
        ),
        CliError::StepFailed(f) => {
            let mut fields = diagnostic_fields(step_failed(f).as_ref());
            fields["kind"] = "step-failed".into();
            fields["layer"] = f.layer.clone().into();
            fields["step"] = (f.step + 1).into();
            fields["reason"] = f.reason.clone().into();
            fields["tail"] = f.tail.clone().into();
            fields["log"] = f.log.display().to_string().into();
            emit("error", fields);
        }
        CliError::Diagnostic(d) => {
            let mut f = diagnostic_fields(d.as_ref());
            f["kind"] = "invalid-file".into();
            emit("error", f);
        }
    }
}

/// How many lines of a failed step's output its report shows.
const TAIL_LINES: usize = 10;

/// Renders errors with miette's graphical handler, coloured or not.
pub struct Ui {
    handler: GraphicalReportHandler,
}

impl Ui {
    /// A renderer for `--color`: `COLUMNS` sets the width (default 100), `NO_COLOR` turns colour
    /// off under `auto`.
    pub fn new(color: Color) -> Ui {
        let colored = match color {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => {
                std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
            }
        };
        let theme = if colored {
            GraphicalTheme::unicode()
        } else {
            GraphicalTheme::unicode_nocolor()
        };
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(100);
        Ui {
            handler: GraphicalReportHandler::new_themed(theme)
                .with_width(width)
                .with_links(false)
                .with_word_separator(textwrap::WordSeparator::AsciiSpace),
        }
    }

    /// Writes `e` to stderr.
    pub fn render(&self, e: &CliError) {
        if json() {
            render_json(e);
            return;
        }
        match e {
            CliError::Usage(e) => {
                let _ = e.print();
            }
            CliError::InvalidSpec(specs) => {
                for spec in specs {
                    self.invalid_spec(spec);
                }
            }
            CliError::Failed(e) => error_line(e),
            CliError::StepFailed(f) => self.diagnostic(step_failed(f).as_ref()),
            CliError::Diagnostic(d) => self.diagnostic(d.as_ref()),
        }
    }

    fn invalid_spec(&self, spec: &InvalidSpec) {
        for e in &spec.errors {
            self.diagnostic(e);
        }
        let n = spec.errors.len();
        let _ = writeln!(
            std::io::stderr().lock(),
            "error: {} is invalid: {n} error{}",
            spec.spec.display(),
            if n == 1 { "" } else { "s" }
        );
    }

    fn diagnostic(&self, diag: &dyn miette::Diagnostic) {
        let mut out = String::new();
        if !snippet_is_safe(diag) || self.handler.render_report(&mut out, diag).is_err() {
            out = plain(diag);
        }
        let _ = writeln!(std::io::stderr().lock(), "{out}");
    }
}

/// The furthest column (and the longest label) the graphical handler is given: miette 7.6 pads
/// to a label's column with `{:width$}`, and a width past 65,535 panics ("Formatting argument out
/// of range"). Well below that, whether columns count bytes or characters.
const MAX_SNIPPET_COLUMN: usize = 60_000;

/// Whether every label of `diag` starts within [`MAX_SNIPPET_COLUMN`] bytes of its line's start
/// and is shorter than that, so the graphical handler can draw it. A label whose source cannot be
/// read is not drawn by the handler either, so it is safe.
fn snippet_is_safe(diag: &dyn miette::Diagnostic) -> bool {
    let Some(labels) = diag.labels() else {
        return true;
    };
    let Some(src) = diag.source_code() else {
        return true;
    };
    for label in labels {
        let span = *label.inner();
        if span.len() > MAX_SNIPPET_COLUMN
            || label.label().is_some_and(|t| t.len() > MAX_SNIPPET_COLUMN)
        {
            return false;
        }
        // With no context lines, miette counts the column in bytes from the line's start.
        if let Ok(contents) = src.read_span(&span, 0, 0)
            && contents.column() > MAX_SNIPPET_COLUMN
        {
            return false;
        }
    }
    true
}

/// A diagnostic without its source snippet: message, code, every label as `file:line:col`, help.
fn plain(diag: &dyn miette::Diagnostic) -> String {
    let mut out = match diag.code() {
        Some(code) => format!("error[{code}]: {diag}\n"),
        None => format!("error: {diag}\n"),
    };
    if let (Some(labels), Some(src)) = (diag.labels(), diag.source_code()) {
        for label in labels {
            let Ok(contents) = src.read_span(label.inner(), 0, 0) else {
                continue;
            };
            let name = contents.name().unwrap_or("<spec>");
            out.push_str(&format!(
                "  at {name}:{}:{}",
                contents.line() + 1,
                contents.column() + 1
            ));
            if let Some(text) = label.label() {
                out.push_str(&format!(": {text}"));
            }
            out.push('\n');
        }
    }
    if let Some(help) = diag.help() {
        out.push_str(&format!("  help: {help}\n"));
    }
    out
}

/// `error: ...` on one line.
fn error_line(e: &dyn Display) {
    let _ = writeln!(std::io::stderr().lock(), "error: {e}");
}

/// A failed step's report: the step's line in its spec, the last lines of its output, its log.
fn step_failed(f: &StepFailure) -> Report {
    let mut help = String::new();
    if !f.tail.is_empty() {
        help.push_str("last lines of output:\n");
        for line in &f.tail[f.tail.len().saturating_sub(TAIL_LINES)..] {
            help.push_str("  ");
            help.push_str(line);
            help.push('\n');
        }
    }
    help.push_str(&format!("full log: {}", f.log.display()));
    let diag = MietteDiagnostic::new(format!(
        "layer `{}`: step {} failed: {}",
        f.layer,
        f.step + 1,
        f.reason
    ))
    .with_code("envc::apply::step_failed")
    .with_label(LabeledSpan::at(f.span, "this step failed"))
    .with_help(help);
    Report::new(diag).with_source_code(f.src.clone())
}

/// A warning as one line: `envc: warning: ...`. Every warning the CLI shows is made here, whether
/// it is printed directly ([`warn`]) or above a progress bar.
pub fn warning(w: &dyn Display) -> String {
    format!("envc: warning: {w}")
}

/// Writes a warning to stderr (with no progress bar on screen).
pub fn warn(w: &dyn Display) {
    if json() {
        emit("warning", serde_json::json!({ "message": w.to_string() }));
        return;
    }
    let _ = writeln!(std::io::stderr().lock(), "{}", warning(w));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_one_prefixed_line() {
        assert_eq!(
            warning(&"cannot remove old snapshots of working root `a`: busy"),
            "envc: warning: cannot remove old snapshots of working root `a`: busy"
        );
    }

    #[test]
    fn step_report_shows_the_last_ten_lines() {
        let src =
            miette::NamedSource::new("env.kdl", std::sync::Arc::new("run \"false\"\n".into()));
        let f = StepFailure {
            layer: "a".into(),
            step: 0,
            reason: "exit status 1".into(),
            tail: (1..=12).map(|i| format!("line {i}")).collect(),
            log: "/s/logs/a.log".into(),
            src,
            span: (0, 11).into(),
        };
        let report = step_failed(&f);
        let help = report.help().unwrap().to_string();
        assert!(!help.contains("line 2\n"), "{help}");
        assert!(
            help.starts_with("last lines of output:\n  line 3\n"),
            "{help}"
        );
        assert!(
            help.ends_with("  line 12\nfull log: /s/logs/a.log"),
            "{help}"
        );
        assert_eq!(
            report.to_string(),
            "layer `a`: step 1 failed: exit status 1"
        );
    }
}
