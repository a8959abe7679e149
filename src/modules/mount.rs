//! `mount`: a filesystem's /etc/fstab entry and its mounted state.
//!
//! Probe output: `fstab_b64=` (the current /etc/fstab line for the mount point, base64;
//! absent when there is none), `mounted=yes|no` (`findmnt`, else /proc/mounts) and
//! `dir=absent|directory|other`. The fstab line is generated from the parameters (spaces in
//! fields written `\040`, as fstab requires); in sync when it is the line there and the
//! mounted state is the wanted one. A changed line of a mounted filesystem remounts it
//! (`mount -o remount`), so changed options apply without an unmount. /etc/fstab is rewritten
//! to a file beside it and renamed into place.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::sh::{self, quote, Observed};
use super::{
    step, BuildError, Change, ChangeKind, Example, Field, ModuleDef, ProbeError, ProbeResult,
    Resource, Runs,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MountState {
    /// In /etc/fstab and mounted.
    #[default]
    Mounted,
    /// In /etc/fstab, not mounted.
    Unmounted,
    /// Not in /etc/fstab, not mounted.
    Absent,
}

/// A filesystem mounted at `path`, persisted in /etc/fstab.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The mount point (created when mounting).
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
    /// What is mounted: a device, `UUID=...`, `LABEL=...`, `server:/export`, `tmpfs`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// Filesystem type (`ext4`, `xfs`, `nfs`, `tmpfs`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fstype: Option<String>,
    /// Mount options.
    #[serde(default = "defaults")]
    pub opts: String,
    #[serde(default)]
    pub dump: u8,
    #[serde(default)]
    pub passno: u8,
    #[serde(default)]
    pub state: MountState,
}

fn defaults() -> String {
    "defaults".into()
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct Mount {
    pub params: Params,
    /// The wanted fstab line (empty when absent).
    line: String,
}

/// An fstab field: whitespace and `\` written as octal escapes.
pub fn fstab_escape(s: &str) -> String {
    let mut o = String::new();
    for c in s.chars() {
        match c {
            ' ' => o.push_str("\\040"),
            '\t' => o.push_str("\\011"),
            '\\' => o.push_str("\\134"),
            c => o.push(c),
        }
    }
    o
}

fn field_ok(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_control() || c == '#') && !s.starts_with('-')
}

impl super::FromParams for Mount {
    type Params = Params;
    fn from_params(params: Params) -> Result<Mount, BuildError> {
        let p = &params.path;
        if !p.starts_with('/')
            || p.len() < 2
            || p.ends_with('/')
            || p.split('/').any(|c| c == "..")
            || p.chars().any(char::is_control)
        {
            return Err(BuildError::at("/path", "must be an absolute path other than `/`, without `..`, a trailing `/` or control characters"));
        }
        let line = if params.state == MountState::Absent {
            String::new()
        } else {
            let Some(src) = &params.src else {
                return Err(BuildError::at(
                    "/src",
                    "required unless the state is absent",
                ));
            };
            let Some(fstype) = &params.fstype else {
                return Err(BuildError::at(
                    "/fstype",
                    "required unless the state is absent",
                ));
            };
            if !field_ok(src) {
                return Err(BuildError::at(
                    "/src",
                    "must not be empty, start with `-` or contain `#` or control characters",
                ));
            }
            if !fstype
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                || fstype.is_empty()
            {
                return Err(BuildError::at("/fstype", "letters, digits and `._-` only"));
            }
            if !field_ok(&params.opts) || params.opts.contains(char::is_whitespace) {
                return Err(BuildError::at(
                    "/opts",
                    "comma-separated options without spaces, `#` or control characters",
                ));
            }
            if params.passno > 2 || params.dump > 1 {
                return Err(BuildError::at(
                    "/passno",
                    "dump is 0 or 1, passno 0, 1 or 2",
                ));
            }
            format!(
                "{} {} {fstype} {} {} {}",
                fstab_escape(src),
                fstab_escape(p),
                params.opts,
                params.dump,
                params.passno
            )
        };
        Ok(Mount { params, line })
    }
}

