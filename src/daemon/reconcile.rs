//! The reconcile of one environment towards one tip ([`Daemon::reconcile_env`] returns an
//! [`Outcome`]), and the carrying out of the [`Effects`] the policy derives from it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::alert::AlertEvent;
use crate::engine::{self, HostStatus};
use crate::model::{Environment, Host, HumanDuration};
use crate::render::DesiredHost;
use crate::rollout::{only_inconclusive, stop_reason};
use crate::server::metrics::{RefusalSource, RunKind as MetricKind};
use crate::source::policy::{short, VerifiedRange};
use crate::source::{RangeOptions, Source};
use crate::state::{NewRun, NotReached, NotReachedReason, Origin, RunId, RunKind, RunResult};

use super::attribution::{RangeAttribution, MAX_RANGE_RENDERS};

use super::env_task::{EnvState, Tip};
use super::error::panic_message;
use super::policy::{
    self, CommitMark, CommitSummary, Effects, Outcome, Refusal, Refused, RollbackFacts, Rollout,
    RunSummary, WaveSummary,
};
use super::validator::Validator;
use super::{lock, lock_any, signer_of, Daemon, DaemonError, Wake};

/// A commit checked out, validated and rendered for one environment.
pub(super) struct Loaded {
    /// The loaded repo (health checks' URLs are templated in its template environment).
    pub repo: crate::model::Repo,
    pub hosts: Vec<DesiredHost>,
    pub environment: Environment,
    /// The environment's own `drift.interval`.
    pub env_interval: Duration,
    /// The guardrails' observations and verdict (set when a policy is in force).
    pub gate: Option<super::guard::Gate>,
    /// Hosts pinned by a person (`plumb rollback`): left out of the rollout.
    pub pinned: Vec<String>,
}

/// A checkout of `commit` under `base` (reused when present). Environments reconcile at
/// once: each call checks out into its own temporary directory, and the first to finish
/// puts it in place (the others use that one).
fn checkout_into(source: &Source, base: &Path, commit: git2::Oid) -> Result<PathBuf, DaemonError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = base.join(commit.to_string());
    if dir.is_dir() {
        return Ok(dir);
    }
    std::fs::create_dir_all(base).map_err(DaemonError::io("creating", base))?;
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = base.join(format!(".{commit}.{}.{n}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(DaemonError::io("removing", &tmp))?;
    }
    source.checkout(commit, &tmp)?;
    if let Err(e) = std::fs::rename(&tmp, &dir) {
        // Another environment put the same commit in place first.
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.is_dir() {
            return Err(DaemonError::io("renaming the checkout to", &dir)(e));
        }
    }
    Ok(dir)
}

/// Where the daemon's facts come from: its cache (`<state>/facts`) and the hosts.
pub(super) struct FactsSource<'a> {
    pub connector: &'a dyn engine::Connector,
    pub cache: crate::facts::cache::FactsCache,
    pub parallel: usize,
    /// Gather the facts of every host that uses them, cached or not: before an apply, so
    /// stale cached facts never stop one (a drift check uses the cache: facts ride along).
    pub fresh: bool,
}

impl FactsSource<'_> {
    /// Attaches the cached facts (unless `fresh`) and gathers those of the hosts of `env`
    /// that need facts and have none (one round trip each), caching what was gathered.
    async fn attach(&self, repo: &mut crate::model::Repo, env: &str) {
        let Some(e) = repo.environments.get(env) else {
            return;
        };
        if !self.fresh {
            self.cache.load_into(
                e.hosts.iter().map(|h| (env, h.name.as_str())),
                &mut repo.facts,
            );
        }
        let missing: Vec<Host> = e
            .hosts
            .iter()
            .filter(|h| crate::render::needs_facts(repo, env, h))
            .cloned()
            .collect();
        if missing.is_empty() {
            return;
        }
        let gathered = engine::gather_all(&missing, self.connector, self.parallel).await;
        for (host, (result, _)) in missing.iter().zip(gathered) {
            match result {
                Ok(f) => {
                    if let Err(e) = self.cache.store(env, &host.name, &f) {
                        tracing::warn!(host = %host.name, error = %e, "could not cache facts");
                    }
                    repo.facts.insert(env, &host.name, f);
                }
                // Rendering that host then fails, naming the fact: the commit is refused.
                Err(e) => {
                    tracing::warn!(host = %host.name, error = %e, "could not gather facts")
                }
            }
        }
    }
}

