//! `file`: a regular file with content, mode and ownership.
//!
//! Probe output (`key=value` lines, see [`super::sh`]):
//! `type=absent|file|directory|symlink|other`, `parent=yes|no`, and for a regular file
//! `mode=644`, `uid=`, `owner=`, `gid=`, `group=`, `size=`, `sha256=<hex>`; plus
//! `content_b64=<base64>` only when the hash differs from the desired one and the file is at
//! most 256 KiB, so a plan can show a unified diff.
//!
//! Choices: a directory, symlink or special file at the path is an error (plumb does not
//! replace them with a file). A missing parent directory is *not* created: the plan notes it
//! (an earlier `directory` step of the same run may create it, and probes all run before any
//! apply), and the apply fails with "parent directory /x does not exist; add a directory step"
//! if it is still missing then. `state: absent` with `backup: true` moves the file to
//! `<path>.plumb-backup` instead of deleting it.
use std::sync::Arc;

mod probes;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};

use super::sh::{self, quote, Observed};
use super::{
    step, BuildError, Change, ChangeKind, ContentChange, Example, Facts, Field, ModuleDef,
    PathType, Presence, ProbeError, ProbeResult, RepoRead, Resolve, Resource, Runs,
};

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
    managed: Managed,
}

fn build(
    value: serde_json::Value,
    resolve: &mut dyn Resolve,
) -> Result<Box<dyn Resource>, BuildError> {
    sh::reject_nul(&value, &["/content"])?;
    let params: Params = super::params(value)?;
    if params.path.ends_with('/') || params.path.len() < 2 {
        return Err(BuildError::at(
            "/path",
            "must name a file (no trailing `/`)",
        ));
    }
    let given: Vec<&str> = [
        ("content", params.content.is_some()),
        ("template", params.template.is_some()),
        ("source", params.source.is_some()),
    ]
    .into_iter()
    .filter(|(_, set)| *set)
    .map(|(n, _)| n)
    .collect();
    if given.len() > 1 {
        return Err(BuildError::at(
            format!("/{}", given[1]),
            format!(
                "`{}` conflicts with `{}`: give exactly one of content, template or source",
                given[1], given[0]
            ),
        ));
    }
    let content = match (
        &params.state,
        &params.content,
        &params.template,
        &params.source,
    ) {
        (Presence::Absent, ..) => Arc::from(Vec::new()),
        (_, Some(c), _, _) => Arc::from(c.as_bytes()),
        (_, _, Some(t), _) => Arc::from(
            resolve
                .template(t)
                .map_err(|e| BuildError::at("/template", e))?
                .into_bytes(),
        ),
        (_, _, _, Some(s)) => resolve
            .file_shared(s)
            .map_err(|e| BuildError::at("/source", e))?,
        _ => {
            return Err(BuildError::at(
                "",
                "one of content, template or source is required when the file is present",
            ))
        }
    };
    let managed = Managed::new(
        &params.path,
        params.state,
        content,
        params.mode.as_deref(),
        params.owner.clone(),
        params.group.clone(),
        params.backup,
    );
    Ok(Box::new(File { params, managed }))
}

pub static DEF: ModuleDef = ModuleDef {
    name: "file",
    summary: "A regular file: content, template or source; mode; owner; group.",
    schema: super::schema_for::<Params>,
    build,
    refreshable: false,
    runs: Runs::Local { rooted: None },
    reads: &[RepoRead::Template("/template"), RepoRead::File("/source")],
    probe_keys: FILE_PROBE_KEYS,
    // An older state writes the older content, mode and owner back.
    reversibility: super::Reversibility::Reversible,
    prune: super::Prune::Absent(|p| super::absent_with(p, &["path"])),
    batch: None,
    probe_batch: Some(super::ProbeBatch {
        key: probes::key,
        probe: probes::probe,
        // Seven files print at most 7 x 350 KiB (the content of a file that differs, in base64).
        max: probes::GROUP,
    }),
    examples: &[
        Example {
            name: "content, mode, template, source, absent",
            setup: &[],
            steps: &[
                step(
                    r#"{"path": "{root}/it's $(weird) `name`.conf", "content": "hello\n", "mode": "0640"}"#,
                    ChangeKind::Create,
                ),
                step(
                    r#"{"path": "{root}/it's $(weird) `name`.conf", "content": "bye\n", "mode": "0600"}"#,
                    ChangeKind::Modify,
                ),
                step(
                    r#"{"path": "{root}/it's $(weird) `name`.conf", "template": "app.j2", "mode": "0644"}"#,
                    ChangeKind::Modify,
                ),
                step(
                    r#"{"path": "{root}/it's $(weird) `name`.conf", "source": "blob", "backup": false}"#,
                    ChangeKind::Modify,
                ),
                step(
                    r#"{"path": "{root}/it's $(weird) `name`.conf", "state": "absent"}"#,
                    ChangeKind::Remove,
                ),
            ],
        },
        Example {
            name: "a new file keeps no backup, a removed one does",
            setup: &[],
            steps: &[
                step(
                    r#"{"path": "{root}/app.conf", "content": "x"}"#,
                    ChangeKind::Create,
                ),
                step(
                    r#"{"path": "{root}/app.conf", "state": "absent", "backup": true}"#,
                    ChangeKind::Remove,
                ),
            ],
        },
    ],
};