pub static DEF: ModuleDef = ModuleDef::of::<Mount>(
    "mount",
    "A filesystem: its /etc/fstab entry and mounted/unmounted/absent; changed options remount.",
    Runs::Host,
    &["fstab_b64", "mounted", "dir"],
    &[Example {
        name: "a tmpfs: mount, change its options, unmount, remove",
        setup: &[],
        steps: &[
            step(
                r#"{"path": "/mnt/plumb data", "src": "tmpfs", "fstype": "tmpfs", "opts": "size=8m,mode=0750"}"#,
                ChangeKind::Create,
            ),
            step(
                r#"{"path": "/mnt/plumb data", "src": "tmpfs", "fstype": "tmpfs", "opts": "size=16m,mode=0750"}"#,
                ChangeKind::Modify,
            ),
            step(
                r#"{"path": "/mnt/plumb data", "src": "tmpfs", "fstype": "tmpfs", "opts": "size=16m,mode=0750", "state": "unmounted"}"#,
                ChangeKind::Modify,
            ),
            step(
                r#"{"path": "/mnt/plumb data", "state": "absent"}"#,
                ChangeKind::Remove,
            ),
        ],
    }],
)
.reversibility(super::Reversibility::Reversible)
.prune(super::Prune::Never("unmounting can cut a service off its data: declare `state: absent`"));

/// awk program printing the fstab lines whose mount point (field 2) is `m`, or (with
/// `keep=1`) every other line.
/// (`m` travels through the environment: `awk -v` would expand fstab's `\040` escapes).
const AWK_MATCH: &str = r#"plumb_m=$m plumb_keep=$keep awk 'BEGIN { m = ENVIRON["plumb_m"]; keep = ENVIRON["plumb_keep"] } !/^[ \t]*#/ && NF >= 2 && $2 == m { if (!keep) print; next } keep == 1 { print }'"#;

impl Mount {
    fn vars(&self) -> String {
        format!(
            "p={}\nm={}\n",
            quote(&self.params.path),
            quote(&fstab_escape(&self.params.path))
        )
    }
}

