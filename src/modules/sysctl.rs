//! `sysctl`: a kernel parameter, live and persisted in /etc/sysctl.d.
//!
//! Probe output: the `file` module's for the persistent file
//! `/etc/sysctl.d/60-plumb-<name>.conf` (content `<name> = <value>`), plus
//! `live_b64=<base64 of /proc/sys/<name>>` or `live=missing`. Values are compared with
//! whitespace normalised (`4096 87380` equals `4096\t87380`).
//!
//! The apply writes the file like a `file` step, then (with `live: true`) sets the live value
//! with `sysctl -w`, or by writing /proc/sys when `sysctl` is not installed. `state: absent`
//! removes the file and leaves the live value alone (the default comes back at boot).
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::file::{file_probe_keys_and, Managed};
use super::sh::{self, quote, Observed};
use super::{
    step, BuildError, Change, ChangeKind, Example, Field, ModuleDef, Presence, ProbeError,
    ProbeResult, Resource, Runs,
};

/// A kernel parameter: the live value (`/proc/sys`) and a persistent line in
/// `/etc/sysctl.d/60-plumb-<name>.conf`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Dotted name, e.g. "net.ipv4.ip_forward".
    #[schemars(regex(pattern = r"^[A-Za-z0-9_]+([./][A-Za-z0-9_-]+)+$"))]
    pub name: String,
    /// The value (required when present); whitespace is compared normalised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default)]
    pub state: Presence,
    /// Also set the live value (false: only persist it).
    #[serde(default = "yes")]
    pub live: bool,
}

