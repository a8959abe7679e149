//! `service`: a systemd service (or the init system's `service` command without systemd).
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{BuildError, Change, ModuleDef, ProbeError, ProbeResult, Resolve, Resource};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Stopped,
}

/// What a notification does to the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Refresh {
    #[default]
    Restart,
    Reload,
}

/// A service: running or stopped, enabled at boot or not. As a `notify` target it is
/// restarted (or reloaded) once per run when a notifying step changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Unit name, with or without `.service`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9@._:-]+$"))]
    pub name: String,
    /// Unset: the run state is not managed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RunState>,
    /// Unset: the boot state is not managed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub refresh: Refresh,
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct Service {
    pub params: Params,
}

fn build(
    value: serde_json::Value,
    _resolve: &mut dyn Resolve,
) -> Result<Box<dyn Resource>, BuildError> {
    let params: Params = super::params(value)?;
    Ok(Box::new(Service { params }))
}

pub const DEF: ModuleDef = ModuleDef {
    name: "service",
    summary: "A service: running/stopped, enabled/disabled, restart or reload on notify.",
    schema: super::schema_for::<Params>,
    build,
    refreshable: true,
};

// TEMPORARY until the module lands: every method is implemented by the modules work.
impl Resource for Service {
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
