//! Loading a config repo from disk: read, parse with positions, validate against the
//! schemas, then build the typed model. Every problem becomes a diagnostic; loading goes on
//! past errors so that one run of `plumb validate` reports all of them.

use std::path::Path;

use serde::de::DeserializeOwned;

use super::jail::{EntryKind, Jail, JailError, RepoFiles, MAX_DEPTH};
use super::{DurationError, HumanDuration};
use super::{
    EnvFile, Environment, HealthCheck, Host, HostDefaults, HostsFile, Repo, RepoFile, StepDecl,
    Unit, UnitHeader,
};
use crate::diag::{Diagnostic, Diagnostics};
use crate::modules::{self, REGISTRY};
use crate::schema::{self, Kind};
use crate::yaml::{Node, Pos, MAX_FILE_BYTES};

pub const REPO_FILE: &str = "plumb.yaml";

/// Loads the repo at `root`. The repo is returned even when there are errors, holding
/// whatever could be read, so later checks can still run on the valid parts.
pub fn load(root: &Path) -> (Repo, Diagnostics) {
    let mut diags = Diagnostics::default();
    let mut repo = Repo {
        root: root.to_path_buf(),
        ..Repo::default()
    };

    if !root.is_dir() {
        diags.push(
            Diagnostic::error(
                "io",
                root.display().to_string(),
                Pos::START,
                "no such directory",
            )
            .with_hint("pass the path of a plumb config repo (the directory holding plumb.yaml)"),
        );
        return (repo, diags);
    }
    let jail = match Jail::open(root) {
        Ok(j) => j,
        Err(e) => {
            diags.push(Diagnostic::error(
                "io",
                root.display().to_string(),
                Pos::START,
                format!("cannot open the repo: {e}"),
            ));
            return (repo, diags);
        }
    };
    repo.files = RepoFiles::new(jail);
    if repo.files.kind(REPO_FILE) == Ok(None) {
        diags.push(
            Diagnostic::error(
                "io",
                REPO_FILE,
                Pos::START,
                "missing plumb.yaml: this is not a plumb config repo",
            )
            .with_hint("create plumb.yaml at the repo root (an empty file is enough)"),
        );
        return (repo, diags);
    }
    report_refused(&repo, &mut diags);

    if let Some((_, settings)) =
        read_typed::<RepoFile>(&mut repo, &mut diags, REPO_FILE, Kind::Repo)
    {
        repo.settings = settings;
    }

    load_environments(&mut repo, &mut diags);
    load_units(&mut repo, &mut diags);
    load_template_sources(&mut repo);
    (repo, diags)
}

fn rel(parts: &[&str]) -> String {
    parts.join("/")
}

/// The directories plumb reads from a repo; every symlink or special file in them is refused.
pub const REPO_DIRS: &[&str] = &["environments", "units", "templates", "files"];

/// Reports every symlink and special file in the directories plumb reads (and `plumb.yaml`),
/// whether or not anything uses it: a repo either has none, or is refused as a whole.
fn report_refused(repo: &Repo, diags: &mut Diagnostics) {
    let Some(jail) = repo.files.jail() else {
        return;
    };
    let mut refused: Vec<JailError> = Vec::new();
    if let Err(e) = jail.read(REPO_FILE, MAX_FILE_BYTES as u64) {
        if matches!(e, JailError::Symlink { .. } | JailError::Special { .. }) {
            refused.push(e);
        }
    }
    for dir in REPO_DIRS {
        match jail.kind(dir) {
            Ok(Some(EntryKind::Dir)) => refused.extend(jail.refused_under(dir, MAX_DEPTH)),
            Ok(Some(EntryKind::Symlink | EntryKind::Special)) => {
                refused.extend(jail.list(dir).err());
            }
            Ok(_) => {}
            Err(e) => refused.push(e),
        }
    }
    for e in refused {
        diags.push(jail_diagnostic(&e, Pos::START));
    }
}

/// A jail error as a diagnostic at `pos` of the file it names.
pub fn jail_diagnostic(e: &JailError, pos: Pos) -> Diagnostic {
    let d = Diagnostic::error(e.code(), e.path(), pos, e.to_string());
    match e.hint() {
        Some(h) => d.with_hint(h),
        None => d,
    }
}

/// Names of the regular files under `dir_name/` of the repo (recursively, `/`-separated),
/// for hints. Links and special files are left out.
pub fn list_files(repo: &Repo, dir_name: &str) -> Vec<String> {
    repo.files.files_under(dir_name)
}

