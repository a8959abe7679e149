//! Guardrails as code: Rego policies judge the plan before any host changes (DESIGN.md
//! decision 13).
//!
//! Two places hold policies, each compiled into its **own** Rego engine so one can never
//! weaken the other: the operator's (`--policy DIR`, the daemon config's `policies.dirs`,
//! outside the repo, like the trust root) and the repo's (`policies/*.rego`, reviewed in pull
//! requests). Conventions are conftest's: in packages under `plumb`, rules `deny*` and
//! `violation*` deny, `warn*` warns; a package's `overridable` set names its deny rules that a
//! `Plumb-Override: <rule> <reason>` trailer signed by an approver may lift. `input` is
//! [`PolicyInput`] (one host). Evaluation runs under regorus's execution time limit, and the
//! findings per host and their messages are bounded.

mod input;
mod judge;
pub mod overrides;
mod rego;
pub mod rules;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Serialize;

pub use input::{
    desired_input, plan_input, BackupInput, ChangeInput, CommitInput, Context, EnvironmentInput,
    HostInput, InputMode, NowInput, OverrideInput, PolicyInput, StepInput,
};
pub use overrides::{Override, OverrideDecision, Verdict};
use rules::{RuleDecl, RuleKind};

/// How long one rule may evaluate on one host (regorus's cooperative execution timer).
pub const EVAL_TIME_LIMIT: Duration = Duration::from_secs(5);
/// Policy files read from one directory.
pub const MAX_POLICY_FILES: usize = 500;
/// Bytes of one policy file (regorus's own length limits apply too).
pub const MAX_POLICY_BYTES: u64 = 1024 * 1024;
/// Findings kept per host and rule; more are counted in one last finding.
pub const MAX_FINDINGS_PER_RULE: usize = 100;
/// Characters of a message kept.
pub const MAX_MESSAGE_CHARS: usize = 1000;
/// Where repo policies live.
pub const REPO_DIR: &str = "policies";

#[derive(Debug, Clone, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: cannot read the policy: {error}")]
    Read { path: String, error: String },
    #[error("{path}: {error}")]
    Compile { path: String, error: String },
    #[error("{location}: evaluating {rule}: {error}")]
    Eval {
        location: String,
        rule: String,
        error: String,
    },
    #[error("{dir}: more than {max} policy files")]
    TooMany { dir: String, max: usize },
}

impl PolicyError {
    pub fn code(&self) -> &'static str {
        match self {
            PolicyError::Read { .. } => "read",
            PolicyError::Compile { .. } => "compile",
            PolicyError::Eval { .. } => "eval",
            PolicyError::TooMany { .. } => "too_many",
        }
    }
}

/// Where a policy comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Outside the repo (`--policy`, the daemon's `policies.dirs`).
    Operator,
    /// `policies/*.rego` in the config repo.
    Repo,
}

/// How a finding weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// `warn*`: reported, never blocks.
    Advisory,
    /// `deny*`/`violation*` named in the package's `overridable` set: blocks unless an
    /// approver's `Plumb-Override:` trailer names the rule.
    Overridable,
    /// `deny*`/`violation*`: blocks.
    Mandatory,
}

/// One violation (or warning) of one rule on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Finding {
    /// `<package without plumb.>.<rule>`, e.g. `ssh.deny_remove`: what an override names.
    pub rule: String,
    pub level: Level,
    pub origin: Origin,
    /// The rule's first definition, `file:line`.
    pub rule_location: String,
    pub host: String,
    pub message: String,
    /// The step it is about (`unit/id`), when the finding names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// That step's declaration, `path:line:col`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_location: Option<String>,
}

impl Finding {
    /// `host: step_location: level rule (rule_location): message`, one line.
    pub fn line(&self) -> String {
        let at = self
            .step_location
            .as_deref()
            .map(|l| format!("{l}: "))
            .unwrap_or_default();
        let level = match self.level {
            Level::Advisory => "warning",
            Level::Overridable => "denied (overridable)",
            Level::Mandatory => "denied",
        };
        format!(
            "{at}{level} by {} ({}) on {}: {}",
            self.rule, self.rule_location, self.host, self.message
        )
    }
}