/// Checks out `commit` and validates and renders it for `env`, on the blocking pool, with
/// the facts of its hosts (see [`FactsSource`]). With a `validator`, the commit is first
/// validated in a child process under resource limits (a new commit; a commit applied
/// before is loaded directly). Every way this can fail is a [`Refusal`] (a panic
/// included), so the commit can be recorded.
pub(super) async fn load_commit(
    source: Arc<Source>,
    checkouts: PathBuf,
    commit: git2::Oid,
    env: &str,
    validator: Option<&Validator>,
    facts: &FactsSource<'_>,
    secrets: Option<Arc<crate::secrets::SecretIdentity>>,
) -> Result<Loaded, Refusal> {
    let internal = |what: &str, e: tokio::task::JoinError| Refusal::Internal {
        error: format!("{what}: {}", panic_message(e)),
    };
    let dir = tokio::task::spawn_blocking(move || checkout_into(&source, &checkouts, commit))
        .await
        .map_err(|e| internal("checking out", e))?
        .map_err(|e| Refusal::Checkout {
            error: e.to_string(),
        })?;
    if let Some(v) = validator {
        v.check(&dir).await?;
    }
    let job = tokio::task::spawn_blocking(move || crate::model::load::load(&dir));
    let (mut repo, mut diags) = job.await.map_err(|e| internal("loading", e))?;
    repo.secrets = crate::secrets::Keyring::for_env(env, secrets);
    if !diags.has_errors() {
        facts.attach(&mut repo, env).await;
    }
    let name = env.to_string();
    let job = tokio::task::spawn_blocking(move || {
        let hosts = crate::validate::check_and_render(&repo, &mut diags, &name, &|_| true);
        (repo, diags, hosts)
    });
    let (repo, diags, rendered) = job
        .await
        .map_err(|e| internal("validating and rendering", e))?;
    let Some(hosts) = rendered.filter(|_| !diags.has_errors()) else {
        let errors = diags
            .into_sorted()
            .into_iter()
            .filter(|d| d.severity == crate::diag::Severity::Error)
            .map(|d| format!("{}:{}:{}: {}", d.path, d.line, d.col, d.message))
            .collect();
        return Err(Refusal::Invalid { errors });
    };
    let Some(environment) = repo.environments.get(env).cloned() else {
        return Err(Refusal::Internal {
            error: format!("environment {env} is missing after rendering"),
        });
    };
    // Parsed (and checked) when the environment was loaded.
    let env_interval = environment.settings.drift.interval.get();
    Ok(Loaded {
        repo,
        hosts,
        environment,
        env_interval,
        gate: None,
        pinned: Vec::new(),
    })
}

/// Adds to each of `hosts` the removal of what the state says plumb applied there and the
/// host no longer declares, or its orphans (see [`crate::prune`]).
pub(super) fn prune_hosts(
    db: &crate::state::StateDb,
    env: &str,
    repo: &crate::model::Repo,
    hosts: &mut [DesiredHost],
) -> Result<(), DaemonError> {
    for h in hosts {
        let managed = db.managed(env, &h.host.name)?;
        crate::prune::add_removals(repo, env, h, &managed);
        for o in &h.orphans {
            tracing::info!(environment = %env, host = %h.host.name, address = %o.address, target = %o.target, reason = ?o.reason, "orphaned: no longer declared, left in place");
        }
    }
    Ok(())
}

/// A signature rejection as a refusal: the offending commit first (not the tip), the reason
/// code, how to fix it.
fn signature_refusal(rej: &crate::source::policy::Rejection, tip: git2::Oid) -> (Refusal, String) {
    let message = format!(
        "commit {} ({:?}) refused: {}: {}{}",
        short(rej.commit),
        rej.summary,
        rej.reason().code(),
        rej.failure,
        if rej.commit == tip {
            String::new()
        } else {
            format!(" [tip {}]", short(tip))
        }
    );
    let refusal = Refusal::Signature {
        code: rej.reason().code().to_string(),
        bad_commit: rej.commit.to_string(),
    };
    (refusal, message)
}

