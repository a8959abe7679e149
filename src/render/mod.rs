//! Rendering: from the loaded repo to the exact, ordered steps each host must be given.
//!
//! Per host: pick the units whose `applies_to` selects it, merge variables (unit defaults <
//! environment < host), template every string parameter and every `template:` file with
//! minijinja in strict mode (an undefined variable is an error), build each module's
//! resource, and order the steps (declaration order, moved only by `after`). Rendering reads
//! the repo only; it never contacts a host.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use minijinja::{Environment as Jinja, UndefinedBehavior};
use serde_json::Value as Json;

use crate::diag::{Diagnostic, Diagnostics};
use crate::model::jail::JailError;
use crate::model::{selector_matches, Host, Repo, StepAddress, StepDecl, Unit, Vars};
use crate::modules::{self, Resolve, Resource};
use crate::yaml::{Node, Pos, Value};

pub mod bounds;
mod expand;
mod filters;
mod memo;
mod order;
mod recheck;
pub mod secrets;
pub use bounds::{MAX_TEMPLATE_ITEMS, MAX_TEMPLATE_OUTPUT};
pub use expand::{SkippedStep, MAX_LOOP_ITEMS};
pub use order::{find_cycle, order_steps};

/// Variable names plumb provides itself.
pub const RESERVED_VARS: &[&str] = &["host", "env", "facts", "secrets"];
/// The code of a template error on a host with no facts at all (gather them first).
pub const MISSING_FACTS: &str = "missing-facts";
/// Largest file `source:` or `template:` may name (bytes).
pub const MAX_CONTENT_BYTES: u64 = 64 * 1024 * 1024;
/// Template execution budget (minijinja fuel) per template.
const TEMPLATE_FUEL: u64 = 5_000_000;

/// One step, rendered for one host: what the engine will make true. A clone shares the
/// resource: hosts whose step rendered alike share one (see `memo`).
#[derive(Debug, Clone)]
pub struct DesiredStep {
    /// `<unit>/<id>`: unique on a host.
    pub address: StepAddress,
    /// The module's registered name.
    pub module: &'static str,
    pub resource: Arc<dyn Resource>,
    /// Addresses of steps on this host that must come first.
    pub after: Vec<StepAddress>,
    /// Addresses of steps on this host to refresh when this one changed.
    pub notify: Vec<StepAddress>,
    pub sensitive: bool,
    /// The secrets the step's parameters and templates read (names, sorted); a step that
    /// reads one is sensitive.
    pub secrets: Vec<String>,
    /// Where the step is declared.
    pub path: String,
    pub pos: Pos,
    /// What removing its resource takes when a later commit no longer declares it, and
    /// whether this step is such a removal (see [`crate::prune`]).
    pub prune: crate::prune::StepPrune,
}

/// The desired state of one host.
#[derive(Debug)]
pub struct DesiredHost {
    pub host: Host,
    pub steps: Vec<DesiredStep>,
    /// Steps (or loop iterations) a `when:` left out, in declaration order.
    pub skipped: Vec<SkippedStep>,
    /// The facts these steps were rendered with (`None`: no facts were known, so no step
    /// depends on them). The engine re-checks them in the probe round trip.
    pub facts: Option<crate::facts::Facts>,
    /// Resources plumb applied here that these steps no longer declare and that are left in
    /// place (prune off, or never removed by their module): see [`crate::prune::add_removals`].
    pub orphans: Vec<crate::prune::Orphan>,
}

/// Units that apply to a host by their `applies_to`, in name order. Units with `params`
/// apply only through instances (see `expand`).
pub fn units_for<'a>(repo: &'a Repo, host: &Host) -> Vec<&'a Unit> {
    repo.units
        .iter()
        .filter(|u| u.header.params.is_empty())
        .filter(|u| selector_matches(&u.header.applies_to, &host.labels))
        .collect()
}

/// Resolves a step reference written in `unit` to an address.
pub fn qualify(unit: &str, reference: &str) -> String {
    if reference.contains('/') {
        reference.to_string()
    } else {
        format!("{unit}/{reference}")
    }
}

/// Renders every host of `env` (or only `only_host`). All problems are returned together.
pub fn render_env(
    repo: &Repo,
    env: &str,
    only_host: Option<&str>,
) -> Result<Vec<DesiredHost>, Diagnostics> {
    let mut diags = Diagnostics::default();
    let Some(environment) = repo.environments.get(env) else {
        let known: Vec<&str> = repo.environments.keys().map(String::as_str).collect();
        diags.push(
            Diagnostic::error(
                "unknown-environment",
                "plumb.yaml",
                Pos::START,
                format!("no environment `{env}`"),
            )
            .with_hint(format!("known environments: {}", known.join(", "))),
        );
        return Err(diags);
    };
    let hosts: Vec<&Host> = environment
        .hosts
        .iter()
        .filter(|h| only_host.is_none_or(|n| h.name == n))
        .collect();
    if let (Some(name), true) = (only_host, hosts.is_empty()) {
        diags.push(Diagnostic::error(
            "unknown-host",
            environment.hosts_path.clone(),
            Pos::START,
            format!("no host `{name}` in environment `{env}`"),
        ));
        return Err(diags);
    }
    let mut out = Vec::new();
    for rendered in render_hosts(repo, env, &hosts) {
        match rendered {
            Ok(h) => out.push(h),
            Err(d) => diags.extend(d.into_sorted()),
        }
    }
    if diags.has_errors() {
        Err(diags)
    } else {
        Ok(out)
    }
}

