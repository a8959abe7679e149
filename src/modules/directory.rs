//! `directory`: a directory with mode and ownership.
//!
//! Probe output: `type=absent|file|directory|symlink|other`; for a directory also `mode=`,
//! `uid=`, `owner=`, `gid=`, `group=`, `size=`, and with `state: absent` `empty=yes|no`.
//!
//! A file, symlink (even to a directory) or special file at the path is an error: plumb
//! does not replace it. Missing parents are created (`mkdir -p`).
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod probes;

use super::file::{attr_fields, set_attrs};
use super::sh::{self, quote, Observed};
use super::{
    step, BuildError, Change, ChangeKind, Example, Facts, Field, ModuleDef, PathType, Presence,
    ProbeError, ProbeResult, Resource, Runs,
};

/// A directory. Parents are created as needed. `state: absent` removes it only when empty
/// unless `recurse: true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Absolute path of the directory.
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
    #[serde(default)]
    pub state: Presence,
    /// Octal mode as a string, e.g. "0755".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^0?[0-7]{3,4}$"))]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// With `state: absent`, remove the directory and everything in it.
    #[serde(default)]
    pub recurse: bool,
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct Directory {
    pub params: Params,
    mode: Option<String>,
}

impl super::FromParams for Directory {
    type Params = Params;
    fn from_params(params: Params) -> Result<Directory, BuildError> {
        if params.path.trim_end_matches('/').is_empty() {
            return Err(BuildError::at("/path", "plumb will not manage `/`"));
        }
        let mode = params.mode.as_deref().map(sh::norm_mode);
        Ok(Directory { params, mode })
    }
}

