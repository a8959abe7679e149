//! What the state database stores and returns. Statuses are enums whose stored text is their
//! serde name (snake_case): one derive, no hand mapping.

use std::collections::{HashMap, HashSet};

use rusqlite::types::{ToSql, ToSqlOutput};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::modules::{ChangeKind, FieldChange};

pub use crate::audit::AuditHead;

/// The stored text of a status enum: its serde name.
pub(crate) fn enum_text<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        // Unit variants always serialise as strings; anything else is a bug caught by tests.
        _ => String::new(),
    }
}

macro_rules! stored_enum {
    ($($name:ident),+) => {$(
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&enum_text(self))
            }
        }
        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(enum_text(self)))
            }
        }
    )+};
}

/// Why a run happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// A new commit applied.
    Apply,
    /// Drift corrected (`correct` mode).
    Correction,
    /// Hosts observed for drift, nothing applied.
    DriftCheck,
    /// A commit refused before any host was contacted (bad signature, invalid, rollback).
    Refused,
    /// The daemon was told (`--accept-state-reset`) to start over on a state directory whose history
    /// was deleted: the reset itself is a signed record.
    StateReset,
    /// Hosts of a failed wave brought back to their last good commit (a roll-forward to the
    /// old desired state).
    Rollback,
    /// Hosts pinned by a person (`plumb rollback`) to an older commit, and applied.
    Pin,
    /// Pins released: by `plumb unpin`, or by a commit newer than the bad one.
    Unpin,
    /// `plumb apply` run by a person (recorded with `--state`): local user, SSH identity,
    /// commit or uncommitted tree.
    Manual,
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Push,
    Poll,
    Webhook,
    Drift,
    Startup,
    Cli,
}

/// How a run ended. `running` and `interrupted` are plumb's own: `running` is never stored,
/// `interrupted` is stored for runs a killed daemon left unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunResult {
    Converged,
    Failed,
    Refused,
    NoChange,
    DriftFound,
    Interrupted,
    Running,
}

/// How one host ended in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostResultStatus {
    /// Apply: every step in sync afterwards.
    Converged,
    /// A step or the host's script failed.
    Failed,
    /// The host could not be reached.
    Unreachable,
    /// Drift check: nothing differs.
    InSync,
    /// Drift check: something differs.
    Drifted,
    /// Apply: every step converged, but the environment's health checks failed on it (the
    /// host counts as failed: the rollout stopped there).
    Unhealthy,
    /// Drift check: the host could not be observed (unreachable, timed out, its script
    /// failed), so whether it drifted is not known. Never read as "no drift".
    Unknown,
    /// The rollout never reached the host (see [`HostRecord::not_reached`]).
    NotReached,
}

/// Why a step changed (or differs from the repo).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A commit changed the step's desired state.
    Intended,
    /// The host had drifted from a state plumb had already applied.
    Corrective,
    /// A manual `plumb apply` changed it (see the origin's run).
    Manual,
    /// A rollback brought the step back to an older commit's desired state (the origin's
    /// `rollback` says from which commit to which, and who decided).
    Rollback,
}

/// What a step's desired state (or its state on the host) is attributed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Origin {
    /// The commit; `uncommitted:<tree hash>` for a manual apply from a dirty checkout.
    pub commit: String,
    /// The commit's signer (principal); for a manual run, the local user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// The manual run that made the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunId>,
    /// Set when a rollback made the change: `commit` is then the commit rolled back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackOrigin>,
}

impl Origin {
    /// A commit and its signer.
    pub fn commit(commit: &str, signer: Option<&str>) -> Origin {
        Origin {
            commit: commit.to_string(),
            signer: signer.map(str::to_string),
            run: None,
            rollback: None,
        }
    }
}

/// Who decided a rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RollbackBy {
    /// The daemon, after a failed wave (automatic rollback).
    Daemon,
    /// A person, with `plumb rollback` (hosts pinned to the older commit).
    Person,
}

/// The rollback a step change belongs to: from which (bad) commit to which (good) one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RollbackOrigin {
    /// The commit rolled back from (the failed one; for a person's rollback, the
    /// environment's newest commit when it was made), if known.
    pub from: Option<String>,
    /// The commit rolled back to.
    pub to: String,
    pub by: RollbackBy,
    /// The run that made the rollback (`rollback` or `pin`).
    pub run: RunId,
}

