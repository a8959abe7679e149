//! `group`: a local group.
//!
//! Probe output: `entry_b64=<base64 of the group(5) line>` from `getent group` (or
//! /etc/group when getent is missing), or `entry=absent`.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::sh::{self, quote, Observed};
use super::{
    step, BuildError, Change, ChangeKind, Example, Field, ModuleDef, Presence, ProbeError,
    ProbeResult, Resource, Runs,
};

/// A local group, managed with groupadd/groupmod/groupdel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.-]*[$]?$"), length(max = 32))]
    pub name: String,
    #[serde(default)]
    pub state: Presence,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// A system group; only used when creating.
    #[serde(default)]
    pub system: bool,
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct Group {
    pub params: Params,
}

impl super::FromParams for Group {
    type Params = Params;
    fn from_params(params: Params) -> Result<Group, BuildError> {
        Ok(Group { params })
    }
}

pub static DEF: ModuleDef = ModuleDef::of::<Group>(
    "group",
    "A local group: gid, system.",
    Runs::Host,
    &["entry", "entry_b64"],
    &[Example {
        name: "create, change gid, remove",
        setup: &[],
        steps: &[
            step(r#"{"name": "plumbexg", "gid": 4242}"#, ChangeKind::Create),
            step(r#"{"name": "plumbexg", "gid": 4244}"#, ChangeKind::Modify),
            step(
                r#"{"name": "plumbexg", "state": "absent"}"#,
                ChangeKind::Remove,
            ),
            step(
                r#"{"name": "plumbexsys", "system": true}"#,
                ChangeKind::Create,
            ),
        ],
    }],
)
.reversibility(super::Reversibility::Reversible)
.prune(super::Prune::Never(
    "a group is never removed without an explicit `state: absent` (files may still belong to it)",
));

/// A probe fragment that sets `$l` to the `db` (passwd or group) entry of `$n`, or "".
pub(crate) fn lookup_entry(db: &str) -> String {
    format!(
        r#"if command -v getent >/dev/null 2>&1; then l=$(getent {db} "$n")
else l=; while IFS= read -r x; do case $x in "$n":*) l=$x; break ;; esac; done < /etc/{db}
fi"#
    )
}

/// Splits a colon-separated database entry and checks it names `name`.
pub(crate) fn entry_fields(entry: &str, name: &str, min: usize) -> Result<Vec<String>, ProbeError> {
    let line = entry.lines().next().unwrap_or_default();
    let f: Vec<String> = line.split(':').map(str::to_string).collect();
    if f.len() < min || f[0] != name {
        return Err(ProbeError::new(format!(
            "unexpected entry for `{name}`: {line:?}"
        )));
    }
    Ok(f)
}

impl Resource for Group {
    fn target(&self) -> String {
        self.params.name.clone()
    }
    fn touches(&self) -> super::Touches {
        super::Touches::only([super::Touch::Group(self.params.name.clone())])
    }
    fn desired(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }
    fn probe(&self) -> String {
        format!(
            "n={}\n{}\nif [ -n \"$l\" ]; then {}; else echo entry=absent; fi",
            quote(&self.params.name),
            lookup_entry("group"),
            sh::print_var_b64("entry", r#""$l""#)
        )
    }
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError> {
        let o = Observed::parse(observed)?;
        let entry = match o.text("entry")? {
            Some(e) => Some(entry_fields(&e, &self.params.name, 3)?),
            None if o.get("entry") == Some("absent") => None,
            None => return Err(ProbeError::new("probe output lacks `entry_b64`")),
        };
        let gid = self.params.gid.map(|g| g.to_string());
        Ok(match (self.params.state, entry) {
            (Presence::Present, None) => {
                let c = Change::new(ChangeKind::Create).field(
                    Field::Name,
                    None,
                    Some(self.params.name.clone()),
                );
                match gid {
                    Some(g) => c.field(Field::Gid, None, Some(g)),
                    None => c,
                }
            }
            (Presence::Present, Some(f)) => match gid {
                Some(g) if f[2] != g => {
                    Change::new(ChangeKind::Modify).field(Field::Gid, Some(f[2].clone()), Some(g))
                }
                _ => Change::in_sync(),
            },
            (Presence::Absent, Some(f)) => {
                Change::new(ChangeKind::Remove).field(Field::Gid, Some(f[2].clone()), None)
            }
            (Presence::Absent, None) => Change::in_sync(),
        })
    }
    fn apply(&self, change: &Change) -> String {
        let n = quote(&self.params.name);
        let gid = self
            .params
            .gid
            .map(|g| format!(" -g {g}"))
            .unwrap_or_default();
        match change.kind {
            ChangeKind::InSync => ":".into(),
            ChangeKind::Create => {
                let sys = if self.params.system { " -r" } else { "" };
                format!("groupadd{sys}{gid} {n} || exit 1\n")
            }
            ChangeKind::Modify => format!("groupmod{gid} {n} || exit 1\n"),
            ChangeKind::Remove => format!("groupdel {n} || exit 1\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn group(v: serde_json::Value) -> Box<dyn Resource> {
        built(DEF.build, v)
    }

    fn entry(e: &str) -> String {
        format!("entry_b64={}\n", sh::b64(e.as_bytes()))
    }

    #[test]
    fn diffs() {
        let g = group(serde_json::json!({"name": "app", "gid": 990, "system": true}));
        let c = g.diff(&out("entry=absent\n")).unwrap();
        assert_eq!(c.kind, ChangeKind::Create);
        assert_eq!(g.apply(&c), "groupadd -r -g 990 app || exit 1\n");
        assert_eq!(
            g.diff(&out(&entry("app:x:990:alice,bob\n"))).unwrap(),
            Change::in_sync()
        );
        let c = g.diff(&out(&entry("app:x:1001:\n"))).unwrap();
        assert_eq!(c.fields[0].from.as_deref(), Some("1001"));
        assert_eq!(g.apply(&c), "groupmod -g 990 app || exit 1\n");
        assert!(g.diff(&out(&entry("other:x:1:\n"))).is_err());
        assert!(g.diff(&out(&entry("garbage"))).is_err());
        assert!(g.diff(&out("")).is_err());
        let gone = group(serde_json::json!({"name": "app", "state": "absent"}));
        let c = gone.diff(&out(&entry("app:x:990:\n"))).unwrap();
        assert_eq!(gone.apply(&c), "groupdel app || exit 1\n");
        assert_eq!(
            gone.diff(&out("entry=absent\n")).unwrap(),
            Change::in_sync()
        );
    }
}