/// The template context for a host: merged variables plus `host`, `env` and, when known,
/// `facts`.
pub fn host_context(
    repo: &Repo,
    env: &str,
    host: &Host,
    unit: &Unit,
    facts: Option<&crate::facts::Facts>,
) -> Json {
    let mut vars = Vars::new();
    let env_vars = repo
        .environments
        .get(env)
        .map(|e| e.settings.vars.clone())
        .unwrap_or_default();
    // Precedence: unit defaults < environment < groups (file order) < host.
    let group_vars = repo
        .environments
        .get(env)
        .into_iter()
        .flat_map(|e| e.settings.groups.iter())
        .filter(|g| selector_matches(&g.selector, &host.labels))
        .map(|g| &g.vars);
    let layers = std::iter::once(&unit.header.vars)
        .chain(std::iter::once(&env_vars))
        .chain(group_vars)
        .chain(std::iter::once(&host.vars));
    for layer in layers {
        for (k, v) in layer {
            vars.insert(k.clone(), v.clone());
        }
    }
    vars.insert(
        "host".into(),
        serde_json::json!({
            "name": host.name,
            "address": host.address,
            "port": host.port,
            "user": host.user,
            "labels": host.labels,
        }),
    );
    vars.insert("env".into(), serde_json::json!({ "name": env }));
    // No facts known: `facts` stays undefined, and a template that uses it fails naming
    // the fact (see `template_message`).
    if let Some(f) = facts {
        vars.insert(
            "facts".into(),
            serde_json::to_value(f).unwrap_or(Json::Null),
        );
    }
    Json::Object(vars)
}

fn jinja(repo: &Repo) -> Jinja<'static> {
    let mut j = Jinja::new();
    j.set_undefined_behavior(UndefinedBehavior::Strict);
    j.set_fuel(Some(TEMPLATE_FUEL));
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        // As Ansible's Jinja does: a block tag's line leaves no blank line or indentation.
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
    {
        j.set_syntax(syntax);
    }
    bounds::install(&mut j);
    filters::install(&mut j);
    let files = repo.files.clone();
    j.set_loader(move |name| {
        // Every template, `{% include %}` and `{% import %}` goes through the jail.
        match files.shared(&format!("templates/{name}"), MAX_CONTENT_BYTES) {
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Err(JailError::NotFound { .. }) => Ok(None),
            Err(e) => Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                e.to_string(),
            )),
        }
    });
    j
}

/// Renders a template string that is not a step parameter (a health check's `http` URL) in
/// the one template environment every template uses: strict undefined, the fuel limit, and
/// the repo's `templates/` for includes.
pub fn render_inline(repo: &Repo, template: &str, ctx: &Json) -> Result<String, String> {
    jinja(repo)
        .render_str(template, minijinja::value::Serde(ctx))
        .map_err(|e| template_message(&e, template, ctx))
}

/// Describes a template error: which variable is undefined, when that is the cause.
fn template_message(err: &minijinja::Error, source: &str, ctx: &Json) -> String {
    if err.kind() == minijinja::ErrorKind::UndefinedError {
        let mut env = Jinja::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        if let Ok(t) = env.template_from_str(source) {
            let known: BTreeSet<String> = ctx
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            let mut missing: Vec<String> = t
                .undeclared_variables(true)
                .into_iter()
                .filter(|v| {
                    let top = v.split('.').next().unwrap_or(v);
                    top != "secrets" && (!known.contains(top) || lookup_path(ctx, v).is_none())
                })
                .collect();
            missing.sort();
            if let Some(fact) = missing.iter().find(|v| v.starts_with("facts")) {
                let host = lookup_path(ctx, "host.name").and_then(Json::as_str);
                return format!(
                    "this template needs fact `{fact}`, which host `{}` does not have",
                    host.unwrap_or("?")
                );
            }
            if !missing.is_empty() {
                let each: Vec<String> = missing.iter().map(|v| undefined_message(ctx, v)).collect();
                return each.join("; ");
            }
        }
        return "undefined variable or attribute".to_string();
    }
    if err.kind() == minijinja::ErrorKind::WriteFailure {
        return bounds::output_limit_message();
    }
    let detail = err.detail().map(|d| format!(": {d}")).unwrap_or_default();
    format!("template error: {}{detail}", err.kind())
}

/// What to do about an undefined variable: where variables are defined, for which host.
fn template_hint(err: &minijinja::Error, ctx: &Json, message: &str) -> Option<String> {
    if err.kind() != minijinja::ErrorKind::UndefinedError {
        return None;
    }
    let host = lookup_path(ctx, "host.name")
        .and_then(Json::as_str)
        .unwrap_or("?");
    let env = lookup_path(ctx, "env.name")
        .and_then(Json::as_str)
        .unwrap_or("?");
    if message.contains("needs fact `") {
        return Some(if ctx.get("facts").is_none() {
            format!(
                "no facts are known for host `{host}`: gather them with `plumb facts --env {env}` \
                 (cached for render and validate), or pass `--facts FILE`"
            )
        } else {
            format!(
                "host `{host}` has no such fact (`plumb facts --env {env}` shows what it has; \
                 e.g. `facts.ipv4` is unset on a host without an IPv4 address)"
            )
        });
    }
    Some(format!(
        "rendering for host `{host}` (environment `{env}`): define it in the unit's `vars`, \
         in environments/{env}/env.yaml `vars`, or in the host's `vars`"
    ))
}

