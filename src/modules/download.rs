//! `download`: a file fetched from a URL, checked against its required sha256.
//!
//! Probe output: `type=` (see [`super::sh::PROBE_TYPE`]), `parent=yes|no`, and for a
//! regular file its `mode=`, `uid=`, `owner=`, `gid=`, `group=`, `size=` and `sha256=`;
//! `fetcher=curl|wget|apt-helper|none`. In sync when the file's sha256 is the wanted one:
//! nothing is downloaded then. The apply fetches into a private directory beside the target
//! (with `curl`, else `wget`, else, for http(s) URLs, apt's own `apt-helper download-file`,
//! which every Debian host has), checks the sha256 there and only then renames the file into place:
//! a wrong checksum fails the step and leaves the old file untouched. Only attributes
//! differing: they are fixed without a download.
//!
//! The URL (and the proxy) appear in the host's process list while fetching: do not put
//! credentials in them.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::file::{attr_fields, set_attrs};
use super::sh::{self, quote, Observed};
use super::{
    step, BuildError, Change, ChangeKind, Example, Facts, Field, ModuleDef, PathType, ProbeError,
    ProbeResult, Resource, Runs,
};

/// A file at `path` that is the resource at `url` with the given sha256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// `https://`, `http://`, `ftp://` or `file://` URL.
    #[schemars(regex(pattern = r"^(https?|ftp|file)://"))]
    pub url: String,
    /// Absolute path of the file.
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
    /// The sha256 the file must have (64 hex digits): required, so what runs is what was
    /// reviewed.
    pub sha256: String,
    /// Octal mode, e.g. "0755". Unset: 0644 for a new file, existing keep theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^0?[0-7]{3,4}$"))]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// A proxy URL for this download (`http_proxy`/`https_proxy` of the fetch only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// Give up after this many seconds.
    #[serde(default = "timeout")]
    pub timeout: u32,
}

fn timeout() -> u32 {
    600
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct Download {
    pub params: Params,
    sha256: String,
    mode: Option<String>,
}

fn valid_url(u: &str) -> bool {
    ["https://", "http://", "ftp://", "file://"]
        .iter()
        .any(|s| u.len() > s.len() && u.starts_with(s))
        && !u.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl super::FromParams for Download {
    type Params = Params;
    fn from_params(params: Params) -> Result<Download, BuildError> {
        if !valid_url(&params.url) {
            return Err(BuildError::at(
                "/url",
                "must be an https://, http://, ftp:// or file:// URL without spaces or control characters",
            ));
        }
        if !params.path.starts_with('/') || params.path.ends_with('/') {
            return Err(BuildError::at(
                "/path",
                "must be an absolute path naming a file (no trailing `/`)",
            ));
        }
        if params.sha256.len() != 64 || !params.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BuildError::at("/sha256", "must be 64 hex digits"));
        }
        if let Some(p) = &params.proxy {
            if !valid_url(p) {
                return Err(BuildError::at("/proxy", "must be a URL without spaces"));
            }
        }
        if !(1..=86_400).contains(&params.timeout) {
            return Err(BuildError::at("/timeout", "must be 1 to 86400 seconds"));
        }
        let mode = params.mode.as_deref().map(sh::norm_mode);
        Ok(Download {
            sha256: params.sha256.to_ascii_lowercase(),
            mode,
            params,
        })
    }
}

pub static DEF: ModuleDef = ModuleDef::of::<Download>(
    "download",
    "A file downloaded from a URL, checked by its required sha256; mode, owner, group.",
    Runs::Local { rooted: None },
    &[
        "type", "parent", "mode", "uid", "owner", "gid", "group", "size", "sha256", "fetcher",
    ],
    &[Example {
        name: "download by file:// URL, change mode, new release",
        setup: &[(
            "command",
            r#"{"run": "printf 'v1\\n' > '{root}/v1.txt'; printf 'v2\\n' > '{root}/v2.txt'", "creates": "{root}/v2.txt"}"#,
        )],
        steps: &[
            step(
                r#"{"url": "file://{root}/v1.txt", "path": "{root}/it's $(x) d.txt", "sha256": "2d27fbdf4e8ca207afbfa388ca9172fbcc6c70e534af2476b3b704f87debadcf"}"#,
                ChangeKind::Create,
            ),
            step(
                r#"{"url": "file://{root}/v1.txt", "path": "{root}/it's $(x) d.txt", "sha256": "2d27fbdf4e8ca207afbfa388ca9172fbcc6c70e534af2476b3b704f87debadcf", "mode": "0600"}"#,
                ChangeKind::Modify,
            ),
            step(
                r#"{"url": "file://{root}/v2.txt", "path": "{root}/it's $(x) d.txt", "sha256": "81db67b6a5702b9b68f0016f061c409bf3fb16d062fc854d1b424bb4e9c28c56"}"#,
                ChangeKind::Modify,
            ),
        ],
    }],
)
.reversibility(super::Reversibility::Reversible)
.prune(super::Prune::Never("a download is not removed by prune: declare a `file` step with `state: absent`"));

