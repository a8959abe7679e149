//! Plan, apply and drift reports.

use schemars::JsonSchema;
use serde::Serialize;
use similar::TextDiff;

use crate::engine::{HostPlan, HostRun, HostStatus, RoundTrips, StepStatus};
use crate::modules::backup::{BackupObserved, BackupProblem, TestResult};
use crate::modules::{Change, ChangeKind, FieldChange};
use crate::rollout::WaveSummary;

/// Largest content plumb shows a unified diff for.
const MAX_DIFF_BYTES: usize = 256 * 1024;

#[derive(Debug, Serialize, JsonSchema)]
pub struct StepChange {
    pub address: String,
    pub module: String,
    pub target: String,
    /// `in_sync`, `create`, `modify`, `remove`; absent when the probe failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<ChangeKind>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
    /// Unified diff of file content (never for sensitive steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub sensitive: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A removal: the repo no longer declares this resource on the host, which plumb applied
    /// before, and prune is on for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removing: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct HostPlanReport {
    pub name: String,
    pub address: String,
    /// `ok`, or `error` when the host could not be observed.
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub changes: usize,
    pub round_trips: RoundTrips,
    /// The host's facts differed from those its steps were rendered with: they were
    /// rendered again and the host probed again (one more probe round trip).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub facts_changed: bool,
    pub duration_ms: u64,
    /// Steps that need a change or failed; in-sync steps are counted in `in_sync`.
    pub steps: Vec<StepChange>,
    pub in_sync: usize,
    /// Steps (or loop iterations) a `when:` left out of this host's desired state.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<crate::render::SkippedStep>,
    /// What each `backup` step observed (in sync or not): latest snapshot, last restore test.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backups: Vec<BackupReport>,
    /// Resources plumb applied here that the repo no longer declares, left in place (prune
    /// off, or never removed by their module); only known with a state (`--state`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orphans: Vec<crate::prune::Orphan>,
}

/// One `backup` step's observation in a plan or drift report.
#[derive(Debug, Serialize, JsonSchema)]
pub struct BackupReport {
    pub address: String,
    pub observed: BackupObserved,
    /// Seconds since the latest snapshot (host clock); absent: no snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_age_seconds: Option<u64>,
    /// Seconds since the last successful restore test; absent: none yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore_test_success_age_seconds: Option<u64>,
    /// What is wrong (empty: healthy).
    pub problems: Vec<BackupProblem>,
}

fn backup_reports(p: &HostPlan) -> Vec<BackupReport> {
    p.steps
        .iter()
        .filter_map(|s| {
            let seen = *s.change.as_ref().ok()?.observed.backup.as_deref()?;
            Some(BackupReport {
                address: s.step.address.to_string(),
                snapshot_age_seconds: seen.snapshot_age(),
                restore_test_success_age_seconds: seen.restore_success_age(),
                problems: seen.problems(),
                observed: seen,
            })
        })
        .collect()
}

/// A backup observation as one line of text (an error line when it has problems).
fn backup_line(b: &BackupReport) -> (LineKind, String) {
    let kind = if b.problems.is_empty() {
        LineKind::Plain
    } else {
        LineKind::Error
    };
    (kind, backup_text(b))
}

fn backup_text(b: &BackupReport) -> String {
    let age = |s: Option<u64>| match s {
        None => "none".to_string(),
        Some(s) if s < 120 => format!("{s}s ago"),
        Some(s) if s < 7_200 => format!("{}m ago", s / 60),
        Some(s) if s < 172_800 => format!("{}h ago", s / 3_600),
        Some(s) => format!("{}d ago", s / 86_400),
    };
    let mut line = format!(
        "  backup {}: repository {}, latest snapshot {}",
        b.address,
        serde_json::to_value(b.observed.repository)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        age(b.snapshot_age_seconds)
    );
    match b.observed.restore_test {
        None => line += ", no restore test yet",
        Some(t) => {
            line += &format!(
                ", last restore test {} ({}, restore {:.1}s, {} file(s) compared, {} mismatched), last success {}",
                if t.result == TestResult::Ok { "ok" } else { "FAILED" },
                age(Some(u64::try_from(b.observed.now.saturating_sub(t.finished)).unwrap_or(0))),
                t.restore_ms as f64 / 1000.0,
                t.files_compared,
                t.files_mismatched,
                age(b.restore_test_success_age_seconds),
            )
        }
    }
    if !b.problems.is_empty() {
        let p: Vec<&str> = b.problems.iter().map(|p| p.as_str()).collect();
        line += &format!("; PROBLEMS: {}", p.join(", "));
    }
    line
}

