//! `plumb daemon`: continuous reconciliation.
//!
//! One loop owns everything that changes hosts, so there is never more than one run per
//! environment, nor two applies on one host. It wakes on a trigger (a push noticed in a local
//! repository, a poll of a remote, a webhook, startup) or a drift timer:
//!
//! - **reconcile**: fetch → resolve the branch tip → per environment: verify every commit since
//!   the last applied one (refuse unsigned commits and rollbacks) → check out the tip →
//!   validate and render (a bad commit touches nothing) → apply in rollout waves, each followed
//!   by its health checks (a failure stops the rollout) → record. A failed commit is not
//!   retried until a new commit arrives.
//! - **drift check**: observe every host against the last applied commit (one round trip per
//!   host); every difference is drift. `report` mode records and alerts; `correct` mode also
//!   re-applies, recorded as a correction.
//!
//! The reconcile never knows why it runs: it always observes first, so a daemon killed in the
//! middle of an apply converges on restart (the interrupted run stays in the history).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::alert::{Alert, AlertEvent, Alerter};
use crate::engine::{self, CachedConnector, HostStatus, SshConnector};
use crate::model::DriftMode;
use crate::render::DesiredHost;
use crate::server::metrics::{RefusalSource, RunResult as MetricResult};
use crate::server::{
    self, AppState, Metrics, Readiness, RunsQuery, StatusError, StatusSource, WebhookSecrets,
};
use crate::source::allowed_signers::AllowedSigners;
use crate::source::{RangeOptions, Source};
use crate::state::{
    self, NewRun, RunFilter, RunId, RunKind, RunResult, StateDb, StepMeta, Trigger,
};

pub mod config;
pub mod waves;

pub use config::DaemonConfig;

/// How long a fetch may take before the attempt is abandoned.
const FETCH_TIMEOUT: Duration = Duration::from_secs(300);

/// Why the loop woke up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Startup,
    Push,
    Poll,
    Webhook,
}

impl Wake {
    fn trigger(self) -> Trigger {
        match self {
            Wake::Startup => Trigger::Startup,
            Wake::Push => Trigger::Push,
            Wake::Poll => Trigger::Poll,
            Wake::Webhook => Trigger::Webhook,
        }
    }
}

/// The daemon's state between runs.
pub struct Daemon {
    config_path: PathBuf,
    config: DaemonConfig,
    signers: AllowedSigners,
    source: Arc<Source>,
    db: Arc<Mutex<StateDb>>,
    metrics: Arc<Metrics>,
    alerter: Alerter,
    connector: CachedConnector<SshConnector>,
    ready: Readiness,
    /// Drift already alerted, per environment: alert again only when it changes.
    alerted_drift: HashMap<String, BTreeSet<(String, String)>>,
    next_drift: HashMap<String, Instant>,
}

fn lock(db: &Mutex<StateDb>) -> std::sync::MutexGuard<'_, StateDb> {
    db.lock().unwrap_or_else(|p| p.into_inner())
}

fn signer_of(s: &crate::source::signature::Signer) -> state::Signer {
    state::Signer {
        principal: s.principal.clone(),
        fingerprint: s.fingerprint.clone(),
    }
}

fn read_secret(path: &Option<PathBuf>) -> anyhow::Result<Vec<Vec<u8>>> {
    match path {
        None => Ok(Vec::new()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading webhook secret {}", p.display()))?;
            Ok(text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| l.as_bytes().to_vec())
                .collect())
        }
    }
}