/// The keys of [`Managed::probe`] (shared by `file`, `cron` and `sysctl`).
pub(crate) const FILE_PROBE_KEYS: &[&str] = &[
    "type",
    "parent",
    "mode",
    "uid",
    "owner",
    "gid",
    "group",
    "size",
    "sha256",
    "content_b64",
];

/// [`FILE_PROBE_KEYS`] followed by a module's own `extra` keys; `N` must be the sum of both
/// lengths (checked when the constant is evaluated, so a wrong `N` does not compile).
pub(crate) const fn file_probe_keys_and<const N: usize>(
    extra: &[&'static str],
) -> [&'static str; N] {
    assert!(N == FILE_PROBE_KEYS.len() + extra.len());
    let mut keys = [""; N];
    let mut i = 0;
    while i < N {
        keys[i] = if i < FILE_PROBE_KEYS.len() {
            FILE_PROBE_KEYS[i]
        } else {
            extra[i - FILE_PROBE_KEYS.len()]
        };
        i += 1;
    }
    keys
}

/// What a step on `path` with this `owner` and `group` touches: the path, and the user and
/// group it names (a change of their ids changes how the probe sees the path's owner).
pub(crate) fn owned(path: &str, owner: Option<&str>, group: Option<&str>) -> Vec<super::Touch> {
    let mut t = vec![super::Touch::path(path)];
    t.extend(owner.map(|u| super::Touch::User(u.to_string())));
    t.extend(group.map(|g| super::Touch::Group(g.to_string())));
    t
}

impl Resource for File {
    fn target(&self) -> String {
        self.params.path.clone()
    }
    fn touches(&self) -> super::Touches {
        super::Touches::only(owned(
            &self.params.path,
            self.params.owner.as_deref(),
            self.params.group.as_deref(),
        ))
    }
    fn desired(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "path": self.params.path,
            "state": self.params.state,
        });
        if self.params.state == Presence::Present {
            v["content"] = serde_json::json!({
                "sha256": self.managed.sha256,
                "size": self.managed.content.len(),
            });
            if let Some(t) = &self.params.template {
                v["template"] = t.clone().into();
            }
            if let Some(s) = &self.params.source {
                v["source"] = s.clone().into();
            }
            if let Some(m) = &self.managed.mode {
                v["mode"] = m.clone().into();
            }
            if let Some(o) = &self.params.owner {
                v["owner"] = o.clone().into();
            }
            if let Some(g) = &self.params.group {
                v["group"] = g.clone().into();
            }
        }
        v["backup"] = self.params.backup.into();
        v
    }
    fn probe(&self) -> String {
        self.managed.probe()
    }
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError> {
        self.managed.diff(&Observed::parse(observed)?)
    }
    fn apply(&self, change: &Change) -> String {
        self.managed.apply(change)
    }
    fn content(&self) -> Option<&[u8]> {
        self.managed.content()
    }
}

/// Largest file whose old content the probe returns for a diff.
pub const MAX_DIFF_BYTES: u64 = 256 * 1024;

/// A regular file whose whole content plumb manages, or that must be absent: shared by
/// `file`, `cron` and `sysctl`, the one place that picks the present or absent probe, diff,
/// apply and content.
#[derive(Debug, Clone)]
pub(crate) struct Managed {
    pub path: String,
    pub state: Presence,
    /// Shared with every other step and host that reads the same repo file.
    pub content: Arc<[u8]>,
    pub sha256: String,
    /// Normalised to four digits; `None`: keep the existing mode (0644 for new files).
    pub mode: Option<String>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub backup: bool,
}

