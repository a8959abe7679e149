//! Prune: the resources plumb manages on each host, and what becomes of one that a commit (or
//! a rollback target) no longer declares there.
//!
//! Every step a run leaves in sync is recorded in the state as a [`Managed`] resource of its
//! host (address, module, and its [`Removal`]: the module's prune parameters, or why the module
//! never removes it). Before a host is planned or applied, [`add_removals`] compares that set
//! with the host's rendered steps: a resource the host no longer declares becomes, when prune
//! is on for it ([`prune_on`]), an ordinary step built from its prune parameters (the engine
//! sees one more step, so the round trips stay one per phase) marked
//! [`StepPrune::removing`]; otherwise it is an [`Orphan`], reported and left in place. A
//! removal that converges takes the resource out of the managed set; an orphan stays until it
//! is declared again or pruned.
//!
//! A resource is identified by its address (`unit/id`): a step that keeps its id but changes
//! its path modifies the one resource, and the old path is not pruned (give the step a new id
//! to have the old path removed).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::{Repo, StepAddress};
use crate::modules::{self, Resolve};
use crate::render::{DesiredHost, DesiredStep};

/// What removing a resource takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Removal {
    /// Applying the module with these parameters removes it (e.g. `{path, state: absent}`):
    /// identity only, never content.
    Absent { params: serde_json::Value },
    /// Never removed by prune, only reported as orphaned: why, for people.
    Never { reason: String },
}

/// What a rendered step says about its own removal.
#[derive(Debug, Clone, PartialEq)]
pub struct StepPrune {
    /// Its [`Removal`], compact: every rendered step of every host keeps one, and as a JSON
    /// tree the prune parameters cost several times their text (see [`StepPrune::removal`]).
    removal: CompactRemoval,
    /// The unit that declares the step (the unit's name, not an instance's).
    pub unit: String,
    /// The unit's own `prune:` (`None`: the unit does not say).
    pub unit_flag: Option<bool>,
    /// A step plumb added to remove a resource the host no longer declares.
    pub removing: bool,
}

/// A [`Removal`] as a rendered step keeps it: the prune parameters as their JSON text (read
/// back into the same value by [`StepPrune::removal`]), or the reason.
#[derive(Debug, Clone, PartialEq)]
enum CompactRemoval {
    Absent(Box<str>),
    Never(Box<str>),
}

impl From<Removal> for CompactRemoval {
    fn from(r: Removal) -> CompactRemoval {
        match r {
            Removal::Absent { params } => CompactRemoval::Absent(params.to_string().into()),
            Removal::Never { reason } => CompactRemoval::Never(reason.into()),
        }
    }
}

impl StepPrune {
    /// What a step declared in `unit` says, its removal being `removal`.
    pub fn declared(removal: Removal, unit: &crate::model::Unit) -> StepPrune {
        StepPrune {
            removal: removal.into(),
            unit: unit.name.clone(),
            unit_flag: unit.header.prune,
            removing: false,
        }
    }

    /// The step that removes a resource the state records as `m`.
    pub fn removing(m: &Managed) -> StepPrune {
        StepPrune {
            removal: m.removal.clone().into(),
            unit: m.unit.clone(),
            unit_flag: m.unit_flag,
            removing: true,
        }
    }

    /// What removing the step's resource takes (the value it was given: its JSON text keeps
    /// the keys' order, and every number as written).
    pub fn removal(&self) -> Removal {
        match &self.removal {
            CompactRemoval::Absent(text) => match serde_json::from_str(text) {
                Ok(params) => Removal::Absent { params },
                // Unreachable: the text is `serde_json`'s own printing of a value.
                Err(e) => Removal::Never {
                    reason: format!("its prune parameters could not be read back: {e}"),
                },
            },
            CompactRemoval::Never(reason) => Removal::Never {
                reason: reason.to_string(),
            },
        }
    }

    pub fn set_removal(&mut self, removal: Removal) {
        self.removal = removal.into();
    }
}

impl Default for StepPrune {
    fn default() -> StepPrune {
        StepPrune {
            removal: CompactRemoval::Never("not declared by a unit".into()),
            unit: String::new(),
            unit_flag: None,
            removing: false,
        }
    }
}