impl Daemon {
    /// Opens state and checks everything that can be checked before the loop starts.
    pub fn new(config_path: &Path, config: DaemonConfig) -> anyhow::Result<Daemon> {
        std::fs::create_dir_all(&config.state_dir).with_context(|| {
            format!(
                "creating the state directory {}",
                config.state_dir.display()
            )
        })?;
        let signers = AllowedSigners::load(&config.allowed_signers)?;
        let db = StateDb::open(&config.state_dir)?;
        let source = Source::new(&config.repository, &config.state_dir)?;
        let alerter = Alerter::new(config.alerts.clone())?;
        let options = config.ssh_options();
        if let Some(dir) = &options.control_dir {
            std::fs::create_dir_all(dir)?;
        }
        let connector = CachedConnector::new(SshConnector { options });
        Ok(Daemon {
            config_path: config_path.to_path_buf(),
            signers,
            source: Arc::new(source),
            db: Arc::new(Mutex::new(db)),
            metrics: Arc::new(Metrics::new()),
            alerter,
            connector,
            ready: Readiness::new(),
            alerted_drift: HashMap::new(),
            next_drift: HashMap::new(),
            config,
        })
    }

    fn checkouts_dir(&self) -> PathBuf {
        self.config.state_dir.join("checkouts")
    }