impl Managed {
    pub fn new(
        path: &str,
        state: Presence,
        content: impl Into<Arc<[u8]>>,
        mode: Option<&str>,
        owner: Option<String>,
        group: Option<String>,
        backup: bool,
    ) -> Managed {
        let content: Arc<[u8]> = content.into();
        let sha256 = hex::encode(Sha256::digest(&content));
        Managed {
            path: path.to_string(),
            state,
            content,
            sha256,
            mode: mode.map(sh::norm_mode),
            owner,
            group,
            backup,
        }
    }

    pub fn probe(&self) -> String {
        match self.state {
            Presence::Present => self.probe_present(),
            Presence::Absent => probe_absent(&self.path),
        }
    }

    pub fn diff(&self, o: &Observed) -> Result<Change, ProbeError> {
        match self.state {
            Presence::Present => self.diff_present(o),
            Presence::Absent => diff_absent(&self.path, o),
        }
    }

    /// The script for `change`: nothing when in sync, the removal (with the backup when
    /// asked) when absent, else the write.
    pub fn apply(&self, change: &Change) -> String {
        match change.kind {
            ChangeKind::InSync => ":".into(),
            ChangeKind::Remove => apply_remove(&self.path, self.backup),
            ChangeKind::Create | ChangeKind::Modify => self.apply_write(change),
        }
    }

    /// The content to write: none when the file must be absent.
    pub fn content(&self) -> Option<&[u8]> {
        match self.state {
            Presence::Present => Some(&self.content),
            Presence::Absent => None,
        }
    }

    fn probe_present(&self) -> String {
        format!(
            r#"p={p}
{ty}
if [ -d {parent} ]; then echo parent=yes; else echo parent=no; fi
if [ -f "$p" ] && [ ! -L "$p" ]; then
{stat}
{open}
h=$(sha256sum < /dev/fd/3) || exit 1
h=${{h%% *}}
echo "sha256=$h"
if [ "$h" != {sha} ] && [ "$(stat -c %s -- "$p")" -le {max} ]; then
{content}
fi
fi"#,
            p = quote(&self.path),
            ty = sh::PROBE_TYPE,
            parent = quote(&sh::parent(&self.path)),
            stat = sh::PROBE_STAT,
            open = sh::OPEN_P,
            sha = self.sha256,
            max = MAX_DIFF_BYTES,
            content = sh::print_b64("content", "cat /dev/fd/3"),
        )
    }

    fn diff_present(&self, o: &Observed) -> Result<Change, ProbeError> {
        let ty = PathType::parse(o)?;
        let seen = Facts {
            path: Some(ty),
            ..Facts::default()
        };
        let new_hash = Some(format!("sha256:{}", self.sha256));
        match ty {
            PathType::Absent => {
                let mut c = Change::new(ChangeKind::Create).field(Field::Content, None, new_hash);
                c = c.field(
                    Field::Mode,
                    None,
                    Some(self.mode.clone().unwrap_or_else(|| "0644".into())),
                );
                if let Some(u) = &self.owner {
                    c = c.field(Field::Owner, None, Some(u.clone()));
                }
                if let Some(g) = &self.group {
                    c = c.field(Field::Group, None, Some(g.clone()));
                }
                c.content = Some(Box::new(ContentChange {
                    old: None,
                    new: Some(self.content.to_vec()),
                }));
                if o.get("parent") == Some("no") {
                    c = c.note(format!(
                        "parent directory {} does not exist yet: an earlier step must create it",
                        sh::parent(&self.path)
                    ));
                }
                Ok(c.observed(seen))
            }
            PathType::File => {
                let mut c = Change::new(ChangeKind::Modify);
                let hash = o.req("sha256")?;
                if hash != self.sha256 {
                    c = c.field(Field::Content, Some(format!("sha256:{hash}")), new_hash);
                    let old = o.bytes("content")?;
                    if old.is_none() {
                        c = c.note(format!(
                            "old content not shown: larger than {} KiB",
                            MAX_DIFF_BYTES / 1024
                        ));
                    }
                    c.content = Some(Box::new(ContentChange {
                        old,
                        new: Some(self.content.to_vec()),
                    }));
                }
                c = attr_fields(c, o, self.mode.as_deref(), &self.owner, &self.group)?;
                Ok(if c.fields.is_empty() {
                    Change::in_sync()
                } else {
                    c.observed(seen)
                })
            }
            other => Err(not_a_file(&self.path, other)),
        }
    }

