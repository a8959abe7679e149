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
//! used with `IdentitiesOnly` and strict host key checking against `known_hosts` when given;
//! or the key itself (`key`, e.g. `"{{ secrets.app_deploy_key }}"`) and known_hosts lines
//! (`known_hosts_content`): the fragment writes them 0600 into a private `mktemp -d`
//! directory, points `GIT_SSH_COMMAND` at them (`-i`, `UserKnownHostsFile`: only paths reach
//! an argument vector; the key travels base64 in the script, on stdin) and removes the
//! directory when it exits.
//!
//! `verify:` checks the wanted commit's signature with plumb's own verifier (the one for the
//! config repo, `source::signature`) before anything is checked out: the probe prints the
//! raw commit object of the wanted commit (`commit=`, base64, at most 1 MiB: from the
//! checkout when it has it, else fetched with `--depth=1` into a temporary bare repository
//! that is removed), `diff` checks that those bytes hash to the wanted id and verifies them
//! against the allowed-signers file and/or OpenPGP keyring named in `verify:` (files of the
//! config repo, read at render time: the trust root is signed with the repo and out of the
//! host's reach). A bad or missing signature fails the step's observation, so nothing on the
//! host changes; the apply checks out exactly the verified id.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::sh::{self, quote, Observed};
use super::{
    step, BuildError, Change, ChangeKind, Example, Field, ModuleDef, ProbeError, ProbeResult,
    RepoRead, Resolve, Resource, Runs,
};
use crate::source::Trust;

/// Largest raw commit object a probe returns for verification.
const MAX_RAW_COMMIT: usize = 1 << 20;

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
    /// The deploy key itself (a private key's text), e.g. `"{{ secrets.app_deploy_key }}"`:
    /// written 0600 into a private temporary directory for this step's git commands only and
    /// removed after them. Conflicts with `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// known_hosts lines for ssh URLs (strict host key checking), written beside `key`.
    /// Conflicts with `known_hosts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts_content: Option<String>,
    /// Verify the wanted commit's signature (SSH or OpenPGP) before checking it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
}

/// `verify:` of a git step: the trust root, as files of the config repo (under `files/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    /// An allowed-signers file (OpenSSH format, as git's `gpg.ssh.allowedSignersFile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_signers: Option<String>,
    /// An armored OpenPGP public keyring (`gpg --export --armor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openpgp_keyring: Option<String>,
}

fn head() -> String {
    "HEAD".into()
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct Git {
    pub params: Params,
    commit: bool,
    /// The trust root of `verify:`, parsed at build.
    trust: Option<Trust>,
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
        for (a, b) in [("key_file", "key"), ("known_hosts", "known_hosts_content")] {
            let p = &params;
            let set = |f: &str| match f {
                "key_file" => p.key_file.is_some(),
                "key" => p.key.is_some(),
                "known_hosts" => p.known_hosts.is_some(),
                _ => p.known_hosts_content.is_some(),
            };
            if set(a) && set(b) {
                return Err(BuildError::at(
                    format!("/{b}"),
                    format!("`{b}` conflicts with `{a}`: give one of them"),
                ));
            }
        }
        if params
            .verify
            .as_ref()
            .is_some_and(|v| v.allowed_signers.is_none() && v.openpgp_keyring.is_none())
        {
            return Err(BuildError::at(
                "/verify",
                "needs `allowed_signers` and/or `openpgp_keyring` (files under files/)",
            ));
        }
        let v = &params.version;
        let commit = (v.len() == 40 || v.len() == 64) && v.bytes().all(|b| b.is_ascii_hexdigit());
        Ok(Git {
            params,
            commit,
            trust: None,
        })
    }
}

/// Builds a git step; `verify:`'s files are read from the repo and parsed here.
fn build(
    value: serde_json::Value,
    resolve: &mut dyn Resolve,
) -> Result<Box<dyn Resource>, BuildError> {
    let mut git: Git = super::parse(value)?;
    if let Some(v) = git.params.verify.clone() {
        git.trust = Some(load_trust(&v, resolve)?);
    }
    Ok(Box::new(git))
}

fn load_trust(v: &Verify, resolve: &mut dyn Resolve) -> Result<Trust, BuildError> {
    let mut read = |at: &str, name: &str| -> Result<String, BuildError> {
        let bytes = resolve.file(name).map_err(|e| BuildError::at(at, e))?;
        String::from_utf8(bytes).map_err(|_| BuildError::at(at, "is not UTF-8 text"))
    };
    let mut trust = Trust::default();
    if let Some(name) = &v.allowed_signers {
        let text = read("/verify/allowed_signers", name)?;
        trust.ssh = Some(
            crate::source::AllowedSigners::parse(&format!("files/{name}"), &text)
                .map_err(|e| BuildError::at("/verify/allowed_signers", e.to_string()))?,
        );
    }
    if let Some(name) = &v.openpgp_keyring {
        let text = read("/verify/openpgp_keyring", name)?;
        trust.openpgp = Some(
            crate::source::Keyring::parse(&format!("files/{name}"), &text)
                .map_err(|e| BuildError::at("/verify/openpgp_keyring", e.to_string()))?,
        );
    }
    Ok(trust)
}

