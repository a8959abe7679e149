//! `service`: a systemd service (or the init system's `service` command without systemd).
//!
//! Probe output: `init=systemd` when systemd is running (`/run/systemd/system` exists and
//! `systemctl` is installed), else `init=sysv`; then `load=<LoadState>` (`loaded`,
//! `not-found`, ...), `active=<systemctl is-active>` and `enabled=<systemctl is-enabled>`.
//! Without systemd: `load=loaded|not-found` (an executable /etc/init.d/<name>),
//! `active=active|inactive` from `service <name> status`, and `enabled=enabled|disabled`
//! from the `S??<name>` links in /etc/rc[2-5].d, or `enabled=unknown` when there are none.
//!
//! Without systemd the change carries the note "no systemd on this host: using service(8)",
//! and the apply uses `service` and `update-rc.d` (or `chkconfig`, `rc-update`). Static,
//! indirect and generated units cannot be enabled or disabled: the boot state is then left as
//! it is, with a note. A unit that is not found is noted (an earlier package step may install
//! it); the apply fails if it is still missing.
//!
//! On systemd, a start (and a restart or reload by `notify`) first runs `daemon-reload` when
//! systemd reports the unit changed on disk (`NeedDaemonReload`), so an edited unit file is
//! what runs; and a service meant to run that is not `active` once it settled fails the step
//! with its last journal lines, instead of being reported changed.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::sh::{self, quote, Observed};
use super::{
    step, BuildError, Change, ChangeKind, Example, Facts, Field, ModuleDef, ProbeError,
    ProbeResult, Resource, Runs,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Stopped,
}

/// What a notification does to the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Refresh {
    #[default]
    Restart,
    Reload,
}

/// A service: running or stopped, enabled at boot or not. As a `notify` target it is
/// restarted (or reloaded) once per run when a notifying step changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Unit name, with or without `.service`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9@._:-]+$"))]
    pub name: String,
    /// Unset: the run state is not managed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RunState>,
    /// Unset: the boot state is not managed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub refresh: Refresh,
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct Service {
    pub params: Params,
}

impl super::FromParams for Service {
    type Params = Params;
    fn from_params(params: Params) -> Result<Service, BuildError> {
        if params.name.starts_with('-') {
            return Err(BuildError::at("/name", "must not start with `-`"));
        }
        Ok(Service { params })
    }
}