/// One compiled set of policies (one origin).
#[derive(Clone)]
struct Compiled {
    origin: Origin,
    engine: regorus::Engine,
    rules: Vec<RuleDecl>,
    /// Per package, the deny rules it declares overridable.
    overridable: BTreeMap<String, BTreeSet<String>>,
    /// Packages whose every file reads only the input every host shares
    /// ([`rules::reads_only_shared`]): judged once per distinct list of steps.
    shared_only: BTreeSet<String>,
}

/// The result of one `test_*` rule.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TestResult {
    pub rule: String,
    pub location: String,
    pub passed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `plumb policy eval --output json`.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(title = "plumb policy eval report")]
pub struct EvalReport {
    pub environment: String,
    pub hosts: Vec<EvalHost>,
    pub verdict: Verdict,
}

/// One host's input document and what the policies found on it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct EvalHost {
    pub input: PolicyInput,
    pub findings: Vec<Finding>,
}

/// The policies in force: the operator's and the repo's, each in its own engine.
#[derive(Clone, Default)]
pub struct PolicySet {
    sets: Vec<Compiled>,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("rules", &self.rule_count())
            .finish()
    }
}

fn new_engine() -> regorus::Engine {
    let mut engine = regorus::Engine::new();
    engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
        limit: EVAL_TIME_LIMIT,
        check_interval: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN),
    });
    engine.set_strict_builtin_errors(false);
    engine
}

/// `*.rego` files under `dir` (recursively, sorted), as `(path shown, text)`. With
/// `with_tests`, `*_test.rego` files too.
pub fn read_dir(dir: &Path, with_tests: bool) -> Result<Vec<(String, String)>, PolicyError> {
    let mut files = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    let read_err = |p: &Path, e: std::io::Error| PolicyError::Read {
        path: p.display().to_string(),
        error: e.to_string(),
    };
    while let Some((d, depth)) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| read_err(&d, e))? {
            let entry = entry.map_err(|e| read_err(&d, e))?;
            let path = entry.path();
            let ty = entry.file_type().map_err(|e| read_err(&path, e))?;
            if ty.is_dir() && depth < 8 {
                stack.push((path, depth + 1));
            } else if ty.is_file() && is_policy_file(&path.to_string_lossy(), with_tests) {
                files.push(path);
            }
            if files.len() > MAX_POLICY_FILES {
                return Err(PolicyError::TooMany {
                    dir: dir.display().to_string(),
                    max: MAX_POLICY_FILES,
                });
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).map_err(|e| read_err(&p, e))?;
            if meta.len() > MAX_POLICY_BYTES {
                return Err(PolicyError::Read {
                    path: p.display().to_string(),
                    error: format!("larger than {MAX_POLICY_BYTES} bytes"),
                });
            }
            let text = std::fs::read_to_string(&p).map_err(|e| read_err(&p, e))?;
            Ok((p.display().to_string(), text))
        })
        .collect()
}

fn is_policy_file(name: &str, with_tests: bool) -> bool {
    name.ends_with(".rego") && (with_tests || !name.ends_with("_test.rego"))
}

/// The repo's `policies/*.rego` (tests left out), read through the checkout's jail.
pub fn read_repo(
    files: &crate::model::jail::RepoFiles,
) -> Result<Vec<(String, String)>, PolicyError> {
    let mut out = Vec::new();
    for name in files.files_under(REPO_DIR) {
        if !is_policy_file(&name, false) {
            continue;
        }
        let rel = format!("{REPO_DIR}/{name}");
        let text = files
            .text(&rel, MAX_POLICY_BYTES)
            .map_err(|e| PolicyError::Read {
                path: rel.clone(),
                error: e.to_string(),
            })?;
        out.push((rel, text));
        if out.len() > MAX_POLICY_FILES {
            return Err(PolicyError::TooMany {
                dir: REPO_DIR.into(),
                max: MAX_POLICY_FILES,
            });
        }
    }
    Ok(out)
}

