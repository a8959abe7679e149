//! What a reconcile found ([`Outcome`]) and what the daemon does about it ([`policy`]).
//!
//! The reconcile (kube-rs's shape) observes and acts on hosts and returns an [`Outcome`]; it
//! never decides what a failure means. [`policy`] is a pure function from that result to
//! [`Effects`]: what to record, whether the commit is marked failed (not retried until a new
//! commit) or applied, which alert to send, and when to look for drift again. The daemon
//! carries the effects out in that order (record first: a refused commit is in the database
//! before anything can retry it).

use std::collections::BTreeSet;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{json, Value};

use crate::alert::AlertEvent;
use crate::health::CheckResult;
use crate::server::metrics::RunResult as MetricResult;
use crate::state::{RunId, RunResult};

use super::DaemonError;

/// The result of reconciling one environment towards one tip.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The tip is the last applied commit: nothing to do.
    UpToDate {
        commit: String,
        /// The daemon config's `drift_interval`, when it overrides the environments'.
        #[serde(skip)]
        drift_override: Option<Duration>,
    },
    /// The tip failed or was refused before; it is not retried until a new commit arrives.
    Held { commit: String },
    /// Refused before any host was contacted (signature, checkout, validation).
    Refused(Refused),
    /// Every wave converged.
    Applied(Rollout),
    /// A host or a health check failed: the rollout stopped.
    Failed(Rollout),
}

/// A commit refused before any host was contacted.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Refused {
    pub commit: String,
    pub refusal: Refusal,
    /// One line, for logs and alerts.
    pub message: String,
    #[serde(skip)]
    pub drift_override: Option<Duration>,
}

/// Why a commit was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Refusal {
    /// A commit of the range is not signed by an allowed signer, or the tip is a rollback.
    Signature {
        /// Stable code of the signature failure (`unsigned`, `unknown-key`, `not-descendant`...).
        code: String,
        /// The first bad commit.
        bad_commit: String,
    },
    /// The commit could not be checked out (e.g. a path the checkout refuses).
    Checkout { error: String },
    /// Validation or rendering failed (every error, `path:line:col: message`), including a
    /// resource limit such as template fuel.
    Invalid { errors: Vec<String> },
    /// plumb failed internally while validating or rendering this commit.
    Internal { error: String },
}

impl Refusal {
    /// The `reason` recorded in the run's summary.
    pub fn code(&self) -> &str {
        match self {
            Refusal::Signature { code, .. } => code,
            Refusal::Checkout { .. } => "checkout",
            Refusal::Invalid { .. } => "invalid",
            Refusal::Internal { .. } => "internal",
        }
    }
}

impl Refused {
    /// The summary stored (and signed) with the refused run.
    pub fn summary(&self) -> RefusedSummary {
        let mut s = RefusedSummary {
            reason: self.refusal.code().to_string(),
            message: self.message.clone(),
            bad_commit: None,
            errors: None,
            error: None,
        };
        match &self.refusal {
            Refusal::Signature { bad_commit, .. } => s.bad_commit = Some(bad_commit.clone()),
            Refusal::Invalid { errors } => s.errors = Some(errors.clone()),
            Refusal::Checkout { error } | Refusal::Internal { error } => {
                s.error = Some(error.clone())
            }
        }
        s
    }
}

/// One rollout (an `apply` run), as stored in the run's summary.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Rollout {
    #[serde(skip)]
    pub run: RunId,
    #[serde(skip)]
    pub commit: String,
    /// Steps changed over every host.
    pub changed: usize,
    #[serde(skip)]
    pub failed_steps: usize,
    /// Hosts that failed (a step, unreachable, or a failed health check).
    pub failed_hosts: Vec<String>,
    pub waves: Vec<WaveSummary>,
    /// The wave the rollout stopped at.
    pub stopped_at_wave: Option<String>,
    /// Why it stopped, one line.
    #[serde(skip)]
    pub reason: Option<String>,
    /// The commits this run applies (oldest first), each with its signer.
    pub commits: Vec<CommitSummary>,
    #[serde(skip)]
    pub duration: Duration,
    /// When to check for drift next (the environment's interval or the config's override).
    #[serde(skip)]
    pub drift_interval: Duration,
}

