//! The declaration model: what a config repo says, as typed data with source positions.
//!
//! `*File` types are the on-disk YAML shapes; the JSON Schemas under `schemas/` are
//! generated from them (see `schema`), so the two cannot drift apart. [`Repo`] is the loaded,
//! checked form the renderer works from.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::diag::SourceMap;

pub mod address;
pub mod condition;
pub mod duration;
pub mod jail;
pub mod load;
pub mod max_failed;
pub mod size;
mod text_value;
/// Moved to [`crate::yaml`] (below `diag` and `schema`); re-exported for old paths.
pub use crate::yaml;

pub use address::StepAddress;
pub use condition::{CmpOp, Condition};
pub use duration::{DurationError, HumanDuration, DURATION_PATTERN};
pub use max_failed::{MaxFailed, MaxFailedError};
pub use size::{ByteSize, SizeError};

use crate::yaml::{Node, Pos};

/// Variables: names to any YAML value.
pub type Vars = serde_json::Map<String, serde_json::Value>;

/// `plumb.yaml`: settings for the whole repo.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "plumb repo settings (plumb.yaml)")]
pub struct RepoFile {
    /// A name for this repo in reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The environments plumb manages. Unset: every directory under `environments/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environments: Option<Vec<String>>,
    /// Connection defaults for every host; a host's own fields win.
    #[serde(default)]
    pub defaults: HostDefaults,
}

/// Connection defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostDefaults {
    /// SSH user. Unset: what `~/.ssh/config` says, else the local user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// SSH port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// Run steps through `sudo -n` (privilege escalation).
    #[serde(default, rename = "become", skip_serializing_if = "Option::is_none")]
    pub become_: Option<bool>,
}

/// `environments/<env>/hosts.yaml`: the inventory.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "plumb inventory (environments/<env>/hosts.yaml)")]
pub struct HostsFile {
    pub hosts: Vec<HostDecl>,
}

/// One host.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostDecl {
    /// A unique name for the host within the environment.
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"), length(max = 253))]
    pub name: String,
    /// IP address or DNS name to connect to.
    #[schemars(length(min = 1, max = 253))]
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Run steps through `sudo -n`.
    #[serde(default, rename = "become", skip_serializing_if = "Option::is_none")]
    pub become_: Option<bool>,
    /// Labels that units select hosts by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Host variables: the highest precedence.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub vars: Vars,
    /// Instances of reusable units on this host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<HostInstanceDecl>,
}

/// `environments/<env>/env.yaml`: how an environment is reconciled.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "plumb environment settings (environments/<env>/env.yaml)")]
pub struct EnvFile {
    /// Environment variables: override unit defaults, overridden by host vars.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub vars: Vars,
    #[serde(default)]
    pub drift: DriftSettings,
    /// Rollout waves. Unset: one wave with every host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// Checks run after each wave; a failure stops the rollout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_checks: Vec<HealthCheckDecl>,
    /// What the daemon does when a wave fails: `auto` (the default) brings the wave's hosts
    /// that took the commit back to their last good commit; `off` leaves them as they are.
    #[serde(default)]
    pub rollback: RollbackMode,
    /// What happens to a resource plumb applied on a host that a later commit (or a rollback
    /// target) no longer declares there: `true` removes it (as its module defines removal:
    /// a file deleted, a package never), `false` (the default) reports it as orphaned and
    /// leaves it. A unit's own `prune:` wins over this for its resources.
    #[serde(default)]
    pub prune: bool,
    /// Group variables: the hosts a selector picks get its vars. Precedence: unit defaults <
    /// environment `vars` < groups (in file order, a later group wins) < host `vars`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupDecl>,
    /// Instances of reusable units (units with `params`) on the hosts each selects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<EnvInstanceDecl>,
}

/// `rollback:` in env.yaml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RollbackMode {
    /// Roll a failed wave's hosts forward to their last good commit (not across a change a
    /// module declares irreversible).
    #[default]
    Auto,
    /// Leave a failed wave's hosts on the failed commit (alert only).
    Off,
}

/// Variables for the hosts a label selector picks.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupDecl {
    /// A name for the group in messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Label selector (every key must match; a list matches any of its values).
    #[schemars(length(min = 1))]
    pub selector: Selector,
    /// Variables of the group's hosts.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub vars: Vars,
}