impl PolicySet {
    /// Adds one origin's policies (no-op without files).
    pub fn add(&mut self, origin: Origin, files: Vec<(String, String)>) -> Result<(), PolicyError> {
        if files.is_empty() {
            return Ok(());
        }
        let mut engine = new_engine();
        let mut rules = Vec::new();
        let mut shared_only = BTreeSet::new();
        let mut reads_more = BTreeSet::new();
        for (path, text) in &files {
            if let Some(pkg) = rules::package_of(text) {
                if rules::reads_only_shared(text) {
                    shared_only.insert(pkg.to_string());
                } else {
                    reads_more.insert(pkg.to_string());
                }
            }
            engine
                .add_policy(path.clone(), text.clone())
                .map_err(|e| PolicyError::Compile {
                    path: path.clone(),
                    error: e.to_string(),
                })?;
            rules.extend(rules::scan(path, text));
        }
        let mut compiled = Compiled {
            origin,
            engine,
            rules,
            overridable: BTreeMap::new(),
            shared_only: &shared_only - &reads_more,
        };
        compiled.read_overridable();
        self.sets.push(compiled);
        Ok(())
    }

    /// Loads each operator directory (with its tests when `with_tests`).
    pub fn add_dirs(
        &mut self,
        origin: Origin,
        dirs: &[std::path::PathBuf],
        with_tests: bool,
    ) -> Result<(), PolicyError> {
        let mut files = Vec::new();
        for d in dirs {
            files.extend(read_dir(d, with_tests)?);
        }
        self.add(origin, files)
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Deny, violation and warn rules in force.
    pub fn rule_count(&self) -> usize {
        self.sets
            .iter()
            .flat_map(|s| &s.rules)
            .filter(|r| r.kind != RuleKind::Test)
            .count()
    }

    /// Every finding of every rule on one host's input.
    pub fn evaluate(&self, input: &PolicyInput) -> Result<Vec<Finding>, PolicyError> {
        self.evaluate_all(std::slice::from_ref(input))
    }

    /// Every finding of every rule on each host's input, in input order: hosts are split
    /// over the machine's cores, each thread with its own copy of each engine.
    pub fn evaluate_all(&self, inputs: &[PolicyInput]) -> Result<Vec<Finding>, PolicyError> {
        self.evaluate_each(inputs.len(), |i| Cow::Borrowed(&inputs[i]))
    }

    /// [`PolicySet::evaluate_all`] of the inputs `input(0..n)`, each made on the thread that
    /// judges it and dropped once judged: at most one input per thread is alive at a time.
    fn evaluate_each<'a, F>(&self, n: usize, input: F) -> Result<Vec<Finding>, PolicyError>
    where
        F: Fn(usize) -> Cow<'a, PolicyInput> + Sync,
    {
        self.over_threads(n, |sets, part| evaluate_chunk(sets, part.map(&input)))
    }

    /// The hosts `host(0..n)` judged together ([`judge`]): `shell(i)` is host `i`'s input
    /// without its steps.
    fn evaluate_hosts<'h, H, S>(
        &self,
        n: usize,
        host: H,
        shell: S,
    ) -> Result<Vec<Finding>, PolicyError>
    where
        H: Fn(usize) -> judge::Judged<'h> + Sync,
        S: Fn(usize) -> PolicyInput + Sync,
    {
        self.over_threads(n, |sets, part| {
            let mut engines: Vec<regorus::Engine> = sets.iter().map(|s| s.engine.clone()).collect();
            let mut memory = judge::Memory::default();
            let mut out = Vec::new();
            for i in part {
                out.extend(judge::judge(
                    sets,
                    &mut engines,
                    &mut memory,
                    host(i),
                    || shell(i),
                )?);
            }
            Ok(out)
        })
    }

    /// `chunk(sets, part)` over `0..n` split over the machine's cores (each thread with its
    /// own copy of the compiled sets), results in order.
    fn over_threads<F>(&self, n: usize, chunk: F) -> Result<Vec<Finding>, PolicyError>
    where
        F: Fn(&[Compiled], std::ops::Range<usize>) -> Result<Vec<Finding>, PolicyError> + Sync,
    {
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(n.div_ceil(16))
            .max(1);
        let size = n.div_ceil(threads).max(1);
        let chunk = &chunk;
        let results: Vec<Result<Vec<Finding>, PolicyError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n)
                .step_by(size)
                .map(|start| {
                    let sets = self.sets.clone();
                    let part = start..(start + size).min(n);
                    scope.spawn(move || chunk(&sets, part))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(PolicyError::Eval {
                            location: "-".into(),
                            rule: "-".into(),
                            error: "policy evaluation panicked".into(),
                        })
                    })
                })
                .collect()
        });
        let mut out = Vec::new();
        for r in results {
            out.extend(r?);
        }
        Ok(out)
    }

    /// Runs every `test_*` rule: passed when it is `true`.
    pub fn run_tests(&self) -> Vec<TestResult> {
        let mut out = Vec::new();
        for set in &self.sets {
            for rule in set.rules.iter().filter(|r| r.kind == RuleKind::Test) {
                let mut engine = set.engine.clone();
                engine.set_input(regorus::Value::new_object());
                let r = engine.eval_rule(rule.data_path());
                let (passed, error) = match r {
                    Ok(v) => (v == regorus::Value::Bool(true), None),
                    Err(e) => (false, Some(e.to_string())),
                };
                out.push(TestResult {
                    rule: rule.id(),
                    location: rule.location(),
                    passed,
                    error,
                });
            }
        }
        out
    }
}