/// One wave of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct WaveSummary {
    pub name: String,
    pub hosts: Vec<String>,
    pub failed_hosts: Vec<String>,
    /// Health check results (absent when the wave had no checks or a host failed).
    pub health: Option<Vec<CheckResult>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct CommitSummary {
    pub commit: String,
    /// The principal (SSH) or primary user ID (OpenPGP) that signed it.
    pub signer: String,
    /// The signing key's fingerprint (SSH `SHA256:...`, OpenPGP primary key hex).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fingerprint: String,
    /// Set when this commit is the `Plumb-Seal:` that vouched for the history below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<crate::source::Seal>,
}

/// When to check an environment for drift next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextDrift {
    /// Leave the schedule as it is.
    Keep,
    /// Keep a scheduled check; when none is scheduled, check after this long.
    KeepOr(Duration),
    /// Check after this long (replaces the schedule).
    After(Duration),
    /// Stop checking (nothing was ever applied).
    Stop,
}

/// An alert to send.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertSpec {
    pub event: AlertEvent,
    pub hosts: Vec<String>,
    pub message: String,
    pub details: Value,
}

/// What happens to the tip commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitMark {
    Nothing,
    /// Not retried until a new commit arrives.
    Failed,
    /// The environment's last applied commit (the drift baseline).
    Applied,
}

/// What the daemon does after a reconcile, in this order.
#[derive(Debug, Clone, PartialEq)]
pub struct Effects {
    /// Record the run with this result (a refusal is recorded as a new `refused` run; an
    /// apply finishes the run it began).
    pub record: Option<RunResult>,
    pub mark: CommitMark,
    /// `plumb_runs_total{result}`.
    pub metric: Option<MetricResult>,
    /// `plumb_signature_refusals_total{source="commit"}`.
    pub signature_refused: bool,
    pub alert: Option<AlertSpec>,
    /// Forget the drift already alerted (a new commit was applied).
    pub forget_drift_alerts: bool,
    pub next_drift: NextDrift,
}

impl Effects {
    fn none(next_drift: NextDrift) -> Effects {
        Effects {
            record: None,
            mark: CommitMark::Nothing,
            metric: None,
            signature_refused: false,
            alert: None,
            forget_drift_alerts: false,
            next_drift,
        }
    }
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// A schedule for an environment whose applied commit did not change: keep the one running;
/// with none (just started), check now (the check learns the environment's interval).
fn keep_or(drift_override: Option<Duration>) -> NextDrift {
    NextDrift::KeepOr(drift_override.unwrap_or(Duration::ZERO))
}

/// What to do about a reconcile's result. Pure: the same result gives the same effects.
pub fn policy(result: &Result<Outcome, DaemonError>) -> Effects {
    let outcome = match result {
        // Nothing was decided (e.g. the database was busy): the next trigger tries again.
        Err(_) => return Effects::none(NextDrift::Keep),
        Ok(o) => o,
    };
    match outcome {
        Outcome::UpToDate { drift_override, .. } => Effects::none(keep_or(*drift_override)),
        Outcome::Held { .. } => Effects::none(NextDrift::Keep),
        Outcome::Refused(r) => refused(r),
        Outcome::Applied(r) => Effects {
            record: Some(RunResult::Converged),
            mark: CommitMark::Applied,
            metric: Some(MetricResult::Succeeded),
            signature_refused: false,
            alert: None,
            forget_drift_alerts: true,
            next_drift: NextDrift::After(r.drift_interval),
        },
        Outcome::Failed(r) => Effects {
            record: Some(RunResult::Failed),
            mark: CommitMark::Failed,
            metric: Some(MetricResult::Failed),
            signature_refused: false,
            alert: Some(AlertSpec {
                event: AlertEvent::RunFailed,
                hosts: r.failed_hosts.clone(),
                message: format!(
                    "rollout of {} stopped: {}",
                    short(&r.commit),
                    r.reason.as_deref().unwrap_or("a host failed")
                ),
                details: json!({"run": r.run.0, "waves": r.waves}),
            }),
            forget_drift_alerts: false,
            next_drift: NextDrift::After(r.drift_interval),
        },
    }
}

fn refused(r: &Refused) -> Effects {
    let (event, message, details) = match &r.refusal {
        Refusal::Signature { code, bad_commit } => (
            AlertEvent::SignatureRefused,
            r.message.clone(),
            json!({"reason": code, "bad_commit": bad_commit}),
        ),
        Refusal::Invalid { errors } => (
            AlertEvent::RunFailed,
            // r.message names the first errors (path:line:col); all are in the details.
            format!("{}; nothing was applied", r.message),
            json!({"errors": errors}),
        ),
        Refusal::Checkout { error } | Refusal::Internal { error } => (
            AlertEvent::RunFailed,
            format!(
                "commit {} refused ({}): {error}; nothing was applied",
                short(&r.commit),
                r.refusal.code()
            ),
            json!({"reason": r.refusal.code(), "error": error}),
        ),
    };
    Effects {
        record: Some(RunResult::Refused),
        mark: CommitMark::Failed,
        metric: Some(MetricResult::Refused),
        signature_refused: matches!(r.refusal, Refusal::Signature { .. }),
        alert: Some(AlertSpec {
            event,
            hosts: Vec::new(),
            message,
            details,
        }),
        forget_drift_alerts: false,
        next_drift: keep_or(r.drift_override),
    }
}

/// A drift check's result, for [`drift_schedule`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriftCheck {
    /// Nothing was ever applied to the environment: there is no baseline.
    NoBaseline,
    /// The hosts were observed; the environment's interval applies.
    Checked { interval: Duration },
}

