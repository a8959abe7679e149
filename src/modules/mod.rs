//! Step modules.
//!
//! A module is one kind of resource (file, package, service, ...). Modules are **pure**:
//! from their parameters they render a *probe* (a POSIX sh fragment that prints the
//! observed state), parse the probe's output and diff it against the desired state, and
//! render the *apply* fragment for a change. They never touch a host or the local disk:
//! the engine owns all I/O and batches the fragments of a host into one script per phase.
//!
//! Every module lives in one file and registers a [`ModuleDef`] in [`REGISTRY`]. The spec
//! every module meets (checked by the compliance tests over the whole registry):
//! - `probe()` only observes: running it changes nothing on the host;
//! - `diff()` is pure and total: any probe output gives a `Change` or a `ProbeError`, never a panic;
//! - `apply()` of a change, followed by `probe()` + `diff()`, gives `InSync`;
//! - applying again after that is a no-op (`InSync` without running anything);
//! - every value reaches the shell through [`sh::quote`], content travels as base64 data.

use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

pub mod sh;
#[cfg(test)]
pub(crate) mod testing;

pub mod command;
pub mod cron;
pub mod directory;
pub mod file;
pub mod group;
pub mod line;
pub mod package;
pub mod service;
pub mod symlink;
pub mod sysctl;
pub mod user;

/// The output of one step's probe, as the engine captured it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeResult {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: i32,
}

/// jetporch's vocabulary: what a step needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    InSync,
    Create,
    Modify,
    Remove,
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChangeKind::InSync => "in sync",
            ChangeKind::Create => "create",
            ChangeKind::Modify => "modify",
            ChangeKind::Remove => "remove",
        })
    }
}

/// One field that differs: `mode` from `0644` to `0600`. `None` means absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FieldChange {
    pub field: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// The same fields with every value replaced by `(sensitive)`: what reports and the state
/// database keep of a sensitive step.
pub fn redact(fields: &[FieldChange]) -> Vec<FieldChange> {
    fields
        .iter()
        .map(|f| FieldChange {
            field: f.field.clone(),
            from: f.from.as_ref().map(|_| "(sensitive)".to_string()),
            to: f.to.as_ref().map(|_| "(sensitive)".to_string()),
        })
        .collect()
}

/// Old and new file content, for a unified diff. `old` is `None` when the file is absent
/// or its content was not fetched (binary, too large, or sensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentChange {
    pub old: Option<Vec<u8>>,
    pub new: Option<Vec<u8>>,
}

/// What a step needs to become true on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub fields: Vec<FieldChange>,
    pub content: Option<ContentChange>,
    /// Facts worth showing in a plan, e.g. "no systemd on this host: using service(8)".
    pub notes: Vec<String>,
}

impl Change {
    pub fn in_sync() -> Change {
        Change {
            kind: ChangeKind::InSync,
            fields: Vec::new(),
            content: None,
            notes: Vec::new(),
        }
    }
    pub fn new(kind: ChangeKind) -> Change {
        Change {
            kind,
            ..Change::in_sync()
        }
    }
    pub fn field(mut self, field: &str, from: Option<String>, to: Option<String>) -> Change {
        self.fields.push(FieldChange {
            field: field.to_string(),
            from,
            to,
        });
        self
    }
    pub fn note(mut self, note: impl Into<String>) -> Change {
        self.notes.push(note.into());
        self
    }
    pub fn is_change(&self) -> bool {
        self.kind != ChangeKind::InSync
    }
    pub fn changes_field(&self, field: &str) -> bool {
        self.fields.iter().any(|f| f.field == field)
    }
}

/// The probe's output could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProbeError {
    pub message: String,
}

impl ProbeError {
    pub fn new(message: impl Into<String>) -> ProbeError {
        ProbeError {
            message: message.into(),
        }
    }
}