/// The id git gives the commit object `raw` (SHA-1, or SHA-256 when `want` is 64 digits).
fn commit_id(raw: &[u8], sha256: bool) -> String {
    use sha2::Digest;
    if sha256 {
        let mut h = sha2::Sha256::new();
        h.update(format!("commit {}\0", raw.len()));
        h.update(raw);
        hex::encode(h.finalize())
    } else {
        git2::Oid::hash_object(git2::ObjectType::Commit, raw)
            .map(|o| o.to_string())
            .unwrap_or_default()
    }
}

pub static DEF: ModuleDef = ModuleDef {
    build,
    reads: &[
        RepoRead::File("/verify/allowed_signers"),
        RepoRead::File("/verify/openpgp_keyring"),
    ],
    ..ModuleDef::of::<Git>(
    "git",
    "A git checkout at a branch, tag or commit; depth; deploy key; signature verified; in sync by commit.",
    Runs::Local { rooted: None },
    &["dest", "head", "want", "commit"],
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
}
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
        // A key or known_hosts given as content: written 0600 into a private directory
        // (mktemp -d is 0700) that the fragment removes when it exits; GIT_SSH_COMMAND
        // names the files (git runs it through sh, so the paths are single-quoted there).
        let mut private = String::new();
        let written = [
            (&self.params.key, "key", "-o IdentitiesOnly=yes -i"),
            (
                &self.params.known_hosts_content,
                "known_hosts",
                "-o StrictHostKeyChecking=yes -o UserKnownHostsFile=",
            ),
        ];
        if written.iter().any(|(v, ..)| v.is_some()) {
            private.push_str(
                "pk=$(mktemp -d) || exit 1\ncase $pk in *\"'\"*) exit 1;; esac\ntrap 'rm -rf -- \"$pk\"' EXIT\n",
            );
        }
        let mut more = String::new();
        for (value, name, opt) in written {
            if let Some(v) = value {
                let mut text = v.clone();
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, text);
                private.push_str(&format!(
                    "(umask 077; printf '%s' {b64} | base64 -d > \"$pk/{name}\") || exit 1\n",
                    b64 = quote(&b64),
                ));
                let sep = if opt.ends_with('=') { "" } else { " " };
                more.push_str(&format!(
                    "GIT_SSH_COMMAND=\"$GIT_SSH_COMMAND {opt}{sep}'$pk/{name}'\"\n"
                ));
            }
        }
        format!(
            r#"r={r}
dest={dest}
v={v}
{private}GIT_SSH_COMMAND={ssh}
{more}GIT_TERMINAL_PROMPT=0; GIT_ALLOW_PROTOCOL=https:http:ssh:git:file; export GIT_SSH_COMMAND GIT_TERMINAL_PROMPT GIT_ALLOW_PROTOCOL
g() {{ git -c protocol.allow=never -c protocol.https.allow=always -c protocol.http.allow=always -c protocol.ssh.allow=always -c protocol.git.allow=always -c protocol.file.allow=always -c core.hooksPath=/dev/null "$@" </dev/null; }}
"#,
            r = quote(&self.params.repo),
            dest = quote(&self.params.dest),
            v = quote(&self.params.version),
            ssh = quote(&ssh),
        )
    }
}
impl Git {
    /// The probe lines that resolve the wanted commit into `$W` (empty when unresolved).
    fn resolve_want(&self) -> &'static str {
        if self.commit {
            "W=$v\n"
        } else {
            // Tags: the peeled commit (`^{}`) when the tag is annotated; else the branch/tag.
            r#"W=$(g ls-remote "$r" "$v" "refs/tags/$v^{}" 2>/dev/null | awk -v v="$v" '
$2 == "refs/tags/" v "^{}" { peeled = $1 } $2 == "refs/heads/" v || $2 == "refs/tags/" v || $2 == v { plain = $1 }
END { if (peeled != "") print peeled; else print plain }')
"#
        }
    }

    /// With `verify:`, the probe lines that print the raw object of commit `$W` (base64,
    /// bounded): from the checkout when it has it, else fetched into a temporary bare
    /// repository that is removed.
    fn probe_commit(&self) -> String {
        if self.trust.is_none() {
            return String::new();
        }
        format!(
            r#"if [ -n "$W" ]; then
if [ -d "$dest/.git" ] && [ ! -L "$dest" ] && g -C "$dest" cat-file -e "$W^{{commit}}" 2>/dev/null; then
c=$(g -C "$dest" cat-file commit "$W" | head -c {max} | base64 | tr -d '\n')
else
t=$(mktemp -d) || exit 1
c=
if g init -q --bare "$t" >/dev/null 2>&1 && g -C "$t" fetch -q --depth=1 --filter=tree:0 "$r" "$v" 2>/dev/null; then c=$(g -C "$t" cat-file commit "$W" 2>/dev/null | head -c {max} | base64 | tr -d '\n'); fi
rm -rf -- "$t"
fi
printf 'commit=%s\n' "$c"
fi
"#,
            max = MAX_RAW_COMMIT + 1
        )
    }

    /// Verifies the raw commit the probe returned for `want`: the bytes must hash to `want`
    /// and carry a good signature of the `verify:` trust root.
    fn verify_want(&self, trust: &Trust, o: &Observed, want: &str) -> Result<String, ProbeError> {
        let what = format!("{} at {} ({})", self.params.repo, self.params.version, want);
        if want == "unresolved" {
            return Err(ProbeError::new(format!(
                "{} could not be resolved on {}, so its signature cannot be verified; nothing was changed",
                self.params.version, self.params.repo
            )));
        }
        let sha256 = match want.len() {
            40 => false,
            64 => true,
            _ => return Err(ProbeError::new(format!("{what}: not a commit id"))),
        };
        let raw = o
            .get("commit")
            .filter(|c| !c.is_empty())
            .and_then(|c| {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, c).ok()
            })
            .ok_or_else(|| {
                ProbeError::new(format!(
                    "{what}: the commit could not be fetched to verify its signature; nothing was changed"
                ))
            })?;
        if raw.len() > MAX_RAW_COMMIT || !commit_id(&raw, sha256).eq_ignore_ascii_case(want) {
            return Err(ProbeError::new(format!(
                "{what}: the host returned a commit object that is not this commit (or larger than 1 MiB); nothing was changed"
            )));
        }
        match crate::source::signature::verify_raw_commit(&raw, trust) {
            Ok(s) => Ok(format!(
                "commit {} signed by {} ({} {})",
                &want[..12],
                s.principal,
                s.key_type,
                s.fingerprint
            )),
            Err(f) => Err(ProbeError::new(format!(
                "{what}: signature refused: {}: {f}; sign it with a key of the step's verify: trust root; nothing was changed",
                f.reason.code()
            ))),
        }
    }
}

