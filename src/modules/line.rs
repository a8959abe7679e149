//! `line`: one line in a text file, present or absent.
//!
//! Probe output (run with `LC_ALL=C`, so matching is byte-wise and the same on every host):
//! `type=absent|file|directory|symlink|other`; for a file, when `line` is set,
//! `exact=<count of lines equal to line>` and `last_exact=<line number of the last, 0>`
//! (counted by `awk` as byte strings split at newlines, see `line/probes.rs`);
//! with `regexp`, `matches=<count>`, `last_match=<line number>` and `last_b64=<base64 of the
//! last matching line>`, or `regexp=invalid` when grep rejects it.
//!
//! Idempotence: with `regexp`, present is in sync when the last line that matches the regexp
//! *or equals `line`* is `line`; otherwise the last match is replaced (or `line` appended
//! when nothing matches). So a `line` the regexp does not match is never added twice. The file is rewritten to a temporary file beside
//! it and renamed into place, keeping its mode and ownership. A missing file with
//! `create: false` is noted in the plan (an earlier step may create it) and fails the apply.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::sh::{self, quote, Observed};
mod batch;
mod probes;

use super::{
    step, Batch, BuildError, Change, ChangeKind, Example, Facts, Field, ModuleDef, PathType,
    Presence, ProbeBatch, ProbeError, ProbeResult, Resource, Runs,
};

/// One line in a file, like Ansible's lineinfile. With `regexp` (POSIX extended, as grep -E),
/// the last matching line is replaced by `line` (present) or every matching line is removed
/// (absent); without it, the exact line is appended when missing or removed when present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Absolute path of the file.
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
    /// The line (without its newline). Required when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
    /// A POSIX extended regular expression selecting the line to replace or remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regexp: Option<String>,
    #[serde(default)]
    pub state: Presence,
    /// Create the file (mode 0644) when it does not exist.
    #[serde(default)]
    pub create: bool,
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct Line {
    pub params: Params,
}

impl super::FromParams for Line {
    type Params = Params;
    fn from_params(params: Params) -> Result<Line, BuildError> {
        if params.path.ends_with('/') || params.path.len() < 2 {
            return Err(BuildError::at(
                "/path",
                "must name a file (no trailing `/`)",
            ));
        }
        if let Some(l) = &params.line {
            if l.contains('\n') {
                return Err(BuildError::at(
                    "/line",
                    "must be a single line (no newline)",
                ));
            }
        }
        if let Some(r) = &params.regexp {
            if r.contains('\n') || r.is_empty() {
                return Err(BuildError::at("/regexp", "must be a non-empty single line"));
            }
            super::ere::check(r).map_err(|e| {
            BuildError::at(
                "/regexp",
                format!("invalid regular expression /{r}/: {e} (a POSIX extended regular expression, as `grep -E` reads it)"),
            )
        })?;
        }
        match params.state {
            Presence::Present if params.line.is_none() => {
                return Err(BuildError::at("/line", "`line` is required when present"))
            }
            Presence::Absent if params.line.is_none() && params.regexp.is_none() => {
                return Err(BuildError::at(
                    "",
                    "`line` or `regexp` is required when absent",
                ))
            }
            _ => {}
        }
        Ok(Line { params })
    }
}

pub static DEF: ModuleDef = ModuleDef::of::<Line>(
    "line",
    "A line in a text file, matched exactly or by regexp.",
    Runs::Local { rooted: None },
    &[
        "type",
        "exact",
        "last_exact",
        "matches",
        "last_match",
        "last_b64",
        "regexp",
    ],
    &[Example {
        name: "create, append, replace by regexp, remove",
        setup: &[],
        steps: &[
            step(
                r#"{"path": "{root}/sshd_config", "line": "Port 22", "create": true}"#,
                ChangeKind::Create,
            ),
            step(
                r#"{"path": "{root}/sshd_config", "line": "UseDNS no $(touch /tmp/pwned) 'q'"}"#,
                ChangeKind::Create,
            ),
            step(
                r#"{"path": "{root}/sshd_config", "regexp": "^Port[[:space:]]", "line": "Port 2222"}"#,
                ChangeKind::Modify,
            ),
            step(
                r#"{"path": "{root}/sshd_config", "regexp": "^(Port|X)", "state": "absent"}"#,
                ChangeKind::Remove,
            ),
            step(
                r#"{"path": "{root}/sshd_config", "line": "UseDNS no $(touch /tmp/pwned) 'q'", "state": "absent"}"#,
                ChangeKind::Remove,
            ),
        ],
    }],
)
.reversibility(super::Reversibility::Reversible)
.prune(super::Prune::Absent(|p| super::absent_with(p, &["path", "line", "regexp"])))
.batch(Batch {
    key: batch::key,
    apply: batch::apply,
})
.probe_batch(ProbeBatch {
    key: probes::key,
    probe: probes::probe,
    // About 60 bytes printed per line.
    max: 2000,
});