/// Names what is undefined in `dotted` (`user.shell`): the variable, or the attribute and
/// the object that lacks it, with the attributes it has.
fn undefined_message(ctx: &Json, dotted: &str) -> String {
    let parts: Vec<&str> = dotted.split('.').collect();
    let mut value = ctx;
    for (i, part) in parts.iter().enumerate() {
        match value.get(part) {
            Some(v) => value = v,
            None if i == 0 => return format!("undefined variable `{part}`"),
            None => {
                let object = parts[..i].join(".");
                return match value.as_object() {
                    Some(o) => {
                        let mut keys: Vec<&str> = o.keys().map(String::as_str).take(12).collect();
                        if o.len() > keys.len() {
                            keys.push("...");
                        }
                        format!(
                            "undefined attribute `{part}` of `{object}` (it has: {})",
                            if keys.is_empty() {
                                "nothing".to_string()
                            } else {
                                keys.join(", ")
                            }
                        )
                    }
                    None => {
                        format!("undefined attribute `{part}` of `{object}`, which is not a map")
                    }
                };
            }
        }
    }
    format!("undefined variable `{dotted}`")
}

fn lookup_path<'a>(ctx: &'a Json, dotted: &str) -> Option<&'a Json> {
    dotted.split('.').try_fold(ctx, |v, k| v.get(k))
}

struct Templater<'r> {
    repo: &'r Repo,
    jinja: Jinja<'static>,
    /// The inline templates of step parameters, each compiled once (per templater, i.e.
    /// per render thread), not once per step and host.
    inline: std::cell::RefCell<Inline>,
    /// The steps this thread rendered, by what their rendering read ([`memo`]).
    memo: std::cell::RefCell<memo::Memo>,
}

/// Compiled inline templates: an environment configured as `jinja` (the one every template
/// uses), each source under a name of its own.
struct Inline {
    jinja: Jinja<'static>,
    names: HashMap<String, String>,
}

impl<'r> Templater<'r> {
    fn new(repo: &'r Repo) -> Templater<'r> {
        Templater {
            repo,
            jinja: jinja(repo),
            inline: std::cell::RefCell::new(Inline {
                jinja: jinja(repo),
                names: HashMap::new(),
            }),
            memo: std::cell::RefCell::default(),
        }
    }

    /// Renders the inline template `source` in `vctx`, compiled at its first use. An error
    /// is only known to be one here: the caller renders the source again the plain way for
    /// the error it reports (the same message and position as ever).
    fn render_inline_cached(
        &self,
        source: &str,
        vctx: &minijinja::Value,
    ) -> Result<String, minijinja::Error> {
        let known = self.inline.borrow().names.get(source).cloned();
        let name = match known {
            Some(name) => name,
            None => {
                let mut inline = self.inline.borrow_mut();
                let name = format!("<string {}>", inline.names.len());
                inline
                    .jinja
                    .add_template_owned(name.clone(), source.to_string())?;
                inline.names.insert(source.to_string(), name.clone());
                name
            }
        };
        let inline = self.inline.borrow();
        let t = inline.jinja.get_template(&name)?;
        bounds::render_capped(&t, vctx)
    }
}

impl Templater<'_> {
    /// Where a template error in the inline string `text` (the value of `node`) is: at the
    /// failing expression when the string is written on one line as it reads (plain or
    /// quoted without escapes), else at the string.
    fn error_pos(&self, node: &Node, text: &str, e: &minijinja::Error, path: &str) -> Pos {
        let mut pos = node.pos;
        // A quoted string's line breaks may be escapes (`"a\nb"`), not lines of the file:
        // then the error is at the string.
        let quoted = self
            .repo
            .sources
            .line(path, node.pos.line)
            .and_then(|l| l.chars().nth(node.pos.col.saturating_sub(1) as usize))
            .is_some_and(|c| c == '"' || c == '\'');
        if let (Some(l), false) = (e.line(), quoted) {
            pos.line += u32::try_from(l.saturating_sub(1)).unwrap_or(0);
        }
        let (Some(range), Some(line)) = (e.range(), self.repo.sources.line(path, node.pos.line))
        else {
            return pos;
        };
        let Some(upto) = text.get(..range.end) else {
            return pos;
        };
        if upto.contains('\n') {
            return pos;
        }
        let from: String = line
            .chars()
            .skip(node.pos.col.saturating_sub(1) as usize)
            .collect();
        let quoted = from.starts_with(['"', '\'']);
        let body = if quoted { &from[1..] } else { from.as_str() };
        if !body.starts_with(upto) {
            return pos;
        }
        let before = text.get(..range.start).map_or(0, |b| b.chars().count());
        pos.col += u32::from(quoted) + u32::try_from(before).unwrap_or(0);
        pos
    }

    /// Templates every string in a parameter tree, keeping positions for errors.
    fn params(
        &self,
        node: &Node,
        (ctx, vctx): (&Json, &minijinja::Value),
        path: &str,
        diags: &mut Vec<Diagnostic>,
    ) -> Json {
        match &node.value {
            Value::String(s) if s.contains("{{") || s.contains("{%") || s.contains("{#") => {
                let out = self.render_inline_cached(s, vctx).or_else(|_| {
                    self.jinja
                        .template_from_str(s)
                        .and_then(|t| bounds::render_capped(&t, vctx))
                });
                match out {
                    Ok(out) => Json::String(out),
                    Err(e) => {
                        let pos = self.error_pos(node, s, &e, path);
                        let message = template_message(&e, s, ctx);
                        let hint = template_hint(&e, ctx, &message);
                        let mut d = Diagnostic::error("template", path, pos, message);
                        if let Some(h) = hint {
                            d = d.with_hint(h);
                        }
                        diags.push(d);
                        Json::Null
                    }
                }
            }
            Value::Seq(items) => Json::Array(
                items
                    .iter()
                    .map(|n| self.params(n, (ctx, vctx), path, diags))
                    .collect(),
            ),
            Value::Map(m) => Json::Object(
                m.iter()
                    .map(|(k, (_, v))| (k.clone(), self.params(v, (ctx, vctx), path, diags)))
                    .collect(),
            ),
            _ => node.to_json(),
        }
    }
}

