//! `plumb audit`: the signed, hash-chained audit trail of runs.

use std::path::PathBuf;

use clap::Subcommand;

use super::args::OutputFormat;
use super::term::{escape, print_json, Paint, Term};

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
        /// Fail (exit 1) unless the chain holds this record, `SEQ:HASH` as a previous verify
        /// printed its head: catches removal of the newest records.
        #[arg(long, value_name = "SEQ:HASH")]
        expect_head: Option<crate::audit::AuditHead>,
        /// Fail (exit 1) unless the chain has at least this many records.
        #[arg(long, value_name = "N")]
        min_seq: Option<u64>,
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

/// Dispatches `plumb audit ...`.
pub fn run(command: AuditCommand, term: Term) -> anyhow::Result<u8> {
    match command {
        AuditCommand::PublicKey { state } => {
            let key = crate::audit::DaemonKey::load_or_create(&state)?;
            println!("{}", key.public_key_openssh());
            Ok(0)
        }
        AuditCommand::Verify {
            state,
            public_key,
            expect_head,
            min_seq,
            output,
        } => {
            let anchor = crate::audit::Anchor {
                head: expect_head,
                min_seq,
            };
            audit_verify(&state, public_key.as_deref(), &anchor, output, term.err)
        }
    }
}

fn audit_verify(
    state: &std::path::Path,
    public_key: Option<&std::path::Path>,
    anchor: &crate::audit::Anchor,
    output: OutputFormat,
    style: Paint,
) -> anyhow::Result<u8> {
    let db = crate::state::StateDb::open_inspect(state)?;
    let key = match public_key {
        Some(p) => crate::audit::read_public_key(p)?,
        None => crate::audit::DaemonKey::load(&state.join(crate::audit::KEY_FILE))?.verifying_key(),
    };
    let report = db.verify_report(&key, anchor)?;
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => {
            if let Some(e) = report.error_text() {
                eprintln!("{}: {}", style.red("error"), escape(&e));
            }
            println!("{}", escape(&report.summary_text()));
        }
    }
    Ok(u8::from(!report.ok))
}
