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

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};

use super::sh::{self, quote, Observed};
use super::{
    BuildError, Change, ChangeKind, ContentChange, ModuleDef, Presence, ProbeError, ProbeResult,
    Resolve, Resource,
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
        content,
        params.mode.as_deref(),
        params.owner.clone(),
        params.group.clone(),
        params.backup,
    );
    Ok(Box::new(File { params, managed }))
}

pub const DEF: ModuleDef = ModuleDef {
    name: "file",
    summary: "A regular file: content, template or source; mode; owner; group.",
    schema: super::schema_for::<Params>,
    build,
    refreshable: false,
};

impl Resource for File {
    fn target(&self) -> String {
        self.params.path.clone()
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
        match self.params.state {
            Presence::Present => self.managed.probe(),
            Presence::Absent => probe_absent(&self.params.path),
        }
    }
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError> {
        let o = Observed::parse(observed)?;
        match self.params.state {
            Presence::Present => self.managed.diff(&o),
            Presence::Absent => diff_absent(&self.params.path, &o),
        }
    }
    fn apply(&self, change: &Change) -> String {
        match change.kind {
            ChangeKind::InSync => ":".to_string(),
            ChangeKind::Remove => apply_remove(&self.params.path, self.params.backup),
            ChangeKind::Create | ChangeKind::Modify => self.managed.apply(change),
        }
    }
    fn content(&self) -> Option<&[u8]> {
        match self.params.state {
            Presence::Present => Some(&*self.managed.content),
            Presence::Absent => None,
        }
    }
}

/// Largest file whose old content the probe returns for a diff.
pub const MAX_DIFF_BYTES: u64 = 256 * 1024;

