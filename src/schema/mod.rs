//! JSON Schemas: generated from the model's Rust types, checked in under `schemas/`, and
//! used from there for validation.
//!
//! Invariant: the files under `schemas/` are exactly what [`generate`] produces. The test
//! `schemas_are_fresh` fails when they differ; `PLUMB_BLESS=1 cargo test schemas_are_fresh`
//! rewrites them. Validation compiles the checked-in copies (embedded at build time), so the
//! schemas an editor sees are the ones plumb enforces.

use std::sync::OnceLock;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::diag::Diagnostic;
use crate::model::yaml::Node;
use crate::model::{EnvFile, HostsFile, RepoFile, StepEnvelope, UnitHeader};
use crate::modules::REGISTRY;

pub mod output;

/// Where the schemas say they live (`$id`); editors resolve them from the repo checkout.
pub const ID_BASE: &str = "https://plumb.dev/schemas/";

/// The declaration file kinds plumb validates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Repo,
    Hosts,
    Env,
    Unit,
    Daemon,
}

impl Kind {
    pub fn file_name(self) -> &'static str {
        match self {
            Kind::Repo => "repo.schema.json",
            Kind::Hosts => "hosts.schema.json",
            Kind::Env => "env.schema.json",
            Kind::Unit => "unit.schema.json",
            Kind::Daemon => "daemon.schema.json",
        }
    }

    fn embedded(self) -> &'static str {
        match self {
            Kind::Repo => include_str!("../../schemas/repo.schema.json"),
            Kind::Hosts => include_str!("../../schemas/hosts.schema.json"),
            Kind::Env => include_str!("../../schemas/env.schema.json"),
            Kind::Unit => include_str!("../../schemas/unit.schema.json"),
            Kind::Daemon => include_str!("../../schemas/daemon.schema.json"),
        }
    }

    const ALL: [Kind; 5] = [Kind::Repo, Kind::Hosts, Kind::Env, Kind::Unit, Kind::Daemon];
}

fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12().into_generator()
}

fn finish(file: &str, schema: schemars::Schema) -> Value {
    let mut v = schema.to_value();
    if let Value::Object(obj) = &mut v {
        let mut out = Map::new();
        out.insert(
            "$schema".into(),
            json!("https://json-schema.org/draft/2020-12/schema"),
        );
        out.insert("$id".into(), json!(format!("{ID_BASE}{file}")));
        for (k, val) in std::mem::take(obj) {
            if k != "$schema" {
                out.insert(k, val);
            }
        }
        *obj = out;
    }
    v
}

fn root_for<T: JsonSchema>(file: &str) -> Value {
    finish(file, generator().into_root_schema_for::<T>())
}

/// The unit schema: the header, plus `steps`, each an envelope with exactly one module key.
fn unit_schema() -> Value {
    let mut gen = generator();
    let header = gen.root_schema_for::<UnitHeader>().to_value();
    let envelope = gen.root_schema_for::<StepEnvelope>().to_value();
    let mut step_props = envelope
        .get("properties")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let mut one_of = Vec::new();
    for m in REGISTRY {
        let mut s = (m.schema)(&mut gen).to_value();
        if let Value::Object(o) = &mut s {
            o.insert("description".into(), json!(m.summary));
        }
        if let Value::Object(p) = &mut step_props {
            p.insert(
                m.name.to_string(),
                json!({ "$ref": format!("#/$defs/module.{}", m.name) }),
            );
        }
        gen.definitions_mut()
            .insert(format!("module.{}", m.name), s);
        one_of.push(json!({ "required": [m.name] }));
    }
    let step = json!({
        "type": "object",
        "description": "A step: an `id`, exactly one module key with its parameters, and optional `after`, `notify`, `sensitive`.",
        "properties": step_props,
        "required": ["id"],
        "additionalProperties": false,
        "oneOf": one_of,
    });
    gen.definitions_mut().insert("step".into(), step);
    let mut unit = header;
    if let Value::Object(o) = &mut unit {
        o.insert("title".into(), json!("plumb unit (units/<unit>.yaml)"));
        if let Some(Value::Object(props)) = o.get_mut("properties") {
            props.insert(
                "steps".into(),
                json!({"type": "array", "items": {"$ref": "#/$defs/step"}, "description": "The steps, in order."}),
            );
        }
        o.insert("required".into(), json!(["steps"]));
        let defs: Map<String, Value> = gen.take_definitions(true).into_iter().collect();
        o.insert("$defs".into(), Value::Object(defs));
    }
    finish(
        Kind::Unit.file_name(),
        schemars::Schema::try_from(unit).unwrap_or_default(),
    )
}

