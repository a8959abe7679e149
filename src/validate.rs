//! `plumb validate`: everything that can be checked without a host.
//!
//! Loading (syntax, schema) is in `model::load`; this adds the semantic checks and renders
//! every host of every environment, so template and variable errors are found too.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;

use crate::diag::{Diagnostic, Diagnostics};
use crate::model::{load, selector_matches, Repo};
use crate::modules;
use crate::render::{self, find_cycle, qualify, RESERVED_VARS};
use crate::schema::suggest;
use crate::yaml::{Node, Pos};

mod units;

/// Loads and checks the repo at `root`.
pub fn validate(root: &Path) -> (Repo, Diagnostics) {
    let (repo, mut diags) = load::load(root);
    check(&repo, &mut diags);
    (repo, diags)
}

/// Loads and checks the repo at `root`, and returns the rendered hosts of `env` (every host,
/// or only `host`) when the repo is valid: the render validation does anyway, not a second one.
pub fn validate_and_render(
    root: &Path,
    env: &str,
    host: Option<&str>,
) -> (Repo, Diagnostics, Option<Vec<render::DesiredHost>>) {
    validate_and_render_with(root, env, host, None)
}

/// [`validate_and_render`], decrypting the secrets `env` reads with `identity` (without one,
/// a step of `env` that reads a secret is an error; other environments are checked
/// structurally).
pub fn validate_and_render_with(
    root: &Path,
    env: &str,
    host: Option<&str>,
    identity: Option<std::sync::Arc<crate::secrets::SecretIdentity>>,
) -> (Repo, Diagnostics, Option<Vec<render::DesiredHost>>) {
    let (mut repo, mut diags) = load::load(root);
    repo.secrets = crate::secrets::Keyring::for_env(env, identity);
    if let Some(name) = host {
        if let Some(e) = repo.environments.get(env) {
            if !e.hosts.iter().any(|h| h.name == name) {
                // Unknown host: let the renderer say so.
                if let Err(d) = render::render_env(&repo, env, host) {
                    diags.extend(d.into_sorted());
                }
                return (repo, diags, None);
            }
        }
    }
    let hosts = check_and_render(&repo, &mut diags, env, &|h| {
        host.is_none_or(|n| h.name == n)
    });
    (repo, diags, hosts)
}

/// The checks and a render of every environment on a loaded repo (with its facts
/// attached), keeping the hosts of `env` that `selected` accepts. A host with no facts at
/// all that is not kept (another environment, or outside `--limit`) does not fail the
/// check for a template that needs facts: its facts are gathered when it is worked on.
/// `plumb validate` stays strict.
pub fn check_and_render(
    repo: &Repo,
    diags: &mut Diagnostics,
    env: &str,
    selected: &dyn Fn(&crate::model::Host) -> bool,
) -> Option<Vec<render::DesiredHost>> {
    let rendered = checked_render(repo, diags, Some(env));
    if diags.has_errors() {
        return None;
    }
    let Some(environment) = repo.environments.get(env) else {
        // Unknown environment: let the renderer say so.
        if let Err(d) = render::render_env(repo, env, None) {
            diags.extend(d.into_sorted());
        }
        return None;
    };
    if let Some(all) = rendered {
        return Some(all.into_iter().filter(|h| selected(&h.host)).collect());
    }
    // Some host of `env` lacked facts: render the selected ones, each with its own errors.
    let mut out = Vec::new();
    for host in environment.hosts.iter().filter(|h| selected(h)) {
        match render::render_host(repo, env, host) {
            Ok(h) => out.push(h),
            Err(d) => diags.extend(d.into_sorted()),
        }
    }
    (!diags.has_errors()).then_some(out)
}

/// Semantic checks and a full render, on a loaded repo.
pub fn check(repo: &Repo, diags: &mut Diagnostics) {
    checked_render(repo, diags, None);
}

