//! `cron`: a job in /etc/cron.d.
//!
//! The file is generated deterministically: a header comment, the `env` lines in name order,
//! then `<schedule> <user> <command>`; mode 0644, owner root:root (cron ignores files others
//! can write). It is written like a `file` step (temporary file + rename, no backup: a
//! backup in /etc/cron.d could be run by cron too). Probe output is the `file` module's.
//! Note: cron itself treats `%` in the command as a newline; write `\%` for a literal one.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::file::{Managed, FILE_PROBE_KEYS};
use super::sh::Observed;
use super::{
    step, BuildError, Change, ChangeKind, Example, ModuleDef, Presence, ProbeError, ProbeResult,
    Resource, Runs,
};

/// A cron job, written as `/etc/cron.d/<name>` (one job per file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// File name under /etc/cron.d (letters, digits, `-` and `_` only, as run-parts requires).
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub name: String,
    /// Five cron fields ("*/5 * * * *") or a nickname (@daily, @hourly, @reboot, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The command line (required when present). A single line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The user the job runs as.
    #[serde(default = "root")]
    pub user: String,
    /// Environment lines at the top of the file, e.g. MAILTO.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub state: Presence,
}

fn root() -> String {
    "root".to_string()
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct Cron {
    pub params: Params,
    managed: Managed,
}

/// Schedule nicknames cron understands.
const NICKNAMES: &[&str] = &[
    "@reboot",
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

/// Checks a schedule and returns it with whitespace normalised.
fn schedule(s: &str) -> Result<String, String> {
    let fields: Vec<&str> = s.split_whitespace().collect();
    match fields.as_slice() {
        [nick] if nick.starts_with('@') => {
            if NICKNAMES.contains(nick) {
                Ok(nick.to_string())
            } else {
                Err(format!("unknown schedule nickname `{nick}` (known: {})", NICKNAMES.join(", ")))
            }
        }
        f if f.len() == 5 => {
            if let Some(bad) = f.iter().find(|x| {
                !x.bytes().all(|b| b.is_ascii_alphanumeric() || b"*/,-".contains(&b))
            }) {
                return Err(format!("invalid schedule field `{bad}`"));
            }
            Ok(f.join(" "))
        }
        f => Err(format!(
            "a schedule has 5 fields (minute hour day month weekday) or is a nickname like @daily; got {} fields",
            f.len()
        )),
    }
}

impl super::FromParams for Cron {
    type Params = Params;
    fn from_params(params: Params) -> Result<Cron, BuildError> {
        Cron::new(params)
    }
}

pub static DEF: ModuleDef = ModuleDef::of::<Cron>(
    "cron",
    "A cron job in /etc/cron.d.",
    Runs::Local {
        rooted: Some(rooted),
    },
    FILE_PROBE_KEYS,
    &[Example {
        name: "create, change the schedule, remove",
        setup: &[("directory", r#"{"path": "{root}/etc/cron.d"}"#)],
        steps: &[
            step(
                r#"{"name": "backup", "schedule": "0 3 * * *", "command": "/usr/bin/backup", "env": {"MAILTO": ""}}"#,
                ChangeKind::Create,
            ),
            step(
                r#"{"name": "backup", "schedule": "@daily", "command": "/usr/bin/backup"}"#,
                ChangeKind::Modify,
            ),
            step(
                r#"{"name": "backup", "state": "absent"}"#,
                ChangeKind::Remove,
            ),
        ],
    }],
)
.reversibility(super::Reversibility::Reversible)
.prune(super::Prune::Absent(|p| super::absent_with(p, &["name", "user"])));

/// [`Runs::Local`]: the cron file under `root`.
fn rooted(value: serde_json::Value, root: &str) -> Result<Box<dyn Resource>, BuildError> {
    Ok(Box::new(super::parse::<Cron>(value)?.with_root(root)))
}

impl Cron {
    /// Checks the parameters and renders the file.
    pub fn new(params: Params) -> Result<Cron, BuildError> {
        let mut content = String::new();
        if params.state == Presence::Present {
            let sched = params
                .schedule
                .as_deref()
                .ok_or_else(|| BuildError::at("/schedule", "`schedule` is required when present"))
                .and_then(|s| schedule(s).map_err(|e| BuildError::at("/schedule", e)))?;
            let command = params
                .command
                .as_deref()
                .ok_or_else(|| BuildError::at("/command", "`command` is required when present"))?;
            if command.contains(['\n', '\r']) {
                return Err(BuildError::at("/command", "must be a single line"));
            }
            if command.trim().is_empty() {
                return Err(BuildError::at("/command", "must not be empty"));
            }
            if params.user.is_empty() || params.user.contains(char::is_whitespace) {
                return Err(BuildError::at(
                    "/user",
                    "must be a user name without spaces",
                ));
            }
            content.push_str("# Managed by plumb: changes made here are overwritten.\n");
            for (k, v) in &params.env {
                let key_ok = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !key_ok {
                    return Err(BuildError::at(
                        format!("/env/{k}"),
                        "not a valid variable name",
                    ));
                }
                if v.contains(['\n', '\r']) {
                    return Err(BuildError::at(format!("/env/{k}"), "must be a single line"));
                }
                content.push_str(&format!("{k}={v}\n"));
            }
            content.push_str(&format!("{sched} {} {}\n", params.user, command.trim()));
        }
        let path = format!("/etc/cron.d/{}", params.name);
        let managed = Managed::new(
            &path,
            params.state,
            content.into_bytes(),
            Some("0644"),
            Some("root".into()),
            Some("root".into()),
            false,
        );
        Ok(Cron { params, managed })
    }

    /// Test support: puts the file under `root` instead of `/`, ownership unmanaged.
    #[doc(hidden)]
    pub fn with_root(mut self, root: &str) -> Cron {
        self.managed.path = format!("{}{}", root.trim_end_matches('/'), self.managed.path);
        self.managed.owner = None;
        self.managed.group = None;
        self
    }

    /// The path of the cron file.
    pub fn path(&self) -> &str {
        &self.managed.path
    }
}

impl Resource for Cron {
    fn target(&self) -> String {
        self.managed.path.clone()
    }
    fn touches(&self) -> super::Touches {
        super::Touches::only([super::Touch::path(&self.managed.path)])
    }
    fn desired(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.params).unwrap_or_default();
        v["path"] = self.managed.path.clone().into();
        v
    }
    fn probe(&self) -> String {
        self.managed.probe()
    }
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError> {
        self.managed.diff(&Observed::parse(observed)?)
    }
    fn apply(&self, change: &Change) -> String {
        self.managed.apply(change)
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

    #[test]
    fn content_is_deterministic() {
        let c = parse::<Cron>(serde_json::json!({
            "name": "backup", "schedule": "  */5  * * * 1-5 ", "command": "/usr/local/bin/backup --all",
            "user": "backup", "env": {"PATH": "/usr/bin:/bin", "MAILTO": "ops@example.com"}
        }))
        .unwrap();
        assert_eq!(c.target(), "/etc/cron.d/backup");
        insta::assert_snapshot!(
            "cron_content",
            String::from_utf8_lossy(c.content().unwrap_or_default())
        );
        let d =
            parse::<Cron>(serde_json::json!({"name": "r", "schedule": "@reboot", "command": "x"}))
                .unwrap();
        assert!(
            String::from_utf8_lossy(d.content().unwrap_or_default()).ends_with("@reboot root x\n")
        );
    }

    #[test]
    fn validation() {
        let cases = [
            (
                serde_json::json!({"name": "a", "command": "x"}),
                "/schedule",
            ),
            (
                serde_json::json!({"name": "a", "schedule": "* * * *", "command": "x"}),
                "/schedule",
            ),
            (
                serde_json::json!({"name": "a", "schedule": "@sometimes", "command": "x"}),
                "/schedule",
            ),
            (
                serde_json::json!({"name": "a", "schedule": "* * * * $(x)", "command": "x"}),
                "/schedule",
            ),
            (
                serde_json::json!({"name": "a", "schedule": "@daily"}),
                "/command",
            ),
            (
                serde_json::json!({"name": "a", "schedule": "@daily", "command": "a\nb"}),
                "/command",
            ),
            (
                serde_json::json!({"name": "a", "schedule": "@daily", "command": "a", "env": {"A B": "x"}}),
                "/env/A B",
            ),
        ];
        for (v, at) in cases {
            assert_eq!(parse::<Cron>(v.clone()).unwrap_err().pointer, at, "{v}");
        }
        assert!(parse::<Cron>(serde_json::json!({"name": "a", "state": "absent"})).is_ok());
    }

    #[test]
    fn diffs() {
        let c = parse::<Cron>(
            serde_json::json!({"name": "backup", "schedule": "@daily", "command": "run"}),
        )
        .unwrap();
        let ch = c.diff(&out("type=absent\nparent=yes\n")).unwrap();
        assert_eq!(ch.kind, ChangeKind::Create);
        insta::assert_snapshot!("cron_apply", c.apply(&ch));
        let synced = format!(
            "type=file\nparent=yes\nmode=644\nuid=0\nowner=root\ngid=0\ngroup=root\nsize=9\nsha256={}\n",
            c.managed.sha256
        );
        assert_eq!(c.diff(&out(&synced)).unwrap(), Change::in_sync());
        let gone = parse::<Cron>(serde_json::json!({"name": "backup", "state": "absent"})).unwrap();
        let ch = gone.diff(&out("type=file\n")).unwrap();
        assert_eq!(ch.kind, ChangeKind::Remove);
        assert!(!gone.apply(&ch).contains("plumb-backup"));
    }
}
