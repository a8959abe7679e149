//! What a reconcile found ([`Outcome`]) and what the daemon does about it ([`policy`]).
//!
//! The reconcile (kube-rs's shape) observes and acts on hosts and returns an [`Outcome`]; it
//! never decides what a failure means. [`policy`] is a pure function from that result to
//! [`Effects`]: what to record, whether the commit is marked failed (not retried until a new
//! commit) or applied, which alert to send, and when to look for drift again. The daemon
//! carries the effects out in that order (record first: a refused commit is in the database
//! before anything can retry it).

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{json, Value};

use crate::alert::AlertEvent;
use crate::health::CheckResult;
use crate::model::RollbackMode;
use crate::server::metrics::RunResult as MetricResult;
use crate::state::{RunId, RunResult};

pub use crate::rollout::WaveSummary;

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
    /// Validating the commit in a child process went past its memory or time limit (a
    /// commit that needs more than the limit is hostile or broken: it is not loaded).
    Limit { error: String },
    /// plumb failed internally while validating or rendering this commit.
    Internal { error: String },
    /// A guardrail denied the plan (every violation, each naming its rule's `file:line`
    /// and the step's `path:line:col`); no host was changed.
    Policy {
        violations: Vec<crate::policy::Finding>,
        /// The commit's `Plumb-Override:` trailers and what became of each.
        overrides: Vec<crate::policy::OverrideDecision>,
    },
}

impl Refusal {
    /// The `reason` recorded in the run's summary.
    pub fn code(&self) -> &str {
        match self {
            Refusal::Signature { code, .. } => code,
            Refusal::Checkout { .. } => "checkout",
            Refusal::Invalid { .. } => "invalid",
            Refusal::Limit { .. } => "limit",
            Refusal::Internal { .. } => "internal",
            Refusal::Policy { .. } => "policy",
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
            violations: None,
            overrides: None,
        };
        match &self.refusal {
            Refusal::Signature { bad_commit, .. } => s.bad_commit = Some(bad_commit.clone()),
            Refusal::Invalid { errors } => s.errors = Some(errors.clone()),
            Refusal::Checkout { error }
            | Refusal::Limit { error }
            | Refusal::Internal { error } => s.error = Some(error.clone()),
            Refusal::Policy {
                violations,
                overrides,
            } => {
                s.errors = Some(
                    violations
                        .iter()
                        .map(crate::policy::Finding::line)
                        .collect(),
                );
                s.violations = Some(violations.clone());
                s.overrides = Some(overrides.clone());
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
    /// Hosts whose apply and health checks passed: this commit is now their last good one.
    pub good_hosts: Vec<String>,
    /// The rollout stopped because a check was inconclusive (no failure): the wave pauses,
    /// the commit is neither quarantined nor rolled back, and the next trigger tries again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// What the guardrails decided before the first host was changed (when any policy is
    /// in force): warnings, and the denials an approver overrode with who and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Box<crate::policy::Verdict>>,
    /// Per host, what plumb applied there before that this commit no longer declares and
    /// leaves in place (prune off, or a module that never removes): see [`crate::prune`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub orphans: BTreeMap<String, Vec<crate::prune::Orphan>>,
    /// What decides whether a failed rollout's hosts are rolled back ([`rollback_decision`]).
    #[serde(skip)]
    pub rollback: RollbackFacts,
}

/// What a failed rollout knows that decides whether its hosts are rolled back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollbackFacts {
    /// The environment's `rollback:` setting (of the failed commit).
    pub mode: RollbackMode,
    /// Hosts of the wave the rollout stopped at that took the commit (a step changed or
    /// failed there).
    pub took_commit: Vec<String>,
    /// The last good commit of each host that has one.
    pub last_good: BTreeMap<String, String>,
    /// Hosts already rolled back automatically from this commit (at most once each).
    pub already_rolled_back: Vec<String>,
    /// Changes of that wave that applying an older state cannot undo:
    /// `host: unit/step: why` (each module declares these, see `ModuleDef::reversibility`).
    pub irreversible: Vec<String>,
}

/// Hosts to bring back to their last good commit after a failed wave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackOrder {
    /// The failed (now quarantined) commit.
    pub bad_commit: String,
    /// What failed, one line (with the failing checks' output).
    pub reason: String,
    /// The health checks that failed in the stopped wave, with their output.
    pub failed_checks: Vec<CheckResult>,
    /// (host, its last good commit), in host order.
    pub targets: Vec<(String, String)>,
}

/// Whether a failed rollout is rolled back, and why not when it is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackDecision {
    /// Roll these hosts forward to their last good commit.
    RollBack(RollbackOrder),
    /// Not rolled back; the sentence says why and what a person must decide.
    Not(String),
}