/// The checks, then a render of every environment; keeps the hosts of `keep`.
fn checked_render(
    repo: &Repo,
    diags: &mut Diagnostics,
    keep: Option<&str>,
) -> Option<Vec<render::DesiredHost>> {
    check_hosts(repo, diags);
    check_envs(repo, diags);
    check_steps(repo, diags);
    units::check_units(repo, diags);
    check_unit_selection(repo, diags);
    if diags.has_errors() {
        // Rendering a repo with broken references only repeats those errors.
        return None;
    }
    let mut kept = None;
    let mut usage = crate::secrets::check::Usage::new();
    for env in repo.environments.keys() {
        match render::render_env(repo, env, None) {
            Ok(hosts) => {
                crate::secrets::check::record_usage(&mut usage, env, &hosts);
                if Some(env.as_str()) == keep {
                    kept = Some(hosts);
                }
            }
            // Working on one environment: a host without facts is checked when its facts
            // are known (see `check_and_render`).
            Err(d) if keep.is_some() => diags.extend(
                d.into_sorted()
                    .into_iter()
                    .filter(|d| d.code != render::MISSING_FACTS),
            ),
            Err(d) => diags.extend(d.into_sorted()),
        }
    }
    for d in crate::secrets::check::structural(repo, &usage) {
        diags.push(d);
    }
    kept
}

fn node_of(repo: &Repo, path: &str) -> Option<Node> {
    repo.sources.get(path).and_then(|t| Node::parse(t).ok())
}

/// Positions in a file of the repo, parsed again only when a diagnostic needs one: a file
/// without errors (an inventory of 10,000 hosts) is parsed once, by the loader.
struct Locator<'a> {
    repo: &'a Repo,
    path: &'a str,
    node: std::cell::OnceCell<Option<Node>>,
}

impl<'a> Locator<'a> {
    fn new(repo: &'a Repo, path: &'a str) -> Self {
        Locator {
            repo,
            path,
            node: std::cell::OnceCell::new(),
        }
    }

    /// The file's tree, parsed on first use; `None` if it cannot be.
    fn node(&self) -> Option<&Node> {
        self.node
            .get_or_init(|| node_of(self.repo, self.path))
            .as_ref()
    }

    /// Where the node at a JSON pointer starts; the file's start if it cannot be parsed.
    fn at(&self, pointer: &str) -> Pos {
        self.node().map_or(Pos::START, |n| n.locate(pointer))
    }
}

/// A DNS name (RFC 1123 labels) or an IP address.
pub fn valid_address(a: &str) -> bool {
    if a.parse::<IpAddr>().is_ok() {
        return true;
    }
    let a = a.strip_suffix('.').unwrap_or(a);
    !a.is_empty()
        && a.len() <= 253
        && a.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        && !a
            .split('.')
            .next_back()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

fn check_hosts(repo: &Repo, diags: &mut Diagnostics) {
    for env in repo.environments.values() {
        let file = Locator::new(repo, &env.hosts_path);
        let at = |p: &str| file.at(p);
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, h) in env.hosts.iter().enumerate() {
            if let Some(first) = seen.insert(h.name.as_str(), i) {
                let first_line = at(&format!("/hosts/{first}/name")).line;
                diags.push(
                    Diagnostic::error("duplicate-host", &env.hosts_path, at(&format!("/hosts/{i}/name")), format!("duplicate host `{}`", h.name))
                        .with_hint(format!("first declared on line {first_line}; host names are unique in an environment")),
                );
            }
            if !valid_address(&h.address) {
                diags.push(
                    Diagnostic::error(
                        "address",
                        &env.hosts_path,
                        at(&format!("/hosts/{i}/address")),
                        format!("invalid address `{}` for host `{}`", h.address, h.name),
                    )
                    .with_hint(
                        "use an IP address or a DNS name (letters, digits, `-` and `.`; no `_`)",
                    ),
                );
            }
            for r in render::reserved_var_uses(&h.vars) {
                diags.push(reserved(
                    &env.hosts_path,
                    at(&format!("/hosts/{i}/vars/{r}")),
                    r,
                ));
            }
        }
    }
}

fn reserved(path: &str, pos: Pos, name: &str) -> Diagnostic {
    Diagnostic::error(
        "reserved-var",
        path,
        pos,
        format!("variable `{name}` is reserved"),
    )
    .with_hint(format!(
        "plumb provides `{name}` itself; reserved names: {}",
        RESERVED_VARS.join(", ")
    ))
}

