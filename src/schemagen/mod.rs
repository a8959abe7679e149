//! Schema generation: the JSON Schemas under `schemas/`, generated from the Rust types of
//! every layer (declarations, daemon config, reports). Used by `plumb schemas` and the
//! freshness test; validation (in [`crate::schema`]) never imports this module.
//!
//! Invariant: the files under `schemas/` are exactly what [`generate`] produces. The test
//! `schemas_are_fresh` fails when they differ; `PLUMB_BLESS=1 cargo test schemas_are_fresh`
//! rewrites them.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::model::{EnvFile, HostsFile, RepoFile, StepEnvelope, UnitHeader};
use crate::modules::REGISTRY;
use crate::schema::{Kind, ID_BASE};

pub mod output;

pub(crate) fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12().into_generator()
}

pub(crate) fn finish(file: &str, schema: schemars::Schema) -> Value {
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
        "description": "A step: an `id`, exactly one module key with its parameters, and optional `after`, `notify`, `sensitive`, `when`, `loop`, `loop_key`.",
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
        (
            "policy-input.schema.json".to_string(),
            root_for::<crate::policy::PolicyInput>("policy-input.schema.json"),
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
    }
}