fn refusal_message(commit: &str, refusal: &Refusal) -> String {
    let commit = commit.get(..12).unwrap_or(commit);
    match refusal {
        Refusal::Signature { code, bad_commit } => {
            format!("commit {commit} refused: {code} (first bad commit {bad_commit})")
        }
        Refusal::Checkout { error } => format!("commit {commit} cannot be checked out: {error}"),
        Refusal::Invalid { errors } => {
            // The first errors, positioned, so the log and the alert say what to fix.
            let first: Vec<&str> = errors.iter().take(3).map(String::as_str).collect();
            let more = errors.len().saturating_sub(first.len());
            let more = if more > 0 {
                format!("; and {more} more (plumb validate)")
            } else {
                String::new()
            };
            format!(
                "commit {commit} is invalid ({} errors): {}{more}",
                errors.len(),
                first.join("; ")
            )
        }
        Refusal::Limit { error } => format!("commit {commit} refused: {error}"),
        Refusal::Internal { error } => format!("commit {commit} could not be validated: {error}"),
        Refusal::Policy { violations, .. } => {
            let first: Vec<String> = violations
                .iter()
                .take(3)
                .map(crate::policy::Finding::line)
                .collect();
            let more = violations.len().saturating_sub(first.len());
            let more = if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            };
            format!(
                "commit {commit} denied by policy ({} violations): {}{more}",
                violations.len(),
                first.join("; ")
            )
        }
    }
}

impl Daemon {
    /// Fetches and resolves the branch tip (bounded by [`super::FETCH_TIMEOUT`]).
    pub(super) async fn fetch(&self) -> Result<git2::Oid, DaemonError> {
        let source = self.source.clone();
        let follow = self.config.follow();
        let job = tokio::task::spawn_blocking(move || {
            source.fetch()?;
            source.resolve_follow(&follow)
        });
        let tip = match tokio::time::timeout(super::FETCH_TIMEOUT, job).await {
            Err(_) => return Err(DaemonError::FetchTimeout(super::FETCH_TIMEOUT)),
            Ok(Err(e)) => return Err(DaemonError::task("fetching")(e)),
            Ok(Ok(r)) => r?,
        };
        *lock_any(&self.latest_tip) = Some(tip);
        Ok(tip)
    }

    /// Reconciles `env` towards `tip` and carries out what the policy derives from the
    /// outcome, recording first; then the environment's drift schedule.
    pub(super) async fn reconcile_one(&self, env: &str, state: &mut EnvState, tip: Tip) {
        lock_any(&self.in_use).insert(env.to_string(), tip.oid.to_string());
        let result = self.reconcile_env(env, tip.oid, tip.wake).await;
        let effects = policy::policy(&result);
        match self.carry_out(env, tip.wake, &result, &effects) {
            Ok(()) => {
                if let Some(order) = &effects.rollback {
                    self.roll_back(env, tip.wake, order).await;
                }
                if effects.forget_drift_alerts && result.is_ok() {
                    // Every host converged to the new commit: no drift is left.
                    self.resolve_alerts(|k| {
                        k.event == AlertEvent::DriftFound && k.environment.as_deref() == Some(env)
                    });
                }
                state.schedule(effects.next_drift);
            }
            Err(e) => {
                tracing::error!(environment = %env, error = %e, code = e.code(), "cannot record the outcome");
            }
        }
        lock_any(&self.in_use).remove(env);
        self.prune_checkouts();
    }

    fn last_applied_oid(&self, env: &str) -> Result<Option<git2::Oid>, DaemonError> {
        let Some(last) = lock(&self.db).last_applied(env)? else {
            return Ok(None);
        };
        git2::Oid::from_str(&last.commit)
            .map(Some)
            .map_err(|_| DaemonError::CorruptCommit {
                environment: env.to_string(),
                commit: last.commit,
            })
    }

    async fn verify_range(
        &self,
        last: Option<git2::Oid>,
        tip: git2::Oid,
    ) -> Result<Result<VerifiedRange, crate::source::policy::Rejection>, DaemonError> {
        let source = self.source.clone();
        let signers = self.signers.clone();
        let follow = self.config.follow();
        let job = tokio::task::spawn_blocking(move || {
            source.verify_follow(&follow, last, tip, &signers, RangeOptions::default())
        });
        Ok(job
            .await
            .map_err(DaemonError::task("verifying signatures"))??)
    }