/// What a content reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefKind {
    Template,
    File,
}

// Parameters that name a file of the repo are the module's `ModuleDef::reads`. The
// renderer resolves them before building the module, so a missing file or a template error
// is reported at the parameter (or at the template's own line) whatever the module does;
// the module's own `Resolve` calls then hit the cache.

/// Serves `template:` and `source:` for one step.
struct StepResolver<'a> {
    repo: &'a Repo,
    templater: &'a Templater<'a>,
    ctx: &'a Json,
    /// `ctx` with the step's `secrets` object.
    vctx: &'a minijinja::Value,
    errors: Vec<Diagnostic>,
    templates: HashMap<String, Result<String, String>>,
}

impl Resolve for StepResolver<'_> {
    fn template(&mut self, name: &str) -> Result<String, String> {
        if let Some(r) = self.templates.get(name) {
            return r.clone();
        }
        let r = self.render_template(name);
        self.templates.insert(name.to_string(), r.clone());
        r
    }

    fn file(&mut self, name: &str) -> Result<Vec<u8>, String> {
        self.file_shared(name).map(|b| b.to_vec())
    }

    fn file_shared(&mut self, name: &str) -> Result<Arc<[u8]>, String> {
        self.repo
            .files
            .shared(&format!("files/{name}"), MAX_CONTENT_BYTES)
            .map_err(|e| e.to_string())
    }
}

/// The hint for a reference to a missing file under `dir_name/`.
fn missing_hint(repo: &Repo, dir_name: &str, name: &str) -> String {
    let known = crate::model::load::list_files(repo, dir_name);
    if let Some(s) = crate::schema::suggest(name, &known) {
        return format!("did you mean `{s}`? (paths are relative to {dir_name}/)");
    }
    if known.is_empty() {
        format!("create {dir_name}/{name}; the path is relative to {dir_name}/")
    } else {
        let shown: Vec<&str> = known.iter().take(10).map(String::as_str).collect();
        format!(
            "the path is relative to {dir_name}/, which has: {}{}",
            shown.join(", "),
            if known.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        )
    }
}

impl StepResolver<'_> {
    fn render_template(&mut self, name: &str) -> Result<String, String> {
        let rel_path = format!("templates/{name}");
        if let Err(e) = self.repo.files.shared(&rel_path, MAX_CONTENT_BYTES) {
            return Err(e.to_string());
        }
        let t = self
            .templater
            .jinja
            .get_template(name)
            .and_then(|t| bounds::render_capped(&t, self.vctx));
        match t {
            Ok(s) => Ok(s),
            Err(e) => {
                let source = self.source_of(&rel_path);
                let line = e.line().map(|l| l as u32).unwrap_or(1);
                let col = e
                    .range()
                    .and_then(|r| {
                        let before = source.get(..r.start)?;
                        Some(
                            before
                                .rsplit('\n')
                                .next()
                                .map(|l| l.chars().count())
                                .unwrap_or(0) as u32
                                + 1,
                        )
                    })
                    .unwrap_or(1);
                let file = e
                    .name()
                    .map(|n| format!("templates/{n}"))
                    .unwrap_or(rel_path.clone());
                let file_source = self.source_of(&file);
                let message = template_message(&e, &file_source, self.ctx);
                let hint = template_hint(&e, self.ctx, &message);
                let mut d = Diagnostic::error("template", file, Pos { line, col }, message);
                if let Some(h) = hint {
                    d = d.with_hint(h);
                }
                self.errors.push(d);
                Err(format!("template `{rel_path}` failed"))
            }
        }
    }

    /// The text of a repo file, for locating an error in it.
    fn source_of(&self, rel_path: &str) -> String {
        match self.repo.sources.get(rel_path) {
            Some(text) => text.to_string(),
            None => self
                .repo
                .files
                .shared(rel_path, MAX_CONTENT_BYTES)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
        }
    }
}

/// The steps of a host before ordering: every iteration of every step whose `when` holds.
struct Expanded {
    steps: Vec<DesiredStep>,
    skipped: Vec<SkippedStep>,
    /// Every rendered address by its base (`unit/id` for `unit/id[key]`).
    groups: BTreeMap<StepAddress, Vec<StepAddress>>,
    /// Bases with an iteration a `when` left out.
    skipped_bases: HashSet<StepAddress>,
}

