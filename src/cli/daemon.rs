//! `plumb daemon`, and the daemon's log setup.

use std::path::PathBuf;

use clap::ValueEnum;

use crate::report::ValidateReport;

use super::args::runtime;
use super::diagnostic::eprint_report;
use super::term::Term;

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
        std::fs::create_dir_all(&cfg.state_dir)?;
        let key = crate::audit::DaemonKey::load_or_create(&cfg.state_dir)?;
        println!("{}", key.public_key_openssh());
        return Ok(0);
    }
    init_logging(args.log_format, term.log_color());
    let daemon = crate::daemon::Daemon::new(&args.config, cfg)?;
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(log_ansi(format, stderr_color))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
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
}
