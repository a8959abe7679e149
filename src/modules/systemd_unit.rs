//! `systemd_unit`: a systemd unit: its unit file and drop-ins under /etc/systemd/system, its
//! boot state and run state, verified active after the apply.
//!
//! Probe output: `init=systemd|none`; `unit=<sha256>|absent|other` when the unit file is
//! managed; one `dropin=<name> <sha256>|absent|other` per managed drop-in; `load=`,
//! `active=` and `enabled=` as `systemctl` reports them.
//!
//! The apply writes the changed files (private file beside the target, renamed into place),
//! runs `systemctl daemon-reload` exactly when one of them changed and before anything
//! else, then enables/disables, then starts, restarts (a running unit whose files changed,
//! unless `restart_on_change: false`) or stops. A unit meant to run is then checked: one that
//! is not `active` once it settled fails the step, with its last journal lines in the error.
//! Only the listed drop-ins are managed; others in `<name>.d` are left alone.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::service::RunState;
use super::sh::{self, quote, Observed};
use super::{
    step, BuildError, Change, ChangeKind, ContentChange, Example, Field, ModuleDef, ProbeError,
    ProbeResult, RepoRead, Resolve, Resource, Runs,
};

/// A drop-in file `<unit>.d/<name>` (content as data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DropIn {
    /// File name in `/etc/systemd/system/<unit>.d/`, ending in `.conf`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9@_.-]+\.conf$"))]
    pub name: String,
    pub content: String,
}

/// A systemd unit whose file, drop-ins, boot state and run state plumb manages. As a
/// `notify` target it is restarted (after a `daemon-reload` when systemd asks for one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Unit name with its type: `app.service`, `backup.timer`, ...
    #[schemars(regex(
        pattern = r"^[A-Za-z0-9@_.:-]+\.(service|socket|timer|path|mount|automount|target|slice)$"
    ))]
    pub name: String,
    /// Literal unit file content (at most one of content and template; neither: the unit
    /// file is not managed, e.g. one a package ships).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// A template under `templates/` rendered as the unit file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Drop-ins to manage, in `/etc/systemd/system/<name>.d/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropins: Vec<DropIn>,
    /// Unset: the boot state is not managed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Unset: the run state is not managed (a running unit is still restarted on change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RunState>,
    /// Restart a running unit when its unit file or a drop-in changed.
    #[serde(default = "yes")]
    pub restart_on_change: bool,
}

fn yes() -> bool {
    true
}