/// Why a step's identity is not kept when it may carry a secret.
pub const SECRET_IDENTITY: &str = "its identity (e.g. its path) holds a value read from a secret, \
     which plumb never stores: remove it by declaring it with `state: absent`";

/// Why a sensitive step's prune parameters are not kept when they hold more than a path or
/// a name (a `line`'s text, a key): plumb stores no value of a sensitive step.
pub const SENSITIVE_VALUE: &str = "it is sensitive and removing it needs one of its values \
     (e.g. a line's text), which plumb never stores: remove it by declaring it with \
     `state: absent`";

/// The keys prune parameters of a sensitive step may keep: what names the resource.
pub const IDENTITY_KEYS: &[&str] = &["path", "name", "user", "state"];

/// What the state may keep of `removal` for a step (`sensitive` or not): a sensitive step's
/// prune parameters only when they name the resource and nothing else ([`IDENTITY_KEYS`]),
/// and no step's when one of their strings holds a secret's value (`holds_secret`).
pub fn keepable(removal: Removal, sensitive: bool, holds_secret: impl Fn(&str) -> bool) -> Removal {
    let Removal::Absent { params } = &removal else {
        return removal;
    };
    if strings_of(params).into_iter().any(holds_secret) {
        return Removal::Never {
            reason: SECRET_IDENTITY.into(),
        };
    }
    let identity_only = params
        .as_object()
        .is_some_and(|o| o.keys().all(|k| IDENTITY_KEYS.contains(&k.as_str())));
    if sensitive && !identity_only {
        return Removal::Never {
            reason: SENSITIVE_VALUE.into(),
        };
    }
    removal
}

/// Every string of a JSON value (object keys included), as written.
pub fn strings_of(v: &serde_json::Value) -> Vec<&str> {
    let mut out = Vec::new();
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::String(s) => out.push(s.as_str()),
            serde_json::Value::Array(a) => stack.extend(a),
            serde_json::Value::Object(o) => {
                for (k, v) in o {
                    out.push(k.as_str());
                    stack.push(v);
                }
            }
            _ => {}
        }
    }
    out
}

/// The removal of a step of module `def` declared with `params` (after templating).
pub fn removal_of(def: &modules::ModuleDef, params: &serde_json::Value) -> Removal {
    match def.prune_params(params) {
        Ok(params) => Removal::Absent { params },
        Err(why) => Removal::Never { reason: why.into() },
    }
}

/// One resource plumb manages on a host, as the state keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Managed {
    pub address: String,
    pub module: String,
    /// What it is, for reports ([`crate::engine::step::REDACTED`] for a sensitive step).
    pub target: String,
    pub sensitive: bool,
    pub unit: String,
    /// The unit's `prune:` when the resource was last applied.
    pub unit_flag: Option<bool>,
    pub removal: Removal,
    /// Its position among the host's steps when last applied: removals run in reverse.
    pub order: i64,
}

impl Managed {
    /// The managed resource a rendered step declares, `order`-th on its host.
    pub fn of(step: &DesiredStep, order: usize) -> Managed {
        Managed {
            address: step.address.to_string(),
            module: step.module.to_string(),
            target: crate::engine::StepRef::of(step).target,
            sensitive: step.sensitive,
            unit: step.prune.unit.clone(),
            unit_flag: step.prune.unit_flag,
            removal: step.prune.removal(),
            order: i64::try_from(order).unwrap_or(i64::MAX),
        }
    }

    /// The resources `host` declares (not the removals added to it), in step order.
    pub fn declared(host: &DesiredHost) -> Vec<Managed> {
        host.steps
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.prune.removing)
            .map(|(i, s)| Managed::of(s, i))
            .collect()
    }
}

/// Why a resource no longer declared is left in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrphanReason {
    /// Prune is off for it (env.yaml's `prune`, or its unit's).
    PruneOff,
    /// Its module never removes such a resource by prune (`detail` says why).
    ModuleNever,
    /// Its removal could not be built (a module plumb no longer knows, or parameters it no
    /// longer accepts: `detail` says which).
    Unbuildable,
}

