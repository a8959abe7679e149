//! `git`: a checkout of a repository at a ref (branch, tag or commit) in a directory.
//!
//! Probe output: `dest=absent|repo|other` (`repo`: a directory with `.git`), `head=<commit>`
//! of a checkout, and `want=<commit>`: the ref resolved on the remote (`git ls-remote`; a
//! full commit id is its own resolution), or `want=unresolved` when the remote cannot be
//! asked (the apply then fetches anyway). In sync when `head` is `want`.
//!
//! The apply (re)points `origin` at the URL, fetches the ref (`--depth` when given), checks
//! out the fetched commit detached (`--force`: local changes in the checkout are discarded)
//! and fails unless `HEAD` is then the wanted commit. Only these transports are allowed:
//! https, http, ssh, git, file and `user@host:path`; `ext::` and other helpers never run
//! (`protocol.allow=never` except those). A deploy key is a file on the host (`key_file`),
//! used with `IdentitiesOnly` and strict host key checking against `known_hosts` when given.
//! Signature verification of the commit is not implemented.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::sh::{self, quote, Observed};
use super::{
    step, BuildError, Change, ChangeKind, Example, Field, ModuleDef, ProbeError, ProbeResult,
    Resource, Runs,
};

/// A git checkout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Repository URL: `https://`, `http://`, `ssh://`, `git://`, `file://` or `user@host:path`.
    pub repo: String,
    /// Absolute path of the checkout.
    #[schemars(regex(pattern = r"^/"))]
    pub dest: String,
    /// Branch, tag, or full commit id (40 or 64 hex digits).
    #[serde(default = "head")]
    pub version: String,
    /// Fetch only this many commits of history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
    /// A private key on the host for ssh URLs (a deploy key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"))]
    pub key_file: Option<String>,
    /// A known_hosts file on the host for ssh URLs (strict host key checking).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"))]
    pub known_hosts: Option<String>,
}

