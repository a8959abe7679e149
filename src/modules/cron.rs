//! `cron`: a job in /etc/cron.d.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{BuildError, Change, ModuleDef, Presence, ProbeError, ProbeResult, Resolve, Resource};

/// A cron job, written as `/etc/cron.d/<name>` (one job per file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// File name under /etc/cron.d (letters, digits, `-` and `_` only, as run-parts requires).
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub name: String,
    /// Five cron fields ("*/5 * * * *") or a nickname (@daily, @hourly, @reboot, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The command line (required when present). A single line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The user the job runs as.
    #[serde(default = "root")]
    pub user: String,
    /// Environment lines at the top of the file, e.g. MAILTO.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub state: Presence,
}

fn root() -> String {
    "root".to_string()
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct Cron {
    pub params: Params,
}

fn build(
    value: serde_json::Value,
    _resolve: &mut dyn Resolve,
) -> Result<Box<dyn Resource>, BuildError> {
    let params: Params = super::params(value)?;
    Ok(Box::new(Cron { params }))
}

pub const DEF: ModuleDef = ModuleDef {
    name: "cron",
    summary: "A cron job in /etc/cron.d.",
    schema: super::schema_for::<Params>,
    build,
    refreshable: false,
};

// TEMPORARY until the module lands: every method is implemented by the modules work.
impl Resource for Cron {
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