fn expand_steps(
    templater: &Templater<'_>,
    repo: &Repo,
    env: &str,
    host: &Host,
    facts: Option<&crate::facts::Facts>,
    applied: &[expand::Applied<'_>],
    errors: &mut Vec<Diagnostic>,
) -> Expanded {
    let mut steps = Vec::with_capacity(applied.iter().map(|a| a.unit.steps.len()).sum());
    let mut skipped = Vec::new();
    // Every rendered address by its base (`unit/id` for `unit/id[key]`).
    let mut groups: BTreeMap<StepAddress, Vec<StepAddress>> = BTreeMap::new();
    let mut skipped_bases: HashSet<StepAddress> = HashSet::new();
    for a in applied {
        let mut ctx = host_context(repo, env, host, a.unit, facts);
        if let (Some(i), Json::Object(o)) = (&a.instance, &mut ctx) {
            // An instance's params win over every other variable; `instance` names it.
            for (k, v) in &i.params {
                o.insert(k.clone(), v.clone());
            }
            let me = serde_json::json!({ "name": a.name, "unit": a.unit.name });
            o.insert("instance".into(), me);
        }
        // The context as templates see it, made at most once for the unit's steps (a loop
        // iteration, which adds `item` and `loop`, has its own).
        let unit_value = LazyValue::new();
        for decl in &a.unit.steps {
            let base = StepAddress::new(&a.name, &decl.id);
            let iterations = match templater.iterations(a, decl, &ctx) {
                Ok(it) => it,
                Err(errs) => {
                    errors.extend(errs);
                    continue;
                }
            };
            for it in iterations {
                let address = StepAddress::new(&a.name, &it.id);
                let own = LazyValue::new();
                let value = match &it.ctx {
                    std::borrow::Cow::Borrowed(_) => &unit_value,
                    std::borrow::Cow::Owned(_) => &own,
                };
                match templater.when(a, decl, (&it.ctx, value)) {
                    Ok(None) => {}
                    Ok(Some(reason)) => {
                        skipped_bases.insert(base.clone());
                        skipped.push(SkippedStep { address, reason });
                        continue;
                    }
                    Err(d) => {
                        errors.push(d);
                        continue;
                    }
                }
                match render_step_kept(templater, a, decl, env, (&it.ctx, value), address.clone()) {
                    Ok(s) => {
                        groups.entry(base.clone()).or_default().push(address);
                        steps.push(s);
                    }
                    Err(errs) => errors.extend(errs.into_iter().map(|d| a.locate(d))),
                }
            }
        }
    }
    Expanded {
        steps,
        skipped,
        groups,
        skipped_bases,
    }
}

/// Renders one host, with its facts from `repo.facts` when its templates need them. Only a
/// host whose templates use facts depends on them (`DesiredHost::facts` is set): it is
/// rendered without facts first, so a host that never uses them costs no facts round trip
/// and is never rendered again when they change.
pub fn render_host(repo: &Repo, env: &str, host: &Host) -> Result<DesiredHost, Diagnostics> {
    render_host_in(&Templater::new(repo), env, host)
}

/// [`render_host`] with a template environment shared by the hosts one thread renders (a
/// template is compiled once per environment, not once per host).
fn render_host_in(t: &Templater<'_>, env: &str, host: &Host) -> Result<DesiredHost, Diagnostics> {
    let facts = t.repo.facts.get(env, &host.name);
    if facts.is_some() {
        if let Ok(d) = render_host_with(t, env, host, None) {
            return Ok(d);
        }
    }
    render_host_with(t, env, host, facts)
}

/// Hosts per thread below which [`render_hosts`] stays on the calling thread.
const HOSTS_PER_THREAD: usize = 16;

/// Renders `hosts`, results in their order: split over the machine's cores, each thread
/// with its own template environment. Every host's render is independent of the others
/// (the repo's file and secret caches are shared behind locks), so the results are what a
/// one-by-one render gives.
fn render_hosts(repo: &Repo, env: &str, hosts: &[&Host]) -> Vec<Result<DesiredHost, Diagnostics>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(hosts.len().div_ceil(HOSTS_PER_THREAD))
        .max(1);
    let render_part = |part: &[&Host]| {
        let t = Templater::new(repo);
        part.iter()
            .map(|h| render_host_in(&t, env, h))
            .collect::<Vec<_>>()
    };
    if threads == 1 {
        return render_part(hosts);
    }
    let chunk = hosts.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = hosts
            .chunks(chunk)
            .map(|part| scope.spawn(move || render_part(part)))
            .collect();
        handles
            .into_iter()
            // A render that panicked panics here, as it would have on this thread.
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// Whether `host` cannot be rendered without facts (and has none in `repo.facts`).
pub fn needs_facts(repo: &Repo, env: &str, host: &Host) -> bool {
    repo.facts.get(env, &host.name).is_none()
        && render_host_with(&Templater::new(repo), env, host, None)
            .is_err_and(|d| d.iter().any(|d| d.code == MISSING_FACTS))
}

fn render_host_with(
    templater: &Templater<'_>,
    env: &str,
    host: &Host,
    facts: Option<&crate::facts::Facts>,
) -> Result<DesiredHost, Diagnostics> {
    let repo = templater.repo;
    let mut diags = Diagnostics::default();
    let mut errors = Vec::new();
    let applied = expand::applied_units(repo, env, host, &mut errors);
    let Expanded {
        mut steps,
        skipped,
        groups,
        skipped_bases,
    } = expand_steps(templater, repo, env, host, facts, &applied, &mut errors);
    let no_facts = facts.is_none();
    diags.extend(errors.into_iter().map(|mut d| {
        if no_facts && d.code == "template" && d.message.contains("needs fact `") {
            d.code = MISSING_FACTS;
        }
        d
    }));
    // References: `after` to a step not on this host is dropped (nothing to wait for);
    // `notify` to a step not on this host is an error (the refresh would never run), unless
    // its `when` left it out. A reference to a loop step reaches every iteration.
    let present: HashSet<StepAddress> = steps.iter().map(|s| s.address.clone()).collect();
    for a in &applied {
        for decl in &a.unit.steps {
            let addr = StepAddress::new(&a.name, &decl.id);
            for (target, pos) in &decl.notify {
                let t = StepAddress::qualify(&a.name, target);
                let b = expand::base_of(&t);
                let known = present.contains(&t) || groups.contains_key(&t);
                if !known && !skipped_bases.contains(&b) && repo_has_step(repo, &b) {
                    diags.push(
                        Diagnostic::error(
                            "notify",
                            a.unit.path.clone(),
                            *pos,
                            format!(
                                "`{addr}` notifies `{t}`, which does not apply to host `{}`",
                                host.name
                            ),
                        )
                        .with_hint(
                            "make the target's unit select this host too, or drop the notify",
                        ),
                    );
                }
            }
        }
    }
    for s in &mut steps {
        s.after = expand::expand_refs(&s.after, &groups, &present);
        s.notify = expand::expand_refs(&s.notify, &groups, &present);
    }
    if diags.has_errors() {
        return Err(diags);
    }
    match order_steps(steps) {
        Ok(steps) => Ok(DesiredHost {
            host: host.clone(),
            steps,
            skipped,
            facts: facts.cloned(),
            orphans: Vec::new(),
        }),
        Err(cycle) => {
            diags.push(Diagnostic::error(
                "cycle",
                host.path.clone(),
                host.pos,
                format!(
                    "dependency cycle on host `{}`: {}",
                    host.name,
                    cycle.join(" -> ")
                ),
            ));
            Err(diags)
        }
    }
}

fn repo_has_step(repo: &Repo, address: &StepAddress) -> bool {
    repo.units
        .iter()
        .any(|unit| unit.name == address.unit && unit.steps.iter().any(|s| s.id == address.id))
}

impl StepResolver<'_> {
    /// Resolves the step's `template:`/`source:` up front, so a missing or refused file is
    /// reported at the parameter (or a template error at the template's own line).
    /// `refs`: the step's parameters that name a repo file, as `(JSON pointer, kind)`.
    fn check_refs(
        &mut self,
        unit: &Unit,
        decl: &StepDecl,
        params: &Json,
        refs: &[(&str, RefKind)],
    ) -> Vec<Diagnostic> {
        let mut ref_errors = Vec::new();
        for &(key, kind) in refs {
            let Some(name) = params.pointer(key).and_then(Json::as_str) else {
                continue;
            };
            let dir_name = match kind {
                RefKind::Template => "templates",
                RefKind::File => "files",
            };
            // The file itself first: missing, a symlink, a FIFO, too large, outside the repo.
            let pos = unit.node.locate(&format!("{}{key}", decl.pointer));
            let rel_path = format!("{dir_name}/{name}");
            if let Err(e) = self.repo.files.shared(&rel_path, MAX_CONTENT_BYTES) {
                ref_errors.push(reference_error(
                    self.repo, unit, decl, pos, dir_name, name, &e,
                ));
                continue;
            }
            let result = match kind {
                RefKind::Template => self.template(name).map(|_| ()),
                RefKind::File => self.file_shared(name).map(|_| ()),
            };
            if let Err(message) = result {
                if !self.errors.is_empty() {
                    // The template itself is wrong: its diagnostics point into it.
                    ref_errors.append(&mut self.errors);
                    continue;
                }
                ref_errors.push(Diagnostic::error(
                    "missing-file",
                    unit.path.clone(),
                    pos,
                    format!("step `{}`: {message}", decl.id),
                ));
            }
        }
        ref_errors
    }
}

