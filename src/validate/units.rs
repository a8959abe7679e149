//! Checks of reusable units and their instances: `requires` (known units, no cycle),
//! typed `params` (defaults of their type), and every instance (a known unit, known
//! parameters of the right type, every parameter without a default given).

use std::collections::HashMap;

use super::Locator;
use crate::diag::{Diagnostic, Diagnostics};
use crate::model::{Repo, Unit, Vars};
use crate::render::{find_cycle, RESERVED_VARS};
use crate::schema::suggest;
use crate::yaml::Pos;

pub fn check_units(repo: &Repo, diags: &mut Diagnostics) {
    let names: Vec<String> = repo.units.iter().map(|u| u.name.clone()).collect();
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    for (u, unit) in repo.units.iter().enumerate() {
        check_params(unit, diags);
        for (i, r) in unit.header.requires.iter().enumerate() {
            let pos = unit.node.locate(&format!("/requires/{i}"));
            match index.get(r.as_str()) {
                Some(&j) if j == u => diags.push(Diagnostic::error(
                    "requires",
                    &unit.path,
                    pos,
                    format!("unit `{}` requires itself", unit.name),
                )),
                Some(&j) => deps[u].push(j),
                None => {
                    let d = Diagnostic::error(
                        "requires",
                        &unit.path,
                        pos,
                        format!("unit `{}` requires unknown unit `{r}`", unit.name),
                    );
                    diags.push(match suggest(r, &names) {
                        Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                        None => d.with_hint(format!("known units: {}", names.join(", "))),
                    });
                }
            }
        }
    }
    if let Some(cycle) = find_cycle(&deps) {
        let unit = &repo.units[cycle[0]];
        let path: Vec<&str> = cycle.iter().map(|&i| names[i].as_str()).collect();
        diags.push(
            Diagnostic::error(
                "cycle",
                &unit.path,
                unit.node.key_pos("requires").unwrap_or(unit.node.pos),
                format!("unit dependency cycle: {}", path.join(" -> ")),
            )
            .with_hint("each arrow is a `requires`; remove one of them"),
        );
    }
    check_instances(repo, diags);
}

fn check_params(unit: &Unit, diags: &mut Diagnostics) {
    if unit.header.params.is_empty() {
        return;
    }
    if let Some(pos) = unit.node.key_pos("applies_to") {
        diags.push(
            Diagnostic::error(
                "params",
                &unit.path,
                pos,
                format!(
                    "unit `{}` has `params`: it applies only where it is instantiated, not by `applies_to`",
                    unit.name
                ),
            )
            .with_hint("remove `applies_to`; give `instances:` an `applies_to` in env.yaml, or list the instance on the host"),
        );
    }
    for (name, p) in &unit.header.params {
        if RESERVED_VARS.contains(&name.as_str())
            || ["item", "loop", "instance"].contains(&name.as_str())
        {
            diags.push(Diagnostic::error(
                "reserved-var",
                &unit.path,
                unit.node.locate_key("/params", name),
                format!("parameter name `{name}` is reserved"),
            ));
        }
        if let Some(d) = &p.default {
            if !p.type_.admits(d) {
                diags.push(Diagnostic::error(
                    "params",
                    &unit.path,
                    unit.node.locate(&format!("/params/{name}/default")),
                    format!(
                        "the default of parameter `{name}` is not of type {}",
                        p.type_.name()
                    ),
                ));
            }
        }
    }
}

/// One declared instance, wherever it is written.
struct Decl<'a> {
    name: &'a str,
    unit: &'a str,
    params: &'a Vars,
    path: &'a str,
    /// The instance's own pointer in its file, and the file.
    pointer: String,
    file: &'a Locator<'a>,
    /// Where the instance is, when the loader knows; else its pointer's place in the file.
    pos: Option<Pos>,
}

