//! `plumb verify`.

use std::path::PathBuf;

use super::args::{OutputArg, OutputFormat};
use super::term::{print_json, print_text, Term};

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The repository (working tree or bare).
    pub repo: PathBuf,
    /// The allowed-signers file for SSH signatures (OpenSSH format, as git's
    /// gpg.ssh.allowedSignersFile). At least one of this and --openpgp-keyring.
    #[arg(long, required_unless_present = "openpgp_keyring")]
    pub allowed_signers: Option<PathBuf>,
    /// An armored OpenPGP public keyring for OpenPGP signatures (`gpg --export --armor`).
    #[arg(long)]
    pub openpgp_keyring: Option<PathBuf>,
    /// Who may sign `Plumb-Seal:` commits: allowed-signers lines and/or OpenPGP fingerprints.
    #[arg(long)]
    pub seal_signers: Option<PathBuf>,
    /// The last trusted commit: verify the commits after it (REV must descend from it).
    #[arg(long)]
    pub from: Option<String>,
    /// For each commit: its signer, format, key fingerprint and the trust-root entry that
    /// admitted it.
    #[arg(long)]
    pub explain: bool,
    /// The revision to verify.
    #[arg(default_value = "HEAD")]
    pub rev: String,
    #[command(flatten)]
    pub output: OutputArg,
}

/// The text of `FILE:LINE` (an allowed-signers line, the key shortened), for `--explain`.
fn entry_text(at: &str) -> Option<String> {
    let (path, line) = at.rsplit_once(':')?;
    let n: usize = line.parse().ok()?;
    let text = std::fs::read_to_string(path).ok()?;
    let l = text.lines().nth(n.checked_sub(1)?)?.trim();
    if l.starts_with("-----BEGIN PGP") {
        return None;
    }
    let shortened: Vec<String> = l
        .split_whitespace()
        .map(|w| match w.get(..24) {
            Some(head) if w.len() > 40 => format!("{head}..."),
            _ => w.to_string(),
        })
        .collect();
    Some(shortened.join(" "))
}

/// Exit 0 all verified, 1 otherwise (naming the first bad commit).
pub fn run(args: VerifyArgs, term: Term) -> anyhow::Result<u8> {
    let files = crate::source::TrustFiles {
        allowed_signers: args.allowed_signers.as_deref(),
        openpgp_keyring: args.openpgp_keyring.as_deref(),
        seal_signers: args.seal_signers.as_deref(),
    };
    let report = crate::source::verify_repo(&args.repo, files, args.from.as_deref(), &args.rev)?;
    let explain: Option<crate::source::report::EntryText<'_>> = args
        .explain
        .then_some(&entry_text as &dyn Fn(&str) -> Option<String>);
    match args.output.output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text if report.ok => print_text(&report.to_text_with(explain))?,
        OutputFormat::Text => {
            print_text(&report.to_text_with(explain))?;
            eprintln!("{}: verification failed", term.err.red("error"));
        }
    }
    Ok(u8::from(!report.ok))
}
