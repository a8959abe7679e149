//! The drift check: observe every host against the last applied commit (one round trip per
//! host); every difference is drift. `report` mode records and alerts; `correct` mode also
//! re-applies (after re-verifying the commit against today's trust root), recorded as a
//! `correction`. When to check again is [`policy::drift_schedule`]'s decision.

use std::collections::BTreeSet;
use std::time::Instant;

use serde_json::json;

use crate::alert::AlertEvent;
use crate::engine::{self, HostPlan, HostStatus};
use crate::model::{DriftMode, HumanDuration};
use crate::render::DesiredHost;
use crate::server::metrics::RunResult as MetricResult;
use crate::source::RangeOptions;
use crate::state::{NewRun, RunId, RunKind, RunResult, StepMeta, Trigger};

use super::env_task::{after_drift_check, Drifted, EnvState};
use super::policy::{
    self, CorrectionSummary, DriftCheck, DriftSummary, DriftedResource, RunSummary,
};
use super::reconcile::{load_commit, Loaded};
use super::{lock, signer_of, Daemon, DaemonError};

/// The last applied commit of an environment, loaded.
struct Baseline {
    commit: String,
    oid: git2::Oid,
    loaded: Loaded,
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
        let mut plans = engine::plan_all(
            &base.loaded.hosts,
            &self.connector,
            self.config.parallel as usize,
        )
        .await;
        // Facts ride along with the probe: when a host's differ from the cached ones it was
        // rendered with, cache them, render the commit again and observe again.
        if self.cache_changed_facts(env, &base, &plans) {
            if let Some(b) = self.baseline(env).await? {
                base = b;
                plans = engine::plan_all(
                    &base.loaded.hosts,
                    &self.connector,
                    self.config.parallel as usize,
                )
                .await;
            }
        }
        self.note_backups(env, &base.commit, &base.loaded.hosts, &plans, state);
        let (run, drifted, resources) = self.record_drift(env, &base, &plans)?;
        if drifted.is_empty() {
            state.alerted_drift = None;
            return Ok(checked);
        }
        tracing::warn!(environment = %env, resources = drifted.len(), "drift found");
        if policy::drift_alert_due(state.alerted_drift.as_ref(), &drifted) {
            let hosts: BTreeSet<String> = drifted.iter().map(|(h, _)| h.clone()).collect();
            self.alert(
                AlertEvent::DriftFound,
                Some(env),
                Some(&base.commit),
                hosts.into_iter().collect(),
                format!(
                    "{} resource(s) drifted from {}",
                    drifted.len(),
                    base.commit.get(..12).unwrap_or(&base.commit)
                ),
                json!({"run": run.0, "resources": resources}),
            );
        }
        state.alerted_drift = Some(drifted.clone());
        if base.loaded.environment.settings.drift.mode == DriftMode::Correct
            && self.correct(env, base, &drifted).await?
        {
            state.alerted_drift = None;
        }
        Ok(checked)
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
    async fn baseline(&self, env: &str) -> Result<Option<Baseline>, DaemonError> {
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
        Ok(Some(Baseline {
            commit: last.commit,
            oid,
            loaded,
        }))
    }

    /// Records a `drift_check` run with every host's plan; returns the run, what drifted,
    /// and the drifted resources as stored in the run's summary.
    fn record_drift(
        &self,
        env: &str,
        base: &Baseline,
        plans: &[HostPlan],
    ) -> Result<(RunId, Drifted, Vec<DriftedResource>), DaemonError> {
        let run = lock(&self.db).begin_run(&NewRun {
            environment: env.to_string(),
            commit: Some(base.commit.clone()),
            signer: None,
            kind: RunKind::DriftCheck,
            trigger: Trigger::Drift,
        })?;
        let mut drifted = Drifted::new();
        let mut resources = Vec::new();
        for p in plans {
            lock(&self.db).record_drift_check(&run, p)?;
            self.metrics
                .set_host_reachable(env, &p.host.name, p.error.is_none());
            self.metrics
                .set_drifted(env, &p.host.name, p.changes() as u64);
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
        let result = if drifted.is_empty() {
            RunResult::NoChange
        } else {
            RunResult::DriftFound
        };
        let summary = RunSummary::DriftCheck(DriftSummary {
            drifted: resources.clone(),
        });
        lock(&self.db).finish_run(&run, result, &summary.to_value())?;
        self.anchor_audit_head();
        Ok((run, drifted, resources))
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
        for r in &runs {
            lock(&self.db).record_host(&run, r, &StepMeta::default())?;
            changed += r.changed();
            if r.status != HostStatus::Converged {
                failed.push(r.host.name.clone());
            } else {
                self.metrics.set_drifted(env, &r.host.name, 0);
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
        self.metrics
            .run_finished(env, metric, started.elapsed(), changed as u64, 0);
        tracing::info!(environment = %env, corrected = changed, run = %run, "drift corrected");
        Ok(failed.is_empty())
    }
}
