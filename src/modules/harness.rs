//! The compliance harness: every registered module's [`Example`]s, run through
//! probe → diff (the expected change) → apply → probe → diff (in sync) → apply again (a
//! no-op) → probe → diff (still in sync).
//!
//! It also checks, on every step, the rest of the module contract: the probe prints only
//! the keys the module declares ([`ModuleDef::probe_keys`]), the module reads from the repo
//! only what it declares ([`ModuleDef::reads`]), and the apply does not depend on the text
//! of the notes (they are rewritten and the script must not change).
//!
//! The harness does no I/O itself: a [`Host`] runs the fragments. `tests/modules_compliance.rs`
//! runs the [`Runs::Local`] modules with a real `sh` on this machine in scratch directories,
//! `tests/e2e_modules.rs` runs the [`Runs::Host`] ones on the Docker test hosts.

use std::collections::BTreeSet;

use super::{
    Change, ChangeKind, Example, ModuleDef, ProbeResult, RepoRead, Resolve, Resource, Runs,
};

/// Where the harness runs fragments.
pub trait Host {
    /// A fresh, empty scratch directory for one example (an absolute path).
    fn fresh_root(&mut self) -> String;
    /// Runs one fragment the way the engine does (its own `sh`, stdin not the script) and
    /// captures stdout, stderr and the exit status.
    fn run(&mut self, script: &str) -> ProbeResult;
    /// Runs one fragment of `module` for `phase`: [`Host::run`], unless the host measures
    /// what each module costs (`tests/modules_compliance.rs`, `module_costs_are_reported`).
    fn run_as(&mut self, module: &'static str, phase: Phase, script: &str) -> ProbeResult {
        let _ = (module, phase);
        self.run(script)
    }
}

/// What a fragment the harness runs is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// A probe.
    Probe,
    /// The apply of a change.
    Apply,
    /// The apply of an in-sync step (which must do nothing).
    InSyncApply,
    /// A probe batch ([`super::ProbeBatch`]) of a step with itself, checked against the
    /// step's own probe.
    ProbeBatch,
}

/// A module that does not meet the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HarnessError {
    #[error("module `{module}` has no examples: give its ModuleDef at least one `Example`")]
    NoExamples { module: &'static str },
    #[error("module `{module}` does not declare which of its changes an older state cannot undo: give its ModuleDef a `.reversibility(...)`")]
    UndeclaredReversibility { module: &'static str },
    #[error("module `{module}` does not declare what removing one of its resources means: give its ModuleDef a `.prune(...)`")]
    UndeclaredPrune { module: &'static str },
    #[error("module `{module}`, example `{example}`, step {step}: {message}")]
    Failed {
        module: &'static str,
        example: &'static str,
        step: usize,
        message: String,
    },
}

impl HarnessError {
    pub fn code(&self) -> &'static str {
        match self {
            HarnessError::NoExamples { .. } => "no_examples",
            HarnessError::UndeclaredReversibility { .. } => "undeclared_reversibility",
            HarnessError::UndeclaredPrune { .. } => "undeclared_prune",
            HarnessError::Failed { .. } => "failed",
        }
    }
}

/// Which modules' examples to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// [`Runs::Local`]: on this machine, unprivileged.
    Local,
    /// [`Runs::Host`]: on a real host, as root.
    Host,
}

impl Select {
    fn wants(self, runs: &Runs) -> bool {
        matches!(
            (self, runs),
            (Select::Local, Runs::Local { .. }) | (Select::Host, Runs::Host)
        )
    }
}