impl Compiled {
    /// The findings on one input, `value` being that input as Rego sees it.
    fn evaluate_one(
        &self,
        engine: &mut regorus::Engine,
        input: &PolicyInput,
        value: &regorus::Value,
    ) -> Result<Vec<Finding>, PolicyError> {
        engine.set_input(value.clone());
        let steps: BTreeMap<&str, &str> = input
            .steps
            .iter()
            .map(|s| (s.address.as_str(), s.location.as_str()))
            .collect();
        let mut out = Vec::new();
        for rule in self.rules.iter().filter(|r| r.kind != RuleKind::Test) {
            let v = eval_rule(engine, rule)?;
            let level = self.level(rule);
            let make = |message: String, step: Option<String>| {
                finding(
                    rule,
                    self.origin,
                    level,
                    &input.host.name,
                    message,
                    step,
                    &steps,
                )
            };
            out.extend(findings_of(&v, rule, make));
        }
        Ok(out)
    }

    /// Reads each package's constant `overridable` set (rule names).
    fn read_overridable(&mut self) {
        let packages: BTreeSet<String> = self.rules.iter().map(|r| r.package.clone()).collect();
        for pkg in packages {
            let mut engine = self.engine.clone();
            engine.set_input(regorus::Value::new_object());
            let Ok(v) = engine.eval_rule(format!("data.{pkg}.overridable")) else {
                continue;
            };
            let names: BTreeSet<String> = match serde_json::to_value(&v) {
                Ok(serde_json::Value::Array(a)) => a
                    .into_iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect(),
                _ => BTreeSet::new(),
            };
            self.overridable.insert(pkg, names);
        }
    }

    fn level(&self, rule: &RuleDecl) -> Level {
        match rule.kind {
            RuleKind::Warn => Level::Advisory,
            _ if self
                .overridable
                .get(&rule.package)
                .is_some_and(|s| s.contains(&rule.name)) =>
            {
                Level::Overridable
            }
            _ => Level::Mandatory,
        }
    }
}

/// The value of `rule` on the engine's input.
fn eval_rule(engine: &mut regorus::Engine, rule: &RuleDecl) -> Result<regorus::Value, PolicyError> {
    engine
        .eval_rule(rule.data_path())
        .map_err(|e| PolicyError::Eval {
            location: rule.location(),
            rule: rule.id(),
            error: e.to_string(),
        })
}

/// The `input` document of one host, as Rego sees it: built straight from the typed input;
/// through `serde_json` (what the direct path mirrors) only for what it does not map.
fn input_value(input: &PolicyInput) -> regorus::Value {
    rego::to_value(input).unwrap_or_else(|_| {
        regorus::Value::from(serde_json::to_value(input).unwrap_or(serde_json::Value::Null))
    })
}

/// One thread's share of [`PolicySet::evaluate_each`]: per input, every origin's findings.
fn evaluate_chunk<'a>(
    sets: &[Compiled],
    inputs: impl Iterator<Item = Cow<'a, PolicyInput>>,
) -> Result<Vec<Finding>, PolicyError> {
    let mut engines: Vec<regorus::Engine> = sets.iter().map(|s| s.engine.clone()).collect();
    let mut out = Vec::new();
    for input in inputs {
        let value = input_value(&input);
        for (set, engine) in sets.iter().zip(engines.iter_mut()) {
            out.extend(set.evaluate_one(engine, &input, &value)?);
        }
    }
    Ok(out)
}

