//! `symlink`: a symbolic link.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{BuildError, Change, ModuleDef, Presence, ProbeError, ProbeResult, Resolve, Resource};

/// A symbolic link at `path` pointing to `target`. An existing link to elsewhere is
/// replaced; an existing regular file or directory is an error unless `force: true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Absolute path of the link.
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
    /// What the link points to (required when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default)]
    pub state: Presence,
    /// Replace a regular file (not a directory) at `path`.
    #[serde(default)]
    pub force: bool,
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct Symlink {
    pub params: Params,
}

fn build(
    value: serde_json::Value,
    _resolve: &mut dyn Resolve,
) -> Result<Box<dyn Resource>, BuildError> {
    let params: Params = super::params(value)?;
    Ok(Box::new(Symlink { params }))
}

pub const DEF: ModuleDef = ModuleDef {
    name: "symlink",
    summary: "A symbolic link.",
    schema: super::schema_for::<Params>,
    build,
    refreshable: false,
};

// TEMPORARY until the module lands: every method is implemented by the modules work.
impl Resource for Symlink {
    fn target(&self) -> String {
        String::new()
    }
    fn desired(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }
    fn probe(&self) -> String {
        String::new()
    }
    fn diff(&self, _o: &ProbeResult) -> Result<Change, ProbeError> {
        Err(ProbeError::new("not implemented"))
    }
    fn apply(&self, _c: &Change) -> String {
        String::from("false")
    }
}