impl Download {
    fn fetch(&self) -> String {
        let proxy = match &self.params.proxy {
            Some(p) => format!(
                "http_proxy={p}; https_proxy={p}; ftp_proxy={p}; export http_proxy https_proxy ftp_proxy\n",
                p = quote(p)
            ),
            None => String::new(),
        };
        format!(
            r#"{proxy}plumb_url={url}
if command -v curl >/dev/null 2>&1; then
curl -fsSL --proto '=https,http,ftp,file' --connect-timeout 30 --max-time {t} -o f -- "$plumb_url" || {fail}
elif command -v wget >/dev/null 2>&1; then
case $plumb_url in file://*) {nofile} ;; esac
wget -q -T 30 -O f -- "$plumb_url" </dev/null || {fail}
elif [ -x /usr/lib/apt/apt-helper ]; then
case $plumb_url in http://*|https://*) ;; *) {onlyhttp} ;; esac
plumb_o=$(/usr/lib/apt/apt-helper -o Acquire::http::Timeout=30 -o Acquire::https::Timeout=30 download-file "$plumb_url" "$PWD/f" </dev/null 2>&1) || {{ printf '%s\n' "$plumb_o" | tail -n 5 >&2; {fail}; }}
else {none}; fi
h=$(sha256sum < f) || exit 1
h=${{h%% *}}
[ "$h" = {sha} ] || {{ printf 'checksum mismatch for %s: got sha256 %s, want %s; %s was left as it was\n' "$plumb_url" "$h" {sha} {path} >&2; exit 1; }}
"#,
            url = quote(&self.params.url),
            t = self.params.timeout,
            fail = sh::fail(&format!("downloading {} failed", self.params.url)),
            nofile = sh::fail("wget cannot fetch file:// URLs: install curl"),
            onlyhttp = sh::fail(
                "without curl or wget only http(s) URLs can be fetched (apt-helper): install curl"
            ),
            none =
                sh::fail("neither curl nor wget (nor apt's apt-helper) is installed on this host"),
            sha = self.sha256,
            path = quote(&self.params.path),
        )
    }
}