    /// Runs until SIGTERM/SIGINT. The run in flight finishes first.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(&self.config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", self.config.listen))?;
        tracing::info!(listen = %self.config.listen, repository = %self.config.repository, "plumb daemon started");
        let (hook_tx, mut hook_rx) = mpsc::channel::<server::Trigger>(1);
        let secrets = WebhookSecrets {
            github: read_secret(&self.config.webhooks.github_secret_file)?,
            generic: read_secret(&self.config.webhooks.generic_secret_file)?,
        };
        let status = StateStatus {
            db: Arc::new(Mutex::new(lock(&self.db).handle()?)),
            environments: self.config.environments.clone(),
        };
        let app = AppState {
            metrics: self.metrics.clone(),
            triggers: hook_tx,
            secrets: Arc::new(secrets),
            ready: self.ready.clone(),
            status: Arc::new(status),
            on_refusal: Some(webhook_refusal_alerts(self.alerter.clone())),
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut server_stop = stop_rx.clone();
        let server_task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = server_stop.wait_for(|s| *s).await;
            };
            if let Err(e) = server::serve(listener, app, shutdown).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });

        let poll = match self.source.origin {
            crate::source::Origin::Local(_) => None,
            crate::source::Origin::Remote(_) => Some(self.config.poll()),
        };
        let (_watch, mut watch_rx) = self.source.watch(poll)?;

        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;

        self.reconcile(Wake::Startup).await;
        loop {
            let drift_due = self.next_drift_due();
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
                _ = hup.recv() => self.reload(),
                Some(ev) = watch_rx.recv() => {
                    let wake = match ev {
                        crate::source::watch::WatchEvent::RefsChanged => Wake::Push,
                        crate::source::watch::WatchEvent::Poll => Wake::Poll,
                        crate::source::watch::WatchEvent::Triggered => Wake::Webhook,
                    };
                    self.reconcile(wake).await;
                }
                Some(hook) = hook_rx.recv() => {
                    let server::Trigger::Webhook(event) = hook;
                    tracing::info!(event = %event.event, delivery = ?event.delivery, "webhook: fetching");
                    self.reconcile(Wake::Webhook).await;
                }
                _ = tokio::time::sleep_until(drift_due.into()) => self.drift_due().await,
            }
        }
        let _ = stop_tx.send(true);
        let _ = server_task.await;
        tracing::info!("plumb daemon stopped");
        Ok(())
    }

    /// SIGHUP: re-read the config; keep the old one when the new one is invalid. The listen
    /// address and state directory need a restart.
    fn reload(&mut self) {
        match DaemonConfig::load(&self.config_path) {
            Err((diags, _)) => {
                for d in diags.iter() {
                    tracing::error!(path = %d.path, line = d.line, col = d.col, "{}", d.message);
                }
                tracing::error!("SIGHUP: the new config is invalid; keeping the running one");
            }
            Ok(new) => {
                let signers = match AllowedSigners::load(&new.allowed_signers) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: keeping the running config");
                        return;
                    }
                };
                let alerter = match Alerter::new(new.alerts.clone()) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: keeping the running config");
                        return;
                    }
                };
                if new.listen != self.config.listen
                    || new.state_dir != self.config.state_dir
                    || new.repository != self.config.repository
                {
                    tracing::warn!(
                        "SIGHUP: listen, state_dir and repository changes take effect on restart"
                    );
                }
                self.signers = signers;
                self.alerter = alerter;
                self.connector = CachedConnector::new(SshConnector {
                    options: new.ssh_options(),
                });
                self.config = DaemonConfig {
                    listen: self.config.listen.clone(),
                    state_dir: self.config.state_dir.clone(),
                    repository: self.config.repository.clone(),
                    ..new
                };
                self.next_drift.clear();
                tracing::info!("SIGHUP: configuration reloaded");
            }
        }
    }

    fn drift_interval(&self, env: &str, repo: Option<&crate::model::Repo>) -> Duration {
        let text = self.config.drift_interval.clone().or_else(|| {
            repo.and_then(|r| r.environments.get(env))
                .map(|e| e.settings.drift.interval.to_string())
        });
        text.and_then(|t| crate::model::parse_duration(&t))
            .unwrap_or(Duration::from_secs(300))
            .max(Duration::from_millis(200))
    }

    fn next_drift_due(&self) -> Instant {
        self.next_drift
            .values()
            .min()
            .copied()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }

    async fn drift_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .next_drift
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(e, _)| e.clone())
            .collect();
        for env in due {
            self.drift_check(&env).await;
        }
    }

    fn alert(
        &self,
        event: AlertEvent,
        env: Option<&str>,
        commit: Option<&str>,
        hosts: Vec<String>,
        message: String,
        details: Value,
    ) {
        let alert = Alert {
            event,
            environment: env.map(str::to_string),
            commit: commit.map(str::to_string),
            hosts,
            message,
            details,
            time: OffsetDateTime::now_utc(),
            link: None,
        };
        if !self.alerter.sinks().is_empty() {
            self.alerter.spawn(alert);
        }
    }

    async fn fetch(&self) -> anyhow::Result<git2::Oid> {
        let source = self.source.clone();
        let branch = self.config.branch.clone();
        let job = tokio::task::spawn_blocking(move || -> anyhow::Result<git2::Oid> {
            source.fetch()?;
            Ok(source.resolve(&format!("refs/heads/{branch}"))?)
        });
        match tokio::time::timeout(FETCH_TIMEOUT, job).await {
            Err(_) => anyhow::bail!("fetch took longer than {FETCH_TIMEOUT:?}"),
            Ok(Err(e)) => anyhow::bail!("fetch task failed: {e}"),
            Ok(Ok(r)) => r,
        }
    }

    /// A checkout of `commit` under the state directory (reused when present).
    fn checkout(&self, commit: git2::Oid) -> anyhow::Result<PathBuf> {
        let dir = self.checkouts_dir().join(commit.to_string());
        if dir.is_dir() {
            return Ok(dir);
        }
        std::fs::create_dir_all(self.checkouts_dir())?;
        let tmp = self
            .checkouts_dir()
            .join(format!(".{commit}.{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        self.source.checkout(commit, &tmp)?;
        std::fs::rename(&tmp, &dir)?;
        Ok(dir)
    }

    /// Removes checkouts no environment needs any more.
    fn prune_checkouts(&self, keep: &BTreeSet<String>) {
        let Ok(rd) = std::fs::read_dir(self.checkouts_dir()) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) && !name.starts_with('.') {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    fn commit_time(&self, commit: git2::Oid) -> Option<OffsetDateTime> {
        let repo = self.source.open().ok()?;
        let c = repo.find_commit(commit).ok()?;
        OffsetDateTime::from_unix_timestamp(c.time().seconds()).ok()
    }

    /// Fetch, then reconcile every environment towards the branch tip.
    async fn reconcile(&mut self, wake: Wake) {
        let tip = match self.fetch().await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "fetch failed; will retry on the next trigger");
                return;
            }
        };
        for env in self.config.environments.clone() {
            if let Err(e) = self.reconcile_env(&env, tip, wake).await {
                tracing::error!(environment = %env, error = %format!("{e:#}"), "reconcile failed");
            }
        }
        self.ready.set_ready(true);
        let mut keep: BTreeSet<String> = BTreeSet::from([tip.to_string()]);
        for env in &self.config.environments {
            if let Ok(Some(l)) = lock(&self.db).last_applied(env) {
                keep.insert(l.commit);
            }
        }
        self.prune_checkouts(&keep);
    }

    /// Records a run refused before any host was contacted.
    fn refuse(
        &self,
        env: &str,
        commit: git2::Oid,
        wake: Wake,
        reason: &str,
        summary: Value,
    ) -> anyhow::Result<()> {
        let db = lock(&self.db);
        let run = db.begin_run(&NewRun {
            environment: env.to_string(),
            commit: Some(commit.to_string()),
            signer: None,
            kind: RunKind::Refused,
            trigger: wake.trigger(),
        })?;
        db.finish_run(&run, RunResult::Refused, &summary)?;
        db.mark_failed(env, &commit.to_string(), Some(&run))?;
        self.metrics
            .run_finished(env, MetricResult::Refused, Duration::ZERO, 0, 0);
        tracing::warn!(environment = %env, commit = %commit, run = %run, reason, "commit refused; no host was contacted");
        Ok(())
    }

    async fn reconcile_env(&mut self, env: &str, tip: git2::Oid, wake: Wake) -> anyhow::Result<()> {
        let last = lock(&self.db).last_applied(env)?;
        let last_oid = match &last {
            Some(l) => Some(git2::Oid::from_str(&l.commit)?),
            None => None,
        };
        if last_oid == Some(tip) {
            self.schedule_drift(env, None);
            return Ok(());
        }
        if lock(&self.db).is_failed(env, &tip.to_string())? {
            tracing::debug!(environment = %env, commit = %tip, "commit failed before; waiting for a new commit");
            return Ok(());
        }

        // Every commit since the last applied one must be signed; no rollbacks.
        let verdict = {
            let source = self.source.clone();
            let signers = self.signers.clone();
            tokio::task::spawn_blocking(move || {
                source.verify(last_oid, tip, &signers, RangeOptions::default())
            })
            .await??
        };
        let range = match verdict {
            Ok(r) => r,
            Err(rejection) => {
                let reason = rejection.reason();
                let message = format!(
                    "commit {} refused: {}",
                    crate::source::policy::short(rejection.commit),
                    rejection.failure
                );
                self.refuse(
                    env,
                    tip,
                    wake,
                    reason.code(),
                    json!({"reason": reason.code(), "bad_commit": rejection.commit.to_string(), "message": message}),
                )?;
                self.metrics
                    .signature_refused(Some(env), RefusalSource::Commit);
                self.alert(
                    AlertEvent::SignatureRefused,
                    Some(env),
                    Some(&tip.to_string()),
                    Vec::new(),
                    message.clone(),
                    json!({"reason": reason.code(), "bad_commit": rejection.commit.to_string()}),
                );
                return Ok(());
            }
        };

        // A bad commit touches nothing: validate and render before the first host.
        let dir = self.checkout(tip)?;
        let (repo, diags, rendered) = crate::validate::validate_and_render(&dir, env, None);
        let rendered = rendered.filter(|_| !diags.has_errors());
        let Some(hosts) = rendered else {
            let errors: Vec<Value> = diags
                .into_sorted()
                .into_iter()
                .filter(|d| d.severity == crate::diag::Severity::Error)
                .map(|d| json!(format!("{}:{}:{}: {}", d.path, d.line, d.col, d.message)))
                .collect();
            self.refuse(
                env,
                tip,
                wake,
                "invalid",
                json!({"reason": "invalid", "errors": errors}),
            )?;
            self.alert(
                AlertEvent::RunFailed,
                Some(env),
                Some(&tip.to_string()),
                Vec::new(),
                format!(
                    "commit {} is invalid ({} errors); nothing was applied",
                    &tip.to_string()[..12],
                    errors.len()
                ),
                json!({"errors": errors}),
            );
            return Ok(());
        };

        let signer = signer_of(&range.tip_signer);
        let run = lock(&self.db).begin_run(&NewRun {
            environment: env.to_string(),
            commit: Some(tip.to_string()),
            signer: Some(signer.clone()),
            kind: RunKind::Apply,
            trigger: wake.trigger(),
        })?;
        tracing::info!(environment = %env, commit = %tip, signer = %signer.principal, run = %run, "applying");
        let started = Instant::now();
        let Some(environment) = repo.environments.get(env) else {
            anyhow::bail!("environment {env} vanished after render");
        };
        let outcome = self.rollout(env, &run, &hosts, environment).await?;
        let result = if outcome.failed.is_empty() {
            RunResult::Converged
        } else {
            RunResult::Failed
        };
        let summary = json!({
            "changed": outcome.changed,
            "failed_hosts": outcome.failed,
            "waves": outcome.waves,
            "stopped_at_wave": outcome.stopped_at,
            "commits": range.commits.iter().map(|c| json!({"commit": c.id.to_string(), "signer": c.signer.principal})).collect::<Vec<_>>(),
        });
        {
            let db = lock(&self.db);
            db.finish_run(&run, result, &summary)?;
            if result == RunResult::Converged {
                db.set_last_applied(env, &tip.to_string(), &run)?;
            } else {
                db.mark_failed(env, &tip.to_string(), Some(&run))?;
            }
        }
        let metric = if result == RunResult::Converged {
            MetricResult::Succeeded
        } else {
            MetricResult::Failed
        };
        self.metrics.run_finished(
            env,
            metric,
            started.elapsed(),
            outcome.changed as u64,
            outcome.failed_steps as u64,
        );
        if result == RunResult::Converged {
            let now = OffsetDateTime::now_utc();
            let commit_time = self.commit_time(tip);
            self.metrics
                .applied(env, &tip.to_string(), now, commit_time);
            if let Some(ct) = commit_time {
                tracing::info!(environment = %env, commit = %tip, latency_s = (now - ct).as_seconds_f64(), "commit applied");
            }
            self.alerted_drift.remove(env);
        } else {
            self.alert(
                AlertEvent::RunFailed,
                Some(env),
                Some(&tip.to_string()),
                outcome.failed.clone(),
                format!(
                    "rollout of {} stopped: {}",
                    &tip.to_string()[..12],
                    outcome.reason.clone().unwrap_or_default()
                ),
                json!({"run": run.0, "waves": outcome.waves}),
            );
        }
        self.schedule_drift(env, Some(&repo));
        Ok(())
    }

    fn schedule_drift(&mut self, env: &str, repo: Option<&crate::model::Repo>) {
        if repo.is_none() && self.next_drift.contains_key(env) {
            return;
        }
        let interval = self.drift_interval(env, repo);
        self.next_drift
            .insert(env.to_string(), Instant::now() + interval);
    }

    /// Applies hosts wave by wave; a failed host or health check stops the rollout.
    async fn rollout(
        &self,
        env: &str,
        run: &RunId,
        hosts: &[DesiredHost],
        environment: &crate::model::Environment,
    ) -> anyhow::Result<Rollout> {
        let plain: Vec<crate::model::Host> = hosts.iter().map(|h| h.host.clone()).collect();
        let waves = waves::plan_waves(&environment.settings, &plain, self.config.parallel as usize);
        let mut out = Rollout::default();
        for wave in &waves {
            let members: Vec<&DesiredHost> =
                wave.hosts.iter().filter_map(|i| hosts.get(*i)).collect();
            let names: Vec<String> = members.iter().map(|h| h.host.name.clone()).collect();
            tracing::info!(environment = %env, wave = %wave.name, hosts = ?names, "wave");
            let connector = &self.connector;
            let runs =
                engine::each_host(members.iter().copied(), wave.max_parallel, |h| async move {
                    let t = engine::Connector::connect(connector, &h.host);
                    (h, engine::apply_host(h, t.as_ref()).await)
                })
                .await;
            let mut wave_failed = Vec::new();
            for (desired, r) in &runs {
                lock(&self.db).record_host(run, r, &StepMeta::from_desired(desired))?;
                self.metrics.set_host_reachable(
                    env,
                    &r.host.name,
                    r.status != HostStatus::Unreachable,
                );
                out.changed += r.changed();
                out.failed_steps += r
                    .steps
                    .iter()
                    .filter(|s| s.status == engine::StepStatus::Failed)
                    .count();
                if r.status != HostStatus::Converged {
                    wave_failed.push(r.host.name.clone());
                    tracing::error!(environment = %env, host = %r.host.name, error = ?r.error, "host failed");
                }
            }
            let wave_hosts: Vec<crate::model::Host> =
                members.iter().map(|h| h.host.clone()).collect();
            let health = if wave_failed.is_empty() && !environment.settings.health_checks.is_empty()
            {
                Some(
                    crate::health::check_wave(
                        &environment.settings.health_checks,
                        &wave_hosts,
                        &self.connector,
                    )
                    .await,
                )
            } else {
                None
            };
            let health_failures: Vec<Value> = health
                .as_ref()
                .map(|h| {
                    h.failures()
                        .map(|f| json!({"check": f.check, "host": f.host, "error": f.error}))
                        .collect()
                })
                .unwrap_or_default();
            out.waves.push(json!({
                "name": wave.name,
                "hosts": names,
                "failed_hosts": wave_failed,
                "health": health.as_ref().map(|h| &h.results),
            }));
            if !wave_failed.is_empty() {
                out.reason = Some(format!(
                    "wave `{}`: host(s) {} failed",
                    wave.name,
                    wave_failed.join(", ")
                ));
                out.failed.extend(wave_failed);
                out.stopped_at = Some(wave.name.clone());
                break;
            }
            if !health_failures.is_empty() {
                out.reason = Some(format!(
                    "wave `{}`: health checks failed: {}",
                    wave.name,
                    Value::Array(health_failures.clone())
                ));
                for f in &health_failures {
                    if let Some(h) = f["host"].as_str() {
                        if !out.failed.iter().any(|x| x == h) {
                            out.failed.push(h.to_string());
                        }
                    }
                }
                out.stopped_at = Some(wave.name.clone());
                tracing::error!(environment = %env, wave = %wave.name, "health checks failed: rollout stopped");
                break;
            }
        }
        Ok(out)
    }

    /// Observes every host against the last applied commit; corrects in `correct` mode.
    async fn drift_check(&mut self, env: &str) {
        if let Err(e) = self.drift_check_inner(env).await {
            tracing::error!(environment = %env, error = %format!("{e:#}"), "drift check failed");
            self.schedule_drift(env, None);
            self.next_drift.insert(
                env.to_string(),
                Instant::now() + self.drift_interval(env, None),
            );
        }
    }

    async fn drift_check_inner(&mut self, env: &str) -> anyhow::Result<()> {
        let Some(last) = lock(&self.db).last_applied(env)? else {
            self.next_drift.remove(env);
            return Ok(());
        };
        let commit = git2::Oid::from_str(&last.commit)?;
        let dir = self.checkout(commit)?;
        let (repo, diags, rendered) = crate::validate::validate_and_render(&dir, env, None);
        let Some(hosts) = rendered.filter(|_| !diags.has_errors()) else {
            anyhow::bail!(
                "the applied commit no longer validates with this plumb ({} errors)",
                diags.error_count()
            );
        };
        self.next_drift.insert(
            env.to_string(),
            Instant::now() + self.drift_interval(env, Some(&repo)),
        );
        let plans = engine::plan_all(&hosts, &self.connector, self.config.parallel as usize).await;
        let run = lock(&self.db).begin_run(&NewRun {
            environment: env.to_string(),
            commit: Some(last.commit.clone()),
            signer: None,
            kind: RunKind::DriftCheck,
            trigger: Trigger::Drift,
        })?;
        let mut drifted: BTreeSet<(String, String)> = BTreeSet::new();
        let mut resources = Vec::new();
        for p in &plans {
            lock(&self.db).record_drift_check(&run, p)?;
            self.metrics
                .set_host_reachable(env, &p.host.name, p.error.is_none());
            self.metrics
                .set_drifted(env, &p.host.name, p.changes() as u64);
            for s in p.steps.iter().filter(|s| s.needs_change()) {
                drifted.insert((p.host.name.clone(), s.address.clone()));
                let (kind, fields) = match &s.change {
                    Ok(c) => (
                        c.kind.to_string(),
                        if s.sensitive {
                            Vec::new()
                        } else {
                            c.fields.iter().map(|f| f.field.clone()).collect()
                        },
                    ),
                    Err(_) => ("error".into(), Vec::new()),
                };
                resources.push(json!({"host": p.host.name, "step": s.address, "target": s.target, "change": kind, "fields": fields}));
            }
        }
        let result = if drifted.is_empty() {
            RunResult::NoChange
        } else {
            RunResult::DriftFound
        };
        lock(&self.db).finish_run(&run, result, &json!({"drifted": resources}))?;
        if drifted.is_empty() {
            self.alerted_drift.remove(env);
            return Ok(());
        }
        tracing::warn!(environment = %env, resources = drifted.len(), "drift found");
        let seen = self.alerted_drift.get(env).cloned().unwrap_or_default();
        if drifted.iter().any(|d| !seen.contains(d)) {
            let hosts: BTreeSet<String> = drifted.iter().map(|(h, _)| h.clone()).collect();
            self.alert(
                AlertEvent::DriftFound,
                Some(env),
                Some(&last.commit),
                hosts.into_iter().collect(),
                format!(
                    "{} resource(s) drifted from {}",
                    drifted.len(),
                    &last.commit[..12.min(last.commit.len())]
                ),
                json!({"run": run.0, "resources": resources}),
            );
        }
        self.alerted_drift.insert(env.to_string(), drifted.clone());

        let mode = repo
            .environments
            .get(env)
            .map(|e| e.settings.drift.mode)
            .unwrap_or_default();
        if mode != DriftMode::Correct {
            return Ok(());
        }
        // Correct: the commit must still verify against today's trust root.
        let verdict = {
            let source = self.source.clone();
            let signers = self.signers.clone();
            tokio::task::spawn_blocking(move || {
                source.verify(None, commit, &signers, RangeOptions::default())
            })
            .await??
        };
        let signer = match verdict {
            Ok(r) => signer_of(&r.tip_signer),
            Err(rej) => {
                tracing::error!(environment = %env, reason = %rej.failure, "not correcting drift: the applied commit no longer verifies");
                return Ok(());
            }
        };
        let drifted_hosts: BTreeSet<&str> = drifted.iter().map(|(h, _)| h.as_str()).collect();
        let targets: Vec<DesiredHost> = hosts
            .into_iter()
            .filter(|h| drifted_hosts.contains(h.host.name.as_str()))
            .collect();
        let corr = lock(&self.db).begin_run(&NewRun {
            environment: env.to_string(),
            commit: Some(last.commit.clone()),
            signer: Some(signer),
            kind: RunKind::Correction,
            trigger: Trigger::Drift,
        })?;
        let started = Instant::now();
        let runs =
            engine::apply_all(&targets, &self.connector, self.config.parallel as usize).await;
        let mut changed = 0;
        let mut failed = Vec::new();
        for (desired, r) in targets.iter().zip(&runs) {
            lock(&self.db).record_host(&corr, r, &StepMeta::from_desired(desired))?;
            changed += r.changed();
            if r.status != HostStatus::Converged {
                failed.push(r.host.name.clone());
            } else {
                self.metrics.set_drifted(env, &r.host.name, 0);
            }
        }
        let result = if failed.is_empty() {
            RunResult::Converged
        } else {
            RunResult::Failed
        };
        lock(&self.db).finish_run(
            &corr,
            result,
            &json!({"corrected": changed, "failed_hosts": failed}),
        )?;
        let metric = if failed.is_empty() {
            MetricResult::Succeeded
        } else {
            MetricResult::Failed
        };
        self.metrics
            .run_finished(env, metric, started.elapsed(), changed as u64, 0);
        tracing::info!(environment = %env, corrected = changed, run = %corr, "drift corrected");
        if failed.is_empty() {
            self.alerted_drift.remove(env);
        }
        Ok(())
    }
}

