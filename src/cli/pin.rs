//! `plumb rollback` and `plumb unpin`: a person pins hosts to an older, previously applied
//! commit (re-verified against today's trust root, rendered and applied like any commit), and
//! releases them. Both write the daemon's state (or a standalone one) and its audit chain: a
//! `pin` run, an `unpin` run. The daemon keeps pinned hosts on their pin (see
//! `daemon::pins`) until `plumb unpin` or a commit newer than the one they were pinned back
//! from.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use schemars::JsonSchema;
use serde::Serialize;

use crate::engine::HostStatus;
use crate::report::plan::ApplyReport;
use crate::state::{
    NewRun, Pin, RollbackBy, RollbackOrigin, RunKind, RunResult, StateDb, StepMeta, Trigger,
};

use super::args::{runtime, ConnArgs, FactsArgs, OutputArg, OutputFormat, Target};
use super::facts::prepare;
use super::term::{print_json, print_text, Term};

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// The config repository (a git working tree or bare repository) holding the commit.
    pub repo: PathBuf,
    /// Environment name.
    #[arg(long)]
    pub env: String,
    /// The commit to go back to: one applied to this environment before (see `plumb
    /// history`). Default: the newest commit applied before the environment's newest one.
    #[arg(long, value_name = "COMMIT")]
    pub to: Option<String>,
    /// Only these hosts (names, globs, label selectors, as `plumb apply --limit`).
    #[arg(long, alias = "host", value_name = "LIMIT")]
    pub limit: Vec<crate::limit::Limit>,
    /// Why (recorded with the `pin` run, with who ran it, in the audit chain).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// The state directory: the daemon's (running or not: the hosts are leased, so the daemon
    /// never applies one at the same time) or a standalone one.
    #[arg(long, env = "PLUMB_STATE_DIR")]
    pub state: PathBuf,
    /// Today's trust root: the allowed-signers file the commit must verify against.
    #[arg(long, required_unless_present = "openpgp_keyring")]
    pub allowed_signers: Option<PathBuf>,
    /// An armored OpenPGP public keyring, for OpenPGP-signed commits.
    #[arg(long)]
    pub openpgp_keyring: Option<PathBuf>,
    /// Who may sign `Plumb-Seal:` commits.
    #[arg(long)]
    pub seal_signers: Option<PathBuf>,
    #[command(flatten)]
    pub facts: FactsArgs,
    /// The age identity that decrypts this environment's secrets.
    #[arg(long, env = "PLUMB_SECRETS_IDENTITY")]
    pub secrets_identity: Option<PathBuf>,
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(flatten)]
    pub output: OutputArg,
}

#[derive(Debug, clap::Args)]
pub struct UnpinArgs {
    /// Environment name.
    #[arg(long)]
    pub env: String,
    /// Only these pinned hosts (names or globs). Default: every pinned host.
    #[arg(long, alias = "host", value_name = "LIMIT")]
    pub limit: Vec<crate::limit::Limit>,
    /// The state directory the pins are in.
    #[arg(long, env = "PLUMB_STATE_DIR")]
    pub state: PathBuf,
    #[command(flatten)]
    pub output: OutputArg,
}

/// `plumb rollback --output json`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct RollbackReport {
    pub environment: String,
    /// The commit the hosts are pinned to.
    pub target: String,
    /// Its signer, verified against today's trust root.
    pub target_signer: String,
    /// The environment's newest commit when pinned: a newer one releases the pins.
    pub bad_commit: Option<String>,
    /// The `pin` run (in `plumb history` and the audit chain).
    pub run: String,
    /// The apply of the target on the pinned hosts.
    pub apply: ApplyReport,
}

/// `plumb unpin --output json`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct UnpinReport {
    pub environment: String,
    /// The pins released.
    pub released: Vec<Pin>,
    /// The `unpin` run; none when nothing was pinned.
    pub run: Option<String>,
}

/// The commit to go back to and the environment's newest one (the bad one).
fn choose_target(
    db: &StateDb,
    repo: &git2::Repository,
    env: &str,
    to: Option<&str>,
) -> anyhow::Result<(git2::Oid, Option<String>)> {
    let applied = db.applied_commits(env)?;
    let bad = applied.first().map(|(c, _)| c.clone());
    let target = match to {
        Some(rev) => crate::source::git::resolve(repo, rev)?,
        None => {
            let Some((c, _)) = applied.iter().skip(1).find(|(_, converged)| *converged) else {
                bail!("environment {env} has no earlier applied commit to go back to; name one with --to (plumb history --env {env})");
            };
            git2::Oid::from_str(c).map_err(|_| anyhow!("state holds a bad commit id `{c}`"))?
        }
    };
    let hex = target.to_string();
    if bad.as_deref() == Some(hex.as_str()) {
        bail!("{hex} is environment {env}'s newest commit: name an older one with --to");
    }
    if !db.was_applied(env, &hex)? {
        bail!("commit {hex} was never applied to environment {env} (plumb history --env {env}): only a commit applied before can be pinned");
    }
    Ok((target, bad))
}