fn yes() -> bool {
    true
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct Sysctl {
    pub params: Params,
    managed: Managed,
    value: String,
    proc_path: String,
    /// Test support: write /proc directly, never run `sysctl`.
    proc_only: bool,
}

impl super::FromParams for Sysctl {
    type Params = Params;
    fn from_params(params: Params) -> Result<Sysctl, BuildError> {
        Sysctl::new(params)
    }
}

pub static DEF: ModuleDef = ModuleDef::of::<Sysctl>(
    "sysctl",
    "A kernel parameter: live value and /etc/sysctl.d file.",
    Runs::Local {
        rooted: Some(rooted),
    },
    &file_probe_keys_and::<12>(&["live", "live_b64"]),
    &[Example {
        name: "persist and set live, live drift, remove",
        setup: &[
            ("directory", r#"{"path": "{root}/etc/sysctl.d"}"#),
            ("directory", r#"{"path": "{root}/proc/sys/net/ipv4"}"#),
            (
                "file",
                r#"{"path": "{root}/proc/sys/net/ipv4/tcp_rmem", "content": "4096\t16384\t4194304\n"}"#,
            ),
        ],
        steps: &[
            step(
                r#"{"name": "net.ipv4.tcp_rmem", "value": "4096 87380 6291456"}"#,
                ChangeKind::Create,
            ),
            step(
                r#"{"name": "net.ipv4.tcp_rmem", "value": "1 2 3"}"#,
                ChangeKind::Modify,
            ),
            step(
                r#"{"name": "net.ipv4.tcp_rmem", "state": "absent"}"#,
                ChangeKind::Remove,
            ),
        ],
    }],
)
.reversibility(super::Reversibility::Reversible)
.prune(super::Prune::Absent(|p| super::absent_with(p, &["name"])));

/// [`Runs::Local`]: the file and /proc/sys under `root`.
fn rooted(value: serde_json::Value, root: &str) -> Result<Box<dyn Resource>, BuildError> {
    Ok(Box::new(super::parse::<Sysctl>(value)?.with_root(root)))
}

/// Whitespace-normalised value.
fn norm(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Sysctl {
    pub fn new(params: Params) -> Result<Sysctl, BuildError> {
        if params
            .name
            .split(['.', '/'])
            .any(|p| p.is_empty() || p == "..")
        {
            return Err(BuildError::at("/name", "not a valid parameter name"));
        }
        let value = match (&params.value, params.state) {
            (Some(v), _) if v.contains(['\n', '\r']) => {
                return Err(BuildError::at("/value", "must be a single line"))
            }
            (Some(v), _) => norm(v),
            (None, Presence::Present) => {
                return Err(BuildError::at("/value", "`value` is required when present"))
            }
            (None, Presence::Absent) => String::new(),
        };
        let proc_path = if params.name.contains('/') {
            format!("/proc/sys/{}", params.name)
        } else {
            format!("/proc/sys/{}", params.name.replace('.', "/"))
        };
        let path = format!(
            "/etc/sysctl.d/60-plumb-{}.conf",
            params.name.replace('/', ".")
        );
        let content = if params.state == Presence::Present {
            format!("# Managed by plumb.\n{} = {value}\n", params.name).into_bytes()
        } else {
            Vec::new()
        };
        let managed = Managed::new(
            &path,
            params.state,
            content,
            Some("0644"),
            Some("root".into()),
            Some("root".into()),
            false,
        );
        Ok(Sysctl {
            params,
            managed,
            value,
            proc_path,
            proc_only: false,
        })
    }

    /// Test support: puts both the file and /proc/sys under `root`, ownership unmanaged,
    /// and sets the live value by writing the (fake) /proc file.
    #[doc(hidden)]
    pub fn with_root(mut self, root: &str) -> Sysctl {
        let root = root.trim_end_matches('/');
        self.managed.path = format!("{root}{}", self.managed.path);
        self.proc_path = format!("{root}{}", self.proc_path);
        self.managed.owner = None;
        self.managed.group = None;
        self.proc_only = true;
        self
    }

    pub fn path(&self) -> &str {
        &self.managed.path
    }
}

const FILE_FIELDS: &[Field] = &[Field::Content, Field::Mode, Field::Owner, Field::Group];

impl Resource for Sysctl {
    fn target(&self) -> String {
        self.params.name.clone()
    }
    fn touches(&self) -> super::Touches {
        super::Touches::only([
            super::Touch::path(&self.managed.path),
            super::Touch::path(&self.proc_path),
        ])
    }
    fn desired(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.params).unwrap_or_default();
        v["path"] = self.managed.path.clone().into();
        v
    }
    fn probe(&self) -> String {
        let file = self.managed.probe();
        if self.params.state == Presence::Absent || !self.params.live {
            return file;
        }
        format!(
            "{file}\nq={}\nif [ -r \"$q\" ]; then {}; else echo live=missing; fi",
            quote(&self.proc_path),
            sh::print_b64("live", r#"cat -- "$q""#)
        )
    }
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError> {
        let o = Observed::parse(observed)?;
        let mut c = self.managed.diff(&o)?;
        if self.params.state == Presence::Absent {
            return Ok(if c.is_change() {
                c.note("the live value is left as it is until the next boot")
            } else {
                c
            });
        }
        if self.params.live {
            let live = match o.text("live")? {
                Some(v) => Some(norm(&v)),
                None if o.get("live") == Some("missing") => None,
                None => return Err(ProbeError::new("probe output lacks `live_b64`")),
            };
            if live.as_deref() != Some(self.value.as_str()) {
                if c.kind == ChangeKind::InSync {
                    c.kind = ChangeKind::Modify;
                }
                if live.is_none() {
                    c = c.note(format!(
                        "{} does not exist (kernel module not loaded?)",
                        self.proc_path
                    ));
                }
                c = c.field(Field::Value, live, Some(self.value.clone()));
            }
        }
        Ok(c)
    }
    fn apply(&self, change: &Change) -> String {
        if matches!(change.kind, ChangeKind::InSync | ChangeKind::Remove) {
            return self.managed.apply(change);
        }
        let mut s = String::new();
        let file_change = Change {
            fields: change
                .fields
                .iter()
                .filter(|f| FILE_FIELDS.contains(&f.field))
                .cloned()
                .collect(),
            ..change.clone()
        };
        if !file_change.fields.is_empty() {
            s += &format!("( {}\n) || exit 1\n", self.managed.apply(&file_change));
        }
        if change.changes_field(Field::Value) && self.params.live {
            let write = format!(
                "printf '%s\\n' {} > {} || exit 1",
                quote(&self.value),
                quote(&self.proc_path)
            );
            if self.proc_only {
                s += &write;
                s.push('\n');
            } else {
                s += &format!(
                    "if command -v sysctl >/dev/null 2>&1; then sysctl -w {} >/dev/null || exit 1; else {write}; fi\n",
                    quote(&format!("{}={}", self.params.name, self.value))
                );
            }
        }
        s
    }
    fn content(&self) -> Option<&[u8]> {
        self.managed.content()
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::super::testing::out;
    use super::*;

    fn file_ok(s: &Sysctl) -> String {
        format!(
            "type=file\nparent=yes\nmode=644\nuid=0\nowner=root\ngid=0\ngroup=root\nsize=30\nsha256={}\n",
            s.managed.sha256
        )
    }

    #[test]
    fn probe_keys_are_the_file_keys_then_live() {
        let n = super::super::file::FILE_PROBE_KEYS.len();
        assert_eq!(&DEF.probe_keys[..n], super::super::file::FILE_PROBE_KEYS);
        assert_eq!(&DEF.probe_keys[n..], ["live", "live_b64"]);
    }

    #[test]
    fn build_rules() {
        let s = parse::<Sysctl>(serde_json::json!({"name": "net.ipv4.ip_forward", "value": "1"}))
            .unwrap();
        assert_eq!(s.path(), "/etc/sysctl.d/60-plumb-net.ipv4.ip_forward.conf");
        assert_eq!(s.proc_path, "/proc/sys/net/ipv4/ip_forward");
        assert_eq!(
            s.content(),
            Some(&b"# Managed by plumb.\nnet.ipv4.ip_forward = 1\n"[..])
        );
        let s = parse::<Sysctl>(
            serde_json::json!({"name": "net/ipv4/conf/eth0.100/rp_filter", "value": "2"}),
        )
        .unwrap();
        assert_eq!(s.proc_path, "/proc/sys/net/ipv4/conf/eth0.100/rp_filter");
        assert_eq!(
            s.path(),
            "/etc/sysctl.d/60-plumb-net.ipv4.conf.eth0.100.rp_filter.conf"
        );
        assert_eq!(
            parse::<Sysctl>(serde_json::json!({"name": "a.b"}))
                .unwrap_err()
                .pointer,
            "/value"
        );
        assert_eq!(
            parse::<Sysctl>(serde_json::json!({"name": "a..b", "value": "1"}))
                .unwrap_err()
                .pointer,
            "/name"
        );
    }

    #[test]
    fn diffs() {
        let s = parse::<Sysctl>(
            serde_json::json!({"name": "net.ipv4.tcp_rmem", "value": "4096 87380  6291456"}),
        )
        .unwrap();
        let live = |v: &[u8]| format!("live_b64={}\n", sh::b64(v));
        let synced = format!("{}{}", file_ok(&s), live(b"4096\t87380\t6291456\n"));
        assert_eq!(s.diff(&out(&synced)).unwrap(), Change::in_sync());
        let drifted = format!("{}{}", file_ok(&s), live(b"4096\t16384\t4194304\n"));
        let c = s.diff(&out(&drifted)).unwrap();
        insta::assert_debug_snapshot!("sysctl_live_drift", c);
        insta::assert_snapshot!("sysctl_live_apply", s.apply(&c));
        let c = s
            .diff(&out(&format!("type=absent\nparent=yes\n{}", live(b"1\n"))))
            .unwrap();
        assert_eq!(c.kind, ChangeKind::Create);
        assert!(c.changes_field(Field::Content) && c.changes_field(Field::Value));
        insta::assert_snapshot!("sysctl_create_apply", s.apply(&c));
        let c = s
            .diff(&out(&format!("{}live=missing\n", file_ok(&s))))
            .unwrap();
        assert!(c.notes[0].contains("does not exist"));
        assert!(s.diff(&out(&file_ok(&s))).is_err());
        let persist_only = parse::<Sysctl>(
            serde_json::json!({"name": "vm.swappiness", "value": "10", "live": false}),
        )
        .unwrap();
        assert!(!persist_only.probe().contains("/proc/sys"));
        assert_eq!(
            persist_only.diff(&out(&file_ok(&persist_only))).unwrap(),
            Change::in_sync()
        );
    }

    #[test]
    fn absent() {
        let s = parse::<Sysctl>(serde_json::json!({"name": "vm.swappiness", "state": "absent"}))
            .unwrap();
        assert_eq!(s.diff(&out("type=absent\n")).unwrap(), Change::in_sync());
        let c = s.diff(&out("type=file\n")).unwrap();
        assert_eq!(c.kind, ChangeKind::Remove);
        assert!(s.apply(&c).contains("rm -f"));
    }
}