/// Keeps the text of every template, so template errors can quote their line.
fn load_template_sources(repo: &mut Repo) {
    for name in list_files(repo, "templates") {
        let rel_path = format!("templates/{name}");
        if let Ok(text) = repo.files.text(&rel_path, MAX_FILE_BYTES as u64) {
            repo.sources.insert(rel_path, text);
        }
    }
}

/// The subdirectories (or files with `kind`) of `dir`, by name.
fn entries_of(repo: &Repo, dir: &str, kind: EntryKind) -> Vec<String> {
    repo.files
        .jail()
        .and_then(|j| j.list(dir).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.name)
        .collect()
}

fn load_environments(repo: &mut Repo, diags: &mut Diagnostics) {
    let names: Vec<(String, Pos, &'static str)> = match &repo.settings.environments {
        Some(list) => {
            let node = repo
                .sources
                .get(REPO_FILE)
                .and_then(|t| Node::parse(t).ok());
            list.iter()
                .enumerate()
                .map(|(i, n)| {
                    let pos = node
                        .as_ref()
                        .map(|nd| nd.locate(&format!("/environments/{i}")))
                        .unwrap_or(Pos::START);
                    (n.clone(), pos, REPO_FILE)
                })
                .collect()
        }
        None => entries_of(repo, "environments", EntryKind::Dir)
            .into_iter()
            .map(|n| (n, Pos::START, ""))
            .collect(),
    };
    if names.is_empty() {
        diags.push(
            Diagnostic::warning(
                "no-environments",
                REPO_FILE,
                Pos::START,
                "no environments: nothing to deploy to",
            )
            .with_hint("add environments/<env>/hosts.yaml"),
        );
    }
    for (name, pos, declared_in) in names {
        let hosts_path = rel(&["environments", &name, "hosts.yaml"]);
        let env_path = rel(&["environments", &name, "env.yaml"]);
        let hosts_kind = match repo.files.kind(&hosts_path) {
            Ok(k) => k,
            Err(e) => {
                diags.push(jail_diagnostic(&e, Pos::START));
                continue;
            }
        };
        if hosts_kind.is_none() {
            let (p, at) = if declared_in.is_empty() {
                (hosts_path.clone(), Pos::START)
            } else {
                (declared_in.to_string(), pos)
            };
            diags.push(
                Diagnostic::error(
                    "io",
                    p,
                    at,
                    format!("environment `{name}` has no {hosts_path}"),
                )
                .with_hint("create it with a `hosts:` list"),
            );
            continue;
        }
        let mut env = Environment {
            name: name.clone(),
            hosts_path: hosts_path.clone(),
            env_path: None,
            hosts: Vec::new(),
            health_checks: Vec::new(),
            settings: EnvFile::default(),
            instance_pos: Vec::new(),
            host_instances: Default::default(),
        };
        if repo.files.kind(&env_path).is_ok_and(|k| k.is_some()) {
            env.env_path = Some(env_path.clone());
            if let Some((node, settings)) = read_typed::<EnvFile>(repo, diags, &env_path, Kind::Env)
            {
                env.health_checks = health_checks(&settings, &node, &env_path, diags);
                env.instance_pos = (0..settings.instances.len())
                    .map(|i| node.locate(&format!("/instances/{i}")))
                    .collect();
                env.settings = settings;
            }
        }
        if let Some((node, file)) = read_typed::<HostsFile>(repo, diags, &hosts_path, Kind::Hosts) {
            add_hosts(&mut env, &node, file, &repo.settings.defaults);
        }
        repo.environments.insert(name, env);
    }
}

/// The hosts of an inventory, with defaults applied, and the instances each declares.
fn add_hosts(env: &mut Environment, node: &Node, file: HostsFile, defaults: &HostDefaults) {
    for (i, h) in file.hosts.into_iter().enumerate() {
        let pos = node.locate(&format!("/hosts/{i}"));
        if !h.instances.is_empty() {
            let at = |j: usize| node.locate(&format!("/hosts/{i}/instances/{j}"));
            let list = h.instances.into_iter().enumerate().map(|(j, d)| (d, at(j)));
            env.host_instances.insert(h.name.clone(), list.collect());
        }
        env.hosts.push(Host {
            name: h.name,
            address: h.address,
            port: h.port.or(defaults.port).unwrap_or(22),
            user: h.user.or_else(|| defaults.user.clone()),
            become_: h.become_.or(defaults.become_).unwrap_or(false),
            labels: h.labels,
            vars: h.vars,
            path: env.hosts_path.clone(),
            pos,
        });
    }
}

