//! `plumb apply` rolls a stopped wave's hosts back "like the daemon": the hosts of that wave
//! that took the commit go back to their last good commit, known from the state
//! (`--state DIR`, the daemon's when beside it). Each target commit is taken from the repo's
//! git history (its tree exported into a private directory, never the working tree),
//! re-verified against the trust root given (`--allowed-signers`/`--openpgp-keyring`; one
//! that no longer verifies is refused, and said), rendered, applied to those hosts only (a
//! roll-forward to the old desired state), health-checked with its own checks, and recorded
//! as a `rollback` run (the bad commit, the failed wave's reason and check output, the
//! target and its signer) in the state and its audit chain. The decision is the daemon's
//! ([`crate::rollout::rollback::decide`]): `rollback: off` and changes a module declares
//! irreversible are honoured. Later waves are never touched. Without `--state` no last good
//! commit is known: the report says so and names the `plumb rollback` command that does it.

use std::path::Path;

use crate::engine::HostRun;
use crate::model::Environment;
use crate::report::plan::{ApplyReport, ApplyRollback, ApplyRollbackRun, ApplyRollbackStatus};
use crate::rollout::rollback::{self, RollbackDecision, RollbackFacts, RollbackOrder};
use crate::rollout::WaveSummary;
use crate::state::{NewRun, RunKind, RunResult, StateDb, StepMeta, Trigger};

use super::args::{HostArgs, Target};
use super::facts::{prepare, Prepared};
use super::last_good::{verify_commit, Scratch};
use super::term::Term;

/// The wave that stopped the apply.
pub struct Stopped<'a> {
    /// The commit applied (`<id>` or `uncommitted:<tree sha256>`; `HEAD` without `--state`).
    pub bad_commit: String,
    /// The recorded `manual` run that stopped (with `--state`).
    pub failed_run: Option<crate::state::RunId>,
    /// Why the wave stopped (its failed hosts, or its failed checks with their output).
    pub reason: &'a str,
    pub wave: &'a WaveSummary,
    /// The stopped wave's host runs.
    pub runs: Vec<&'a HostRun>,
    /// The environment as the applied tree declares it (`rollback:`).
    pub environment: Option<&'a Environment>,
}

/// What a rollback by `plumb apply` works with.
pub struct Ctx<'a> {
    pub args: &'a HostArgs,
    pub allowed_signers: Option<&'a Path>,
    pub openpgp_keyring: Option<&'a Path>,
    /// The state (`--state`), whose apply leases this process already holds for every
    /// selected host.
    pub state: Option<&'a StateDb>,
    pub no_rollback: bool,
    pub rt: &'a tokio::runtime::Runtime,
    pub term: Term,
}

/// Decides and carries out what becomes of the stopped wave's hosts.
pub fn after_stop(s: &Stopped<'_>, ctx: &Ctx<'_>) -> anyhow::Result<ApplyRollback> {
    let mut facts = RollbackFacts::default();
    for r in &s.runs {
        rollback::note_taken(r, &mut facts);
    }
    let hosts = if facts.took_commit.is_empty() {
        s.wave.hosts.clone()
    } else {
        facts.took_commit.clone()
    };
    let out = |status, message: String, hosts: Vec<String>| ApplyRollback {
        status,
        message,
        hosts,
        runs: Vec::new(),
    };
    if ctx.no_rollback {
        let message = format!(
            "not rolled back (--no-rollback): {} stay on this commit",
            hosts.join(", ")
        );
        return Ok(out(ApplyRollbackStatus::Disabled, message, hosts));
    }
    let Some(db) = ctx.state else {
        let message = no_state_message(ctx.args, &hosts);
        return Ok(out(ApplyRollbackStatus::NoState, message, hosts));
    };
    let env = &ctx.args.target.env;
    facts.mode = s
        .environment
        .map(|e| e.settings.rollback)
        .unwrap_or_default();
    facts.last_good = db
        .last_good(env)?
        .into_iter()
        .map(|(h, g)| (h, g.commit))
        .collect();
    // A person's apply is not the daemon's loop: `already_rolled_back` (at most one automatic
    // rollback per commit and host) stays empty, and nothing is claimed in `rollbacks`.
    match rollback::decide(
        &facts,
        (&s.bad_commit, s.failed_run.as_ref()),
        Some(s.reason),
        Some(s.wave),
    ) {
        RollbackDecision::Not(why) => Ok(out(ApplyRollbackStatus::NotRolledBack, why, hosts)),
        RollbackDecision::RollBack(order) => {
            let mut runs = Vec::new();
            for (target, hosts) in order.by_target() {
                runs.push(roll_back_to(ctx, db, &order, target, hosts)?);
            }
            Ok(outcome(runs))
        }
    }
}