/// The diagnostic for a `template:`/`source:` the jail refused, at the parameter.
fn reference_error(
    repo: &Repo,
    unit: &Unit,
    decl: &StepDecl,
    pos: Pos,
    dir_name: &str,
    name: &str,
    e: &JailError,
) -> Diagnostic {
    match e {
        JailError::NotFound { .. } => Diagnostic::error(
            "missing-file",
            unit.path.clone(),
            pos,
            format!(
                "step `{}`: no {} `{dir_name}/{name}`",
                decl.id,
                if dir_name == "templates" {
                    "template"
                } else {
                    "file"
                }
            ),
        )
        .with_hint(missing_hint(repo, dir_name, name)),
        _ => {
            let d = Diagnostic::error(
                e.code(),
                unit.path.clone(),
                pos,
                format!("step `{}`: {}: {e}", decl.id, e.path()),
            );
            match e.hint() {
                Some(h) => d.with_hint(h),
                None => d,
            }
        }
    }
}

/// A context as a template value, made the first time a template runs in it
/// ([`template_value`]): a step or condition kept by the [`memo`] reads the JSON only.
pub(super) type LazyValue = std::cell::OnceCell<minijinja::Value>;

/// The template value of `ctx`, made once per cell.
pub(super) fn template_value<'v>(cell: &'v LazyValue, ctx: &Json) -> &'v minijinja::Value {
    cell.get_or_init(|| minijinja::Value::from(minijinja::value::Serde(ctx)))
}

/// [`render_step`], or a copy of the step this thread rendered from the same input ([`memo`]).
fn render_step_kept(
    t: &Templater<'_>,
    applied: &expand::Applied<'_>,
    decl: &StepDecl,
    env: &str,
    (ctx, base): (&Json, &LazyValue),
    address: StepAddress,
) -> Result<DesiredStep, Vec<Diagnostic>> {
    let id = address.id.as_str();
    let lookup =
        t.memo
            .borrow_mut()
            .lookup((&t.jinja, t.repo), decl, (env, &applied.name, id), ctx);
    let key = match lookup {
        memo::Lookup::Hit(step) => return Ok(*step),
        memo::Lookup::Miss(key) => Some(key),
        memo::Lookup::Skip => None,
    };
    let base = template_value(base, ctx);
    let (step, read) = render_step(t, applied, decl, env, (ctx, base), address)?;
    if let Some(key) = key {
        let mut m = t.memo.borrow_mut();
        if read.is_subset(&memo::named_templates(decl)) {
            m.keep(key, &step);
        } else {
            m.never(decl);
        }
    }
    Ok(step)
}