impl Attribution {
    /// Every change of a rollback run: back to `origin.commit`, cause `rollback`.
    pub fn rollback(origin: Origin) -> Attribution {
        Attribution {
            cause: Cause::Rollback,
            origin: Some(origin),
        }
    }
}

/// Where a manual apply (`plumb apply --state`) came from and who ran it: stored in the manual
/// run's summary (see [`ManualSummary`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Provenance {
    /// The local user.
    pub user: String,
    /// The SSH identity given (`--identity`) and its fingerprint, or `ssh defaults`.
    pub identity: String,
    /// HEAD's commit, when the repo is a git checkout.
    pub head: Option<String>,
    /// The working tree differs from HEAD (or is not a git checkout).
    pub dirty: bool,
    /// sha256 over every file of the repo (path and content), `.git` excluded.
    pub tree_sha256: String,
    /// sha256 of the diff against HEAD (a dirty tree only).
    pub diff_sha256: Option<String>,
    /// HEAD's signer, when a trust root verified it.
    pub signer: Option<String>,
    /// Why HEAD did not verify against the trust root.
    pub unverified: Option<String>,
    /// The reason given with --break-glass.
    pub break_glass: Option<String>,
}

impl Provenance {
    /// `<commit>` or `uncommitted:<tree sha256>`: what the changes are attributed to.
    pub fn commit(&self) -> String {
        match (&self.head, self.dirty) {
            (Some(h), false) => h.clone(),
            _ => format!("uncommitted:{}", self.tree_sha256),
        }
    }
}

/// The summary of a `manual` run: its provenance, and the trust root's refusal when it
/// refused (then nothing was applied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ManualSummary {
    pub manual: Provenance,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Set when the run did not finish (the process was stopped); written by the daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<String>,
}

/// A step change's classification and attribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribution {
    pub cause: Cause,
    pub origin: Option<Origin>,
}

/// Why a rollout did not reach a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotReachedReason {
    /// An earlier wave paused (an inconclusive health check): later waves were not started;
    /// the next trigger tries again.
    WaveStopped,
    /// An earlier wave failed: the commit is quarantined (not applied again until a newer
    /// commit), so later waves never get it.
    Quarantined,
    /// Left out by `--limit`.
    Limited,
}

/// A host the run did not reach, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NotReached {
    pub reason: NotReachedReason,
    /// One line: which wave stopped and why, the limit given.
    pub detail: String,
}

/// What kind of event a run recorded besides step changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunEventKind {
    /// A handler refresh (restart, reload, run) caused by `notify`.
    Refresh,
}

/// An event of a run on one host (a handler refresh).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RunEvent {
    pub kind: RunEventKind,
    /// The refreshed step.
    pub address: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What happened to one step that got a row (in-sync steps are only counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepResultStatus {
    Changed,
    Failed,
    Skipped,
    Drifted,
    InSync,
}

stored_enum!(
    RunKind,
    Trigger,
    RunResult,
    HostResultStatus,
    StepResultStatus,
    Cause,
    RunEventKind
);

/// A run id: 26 characters of Crockford base32 (48 bits of milliseconds, 80 random bits),
/// sortable by start time.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct RunId(pub String);

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl RunId {
    /// A ULID: sortable by creation time (milliseconds), then 80 random bits.
    pub(crate) fn generate(now_ms: i64) -> RunId {
        use rand::RngCore;
        let mut rnd = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut rnd);
        let ms = u64::try_from(now_ms).unwrap_or(0);
        RunId(ulid::Ulid::from_parts(ms, u128::from_be_bytes(rnd)).to_string())
    }
}

/// Who signed the commit a run applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Signer {
    /// The principal of the allowed-signers line that matched, e.g. `alice@example.com`.
    pub principal: String,
    /// The key fingerprint, `SHA256:...`.
    pub fingerprint: String,
}

/// What [`StateDb::begin_run`](super::StateDb::begin_run) needs.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub environment: String,
    pub commit: Option<String>,
    pub signer: Option<Signer>,
    pub kind: RunKind,
    pub trigger: Trigger,
}

/// Which steps' changes in an `apply` run are drift rather than intended changes (in
/// `correction` and `drift_check` runs every change is drift already). What a step is
/// (module, sensitivity) travels with the engine's results in their `StepRef`.
#[derive(Debug, Clone, Default)]
pub struct StepMeta {
    pub(crate) drift: HashSet<String>,
    /// Each step's classification and attribution, by address.
    pub(crate) attribution: HashMap<String, Attribution>,
    /// The attribution of every change not named in `attribution` (a rollback's).
    pub(crate) every: Option<Attribution>,
}