/// Where unit files are written.
pub const UNIT_DIR: &str = "/etc/systemd/system";

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct SystemdUnit {
    pub params: Params,
    unit: Option<Vec<u8>>,
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn build(
    value: serde_json::Value,
    resolve: &mut dyn Resolve,
) -> Result<Box<dyn Resource>, BuildError> {
    sh::reject_nul(&value, &["/content"])?;
    let params: Params = super::params(value)?;
    if !valid_unit_name(&params.name) {
        return Err(BuildError::at(
            "/name",
            "a unit name is letters, digits and `@_.:-`, not starting with `-`, ending in its type (`.service`, `.timer`, ...)",
        ));
    }
    let unit = match (&params.content, &params.template) {
        (Some(_), Some(_)) => {
            return Err(BuildError::at(
                "/template",
                "`template` conflicts with `content`: give at most one",
            ))
        }
        (Some(c), None) => Some(c.clone().into_bytes()),
        (None, Some(t)) => Some(
            resolve
                .template(t)
                .map_err(|e| BuildError::at("/template", e))?
                .into_bytes(),
        ),
        (None, None) => None,
    };
    for (i, d) in params.dropins.iter().enumerate() {
        if params.dropins[..i].iter().any(|o| o.name == d.name) {
            return Err(BuildError::at(
                format!("/dropins/{i}/name"),
                format!("drop-in `{}` is listed twice", d.name),
            ));
        }
        if !valid_dropin_name(&d.name) {
            return Err(BuildError::at(
                format!("/dropins/{i}/name"),
                "a drop-in name is letters, digits and `@_.-`, ending in `.conf`",
            ));
        }
        if d.content.contains('\0') {
            return Err(BuildError::at(
                format!("/dropins/{i}/content"),
                "contains a NUL character",
            ));
        }
    }
    Ok(Box::new(SystemdUnit { params, unit }))
}

const UNIT_TYPES: &[&str] = &[
    "service",
    "socket",
    "timer",
    "path",
    "mount",
    "automount",
    "target",
    "slice",
];

fn valid_unit_name(n: &str) -> bool {
    !n.starts_with('-')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@_.:-".contains(&b))
        && n.rsplit_once('.')
            .is_some_and(|(stem, ty)| !stem.is_empty() && UNIT_TYPES.contains(&ty))
}

fn valid_dropin_name(n: &str) -> bool {
    !n.starts_with(['-', '.'])
        && n.len() > 5
        && n.ends_with(".conf")
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@_.-".contains(&b))
}

pub static DEF: ModuleDef = ModuleDef {
    name: "systemd_unit",
    summary:
        "A systemd unit: unit file and drop-ins, daemon-reload, enabled, running, verified active.",
    schema: super::schema_for::<Params>,
    build,
    refreshable: true,
    // An older unit file and state applied again undo every change.
    reversibility: super::Reversibility::Reversible,
    prune: super::Prune::Never("removing a unit stops its service: declare its removal"),
    batch: None,
    probe_batch: None,
    runs: Runs::Host,
    reads: &[RepoRead::Template("/template")],
    probe_keys: &["init", "unit", "dropin", "load", "active", "enabled"],
    examples: &[Example {
        name: "unit with a drop-in: start, change the drop-in, stop",
        setup: &[],
        steps: &[
            step(
                r#"{"name": "plumb-ex.service", "content": "[Unit]\nDescription=plumb example\n[Service]\nExecStart=/bin/sleep 3600\n[Install]\nWantedBy=multi-user.target\n", "dropins": [{"name": "env.conf", "content": "[Service]\nEnvironment='A=it s $(x)'\n"}], "enabled": true, "state": "running"}"#,
                ChangeKind::Create,
            ),
            step(
                r#"{"name": "plumb-ex.service", "content": "[Unit]\nDescription=plumb example\n[Service]\nExecStart=/bin/sleep 3600\n[Install]\nWantedBy=multi-user.target\n", "dropins": [{"name": "env.conf", "content": "[Service]\nExecStart=\nExecStart=/bin/sleep 7200\n"}], "enabled": true, "state": "running"}"#,
                ChangeKind::Modify,
            ),
            step(
                r#"{"name": "plumb-ex.service", "enabled": false, "state": "stopped"}"#,
                ChangeKind::Modify,
            ),
        ],
    }],
};

const DETECT: &str = r#"[ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1"#;

/// Waits (at most 60 s) until `$u` leaves a transitional state, then fails the fragment with
/// the unit's last journal lines unless it is active. The first second lets a process that
/// dies at once (a wrong `ExecStart`) be seen as failed.
pub const VERIFY_ACTIVE: &str = r#"sleep 1
plumb_i=0
while :; do
plumb_s=$(systemctl is-active -- "$u" 2>/dev/null | head -n 1)
case $plumb_s in activating|deactivating|reloading|refreshing) ;; *) break ;; esac
plumb_i=$((plumb_i + 1)); [ "$plumb_i" -ge 60 ] && break
sleep 1
done
if [ "$plumb_s" != active ]; then
printf '%s is %s after the apply; its last journal lines:\n' "$u" "${plumb_s:-unknown}" >&2
journalctl -u "$u" -n 15 --no-pager -o short-iso 2>&1 | tail -n 15 >&2
exit 1
fi
"#;

/// Runs `systemctl daemon-reload` when systemd says the unit's files changed on disk.
pub const RELOAD_IF_NEEDED: &str = r#"if [ "$(systemctl show -p NeedDaemonReload --value -- "$u" 2>/dev/null)" = yes ]; then systemctl daemon-reload || exit 1; fi
"#;

impl SystemdUnit {
    fn unit_path(&self) -> String {
        format!("{UNIT_DIR}/{}", self.params.name)
    }
    fn dropin_path(&self, d: &DropIn) -> String {
        format!("{UNIT_DIR}/{}.d/{}", self.params.name, d.name)
    }
    fn wants_running(&self) -> bool {
        self.params.state == Some(RunState::Running)
    }
    fn files_change(c: &Change) -> bool {
        c.changes_field(Field::Content) || c.changes_field(Field::DropIn)
    }
}

fn seen(h: &str) -> Option<String> {
    match h {
        "absent" => None,
        "other" => Some("not a regular file".into()),
        h => Some(format!("sha256:{h}")),
    }
}

