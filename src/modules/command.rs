//! `command`: run a command, guarded so that it is idempotent.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{BuildError, Change, ModuleDef, ProbeError, ProbeResult, Resolve, Resource};

/// A shell command (run with `sh -c`). Guards make it idempotent: it runs only when
/// `creates` does not exist, `unless` fails, and `onlyif` succeeds. With
/// `refresh_only: true` it runs only when a step that notifies it changed (a handler).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The command, run as `sh -c <run>`.
    #[schemars(length(min = 1))]
    pub run: String,
    /// Skip when this path exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creates: Option<String>,
    /// Skip when this command succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unless: Option<String>,
    /// Run only when this command succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onlyif: Option<String>,
    /// Run only when notified by a changed step.
    #[serde(default)]
    pub refresh_only: bool,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"))]
    pub chdir: Option<String>,
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct Command {
    pub params: Params,
}

fn build(
    value: serde_json::Value,
    _resolve: &mut dyn Resolve,
) -> Result<Box<dyn Resource>, BuildError> {
    let params: Params = super::params(value)?;
    Ok(Box::new(Command { params }))
}

pub const DEF: ModuleDef = ModuleDef {
    name: "command",
    summary: "A guarded command (creates, unless, onlyif), or a handler (refresh_only).",
    schema: super::schema_for::<Params>,
    build,
    refreshable: true,
};

// TEMPORARY until the module lands: every method is implemented by the modules work.
impl Resource for Command {
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