pub static DEF: ModuleDef = ModuleDef::of::<Directory>(
    "directory",
    "A directory: mode, owner, group.",
    Runs::Local { rooted: None },
    &[
        "type", "mode", "uid", "owner", "gid", "group", "size", "empty",
    ],
    &[
        Example {
            name: "parents created, mode changed, removed when empty",
            setup: &[],
            steps: &[
                step(
                    r#"{"path": "{root}/a b/c'd", "mode": "0750"}"#,
                    ChangeKind::Create,
                ),
                step(
                    r#"{"path": "{root}/a b/c'd", "mode": "2755"}"#,
                    ChangeKind::Modify,
                ),
                step(
                    r#"{"path": "{root}/a b/c'd", "state": "absent"}"#,
                    ChangeKind::Remove,
                ),
            ],
        },
        Example {
            name: "recursive removal",
            setup: &[
                ("directory", r#"{"path": "{root}/full"}"#),
                ("file", r#"{"path": "{root}/full/inside", "content": "x"}"#),
            ],
            steps: &[step(
                r#"{"path": "{root}/full", "state": "absent", "recurse": true}"#,
                ChangeKind::Remove,
            )],
        },
    ],
)
.reversibility(super::Reversibility::Some(irreversible))
.prune(super::Prune::Absent(|p| super::absent_with(p, &["path"])))
.probe_batch(super::ProbeBatch {
    key: probes::key,
    probe: probes::probe,
    // About 120 bytes printed per directory.
    max: 2000,
});

/// Removing a directory loses what was in it: an older state recreates it empty.
fn irreversible(change: &Change) -> Option<&'static str> {
    (change.kind == ChangeKind::Remove)
        .then_some("directory removal (its contents are not restored)")
}

impl Directory {
    fn not_a_directory(&self, ty: PathType) -> ProbeError {
        ProbeError::new(match ty {
            PathType::File => format!(
                "{} is a regular file, not a directory: plumb will not replace it",
                self.params.path
            ),
            PathType::Symlink => format!(
                "{} is a symbolic link, not a directory: plumb will not replace it",
                self.params.path
            ),
            PathType::Other => format!(
                "{} is a special file, not a directory: plumb will not replace it",
                self.params.path
            ),
            PathType::Absent | PathType::Directory => {
                format!("unexpected type for {}", self.params.path)
            }
        })
    }
}

impl Resource for Directory {
    fn target(&self) -> String {
        self.params.path.clone()
    }
    fn touches(&self) -> super::Touches {
        super::Touches::only(super::file::owned(
            &self.params.path,
            self.params.owner.as_deref(),
            self.params.group.as_deref(),
        ))
    }
    fn desired(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.params).unwrap_or_default();
        if let Some(m) = &self.mode {
            v["mode"] = m.clone().into();
        }
        v
    }
    fn probe(&self) -> String {
        // Whether it is empty matters only to a removal: a present directory is never listed
        // (a directory of 200,000 entries costs a probe nothing), and a removal's probe
        // stops at the first entry (`find -empty` on the directory alone, not `ls -A`).
        let empty = match self.params.state {
            Presence::Present => "",
            Presence::Absent => {
                "\ne=$(find \"$p\" -maxdepth 0 -empty) || exit 1\n\
                 if [ -n \"$e\" ]; then echo empty=yes; else echo empty=no; fi"
            }
        };
        format!(
            r#"p={}
{}
if [ -d "$p" ] && [ ! -L "$p" ]; then
{}{empty}
fi"#,
            quote(&self.params.path),
            sh::PROBE_TYPE,
            sh::PROBE_STAT
        )
    }
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError> {
        let o = Observed::parse(observed)?;
        let ty = PathType::parse(&o)?;
        let seen = Facts {
            path: Some(ty),
            ..Facts::default()
        };
        match (self.params.state, ty) {
            (Presence::Present, PathType::Absent) => {
                let mut c = Change::new(ChangeKind::Create).field(
                    Field::Type,
                    None,
                    Some("directory".into()),
                );
                for (f, v) in [
                    (Field::Owner, &self.params.owner),
                    (Field::Group, &self.params.group),
                    (Field::Mode, &self.mode),
                ] {
                    if let Some(v) = v {
                        c = c.field(f, None, Some(v.clone()));
                    }
                }
                Ok(c.observed(seen))
            }
            (Presence::Present, PathType::Directory) => {
                let c = attr_fields(
                    Change::new(ChangeKind::Modify),
                    &o,
                    self.mode.as_deref(),
                    &self.params.owner,
                    &self.params.group,
                )?;
                Ok(if c.fields.is_empty() {
                    Change::in_sync()
                } else {
                    c.observed(seen)
                })
            }
            (Presence::Absent, PathType::Absent) => Ok(Change::in_sync()),
            (Presence::Absent, PathType::Directory) => {
                if !self.params.recurse && o.req("empty")? != "yes" {
                    return Err(ProbeError::new(format!(
                        "{} is not empty: set `recurse: true` to remove it with its content",
                        self.params.path
                    )));
                }
                let mut c = Change::new(ChangeKind::Remove).field(
                    Field::Type,
                    Some("directory".into()),
                    None,
                );
                if self.params.recurse && o.get("empty") == Some("no") {
                    c = c.note("the directory and everything in it will be removed");
                }
                Ok(c.observed(seen))
            }
            (_, other) => Err(self.not_a_directory(other)),
        }
    }
    fn apply(&self, change: &Change) -> String {
        let path = &self.params.path;
        let missing = format!(
            "parent directory {} does not exist any more",
            sh::parent(path)
        );
        let enter = sh::enter_parent(
            path,
            match change.kind {
                ChangeKind::Create => sh::Missing::Create,
                _ => sh::Missing::Fail(&missing),
            },
        );
        let guard = format!(
            "if [ -L \"./$b\" ] || {{ [ -e \"./$b\" ] && [ ! -d \"./$b\" ]; }}; then {}; fi\n",
            sh::fail(&format!("{path} exists and is not a directory"))
        );
        let inside = sh::enter_target(&format!(
            "{path} changed since the probe: it is no longer a directory"
        ));
        let attrs = |only| {
            set_attrs(
                ".",
                self.mode.as_deref(),
                &self.params.owner,
                &self.params.group,
                only,
            )
        };
        match change.kind {
            ChangeKind::InSync => ":".into(),
            ChangeKind::Create => self.create(&enter, &guard, &inside),
            ChangeKind::Modify => format!("{enter}{guard}{inside}{}", attrs(Some(change))),
            ChangeKind::Remove if self.params.recurse => {
                format!("{enter}{guard}rm -rf -- \"./$b\" || exit 1\n")
            }
            ChangeKind::Remove => format!("{enter}{guard}rmdir -- \"./$b\" || exit 1\n"),
        }
    }
}