/// `plumb plan --output json` and `plumb drift --output json`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct PlanReport {
    pub environment: String,
    /// `plan` or `drift`.
    pub kind: String,
    pub hosts: Vec<HostPlanReport>,
    pub total_changes: usize,
    pub hosts_with_errors: usize,
    /// What the policies decided on this plan (when any policy is in force). A denial
    /// makes `plan` exit 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::Verdict>,
}

/// A unified diff of old → new content, when both are text.
pub fn content_diff(path: &str, c: &Change) -> Option<String> {
    let content = c.content.as_ref()?;
    let new = content.new.as_deref().unwrap_or_default();
    let old = content.old.as_deref().unwrap_or_default();
    if new.len() > MAX_DIFF_BYTES || old.len() > MAX_DIFF_BYTES {
        return Some(format!(
            "(content differs; {} -> {} bytes, too large to show)\n",
            old.len(),
            new.len()
        ));
    }
    let (Ok(old_s), Ok(new_s)) = (std::str::from_utf8(old), std::str::from_utf8(new)) else {
        return Some(format!(
            "(binary content differs; {} -> {} bytes)\n",
            old.len(),
            new.len()
        ));
    };
    if content.old.is_none() && c.kind == ChangeKind::Modify {
        return Some("(content differs; the current content was not fetched)\n".to_string());
    }
    let d = TextDiff::from_lines(old_s, new_s);
    let old_label = if content.old.is_some() {
        path.to_string()
    } else {
        "/dev/null".to_string()
    };
    let new_label = if content.new.is_some() {
        path.to_string()
    } else {
        "/dev/null".to_string()
    };
    Some(
        d.unified_diff()
            .context_radius(3)
            .header(&old_label, &new_label)
            .to_string(),
    )
}

/// A step of a plan. The engine has already redacted sensitive steps (target, values,
/// content, notes): nothing here needs to know which ones they are.
fn step_change(s: &crate::engine::StepPlan) -> StepChange {
    let (change, fields, diff, notes, error) = match &s.change {
        Ok(c) => (
            Some(c.kind),
            c.fields.clone(),
            content_diff(&s.step.target, c),
            c.notes.clone(),
            None,
        ),
        Err(e) => (None, Vec::new(), None, Vec::new(), Some(e.clone())),
    };
    StepChange {
        address: s.step.address.to_string(),
        module: s.step.module.to_string(),
        target: s.step.target.clone(),
        change,
        fields,
        diff,
        notes,
        sensitive: s.step.sensitive,
        error,
        removing: s.step.removing,
    }
}

impl PlanReport {
    pub fn new(environment: &str, kind: &str, plans: &[HostPlan]) -> PlanReport {
        let hosts: Vec<HostPlanReport> = plans
            .iter()
            .map(|p| HostPlanReport {
                name: p.host.name.clone(),
                address: p.host.address.clone(),
                ok: p.ok(),
                error: p.error.as_ref().map(|e| e.to_string()),
                changes: p.changes(),
                round_trips: p.round_trips,
                facts_changed: false,
                duration_ms: u64::try_from(p.duration.as_millis()).unwrap_or(u64::MAX),
                steps: p
                    .steps
                    .iter()
                    .filter(|s| s.needs_change() || s.change.is_err())
                    .map(step_change)
                    .collect(),
                in_sync: p
                    .steps
                    .iter()
                    .filter(|s| matches!(&s.change, Ok(c) if !c.is_change()))
                    .count(),
                skipped: Vec::new(),
                backups: backup_reports(p),
                orphans: Vec::new(),
            })
            .collect();
        PlanReport {
            environment: environment.to_string(),
            kind: kind.to_string(),
            total_changes: hosts.iter().map(|h| h.changes).sum(),
            hosts_with_errors: hosts.iter().filter(|h| !h.ok).count(),
            hosts,
            policy: None,
        }
    }