impl Line {
    /// Shell assignments of the line (`v`) and regexp (`re`): values reach commands only on
    /// their stdin (`printf` is a shell builtin), never as arguments a process list shows.
    fn vars(&self) -> String {
        let mut s = format!("LC_ALL=C; export LC_ALL\nv={}\n", quote(self.line()));
        if let Some(re) = &self.params.regexp {
            s += &format!("re={}\n", quote(re));
        }
        s
    }

    fn line(&self) -> &str {
        self.params.line.as_deref().unwrap_or_default()
    }

    /// Rewrites the existing file (see [`rewrite`]).
    fn rewrite(&self, op: &str) -> String {
        rewrite(&self.params.path, op)
    }

    /// The change for the file the probe saw (`ty`), from the rest of the probe's output.
    fn changes(&self, o: &Observed, ty: PathType) -> Result<Change, ProbeError> {
        let present = self.params.state == Presence::Present;
        let want = self.params.line.clone();
        match ty {
            PathType::Absent if present => {
                let c = Change::new(ChangeKind::Create).field(Field::Line, None, want);
                return Ok(if self.params.create {
                    c.note(format!("{} will be created", self.params.path))
                } else {
                    c.note(format!(
                        "{} does not exist yet: an earlier step must create it (or set `create: true`)",
                        self.params.path
                    ))
                });
            }
            PathType::Absent => return Ok(Change::in_sync()),
            PathType::File => {}
            other => {
                let what = match other {
                    PathType::Directory => "directory",
                    PathType::Symlink => "symlink",
                    _ => "special file",
                };
                return Err(ProbeError::new(format!(
                    "{} is a {what}, not a regular file",
                    self.params.path
                )));
            }
        }
        let count = |key: &str| -> Result<u64, ProbeError> {
            let v = o.req(key)?;
            v.trim()
                .parse()
                .map_err(|_| ProbeError::new(format!("bad `{key}` in probe output: {v:?}")))
        };
        let exact = if self.params.line.is_some() {
            count("exact")?
        } else {
            0
        };
        let Some(re) = &self.params.regexp else {
            return Ok(match (present, exact > 0) {
                (true, true) | (false, false) => Change::in_sync(),
                (true, false) => Change::new(ChangeKind::Create).field(Field::Line, None, want),
                (false, true) => Change::new(ChangeKind::Remove).field(Field::Line, want, None),
            });
        };
        if o.get("regexp") == Some("invalid") {
            return Err(ProbeError::new(format!(
                "invalid regexp /{re}/: grep -E rejected it"
            )));
        }
        let matches = count("matches")?;
        let last = if matches > 0 {
            let mut l = o
                .bytes("last")?
                .ok_or_else(|| ProbeError::new("probe output lacks `last_b64`"))?;
            if l.last() == Some(&b'\n') {
                l.pop();
            }
            Some(String::from_utf8_lossy(&l).into_owned())
        } else {
            None
        };
        // In sync when the last line that matches the regexp or equals `line` is `line`:
        // replacing the last match puts `line` there, appending puts it last, so a second
        // run finds nothing to do even when `line` itself does not match the regexp.
        let last_exact = if present { count("last_exact")? } else { 0 };
        let last_match = if matches > 0 { count("last_match")? } else { 0 };
        Ok(match (present, last) {
            (true, _) if exact > 0 && last_exact >= last_match => Change::in_sync(),
            (true, Some(l)) => Change::new(ChangeKind::Modify).field(Field::Line, Some(l), want),
            (true, None) => Change::new(ChangeKind::Create).field(Field::Line, None, want),
            (false, Some(l)) => {
                let c = Change::new(ChangeKind::Remove).field(Field::Line, Some(l), None);
                if matches > 1 {
                    c.note(format!("{matches} matching lines will be removed"))
                } else {
                    c
                }
            }
            (false, None) => Change::in_sync(),
        })
    }