fn bounded(s: &str) -> String {
    if s.chars().count() <= MAX_MESSAGE_CHARS {
        return s.to_string();
    }
    let mut t: String = s.chars().take(MAX_MESSAGE_CHARS).collect();
    t.push('…');
    t
}

fn finding(
    rule: &RuleDecl,
    origin: Origin,
    level: Level,
    host: &str,
    message: String,
    step: Option<String>,
    steps: &BTreeMap<&str, &str>,
) -> Finding {
    // A message may carry the step address: the longest address it contains.
    let step = step.filter(|s| steps.contains_key(s.as_str())).or_else(|| {
        steps
            .keys()
            .filter(|a| message.contains(**a))
            .max_by_key(|a| a.len())
            .map(|a| a.to_string())
    });
    Finding {
        rule: rule.id(),
        level,
        origin,
        rule_location: rule.location(),
        host: host.to_string(),
        step_location: step
            .as_deref()
            .and_then(|s| steps.get(s))
            .map(|l| l.to_string()),
        step,
        message: bounded(&message),
    }
}

/// The findings a rule's value holds: a set or array of messages or `{msg, step}` objects,
/// `true` for a complete rule, or one message.
fn findings_of(
    v: &regorus::Value,
    rule: &RuleDecl,
    make: impl Fn(String, Option<String>) -> Finding,
) -> Vec<Finding> {
    let json = serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
    let items: Vec<serde_json::Value> = match json {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Bool(true) => vec![serde_json::Value::String(rule.id())],
        serde_json::Value::Null | serde_json::Value::Bool(false) => Vec::new(),
        serde_json::Value::String(_) => vec![json],
        // `undefined` serializes as a string or null; objects are one finding.
        other => vec![other],
    };
    if matches!(v, regorus::Value::Undefined) {
        return Vec::new();
    }
    let total = items.len();
    let mut out: Vec<Finding> = items
        .into_iter()
        .take(MAX_FINDINGS_PER_RULE)
        .map(|item| match item {
            serde_json::Value::String(s) => make(s, None),
            serde_json::Value::Object(o) => {
                let msg = o.get("msg").and_then(|m| m.as_str()).map_or_else(
                    || serde_json::Value::Object(o.clone()).to_string(),
                    str::to_string,
                );
                let step = o.get("step").and_then(|s| s.as_str()).map(str::to_string);
                make(msg, step)
            }
            other => make(other.to_string(), None),
        })
        .collect();
    if total > MAX_FINDINGS_PER_RULE {
        out.push(make(
            format!(
                "and {} more findings of this rule",
                total - MAX_FINDINGS_PER_RULE
            ),
            None,
        ));
    }
    out
}

/// Every finding on every host's desired state (no host contacted: `plumb validate`),
/// judged together ([`judge`]).
pub fn judge_desired(
    set: &PolicySet,
    ctx: &Context,
    hosts: &[crate::render::DesiredHost],
) -> Result<Vec<Finding>, PolicyError> {
    set.evaluate_hosts(
        hosts.len(),
        |i| judge::Judged {
            desired: &hosts[i],
            plan: None,
        },
        |i| input::desired_shell(ctx, &hosts[i], hosts.len()),
    )
}

/// Every finding on every host's observed plan (`plans[i]` is `hosts[i]`'s), judged
/// together ([`judge`]): `hosts_changed` counts the hosts with a change (`plumb plan`,
/// `plumb apply` and the daemon's gate all judge through here).
pub fn judge_plans<H>(
    set: &PolicySet,
    ctx: &Context,
    hosts: &[H],
    plans: &[&crate::engine::HostPlan],
) -> Result<Vec<Finding>, PolicyError>
where
    H: std::borrow::Borrow<crate::render::DesiredHost> + Sync,
{
    let changed = plans.iter().filter(|p| p.changes() > 0).count();
    let n = hosts.len().min(plans.len());
    set.evaluate_hosts(
        n,
        |i| judge::Judged {
            desired: hosts[i].borrow(),
            plan: Some(plans[i]),
        },
        |i| input::plan_shell(ctx, hosts[i].borrow(), plans[i], hosts.len(), changed),
    )
}

#[cfg(test)]
mod tests;