impl Resource for Mount {
    fn target(&self) -> String {
        self.params.path.clone()
    }
    /// The mount point and everything under it, and /etc/fstab.
    fn touches(&self) -> super::Touches {
        super::Touches::only([
            super::Touch::path(&self.params.path),
            super::Touch::path("/etc/fstab"),
        ])
    }
    fn desired(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }
    fn probe(&self) -> String {
        format!(
            r#"{vars}keep=0
if [ -f /etc/fstab ]; then l=$({AWK_MATCH} /etc/fstab | tail -n 1); if [ -n "$l" ]; then {fstab}; fi; fi
if command -v findmnt >/dev/null 2>&1; then
if findmnt -n --mountpoint "$p" >/dev/null 2>&1; then echo mounted=yes; else echo mounted=no; fi
elif plumb_m=$m awk 'BEGIN {{ m = ENVIRON["plumb_m"] }} $2 == m {{ found = 1 }} END {{ exit !found }}' /proc/mounts; then echo mounted=yes; else echo mounted=no; fi
if [ -L "$p" ]; then echo dir=other; elif [ -d "$p" ]; then echo dir=directory; elif [ -e "$p" ]; then echo dir=other; else echo dir=absent; fi"#,
            vars = self.vars(),
            fstab = sh::print_var_b64("fstab", "\"$l\""),
        )
    }
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError> {
        let o = Observed::parse(observed)?;
        let line = o.text("fstab")?;
        let normal = line
            .as_deref()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "));
        let mounted = o.req("mounted")? == "yes";
        let want_mounted = self.params.state == MountState::Mounted;
        let want_line = (self.params.state != MountState::Absent).then(|| self.line.clone());
        if o.req("dir")? == "other" && want_mounted {
            return Err(ProbeError::new(format!(
                "{} is not a directory (or is a symbolic link): plumb will not mount there",
                self.params.path
            )));
        }
        let kind = match (&want_line, &normal) {
            (None, _) => ChangeKind::Remove,
            (Some(_), None) => ChangeKind::Create,
            (Some(_), Some(_)) => ChangeKind::Modify,
        };
        let mut c = Change::new(kind);
        if normal != want_line {
            c = c.field(Field::Line, normal, want_line);
        }
        if mounted != want_mounted {
            let s = |m: bool| if m { "mounted" } else { "unmounted" }.to_string();
            c = c.field(Field::State, Some(s(mounted)), Some(s(want_mounted)));
        }
        Ok(if c.fields.is_empty() {
            Change::in_sync()
        } else {
            c
        })
    }
    fn apply(&self, change: &Change) -> String {
        if change.kind == ChangeKind::InSync {
            return ":".into();
        }
        let mut s = self.vars();
        let unmount =
            change.changes_field(Field::State) && self.params.state != MountState::Mounted;
        if unmount {
            s += "umount -- \"$p\" || exit 1\n";
        }
        if change.changes_field(Field::Line) {
            s += &format!(
                r#"keep=1
t=$(mktemp /etc/.fstab.plumb.XXXXXX) || exit 1
trap 'rm -f -- "$t"' EXIT
if [ -f /etc/fstab ]; then {AWK_MATCH} /etc/fstab > "$t" || exit 1; chmod --reference=/etc/fstab -- "$t" || exit 1; else chmod 0644 "$t" || exit 1; fi
"#
            );
            if self.params.state != MountState::Absent {
                s += &format!("printf '%s\\n' {} >> \"$t\" || exit 1\n", quote(&self.line));
            }
            s += "mv -f -T -- \"$t\" /etc/fstab || exit 1\n";
        }
        if self.params.state == MountState::Mounted {
            if change.changes_field(Field::State) {
                s += "if [ ! -e \"$p\" ] && [ ! -L \"$p\" ]; then mkdir -p -- \"$p\" || exit 1; fi\nmount -- \"$p\" || exit 1\n";
            } else if change.changes_field(Field::Line) {
                s += "mount -o remount -- \"$p\" || exit 1\n";
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn mnt(v: serde_json::Value) -> Box<dyn Resource> {
        built(DEF.build, v)
    }

    fn seen(line: Option<&str>, mounted: bool) -> ProbeResult {
        let mut s = String::new();
        if let Some(l) = line {
            s += &format!("fstab_b64={}\n", sh::b64(l.as_bytes()));
        }
        s += &format!(
            "mounted={}\ndir=directory\n",
            if mounted { "yes" } else { "no" }
        );
        out(&s)
    }

    #[test]
    fn mount_remount_unmount_absent() {
        let r = mnt(
            serde_json::json!({"path": "/srv/my data", "src": "UUID=abc", "fstype": "ext4", "opts": "noatime", "passno": 2}),
        );
        insta::assert_snapshot!("mount_probe", r.probe());
        let line = "UUID=abc /srv/my\\040data ext4 noatime 0 2";
        assert_eq!(r.diff(&seen(Some(line), true)).unwrap(), Change::in_sync());
        assert_eq!(
            r.diff(&seen(
                Some("UUID=abc\t/srv/my\\040data  ext4 noatime 0 2"),
                true
            ))
            .unwrap(),
            Change::in_sync()
        );
        let c = r.diff(&seen(None, false)).unwrap();
        assert_eq!(c.kind, ChangeKind::Create);
        insta::assert_snapshot!("mount_create", r.apply(&c));
        let c = r
            .diff(&seen(
                Some("UUID=abc /srv/my\\040data ext4 defaults 0 2"),
                true,
            ))
            .unwrap();
        let a = r.apply(&c);
        assert!(
            a.contains("mount -o remount") && !a.contains("umount"),
            "{a}"
        );
        let un = mnt(
            serde_json::json!({"path": "/srv/my data", "src": "UUID=abc", "fstype": "ext4", "opts": "noatime", "passno": 2, "state": "unmounted"}),
        );
        let a = un.apply(&un.diff(&seen(Some(line), true)).unwrap());
        assert!(a.contains("umount") && !a.contains("/etc/fstab"), "{a}");
        let gone = mnt(serde_json::json!({"path": "/srv/my data", "state": "absent"}));
        let c = gone.diff(&seen(Some(line), true)).unwrap();
        assert_eq!(c.kind, ChangeKind::Remove);
        let a = gone.apply(&c);
        assert!(
            a.find("umount").unwrap() < a.find("mv -f -T").unwrap() && !a.contains(">> \"$t\""),
            "{a}"
        );
        assert_eq!(gone.diff(&seen(None, false)).unwrap(), Change::in_sync());
    }

    #[test]
    fn hostile_values_are_refused() {
        let ok = serde_json::json!({"path": "/m", "src": "tmpfs", "fstype": "tmpfs"});
        for (k, v, at) in [
            ("path", "m", "/path"),
            ("path", "/", "/path"),
            ("path", "/a/../etc", "/path"),
            ("path", "/a\nb", "/path"),
            ("src", "a\n/x / ext4 defaults 0 0", "/src"),
            ("src", "-o", "/src"),
            ("fstype", "ext4 x", "/fstype"),
            ("opts", "a b", "/opts"),
            ("opts", "x#y", "/opts"),
        ] {
            let mut p = ok.clone();
            p[k] = v.into();
            match (DEF.build)(p.clone(), &mut NoRepo) {
                Err(e) => assert_eq!(e.pointer, at, "{p}"),
                Ok(_) => panic!("accepted {p}"),
            }
        }
        assert_eq!(fstab_escape("a b\\c\td"), "a\\040b\\134c\\011d");
    }
}
