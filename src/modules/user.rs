//! `user`: a local user account.
//!
//! Probe output: `entry_b64=<base64 of the passwd(5) line>` from `getent passwd` (or
//! /etc/passwd when getent is missing) or `entry=absent`; for an existing user also
//! `primary_b64=<id -gn>` and `groups_b64=<id -Gn>` (all group names, primary included).
//!
//! `groups` is exact: the supplementary groups are compared as a set, ignoring the primary
//! group, and set with `usermod -G`. Removing a user keeps its home directory (`userdel`
//! without `-r`).
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::group::{entry_fields, lookup_entry};
use super::sh::{self, quote, Observed};
use super::{
    step, BuildError, Change, ChangeKind, Example, Field, ModuleDef, Presence, ProbeError,
    ProbeResult, Resource, Runs,
};

/// A local user account, managed with useradd/usermod/userdel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.-]*[$]?$"), length(max = 32))]
    pub name: String,
    #[serde(default)]
    pub state: Presence,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Primary group (must exist). Unset: a group named like the user, created by useradd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Supplementary groups, exactly (other supplementary groups are removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"))]
    pub home: Option<String>,
    /// A system account (low uid, no aging); only used when creating.
    #[serde(default)]
    pub system: bool,
    /// Create the home directory when creating the user.
    #[serde(default = "yes")]
    pub create_home: bool,
}

