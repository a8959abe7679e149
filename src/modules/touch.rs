//! What a step acts on or reads on a host, as typed data: the engine's verify re-probes
//! every step that *shares* something with a step that acted (was applied or refreshed) in
//! the same script, so a step that breaks another is caught without probing every step
//! again. The rule, in one place ([`Touch::shares`]):
//!
//! - two paths share when they are the same path or one is under the other (a `file` under a
//!   `directory`, a `mount` point and every path below it); paths are compared as written,
//!   with `.` and `..` resolved lexically (a symlink between two spellings is not followed:
//!   a `symlink` step names its link and its target, so steps on either side share with it);
//! - two services share when they name the same unit (`nginx` and `nginx.service` are one);
//! - users share by name, groups by name;
//! - a step whose effects cannot be named ([`Touches::Anything`]: `command`, `package`, and
//!   every module that does not declare its touches) shares with every step, both ways.

use std::fmt;

/// One thing on a host a step acts on or reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Touch {
    /// A path, normalised ([`HostPath`]).
    Path(HostPath),
    /// A systemd unit or init script, by name without a `.service` suffix.
    Service(String),
    /// A user account.
    User(String),
    /// A group.
    Group(String),
}

impl Touch {
    /// The path `p` (absolute, as a module's parameter gives it).
    pub fn path(p: &str) -> Touch {
        Touch::Path(HostPath::new(p))
    }

    /// The service or unit `name` (`nginx`, `nginx.service` and `app.timer` as written).
    pub fn service(name: &str) -> Touch {
        Touch::Service(name.strip_suffix(".service").unwrap_or(name).to_string())
    }

    /// Whether two touches are of the same thing (see the module's documentation).
    pub fn shares(&self, other: &Touch) -> bool {
        match (self, other) {
            (Touch::Path(a), Touch::Path(b)) => a.within(b) || b.within(a),
            (Touch::Service(a), Touch::Service(b))
            | (Touch::User(a), Touch::User(b))
            | (Touch::Group(a), Touch::Group(b)) => a == b,
            _ => false,
        }
    }

    /// What kind of thing it is, for people (never its value: a sensitive step's path is
    /// not shown).
    pub fn kind(&self) -> TouchKind {
        match self {
            Touch::Path(_) => TouchKind::Path,
            Touch::Service(_) => TouchKind::Service,
            Touch::User(_) => TouchKind::User,
            Touch::Group(_) => TouchKind::Group,
        }
    }
}

/// The kind of a [`Touch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TouchKind {
    Path,
    Service,
    User,
    Group,
    /// A step that may touch anything ([`Touches::Anything`]).
    Anything,
}

impl fmt::Display for TouchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TouchKind::Path => "a path",
            TouchKind::Service => "a service",
            TouchKind::User => "a user",
            TouchKind::Group => "a group",
            TouchKind::Anything => "anything",
        })
    }
}

/// What a step acts on or reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touches {
    /// Exactly these.
    Only(Vec<Touch>),
    /// Its apply may change, or its probe read, any part of the host (`command`, `package`):
    /// after it acts every step is verified, and it is verified after any step acts.
    Anything,
}

impl Touches {
    /// Exactly `touches`.
    pub fn only(touches: impl IntoIterator<Item = Touch>) -> Touches {
        Touches::Only(touches.into_iter().collect())
    }
}

/// An absolute path with `.`, `..`, repeated and trailing slashes resolved lexically: `/`, or
/// `/a/b` (never a trailing slash). A relative path is read from `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPath(String);