pub static DEF: ModuleDef = ModuleDef::of::<Service>(
    "service",
    "A service: running/stopped, enabled/disabled, restart or reload on notify.",
    Runs::Host,
    &["init", "load", "active", "enabled"],
    &[Example {
        name: "start and enable, then stop and disable",
        setup: &[("package", r#"{"name": "plumb-demo"}"#)],
        steps: &[
            step(
                r#"{"name": "plumb-demo", "state": "running", "enabled": true}"#,
                ChangeKind::Modify,
            ),
            step(
                r#"{"name": "plumb-demo.service", "state": "stopped", "enabled": false}"#,
                ChangeKind::Modify,
            ),
        ],
    }],
)
.refreshable()
.reversibility(super::Reversibility::Reversible)
.prune(super::Prune::Never(
    "a service is only stopped or disabled as declared",
));

/// The note that tells people the apply uses service(8) (the apply reads
/// [`super::Facts::init`], never this text).
pub const NO_SYSTEMD: &str = "no systemd on this host: using service(8)";

/// The init system the probe found on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// systemd is running: `systemctl`.
    Systemd,
    /// No systemd: `service`/init scripts and update-rc.d (or chkconfig, rc-update).
    Sysv,
}

const DETECT: &str = r#"[ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1"#;

impl Service {
    /// The init script name: the unit name without `.service`.
    fn sysv_name(&self) -> &str {
        self.params
            .name
            .strip_suffix(".service")
            .unwrap_or(&self.params.name)
    }
    fn vars(&self) -> String {
        format!(
            "u={}\nn={}\n",
            quote(&self.params.name),
            quote(self.sysv_name())
        )
    }
}

/// Service commands for hosts without systemd: `service`, else the init script itself.
const SYSV_CTL: &str = r#"if command -v service >/dev/null 2>&1; then sv() { service "$n" "$1" </dev/null; }; else sv() { "/etc/init.d/$n" "$1" </dev/null; }; fi"#;

fn is_running(active: &str) -> bool {
    matches!(active, "active" | "reloading" | "activating" | "refreshing")
}

impl Resource for Service {
    fn target(&self) -> String {
        self.params.name.clone()
    }
    fn touches(&self) -> super::Touches {
        super::Touches::only([super::Touch::service(&self.params.name)])
    }
    fn desired(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }
    fn probe(&self) -> String {
        format!(
            r#"{vars}if {DETECT}; then
echo init=systemd
printf 'load=%s\n' "$(systemctl show -p LoadState --value -- "$u" 2>/dev/null | head -n 1)"
printf 'active=%s\n' "$(systemctl is-active -- "$u" 2>/dev/null | head -n 1)"
printf 'enabled=%s\n' "$(systemctl is-enabled -- "$u" 2>/dev/null | head -n 1)"
else
echo init=sysv
if [ -x "/etc/init.d/$n" ]; then echo load=loaded; else echo load=not-found; fi
{SYSV_CTL}
if sv status >/dev/null 2>&1; then echo active=active; else echo active=inactive; fi
e=unknown
for r in /etc/rc2.d /etc/rc.d/rc2.d; do [ -d "$r" ] && e=disabled; done
for f in /etc/rc[2345].d/S[0-9][0-9]"$n" /etc/rc.d/rc[2345].d/S[0-9][0-9]"$n"; do [ -e "$f" ] && e=enabled; done
echo "enabled=$e"
fi"#,
            vars = self.vars()
        )
    }
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError> {
        let o = Observed::parse(observed)?;
        let init = match o.req("init")? {
            "systemd" => Init::Systemd,
            "sysv" => Init::Sysv,
            other => return Err(ProbeError::new(format!("unknown init system `{other}`"))),
        };
        let load = o.get("load").unwrap_or_default();
        let active = o.req("active")?;
        let enabled = o.req("enabled")?;
        let mut c = Change::new(ChangeKind::Modify);
        let mut notes = Vec::new();
        if init == Init::Sysv {
            notes.push(NO_SYSTEMD.to_string());
        }
        if load == "not-found" {
            notes.push(format!(
                "service {} not found yet: an earlier step must install it",
                self.params.name
            ));
        } else if load == "masked" || enabled == "masked" {
            notes.push(format!("service {} is masked", self.params.name));
        }
        if let Some(want) = self.params.state {
            let running = is_running(active);
            let want_running = want == RunState::Running;
            if running != want_running {
                let from = if active.is_empty() { "stopped" } else { active };
                let to = if want_running { "running" } else { "stopped" };
                c = c.field(Field::State, Some(from.to_string()), Some(to.to_string()));
            }
        }
        if let Some(want) = self.params.enabled {
            match enabled {
                "static" | "indirect" | "generated" | "transient" => notes.push(format!(
                    "{} is {enabled}: it cannot be enabled or disabled; boot state left as is",
                    self.params.name
                )),
                "unknown" => notes.push(
                    "boot state unmanaged: no rc.d links to tell it on this host".to_string(),
                ),
                e => {
                    let is = matches!(e, "enabled" | "enabled-runtime" | "alias" | "linked");
                    if is != want {
                        let from = if e.is_empty() { "unknown" } else { e };
                        c = c.field(
                            Field::Enabled,
                            Some(from.to_string()),
                            Some(want.to_string()),
                        );
                    }
                }
            }
        }
        if c.fields.is_empty() {
            return Ok(Change::in_sync());
        }
        for n in notes {
            c = c.note(n);
        }
        Ok(c.observed(Facts {
            init: Some(init),
            ..Facts::default()
        }))
    }
    fn apply(&self, change: &Change) -> String {
        if change.kind == ChangeKind::InSync {
            return ":".into();
        }
        let sysv = change.observed.init == Some(Init::Sysv);
        let mut s = self.vars();
        let want_running = self.params.state == Some(RunState::Running);
        let want_enabled = self.params.enabled == Some(true);
        if sysv {
            s += SYSV_CTL;
            s.push('\n');
            if change.changes_field(Field::Enabled) {
                s += &if want_enabled {
                    format!(
                        r#"if command -v update-rc.d >/dev/null 2>&1; then update-rc.d "$n" defaults >/dev/null && update-rc.d "$n" enable || exit 1
elif command -v chkconfig >/dev/null 2>&1; then chkconfig "$n" on || exit 1
elif command -v rc-update >/dev/null 2>&1; then rc-update add "$n" || exit 1
else {}; fi
"#,
                        sh::fail("cannot enable: no update-rc.d, chkconfig or rc-update")
                    )
                } else {
                    format!(
                        r#"if command -v update-rc.d >/dev/null 2>&1; then update-rc.d "$n" disable || exit 1
elif command -v chkconfig >/dev/null 2>&1; then chkconfig "$n" off || exit 1
elif command -v rc-update >/dev/null 2>&1; then rc-update del "$n" || exit 1
else {}; fi
"#,
                        sh::fail("cannot disable: no update-rc.d, chkconfig or rc-update")
                    )
                };
            }
            if change.changes_field(Field::State) {
                s += if want_running {
                    "sv start || exit 1\n"
                } else {
                    "sv stop || exit 1\n"
                };
            }
        } else {
            if change.changes_field(Field::Enabled) {
                s += if want_enabled {
                    "systemctl enable -- \"$u\" || exit 1\n"
                } else {
                    "systemctl disable -- \"$u\" || exit 1\n"
                };
            }
            if change.changes_field(Field::State) {
                if want_running {
                    // A unit file changed on disk is read before the start, and a start
                    // that does not leave the unit active fails the step.
                    s += super::systemd_unit::RELOAD_IF_NEEDED;
                    s += "systemctl start -- \"$u\" || exit 1\n";
                    s += super::systemd_unit::VERIFY_ACTIVE;
                } else {
                    s += "systemctl stop -- \"$u\" || exit 1\n";
                }
            }
        }
        s
    }
    fn refresh_after(&self, own_change: &Change) -> bool {
        // Started by its own step in this run: it runs the new configuration already.
        !own_change
            .fields
            .iter()
            .any(|f| f.field == Field::State && f.to.as_deref() == Some("running"))
    }
    fn refresh(&self) -> Option<String> {
        let stopped = self.params.state == Some(RunState::Stopped);
        let (systemd, sysv) = match (stopped, self.params.refresh) {
            // A service meant to be stopped is only restarted if it happens to run.
            (true, _) => (
                "try-restart",
                "if sv status >/dev/null 2>&1; then sv restart || exit 1; fi",
            ),
            (false, Refresh::Restart) => ("restart", "sv restart || exit 1"),
            (false, Refresh::Reload) => ("reload", "sv reload || exit 1"),
        };
        // systemd: a changed unit file is reloaded first; a unit meant to run is verified.
        let verify = if stopped {
            ""
        } else {
            super::systemd_unit::VERIFY_ACTIVE
        };
        Some(format!(
            "{}if {DETECT}; then\n{}systemctl {systemd} -- \"$u\" || exit 1\n{verify}else\n{SYSV_CTL}\n{sysv}\nfi\n",
            self.vars(),
            super::systemd_unit::RELOAD_IF_NEEDED,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn svc(v: serde_json::Value) -> Box<dyn Resource> {
        built(DEF.build, v)
    }

    #[test]
    fn no_refresh_after_its_own_start() {
        let r = svc(serde_json::json!({"name": "app", "state": "running", "enabled": true}));
        let started = Change::new(super::super::ChangeKind::Modify).field(
            Field::State,
            Some("stopped".into()),
            Some("running".into()),
        );
        assert!(!r.refresh_after(&started), "just started: no restart");
        let enabled = Change::new(super::super::ChangeKind::Modify).field(
            Field::Enabled,
            Some("false".into()),
            Some("true".into()),
        );
        assert!(
            r.refresh_after(&enabled),
            "only enabled: the running process has the old config"
        );
    }

    #[test]
    fn systemd() {
        let s = svc(serde_json::json!({"name": "nginx", "state": "running", "enabled": true}));
        insta::assert_snapshot!("service_probe", s.probe());
        let ok = "init=systemd\nload=loaded\nactive=active\nenabled=enabled\n";
        assert_eq!(s.diff(&out(ok)).unwrap(), Change::in_sync());
        let c = s
            .diff(&out(
                "init=systemd\nload=loaded\nactive=failed\nenabled=disabled\n",
            ))
            .unwrap();
        insta::assert_debug_snapshot!("service_change", c);
        insta::assert_snapshot!("service_apply", s.apply(&c));
        let c = s
            .diff(&out(
                "init=systemd\nload=not-found\nactive=inactive\nenabled=\n",
            ))
            .unwrap();
        assert!(c.notes[0].contains("not found"));
        assert_eq!(c.fields.len(), 2);
        let c = s
            .diff(&out(
                "init=systemd\nload=loaded\nactive=active\nenabled=static\n",
            ))
            .unwrap();
        assert_eq!(c, Change::in_sync());
        let stop =
            svc(serde_json::json!({"name": "cups.service", "state": "stopped", "enabled": false}));
        assert_eq!(
            stop.diff(&out(
                "init=systemd\nload=loaded\nactive=inactive\nenabled=disabled\n"
            ))
            .unwrap(),
            Change::in_sync()
        );
        assert_eq!(
            stop.diff(&out(
                "init=systemd\nload=loaded\nactive=failed\nenabled=masked\n"
            ))
            .unwrap(),
            Change::in_sync()
        );
        let c = stop
            .diff(&out(
                "init=systemd\nload=loaded\nactive=active\nenabled=enabled\n",
            ))
            .unwrap();
        let a = stop.apply(&c);
        assert!(a.contains("systemctl stop") && a.contains("systemctl disable"));
    }

    #[test]
    fn sysv() {
        let s =
            svc(serde_json::json!({"name": "nginx.service", "state": "running", "enabled": true}));
        let c = s
            .diff(&out(
                "init=sysv\nload=loaded\nactive=inactive\nenabled=disabled\n",
            ))
            .unwrap();
        assert!(c.notes.contains(&NO_SYSTEMD.to_string()));
        insta::assert_snapshot!("service_sysv_apply", s.apply(&c));
        let c = s
            .diff(&out(
                "init=sysv\nload=loaded\nactive=active\nenabled=unknown\n",
            ))
            .unwrap();
        assert_eq!(c, Change::in_sync());
    }

    #[test]
    fn refresh_and_errors() {
        let s = svc(serde_json::json!({"name": "nginx", "refresh": "reload"}));
        insta::assert_snapshot!("service_refresh", s.refresh().unwrap_or_default());
        // Nothing managed: always in sync.
        assert_eq!(
            s.diff(&out(
                "init=systemd\nload=loaded\nactive=inactive\nenabled=disabled\n"
            ))
            .unwrap(),
            Change::in_sync()
        );
        assert!(s.diff(&out("init=upstart\nactive=x\nenabled=y\n")).is_err());
        assert!(s.diff(&out("init=systemd\n")).is_err());
        assert!(s
            .diff(&ProbeResult {
                status: 127,
                ..Default::default()
            })
            .is_err());
    }
}