impl StepMeta {
    /// Marks a step's change as drift.
    pub fn mark_drift(&mut self, address: &str) {
        self.drift.insert(address.to_string());
    }

    /// Every change of the run attributed alike: a rollback's (back to an older commit).
    pub fn every_change(a: Attribution) -> StepMeta {
        StepMeta {
            every: Some(a),
            ..StepMeta::default()
        }
    }

    /// Every change of a rollback run: cause `rollback`, back to `r.to` (signed by `signer`),
    /// from `r.from`.
    pub fn rollback(r: RollbackOrigin, signer: Option<&str>) -> StepMeta {
        let to = Origin::commit(&r.to, signer);
        StepMeta::every_change(Attribution::rollback(Origin {
            rollback: Some(r),
            ..to
        }))
    }

    /// Classifies a step's change and names what it is attributed to. A `corrective` or
    /// `manual` change is drift.
    pub fn attribute(&mut self, address: &str, a: Attribution) {
        if matches!(a.cause, Cause::Corrective | Cause::Manual) {
            self.mark_drift(address);
        }
        self.attribution.insert(address.to_string(), a);
    }
}

/// One run, as listed by [`StateDb::runs`](super::StateDb::runs).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunRecord {
    pub id: RunId,
    pub environment: String,
    pub commit: Option<String>,
    pub signer: Option<Signer>,
    pub kind: RunKind,
    pub trigger: Trigger,
    /// Unix milliseconds.
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub result: RunResult,
    pub summary: Value,
    /// Hosts the run handled (those it did not reach are not counted).
    pub hosts: usize,
    pub failed_hosts: usize,
    /// Steps changed (apply, correction) or found drifted (drift check).
    pub changes: usize,
    /// Of `changes`, those that were drift.
    pub drift: usize,
    /// Position in the audit chain and record hash, once finished.
    pub chain_seq: Option<i64>,
    pub hash: Option<String>,
}

/// One host's result in a run. Serialised, it is the host part of the signed audit record.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct HostRecord {
    pub host: String,
    /// `converged`, `failed`, `unreachable`, `unhealthy` (apply); `in_sync`, `drifted`,
    /// `failed`, `unknown` (drift check).
    pub status: HostResultStatus,
    pub error: Option<String>,
    pub changed: usize,
    pub in_sync: usize,
    pub duration_ms: u64,
    pub round_trips: Value,
    /// Steps that changed, drifted, failed or were skipped.
    pub steps: Vec<StepRecord>,
    /// When plumb started and finished with the host (unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    /// Set when the rollout did not reach the host (status `not_reached`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_reached: Option<NotReached>,
    /// Handler refreshes (restarts, reloads) the run made on the host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<RunEvent>,
}

/// One step's result. Serialised, it is a step of the signed audit record.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StepRecord {
    pub address: String,
    pub module: String,
    /// `changed`, `failed`, `skipped`, `drifted`.
    pub status: StepResultStatus,
    pub change: Option<ChangeKind>,
    pub fields: Vec<FieldChange>,
    pub error: Option<String>,
    pub duration_ms: u64,
    /// This difference was drift, not an intended change.
    pub drift: bool,
    /// `intended` (a commit changed it), `corrective` (the host had drifted), `manual` or
    /// `rollback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    /// The commit (and signer) that last changed the step's desired state, or the manual run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// Drift on a non-sensitive file: the bounded unified diff, observed → desired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// A run with its host and step results.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RunDetail {
    pub run: RunRecord,
    pub hosts: Vec<HostRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct LastApplied {
    pub environment: String,
    pub commit: String,
    pub run_id: Option<RunId>,
    pub applied_at: i64,
}

/// A resource found different from the repo while the commit did not change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct DriftFinding {
    pub id: i64,
    pub environment: String,
    pub host: String,
    pub address: String,
    pub change: ChangeKind,
    pub fields: Vec<FieldChange>,
    pub first_seen: i64,
    pub last_seen: i64,
    pub resolved_at: Option<i64>,
    /// The last run that saw it.
    pub run_id: Option<RunId>,
    /// The run that first saw it.
    pub first_run_id: Option<RunId>,
    /// The run that found it gone (corrected, reverted by hand, or no longer declared).
    pub resolved_run_id: Option<RunId>,
    /// The bounded unified diff (observed → desired) of a non-sensitive file, as last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// `corrective` (anonymous drift) or `manual` (a recorded `plumb apply` did it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
}
