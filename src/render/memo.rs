//! Rendered once per distinct input: a step whose templates read the same values on two
//! hosts renders to the same step on both, so a render thread keeps what it rendered and
//! gives the next host a copy instead of templating and building the step again.
//!
//! What a step's rendering reads is found once per declaration, statically
//! ([`minijinja::Template::undeclared_variables`] over every templated parameter and every
//! `template:` the module reads): the dotted paths of the context it looks up (`region`,
//! `host.name`, `loop.index`). The key of one render is the declaration, the instance and the
//! iteration, and the JSON text of the value at each such path. Sound by construction:
//!
//! - A path is resolved as far as the context has it: `x.upper` of a string `x` keys on all
//!   of `x` (a method call is an attribute lookup to the analysis), so a value the template
//!   can reach is always in the key.
//! - Whatever the analysis cannot see keys on the **whole** context: `{% include %}`,
//!   `{% import %}`, `{% from %}` and `{% extends %}` (the other template's lookups are not
//!   analysed), `debug()` (prints the context), and a `template:` whose name is templated.
//! - A step that reads `secrets` is never kept (secret values are not in the context, and a
//!   sensitive step is rendered for each host). Rendering reads nothing else that can differ
//!   between hosts: the repo's files and templates are fixed for a render, and module
//!   builders are pure.
//! - Only successes are kept: an error is rendered again on each host, so its message names
//!   that host.
//! - A step that reads a template the analysis did not know of (a module reading more than
//!   its `reads`) is never kept.
//!
//! Bounded: a declaration whose renders keep missing (its input differs per host, e.g. it
//! reads `host.name`) stops being looked up after [`GIVE_UP_MISSES`], and a thread keeps at
//! most [`MAX_KEPT`] steps. Checked against rendering every host in full by
//! `memo::tests::a_kept_render_is_the_render`.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::OnceLock;

use minijinja::Environment as Jinja;
use serde_json::Value as Json;

use super::DesiredStep;
use crate::model::{Repo, StepDecl};
use crate::modules::{self, RepoRead};
use crate::render::recheck::is_template;
use crate::yaml::{Node, Value};

/// Misses of one declaration (and iteration) without as many hits, after which it is no
/// longer looked up.
pub const GIVE_UP_MISSES: u32 = 32;
/// Most steps one render thread keeps.
pub const MAX_KEPT: usize = 200_000;

/// What a declaration's rendering reads of its context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reads {
    /// The values at these dotted paths, and nothing else.
    Paths(Vec<String>),
    /// Anything in the context (an include, `debug()`, a templated template name).
    Everything,
    /// Never kept (reads secrets, or cannot be analysed).
    Never,
}

/// Misses and hits of one declaration's iteration.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    hits: u32,
    misses: u32,
}

/// One render thread's kept steps.
#[derive(Default)]
pub(super) struct Memo {
    /// What each declaration reads, by its address in the loaded repo (a render borrows the
    /// repo for its whole length, so the address names one declaration).
    reads: HashMap<usize, Reads>,
    tally: HashMap<Box<str>, Tally>,
    kept: HashMap<Box<str>, DesiredStep>,
    /// What each `when:`/`loop:` expression reads, by its text.
    expr_reads: HashMap<String, Option<Vec<String>>>,
    /// Results of `when:` and `loop:` expressions, by declaration, expression and values.
    exprs: HashMap<Box<str>, Expr>,
}

/// A kept expression result.
#[derive(Debug, Clone)]
pub(super) enum Expr {
    /// A `when:`: `None` holds, `Some(reason)` leaves the step out.
    When(Option<String>),
    /// A `loop:`'s items, as `(map key, item)`.
    Loop(Vec<(Option<String>, Json)>),
}

/// A tag that starts another template's text: its lookups are not in this one's analysis.
fn includes_other(source: &str) -> bool {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(r"\{%[-+]?\s*(include|import|from|extends)\b").expect("a valid regex")
    })
    .is_match(source)
}

/// The dotted paths `source` may look up, `None` when it does not parse.
fn lookups(jinja: &Jinja<'_>, source: &str) -> Option<BTreeSet<String>> {
    let t = jinja.template_from_str(source).ok()?;
    Some(t.undeclared_variables(true).into_iter().collect())
}