impl Resource for Download {
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
        serde_json::to_value(&self.params).unwrap_or_default()
    }
    fn probe(&self) -> String {
        format!(
            r#"p={p}
{ty}
if [ -d {parent} ]; then echo parent=yes; else echo parent=no; fi
if command -v curl >/dev/null 2>&1; then echo fetcher=curl; elif command -v wget >/dev/null 2>&1; then echo fetcher=wget; elif [ -x /usr/lib/apt/apt-helper ]; then echo fetcher=apt-helper; else echo fetcher=none; fi
if [ -f "$p" ] && [ ! -L "$p" ]; then
{stat}
{open}
h=$(sha256sum < /dev/fd/3) || exit 1
echo "sha256=${{h%% *}}"
fi"#,
            p = quote(&self.params.path),
            ty = sh::PROBE_TYPE,
            parent = quote(&sh::parent(&self.params.path)),
            stat = sh::PROBE_STAT,
            open = sh::OPEN_P,
        )
    }
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError> {
        let o = Observed::parse(observed)?;
        let ty = PathType::parse(&o)?;
        let facts = Facts {
            path: Some(ty),
            ..Facts::default()
        };
        let want = Some(format!("sha256:{}", self.sha256));
        let mut c = match ty {
            PathType::Absent => {
                let mut c = Change::new(ChangeKind::Create).field(Field::Content, None, want);
                if o.get("parent") == Some("no") {
                    c = c.note(format!(
                        "parent directory {} does not exist yet: an earlier step must create it",
                        sh::parent(&self.params.path)
                    ));
                }
                c
            }
            PathType::File => {
                let h = o.req("sha256")?;
                let mut c = Change::new(ChangeKind::Modify);
                if h != self.sha256 {
                    c = c.field(Field::Content, Some(format!("sha256:{h}")), want);
                }
                attr_fields(
                    c,
                    &o,
                    self.mode.as_deref(),
                    &self.params.owner,
                    &self.params.group,
                )?
            }
            other => {
                return Err(ProbeError::new(format!(
                    "{} is not a regular file ({other:?}): a download step will not replace it",
                    self.params.path
                )))
            }
        };
        if c.fields.is_empty() {
            return Ok(Change::in_sync());
        }
        if c.changes_field(Field::Content) && o.get("fetcher") == Some("none") {
            c = c.note("neither curl, wget nor apt-helper is installed yet: an earlier step must install one");
        }
        Ok(c.observed(facts))
    }
    fn apply(&self, change: &Change) -> String {
        if change.kind == ChangeKind::InSync {
            return ":".into();
        }
        let parent = sh::parent(&self.params.path);
        let enter = sh::enter_parent(
            &self.params.path,
            sh::Missing::Fail(&format!(
                "parent directory {parent} does not exist; add a directory step"
            )),
        );
        let hold = sh::hold_file(&format!(
            "{} changed since the probe: it is no longer a regular file",
            self.params.path
        ));
        if !change.changes_field(Field::Content) {
            let attrs = set_attrs(
                "o",
                self.mode.as_deref(),
                &self.params.owner,
                &self.params.group,
                Some(change),
            );
            return format!("{enter}{}{hold}{attrs}", sh::PRIVATE_DIR);
        }
        let mut s = format!(
            r#"{enter}if [ -L "./$b" ] || {{ [ -e "./$b" ] && [ ! -f "./$b" ]; }}; then {notfile}; fi
{private}{fetch}if [ -e "../$b" ]; then
{hold}m=$(stat -c %a o) || exit 1
else
m=0644
fi
"#,
            notfile = sh::fail(&format!(
                "{} exists and is not a regular file",
                self.params.path
            )),
            private = sh::PRIVATE_DIR,
            fetch = self.fetch(),
        );
        s += &set_attrs("f", None, &self.params.owner, &self.params.group, None);
        match &self.mode {
            Some(m) => s += &format!("chmod -- {m} f || exit 1\n"),
            None => s += "chmod -- \"$m\" f || exit 1\n",
        }
        s += "mv -f -T -- f \"../$b\" || exit 1\n";
        s
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    const SHA: &str = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";

    fn dl(v: serde_json::Value) -> Box<dyn Resource> {
        built(DEF.build, v)
    }

    #[test]
    fn create_checks_the_hash_before_the_rename() {
        let r = dl(serde_json::json!({
            "url": "https://example.invalid/app-1.0.tar.gz?x='$(id)'",
            "path": "/opt/app/app 1.0.tar.gz",
            "sha256": SHA.to_uppercase(),
            "mode": "0640",
            "proxy": "http://proxy:3128",
        }));
        insta::assert_snapshot!("download_probe", r.probe());
        let c = r
            .diff(&out("type=absent\nparent=yes\nfetcher=curl\n"))
            .unwrap();
        assert_eq!(c.kind, ChangeKind::Create);
        let a = r.apply(&c);
        insta::assert_snapshot!("download_create", a);
        assert!(a.find("checksum mismatch").unwrap() < a.find("mv -f -T -- f").unwrap());
        assert!(
            a.contains(&format!("[ \"$h\" = {SHA} ]")),
            "lowercased hash"
        );
    }

    #[test]
    fn in_sync_by_hash_and_attrs_without_download() {
        let r = dl(
            serde_json::json!({"url": "https://h/x", "path": "/x", "sha256": SHA, "mode": "0755"}),
        );
        let file = |h: &str, m: &str| {
            format!("type=file\nparent=yes\nfetcher=none\nmode={m}\nuid=0\nowner=root\ngid=0\ngroup=root\nsize=6\nsha256={h}\n")
        };
        assert_eq!(r.diff(&out(&file(SHA, "755"))).unwrap(), Change::in_sync());
        let c = r.diff(&out(&file(SHA, "644"))).unwrap();
        assert_eq!(c.fields.len(), 1);
        let a = r.apply(&c);
        assert!(!a.contains("curl") && a.contains("chmod -- 0755 o"), "{a}");
        let c = r.diff(&out(&file("00", "755"))).unwrap();
        assert!(c.changes_field(Field::Content));
        assert!(c.notes[0].contains("neither curl, wget nor apt-helper"));
        assert!(r.apply(&c).contains("curl -fsSL"));
        let e = diff_error(r.as_ref(), "type=directory\nparent=yes\nfetcher=curl\n");
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn invalid_parameters_are_refused() {
        for (bad, at) in [
            (
                serde_json::json!({"url": "ftp:/x", "path": "/x", "sha256": SHA}),
                "/url",
            ),
            (
                serde_json::json!({"url": "https://h/a b", "path": "/x", "sha256": SHA}),
                "/url",
            ),
            (
                serde_json::json!({"url": "https://h/a\nb", "path": "/x", "sha256": SHA}),
                "/url",
            ),
            (
                serde_json::json!({"url": "https://h/x", "path": "x", "sha256": SHA}),
                "/path",
            ),
            (
                serde_json::json!({"url": "https://h/x", "path": "/x/", "sha256": SHA}),
                "/path",
            ),
            (
                serde_json::json!({"url": "https://h/x", "path": "/x", "sha256": "abc"}),
                "/sha256",
            ),
            (
                serde_json::json!({"url": "https://h/x", "path": "/x", "sha256": SHA, "proxy": "$(x)"}),
                "/proxy",
            ),
            (
                serde_json::json!({"url": "https://h/x", "path": "/x", "sha256": SHA, "timeout": 0}),
                "/timeout",
            ),
        ] {
            match (DEF.build)(bad.clone(), &mut NoRepo) {
                Err(e) => assert_eq!(e.pointer, at, "{bad}"),
                Ok(_) => panic!("accepted {bad}"),
            }
        }
        let missing = serde_json::json!({"url": "https://h/x", "path": "/x"});
        assert!(
            (DEF.build)(missing, &mut NoRepo).is_err(),
            "sha256 is required"
        );
    }
}