/// One instance of a reusable unit, declared in `env.yaml` for the hosts `applies_to` picks.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvInstanceDecl {
    /// The instance's name: its steps are addressed `<name>/<id>`.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]*$"), length(max = 128))]
    pub name: String,
    /// The unit to instantiate (`units/<unit>.yaml`).
    pub unit: String,
    /// Values for the unit's `params`; the highest precedence in the instance's steps.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub params: Vars,
    /// Label selector. Unset: every host of the environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub applies_to: Selector,
}

/// One instance of a reusable unit, declared on a host in `hosts.yaml`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostInstanceDecl {
    /// The instance's name: its steps are addressed `<name>/<id>`.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]*$"), length(max = 128))]
    pub name: String,
    /// The unit to instantiate (`units/<unit>.yaml`).
    pub unit: String,
    /// Values for the unit's `params`; the highest precedence in the instance's steps.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub params: Vars,
}

/// The type a unit parameter's value must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    String,
    Integer,
    Number,
    Boolean,
    List,
    Map,
    /// Any value.
    #[default]
    Any,
}

impl ParamType {
    /// Whether `v` has this type.
    pub fn admits(self, v: &serde_json::Value) -> bool {
        use serde_json::Value as J;
        match self {
            ParamType::String => v.is_string(),
            ParamType::Integer => v.is_i64() || v.is_u64(),
            ParamType::Number => v.is_number(),
            ParamType::Boolean => v.is_boolean(),
            ParamType::List => matches!(v, J::Array(_)),
            ParamType::Map => matches!(v, J::Object(_)),
            ParamType::Any => true,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
            ParamType::List => "list",
            ParamType::Map => "map",
            ParamType::Any => "any",
        }
    }
}

/// A typed parameter of a reusable unit.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamDecl {
    #[serde(default, rename = "type")]
    pub type_: ParamType,
    /// The value when an instance gives none. Unset: every instance must give one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DriftMode {
    /// Report drift, change nothing.
    #[default]
    Report,
    /// Report drift and re-apply the commit to correct it.
    Correct,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DriftSettings {
    #[serde(default)]
    pub mode: DriftMode,
    /// How often to check for drift, e.g. "5m".
    #[serde(default = "default_drift_interval")]
    pub interval: HumanDuration,
}

impl Default for DriftSettings {
    fn default() -> Self {
        DriftSettings {
            mode: DriftMode::Report,
            interval: default_drift_interval(),
        }
    }
}

fn default_drift_interval() -> HumanDuration {
    HumanDuration::from_secs(300)
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// Waves in order; a host goes in the first wave that selects it.
    #[schemars(length(min = 1))]
    pub waves: Vec<Wave>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    pub name: String,
    /// Label selector. Empty or unset: every host not taken by an earlier wave.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: Selector,
    /// Hosts applied at once within the wave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_parallel: Option<u32>,
    /// Hosts of the wave that may fail (a step, or a health check on that host) while the
    /// wave still passes and the rollout goes on: `N` hosts or `N%` of the wave's hosts
    /// (rounded down). Default 0: the first failed host stops the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failed: Option<MaxFailed>,
}

// The on-disk shape: the loader turns it into a `HealthCheck` (or diagnostics); nothing runs
// from this shape.
/// A health check: exactly one of `command` (run on each host of the wave), `http` (GET from
/// plumb, 2xx expected), `tcp` (connect from plumb to `host:port`) or `prometheus` (a query
/// whose every value must satisfy `condition`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "HealthCheck")]
pub struct HealthCheckDecl {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// URL; may use `{{ host.address }}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Port on each host of the wave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub tcp: Option<u32>,
    /// A Prometheus query evaluated from plumb (like Argo Rollouts' analysis): success,
    /// failure, or inconclusive (no data), which pauses the wave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusDecl>,
    /// Bound on each attempt, e.g. "10s" (more than zero).
    #[serde(default = "default_check_timeout")]
    pub timeout: HumanDuration,
    /// Tries before the check fails (1 s apart).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 100))]
    pub retries: u32,
    /// Between deploys, the daemon runs every check at each drift check; a check with an
    /// `interval` also runs on its own schedule, e.g. "30s" (more than zero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<HumanDuration>,
}

