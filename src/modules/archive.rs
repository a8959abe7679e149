//! `archive`: a tar (plain, gz, xz, zst: whatever the host's tar can read) or zip archive
//! on the host, extracted into a directory.
//!
//! Probe output: `src=<sha256>|absent|other` of the archive, `dest=absent|directory|other`,
//! and `marker=<sha256>|absent`: the hash of the archive last extracted there, recorded in
//! `<dest>/.plumb-archive-<id>` (`id`: a digest of the archive's path). In sync when the
//! marker is the wanted hash: `sha256` when given, else the archive's current hash. Give
//! `sha256` when an earlier step of the same run (a `download`) replaces the archive: probes
//! all run before any apply, so only the wanted hash tells the new release apart.
//!
//! The apply lists the members first and refuses the whole archive, extracting nothing, when
//! one is absolute or has a `..` component; then extracts (`tar --no-same-owner`, GNU tar's
//! delayed links keep links from redirecting later members; `unzip`), sets owner and group,
//! and records the marker last. As a `notify` target it extracts again.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::sh::{self, quote, Observed};
use super::{
    step, BuildError, Change, ChangeKind, Example, Field, ModuleDef, ProbeError, ProbeResult,
    Resource, Runs,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// From the name: `.zip` is zip, anything else tar (compression detected by tar).
    #[default]
    Auto,
    Tar,
    Zip,
}

/// An archive at `src` on the host, extracted into the directory `dest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Absolute path of the archive on the host (e.g. written by a `download` step).
    #[schemars(regex(pattern = r"^/"))]
    pub src: String,
    /// Absolute path of the directory to extract into (created when missing).
    #[schemars(regex(pattern = r"^/"))]
    pub dest: String,
    /// The archive's expected sha256: extracted when the recorded one differs, refused when
    /// the archive's differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default)]
    pub format: Format,
    /// Leading path components removed from member names (tar's `--strip-components`; for
    /// zip, each stripped level must be a single directory).
    #[serde(default)]
    pub strip_components: u8,
    /// Owner of everything extracted. Unset: root (the acting user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct Archive {
    pub params: Params,
    zip: bool,
    marker: String,
    sha256: Option<String>,
}

fn abs_path(p: &str) -> bool {
    p.starts_with('/') && p.len() > 1 && !p.split('/').any(|c| c == "..")
}

impl super::FromParams for Archive {
    type Params = Params;
    fn from_params(params: Params) -> Result<Archive, BuildError> {
        if !abs_path(&params.src) || params.src.ends_with('/') {
            return Err(BuildError::at(
                "/src",
                "must be an absolute path to a file, without `..`",
            ));
        }
        if !abs_path(&params.dest) {
            return Err(BuildError::at(
                "/dest",
                "must be an absolute path other than `/`, without `..`",
            ));
        }
        if let Some(h) = &params.sha256 {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(BuildError::at("/sha256", "must be 64 hex digits"));
            }
        }
        if params.strip_components > 32 {
            return Err(BuildError::at("/strip_components", "at most 32"));
        }
        let zip = match params.format {
            Format::Zip => true,
            Format::Tar => false,
            Format::Auto => params.src.to_ascii_lowercase().ends_with(".zip"),
        };
        let id = &hex::encode(Sha256::digest(params.src.as_bytes()))[..16];
        Ok(Archive {
            zip,
            marker: format!(".plumb-archive-{id}"),
            sha256: params.sha256.as_ref().map(|h| h.to_ascii_lowercase()),
            params,
        })
    }
}