/// A regular file whose whole content plumb manages: shared by `file`, `cron` and `sysctl`.
#[derive(Debug, Clone)]
pub(crate) struct Managed {
    pub path: String,
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
            content,
            sha256,
            mode: mode.map(sh::norm_mode),
            owner,
            group,
            backup,
        }
    }

    pub fn probe(&self) -> String {
        format!(
            r#"p={p}
{ty}
if [ -d {parent} ]; then echo parent=yes; else echo parent=no; fi
if [ -f "$p" ] && [ ! -L "$p" ]; then
{stat}
h=$(sha256sum < "$p") || exit 1
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
            sha = self.sha256,
            max = MAX_DIFF_BYTES,
            content = sh::print_b64("content", r#"cat -- "$p""#),
        )
    }

    pub fn diff(&self, o: &Observed) -> Result<Change, ProbeError> {
        let ty = o.req("type")?;
        let new_hash = Some(format!("sha256:{}", self.sha256));
        match ty {
            "absent" => {
                let mut c = Change::new(ChangeKind::Create).field("content", None, new_hash);
                c = c.field(
                    "mode",
                    None,
                    Some(self.mode.clone().unwrap_or_else(|| "0644".into())),
                );
                if let Some(u) = &self.owner {
                    c = c.field("owner", None, Some(u.clone()));
                }
                if let Some(g) = &self.group {
                    c = c.field("group", None, Some(g.clone()));
                }
                c.content = Some(ContentChange {
                    old: None,
                    new: Some(self.content.to_vec()),
                });
                if o.get("parent") == Some("no") {
                    c = c.note(format!(
                        "parent directory {} does not exist yet: an earlier step must create it",
                        sh::parent(&self.path)
                    ));
                }
                Ok(c)
            }
            "file" => {
                let mut c = Change::new(ChangeKind::Modify);
                let hash = o.req("sha256")?;
                if hash != self.sha256 {
                    c = c.field("content", Some(format!("sha256:{hash}")), new_hash);
                    let old = o.bytes("content")?;
                    if old.is_none() {
                        c = c.note(format!(
                            "old content not shown: larger than {} KiB",
                            MAX_DIFF_BYTES / 1024
                        ));
                    }
                    c.content = Some(ContentChange {
                        old,
                        new: Some(self.content.to_vec()),
                    });
                }
                c = attr_fields(c, o, self.mode.as_deref(), &self.owner, &self.group)?;
                Ok(if c.fields.is_empty() {
                    Change::in_sync()
                } else {
                    c
                })
            }
            other => Err(not_a_file(&self.path, other)),
        }
    }

    /// Writes the content to a temporary file beside the target, sets its attributes and
    /// renames it into place; or, when only attributes changed, fixes them in place.
    pub fn apply(&self, change: &Change) -> String {
        let p = quote(&self.path);
        if change.kind == ChangeKind::Modify && !change.changes_field("content") {
            return format!(
                "p={p}\n{}",
                set_attrs(
                    "p",
                    self.mode.as_deref(),
                    &self.owner,
                    &self.group,
                    Some(change)
                )
            );
        }
        let parent = sh::parent(&self.path);
        let clean = r#"|| { rm -f -- "$t"; exit 1; }"#;
        let mut s = format!(
            r#"p={p}
d={d}
[ -d "$d" ] || {missing}
if [ -L "$p" ] || {{ [ -e "$p" ] && [ ! -f "$p" ]; }}; then {notfile}; fi
t=$(mktemp "$d/.plumb.XXXXXX") || exit 1
{write} {clean}
if [ -f "$p" ]; then
  o=$(stat -c %u:%g -- "$p") && m=$(stat -c %a -- "$p") {clean}
  chown -- "$o" "$t" {clean}
else
  m=0644
fi
"#,
            d = quote(&parent),
            missing = sh::fail(&format!(
                "parent directory {parent} does not exist; add a directory step"
            )),
            notfile = sh::fail(&format!("{} exists and is not a regular file", self.path)),
            write = sh::write_bytes(&self.content, r#""$t""#),
        );
        if let Some(u) = &self.owner {
            s += &format!("chown -- {} \"$t\" {clean}\n", quote(u));
        }
        if let Some(g) = &self.group {
            s += &format!("chgrp -- {} \"$t\" {clean}\n", quote(g));
        }
        match &self.mode {
            Some(m) => s += &format!("chmod -- {m} \"$t\" {clean}\n"),
            None => s += &format!("chmod -- \"$m\" \"$t\" {clean}\n"),
        }
        if self.backup {
            s += &format!(
                "if [ -f \"$p\" ]; then ln -f -- \"$p\" \"$p.plumb-backup\" 2>/dev/null || cp -p -- \"$p\" \"$p.plumb-backup\" {clean}; fi\n"
            );
        }
        s += &format!("mv -f -- \"$t\" \"$p\" {clean}\n");
        s
    }
}

/// Commands that set owner, group and mode of the path in the shell variable `var`: all that
/// are wanted when `only` is `None`, else those whose field `only` changes. `chmod` comes
/// last, since `chown` may clear set-id bits.
pub(crate) fn set_attrs(
    var: &str,
    mode: Option<&str>,
    owner: &Option<String>,
    group: &Option<String>,
    only: Option<&Change>,
) -> String {
    let wanted = |field: &str| only.is_none_or(|c| c.changes_field(field));
    let mut s = String::new();
    if let (Some(u), true) = (owner, wanted("owner")) {
        s += &format!("chown -- {} \"${var}\" || exit 1\n", quote(u));
    }
    if let (Some(g), true) = (group, wanted("group")) {
        s += &format!("chgrp -- {} \"${var}\" || exit 1\n", quote(g));
    }
    if let (Some(m), true) = (mode, wanted("mode") || wanted("owner")) {
        s += &format!("chmod -- {} \"${var}\" || exit 1\n", quote(m));
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
            c = c.field("mode", Some(seen), Some(m.to_string()));
        }
    }
    if let Some(u) = owner {
        if let Some(seen) = differs(o, u, "uid", "owner")? {
            c = c.field("owner", Some(seen), Some(u.clone()));
        }
    }
    if let Some(g) = group {
        if let Some(seen) = differs(o, g, "gid", "group")? {
            c = c.field("group", Some(seen), Some(g.clone()));
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

fn not_a_file(path: &str, ty: &str) -> ProbeError {
    match ty {
        "directory" => ProbeError::new(format!(
            "{path} is a directory: a file step will not replace it"
        )),
        "symlink" => ProbeError::new(format!(
            "{path} is a symbolic link: a file step will not replace it (remove it, or manage it with a symlink step)"
        )),
        "other" => ProbeError::new(format!(
            "{path} is a special file (fifo, socket or device): a file step will not replace it"
        )),
        t => ProbeError::new(format!("unexpected type `{t}` for {path}")),
    }
}

/// The probe of a file that must be absent: only its type.
pub(crate) fn probe_absent(path: &str) -> String {
    format!("p={}\n{}", quote(path), sh::PROBE_TYPE)
}

/// A file that must be absent: a regular file or a symlink is removed.
pub(crate) fn diff_absent(path: &str, o: &Observed) -> Result<Change, ProbeError> {
    match o.req("type")? {
        "absent" => Ok(Change::in_sync()),
        "file" | "symlink" => Ok(Change::new(ChangeKind::Remove).field(
            "state",
            Some("present".into()),
            Some("absent".into()),
        )),
        other => Err(not_a_file(path, other)),
    }
}

/// Removes a file (keeping it as `<path>.plumb-backup` when asked).
pub(crate) fn apply_remove(path: &str, backup: bool) -> String {
    let guard = format!(
        "if [ -d \"$p\" ] && [ ! -L \"$p\" ]; then {}; fi",
        sh::fail(&format!(
            "{path} is a directory: a file step will not remove it"
        ))
    );
    let op = if backup {
        r#"if [ -f "$p" ] && [ ! -L "$p" ]; then mv -f -- "$p" "$p.plumb-backup" || exit 1; else rm -f -- "$p" || exit 1; fi"#
    } else {
        r#"rm -f -- "$p" || exit 1"#
    };
    format!("p={}\n{guard}\n{op}\n", quote(path))
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
            Some(ContentChange {
                old: Some(b"old\n".to_vec()),
                new: Some(b"hello\n".to_vec())
            })
        );
        assert!(c.changes_field("mode"));
        assert!(!c.changes_field("owner"));
        assert!(!c.changes_field("group"));
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
        let attrs =
            Change::new(ChangeKind::Modify).field("mode", Some("0644".into()), Some("0600".into()));
        insta::assert_snapshot!("apply_attrs", f.apply(&attrs));
    }
}