/// A Prometheus check as written in env.yaml.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrometheusDecl {
    /// The Prometheus server, e.g. `http://prometheus:9090` (a template, like `http`'s URL).
    pub url: String,
    /// The PromQL query (a template: `{{ host.name }}` selects the host's series).
    #[schemars(length(min = 1))]
    pub query: String,
    /// What every value the query returns must satisfy: `<op> <number>`, op one of
    /// `<`, `<=`, `>`, `>=`, `==`, `!=` (e.g. `< 0.05`).
    pub condition: String,
    /// Keep evaluating for this long (every `interval`); any evaluation that fails the
    /// condition fails the check. Default: one evaluation.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<HumanDuration>,
    /// Time between two evaluations (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<HumanDuration>,
}

/// A Prometheus query check, parsed at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusQuery {
    pub url: String,
    pub query: String,
    pub condition: Condition,
    /// How long to keep evaluating (zero: once).
    pub for_: HumanDuration,
    /// Between evaluations (never zero).
    pub interval: HumanDuration,
}

/// The default time between two evaluations of a Prometheus check.
pub const PROMETHEUS_INTERVAL: HumanDuration = HumanDuration::from_secs(5);

/// What a health check probes: one kind, by construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthProbe {
    /// A shell command run on each host of the wave.
    Command(String),
    /// A URL template, GET from plumb.
    Http(String),
    /// A port on each host, connected to from plumb.
    Tcp(u16),
    /// A Prometheus query, evaluated from plumb.
    Prometheus(PrometheusQuery),
}

impl HealthProbe {
    /// The kind's name, as written in `env.yaml` and in reports.
    pub fn kind(&self) -> &'static str {
        match self {
            HealthProbe::Command(_) => "command",
            HealthProbe::Http(_) => "http",
            HealthProbe::Tcp(_) => "tcp",
            HealthProbe::Prometheus(_) => "prometheus",
        }
    }
}

/// A health check, checked at load: one probe, a timeout longer than zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub name: String,
    pub probe: HealthProbe,
    /// Bound on each attempt (never zero).
    pub timeout: HumanDuration,
    /// Tries before the check fails (at least 1).
    pub retries: u32,
    /// Its own schedule between deploys (never zero), besides every drift check.
    pub interval: Option<HumanDuration>,
}

/// Why a declared health check cannot run. `code()` is stable; `pointer()` is relative to
/// the check's own JSON pointer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthCheckError {
    #[error("health check `{name}` needs exactly one of `command`, `http`, `tcp`, `prometheus`")]
    Kinds { name: String },
    #[error("health check `{name}`: tcp port {port} is not in 1..=65535")]
    Port { name: String, port: u32 },
    #[error("health check `{name}`: the timeout must be longer than zero")]
    ZeroTimeout { name: String },
    #[error("health check `{name}`: {message}")]
    Condition { name: String, message: String },
    #[error("health check `{name}`: the prometheus interval must be longer than zero")]
    ZeroInterval { name: String },
    #[error("health check `{name}`: its interval must be longer than zero")]
    ZeroCheckInterval { name: String },
}

impl HealthCheckError {
    pub fn code(&self) -> &'static str {
        match self {
            HealthCheckError::Kinds { .. } | HealthCheckError::Port { .. } => "health-check",
            HealthCheckError::ZeroTimeout { .. }
            | HealthCheckError::ZeroInterval { .. }
            | HealthCheckError::ZeroCheckInterval { .. } => "duration",
            HealthCheckError::Condition { .. } => "health-check",
        }
    }

    /// Where the problem is, below the check's own pointer.
    pub fn pointer(&self) -> &'static str {
        match self {
            HealthCheckError::Kinds { .. } => "",
            HealthCheckError::Port { .. } => "/tcp",
            HealthCheckError::ZeroTimeout { .. } => "/timeout",
            HealthCheckError::Condition { .. } => "/prometheus/condition",
            HealthCheckError::ZeroInterval { .. } => "/prometheus/interval",
            HealthCheckError::ZeroCheckInterval { .. } => "/interval",
        }
    }
}