/// Renders one step with its own `secrets` object; a step that read a secret is sensitive,
/// and its errors are told without anything derived from the value.
fn render_step(
    t: &Templater<'_>,
    applied: &expand::Applied<'_>,
    decl: &StepDecl,
    env: &str,
    (ctx, base): (&Json, &minijinja::Value),
    address: StepAddress,
) -> Result<(DesiredStep, BTreeSet<String>), Vec<Diagnostic>> {
    let tracker = secrets::StepSecrets::new(&t.repo.secrets, &t.repo.files, env);
    let vctx = tracker.context(base);
    match render_step_with(t, applied, decl, (ctx, &vctx), address) {
        Ok((mut step, removal, read)) => {
            step.secrets = tracker.reads();
            step.sensitive |= !step.secrets.is_empty();
            // The state keeps a step's prune parameters: never a sensitive value.
            let removal =
                crate::prune::keepable(removal, step.sensitive, |s| tracker.appears_in(s));
            step.prune = crate::prune::StepPrune::declared(removal, applied.unit);
            Ok((step, read))
        }
        Err(mut errs) => {
            secrets::explain_errors(&tracker, decl, &mut errs);
            Err(errs)
        }
    }
}

/// The errors of a step's parameters that fail their module's schema after templating, each
/// at the template's line and naming the field.
fn recheck_errors(
    unit: &Unit,
    decl: &StepDecl,
    address: &StepAddress,
    problems: Vec<(String, String)>,
) -> Vec<Diagnostic> {
    problems
        .into_iter()
        .map(|(pointer, message)| {
            let field = pointer.trim_start_matches('/').replace('/', ".");
            Diagnostic::error(
                "template",
                unit.path.clone(),
                unit.node.locate(&format!("{}{pointer}", decl.pointer)),
                format!("step `{address}`: `{field}` after templating: {message}"),
            )
            .with_hint(format!(
                "the `{}` module's schema is schemas/modules/{}.schema.json",
                decl.module, decl.module
            ))
        })
        .collect()
}

fn render_step_with(
    t: &Templater<'_>,
    applied: &expand::Applied<'_>,
    decl: &StepDecl,
    (ctx, vctx): (&Json, &minijinja::Value),
    address: StepAddress,
) -> Result<(DesiredStep, crate::prune::Removal, BTreeSet<String>), Vec<Diagnostic>> {
    let unit = applied.unit;
    let mut errs = Vec::new();
    let mut params = t.params(&decl.params, (ctx, vctx), &unit.path, &mut errs);
    if !errs.is_empty() {
        return Err(errs);
    }
    let templated = recheck::templated_pointers(&decl.params);
    let problems = recheck::recheck(&decl.module, &mut params, &templated);
    if !problems.is_empty() {
        return Err(recheck_errors(unit, decl, &address, problems));
    }
    let Some(def) = modules::lookup(&decl.module) else {
        return Err(vec![Diagnostic::error(
            "step-module",
            unit.path.clone(),
            decl.pos,
            format!("unknown module `{}`", decl.module),
        )]);
    };
    let mut resolver = StepResolver {
        repo: t.repo,
        templater: t,
        ctx,
        vctx,
        errors: Vec::new(),
        templates: HashMap::new(),
    };
    let refs: Vec<(&str, RefKind)> = def
        .reads
        .iter()
        .map(|read| match read {
            modules::RepoRead::Template(key) => (*key, RefKind::Template),
            modules::RepoRead::File(key) => (*key, RefKind::File),
        })
        .collect();
    let ref_errors = resolver.check_refs(unit, decl, &params, &refs);
    if !ref_errors.is_empty() {
        return Err(ref_errors);
    }
    // Set by `render_step` once the step's secrets are known (what the state may keep of it).
    let removal = crate::prune::removal_of(def, &params);
    match (def.build)(params, &mut resolver) {
        Ok(resource) => Ok((
            DesiredStep {
                address,
                module: def.name,
                resource: Arc::from(resource),
                after: decl
                    .after
                    .iter()
                    .map(|(a, _)| StepAddress::qualify(&applied.name, a))
                    .collect(),
                notify: decl
                    .notify
                    .iter()
                    .map(|(a, _)| StepAddress::qualify(&applied.name, a))
                    .collect(),
                sensitive: decl.sensitive,
                secrets: Vec::new(),
                path: unit.path.clone(),
                pos: decl.pos,
                prune: crate::prune::StepPrune::default(),
            },
            removal,
            resolver.templates.into_keys().collect(),
        )),
        Err(e) => {
            if !resolver.errors.is_empty() {
                return Err(resolver.errors);
            }
            let pointer = format!("{}{}", decl.pointer, e.pointer);
            let pos = unit.node.locate(&pointer);
            Err(vec![Diagnostic::error(
                "step",
                unit.path.clone(),
                pos,
                format!("step `{}`: {}", decl.id, e.message),
            )])
        }
    }
}

/// Which variables each unit's context defines, for the `reserved-var` check.
pub fn reserved_var_uses(vars: &Vars) -> Vec<&str> {
    RESERVED_VARS
        .iter()
        .copied()
        .filter(|r| vars.contains_key(*r))
        .collect()
}

