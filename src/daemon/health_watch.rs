//! Health between deploys: the environment's health checks (env.yaml `health_checks:`) run
//! not only after each rollout wave but at every drift check, and a check with its own
//! `interval:` also on that schedule. Each result is `plumb_health_check_up{environment,
//! host, check}` (failures counted in `plumb_health_check_failures_total{environment,
//! check}`); a failing check raises `health_check_failed` for that host and check, resolved
//! when it passes again. An inconclusive result (a Prometheus query without data) changes
//! neither. Checks run against the last applied commit's declarations.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::alert::AlertEvent;
use crate::engine::HostPlan;
use crate::health::CheckResult;
use crate::model::{HealthCheck, Host};

use super::env_task::EnvState;
use super::reconcile::Loaded;
use super::Daemon;

/// The shortest own `interval:` a check runs at (a typo such as `1ms` cannot spin the loop).
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);

impl Daemon {
    /// Runs the checks `only` names (all when `None`) on the hosts the drift check observed
    /// (`plans`; a host that could not be observed has `host_unreachable` instead), or on
    /// every host when `plans` is empty.
    pub(super) async fn check_health_between_deploys(
        &self,
        env: &str,
        loaded: &Loaded,
        plans: &[HostPlan],
        only: Option<&[String]>,
    ) {
        let checks: Vec<HealthCheck> = loaded
            .environment
            .health_checks
            .iter()
            .filter(|c| only.is_none_or(|names| names.contains(&c.name)))
            .cloned()
            .collect();
        let hosts: Vec<Host> = if plans.is_empty() {
            loaded.hosts.iter().map(|h| h.host.clone()).collect()
        } else {
            plans
                .iter()
                .filter(|p| p.error.is_none())
                .map(|p| p.host.clone())
                .collect()
        };
        if checks.is_empty() || hosts.is_empty() {
            return;
        }
        let repo = &loaded.repo;
        let render = |t: &str, ctx: &serde_json::Value| crate::render::render_inline(repo, t, ctx);
        let report = crate::health::check_wave(&checks, &hosts, &self.connector, &render).await;
        self.note_health(env, &report.results);
        let commit = self.applied_commit(env);
        for r in report.results.iter().filter(|r| !r.ok && !r.inconclusive) {
            let mut a = self.new_alert(
                AlertEvent::HealthCheckFailed,
                Some(env),
                commit.as_deref(),
                vec![r.host.clone()],
                format!(
                    "health check `{}` failed on {}: {}",
                    r.check,
                    r.host,
                    r.error.as_deref().unwrap_or("unhealthy")
                ),
                json!({"check": r.check, "kind": r.kind, "host": r.host, "code": r.code,
                       "error": r.error, "attempts": r.attempts}),
            );
            a.subject = Some(r.check.clone());
            self.alert(a);
        }
    }

    /// Health results (after a wave or between deploys): the metrics, and the
    /// `health_check_failed` alerts of checks that pass again are resolved.
    pub(super) fn note_health(&self, env: &str, results: &[CheckResult]) {
        for r in results.iter().filter(|r| !r.inconclusive) {
            self.metrics.health_checked(env, &r.host, &r.check, r.ok);
            if r.ok {
                self.resolve_alerts(|k| {
                    k.event == AlertEvent::HealthCheckFailed
                        && k.environment.as_deref() == Some(env)
                        && k.host.as_deref() == Some(r.host.as_str())
                        && k.subject.as_deref() == Some(r.check.as_str())
                });
            }
        }
    }

    fn applied_commit(&self, env: &str) -> Option<String> {
        super::lock(&self.db)
            .last_applied(env)
            .ok()
            .flatten()
            .map(|l| l.commit)
    }

    /// Runs the checks whose own `interval:` is due, then schedules them again.
    pub(super) async fn health_check(&self, env: &str, state: &mut EnvState) {
        let now = Instant::now();
        let due: Vec<String> = state
            .next_health
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(name, _)| name.clone())
            .collect();
        let base = match self.baseline(env).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                state.next_health.clear();
                return;
            }
            Err(e) => {
                tracing::error!(environment = %env, error = %e, code = e.code(), "health checks not run");
                for name in &due {
                    state
                        .next_health
                        .insert(name.clone(), now + MIN_CHECK_INTERVAL * 60);
                }
                return;
            }
        };
        self.check_health_between_deploys(env, &base.loaded, &[], Some(&due))
            .await;
        for name in due {
            state.next_health.remove(&name);
        }
        schedule_health(state, &base.loaded.environment.health_checks);
    }
}

/// Schedules each check with its own `interval:` that is not scheduled yet (and forgets
/// checks no longer declared).
pub(super) fn schedule_health(state: &mut EnvState, checks: &[HealthCheck]) {
    let now = Instant::now();
    state.next_health.retain(|name, _| {
        checks
            .iter()
            .any(|c| c.interval.is_some() && &c.name == name)
    });
    for c in checks {
        if let Some(i) = c.interval {
            state
                .next_health
                .entry(c.name.clone())
                .or_insert_with(|| now + i.get().max(MIN_CHECK_INTERVAL));
        }
    }
}
