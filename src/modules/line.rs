//! `line`: one line in a text file, present or absent.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{BuildError, Change, ModuleDef, Presence, ProbeError, ProbeResult, Resolve, Resource};

/// One line in a file, like Ansible's lineinfile. With `regexp` (POSIX extended, as grep -E),
/// the last matching line is replaced by `line` (present) or every matching line is removed
/// (absent); without it, the exact line is appended when missing or removed when present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Absolute path of the file.
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
    /// The line (without its newline). Required when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
    /// A POSIX extended regular expression selecting the line to replace or remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regexp: Option<String>,
    #[serde(default)]
    pub state: Presence,
    /// Create the file (mode 0644) when it does not exist.
    #[serde(default)]
    pub create: bool,
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct Line {
    pub params: Params,
}

fn build(
    value: serde_json::Value,
    _resolve: &mut dyn Resolve,
) -> Result<Box<dyn Resource>, BuildError> {
    let params: Params = super::params(value)?;
    Ok(Box::new(Line { params }))
}

pub const DEF: ModuleDef = ModuleDef {
    name: "line",
    summary: "A line in a text file, matched exactly or by regexp.",
    schema: super::schema_for::<Params>,
    build,
    refreshable: false,
};

// TEMPORARY until the module lands: every method is implemented by the modules work.
impl Resource for Line {
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
