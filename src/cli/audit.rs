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
            output,
        } => audit_verify(&state, public_key.as_deref(), output, term.err),
    }
}

fn audit_verify(
    state: &std::path::Path,
    public_key: Option<&std::path::Path>,
    output: OutputFormat,
    style: Paint,
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
                    escape(&b.reason)
                );
                println!("{} records verified before it", report.records);
            }
        },
    }
    Ok(u8::from(!report.ok))
}
