//! `plumb verify`.

use std::path::PathBuf;

use super::args::{OutputArg, OutputFormat};
use super::term::{print_json, print_text, Term};

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The repository (working tree or bare).
    pub repo: PathBuf,
    /// The allowed-signers file (OpenSSH format, as git's gpg.ssh.allowedSignersFile).
    #[arg(long)]
    pub allowed_signers: PathBuf,
    /// The last trusted commit: verify the commits after it (REV must descend from it).
    #[arg(long)]
    pub from: Option<String>,
    /// The revision to verify.
    #[arg(default_value = "HEAD")]
    pub rev: String,
    #[command(flatten)]
    pub output: OutputArg,
}

/// Exit 0 all verified, 1 otherwise (naming the first bad commit).
pub fn run(args: VerifyArgs, term: Term) -> anyhow::Result<u8> {
    let report = crate::source::verify_repo(
        &args.repo,
        &args.allowed_signers,
        args.from.as_deref(),
        &args.rev,
    )?;
    match args.output.output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text if report.ok => print_text(&report.to_text())?,
        OutputFormat::Text => {
            print_text(&report.to_text())?;
            eprintln!("{}: verification failed", term.err.red("error"));
        }
    }
    Ok(u8::from(!report.ok))
}