impl Resource for SystemdUnit {
    fn target(&self) -> String {
        self.params.name.clone()
    }
    fn touches(&self) -> super::Touches {
        super::Touches::only([
            super::Touch::service(&self.params.name),
            super::Touch::path(&self.unit_path()),
            super::Touch::path(&format!("{UNIT_DIR}/{}.d", self.params.name)),
        ])
    }
    fn desired(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "name": self.params.name,
            "dropins": self.params.dropins.iter().map(|d| serde_json::json!({
                "name": d.name, "sha256": sha(d.content.as_bytes()),
            })).collect::<Vec<_>>(),
            "restart_on_change": self.params.restart_on_change,
        });
        if let Some(u) = &self.unit {
            v["content"] = serde_json::json!({"sha256": sha(u), "size": u.len()});
        }
        if let Some(e) = self.params.enabled {
            v["enabled"] = e.into();
        }
        if let Some(s) = self.params.state {
            v["state"] = serde_json::to_value(s).unwrap_or_default();
        }
        v
    }
    fn probe(&self) -> String {
        let mut s = format!(
            "u={}\n{}\nif {DETECT}; then echo init=systemd; else echo init=none; exit 0; fi\n",
            quote(&self.params.name),
            sh::HASH_FN
        );
        if self.unit.is_some() {
            s += &format!(
                "printf 'unit=%s\\n' \"$(plumb_hash {})\"\n",
                quote(&self.unit_path())
            );
        }
        for d in &self.params.dropins {
            s += &format!(
                "printf 'dropin=%s %s\\n' {} \"$(plumb_hash {})\"\n",
                quote(&d.name),
                quote(&self.dropin_path(d))
            );
        }
        s += r#"printf 'load=%s\n' "$(systemctl show -p LoadState --value -- "$u" 2>/dev/null | head -n 1)"
printf 'active=%s\n' "$(systemctl is-active -- "$u" 2>/dev/null | head -n 1)"
printf 'enabled=%s\n' "$(systemctl is-enabled -- "$u" 2>/dev/null | head -n 1)""#;
        s
    }
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError> {
        let o = Observed::parse(observed)?;
        if o.req("init")? != "systemd" {
            return Err(ProbeError::new(format!(
                "systemd is not running on this host: {} cannot be managed (use the `service` module)",
                self.params.name
            )));
        }
        let mut c = Change::new(ChangeKind::Modify);
        if let Some(unit) = &self.unit {
            let h = o.req("unit")?;
            let want = sha(unit);
            if h != want {
                if h == "absent" {
                    c.kind = ChangeKind::Create;
                }
                c = c.field(Field::Content, seen(h), Some(format!("sha256:{want}")));
                c.content = Some(Box::new(ContentChange {
                    old: None,
                    new: Some(unit.clone()),
                }));
            }
        }
        let seen_dropins = o.all("dropin");
        for d in &self.params.dropins {
            let h = seen_dropins
                .iter()
                .filter_map(|l| l.split_once(' '))
                .find(|(n, _)| *n == d.name)
                .map(|(_, h)| h)
                .ok_or_else(|| ProbeError::new(format!("probe output lacks drop-in {}", d.name)))?;
            let want = sha(d.content.as_bytes());
            if h != want {
                c = c.field(
                    Field::DropIn,
                    seen(h).map(|s| format!("{} {s}", d.name)),
                    Some(format!("{} sha256:{want}", d.name)),
                );
            }
        }
        let load = o.get("load").unwrap_or_default();
        let active = o.req("active")?;
        let enabled = o.req("enabled")?;
        let running = matches!(active, "active" | "reloading" | "activating" | "refreshing");
        if let Some(want) = self.params.state {
            let want_running = want == RunState::Running;
            if running != want_running {
                let from = if active.is_empty() { "stopped" } else { active };
                let to = if want_running { "running" } else { "stopped" };
                c = c.field(Field::State, Some(from.into()), Some(to.into()));
            }
        }
        if let Some(want) = self.params.enabled {
            match enabled {
                "static" | "indirect" | "generated" | "transient" => {
                    c = c.note(format!(
                        "{} is {enabled}: it cannot be enabled or disabled; boot state left as is",
                        self.params.name
                    ))
                }
                e => {
                    let is = matches!(e, "enabled" | "enabled-runtime" | "alias" | "linked");
                    if is != want {
                        let from = if e.is_empty() { "unknown" } else { e };
                        c = c.field(Field::Enabled, Some(from.into()), Some(want.to_string()));
                    }
                }
            }
        }
        if c.fields.is_empty() {
            return Ok(Change::in_sync());
        }
        if load == "not-found" && self.unit.is_none() {
            c = c.note(format!(
                "unit {} not found yet: an earlier step must install it",
                self.params.name
            ));
        }
        if Self::files_change(&c) && running && self.params.restart_on_change {
            c = c.note("its files changed: daemon-reload, then restart");
        }
        Ok(c)
    }
    fn apply(&self, change: &Change) -> String {
        if change.kind == ChangeKind::InSync {
            return ":".into();
        }
        let mut s = format!("u={}\n", quote(&self.params.name));
        if let (Some(unit), true) = (&self.unit, change.changes_field(Field::Content)) {
            s += &sh::replace_file(&self.unit_path(), unit, "0644");
        }
        for d in &self.params.dropins {
            let changed = change.fields.iter().any(|f| {
                f.field == Field::DropIn
                    && f.to
                        .as_deref()
                        .and_then(|t| t.split_once(' '))
                        .is_some_and(|(n, _)| n == d.name)
            });
            if changed {
                s += &sh::replace_file(&self.dropin_path(d), d.content.as_bytes(), "0644");
            }
        }
        let files = Self::files_change(change);
        if files {
            s += "systemctl daemon-reload || exit 1\n";
        }
        if change.changes_field(Field::Enabled) {
            s += if self.params.enabled == Some(true) {
                "systemctl enable -- \"$u\" || exit 1\n"
            } else {
                "systemctl disable -- \"$u\" || exit 1\n"
            };
        }
        match self.params.state {
            Some(RunState::Running) => {
                if files && self.params.restart_on_change {
                    s += "systemctl restart -- \"$u\" || exit 1\n";
                } else if change.changes_field(Field::State) {
                    s += "systemctl start -- \"$u\" || exit 1\n";
                }
                s += VERIFY_ACTIVE;
            }
            Some(RunState::Stopped) => {
                if change.changes_field(Field::State) {
                    s += "systemctl stop -- \"$u\" || exit 1\n";
                }
            }
            None => {
                if files && self.params.restart_on_change {
                    s += "systemctl try-restart -- \"$u\" || exit 1\n";
                }
            }
        }
        s
    }
    fn refresh_after(&self, own: &Change) -> bool {
        // Restarted or started by its own step in this run: it runs the new configuration.
        let restarted = Self::files_change(own) && self.params.restart_on_change;
        let started = own
            .fields
            .iter()
            .any(|f| f.field == Field::State && f.to.as_deref() == Some("running"));
        !(restarted && self.params.state != Some(RunState::Stopped) || started)
    }
    fn refresh(&self) -> Option<String> {
        let mut s = format!("u={}\n{RELOAD_IF_NEEDED}", quote(&self.params.name));
        if self.wants_running() {
            s += "systemctl restart -- \"$u\" || exit 1\n";
            s += VERIFY_ACTIVE;
        } else {
            s += "systemctl try-restart -- \"$u\" || exit 1\n";
        }
        Some(s)
    }
    fn content(&self) -> Option<&[u8]> {
        self.unit.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn unit(v: serde_json::Value) -> Box<dyn Resource> {
        built(DEF.build, v)
    }

    const CONTENT: &str = "[Service]\nExecStart=/usr/bin/app\n";

    fn app() -> Box<dyn Resource> {
        unit(serde_json::json!({
            "name": "app.service",
            "content": CONTENT,
            "dropins": [{"name": "exec.conf", "content": "[Service]\nExecStart=\nExecStart=/usr/bin/app --v2\n"}],
            "enabled": true,
            "state": "running",
        }))
    }

    fn probe_out(unit: &str, dropin: &str, active: &str, enabled: &str) -> String {
        format!("init=systemd\nunit={unit}\ndropin=exec.conf {dropin}\nload=loaded\nactive={active}\nenabled={enabled}\n")
    }

    #[test]
    fn new_unit_writes_reloads_enables_starts_and_verifies() {
        let r = app();
        insta::assert_snapshot!("systemd_unit_probe", r.probe());
        let c = r
            .diff(&out(&probe_out("absent", "absent", "inactive", "")))
            .unwrap();
        assert_eq!(c.kind, ChangeKind::Create);
        let a = r.apply(&c);
        insta::assert_snapshot!("systemd_unit_create", a);
        let reload = a.find("systemctl daemon-reload").unwrap();
        let enable = a.find("systemctl enable").unwrap();
        let restart = a.find("systemctl restart").unwrap();
        assert!(a.rfind("mv -f -T").unwrap() < reload && reload < enable && enable < restart);
        assert_eq!(a.matches("daemon-reload").count(), 1);
        assert_eq!(
            a.matches("systemctl restart").count() + a.matches("systemctl start").count(),
            1
        );
        assert!(a.contains("journalctl -u \"$u\""));
    }

    #[test]
    fn a_changed_dropin_reloads_and_restarts_once_and_only_it_is_written() {
        let r = app();
        let unit_sha = sha(CONTENT.as_bytes());
        let c = r
            .diff(&out(&probe_out(&unit_sha, "abc", "active", "enabled")))
            .unwrap();
        assert_eq!(c.kind, ChangeKind::Modify);
        assert_eq!(c.fields.len(), 1, "{c:?}");
        assert_eq!(c.fields[0].field, Field::DropIn);
        let a = r.apply(&c);
        insta::assert_snapshot!("systemd_unit_dropin_change", a);
        assert_eq!(a.matches("mv -f -T").count(), 1);
        assert_eq!(a.matches("daemon-reload").count(), 1);
        assert_eq!(a.matches("systemctl restart").count(), 1);
        assert!(!r.refresh_after(&c), "restarted by its own step");
    }

    #[test]
    fn in_sync_and_states() {
        let r = app();
        let unit_sha = sha(CONTENT.as_bytes());
        let drop_sha = sha(b"[Service]\nExecStart=\nExecStart=/usr/bin/app --v2\n");
        assert_eq!(
            r.diff(&out(&probe_out(&unit_sha, &drop_sha, "active", "enabled")))
                .unwrap(),
            Change::in_sync()
        );
        // Failed: a state change, started (not restarted: no file changed) and verified.
        let c = r
            .diff(&out(&probe_out(&unit_sha, &drop_sha, "failed", "enabled")))
            .unwrap();
        let a = r.apply(&c);
        assert!(
            a.contains("systemctl start") && !a.contains("daemon-reload"),
            "{a}"
        );
        assert!(r.refresh_after(&Change::new(ChangeKind::Modify).field(
            Field::Enabled,
            None,
            None
        )));
        let refresh = r.refresh().unwrap();
        assert!(
            refresh.find("NeedDaemonReload").unwrap() < refresh.find("systemctl restart").unwrap()
        );
        let e = diff_error(r.as_ref(), "init=none\n");
        assert!(e.contains("systemd is not running"), "{e}");
        let e = diff_error(
            r.as_ref(),
            "init=systemd\nunit=absent\nload=loaded\nactive=x\nenabled=x\n",
        );
        assert!(e.contains("drop-in exec.conf"), "{e}");
    }

    #[test]
    fn hostile_values_are_refused_or_travel_as_data() {
        for bad in [
            serde_json::json!({"name": "a b.service"}),
            serde_json::json!({"name": "$(x).service"}),
            serde_json::json!({"name": "-x.service"}),
            serde_json::json!({"name": "app"}),
            serde_json::json!({"name": "a.service", "dropins": [{"name": "../x.conf", "content": ""}]}),
            serde_json::json!({"name": "a.service", "dropins": [{"name": "x.conf", "content": ""}, {"name": "x.conf", "content": ""}]}),
            serde_json::json!({"name": "a.service", "content": "x", "template": "t"}),
        ] {
            assert!((DEF.build)(bad.clone(), &mut NoRepo).is_err(), "{bad}");
        }
        let r = unit(
            serde_json::json!({"name": "a.service", "content": "ExecStart=/bin/echo '$(rm -rf /)' \"`id`\"\n", "state": "running"}),
        );
        let c = r
            .diff(&out(
                "init=systemd\nunit=absent\nload=not-found\nactive=inactive\nenabled=\n",
            ))
            .unwrap();
        let a = r.apply(&c);
        assert!(!a.contains("$(rm -rf /)") && !a.contains("`id`"), "{a}");
    }
}