/// Alerts on refused webhook requests, at most once a minute (the metric counts every one),
/// so a flood of forged requests cannot become a flood of pages. Uses the sinks configured
/// at start (a SIGHUP does not change them for this alert).
fn webhook_refusal_alerts(alerter: Alerter) -> server::RefusalHook {
    let last: Mutex<Option<Instant>> = Mutex::new(None);
    Arc::new(move |hook: &str, code: &str| {
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) || alerter.sinks().is_empty()
        {
            return;
        }
        *last = Some(Instant::now());
        alerter.spawn(Alert {
            event: AlertEvent::SignatureRefused,
            environment: None,
            commit: None,
            hosts: Vec::new(),
            message: format!("a request to /hooks/{hook} was refused: {code} (bad or missing HMAC); nothing was fetched"),
            details: json!({"hook": hook, "code": code}),
            time: OffsetDateTime::now_utc(),
            link: None,
        });
    })
}

#[derive(Debug, Default)]
struct Rollout {
    changed: usize,
    failed_steps: usize,
    failed: Vec<String>,
    waves: Vec<Value>,
    stopped_at: Option<String>,
    reason: Option<String>,
}

/// The status API over the state database.
struct StateStatus {
    db: Arc<Mutex<StateDb>>,
    environments: Vec<String>,
}