/// Every schema plumb ships, as `(path under schemas/, schema)`.
pub fn generate() -> Vec<(String, Value)> {
    let mut out = vec![
        (
            Kind::Repo.file_name().to_string(),
            root_for::<RepoFile>(Kind::Repo.file_name()),
        ),
        (
            Kind::Hosts.file_name().to_string(),
            root_for::<HostsFile>(Kind::Hosts.file_name()),
        ),
        (
            Kind::Env.file_name().to_string(),
            root_for::<EnvFile>(Kind::Env.file_name()),
        ),
        (Kind::Unit.file_name().to_string(), unit_schema()),
        (
            Kind::Daemon.file_name().to_string(),
            root_for::<crate::daemon::DaemonConfig>(Kind::Daemon.file_name()),
        ),
    ];
    for m in REGISTRY {
        let file = format!("modules/{}.schema.json", m.name);
        let mut gen = generator();
        let s = (m.schema)(&mut gen).to_value();
        let mut v = s;
        if let Value::Object(o) = &mut v {
            o.insert(
                "title".into(),
                json!(format!("plumb `{}` step parameters", m.name)),
            );
            o.insert("description".into(), json!(m.summary));
            let defs: Map<String, Value> = gen.take_definitions(true).into_iter().collect();
            if !defs.is_empty() {
                o.insert("$defs".into(), Value::Object(defs));
            }
        }
        out.push((
            file.clone(),
            finish(&file, schemars::Schema::try_from(v).unwrap_or_default()),
        ));
    }
    out.extend(output::generate());
    out
}

struct Compiled {
    schema: Value,
    validator: jsonschema::Validator,
}

fn compiled(kind: Kind) -> &'static Compiled {
    static CELLS: [OnceLock<Compiled>; Kind::ALL.len()] =
        [const { OnceLock::new() }; Kind::ALL.len()];
    let idx = Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
    CELLS[idx].get_or_init(|| {
        // The embedded schemas are generated by plumb itself and tested to compile.
        let schema: Value = serde_json::from_str(kind.embedded()).expect("embedded schema is JSON");
        let validator = jsonschema::draft202012::new(&schema).expect("embedded schema compiles");
        Compiled { schema, validator }
    })
}

/// Validates a parsed file against its schema; every error becomes a positioned diagnostic.
pub fn validate(kind: Kind, node: &Node, path: &str) -> Vec<Diagnostic> {
    let c = compiled(kind);
    let instance = node.to_json();
    let mut out = Vec::new();
    for err in c.validator.iter_errors(&instance) {
        let pointer = err.instance_path().as_str().to_string();
        let schema_path = err.schema_path().as_str().to_string();
        // "Exactly one module key" is checked by the loader with a better message.
        if kind == Kind::Unit && schema_path.ends_with("/oneOf") && pointer.starts_with("/steps/") {
            continue;
        }
        out.extend(describe(
            &c.schema,
            node,
            path,
            &pointer,
            &schema_path,
            &err,
        ));
    }
    out
}

