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
use crate::state::{NewRun, Pin, RunKind, RunResult, StateDb, StepMeta, Trigger};

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
    /// The state directory: the daemon's (stop the daemon first: it holds the state's lock)
    /// or a standalone one.
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

/// A private scratch directory for the target's checkout, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> anyhow::Result<Scratch> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("plumb-rollback-{}-{nanos}", std::process::id()));
        crate::audit::create_private_dir(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Verifies `target` against today's trust root; returns its signer.
fn verify_target(a: &RollbackArgs, target: git2::Oid) -> anyhow::Result<crate::state::Signer> {
    let files = crate::source::TrustFiles {
        allowed_signers: a.allowed_signers.as_deref(),
        openpgp_keyring: a.openpgp_keyring.as_deref(),
        seal_signers: a.seal_signers.as_deref(),
    };
    let report = crate::source::verify_repo(&a.repo, files, None, &target.to_string())?;
    let signer = report.commits.last().map(|c| crate::state::Signer {
        principal: c.signer.principal.clone(),
        fingerprint: c.signer.fingerprint.clone(),
    });
    match (report.ok, signer, report.failure) {
        (true, Some(s), _) => Ok(s),
        (_, _, Some(f)) => bail!(
            "commit {target} no longer verifies against today's trust root: {}: {}",
            f.reason.code(),
            f.message
        ),
        _ => bail!("commit {target} did not verify"),
    }
}

/// Pins the selected hosts to the target and applies it. Exit 0 when every host converged.
pub fn rollback(a: RollbackArgs, term: Term) -> anyhow::Result<u8> {
    let output = a.output.output;
    let db = open_state(&a.state)?;
    let git = crate::source::git::open(&a.repo)?;
    let (target, bad) = choose_target(&db, &git, &a.env, a.to.as_deref())?;
    let signer = verify_target(&a, target)?;
    let scratch = Scratch::new()?;
    let checkout = scratch.0.join("repo");
    crate::source::git::checkout(&git, target, &checkout)?;
    let rt = runtime()?;
    let t = Target {
        repo: checkout,
        env: a.env.clone(),
        limit: a.limit.clone(),
        facts: a.facts.clone(),
        secrets_identity: a.secrets_identity.clone(),
    };
    let Some(mut prep) = prepare(&t, &a.conn, output, term, &rt)? else {
        bail!(
            "commit {target} does not validate for environment {} any more (see above)",
            a.env
        );
    };
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
    for r in &runs {
        let declared = prep
            .hosts
            .iter()
            .find(|h| h.host.name == r.host.name)
            .map(crate::prune::Managed::declared)
            .unwrap_or_default();
        db.record_host(&run, r, &StepMeta::default(), &declared)?;
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
    let summary = serde_json::json!({
        "pinned_to": commit,
        "target_signer": signer.principal,
        "bad_commit": bad,
        "hosts": hosts,
        "failed_hosts": failed,
        "reason": "pinned by a person (plumb rollback)",
    });
    db.finish_run(&run, result, &summary)?;
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
    match output {
        OutputFormat::Json => print_json(&report)?,
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
    Ok(u8::from(result != RunResult::Converged))
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

fn open_state(dir: &Path) -> anyhow::Result<StateDb> {
    StateDb::open(dir).with_context(|| {
        format!(
            "opening the state in {} (a running daemon holds it: stop it, pin, start it again)",
            dir.display()
        )
    })
}