    /// Shows the steps each host's `when:` left out (they are not planned, so the plan
    /// does not know them).
    pub fn with_skipped(mut self, desired: &[crate::render::DesiredHost]) -> PlanReport {
        for h in &mut self.hosts {
            if let Some(d) = desired.iter().find(|d| d.host.name == h.name) {
                h.skipped = d.skipped.clone();
            }
        }
        self
    }

    /// Shows each host's orphans (resources no longer declared and left in place).
    pub fn set_orphans(&mut self, desired: &[crate::render::DesiredHost]) {
        for h in &mut self.hosts {
            if let Some(d) = desired.iter().find(|d| d.host.name == h.name) {
                h.orphans = d.orphans.clone();
            }
        }
    }

    /// Exit code per the contract: 1 error or a policy denial, 2 changes (a removal
    /// included), 0 nothing to do (orphans are reported, not changed).
    pub fn exit_code(&self) -> u8 {
        if self.hosts_with_errors > 0 || self.policy.as_ref().is_some_and(|v| v.is_denied()) {
            1
        } else if self.total_changes > 0 {
            2
        } else {
            0
        }
    }
}

fn sign(kind: Option<ChangeKind>) -> &'static str {
    match kind {
        Some(ChangeKind::Create) => "+",
        Some(ChangeKind::Modify) => "~",
        Some(ChangeKind::Remove) => "-",
        Some(ChangeKind::InSync) => "=",
        None => "!",
    }
}

fn field_text(f: &FieldChange) -> String {
    let hidden = Some(crate::engine::step::REDACTED.to_string());
    match f.field {
        crate::modules::Field::Secrets => {
            return format!("reads secrets: {}", f.to.clone().unwrap_or_default())
        }
        // Compared by hash on the host: all a sensitive plan can say.
        crate::modules::Field::Content if f.from == hidden && f.to == hidden => {
            return "content differs (sensitive)".to_string()
        }
        _ => {}
    }
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
    format!("{}: {} -> {}", f.field, show(&f.from), show(&f.to))
}

/// A plan as text lines, each tagged so the cli can colour it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    Header,
    Create,
    Modify,
    Remove,
    Error,
    DiffAdd,
    DiffDel,
    DiffHunk,
    Plain,
    Summary,
}

const FACTS_CHANGED: &str =
    "  facts changed since they were cached: steps rendered again and the host probed again";

