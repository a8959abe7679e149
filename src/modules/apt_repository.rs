//! `apt_repository`: an apt source as a deb822 file `/etc/apt/sources.list.d/<name>.sources`
//! whose `Signed-By` names the repository's armored key, written by the same step to
//! `/etc/apt/keyrings/<name>.asc`.
//!
//! Probe output: `sources=<sha256>|absent|other` and `key=<sha256>|absent|other`. The files
//! are generated deterministically from the parameters, so in sync is a hash comparison. The
//! apply writes what changed (private file, renamed into place), then runs `apt-get update`
//! (only then: nothing changed, no update); when the update fails, the previous files are
//! put back and the step fails, so the next run tries again. Put the step before the
//! `package` steps that need it: steps apply in order.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::sh::{self, quote, Observed};
use super::{
    step, BuildError, Change, ChangeKind, ContentChange, Example, Field, ModuleDef, Presence,
    ProbeError, ProbeResult, Resource, Runs,
};

/// A deb822 apt source with its signing key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// File stem: `/etc/apt/sources.list.d/<name>.sources`, `/etc/apt/keyrings/<name>.asc`.
    #[schemars(regex(pattern = r"^[a-z0-9][a-z0-9._-]*$"))]
    pub name: String,
    /// Repository URIs (`https://...`, `http://...`, `file:/...`).
    #[schemars(length(min = 1))]
    pub uris: Vec<String>,
    /// Suites (`bookworm`, `stable`, or a path ending in `/` for a flat repository).
    #[schemars(length(min = 1))]
    pub suites: Vec<String>,
    /// Components (`main`, ...); empty for a flat repository.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<String>,
    /// `deb`, `deb-src`.
    #[serde(default = "deb")]
    pub types: Vec<String>,
    /// Architectures (`amd64`, ...); empty: all of the host's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    /// The repository's ASCII-armored public key (`-----BEGIN PGP PUBLIC KEY BLOCK-----`).
    /// Required when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub state: Presence,
}

fn deb() -> Vec<String> {
    vec!["deb".into()]
}

pub const SOURCES_DIR: &str = "/etc/apt/sources.list.d";
pub const KEYRING_DIR: &str = "/etc/apt/keyrings";

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct AptRepository {
    pub params: Params,
    sources: Vec<u8>,
    key: Vec<u8>,
}

/// A deb822 field value: one word of printable ASCII, no `#` (it would start a comment).
fn word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'#')
}

impl super::FromParams for AptRepository {
    type Params = Params;
    fn from_params(params: Params) -> Result<AptRepository, BuildError> {
        let n = &params.name;
        if n.is_empty()
            || n.starts_with(['.', '-', '_'])
            || !n
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            return Err(BuildError::at(
                "/name",
                "lowercase letters, digits and `._-`, starting with a letter or digit",
            ));
        }
        let lists: [(&str, &Vec<String>, bool); 5] = [
            ("uris", &params.uris, true),
            ("suites", &params.suites, true),
            ("components", &params.components, false),
            ("types", &params.types, true),
            ("architectures", &params.architectures, false),
        ];
        for (field, values, required) in lists {
            if required && values.is_empty() {
                return Err(BuildError::at(format!("/{field}"), "must not be empty"));
            }
            if let Some(i) = values.iter().position(|v| !word(v)) {
                return Err(BuildError::at(
                    format!("/{field}/{i}"),
                    "must be one word of printable ASCII, without spaces or `#`",
                ));
            }
        }
        if let Some(i) = params
            .types
            .iter()
            .position(|t| t != "deb" && t != "deb-src")
        {
            return Err(BuildError::at(
                format!("/types/{i}"),
                "must be `deb` or `deb-src`",
            ));
        }
        if let Some(i) = params.uris.iter().position(|u| {
            !["https://", "http://", "file:/", "mirror+", "tor+"]
                .iter()
                .any(|p| u.starts_with(p))
        }) {
            return Err(BuildError::at(
                format!("/uris/{i}"),
                "must be an http(s):// or file:/ URI",
            ));
        }
        let key = match (&params.key, params.state) {
            (Some(k), _) => {
                let k = k.trim();
                if !k.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----")
                    || !k.ends_with("-----END PGP PUBLIC KEY BLOCK-----")
                {
                    return Err(BuildError::at(
                        "/key",
                        "must be an ASCII-armored public key (-----BEGIN PGP PUBLIC KEY BLOCK----- ... -----END PGP PUBLIC KEY BLOCK-----)",
                    ));
                }
                format!("{k}\n").into_bytes()
            }
            (None, Presence::Present) => {
                return Err(BuildError::at(
                    "",
                    "`key` is required: the repository's armored signing key (plumb writes no unsigned sources)",
                ))
            }
            (None, Presence::Absent) => Vec::new(),
        };
        let mut s = format!(
            "# Managed by plumb.\nTypes: {}\nURIs: {}\nSuites: {}\n",
            params.types.join(" "),
            params.uris.join(" "),
            params.suites.join(" ")
        );
        if !params.components.is_empty() {
            s += &format!("Components: {}\n", params.components.join(" "));
        }
        if !params.architectures.is_empty() {
            s += &format!("Architectures: {}\n", params.architectures.join(" "));
        }
        s += &format!("Signed-By: {KEYRING_DIR}/{n}.asc\n");
        Ok(AptRepository {
            sources: s.into_bytes(),
            key,
            params,
        })
    }
}

