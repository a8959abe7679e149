//! `symlink`: a symbolic link.
//!
//! Probe output: `type=absent|file|directory|symlink|other`, `parent=yes|no`, and for a
//! link `target_b64=<base64 of readlink>` (exact bytes, trailing newlines included).
//!
//! The link is created beside the path under a temporary name and renamed over it, so
//! retargeting is atomic. A missing parent directory is noted in the plan and fails the apply.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::sh::{self, quote, Observed};
use super::{
    step, BuildError, Change, ChangeKind, Example, Facts, Field, ModuleDef, PathType, Presence,
    ProbeError, ProbeResult, Resource, Runs,
};

/// A symbolic link at `path` pointing to `target`. An existing link to elsewhere is
/// replaced; an existing regular file or directory is an error unless `force: true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Absolute path of the link.
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
    /// What the link points to (required when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default)]
    pub state: Presence,
    /// Replace a regular file (not a directory) at `path`.
    #[serde(default)]
    pub force: bool,
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct Symlink {
    pub params: Params,
}

impl super::FromParams for Symlink {
    type Params = Params;
    fn from_params(params: Params) -> Result<Symlink, BuildError> {
        if params.path.ends_with('/') || params.path.len() < 2 {
            return Err(BuildError::at(
                "/path",
                "must name a link (no trailing `/`)",
            ));
        }
        if params.state == Presence::Present && params.target.as_deref().is_none_or(str::is_empty) {
            return Err(BuildError::at(
                "/target",
                "`target` is required when the link is present",
            ));
        }
        Ok(Symlink { params })
    }
}