    /// Reconciles `env` towards `tip`: verify, check out, validate and render, roll out.
    pub(super) async fn reconcile_env(
        &self,
        env: &str,
        tip: git2::Oid,
        wake: Wake,
    ) -> Result<Outcome, DaemonError> {
        let commit = tip.to_string();
        let drift_override = self.config.drift_interval.map(HumanDuration::get);
        let last = self.last_applied_oid(env)?;
        // The pinned gauge follows pins made and released by `plumb rollback`/`unpin` too.
        self.pinned_hosts(env)?;
        if last == Some(tip) {
            return Ok(Outcome::UpToDate {
                commit,
                drift_override,
            });
        }
        if lock(&self.db).is_failed(env, &commit)? {
            self.metrics.set_quarantined(env, Some(&commit));
            return Ok(Outcome::Held { commit });
        }
        // Every commit since the last applied one must be signed; no rollbacks.
        let refused = |refusal: Refusal, message: String| {
            Outcome::Refused(Refused {
                commit: commit.clone(),
                refusal,
                message,
                drift_override,
            })
        };
        let range = match self.verify_range(last, tip).await? {
            Ok(r) => r,
            Err(rej) => {
                let (refusal, message) = signature_refusal(&rej, tip);
                return Ok(refused(refusal, message));
            }
        };
        // A bad commit touches nothing: validate and render before the first host.
        let facts = self.facts_source(true);
        let loaded = match load_commit(
            self.source.clone(),
            self.checkouts_dir(),
            tip,
            env,
            self.validator.as_ref(),
            &facts,
            self.secrets.clone(),
        )
        .await
        {
            Ok(l) => l,
            Err(refusal) => {
                return Ok(refused(refusal.clone(), refusal_message(&commit, &refusal)))
            }
        };
        // Hosts pinned by a person stay on their pin (a newer commit than the bad one
        // releases them first).
        let mut loaded = loaded;
        loaded.pinned = self.honour_pins(env, tip, wake)?;
        prune_hosts(&lock(&self.db), env, &loaded.repo, &mut loaded.hosts)?;
        let signer = signer_of(&range.tip_signer);
        let attr = self.range_attribution(env, &range, last.is_some()).await;
        // Guardrails: every host observed and judged before any host is changed.
        loaded.gate = match self.policy_gate(env, tip, &signer.principal, &loaded).await {
            Ok(g) => g,
            Err(refusal) => {
                return Ok(refused(refusal.clone(), refusal_message(&commit, &refusal)))
            }
        };
        let run = lock(&self.db).begin_run(&NewRun {
            environment: env.to_string(),
            commit: Some(commit.clone()),
            signer: Some(signer.clone()),
            kind: RunKind::Apply,
            trigger: wake.trigger(),
        })?;
        tracing::info!(environment = %env, commit = %tip, signer = %signer.principal, run = %run, "applying");
        let started = Instant::now();
        let mut rollout = self.rollout(env, &run, &commit, &loaded, &attr).await?;
        rollout.policy = loaded.gate.take().map(|g| Box::new(g.verdict));
        rollout.commits = commit_summaries(&range);
        rollout.duration = started.elapsed();
        rollout.drift_interval = policy::drift_interval(drift_override, loaded.env_interval);
        if rollout.failed_hosts.is_empty() {
            return Ok(Outcome::Applied(rollout));
        }
        self.rollback_facts(env, &loaded, &mut rollout)?;
        Ok(Outcome::Failed(rollout))
    }

