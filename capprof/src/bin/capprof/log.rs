//! The lines capprof writes to stderr besides its output: every warning,
//! from a command or from the library (through `tracing`), has one form,
//! `capprof: warning: …`, and so have errors and notes. Colour only when
//! stderr is a terminal and `NO_COLOR` is unset, so that files and pipes
//! get plain text.

use std::{
    fmt::{self, Display},
    io::{IsTerminal as _, Write as _},
    sync::OnceLock,
};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format},
    registry::LookupSpan,
};

/// Whether stderr gets colour: decided once.
fn colour() -> bool {
    static COLOUR: OnceLock<bool> = OnceLock::new();
    *COLOUR.get_or_init(|| {
        std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
    })
}

/// `capprof: warning: ` (and `error`, `debug`, `trace`; info has no
/// label), coloured when [`colour`] says so.
fn prefix(level: Level, colour: bool) -> String {
    let (label, ansi) = match level {
        Level::ERROR => ("error: ", "31"),
        Level::WARN => ("warning: ", "33"),
        Level::INFO => ("", ""),
        Level::DEBUG => ("debug: ", "34"),
        Level::TRACE => ("trace: ", "35"),
    };
    if colour && !ansi.is_empty() {
        format!("capprof: \x1b[{ansi}m{label}\x1b[0m")
    } else {
        format!("capprof: {label}")
    }
}

/// Writes one warning line to stderr, whatever `CAPPROF_LOG` says: for
/// what the user must see (a partial recording, an input left out).
pub fn warn(message: impl Display) {
    let _ = writeln!(
        std::io::stderr(),
        "{}{message}",
        prefix(Level::WARN, colour())
    );
}

/// Formats `tracing` events as [`warn`] writes its lines.
struct Lines;

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "{}", prefix(*event.metadata().level(), colour()))?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Sends `tracing` events (`CAPPROF_LOG`, default `warn`) to stderr as
/// [`Lines`]. kube-rs's own events are off unless `CAPPROF_LOG` names
/// them: capprof says what a failed request means in one line of its own
/// (`fleet::FleetError`), and kube-rs would add a second, rawer one.
pub fn init() {
    use tracing_subscriber::EnvFilter;
    let spec = std::env::var("CAPPROF_LOG").unwrap_or_default();
    let mut filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("warn"));
    if spec.trim().is_empty() {
        filter = EnvFilter::new("warn");
    }
    if !spec.contains("kube") {
        filter = filter.add_directive("kube_client=off".parse().expect("a valid directive"));
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour())
        .event_format(Lines)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_form_for_every_line() {
        assert_eq!(prefix(Level::WARN, false), "capprof: warning: ");
        assert_eq!(prefix(Level::ERROR, false), "capprof: error: ");
        assert_eq!(prefix(Level::INFO, false), "capprof: ");
        assert_eq!(
            prefix(Level::WARN, true),
            "capprof: \x1b[33mwarning: \x1b[0m"
        );
    }
}
