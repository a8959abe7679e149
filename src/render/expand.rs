//! From declared units to the steps of one host: which units and instances apply (ordered by
//! `requires`), and each step's `loop:` and `when:`.
//!
//! - A unit without `params` applies to the hosts its `applies_to` selects, under its own name.
//!   A unit with `params` applies once per instance (`instances:` in `env.yaml` or on a host),
//!   under the instance's name: its steps are `<instance>/<id>`.
//! - Units and instances run in name order, then environment instances, then host instances
//!   (each in file order), moved only by `requires` (a stable topological sort, as for steps).
//! - `loop:` makes one step per item, addressed `<id>[<key>]`; `when:` leaves a step (or an
//!   iteration) out of the host's desired state, recorded as skipped with the reason.
//! - Both are expressions in the template context of the step (vars, `host`, `env`, and
//!   whatever the context holds, `facts` included), so `when: facts.os.family == "debian"`
//!   reads exactly as in a template.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use serde_json::Value as Json;

use super::{template_message, Templater};
use crate::diag::Diagnostic;
use crate::model::{selector_matches, Host, Repo, StepAddress, StepDecl, Unit, Vars};
use crate::yaml::{Pos, Value};

/// Most iterations one `loop:` may have on one host.
pub const MAX_LOOP_ITEMS: usize = 10_000;
/// Longest loop key (characters).
pub const MAX_LOOP_KEY: usize = 128;

/// A step left out of a host's desired state, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct SkippedStep {
    /// The step's address (an iteration's, for a loop).
    #[schemars(with = "String")]
    pub address: StepAddress,
    /// Why, e.g. "when `facts.os.family == \"rhel\"` is false".
    pub reason: String,
}

/// Where an instance is declared, and its parameter values (defaults filled in).
#[derive(Debug, Clone)]
pub struct Instance {
    pub params: Vars,
    pub path: String,
    pub pos: Pos,
}

/// A unit as applied to one host: under its own name, or as an instance.
#[derive(Debug, Clone)]
pub struct Applied<'a> {
    /// The address prefix: the unit's name or the instance's.
    pub name: String,
    pub unit: &'a Unit,
    pub instance: Option<Instance>,
}

impl Applied<'_> {
    /// Adds "in instance `x` (path:line:col)" to a diagnostic about the unit's file.
    pub fn locate(&self, mut d: Diagnostic) -> Diagnostic {
        if let Some(i) = &self.instance {
            d.message = format!(
                "{} (in instance `{}` declared at {}:{}:{})",
                d.message, self.name, i.path, i.pos.line, i.pos.col
            );
        }
        d
    }
}