    /// The commits of `range` for attribution: the tip, and (after a first apply, when the
    /// range holds several commits and at most [`MAX_RANGE_RENDERS`]) each earlier commit's
    /// rendered steps, validated like any new commit. A commit that cannot be rendered has no
    /// digests: a step is then attributed to a later commit.
    async fn range_attribution(
        &self,
        env: &str,
        range: &VerifiedRange,
        applied_before: bool,
    ) -> RangeAttribution {
        let origin = |c: &crate::source::policy::VerifiedCommit| Origin {
            commit: c.id.to_string(),
            signer: Some(c.signer.principal.clone()),
            run: None,
        };
        let tip = Origin {
            commit: range.tip.to_string(),
            signer: Some(range.tip_signer.principal.clone()),
            run: None,
        };
        let earlier: Vec<_> = range.commits.iter().filter(|c| c.id != range.tip).collect();
        if !applied_before || earlier.is_empty() || earlier.len() > MAX_RANGE_RENDERS {
            return RangeAttribution::tip_only(tip);
        }
        let facts = self.facts_source(false);
        let mut out = RangeAttribution::tip_only(tip);
        for c in earlier {
            let loaded = load_commit(
                self.source.clone(),
                self.checkouts_dir(),
                c.id,
                env,
                self.validator.as_ref(),
                &facts,
                self.secrets.clone(),
            )
            .await;
            let digests = match loaded {
                Ok(l) => super::attribution::digests(&l.hosts),
                Err(e) => {
                    tracing::info!(environment = %env, commit = %c.id, reason = e.code(), "an earlier commit of the range does not render: its steps are attributed to later commits");
                    Default::default()
                }
            };
            out.earlier.push((origin(c), digests));
        }
        out
    }

