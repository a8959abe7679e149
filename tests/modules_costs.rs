//! What steps cost on a host, and the batches that make them cheaper (issue 21, point 3).
//!
//! - `line_batches_equal_the_steps_one_by_one`: a proptest over small files and `line`
//!   steps on one file: applying the changed steps as one batch (the `line` module's
//!   `Batch`) leaves exactly the bytes and mode that applying them one after the other does,
//!   and fails, changing nothing, exactly when one of them would fail.
//! - `module_costs_are_reported`: every local module's examples run through the compliance
//!   harness twice, once timed and once with every command on `PATH` replaced by a wrapper
//!   that logs its name; it prints, per module and phase, the fragments run, their time and
//!   the commands they started (`cargo nextest run --test modules_costs --no-capture`).
//!   Figures only: nothing is asserted on time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use plumb::modules::harness::{self, Host, Phase, Select};
use plumb::modules::{lookup, Change, ChangeKind, ProbeResult, Resolve, Resource, REGISTRY};
use proptest::prelude::*;
use serde_json::json;

/// Runs one fragment with `/bin/sh -c` (with `path` as `PATH` when given).
fn run_with(script: &str, path: Option<&str>) -> ProbeResult {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(script);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run sh: {e}"));
    ProbeResult {
        stdout: out.stdout,
        stderr: out.stderr,
        status: out.status.code().unwrap_or(-1),
    }
}

fn run(script: &str) -> ProbeResult {
    run_with(script, None)
}

/// A config repo with nothing in it (`line` reads nothing).
struct NoRepoReads;
impl Resolve for NoRepoReads {
    fn template(&mut self, path: &str) -> Result<String, String> {
        Err(format!("no template {path}"))
    }
    fn file(&mut self, path: &str) -> Result<Vec<u8>, String> {
        Err(format!("no file {path}"))
    }
}

// ---------------------------------------------------------------------------------------
// Batched `line` edits equal the edits one by one.

const LINES: &[&str] = &[
    "",
    "a",
    "b",
    "Port 22",
    "#Port 22",
    "Port 2222",
    "1",
    "1.0",
    "x  y",
    "%s\\n",
    "'q' $(x)",
    "a\tb",
    "b a",
];
const REGEXPS: &[&str] = &[
    "^Port",
    "^#?Port[[:space:]]",
    "a",
    "^$",
    "^(a|b)$",
    "^1",
    "^(.)\\1",
    "\\<b\\>",
    "x +y",
    ".",
    "2$",
    "^[^#]",
];

#[derive(Debug, Clone)]
struct Spec {
    line: Option<&'static str>,
    regexp: Option<&'static str>,
    absent: bool,
    create: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop::option::weighted(0.85, prop::sample::select(LINES)),
        prop::option::weighted(0.5, prop::sample::select(REGEXPS)),
        prop::bool::weighted(0.3),
        any::<bool>(),
    )
        .prop_map(|(line, regexp, absent, create)| Spec {
            line,
            regexp,
            absent,
            create,
        })
}

/// A file's bytes (`None`: no file): lines, with or without a newline at the end.
fn file() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop::option::weighted(
        0.85,
        (
            prop::collection::vec(prop::sample::select(LINES), 0..7),
            any::<bool>(),
        )
            .prop_map(|(lines, newline)| {
                let mut s = lines.join("\n");
                if newline && !lines.is_empty() {
                    s.push('\n');
                }
                s.into_bytes()
            }),
    )
}

fn line_step(path: &Path, s: &Spec) -> Option<Box<dyn Resource>> {
    let mut p = json!({"path": path.display().to_string(), "create": s.create});
    if let Some(l) = s.line {
        p["line"] = l.into();
    }
    if let Some(r) = s.regexp {
        p["regexp"] = r.into();
    }
    if s.absent {
        p["state"] = "absent".into();
    }
    (lookup("line")?.build)(p, &mut NoRepoReads).ok()
}

/// What applying ended in: whether it succeeded, and the file's bytes and mode.
#[derive(Debug, PartialEq, Eq)]
struct Ended {
    ok: bool,
    bytes: Option<Vec<u8>>,
    mode: Option<u32>,
}

fn state(path: &Path) -> (Option<Vec<u8>>, Option<u32>) {
    use std::os::unix::fs::PermissionsExt;
    (
        std::fs::read(path).ok(),
        std::fs::metadata(path)
            .ok()
            .map(|m| m.permissions().mode() & 0o7777),
    )
}

