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

pub use touch::{Touch, Touches};

pub mod ere;
pub mod harness;
pub mod sh;
#[cfg(test)]
pub(crate) mod testing;
pub mod touch;

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

pub mod apt_repository;
pub mod archive;
pub mod authorized_key;
pub mod backup;
pub mod download;
pub mod git;
pub mod hostname;
pub mod mount;
pub mod systemd_unit;
pub mod timezone;

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

/// A field a module compares, named once here so plans, reports, the state database and
/// apply scripts agree on its spelling (`mode`, `owner`, ...).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    Content,
    Mode,
    Owner,
    Group,
    Type,
    Target,
    Line,
    Version,
    State,
    Enabled,
    Name,
    Uid,
    Gid,
    Groups,
    Shell,
    Home,
    Run,
    Value,
    DropIn,
    Key,
    /// The names of the secrets a changed step reads (never their values): what the audit
    /// record keeps of a secret's rotation.
    Secrets,
}

impl Field {
    /// Every field, for parsing.
    pub const ALL: &'static [Field] = &[
        Field::Content,
        Field::Mode,
        Field::Owner,
        Field::Group,
        Field::Type,
        Field::Target,
        Field::Line,
        Field::Version,
        Field::State,
        Field::Enabled,
        Field::Name,
        Field::Uid,
        Field::Gid,
        Field::Groups,
        Field::Shell,
        Field::Home,
        Field::Run,
        Field::Value,
        Field::DropIn,
        Field::Key,
        Field::Secrets,
    ];

    /// The field's name as reports and the state database spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Field::Content => "content",
            Field::Mode => "mode",
            Field::Owner => "owner",
            Field::Group => "group",
            Field::Type => "type",
            Field::Target => "target",
            Field::Line => "line",
            Field::Version => "version",
            Field::State => "state",
            Field::Enabled => "enabled",
            Field::Name => "name",
            Field::Uid => "uid",
            Field::Gid => "gid",
            Field::Groups => "groups",
            Field::Shell => "shell",
            Field::Home => "home",
            Field::Run => "run",
            Field::Value => "value",
            Field::DropIn => "drop_in",
            Field::Key => "key",
            Field::Secrets => "secrets",
        }
    }
}

/// Shown as its name (`"mode"`), as it is serialized.
impl fmt::Debug for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Field {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A name that is not a [`Field`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown field `{0}`")]
pub struct UnknownField(pub String);

impl std::str::FromStr for Field {
    type Err = UnknownField;
    fn from_str(s: &str) -> Result<Field, UnknownField> {
        Field::ALL
            .iter()
            .copied()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| UnknownField(s.to_string()))
    }
}

/// One field that differs: `mode` from `0644` to `0600`. `None` means absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FieldChange {
    pub field: Field,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// The same fields with every value replaced by `(sensitive)`: what reports and the state
/// database keep of a sensitive step.
pub fn redact(fields: &[FieldChange]) -> Vec<FieldChange> {
    fields
        .iter()
        .map(|f| match f.field {
            // Secret names are not secret: they say which secret a change carries.
            Field::Secrets => f.clone(),
            _ => FieldChange {
                field: f.field,
                from: f.from.as_ref().map(|_| "(sensitive)".to_string()),
                to: f.to.as_ref().map(|_| "(sensitive)".to_string()),
            },
        })
        .collect()
}

/// What is at a path, as the probe saw it: parsed once from the probe's `type=` line by
/// every path-based module (file, directory, symlink, line, cron, sysctl).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathType {
    Absent,
    File,
    Directory,
    /// Any symbolic link, even one to a directory.
    Symlink,
    /// A fifo, socket or device.
    Other,
}

impl PathType {
    /// Reads `type=` from a probe's output (see [`sh::PROBE_TYPE`]).
    pub fn parse(o: &sh::Observed) -> Result<PathType, ProbeError> {
        Ok(match o.req("type")? {
            "absent" => PathType::Absent,
            "file" => PathType::File,
            "directory" => PathType::Directory,
            "symlink" => PathType::Symlink,
            "other" => PathType::Other,
            t => {
                return Err(ProbeError::new(format!(
                    "unexpected path type `{t}` in probe output"
                )))
            }
        })
    }
}