    /// Writes the content to a file in a private directory beside the target, sets its
    /// attributes and renames it into place; or, when only attributes changed, fixes them on
    /// a hard link held in that private directory. Every step goes through
    /// [`sh::enter_parent`]: nothing at the path is followed, nothing above it can be swapped.
    fn apply_write(&self, change: &Change) -> String {
        let parent = sh::parent(&self.path);
        let enter = sh::enter_parent(
            &self.path,
            sh::Missing::Fail(&format!(
                "parent directory {parent} does not exist; add a directory step"
            )),
        );
        let hold = sh::hold_file(&format!(
            "{} changed since the probe: it is no longer a regular file",
            self.path
        ));
        if change.kind == ChangeKind::Modify && !change.changes_field(Field::Content) {
            let attrs = set_attrs(
                "o",
                self.mode.as_deref(),
                &self.owner,
                &self.group,
                Some(change),
            );
            return format!("{enter}{}{hold}{attrs}", sh::PRIVATE_DIR);
        }
        let notfile = sh::fail(&format!("{} exists and is not a regular file", self.path));
        format!(
            "{enter}if [ -L \"./$b\" ] || {{ [ -e \"./$b\" ] && [ ! -f \"./$b\" ]; }}; then {notfile}; fi\nif [ \"$plumb_dt\" = 1 ]; then\n{}else\n{}fi\n",
            self.write_in_place(),
            self.write_private(&hold),
        )
    }