fn yes() -> bool {
    true
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct User {
    pub params: Params,
}

impl super::FromParams for User {
    type Params = Params;
    fn from_params(params: Params) -> Result<User, BuildError> {
        let bad = |s: &str| {
            s.is_empty()
                || s.starts_with('-')
                || s.contains([',', ':', '\n'])
                || s.contains(char::is_whitespace)
        };
        if let Some(g) = &params.group {
            if bad(g) {
                return Err(BuildError::at("/group", "not a group name"));
            }
        }
        for (i, g) in params.groups.iter().flatten().enumerate() {
            if bad(g) {
                return Err(BuildError::at(format!("/groups/{i}"), "not a group name"));
            }
        }
        if let Some(s) = &params.shell {
            if s.contains([':', '\n']) {
                return Err(BuildError::at(
                    "/shell",
                    "must not contain `:` or a newline",
                ));
            }
        }
        if let Some(h) = &params.home {
            if h.contains([':', '\n']) {
                return Err(BuildError::at("/home", "must not contain `:` or a newline"));
            }
        }
        Ok(User { params })
    }
}

pub static DEF: ModuleDef = ModuleDef::of::<User>(
    "user",
    "A local user: uid, primary and supplementary groups, shell, home.",
    Runs::Host,
    &["entry", "entry_b64", "primary_b64", "groups_b64"],
    &[Example {
        name: "create with groups, modify, remove",
        setup: &[
            ("group", r#"{"name": "plumbexu1", "gid": 4251}"#),
            ("group", r#"{"name": "plumbexu2"}"#),
        ],
        steps: &[
            step(
                r#"{"name": "plumbexu", "uid": 4253, "group": "plumbexu1", "groups": ["plumbexu2"], "shell": "/bin/sh", "create_home": false}"#,
                ChangeKind::Create,
            ),
            step(
                r#"{"name": "plumbexu", "groups": [], "shell": "/bin/false", "home": "/nonexistent"}"#,
                ChangeKind::Modify,
            ),
            step(
                r#"{"name": "plumbexu", "state": "absent"}"#,
                ChangeKind::Remove,
            ),
            step(r#"{"name": "root", "uid": 0}"#, ChangeKind::InSync),
        ],
    }],
)
.reversibility(super::Reversibility::Some(irreversible))
.prune(super::Prune::Never("a user is never removed without an explicit `state: absent`"));

/// A removed user's files and ids are not restored by recreating the user.
fn irreversible(change: &Change) -> Option<&'static str> {
    (change.kind == ChangeKind::Remove).then_some("user removal")
}

fn set(groups: impl IntoIterator<Item = String>, primary: &str) -> Vec<String> {
    let mut v: Vec<String> = groups
        .into_iter()
        .filter(|g| g != primary && !g.is_empty())
        .collect();
    v.sort();
    v.dedup();
    v
}

impl User {
    fn flags(&self, change: Option<&Change>) -> String {
        let want = |f: Field| change.is_none_or(|c| c.changes_field(f));
        let mut s = String::new();
        if let (Some(u), true) = (self.params.uid, want(Field::Uid)) {
            s += &format!(" -u {u}");
        }
        if let (Some(g), true) = (&self.params.group, want(Field::Group)) {
            s += &format!(" -g {}", quote(g));
        }
        if let (Some(gs), true) = (&self.params.groups, want(Field::Groups)) {
            s += &format!(" -G {}", quote(&gs.join(",")));
        }
        if let (Some(sh), true) = (&self.params.shell, want(Field::Shell)) {
            s += &format!(" -s {}", quote(sh));
        }
        if let (Some(h), true) = (&self.params.home, want(Field::Home)) {
            s += &format!(" -d {}", quote(h));
        }
        s
    }
}

impl Resource for User {
    fn target(&self) -> String {
        self.params.name.clone()
    }
    fn touches(&self) -> super::Touches {
        use super::Touch;
        let p = &self.params;
        let mut t = vec![Touch::User(p.name.clone())];
        // Unset, useradd creates a group named like the user.
        t.push(Touch::Group(
            p.group.clone().unwrap_or_else(|| p.name.clone()),
        ));
        t.extend(p.groups.iter().flatten().map(|g| Touch::Group(g.clone())));
        match &p.home {
            Some(h) => t.push(Touch::path(h)),
            None if p.create_home => t.push(Touch::path(&format!("/home/{}", p.name))),
            None => {}
        }
        super::Touches::Only(t)
    }
    fn desired(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }
    fn probe(&self) -> String {
        format!(
            r#"n={}
{}
if [ -n "$l" ]; then
{}
{}
{}
else echo entry=absent; fi"#,
            quote(&self.params.name),
            lookup_entry("passwd"),
            sh::print_var_b64("entry", r#""$l""#),
            sh::print_b64("primary", r#"id -gn "$n""#),
            sh::print_b64("groups", r#"id -Gn "$n""#),
        )
    }
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError> {
        let o = Observed::parse(observed)?;
        let entry = match o.text("entry")? {
            Some(e) => Some(entry_fields(&e, &self.params.name, 7)?),
            None if o.get("entry") == Some("absent") => None,
            None => return Err(ProbeError::new("probe output lacks `entry_b64`")),
        };
        let p = &self.params;
        let Some(f) = entry else {
            if p.state == Presence::Absent {
                return Ok(Change::in_sync());
            }
            let mut c =
                Change::new(ChangeKind::Create).field(Field::Name, None, Some(p.name.clone()));
            if let Some(u) = p.uid {
                c = c.field(Field::Uid, None, Some(u.to_string()));
            }
            for (k, v) in [
                (Field::Group, &p.group),
                (Field::Shell, &p.shell),
                (Field::Home, &p.home),
            ] {
                if let Some(v) = v {
                    c = c.field(k, None, Some(v.clone()));
                }
            }
            if let Some(gs) = &p.groups {
                c = c.field(
                    Field::Groups,
                    None,
                    Some(set(gs.iter().cloned(), "").join(",")),
                );
            }
            return Ok(c);
        };
        if p.state == Presence::Absent {
            return Ok(Change::new(ChangeKind::Remove)
                .field(Field::Uid, Some(f[2].clone()), None)
                .note("the home directory is kept"));
        }
        let primary = o.text("primary")?.unwrap_or_default().trim().to_string();
        let mut c = Change::new(ChangeKind::Modify);
        if let Some(u) = p.uid {
            if f[2] != u.to_string() {
                c = c.field(Field::Uid, Some(f[2].clone()), Some(u.to_string()));
            }
        }
        if let Some(g) = &p.group {
            let numeric = g.bytes().all(|b| b.is_ascii_digit());
            let same = if numeric { &f[3] == g } else { &primary == g };
            if !same {
                c = c.field(
                    Field::Group,
                    Some(if primary.is_empty() {
                        f[3].clone()
                    } else {
                        primary.clone()
                    }),
                    Some(g.clone()),
                );
            }
        }
        if let Some(gs) = &p.groups {
            let seen = o.text("groups")?.unwrap_or_default();
            let seen = set(seen.split_whitespace().map(str::to_string), &primary);
            let want_primary = p.group.clone().unwrap_or_else(|| primary.clone());
            let want = set(gs.iter().cloned(), &want_primary);
            if seen != want {
                c = c.field(Field::Groups, Some(seen.join(",")), Some(want.join(",")));
            }
        }
        if let Some(h) = &p.home {
            if &f[5] != h {
                c = c.field(Field::Home, Some(f[5].clone()), Some(h.clone()));
            }
        }
        if let Some(s) = &p.shell {
            if &f[6] != s {
                c = c.field(Field::Shell, Some(f[6].clone()), Some(s.clone()));
            }
        }
        Ok(if c.fields.is_empty() {
            Change::in_sync()
        } else {
            c
        })
    }
    fn apply(&self, change: &Change) -> String {
        let n = quote(&self.params.name);
        match change.kind {
            ChangeKind::InSync => ":".into(),
            ChangeKind::Create => {
                let sys = if self.params.system { " -r" } else { "" };
                let home = if self.params.create_home {
                    " -m"
                } else {
                    " -M"
                };
                format!("useradd{sys}{home}{} {n} || exit 1\n", self.flags(None))
            }
            ChangeKind::Modify => format!("usermod{} {n} || exit 1\n", self.flags(Some(change))),
            ChangeKind::Remove => format!("userdel {n} || exit 1\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn user(v: serde_json::Value) -> Box<dyn Resource> {
        built(DEF.build, v)
    }

    fn probe(entry: &str, primary: &str, groups: &str) -> ProbeResult {
        out(&format!(
            "entry_b64={}\nprimary_b64={}\ngroups_b64={}\n",
            sh::b64(entry.as_bytes()),
            sh::b64(primary.as_bytes()),
            sh::b64(groups.as_bytes())
        ))
    }

    #[test]
    fn create() {
        let u = user(
            serde_json::json!({"name": "deploy", "uid": 1500, "groups": ["sudo", "docker"], "shell": "/bin/bash", "system": false}),
        );
        let c = u.diff(&out("entry=absent\n")).unwrap();
        insta::assert_debug_snapshot!("user_create", c);
        assert_eq!(
            u.apply(&c),
            "useradd -m -u 1500 -G sudo,docker -s /bin/bash deploy || exit 1\n"
        );
    }

    #[test]
    fn modify() {
        let u = user(
            serde_json::json!({"name": "deploy", "uid": 1500, "group": "staff", "groups": ["docker", "sudo", "staff"], "shell": "/bin/bash", "home": "/home/deploy"}),
        );
        let ok = probe(
            "deploy:x:1500:50:Deploy,,,:/home/deploy:/bin/bash\n",
            "staff\n",
            "staff sudo docker\n",
        );
        assert_eq!(u.diff(&ok).unwrap(), Change::in_sync());
        let drift = probe(
            "deploy:x:1500:1500::/srv/deploy:/bin/sh\n",
            "deploy\n",
            "deploy sudo adm\n",
        );
        let c = u.diff(&drift).unwrap();
        insta::assert_debug_snapshot!("user_modify", c);
        assert_eq!(
            u.apply(&c),
            "usermod -g staff -G docker,sudo,staff -s /bin/bash -d /home/deploy deploy || exit 1\n"
        );
        // No `groups`: supplementary groups are not managed.
        let loose = user(serde_json::json!({"name": "deploy"}));
        assert_eq!(loose.diff(&drift).unwrap(), Change::in_sync());
        assert!(u
            .diff(&probe("root:x:0:0::/root:/bin/sh\n", "root", "root"))
            .is_err());
        assert!(u.diff(&out("")).is_err());
    }

    #[test]
    fn remove_and_build() {
        let u = user(serde_json::json!({"name": "old", "state": "absent"}));
        let c = u
            .diff(&probe("old:x:1200:1200::/home/old:/bin/sh\n", "old", "old"))
            .unwrap();
        assert_eq!(u.apply(&c), "userdel old || exit 1\n");
        assert_eq!(u.diff(&out("entry=absent\n")).unwrap(), Change::in_sync());
        let e = (DEF.build)(
            serde_json::json!({"name": "x", "groups": ["ok", "a,b"]}),
            &mut NoRepo,
        )
        .unwrap_err();
        assert_eq!(e.pointer, "/groups/1");
    }
}