pub fn plan_lines(r: &PlanReport) -> Vec<(LineKind, String)> {
    let mut out = Vec::new();
    for h in &r.hosts {
        let unobserved = h.steps.iter().filter(|s| s.change.is_none()).count();
        let status = match (&h.error, unobserved, h.changes) {
            (Some(e), _, _) => format!("error: {e}"),
            // A host with a step that could not be observed is never "in sync".
            (None, u, c) if u > 0 => format!(
                "FAILED: {u} step(s) could not be observed ({c} to change, {} in sync)",
                h.in_sync
            ),
            (None, _, 0) => format!("in sync ({} steps)", h.in_sync),
            (None, _, n) => format!("{n} to change, {} in sync", h.in_sync),
        };
        out.push((
            LineKind::Header,
            format!("host {} ({}): {status}", h.name, h.address),
        ));
        if h.facts_changed {
            out.push((LineKind::Summary, FACTS_CHANGED.to_string()));
        }
        out.extend(h.backups.iter().map(backup_line));
        for s in &h.skipped {
            out.push((
                LineKind::Plain,
                format!("  - {} skipped: {}", s.address, s.reason),
            ));
        }
        for s in &h.steps {
            let kind = match s.change {
                Some(ChangeKind::Create) => LineKind::Create,
                Some(ChangeKind::Modify) => LineKind::Modify,
                Some(ChangeKind::Remove) => LineKind::Remove,
                _ => LineKind::Error,
            };
            let what = match (&s.change, &s.error) {
                (_, Some(e)) => e.clone(),
                (Some(k), None) => k.to_string(),
                (None, None) => String::new(),
            };
            out.push((
                kind,
                format!(
                    "  {} {} [{}] {}: {what}{}",
                    sign(s.change),
                    s.address,
                    s.module,
                    s.target,
                    removal_note(s.removing)
                ),
            ));
            for f in &s.fields {
                out.push((LineKind::Plain, format!("      {}", field_text(f))));
            }
            for n in &s.notes {
                out.push((LineKind::Plain, format!("      note: {n}")));
            }
            if let Some(d) = &s.diff {
                for l in d.lines() {
                    let k = if l.starts_with("+++") || l.starts_with("---") {
                        LineKind::Plain
                    } else if l.starts_with('+') {
                        LineKind::DiffAdd
                    } else if l.starts_with('-') {
                        LineKind::DiffDel
                    } else if l.starts_with("@@") {
                        LineKind::DiffHunk
                    } else {
                        LineKind::Plain
                    };
                    out.push((k, format!("      {l}")));
                }
            }
            if s.sensitive && s.change.is_some() {
                out.push((
                    LineKind::Plain,
                    "      (sensitive: values and content hidden)".into(),
                ));
            }
        }
        out.extend(h.orphans.iter().map(orphan_line));
    }
    let what = if r.kind == "drift" {
        "drifted"
    } else {
        "to change"
    };
    out.push((
        LineKind::Summary,
        format!(
            "{}: {} {what} on {} host(s), {} host(s) with errors",
            r.kind,
            r.total_changes,
            r.hosts.iter().filter(|h| h.changes > 0).count(),
            r.hosts_with_errors
        ),
    ));
    out
}

/// What a removal's line adds: why plumb removes what no step declares.
fn removal_note(removing: bool) -> &'static str {
    if removing {
        " (no longer declared; prune)"
    } else {
        ""
    }
}