/// How a message names the place a JSON pointer points at: `` `mode` ``, "step `motd`",
/// "host `web-1`", "item 2 of `waves`", "the document".
fn field_label(node: &Node, pointer: &str) -> String {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return "the document".to_string();
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    let Ok(index) = last.parse::<usize>() else {
        return format!("`{last}`");
    };
    let list = parent.rsplit('/').next().unwrap_or_default();
    let item = node_at(node, pointer);
    let named = |key: &str| item.and_then(|n| n.get(key)).and_then(Node::as_str);
    match (list, named("id"), named("name")) {
        ("steps", Some(id), _) => format!("step `{id}`"),
        ("steps", None, _) => format!("step {}", index + 1),
        ("hosts", _, Some(name)) => format!("host `{name}`"),
        (_, _, Some(name)) => format!("`{list}` item `{name}`"),
        _ => format!("item {} of `{list}`", index + 1),
    }
}

/// The node a JSON pointer names, if it exists.
fn node_at<'a>(node: &'a Node, pointer: &str) -> Option<&'a Node> {
    let mut n = node;
    for raw in pointer.split('/').skip(1) {
        let token = raw.replace("~1", "/").replace("~0", "~");
        n = match &n.value {
            crate::model::yaml::Value::Map(m) => m.get(&token).map(|(_, v)| v)?,
            crate::model::yaml::Value::Seq(s) => s.get(token.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(n)
}

/// The position to report a problem with the value at `pointer`: its key when it is a
/// mapping member (where people look for it), else the value itself.
fn member_pos(node: &Node, pointer: &str) -> crate::model::yaml::Pos {
    match pointer.rsplit_once('/') {
        Some((parent, key)) if key.parse::<usize>().is_err() => {
            node.locate_key(parent, &key.replace("~1", "/").replace("~0", "~"))
        }
        _ => node.locate(pointer),
    }
}

/// The schema value at a keyword location, following `$ref` segments within this schema.
fn resolve_schema_path<'a>(schema: &'a Value, schema_path: &str) -> Option<&'a Value> {
    let mut v = schema;
    for raw in schema_path.split('/').skip(1) {
        let token = raw.replace("~1", "/").replace("~0", "~");
        // Jump through a reference before descending.
        if let Some(r) = v.get("$ref").and_then(Value::as_str) {
            if token != "$ref" {
                v = schema.pointer(r.strip_prefix('#')?)?;
            }
        }
        if token == "$ref" {
            let r = v.get("$ref").and_then(Value::as_str)?;
            v = schema.pointer(r.strip_prefix('#')?)?;
            continue;
        }
        v = match v {
            Value::Object(o) => o.get(&token)?,
            Value::Array(a) => a.get(token.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    if let Some(r) = v.get("$ref").and_then(Value::as_str) {
        return schema.pointer(r.strip_prefix('#')?);
    }
    Some(v)
}

/// The schema object that `schema_path` (a keyword location) sits in.
fn schema_object<'a>(schema: &'a Value, schema_path: &str) -> Option<&'a Value> {
    let parent = schema_path.rsplit_once('/').map_or("", |(p, _)| p);
    resolve_schema_path(schema, parent)
}

/// The values an `anyOf`/`oneOf` keyword allows when its branches are enums or constants
/// (how optional and documented enums are generated), else empty.
fn alternatives(schema: &Value, schema_path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Some(branches) = resolve_schema_path(schema, schema_path).and_then(Value::as_array) else {
        return out;
    };
    for b in branches {
        let b = match b.get("$ref").and_then(Value::as_str) {
            Some(r) => r
                .strip_prefix('#')
                .and_then(|p| schema.pointer(p))
                .unwrap_or(b),
            None => b,
        };
        if let Some(c) = b.get("const") {
            out.push(short(c));
        }
        for e in b
            .get("enum")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.push(short(e));
        }
        for inner in ["oneOf", "anyOf"] {
            for c in b.get(inner).and_then(Value::as_array).into_iter().flatten() {
                if let Some(c) = c.get("const") {
                    out.push(short(c));
                }
                for e in c
                    .get("enum")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    out.push(short(e));
                }
            }
        }
    }
    out
}