/// Map from address to the step, for lookups.
pub fn index(steps: &[DesiredStep]) -> BTreeMap<&StepAddress, &DesiredStep> {
    steps.iter().map(|s| (&s.address, s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_tags_leave_no_blank_lines_or_indentation() {
        let t = "a\n  {% if true %}\nb\n  {% endif %}\nc\n";
        let out = render_inline(&Repo::default(), t, &serde_json::json!({})).expect("renders");
        assert_eq!(out, "a\nb\nc\n");
    }

    #[test]
    fn an_undefined_attribute_names_the_attribute_and_the_object() {
        let ctx = serde_json::json!({"app": {"name": "shop", "port": 8080}});
        let e = render_inline(&Repo::default(), "{{ app.workers }}", &ctx).expect_err("undefined");
        assert_eq!(
            e,
            "undefined attribute `workers` of `app` (it has: name, port)"
        );
        let e = render_inline(&Repo::default(), "{{ nope }}", &ctx).expect_err("undefined");
        assert_eq!(e, "undefined variable `nope`");
    }

    /// A `source:` file is read once and its bytes shared by every host: 1,000 hosts of one
    /// 1 MiB file hold one copy (before: one `Vec` per step and host, 1,000 MiB here, and
    /// 64 GiB for 1,000 hosts of a 64 MiB file).
    #[test]
    fn source_content_is_shared_by_every_host() {
        let dir = tempfile::tempdir().unwrap();
        let w = |p: &str, s: &[u8]| {
            let p = dir.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        w("plumb.yaml", b"name: shared\n");
        let mut hosts = String::from("hosts:\n");
        for i in 0..1000 {
            hosts.push_str(&format!(
                "  - name: h{i}\n    address: 10.0.{}.{}\n",
                i / 250,
                i % 250 + 1
            ));
        }
        w("environments/prod/hosts.yaml", hosts.as_bytes());
        w(
            "units/big.yaml",
            b"steps:\n  - id: big\n    file:\n      path: /srv/big\n      source: big.bin\n",
        );
        w("files/big.bin", &vec![7u8; 1024 * 1024]);
        let (repo, diags) = crate::model::load::load(dir.path());
        assert!(!diags.has_errors(), "{:?}", diags.into_sorted());
        let rendered = render_env(&repo, "prod", None).expect("renders");
        assert_eq!(rendered.len(), 1000);
        let ptrs: BTreeSet<usize> = rendered
            .iter()
            .map(|h| {
                let c = h.steps[0].resource.content().expect("has content");
                assert_eq!(c.len(), 1024 * 1024);
                c.as_ptr() as usize
            })
            .collect();
        assert_eq!(ptrs.len(), 1, "one shared copy of the file for 1,000 hosts");
    }

    fn facts_repo(template: &str) -> (tempfile::TempDir, Repo) {
        let dir = tempfile::tempdir().unwrap();
        let w = |p: &str, s: &str| {
            let p = dir.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        w("plumb.yaml", "name: facts\n");
        w(
            "environments/prod/hosts.yaml",
            "hosts:\n  - name: web-1\n    address: 10.0.0.1\n",
        );
        w(
            "units/app.yaml",
            "steps:\n  - id: conf\n    file:\n      path: /etc/app.conf\n      template: app.conf.j2\n",
        );
        w("templates/app.conf.j2", template);
        let (repo, diags) = crate::model::load::load(dir.path());
        assert!(!diags.has_errors(), "{:?}", diags.into_sorted());
        (dir, repo)
    }

    fn content(h: &DesiredHost) -> String {
        String::from_utf8_lossy(h.steps[0].resource.content().expect("content")).into_owned()
    }

    /// `facts` is in every template's context, typed: numbers are numbers, enums strings.
    #[test]
    fn templates_see_the_hosts_facts() {
        let (_dir, mut repo) = facts_repo(
            "workers = {{ facts.cpus * 2 }}\n{% if facts.os.family == 'rhel' %}pkg = {{ facts.pkg_manager }}{% endif %}\n",
        );
        repo.facts
            .insert("prod", "web-1", crate::facts::tests::sample());
        let hosts = render_env(&repo, "prod", None).expect("renders");
        // trim_blocks: the newline after `{% endif %}` goes with the tag.
        assert_eq!(content(&hosts[0]), "workers = 16\npkg = dnf");
        assert!(hosts[0].facts.is_some(), "this host depends on its facts");
    }

    /// A host whose templates use no facts does not depend on them, known or not.
    #[test]
    fn a_host_that_uses_no_facts_does_not_depend_on_them() {
        let (_dir, mut repo) = facts_repo("name = {{ host.name }}\n");
        repo.facts
            .insert("prod", "web-1", crate::facts::tests::sample());
        let hosts = render_env(&repo, "prod", None).expect("renders");
        assert_eq!(hosts[0].facts, None);
        assert!(!needs_facts(
            &repo,
            "prod",
            &repo.environments["prod"].hosts[0]
        ));
    }

    /// No facts at all for the host: the error is at the template's line, names the fact
    /// and says how to get facts.
    #[test]
    fn a_template_that_needs_facts_nobody_has_says_which() {
        let (_dir, repo) = facts_repo("# app\nworkers = {{ facts.cpus }}\n");
        let diags = render_env(&repo, "prod", None)
            .expect_err("no facts")
            .into_sorted();
        assert!(needs_facts(
            &repo,
            "prod",
            &repo.environments["prod"].hosts[0]
        ));
        let d = &diags[0];
        assert_eq!(d.code, MISSING_FACTS);
        insta::assert_snapshot!(format!(
            "{}:{}:{}: {}\nhelp: {}",
            d.path,
            d.line,
            d.col,
            d.message,
            d.hint.clone().unwrap_or_default()
        ));
    }

    /// Facts known, but not this one (a host with no IPv4 address): named too.
    #[test]
    fn a_fact_the_host_lacks_is_named() {
        let (_dir, mut repo) = facts_repo("listen = {{ facts.ipv4 }}\n");
        let mut f = crate::facts::tests::sample();
        f.ipv4 = None;
        repo.facts.insert("prod", "web-1", f);
        let diags = render_env(&repo, "prod", None)
            .expect_err("no ipv4")
            .into_sorted();
        assert_eq!(diags[0].code, "template");
        assert_eq!(
            diags[0].message,
            "this template needs fact `facts.ipv4`, which host `web-1` does not have"
        );
        assert_eq!(
            (diags[0].path.as_str(), diags[0].line),
            ("templates/app.conf.j2", 1)
        );
    }
}
