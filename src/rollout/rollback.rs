//! Rolling a failed wave's hosts back to their last good commit, shared by the daemon's
//! automatic rollback (`daemon::rollback`) and `plumb apply` (`cli::apply_rollback`): which
//! hosts took the bad commit and what of it cannot be undone ([`note_taken`]), whether to
//! roll back and to what ([`decide`], pure), the target's health checks on the hosts rolled
//! back ([`check_rolled_back`]), and the summary recorded with the `rollback` run
//! ([`RollbackSummary`]). The callers verify, check out, render, lease and apply.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;

use crate::engine::{self, HostRun, HostStatus};
use crate::health::CheckResult;
use crate::model::{HealthCheck, Host, RollbackMode};

use super::WaveSummary;

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
    /// The failed run (the daemon's `apply`, or a recorded `manual` one), when recorded.
    pub failed_run: Option<crate::state::RunId>,
    /// The wave the rollout stopped at.
    pub failed_wave: Option<String>,
    /// What failed, one line (with the failing checks' output).
    pub reason: String,
    /// The health checks that failed in the stopped wave, with their output.
    pub failed_checks: Vec<CheckResult>,
    /// (host, its last good commit), in host order.
    pub targets: Vec<(String, String)>,
}

impl RollbackOrder {
    /// The targets grouped by commit: one rollback run each.
    pub fn by_target(&self) -> BTreeMap<&str, Vec<String>> {
        let mut out: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (host, target) in &self.targets {
            out.entry(target.as_str()).or_default().push(host.clone());
        }
        out
    }
}

/// Whether a failed rollout is rolled back, and why not when it is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackDecision {
    /// Roll these hosts forward to their last good commit.
    RollBack(RollbackOrder),
    /// Not rolled back; the sentence says why and what a person must decide.
    Not(String),
}

/// What to do about the hosts of a rollout of `commit` that stopped at `stopped` for
/// `reason`. Pure.
pub fn decide(
    f: &RollbackFacts,
    (commit, failed_run): (&str, Option<&crate::state::RunId>),
    reason: Option<&str>,
    stopped: Option<&WaveSummary>,
) -> RollbackDecision {
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
            Some(good) if good != commit => targets.push((h.clone(), good.clone())),
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
        bad_commit: commit.to_string(),
        failed_run: failed_run.cloned(),
        failed_wave: stopped.map(|w| w.name.clone()),
        reason: reason.unwrap_or("a host failed").to_string(),
        failed_checks: stopped
            .and_then(|w| w.health.as_ref())
            .map(|h| h.iter().filter(|c| !c.ok).cloned().collect())
            .unwrap_or_default(),
        targets,
    })
}

/// Whether a host took the commit (a step changed or failed: the apply reached it), and the
/// irreversible changes among those its modules declare.
pub fn note_taken(r: &HostRun, facts: &mut RollbackFacts) {
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

/// The hosts whose rollback apply failed, and the target's health checks on those that
/// converged (rendered in the target's repo).
pub async fn check_rolled_back(
    runs: &[HostRun],
    checks: &[HealthCheck],
    connector: &dyn engine::Connector,
    repo: &crate::model::Repo,
) -> (Vec<String>, Vec<CheckResult>) {
    let mut failed = Vec::new();
    let mut healthy: Vec<Host> = Vec::new();
    for r in runs {
        if r.status == HostStatus::Converged {
            healthy.push(r.host.clone());
        } else {
            failed.push(r.host.name.clone());
        }
    }
    let health = if healthy.is_empty() || checks.is_empty() {
        Vec::new()
    } else {
        let render = |t: &str, ctx: &serde_json::Value| crate::render::render_inline(repo, t, ctx);
        crate::health::check_wave(checks, &healthy, connector, &render)
            .await
            .results
    };
    (failed, health)
}

/// A rollback: hosts of a failed wave brought back to their last good commit, as stored (and
/// signed into the audit chain) with the `rollback` run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct RollbackSummary {
    /// Who decided: `daemon` (a failed wave of its rollout) or `person` (a failed wave of a
    /// person's `plumb apply`, rolled back by that apply).
    pub by: crate::state::RollbackBy,
    /// The failed commit the hosts were taken off (quarantined).
    pub rollback_of: String,
    /// The failed run that caused it, when recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_run: Option<crate::state::RunId>,
    /// The wave its rollout stopped at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_wave: Option<String>,
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

impl RollbackSummary {
    /// A rollback of `hosts` to `target` as `order` asks, decided `by`, before it runs: no
    /// signer, failure or health check yet.
    pub fn start(
        by: crate::state::RollbackBy,
        order: &RollbackOrder,
        target: &str,
        hosts: &[String],
    ) -> RollbackSummary {
        RollbackSummary {
            by,
            rollback_of: order.bad_commit.clone(),
            failed_run: order.failed_run.clone(),
            failed_wave: order.failed_wave.clone(),
            reason: order.reason.clone(),
            failed_checks: order.failed_checks.clone(),
            target: target.to_string(),
            target_signer: None,
            hosts: hosts.to_vec(),
            failed_hosts: Vec::new(),
            health: Vec::new(),
            refused: None,
        }
    }

    /// The target was applied, every host converged and its health checks passed.
    pub fn succeeded(&self) -> bool {
        self.refused.is_none() && self.failed_hosts.is_empty() && self.health.iter().all(|c| c.ok)
    }

    /// Why it did not succeed, one line (`None` when it did).
    pub fn failure(&self) -> Option<String> {
        if self.succeeded() {
            return None;
        }
        Some(match &self.refused {
            Some(why) => why.clone(),
            None if !self.failed_hosts.is_empty() => {
                format!("host(s) {} failed", self.failed_hosts.join(", "))
            }
            None => "its health checks failed".into(),
        })
    }
}
