//! `user`: a local user account.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{BuildError, Change, ModuleDef, Presence, ProbeError, ProbeResult, Resolve, Resource};

/// A local user account, managed with useradd/usermod/userdel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.-]*[$]?$"), length(max = 32))]
    pub name: String,
    #[serde(default)]
    pub state: Presence,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Primary group (must exist). Unset: a group named like the user, created by useradd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Supplementary groups, exactly (other supplementary groups are removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"))]
    pub home: Option<String>,
    /// A system account (low uid, no aging); only used when creating.
    #[serde(default)]
    pub system: bool,
    /// Create the home directory when creating the user.
    #[serde(default = "yes")]
    pub create_home: bool,
}

fn yes() -> bool {
    true
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct User {
    pub params: Params,
}

fn build(
    value: serde_json::Value,
    _resolve: &mut dyn Resolve,
) -> Result<Box<dyn Resource>, BuildError> {
    let params: Params = super::params(value)?;
    Ok(Box::new(User { params }))
}

pub const DEF: ModuleDef = ModuleDef {
    name: "user",
    summary: "A local user: uid, primary and supplementary groups, shell, home.",
    schema: super::schema_for::<Params>,
    build,
    refreshable: false,
};

// TEMPORARY until the module lands: every method is implemented by the modules work.
impl Resource for User {
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