fn one_of_these(
    path: &str,
    node: &Node,
    pointer: &str,
    here: &str,
    known: &[String],
    found: &str,
) -> Diagnostic {
    let mut d = Diagnostic::error(
        "schema",
        path,
        node.locate(pointer),
        format!(
            "{here} must be one of {}, found `{found}`",
            known.join(", ")
        ),
    );
    if let Some(s) = suggest(found, known) {
        d = d.with_hint(format!("did you mean `{s}`?"));
    }
    d
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn describe(
    schema: &Value,
    node: &Node,
    path: &str,
    pointer: &str,
    schema_path: &str,
    err: &jsonschema::ValidationError<'_>,
) -> Vec<Diagnostic> {
    use jsonschema::error::ValidationErrorKind as K;
    let here = field_label(node, pointer);
    let found = || {
        node_at(node, pointer)
            .map(|n| short(&n.to_json()))
            .unwrap_or_default()
    };
    match err.kind() {
        K::AdditionalProperties { unexpected } => {
            let known = known_properties(schema, schema_path);
            unexpected
                .iter()
                .map(|key| {
                    let pos = node.locate_key(pointer, key);
                    let mut d = Diagnostic::error(
                        "schema",
                        path,
                        pos,
                        format!("unknown field `{key}` in {here}"),
                    );
                    if let Some(s) = suggest(key, &known) {
                        d = d.with_hint(format!("did you mean `{s}`?"));
                    } else if !known.is_empty() {
                        d = d.with_hint(format!("expected one of: {}", known.join(", ")));
                    }
                    d
                })
                .collect()
        }
        K::Required { property } => {
            let name = property
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| property.to_string());
            let description = schema_object(schema, schema_path)
                .and_then(|o| o.pointer(&format!("/properties/{name}/description")))
                .and_then(Value::as_str);
            let hint = match description {
                Some(d) => format!("add `{name}:` ({})", d.trim_end_matches('.')),
                None => format!("add `{name}:`"),
            };
            vec![Diagnostic::error(
                "schema",
                path,
                member_pos(node, pointer),
                format!("missing required field `{name}` in {here}"),
            )
            .with_hint(hint)]
        }
        K::Type { kind } => {
            let mut types: Vec<String> = match kind {
                jsonschema::error::TypeKind::Single(t) => vec![t.to_string()],
                jsonschema::error::TypeKind::Multiple(ts) => {
                    ts.iter().map(|t| t.to_string()).collect()
                }
            };
            // `null` is how an optional field is spelled in the schema; nobody means to write it.
            if types.len() > 1 {
                types.retain(|t| t != "null");
            }
            let expected = types.join(" or ");
            let found_kind = node_kind_at(node, pointer);
            let mut d = Diagnostic::error(
                "schema",
                path,
                node.locate(pointer),
                format!(
                    "{here} must be {} {expected}, found {found_kind}",
                    article(&expected)
                ),
            );
            if expected == "string" && matches!(found_kind, "number" | "boolean") {
                let key = pointer.rsplit('/').next().unwrap_or_default();
                d = d.with_hint(if key == "mode" {
                    "quote it: mode: \"0644\" (unquoted, YAML reads 0644 as the number 644)"
                        .to_string()
                } else {
                    format!(
                        "quote it: {key}: \"{}\" (unquoted, YAML reads it as a {found_kind})",
                        found()
                    )
                });
            }
            vec![d]
        }
        K::Maximum { limit } | K::ExclusiveMaximum { limit } => vec![Diagnostic::error(
            "schema",
            path,
            node.locate(pointer),
            format!("{here} must be at most {limit}, found {}", found()),
        )],
        K::Minimum { limit } | K::ExclusiveMinimum { limit } => vec![Diagnostic::error(
            "schema",
            path,
            node.locate(pointer),
            format!("{here} must be at least {limit}, found {}", found()),
        )],
        K::Enum { options } => {
            let known: Vec<String> = options
                .as_array()
                .map(|a| a.iter().map(short).collect())
                .unwrap_or_default();
            vec![one_of_these(path, node, pointer, &here, &known, &found())]
        }
        K::AnyOf { context } | K::OneOfNotValid { context } => {
            let known = alternatives(schema, schema_path);
            // An optional field is `anyOf: [<its schema>, null]`: when the value is not null,
            // the errors of the other branch are the real ones.
            let real: Vec<&Vec<jsonschema::ValidationError<'static>>> = context
                .iter()
                .filter(|errs| {
                    !errs.iter().all(|e| {
                        matches!(e.kind(), K::Type { kind: jsonschema::error::TypeKind::Single(t) }
                            if t.to_string() == "null")
                    })
                })
                .collect();
            if known.is_empty() && real.len() == 1 && !real[0].is_empty() {
                real[0]
                    .iter()
                    .flat_map(|e| {
                        describe(
                            schema,
                            node,
                            path,
                            e.instance_path().as_str(),
                            e.schema_path().as_str(),
                            e,
                        )
                    })
                    .collect()
            } else if known.is_empty() {
                vec![Diagnostic::error(
                    "schema",
                    path,
                    node.locate(pointer),
                    format!("{here}: {err}"),
                )]
            } else {
                vec![one_of_these(path, node, pointer, &here, &known, &found())]
            }
        }
        K::Pattern { pattern } => vec![Diagnostic::error(
            "schema",
            path,
            node.locate(pointer),
            format!(
                "{here} is `{}`, which does not match the pattern {pattern}",
                found()
            ),
        )],
        _ => vec![Diagnostic::error(
            "schema",
            path,
            node.locate(pointer),
            format!("{here}: {err}"),
        )],
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn node_kind_at(node: &Node, pointer: &str) -> &'static str {
    let mut n = node;
    for raw in pointer.split('/').skip(1) {
        let token = raw.replace("~1", "/").replace("~0", "~");
        let next = match &n.value {
            crate::model::yaml::Value::Map(m) => m.get(&token).map(|(_, v)| v),
            crate::model::yaml::Value::Seq(s) => token.parse::<usize>().ok().and_then(|i| s.get(i)),
            _ => None,
        };
        match next {
            Some(x) => n = x,
            None => return "nothing",
        }
    }
    n.kind()
}

/// The property names allowed where an `additionalProperties` error was raised.
fn known_properties(schema: &Value, schema_path: &str) -> Vec<String> {
    let parent = schema_path
        .strip_suffix("/additionalProperties")
        .unwrap_or(schema_path);
    resolve_schema_path(schema, parent)
        .and_then(|t| t.get("properties"))
        .and_then(Value::as_object)
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// The closest known name, when it is close enough to be a likely typo.
pub fn suggest(word: &str, known: &[String]) -> Option<String> {
    known
        .iter()
        .map(|k| (edit_distance(word, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4) && *d < k.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.clone())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The checked-in schemas are exactly what the Rust types generate.
    #[test]
    fn schemas_are_fresh() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let bless = std::env::var_os("PLUMB_BLESS").is_some();
        let mut stale = Vec::new();
        for (file, schema) in generate() {
            let text = serde_json::to_string_pretty(&schema).expect("serializes") + "\n";
            let path = dir.join(&file);
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current != text {
                if bless {
                    std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
                    std::fs::write(&path, text).expect("write schema");
                } else {
                    stale.push(file);
                }
            }
        }
        assert!(
            stale.is_empty(),
            "stale schemas {stale:?}: run `PLUMB_BLESS=1 cargo test schemas_are_fresh`"
        );
    }

    #[test]
    fn every_schema_compiles() {
        for (file, schema) in generate() {
            assert!(
                jsonschema::draft202012::new(&schema).is_ok(),
                "{file} does not compile"
            );
        }
        for k in Kind::ALL {
            let _ = compiled(k);
        }
    }

    #[test]
    fn suggestions() {
        let known = vec![
            "file".to_string(),
            "package".to_string(),
            "service".to_string(),
        ];
        assert_eq!(suggest("fiel", &known).as_deref(), Some("file"));
        assert_eq!(suggest("pakage", &known).as_deref(), Some("package"));
        assert_eq!(suggest("zzzzzz", &known), None);
    }
}