/// Facts a module learnt while probing that its apply needs. The apply reads these, never
/// the notes: notes are for people and may be reworded freely.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Facts {
    /// What was at the step's path (path-based modules).
    pub path: Option<PathType>,
    /// The package manager found on the host (`package` with `manager: auto`).
    pub package_manager: Option<package::Detected>,
    /// The init system found on the host (`service`).
    pub init: Option<service::Init>,
    /// What a `backup` step observed: snapshot age, last restore test (for the daemon's
    /// metrics, status and alerts, and the policy input). Set on in-sync changes too. Boxed:
    /// every step's change carries `Facts`, and only a backup step has these.
    pub backup: Option<Box<backup::BackupObserved>>,
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
    /// Boxed: most changes (every in-sync one) have none.
    pub content: Option<Box<ContentChange>>,
    /// Facts worth showing in a plan, e.g. "no systemd on this host: using service(8)".
    /// For people only: nothing an apply renders depends on them.
    pub notes: Vec<String>,
    /// What the probe learnt that the apply needs (typed, see [`Facts`]).
    pub observed: Facts,
}

impl Change {
    pub fn in_sync() -> Change {
        Change {
            kind: ChangeKind::InSync,
            fields: Vec::new(),
            content: None,
            notes: Vec::new(),
            observed: Facts::default(),
        }
    }
    pub fn new(kind: ChangeKind) -> Change {
        Change {
            kind,
            ..Change::in_sync()
        }
    }
    pub fn field(mut self, field: Field, from: Option<String>, to: Option<String>) -> Change {
        self.fields.push(FieldChange { field, from, to });
        self
    }
    /// Records what the probe learnt, for the apply.
    pub fn observed(mut self, facts: Facts) -> Change {
        self.observed = facts;
        self
    }
    pub fn note(mut self, note: impl Into<String>) -> Change {
        self.notes.push(note.into());
        self
    }
    pub fn is_change(&self) -> bool {
        self.kind != ChangeKind::InSync
    }
    pub fn changes_field(&self, field: Field) -> bool {
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

/// A resource seen as [`std::any::Any`], so a module's [`Batch`] can take back its own
/// resources from `&dyn Resource` (every `'static` type has it).
pub trait AsAny {
    fn as_any(&self) -> &dyn std::any::Any;
}

impl<T: std::any::Any> AsAny for T {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A resource with its desired state, ready to probe, diff and apply.
pub trait Resource: fmt::Debug + Send + Sync + AsAny {
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
    /// What the step acts on or reads on the host ([`touch`]): after an apply, the engine
    /// verifies every step that shares one with a step that acted. The default,
    /// [`Touches::Anything`], verifies this step after any change and every step after its
    /// own: always safe, never cheaper.
    fn touches(&self) -> Touches {
        Touches::Anything
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

/// One registered module: its name, schema and builder, and what the compliance harness
/// ([`harness`]) needs to check it: examples, where they run, what it reads from the repo,
/// and the keys its probe prints. Adding a module is its own file plus one line in
/// [`REGISTRY`].
pub struct ModuleDef {
    pub name: &'static str,
    pub summary: &'static str,
    /// The JSON Schema of the module's parameters.
    pub schema: fn(&mut SchemaGenerator) -> Schema,
    /// Builds the resource from schema-valid, templated parameters.
    pub build: BuildFn,
    /// Whether steps of this module can be `notify` targets (they have a refresh).
    pub refreshable: bool,
    /// Where the examples can run (this machine in a scratch directory, or a real host).
    pub runs: Runs,
    /// What the module reads from the config repo while building.
    pub reads: &'static [RepoRead],
    /// Every key its probe may print (`key=value` lines, see [`sh::Observed`]).
    pub probe_keys: &'static [&'static str],
    /// Lifecycles the harness runs through probe → apply → verify → apply again. A module
    /// without examples fails the harness.
    pub examples: &'static [Example],
    /// Which of its changes applying an older state cannot undo (an automatic rollback never
    /// crosses one). A module that does not declare it fails the harness.
    pub reversibility: Reversibility,
    /// What removing one of its resources means when a commit no longer declares it
    /// (`prune: true`). A module that does not declare it fails the harness.
    pub prune: Prune,
    /// How the applies of several of its steps merge into one fragment (`line`: the edits
    /// of one file in one rewrite); `None`: each step's apply is its own fragment.
    pub batch: Option<Batch>,
    /// How the probes of several of its steps run as one fragment (`line`: the lines of one
    /// file read in one pass); `None`: each step's probe is its own fragment.
    pub probe_batch: Option<ProbeBatch>,
}

/// A module's way to apply several of its changes as one fragment. The engine merges only
/// changed steps that follow each other in a host's apply (no other step's apply between
/// them), have the same [`Batch::key`] and the same sensitivity; the fragment must do exactly
/// what their applies would do one after the other, or fail as a whole and change nothing.
#[derive(Clone, Copy)]
pub struct Batch {
    /// What steps must share to be merged (e.g. the file's path); `None`: never merged.
    pub key: fn(&dyn Resource) -> Option<String>,
    /// One fragment making every change, in order; `None` when one of the resources is not
    /// this module's (the engine then applies them one by one).
    pub apply: BatchApplyFn,
}

/// A module's way to probe several of its steps in one fragment. Probes change nothing, so
/// the engine groups steps of one module with the same [`ProbeBatch::key`] and sensitivity
/// wherever they stand in the host's order. The fragment prints, for each resource in
/// order, a header line `@@plumb-member <index> <status>` and then exactly what that
/// resource's own probe prints on stdout (status 0), or the message its own probe would
/// print on stderr (any other status). Everything else the fragment prints must be data
/// that cannot hold a line break (numbers, fixed words, base64), so no file content can
/// forge a header; [`split_members`] reads the sections back.
#[derive(Clone, Copy)]
pub struct ProbeBatch {
    /// What steps must share to be probed together (e.g. the file's path); `None`: alone.
    pub key: fn(&dyn Resource) -> Option<String>,
    /// The fragment probing every resource; `None` when one of them is not this module's
    /// (the engine then probes them one by one).
    pub probe: fn(&[&dyn Resource]) -> Option<String>,
    /// Most steps in one fragment, so that what it prints stays within the frame limit
    /// (`engine::script::MAX_FRAME_BYTES`) whatever its members print.
    pub max: usize,
}

/// `resources` as the module's own type `T`, when every one is a `T` that `fits`: what a
/// [`ProbeBatch::probe`] or [`ProbeBatch::key`] works on.
pub(crate) fn all_of<'a, T: 'static>(
    resources: &[&'a dyn Resource],
    fits: fn(&T) -> bool,
) -> Option<Vec<&'a T>> {
    resources
        .iter()
        .copied()
        .map(|r| r.as_any().downcast_ref::<T>().filter(|t| fits(t)))
        .collect()
}

/// The header of member `index` of a batched probe's output, with its status.
pub fn member_header(index: usize, status: i32) -> String {
    format!("@@plumb-member {index} {status}")
}

/// Each member's result from the output of a [`ProbeBatch`] fragment of `n` resources. When
/// the fragment failed, or its output is not exactly `n` sections in order, every member
/// gets the fragment's failure (its status, at least 1, and its stderr): a member is never
/// given another's output.
pub fn split_members(result: &ProbeResult, n: usize) -> Vec<ProbeResult> {
    let failed = |why: &[u8]| {
        let mut stderr = result.stderr.clone();
        if stderr.is_empty() {
            stderr = why.to_vec();
        }
        vec![
            ProbeResult {
                stdout: Vec::new(),
                stderr,
                status: if result.status == 0 { 1 } else { result.status },
            };
            n
        ]
    };
    if result.status != 0 {
        return failed(b"the batched probe failed");
    }
    let mut out: Vec<ProbeResult> = Vec::with_capacity(n);
    for line in result.stdout.split_inclusive(|b| *b == b'\n') {
        if let Some(header) = line.strip_prefix(b"@@plumb-member ") {
            let header = std::str::from_utf8(header).unwrap_or_default().trim_end();
            let mut words = header.split(' ');
            let index = words.next().and_then(|w| w.parse::<usize>().ok());
            let status = words.next().and_then(|w| w.parse::<i32>().ok());
            match (index, status, words.next()) {
                (Some(i), Some(status), None) if i == out.len() && i < n => {
                    out.push(ProbeResult {
                        stdout: Vec::new(),
                        stderr: Vec::new(),
                        status,
                    });
                    continue;
                }
                _ => return failed(b"the batched probe printed a malformed member header"),
            }
        }
        match out.last_mut() {
            Some(m) if m.status == 0 => m.stdout.extend_from_slice(line),
            Some(m) => m.stderr.extend_from_slice(line),
            None => return failed(b"the batched probe printed output before its first member"),
        }
    }
    if out.len() != n {
        return failed(b"the batched probe did not report every member");
    }
    out
}

/// [`Batch::apply`].
pub type BatchApplyFn = fn(&[(&dyn Resource, &Change)]) -> Option<String>;

/// The parameters that make a resource absent, from the parameters it was last declared
/// with; `None` when removing this one is not safe.
pub type PruneFn = fn(&serde_json::Value) -> Option<serde_json::Value>;

/// What a module declares about removing a resource no longer declared.
#[derive(Clone, Copy)]
pub enum Prune {
    /// Not declared: the compliance harness fails (`HarnessError::UndeclaredPrune`).
    Undeclared,
    /// Never removed by prune, only reported as orphaned: why, for people.
    Never(&'static str),
    /// Removed by applying these parameters (e.g. the same path with `state: absent`).
    Absent(PruneFn),
}

/// `params`' values at `keys` (those present), plus `state: absent`: the usual [`PruneFn`].
pub fn absent_with(params: &serde_json::Value, keys: &[&str]) -> Option<serde_json::Value> {
    let mut out = serde_json::Map::new();
    for k in keys {
        if let Some(v) = params.get(*k) {
            out.insert((*k).to_string(), v.clone());
        }
    }
    out.insert("state".into(), "absent".into());
    Some(serde_json::Value::Object(out))
}

/// Why a change cannot be undone by applying an older state, for people (an alert says it).
pub type IrreversibleFn = fn(&Change) -> Option<&'static str>;

/// What a module declares about undoing its changes by applying an older state.
#[derive(Clone, Copy)]
pub enum Reversibility {
    /// Not declared: the compliance harness fails (`HarnessError::UndeclaredReversibility`).
    Undeclared,
    /// Applying an older state undoes every change (files, modes, settings...).
    Reversible,
    /// Some changes cannot be undone: the function names them from the change alone.
    Some(IrreversibleFn),
}

impl ModuleDef {
    /// Why `change` (of this module) cannot be undone by applying an older state; `None`
    /// when it can. An undeclared module's changes are treated as irreversible.
    pub fn irreversible(&self, change: &Change) -> Option<&'static str> {
        if change.kind == ChangeKind::InSync {
            return None;
        }
        match self.reversibility {
            Reversibility::Undeclared => {
                Some("its module does not declare whether it can be undone")
            }
            Reversibility::Reversible => None,
            Reversibility::Some(f) => f(change),
        }
    }

    /// This definition, declaring which of its changes cannot be undone.
    pub(crate) const fn reversibility(self, reversibility: Reversibility) -> ModuleDef {
        ModuleDef {
            reversibility,
            ..self
        }
    }

    /// This definition, declaring what removing one of its resources means.
    pub(crate) const fn prune(self, prune: Prune) -> ModuleDef {
        ModuleDef { prune, ..self }
    }

    /// This definition, merging the applies of consecutive steps (see [`Batch`]).
    pub(crate) const fn batch(self, batch: Batch) -> ModuleDef {
        ModuleDef {
            batch: Some(batch),
            ..self
        }
    }

    /// This definition, probing steps together (see [`ProbeBatch`]).
    pub(crate) const fn probe_batch(self, probe_batch: ProbeBatch) -> ModuleDef {
        ModuleDef {
            probe_batch: Some(probe_batch),
            ..self
        }
    }

    /// The parameters that remove a resource last declared with `params`, or why it is not
    /// removed (it is then reported as orphaned).
    pub fn prune_params(
        &self,
        params: &serde_json::Value,
    ) -> Result<serde_json::Value, &'static str> {
        match self.prune {
            Prune::Undeclared => Err("its module does not declare what removing it means"),
            Prune::Never(why) => Err(why),
            Prune::Absent(f) => f(params).ok_or("removing it is not safe"),
        }
    }
}

impl ModuleDef {
    /// The definition of a [`FromParams`] module `R`: its schema and build come from `R`,
    /// its steps are not `notify` targets ([`ModuleDef::refreshable`] changes that) and it
    /// reads nothing from the config repo.
    pub(crate) const fn of<R: FromParams>(
        name: &'static str,
        summary: &'static str,
        runs: Runs,
        probe_keys: &'static [&'static str],
        examples: &'static [Example],
    ) -> ModuleDef {
        ModuleDef {
            name,
            summary,
            schema: schema_for::<R::Params>,
            build: build_from::<R>,
            refreshable: false,
            runs,
            reads: &[],
            probe_keys,
            examples,
            reversibility: Reversibility::Undeclared,
            prune: Prune::Undeclared,
            batch: None,
            probe_batch: None,
        }
    }

    /// This definition, with steps that can be `notify` targets.
    pub(crate) const fn refreshable(self) -> ModuleDef {
        ModuleDef {
            refreshable: true,
            ..self
        }
    }
}

impl fmt::Debug for ModuleDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModuleDef")
            .field("name", &self.name)
            .finish()
    }
}