fn head() -> String {
    "HEAD".into()
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct Git {
    pub params: Params,
    commit: bool,
}

fn valid_repo(r: &str) -> bool {
    let scheme = ["https://", "http://", "ssh://", "git://", "file://"]
        .iter()
        .any(|s| r.len() > s.len() && r.starts_with(s));
    // scp-like: user@host:path, no `::` (transport helpers look like that)
    let scp = r.split_once(':').is_some_and(|(h, p)| {
        !h.is_empty()
            && !p.is_empty()
            && !h.contains('/')
            && !r.contains("::")
            && !r.contains("://")
    });
    !r.starts_with('-')
        && !r.chars().any(|c| c.is_control() || c.is_whitespace())
        && (scheme || scp)
}

fn valid_ref(v: &str) -> bool {
    !v.is_empty()
        && !v.starts_with(['-', '/', '.'])
        && !v.ends_with(['/', '.'])
        && !v.contains("..")
        && !v.contains("@{")
        && !v.ends_with(".lock")
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._+-".contains(&b))
}

fn abs(p: &str) -> bool {
    p.starts_with('/')
        && p.len() > 1
        && !p.split('/').any(|c| c == "..")
        && !p.chars().any(char::is_control)
}

impl super::FromParams for Git {
    type Params = Params;
    fn from_params(params: Params) -> Result<Git, BuildError> {
        if !valid_repo(&params.repo) {
            return Err(BuildError::at(
                "/repo",
                "must be an https://, http://, ssh://, git:// or file:// URL, or user@host:path, without spaces",
            ));
        }
        if !abs(&params.dest) {
            return Err(BuildError::at(
                "/dest",
                "must be an absolute path other than `/`, without `..`",
            ));
        }
        if !valid_ref(&params.version) {
            return Err(BuildError::at(
                "/version",
                "must be a branch, tag or commit id: letters, digits and `/._+-`, no `..`",
            ));
        }
        for (f, v) in [
            ("key_file", &params.key_file),
            ("known_hosts", &params.known_hosts),
        ] {
            if v.as_deref().is_some_and(|p| !abs(p)) {
                return Err(BuildError::at(
                    format!("/{f}"),
                    "must be an absolute path without `..`",
                ));
            }
        }
        if params.depth == Some(0) {
            return Err(BuildError::at("/depth", "must be at least 1"));
        }
        let v = &params.version;
        let commit = (v.len() == 40 || v.len() == 64) && v.bytes().all(|b| b.is_ascii_hexdigit());
        Ok(Git { params, commit })
    }
}

pub static DEF: ModuleDef = ModuleDef::of::<Git>(
    "git",
    "A git checkout at a branch, tag or commit; depth; deploy key; in sync by commit.",
    Runs::Local { rooted: None },
    &["dest", "head", "want"],
    &[Example {
        name: "a tag, then a branch that moved on",
        setup: &[(
            "command",
            r#"{"run": "g() { git -c user.name=plumb -c user.email=plumb@localhost -c init.defaultBranch=main \"$@\"; }; set -e; g init -q '{root}/src'; cd '{root}/src'; echo 1 > f; g add f; g commit -qm one; g tag v1; echo 2 > f; g commit -qam two", "creates": "{root}/src"}"#,
        )],
        steps: &[
            step(
                r#"{"repo": "file://{root}/src", "dest": "{root}/it's $(co)", "version": "v1", "depth": 1}"#,
                ChangeKind::Create,
            ),
            step(
                r#"{"repo": "file://{root}/src", "dest": "{root}/it's $(co)", "version": "main"}"#,
                ChangeKind::Modify,
            ),
        ],
    }],
)
.reversibility(super::Reversibility::Reversible)
.prune(super::Prune::Never("a checkout is not removed by prune: declare a `directory` step with `state: absent`"));

/// `git` with only the allowed transports and the environment for ssh URLs.
impl Git {
    fn env(&self) -> String {
        let mut ssh = String::from("ssh -o BatchMode=yes");
        if let Some(k) = &self.params.key_file {
            ssh += &format!(" -o IdentitiesOnly=yes -i {}", quote(k));
        }
        if let Some(k) = &self.params.known_hosts {
            ssh += &format!(
                " -o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
                quote(k)
            );
        }
        format!(
            r#"r={r}
dest={dest}
v={v}
GIT_SSH_COMMAND={ssh}; GIT_TERMINAL_PROMPT=0; GIT_ALLOW_PROTOCOL=https:http:ssh:git:file; export GIT_SSH_COMMAND GIT_TERMINAL_PROMPT GIT_ALLOW_PROTOCOL
g() {{ git -c protocol.allow=never -c protocol.https.allow=always -c protocol.http.allow=always -c protocol.ssh.allow=always -c protocol.git.allow=always -c protocol.file.allow=always -c core.hooksPath=/dev/null "$@" </dev/null; }}
"#,
            r = quote(&self.params.repo),
            dest = quote(&self.params.dest),
            v = quote(&self.params.version),
            ssh = quote(&ssh),
        )
    }
}

impl Resource for Git {
    fn target(&self) -> String {
        self.params.dest.clone()
    }
    fn desired(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }
    fn probe(&self) -> String {
        let want = if self.commit {
            "printf 'want=%s\\n' \"$v\"".to_string()
        } else {
            // Tags: the peeled commit (`^{}`) when the tag is annotated; else the branch/tag.
            r#"w=$(g ls-remote "$r" "$v" "refs/tags/$v^{}" 2>/dev/null | awk -v v="$v" '
$2 == "refs/tags/" v "^{}" { peeled = $1 } $2 == "refs/heads/" v || $2 == "refs/tags/" v || $2 == v { plain = $1 }
END { if (peeled != "") print peeled; else print plain }')
printf 'want=%s\n' "${w:-unresolved}""#
                .to_string()
        };
        format!(
            r#"{env}if [ -d "$dest/.git" ] && [ ! -L "$dest" ]; then echo dest=repo; printf 'head=%s\n' "$(g -C "$dest" rev-parse -q --verify HEAD 2>/dev/null)"
elif [ -e "$dest" ] || [ -L "$dest" ]; then if [ -d "$dest" ] && [ ! -L "$dest" ] && [ -z "$(ls -A -- "$dest")" ]; then echo dest=absent; else echo dest=other; fi
else echo dest=absent; fi
{want}"#,
            env = self.env()
        )
    }
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError> {
        let o = Observed::parse(observed)?;
        let want = o.req("want")?;
        let head = o.get("head").filter(|h| !h.is_empty());
        match o.req("dest")? {
            "other" => Err(ProbeError::new(format!(
                "{} exists and is not a git checkout: a git step will not replace it",
                self.params.dest
            ))),
            "absent" => {
                let mut c =
                    Change::new(ChangeKind::Create).field(Field::Version, None, Some(want.into()));
                if want == "unresolved" {
                    c = c.note(format!(
                        "{} could not be resolved on the remote now",
                        self.params.version
                    ));
                }
                Ok(c)
            }
            _ if head.is_some_and(|h| h == want || self.commit && h.eq_ignore_ascii_case(want)) => {
                Ok(Change::in_sync())
            }
            _ => {
                let mut c = Change::new(ChangeKind::Modify).field(
                    Field::Version,
                    head.map(str::to_string),
                    Some(want.into()),
                );
                if want == "unresolved" {
                    c = c.note(format!(
                        "{} could not be resolved on the remote now",
                        self.params.version
                    ));
                }
                Ok(c)
            }
        }
    }
    fn apply(&self, change: &Change) -> String {
        if change.kind == ChangeKind::InSync {
            return ":".into();
        }
        let depth = self
            .params
            .depth
            .map(|d| format!(" --depth={d}"))
            .unwrap_or_default();
        let check = if self.commit {
            "w=$v\n".to_string()
        } else {
            "w=$(g -C \"$dest\" rev-parse -q --verify FETCH_HEAD^{commit}) || exit 1\n".to_string()
        };
        format!(
            r#"{env}if [ ! -d "$dest/.git" ]; then
mkdir -p -- "$dest" || exit 1
g init -q -- "$dest" || exit 1
fi
if g -C "$dest" remote get-url origin >/dev/null 2>&1; then g -C "$dest" remote set-url origin "$r" || exit 1; else g -C "$dest" remote add origin "$r" || exit 1; fi
g -C "$dest" fetch -q{depth} origin -- "$v" || {fail}
{check}g -C "$dest" checkout -q --force --detach "$w" || exit 1
h=$(g -C "$dest" rev-parse HEAD) || exit 1
[ "$h" = "$w" ] || {{ printf 'checked out %s, wanted %s\n' "$h" "$w" >&2; exit 1; }}
"#,
            env = self.env(),
            fail = sh::fail(&format!(
                "fetching {} from {} failed",
                self.params.version, self.params.repo
            )),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    const C: &str = "0123456789abcdef0123456789abcdef01234567";

    fn git(v: serde_json::Value) -> Box<dyn Resource> {
        built(DEF.build, v)
    }

    #[test]
    fn branch_probe_and_apply() {
        let r = git(
            serde_json::json!({"repo": "git@example.invalid:team/app.git", "dest": "/srv/app", "version": "release/1.2", "depth": 1, "key_file": "/etc/plumb/deploy key", "known_hosts": "/etc/plumb/known_hosts"}),
        );
        insta::assert_snapshot!("git_probe", r.probe());
        let c = r
            .diff(&out(&format!("dest=repo\nhead=aaaa\nwant={C}\n")))
            .unwrap();
        assert_eq!(c.kind, ChangeKind::Modify);
        insta::assert_snapshot!("git_apply", r.apply(&c));
        assert_eq!(
            r.diff(&out(&format!("dest=repo\nhead={C}\nwant={C}\n")))
                .unwrap(),
            Change::in_sync()
        );
        let c = r.diff(&out("dest=absent\nwant=unresolved\n")).unwrap();
        assert_eq!(c.kind, ChangeKind::Create);
        assert!(c.notes[0].contains("could not be resolved"));
        let e = diff_error(r.as_ref(), "dest=other\nwant=x\n");
        assert!(e.contains("not a git checkout"), "{e}");
    }

    #[test]
    fn a_commit_resolves_to_itself() {
        let r = git(
            serde_json::json!({"repo": "https://example.invalid/app.git", "dest": "/srv/app", "version": C.to_uppercase()}),
        );
        assert!(
            r.probe().contains("printf 'want=%s\\n' \"$v\"") && !r.probe().contains("ls-remote")
        );
        assert_eq!(
            r.diff(&out(&format!(
                "dest=repo\nhead={C}\nwant={}\n",
                C.to_uppercase()
            )))
            .unwrap(),
            Change::in_sync()
        );
    }

    #[test]
    fn hostile_values_are_refused() {
        let ok = serde_json::json!({"repo": "https://h/r.git", "dest": "/d"});
        for (k, v, at) in [
            ("repo", "ext::sh -c touch% /tmp/pwned", "/repo"),
            ("repo", "-uhelp", "/repo"),
            ("repo", "https://h/r .git", "/repo"),
            ("repo", "fd::17", "/repo"),
            ("dest", "d", "/dest"),
            ("dest", "/a/../b", "/dest"),
            ("version", "--upload-pack=touch /tmp/x", "/version"),
            ("version", "a..b", "/version"),
            ("version", "$(id)", "/version"),
            ("key_file", "k", "/key_file"),
        ] {
            let mut p = ok.clone();
            p[k] = v.into();
            match (DEF.build)(p.clone(), &mut NoRepo) {
                Err(e) => assert_eq!(e.pointer, at, "{p}"),
                Ok(_) => panic!("accepted {p}"),
            }
        }
        assert!(valid_repo("git@github.com:o/r.git") && valid_repo("file:///srv/r"));
    }
}