pub static DEF: ModuleDef = ModuleDef::of::<AptRepository>(
    "apt_repository",
    "An apt source (deb822 .sources) with Signed-By its key file; apt-get update when it changed.",
    Runs::Host,
    &["sources", "key"],
    &[Example {
        name: "add a signed (empty) repository with its key, then remove it",
        setup: &[(
            "command",
            r#"{"run": "mkdir -p /srv/plumb-example-repo && : > /srv/plumb-example-repo/Packages && printf '%s' '-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nOrigin: plumb-example\nLabel: plumb-example\nDate: Mon, 30 Nov 2026 00:00:00 UTC\nSHA256:\n e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 0 Packages\n-----BEGIN PGP SIGNATURE-----\n\niHUEARYIAB0WIQTCU7a8mJjJSukpX07aYLeikTJdXAUCaw07gAAKCRDaYLeikTJd\nXDAQAQCAw1c6GzX4spgcK4qRmvPduoT3/7nX12WEo/PcjQfAygEArxmYf5WEWWXg\n2Vbd0pgoJyuiB2L7LfwvMf8TldUF5QA=\n=dpk5\n-----END PGP SIGNATURE-----\n' > /srv/plumb-example-repo/InRelease", "creates": "/srv/plumb-example-repo/InRelease"}"#,
        )],
        steps: &[
            step(
                r#"{"name": "plumb-example", "uris": ["file:/srv/plumb-example-repo"], "suites": ["./"], "key": "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEaw07gBYJKwYBBAHaRw8BAQdAtdmYZK+IXsnsCqVbcdtlxKH1dvS64yti8nD6\ny3BkAxa0KnBsdW1iIGV4YW1wbGUgcmVwbyA8ZXhhbXBsZUBwbHVtYi5pbnZhbGlk\nPoiQBBMWCAA4FiEEwlO2vJiYyUrpKV9O2mC3opEyXVwFAmsNO4ACGwMFCwkIBwIG\nFQoJCAsCBBYCAwECHgECF4AACgkQ2mC3opEyXVyUDQEAq5gfYomPXm73+byUgVa5\nZw2WP2YeQPySVeyCMgwNRHcA/RCwL4BTwaAvZcd1xqw6SKc+jK7lApuqIHWOMTsL\neJAD\n=SM/H\n-----END PGP PUBLIC KEY BLOCK-----"}"#,
                ChangeKind::Create,
            ),
            step(
                r#"{"name": "plumb-example", "uris": ["file:/srv/plumb-example-repo"], "suites": ["./"], "state": "absent"}"#,
                ChangeKind::Remove,
            ),
        ],
    }],
)
.reversibility(super::Reversibility::Reversible)
.prune(super::Prune::Absent(|p| {
    super::absent_with(p, &["name", "uris", "suites", "components", "types", "architectures"])
}));

