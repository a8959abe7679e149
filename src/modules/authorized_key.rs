//! `authorized_key`: SSH public keys in a user's `~/.ssh/authorized_keys`.
//!
//! Probe and apply run **as that user** (`runuser`, else `su`): a user's home is theirs, so
//! nothing they could link or swap there can make root read or write another file. Probe
//! output: `user=present|absent`; `ssh=absent|directory|other` and, for a directory, its
//! `ssh_mode=`; `file=absent|file|other` and, for a file, `file_mode=` and `content_b64=`
//! (at most 256 KiB; a larger file is an error).
//!
//! The wanted file is computed from what is there: `exclusive` keeps only the listed keys;
//! otherwise other lines stay, a listed key already present (same type and base64 blob) is
//! replaced in place by its wanted line (options and comment), missing ones are appended;
//! `state: absent` removes the listed keys. `.ssh` is made 0700, the file 0600, written to a
//! private file and renamed into place.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::sh::{self, quote, Observed};
use super::{
    step, BuildError, Change, ChangeKind, ContentChange, Example, Field, ModuleDef, Presence,
    ProbeError, ProbeResult, Resource, Runs,
};

/// Public keys a user accepts for SSH logins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The user whose `~/.ssh/authorized_keys` this is.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$"))]
    pub user: String,
    /// Public keys, one line each: `ssh-ed25519 AAAA... comment`.
    #[schemars(length(min = 1))]
    pub keys: Vec<String>,
    /// sshd options put before every listed key, e.g. `no-port-forwarding,from="10.0.0.0/8"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
    /// Remove every key that is not listed.
    #[serde(default)]
    pub exclusive: bool,
    /// `absent`: remove the listed keys.
    #[serde(default)]
    pub state: Presence,
}

/// Largest authorized_keys file plumb reads.
pub const MAX_BYTES: u64 = 256 * 1024;

/// One parsed public key line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    /// `type blob`: what identifies the key.
    id: String,
    line: String,
}

const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// The `type blob` of an authorized_keys line (options before the type are skipped).
fn key_id(line: &str) -> Option<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| KEY_TYPES.contains(w))?;
    let blob = words.get(i + 1)?;
    Some(format!("{} {blob}", words[i]))
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct AuthorizedKey {
    pub params: Params,
    keys: Vec<Key>,
}

impl super::FromParams for AuthorizedKey {
    type Params = Params;
    fn from_params(params: Params) -> Result<AuthorizedKey, BuildError> {
        if params.user.is_empty()
            || params.user.starts_with('-')
            || !params
                .user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-$".contains(&b))
        {
            return Err(BuildError::at("/user", "must be a user name"));
        }
        if let Some(o) = &params.options {
            if o.trim().is_empty() || o.trim() != o || o.chars().any(char::is_control) {
                return Err(BuildError::at(
                    "/options",
                    "must be one line of sshd key options, e.g. no-pty,from=\"10.0.0.0/8\"",
                ));
            }
        }
        if params.keys.is_empty() {
            return Err(BuildError::at("/keys", "list at least one key"));
        }
        let mut keys = Vec::new();
        for (i, k) in params.keys.iter().enumerate() {
            let k = k.trim();
            let words: Vec<&str> = k.split_whitespace().collect();
            let ok = k.chars().all(|c| !c.is_control())
                && words.len() >= 2
                && KEY_TYPES.contains(&words[0])
                && words[1]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
            if !ok {
                return Err(BuildError::at(
                    format!("/keys/{i}"),
                    "must be one public key line: `<type> <base64> [comment]` (type ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256, ...)",
                ));
            }
            let id = format!("{} {}", words[0], words[1]);
            let line = match &params.options {
                Some(o) => format!("{o} {}", words.join(" ")),
                None => words.join(" "),
            };
            keys.push(Key { id, line });
        }
        Ok(AuthorizedKey { params, keys })
    }
}