/// Turns each declared health check into a [`HealthCheck`], or into diagnostics at the
/// check's position (then it is left out: nothing at run time sees an invalid check).
fn health_checks(
    settings: &EnvFile,
    node: &Node,
    path: &str,
    diags: &mut Diagnostics,
) -> Vec<HealthCheck> {
    let mut checks = Vec::new();
    for (i, decl) in settings.health_checks.iter().enumerate() {
        match HealthCheck::from_decl(decl) {
            Ok(c) => checks.push(c),
            Err(errors) => {
                for e in errors {
                    let pos = node.locate(&format!("/health_checks/{i}{}", e.pointer()));
                    diags.push(Diagnostic::error(e.code(), path, pos, e.to_string()));
                }
            }
        }
    }
    checks
}

fn load_units(repo: &mut Repo, diags: &mut Diagnostics) {
    for file_name in entries_of(repo, "units", EntryKind::File) {
        let Some(unit_name) = file_name
            .strip_suffix(".yaml")
            .or_else(|| file_name.strip_suffix(".yml"))
        else {
            continue;
        };
        let rel_path = rel(&["units", &file_name]);
        let Some(node) = read_node(repo, diags, &rel_path) else {
            continue;
        };
        let schema_errors = schema::validate(Kind::Unit, &node, &rel_path);
        let had_schema_errors = !schema_errors.is_empty();
        diags.extend(schema_errors);
        let steps = split_steps(&node, &rel_path, diags);
        if had_schema_errors {
            continue;
        }
        // The header is everything but `steps`, already checked by the schema.
        let mut header_json = node.to_json();
        if let serde_json::Value::Object(o) = &mut header_json {
            o.remove("steps");
        }
        match serde_json::from_value::<UnitHeader>(header_json) {
            Ok(header) => repo.units.push(Unit {
                name: unit_name.to_string(),
                path: rel_path,
                header,
                steps,
                node,
            }),
            Err(e) => diags.push(Diagnostic::error(
                "schema",
                rel_path,
                node.pos,
                e.to_string(),
            )),
        }
    }
}

/// The keys every step may have besides its module key.
pub const STEP_ENVELOPE_KEYS: &[&str] = &[
    "id",
    "after",
    "notify",
    "sensitive",
    "when",
    "loop",
    "loop_key",
];

/// A string-valued envelope key and where its value is written.
fn located_str(step: &Node, key: &str) -> Option<(String, Pos)> {
    step.get(key)
        .and_then(|n| n.as_str().map(|v| (v.to_string(), n.pos)))
}

/// Splits each step into its envelope and its one module key.
fn split_steps(unit: &Node, path: &str, diags: &mut Diagnostics) -> Vec<StepDecl> {
    let mut out = Vec::new();
    let Some(steps) = unit.get("steps").and_then(Node::as_seq) else {
        return out;
    };
    let module_names: Vec<String> = REGISTRY.iter().map(|m| m.name.to_string()).collect();
    for (i, step) in steps.iter().enumerate() {
        let Some(map) = step.as_map() else { continue };
        let id = step
            .get("id")
            .and_then(Node::as_str)
            .unwrap_or_default()
            .to_string();
        let keys: Vec<&String> = map
            .keys()
            .filter(|k| modules::lookup(k).is_some())
            .collect();
        let label = if id.is_empty() {
            format!("step {i}")
        } else {
            format!("step `{id}`")
        };
        match keys.as_slice() {
            [] => {
                // An unknown key is reported by the schema with a suggestion; say what is missing.
                let unknown: Vec<&String> = map
                    .keys()
                    .filter(|k| !STEP_ENVELOPE_KEYS.contains(&k.as_str()))
                    .collect();
                if unknown.is_empty() {
                    diags.push(
                        Diagnostic::error(
                            "step-module",
                            path,
                            step.pos,
                            format!("{label} has no module"),
                        )
                        .with_hint(format!("add exactly one of: {}", module_names.join(", "))),
                    );
                }
            }
            [one] => {
                let list = |key: &str| -> Vec<(String, Pos)> {
                    step.get(key)
                        .and_then(Node::as_seq)
                        .map(|s| {
                            s.iter()
                                .filter_map(|n| n.as_str().map(|v| (v.to_string(), n.pos)))
                                .collect()
                        })
                        .unwrap_or_default()
                };
                let (_, params) = &map[one.as_str()];
                out.push(StepDecl {
                    id,
                    module: one.to_string(),
                    params: params.clone(),
                    pointer: format!("/steps/{i}/{one}"),
                    after: list("after"),
                    notify: list("notify"),
                    sensitive: matches!(
                        step.get("sensitive").map(|n| &n.value),
                        Some(crate::yaml::Value::Bool(true))
                    ),
                    when: located_str(step, "when"),
                    loop_: step
                        .get("loop")
                        .map(|n| (n.clone(), step.key_pos("loop").unwrap_or(n.pos))),
                    loop_key: located_str(step, "loop_key"),
                    pos: step.pos,
                });
            }
            [_, second, ..] => {
                let pos = step.key_pos(second).unwrap_or(step.pos);
                let names: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
                diags.push(
                    Diagnostic::error(
                        "step-module",
                        path,
                        pos,
                        format!("{label} has more than one module: {}", names.join(", ")),
                    )
                    .with_hint("a step does one thing: split it into one step per module"),
                );
            }
        }
    }
    out
}