pub static DEF: ModuleDef = ModuleDef::of::<Archive>(
    "archive",
    "A tar (gz/xz/zst) or zip archive on the host extracted into a directory; members never escape it.",
    Runs::Local { rooted: None },
    &["src", "dest", "marker"],
    &[
        Example {
            name: "a release tarball, stripped, then a new release",
            setup: &[(
                "command",
                r#"{"run": "cd '{root}' && mkdir -p 'r/app 1/bin' && printf 'one\\n' > 'r/app 1/bin/it s' && tar -C r -czf 'app $(1).tgz' 'app 1' && printf 'two\\n' > 'r/app 1/bin/it s' && tar -C r -cJf app2.tar.xz 'app 1'", "creates": "{root}/app2.tar.xz"}"#,
            )],
            steps: &[
                step(
                    r#"{"src": "{root}/app $(1).tgz", "dest": "{root}/opt/app's", "strip_components": 1}"#,
                    ChangeKind::Create,
                ),
                step(
                    r#"{"src": "{root}/app2.tar.xz", "dest": "{root}/opt/app's", "strip_components": 1}"#,
                    ChangeKind::Modify,
                ),
            ],
        },
        Example {
            name: "a zip",
            setup: &[(
                "command",
                r#"{"run": "cd '{root}' && mkdir -p z/top && printf 'z\\n' > z/top/f && (cd z && zip -qr ../a.zip top)", "creates": "{root}/a.zip"}"#,
            )],
            steps: &[step(
                r#"{"src": "{root}/a.zip", "dest": "{root}/out", "strip_components": 1}"#,
                ChangeKind::Create,
            )],
        },
    ],
)
.refreshable()
.reversibility(super::Reversibility::Reversible)
.prune(super::Prune::Never("extracted files are not removed by prune: declare a `directory` step with `state: absent`"));

/// Fails the fragment when a member name on stdin is absolute or has a `..` component
/// (names are one a line; a name with a newline shows as several lines, each checked).
const CHECK_MEMBERS: &str =
    r#"awk '/^\// || /(^|\/)\.\.(\/|$)/ { print; bad = 1 } END { exit bad }'"#;

