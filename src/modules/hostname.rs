//! `hostname`: the host's name, set now and persisted in /etc/hostname.
//!
//! Probe output: `current=` (the kernel's hostname) and `persisted_b64=` (the first line of
//! /etc/hostname, base64; absent when the file is missing). In sync when both are the name.
//! The apply uses `hostnamectl` when systemd-hostnamed answers, else writes /etc/hostname in
//! place (it may be a bind mount, as in containers) and runs `hostname`.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::sh::{self, quote, Observed};
use super::{
    step, BuildError, Change, ChangeKind, Example, Field, ModuleDef, ProbeError, ProbeResult,
    Resource, Runs,
};

/// The host's name (RFC 1123: dot-separated labels of letters, digits and `-`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub name: String,
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct Hostname {
    pub params: Params,
}

/// Whether `n` is an RFC 1123 host name.
pub fn valid(n: &str) -> bool {
    n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl super::FromParams for Hostname {
    type Params = Params;
    fn from_params(params: Params) -> Result<Hostname, BuildError> {
        if !valid(&params.name) {
            return Err(BuildError::at(
                "/name",
                "must be a host name: labels of letters, digits and `-` (not first or last), each at most 63, separated by `.`",
            ));
        }
        Ok(Hostname { params })
    }
}

pub static DEF: ModuleDef = ModuleDef::of::<Hostname>(
    "hostname",
    "The host's name, set now and persisted in /etc/hostname.",
    Runs::Host,
    &["current", "persisted_b64"],
    &[Example {
        name: "rename the host",
        setup: &[],
        steps: &[step(r#"{"name": "plumb-renamed"}"#, ChangeKind::Modify)],
    }],
)
.reversibility(super::Reversibility::Reversible)
.prune(super::Prune::Never("a host always has a hostname"));

impl Resource for Hostname {
    fn target(&self) -> String {
        "hostname".into()
    }
    fn touches(&self) -> super::Touches {
        super::Touches::only([
            super::Touch::path("/etc/hostname"),
            super::Touch::path("/proc/sys/kernel/hostname"),
        ])
    }
    fn desired(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }
    fn probe(&self) -> String {
        format!(
            "printf 'current=%s\\n' \"$(cat /proc/sys/kernel/hostname 2>/dev/null || hostname)\"\nif [ -f /etc/hostname ]; then {}; fi",
            sh::print_b64("persisted", "head -n 1 /etc/hostname | tr -d '\\n'")
        )
    }
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError> {
        let o = Observed::parse(observed)?;
        let current = o.req("current")?;
        let persisted = o.text("persisted")?;
        let want = &self.params.name;
        if current == want && persisted.as_deref().map(str::trim) == Some(want) {
            return Ok(Change::in_sync());
        }
        let mut c = Change::new(ChangeKind::Modify).field(
            Field::Name,
            Some(current.to_string()),
            Some(want.clone()),
        );
        if current == want {
            c = c.note("set now, but not in /etc/hostname: it would not survive a reboot");
        }
        Ok(c)
    }
    fn apply(&self, change: &Change) -> String {
        if change.kind == ChangeKind::InSync {
            return ":".into();
        }
        format!(
            r#"n={n}
if command -v hostnamectl >/dev/null 2>&1 && hostnamectl set-hostname -- "$n" 2>/dev/null && [ "$(head -n 1 /etc/hostname 2>/dev/null)" = "$n" ]; then :
else
printf '%s\n' "$n" > /etc/hostname || exit 1
hostname -- "$n" || exit 1
fi
[ "$(cat /proc/sys/kernel/hostname)" = "$n" ] || {fail}
"#,
            n = quote(&self.params.name),
            fail = sh::fail("the hostname did not change")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn set_and_persist() {
        let r = built(DEF.build, serde_json::json!({"name": "web-1.example.org"}));
        insta::assert_snapshot!("hostname_probe", r.probe());
        let same = format!(
            "current=web-1.example.org\npersisted_b64={}\n",
            sh::b64(b"web-1.example.org")
        );
        assert_eq!(r.diff(&out(&same)).unwrap(), Change::in_sync());
        let c = r.diff(&out("current=web-1.example.org\n")).unwrap();
        assert!(c.notes[0].contains("reboot"));
        let c = r
            .diff(&out(&format!(
                "current=old\npersisted_b64={}\n",
                sh::b64(b"old")
            )))
            .unwrap();
        insta::assert_snapshot!("hostname_apply", r.apply(&c));
    }

    #[test]
    fn invalid_names_are_refused() {
        for bad in [
            "",
            "a b",
            "-a",
            "a-",
            "$(id)",
            "a..b",
            "a_b",
            "x\ny",
            &"a".repeat(64),
        ] {
            assert!(
                (DEF.build)(serde_json::json!({"name": bad}), &mut NoRepo).is_err(),
                "{bad:?}"
            );
        }
        assert!(valid("a.b-c.d9"));
    }
}