/// An orphan as one line: `? unit/id [module] target: orphaned (why)`.
pub fn orphan_line(o: &crate::prune::Orphan) -> (LineKind, String) {
    use crate::prune::OrphanReason;
    let why = match (o.reason, &o.detail) {
        (OrphanReason::PruneOff, _) => "prune is off for it".to_string(),
        (OrphanReason::ModuleNever, Some(d)) => format!("never pruned: {d}"),
        (OrphanReason::Unbuildable, Some(d)) => format!("cannot be pruned: {d}"),
        (_, None) => "not pruned".to_string(),
    };
    (
        LineKind::Plain,
        format!(
            "  ? {} [{}] {}: orphaned, left in place ({why})",
            o.address, o.module, o.target
        ),
    )
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct StepResult {
    pub address: String,
    pub status: StepStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<ChangeKind>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
    /// A removal of a resource the repo no longer declares (prune on).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removing: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct HandlerResult {
    pub address: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct HostApplyReport {
    pub name: String,
    pub address: String,
    pub status: HostStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub changed: usize,
    pub round_trips: RoundTrips,
    /// The host's facts differed from those its steps were rendered with: they were
    /// rendered again and the host probed again (one more probe round trip).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub facts_changed: bool,
    pub duration_ms: u64,
    /// Steps that changed, failed or were skipped.
    pub steps: Vec<StepResult>,
    pub in_sync: usize,
    pub handlers: Vec<HandlerResult>,
    /// Resources plumb applied here that the repo no longer declares, left in place.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orphans: Vec<crate::prune::Orphan>,
}

/// `plumb apply --output json`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ApplyReport {
    pub environment: String,
    /// The hosts applied (those of a wave after a failed one are in `not_touched`).
    pub hosts: Vec<HostApplyReport>,
    /// True when every selected host converged and no wave stopped the apply.
    pub converged: bool,
    pub total_changed: usize,
    pub failed_hosts: usize,
    /// What the policies decided before the apply (when any policy is in force); on a
    /// denial no host was changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::Verdict>,
    /// The waves as they ran, in order (one wave `all` without a rollout or with
    /// `--no-waves`), with their health checks.
    #[serde(default)]
    pub waves: Vec<WaveSummary>,
    /// The wave that failed and stopped the apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at_wave: Option<String>,
    /// Why it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Selected hosts of the later waves, never contacted because a wave failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_touched: Vec<String>,
    /// What became of the failed wave's hosts (see `plumb apply --no-rollback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<ApplyRollback>,
}

/// What `plumb apply` did about a stopped wave's hosts.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ApplyRollback {
    pub status: ApplyRollbackStatus,
    /// One line for people: what was done, or why not and what to do.
    pub message: String,
    /// The hosts concerned: those rolled back, or those left on the failed commit.
    pub hosts: Vec<String>,
    /// One `rollback` run per last good commit (recorded in the state and its audit chain).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<ApplyRollbackRun>,
}

/// What became of a stopped wave's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApplyRollbackStatus {
    /// Every host is back on its last good commit, and its health checks pass.
    RolledBack,
    /// A rollback was tried and did not succeed (the target no longer verifies, does not
    /// render, a host failed, or its health checks failed): a person must look.
    Failed,
    /// Not rolled back: `rollback: off`, a change an older state cannot undo, or no last
    /// good commit for the hosts (the message says which).
    NotRolledBack,
    /// `--no-rollback`: left on this commit as asked.
    Disabled,
    /// Without `--state` no last good commit is known: the message names the command that
    /// rolls the hosts back.
    NoState,
}

/// One rollback run of `plumb apply`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ApplyRollbackRun {
    /// The `rollback` run's id (`plumb history`).
    pub run: String,
    pub summary: crate::rollout::rollback::RollbackSummary,
    /// The apply of the last good commit on these hosts.
    pub hosts: Vec<HostApplyReport>,
}