/// Checks every module of `registry`: each must have examples; those `select`ed are run on
/// `host`. Returns every failure (empty: all modules comply).
pub fn run_registry(
    registry: &[&'static ModuleDef],
    select: Select,
    host: &mut dyn Host,
) -> Vec<HarnessError> {
    let mut errors = Vec::new();
    for def in registry {
        if matches!(def.reversibility, super::Reversibility::Undeclared) {
            errors.push(HarnessError::UndeclaredReversibility { module: def.name });
        }
        if matches!(def.prune, super::Prune::Undeclared) {
            errors.push(HarnessError::UndeclaredPrune { module: def.name });
        }
        if def.examples.is_empty() {
            errors.push(HarnessError::NoExamples { module: def.name });
        } else if select.wants(&def.runs) {
            errors.extend(run_module(def, host).err());
        }
    }
    errors
}

/// Runs every example of one module on `host`, each in a fresh scratch root.
pub fn run_module(def: &'static ModuleDef, host: &mut dyn Host) -> Result<(), HarnessError> {
    if def.examples.is_empty() {
        return Err(HarnessError::NoExamples { module: def.name });
    }
    for ex in def.examples {
        run_example(def, ex, host)?;
    }
    Ok(())
}

fn run_example(
    def: &'static ModuleDef,
    ex: &'static Example,
    host: &mut dyn Host,
) -> Result<(), HarnessError> {
    let fail = |step: usize, message: String| HarnessError::Failed {
        module: def.name,
        example: ex.name,
        step,
        message,
    };
    let root = host.fresh_root();
    for (module, params) in ex.setup {
        let Some(setup) = super::lookup(module) else {
            return Err(fail(0, format!("setup names unknown module `{module}`")));
        };
        let r = build(setup, params, &root).map_err(|m| fail(0, m))?;
        let first = observe(setup, r.as_ref(), host).map_err(|m| fail(0, m))?;
        converge(setup, r.as_ref(), first, host).map_err(|m| fail(0, m))?;
    }
    for (i, st) in ex.steps.iter().enumerate() {
        let n = i + 1;
        let r = build(def, st.params, &root).map_err(|m| fail(n, m))?;
        let first = observe(def, r.as_ref(), host).map_err(|m| fail(n, m))?;
        if first.kind != st.expect {
            return Err(fail(
                n,
                format!("expected {}, the first probe found {first:?}", st.expect),
            ));
        }
        converge(def, r.as_ref(), first, host).map_err(|m| fail(n, m))?;
    }
    prune_example(def, ex, &root, host).map_err(|m| fail(ex.steps.len(), m))
}

/// Removes what the example's last step declared, as prune would: the module's prune
/// parameters must build, never create anything, and converge.
fn prune_example(
    def: &'static ModuleDef,
    ex: &'static Example,
    root: &str,
    host: &mut dyn Host,
) -> Result<(), String> {
    let (super::Prune::Absent(absent), Some(last)) = (def.prune, ex.steps.last()) else {
        return Ok(());
    };
    let Some(params) = absent(&example_params(last.params, root)?) else {
        return Ok(());
    };
    let r = build(def, &params.to_string(), root).map_err(|m| format!("prune: {m}"))?;
    let first = observe(def, r.as_ref(), host).map_err(|m| format!("prune: {m}"))?;
    if first.kind == ChangeKind::Create {
        return Err(format!("prune parameters {params} create something"));
    }
    converge(def, r.as_ref(), first, host).map_err(|m| format!("prune: {m}"))
}

/// A repo whose templates and files are made up from their names, recording what was read.
#[derive(Default)]
struct ExampleRepo {
    templates: usize,
    files: usize,
}

impl Resolve for ExampleRepo {
    fn template(&mut self, path: &str) -> Result<String, String> {
        self.templates += 1;
        Ok(format!("rendered {path}\n"))
    }
    fn file(&mut self, path: &str) -> Result<Vec<u8>, String> {
        self.files += 1;
        Ok(format!("file {path}\n").into_bytes())
    }
}

/// `params` with `{root}` replaced by `root` (JSON-escaped), parsed.
fn example_params(params: &str, root: &str) -> Result<serde_json::Value, String> {
    let escaped = serde_json::to_string(root).map_err(|e| e.to_string())?;
    let escaped = &escaped[1..escaped.len() - 1];
    serde_json::from_str(&params.replace("{root}", escaped))
        .map_err(|e| format!("example parameters are not JSON ({e}): {params}"))
}

/// Builds an example step, checking the repo reads against [`ModuleDef::reads`].
fn build(def: &'static ModuleDef, params: &str, root: &str) -> Result<Box<dyn Resource>, String> {
    let value = example_params(params, root)?;
    let mut repo = ExampleRepo::default();
    let built = match def.runs {
        Runs::Local {
            rooted: Some(rooted),
        } => rooted(value.clone(), root),
        _ => (def.build)(value.clone(), &mut repo),
    };
    let r = built.map_err(|e| format!("build failed at {:?}: {e}", e.pointer))?;
    let declared = |want: fn(&RepoRead) -> Option<&'static str>| -> Vec<&'static str> {
        def.reads.iter().filter_map(want).collect()
    };
    let templates = declared(|r| match r {
        RepoRead::Template(p) => Some(p),
        RepoRead::File(_) => None,
    });
    let files = declared(|r| match r {
        RepoRead::File(p) => Some(p),
        RepoRead::Template(_) => None,
    });
    let given = |ptrs: &[&str]| ptrs.iter().any(|p| value.pointer(p).is_some());
    if repo.templates > 0 && !given(&templates) {
        return Err("read a template without declaring it in `reads`".into());
    }
    if repo.files > 0 && !given(&files) {
        return Err("read a repo file without declaring it in `reads`".into());
    }
    if given(&templates) && repo.templates == 0 || given(&files) && repo.files == 0 {
        return Err("declares a repo read in `reads` that building did not do".into());
    }
    Ok(r)
}

/// Probes `r` (a resource of `def`) on `host`, expects `expect`, and converges it (see
/// [`run_module`]); returns the first change.
pub fn converge_resource(
    def: &ModuleDef,
    r: &dyn Resource,
    expect: ChangeKind,
    host: &mut dyn Host,
) -> Result<Change, String> {
    let first = observe(def, r, host)?;
    if first.kind != expect {
        return Err(format!(
            "expected {expect}, the first probe found {first:?}"
        ));
    }
    converge(def, r, first.clone(), host)?;
    Ok(first)
}

/// Probes and diffs, checking the probe's keys against [`ModuleDef::probe_keys`].
pub fn observe(def: &ModuleDef, r: &dyn Resource, host: &mut dyn Host) -> Result<Change, String> {
    let probe = r.probe();
    let out = host.run_as(def.name, Phase::Probe, &probe);
    let shown = || {
        format!(
            "probe:\n{probe}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    if out.status == 0 {
        let keys: BTreeSet<&str> = out
            .stdout
            .split(|b| *b == b'\n')
            .filter_map(|l| std::str::from_utf8(l).ok())
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        if let Some(k) = keys.iter().find(|k| !def.probe_keys.contains(k)) {
            return Err(format!(
                "the probe printed `{k}`, which is not in `probe_keys`\n{}",
                shown()
            ));
        }
    }
    same_as_batch(def, r, &out, host).map_err(|e| format!("{e}\n{}", shown()))?;
    r.diff(&out)
        .map_err(|e| format!("diff failed: {e}\n{}", shown()))
}

/// When `def` probes in batches and `r` can be in one: a batch of `r` twice must give each
/// member exactly `own` (the stdout and status of `r`'s own probe).
fn same_as_batch(
    def: &ModuleDef,
    r: &dyn Resource,
    own: &ProbeResult,
    host: &mut dyn Host,
) -> Result<(), String> {
    let Some(batch) = def.probe_batch else {
        return Ok(());
    };
    if (batch.key)(r).is_none() {
        return Ok(());
    }
    let Some(script) = (batch.probe)(&[r, r]) else {
        return Err("its probe batch refused a batch of one of its own steps".into());
    };
    let out = host.run_as(def.name, Phase::ProbeBatch, &script);
    for (j, member) in super::split_members(&out, 2).into_iter().enumerate() {
        if (member.status == 0) != (own.status == 0)
            || (own.status == 0 && member.stdout != own.stdout)
        {
            return Err(format!(
                "member {j} of a probe batch read other than the step's own probe:\nbatch:\n{script}\nstatus {}\nstdout:\n{}\nstderr:\n{}",
                member.status,
                String::from_utf8_lossy(&member.stdout),
                String::from_utf8_lossy(&member.stderr),
            ));
        }
    }
    Ok(())
}

/// Applies `first` (when it is a change), then requires two in-sync probes with a no-op
/// apply between them. Also requires that the apply does not read the notes.
fn converge(
    def: &ModuleDef,
    r: &dyn Resource,
    first: Change,
    host: &mut dyn Host,
) -> Result<(), String> {
    let script = r.apply(&first);
    let mut reworded = first.clone();
    for n in reworded.notes.iter_mut() {
        *n = format!("reworded: {}", n.chars().rev().collect::<String>());
    }
    reworded.notes.push("an extra note".into());
    if r.apply(&reworded) != script {
        return Err("the apply script changes when the notes are reworded".into());
    }
    if first.kind != ChangeKind::InSync {
        run_ok(host, def.name, Phase::Apply, &script)?;
    }
    for round in 2..=3 {
        let again = observe(def, r, host)?;
        // What the probe observed may ride along (a backup's snapshot age); nothing else.
        let bare = Change {
            observed: super::Facts::default(),
            ..again.clone()
        };
        if bare != Change::in_sync() {
            return Err(format!(
                "probe #{round} after the apply is not in sync: {again:?}"
            ));
        }
        run_ok(host, def.name, Phase::InSyncApply, &r.apply(&again))?;
    }
    Ok(())
}

fn run_ok(
    host: &mut dyn Host,
    module: &'static str,
    phase: Phase,
    script: &str,
) -> Result<(), String> {
    let out = host.run_as(module, phase, script);
    if out.status == 0 {
        return Ok(());
    }
    let what = match phase {
        Phase::InSyncApply => "apply of an in-sync step",
        Phase::Apply | Phase::Probe | Phase::ProbeBatch => "apply",
    };
    Err(format!(
        "{what} failed with status {}\n{script}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    ))
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    struct Nowhere;
    impl Host for Nowhere {
        fn fresh_root(&mut self) -> String {
            panic!("no example should run")
        }
        fn run(&mut self, _: &str) -> ProbeResult {
            panic!("no example should run")
        }
    }

    static WITHOUT_EXAMPLES: ModuleDef = ModuleDef {
        name: "fake",
        summary: "a module someone forgot to give examples",
        schema: schema_for::<file::Params>,
        build: |_, _| Err(BuildError::at("", "never built")),
        refreshable: false,
        runs: Runs::Local { rooted: None },
        reads: &[],
        probe_keys: &[],
        examples: &[],
        reversibility: super::super::Reversibility::Reversible,
        prune: super::super::Prune::Never("fake"),
        batch: None,
        probe_batch: None,
    };

    static UNDECLARED: ModuleDef = ModuleDef {
        name: "undeclared",
        summary: "a module someone forgot to say whether it can be undone",
        schema: schema_for::<file::Params>,
        build: |_, _| Err(BuildError::at("", "never built")),
        refreshable: false,
        runs: Runs::Host,
        reads: &[],
        probe_keys: &[],
        examples: &[],
        reversibility: super::super::Reversibility::Undeclared,
        prune: super::super::Prune::Undeclared,
        batch: None,
        probe_batch: None,
    };

    #[test]
    fn a_module_without_a_reversibility_fails_the_harness() {
        let errors = run_registry(&[&UNDECLARED], Select::Local, &mut Nowhere);
        assert_eq!(
            errors[0],
            HarnessError::UndeclaredReversibility {
                module: "undeclared"
            }
        );
    }

    #[test]
    fn a_module_without_a_prune_fails_the_harness() {
        let errors = run_registry(&[&UNDECLARED], Select::Local, &mut Nowhere);
        assert_eq!(
            errors[1],
            HarnessError::UndeclaredPrune {
                module: "undeclared"
            }
        );
    }

    /// Files, directories, links, lines, cron entries and sysctls are removed as the same
    /// resource with `state: absent`; packages, users and groups never by prune.
    #[test]
    fn prune_removes_what_is_safe_and_says_why_not_otherwise() {
        let def = |name: &str| crate::modules::lookup(name).expect("registered");
        let p = serde_json::json!({"path": "/etc/x", "content": "secret", "mode": "0600"});
        assert_eq!(
            def("file").prune_params(&p),
            Ok(serde_json::json!({"path": "/etc/x", "state": "absent"}))
        );
        for m in ["package", "user", "group", "command"] {
            let why = def(m).prune_params(&serde_json::json!({"name": "x"}));
            assert!(why.is_err(), "{m}");
        }
        assert!(def("user")
            .prune_params(&serde_json::json!({"name": "x"}))
            .is_err_and(|w| w.contains("explicit")));
    }

    #[test]
    fn a_module_without_examples_fails_the_harness() {
        for select in [Select::Local, Select::Host] {
            let errors = run_registry(&[&WITHOUT_EXAMPLES], select, &mut Nowhere);
            assert_eq!(
                errors,
                [HarnessError::NoExamples { module: "fake" }],
                "{select:?}"
            );
            assert!(errors[0].to_string().contains("has no examples"));
        }
        assert_eq!(
            run_module(&WITHOUT_EXAMPLES, &mut Nowhere),
            Err(HarnessError::NoExamples { module: "fake" })
        );
    }

    #[test]
    fn every_registered_module_has_examples() {
        let missing: Vec<_> = REGISTRY
            .iter()
            .filter(|d| d.examples.is_empty())
            .map(|d| d.name)
            .collect();
        assert!(missing.is_empty(), "modules without examples: {missing:?}");
    }

    #[test]
    fn example_params_are_json_with_the_root_escaped() {
        for def in REGISTRY {
            for ex in def.examples {
                for st in ex.steps {
                    example_params(st.params, "/tmp/a \"b\"\\c")
                        .unwrap_or_else(|e| panic!("{} {}: {e}", def.name, ex.name));
                }
                for (m, p) in ex.setup {
                    assert!(
                        lookup(m).is_some(),
                        "{}: unknown setup module {m}",
                        def.name
                    );
                    example_params(p, "/r").unwrap_or_else(|e| panic!("{}: {e}", def.name));
                }
            }
        }
        let v = example_params(r#"{"path": "{root}/x"}"#, "/tmp/a \"b\"").unwrap();
        assert_eq!(v["path"], "/tmp/a \"b\"/x");
    }
}
