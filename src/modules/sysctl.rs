//! `sysctl`: a kernel parameter, live and persisted in /etc/sysctl.d.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{BuildError, Change, ModuleDef, Presence, ProbeError, ProbeResult, Resolve, Resource};

/// A kernel parameter: the live value (`/proc/sys`) and a persistent line in
/// `/etc/sysctl.d/60-plumb-<name>.conf`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Dotted name, e.g. "net.ipv4.ip_forward".
    #[schemars(regex(pattern = r"^[A-Za-z0-9_]+([./][A-Za-z0-9_-]+)+$"))]
    pub name: String,
    /// The value (required when present); whitespace is compared normalised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default)]
    pub state: Presence,
    /// Also set the live value (false: only persist it).
    #[serde(default = "yes")]
    pub live: bool,
}

fn yes() -> bool {
    true
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct Sysctl {
    pub params: Params,
}

fn build(
    value: serde_json::Value,
    _resolve: &mut dyn Resolve,
) -> Result<Box<dyn Resource>, BuildError> {
    let params: Params = super::params(value)?;
    Ok(Box::new(Sysctl { params }))
}

pub const DEF: ModuleDef = ModuleDef {
    name: "sysctl",
    summary: "A kernel parameter: live value and /etc/sysctl.d file.",
    schema: super::schema_for::<Params>,
    build,
    refreshable: false,
};

// TEMPORARY until the module lands: every method is implemented by the modules work.
impl Resource for Sysctl {
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
