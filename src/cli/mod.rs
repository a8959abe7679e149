//! The command line. The only layer that knows about terminals, colour and exit codes.
//!
//! Exit codes are a contract (see DESIGN.md): 0 success / no changes, 1 error, 2 changes
//! (plan) or drift found (drift). Usage errors exit 1, never 2, so a typo in a CI script is
//! never mistaken for "changes pending".

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::diag::Severity;
use crate::report::{RenderReport, ValidateReport};

#[derive(Debug, Parser)]
#[command(
    name = "plumb",
    version,
    about = "GitOps reconciliation for plain Linux hosts",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Colour: auto (on a terminal, unless NO_COLOR is set), always, never.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a config repo: YAML, schemas, references, templates. Exit 0 valid, 1 invalid.
    Validate {
        /// The config repo (the directory holding plumb.yaml).
        repo: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Show the ordered, templated steps each host will be given.
    Render {
        repo: PathBuf,
        /// Environment name (a directory under environments/).
        #[arg(long)]
        env: String,
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
        /// Show file content (never for sensitive steps).
        #[arg(long)]
        show_content: bool,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Show what apply would change on each host. Exit 0 nothing to do, 2 changes, 1 error.
    Plan {
        repo: PathBuf,
        #[arg(long)]
        env: String,
        #[arg(long)]
        host: Option<String>,
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Make every host match the repo. Exit 0 converged, 1 if any host failed.
    Apply {
        repo: PathBuf,
        #[arg(long)]
        env: String,
        #[arg(long)]
        host: Option<String>,
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Check the hosts for drift from the repo. Exit 0 no drift, 2 drift found, 1 error.
    Drift {
        repo: PathBuf,
        #[arg(long)]
        env: String,
        #[arg(long)]
        host: Option<String>,
        #[command(flatten)]
        conn: ConnArgs,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Check that every commit in FROM..REV (or REV alone) is signed by an allowed signer.
    /// Exit 0 all verified, 1 otherwise (naming the first bad commit).
    Verify {
        /// The repository (working tree or bare).
        repo: PathBuf,
        /// The allowed-signers file (OpenSSH format, as git's gpg.ssh.allowedSignersFile).
        #[arg(long)]
        allowed_signers: PathBuf,
        /// The last trusted commit: verify the commits after it (REV must descend from it).
        #[arg(long)]
        from: Option<String>,
        /// The revision to verify.
        #[arg(default_value = "HEAD")]
        rev: String,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// The long-running reconciler: watch the repo, verify, apply in waves, check drift.
    Daemon {
        /// The daemon configuration (YAML; schema: schemas/daemon.schema.json).
        #[arg(long)]
        config: PathBuf,
        /// Print the daemon's audit public key (OpenSSH format) and exit.
        #[arg(long)]
        print_public_key: bool,
        /// Log format: json (one object per line, for collectors) or text.
        #[arg(long, value_enum, default_value_t = LogFormat::Json)]
        log_format: LogFormat,
    },
    /// List recorded runs, newest first.
    History {
        /// The daemon's state directory (holding plumb.db).
        #[arg(long, env = "PLUMB_STATE_DIR")]
        state: PathBuf,
        /// Only this environment.
        #[arg(long)]
        env: Option<String>,
        /// At most this many runs.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// The signed, hash-chained audit trail of runs.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Write the JSON Schemas plumb validates with into a directory (for editors and CI).
    Schemas {
        /// Destination directory.
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every run record's hash, signature and chain link. Exit 0 intact, 1 broken
    /// (naming the first broken record).
    Verify {
        /// The daemon's state directory (holding plumb.db).
        #[arg(long, env = "PLUMB_STATE_DIR")]
        state: PathBuf,
        /// The daemon's public key (`ssh-ed25519 AAAA...`), kept apart from the state.
        /// Default: derived from the daemon key in the state directory.
        #[arg(long)]
        public_key: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Print the daemon's public key (creating the key if absent), for `audit verify --public-key`.
    PublicKey {
        /// The daemon's state directory.
        #[arg(long, env = "PLUMB_STATE_DIR")]
        state: PathBuf,
    },
}

/// How plumb reaches hosts.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    /// Hosts handled at once.
    #[arg(long, default_value_t = 10)]
    pub parallel: usize,
    /// `ssh` (default), or `local` to run every host's steps on this machine.
    #[arg(long, value_enum, default_value_t = Connection::Ssh)]
    pub connection: Connection,
    /// ssh_config file to use instead of ~/.ssh/config.
    #[arg(long, env = "PLUMB_SSH_CONFIG")]
    pub ssh_config: Option<PathBuf>,
    /// Private key to offer.
    #[arg(long, env = "PLUMB_SSH_IDENTITY")]
    pub identity: Option<PathBuf>,
    /// known_hosts file to use instead of ~/.ssh/known_hosts.
    #[arg(long, env = "PLUMB_KNOWN_HOSTS")]
    pub known_hosts: Option<PathBuf>,
    /// Trust unknown host keys on first use (a changed key is always refused).
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// Seconds to wait for a host to accept the connection.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Structured logs on stderr; `RUST_LOG` filters (default `info`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Connection {
    Ssh,
    Local,
}

impl ConnArgs {
    pub fn connector(&self) -> Box<dyn crate::engine::Connector> {
        match self.connection {
            Connection::Local => Box::new(crate::engine::LocalConnector),
            Connection::Ssh => Box::new(crate::engine::SshConnector {
                options: crate::transport::SshOptions {
                    config_file: self.ssh_config.clone(),
                    identity_file: self.identity.clone(),
                    known_hosts_file: self.known_hosts.clone(),
                    accept_new_host_keys: self.accept_new_host_keys,
                    connect_timeout: std::time::Duration::from_secs(self.connect_timeout.max(1)),
                    ..crate::transport::SshOptions::default()
                },
            }),
        }
    }
}

/// Terminal styling, decided once.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn new(choice: ColorChoice) -> Style {
        let color = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
            }
        };
        Style { color }
    }

    fn paint(&self, code: &str, s: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    pub fn red(&self, s: &str) -> String {
        self.paint("31", s)
    }
    pub fn yellow(&self, s: &str) -> String {
        self.paint("33", s)
    }
    pub fn green(&self, s: &str) -> String {
        self.paint("32", s)
    }
    pub fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }
    pub fn dim(&self, s: &str) -> String {
        self.paint("2", s)
    }
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(1),
            };
        }
    };
    let style = Style::new(cli.color);
    match run(cli.command, style) {
        Ok(code) => ExitCode::from(code),
        // The reader went away (`plumb render ... | head`): not an error of ours.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {e:#}", style.red("error"));
            ExitCode::from(1)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    let pipe = Some(std::io::ErrorKind::BrokenPipe);
    e.downcast_ref::<std::io::Error>().map(std::io::Error::kind) == pipe
        || e.downcast_ref::<serde_json::Error>()
            .and_then(serde_json::Error::io_error_kind)
            == pipe
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// Colours the `error:`/`warning:` word and the caret of plain diagnostic text.
fn colour_diagnostics(text: &str, style: Style) -> String {
    if !style.color {
        return text.to_string();
    }
    text.lines()
        .map(|l| {
            if let Some(i) = l.find(": error: ") {
                format!(
                    "{}{}{}",
                    style.bold(&l[..i]),
                    style.red(": error:"),
                    style.bold(&l[i + 8..])
                )
            } else if let Some(i) = l.find(": warning: ") {
                format!(
                    "{}{}{}",
                    style.bold(&l[..i]),
                    style.yellow(": warning:"),
                    style.bold(&l[i + 10..])
                )
            } else if l.trim_end().ends_with('^') && l.contains(" | ") {
                style.red(l)
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn run(command: Command, style: Style) -> anyhow::Result<u8> {
    match command {
        Command::Validate { repo, output } => {
            let (mut loaded, diags) = crate::validate::validate(&repo);
            loaded.sources.set_display_root(&repo.to_string_lossy());
            let report = ValidateReport::new(diags);
            let code = u8::from(!report.valid);
            match output {
                OutputFormat::Json => print_json(&report)?,
                OutputFormat::Text => {
                    let text = report.to_text(&loaded.sources);
                    let (body, last) = text
                        .trim_end()
                        .rsplit_once('\n')
                        .unwrap_or(("", text.trim_end()));
                    if !body.is_empty() {
                        eprint!("{}", colour_diagnostics(&format!("{body}\n"), style));
                    }
                    let last = if report.valid {
                        style.green(last)
                    } else {
                        style.red(last)
                    };
                    println!("{last}");
                }
            }
            Ok(code)
        }
        Command::Render {
            repo,
            env,
            host,
            show_content,
            output,
        } => {
            let (mut loaded, mut diags) = crate::validate::validate(&repo);
            loaded.sources.set_display_root(&repo.to_string_lossy());
            if diags.has_errors() {
                return Ok(fail_with(diags, &loaded.sources, output, style));
            }
            match crate::render::render_env(&loaded, &env, host.as_deref()) {
                Ok(hosts) => {
                    let report = RenderReport::new(&env, &hosts, show_content);
                    match output {
                        OutputFormat::Json => print_json(&report)?,
                        OutputFormat::Text => {
                            let mut out = std::io::stdout().lock();
                            out.write_all(report.to_text().as_bytes())?;
                            out.flush()?;
                        }
                    }
                    // Warnings still go to stderr, after the output.
                    let warnings: Vec<_> = diags
                        .iter()
                        .filter(|d| d.severity == Severity::Warning)
                        .cloned()
                        .collect();
                    for w in warnings {
                        eprint!(
                            "{}",
                            colour_diagnostics(
                                &crate::diag::render_plain(&w, &loaded.sources),
                                style
                            )
                        );
                    }
                    Ok(0)
                }
                Err(d) => {
                    diags.extend(d.into_sorted());
                    Ok(fail_with(diags, &loaded.sources, output, style))
                }
            }
        }
        Command::Plan {
            repo,
            env,
            host,
            conn,
            output,
        } => plan_cmd(&repo, &env, host.as_deref(), &conn, output, style, "plan"),
        Command::Drift {
            repo,
            env,
            host,
            conn,
            output,
        } => plan_cmd(&repo, &env, host.as_deref(), &conn, output, style, "drift"),
        Command::Apply {
            repo,
            env,
            host,
            conn,
            output,
        } => {
            let Some((hosts, _)) = desired(&repo, &env, host.as_deref(), output, style)? else {
                return Ok(1);
            };
            let connector = conn.connector();
            let progress = std::io::stderr().is_terminal() && output == OutputFormat::Text;
            let total = hosts.len();
            let done = std::sync::atomic::AtomicUsize::new(0);
            let runs = runtime()?.block_on(crate::engine::each_host(&hosts, conn.parallel, |h| {
                let t = connector.connect(&h.host);
                let done = &done;
                async move {
                    let r = crate::engine::apply_host(h, t.as_ref()).await;
                    if progress {
                        let n = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        eprintln!(
                            "{} [{n}/{total}] {} {:?} ({} changed)",
                            style.dim("plumb"),
                            r.host.name,
                            r.status,
                            r.changed()
                        );
                    }
                    r
                }
            }));
            let sensitive: std::collections::BTreeSet<String> = hosts
                .iter()
                .flat_map(|h| h.steps.iter())
                .filter(|s| s.sensitive)
                .map(|s| s.address.clone())
                .collect();
            let report =
                crate::report::plan::ApplyReport::new(&env, &runs, &|a| sensitive.contains(a));
            match output {
                OutputFormat::Json => print_json(&report)?,
                OutputFormat::Text => {
                    print_lines(&crate::report::plan::apply_lines(&report), style)
                }
            }
            Ok(report.exit_code())
        }
        Command::Verify {
            repo,
            allowed_signers,
            from,
            rev,
            output,
        } => {
            let report =
                crate::source::verify_repo(&repo, &allowed_signers, from.as_deref(), &rev)?;
            match output {
                OutputFormat::Json => print_json(&report)?,
                OutputFormat::Text if report.ok => print!("{}", report.to_text()),
                OutputFormat::Text => {
                    print!("{}", report.to_text());
                    eprintln!("{}: verification failed", style.red("error"));
                }
            }
            Ok(u8::from(!report.ok))
        }
        Command::Daemon {
            config,
            print_public_key,
            log_format,
        } => {
            let cfg = match crate::daemon::DaemonConfig::load(&config) {
                Ok(c) => c,
                Err((diags, sources)) => {
                    let report = ValidateReport::new(diags);
                    eprint!("{}", colour_diagnostics(&report.to_text(&sources), style));
                    return Ok(1);
                }
            };
            if print_public_key {
                std::fs::create_dir_all(&cfg.state_dir)?;
                let key = crate::audit::DaemonKey::load_or_create(&cfg.state_dir)?;
                println!("{}", key.public_key_openssh());
                return Ok(0);
            }
            init_logging(log_format);
            let daemon = crate::daemon::Daemon::new(&config, cfg)?;
            runtime()?.block_on(daemon.run())?;
            Ok(0)
        }
        Command::History {
            state,
            env,
            limit,
            output,
        } => {
            let db = crate::state::StateDb::open_inspect(&state)?;
            let runs = db.runs(&crate::state::RunFilter {
                environment: env,
                kind: None,
                limit: Some(limit),
            })?;
            let report = crate::state::report::HistoryReport::new(&runs);
            match output {
                OutputFormat::Json => print_json(&report)?,
                OutputFormat::Text => print!("{}", report.to_text()),
            }
            Ok(0)
        }
        Command::Audit {
            command: AuditCommand::PublicKey { state },
        } => {
            let key = crate::audit::DaemonKey::load_or_create(&state)?;
            println!("{}", key.public_key_openssh());
            Ok(0)
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    state,
                    public_key,
                    output,
                },
        } => audit_verify(&state, public_key.as_deref(), output, style),
        Command::Schemas { dir } => {
            for (file, schema) in crate::schemagen::generate() {
                let path = dir.join(&file);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&path, serde_json::to_string_pretty(&schema)? + "\n")?;
                println!("{}", path.display());
            }
            Ok(0)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Validates and renders; prints diagnostics and returns `None` when the repo is invalid,
/// so a bad commit never reaches a host.
fn desired(
    repo: &std::path::Path,
    env: &str,
    host: Option<&str>,
    output: OutputFormat,
    style: Style,
) -> anyhow::Result<Option<(Vec<crate::render::DesiredHost>, crate::diag::SourceMap)>> {
    let (loaded, diags, rendered) = crate::validate::validate_and_render(repo, env, host);
    match rendered {
        Some(h) if !diags.has_errors() => Ok(Some((h, loaded.sources))),
        _ => {
            fail_with(diags, &loaded.sources, output, style);
            Ok(None)
        }
    }
}

fn plan_cmd(
    repo: &std::path::Path,
    env: &str,
    host: Option<&str>,
    conn: &ConnArgs,
    output: OutputFormat,
    style: Style,
    kind: &str,
) -> anyhow::Result<u8> {
    let Some((hosts, _)) = desired(repo, env, host, output, style)? else {
        return Ok(1);
    };
    let connector = conn.connector();
    let plans = runtime()?.block_on(crate::engine::plan_all(
        &hosts,
        connector.as_ref(),
        conn.parallel,
    ));
    let report = crate::report::plan::PlanReport::new(env, kind, &plans);
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => print_lines(&crate::report::plan::plan_lines(&report), style),
    }
    Ok(report.exit_code())
}

fn audit_verify(
    state: &std::path::Path,
    public_key: Option<&std::path::Path>,
    output: OutputFormat,
    style: Style,
) -> anyhow::Result<u8> {
    use crate::audit::{AuditError, AuditVerifyReport, BrokenRecord};
    let db = crate::state::StateDb::open_inspect(state)?;
    let key = match public_key {
        Some(p) => crate::audit::read_public_key(p)?,
        None => crate::audit::DaemonKey::load(&state.join(crate::audit::KEY_FILE))?.verifying_key(),
    };
    let key_fingerprint = crate::audit::fingerprint(&key);
    let report = match crate::audit::verify_chain(&db, &key) {
        Ok(v) => AuditVerifyReport {
            ok: true,
            records: v.records,
            head: v.head,
            key_fingerprint,
            broken: None,
            error_code: None,
        },
        Err(AuditError::Broken {
            run_id,
            seq,
            reason,
        }) => {
            let records = if seq > 0 {
                usize::try_from(seq - 1).unwrap_or(0)
            } else {
                db.chain_head()?
                    .map(|(n, _)| usize::try_from(n).unwrap_or(0))
                    .unwrap_or(0)
            };
            AuditVerifyReport {
                ok: false,
                records,
                head: None,
                key_fingerprint,
                broken: Some(BrokenRecord {
                    run_id,
                    seq,
                    reason,
                }),
                error_code: Some("audit.broken".into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => match &report.broken {
            None => println!(
                "{} records verified; head {} (key {})",
                report.records,
                report.head.as_deref().unwrap_or("-"),
                report.key_fingerprint
            ),
            Some(b) => {
                let at = if b.seq > 0 {
                    format!("run {} (record #{})", b.run_id, b.seq)
                } else {
                    format!("run {}", b.run_id)
                };
                eprintln!(
                    "{}: audit chain broken at {at}: {}",
                    style.red("error"),
                    b.reason
                );
                println!("{} records verified before it", report.records);
            }
        },
    }
    Ok(u8::from(!report.ok))
}

fn print_lines(lines: &[(crate::report::plan::LineKind, String)], style: Style) {
    use crate::report::plan::LineKind as L;
    let mut out = std::io::stdout().lock();
    for (k, l) in lines {
        let text = match k {
            L::Header | L::Summary => style.bold(l),
            L::Create | L::DiffAdd => style.green(l),
            L::Modify | L::DiffHunk => style.yellow(l),
            L::Remove | L::DiffDel | L::Error => style.red(l),
            L::Plain => l.clone(),
        };
        let _ = writeln!(out, "{text}");
    }
}

/// Prints diagnostics (as a validate report) and returns exit code 1.
fn fail_with(
    diags: crate::diag::Diagnostics,
    sources: &crate::diag::SourceMap,
    output: OutputFormat,
    style: Style,
) -> u8 {
    let report = ValidateReport::new(diags);
    match output {
        OutputFormat::Json => {
            let _ = print_json(&report);
        }
        OutputFormat::Text => eprint!("{}", colour_diagnostics(&report.to_text(sources), style)),
    }
    1
}