/// A parameter values map: the unit's defaults, then the instance's values.
pub fn instance_params(unit: &Unit, given: &Vars) -> Vars {
    let mut out = Vars::new();
    for (k, p) in &unit.header.params {
        if let Some(d) = &p.default {
            out.insert(k.clone(), d.clone());
        }
    }
    for (k, v) in given {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// The units and instances that apply to `host`, in run order. Instances of units that do
/// not exist are left out (validation reports them); two with one name are an error.
pub fn applied_units<'a>(
    repo: &'a Repo,
    env: &str,
    host: &Host,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Applied<'a>> {
    let mut out: Vec<Applied<'a>> = super::units_for(repo, host)
        .into_iter()
        .map(|unit| Applied {
            name: unit.name.clone(),
            unit,
            instance: None,
        })
        .collect();
    let unit_named = |n: &str| repo.units.iter().find(|u| u.name == n);
    if let Some(e) = repo.environments.get(env) {
        let env_path = e.env_path.clone().unwrap_or_default();
        for (i, decl) in e.settings.instances.iter().enumerate() {
            if !selector_matches(&decl.applies_to, &host.labels) {
                continue;
            }
            let Some(unit) = unit_named(&decl.unit) else {
                continue;
            };
            let pos = e.instance_pos.get(i).copied().unwrap_or(Pos::START);
            out.push(Applied {
                name: decl.name.clone(),
                unit,
                instance: Some(Instance {
                    params: instance_params(unit, &decl.params),
                    path: env_path.clone(),
                    pos,
                }),
            });
        }
        for (decl, pos) in e.host_instances.get(&host.name).into_iter().flatten() {
            let Some(unit) = unit_named(&decl.unit) else {
                continue;
            };
            out.push(Applied {
                name: decl.name.clone(),
                unit,
                instance: Some(Instance {
                    params: instance_params(unit, &decl.params),
                    path: host.path.clone(),
                    pos: *pos,
                }),
            });
        }
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, a) in out.iter().enumerate() {
        if let Some(first) = seen.insert(a.name.as_str(), i) {
            let (path, pos) = a
                .instance
                .as_ref()
                .map_or((a.unit.path.clone(), Pos::START), |x| {
                    (x.path.clone(), x.pos)
                });
            diags.push(
                Diagnostic::error(
                    "duplicate-instance",
                    path,
                    pos,
                    format!(
                        "two units or instances named `{}` apply to host `{}`",
                        a.name, host.name
                    ),
                )
                .with_hint(format!(
                    "the first is {}; give each instance a name of its own (step addresses are `<name>/<id>`)",
                    match &out[first].instance {
                        Some(x) => format!("declared at {}:{}", x.path, x.pos.line),
                        None => format!("the unit {}", out[first].unit.path),
                    }
                )),
            );
        }
    }
    order_by_requires(out)
}

/// Stable topological order by `requires` (ties keep the given order). A cycle is reported
/// by validation; here it leaves the order as given.
fn order_by_requires(applied: Vec<Applied<'_>>) -> Vec<Applied<'_>> {
    let deps: Vec<Vec<usize>> = applied
        .iter()
        .map(|a| {
            applied
                .iter()
                .enumerate()
                .filter(|(_, b)| a.unit.header.requires.contains(&b.unit.name))
                .map(|(j, _)| j)
                .collect()
        })
        .collect();
    match super::order::topo(&deps) {
        Some(order) => {
            let mut slots: Vec<Option<Applied<'_>>> = applied.into_iter().map(Some).collect();
            order.into_iter().filter_map(|i| slots[i].take()).collect()
        }
        None => applied,
    }
}

/// `"{{ expr }}"` written around a whole expression is the expression.
fn bare(expr: &str) -> &str {
    let t = expr.trim();
    match t.strip_prefix("{{").and_then(|r| r.strip_suffix("}}")) {
        Some(inner) if !inner.contains("{{") && !inner.contains("}}") => inner.trim(),
        _ => t,
    }
}

/// One iteration of a step: its id and its context (the step's own, borrowed, without
/// `loop:`).
pub struct Iteration<'c> {
    pub id: String,
    pub ctx: std::borrow::Cow<'c, Json>,
}

impl Templater<'_> {
    /// Evaluates an expression in `ctx`; the error is the message to show.
    pub(super) fn eval(&self, expr: &str, ctx: &Json) -> Result<Json, String> {
        let expr = bare(expr);
        let value = self
            .jinja
            .compile_expression(expr)
            .and_then(|e| e.eval(minijinja::value::Serde(ctx)))
            .map_err(|e| template_message(&e, &format!("{{{{ {expr} }}}}"), ctx))?;
        if value.is_undefined() {
            let t = format!("{{{{ {expr} }}}}");
            return Err(
                match self.jinja.render_str(&t, minijinja::value::Serde(ctx)) {
                    Err(e) => template_message(&e, &t, ctx),
                    Ok(_) => format!("`{expr}` is undefined"),
                },
            );
        }
        serde_json::to_value(&value).map_err(|e| format!("`{expr}`: {e}"))
    }

    /// Whether the step runs in `ctx` (`value` makes `ctx` a template value when needed):
    /// `Ok(None)` yes, `Ok(Some(reason))` skipped.
    pub(super) fn when(
        &self,
        applied: &Applied<'_>,
        decl: &StepDecl,
        (ctx, value): (&Json, &super::LazyValue),
    ) -> Result<Option<String>, Diagnostic> {
        let Some((expr, pos)) = &decl.when else {
            return Ok(None);
        };
        let key = self
            .memo
            .borrow_mut()
            .expr_key(&self.jinja, (decl, 'w'), bare(expr), ctx);
        if let Some(super::memo::Expr::When(r)) =
            key.as_deref().and_then(|k| self.memo.borrow().expr(k))
        {
            return Ok(r);
        }
        let value = super::template_value(value, ctx);
        let truth = self
            .jinja
            .compile_expression(bare(expr))
            .and_then(|e| e.eval(value))
            .and_then(|v| {
                if v.is_undefined() {
                    // Strict: an undefined condition is an error, never false. Printing it
                    // gives the strict-mode error that names what is undefined.
                    let t = format!("{{{{ {} }}}}", bare(expr));
                    self.jinja.render_str(&t, value).map(|_| false)
                } else {
                    Ok(v.is_true())
                }
            });
        let result = match truth {
            Ok(true) => None,
            Ok(false) => Some(format!("when `{}` is false", bare(expr))),
            Err(e) => {
                let message = template_message(&e, &format!("{{{{ {} }}}}", bare(expr)), ctx);
                return Err(applied.locate(
                    Diagnostic::error(
                        "when",
                        &applied.unit.path,
                        *pos,
                        format!("step `{}`: `when` failed: {message}", decl.id),
                    )
                    .with_hint("`when` is an expression over vars, `host`, `env` and `facts`, e.g. `when: facts.os.family == \"debian\"`"),
                ));
            }
        };
        if let Some(k) = key {
            self.memo
                .borrow_mut()
                .keep_expr(k, super::memo::Expr::When(result.clone()));
        }
        Ok(result)
    }

    /// The items of a `loop:` as `(map key, item)`; a map's item is `{key, value}`.
    fn loop_pairs(
        &self,
        applied: &Applied<'_>,
        decl: &StepDecl,
        node: &crate::yaml::Node,
        pos: Pos,
        ctx: &Json,
    ) -> Result<Vec<(Option<String>, Json)>, Vec<Diagnostic>> {
        let err = |message: String, hint: &str| {
            let d = Diagnostic::error("loop", &applied.unit.path, pos, message);
            vec![applied.locate(if hint.is_empty() {
                d
            } else {
                d.with_hint(hint)
            })]
        };
        let items = match &node.value {
            Value::String(expr) => {
                let key =
                    self.memo
                        .borrow_mut()
                        .expr_key(&self.jinja, (decl, 'l'), bare(expr), ctx);
                if let Some(super::memo::Expr::Loop(pairs)) =
                    key.as_deref().and_then(|k| self.memo.borrow().expr(k))
                {
                    return Ok(pairs);
                }
                let items = self
                    .eval(expr, ctx)
                    .map_err(|m| err(format!("step `{}`: `loop` failed: {m}", decl.id), ""))?;
                let pairs = loop_items(items, decl, &err)?;
                if let Some(k) = key {
                    self.memo
                        .borrow_mut()
                        .keep_expr(k, super::memo::Expr::Loop(pairs.clone()));
                }
                return Ok(pairs);
            }
            _ => {
                let mut errs = Vec::new();
                // A loop's items see no secrets (a loop over secret values would put them in
                // step addresses).
                let vctx = minijinja::Value::from(minijinja::value::Serde(ctx));
                let v = self.params(node, (ctx, &vctx), &applied.unit.path, &mut errs);
                if !errs.is_empty() {
                    return Err(errs.into_iter().map(|d| applied.locate(d)).collect());
                }
                v
            }
        };
        loop_items(items, decl, &err)
    }
    /// The iterations of a step: one (its own id and `ctx`) without `loop:`.
    pub(super) fn iterations<'c>(
        &self,
        applied: &Applied<'_>,
        decl: &StepDecl,
        ctx: &'c Json,
    ) -> Result<Vec<Iteration<'c>>, Vec<Diagnostic>> {
        let Some((node, pos)) = &decl.loop_ else {
            return Ok(vec![Iteration {
                id: decl.id.clone(),
                ctx: std::borrow::Cow::Borrowed(ctx),
            }]);
        };
        let err = |message: String, hint: &str| {
            let d = Diagnostic::error("loop", &applied.unit.path, *pos, message);
            vec![applied.locate(if hint.is_empty() {
                d
            } else {
                d.with_hint(hint)
            })]
        };
        let pairs = self.loop_pairs(applied, decl, node, *pos, ctx)?;
        let length = pairs.len();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut out = Vec::with_capacity(length);
        for (i, (map_key, item)) in pairs.into_iter().enumerate() {
            let mut c = ctx.clone();
            if let Json::Object(o) = &mut c {
                o.insert("item".into(), item.clone());
                o.insert(
                    "loop".into(),
                    serde_json::json!({
                        "index": i + 1, "index0": i, "first": i == 0,
                        "last": i + 1 == length, "length": length,
                    }),
                );
            }
            let key = match (&decl.loop_key, map_key) {
                (Some((expr, kpos)), _) => {
                    let v = self.eval(expr, &c).map_err(|m| {
                        vec![applied.locate(Diagnostic::error(
                            "loop",
                            &applied.unit.path,
                            *kpos,
                            format!("step `{}`: `loop_key` failed: {m}", decl.id),
                        ))]
                    })?;
                    scalar_key(&v)
                }
                (None, Some(k)) => Some(k),
                (None, None) => scalar_key(&item),
            };
            let Some(key) = key else {
                return Err(err(
                    format!(
                        "step `{}`: item {} of `loop` is {}, which is not a key",
                        decl.id,
                        i + 1,
                        kind_of(&item)
                    ),
                    "add `loop_key:` with an expression naming each item, e.g. `loop_key: item.name`",
                ));
            };
            if let Some(problem) = bad_key(&key) {
                return Err(err(
                    format!(
                        "step `{}`: loop key `{}` {problem}",
                        decl.id,
                        key.escape_debug()
                    ),
                    "choose a `loop_key:` of printable text without `[` or `]`",
                ));
            }
            if let Some(first) = seen.insert(key.clone(), i) {
                return Err(err(
                    format!(
                        "step `{}`: duplicate loop key `{key}` (items {} and {})",
                        decl.id,
                        first + 1,
                        i + 1
                    ),
                    "each iteration is addressed `<id>[<key>]`: keys must be unique; set `loop_key:` to tell items apart",
                ));
            }
            out.push(Iteration {
                id: format!("{}[{key}]", decl.id),
                ctx: std::borrow::Cow::Owned(c),
            });
        }
        Ok(out)
    }
}