/// Without `--state`: nothing to go back to, and the command that does it.
fn no_state_message(args: &HostArgs, hosts: &[String]) -> String {
    let limits: Vec<String> = hosts.iter().map(|h| format!("--limit {h}")).collect();
    format!(
        "not rolled back: without --state, plumb apply knows no last good commit; {} stay on \
         this commit. To put them back on their last good commit: plumb rollback {} --env {} \
         {} --state <the daemon's state directory> --allowed-signers <file> (or apply with \
         --state next time)",
        hosts.join(", "),
        args.target.repo.display(),
        args.target.env,
        limits.join(" ")
    )
}

/// The report of every rollback run made.
fn outcome(runs: Vec<ApplyRollbackRun>) -> ApplyRollback {
    let hosts: Vec<String> = runs
        .iter()
        .flat_map(|r| r.summary.hosts.iter().cloned())
        .collect();
    let failures: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            r.summary.failure().map(|why| {
                format!(
                    "rollback of {} to {} failed: {why}",
                    r.summary.hosts.join(", "),
                    short(&r.summary.target)
                )
            })
        })
        .collect();
    let done: Vec<String> = runs
        .iter()
        .map(|r| {
            format!(
                "{} to {} (signed by {}; run {})",
                r.summary.hosts.join(", "),
                short(&r.summary.target),
                r.summary.target_signer.as_deref().unwrap_or("?"),
                r.run
            )
        })
        .collect();
    let (status, message) = if failures.is_empty() {
        (
            ApplyRollbackStatus::RolledBack,
            format!("rolled back to their last good commit: {}", done.join("; ")),
        )
    } else {
        (
            ApplyRollbackStatus::Failed,
            format!(
                "{}; the hosts are left as they are, a person must look",
                failures.join("; ")
            ),
        )
    };
    ApplyRollback {
        status,
        message,
        hosts,
        runs,
    }
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// One `rollback` run: `hosts` back to `target`, recorded whatever happens.
fn roll_back_to(
    ctx: &Ctx<'_>,
    db: &StateDb,
    order: &RollbackOrder,
    target: &str,
    hosts: Vec<String>,
) -> anyhow::Result<ApplyRollbackRun> {
    let env = &ctx.args.target.env;
    let mut summary =
        rollback::RollbackSummary::start(crate::state::RollbackBy::Person, order, target, &hosts);
    let prepared = prepare_target(ctx, target, &hosts)?;
    let signer = prepared.as_ref().ok().map(|(s, _, _)| s.clone());
    summary.target_signer = signer.as_ref().map(|s| s.principal.clone());
    let run = db.begin_run(&NewRun {
        environment: env.clone(),
        commit: Some(target.to_string()),
        signer,
        kind: RunKind::Rollback,
        trigger: Trigger::Cli,
    })?;
    let mut runs: Vec<HostRun> = Vec::new();
    let mut declared = std::collections::HashMap::new();
    match prepared {
        Err(why) => summary.refused = Some(why),
        Ok((_, prep, _scratch)) => {
            runs = apply_prepared(ctx, &prep)?;
            declared = prep
                .hosts
                .iter()
                .map(|h| (h.host.name.clone(), crate::prune::Managed::declared(h)))
                .collect();
            let checks = prep
                .repo
                .environments
                .get(env)
                .map(|e| e.health_checks.clone())
                .unwrap_or_default();
            let connector = ctx.args.conn.connector();
            let (failed, health) = ctx.rt.block_on(rollback::check_rolled_back(
                &runs,
                &checks,
                connector.as_ref(),
                &prep.repo,
            ));
            summary.failed_hosts = failed;
            summary.health = health;
        }
    }
    // Every change is the rollback's: from the bad commit back to the target.
    let meta = StepMeta::rollback(
        crate::state::RollbackOrigin {
            from: Some(order.bad_commit.clone()),
            to: target.to_string(),
            by: crate::state::RollbackBy::Person,
            run: run.clone(),
        },
        summary.target_signer.as_deref(),
    );
    for r in &runs {
        let d = declared.get(&r.host.name).map_or(&[][..], Vec::as_slice);
        db.record_host(&run, r, &meta, d)?;
    }
    let result = if summary.succeeded() {
        RunResult::Converged
    } else {
        RunResult::Failed
    };
    db.finish_run(&run, result, &serde_json::to_value(&summary)?)?;
    Ok(ApplyRollbackRun {
        run: run.0,
        summary,
        hosts: ApplyReport::new(env, &runs).hosts,
    })
}