pub static DEF: ModuleDef = ModuleDef::of::<AuthorizedKey>(
    "authorized_key",
    "SSH public keys of a user (exclusive or added), with options; .ssh 0700, the file 0600.",
    Runs::Host,
    &[
        "user",
        "ssh",
        "ssh_mode",
        "file",
        "file_mode",
        "content_b64",
    ],
    &[Example {
        name: "add a key for a new user, add another, make it exclusive, remove it",
        setup: &[("user", r#"{"name": "plumbkeys"}"#)],
        steps: &[
            step(
                r#"{"user": "plumbkeys", "keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAA it's $(me)"]}"#,
                ChangeKind::Create,
            ),
            step(
                r#"{"user": "plumbkeys", "keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBBB ci"], "options": "no-pty,from=\"10.0.0.0/8\""}"#,
                ChangeKind::Modify,
            ),
            step(
                r#"{"user": "plumbkeys", "keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBBB ci"], "exclusive": true}"#,
                ChangeKind::Modify,
            ),
            step(
                r#"{"user": "plumbkeys", "keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBBB"], "state": "absent"}"#,
                ChangeKind::Modify,
            ),
        ],
    }],
)
.reversibility(super::Reversibility::Reversible)
.prune(super::Prune::Absent(|p| super::absent_with(p, &["user", "keys"])));

/// Runs the sh fragment `script` as the user `$u` (runuser, else su), stdin from /dev/null.
fn as_user(script: &str) -> String {
    format!(
        r#"if command -v runuser >/dev/null 2>&1; then runuser -u "$u" -- sh -c {s} </dev/null; else su -s /bin/sh -c {s} -- "$u" </dev/null; fi"#,
        s = quote(script)
    )
}

impl AuthorizedKey {
    fn head(&self) -> String {
        format!(
            "u={}\nif ! h=$(getent passwd \"$u\" | cut -d: -f6) || [ -z \"$h\" ]; then echo user=absent; exit 0; fi\necho user=present\n",
            quote(&self.params.user)
        )
    }

    /// The wanted file, from the current one.
    fn wanted(&self, current: &str) -> String {
        let mut lines: Vec<String> = Vec::new();
        let mut placed = vec![false; self.keys.len()];
        for l in current.lines() {
            let t = l.trim();
            let listed = key_id(t).and_then(|id| self.keys.iter().position(|k| k.id == id));
            match (listed, self.params.state) {
                (Some(_), Presence::Absent) => {}
                (Some(i), Presence::Present) => {
                    if !placed[i] {
                        placed[i] = true;
                        lines.push(self.keys[i].line.clone());
                    }
                }
                (None, _) if self.params.exclusive && !t.is_empty() && !t.starts_with('#') => {}
                (None, _) => lines.push(l.to_string()),
            }
        }
        if self.params.state == Presence::Present {
            for (k, done) in self.keys.iter().zip(placed) {
                if !done {
                    lines.push(k.line.clone());
                }
            }
        }
        let mut s = lines.join("\n");
        if !s.is_empty() {
            s.push('\n');
        }
        s
    }
}

impl Resource for AuthorizedKey {
    fn target(&self) -> String {
        format!("~{}/.ssh/authorized_keys", self.params.user)
    }
    /// The file is in the user's home, which is known on the host only: it shares through
    /// the user.
    fn touches(&self) -> super::Touches {
        super::Touches::only([super::Touch::User(self.params.user.clone())])
    }
    fn desired(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }
    fn probe(&self) -> String {
        let inner = format!(
            r#"s="$HOME/.ssh"; p="$s/authorized_keys"
if [ -L "$s" ] || {{ [ -e "$s" ] && [ ! -d "$s" ]; }}; then echo ssh=other; exit 0; fi
if [ ! -d "$s" ]; then echo ssh=absent; echo file=absent; exit 0; fi
echo ssh=directory; printf 'ssh_mode=%s\n' "$(stat -c %a -- "$s")"
if [ -L "$p" ] || {{ [ -e "$p" ] && [ ! -f "$p" ]; }}; then echo file=other; exit 0; fi
if [ ! -e "$p" ]; then echo file=absent; exit 0; fi
echo file=file; printf 'file_mode=%s\n' "$(stat -c %a -- "$p")"
[ "$(stat -c %s -- "$p")" -le {max} ] || {{ echo "$p is larger than {max} bytes" >&2; exit 1; }}
{content}"#,
            max = MAX_BYTES,
            content = sh::print_b64("content", "cat -- \"$p\""),
        );
        format!("{}HOME=$h; export HOME\n{}", self.head(), as_user(&inner))
    }
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError> {
        let o = Observed::parse(observed)?;
        if o.req("user")? == "absent" {
            if self.params.state == Presence::Absent {
                return Ok(Change::in_sync());
            }
            let wanted = self.wanted("");
            let mut c = Change::new(ChangeKind::Create)
                .field(
                    Field::Content,
                    None,
                    Some(format!("{} keys", self.keys.len())),
                )
                .note(format!(
                    "user {} does not exist yet: an earlier step must create it",
                    self.params.user
                ));
            c.content = Some(Box::new(ContentChange {
                old: None,
                new: Some(wanted.into_bytes()),
            }));
            return Ok(c);
        }
        let ssh = o.req("ssh")?;
        if ssh == "other" {
            return Err(ProbeError::new(format!(
                "~{}/.ssh is not a directory (or is a symbolic link): plumb will not write through it",
                self.params.user
            )));
        }
        let file = o.req("file")?;
        if file == "other" {
            return Err(ProbeError::new(format!(
                "~{}/.ssh/authorized_keys is not a regular file (or is a symbolic link)",
                self.params.user
            )));
        }
        let old = o.text("content")?.unwrap_or_default();
        let wanted = self.wanted(&old);
        let kind = if file == "absent" {
            ChangeKind::Create
        } else {
            ChangeKind::Modify
        };
        let mut c = Change::new(kind);
        if old != wanted && !(file == "absent" && self.params.state == Presence::Absent) {
            c = c.field(Field::Content, None, None);
            c.content = Some(Box::new(ContentChange {
                old: (file == "file").then(|| old.into_bytes()),
                new: Some(wanted.into_bytes()),
            }));
        }
        if file == "absent" && c.fields.is_empty() {
            return Ok(Change::in_sync());
        }
        let ssh_mode = o.get("ssh_mode").map(sh::norm_mode);
        if ssh == "directory" && ssh_mode.as_deref() != Some("0700") {
            c = c.field(Field::Mode, ssh_mode, Some("0700".into()));
        }
        let file_mode = o.get("file_mode").map(sh::norm_mode);
        if file == "file" && file_mode.as_deref() != Some("0600") {
            c = c.field(Field::Mode, file_mode, Some("0600".into()));
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
        let new = change
            .content
            .as_ref()
            .and_then(|c| c.new.clone())
            .unwrap_or_else(|| self.wanted("").into_bytes());
        let enter = sh::enter_dir("\"$HOME/.ssh\"", "authorized_keys", sh::Missing::Create);
        let inner = if change.changes_field(Field::Content) {
            format!(
                "{enter}chmod 0700 . || exit 1\n{private}{write} || exit 1\nchmod 0600 f || exit 1\nmv -f -T -- f \"../$b\" || exit 1\n",
                private = sh::PRIVATE_DIR,
                write = sh::write_bytes(&new, "f"),
            )
        } else {
            format!(
                "{enter}chmod 0700 . || exit 1\nif [ -f \"./$b\" ] && [ ! -L \"./$b\" ]; then chmod 0600 \"./$b\" || exit 1; fi\n"
            )
        };
        format!(
            "u={u}\nh=$(getent passwd \"$u\" | cut -d: -f6)\ncase $h in /*) ;; *) {nouser} ;; esac\nHOME=$h; export HOME\n{run} || exit 1\n",
            u = quote(&self.params.user),
            nouser = sh::fail(&format!("user {} does not exist (or has no absolute home directory)", self.params.user)),
            run = as_user(&inner)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    const A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAA alice";
    const B: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBBB bob";

    fn keys(v: serde_json::Value) -> Box<dyn Resource> {
        built(DEF.build, v)
    }

    fn seen(content: &str) -> ProbeResult {
        out(&format!(
            "user=present\nssh=directory\nssh_mode=700\nfile=file\nfile_mode=600\ncontent_b64={}\n",
            sh::b64(content.as_bytes())
        ))
    }

    fn new_content(c: &Change) -> String {
        String::from_utf8_lossy(
            c.content
                .as_ref()
                .and_then(|c| c.new.as_deref())
                .unwrap_or_default(),
        )
        .into_owned()
    }

    #[test]
    fn additive_exclusive_and_absent() {
        let r = keys(serde_json::json!({"user": "deploy", "keys": [A], "options": "no-pty"}));
        insta::assert_snapshot!("authorized_key_probe", r.probe());
        let c = r
            .diff(&seen(&format!(
                "# team\n{B}\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAA old-comment\n"
            )))
            .unwrap();
        assert_eq!(new_content(&c), format!("# team\n{B}\nno-pty {A}\n"));
        insta::assert_snapshot!("authorized_key_apply", r.apply(&c));
        assert_eq!(
            r.diff(&seen(&format!("{B}\nno-pty {A}\n"))).unwrap(),
            Change::in_sync()
        );
        let x = keys(serde_json::json!({"user": "deploy", "keys": [A], "exclusive": true}));
        let c = x.diff(&seen(&format!("# team\n{B}\n{A}\n"))).unwrap();
        assert_eq!(new_content(&c), format!("# team\n{A}\n"));
        let gone = keys(serde_json::json!({"user": "deploy", "keys": [A], "state": "absent"}));
        let c = gone.diff(&seen(&format!("{B}\n{A}\n"))).unwrap();
        assert_eq!(new_content(&c), format!("{B}\n"));
        assert_eq!(
            gone.diff(&seen(&format!("{B}\n"))).unwrap(),
            Change::in_sync()
        );
        assert_eq!(
            gone.diff(&out("user=present\nssh=absent\nfile=absent\n"))
                .unwrap(),
            Change::in_sync()
        );
    }

    #[test]
    fn modes_and_refusals() {
        let r = keys(serde_json::json!({"user": "deploy", "keys": [A]}));
        let c = r
            .diff(&out(&format!("user=present\nssh=directory\nssh_mode=755\nfile=file\nfile_mode=644\ncontent_b64={}\n", sh::b64(format!("{A}\n").as_bytes()))))
            .unwrap();
        assert_eq!(c.fields.len(), 2);
        let a = r.apply(&c);
        assert!(a.contains("chmod 0600") && !a.contains("base64 -d"), "{a}");
        let e = diff_error(r.as_ref(), "user=present\nssh=other\n");
        assert!(e.contains("symbolic link"), "{e}");
        let c = r.diff(&out("user=absent\n")).unwrap();
        assert!(c.notes[0].contains("does not exist yet"));
        assert!(r.apply(&c).contains("runuser -u \"$u\""));
    }

    #[test]
    fn hostile_values_are_refused() {
        for (bad, at) in [
            (serde_json::json!({"user": "-x", "keys": [A]}), "/user"),
            (serde_json::json!({"user": "a b", "keys": [A]}), "/user"),
            (
                serde_json::json!({"user": "d", "keys": ["ssh-ed25519 AAAA\nssh-rsa BBBB"]}),
                "/keys/0",
            ),
            (
                serde_json::json!({"user": "d", "keys": ["command=\"sh\" ssh-ed25519 AAAA"]}),
                "/keys/0",
            ),
            (
                serde_json::json!({"user": "d", "keys": ["ssh-ed25519 $(id)"]}),
                "/keys/0",
            ),
            (serde_json::json!({"user": "d", "keys": []}), "/keys"),
            (
                serde_json::json!({"user": "d", "keys": [A], "options": "a\nb"}),
                "/options",
            ),
        ] {
            match (DEF.build)(bad.clone(), &mut NoRepo) {
                Err(e) => assert_eq!(e.pointer, at, "{bad}"),
                Ok(_) => panic!("accepted {bad}"),
            }
        }
    }
}