/// How long after a failed drift check (the applied commit could not be checked out or
/// validated, the database was busy) it is tried again, when its interval is not known.
pub const DRIFT_RETRY_AFTER_ERROR: Duration = Duration::from_secs(60);

/// When to check again after a drift check. `known` is the interval last used for the
/// environment.
pub fn drift_schedule(
    result: &Result<DriftCheck, DaemonError>,
    known: Option<Duration>,
) -> NextDrift {
    match result {
        Ok(DriftCheck::NoBaseline) => NextDrift::Stop,
        Ok(DriftCheck::Checked { interval }) => NextDrift::After(*interval),
        Err(_) => NextDrift::After(known.unwrap_or(DRIFT_RETRY_AFTER_ERROR)),
    }
}

/// Whether drift found now deserves an alert: only when something drifted that was not
/// alerted already (the same drift found every interval pages once).
pub fn drift_alert_due(
    alerted: Option<&BTreeSet<(String, String)>>,
    drifted: &BTreeSet<(String, String)>,
) -> bool {
    drifted
        .iter()
        .any(|d| alerted.is_none_or(|seen| !seen.contains(d)))
}

/// The shortest interval a drift check runs at (a typo such as `1ms` cannot spin the loop).
pub const MIN_DRIFT_INTERVAL: Duration = Duration::from_millis(200);

/// The drift interval of an environment: the daemon config's override, else the
/// environment's own, never below [`MIN_DRIFT_INTERVAL`].
pub fn drift_interval(config_override: Option<Duration>, environment: Duration) -> Duration {
    config_override
        .unwrap_or(environment)
        .max(MIN_DRIFT_INTERVAL)
}

/// What a run's `summary` holds (stored and signed with the run, served by `/api/runs`), by
/// run kind. Schema: `schemas/output/run-summary.schema.json`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
#[schemars(title = "plumb run summary")]
pub enum RunSummary {
    /// An `apply` run.
    Apply(Rollout),
    /// A `refused` run.
    Refused(RefusedSummary),
    /// A `drift_check` run.
    DriftCheck(DriftSummary),
    /// A `correction` run.
    Correction(CorrectionSummary),
    /// A run the daemon did not finish (it was stopped); written when it restarts.
    Interrupted { interrupted: String },
}

impl RunSummary {
    /// The JSON stored with the run.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Why a commit was refused, as stored with the `refused` run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct RefusedSummary {
    /// `checkout`, `invalid`, `internal`, or the signature failure's code (`unsigned`...).
    pub reason: String,
    pub message: String,
    /// The first commit without a good signature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bad_commit: Option<String>,
    /// Validation errors, `path:line:col: message`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<String>>,
    /// What failed (checkout, internal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A drift check: every drifted resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct DriftSummary {
    pub drifted: Vec<DriftedResource>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct DriftedResource {
    pub host: String,
    /// The step's address, `unit/id`.
    pub step: String,
    pub target: String,
    /// `create`, `modify`, `remove`, or `error` when the probe failed.
    pub change: String,
    /// Fields that differ (none for sensitive steps).
    pub fields: Vec<String>,
}

/// A drift correction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct CorrectionSummary {
    /// Steps changed back.
    pub corrected: usize,
    pub failed_hosts: Vec<String>,
}