impl Directory {
    /// Creates the directory (unless it appeared since the probe), enters it, gives it its
    /// owner and group in one `chown`, and its mode: a mode without special bits is the
    /// one `mkdir` creates it with (by the umask: one `mkdir(2)`, nothing done by name
    /// afterwards), so `chmod` runs only for a directory that was already there or a mode
    /// the umask cannot give. `chown` leaves a directory's mode bits alone.
    fn create(&self, enter: &str, guard: &str, inside: &str) -> String {
        let p = &self.params;
        let plain = self
            .mode
            .as_deref()
            .and_then(|m| u32::from_str_radix(m, 8).ok())
            .filter(|bits| bits & !0o777 == 0);
        let mkdir = match plain {
            Some(bits) => format!("umask {:04o}; mkdir -- \"./$b\"", 0o777 & !bits),
            None => "mkdir -- \"./$b\"".into(),
        };
        let mut s = format!(
            "{enter}{guard}plumb_new=\nif [ ! -d \"./$b\" ]; then {mkdir} || exit 1; plumb_new=1; fi\n{inside}{}",
            set_attrs(".", None, &p.owner, &p.group, None)
        );
        if let Some(m) = self.mode.as_deref() {
            let unless = if plain.is_some() {
                "[ -n \"$plumb_new\" ] || "
            } else {
                ""
            };
            s += &format!("{unless}chmod -- {} . || exit 1\n", quote(m));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn dir(v: serde_json::Value) -> Box<dyn Resource> {
        built(DEF.build, v)
    }

    const STAT: &str = "mode=755\nuid=0\nowner=root\ngid=0\ngroup=root\nsize=4096\n";

    #[test]
    fn create_and_modify() {
        let d = dir(serde_json::json!({"path": "/srv/app", "mode": "750", "owner": "app"}));
        let c = d.diff(&out("type=absent\n")).unwrap();
        assert_eq!(c.kind, ChangeKind::Create);
        insta::assert_snapshot!("directory_create", d.apply(&c));
        let c = d
            .diff(&out(&format!("type=directory\n{STAT}empty=no\n")))
            .unwrap();
        insta::assert_debug_snapshot!("directory_modify", c);
        insta::assert_snapshot!("directory_modify_apply", d.apply(&c));
        let c = d
            .diff(&out(
                "type=directory\nmode=750\nuid=1000\nowner=app\ngid=0\ngroup=root\nempty=no\n",
            ))
            .unwrap();
        assert_eq!(c, Change::in_sync());
    }

    /// A present directory is never listed: only a removal needs to know it is empty, and
    /// it asks `find -empty` (which stops at the first entry) instead of listing it all.
    #[test]
    fn only_a_removal_looks_into_the_directory() {
        let present = dir(serde_json::json!({"path": "/srv/app"}));
        assert!(!present.probe().contains("ls "), "{}", present.probe());
        assert!(!present.probe().contains("find "), "{}", present.probe());
        let absent = dir(serde_json::json!({"path": "/srv/app", "state": "absent"}));
        assert!(
            absent.probe().contains("-maxdepth 0 -empty"),
            "{}",
            absent.probe()
        );
        assert!(!absent.probe().contains("ls "), "{}", absent.probe());
    }

    /// The removal's probe tells an empty directory from one with only a hidden entry, and
    /// a path with spaces and quotes is one argument.
    #[test]
    fn a_removal_probe_sees_hidden_entries() {
        let root = tempfile::tempdir().expect("tempdir");
        let d = root.path().join("it's a dir");
        std::fs::create_dir(&d).expect("mkdir");
        let r = dir(serde_json::json!({"path": d.display().to_string(), "state": "absent"}));
        let (probe, _) = run_logging_argv(&r.probe());
        assert!(String::from_utf8_lossy(&probe.stdout).contains("empty=yes\n"));
        std::fs::write(d.join(".hidden"), b"").expect("write");
        let (probe, _) = run_logging_argv(&r.probe());
        assert!(String::from_utf8_lossy(&probe.stdout).contains("empty=no\n"));
    }

    /// A plain mode is the one `mkdir` creates the directory with; a set-group-ID mode, and
    /// a directory that was already there when the apply ran, get theirs from `chmod`.
    #[test]
    fn the_mode_is_set_at_creation_or_by_chmod() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("tempdir");
        let at = |name: &str| root.path().join(name);
        let apply = |name: &str, mode: &str, change: ChangeKind| {
            let p = at(name).display().to_string();
            let r = dir(serde_json::json!({"path": p, "mode": mode}));
            let (res, _) = run_logging_argv(&r.apply(&Change::new(change)));
            assert_eq!(res.status, 0, "{}", String::from_utf8_lossy(&res.stderr));
            std::fs::metadata(at(name))
                .expect("stat")
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(apply("plain", "0750", ChangeKind::Create), 0o750);
        assert_eq!(apply("open", "0777", ChangeKind::Create), 0o777);
        assert_eq!(apply("sgid", "2750", ChangeKind::Create), 0o2750);
        std::fs::create_dir(at("there")).expect("mkdir");
        std::fs::set_permissions(at("there"), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        assert_eq!(apply("there", "0755", ChangeKind::Create), 0o755);
    }

    #[test]
    fn errors() {
        let d = dir(serde_json::json!({"path": "/srv/app"}));
        assert!(diff_error(&*d, "type=file\n").contains("regular file"));
        assert!(d.diff(&out("type=symlink\n")).is_err());
        assert!(d.diff(&out("nothing\n")).is_err());
        assert!(d.diff(&out("")).is_err());
        assert!((DEF.build)(serde_json::json!({"path": "/"}), &mut NoRepo).is_err());
    }

    #[test]
    fn absent() {
        let d = dir(serde_json::json!({"path": "/srv/app", "state": "absent"}));
        assert_eq!(d.diff(&out("type=absent\n")).unwrap(), Change::in_sync());
        let e = d
            .diff(&out(&format!("type=directory\n{STAT}empty=no\n")))
            .unwrap_err();
        assert!(e.message.contains("recurse"));
        let c = d
            .diff(&out(&format!("type=directory\n{STAT}empty=yes\n")))
            .unwrap();
        assert_eq!(c.kind, ChangeKind::Remove);
        assert!(d.apply(&c).contains("rmdir -- \"./$b\""));
        let d = dir(serde_json::json!({"path": "/srv/app", "state": "absent", "recurse": true}));
        let c = d
            .diff(&out(&format!("type=directory\n{STAT}empty=no\n")))
            .unwrap();
        assert!(d.apply(&c).contains("rm -rf -- \"./$b\""));
    }
}
