//! `file`: a regular file with content, mode and ownership.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{BuildError, Change, ModuleDef, Presence, ProbeError, ProbeResult, Resolve, Resource};

/// A regular file. Content comes from exactly one of `content`, `template` (under
/// `templates/`, rendered with the host's variables) or `source` (under `files/`, copied
/// byte for byte). It is written to a temporary file beside the target and renamed into place;
/// the replaced version is kept as `<path>.plumb-backup` unless `backup: false`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Absolute path of the file.
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
    #[serde(default)]
    pub state: Presence,
    /// Literal content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// A template under `templates/`, rendered with the host's variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// A file under `files/`, copied byte for byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Octal mode as a string, e.g. "0644". Unset: new files get 0644, existing keep theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^0?[0-7]{3,4}$"))]
    pub mode: Option<String>,
    /// Owner (user name). Unset: not managed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Group name. Unset: not managed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Keep the replaced version as `<path>.plumb-backup`.
    #[serde(default = "yes")]
    pub backup: bool,
}

fn yes() -> bool {
    true
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct File {
    pub params: Params,
}

fn build(
    value: serde_json::Value,
    _resolve: &mut dyn Resolve,
) -> Result<Box<dyn Resource>, BuildError> {
    let params: Params = super::params(value)?;
    Ok(Box::new(File { params }))
}

pub const DEF: ModuleDef = ModuleDef {
    name: "file",
    summary: "A regular file: content, template or source; mode; owner; group.",
    schema: super::schema_for::<Params>,
    build,
    refreshable: false,
};

// TEMPORARY until the module lands: every method is implemented by the modules work.
impl Resource for File {
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
