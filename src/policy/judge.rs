//! Judging the hosts of one plan (or one desired state) together, each thread remembering
//! what it already judged:
//!
//! - **Steps.** A step's input (its resource's parameters, address, location, change) is
//!   converted to a Rego value once per distinct step, keyed by
//!   [`input::keyed_steps`](super::input::keyed_steps): hosts whose step rendered alike share
//!   one resource (`render::memo`), so a fleet of one role converts each step once.
//! - **Rules.** A rule of a package that reads only the input every host of the batch shares
//!   ([`rules::reads_only_shared`](super::rules::reads_only_shared): no `input.host`, no other
//!   package) has one value per distinct list of steps: it is evaluated for the first host
//!   with that list and its value reused for the others. Its findings are still made per
//!   host (they name it).
//!
//! Everything else (a package that reads `input.host`) is evaluated for every host, on an
//! input built from the shared step values. Bounded: a thread keeps at most
//! [`MAX_STEP_VALUES`] step values and [`MAX_STEP_LISTS`] lists of steps, and stops looking
//! lists up when they keep missing. Checked against judging each host alone by
//! `policy::tests::judging_together_is_judging_each_host_alone`.

use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};

use super::input::{self, PolicyInput};
use super::rules::RuleKind;
use super::{finding, findings_of, input_value, rego, Compiled, Finding, PolicyError};
use crate::engine::HostPlan;
use crate::render::DesiredHost;

/// Most step values one thread keeps.
pub const MAX_STEP_VALUES: usize = 200_000;
/// Most distinct lists of steps one thread keeps rule values for.
pub const MAX_STEP_LISTS: usize = 4_096;
/// Lists that missed, without as many hits, after which a thread stops looking them up.
const GIVE_UP_MISSES: usize = 64;

/// One host to judge: its desired state and, once observed, its plan.
#[derive(Clone, Copy)]
pub(super) struct Judged<'h> {
    pub desired: &'h DesiredHost,
    pub plan: Option<&'h HostPlan>,
}

/// One thread's memory (see the module documentation).
#[derive(Default)]
pub(super) struct Memory {
    steps: HashMap<String, regorus::Value>,
    lists: HashMap<String, usize>,
    /// By (set, rule, list): the rule's value.
    values: HashMap<(usize, usize, usize), regorus::Value>,
    hits: usize,
    misses: usize,
}

impl Memory {
    /// The index of a list of steps, when lists are still looked up.
    fn list(&mut self, key: String) -> Option<(usize, bool)> {
        if self.misses >= GIVE_UP_MISSES && self.hits < self.misses {
            return None;
        }
        if let Some(&i) = self.lists.get(&key) {
            self.hits += 1;
            return Some((i, true));
        }
        self.misses += 1;
        if self.lists.len() >= MAX_STEP_LISTS {
            return None;
        }
        let i = self.lists.len();
        self.lists.insert(key, i);
        Some((i, false))
    }

    /// The Rego value of one step's input, converted once per distinct step.
    fn step_value(&mut self, key: &str, make: impl FnOnce() -> input::StepInput) -> regorus::Value {
        if let Some(v) = self.steps.get(key) {
            return v.clone();
        }
        let step = make();
        let v = rego::to_value(&step).unwrap_or_else(|_| {
            regorus::Value::from(serde_json::to_value(&step).unwrap_or(serde_json::Value::Null))
        });
        if self.steps.len() < MAX_STEP_VALUES {
            self.steps.insert(key.to_string(), v.clone());
        }
        v
    }
}

/// Every finding of every set on one host, in set and rule order (as
/// [`Compiled::evaluate_one`] gives them). `shell`: the host's input without its steps.
pub(super) fn judge(
    sets: &[Compiled],
    engines: &mut [regorus::Engine],
    memory: &mut Memory,
    host: Judged<'_>,
    shell: impl Fn() -> PolicyInput,
) -> Result<Vec<Finding>, PolicyError> {
    let keyed = input::keyed_steps(host.desired, host.plan);
    let any_shared = sets.iter().any(|s| !s.shared_only.is_empty());
    let list = if any_shared {
        let key: Vec<&str> = keyed.iter().map(|(k, _, _)| k.as_str()).collect();
        memory.list(key.join("\u{0}"))
    } else {
        None
    };
    let mut value: Option<regorus::Value> = None;
    let name = host.desired.host.name.as_str();
    let located: OnceCell<Vec<(String, String)>> = OnceCell::new();
    let mut out = Vec::new();
    for (si, (set, engine)) in sets.iter().zip(engines.iter_mut()).enumerate() {
        let mut input_set = false;
        for (ri, rule) in set.rules.iter().enumerate() {
            if rule.kind == RuleKind::Test {
                continue;
            }
            let shared = list.filter(|_| set.shared_only.contains(&rule.package));
            let known = shared
                .filter(|(_, seen)| *seen)
                .and_then(|(l, _)| memory.values.get(&(si, ri, l)).cloned());
            let v = match known {
                Some(v) => v,
                None => {
                    if !input_set {
                        let v = value.get_or_insert_with(|| host_value(shell(), &keyed, memory));
                        engine.set_input(v.clone());
                        input_set = true;
                    }
                    let v = super::eval_rule(engine, rule)?;
                    if let Some((l, _)) = shared {
                        memory.values.insert((si, ri, l), v.clone());
                    }
                    v
                }
            };
            let level = set.level(rule);
            let make = |message: String, step: Option<String>| {
                let located = located.get_or_init(|| {
                    keyed
                        .iter()
                        .map(|(_, s, _)| {
                            (
                                s.address.to_string(),
                                format!("{}:{}:{}", s.path, s.pos.line, s.pos.col),
                            )
                        })
                        .collect()
                });
                let steps: BTreeMap<&str, &str> = located
                    .iter()
                    .map(|(a, l)| (a.as_str(), l.as_str()))
                    .collect();
                finding(rule, set.origin, level, name, message, step, &steps)
            };
            out.extend(findings_of(&v, rule, make));
        }
    }
    Ok(out)
}

/// The host's input as Rego sees it: the shell's value with the steps' shared values.
fn host_value(
    shell: PolicyInput,
    keyed: &[(
        String,
        &crate::render::DesiredStep,
        Option<&crate::engine::StepPlan>,
    )],
    memory: &mut Memory,
) -> regorus::Value {
    let mut value = input_value(&shell);
    let steps: Vec<regorus::Value> = keyed
        .iter()
        .map(|(k, s, sp)| memory.step_value(k, || input::step_with_change(s, *sp)))
        .collect();
    if let Ok(o) = value.as_object_mut() {
        o.insert(regorus::Value::from("steps"), regorus::Value::from(steps));
    }
    value
}
