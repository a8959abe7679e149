//! `timezone`: the host's time zone: /etc/localtime a link to its zoneinfo file, and
//! /etc/timezone (Debian) naming it, so it persists across reboots.
//!
//! Probe output: `localtime_b64=` (the link's target, base64; absent when it is not a
//! link), `timezone_b64=` (the first line of /etc/timezone, when the file exists) and
//! `zoneinfo=yes|no` (whether the zone's file exists). The apply replaces the link
//! atomically (`ln -s` beside it, then rename) and fails when the zone is unknown there
//! (install tzdata).
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::sh::{self, quote, Observed};
use super::{
    step, BuildError, Change, ChangeKind, Example, Field, ModuleDef, ProbeError, ProbeResult,
    Resource, Runs,
};

/// An IANA time zone name: `UTC`, `Europe/Berlin`, `America/Argentina/Buenos_Aires`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub name: String,
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct Timezone {
    pub params: Params,
}

pub const ZONEINFO: &str = "/usr/share/zoneinfo";

impl super::FromParams for Timezone {
    type Params = Params;
    fn from_params(params: Params) -> Result<Timezone, BuildError> {
        let ok = params.name.len() <= 128
            && params.name.split('/').all(|c| {
                !c.is_empty()
                    && !c.starts_with(['-', '.'])
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_+-".contains(&b))
            });
        if !ok {
            return Err(BuildError::at(
                "/name",
                "must be a time zone name like `UTC` or `Europe/Berlin`",
            ));
        }
        Ok(Timezone { params })
    }
}

pub static DEF: ModuleDef = ModuleDef::of::<Timezone>(
    "timezone",
    "The host's time zone (/etc/localtime and /etc/timezone).",
    Runs::Host,
    &["localtime_b64", "timezone_b64", "zoneinfo"],
    &[Example {
        name: "Berlin, then back to UTC",
        setup: &[],
        steps: &[
            step(r#"{"name": "Europe/Berlin"}"#, ChangeKind::Modify),
            step(r#"{"name": "Etc/UTC"}"#, ChangeKind::Modify),
        ],
    }],
)
.reversibility(super::Reversibility::Reversible)
.prune(super::Prune::Never("a host always has a timezone"));

impl Timezone {
    fn zone_file(&self) -> String {
        format!("{ZONEINFO}/{}", self.params.name)
    }
}

impl Resource for Timezone {
    fn target(&self) -> String {
        "timezone".into()
    }
    fn touches(&self) -> super::Touches {
        super::Touches::only([
            super::Touch::path("/etc/localtime"),
            super::Touch::path("/etc/timezone"),
        ])
    }
    fn desired(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }
    fn probe(&self) -> String {
        format!(
            r#"if [ -L /etc/localtime ]; then {link}; fi
if [ -f /etc/timezone ]; then {tz}; fi
if [ -f {zone} ]; then echo zoneinfo=yes; else echo zoneinfo=no; fi"#,
            link = sh::print_b64("localtime", "readlink /etc/localtime | tr -d '\\n'"),
            tz = sh::print_b64("timezone", "head -n 1 /etc/timezone | tr -d '\\n'"),
            zone = quote(&self.zone_file()),
        )
    }
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError> {
        let o = Observed::parse(observed)?;
        let link = o.text("localtime")?;
        let tz = o.text("timezone")?;
        let want = &self.params.name;
        let link_ok = link.as_deref().is_some_and(|l| {
            l == self.zone_file()
                || l.strip_prefix("../usr/share/zoneinfo/") == Some(want)
                || l.strip_prefix("/usr/share/zoneinfo/") == Some(want)
        });
        let tz_ok = tz.as_deref().is_none_or(|t| t.trim() == want);
        if link_ok && tz_ok {
            return Ok(Change::in_sync());
        }
        let from = link
            .as_deref()
            .map(|l| l.rsplit_once("zoneinfo/").map_or(l, |(_, z)| z).to_string());
        let mut c = Change::new(ChangeKind::Modify).field(Field::Value, from, Some(want.clone()));
        if o.get("zoneinfo") == Some("no") {
            c = c.note(format!(
                "{} does not exist yet: an earlier step must install tzdata",
                self.zone_file()
            ));
        }
        Ok(c)
    }
    fn apply(&self, change: &Change) -> String {
        if change.kind == ChangeKind::InSync {
            return ":".into();
        }
        format!(
            r#"z={z}
tz={tz}
[ -f "$z" ] || {{ printf '%s does not exist: install tzdata\n' "$z" >&2; exit 1; }}
ln -s -f -- "$z" /etc/.localtime.plumb && mv -f -T -- /etc/.localtime.plumb /etc/localtime || exit 1
if [ -f /etc/timezone ] || [ -d /etc/apt ]; then printf '%s\n' "$tz" > /etc/.timezone.plumb && mv -f -T -- /etc/.timezone.plumb /etc/timezone || exit 1; fi
"#,
            z = quote(&self.zone_file()),
            tz = quote(&self.params.name),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn link_and_timezone_file() {
        let r = built(DEF.build, serde_json::json!({"name": "Europe/Berlin"}));
        insta::assert_snapshot!("timezone_probe", r.probe());
        let seen = |l: &str, t: Option<&str>| {
            let mut s = format!("localtime_b64={}\nzoneinfo=yes\n", sh::b64(l.as_bytes()));
            if let Some(t) = t {
                s += &format!("timezone_b64={}\n", sh::b64(t.as_bytes()));
            }
            out(&s)
        };
        assert_eq!(
            r.diff(&seen(
                "/usr/share/zoneinfo/Europe/Berlin",
                Some("Europe/Berlin")
            ))
            .unwrap(),
            Change::in_sync()
        );
        assert_eq!(
            r.diff(&seen("../usr/share/zoneinfo/Europe/Berlin", None))
                .unwrap(),
            Change::in_sync()
        );
        let c = r
            .diff(&seen("/usr/share/zoneinfo/Etc/UTC", Some("Etc/UTC")))
            .unwrap();
        assert_eq!(c.fields[0].from.as_deref(), Some("Etc/UTC"));
        insta::assert_snapshot!("timezone_apply", r.apply(&c));
        let c = r
            .diff(&seen("/usr/share/zoneinfo/Europe/Berlin", Some("UTC")))
            .unwrap();
        assert!(c.is_change(), "a stale /etc/timezone is a change");
        let c = r.diff(&out("zoneinfo=no\n")).unwrap();
        assert!(c.notes[0].contains("tzdata"));
    }

    #[test]
    fn invalid_names_are_refused() {
        for bad in [
            "",
            "../etc/shadow",
            "Europe/../../x",
            "a b",
            "$(id)",
            "/UTC",
            "UTC/",
            ".x",
        ] {
            assert!(
                (DEF.build)(serde_json::json!({"name": bad}), &mut NoRepo).is_err(),
                "{bad:?}"
            );
        }
    }
}