impl Decl<'_> {
    /// Where the instance is.
    fn pos(&self) -> Pos {
        self.pos.unwrap_or_else(|| {
            self.file
                .node()
                .map_or(Pos::START, |n| n.locate(&self.pointer))
        })
    }

    /// Where the node at `p` under the instance is; the instance's place if the file cannot
    /// be parsed.
    fn at(&self, p: &str) -> Pos {
        self.file
            .node()
            .map_or_else(|| self.pos(), |n| n.locate(&format!("{}{p}", self.pointer)))
    }
}

fn check_instances(repo: &Repo, diags: &mut Diagnostics) {
    let names: Vec<String> = repo.units.iter().map(|u| u.name.clone()).collect();
    for env in repo.environments.values() {
        // Each file is parsed again only if an instance in it has an error to place.
        if let Some(path) = &env.env_path {
            let file = Locator::new(repo, path);
            for (i, d) in env.settings.instances.iter().enumerate() {
                let decl = Decl {
                    name: &d.name,
                    unit: &d.unit,
                    params: &d.params,
                    path,
                    pointer: format!("/instances/{i}"),
                    file: &file,
                    pos: None,
                };
                check_instance(repo, &names, &decl, diags);
            }
        }
        let file = Locator::new(repo, &env.hosts_path);
        for (h, list) in &env.host_instances {
            let hi = env.hosts.iter().position(|x| &x.name == h).unwrap_or(0);
            for (j, (d, pos)) in list.iter().enumerate() {
                let decl = Decl {
                    name: &d.name,
                    unit: &d.unit,
                    params: &d.params,
                    path: &env.hosts_path,
                    pointer: format!("/hosts/{hi}/instances/{j}"),
                    file: &file,
                    pos: Some(*pos),
                };
                check_instance(repo, &names, &decl, diags);
            }
        }
    }
}

fn check_instance(repo: &Repo, names: &[String], d: &Decl<'_>, diags: &mut Diagnostics) {
    let at = |p: &str| d.at(p);
    let Some(unit) = repo.units.iter().find(|u| u.name == d.unit) else {
        let e = Diagnostic::error(
            "instance",
            d.path,
            at("/unit"),
            format!("instance `{}` names unknown unit `{}`", d.name, d.unit),
        );
        diags.push(match suggest(d.unit, names) {
            Some(s) => e.with_hint(format!("did you mean `{s}`?")),
            None => e.with_hint("name a file of units/ without `.yaml`"),
        });
        return;
    };
    let declared: Vec<String> = unit.header.params.keys().cloned().collect();
    for (k, v) in d.params {
        match unit.header.params.get(k) {
            None => {
                let e = Diagnostic::error(
                    "instance",
                    d.path,
                    at(&format!("/params/{k}")),
                    format!(
                        "instance `{}`: unit `{}` has no parameter `{k}` ({}:{})",
                        d.name,
                        unit.name,
                        unit.path,
                        unit.node.key_pos("params").unwrap_or(unit.node.pos).line
                    ),
                );
                diags.push(match suggest(k, &declared) {
                    Some(s) => e.with_hint(format!("did you mean `{s}`?")),
                    None => e.with_hint(format!("its parameters: {}", declared.join(", "))),
                });
            }
            Some(p) if !p.type_.admits(v) => diags.push(Diagnostic::error(
                "instance",
                d.path,
                at(&format!("/params/{k}")),
                format!(
                    "instance `{}`: parameter `{k}` must be of type {} (unit `{}`, {}:{})",
                    d.name,
                    p.type_.name(),
                    unit.name,
                    unit.path,
                    unit.node.locate(&format!("/params/{k}")).line
                ),
            )),
            Some(_) => {}
        }
    }
    for (k, p) in &unit.header.params {
        if p.default.is_none() && !d.params.contains_key(k) {
            diags.push(
                Diagnostic::error(
                    "instance",
                    d.path,
                    d.pos(),
                    format!(
                        "instance `{}` of unit `{}` does not give parameter `{k}`, which has no default ({}:{})",
                        d.name,
                        unit.name,
                        unit.path,
                        unit.node.locate(&format!("/params/{k}")).line
                    ),
                )
                .with_hint(format!("add `{k}:` under the instance's `params:`")),
            );
        }
    }
}