/// What to do about a failed rollout's hosts. Pure.
pub fn rollback_decision(r: &Rollout) -> RollbackDecision {
    let f = &r.rollback;
    if f.mode == RollbackMode::Off {
        return RollbackDecision::Not(
            "not rolled back: `rollback: off` in env.yaml; the hosts stay on this commit until a new one".into(),
        );
    }
    if !f.irreversible.is_empty() {
        return RollbackDecision::Not(format!(
            "not rolled back automatically: the failed wave made changes an older state cannot undo ({}); \
             a person must decide: fix forward with a new commit, or restore those hosts by hand \
             and then push the commit to apply",
            f.irreversible.join("; ")
        ));
    }
    let mut targets = Vec::new();
    let mut without = Vec::new();
    for h in &f.took_commit {
        if f.already_rolled_back.contains(h) {
            continue;
        }
        match f.last_good.get(h) {
            Some(good) if *good != r.commit => targets.push((h.clone(), good.clone())),
            _ => without.push(h.as_str()),
        }
    }
    if targets.is_empty() {
        let why = if without.is_empty() {
            "no host of the failed wave took the commit, or each was rolled back once already"
                .to_string()
        } else {
            format!("no last good commit for {}", without.join(", "))
        };
        return RollbackDecision::Not(format!("not rolled back: {why}"));
    }
    RollbackDecision::RollBack(RollbackOrder {
        bad_commit: r.commit.clone(),
        reason: r.reason.clone().unwrap_or_else(|| "a host failed".into()),
        failed_checks: r
            .waves
            .last()
            .and_then(|w| w.health.as_ref())
            .map(|h| h.iter().filter(|c| !c.ok).cloned().collect())
            .unwrap_or_default(),
        targets,
    })
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
    /// Bring these hosts back to their last good commit (after recording the failure).
    pub rollback: Option<RollbackOrder>,
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
            rollback: None,
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
            rollback: None,
        },
        Outcome::Failed(r) => failed(r),
    }
}

/// A failed rollout: recorded, the commit quarantined (marked failed: not applied again by
/// push, poll, drift correction or restart until a newer commit), alerted, and its wave's
/// hosts rolled back when [`rollback_decision`] says so.
fn failed(r: &Rollout) -> Effects {
    if r.paused {
        return paused(r);
    }
    let decision = rollback_decision(r);
    let (next, rollback) = match &decision {
        RollbackDecision::RollBack(order) => {
            let hosts: Vec<String> = order
                .targets
                .iter()
                .map(|(h, c)| format!("{h} to {}", short(c)))
                .collect();
            (
                format!("rolling back {} (their last good commit)", hosts.join(", ")),
                Some(order.clone()),
            )
        }
        RollbackDecision::Not(why) => (why.clone(), None),
    };
    let rollback_json = match &decision {
        RollbackDecision::RollBack(o) => json!({
            "decision": "roll_back",
            "targets": o.targets.iter().map(|(h, c)| json!({"host": h, "commit": c})).collect::<Vec<_>>(),
        }),
        RollbackDecision::Not(why) => json!({
            "decision": "none",
            "why": why,
            "irreversible": r.rollback.irreversible,
        }),
    };
    Effects {
        record: Some(RunResult::Failed),
        mark: CommitMark::Failed,
        metric: Some(MetricResult::Failed),
        signature_refused: false,
        alert: Some(AlertSpec {
            event: AlertEvent::RunFailed,
            hosts: r.failed_hosts.clone(),
            message: format!(
                "rollout of {} stopped: {}; commit quarantined; {next}",
                short(&r.commit),
                r.reason.as_deref().unwrap_or("a host failed")
            ),
            details: json!({"run": r.run.0, "waves": r.waves, "rollback": rollback_json}),
        }),
        forget_drift_alerts: false,
        next_drift: NextDrift::After(r.drift_interval),
        rollback,
    }
}