    fn append() -> &'static str {
        r#"cat -- o > f || exit 1
if [ -s f ] && [ -n "$(tail -c 1 -- f)" ]; then printf '\n' >> f || exit 1; fi
printf '%s\n' "$v" >> f || exit 1"#
    }
}

/// Rewrites the existing file at `path` through [`sh::hold_file`], after [`sh::enter_parent`]:
/// `op` writes `f` from `o` (a hard link to the file, in the private directory), and `f` is
/// renamed into place with the file's mode and ownership.
fn rewrite(path: &str, op: &str) -> String {
    format!(
        r#"if [ -L "./$b" ] || [ ! -f "./$b" ]; then {notfile}; fi
{private}{hold}o_own=$(stat -c %u:%g o) && m=$(stat -c %a o) || exit 1
{op}
chown -h -- "$o_own" f || exit 1
chmod -- "$m" f || exit 1
mv -f -T -- f "../$b" || exit 1
"#,
        notfile = sh::fail(&format!("{path} is not a regular file")),
        private = sh::PRIVATE_DIR,
        hold = sh::hold_file(&format!(
            "{path} changed since the probe: it is no longer a regular file"
        )),
    )
}

impl Resource for Line {
    /// Its file (a `line` may create it, and a `file` step on the same path shares it).
    fn touches(&self) -> super::Touches {
        super::Touches::only([super::Touch::path(&self.params.path)])
    }
    fn target(&self) -> String {
        match (&self.params.regexp, &self.params.line) {
            (Some(r), _) => format!("{} /{r}/", self.params.path),
            (None, Some(l)) => format!("{}: {l}", self.params.path),
            _ => self.params.path.clone(),
        }
    }
    fn desired(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }
    fn probe(&self) -> String {
        let mut s = format!(
            "{}p={}\n{}\nif [ -f \"$p\" ] && [ ! -L \"$p\" ]; then\n{}\n",
            self.vars(),
            quote(&self.params.path),
            sh::PROBE_TYPE,
            sh::OPEN_P,
        );
        if self.params.line.is_some() {
            s += &probes::count_exact(&[self.line()], false);
        }
        if self.params.regexp.is_some() {
            s += &format!(
                r#"n=$(printf '%s\n' "$re" | grep -c -E -f - -- /dev/fd/3 2>/dev/null); s=$?
if [ "$s" -gt 1 ]; then echo regexp=invalid
else
echo "matches=$n"
if [ "$n" -gt 0 ]; then
n=$(printf '%s\n' "$re" | grep -n -E -f - -- /dev/fd/3 | tail -n 1 | cut -d: -f1)
echo "last_match=${{n:-0}}"
{last}
fi
fi
"#,
                last = sh::print_b64(
                    "last",
                    r#"printf '%s\n' "$re" | grep -E -f - -- /dev/fd/3 | tail -n 1"#
                ),
            );
        }
        s += "fi";
        s
    }
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError> {
        let o = Observed::parse(observed)?;
        let ty = PathType::parse(&o)?;
        let c = self.changes(&o, ty)?;
        Ok(if c.is_change() {
            c.observed(Facts {
                path: Some(ty),
                ..Facts::default()
            })
        } else {
            c
        })
    }
    fn apply(&self, change: &Change) -> String {
        let path = &self.params.path;
        let missing_parent = self.missing_parent();
        let mut s = format!(
            "{}{}",
            self.vars(),
            sh::enter_parent(path, sh::Missing::Fail(&missing_parent))
        );
        match change.kind {
            ChangeKind::InSync => return ":".into(),
            ChangeKind::Create | ChangeKind::Modify => {
                let missing = if self.params.create {
                    format!(
                        "{}printf '%s\\n' \"$v\" > f || exit 1\nchmod 0644 f || exit 1\nmv -f -T -- f \"../$b\" || exit 1",
                        sh::PRIVATE_DIR
                    )
                } else {
                    sh::fail(&format!(
                        "{path} does not exist; create it in an earlier step or set `create: true`"
                    ))
                };
                let op = match (&self.params.regexp, change.kind) {
                    (Some(_), ChangeKind::Modify) => format!(
                        r#"n=$(printf '%s\n' "$re" | grep -n -E -f - -- o | tail -n 1 | cut -d: -f1)
if [ -z "$n" ]; then
{append}
else
if [ "$n" -gt 1 ]; then head -n "$((n - 1))" -- o > f || exit 1; else : > f || exit 1; fi
printf '%s\n' "$v" >> f || exit 1
tail -n "+$((n + 1))" -- o >> f || exit 1
fi"#,
                        append = Line::append(),
                    ),
                    _ => Line::append().to_string(),
                };
                s += &format!(
                    "if [ ! -e \"./$b\" ] && [ ! -L \"./$b\" ]; then\n{missing}\nelse\n{}fi\n",
                    self.rewrite(&op)
                );
            }
            ChangeKind::Remove => {
                let grep = match &self.params.regexp {
                    Some(_) => r#"printf '%s\n' "$re" | grep -v -E -f - -- o > f"#,
                    None => r#"printf '%s\n' "$v" | grep -v -x -F -f - -- o > f"#,
                };
                let op = format!("{grep}; [ $? -le 1 ] || exit 1");
                s += &format!(
                    "if [ -e \"./$b\" ] || [ -L \"./$b\" ]; then\n{}fi\n",
                    self.rewrite(&op)
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn line(v: serde_json::Value) -> Box<dyn Resource> {
        built(DEF.build, v)
    }

    #[test]
    fn build_rules() {
        let e = (DEF.build)(serde_json::json!({"path": "/a"}), &mut NoRepo).unwrap_err();
        assert_eq!(e.pointer, "/line");
        let e = (DEF.build)(
            serde_json::json!({"path": "/a", "line": "a\nb"}),
            &mut NoRepo,
        )
        .unwrap_err();
        assert_eq!(e.pointer, "/line");
        let e = (DEF.build)(
            serde_json::json!({"path": "/a", "state": "absent"}),
            &mut NoRepo,
        )
        .unwrap_err();
        assert_eq!(e.pointer, "");
        assert!((DEF.build)(
            serde_json::json!({"path": "/a", "state": "absent", "regexp": "^x"}),
            &mut NoRepo
        )
        .is_ok());
    }

    #[test]
    fn exact_line() {
        let l = line(serde_json::json!({"path": "/etc/hosts", "line": "10.0.0.1 db"}));
        assert_eq!(
            l.diff(&out("type=file\nexact=1\nlast_exact=1\n")).unwrap(),
            Change::in_sync()
        );
        let c = l.diff(&out("type=file\nexact=0\nlast_exact=0\n")).unwrap();
        assert_eq!(c.kind, ChangeKind::Create);
        insta::assert_snapshot!("line_append", l.apply(&c));
        let c = l.diff(&out("type=absent\n")).unwrap();
        assert!(c.notes[0].contains("create: true"));
        assert!(l.diff(&out("type=directory\n")).is_err());
        assert!(l.diff(&out("type=file\nexact=lots\n")).is_err());
    }

    #[test]
    fn regexp_line() {
        let l = line(
            serde_json::json!({"path": "/etc/ssh/sshd_config", "regexp": "^#?PermitRootLogin", "line": "PermitRootLogin no"}),
        );
        let last = |s: &[u8]| {
            format!(
                "type=file\nexact=0\nlast_exact=0\nmatches=2\nlast_match=7\nlast_b64={}\n",
                sh::b64(s)
            )
        };
        let c = l.diff(&out(&last(b"#PermitRootLogin yes\n"))).unwrap();
        insta::assert_debug_snapshot!("line_replace_change", c);
        insta::assert_snapshot!("line_replace", l.apply(&c));
        let synced = format!(
            "type=file\nexact=1\nlast_exact=7\nmatches=2\nlast_match=7\nlast_b64={}\n",
            sh::b64(b"PermitRootLogin no\n")
        );
        assert_eq!(l.diff(&out(&synced)).unwrap(), Change::in_sync());
        // `line` is there, but a later line matches the regexp: replace that one.
        let later = format!(
            "type=file\nexact=1\nlast_exact=3\nmatches=2\nlast_match=7\nlast_b64={}\n",
            sh::b64(b"PermitRootLogin yes\n")
        );
        assert_eq!(l.diff(&out(&later)).unwrap().kind, ChangeKind::Modify);
        assert_eq!(
            l.diff(&out("type=file\nexact=1\nlast_exact=4\nmatches=0\n"))
                .unwrap(),
            Change::in_sync()
        );
        assert_eq!(
            l.diff(&out("type=file\nexact=0\nlast_exact=0\nmatches=0\n"))
                .unwrap()
                .kind,
            ChangeKind::Create
        );
        assert!(
            diff_error(&*l, "type=file\nexact=0\nlast_exact=0\nregexp=invalid\n")
                .contains("invalid regexp")
        );
        assert!(l
            .diff(&out(
                "type=file\nexact=0\nlast_exact=0\nmatches=1\nlast_match=1\n"
            ))
            .is_err());
    }

    #[test]
    fn absent_lines() {
        let l =
            line(serde_json::json!({"path": "/etc/fstab", "regexp": "^/swap", "state": "absent"}));
        let c = l
            .diff(&out(&format!(
                "type=file\nmatches=3\nlast_match=9\nlast_b64={}\n",
                sh::b64(b"/swap none swap sw 0 0\n")
            )))
            .unwrap();
        assert_eq!(c.kind, ChangeKind::Remove);
        assert!(c.notes[0].contains("3 matching"));
        insta::assert_snapshot!("line_remove", l.apply(&c));
        assert_eq!(
            l.diff(&out("type=file\nmatches=0\n")).unwrap(),
            Change::in_sync()
        );
        assert_eq!(l.diff(&out("type=absent\n")).unwrap(), Change::in_sync());
    }

    #[test]
    fn line_values_never_reach_a_process_argument() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf");
        std::fs::write(&path, "a\nSECRET-OLD x\nb\n").unwrap();
        let p = path.display().to_string();
        for params in [
            serde_json::json!({"path": p, "regexp": "^SECRET-OLD", "line": "SECRET-NEW 1"}),
            serde_json::json!({"path": p, "line": "SECRET-APPENDED"}),
            serde_json::json!({"path": p, "line": "SECRET-APPENDED", "state": "absent"}),
            serde_json::json!({"path": p, "regexp": "^SECRET-NEW", "state": "absent"}),
        ] {
            let l = line(params.clone());
            let (probe, log) = run_logging_argv(&l.probe());
            let c = l.diff(&probe).unwrap();
            assert!(c.is_change(), "{params}: {c:?}");
            let (applied, log2) = run_logging_argv(&l.apply(&c));
            assert_eq!(
                applied.status,
                0,
                "{}",
                String::from_utf8_lossy(&applied.stderr)
            );
            let all = format!("{log}{log2}");
            assert!(
                all.contains("grep ") || all.contains("awk "),
                "grep or awk ran under the wrapper: {all}"
            );
            assert!(
                !all.contains("SECRET"),
                "{params}: a value reached argv:\n{all}"
            );
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nb\n");
    }

    #[test]
    fn an_invalid_regexp_is_a_build_error_at_its_pointer() {
        for bad in ["(", "[[:foo:]]", "a{2,1}", "x\\"] {
            let e = (DEF.build)(
                serde_json::json!({"path": "/a", "regexp": bad, "line": "x"}),
                &mut NoRepo,
            )
            .unwrap_err();
            assert_eq!(e.pointer, "/regexp", "{bad}");
            assert!(e.message.contains("invalid regular expression"), "{e}");
        }
        assert!((DEF.build)(
            serde_json::json!({"path": "/a", "regexp": "^#?Port[[:space:]]+[0-9]{1,5}$", "line": "x"}),
            &mut NoRepo
        )
        .is_ok());
    }
}