pub static DEF: ModuleDef = ModuleDef::of::<Symlink>(
    "symlink",
    "A symbolic link.",
    Runs::Local { rooted: None },
    &["type", "parent", "target_b64"],
    &[
        Example {
            name: "create, retarget, remove",
            setup: &[("directory", r#"{"path": "{root}/real dir"}"#)],
            steps: &[
                step(
                    r#"{"path": "{root}/link", "target": "{root}/real dir"}"#,
                    ChangeKind::Create,
                ),
                step(
                    r#"{"path": "{root}/link", "target": "rel/$(x)\n"}"#,
                    ChangeKind::Modify,
                ),
                step(
                    r#"{"path": "{root}/link", "state": "absent"}"#,
                    ChangeKind::Remove,
                ),
            ],
        },
        Example {
            name: "force replaces a regular file",
            setup: &[("file", r#"{"path": "{root}/file", "content": "x"}"#)],
            steps: &[step(
                r#"{"path": "{root}/file", "target": "/", "force": true}"#,
                ChangeKind::Modify,
            )],
        },
    ],
)
.reversibility(super::Reversibility::Reversible)
.prune(super::Prune::Absent(|p| super::absent_with(p, &["path"])));

impl Symlink {
    fn want(&self) -> &str {
        self.params.target.as_deref().unwrap_or_default()
    }
    fn refuse(&self, ty: PathType) -> ProbeError {
        let path = &self.params.path;
        ProbeError::new(match ty {
            PathType::Directory => {
                format!("{path} is a directory: a symlink step will not replace it")
            }
            PathType::File => {
                format!("{path} is a regular file: set `force: true` to replace it with a link")
            }
            PathType::Other => {
                format!("{path} is a special file: a symlink step will not replace it")
            }
            PathType::Absent | PathType::Symlink => format!("unexpected type for {path}"),
        })
    }
}

impl Resource for Symlink {
    fn target(&self) -> String {
        self.params.path.clone()
    }
    fn touches(&self) -> super::Touches {
        let mut t = vec![super::Touch::path(&self.params.path)];
        // The link's target, relative to the link's directory when it is relative.
        if let Some(target) = &self.params.target {
            t.push(super::Touch::path(&if target.starts_with('/') {
                target.clone()
            } else {
                format!("{}/../{target}", self.params.path)
            }));
        }
        super::Touches::Only(t)
    }
    fn desired(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }
    fn probe(&self) -> String {
        format!(
            r#"p={}
{}
if [ -d {} ]; then echo parent=yes; else echo parent=no; fi
if [ -L "$p" ]; then
t=$(readlink -- "$p" && echo x) || exit 1
t=${{t%x}}
t=${{t%?}}
{}
fi"#,
            quote(&self.params.path),
            sh::PROBE_TYPE,
            quote(&sh::parent(&self.params.path)),
            sh::print_var_b64("target", r#""$t""#),
        )
    }
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError> {
        let o = Observed::parse(observed)?;
        let ty = PathType::parse(&o)?;
        let seen = Facts {
            path: Some(ty),
            ..Facts::default()
        };
        let want = Some(self.want().to_string());
        let c = match (self.params.state, ty) {
            (Presence::Present, PathType::Absent) => {
                let mut c = Change::new(ChangeKind::Create).field(Field::Target, None, want);
                if o.get("parent") == Some("no") {
                    c = c.note(format!(
                        "parent directory {} does not exist yet: an earlier step must create it",
                        sh::parent(&self.params.path)
                    ));
                }
                Ok(c)
            }
            (Presence::Present, PathType::Symlink) => {
                let seen = o
                    .text("target")?
                    .ok_or_else(|| ProbeError::new("probe output lacks `target_b64`"))?;
                Ok(if seen == self.want() {
                    Change::in_sync()
                } else {
                    Change::new(ChangeKind::Modify).field(Field::Target, Some(seen), want)
                })
            }
            (Presence::Present, PathType::File) if self.params.force => {
                Ok(Change::new(ChangeKind::Modify)
                    .field(Field::Type, Some("file".into()), Some("symlink".into()))
                    .field(Field::Target, None, want)
                    .note("the regular file at the path will be replaced (force)"))
            }
            (Presence::Absent, PathType::Absent) => Ok(Change::in_sync()),
            (Presence::Absent, PathType::Symlink) => {
                let seen = o.text("target")?;
                Ok(Change::new(ChangeKind::Remove).field(Field::Target, seen, None))
            }
            (Presence::Absent, PathType::File) if self.params.force => {
                Ok(Change::new(ChangeKind::Remove)
                    .field(Field::Type, Some("file".into()), None)
                    .note("the regular file at the path will be removed (force)"))
            }
            (_, other) => Err(self.refuse(other)),
        }?;
        Ok(if c.is_change() { c.observed(seen) } else { c })
    }
    fn apply(&self, change: &Change) -> String {
        let path = &self.params.path;
        let parent = sh::parent(path);
        let missing = format!("parent directory {parent} does not exist; add a directory step");
        let enter = sh::enter_parent(path, sh::Missing::Fail(&missing));
        let no_dir = format!(
            "if [ -d \"./$b\" ] && [ ! -L \"./$b\" ]; then {}; fi\n",
            sh::fail(&format!(
                "{path} is a directory: a symlink step will not replace it"
            ))
        );
        // `force` replaces the regular file the probe saw, nothing that appeared since.
        let no_file = if self.params.force && change.observed.path == Some(PathType::File) {
            String::new()
        } else {
            format!(
                "if [ -e \"./$b\" ] && [ ! -L \"./$b\" ]; then {}; fi\n",
                sh::fail(&format!(
                    "{path} exists and is not a symlink (set `force: true`)"
                ))
            )
        };
        match change.kind {
            ChangeKind::InSync => ":".into(),
            ChangeKind::Remove => format!("{enter}{no_dir}{no_file}rm -f -- \"./$b\" || exit 1\n"),
            ChangeKind::Create | ChangeKind::Modify => format!(
                "{enter}{no_dir}{no_file}{private}ln -s -- {target} l || exit 1\nmv -f -T -- l \"../$b\" || exit 1\n",
                private = sh::PRIVATE_DIR,
                target = quote(self.want()),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn link(v: serde_json::Value) -> Box<dyn Resource> {
        built(DEF.build, v)
    }

    #[test]
    fn build_requires_target() {
        let e = (DEF.build)(serde_json::json!({"path": "/a"}), &mut NoRepo).unwrap_err();
        assert_eq!(e.pointer, "/target");
        assert!((DEF.build)(
            serde_json::json!({"path": "/a", "state": "absent"}),
            &mut NoRepo
        )
        .is_ok());
    }

    #[test]
    fn diffs() {
        let l = link(
            serde_json::json!({"path": "/etc/nginx/sites-enabled/app", "target": "../sites-available/app"}),
        );
        let c = l.diff(&out("type=absent\nparent=yes\n")).unwrap();
        assert_eq!(c.kind, ChangeKind::Create);
        insta::assert_snapshot!("symlink_create", l.apply(&c));
        let same = format!(
            "type=symlink\nparent=yes\ntarget_b64={}\n",
            sh::b64(b"../sites-available/app")
        );
        assert_eq!(l.diff(&out(&same)).unwrap(), Change::in_sync());
        let other = format!(
            "type=symlink\nparent=yes\ntarget_b64={}\n",
            sh::b64(b"/elsewhere\n")
        );
        let c = l.diff(&out(&other)).unwrap();
        assert_eq!(c.fields[0].from.as_deref(), Some("/elsewhere\n"));
        assert!(diff_error(&*l, "type=file\nparent=yes\n").contains("force"));
        assert!(l.diff(&out("type=directory\nparent=yes\n")).is_err());
        assert!(l.diff(&out("type=symlink\nparent=yes\n")).is_err());
        let forced = link(serde_json::json!({"path": "/a", "target": "/b", "force": true}));
        assert_eq!(
            forced.diff(&out("type=file\nparent=yes\n")).unwrap().kind,
            ChangeKind::Modify
        );
        assert!(forced.diff(&out("type=directory\nparent=yes\n")).is_err());
    }

    #[test]
    fn absent() {
        let l = link(serde_json::json!({"path": "/a", "state": "absent"}));
        assert_eq!(l.diff(&out("type=absent\n")).unwrap(), Change::in_sync());
        let c = l
            .diff(&out(&format!(
                "type=symlink\ntarget_b64={}\n",
                sh::b64(b"/b")
            )))
            .unwrap();
        assert_eq!(c.kind, ChangeKind::Remove);
        assert!(l.apply(&c).contains("rm -f -- \"./$b\""));
        assert!(l.diff(&out("type=file\n")).is_err());
    }
}
