//! The document a policy sees as `input` (schema: `schemas/policy-input.schema.json`).
//!
//! Built from typed structs only, and only from values a report may show: a sensitive
//! step's target, parameters and change values are replaced by [`REDACTED`] here, the one
//! place policy input is made (`policy::tests::the_input_never_contains_a_sensitive_value`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

use crate::engine::{HostPlan, REDACTED};
use crate::facts::Facts;
use crate::modules::backup::{BackupObserved, BackupProblem};
use crate::modules::{ChangeKind, FieldChange};
use crate::render::{DesiredHost, DesiredStep};

/// `input` of every `plumb` policy: one host of one environment.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(title = "plumb policy input")]
pub struct PolicyInput {
    /// `desired` in `plumb validate` (no host was contacted: no `change`), `plan` when the
    /// host was observed (`plan`, `apply`, the daemon).
    pub mode: InputMode,
    pub environment: EnvironmentInput,
    /// The commit being judged (the daemon; unset for a working tree).
    pub commit: Option<CommitInput>,
    pub host: HostInput,
    /// Every step of the host, in apply order.
    pub steps: Vec<StepInput>,
    /// When the policy runs (UTC), for maintenance windows.
    pub now: NowInput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InputMode {
    Desired,
    Plan,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EnvironmentInput {
    pub name: String,
    /// Hosts of the environment judged together (the environment, or the `--limit`).
    pub hosts_total: usize,
    /// Of those, the hosts with at least one change in this plan (0 in `desired` mode).
    pub hosts_changed: usize,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct CommitInput {
    pub id: String,
    /// The signer's principal (allowed-signers name or OpenPGP user id).
    pub signer: Option<String>,
    /// `Plumb-Override:` trailers the commit carries (whether they are accepted is decided
    /// outside the policies, by the operator's approvers).
    pub overrides: Vec<OverrideInput>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct OverrideInput {
    pub rule: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct HostInput {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The host's facts when known.
    pub facts: Option<Facts>,
    /// Every `backup` step of the host, as this plan's probe observed it (`plan` mode; empty
    /// in `desired` mode): what a guardrail on destructive changes asks for.
    pub backups: Vec<BackupInput>,
}

/// One backup of the host, from the probe of its step in the plan being judged (the same
/// round trip as every other step: as fresh as the plan).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct BackupInput {
    /// The backup's `name` (as in the `plumb_backup_*` metrics and `/api/status`).
    pub name: String,
    /// The step that declares it (`unit/id`).
    pub step: String,
    /// What the probe saw: repository state, latest snapshot (Unix seconds, host clock), the
    /// last restore test (result, when it finished, the last success, `restore_ms`,
    /// `files_compared`, `files_mismatched`) and the intervals. Unset when the probe failed:
    /// nothing about the backup is known, so it counts as unverified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed: Option<BackupObserved>,
    /// Seconds since the latest snapshot (host clock); unset: no snapshot (or not observed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_age_seconds: Option<u64>,
    /// Seconds since the last successful restore test; unset: none yet (or not observed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore_verified_age_seconds: Option<u64>,
    /// What is wrong (what the `backup_failed` alert names); empty: healthy or not observed.
    pub problems: Vec<BackupProblem>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct StepInput {
    /// `<unit>/<id>`.
    pub address: String,
    pub unit: String,
    pub id: String,
    /// The module (`package`, `file`, `command`...).
    pub module: String,
    /// What it manages (`openssh-server`, `/etc/app.conf`); `(sensitive)` for a sensitive step.
    pub target: String,
    /// The step reads a secret or is marked sensitive: its values are `(sensitive)`.
    pub sensitive: bool,
    /// Where the step is declared: `path:line:col` in the config repo.
    pub location: String,
    /// The desired state, as `plumb render` shows it (file content as sha256 and size);
    /// every value is `(sensitive)` for a sensitive step.
    pub parameters: Value,
    /// What the plan would do (`plan` mode; unset in `desired` mode).
    pub change: Option<ChangeInput>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ChangeInput {
    pub kind: ChangeKind,
    /// Fields that differ, with from/to (values `(sensitive)` for a sensitive step).
    pub fields: Vec<FieldChange>,
    /// Why the probe could not tell (the step cannot be judged on its change).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the change cannot be undone by applying an older state, as its module declares
    /// (`package removal`, `a command ran (commands have no undo)`...); unset: it can be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub irreversible: Option<String>,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct NowInput {
    /// RFC 3339, UTC.
    pub rfc3339: String,
    /// 0 (Sunday) to 6.
    pub weekday: u8,
    pub hour: u8,
    pub minute: u8,
}

impl NowInput {
    pub fn at(t: time::OffsetDateTime) -> NowInput {
        let t = t.to_offset(time::UtcOffset::UTC);
        NowInput {
            rfc3339: t
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            weekday: t.weekday().number_days_from_sunday(),
            hour: t.hour(),
            minute: t.minute(),
        }
    }
}

/// What is judged together: the environment, its commit, and the time.
#[derive(Debug, Clone)]
pub struct Context {
    pub environment: String,
    pub commit: Option<CommitInput>,
    pub now: NowInput,
}

/// Every scalar of `v` replaced by [`REDACTED`] (keys stay: they are the module's schema).
fn redact_value(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), redact_value(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redact_value).collect()),
        Value::Null => Value::Null,
        _ => Value::String(REDACTED.to_string()),
    }
}

fn step_input(s: &DesiredStep) -> StepInput {
    let (target, parameters) = if s.sensitive {
        (REDACTED.to_string(), redact_value(&s.resource.desired()))
    } else {
        (s.resource.target(), s.resource.desired())
    };
    StepInput {
        address: s.address.to_string(),
        unit: s.address.unit.clone(),
        id: s.address.id.clone(),
        module: s.module.to_string(),
        target,
        sensitive: s.sensitive,
        location: format!("{}:{}:{}", s.path, s.pos.line, s.pos.col),
        parameters,
        change: None,
    }
}

/// The input for one host's desired state (no host contacted).
pub fn desired_input(ctx: &Context, host: &DesiredHost, hosts_total: usize) -> PolicyInput {
    desired_input_with(ctx, host, hosts_total, |h| {
        h.steps.iter().map(step_input).collect()
    })
}

fn desired_input_with(
    ctx: &Context,
    host: &DesiredHost,
    hosts_total: usize,
    steps: impl FnOnce(&DesiredHost) -> Vec<StepInput>,
) -> PolicyInput {
    PolicyInput {
        mode: InputMode::Desired,
        environment: EnvironmentInput {
            name: ctx.environment.clone(),
            hosts_total,
            hosts_changed: 0,
        },
        commit: ctx.commit.clone(),
        host: HostInput {
            name: host.host.name.clone(),
            labels: host.host.labels.clone(),
            facts: host.facts.clone(),
            backups: Vec::new(),
        },
        steps: steps(host),
        now: ctx.now.clone(),
    }
}

/// The input for one host's observed plan. `plan.steps` are already redacted by the engine
/// ([`crate::engine::StepRef::redact`]); they are matched to `host.steps` by address.
pub fn plan_input(
    ctx: &Context,
    host: &DesiredHost,
    plan: &HostPlan,
    hosts_total: usize,
    hosts_changed: usize,
) -> PolicyInput {
    let mut input = plan_shell(ctx, host, plan, hosts_total, hosts_changed);
    input.steps = host
        .steps
        .iter()
        .zip(planned(host, plan))
        .map(|(desired, sp)| step_with_change(desired, sp))
        .collect();
    input
}

/// [`plan_input`] without its steps: what the host itself gives (its backups and facts).
pub(super) fn plan_shell(
    ctx: &Context,
    host: &DesiredHost,
    plan: &HostPlan,
    hosts_total: usize,
    hosts_changed: usize,
) -> PolicyInput {
    let mut input = desired_shell(ctx, host, hosts_total);
    input.mode = InputMode::Plan;
    input.environment.hosts_changed = hosts_changed;
    if plan.facts.is_some() {
        input.host.facts = plan.facts.clone();
    }
    for (desired, sp) in host.steps.iter().zip(planned(host, plan)) {
        if let Some(b) = sp.and_then(|sp| backup_input(desired, sp)) {
            input.host.backups.push(b);
        }
    }
    input
}

/// [`desired_input`] without its steps.
pub(super) fn desired_shell(ctx: &Context, host: &DesiredHost, hosts_total: usize) -> PolicyInput {
    desired_input_with(ctx, host, hosts_total, |_| Vec::new())
}

/// Each desired step's plan, when the plan at its position is for it (by address).
fn planned<'a>(
    host: &'a DesiredHost,
    plan: &'a HostPlan,
) -> impl Iterator<Item = Option<&'a crate::engine::StepPlan>> + 'a {
    host.steps
        .iter()
        .enumerate()
        .map(move |(i, d)| plan.steps.get(i).filter(|sp| sp.step.address == d.address))
}

/// What the plan would do to a step, as policies see it.
fn change_input(sensitive: bool, sp: &crate::engine::StepPlan) -> ChangeInput {
    match &sp.change {
        Ok(c) => ChangeInput {
            kind: c.kind,
            fields: if sensitive {
                crate::modules::redact(&c.fields)
            } else {
                c.fields.clone()
            },
            error: None,
            // An unknown module's changes count as irreversible, as in a rollback.
            irreversible: crate::modules::lookup(sp.step.module)
                .map_or(Some("its module is unknown"), |def| def.irreversible(c))
                .map(str::to_string),
        },
        Err(e) => ChangeInput {
            kind: ChangeKind::InSync,
            fields: Vec::new(),
            error: Some(e.clone()),
            irreversible: None,
        },
    }
}

/// One step's input with its change (`sp`: its plan, `None` in `desired` mode or when the
/// plan has no entry for it).
pub(super) fn step_with_change(
    desired: &DesiredStep,
    sp: Option<&crate::engine::StepPlan>,
) -> StepInput {
    let mut step = step_input(desired);
    step.change = sp.map(|sp| change_input(desired.sensitive, sp));
    step
}

/// The steps of `host` with their plans (`plan`: `None` in `desired` mode), each with a key
/// that is equal for two steps exactly when their inputs are: the same resource (a rendered
/// resource is shared only by steps rendered alike, see `render::memo`), address, location
/// and sensitivity, and the same change. Valid while every host judged together is alive
/// (the key names the resource by its address in memory).
pub(super) fn keyed_steps<'h>(
    host: &'h DesiredHost,
    plan: Option<&'h HostPlan>,
) -> Vec<(String, &'h DesiredStep, Option<&'h crate::engine::StepPlan>)> {
    let plans: Vec<Option<&crate::engine::StepPlan>> = match plan {
        Some(p) => planned(host, p).collect(),
        None => vec![None; host.steps.len()],
    };
    host.steps
        .iter()
        .zip(plans)
        .map(|(s, sp)| {
            use std::fmt::Write as _;
            let mut key = String::with_capacity(96);
            let _ = write!(
                key,
                "{:p}\u{1}{}\u{1}{}\u{1}{}:{}:{}\u{1}",
                std::sync::Arc::as_ptr(&s.resource).cast::<()>(),
                u8::from(s.sensitive),
                s.address,
                s.path,
                s.pos.line,
                s.pos.col
            );
            if let Some(sp) = sp {
                let change = change_input(s.sensitive, sp);
                let _ = serde_json::to_writer(WriteKey(&mut key), &change);
            }
            (key, s, sp)
        })
        .collect()
}

/// A `String` as an `io::Write` of JSON text.
struct WriteKey<'a>(&'a mut String);

impl std::io::Write for WriteKey<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .push_str(std::str::from_utf8(buf).map_err(std::io::Error::other)?);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The backup a `backup` step's probe observed (typed: `Change::observed.backup`, kept by
/// redaction); a backup step whose probe failed is listed unobserved. The name is the
/// resource's, as the daemon's metrics and status show it (a backup step reads its password
/// from a secret, so its `target` in `steps` is hidden).
fn backup_input(desired: &DesiredStep, sp: &crate::engine::StepPlan) -> Option<BackupInput> {
    if sp.step.module != crate::modules::backup::DEF.name {
        return None;
    }
    let seen = sp
        .change
        .as_ref()
        .ok()
        .and_then(|c| c.observed.backup.as_deref().copied());
    Some(BackupInput {
        name: desired.resource.target(),
        step: sp.step.address.to_string(),
        snapshot_age_seconds: seen.and_then(|b| b.snapshot_age()),
        restore_verified_age_seconds: seen.and_then(|b| b.restore_success_age()),
        problems: seen.map(|b| b.problems()).unwrap_or_default(),
        observed: seen,
    })
}