/// Sets `initial` up in a fresh directory, probes every step, and applies the changes one
/// by one (stopping at the first failure) or as one batch. Returns the changes and the end.
fn apply_lines(initial: &Option<Vec<u8>>, specs: &[Spec], batched: bool) -> (Vec<Change>, Ended) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f.conf");
    if let Some(bytes) = initial {
        std::fs::write(&path, bytes).expect("write");
        run(&format!("chmod 0640 '{}'", path.display()));
    }
    let steps: Vec<Box<dyn Resource>> = specs
        .iter()
        .map(|s| line_step(&path, s).expect("buildable"))
        .collect();
    let changes: Vec<Change> = steps
        .iter()
        .map(|r| r.diff(&run(&r.probe())).expect("the probe parses"))
        .collect();
    let items: Vec<(&dyn Resource, &Change)> = steps
        .iter()
        .map(|r| r.as_ref())
        .zip(&changes)
        .filter(|(_, c)| c.is_change())
        .collect();
    let mut ok = true;
    if batched && !items.is_empty() {
        let batch = lookup("line").and_then(|d| d.batch).expect("line batches");
        let fragment = (batch.apply)(&items).expect("one path");
        ok = run(&fragment).status == 0;
    } else if !batched {
        ok = items.iter().all(|(r, c)| run(&r.apply(c)).status == 0);
    }
    let (bytes, mode) = state(&path);
    (changes, Ended { ok, bytes, mode })
}

proptest! {
    // PROPTEST_CASES=N for a longer run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    #[test]
    fn line_batches_equal_the_steps_one_by_one(
        initial in file(),
        specs in prop::collection::vec(spec(), 1..6),
    ) {
        prop_assume!(specs.iter().all(|s| line_step(Path::new("/x"), s).is_some()));
        let (one_by_one, seq) = apply_lines(&initial, &specs, false);
        let (batched, bat) = apply_lines(&initial, &specs, true);
        // The same probes (their notes name each run's own directory).
        let seen = |cs: &[Change]| -> Vec<_> { cs.iter().map(|c| (c.kind, c.fields.clone())).collect() };
        prop_assert_eq!(seen(&one_by_one), seen(&batched));
        if seq.ok {
            prop_assert_eq!(&bat, &seq);
        } else {
            // One step failed: the batch fails as a whole and changes nothing.
            prop_assert!(!bat.ok, "{:?}", bat);
            prop_assert_eq!(&bat.bytes, &initial);
        }
    }
}

// ---------------------------------------------------------------------------------------
// What each module's examples cost.

/// Fragments run, their time and the commands they started, for one module and phase.
#[derive(Debug, Default, Clone, Copy)]
struct Cost {
    runs: u32,
    micros: u128,
    commands: u32,
}

/// This machine, each example in a fresh temporary directory; counts what each module's
/// fragments cost. With `wrapped`, `PATH` holds only wrappers that log their name to `log`.
struct Measured {
    roots: Vec<tempfile::TempDir>,
    wrapped: Option<(String, PathBuf)>,
    costs: BTreeMap<(&'static str, Phase), Cost>,
}

impl Host for Measured {
    fn fresh_root(&mut self) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().display().to_string();
        self.roots.push(dir);
        path
    }
    fn run(&mut self, script: &str) -> ProbeResult {
        run_with(script, self.wrapped.as_ref().map(|(p, _)| p.as_str()))
    }
    fn run_as(&mut self, module: &'static str, phase: Phase, script: &str) -> ProbeResult {
        if let Some((_, log)) = &self.wrapped {
            std::fs::write(log, b"").expect("log");
        }
        let start = Instant::now();
        let out = self.run(script);
        let micros = start.elapsed().as_micros();
        let commands = match &self.wrapped {
            Some((_, log)) => std::fs::read_to_string(log).expect("log").lines().count(),
            None => 0,
        };
        let cost = self.costs.entry((module, phase)).or_default();
        cost.runs += 1;
        cost.micros += micros;
        cost.commands += u32::try_from(commands).unwrap_or(u32::MAX);
        out
    }
}