fn internal(e: impl std::fmt::Display) -> StatusError {
    StatusError::Internal(e.to_string())
}

impl StatusSource for StateStatus {
    fn status(&self) -> Result<Value, StatusError> {
        let db = lock(&self.db);
        let mut envs = Vec::new();
        for env in &self.environments {
            let last = db.last_applied(env).map_err(internal)?;
            let drift = db.open_drift(env).map_err(internal)?;
            let last_run = db
                .runs(&RunFilter {
                    environment: Some(env.clone()),
                    kind: None,
                    limit: Some(1),
                })
                .map_err(internal)?;
            envs.push(json!({
                "environment": env,
                "last_applied": last,
                "last_run": last_run.first(),
                "open_drift": drift.len(),
            }));
        }
        Ok(json!({ "environments": envs }))
    }

    fn runs(&self, q: &RunsQuery) -> Result<Value, StatusError> {
        let runs = lock(&self.db)
            .runs(&RunFilter {
                environment: q.environment.clone(),
                kind: None,
                limit: Some(q.limit),
            })
            .map_err(internal)?;
        Ok(json!({ "runs": runs }))
    }

    fn run(&self, id: &str) -> Result<Option<Value>, StatusError> {
        let run = lock(&self.db)
            .run(&RunId(id.to_string()))
            .map_err(internal)?;
        Ok(run.map(|r| serde_json::to_value(r).unwrap_or(Value::Null)))
    }

    fn drift(&self, environment: Option<&str>) -> Result<Value, StatusError> {
        let db = lock(&self.db);
        let mut all = Vec::new();
        for env in self
            .environments
            .iter()
            .filter(|e| environment.is_none_or(|x| x == e.as_str()))
        {
            all.extend(db.open_drift(env).map_err(internal)?);
        }
        Ok(json!({ "drift": all }))
    }
}
