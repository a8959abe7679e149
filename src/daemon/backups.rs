//! Backups as the drift checks observe them (issue 18): every `backup` step's probe carries a
//! typed [`BackupObserved`] in its change (`Change::observed.backup`, kept by redaction), read
//! here — never from message text — into [`BackupStatus`] rows that feed the
//! `plumb_backup_*` metrics, `GET /api/status` (`backups` of each environment), the
//! `backup_failed` alert. (The policy input reads the same observations from the plan it
//! judges: `policy::BackupInput`.)

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::json;

use crate::alert::AlertEvent;
use crate::engine::HostPlan;
use crate::modules::backup::{BackupObserved, BackupProblem, TestResult};
use crate::render::DesiredHost;
use crate::server::metrics::BackupSample;

use super::Daemon;

/// One backup of one host, as the last drift check observed it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct BackupStatus {
    pub host: String,
    /// The backup's `name`.
    pub backup: String,
    /// The step's address (`unit/id`).
    pub step: String,
    pub observed: BackupObserved,
    /// Seconds since the latest snapshot (host clock); absent: no snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_age_seconds: Option<u64>,
    /// Seconds since the last successful restore test; absent: none yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore_test_success_age_seconds: Option<u64>,
    /// What is wrong (empty: healthy): what the `backup_failed` alert names.
    pub problems: Vec<BackupProblem>,
}

impl BackupStatus {
    fn sample(&self) -> BackupSample {
        let test = self.observed.restore_test;
        BackupSample {
            snapshot_age_seconds: self.snapshot_age_seconds.map(|a| a as f64),
            restore_test_last_success: test.and_then(|t| t.last_success).map(|t| t as f64),
            restore_seconds: test.map(|t| t.restore_ms as f64 / 1000.0),
            restore_test_failed: test.is_some_and(|t| t.result == TestResult::Failed),
            interval_seconds: self.observed.interval_seconds as f64,
            restore_test_interval_seconds: self.observed.restore_test_interval_seconds as f64,
        }
    }
}

/// The backups of every environment, as last observed (shared with the status API).
pub type BackupBoard = Arc<Mutex<BTreeMap<String, Vec<BackupStatus>>>>;

/// The backups the plans observed. `hosts` are the desired hosts the plans were made from
/// (the backup's name is read from its resource: a sensitive step's target is hidden).
pub fn backups_of(hosts: &[DesiredHost], plans: &[HostPlan]) -> Vec<BackupStatus> {
    let mut out = Vec::new();
    for p in plans {
        let desired = hosts.iter().find(|h| h.host.name == p.host.name);
        for s in &p.steps {
            let Ok(c) = &s.change else { continue };
            let Some(seen) = c.observed.backup.as_deref().copied() else {
                continue;
            };
            let backup = desired
                .and_then(|d| d.steps.iter().find(|d| d.address == s.step.address))
                .map(|d| d.resource.target())
                .unwrap_or_else(|| s.step.address.to_string());
            out.push(BackupStatus {
                host: p.host.name.clone(),
                backup,
                step: s.step.address.to_string(),
                snapshot_age_seconds: seen.snapshot_age(),
                restore_test_success_age_seconds: seen.restore_success_age(),
                problems: seen.problems(),
                observed: seen,
            });
        }
    }
    out
}

impl Daemon {
    /// Records the backups a drift check observed: the board, the metrics, and an alert
    /// when the set of problems changed (and is not empty).
    pub(super) fn note_backups(
        &self,
        env: &str,
        commit: &str,
        hosts: &[DesiredHost],
        plans: &[HostPlan],
    ) {
        let backups = backups_of(hosts, plans);
        self.metrics.set_backups(
            env,
            backups
                .iter()
                .map(|b| (b.host.as_str(), b.backup.as_str(), b.sample())),
        );
        // One alert per host and backup (its subject): fired when it has problems (sent
        // again only when they change), resolved when it has none.
        for b in &backups {
            if b.problems.is_empty() {
                self.resolve_alerts(|k| {
                    k.event == AlertEvent::BackupFailed
                        && k.environment.as_deref() == Some(env)
                        && k.host.as_deref() == Some(b.host.as_str())
                        && k.subject.as_deref() == Some(b.backup.as_str())
                });
                continue;
            }
            let what: Vec<&str> = b.problems.iter().map(|p| p.as_str()).collect();
            tracing::warn!(environment = %env, host = %b.host, backup = %b.backup,
                problems = %what.join(","), "backup problems found");
            let mut a = self.new_alert(
                AlertEvent::BackupFailed,
                Some(env),
                Some(commit),
                vec![b.host.clone()],
                format!("backup {} on {}: {}", b.backup, b.host, what.join(", ")),
                json!({ "backups": [b] }),
            );
            a.subject = Some(b.backup.clone());
            self.alert(a);
        }
        // Backups no longer declared (or hosts gone) stop alerting.
        let live: BTreeSet<(&str, &str)> = backups
            .iter()
            .map(|b| (b.host.as_str(), b.backup.as_str()))
            .collect();
        self.resolve_alerts(|k| {
            k.event == AlertEvent::BackupFailed
                && k.environment.as_deref() == Some(env)
                && !live.contains(&(
                    k.host.as_deref().unwrap_or_default(),
                    k.subject.as_deref().unwrap_or_default(),
                ))
        });
        self.backups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(env.to_string(), backups);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::backup::{RepoState, RestoreTestObserved};

    fn status(last_success: Option<i64>, result: TestResult) -> BackupStatus {
        let observed = BackupObserved {
            now: 10_000,
            repository: RepoState::Ok,
            latest_snapshot: Some(9_000),
            restore_test: Some(RestoreTestObserved {
                result,
                failure: None,
                finished: 9_500,
                last_success,
                restore_ms: 1_500,
                files_compared: 3,
                files_mismatched: 0,
            }),
            interval_seconds: 3_600,
            restore_test_interval_seconds: 86_400,
        };
        BackupStatus {
            host: "web-1".into(),
            backup: "db".into(),
            step: "backup/db".into(),
            snapshot_age_seconds: observed.snapshot_age(),
            restore_test_success_age_seconds: observed.restore_success_age(),
            problems: observed.problems(),
            observed,
        }
    }

    #[test]
    fn a_sample_carries_the_ages_and_the_measured_restore() {
        let recent = status(Some(9_500), TestResult::Ok);
        let s = recent.sample();
        assert_eq!(s.restore_seconds, Some(1.5));
        assert_eq!(s.snapshot_age_seconds, Some(1_000.0));
        assert_eq!(s.restore_test_last_success, Some(9_500.0));
        assert!(!s.restore_test_failed);
        assert!(
            status(Some(9_500), TestResult::Failed)
                .sample()
                .restore_test_failed
        );
    }
}