/// A directory of wrappers, one per command found on `PATH`, each logging its name to
/// `log` and then running the real command (same process: `exec`). Returns the new `PATH`.
fn wrappers(dir: &Path, log: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    for d in path.split(':').filter(|d| d.starts_with('/')) {
        let Ok(entries) = std::fs::read_dir(d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let w = bin.join(&name);
            let executable = std::fs::metadata(e.path())
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if w.exists() || !executable || name.contains('\'') {
                continue;
            }
            let script = format!(
                "#!/bin/sh\nprintf '%s\\n' '{name}' >> '{}'\nexec '{}' \"$@\"\n",
                log.display(),
                e.path().display()
            );
            std::fs::write(&w, script).expect("wrapper");
            std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }
    bin.display().to_string()
}

fn measure(wrapped: Option<(String, PathBuf)>) -> BTreeMap<(&'static str, Phase), Cost> {
    let mut host = Measured {
        roots: Vec::new(),
        wrapped,
        costs: BTreeMap::new(),
    };
    let errors = harness::run_registry(REGISTRY, Select::Local, &mut host);
    let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(shown.is_empty(), "{}", shown.join("\n\n"));
    host.costs
}

#[test]
fn module_costs_are_reported() {
    let timed = measure(None);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("commands.log");
    let counted = measure(Some((wrappers(dir.path(), &log), log)));
    println!(
        "{:<16} {:<9} {:>5} {:>10} {:>13}",
        "module", "phase", "runs", "ms / run", "commands / run"
    );
    for ((module, phase), t) in &timed {
        let c = counted.get(&(module, *phase)).copied().unwrap_or_default();
        let per = |x: f64| x / f64::from(t.runs.max(1));
        println!(
            "{module:<16} {:<9} {:>5} {:>10.1} {:>13.1}",
            format!("{phase:?}"),
            t.runs,
            per(t.micros as f64 / 1000.0),
            per(f64::from(c.commands)),
        );
    }
    for def in REGISTRY
        .iter()
        .filter(|d| matches!(d.runs, plumb::modules::Runs::Local { .. }))
    {
        let probes = counted
            .get(&(def.name, Phase::Probe))
            .copied()
            .unwrap_or_default();
        assert!(probes.runs > 0, "{}: no probe ran", def.name);
    }
    let commands: u32 = counted.values().map(|c| c.commands).sum();
    assert!(commands > 0, "the wrappers counted no command");
}

/// The cost of many `line` steps into one file, one by one and as one batch: the batch's
/// commands do not grow with the number of exact lines.
#[test]
fn a_line_batch_starts_as_many_commands_for_2_lines_as_for_50() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("commands.log");
    let path = wrappers(dir.path(), &log);
    let count = |n: usize, batched: bool| -> usize {
        let scratch = tempfile::tempdir().expect("tempdir");
        let f = scratch.path().join("many.conf");
        std::fs::write(&f, "# many\n").expect("write");
        let steps: Vec<Box<dyn Resource>> = (0..n)
            .map(|i| {
                let p = json!({"path": f.display().to_string(), "line": format!("line {i}")});
                (lookup("line").expect("line").build)(p, &mut NoRepoReads).expect("builds")
            })
            .collect();
        let change = Change::new(ChangeKind::Create);
        let items: Vec<(&dyn Resource, &Change)> =
            steps.iter().map(|r| (r.as_ref(), &change)).collect();
        std::fs::write(&log, b"").expect("log");
        let ok = if batched {
            let batch = lookup("line").and_then(|d| d.batch).expect("line batches");
            run_with(&(batch.apply)(&items).expect("one path"), Some(&path)).status == 0
        } else {
            items
                .iter()
                .all(|(r, c)| run_with(&r.apply(c), Some(&path)).status == 0)
        };
        assert!(ok, "{n} lines, batched {batched}");
        std::fs::read_to_string(&log).expect("log").lines().count()
    };
    let (two, fifty) = (count(2, true), count(50, true));
    let one_by_one = count(50, false);
    println!("50 lines into one file: {one_by_one} commands one by one, {fifty} as one batch (2 lines: {two})");
    assert_eq!(two, fifty, "a batch's commands grow with its exact lines");
    assert!(fifty < one_by_one, "{fifty} vs {one_by_one}");
}

/// The commands one apply of the bench workload's shapes starts (`bench/gen.py`: a file of
/// 11 lines and a directory, each with owner, group and mode), printed by name: a new file,
/// its content changed, its mode changed, a new directory. The owner and group are the
/// acting user's (root on the bench's hosts).
#[test]
fn bench_shaped_applies_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("commands.log");
    let path = wrappers(dir.path(), &log);
    let who = |flag: &str| {
        let out = Command::new("id").arg(flag).output().expect("id");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (user, group) = (who("-un"), who("-gn"));
    // Not below /tmp: a world-writable sticky directory on the way costs one `stat` more.
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let f = scratch.path().join("f000.conf").display().to_string();
    let d = scratch.path().join("d01").display().to_string();
    let body: String = (0..10)
        .map(|j| format!("key_0_{j} = value number {j} of file 0\n"))
        .collect();
    let file = |content: &str, mode: &str| {
        let p = json!({"path": f, "content": content, "owner": user, "group": group, "mode": mode});
        (lookup("file").expect("file").build)(p, &mut NoRepoReads).expect("builds")
    };
    let directory = {
        let p = json!({"path": d, "owner": user, "group": group, "mode": "0755"});
        (lookup("directory").expect("directory").build)(p, &mut NoRepoReads).expect("builds")
    };
    let cases: Vec<(&str, Box<dyn Resource>)> = vec![
        ("file: new", file(&body, "0644")),
        (
            "file: content changed",
            file(&format!("{body}changed = yes\n"), "0644"),
        ),
        (
            "file: mode changed",
            file(&format!("{body}changed = yes\n"), "0640"),
        ),
        ("directory: new", directory),
    ];
    let mut total = 0;
    for (name, r) in cases {
        let change = r.diff(&run(&r.probe())).expect("the probe parses");
        assert!(change.is_change(), "{name}: {change:?}");
        std::fs::write(&log, b"").expect("log");
        let out = run_with(&r.apply(&change), Some(&path));
        assert_eq!(
            out.status,
            0,
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let started = std::fs::read_to_string(&log).expect("log");
        let names: Vec<&str> = started.lines().collect();
        println!("{name:24} {:2} commands: {}", names.len(), names.join(" "));
        total += names.len();
        let again = r.diff(&run(&r.probe())).expect("the probe parses");
        assert!(!again.is_change(), "{name}: not converged: {again:?}");
    }
    println!("bench-shaped applies: {total} commands");
}