/// The parameter at a JSON pointer of the declaration's parameters.
fn node_at<'n>(node: &'n Node, pointer: &str) -> Option<&'n Node> {
    pointer
        .split('/')
        .skip(1)
        .try_fold(node, |n, raw| match &n.value {
            Value::Map(_) => n.get(&raw.replace("~1", "/").replace("~0", "~")),
            Value::Seq(items) => raw.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
}

/// What rendering `decl` reads of its context (see the module documentation).
pub(super) fn analyse(jinja: &Jinja<'_>, repo: &Repo, decl: &StepDecl) -> Reads {
    let mut paths = BTreeSet::new();
    let mut everything = false;
    let mut stack = vec![&decl.params];
    while let Some(n) = stack.pop() {
        match &n.value {
            Value::String(s) if is_template(s) => {
                let Some(found) = lookups(jinja, s) else {
                    return Reads::Never;
                };
                everything |= includes_other(s);
                paths.extend(found);
            }
            Value::Seq(items) => stack.extend(items),
            Value::Map(m) => stack.extend(m.values().map(|(_, n)| n)),
            _ => {}
        }
    }
    let Some(def) = modules::lookup(&decl.module) else {
        return Reads::Never;
    };
    for read in def.reads {
        let RepoRead::Template(pointer) = read else {
            continue;
        };
        match node_at(&decl.params, pointer).map(|n| &n.value) {
            None => {}
            Some(Value::String(name)) if !is_template(name) => {
                let rel = format!("templates/{name}");
                let Ok(bytes) = repo.files.shared(&rel, super::MAX_CONTENT_BYTES) else {
                    return Reads::Never;
                };
                let source = String::from_utf8_lossy(&bytes);
                everything |= includes_other(&source);
                let Some(found) = jinja
                    .get_template(name)
                    .ok()
                    .map(|t| t.undeclared_variables(true))
                else {
                    return Reads::Never;
                };
                paths.extend(found);
            }
            Some(_) => everything = true,
        }
    }
    let top = |p: &String| p.split('.').next().unwrap_or(p).to_string();
    if paths.iter().any(|p| top(p) == "secrets") {
        return Reads::Never;
    }
    if everything || paths.iter().any(|p| top(p) == "debug") {
        return Reads::Everything;
    }
    Reads::Paths(paths.into_iter().collect())
}

/// The templates `decl` names literally in the parameters its module reads them from.
pub(super) fn named_templates(decl: &StepDecl) -> BTreeSet<String> {
    let Some(def) = modules::lookup(&decl.module) else {
        return BTreeSet::new();
    };
    def.reads
        .iter()
        .filter_map(|r| match r {
            RepoRead::Template(p) => node_at(&decl.params, p),
            RepoRead::File(_) => None,
        })
        .filter_map(|n| match &n.value {
            Value::String(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// Appends the value at `path` in `ctx` to `key`: the value as deep as the context has the
/// path (an object key at each step), as JSON text; a variable the context does not have at
/// all (a global such as `range`, or undefined) as absent.
fn push_value(key: &mut String, ctx: &Json, path: &str) {
    key.push('\u{1}');
    key.push_str(path);
    key.push('\u{2}');
    let mut parts = path.split('.');
    let first = parts.next().unwrap_or_default();
    let Some(mut value) = ctx.as_object().and_then(|o| o.get(first)) else {
        // JSON text never starts with `!`.
        key.push('!');
        return;
    };
    for part in parts {
        match value.as_object().and_then(|o| o.get(part)) {
            Some(v) => value = v,
            None => break,
        }
    }
    push_json(key, value);
}

/// Appends `value` as JSON text (which never contains the separators unescaped).
fn push_json(key: &mut String, value: &Json) {
    let _ = serde_json::to_writer(WriteString(key), value);
}

/// `fmt::Write` of a `String` as an `io::Write` (JSON text is UTF-8).
struct WriteString<'a>(&'a mut String);

impl std::io::Write for WriteString<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let s = std::str::from_utf8(buf).map_err(std::io::Error::other)?;
        self.0.push_str(s);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where one render stands in the memo: looked up, or not kept at all.
pub(super) enum Lookup {
    /// Rendered before with the same input: a copy.
    Hit(Box<DesiredStep>),
    /// Not yet: render, then [`Memo::keep`] under this key.
    Miss(Box<str>),
    /// Not kept (never, or given up).
    Skip,
}

impl Memo {
    /// Looks up the render of `decl` in environment `env` as instance `instance`, iteration
    /// `id`, in `ctx`.
    pub(super) fn lookup(
        &mut self,
        (jinja, repo): (&Jinja<'_>, &Repo),
        decl: &StepDecl,
        (env, instance, id): (&str, &str, &str),
        ctx: &Json,
    ) -> Lookup {
        let at = std::ptr::from_ref(decl) as usize;
        let reads = self
            .reads
            .entry(at)
            .or_insert_with(|| analyse(jinja, repo, decl));
        if *reads == Reads::Never {
            return Lookup::Skip;
        }
        let mut key = String::with_capacity(128);
        let _ = write!(key, "{at:x}\u{0}{env}\u{0}{instance}\u{0}{id}");
        let prefix = key.len();
        let tally = self.tally.get(key.as_str()).copied().unwrap_or_default();
        if tally.misses >= GIVE_UP_MISSES && tally.hits < tally.misses {
            return Lookup::Skip;
        }
        match reads {
            Reads::Paths(paths) => paths.iter().for_each(|p| push_value(&mut key, ctx, p)),
            Reads::Everything => {
                key.push('\u{1}');
                push_json(&mut key, ctx);
            }
            Reads::Never => return Lookup::Skip,
        }
        let hit = self.kept.get(key.as_str()).cloned();
        let tally = self.tally.entry(key[..prefix].into()).or_default();
        match hit {
            Some(step) => {
                tally.hits += 1;
                Lookup::Hit(Box::new(step))
            }
            None => {
                tally.misses += 1;
                Lookup::Miss(key.into())
            }
        }
    }

    /// Keeps `step`, rendered under `key`.
    pub(super) fn keep(&mut self, key: Box<str>, step: &DesiredStep) {
        if self.kept.len() < MAX_KEPT {
            self.kept.insert(key, step.clone());
        }
    }

    /// The key of the expression `expr` of `decl` (a `when:` or `loop:`) in `ctx`, when its
    /// result may be kept: an expression is a pure function of the context values it reads
    /// (as a template's, [`analyse`]); one that reads `secrets` or `debug()`, or does not
    /// parse, is never kept.
    pub(super) fn expr_key(
        &mut self,
        jinja: &Jinja<'_>,
        (decl, kind): (&StepDecl, char),
        expr: &str,
        ctx: &Json,
    ) -> Option<Box<str>> {
        let paths = self
            .expr_reads
            .entry(expr.to_string())
            .or_insert_with(|| {
                let found = lookups(jinja, &format!("{{{{ {expr} }}}}"))?;
                let top = |p: &String| p.split('.').next().unwrap_or(p).to_string();
                if found
                    .iter()
                    .any(|p| top(p) == "secrets" || top(p) == "debug")
                {
                    return None;
                }
                Some(found.into_iter().collect())
            })
            .as_ref()?;
        let at = std::ptr::from_ref(decl) as usize;
        let mut key = String::with_capacity(64);
        let _ = write!(key, "{at:x}\u{0}{kind}\u{0}{expr}");
        let prefix = key.len();
        let tally = self.tally.get(key.as_str()).copied().unwrap_or_default();
        if tally.misses >= GIVE_UP_MISSES && tally.hits < tally.misses {
            return None;
        }
        paths.iter().for_each(|p| push_value(&mut key, ctx, p));
        let hit = self.exprs.contains_key(key.as_str());
        let tally = self.tally.entry(key[..prefix].into()).or_default();
        if hit {
            tally.hits += 1;
        } else {
            tally.misses += 1;
        }
        Some(key.into())
    }

    /// The kept result under `key`.
    pub(super) fn expr(&self, key: &str) -> Option<Expr> {
        self.exprs.get(key).cloned()
    }

    /// Keeps an expression's result.
    pub(super) fn keep_expr(&mut self, key: Box<str>, result: Expr) {
        if self.exprs.len() < MAX_KEPT {
            self.exprs.insert(key, result);
        }
    }

    /// Never keeps `decl` again (it read something its analysis did not know of).
    pub(super) fn never(&mut self, decl: &StepDecl) {
        self.reads
            .insert(std::ptr::from_ref(decl) as usize, Reads::Never);
    }
}

#[cfg(test)]
mod tests;