impl HealthCheck {
    /// Checks a declared health check: every problem, or the check.
    pub fn from_decl(decl: &HealthCheckDecl) -> Result<HealthCheck, Vec<HealthCheckError>> {
        let name = || decl.name.clone();
        let mut errors = Vec::new();
        let mut probes = Vec::new();
        if let Some(c) = &decl.command {
            probes.push(HealthProbe::Command(c.clone()));
        }
        if let Some(u) = &decl.http {
            probes.push(HealthProbe::Http(u.clone()));
        }
        if let Some(p) = decl.tcp {
            match u16::try_from(p).ok().filter(|p| *p != 0) {
                Some(port) => probes.push(HealthProbe::Tcp(port)),
                None => errors.push(HealthCheckError::Port {
                    name: name(),
                    port: p,
                }),
            }
        }
        if let Some(p) = &decl.prometheus {
            let interval = p.interval.unwrap_or(PROMETHEUS_INTERVAL);
            if interval.is_zero() {
                errors.push(HealthCheckError::ZeroInterval { name: name() });
            }
            match Condition::parse(&p.condition) {
                Ok(condition) => probes.push(HealthProbe::Prometheus(PrometheusQuery {
                    url: p.url.clone(),
                    query: p.query.clone(),
                    condition,
                    for_: p.for_.unwrap_or(HumanDuration::from_secs(0)),
                    interval,
                })),
                Err(message) => errors.push(HealthCheckError::Condition {
                    name: name(),
                    message,
                }),
            }
        }
        let kinds = [
            decl.command.is_some(),
            decl.http.is_some(),
            decl.tcp.is_some(),
            decl.prometheus.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            errors.push(HealthCheckError::Kinds { name: name() });
        }
        if decl.timeout.is_zero() {
            errors.push(HealthCheckError::ZeroTimeout { name: name() });
        }
        if decl.interval.is_some_and(|i| i.is_zero()) {
            errors.push(HealthCheckError::ZeroCheckInterval { name: name() });
        }
        match probes.pop() {
            Some(probe) if errors.is_empty() => Ok(HealthCheck {
                name: name(),
                probe,
                timeout: decl.timeout,
                retries: decl.retries.max(1),
                interval: decl.interval,
            }),
            _ => Err(errors),
        }
    }

    /// The on-disk shape of this check (`from_decl` of it gives the check back).
    pub fn to_decl(&self) -> HealthCheckDecl {
        let (mut command, mut http, mut tcp, mut prometheus) = (None, None, None, None);
        match &self.probe {
            HealthProbe::Command(c) => command = Some(c.clone()),
            HealthProbe::Http(u) => http = Some(u.clone()),
            HealthProbe::Tcp(p) => tcp = Some(u32::from(*p)),
            HealthProbe::Prometheus(q) => {
                prometheus = Some(PrometheusDecl {
                    url: q.url.clone(),
                    query: q.query.clone(),
                    condition: q.condition.to_string(),
                    for_: Some(q.for_),
                    interval: Some(q.interval),
                })
            }
        }
        HealthCheckDecl {
            name: self.name.clone(),
            command,
            http,
            tcp,
            prometheus,
            timeout: self.timeout,
            retries: self.retries,
            interval: self.interval,
        }
    }
}

fn default_check_timeout() -> HumanDuration {
    HumanDuration::from_secs(10)
}

fn one() -> u32 {
    1
}

/// Label selector: every key must match; a list matches any of its values.
pub type Selector = BTreeMap<String, LabelMatch>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum LabelMatch {
    One(String),
    Any(Vec<String>),
}

impl LabelMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            LabelMatch::One(v) => v == value,
            LabelMatch::Any(vs) => vs.iter().any(|v| v == value),
        }
    }
}

pub fn selector_matches(selector: &Selector, labels: &BTreeMap<String, String>) -> bool {
    selector
        .iter()
        .all(|(k, m)| labels.get(k).is_some_and(|v| m.matches(v)))
}

/// `units/<unit>.yaml`, less its steps (whose schema is assembled per module in `schema`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UnitHeader {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Label selector for the hosts this unit applies to. Unset: every host.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub applies_to: Selector,
    /// Unit defaults: the lowest precedence.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub vars: Vars,
    /// Typed parameters: a unit with `params` is reusable and applies only where an
    /// environment or a host instantiates it (`instances:`), once per instance.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, ParamDecl>,
    /// Units whose steps come first on a host (ordering only), e.g. `requires: [base]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    /// Whether resources of this unit that a later commit no longer declares are removed
    /// (`true`) or reported as orphaned (`false`). Unset: the environment's `prune`. When the
    /// unit itself is gone, the value it had when its resources were last applied decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<bool>,
}