    /// Applies hosts wave by wave; a failed host or health check stops the rollout. Hosts of
    /// the waves after a stop are recorded as not reached.
    async fn rollout(
        &self,
        env: &str,
        run: &RunId,
        commit: &str,
        loaded: &Loaded,
        attr: &RangeAttribution,
    ) -> Result<Rollout, DaemonError> {
        let plain: Vec<Host> = loaded.hosts.iter().map(|h| h.host.clone()).collect();
        // Hosts that left the inventory stop being reported.
        self.note_inventory(env, &loaded.hosts);
        let waves = crate::rollout::plan_waves(
            &loaded.environment.settings,
            &plain,
            self.config.parallel as usize,
        );
        let mut out = Rollout {
            run: run.clone(),
            commit: commit.to_string(),
            changed: 0,
            failed_steps: 0,
            failed_hosts: Vec::new(),
            waves: Vec::new(),
            stopped_at_wave: None,
            reason: None,
            commits: Vec::new(),
            duration: Duration::ZERO,
            drift_interval: Duration::ZERO,
            good_hosts: Vec::new(),
            orphans: loaded
                .hosts
                .iter()
                .filter(|h| !h.orphans.is_empty() && !loaded.pinned.contains(&h.host.name))
                .map(|h| (h.host.name.clone(), h.orphans.clone()))
                .collect(),
            paused: false,
            policy: None,
            rollback: RollbackFacts::default(),
        };
        for (n, wave) in waves.iter().enumerate() {
            if let Some(reason) = &out.reason {
                let hosts: Vec<String> = waves[n..]
                    .iter()
                    .flat_map(|w| w.hosts.iter().filter_map(|i| loaded.hosts.get(*i)))
                    .map(|h| h.host.name.clone())
                    .collect();
                let why = not_reached(&wave.name, reason, out.paused);
                lock(&self.db).record_not_reached(run, &hosts, &why)?;
                break;
            }
            let members: Vec<&DesiredHost> = wave
                .hosts
                .iter()
                .filter_map(|i| loaded.hosts.get(*i))
                .filter(|h| !loaded.pinned.contains(&h.host.name))
                .collect();
            if members.is_empty() {
                continue;
            }
            let summary = self
                .roll_wave(env, run, wave, &members, loaded, attr, &mut out)
                .await?;
            let stop = stop_reason(&summary, wave.max_failed);
            out.waves.push(summary);
            if let Some((reason, failed)) = stop {
                out.paused = out
                    .waves
                    .last()
                    .is_some_and(|w| w.failed_hosts.is_empty() && only_inconclusive(w));
                for h in failed {
                    if !out.failed_hosts.contains(&h) {
                        out.failed_hosts.push(h);
                    }
                }
                tracing::error!(environment = %env, wave = %wave.name, reason = %reason, "rollout stopped");
                out.reason = Some(reason);
                out.stopped_at_wave = Some(wave.name.clone());
                continue;
            }
            // Applied and healthy: this commit is now these hosts' last good one (not the
            // failures the wave's `max_failed` tolerated).
            let good: Vec<String> = out
                .waves
                .last()
                .map(|w| {
                    let unhealthy = crate::rollout::unhealthy_hosts(w);
                    w.hosts
                        .iter()
                        .filter(|h| !unhealthy.contains(h))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            lock(&self.db).set_last_good(env, &good, commit, run)?;
            out.good_hosts.extend(good);
        }
        Ok(out)
    }

    /// Applies one wave's hosts (recording each), then runs its health checks when every
    /// host converged.
    #[allow(clippy::too_many_arguments)]
    async fn roll_wave(
        &self,
        env: &str,
        run: &RunId,
        wave: &crate::rollout::WavePlan,
        members: &[&DesiredHost],
        loaded: &Loaded,
        attr: &RangeAttribution,
        out: &mut Rollout,
    ) -> Result<WaveSummary, DaemonError> {
        let (environment, repo) = (&loaded.environment, &loaded.repo);
        let names: Vec<String> = members.iter().map(|h| h.host.name.clone()).collect();
        tracing::info!(environment = %env, wave = %wave.name, hosts = ?names, "wave");
        let (connector, host_locks) = (&self.connector, &self.host_locks);
        let gate = loaded.gate.as_ref();
        let runs = engine::each_host(members.iter().copied(), wave.max_parallel, |h| async move {
            // Another environment may be applying this host (a shared inventory entry).
            let _applying = host_locks.lock(&h.host.address, h.host.port).await;
            let t = engine::Connector::connect(connector, &h.host);
            // The plan the policies judged is the one applied (no second observation).
            match gate.and_then(|g| g.take(&h.host.name)) {
                Some(o) => (h, engine::apply_observed(h, t.as_ref(), o).await),
                None => (h, engine::apply_host(h, t.as_ref()).await),
            }
        })
        .await;
        let mut failed = Vec::new();
        out.rollback.took_commit.clear();
        out.rollback.irreversible.clear();
        let now = OffsetDateTime::now_utc();
        for (h, r) in &runs {
            {
                let db = lock(&self.db);
                let stored = db.step_origins(env, &h.host.name)?;
                let (meta, origins) = attr.host_meta(h, &stored);
                db.record_host(run, r, &meta, &crate::prune::Managed::declared(h))?;
                let applied = super::attribution::applied_origins(r, origins);
                db.set_step_origins(env, &h.host.name, &applied)?;
            }
            note_taken(r, &mut out.rollback);
            self.metrics
                .set_host_reachable(env, &r.host.name, r.status != HostStatus::Unreachable);
            if r.status != HostStatus::Unreachable {
                // Reached: whatever else happens, it is back.
                self.resolve_host_alerts(AlertEvent::HostUnreachable, env, &r.host.name);
            }
            if r.status == HostStatus::Converged {
                self.metrics.host_applied(env, &r.host.name, now);
            }
            out.changed += r.changed();
            out.failed_steps += r
                .steps
                .iter()
                .filter(|s| s.status == engine::StepStatus::Failed)
                .count();
            if r.status != HostStatus::Converged {
                failed.push(r.host.name.clone());
                tracing::error!(environment = %env, host = %r.host.name, error = ?r.error, "host failed");
            }
        }
        let checks = &environment.health_checks;
        let due = crate::rollout::health_due(failed.len(), members.len(), wave.max_failed);
        let health = if due && !checks.is_empty() {
            // The hosts that converged (the failures a `max_failed` tolerates are not checked).
            let hosts: Vec<Host> = members
                .iter()
                .filter(|h| !failed.contains(&h.host.name))
                .map(|h| h.host.clone())
                .collect();
            let render =
                |t: &str, ctx: &serde_json::Value| crate::render::render_inline(repo, t, ctx);
            let report = crate::health::check_wave(checks, &hosts, &self.connector, &render).await;
            self.note_health(env, &report.results);
            self.mark_unhealthy(run, &report.results)?;
            Some(report.results)
        } else {
            None
        };
        Ok(WaveSummary {
            name: wave.name.clone(),
            hosts: names,
            failed_hosts: failed,
            health,
        })
    }

    /// A host that converged but whose health checks failed is not `converged` in the run:
    /// its row becomes `unhealthy`, naming the checks, so the run's failed-host count and
    /// the host's status agree with the summary's `failed_hosts`.
    fn mark_unhealthy(
        &self,
        run: &RunId,
        results: &[crate::health::CheckResult],
    ) -> Result<(), DaemonError> {
        let mut by_host: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        for r in results.iter().filter(|r| !r.ok) {
            let verdict = if r.inconclusive {
                "inconclusive"
            } else {
                "failed"
            };
            by_host
                .entry(r.host.as_str())
                .or_default()
                .push(format!("health check `{}` {verdict}", r.check));
        }
        for (host, checks) in by_host {
            lock(&self.db).mark_unhealthy(run, host, &checks.join("; "))?;
        }
        Ok(())
    }

    /// Carries out a reconcile's effects, recording first; the caller then schedules drift
    /// (`effects.next_drift`, `forget_drift_alerts`) once every environment is done.
    fn carry_out(
        &self,
        env: &str,
        wake: Wake,
        result: &Result<Outcome, DaemonError>,
        effects: &Effects,
    ) -> Result<(), DaemonError> {
        let outcome = match result {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(environment = %env, error = %e, code = e.code(), "reconcile failed");
                return Ok(());
            }
        };
        log_outcome(env, outcome);
        let run = self.record(env, wake, outcome, effects)?;
        let (commit, duration, changed, failed_steps) = match outcome {
            Outcome::UpToDate { commit, .. } | Outcome::Held { commit } => {
                (commit.as_str(), Duration::ZERO, 0, 0)
            }
            Outcome::Refused(r) => (r.commit.as_str(), Duration::ZERO, 0, 0),
            Outcome::Applied(r) | Outcome::Failed(r) => {
                (r.commit.as_str(), r.duration, r.changed, r.failed_steps)
            }
        };
        if let Some(metric) = effects.metric {
            let kind = match outcome {
                Outcome::Refused(_) => MetricKind::Refused,
                _ => MetricKind::Apply,
            };
            self.metrics.run_finished(
                env,
                (kind, metric),
                duration,
                changed as u64,
                failed_steps as u64,
            );
        }
        // Blocked while the newest commit is quarantined (also seen again after a restart).
        match (effects.mark, outcome) {
            (CommitMark::Failed, _) | (_, Outcome::Held { .. }) => {
                self.metrics.set_rollout_blocked(env, true)
            }
            (CommitMark::Applied, _) | (_, Outcome::UpToDate { .. }) => {
                self.metrics.set_rollout_blocked(env, false)
            }
            (CommitMark::Nothing, _) => {}
        }
        if effects.signature_refused {
            self.metrics
                .signature_refused(Some(env), RefusalSource::Commit);
        }
        if effects.mark == CommitMark::Applied {
            self.applied_metrics(env, commit);
            self.metrics.set_quarantined(env, None);
            // The rollout recovered: a failed rollout or a refused commit is over.
            self.resolve_alerts(|k| {
                matches!(
                    k.event,
                    AlertEvent::RunFailed | AlertEvent::SignatureRefused
                ) && k.environment.as_deref() == Some(env)
            });
        }
        if effects.mark == CommitMark::Failed {
            self.metrics.set_quarantined(env, Some(commit));
        }
        if let Some(a) = &effects.alert {
            let mut details = a.details.clone();
            if let (Some(run), Some(obj)) = (&run, details.as_object_mut()) {
                obj.entry("run").or_insert_with(|| run.0.clone().into());
            }
            let mut alert = self.new_alert(
                a.event,
                Some(env),
                Some(commit),
                a.hosts.clone(),
                a.message.clone(),
                details,
            );
            alert.signer = match outcome {
                Outcome::Applied(r) | Outcome::Failed(r) => {
                    r.commits.last().map(|c| c.signer.clone())
                }
                _ => None,
            };
            self.alert(alert);
        }
        Ok(())
    }

    /// Writes the run (and the commit's mark) the effects ask for; returns the run recorded.
    fn record(
        &self,
        env: &str,
        wake: Wake,
        outcome: &Outcome,
        effects: &Effects,
    ) -> Result<Option<RunId>, DaemonError> {
        let Some(result) = effects.record else {
            return Ok(None);
        };
        let (run, commit) = {
            let db = lock(&self.db);
            let (run, commit, summary) = match outcome {
                Outcome::Refused(r) => {
                    let run = db.begin_run(&NewRun {
                        environment: env.to_string(),
                        commit: Some(r.commit.clone()),
                        signer: None,
                        kind: RunKind::Refused,
                        trigger: wake.trigger(),
                    })?;
                    (run, r.commit.as_str(), RunSummary::Refused(r.summary()))
                }
                Outcome::Applied(r) | Outcome::Failed(r) => (
                    r.run.clone(),
                    r.commit.as_str(),
                    RunSummary::Apply(r.clone()),
                ),
                Outcome::UpToDate { .. } | Outcome::Held { .. } => return Ok(None),
            };
            db.finish_run(&run, result, &summary.to_value())?;
            match effects.mark {
                CommitMark::Failed => db.mark_failed(env, commit, Some(&run))?,
                CommitMark::Applied => db.set_last_applied(env, commit, &run)?,
                CommitMark::Nothing => {}
            }
            (run, commit.to_string())
        };
        if result == RunResult::Refused {
            tracing::warn!(environment = %env, commit = %commit, run = %run, "commit refused; no host was changed");
        }
        self.anchor_audit_head();
        Ok(Some(run))
    }

    fn applied_metrics(&self, env: &str, commit: &str) {
        let now = OffsetDateTime::now_utc();
        let commit_time = git2::Oid::from_str(commit)
            .ok()
            .and_then(|oid| self.commit_time(oid));
        self.metrics.applied(env, commit, now, commit_time);
        if let Some(ct) = commit_time {
            tracing::info!(environment = %env, commit = %commit, latency_s = (now - ct).as_seconds_f64(), "commit applied");
        }
    }

    fn commit_time(&self, commit: git2::Oid) -> Option<OffsetDateTime> {
        let repo = self.source.open().ok()?;
        let c = repo.find_commit(commit).ok()?;
        OffsetDateTime::from_unix_timestamp(c.time().seconds()).ok()
    }
}

/// Why the hosts of wave `wave` and after were not reached: a failed rollout quarantines the
/// commit (not applied again until a newer one); a paused one (an inconclusive check) is tried
/// again.
fn not_reached(wave: &str, reason: &str, paused: bool) -> NotReached {
    let (kind, then) = if paused {
        (
            NotReachedReason::WaveStopped,
            "paused; the next trigger tries again",
        )
    } else {
        (NotReachedReason::Quarantined, "the commit is quarantined")
    };
    NotReached {
        reason: kind,
        detail: format!("the rollout stopped before wave `{wave}` ({then}): {reason}"),
    }
}

/// The commits a run applies (oldest first), each with its signer.
fn commit_summaries(range: &VerifiedRange) -> Vec<CommitSummary> {
    range
        .commits
        .iter()
        .map(|c| CommitSummary {
            commit: c.id.to_string(),
            signer: c.signer.principal.clone(),
            fingerprint: c.signer.fingerprint.clone(),
            seal: c.seal.clone(),
        })
        .collect()
}

/// Whether a host took the commit (a step changed or failed: the apply reached it), and the
/// irreversible changes among those its modules declare.
fn note_taken(r: &engine::HostRun, facts: &mut RollbackFacts) {
    let attempted = |s: &&engine::StepOutcome| {
        matches!(
            s.status,
            engine::StepStatus::Changed | engine::StepStatus::Failed
        )
    };
    if !r.steps.iter().any(|s| attempted(&s)) {
        return;
    }
    facts.took_commit.push(r.host.name.clone());
    for s in r.steps.iter().filter(attempted) {
        let why = s.change.as_ref().and_then(|c| {
            crate::modules::lookup(s.step.module).and_then(|def| def.irreversible(c))
        });
        if let Some(why) = why {
            facts
                .irreversible
                .push(format!("{}: {}: {why}", r.host.name, s.step.address));
        }
    }
}

fn log_outcome(env: &str, outcome: &Outcome) {
    match outcome {
        Outcome::UpToDate { .. } => {}
        Outcome::Held { commit } => {
            tracing::debug!(environment = %env, commit = %commit, "commit failed before; waiting for a new commit");
        }
        Outcome::Refused(r) => {
            tracing::warn!(environment = %env, commit = %r.commit, reason = r.refusal.code(), message = %r.message, "refusing the commit");
        }
        Outcome::Applied(r) => {
            tracing::info!(environment = %env, commit = %r.commit, run = %r.run, changed = r.changed, "rollout converged");
        }
        Outcome::Failed(r) => {
            tracing::error!(environment = %env, commit = %r.commit, run = %r.run, reason = ?r.reason, "rollout failed");
        }
    }
}