/// Verifies `target` against today's trust root; returns its signer.
fn verify_target(a: &RollbackArgs, target: git2::Oid) -> anyhow::Result<crate::state::Signer> {
    let files = crate::source::TrustFiles {
        allowed_signers: a.allowed_signers.as_deref(),
        openpgp_keyring: a.openpgp_keyring.as_deref(),
        seal_signers: a.seal_signers.as_deref(),
    };
    super::last_good::verify_commit(&a.repo, files, target)
}

/// The `pin` run's reason when `--reason` is not given.
const PIN_REASON: &str = "pinned by a person (plumb rollback)";

/// Every change of a `pin` run is this rollback's: back to `commit`, from the environment's
/// newest commit (`bad`), decided by a person.
fn pin_meta(
    commit: &str,
    signer: &crate::state::Signer,
    bad: Option<&str>,
    run: &crate::state::RunId,
) -> StepMeta {
    StepMeta::rollback(
        RollbackOrigin {
            from: bad.map(str::to_string),
            to: commit.to_string(),
            by: RollbackBy::Person,
            run: run.clone(),
        },
        Some(signer.principal.as_str()),
    )
}

/// The `pin` run's summary: the target and the hosts (`pinned`: commit, bad commit, hosts,
/// failed hosts), who ran it, `--to` as given, and why.
fn pin_summary(
    a: &RollbackArgs,
    signer: &crate::state::Signer,
    (commit, bad, hosts, failed): (&str, Option<&str>, &[String], &[String]),
) -> serde_json::Value {
    serde_json::json!({
        "pinned_to": commit,
        "target_signer": signer.principal,
        "bad_commit": bad,
        "hosts": hosts,
        "failed_hosts": failed,
        "by": RollbackBy::Person,
        "requested_by": super::manual::local_user(),
        "to": a.to,
        "reason": a.reason.as_deref().unwrap_or(PIN_REASON),
    })
}

/// Pins the selected hosts to the target and applies it. Exit 0 when every host converged.
pub fn rollback(a: RollbackArgs, term: Term) -> anyhow::Result<u8> {
    let output = a.output.output;
    let db = open_state(&a.state)?;
    let git = crate::source::git::open(&a.repo)?;
    let (target, bad) = choose_target(&db, &git, &a.env, a.to.as_deref())?;
    let signer = verify_target(&a, target)?;
    let scratch = super::last_good::Scratch::new()?;
    let rt = runtime()?;
    let mut prep = prepare_target(&a, (&git, target), &scratch, &rt, term)?;
    // Never while the daemon (or another person) applies one of these hosts.
    let _leases = super::last_good::lease(
        &db,
        &a.env,
        prep.hosts
            .iter()
            .map(|h| &h.host)
            .chain(prep.ungathered.iter().map(|u| &u.host)),
        "plumb rollback",
    )?;
    // What the newer commits added and the target does not declare is removed (prune on).
    prep.prune_from(&db, &a.env)?;
    let connector = a.conn.connector();
    let mut runs = rt.block_on(crate::engine::until_signal(crate::engine::each_host(
        &prep.hosts,
        a.conn.parallel,
        |h| {
            let t = connector.connect(&h.host);
            async move { crate::engine::apply_host(h, t.as_ref()).await }
        },
    )))?;
    runs.extend(prep.ungathered.iter().map(|u| u.run()));
    let commit = target.to_string();
    let run = db.begin_run(&NewRun {
        environment: a.env.clone(),
        commit: Some(commit.clone()),
        signer: Some(signer.clone()),
        kind: RunKind::Pin,
        trigger: Trigger::Cli,
    })?;
    let meta = pin_meta(&commit, &signer, bad.as_deref(), &run);
    for r in &runs {
        let declared = prep
            .hosts
            .iter()
            .find(|h| h.host.name == r.host.name)
            .map(crate::prune::Managed::declared)
            .unwrap_or_default();
        db.record_host(&run, r, &meta, &declared)?;
    }
    let hosts: Vec<String> = runs.iter().map(|r| r.host.name.clone()).collect();
    let failed: Vec<String> = runs
        .iter()
        .filter(|r| r.status != HostStatus::Converged)
        .map(|r| r.host.name.clone())
        .collect();
    db.set_pins(&a.env, &hosts, &commit, bad.as_deref(), &run)?;
    let result = if failed.is_empty() {
        RunResult::Converged
    } else {
        RunResult::Failed
    };
    let pinned = (
        commit.as_str(),
        bad.as_deref(),
        hosts.as_slice(),
        failed.as_slice(),
    );
    db.finish_run(&run, result, &pin_summary(&a, &signer, pinned))?;
    let mut apply = ApplyReport::new(&a.env, &runs);
    apply.set_orphans(&prep.hosts);
    let report = RollbackReport {
        environment: a.env.clone(),
        target: commit,
        target_signer: signer.principal,
        bad_commit: bad,
        run: run.0,
        apply,
    };
    print_report(&report, output, term)?;
    Ok(u8::from(result != RunResult::Converged))
}