/// The fields every step has besides its one module key.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepEnvelope {
    /// Unique within the unit; other units refer to it as `<unit>/<id>`.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]*$"), length(max = 128))]
    pub id: String,
    /// Steps that must run before this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Steps whose refresh runs (once, at the end) when this step changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
    /// Never show this step's content or values in plans, diffs, logs or reports.
    #[serde(default)]
    pub sensitive: bool,
    /// A condition, a template expression over vars and facts (`facts.os.family ==
    /// "debian"`): when false, the step is not part of that host's desired state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Repeat the step for each item of a list or map (or of an expression giving one):
    /// `item` (a map's `item.key`/`item.value`) and `loop.index` in its parameters; each
    /// iteration is addressed `<id>[<key>]`.
    #[serde(default, rename = "loop", skip_serializing_if = "Option::is_none")]
    pub loop_: Option<LoopDecl>,
    /// An expression giving each iteration's key (default: the item itself when it is a
    /// scalar, the map key for a map).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loop_key: Option<String>,
}

/// What a `loop:` runs over.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum LoopDecl {
    /// The items, in order.
    List(Vec<serde_json::Value>),
    /// Keys to values: `item.key`, `item.value`.
    Map(serde_json::Map<String, serde_json::Value>),
    /// An expression giving a list or a map, e.g. `users` or `"{{ users }}"`.
    Expr(String),
}

/// A host of a loaded environment, with defaults applied.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: Option<String>,
    pub become_: bool,
    pub labels: BTreeMap<String, String>,
    pub vars: Vars,
    /// Where the host is declared.
    pub path: String,
    pub pos: Pos,
}

/// A loaded environment.
#[derive(Debug, Clone)]
pub struct Environment {
    pub name: String,
    pub hosts_path: String,
    pub env_path: Option<String>,
    pub hosts: Vec<Host>,
    /// `settings.health_checks`, checked (the ones that failed are diagnostics instead).
    pub health_checks: Vec<HealthCheck>,
    pub settings: EnvFile,
    /// Where each of `settings.instances` is declared in env.yaml (same order).
    pub instance_pos: Vec<Pos>,
    /// Instances declared on hosts (`hosts.yaml`), by host name, with where each is declared.
    pub host_instances: BTreeMap<String, Vec<(HostInstanceDecl, Pos)>>,
}

/// One step as declared in a unit, before templating.
#[derive(Debug, Clone)]
pub struct StepDecl {
    pub id: String,
    pub module: String,
    /// The module's parameters as written (strings are templated at render time).
    pub params: Node,
    /// JSON pointer of the parameters within the unit file, e.g. `/steps/2/file`.
    pub pointer: String,
    pub after: Vec<(String, Pos)>,
    pub notify: Vec<(String, Pos)>,
    pub sensitive: bool,
    /// `when:` and where it is written.
    pub when: Option<(String, Pos)>,
    /// `loop:` as written, and where the `loop:` key is.
    pub loop_: Option<(Node, Pos)>,
    /// `loop_key:` and where it is written.
    pub loop_key: Option<(String, Pos)>,
    pub pos: Pos,
}

/// A loaded unit.
#[derive(Debug, Clone)]
pub struct Unit {
    pub name: String,
    pub path: String,
    pub header: UnitHeader,
    pub steps: Vec<StepDecl>,
    /// The unit file's tree, for positions.
    pub node: Node,
}

/// A config repo, loaded and schema-checked.
#[derive(Debug, Clone, Default)]
pub struct Repo {
    pub root: PathBuf,
    pub settings: RepoFile,
    pub environments: BTreeMap<String, Environment>,
    pub units: Vec<Unit>,
    pub sources: SourceMap,
    /// The repo's files, read only through the jail (see [`jail`]).
    pub files: jail::RepoFiles,
    /// Host facts known before rendering (cache, `--facts FILE`, or observed): not from the
    /// repo; empty after `load`. Rendering gives each host `facts` from here.
    pub facts: crate::facts::FactsBook,
    /// How `secrets.<name>` resolves (structural unless a command targets an environment).
    pub secrets: crate::secrets::Keyring,
}

/// Parses "500ms", "30s", "5m", "2h" (the one parser, [`HumanDuration`]'s), for values not
/// yet typed as a `HumanDuration`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    s.parse::<HumanDuration>().ok().map(HumanDuration::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_duration("99999999999999999999h"), None);
    }

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> = [("role".to_string(), "web".to_string())].into();
        let mut s = Selector::new();
        assert!(selector_matches(&s, &labels));
        s.insert(
            "role".into(),
            LabelMatch::Any(vec!["db".into(), "web".into()]),
        );
        assert!(selector_matches(&s, &labels));
        s.insert("zone".into(), LabelMatch::One("a".into()));
        assert!(!selector_matches(&s, &labels));
    }
}
