//! The drift check: observe every host against the last applied commit (one round trip per
//! host); every difference is drift. `report` mode records and alerts; `correct` mode also
//! re-applies (after re-verifying the commit against today's trust root), recorded as a
//! `correction`. When to check again is [`policy::drift_schedule`]'s decision.

use std::collections::BTreeSet;
use std::time::Instant;

use schemars::JsonSchema;
use serde::Serialize;

use serde_json::json;

use crate::alert::AlertEvent;
use crate::engine::{self, HostPlan, HostStatus};
use crate::model::{DriftMode, HumanDuration};
use crate::render::DesiredHost;
use crate::server::metrics::{RunKind as MetricKind, RunResult as MetricResult};
use crate::source::RangeOptions;
use crate::state::{NewRun, Origin, RunId, RunKind, RunResult, Trigger};

use super::env_task::{after_drift_check, Drifted, EnvState};
use super::policy::{
    self, CorrectionSummary, DriftCheck, DriftSummary, DriftedResource, RunSummary,
};
use super::reconcile::{load_commit, Loaded};
use super::{lock, signer_of, Daemon, DaemonError};

/// The last applied commit of an environment, loaded.
pub(super) struct Baseline {
    pub commit: String,
    pub oid: git2::Oid,
    pub loaded: Loaded,
}

impl Daemon {
    /// Observes every host against the last applied commit; corrects in `correct` mode.
    pub(super) async fn drift_check(&self, env: &str, state: &mut EnvState) {
        let result = self.drift_check_inner(env, state).await;
        if let Err(e) = &result {
            tracing::error!(environment = %env, error = %e, code = e.code(), "drift check failed");
        }
        after_drift_check(state, &result);
    }

    async fn drift_check_inner(
        &self,
        env: &str,
        state: &mut EnvState,
    ) -> Result<DriftCheck, DaemonError> {
        let Some(mut base) = self.baseline(env).await? else {
            return Ok(DriftCheck::NoBaseline);
        };
        let interval = policy::drift_interval(
            self.config.drift_interval.map(HumanDuration::get),
            base.loaded.env_interval,
        );
        let checked = DriftCheck::Checked { interval };
        self.note_inventory(env, &base.loaded.hosts);
        super::health_watch::schedule_health(state, &base.loaded.environment.health_checks);
        // The run begins before the first host is observed: its `started_at` is when the
        // check started, not when its results were written.
        let run = lock(&self.db).begin_run(&NewRun {
            environment: env.to_string(),
            commit: Some(base.commit.clone()),
            signer: None,
            kind: RunKind::DriftCheck,
            trigger: Trigger::Drift,
        })?;
        let started = Instant::now();
        let mut plans = engine::plan_all(
            &base.loaded.hosts,
            &self.connector,
            self.config.parallel as usize,
        )
        .await;
        // Facts ride along with the probe: when a host's differ from the cached ones it was
        // rendered with, cache them, render the commit again and observe again.
        if self.cache_changed_facts(env, &base, &plans) {
            match self.baseline(env).await {
                Ok(Some(b)) => {
                    base = b;
                    plans = engine::plan_all(
                        &base.loaded.hosts,
                        &self.connector,
                        self.config.parallel as usize,
                    )
                    .await;
                }
                Ok(None) => {}
                Err(e) => {
                    self.abandon_drift_run(&run, &e);
                    return Err(e);
                }
            }
        }
        self.note_backups(env, &base.commit, &base.loaded.hosts, &plans);
        let drifted = self.record_drift(env, &base, &run, &plans, started)?;
        self.alert_drift(env, &run, &base, &plans).await;
        self.check_health_between_deploys(env, &base.loaded, &plans, None)
            .await;
        if drifted.is_empty() {
            return Ok(checked);
        }
        tracing::warn!(environment = %env, resources = drifted.len(), "drift found");
        if base.loaded.environment.settings.drift.mode == DriftMode::Correct {
            self.correct(env, base, &drifted).await?;
        }
        Ok(checked)
    }