    /// The write below a parent only root or the acting user can change (`plumb_dt`, see
    /// [`sh::enter_parent`]): nobody else can create, swap or link an entry there, so the
    /// file is written beside the target under a name of its own (`./$t`, created with
    /// `noclobber`: never through something already there) and renamed into place, with no
    /// private directory to make, check and remove.
    fn write_in_place(&self) -> String {
        let (umask, chmod) = creation_mode(self.mode.as_deref(), "\"./$t\"");
        let mut s = format!(
            r#"t=.plumb.$$.w
if [ -e "./$t" ] || [ -L "./$t" ]; then rm -f -- "./$t" || exit 1; fi
trap 'if [ -e "./$t" ] || [ -L "./$t" ]; then rm -f -- "./$t"; fi' EXIT
umask {umask}
set -C
{write} || exit 1
set +C
plumb_w=$(stat -c '%u:%g %U:%G' -- "./$t") || exit 1
plumb_wi=${{plumb_w%% *}}; plumb_wn=${{plumb_w#* }}
if [ -e "./$b" ] || [ -L "./$b" ]; then
[ -f "./$b" ] && [ ! -L "./$b" ] || plumb_fail {changed}
o_st=$(stat -c '%u:%g %a' -- "./$b") || exit 1
o_own=${{o_st% *}}; m=${{o_st#* }}
else
o_own=$plumb_wi; m=644
fi
"#,
            write = sh::write_content(&self.content, "\"./$t\""),
            changed = quote(&format!(
                "{} changed since the probe: it is no longer a regular file",
                self.path
            )),
        );
        s += &chown_new(&self.owner, &self.group, "\"./$t\"");
        s += &chmod;
        if self.backup {
            s += "if [ -e \"./$b\" ]; then ln -f -T -P -- \"./$b\" \"./$b.plumb-backup\" 2>/dev/null || { cp -p -- \"./$b\" \"./$t.bk\" && mv -f -T -- \"./$t.bk\" \"./$b.plumb-backup\"; } || exit 1; fi\n";
        }
        s += "mv -f -T -- \"./$t\" \"./$b\" || exit 1\n";
        s
    }

    /// The write through a private directory ([`sh::PRIVATE_DIR`]), where other users can
    /// change the parent: `f` is written there, the file it replaces is held as `o`.
    fn write_private(&self, hold: &str) -> String {
        let (umask, chmod) = creation_mode(self.mode.as_deref(), "f");
        let mut s = format!(
            r#"{private}umask {umask}
{write} || exit 1
if [ -e "../$b" ] || [ -L "../$b" ]; then
{hold}o_st=$(stat -c '%u:%g %a' o) || exit 1
o_own=${{o_st% *}}; m=${{o_st#* }}
else
o_own=$plumb_wi; m=644
fi
"#,
            private = sh::PRIVATE_DIR,
            write = sh::write_content(&self.content, "f"),
        );
        s += &chown_new(&self.owner, &self.group, "f");
        s += &chmod;
        if self.backup {
            s += "if [ -e o ]; then ln -f -T -P -- o \"../$b.plumb-backup\" 2>/dev/null || { cp -p -- o bk && mv -f -T -- bk \"../$b.plumb-backup\"; } || exit 1; fi\n";
        }
        s += "mv -f -T -- f \"../$b\" || exit 1\n";
        s
    }
}

/// How the new file `f` gets its mode: the `umask` it is created with, and the `chmod`
/// that follows its `chown` (which clears set-ID bits) when the umask cannot give the mode.
/// A wanted mode without execute or special bits is set at creation, by the umask alone;
/// without a wanted mode, `$m` (the replaced file's, or 644) is, unless it is 644.
fn creation_mode(mode: Option<&str>, at: &str) -> (String, String) {
    match mode.map(|m| (m, u32::from_str_radix(m, 8))) {
        Some((_, Ok(bits))) if bits & !0o666 == 0 => {
            (format!("{:04o}", 0o777 & !bits), String::new())
        }
        Some((m, _)) => (
            "022".into(),
            format!("chmod -- {} {at} || exit 1\n", quote(m)),
        ),
        None => (
            "022".into(),
            format!("[ \"$m\" = 644 ] || chmod -- \"$m\" {at} || exit 1\n"),
        ),
    }
}

/// After `f` is written in the private directory (owned as `plumb_wi`/`plumb_wn`, see
/// [`sh::PRIVATE_DIR`]): one `chown` giving it the wanted owner and group, else those of
/// the file it replaces (`$o_own`, or the private directory's for a new file); none when
/// it already has them (compared as the probe compares them: by number when the wanted
/// value is all digits, else by name).
fn chown_new(owner: &Option<String>, group: &Option<String>, at: &str) -> String {
    let part = |want: &Option<String>, cut: &str| -> (String, String) {
        match want {
            Some(w) if !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) => {
                let n = w.trim_start_matches('0');
                let n = if n.is_empty() { "0" } else { n };
                (format!("[ \"${{plumb_wi{cut}}}\" = {n} ]"), n.to_string())
            }
            Some(w) => (
                format!("[ \"${{plumb_wn{cut}}}\" = {} ]", quote(w)),
                quote(w),
            ),
            None => (
                format!("[ \"${{o_own{cut}}}\" = \"${{plumb_wi{cut}}}\" ]"),
                format!("\"${{o_own{cut}}}\""),
            ),
        }
    };
    let (same_u, u) = part(owner, "%%:*");
    let (same_g, g) = part(group, "#*:");
    format!("if ! {{ {same_u} && {same_g}; }}; then chown -h -- {u}:{g} {at} || exit 1; fi\n")
}

/// Commands that set owner, group and mode of the file or directory named by the shell
/// word `at` (a name in the private directory, or `.`): all that are wanted when `only` is
/// `None`, else those whose field `only` changes; owner and group in one `chown`. `chmod`
/// comes last, since `chown` may clear set-id bits. `at` is never a symbolic link (see
/// [`sh::hold_file`], [`sh::enter_target`]); `chown -h` says so again.
pub(crate) fn set_attrs(
    at: &str,
    mode: Option<&str>,
    owner: &Option<String>,
    group: &Option<String>,
    only: Option<&Change>,
) -> String {
    let wanted = |field: Field| only.is_none_or(|c| c.changes_field(field));
    let mut s = String::new();
    let u = owner.as_deref().filter(|_| wanted(Field::Owner));
    let g = group.as_deref().filter(|_| wanted(Field::Group));
    match (u, g) {
        (Some(u), Some(g)) => {
            s += &format!("chown -h -- {}:{} {at} || exit 1\n", quote(u), quote(g));
        }
        (Some(u), None) => s += &format!("chown -h -- {} {at} || exit 1\n", quote(u)),
        (None, Some(g)) => s += &format!("chgrp -h -- {} {at} || exit 1\n", quote(g)),
        (None, None) => {}
    }
    if let (Some(m), true) = (mode, wanted(Field::Mode) || wanted(Field::Owner)) {
        s += &format!("chmod -- {} {at} || exit 1\n", quote(m));
    }
    s
}

/// Adds `mode`, `owner` and `group` fields where the observed file differs.
pub(crate) fn attr_fields(
    mut c: Change,
    o: &Observed,
    mode: Option<&str>,
    owner: &Option<String>,
    group: &Option<String>,
) -> Result<Change, ProbeError> {
    if let Some(m) = mode {
        let seen = sh::norm_mode(o.req("mode")?);
        if seen != m {
            c = c.field(Field::Mode, Some(seen), Some(m.to_string()));
        }
    }
    if let Some(u) = owner {
        if let Some(seen) = differs(o, u, "uid", "owner")? {
            c = c.field(Field::Owner, Some(seen), Some(u.clone()));
        }
    }
    if let Some(g) = group {
        if let Some(seen) = differs(o, g, "gid", "group")? {
            c = c.field(Field::Group, Some(seen), Some(g.clone()));
        }
    }
    Ok(c)
}

/// Compares a wanted owner (name, or number when all digits) with the observed one;
/// returns the observed name when they differ.
fn differs(
    o: &Observed,
    want: &str,
    id_key: &str,
    name_key: &str,
) -> Result<Option<String>, ProbeError> {
    let id = o.req(id_key)?;
    let name = o.req(name_key)?;
    let same = if !want.is_empty() && want.bytes().all(|b| b.is_ascii_digit()) {
        want.trim_start_matches('0') == id.trim_start_matches('0')
    } else {
        want == name
    };
    Ok(if same {
        None
    } else if name == "UNKNOWN" {
        Some(id.to_string())
    } else {
        Some(name.to_string())
    })
}

fn not_a_file(path: &str, ty: PathType) -> ProbeError {
    ProbeError::new(match ty {
        PathType::Directory => format!("{path} is a directory: a file step will not replace it"),
        PathType::Symlink => format!(
            "{path} is a symbolic link: a file step will not replace it (remove it, or manage it with a symlink step)"
        ),
        PathType::Other => format!(
            "{path} is a special file (fifo, socket or device): a file step will not replace it"
        ),
        PathType::Absent | PathType::File => format!("unexpected type for {path}"),
    })
}

/// The probe of a file that must be absent: only its type.
fn probe_absent(path: &str) -> String {
    format!("p={}\n{}", quote(path), sh::PROBE_TYPE)
}

/// A file that must be absent: a regular file or a symlink is removed.
fn diff_absent(path: &str, o: &Observed) -> Result<Change, ProbeError> {
    match PathType::parse(o)? {
        PathType::Absent => Ok(Change::in_sync()),
        ty @ (PathType::File | PathType::Symlink) => Ok(Change::new(ChangeKind::Remove)
            .field(Field::State, Some("present".into()), Some("absent".into()))
            .observed(Facts {
                path: Some(ty),
                ..Facts::default()
            })),
        other => Err(not_a_file(path, other)),
    }
}

/// Removes a file (keeping it as `<path>.plumb-backup` when asked), through
/// [`sh::enter_parent`]: `rm` and `mv` act on the name, never through a link.
fn apply_remove(path: &str, backup: bool) -> String {
    let enter = sh::enter_parent(
        path,
        sh::Missing::Fail(&format!(
            "parent directory {} does not exist any more",
            sh::parent(path)
        )),
    );
    let guard = format!(
        "if [ -d \"./$b\" ] && [ ! -L \"./$b\" ]; then {}; fi",
        sh::fail(&format!(
            "{path} is a directory: a file step will not remove it"
        ))
    );
    let op = if backup {
        r#"if [ -f "./$b" ] && [ ! -L "./$b" ]; then mv -f -T -- "./$b" "./$b.plumb-backup" || exit 1; else rm -f -- "./$b" || exit 1; fi"#
    } else {
        r#"rm -f -- "./$b" || exit 1"#
    };
    format!("{enter}{guard}\n{op}\n")
}

#[cfg(test)]
mod tests {
    use super::super::testing::out;
    use super::*;

    struct NoRepo;
    impl Resolve for NoRepo {
        fn template(&mut self, path: &str) -> Result<String, String> {
            if path == "app.conf.j2" {
                Ok("rendered\n".into())
            } else {
                Err(format!("no template `templates/{path}`"))
            }
        }
        fn file(&mut self, path: &str) -> Result<Vec<u8>, String> {
            if path == "blob" {
                Ok(vec![0, 255, 10])
            } else {
                Err(format!("no file `files/{path}`"))
            }
        }
    }

    fn file(v: serde_json::Value) -> Box<dyn Resource> {
        match build(v, &mut NoRepo) {
            Ok(r) => r,
            Err(e) => panic!("build failed: {e}"),
        }
    }

    const HELLO_SHA: &str = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";

    #[test]
    fn build_checks_sources() {
        let e = build(
            serde_json::json!({"path": "/a", "content": "x", "template": "t"}),
            &mut NoRepo,
        )
        .unwrap_err();
        assert_eq!(e.pointer, "/template");
        let e = build(
            serde_json::json!({"path": "/a", "source": "s", "template": "t"}),
            &mut NoRepo,
        )
        .unwrap_err();
        assert_eq!(e.pointer, "/source");
        let e = build(serde_json::json!({"path": "/a"}), &mut NoRepo).unwrap_err();
        assert_eq!(e.pointer, "");
        let e = build(
            serde_json::json!({"path": "/a", "template": "nope"}),
            &mut NoRepo,
        )
        .unwrap_err();
        assert_eq!(e.pointer, "/template");
        assert!(e.message.contains("templates/nope"));
        let e = build(
            serde_json::json!({"path": "/a", "source": "nope"}),
            &mut NoRepo,
        )
        .unwrap_err();
        assert_eq!(e.pointer, "/source");
        let f = file(serde_json::json!({"path": "/a", "template": "app.conf.j2"}));
        assert_eq!(f.content(), Some(&b"rendered\n"[..]));
        let f = file(serde_json::json!({"path": "/a", "source": "blob"}));
        assert_eq!(f.content(), Some(&[0u8, 255, 10][..]));
        assert!(build(
            serde_json::json!({"path": "/a", "state": "absent"}),
            &mut NoRepo
        )
        .is_ok());
        let e = build(
            serde_json::json!({"path": "/a\u{0}", "content": "x\u{0}"}),
            &mut NoRepo,
        )
        .unwrap_err();
        assert_eq!(e.pointer, "/path");
    }

    #[test]
    fn desired_hides_content() {
        let f =
            file(serde_json::json!({"path": "/etc/app.conf", "content": "hello\n", "mode": "644"}));
        assert_eq!(f.target(), "/etc/app.conf");
        let d = f.desired();
        assert_eq!(d["content"]["sha256"], HELLO_SHA);
        assert_eq!(d["content"]["size"], 6);
        assert_eq!(d["mode"], "0644");
        assert!(!d.to_string().contains("hello"));
    }

    #[test]
    fn diff_absent_file_is_create() {
        let f = file(
            serde_json::json!({"path": "/etc/app.conf", "content": "hello\n", "owner": "root"}),
        );
        let c = f.diff(&out("type=absent\nparent=no\n")).unwrap();
        insta::assert_debug_snapshot!(c);
    }

    #[test]
    fn diff_modified_file_shows_old_content() {
        let f = file(
            serde_json::json!({"path": "/etc/app.conf", "content": "hello\n", "mode": "0600", "owner": "root", "group": "0"}),
        );
        let probe = format!(
            "type=file\nparent=yes\nmode=644\nuid=0\nowner=root\ngid=0\ngroup=root\nsize=4\nsha256=abc\ncontent_b64={}\n",
            sh::b64(b"old\n")
        );
        let c = f.diff(&out(&probe)).unwrap();
        assert_eq!(c.kind, ChangeKind::Modify);
        assert_eq!(
            c.content,
            Some(Box::new(ContentChange {
                old: Some(b"old\n".to_vec()),
                new: Some(b"hello\n".to_vec())
            }))
        );
        assert!(c.changes_field(Field::Mode));
        assert!(!c.changes_field(Field::Owner));
        assert!(!c.changes_field(Field::Group));
    }

    #[test]
    fn diff_in_sync() {
        let f = file(
            serde_json::json!({"path": "/etc/app.conf", "content": "hello\n", "mode": "644", "owner": "app"}),
        );
        let probe = format!(
            "type=file\nparent=yes\nmode=644\nuid=1000\nowner=app\ngid=0\ngroup=root\nsize=6\nsha256={HELLO_SHA}\n"
        );
        assert_eq!(f.diff(&out(&probe)).unwrap(), Change::in_sync());
    }

    #[test]
    fn diff_large_file_has_no_old_content() {
        let f = file(serde_json::json!({"path": "/a", "content": "hello\n"}));
        let c = f
            .diff(&out("type=file\nparent=yes\nmode=644\nuid=0\nowner=root\ngid=0\ngroup=root\nsize=999999\nsha256=abc\n"))
            .unwrap();
        assert_eq!(c.content.as_ref().and_then(|c| c.old.clone()), None);
        assert!(c.notes[0].contains("256 KiB"));
    }

    #[test]
    fn diff_errors() {
        let f = file(serde_json::json!({"path": "/etc", "content": "x"}));
        let e = f.diff(&out("type=directory\nparent=yes\n")).unwrap_err();
        assert!(e.message.contains("/etc is a directory"), "{e}");
        assert!(f.diff(&out("")).is_err());
        assert!(f.diff(&out("type=file\n")).is_err());
        assert!(f
            .diff(&out("type=file\nsha256=x\ncontent_b64=!!!\n"))
            .is_err());
        assert!(f
            .diff(&ProbeResult {
                status: 1,
                ..Default::default()
            })
            .is_err());
    }

    #[test]
    fn absent() {
        let f =
            file(serde_json::json!({"path": "/etc/app.conf", "state": "absent", "backup": false}));
        assert_eq!(f.diff(&out("type=absent\n")).unwrap(), Change::in_sync());
        let c = f.diff(&out("type=file\n")).unwrap();
        assert_eq!(c.kind, ChangeKind::Remove);
        insta::assert_snapshot!(f.apply(&c));
        assert!(f.diff(&out("type=directory\n")).is_err());
        assert_eq!(f.content(), None);
    }

    #[test]
    fn apply_scripts() {
        let f = file(
            serde_json::json!({"path": "/etc/it's.conf", "content": "a $(b) `c`\n", "mode": "0600", "owner": "app", "group": "app"}),
        );
        let c = f.diff(&out("type=absent\nparent=yes\n")).unwrap();
        insta::assert_snapshot!("apply_create", f.apply(&c));
        let attrs = Change::new(ChangeKind::Modify).field(
            Field::Mode,
            Some("0644".into()),
            Some("0600".into()),
        );
        insta::assert_snapshot!("apply_attrs", f.apply(&attrs));
    }

    /// Applies run for real: a plain mode is set at creation, one with execute bits by
    /// `chmod`; without a mode a new file is 0644 and a replaced one keeps its mode; binary
    /// content still travels as base64; below a set-group-ID directory the file is written
    /// (the private directory is 2700 there) and takes the directory's group.
    #[test]
    fn writes_set_or_keep_the_mode_and_work_below_a_set_group_id_directory() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().expect("tempdir");
        let g = dir.path().join("g");
        std::fs::create_dir(&g).expect("mkdir");
        std::fs::set_permissions(&g, std::fs::Permissions::from_mode(0o2775)).expect("chmod");
        let apply = |params: serde_json::Value| {
            let r = file(params);
            let c = r.diff(&run(&r.probe())).expect("probe parses");
            let (res, _) = super::super::testing::run_logging_argv(&r.apply(&c));
            assert_eq!(res.status, 0, "{}", String::from_utf8_lossy(&res.stderr));
            assert!(!r.diff(&run(&r.probe())).expect("parses").is_change());
        };
        let at = |name: &str| g.join(name).display().to_string();
        let mode = |name: &str| {
            std::fs::metadata(g.join(name))
                .expect("stat")
                .permissions()
                .mode()
                & 0o7777
        };
        apply(serde_json::json!({"path": at("plain"), "content": "x\n", "mode": "0640"}));
        assert_eq!(mode("plain"), 0o640);
        apply(serde_json::json!({"path": at("run"), "content": "x\n", "mode": "0750"}));
        assert_eq!(mode("run"), 0o750);
        apply(serde_json::json!({"path": at("new"), "content": "x\n"}));
        assert_eq!(mode("new"), 0o644);
        std::fs::set_permissions(g.join("new"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        apply(serde_json::json!({"path": at("new"), "source": "blob"}));
        assert_eq!(mode("new"), 0o600, "a replaced file keeps its mode");
        assert_eq!(std::fs::read(g.join("new")).expect("read"), [0, 255, 10]);
        let gid = std::fs::metadata(&g).expect("stat").gid();
        for name in ["plain", "run", "new"] {
            assert_eq!(std::fs::metadata(g.join(name)).expect("stat").gid(), gid);
        }
    }

    fn run(script: &str) -> ProbeResult {
        super::super::testing::run_logging_argv(script).0
    }
}