/// A resource plumb applied on a host that the host's desired state no longer declares, left
/// in place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Orphan {
    pub address: String,
    pub module: String,
    /// `(sensitive)` for a sensitive step.
    pub target: String,
    pub sensitive: bool,
    pub reason: OrphanReason,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Whether prune is on for `m`, no longer declared in `env`: the `prune:` of its unit in this
/// commit when the unit still exists and sets one; else the one its unit had when the resource
/// was last applied (a unit deleted with `prune: true` takes its resources with it); else the
/// environment's `prune`.
pub fn prune_on(repo: &Repo, env: &str, m: &Managed) -> bool {
    let now = repo
        .units
        .iter()
        .find(|u| u.name == m.unit)
        .and_then(|u| u.header.prune);
    now.or(m.unit_flag)
        .unwrap_or_else(|| repo.environments.get(env).is_some_and(|e| e.settings.prune))
}

/// A repo that has nothing: a removal is built from its prune parameters alone.
struct NoRepo;

impl Resolve for NoRepo {
    fn template(&mut self, path: &str) -> Result<String, String> {
        Err(format!("a removal reads no template (asked for `{path}`)"))
    }
    fn file(&mut self, path: &str) -> Result<Vec<u8>, String> {
        Err(format!("a removal reads no repo file (asked for `{path}`)"))
    }
}

/// The step that removes `m`, or why it cannot be built.
fn removal_step(m: &Managed) -> Result<DesiredStep, Orphan> {
    let orphan = |reason, detail: String| Orphan {
        address: m.address.clone(),
        module: m.module.clone(),
        target: m.target.clone(),
        sensitive: m.sensitive,
        reason,
        detail: Some(detail),
    };
    let params = match &m.removal {
        Removal::Absent { params } => params.clone(),
        Removal::Never { reason } => return Err(orphan(OrphanReason::ModuleNever, reason.clone())),
    };
    let Some(def) = modules::lookup(&m.module) else {
        let why = format!("module `{}` is not known to this plumb", m.module);
        return Err(orphan(OrphanReason::Unbuildable, why));
    };
    let Some(address) = StepAddress::parse(&m.address) else {
        let why = format!("`{}` is not a step address", m.address);
        return Err(orphan(OrphanReason::Unbuildable, why));
    };
    let resource = (def.build)(params.clone(), &mut NoRepo).map_err(|e| {
        // A sensitive step's message could quote its parameters.
        let why = if m.sensitive {
            "its prune parameters do not build (details hidden: sensitive step)".into()
        } else {
            format!("its prune parameters do not build: {e}")
        };
        orphan(OrphanReason::Unbuildable, why)
    })?;
    Ok(DesiredStep {
        address,
        module: def.name,
        resource: resource.into(),
        after: Vec::new(),
        notify: Vec::new(),
        sensitive: m.sensitive,
        secrets: Vec::new(),
        path: "(no longer declared)".into(),
        pos: crate::yaml::Pos::START,
        prune: StepPrune::removing(m),
    })
}

/// Adds to `host` a removal step for each resource of `managed` (what the state says plumb
/// applied there) that it no longer declares and prune is on for, after its own steps in the
/// reverse of their last applied order; every other such resource becomes an orphan of
/// `host`. Removals already added are replaced (a host rendered again).
pub fn add_removals(repo: &Repo, env: &str, host: &mut DesiredHost, managed: &[Managed]) {
    host.steps.retain(|s| !s.prune.removing);
    host.orphans.clear();
    let declared: std::collections::HashSet<String> =
        host.steps.iter().map(|s| s.address.to_string()).collect();
    let mut gone: Vec<&Managed> = managed
        .iter()
        .filter(|m| !declared.contains(&m.address))
        .collect();
    gone.sort_by(|a, b| b.order.cmp(&a.order).then(a.address.cmp(&b.address)));
    for m in gone {
        if !prune_on(repo, env, m) {
            host.orphans.push(Orphan {
                address: m.address.clone(),
                module: m.module.clone(),
                target: m.target.clone(),
                sensitive: m.sensitive,
                reason: OrphanReason::PruneOff,
                detail: None,
            });
            continue;
        }
        match removal_step(m) {
            Ok(step) => host.steps.push(step),
            Err(orphan) => host.orphans.push(orphan),
        }
    }
}

#[cfg(test)]
mod tests;