/// A `loop:`'s value as `(map key, item)` (a map's item is `{key, value}`), at most
/// [`MAX_LOOP_ITEMS`].
fn loop_items(
    items: Json,
    decl: &StepDecl,
    err: &dyn Fn(String, &str) -> Vec<Diagnostic>,
) -> Result<Vec<(Option<String>, Json)>, Vec<Diagnostic>> {
    let pairs: Vec<(Option<String>, Json)> = match items {
        Json::Array(a) => a.into_iter().map(|v| (None, v)).collect(),
        Json::Object(o) => o
            .into_iter()
            .map(|(k, v)| (Some(k.clone()), serde_json::json!({"key": k, "value": v})))
            .collect(),
        other => {
            return Err(err(
                format!(
                    "step `{}`: `loop` must give a list or a map, not {}",
                    decl.id,
                    kind_of(&other)
                ),
                "",
            ))
        }
    };
    if pairs.len() > MAX_LOOP_ITEMS {
        return Err(err(
            format!(
                "step `{}`: `loop` has {} items, more than {MAX_LOOP_ITEMS}",
                decl.id,
                pairs.len()
            ),
            "",
        ));
    }
    Ok(pairs)
}

fn scalar_key(v: &Json) -> Option<String> {
    match v {
        Json::String(s) => Some(s.clone()),
        Json::Number(n) => Some(n.to_string()),
        Json::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn bad_key(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        Some("is empty")
    } else if key.chars().count() > MAX_LOOP_KEY {
        Some("is longer than 128 characters")
    } else if key.chars().any(|c| c.is_control() || c == '[' || c == ']') {
        Some("holds a control character, `[` or `]`")
    } else {
        None
    }
}

fn kind_of(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "a map",
    }
}

