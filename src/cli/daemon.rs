//! `plumb daemon`, and the daemon's log setup.

use std::path::PathBuf;

use clap::ValueEnum;

use crate::report::ValidateReport;

use super::args::runtime;
use super::diagnostic::eprint_report;
use super::term::{escape_except, Term};

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// The daemon configuration (YAML; schema: schemas/daemon.schema.json).
    #[arg(long)]
    pub config: PathBuf,
    /// Print the daemon's audit public key (OpenSSH format) and exit.
    #[arg(long)]
    pub print_public_key: bool,
    /// Log format: json (one object per line, for collectors) or text (coloured only on a
    /// terminal, as `--color` says).
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Start although the state database is empty or missing while the daemon key or
    /// mirror show the daemon ran before (a deliberate reset; it is recorded).
    #[arg(long)]
    pub accept_state_reset: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Runs until SIGTERM/SIGINT. Exit 0 after a clean stop, 1 on a bad config or a fatal error.
pub fn run(args: DaemonArgs, term: Term) -> anyhow::Result<u8> {
    let cfg = match crate::daemon::DaemonConfig::load(&args.config) {
        Ok(c) => c,
        Err((diags, sources)) => {
            eprint_report(&ValidateReport::new(diags), &sources, term.err);
            return Ok(1);
        }
    };
    if args.print_public_key {
        // load_or_create makes the state directory 0700 (a 0755 one would be refused later).
        let key = crate::audit::DaemonKey::load_or_create(&cfg.state_dir)?;
        println!("{}", key.public_key_openssh());
        return Ok(0);
    }
    init_logging(args.log_format, term.log_color());
    let options = crate::daemon::StartOptions {
        accept_state_reset: args.accept_state_reset,
        // This very executable validates each new commit in a child under limits.
        validator: std::env::current_exe().ok(),
    };
    // Before any thread starts (see daemon::memory).
    crate::daemon::memory::limit_arenas();
    let daemon = crate::daemon::Daemon::new(&args.config, cfg, options)?;
    runtime()?.block_on(daemon.run())?;
    Ok(0)
}

/// Whether log lines carry ANSI colour: JSON never; text only when stderr may be coloured.
fn log_ansi(format: LogFormat, stderr_color: bool) -> bool {
    format == LogFormat::Text && stderr_color
}

/// Structured logs on stderr; `RUST_LOG` filters (default `info`).
fn init_logging(format: LogFormat, stderr_color: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = log_ansi(format, stderr_color);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => builder
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder
            .with_writer(move || EscapingWriter {
                inner: std::io::stderr(),
                keep_esc: ansi,
            })
            .try_init(),
    };
}

/// Text log lines with host and repo text escaped for a terminal (tracing-subscriber
/// escapes ESC and C1 in values, not CR, the other C0 controls or bidi overrides). ESC is
/// kept only when the lines are coloured: tracing's own escapes it in the values already.
struct EscapingWriter<W> {
    inner: W,
    keep_esc: bool,
}

impl<W: std::io::Write> std::io::Write for EscapingWriter<W> {
    /// tracing writes each event in one piece, so `buf` is whole UTF-8.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let keep_esc = self.keep_esc;
        let escaped = escape_except(&text, |c| {
            c == '\n' || c == '\t' || (keep_esc && c == '\u{1b}')
        });
        self.inner.write_all(escaped.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_text_logs_to_a_colour_stream_are_coloured() {
        assert!(log_ansi(LogFormat::Text, true));
        assert!(!log_ansi(LogFormat::Text, false));
        assert!(!log_ansi(LogFormat::Json, true));
        assert!(!log_ansi(LogFormat::Json, false));
    }

    #[test]
    fn text_log_lines_are_escaped() {
        use std::io::Write;
        let line = "\u{1b}[1mINFO\u{1b}[0m host \u{202e}x\r y\u{7}\tz\n";
        let mut plain = EscapingWriter {
            inner: Vec::new(),
            keep_esc: false,
        };
        plain.write_all(line.as_bytes()).expect("write");
        assert_eq!(
            String::from_utf8_lossy(&plain.inner),
            "\\x1b[1mINFO\\x1b[0m host \\u{202e}x\\x0d y\\x07\tz\n"
        );
        let mut coloured = EscapingWriter {
            inner: Vec::new(),
            keep_esc: true,
        };
        coloured.write_all(line.as_bytes()).expect("write");
        assert_eq!(
            String::from_utf8_lossy(&coloured.inner),
            "\u{1b}[1mINFO\u{1b}[0m host \\u{202e}x\\x0d y\\x07\tz\n"
        );
    }
}