/// Builds a resource whose fixed paths (`/etc/cron.d`, `/proc/sys`) are moved under a
/// scratch root, so its examples can run on this machine.
pub type RootedBuild = fn(serde_json::Value, &str) -> Result<Box<dyn Resource>, BuildError>;

/// Where a module's examples can run.
#[derive(Debug, Clone, Copy)]
pub enum Runs {
    /// On this machine, unprivileged, inside a scratch directory that replaces `{root}` in
    /// the examples' parameters; `rooted` builds modules whose paths are fixed.
    Local { rooted: Option<RootedBuild> },
    /// Only on a real host (root, a package manager, an init system, the user database):
    /// `tests/e2e_modules.rs` runs these examples on the Docker test hosts.
    Host,
}

/// Repo content a module reads while building, named by the parameter at a JSON pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoRead {
    /// A template under `templates/` ([`Resolve::template`]).
    Template(&'static str),
    /// A file under `files/` ([`Resolve::file`]).
    File(&'static str),
}

/// A lifecycle of one module: steps converged in order on one fresh host (or scratch root).
#[derive(Debug, Clone, Copy)]
pub struct Example {
    pub name: &'static str,
    /// Steps of other modules converged first, whatever their change (e.g. the package that
    /// ships a service): module name and parameters as JSON.
    pub setup: &'static [(&'static str, &'static str)],
    pub steps: &'static [ExampleStep],
}

/// One step of an [`Example`]: parameters as JSON text (`{root}` is replaced by the scratch
/// directory, JSON-escaped) and the change the first probe must find.
#[derive(Debug, Clone, Copy)]
pub struct ExampleStep {
    pub params: &'static str,
    pub expect: ChangeKind,
}

/// Shorthand for an [`ExampleStep`].
pub const fn step(params: &'static str, expect: ChangeKind) -> ExampleStep {
    ExampleStep { params, expect }
}

/// Every module plumb knows, in the order the docs list them.
pub static REGISTRY: &[&ModuleDef] = &[
    &file::DEF,
    &directory::DEF,
    &symlink::DEF,
    &line::DEF,
    &package::DEF,
    &service::DEF,
    &user::DEF,
    &group::DEF,
    &command::DEF,
    &cron::DEF,
    &sysctl::DEF,
    &systemd_unit::DEF,
    &git::DEF,
    &download::DEF,
    &archive::DEF,
    &authorized_key::DEF,
    &mount::DEF,
    &apt_repository::DEF,
    &hostname::DEF,
    &timezone::DEF,
    &backup::DEF,
];

pub fn lookup(name: &str) -> Option<&'static ModuleDef> {
    REGISTRY.iter().copied().find(|m| m.name == name)
}