impl ApplyReport {
    /// The engine has already redacted sensitive steps in `runs`.
    pub fn new(environment: &str, runs: &[HostRun]) -> ApplyReport {
        let hosts: Vec<HostApplyReport> = runs
            .iter()
            .map(|r| HostApplyReport {
                name: r.host.name.clone(),
                address: r.host.address.clone(),
                status: r.status,
                error: r.error.clone(),
                changed: r.changed(),
                round_trips: r.round_trips,
                facts_changed: false,
                duration_ms: u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX),
                steps: r
                    .steps
                    .iter()
                    .filter(|s| s.status != StepStatus::InSync)
                    .map(|s| StepResult {
                        address: s.step.address.to_string(),
                        status: s.status,
                        change: s.change.as_ref().map(|c| c.kind),
                        fields: s
                            .change
                            .as_ref()
                            .map(|c| c.fields.clone())
                            .unwrap_or_default(),
                        error: s.error.clone(),
                        duration_ms: s.duration_ms,
                        removing: s.step.removing,
                    })
                    .collect(),
                in_sync: r
                    .steps
                    .iter()
                    .filter(|s| s.status == StepStatus::InSync)
                    .count(),
                handlers: r
                    .handlers
                    .iter()
                    .map(|h| HandlerResult {
                        address: h.step.address.to_string(),
                        ok: h.ok,
                        error: h.error.clone(),
                    })
                    .collect(),
                orphans: Vec::new(),
            })
            .collect();
        ApplyReport {
            environment: environment.to_string(),
            waves: Vec::new(),
            stopped_at_wave: None,
            reason: None,
            not_touched: Vec::new(),
            rollback: None,
            converged: hosts.iter().all(|h| h.status == HostStatus::Converged),
            total_changed: hosts.iter().map(|h| h.changed).sum(),
            failed_hosts: hosts
                .iter()
                .filter(|h| h.status != HostStatus::Converged)
                .count(),
            hosts,
            policy: None,
        }
    }

    /// Shows each host's orphans (resources no longer declared and left in place).
    pub fn set_orphans(&mut self, desired: &[crate::render::DesiredHost]) {
        for h in &mut self.hosts {
            if let Some(d) = desired.iter().find(|d| d.host.name == h.name) {
                h.orphans = d.orphans.clone();
            }
        }
    }

    /// The waves as they ran; `stopped`: the wave that failed and why; `not_touched`: the
    /// hosts of the waves after it.
    pub fn set_waves(
        &mut self,
        waves: Vec<WaveSummary>,
        stopped: Option<(String, String)>,
        not_touched: Vec<String>,
    ) {
        self.waves = waves;
        if let Some((wave, reason)) = stopped {
            self.converged = false;
            self.stopped_at_wave = Some(wave);
            self.reason = Some(reason);
        }
        self.not_touched = not_touched;
    }

    pub fn exit_code(&self) -> u8 {
        u8::from(!self.converged || self.policy.as_ref().is_some_and(|v| v.is_denied()))
    }
}

pub fn apply_lines(r: &ApplyReport) -> Vec<(LineKind, String)> {
    let mut out = Vec::new();
    for h in &r.hosts {
        let status = match h.status {
            HostStatus::Converged => {
                format!("converged ({} changed, {} in sync)", h.changed, h.in_sync)
            }
            HostStatus::Failed => format!("FAILED: {}", h.error.clone().unwrap_or_default()),
            HostStatus::Unreachable => {
                format!("UNREACHABLE: {}", h.error.clone().unwrap_or_default())
            }
        };
        out.push((
            LineKind::Header,
            format!("host {} ({}): {status}", h.name, h.address),
        ));
        if h.facts_changed {
            out.push((LineKind::Summary, FACTS_CHANGED.to_string()));
        }
        for s in &h.steps {
            let (kind, word) = match s.status {
                StepStatus::Changed => (LineKind::Modify, "changed".to_string()),
                StepStatus::Failed => (
                    LineKind::Error,
                    format!("failed: {}", s.error.clone().unwrap_or_default()),
                ),
                StepStatus::Skipped => (LineKind::Plain, "skipped".to_string()),
                StepStatus::InSync => (LineKind::Plain, "in sync".to_string()),
            };
            let (kind, word) = match s.status {
                StepStatus::Changed if s.removing => (
                    LineKind::Remove,
                    "removed (no longer declared; prune)".into(),
                ),
                _ => (kind, word),
            };
            out.push((kind, format!("  {} {} {word}", sign(s.change), s.address)));
            for f in &s.fields {
                out.push((LineKind::Plain, format!("      {}", field_text(f))));
            }
        }
        out.extend(h.orphans.iter().map(orphan_line));
        for hd in &h.handlers {
            let (k, w) = if hd.ok {
                (LineKind::Modify, "refreshed".to_string())
            } else {
                (
                    LineKind::Error,
                    format!("refresh failed: {}", hd.error.clone().unwrap_or_default()),
                )
            };
            out.push((k, format!("  * {} {w}", hd.address)));
        }
    }
    wave_lines(r, &mut out);
    out.push((
        LineKind::Summary,
        format!(
            "apply: {} changed on {} host(s); {} host(s) failed",
            r.total_changed,
            r.hosts.len(),
            r.failed_hosts
        ),
    ));
    out
}

