//! Templated parameters are checked twice: at load a template stands for any value (its
//! type is unknown until a host's variables are known), and after rendering the step is
//! validated against its module's schema again, so `state: "{{ st }}"` that renders to
//! `absnt` is an error at the template's line naming the field.
//!
//! A templated string where the schema wants a number or a boolean (`port: "{{ port }}"`)
//! is read as one when it renders to one (`8080`, `true`): a template always renders text.

use std::collections::HashMap;
use std::sync::OnceLock;

use jsonschema::error::ValidationErrorKind;
use serde_json::Value as Json;

use crate::modules::REGISTRY;
use crate::yaml::{Node, Value};

fn validators() -> &'static HashMap<&'static str, jsonschema::Validator> {
    static CELL: OnceLock<HashMap<&'static str, jsonschema::Validator>> = OnceLock::new();
    CELL.get_or_init(|| {
        REGISTRY
            .iter()
            .filter_map(|m| {
                let mut gen = schemars::generate::SchemaSettings::draft2020_12().into_generator();
                let mut s = (m.schema)(&mut gen).to_value();
                let defs: serde_json::Map<String, Json> =
                    gen.take_definitions(true).into_iter().collect();
                if let (Json::Object(o), false) = (&mut s, defs.is_empty()) {
                    o.insert("$defs".into(), Json::Object(defs));
                }
                jsonschema::draft202012::new(&s).ok().map(|v| (m.name, v))
            })
            .collect()
    })
}

/// Whether a YAML string is a template.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// JSON pointers (relative to the parameters) of every templated string in `node`.
pub fn templated_pointers(node: &Node) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), node)];
    while let Some((at, n)) = stack.pop() {
        match &n.value {
            Value::String(s) if is_template(s) => out.push(at),
            Value::Seq(items) => {
                for (i, c) in items.iter().enumerate() {
                    stack.push((format!("{at}/{i}"), c));
                }
            }
            Value::Map(m) => {
                for (k, (_, c)) in m {
                    let k = k.replace('~', "~0").replace('/', "~1");
                    stack.push((format!("{at}/{k}"), c));
                }
            }
            _ => {}
        }
    }
    out
}

/// Checks rendered parameters against the module's schema, reading templated strings as
/// numbers or booleans where the schema wants one. Returns `(pointer, message)` per problem.
pub fn recheck(module: &str, params: &mut Json, templated: &[String]) -> Vec<(String, String)> {
    if templated.is_empty() {
        return Vec::new();
    }
    let Some(v) = validators().get(module) else {
        return Vec::new();
    };
    let type_errors: Vec<String> = v
        .iter_errors(params)
        .filter(|e| matches!(e.kind(), ValidationErrorKind::Type { .. }))
        .map(|e| e.instance_path().as_str().to_string())
        .filter(|p| templated.contains(p))
        .collect();
    for p in type_errors {
        if let Some(slot) = params.pointer_mut(&p) {
            let parsed = slot
                .as_str()
                .and_then(|s| serde_json::from_str::<Json>(s.trim()).ok())
                .filter(|j| j.is_number() || j.is_boolean());
            if let Some(j) = parsed {
                *slot = j;
            }
        }
    }
    v.iter_errors(params)
        .map(|e| (e.instance_path().as_str().to_string(), e.to_string()))
        .collect()
}