impl Archive {
    fn extract(&self) -> String {
        let want = match &self.sha256 {
            Some(h) => format!(
                "[ \"$h\" = {h} ] || {{ printf 'archive %s has sha256 %s, want %s: not extracted\\n' \"$src\" \"$h\" {h} >&2; exit 1; }}\n"
            ),
            None => String::new(),
        };
        let (list, unpack) = if self.zip {
            (
                "unzip -Z1 -- \"$src\"",
                format!(
                    r#"t=$(mktemp -d "$dest/.plumb-unzip.XXXXXX") || exit 1
trap 'rm -rf -- "$t"' EXIT
unzip -q -o -- "$src" -d "$t" </dev/null || exit 1
s=$t
i=0
while [ "$i" -lt {n} ]; do
set -- "$s"/* "$s"/.[!.]*
[ -e "$1" ] && [ ! -e "$2" ] && [ -d "$1" ] && [ ! -L "$1" ] || {nostrip}
s=$1; i=$((i + 1))
done
(cd -P -- "$s" && tar -cf - .) | tar -C "$dest" --no-same-owner -xf - || exit 1
"#,
                    n = self.params.strip_components,
                    nostrip = sh::fail(
                        "strip_components with a zip needs a single directory at each stripped level"
                    ),
                ),
            )
        } else {
            (
                "tar -tf \"$src\"",
                format!(
                    "tar -x --no-same-owner --strip-components={} -C \"$dest\" -f \"$src\" </dev/null || exit 1\n",
                    self.params.strip_components
                ),
            )
        };
        let mut s = format!(
            r#"src={src}
dest={dest}
[ -f "$src" ] || {{ printf 'archive %s does not exist\n' "$src" >&2; exit 1; }}
h=$(sha256sum < "$src") || exit 1
h=${{h%% *}}
{want}members=$({list}) || {{ printf 'cannot list the members of %s\n' "$src" >&2; exit 1; }}
printf '%s\n' "$members" | {CHECK_MEMBERS} >&2 || {{ printf 'archive %s has members with an absolute path or `..` (above): nothing was extracted\n' "$src" >&2; exit 1; }}
[ -L "$dest" ] && {{ printf '%s is a symbolic link: not extracting through it\n' "$dest" >&2; exit 1; }}
mkdir -p -- "$dest" || exit 1
{unpack}"#,
            src = quote(&self.params.src),
            dest = quote(&self.params.dest),
        );
        let owner = match (&self.params.owner, &self.params.group) {
            (Some(u), Some(g)) => Some(format!("{u}:{g}")),
            (Some(u), None) => Some(u.clone()),
            (None, Some(g)) => Some(format!(":{g}")),
            (None, None) => None,
        };
        if let Some(o) = owner {
            s += &format!("chown -R -h -- {} \"$dest\" || exit 1\n", quote(&o));
        }
        s += &format!(
            "printf '%s\\n' \"$h\" > \"$dest\"/{m}.tmp && mv -f -- \"$dest\"/{m}.tmp \"$dest\"/{m} || exit 1\n",
            m = self.marker
        );
        s
    }
}

impl Resource for Archive {
    fn target(&self) -> String {
        self.params.dest.clone()
    }
    fn touches(&self) -> super::Touches {
        let mut t = super::file::owned(
            &self.params.dest,
            self.params.owner.as_deref(),
            self.params.group.as_deref(),
        );
        t.push(super::Touch::path(&self.params.src));
        super::Touches::Only(t)
    }
    fn desired(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }
    fn probe(&self) -> String {
        format!(
            r#"{hash}
printf 'src=%s\n' "$(plumb_hash {src})"
d={dest}
if [ -L "$d" ]; then echo dest=other; elif [ -d "$d" ]; then echo dest=directory; elif [ -e "$d" ]; then echo dest=other; else echo dest=absent; fi
m="$d"/{m}
if [ -f "$m" ] && [ ! -L "$m" ]; then printf 'marker=%s\n' "$(head -c 64 -- "$m")"; else echo marker=absent; fi"#,
            hash = sh::HASH_FN,
            src = quote(&self.params.src),
            dest = quote(&self.params.dest),
            m = self.marker,
        )
    }
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError> {
        let o = Observed::parse(observed)?;
        let src = o.req("src")?;
        let dest = o.req("dest")?;
        let marker = o.req("marker")?;
        if dest == "other" {
            return Err(ProbeError::new(format!(
                "{} is not a directory (or is a symbolic link): an archive step will not extract there",
                self.params.dest
            )));
        }
        let kind = if dest == "absent" {
            ChangeKind::Create
        } else {
            ChangeKind::Modify
        };
        let from = (marker != "absent").then(|| format!("sha256:{marker}"));
        match (&self.sha256, src) {
            (Some(want), _) if marker == want => Ok(Change::in_sync()),
            (None, h) if h == marker => Ok(Change::in_sync()),
            (Some(want), h) => {
                let mut c =
                    Change::new(kind).field(Field::Content, from, Some(format!("sha256:{want}")));
                if h == "absent" {
                    c = c.note(format!(
                        "archive {} does not exist yet: an earlier step must put it there",
                        self.params.src
                    ));
                } else if h != want {
                    c = c.note(format!(
                        "archive {} has sha256 {h} now: an earlier step must replace it",
                        self.params.src
                    ));
                }
                Ok(c)
            }
            (None, "absent") => {
                Ok(Change::new(kind)
                    .field(Field::Content, from, None)
                    .note(format!(
                        "archive {} does not exist yet: an earlier step must put it there",
                        self.params.src
                    )))
            }
            (None, "other") => Err(ProbeError::new(format!(
                "{} is not a regular file",
                self.params.src
            ))),
            (None, h) => {
                Ok(Change::new(kind).field(Field::Content, from, Some(format!("sha256:{h}"))))
            }
        }
    }
    fn apply(&self, change: &Change) -> String {
        if change.kind == ChangeKind::InSync {
            return ":".into();
        }
        self.extract()
    }
    fn refresh(&self) -> Option<String> {
        Some(self.extract())
    }
    fn refresh_after(&self, own: &Change) -> bool {
        !own.is_change()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    const SHA: &str = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";

    fn ar(v: serde_json::Value) -> Box<dyn Resource> {
        built(DEF.build, v)
    }

    #[test]
    fn tar_lists_and_checks_members_before_extracting() {
        let r = ar(
            serde_json::json!({"src": "/srv/app $(x).tar.zst", "dest": "/opt/it's", "sha256": SHA, "strip_components": 1, "owner": "app", "group": "app"}),
        );
        insta::assert_snapshot!("archive_probe", r.probe());
        let c = r
            .diff(&out("src=absent\ndest=absent\nmarker=absent\n"))
            .unwrap();
        assert_eq!(c.kind, ChangeKind::Create);
        assert!(c.notes[0].contains("does not exist yet"));
        let a = r.apply(&c);
        insta::assert_snapshot!("archive_tar_apply", a);
        let check = a.find("awk").unwrap();
        assert!(check < a.find("tar -x").unwrap() && check < a.find("mkdir").unwrap());
        assert!(a.find("tar -x").unwrap() < a.find("chown -R").unwrap());
        assert!(a.find("chown -R").unwrap() < a.find(".plumb-archive-").unwrap());
        assert_eq!(r.refresh().unwrap(), a);
    }

    #[test]
    fn in_sync_by_the_recorded_hash() {
        let with = ar(serde_json::json!({"src": "/a.tgz", "dest": "/d", "sha256": SHA}));
        let seen =
            |src: &str, marker: &str| out(&format!("src={src}\ndest=directory\nmarker={marker}\n"));
        assert_eq!(with.diff(&seen("00", SHA)).unwrap(), Change::in_sync());
        let c = with.diff(&seen(SHA, "11")).unwrap();
        assert_eq!(c.kind, ChangeKind::Modify);
        let without = ar(serde_json::json!({"src": "/a.tgz", "dest": "/d"}));
        assert_eq!(without.diff(&seen(SHA, SHA)).unwrap(), Change::in_sync());
        assert!(without.diff(&seen("22", SHA)).unwrap().is_change());
        let e = diff_error(without.as_ref(), "src=x\ndest=other\nmarker=absent\n");
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn zip_strips_by_single_directories() {
        let r = ar(serde_json::json!({"src": "/a.ZIP", "dest": "/d", "strip_components": 2}));
        let a = r.apply(&Change::new(ChangeKind::Create));
        assert!(a.contains("unzip -Z1") && a.contains("-lt 2"), "{a}");
    }

    #[test]
    fn member_check_refuses_escapes() {
        for (names, ok) in [
            ("a\nb/c\n./d\nx..y/..z\n", true),
            ("a\n../b\n", false),
            ("/etc/passwd\n", false),
            ("a/../../b\n", false),
            ("a/..\n", false),
            ("..\n", false),
        ] {
            let (r, _) =
                run_logging_argv(&format!("printf '%s' {} | {CHECK_MEMBERS}", quote(names)));
            assert_eq!(r.status == 0, ok, "{names:?}");
        }
    }

    #[test]
    fn invalid_parameters_are_refused() {
        for (bad, at) in [
            (serde_json::json!({"src": "a.tgz", "dest": "/d"}), "/src"),
            (
                serde_json::json!({"src": "/a/../b.tgz", "dest": "/d"}),
                "/src",
            ),
            (serde_json::json!({"src": "/a.tgz", "dest": "/"}), "/dest"),
            (
                serde_json::json!({"src": "/a.tgz", "dest": "/d/../../x"}),
                "/dest",
            ),
            (
                serde_json::json!({"src": "/a.tgz", "dest": "/d", "sha256": "x"}),
                "/sha256",
            ),
            (
                serde_json::json!({"src": "/a.tgz", "dest": "/d", "strip_components": 99}),
                "/strip_components",
            ),
        ] {
            match (DEF.build)(bad.clone(), &mut NoRepo) {
                Err(e) => assert_eq!(e.pointer, at, "{bad}"),
                Ok(_) => panic!("accepted {bad}"),
            }
        }
    }
}