/// The waves' health checks, and where and why the apply stopped.
fn wave_lines(r: &ApplyReport, out: &mut Vec<(LineKind, String)>) {
    for w in &r.waves {
        for c in w.health.iter().flatten() {
            let (kind, word) = if c.ok {
                (LineKind::Plain, "ok".to_string())
            } else {
                (
                    LineKind::Error,
                    format!("FAILED: {}", c.error.clone().unwrap_or_default()),
                )
            };
            out.push((
                kind,
                format!(
                    "wave {}: health check {} on {}: {word}",
                    w.name, c.check, c.host
                ),
            ));
        }
    }
    if let Some(wave) = &r.stopped_at_wave {
        let reason = r.reason.clone().unwrap_or_default();
        out.push((LineKind::Error, format!("stopped at wave {wave}: {reason}")));
        if !r.not_touched.is_empty() {
            out.push((
                LineKind::Summary,
                format!("not touched: {}", r.not_touched.join(", ")),
            ));
        }
        if let Some(rb) = &r.rollback {
            rollback_lines(rb, out);
        }
    }
}

/// A stopped apply's rollback: each run's hosts and checks, then the outcome.
fn rollback_lines(rb: &ApplyRollback, out: &mut Vec<(LineKind, String)>) {
    for r in &rb.runs {
        for h in &r.hosts {
            let kind = if h.status == HostStatus::Converged {
                LineKind::Plain
            } else {
                LineKind::Error
            };
            let error = h
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            out.push((
                kind,
                format!(
                    "rollback {}: {:?}, {} changed{error}",
                    h.name, h.status, h.changed
                ),
            ));
        }
        for c in &r.summary.health {
            let (kind, word) = if c.ok {
                (LineKind::Plain, "ok".to_string())
            } else {
                (
                    LineKind::Error,
                    format!("FAILED: {}", c.error.clone().unwrap_or_default()),
                )
            };
            out.push((
                kind,
                format!("rollback: health check {} on {}: {word}", c.check, c.host),
            ));
        }
    }
    let kind = match rb.status {
        ApplyRollbackStatus::RolledBack => LineKind::Summary,
        _ => LineKind::Error,
    };
    out.push((kind, rb.message.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(steps: Vec<StepChange>, changes: usize, in_sync: usize) -> HostPlanReport {
        HostPlanReport {
            name: "web-1".into(),
            address: "10.0.0.1".into(),
            ok: steps.iter().all(|s| s.error.is_none()),
            error: None,
            changes,
            round_trips: RoundTrips {
                probe: 1,
                ..RoundTrips::default()
            },
            facts_changed: false,
            duration_ms: 1,
            steps,
            in_sync,
            skipped: Vec::new(),
            backups: Vec::new(),
            orphans: Vec::new(),
        }
    }

    #[test]
    fn a_backup_observation_is_one_line_naming_its_problems() {
        use crate::modules::backup::{RepoState, RestoreTestObserved, TestFailure};
        let observed = BackupObserved {
            now: 100_000,
            repository: RepoState::Ok,
            latest_snapshot: Some(96_400),
            restore_test: Some(RestoreTestObserved {
                result: TestResult::Failed,
                failure: Some(TestFailure::Check),
                finished: 99_940,
                last_success: Some(90_000),
                restore_ms: 1_500,
                files_compared: 4,
                files_mismatched: 0,
            }),
            interval_seconds: 3_600,
            restore_test_interval_seconds: 86_400,
        };
        let mut h = host(Vec::new(), 0, 1);
        h.backups.push(BackupReport {
            address: "backup/db".into(),
            snapshot_age_seconds: observed.snapshot_age(),
            restore_test_success_age_seconds: observed.restore_success_age(),
            problems: observed.problems(),
            observed,
        });
        let r = PlanReport {
            environment: "production".into(),
            kind: "drift".into(),
            total_changes: 0,
            hosts_with_errors: 0,
            hosts: vec![h],
            policy: None,
        };
        let lines = plan_lines(&r);
        assert_eq!(
            lines[1],
            (
                LineKind::Error,
                "  backup backup/db: repository ok, latest snapshot 60m ago, last restore test FAILED (60s ago, restore 1.5s, 4 file(s) compared, 0 mismatched), last success 2h ago; PROBLEMS: restore_test_failed".into()
            )
        );
    }

    fn failed_probe() -> StepChange {
        StepChange {
            address: "base/conf".into(),
            module: "file".into(),
            target: "/etc/app.conf".into(),
            change: None,
            fields: Vec::new(),
            diff: None,
            notes: Vec::new(),
            sensitive: false,
            error: Some("probe failed: cannot parse".into()),
            removing: false,
        }
    }

    /// A removal is `- ... remove (no longer declared; prune)` and a change (exit 2); an
    /// orphan is `? ... orphaned` with why, and changes nothing (exit 0).
    #[test]
    fn removals_and_orphans_in_text_and_exit_code() {
        use crate::prune::{Orphan, OrphanReason};
        let removal = StepChange {
            change: Some(ChangeKind::Remove),
            error: None,
            removing: true,
            ..failed_probe()
        };
        let orphan = |address: &str, reason, detail: Option<&str>| Orphan {
            address: address.into(),
            module: "package".into(),
            target: "nginx".into(),
            sensitive: false,
            reason,
            detail: detail.map(str::to_string),
        };
        let mut h = host(vec![removal], 1, 2);
        h.orphans = vec![
            orphan(
                "base/pkg",
                OrphanReason::ModuleNever,
                Some("never without state: absent"),
            ),
            orphan("base/old", OrphanReason::PruneOff, None),
        ];
        let mut r = PlanReport {
            environment: "prod".into(),
            kind: "plan".into(),
            hosts: vec![h],
            total_changes: 1,
            hosts_with_errors: 0,
            policy: None,
        };
        let lines: Vec<String> = plan_lines(&r).into_iter().map(|(_, l)| l).collect();
        assert_eq!(
            lines[1..4],
            [
                "  - base/conf [file] /etc/app.conf: remove (no longer declared; prune)",
                "  ? base/pkg [package] nginx: orphaned, left in place (never pruned: never without state: absent)",
                "  ? base/old [package] nginx: orphaned, left in place (prune is off for it)",
            ]
        );
        assert_eq!(r.exit_code(), 2);
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["hosts"][0]["steps"][0]["removing"], true);
        assert_eq!(json["hosts"][0]["orphans"][1]["reason"], "prune_off");
        // Orphans alone: nothing to change.
        r.hosts[0].steps.clear();
        r.hosts[0].changes = 0;
        r.total_changes = 0;
        assert_eq!(r.exit_code(), 0);
    }

    /// Regression: a host whose only problem was a failed probe was headed "in sync".
    #[test]
    fn a_host_whose_probe_failed_is_not_in_sync() {
        let r = PlanReport {
            environment: "prod".into(),
            kind: "plan".into(),
            hosts: vec![host(vec![failed_probe()], 0, 3)],
            total_changes: 0,
            hosts_with_errors: 1,
            policy: None,
        };
        let lines = plan_lines(&r);
        assert_eq!(
            lines[0],
            (
                LineKind::Header,
                "host web-1 (10.0.0.1): FAILED: 1 step(s) could not be observed (0 to change, 3 in sync)"
                    .to_string()
            )
        );
        assert!(!lines[0].1.contains("in sync ("));
        assert_eq!(r.exit_code(), 1);
    }

    #[test]
    fn a_host_in_sync_says_so() {
        let r = PlanReport {
            environment: "prod".into(),
            kind: "plan".into(),
            hosts: vec![host(Vec::new(), 0, 3)],
            total_changes: 0,
            hosts_with_errors: 0,
            policy: None,
        };
        assert_eq!(
            plan_lines(&r)[0].1,
            "host web-1 (10.0.0.1): in sync (3 steps)"
        );
    }
}