impl HostPath {
    pub fn new(p: &str) -> HostPath {
        let mut parts: Vec<&str> = Vec::new();
        for c in p.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                c => parts.push(c),
            }
        }
        HostPath(format!("/{}", parts.join("/")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this path is `other` or under it.
    pub fn within(&self, other: &HostPath) -> bool {
        other.0 == "/"
            || self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }

    /// This path and each directory above it, up to `/`.
    pub fn ancestors(&self) -> impl Iterator<Item = &str> {
        let s = self.0.as_str();
        let cuts = s
            .match_indices('/')
            .map(|(i, _)| if i == 0 { 1 } else { i })
            .filter(move |&i| i < s.len());
        std::iter::once(s).chain(
            cuts.collect::<Vec<_>>()
                .into_iter()
                .rev()
                .map(move |i| &s[..i]),
        )
    }

    /// The prefix every path strictly under this one starts with (`/a/b/`; `/` for the root).
    pub fn children_prefix(&self) -> String {
        if self.0 == "/" {
            "/".to_string()
        } else {
            format!("{}/", self.0)
        }
    }
}

impl fmt::Display for HostPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn paths_are_normalised_lexically() {
        for (given, want) in [
            ("/etc/app/", "/etc/app"),
            ("//etc//./app", "/etc/app"),
            ("/etc/../srv/x", "/srv/x"),
            ("/..", "/"),
            ("/", "/"),
            ("rel/x", "/rel/x"),
        ] {
            assert_eq!(HostPath::new(given).as_str(), want, "{given}");
        }
    }

    #[test]
    fn a_path_shares_with_itself_its_ancestors_and_what_is_under_it() {
        let p = |s: &str| Touch::path(s);
        assert!(p("/etc/app").shares(&p("/etc/app/")));
        assert!(p("/etc/app").shares(&p("/etc/app/conf.d/x.conf")));
        assert!(p("/etc/app/conf.d/x.conf").shares(&p("/etc/app")));
        assert!(p("/").shares(&p("/anything")));
        assert!(!p("/etc/app").shares(&p("/etc/app2")));
        assert!(!p("/etc/app").shares(&p("/etc/ap")));
        assert!(!p("/etc/app-x/y").shares(&p("/etc/app")));
    }

    #[test]
    fn services_share_by_unit_name_and_kinds_never_mix() {
        assert!(Touch::service("nginx").shares(&Touch::service("nginx.service")));
        assert!(!Touch::service("nginx").shares(&Touch::service("nginx.socket")));
        assert!(!Touch::User("app".into()).shares(&Touch::Group("app".into())));
        assert!(!Touch::service("app").shares(&Touch::User("app".into())));
    }

    #[test]
    fn ancestors_go_up_to_the_root() {
        let p = HostPath::new("/a/b/c");
        let a: Vec<&str> = p.ancestors().collect();
        assert_eq!(a, ["/a/b/c", "/a/b", "/a", "/"]);
        let r = HostPath::new("/");
        let root: Vec<&str> = r.ancestors().collect();
        assert_eq!(root, ["/"]);
    }

    /// What the real modules declare: a file shares with its directory, with another step on
    /// its path and with its owner's user; a unit with its service and its drop-in
    /// directory; a command and a package with everything; unrelated steps with nothing.
    #[test]
    fn the_modules_declare_what_they_touch() {
        use crate::modules::testing::built;
        use crate::modules::{lookup, Resource};
        use serde_json::json;
        let of = |module: &str, params: serde_json::Value| -> Box<dyn Resource> {
            built(lookup(module).expect("registered").build, params)
        };
        let shares = |a: &dyn Resource, b: &dyn Resource| match (a.touches(), b.touches()) {
            (Touches::Anything, _) | (_, Touches::Anything) => true,
            (Touches::Only(x), Touches::Only(y)) => x.iter().any(|t| y.iter().any(|u| t.shares(u))),
        };
        let file = of(
            "file",
            json!({"path": "/etc/app/app.conf", "content": "x", "owner": "app"}),
        );
        let dir = of("directory", json!({"path": "/etc/app"}));
        let other_file = of("file", json!({"path": "/etc/app.conf", "content": "y"}));
        let user = of("user", json!({"name": "app"}));
        let unit = of(
            "systemd_unit",
            json!({"name": "app.service", "content": "[Service]\nExecStart=/bin/true\n"}),
        );
        let dropin = of(
            "file",
            json!({"path": "/etc/systemd/system/app.service.d/x.conf", "content": "z"}),
        );
        let service = of("service", json!({"name": "app", "state": "running"}));
        let command = of("command", json!({"run": "true"}));
        let package = of("package", json!({"name": "curl"}));
        let cron = of(
            "cron",
            json!({"name": "job", "schedule": "@daily", "command": "true"}),
        );
        assert!(shares(file.as_ref(), dir.as_ref()));
        assert!(shares(file.as_ref(), user.as_ref()));
        assert!(shares(unit.as_ref(), service.as_ref()));
        assert!(shares(unit.as_ref(), dropin.as_ref()));
        assert!(!shares(file.as_ref(), other_file.as_ref()));
        assert!(!shares(dir.as_ref(), other_file.as_ref()));
        assert!(!shares(service.as_ref(), file.as_ref()));
        assert!(!shares(cron.as_ref(), file.as_ref()));
        assert_eq!(command.touches(), Touches::Anything);
        assert_eq!(package.touches(), Touches::Anything);
        assert!(shares(command.as_ref(), cron.as_ref()));
    }

    proptest! {
        /// `within` agrees with `std::path`'s component-wise `starts_with`, and the ancestors
        /// are exactly the paths it is within.
        #[test]
        fn within_is_component_wise(a in "(/[ab.]{0,2}){0,4}", b in "(/[ab.]{0,2}){0,4}") {
            let (a, b) = (HostPath::new(&a), HostPath::new(&b));
            let std = std::path::Path::new(a.as_str()).starts_with(b.as_str());
            prop_assert_eq!(a.within(&b), std);
            prop_assert_eq!(a.ancestors().any(|x| x == b.as_str()), std);
            prop_assert_eq!(
                a != b && a.as_str().starts_with(&b.children_prefix()),
                std && a != b
            );
        }
    }
}