/// Reads and parses a YAML file, recording its text for diagnostics.
fn read_node(repo: &mut Repo, diags: &mut Diagnostics, rel_path: &str) -> Option<Node> {
    let bytes = match repo
        .files
        .jail()
        .map(|j| j.read(rel_path, MAX_FILE_BYTES as u64))
    {
        Some(Ok(b)) => b,
        Some(Err(e)) => {
            diags.push(jail_diagnostic(&e, Pos::START));
            return None;
        }
        None => return None,
    };
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let upto = &e.as_bytes()[..valid];
            let line = upto.iter().filter(|b| **b == b'\n').count() + 1;
            // Columns count characters, as everywhere else.
            let line_start = upto.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let col = String::from_utf8_lossy(&upto[line_start..]).chars().count() + 1;
            let byte = e.as_bytes().get(valid).copied().unwrap_or(0);
            // Keep a readable copy so the diagnostic can quote the line.
            repo.sources
                .insert(rel_path, String::from_utf8_lossy(e.as_bytes()).into_owned());
            diags.push(
                Diagnostic::error(
                    "encoding",
                    rel_path,
                    Pos {
                        line: line as u32,
                        col: col as u32,
                    },
                    format!("file is not valid UTF-8: byte 0x{byte:02x} here"),
                )
                .with_hint("save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"),
            );
            return None;
        }
    };
    repo.sources.insert(rel_path, text.clone());
    match Node::parse(&text) {
        Ok(n) => Some(n),
        Err(e) => {
            let mut d = Diagnostic::error("yaml", rel_path, e.pos, e.message);
            if let Some(h) = e.hint {
                d = d.with_hint(h);
            }
            diags.push(d);
            None
        }
    }
}

/// Reads, parses and schema-checks a file, then deserializes it into `T`.
fn read_typed<T: DeserializeOwned>(
    repo: &mut Repo,
    diags: &mut Diagnostics,
    rel_path: &str,
    kind: Kind,
) -> Option<(Node, T)> {
    let node = read_node(repo, diags, rel_path)?;
    // An empty file is an empty mapping.
    let node = if matches!(node.value, crate::yaml::Value::Null) {
        Node {
            pos: node.pos,
            value: crate::yaml::Value::Map(Default::default()),
        }
    } else {
        node
    };
    let errors = schema::validate(kind, &node, rel_path);
    if !errors.is_empty() {
        diags.extend(errors);
        return None;
    }
    match serde_json::from_value::<T>(node.to_json()) {
        Ok(v) => Some((node, v)),
        Err(e) => {
            // The schema checks a duration's shape; its size is known only once parsed.
            let located = overflowing_durations(&node, rel_path);
            if located.is_empty() {
                diags.push(Diagnostic::error(
                    "schema",
                    rel_path,
                    node.pos,
                    e.to_string(),
                ));
            }
            diags.extend(located);
            None
        }
    }
}

/// Every duration-shaped string (outside `vars`) too large to be a duration, located.
fn overflowing_durations(node: &Node, rel_path: &str) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut stack = vec![node];
    while let Some(n) = stack.pop() {
        match &n.value {
            crate::yaml::Value::Map(m) => stack.extend(
                m.iter()
                    .filter(|(k, _)| k.as_str() != "vars")
                    .map(|(_, (_, v))| v),
            ),
            crate::yaml::Value::Seq(items) => stack.extend(items.iter()),
            crate::yaml::Value::String(s) => {
                if let Err(e @ DurationError::Overflow(_)) = s.parse::<HumanDuration>() {
                    out.push(
                        Diagnostic::error("duration", rel_path, n.pos, e.to_string())
                            .with_hint("write a smaller value, e.g. 24h"),
                    );
                }
            }
            _ => {}
        }
    }
    out
}