impl AptRepository {
    fn sources_path(&self) -> String {
        format!("{SOURCES_DIR}/{}.sources", self.params.name)
    }
    fn key_path(&self) -> String {
        format!("{KEYRING_DIR}/{}.asc", self.params.name)
    }
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn seen(h: &str) -> Option<String> {
    match h {
        "absent" => None,
        "other" => Some("not a regular file".into()),
        h => Some(format!("sha256:{h}")),
    }
}

impl Resource for AptRepository {
    fn target(&self) -> String {
        self.sources_path()
    }
    fn touches(&self) -> super::Touches {
        super::Touches::only([
            super::Touch::path(&self.sources_path()),
            super::Touch::path(&self.key_path()),
        ])
    }
    fn desired(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.params).unwrap_or_default();
        if !self.key.is_empty() {
            v["key"] = serde_json::json!({"sha256": sha(&self.key)});
        }
        v
    }
    fn probe(&self) -> String {
        format!(
            "{}\nprintf 'sources=%s\\n' \"$(plumb_hash {})\"\nprintf 'key=%s\\n' \"$(plumb_hash {})\"",
            sh::HASH_FN,
            quote(&self.sources_path()),
            quote(&self.key_path())
        )
    }
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError> {
        let o = Observed::parse(observed)?;
        let sources = o.req("sources")?;
        let key = o.req("key")?;
        if self.params.state == Presence::Absent {
            if sources == "absent" && key == "absent" {
                return Ok(Change::in_sync());
            }
            return Ok(Change::new(ChangeKind::Remove).field(
                Field::State,
                Some("present".into()),
                Some("absent".into()),
            ));
        }
        let kind = if sources == "absent" {
            ChangeKind::Create
        } else {
            ChangeKind::Modify
        };
        let mut c = Change::new(kind);
        let want = sha(&self.sources);
        if sources != want {
            c = c.field(
                Field::Content,
                seen(sources),
                Some(format!("sha256:{want}")),
            );
            c.content = Some(Box::new(ContentChange {
                old: None,
                new: Some(self.sources.clone()),
            }));
        }
        let want = sha(&self.key);
        if key != want {
            c = c.field(Field::Key, seen(key), Some(format!("sha256:{want}")));
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
        let src = quote(&self.sources_path());
        let key = quote(&self.key_path());
        // Keep what is there now, to put it back when apt-get update fails.
        let mut s = format!(
            r#"plumb_bk=$(mktemp -d) || exit 1
trap 'rm -rf -- "$plumb_bk"' EXIT
for plumb_f in {src} {key}; do if [ -f "$plumb_f" ] && [ ! -L "$plumb_f" ]; then cp -p -- "$plumb_f" "$plumb_bk/${{plumb_f##*/}}" || exit 1; fi; done
plumb_restore() {{
for plumb_f in {src} {key}; do if [ -f "$plumb_bk/${{plumb_f##*/}}" ]; then mv -f -- "$plumb_bk/${{plumb_f##*/}}" "$plumb_f"; else rm -f -- "$plumb_f"; fi; done
}}
"#
        );
        if change.kind == ChangeKind::Remove {
            s += &format!("rm -f -- {src} {key} || exit 1\n");
        } else {
            if change.changes_field(Field::Key) {
                s += &sh::replace_file(&self.key_path(), &self.key, "0644");
            }
            if change.changes_field(Field::Content) {
                s += &sh::replace_file(&self.sources_path(), &self.sources, "0644");
            }
        }
        s += r#"DEBIAN_FRONTEND=noninteractive; export DEBIAN_FRONTEND
plumb_out=$(apt-get update -q -o APT::Update::Error-Mode=any </dev/null 2>&1) || { printf '%s\n' "$plumb_out" | tail -n 15 >&2; plumb_restore; printf 'apt-get update failed: the previous source was put back\n' >&2; exit 1; }
"#;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    const KEY: &str =
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEabc\n-----END PGP PUBLIC KEY BLOCK-----\n";

    fn repo(v: serde_json::Value) -> Box<dyn Resource> {
        built(DEF.build, v)
    }

    #[test]
    fn writes_key_and_sources_then_updates() {
        let r = repo(serde_json::json!({
            "name": "vendor", "uris": ["https://apt.example.invalid/debian"], "suites": ["bookworm"],
            "components": ["main"], "architectures": ["amd64"], "key": KEY,
        }));
        insta::assert_snapshot!("apt_repository_probe", r.probe());
        let c = r.diff(&out("sources=absent\nkey=absent\n")).unwrap();
        assert_eq!(c.kind, ChangeKind::Create);
        insta::assert_snapshot!(
            "apt_repository_sources",
            String::from_utf8_lossy(c.content.as_ref().unwrap().new.as_ref().unwrap())
        );
        let a = r.apply(&c);
        insta::assert_snapshot!("apt_repository_apply", a);
        assert!(a.rfind("mv -f -T").unwrap() < a.find("apt-get update").unwrap());
        let key_sha = sha(KEY.as_bytes());
        let src_sha = sha(&r
            .diff(&out("sources=absent\nkey=absent\n"))
            .unwrap()
            .content
            .unwrap()
            .new
            .unwrap());
        assert_eq!(
            r.diff(&out(&format!("sources={src_sha}\nkey={key_sha}\n")))
                .unwrap(),
            Change::in_sync()
        );
        let c = r
            .diff(&out(&format!("sources={src_sha}\nkey=other\n")))
            .unwrap();
        assert_eq!(c.fields.len(), 1);
        assert_eq!(r.apply(&c).matches("mv -f -T").count(), 1);
    }

    #[test]
    fn hostile_values_are_refused() {
        let base =
            serde_json::json!({"name": "v", "uris": ["https://h/d"], "suites": ["s"], "key": KEY});
        for (k, v, at) in [
            ("name", serde_json::json!("../x"), "/name"),
            ("name", serde_json::json!("a b"), "/name"),
            (
                "uris",
                serde_json::json!(["https://h/d\nSigned-By: /x"]),
                "/uris/0",
            ),
            ("uris", serde_json::json!(["ftp://x"]), "/uris/0"),
            ("suites", serde_json::json!(["a b"]), "/suites/0"),
            ("suites", serde_json::json!([]), "/suites"),
            ("components", serde_json::json!(["$(x) #"]), "/components/0"),
            ("types", serde_json::json!(["rpm"]), "/types/0"),
            ("key", serde_json::json!("not a key"), "/key"),
        ] {
            let mut p = base.clone();
            p[k] = v;
            match (DEF.build)(p.clone(), &mut NoRepo) {
                Err(e) => assert_eq!(e.pointer, at, "{p}"),
                Ok(_) => panic!("accepted {p}"),
            }
        }
        let mut p = base.clone();
        p.as_object_mut().unwrap().remove("key");
        assert!(
            (DEF.build)(p, &mut NoRepo).is_err(),
            "a present source needs its key"
        );
    }
}
