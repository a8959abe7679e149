//! `plumb audit`: the signed, hash-chained audit trail of runs.

use std::path::PathBuf;

use clap::Subcommand;

use super::args::OutputFormat;
use super::term::{escape, print_json, Paint, Term};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every run record's hash, signature and chain link, in a state directory or in an
    /// export (`--file`). Exit 0 intact, 1 broken (naming the first broken record).
    Verify {
        /// The daemon's state directory (holding plumb.db).
        #[arg(long, env = "PLUMB_STATE_DIR", required_unless_present = "file")]
        state: Option<PathBuf>,
        /// An export written by `plumb audit export` to verify instead of a state directory
        /// (needs --public-key; no plumb state or config is read).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// A FILE holding the daemon's public key (one line `ssh-ed25519 AAAA... plumb-daemon`,
        /// as `plumb audit public-key` prints it), kept apart from the state. Default with
        /// --state: derived from the daemon key in the state directory.
        #[arg(long, value_name = "FILE")]
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
    /// Write the signed records as JSON lines on stdout (header line first: public key, head,
    /// its signature), for `plumb audit verify --file F --public-key KEYFILE` anywhere.
    Export {
        /// The daemon's state directory.
        #[arg(long, env = "PLUMB_STATE_DIR")]
        state: PathBuf,
        /// Only runs started at or after (and every later one): RFC 3339 or a time ago (7d).
        #[arg(long)]
        since: Option<String>,
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
        AuditCommand::Export { state, since } => export(&state, since.as_deref()),
        AuditCommand::Verify {
            state,
            file,
            public_key,
            expect_head,
            min_seq,
            output,
        } => {
            let anchor = crate::audit::Anchor {
                head: expect_head,
                min_seq,
            };
            match (file, state) {
                (Some(f), _) => {
                    let key = public_key
                        .ok_or_else(|| anyhow::anyhow!("--file needs --public-key FILE"))?;
                    verify_file(&f, &key, &anchor, output, term.err)
                }
                (None, Some(state)) => {
                    audit_verify(&state, public_key.as_deref(), &anchor, output, term.err)
                }
                (None, None) => Err(anyhow::anyhow!("give --state DIR or --file FILE")),
            }
        }
    }
}

fn export(state: &std::path::Path, since: Option<&str>) -> anyhow::Result<u8> {
    use std::io::Write;
    let since = since
        .map(|s| crate::state::filter::TimeBound::parse(s, crate::state::now_ms()))
        .transpose()
        .map_err(|m| anyhow::anyhow!("--since: {m}"))?;
    let db = crate::state::StateDb::open_inspect(state)?;
    let key = crate::audit::DaemonKey::load(&state.join(crate::audit::KEY_FILE))?;
    let records = db.export_records(since.map(|t| t.0))?;
    let head = records.last().map(|r| crate::audit::AuditHead {
        seq: u64::try_from(r.seq).unwrap_or(0),
        hash: r.hash.clone(),
    });
    let first = records.first().map(|r| u64::try_from(r.seq).unwrap_or(0));
    let header =
        crate::audit::export::ExportHeader::signed(&key, crate::state::now_ms(), first, head);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    serde_json::to_writer(&mut out, &header)?;
    writeln!(out)?;
    for r in &records {
        serde_json::to_writer(&mut out, r)?;
        writeln!(out)?;
    }
    out.flush()?;
    Ok(0)
}

fn verify_file(
    file: &std::path::Path,
    public_key: &std::path::Path,
    anchor: &crate::audit::Anchor,
    output: OutputFormat,
    style: Paint,
) -> anyhow::Result<u8> {
    let key = crate::audit::read_public_key(public_key)?;
    let f = std::fs::File::open(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let mut r = std::io::BufReader::new(f);
    let report = crate::audit::export::verify_export(&mut r, &key, anchor)?;
    print_verify(&report, output, style)
}

fn print_verify(
    report: &crate::audit::AuditVerifyReport,
    output: OutputFormat,
    style: Paint,
) -> anyhow::Result<u8> {
    match output {
        OutputFormat::Json => print_json(report)?,
        OutputFormat::Text => {
            if let Some(e) = report.error_text() {
                eprintln!("{}: {}", style.red("error"), escape(&e));
            }
            println!("{}", escape(&report.summary_text()));
        }
    }
    Ok(u8::from(!report.ok))
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
    print_verify(&report, output, style)
}