/// Applies the target's desired state to its hosts (those whose facts could not be gathered
/// fail as in any apply).
fn apply_prepared(ctx: &Ctx<'_>, prep: &Prepared) -> anyhow::Result<Vec<HostRun>> {
    let connector = ctx.args.conn.connector();
    let connector = connector.as_ref();
    let mut runs = ctx
        .rt
        .block_on(crate::engine::until_signal(crate::engine::each_host(
            &prep.hosts,
            ctx.args.conn.parallel,
            |h| {
                let t = connector.connect(&h.host);
                async move { crate::engine::apply_host(h, t.as_ref()).await }
            },
        )))?;
    runs.extend(prep.ungathered.iter().map(|u| u.run()));
    Ok(runs)
}

/// The target commit from the repo's history, re-verified, exported and rendered for
/// `hosts`; `Err(why)` when it cannot be used (recorded with the run and reported).
type PreparedTarget = Result<(crate::state::Signer, Prepared, Scratch), String>;

fn prepare_target(ctx: &Ctx<'_>, target: &str, hosts: &[String]) -> anyhow::Result<PreparedTarget> {
    let args = ctx.args;
    let repo = &args.target.repo;
    let git = match crate::source::git::open(repo) {
        Ok(g) => g,
        Err(e) => {
            return Ok(Err(format!(
                "{e}: the last good commit is taken from the repo's git history, so the repo \
                 must be a git checkout"
            )))
        }
    };
    let oid = git2::Oid::from_str(target)
        .ok()
        .filter(|o| git.find_commit(*o).is_ok());
    let Some(oid) = oid else {
        return Ok(Err(format!(
            "the last good commit {target} is not in the history of {} (git fetch it)",
            repo.display()
        )));
    };
    let files = crate::source::TrustFiles {
        allowed_signers: ctx.allowed_signers,
        openpgp_keyring: ctx.openpgp_keyring,
        seal_signers: None,
    };
    let signer = match verify_commit(repo, files, oid) {
        Ok(s) => s,
        Err(e) => return Ok(Err(format!("{e:#}; it was not applied"))),
    };
    let scratch = Scratch::new()?;
    let limit = hosts
        .iter()
        .map(|h| h.parse())
        .collect::<Result<Vec<crate::limit::Limit>, _>>();
    let Ok(limit) = limit else {
        return Ok(Err("a host name is not a valid --limit".into()));
    };
    let t = Target {
        repo: scratch.checkout(&git, oid)?,
        env: args.target.env.clone(),
        limit,
        facts: args.target.facts.clone(),
        secrets_identity: args.target.secrets_identity.clone(),
    };
    let mut prep = match prepare(&t, &args.conn, args.output.output, ctx.term, ctx.rt) {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Ok(Err(format!(
                "the last good commit {target} does not validate any more (see above)"
            )))
        }
        Err(e) => return Ok(Err(format!("the last good commit {target}: {e:#}"))),
    };
    if prep.hosts.len() + prep.ungathered.len() != hosts.len() {
        return Ok(Err(
            "a host is not in the last good commit's inventory".to_string()
        ));
    }
    // What the bad commit added and the last good one does not declare is removed (prune on).
    if let Some(db) = ctx.state {
        prep.prune_from(db, &args.target.env)?;
    }
    Ok(Ok((signer, prep, scratch)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::HostStatus;
    use crate::state::tests::{host_run, private_tmp};
    use crate::state::{RunFilter, RunId};

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: HostArgs,
    }

    fn args(repo: &Path) -> HostArgs {
        use clap::Parser;
        Cli::try_parse_from(["apply", &repo.display().to_string(), "--env", "prod"])
            .expect("args")
            .args
    }

    /// The canary wave stopped on web1, which took the commit (one step changed).
    fn stopped<'a>(wave: &'a WaveSummary, runs: &'a [HostRun]) -> Stopped<'a> {
        Stopped {
            bad_commit: "uncommitted:feed".into(),
            failed_run: None,
            reason: "wave `canary`: health checks failed",
            wave,
            runs: runs.iter().collect(),
            environment: None,
        }
    }

    fn canary() -> (WaveSummary, Vec<HostRun>) {
        let wave = WaveSummary {
            name: "canary".into(),
            hosts: vec!["web1".into()],
            failed_hosts: Vec::new(),
            health: None,
        };
        (wave, vec![host_run("web1", 1, HostStatus::Converged)])
    }

    fn ctx<'a>(
        a: &'a HostArgs,
        state: Option<&'a StateDb>,
        no_rollback: bool,
        rt: &'a tokio::runtime::Runtime,
    ) -> Ctx<'a> {
        Ctx {
            args: a,
            allowed_signers: None,
            openpgp_keyring: None,
            state,
            no_rollback,
            rt,
            term: Term::new(super::super::args::ColorChoice::Never),
        }
    }

    fn set_last_good(db: &StateDb, commit: &str) {
        let run = db
            .begin_run(&NewRun {
                environment: "prod".into(),
                commit: Some(commit.into()),
                signer: None,
                kind: RunKind::Apply,
                trigger: Trigger::Cli,
            })
            .expect("run");
        db.set_last_good("prod", &["web1".into()], commit, &run)
            .expect("last good");
        db.finish_run(&run, RunResult::Converged, &serde_json::json!({}))
            .expect("finish");
    }

    fn rollback_runs(db: &StateDb) -> Vec<crate::state::RunRecord> {
        db.runs(&RunFilter::default())
            .expect("runs")
            .into_iter()
            .filter(|r| r.kind == RunKind::Rollback)
            .collect()
    }

    /// `--no-rollback`, no `--state`, and no last good commit each leave the hosts on the
    /// commit, saying why; without `--state` the message is the command that rolls back.
    #[test]
    fn what_a_stopped_apply_does_without_a_rollback() {
        let rt = super::super::args::runtime().expect("runtime");
        let a = args(Path::new("/srv/config"));
        let (wave, runs) = canary();
        let s = stopped(&wave, &runs);

        let r = after_stop(&s, &ctx(&a, None, true, &rt)).expect("decided");
        assert_eq!(r.status, ApplyRollbackStatus::Disabled);
        assert_eq!(r.hosts, vec!["web1".to_string()]);

        let r = after_stop(&s, &ctx(&a, None, false, &rt)).expect("decided");
        assert_eq!(r.status, ApplyRollbackStatus::NoState);
        assert!(
            r.message.contains("knows no last good commit")
                && r.message.contains(
                    "plumb rollback /srv/config --env prod --limit web1 --state <the daemon's state directory> --allowed-signers <file>"
                ),
            "{}",
            r.message
        );

        let dir = private_tmp();
        let db = StateDb::open_recorder(dir.path()).expect("state");
        let r = after_stop(&s, &ctx(&a, Some(&db), false, &rt)).expect("decided");
        assert_eq!(r.status, ApplyRollbackStatus::NotRolledBack);
        assert_eq!(r.message, "not rolled back: no last good commit for web1");
        assert!(rollback_runs(&db).is_empty());
    }

    /// A host with a last good commit is rolled back to it, but only once it verifies: a repo
    /// that is not a git checkout, a commit not in its history, or no trust root refuse it
    /// before any host is contacted, and the refusal is a recorded `rollback` run.
    #[test]
    fn a_last_good_commit_that_cannot_be_verified_is_refused_and_recorded() {
        let rt = super::super::args::runtime().expect("runtime");
        let (wave, runs) = canary();
        let s = stopped(&wave, &runs);
        let dir = private_tmp();
        let db = StateDb::open_recorder(dir.path()).expect("state");

        let plain = tempfile::tempdir().expect("tempdir");
        set_last_good(&db, "0123456789abcdef0123456789abcdef01234567");
        let a = args(plain.path());
        let r = after_stop(&s, &ctx(&a, Some(&db), false, &rt)).expect("decided");
        assert_eq!(r.status, ApplyRollbackStatus::Failed, "{}", r.message);
        let refused = r.runs[0].summary.refused.clone().unwrap_or_default();
        assert!(refused.contains("must be a git checkout"), "{refused}");
        assert!(r.runs[0].hosts.is_empty(), "no host was contacted");

        // A git checkout holding the commit, but no trust root to verify it against.
        let repo = git2::Repository::init(plain.path()).expect("init");
        let sig = git2::Signature::now("t", "t@example.com").expect("signature");
        let tree = repo
            .find_tree(
                repo.treebuilder(None)
                    .and_then(|b| b.write())
                    .expect("tree"),
            )
            .expect("tree");
        let good = repo
            .commit(Some("HEAD"), &sig, &sig, "good", &tree, &[])
            .expect("commit")
            .to_string();
        set_last_good(&db, &good);
        let r = after_stop(&s, &ctx(&a, Some(&db), false, &rt)).expect("decided");
        assert_eq!(r.status, ApplyRollbackStatus::Failed, "{}", r.message);
        let summary = &r.runs[0].summary;
        assert_eq!(summary.target, good);
        assert_eq!(summary.rollback_of, "uncommitted:feed");
        assert!(
            summary
                .refused
                .as_deref()
                .is_some_and(|w| w.contains("no trust root")),
            "{summary:?}"
        );
        assert!(r.message.contains("a person must look"), "{}", r.message);

        // Both are `rollback` runs in the state, failed, naming the bad commit and the reason.
        let recorded = rollback_runs(&db);
        assert_eq!(recorded.len(), 2);
        assert!(recorded.iter().all(|r| r.result == RunResult::Failed
            && r.trigger == Trigger::Cli
            && r.summary["reason"] == "wave `canary`: health checks failed"));
        assert_eq!(recorded[0].id, RunId(r.runs[0].run.clone()));
    }
}