/// A rollout paused by an inconclusive check: recorded as failed, alerted, but not
/// quarantined nor rolled back (the next trigger — a push, a poll, a webhook — tries again).
fn paused(r: &Rollout) -> Effects {
    Effects {
        record: Some(RunResult::Failed),
        mark: CommitMark::Nothing,
        metric: Some(MetricResult::Failed),
        signature_refused: false,
        alert: Some(AlertSpec {
            event: AlertEvent::RunFailed,
            hosts: r.failed_hosts.clone(),
            message: format!(
                "rollout of {} paused: {}; not quarantined, not rolled back: the next trigger tries again",
                short(&r.commit),
                r.reason.as_deref().unwrap_or("a check was inconclusive")
            ),
            details: json!({"run": r.run.0, "waves": r.waves, "paused": true}),
        }),
        forget_drift_alerts: false,
        next_drift: NextDrift::After(r.drift_interval),
        rollback: None,
    }
}

/// What to record and alert about a rollback run. Pure.
pub fn rollback_effects(s: &RollbackSummary) -> (RunResult, AlertSpec) {
    let ok = s.refused.is_none() && s.failed_hosts.is_empty() && s.health.iter().all(|c| c.ok);
    let target = short(&s.target);
    let (result, event, message) = if ok {
        (
            RunResult::Converged,
            AlertEvent::RolledBack,
            format!(
                "rolled back {} from {} to their last good commit {target} (signed by {}): {}",
                s.hosts.join(", "),
                short(&s.rollback_of),
                s.target_signer.as_deref().unwrap_or("?"),
                s.reason
            ),
        )
    } else {
        let why = match &s.refused {
            Some(why) => why.clone(),
            None if !s.failed_hosts.is_empty() => {
                format!("host(s) {} failed", s.failed_hosts.join(", "))
            }
            None => "its health checks failed".into(),
        };
        (
            RunResult::Failed,
            AlertEvent::RunFailed,
            format!(
                "rollback of {} from {} to {target} failed: {why}; the hosts are left as they are, a person must look",
                s.hosts.join(", "),
                short(&s.rollback_of)
            ),
        )
    };
    let alert = AlertSpec {
        event,
        hosts: s.hosts.clone(),
        message,
        details: serde_json::to_value(s).unwrap_or(Value::Null),
    };
    (result, alert)
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
        Refusal::Policy {
            violations,
            overrides,
        } => (
            AlertEvent::RunFailed,
            format!("{}; nothing was applied", r.message),
            json!({"reason": "policy", "violations": violations, "overrides": overrides}),
        ),
        Refusal::Checkout { error } | Refusal::Limit { error } | Refusal::Internal { error } => (
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
        rollback: None,
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
    /// A `rollback` run.
    Rollback(RollbackSummary),
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
    /// `checkout`, `invalid`, `limit`, `internal`, `policy`, or the signature failure's code
    /// (`unsigned`...).
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
    /// `policy`: every violation that denied the plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub violations: Option<Vec<crate::policy::Finding>>,
    /// `policy`: the commit's override trailers, who signed them, and why each was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overrides: Option<Vec<crate::policy::OverrideDecision>>,
}

/// A drift check: every drifted resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct DriftSummary {
    pub drifted: Vec<DriftedResource>,
    /// Hosts that could not be observed: whether they drifted is unknown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_hosts: Vec<String>,
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

/// A rollback: hosts of a failed wave brought back to their last good commit, as stored (and
/// signed into the audit chain) with the `rollback` run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct RollbackSummary {
    /// The failed commit the hosts were taken off (quarantined).
    pub rollback_of: String,
    /// What failed in its rollout.
    pub reason: String,
    /// The failed rollout's health checks that failed, each with its output.
    pub failed_checks: Vec<CheckResult>,
    /// The last good commit rolled forward to (re-verified against today's trust root).
    pub target: String,
    /// Its signer.
    pub target_signer: Option<String>,
    pub hosts: Vec<String>,
    pub failed_hosts: Vec<String>,
    /// The target commit's health checks on the rolled-back hosts.
    pub health: Vec<CheckResult>,
    /// Why the target could not be applied (it no longer verifies, is invalid, or lacks the
    /// host), when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}
