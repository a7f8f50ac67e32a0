//! Log output that fits where it goes, and the fields operators filter on. Colour only on a
//! terminal without `NO_COLOR`; under systemd (stderr is the stream `JOURNAL_STREAM` names) each
//! line carries its level as an sd-daemon `<N>` priority prefix and no timestamp (the journal
//! keeps its own); JSON puts every field at the top level. [`Event`] names the operator-facing
//! events; the README lists their fields.

use std::fmt;
use std::io::{IsTerminal as _, Write as _};
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::sync::OnceLock;

use tracing::{Level, Subscriber};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::registry::LookupSpan;

/// The value of the `event` field: what happened to a certificate. Every such event also has
/// `certificate`; the README lists the other fields of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// PCA issued a new certificate (`cloud_id`, `reason`).
    Issued,
    /// New files are in place (`cloud_id`, `fingerprint`, `reason`, `action`).
    Installed,
    /// The reloads, tests and served-certificate checks after an install passed (`fingerprint`).
    Reloaded,
    /// A reload, test or check failed and the previous files were put back (`reason`: the stage
    /// that failed, `error_kind`, `fingerprint`: the certificate restored, `error`).
    RolledBack,
    /// The certificate reached every configured cloud target (`cloud_id`: the SCM id,
    /// `fingerprint`).
    Deployed,
    /// A check failed; the files in place are unchanged (`error_kind`, `error`).
    Failed,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Issued => "issued",
            Event::Installed => "installed",
            Event::Reloaded => "reloaded",
            Event::RolledBack => "rolled_back",
            Event::Deployed => "deployed",
            Event::Failed => "failed",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The sd-daemon(3) priority of a level: `<3>` error, `<4>` warning, `<6>` info, `<7>` debug.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Whether `JOURNAL_STREAM` (`DEVICE:INODE`, decimal, as systemd sets it) names the file whose
/// device and inode are given.
pub fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

/// Whether stderr is connected to the journal: `JOURNAL_STREAM` is set and names stderr itself
/// (not a pipe or file a child of the service was given instead). Decided once per process.
pub fn stderr_is_journal() -> bool {
    static JOURNAL: OnceLock<bool> = OnceLock::new();
    *JOURNAL.get_or_init(|| {
        let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
            return false;
        };
        // fstat of a duplicate of fd 2: no unsafe code, works for pipes, sockets and files.
        let stat = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map(std::fs::File::from)
            .and_then(|f| f.metadata());
        match (value.to_str(), stat) {
            (Some(v), Ok(m)) => journal_stream_matches(v, m.dev(), m.ino()),
            _ => false,
        }
    })
}

/// Colour is for terminals only, and never when `NO_COLOR` is set to a non-empty value
/// (no-color.org).
pub fn colour_allowed(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn env_allows_colour(is_terminal: bool) -> bool {
    colour_allowed(is_terminal, std::env::var_os("NO_COLOR").as_deref())
}

/// `text` in red when stdout is a terminal and colour is allowed; as is otherwise. For the
/// failures in the human output of `renew`, `check` and `status`.
pub fn red_on_terminal(text: &str) -> String {
    if env_allows_colour(std::io::stdout().is_terminal()) {
        format!("\x1b[31m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// Writes `error: {message}` to stderr (each line prefixed `<3>` under the journal), for the
/// errors a command reports itself, before or outside the logs.
pub fn print_error(message: impl fmt::Display) {
    let text = format!("error: {message}");
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.lines() {
        if stderr_is_journal() {
            out.push_str("<3>");
        }
        out.push_str(line);
        out.push('\n');
    }
    // Nothing to do if stderr is gone.
    let _ = std::io::stderr().lock().write_all(out.as_bytes());
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Output {
    pub json: bool,
    /// ANSI colour (text only).
    pub colour: bool,
    /// sd-daemon `<N>` prefixes; text lines lose their timestamp.
    pub journal: bool,
}

impl Output {
    /// For stderr as it is now: colour on a terminal without `NO_COLOR`, journal prefixes
    /// when stderr is the journal.
    pub fn detect(json: bool) -> Self {
        let journal = stderr_is_journal();
        Output {
            json,
            colour: !journal && !json && env_allows_colour(std::io::stderr().is_terminal()),
            journal,
        }
    }
}

/// Installs the global subscriber: `filter` (an `EnvFilter` directive, `RUST_LOG` wins), to
/// stderr, formatted as `output` says.
pub fn init(filter: &str, output: Output) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(output.colour)
        // A closed stderr (`ccm-agent demo 2>&1 | head`) loses the logs; reporting that on
        // stderr would panic.
        .log_internal_errors(false)
        .event_format(LineFormat::new(output))
        .init();
}

/// The event formatter behind [`init`]: tracing-subscriber's own text or JSON format, with
/// the journal's priority prefix on every line when stderr is the journal.
pub struct LineFormat {
    inner: Inner,
    journal: bool,
}

enum Inner {
    Text(format::Format<format::Full, SystemTime>),
    TextNoTime(format::Format<format::Full, ()>),
    Json(format::Format<format::Json, SystemTime>),
}

impl LineFormat {
    pub fn new(output: Output) -> Self {
        let base = format::format().with_ansi(output.colour);
        let inner = if output.json {
            // Fields at the top level, next to timestamp, level, target and message.
            Inner::Json(
                base.with_ansi(false)
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false),
            )
        } else if output.journal {
            Inner::TextNoTime(base.with_ansi(false).without_time())
        } else {
            Inner::Text(base)
        };
        LineFormat {
            inner,
            journal: output.journal,
        }
    }
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let format = |writer: Writer<'_>| match &self.inner {
            Inner::Text(f) => f.format_event(ctx, writer, event),
            Inner::TextNoTime(f) => f.format_event(ctx, writer, event),
            Inner::Json(f) => f.format_event(ctx, writer, event),
        };
        if !self.journal {
            return format(writer);
        }
        // journald reads the prefix per line: a multi-line message (a child's stderr) keeps
        // its priority on every line.
        let mut line = String::new();
        format(Writer::new(&mut line))?;
        let p = priority(event.metadata().level());
        for l in line.lines() {
            writeln!(writer, "<{p}>{l}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert!(journal_stream_matches("8:1234", 8, 1234));
        assert!(journal_stream_matches("8:1234\n", 8, 1234));
        assert!(!journal_stream_matches("8:1235", 8, 1234));
        assert!(!journal_stream_matches("9:1234", 8, 1234));
        assert!(!journal_stream_matches("", 8, 1234));
        assert!(!journal_stream_matches("8", 8, 1234));
        assert!(!journal_stream_matches("x:y", 8, 1234));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour_allowed(true, None));
        assert!(colour_allowed(true, Some(OsStr::new(""))));
        assert!(!colour_allowed(true, Some(OsStr::new("1"))));
        assert!(!colour_allowed(false, None));
    }

    #[test]
    fn priorities_follow_sd_daemon() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
        assert_eq!(priority(&Level::TRACE), 7);
    }

    #[test]
    fn event_names_are_the_documented_ones() {
        let all = [
            Event::Issued,
            Event::Installed,
            Event::Reloaded,
            Event::RolledBack,
            Event::Deployed,
            Event::Failed,
        ];
        let names: Vec<String> = all.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "issued",
                "installed",
                "reloaded",
                "rolled_back",
                "deployed",
                "failed"
            ]
        );
    }
}