/// A resource with its desired state, ready to probe, diff and apply.
pub trait Resource: fmt::Debug + Send + Sync {
    /// What the step manages, for people: `/etc/app.conf`, `nginx`.
    fn target(&self) -> String;
    /// The desired state as data, for `plumb render`. File content appears as sha256 and size.
    fn desired(&self) -> serde_json::Value;
    /// A POSIX sh fragment that prints the observed state. It must change nothing.
    fn probe(&self) -> String;
    /// Parses the probe's output and compares it with the desired state. Pure.
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError>;
    /// A POSIX sh fragment that makes `change` true; exits non-zero on failure.
    fn apply(&self, change: &Change) -> String;
    /// The fragment a handler runs when a step notifies this one (restart, reload, run).
    fn refresh(&self) -> Option<String> {
        None
    }
    /// Whether a notification still needs the refresh after this step's own `change` was
    /// applied in the same run. A service its own step just started has read the new
    /// configuration already, so it is not restarted again (Puppet's behaviour).
    fn refresh_after(&self, own_change: &Change) -> bool {
        let _ = own_change;
        true
    }
    /// The exact bytes a file step writes, for `plumb render --show-content` and diffs.
    fn content(&self) -> Option<&[u8]> {
        None
    }
    /// Whether the step runs only when notified (`command` with `refresh_only`).
    fn refresh_only(&self) -> bool {
        false
    }
}

/// Errors found while building a resource from its (schema-valid) parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BuildError {
    /// JSON pointer relative to the module's parameters, e.g. `/template`; empty for the whole.
    pub pointer: String,
    pub message: String,
}

impl BuildError {
    pub fn at(pointer: impl Into<String>, message: impl Into<String>) -> BuildError {
        BuildError {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

/// What a module may ask of the config repo while building: templates and files.
/// The renderer implements it; it reads from the repo, never from a host.
pub trait Resolve {
    /// Renders `templates/<path>` with the host's variables.
    fn template(&mut self, path: &str) -> Result<String, String>;
    /// Reads `files/<path>` as bytes.
    fn file(&mut self, path: &str) -> Result<Vec<u8>, String>;
    /// Reads `files/<path>` as bytes shared with every other step and host that reads it
    /// (the renderer reads each repo file once per load). Default: a copy of [`Self::file`].
    fn file_shared(&mut self, path: &str) -> Result<std::sync::Arc<[u8]>, String> {
        self.file(path).map(std::sync::Arc::from)
    }
}

/// Builds a resource from schema-valid, templated parameters.
pub type BuildFn = fn(serde_json::Value, &mut dyn Resolve) -> Result<Box<dyn Resource>, BuildError>;

/// One registered module.
pub struct ModuleDef {
    pub name: &'static str,
    pub summary: &'static str,
    /// The JSON Schema of the module's parameters.
    pub schema: fn(&mut SchemaGenerator) -> Schema,
    /// Builds the resource from schema-valid, templated parameters.
    pub build: BuildFn,
    /// Whether steps of this module can be `notify` targets (they have a refresh).
    pub refreshable: bool,
}

impl fmt::Debug for ModuleDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModuleDef")
            .field("name", &self.name)
            .finish()
    }
}

/// Every module plumb knows, in the order the docs list them.
pub static REGISTRY: &[ModuleDef] = &[
    file::DEF,
    directory::DEF,
    symlink::DEF,
    line::DEF,
    package::DEF,
    service::DEF,
    user::DEF,
    group::DEF,
    command::DEF,
    cron::DEF,
    sysctl::DEF,
];

pub fn lookup(name: &str) -> Option<&'static ModuleDef> {
    REGISTRY.iter().find(|m| m.name == name)
}

/// Deserializes schema-valid parameters into a module's typed form.
pub fn params<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, BuildError> {
    serde_json::from_value(value)
        .map_err(|e| BuildError::at("", format!("invalid parameters: {e}")))
}

/// A schema for `T`, for use in [`ModuleDef::schema`].
pub fn schema_for<T: JsonSchema>(gen: &mut SchemaGenerator) -> Schema {
    T::json_schema(gen)
}

/// `present` / `absent`, shared by most modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    #[default]
    Present,
    Absent,
}

/// An octal file mode written as a string, e.g. `"0644"` or `"2755"`.
pub const MODE_PATTERN: &str = "^0?[0-7]{3,4}$";
/// An absolute path.
pub const ABS_PATH_PATTERN: &str = "^/";
/// A user or group name as accepted by shadow-utils.
pub const NAME_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_.-]*\\$?$";