/// The address a reference names without an iteration key: `unit/id[key]` → `unit/id`.
pub fn base_of(address: &StepAddress) -> StepAddress {
    match address.id.split_once('[') {
        Some((id, _)) => StepAddress::new(address.unit.clone(), id),
        None => address.clone(),
    }
}

/// The step references of a host, expanded: a reference to a loop step reaches every
/// iteration; a reference to a skipped step or a step not on the host reaches nothing.
pub fn expand_refs(
    refs: &[StepAddress],
    groups: &BTreeMap<StepAddress, Vec<StepAddress>>,
    present: &HashSet<StepAddress>,
) -> Vec<StepAddress> {
    let mut out = Vec::new();
    for r in refs {
        if present.contains(r) {
            out.push(r.clone());
        } else if let Some(all) = groups.get(r) {
            out.extend(all.iter().cloned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::Diagnostic;
    use crate::render::{render_env, DesiredHost};
    use proptest::prelude::*;

    const HOSTS: &str = "hosts:\n  - name: web-1\n    address: 10.0.0.1\n    labels: {role: web, zone: a}\n    vars: {from_host: host}\n";

    /// Writes a repo (plumb.yaml and one environment `prod` with `HOSTS` unless given),
    /// validates it, and renders `prod`.
    fn render(files: &[(&str, &str)]) -> Result<Vec<DesiredHost>, Vec<Diagnostic>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut all: Vec<(&str, &str)> = vec![
            ("plumb.yaml", "name: t\n"),
            ("environments/prod/hosts.yaml", HOSTS),
        ];
        all.extend_from_slice(files);
        for (p, text) in all {
            let p = dir.path().join(p);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        }
        let (repo, diags) = crate::validate::validate(dir.path());
        if diags.has_errors() {
            return Err(diags.into_sorted());
        }
        render_env(&repo, "prod", None).map_err(|d| d.into_sorted())
    }

    fn addresses(h: &DesiredHost) -> Vec<String> {
        h.steps.iter().map(|s| s.address.to_string()).collect()
    }

    fn one_error(r: Result<Vec<DesiredHost>, Vec<Diagnostic>>) -> Diagnostic {
        let errs = r.expect_err("an error");
        assert_eq!(errs.len(), 1, "{errs:#?}");
        errs.into_iter().next().expect("one")
    }

    fn file(id: &str, extra: &str) -> String {
        format!("  - id: {id}\n{extra}    file:\n      path: /tmp/{id}\n      content: x\n")
    }

    #[test]
    fn a_false_when_leaves_the_step_out_with_its_reason() {
        let unit = format!(
            "vars: {{debug: false}}\nsteps:\n{}{}",
            file("always", ""),
            file("tools", "    when: debug or host.labels.role == \"db\"\n")
        );
        let hosts = render(&[("units/u.yaml", &unit)]).expect("renders");
        assert_eq!(addresses(&hosts[0]), ["u/always"]);
        assert_eq!(
            hosts[0].skipped,
            [SkippedStep {
                address: StepAddress::new("u", "tools"),
                reason: "when `debug or host.labels.role == \"db\"` is false".into(),
            }]
        );
    }

    #[test]
    fn a_when_that_fails_is_an_error_at_its_line() {
        let unit = format!("steps:\n{}", file("tools", "    when: enable_debug\n"));
        let d = one_error(render(&[("units/u.yaml", &unit)]));
        assert_eq!(
            (d.code, d.path.as_str(), d.line, d.col),
            ("when", "units/u.yaml", 3, 11)
        );
        assert!(
            d.message.contains("undefined variable `enable_debug`"),
            "{}",
            d.message
        );
    }

    #[test]
    fn loops_over_lists_and_maps_with_stable_addresses() {
        let unit = "vars:\n  people: [alice, bob]\nsteps:\n  - id: home\n    loop: people\n    directory:\n      path: \"/home/{{ item }}-{{ loop.index }}\"\n  - id: conf\n    loop:\n      a.conf: one\n      b.conf: two\n    file:\n      path: \"/etc/{{ item.key }}\"\n      content: \"{{ item.value }}\"\n";
        let hosts = render(&[("units/u.yaml", unit)]).expect("renders");
        assert_eq!(
            addresses(&hosts[0]),
            [
                "u/home[alice]",
                "u/home[bob]",
                "u/conf[a.conf]",
                "u/conf[b.conf]"
            ]
        );
        assert_eq!(hosts[0].steps[1].resource.desired()["path"], "/home/bob-2");
        assert_eq!(hosts[0].steps[3].resource.desired()["path"], "/etc/b.conf");
    }

    #[test]
    fn a_duplicate_loop_key_is_an_error_at_the_loop_line() {
        let unit = "steps:\n  - id: u\n    loop:\n      - {name: a}\n      - {name: a}\n    loop_key: item.name\n    user:\n      name: \"{{ item.name }}\"\n";
        let d = one_error(render(&[("units/u.yaml", unit)]));
        assert_eq!((d.code, d.line), ("loop", 3));
        assert!(
            d.message.contains("duplicate loop key `a` (items 1 and 2)"),
            "{}",
            d.message
        );
        let unit = "steps:\n  - id: u\n    loop: [{name: a}]\n    user:\n      name: \"{{ item.name }}\"\n";
        let d = one_error(render(&[("units/u.yaml", unit)]));
        assert!(
            d.message.contains("is a map, which is not a key"),
            "{}",
            d.message
        );
        assert!(d.hint.unwrap_or_default().contains("loop_key"));
    }

    #[test]
    fn after_and_notify_reach_every_iteration() {
        let unit = "steps:\n  - id: svc\n    loop: [a, b]\n    service:\n      name: \"{{ item }}\"\n      refresh: restart\n  - id: conf\n    file:\n      path: /etc/c\n      content: x\n    notify: [svc]\n  - id: last\n    file:\n      path: /etc/l\n      content: x\n    after: [svc, \"svc[b]\"]\n";
        let hosts = render(&[("units/u.yaml", unit)]).expect("renders");
        let by = |a: &str| {
            hosts[0]
                .steps
                .iter()
                .find(|s| s.address.to_string() == a)
                .expect("step")
        };
        let names = |v: &[StepAddress]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(names(&by("u/conf").notify), ["u/svc[a]", "u/svc[b]"]);
        assert_eq!(
            names(&by("u/last").after),
            ["u/svc[a]", "u/svc[b]", "u/svc[b]"]
        );
    }

    #[test]
    fn variable_precedence_is_unit_env_groups_in_order_host() {
        let unit = "vars: {a: unit, b: unit, c: unit, d: unit, from_host: unit}\nsteps:\n  - id: f\n    file:\n      path: /tmp/f\n      content: \"{{ a }} {{ b }} {{ c }} {{ d }} {{ from_host }}\"\n";
        let env = "vars: {b: env, c: env, d: env}\ngroups:\n  - selector: {role: web}\n    vars: {c: web, d: web, from_host: group}\n  - selector: {zone: a}\n    vars: {d: zone}\n  - selector: {role: db}\n    vars: {a: db}\n";
        let hosts =
            render(&[("units/u.yaml", unit), ("environments/prod/env.yaml", env)]).expect("ok");
        assert_eq!(
            hosts[0].steps[0].resource.content().map(<[u8]>::to_vec),
            Some(b"unit env web zone host".to_vec())
        );
    }

    const SITE: &str = "params:\n  port: {type: integer}\n  root: {type: string, default: /srv}\nrequires: [base]\nsteps:\n  - id: conf\n    file:\n      path: \"/etc/{{ instance.name }}.conf\"\n      content: \"{{ port }} {{ root }}\"\n";
    const BASE: &str = "steps:\n  - id: motd\n    file:\n      path: /etc/motd\n      content: x\n";

    #[test]
    fn instances_of_one_unit_have_their_own_addresses_and_params() {
        let env = "instances:\n  - {name: shop, unit: site, params: {port: 81}}\n  - {name: blog, unit: site, applies_to: {role: web}, params: {port: 82, root: /b}}\n  - {name: none, unit: site, applies_to: {role: db}, params: {port: 83}}\n";
        let hosts = render(&[
            ("units/site.yaml", SITE),
            ("units/base.yaml", BASE),
            ("environments/prod/env.yaml", env),
        ])
        .expect("renders");
        // `requires: [base]` puts base first whatever the names; instances in file order.
        assert_eq!(
            addresses(&hosts[0]),
            ["base/motd", "shop/conf", "blog/conf"]
        );
        let content = |i: usize| hosts[0].steps[i].resource.content().map(<[u8]>::to_vec);
        assert_eq!(content(1), Some(b"81 /srv".to_vec()));
        assert_eq!(content(2), Some(b"82 /b".to_vec()));
        assert_eq!(
            hosts[0].steps[2].resource.desired()["path"],
            "/etc/blog.conf"
        );
    }

    #[test]
    fn a_host_instance_names_the_unit_and_the_instance_in_errors() {
        let hosts = "hosts:\n  - name: web-1\n    address: 10.0.0.1\n    instances:\n      - {name: shop, unit: site, params: {port: 81}}\n";
        let site = "params:\n  port: {type: integer}\nsteps:\n  - id: conf\n    file:\n      path: /etc/x\n      content: \"{{ nope }}\"\n";
        let d = one_error(render(&[
            ("units/site.yaml", site),
            ("environments/prod/hosts.yaml", hosts),
        ]));
        assert_eq!((d.path.as_str(), d.line), ("units/site.yaml", 7));
        assert!(
            d.message
                .contains("(in instance `shop` declared at environments/prod/hosts.yaml:5:9)"),
            "{}",
            d.message
        );
    }

    #[test]
    fn instance_params_are_checked_against_the_units_types() {
        let env = "instances:\n  - {name: a, unit: site, params: {port: \"81\"}}\n  - {name: b, unit: site, params: {prot: 1}}\n  - {name: c, unit: stie, params: {}}\n";
        let errs = render(&[
            ("units/site.yaml", SITE),
            ("units/base.yaml", BASE),
            ("environments/prod/env.yaml", env),
        ])
        .expect_err("invalid");
        let text: Vec<String> = errs
            .iter()
            .map(|d| format!("{}: {}", d.line, d.message))
            .collect();
        let joined = text.join("\n");
        for want in [
            "2: instance `a`: parameter `port` must be of type integer",
            "3: instance `b`: unit `site` has no parameter `prot`",
            "3: instance `b` of unit `site` does not give parameter `port`",
            "4: instance `c` names unknown unit `stie`",
        ] {
            assert!(joined.contains(want), "{want} not in\n{joined}");
        }
    }

    #[test]
    fn a_requires_cycle_is_named_like_a_step_cycle() {
        let a = "requires: [b]\nsteps: []\n";
        let b = "requires: [a]\nsteps: []\n";
        let d = one_error(render(&[("units/a.yaml", a), ("units/b.yaml", b)]));
        assert_eq!(d.code, "cycle");
        assert_eq!(d.message, "unit dependency cycle: a -> b -> a");
    }

    #[test]
    fn templated_enum_fields_are_checked_after_rendering() {
        let unit = |st: &str| {
            format!("vars: {{st: {st}, uid: 1234}}\nsteps:\n  - id: f\n    file:\n      path: /tmp/f\n      state: \"{{{{ st }}}}\"\n  - id: u\n    user:\n      name: x\n      uid: \"{{{{ uid }}}}\"\n")
        };
        let hosts = render(&[("units/u.yaml", &unit("absent"))]).expect("renders");
        assert_eq!(hosts[0].steps[0].resource.desired()["state"], "absent");
        // A templated number where the schema wants one is read as one.
        assert_eq!(hosts[0].steps[1].resource.desired()["uid"], 1234);
        let d = one_error(render(&[("units/u.yaml", &unit("absnt"))]));
        assert_eq!((d.code, d.line), ("template", 6));
        assert!(
            d.message
                .starts_with("step `u/f`: `state` after templating: "),
            "{}",
            d.message
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// An iteration's address and desired state depend on its item only: reordering
        /// (or adding) the other items changes neither.
        #[test]
        fn loop_addresses_are_stable_under_reordering(
            names in proptest::collection::btree_set("[a-z]{1,6}", 1..6)
                .prop_map(|s| s.into_iter().collect::<Vec<_>>())
                .prop_shuffle(),
        ) {
            let list = |ns: &[String]| format!(
                "vars:\n  users: [{}]\nsteps:\n  - id: home\n    loop: users\n    directory:\n      path: \"/home/{{{{ item }}}}\"\n",
                ns.join(", ")
            );
            let mut sorted = names.clone();
            sorted.sort();
            sorted.push("zzzzzzz".into());
            let one = render(&[("units/u.yaml", &list(&names))]).expect("renders");
            let two = render(&[("units/u.yaml", &list(&sorted))]).expect("renders");
            let by_address = |h: &DesiredHost| h.steps.iter()
                .map(|s| (s.address.to_string(), s.resource.desired()))
                .collect::<BTreeMap<_, _>>();
            let (a, mut b) = (by_address(&one[0]), by_address(&two[0]));
            b.remove("u/home[zzzzzzz]");
            prop_assert_eq!(a, b);
        }
    }
}