fn check_envs(repo: &Repo, diags: &mut Diagnostics) {
    for env in repo.environments.values() {
        let Some(path) = &env.env_path else { continue };
        let file = Locator::new(repo, path);
        let at = |p: &str| file.at(p);
        for r in render::reserved_var_uses(&env.settings.vars) {
            diags.push(reserved(path, at(&format!("/vars/{r}")), r));
        }
        if let Some(rollout) = &env.settings.rollout {
            let mut taken = vec![false; env.hosts.len()];
            for (w, wave) in rollout.waves.iter().enumerate() {
                let mut got = 0;
                for (i, h) in env.hosts.iter().enumerate() {
                    if !taken[i] && selector_matches(&wave.selector, &h.labels) {
                        taken[i] = true;
                        got += 1;
                    }
                }
                if got == 0 {
                    diags.push(Diagnostic::warning(
                        "empty-wave",
                        path,
                        at(&format!("/rollout/waves/{w}")),
                        format!("wave `{}` selects no host", wave.name),
                    ));
                }
            }
            if let Some(i) = taken.iter().position(|t| !t) {
                diags.push(
                    Diagnostic::error(
                        "rollout",
                        path,
                        at("/rollout/waves"),
                        format!("host `{}` is in no rollout wave", env.hosts[i].name),
                    )
                    .with_hint("add a last wave with no selector to take every remaining host"),
                );
            }
        }
    }
}

fn check_steps(repo: &Repo, diags: &mut Diagnostics) {
    let all = index_steps(repo, diags);
    let names: Vec<String> = all.keys().cloned().collect();
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    for unit in &repo.units {
        for step in &unit.steps {
            let me = qualify(&unit.name, &step.id);
            for (kind, refs) in [("after", &step.after), ("notify", &step.notify)] {
                for (r, pos) in refs {
                    // `id[key]` names one iteration of a loop step: the step must exist.
                    let target = qualify(&unit.name, r.split('[').next().unwrap_or(r));
                    let Some(&(tu, ts)) = all.get(&target) else {
                        // A unit that did not load has its own errors; this would repeat them.
                        if !unit_failed_to_load(repo, &target) {
                            diags.push(unknown_reference(unit, &names, kind, r, *pos));
                        }
                        continue;
                    };
                    if target == me {
                        diags.push(Diagnostic::error(
                            "reference",
                            &unit.path,
                            *pos,
                            format!("step `{}` names itself in `{kind}`", step.id),
                        ));
                        continue;
                    }
                    if kind == "after" {
                        if let (Some(&a), Some(&b)) =
                            (index.get(me.as_str()), index.get(target.as_str()))
                        {
                            deps[a].push(b);
                        }
                    } else {
                        let t = &repo.units[tu].steps[ts];
                        diags.extend(not_refreshable(unit, &target, &t.module, *pos));
                    }
                }
            }
        }
    }
    if let Some(cycle) = find_cycle(&deps) {
        let first = &names[cycle[0]];
        let (u, s) = all[first];
        let unit = &repo.units[u];
        let path: Vec<&str> = cycle.iter().map(|&i| names[i].as_str()).collect();
        diags.push(
            Diagnostic::error(
                "cycle",
                &unit.path,
                unit.steps[s].pos,
                format!("dependency cycle: {}", path.join(" -> ")),
            )
            .with_hint("each arrow is an `after`; remove one of them"),
        );
    }
}

/// Every step of the repo by address, as `(unit index, step index)`; reports reserved
/// variables and duplicate step ids on the way.
fn index_steps(repo: &Repo, diags: &mut Diagnostics) -> BTreeMap<String, (usize, usize)> {
    let mut all: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (u, unit) in repo.units.iter().enumerate() {
        for r in render::reserved_var_uses(&unit.header.vars) {
            diags.push(reserved(
                &unit.path,
                unit.node.locate(&format!("/vars/{r}")),
                r,
            ));
        }
        let mut seen: HashMap<&str, Pos> = HashMap::new();
        for (s, step) in unit.steps.iter().enumerate() {
            if let Some(first) = seen.insert(step.id.as_str(), step.pos) {
                let pos = unit.node.locate(&format!("/steps/{s}/id"));
                diags.push(
                    Diagnostic::error(
                        "duplicate-step",
                        &unit.path,
                        pos,
                        format!("duplicate step id `{}`", step.id),
                    )
                    .with_hint(format!(
                        "first used on line {}; step ids are unique in a unit",
                        first.line
                    )),
                );
                continue;
            }
            all.insert(qualify(&unit.name, &step.id), (u, s));
        }
    }
    all
}