/// Deserializes schema-valid parameters into a module's typed form.
pub fn params<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, BuildError> {
    serde_json::from_value(value)
        .map_err(|e| BuildError::at("", format!("invalid parameters: {e}")))
}

/// A resource built from its parameters alone (it reads nothing from the config repo).
pub(crate) trait FromParams: Resource + Sized + 'static {
    type Params: serde::de::DeserializeOwned + JsonSchema;
    /// Checks the parsed parameters and builds the resource.
    fn from_params(params: Self::Params) -> Result<Self, BuildError>;
}

/// Builds an `R` from raw parameters: a NUL byte anywhere is refused ([`sh::reject_nul`]),
/// then they are parsed ([`params`]) and checked ([`FromParams::from_params`]).
pub(crate) fn parse<R: FromParams>(value: serde_json::Value) -> Result<R, BuildError> {
    sh::reject_nul(&value, &[])?;
    R::from_params(params(value)?)
}

/// [`ModuleDef::build`] of a [`FromParams`] module.
pub(crate) fn build_from<R: FromParams>(
    value: serde_json::Value,
    _resolve: &mut dyn Resolve,
) -> Result<Box<dyn Resource>, BuildError> {
    Ok(Box::new(parse::<R>(value)?))
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

#[cfg(test)]
mod tests {
    use super::testing::{built, out};
    use super::*;

    /// Every note rewritten, one added: what a rewording of the messages would do.
    fn reworded(c: &Change) -> Change {
        let mut r = c.clone();
        for n in r.notes.iter_mut() {
            *n = format!("REWORDED {}", n.to_uppercase());
        }
        r.notes.push("package manager: dnf".into());
        r.notes.push(service::NO_SYSTEMD.into());
        r
    }

    #[test]
    fn rewording_notes_never_changes_an_apply() {
        let cases: &[(&ModuleDef, serde_json::Value, &str, &str)] = &[
            (&package::DEF, serde_json::json!({"name": "nginx"}), "manager=apt\n", "apt-get install"),
            (&package::DEF, serde_json::json!({"name": "nginx"}), "manager=dnf\nrpm=absent\n", "install -y nginx"),
            (
                &service::DEF,
                serde_json::json!({"name": "nginx", "state": "running", "enabled": true}),
                "init=sysv\nload=loaded\nactive=inactive\nenabled=disabled\n",
                "update-rc.d",
            ),
            (
                &service::DEF,
                serde_json::json!({"name": "nginx", "state": "running"}),
                "init=systemd\nload=not-found\nactive=inactive\nenabled=\n",
                "systemctl start",
            ),
            (&file::DEF, serde_json::json!({"path": "/a/b", "content": "x"}), "type=absent\nparent=no\n", "mv -f -T -- f"),
            (&line::DEF, serde_json::json!({"path": "/a", "line": "x"}), "type=absent\n", "set `create: true`"),
            (&command::DEF, serde_json::json!({"run": "date"}), "", "eval"),
            (
                &symlink::DEF,
                serde_json::json!({"path": "/a", "target": "/b", "force": true}),
                "type=file\nparent=yes\n",
                "ln -s -- /b l",
            ),
            (
                &directory::DEF,
                serde_json::json!({"path": "/a", "state": "absent", "recurse": true}),
                "type=directory\nmode=755\nuid=0\nowner=root\ngid=0\ngroup=root\nsize=1\nempty=no\n",
                "rm -rf",
            ),
        ];
        for (def, params, probe, expect) in cases {
            let r = built(def.build, params.clone());
            let c = match r.diff(&out(probe)) {
                Ok(c) => c,
                Err(e) => panic!("{} {params}: {e}", def.name),
            };
            assert!(
                !c.notes.is_empty(),
                "{} {params}: a case with notes",
                def.name
            );
            let script = r.apply(&c);
            assert!(script.contains(expect), "{} {params}:\n{script}", def.name);
            assert_eq!(r.apply(&reworded(&c)), script, "{} {params}", def.name);
            let silent = Change {
                notes: Vec::new(),
                ..c.clone()
            };
            assert_eq!(r.apply(&silent), script, "{} {params}", def.name);
        }
    }

    #[test]
    fn field_names_round_trip() {
        for f in Field::ALL {
            assert_eq!(f.as_str().parse::<Field>(), Ok(*f));
            assert_eq!(
                serde_json::to_value(f).ok(),
                Some(serde_json::Value::String(f.as_str().into()))
            );
        }
        assert!("colour".parse::<Field>().is_err());
    }
}
