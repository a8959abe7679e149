//! The command line. The only layer that knows about terminals, colour and exit codes.
//!
//! Exit codes are a contract (see DESIGN.md): 0 success / no changes, 1 error, 2 changes
//! (plan) or drift found (drift). Usage errors exit 1, never 2, so a typo in a CI script is
//! never mistaken for "changes pending".
//!
//! One file per command; arguments shared by several commands live in `args`, terminal
//! output (colour, escaping of host and repo text) in `term`, diagnostics in `diagnostic`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod apply;
pub mod args;
mod audit;
mod daemon;
mod diagnostic;
mod drift;
mod facts;
mod history;
mod init;
mod manual;
pub mod pin;
mod plan;
mod policy;
mod render;
mod schemas;
mod secrets;
pub mod term;
mod validate;
mod verify;

pub use args::{ColorChoice, ConnArgs, Connection, OutputFormat};
pub use audit::AuditCommand;
pub use daemon::LogFormat;

use term::{escape_text, Term};

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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a config repo: YAML, schemas, references, templates. Exit 0 valid, 1 invalid.
    Validate(validate::ValidateArgs),
    /// Show the ordered, templated steps each host will be given.
    Render(render::RenderArgs),
    /// Show what apply would change on each host. Exit 0 nothing to do, 2 changes, 1 error.
    /// With --state, what plumb applied before and the repo no longer declares is shown
    /// (`- remove` under prune, `? orphaned` otherwise).
    Plan(plan::PlanArgs),
    /// Make every host match the repo, wave by wave with the environment's health checks
    /// (unless --no-waves). Exit 0 converged, 1 if any host failed, a wave stopped it or the
    /// trust root refused the tree. With --state, recorded as a `manual` run.
    Apply(apply::ApplyArgs),
    /// Check the hosts for drift from the repo. Exit 0 no drift, 2 drift found, 1 error.
    Drift(plan::PlanArgs),
    /// Check that every commit in FROM..REV (or REV alone) is signed by an allowed signer.
    /// Exit 0 all verified, 1 otherwise (naming the first bad commit).
    Verify(verify::VerifyArgs),
    /// The long-running reconciler: watch the repo, verify, apply in waves, check drift.
    Daemon(daemon::DaemonArgs),
    /// List recorded runs, newest first.
    History(history::HistoryArgs),
    /// List drift findings, open and resolved, newest first.
    DriftHistory(history::DriftHistoryArgs),
    /// The signed, hash-chained audit trail of runs.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Write the JSON Schemas plumb validates with into a directory (for editors and CI).
    Schemas(schemas::SchemasArgs),
    /// Gather and print the facts of an environment's hosts (one round trip each), and
    /// cache them for `render` and `validate`. Exit 0, 1 if a host's facts could not be read.
    Facts(args::HostArgs),
    /// Write a working starting repo (plumb.yaml, an environment, a unit, a template, an
    /// allowed-signers example) into DIR; never overwrites a file.
    Init(init::InitArgs),
    /// Guardrails: run the policies' tests, or show what they decide on an environment.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Pin hosts to an older, previously applied commit (re-verified against today's trust
    /// root) and apply it; the daemon keeps them there until `plumb unpin` or a newer commit.
    /// Exit 0 converged, 1 otherwise.
    Rollback(pin::RollbackArgs),
    /// Release hosts pinned by `plumb rollback`.
    Unpin(pin::UnpinArgs),
    /// The repo's age-encrypted secrets: set, edit, rekey, check.
    Secrets {
        #[command(subcommand)]
        command: secrets::SecretsCommand,
    },
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
    let term = Term::new(cli.color);
    match run(cli.command, term) {
        Ok(code) => ExitCode::from(code),
        // The reader went away (`plumb render ... | head`): not an error of ours.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "{}: {}",
                term.err.red("error"),
                escape_text(&format!("{e:#}"))
            );
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

/// Runs one command; the exit code it returns is the process's (0 / 1 / 2).
fn run(command: Command, term: Term) -> anyhow::Result<u8> {
    match command {
        Command::Validate(a) => validate::run(a, term),
        Command::Render(a) => render::run(a, term),
        Command::Plan(a) => plan::run(a, plan::PlanKind::Plan, term),
        Command::Drift(a) => drift::run(a, term),
        Command::Apply(a) => apply::run(a, term),
        Command::Verify(a) => verify::run(a, term),
        Command::Daemon(a) => daemon::run(a, term),
        Command::History(a) => history::run(a),
        Command::DriftHistory(a) => history::drift_history(a),
        Command::Audit { command } => audit::run(command, term),
        Command::Schemas(a) => schemas::run(a),
        Command::Facts(a) => facts::run(a, term),
        Command::Init(a) => init::run(a, term),
        Command::Secrets { command } => secrets::run(command, term),
        Command::Policy { command } => policy::run(command, term),
        Command::Rollback(a) => pin::rollback(a, term),
        Command::Unpin(a) => pin::unpin(a),
    }
}