/// The target commit checked out into `scratch` and prepared (validated, rendered, facts) for
/// the selected hosts.
fn prepare_target(
    a: &RollbackArgs,
    (git, target): (&git2::Repository, git2::Oid),
    scratch: &super::last_good::Scratch,
    rt: &tokio::runtime::Runtime,
    term: Term,
) -> anyhow::Result<super::facts::Prepared> {
    let t = Target {
        repo: scratch.checkout(git, target)?,
        env: a.env.clone(),
        limit: a.limit.clone(),
        facts: a.facts.clone(),
        secrets_identity: a.secrets_identity.clone(),
    };
    let Some(prep) = prepare(&t, &a.conn, a.output.output, term, rt)? else {
        bail!(
            "commit {target} does not validate for environment {} any more (see above)",
            a.env
        );
    };
    Ok(prep)
}

/// Prints a rollback's report as `--output` says.
fn print_report(report: &RollbackReport, output: OutputFormat, term: Term) -> anyhow::Result<()> {
    match output {
        OutputFormat::Json => print_json(report)?,
        OutputFormat::Text => {
            super::term::print_lines(&crate::report::plan::apply_lines(&report.apply), term.out);
            print_text(&format!(
                "pinned {} to {} (signed by {}); run {}; until plumb unpin or a commit newer than {}\n",
                report.apply.hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(", "),
                report.target,
                report.target_signer,
                report.run,
                report.bad_commit.as_deref().unwrap_or("-"),
            ))?;
        }
    }
    Ok(())
}

/// Releases pins. Exit 0 (also when nothing was pinned).
pub fn unpin(a: UnpinArgs) -> anyhow::Result<u8> {
    let db = open_state(&a.state)?;
    let limits = crate::limit::Limits(a.limit.clone());
    let none = std::collections::BTreeMap::new();
    let chosen: Vec<Pin> = db
        .pins(Some(&a.env))?
        .into_iter()
        .filter(|p| limits.is_all() || limits.0.iter().any(|l| l.matches(&p.host, &none)))
        .collect();
    let mut report = UnpinReport {
        environment: a.env.clone(),
        released: Vec::new(),
        run: None,
    };
    if !chosen.is_empty() {
        let hosts: Vec<String> = chosen.iter().map(|p| p.host.clone()).collect();
        let run = db.begin_run(&NewRun {
            environment: a.env.clone(),
            commit: None,
            signer: None,
            kind: RunKind::Unpin,
            trigger: Trigger::Cli,
        })?;
        db.remove_pins(&a.env, &hosts)?;
        let summary = serde_json::json!({
            "hosts": hosts,
            "pinned_to": chosen.iter().map(|p| p.commit.clone()).collect::<Vec<_>>(),
            "reason": "released by a person (plumb unpin)",
        });
        db.finish_run(&run, RunResult::Converged, &summary)?;
        report.run = Some(run.0);
        report.released = chosen;
    }
    match a.output.output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text if report.released.is_empty() => {
            print_text(&format!("nothing pinned in {}\n", a.env))?
        }
        OutputFormat::Text => {
            for p in &report.released {
                print_text(&format!(
                    "released {} (was pinned to {})\n",
                    p.host, p.commit
                ))?;
            }
        }
    }
    Ok(0)
}

/// The state beside a running daemon too: no exclusive lock (every write is one IMMEDIATE
/// transaction; hosts are guarded by apply leases), the daemon key to sign the runs.
fn open_state(dir: &Path) -> anyhow::Result<StateDb> {
    StateDb::open_recorder(dir).with_context(|| format!("opening the state in {}", dir.display()))
}