impl Resource for Git {
    fn target(&self) -> String {
        self.params.dest.clone()
    }
    fn touches(&self) -> super::Touches {
        super::Touches::only([super::Touch::path(&self.params.dest)])
    }
    fn desired(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.params).unwrap_or_default();
        if self.params.key.is_some() {
            v["key"] = "(hidden)".into();
        }
        v
    }
    fn probe(&self) -> String {
        format!(
            r#"{env}if [ -d "$dest/.git" ] && [ ! -L "$dest" ]; then echo dest=repo; printf 'head=%s\n' "$(g -C "$dest" rev-parse -q --verify HEAD 2>/dev/null)"
elif [ -e "$dest" ] || [ -L "$dest" ]; then if [ -d "$dest" ] && [ ! -L "$dest" ] && [ -n "$(find "$dest" -maxdepth 0 -empty)" ]; then echo dest=absent; else echo dest=other; fi
else echo dest=absent; fi
{want}printf 'want=%s\n' "${{W:-unresolved}}"
{commit}"#,
            env = self.env(),
            want = self.resolve_want(),
            commit = self.probe_commit(),
        )
    }
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError> {
        let o = Observed::parse(observed)?;
        let want = o.req("want")?;
        let head = o.get("head").filter(|h| !h.is_empty());
        let dest = o.req("dest")?;
        if dest == "other" {
            return Err(ProbeError::new(format!(
                "{} exists and is not a git checkout: a git step will not replace it",
                self.params.dest
            )));
        }
        let signed = match &self.trust {
            Some(trust) => Some(self.verify_want(trust, &o, want)?),
            None => None,
        };
        let unresolved = want == "unresolved";
        let mut c = match dest {
            "absent" => {
                Change::new(ChangeKind::Create).field(Field::Version, None, Some(want.into()))
            }
            _ if head.is_some_and(|h| h == want || self.commit && h.eq_ignore_ascii_case(want)) => {
                return Ok(Change::in_sync());
            }
            _ => Change::new(ChangeKind::Modify).field(
                Field::Version,
                head.map(str::to_string),
                Some(want.into()),
            ),
        };
        if unresolved {
            c = c.note(format!(
                "{} could not be resolved on the remote now",
                self.params.version
            ));
        }
        if let Some(s) = signed {
            c = c.note(s);
        }
        Ok(c)
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
        // With verify: exactly the verified commit, which the fetched ref must still be.
        let verified = self
            .trust
            .as_ref()
            .and(change.fields.iter().find(|f| f.field == Field::Version))
            .and_then(|f| f.to.as_deref());
        let check = match verified {
            _ if self.commit => "w=$v\n".to_string(),
            Some(id) => format!(
                "w={id}\nf=$(g -C \"$dest\" rev-parse -q --verify FETCH_HEAD^{{commit}}) || exit 1\n[ \"$f\" = \"$w\" ] || {fail}\n",
                id = quote(id),
                fail = sh::fail(&format!(
                    "{} moved on the remote after its signature was verified: nothing checked out",
                    self.params.version
                ))
            ),
            None => "w=$(g -C \"$dest\" rev-parse -q --verify FETCH_HEAD^{commit}) || exit 1\n".to_string(),
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
        assert!(r.probe().contains("W=$v\n") && !r.probe().contains("ls-remote"));
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
        for (extra, at) in [
            (serde_json::json!({"key_file": "/k", "key": "K"}), "/key"),
            (
                serde_json::json!({"known_hosts": "/kh", "known_hosts_content": "h k"}),
                "/known_hosts_content",
            ),
            (serde_json::json!({"verify": {}}), "/verify"),
        ] {
            let mut p = ok.clone();
            for (k, v) in extra.as_object().unwrap() {
                p[k] = v.clone();
            }
            match (DEF.build)(p.clone(), &mut NoRepo) {
                Err(e) => assert_eq!(e.pointer, at, "{p}"),
                Ok(_) => panic!("accepted {p}"),
            }
        }
    }

    /// A key and known_hosts given as content (e.g. from a secret) travel base64 in the
    /// script, are written 0600 into a private temporary directory removed on exit, and only
    /// their paths reach ssh's arguments; `plumb render` never shows the key.
    #[test]
    fn a_key_from_a_secret_is_data_written_privately_and_removed() {
        let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0 $(id) 'q'\n-----END OPENSSH PRIVATE KEY-----\n";
        let r = git(serde_json::json!({
            "repo": "ssh://git@example.invalid/app.git", "dest": "/srv/app",
            "key": key, "known_hosts_content": "example.invalid ssh-ed25519 AAAA"
        }));
        let probe = r.probe();
        insta::assert_snapshot!("git_probe_key_content", probe);
        assert!(
            !probe.contains("c2VjcmV0") && !probe.contains("$(id)"),
            "{probe}"
        );
        assert!(probe.contains("trap 'rm -rf -- \"$pk\"' EXIT"));
        assert!(r
            .apply(&Change::new(ChangeKind::Create))
            .contains("(umask 077;"));
        assert_eq!(r.desired()["key"], "(hidden)");
    }

    /// With `verify:`, what the host returns must hash to the wanted id, and be signed.
    #[test]
    fn verify_refuses_a_missing_or_substituted_commit_object() {
        struct Ring;
        impl Resolve for Ring {
            fn template(&mut self, _: &str) -> Result<String, String> {
                Err("no".into())
            }
            fn file(&mut self, _: &str) -> Result<Vec<u8>, String> {
                Ok(b"# nobody\n".to_vec())
            }
        }
        let r = (DEF.build)(
            serde_json::json!({"repo": "https://example.invalid/app.git", "dest": "/srv/app", "version": "main", "verify": {"allowed_signers": "s"}}),
            &mut Ring,
        )
        .unwrap();
        assert!(r.probe().contains("commit=%s"));
        let raw = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor A <a@b> 1 +0000\ncommitter A <a@b> 1 +0000\n\nunsigned\n";
        let id = commit_id(raw, false);
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, raw);
        for (out, says) in [
            (format!("dest=absent\nwant={id}\n"), "could not be fetched"),
            (
                "dest=absent\nwant=unresolved\n".to_string(),
                "could not be resolved",
            ),
            (
                format!("dest=absent\nwant={C}\ncommit={b64}\n"),
                "not this commit",
            ),
            (
                format!("dest=absent\nwant={id}\ncommit={b64}\n"),
                "unsigned",
            ),
        ] {
            let e = diff_error(r.as_ref(), &out);
            assert!(e.contains(says), "{out}: {e}");
        }
    }
}