    /// Finishes a drift check run that could not complete, saying why (so it is not left
    /// `running` until the next start).
    fn abandon_drift_run(&self, run: &RunId, e: &DaemonError) {
        let summary = json!({"error": e.to_string(), "code": e.code()});
        if let Err(e) = lock(&self.db).finish_run(run, RunResult::Failed, &summary) {
            tracing::error!(run = %run, error = %e, "cannot finish the drift check run");
        }
    }

    /// The lifecycle of the drift and unreachable alerts after a check: a host that could
    /// not be observed raises `host_unreachable` (its drift is unknown: its drift alert is
    /// left as it was); an observed host resolves `host_unreachable`, raises or updates its
    /// `drift_found` alert (one per host, with its resources, fields and non-sensitive
    /// values) or resolves it when nothing drifted.
    async fn alert_drift(&self, env: &str, run: &RunId, base: &Baseline, plans: &[HostPlan]) {
        let signer = self.applied_signer(env);
        for p in plans {
            let host = p.host.name.as_str();
            if let Some(e) = &p.error {
                let mut a = self.new_alert(
                    AlertEvent::HostUnreachable,
                    Some(env),
                    Some(&base.commit),
                    vec![host.to_string()],
                    format!("{host} could not be observed: whether it drifted is unknown ({e})"),
                    json!({"host": host, "code": e.code(), "error": e.to_string()}),
                );
                // The host's page, not the run: the condition outlives this check.
                a.link = Some(format!("{}/hosts/{env}/{host}", self.external_url()));
                a.details["run"] = run.0.clone().into();
                a.signer = signer.clone();
                self.alert(a);
                continue;
            }
            self.resolve_host_alerts(AlertEvent::HostUnreachable, env, host);
            let resources = drift_evidence(p);
            if resources.is_empty() {
                self.resolve_host_alerts(AlertEvent::DriftFound, env, host);
                continue;
            }
            let mut a = self.new_alert(
                AlertEvent::DriftFound,
                Some(env),
                Some(&base.commit),
                vec![host.to_string()],
                format!(
                    "{} resource(s) drifted on {host} from {}: {}",
                    resources.len(),
                    base.commit.get(..12).unwrap_or(&base.commit),
                    resources
                        .iter()
                        .take(5)
                        .map(|r| r.step.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                json!({"run": run.0, "host": host, "count": resources.len(), "resources": resources}),
            );
            a.signer = signer.clone();
            self.alert(a);
        }
    }

    /// Who signed the environment's last applied commit (from its apply run), if known.
    fn applied_signer(&self, env: &str) -> Option<String> {
        let db = lock(&self.db);
        let last = db.last_applied(env).ok().flatten()?;
        let run = db.run(&last.run_id?).ok().flatten()?;
        run.run.signer.map(|s| s.principal)
    }

    /// Caches the facts of hosts whose facts changed since they were rendered; true if any.
    fn cache_changed_facts(&self, env: &str, base: &Baseline, plans: &[engine::HostPlan]) -> bool {
        let cache = self.facts_source(false).cache;
        let mut changed = false;
        for (desired, plan) in base.loaded.hosts.iter().zip(plans) {
            if let (true, Some(f)) = (
                engine::facts_changed(desired, plan.facts.as_ref()),
                &plan.facts,
            ) {
                tracing::info!(environment = %env, host = %plan.host.name, "facts changed: rendering again");
                if let Err(e) = cache.store(env, &plan.host.name, f) {
                    tracing::warn!(host = %plan.host.name, error = %e, "could not cache facts");
                }
                changed = true;
            }
        }
        changed
    }

    /// The last applied commit, checked out and rendered; `None` before the first apply.
    pub(super) async fn baseline(&self, env: &str) -> Result<Option<Baseline>, DaemonError> {
        let Some(last) = lock(&self.db).last_applied(env)? else {
            return Ok(None);
        };
        let oid = git2::Oid::from_str(&last.commit).map_err(|_| DaemonError::CorruptCommit {
            environment: env.to_string(),
            commit: last.commit.clone(),
        })?;
        // Applied before, so validated before: loaded directly (facts from the cache).
        let facts = self.facts_source(false);
        let pinned = self.pinned_hosts(env)?;
        let mut loaded = load_commit(
            self.source.clone(),
            self.checkouts_dir(),
            oid,
            env,
            None,
            &facts,
            self.secrets.clone(),
        )
        .await
        .map_err(|refusal| DaemonError::AppliedInvalid {
            environment: env.to_string(),
            commit: last.commit.clone(),
            errors: match &refusal {
                policy::Refusal::Invalid { errors } => errors.len(),
                _ => 1,
            },
        })?;
        // A pinned host is kept on its pin: not checked (nor corrected) against this commit.
        loaded.hosts.retain(|h| !pinned.contains(&h.host.name));
        // A removal still due (a host that was unreachable, a removal that failed) is drift.
        super::reconcile::prune_hosts(&lock(&self.db), env, &loaded.repo, &mut loaded.hosts)?;
        Ok(Some(Baseline {
            commit: last.commit,
            oid,
            loaded,
        }))
    }

    /// Records every host's plan into the `drift_check` run begun before observing, and
    /// finishes it; returns what drifted. A host that could not be observed is `unknown`.
    fn record_drift(
        &self,
        env: &str,
        base: &Baseline,
        run: &RunId,
        plans: &[HostPlan],
        started: Instant,
    ) -> Result<Drifted, DaemonError> {
        let mut drifted = Drifted::new();
        let mut resources = Vec::new();
        let baseline = Origin {
            commit: base.commit.clone(),
            signer: None,
            run: None,
        };
        let mut unknown = Vec::new();
        let now = time::OffsetDateTime::now_utc();
        for p in plans {
            {
                let db = lock(&self.db);
                let stored = db.step_origins(env, &p.host.name)?;
                let desired = base
                    .loaded
                    .hosts
                    .iter()
                    .find(|h| h.host.name == p.host.name);
                let (meta, _) = desired
                    .map(|d| super::attribution::drift_meta(d, &stored, &baseline))
                    .unwrap_or_default();
                db.record_drift_check(run, p, &meta)?;
            }
            let observed = p.error.is_none();
            if !observed {
                unknown.push(p.host.name.clone());
            }
            self.metrics.host_drift_checked(
                env,
                &p.host.name,
                now,
                observed.then_some(p.changes() as u64),
            );
            for s in p.steps.iter().filter(|s| s.needs_change()) {
                drifted.insert((p.host.name.clone(), s.step.address.to_string()));
                let (kind, fields) = match &s.change {
                    Ok(c) if s.step.sensitive => (c.kind.to_string(), Vec::new()),
                    Ok(c) => (
                        c.kind.to_string(),
                        c.fields.iter().map(|f| f.field.to_string()).collect(),
                    ),
                    Err(_) => ("error".into(), Vec::new()),
                };
                resources.push(DriftedResource {
                    host: p.host.name.clone(),
                    step: s.step.address.to_string(),
                    target: s.step.target.clone(),
                    change: kind,
                    fields,
                });
            }
        }
        let (result, metric) = if drifted.is_empty() {
            (RunResult::NoChange, MetricResult::Succeeded)
        } else {
            (RunResult::DriftFound, MetricResult::DriftFound)
        };
        let summary = RunSummary::DriftCheck(DriftSummary {
            drifted: resources,
            unknown_hosts: unknown,
        });
        lock(&self.db).finish_run(run, result, &summary.to_value())?;
        self.anchor_audit_head();
        self.metrics.run_finished(
            env,
            (MetricKind::DriftCheck, metric),
            started.elapsed(),
            0,
            0,
        );
        Ok(drifted)
    }

    /// Records one host of a correction: its results, its managed resources (in the same
    /// transaction), and the origins of the steps it left as desired.
    fn record_correction(
        &self,
        env: &str,
        run: &RunId,
        r: &engine::HostRun,
        desired: Option<&DesiredHost>,
        baseline: &Origin,
    ) -> Result<(), DaemonError> {
        let db = lock(&self.db);
        let stored = db.step_origins(env, &r.host.name)?;
        let (meta, origins) = desired
            .map(|d| super::attribution::drift_meta(d, &stored, baseline))
            .unwrap_or_default();
        let declared = desired
            .map(crate::prune::Managed::declared)
            .unwrap_or_default();
        db.record_host(run, r, &meta, &declared)?;
        let applied = super::attribution::applied_origins(r, origins);
        db.set_step_origins(env, &r.host.name, &applied)?;
        Ok(())
    }

    /// `correct` mode: re-applies the drifted hosts, if the commit still verifies against
    /// today's trust root. A host another environment is applying is waited for
    /// ([`super::HostLocks`]). Returns whether every drifted host converged.
    async fn correct(
        &self,
        env: &str,
        base: Baseline,
        drifted: &Drifted,
    ) -> Result<bool, DaemonError> {
        let verdict = {
            let source = self.source.clone();
            let signers = self.signers.clone();
            let oid = base.oid;
            tokio::task::spawn_blocking(move || {
                source.verify(None, oid, &signers, RangeOptions::default())
            })
            .await
            .map_err(DaemonError::task("verifying signatures"))??
        };
        let signer = match verdict {
            Ok(r) => signer_of(&r.tip_signer),
            Err(rej) => {
                tracing::error!(environment = %env, reason = %rej.failure, "not correcting drift: the applied commit no longer verifies");
                return Ok(false);
            }
        };
        let drifted_hosts: BTreeSet<&str> = drifted.iter().map(|(h, _)| h.as_str()).collect();
        let targets: Vec<DesiredHost> = base
            .loaded
            .hosts
            .into_iter()
            .filter(|h| drifted_hosts.contains(h.host.name.as_str()))
            .collect();
        let run = lock(&self.db).begin_run(&NewRun {
            environment: env.to_string(),
            commit: Some(base.commit.clone()),
            signer: Some(signer),
            kind: RunKind::Correction,
            trigger: Trigger::Drift,
        })?;
        let started = Instant::now();
        let (connector, host_locks) = (&self.connector, &self.host_locks);
        let runs = engine::each_host(
            targets.iter(),
            self.config.parallel as usize,
            |h| async move {
                let _applying = host_locks.lock(&h.host.address, h.host.port).await;
                let t = engine::Connector::connect(connector, &h.host);
                engine::apply_host(h, t.as_ref()).await
            },
        )
        .await;
        let mut changed = 0;
        let mut failed = Vec::new();
        let baseline = Origin {
            commit: base.commit.clone(),
            signer: None,
            run: None,
        };
        let now = time::OffsetDateTime::now_utc();
        for r in &runs {
            let desired = targets.iter().find(|h| h.host.name == r.host.name);
            self.record_correction(env, &run, r, desired, &baseline)?;
            changed += r.changed();
            if r.status != HostStatus::Converged {
                failed.push(r.host.name.clone());
            } else {
                self.metrics.set_drifted(env, &r.host.name, 0);
                self.metrics.host_applied(env, &r.host.name, now);
                // Corrected: the drift is gone.
                self.resolve_host_alerts(AlertEvent::DriftFound, env, &r.host.name);
            }
        }
        let (result, metric) = if failed.is_empty() {
            (RunResult::Converged, MetricResult::Succeeded)
        } else {
            (RunResult::Failed, MetricResult::Failed)
        };
        let summary = RunSummary::Correction(CorrectionSummary {
            corrected: changed,
            failed_hosts: failed.clone(),
        });
        lock(&self.db).finish_run(&run, result, &summary.to_value())?;
        self.anchor_audit_head();
        self.metrics.run_finished(
            env,
            (MetricKind::Correction, metric),
            started.elapsed(),
            changed as u64,
            0,
        );
        tracing::info!(environment = %env, corrected = changed, run = %run, "drift corrected");
        Ok(failed.is_empty())
    }
}

/// Most characters of one value (`from`, `to`) a drift alert carries.
const MAX_ALERT_VALUE: usize = 200;
/// Most resources one drift alert lists (its `count` says how many drifted).
const MAX_ALERT_RESOURCES: usize = 50;

/// One drifted resource as a drift alert shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct DriftEvidence {
    /// The step's address, `unit/id`.
    pub step: String,
    pub module: String,
    /// What it manages (hidden for a sensitive step).
    pub target: String,
    /// `create`, `modify`, `remove`.
    pub change: String,
    /// Each field that differs, with the observed and desired values; a sensitive step's
    /// values are `(sensitive)` (the engine redacted them before they got here).
    pub fields: Vec<FieldEvidence>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct FieldEvidence {
    pub field: String,
    /// What the host has.
    pub observed: Option<String>,
    /// What the commit declares.
    pub desired: Option<String>,
}

fn bounded(v: &Option<String>) -> Option<String> {
    v.as_ref().map(|s| {
        if s.chars().count() <= MAX_ALERT_VALUE {
            s.clone()
        } else {
            let mut t: String = s.chars().take(MAX_ALERT_VALUE - 1).collect();
            t.push('…');
            t
        }
    })
}

/// The drifted resources of one host's plan, for its drift alert: bounded in number and
/// size, built from the engine's (already redacted) results only.
pub fn drift_evidence(plan: &HostPlan) -> Vec<DriftEvidence> {
    plan.steps
        .iter()
        .filter(|s| s.needs_change())
        .take(MAX_ALERT_RESOURCES)
        .filter_map(|s| {
            let c = s.change.as_ref().ok()?;
            let fields = c
                .fields
                .iter()
                .map(|f| {
                    let (observed, desired) = if s.step.sensitive {
                        (None, None)
                    } else {
                        (bounded(&f.from), bounded(&f.to))
                    };
                    FieldEvidence {
                        field: f.field.to_string(),
                        observed,
                        desired,
                    }
                })
                .collect();
            Some(DriftEvidence {
                step: s.step.address.to_string(),
                module: s.step.module.to_string(),
                target: s.step.target.clone(),
                change: c.kind.to_string(),
                fields,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{RoundTrips, StepPlan, StepRef};
    use crate::modules::{Change, ChangeKind, Field, FieldChange};

    fn step(address: &str, target: &str, sensitive: bool, from: &str, to: &str) -> StepPlan {
        let mut change = Change::in_sync();
        change.kind = ChangeKind::Modify;
        change.fields = vec![FieldChange {
            field: Field::Content,
            from: Some(from.into()),
            to: Some(to.into()),
        }];
        StepPlan {
            step: StepRef {
                address: crate::model::StepAddress::parse(address).expect("unit/id"),
                module: "file",
                target: target.into(),
                sensitive,
                secrets: Vec::new(),
                removing: false,
            },
            change: Ok(change),
        }
    }

    /// A drift alert carries the host's resources, fields and values, bounded; a sensitive
    /// step's values never (whatever reached this point).
    #[test]
    fn drift_evidence_shows_values_but_never_a_sensitive_one() {
        let long = "x".repeat(1000);
        let plan = HostPlan {
            host: crate::state::tests::host("web-1"),
            facts: None,
            steps: vec![
                step("app/conf", "/etc/app.conf", false, "hand edit", &long),
                step("app/secret", "(sensitive)", true, "hunter2-old", "hunter2"),
            ],
            error: None,
            round_trips: RoundTrips::default(),
            duration: std::time::Duration::ZERO,
        };
        let e = drift_evidence(&plan);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].step, "app/conf");
        assert_eq!(e[0].fields[0].observed.as_deref(), Some("hand edit"));
        let desired = e[0].fields[0].desired.as_deref().unwrap_or_default();
        assert_eq!(desired.chars().count(), MAX_ALERT_VALUE);
        assert_eq!(e[1].fields[0].observed, None);
        assert_eq!(e[1].fields[0].desired, None);
        let text = serde_json::to_string(&e).expect("json");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