/// `after`/`notify` naming a step that does not exist, with a suggestion.
fn unknown_reference(
    unit: &crate::model::Unit,
    names: &[String],
    kind: &str,
    r: &str,
    pos: Pos,
) -> Diagnostic {
    let local: Vec<String> = names
        .iter()
        .map(|n| {
            n.strip_prefix(&format!("{}/", unit.name))
                .map(str::to_string)
                .unwrap_or(n.clone())
        })
        .collect();
    let d = Diagnostic::error(
        "reference",
        &unit.path,
        pos,
        format!("`{kind}` names unknown step `{r}`"),
    );
    match suggest(r, &local) {
        Some(s) => d.with_hint(format!("did you mean `{s}`?")),
        None => d.with_hint(
            "refer to a step of this unit by its id, or of another unit as `<unit>/<id>`",
        ),
    }
}

/// A `notify` whose target's module has no refresh.
fn not_refreshable(
    unit: &crate::model::Unit,
    target: &str,
    module: &str,
    pos: Pos,
) -> Option<Diagnostic> {
    if modules::lookup(module).is_some_and(|m| m.refreshable) {
        return None;
    }
    let ok: Vec<&str> = modules::REGISTRY
        .iter()
        .filter(|m| m.refreshable)
        .map(|m| m.name)
        .collect();
    Some(
        Diagnostic::error(
            "notify",
            &unit.path,
            pos,
            format!("`{target}` is a `{module}` step, which has no refresh to notify"),
        )
        .with_hint(format!(
            "notify a step of a module with a refresh: {}",
            ok.join(", ")
        )),
    )
}

/// Whether `address` names a unit whose file exists but did not load (it has errors).
fn unit_failed_to_load(repo: &Repo, address: &str) -> bool {
    let Some((unit, _)) = address.split_once('/') else {
        return false;
    };
    !repo.units.iter().any(|u| u.name == unit)
        && ["yaml", "yml"].iter().any(|ext| {
            repo.files.kind(&format!("units/{unit}.{ext}"))
                == Ok(Some(crate::model::jail::EntryKind::File))
        })
}

fn check_unit_selection(repo: &Repo, diags: &mut Diagnostics) {
    // With a broken inventory the hosts are not all known: the warning would be noise.
    let inventory_broken = diags
        .iter()
        .any(|d| d.severity == crate::diag::Severity::Error && d.path.starts_with("environments/"));
    if inventory_broken {
        return;
    }
    let mut labels: Vec<String> = repo
        .environments
        .values()
        .flat_map(|e| e.hosts.iter())
        .flat_map(|h| h.labels.iter().map(|(k, v)| format!("{k}: {v}")))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if labels.len() > 12 {
        labels.truncate(12);
        labels.push("...".to_string());
    }
    for unit in repo.units.iter().filter(|u| u.header.params.is_empty()) {
        let selected = repo
            .environments
            .values()
            .flat_map(|e| e.hosts.iter())
            .any(|h| selector_matches(&unit.header.applies_to, &h.labels));
        if !selected && !repo.environments.is_empty() {
            let pos = unit.node.key_pos("applies_to").unwrap_or(unit.node.pos);
            diags.push(
                Diagnostic::warning(
                    "unselected-unit",
                    &unit.path,
                    pos,
                    format!("unit `{}` selects no host in any environment", unit.name),
                )
                .with_hint(format!(
                    "check `applies_to` against the hosts' labels: {}",
                    if labels.is_empty() {
                        "no host has labels".to_string()
                    } else {
                        labels.join(", ")
                    }
                )),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for ok in ["10.0.0.1", "::1", "web-1.example.com", "localhost", "db."] {
            assert!(valid_address(ok), "{ok}");
        }
        for bad in [
            "",
            "-web",
            "web_1",
            "a..b",
            "300.1.1.1",
            "has space",
            "1.2.3",
        ] {
            assert!(!valid_address(bad), "{bad}");
        }
    }
}
