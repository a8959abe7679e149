//! `package`: a system package (apt/dpkg; dnf/rpm and apk understood).
//!
//! Probe output: `manager=apt|dnf|apk|none` (detected on the host when `manager: auto`:
//! apt when dpkg-query and apt-get exist, then dnf/yum with rpm, then apk), then
//! - apt: `dpkg_status=<${Status}>` and `dpkg_version=<${Version}>` per installed
//!   architecture (from `dpkg-query -W`), nothing when the package is unknown;
//! - dnf: `rpm=absent`, or `rpm_version=%{VERSION}` and `rpm_release=%{RELEASE}`;
//! - apk: `apk=absent`, or `apk=installed` and `apk_version=<V: from the installed db>`;
//! - `error=<message>` when the chosen manager's tools are missing.
//!
//! The manager found is carried to the apply in a note (`package manager: apt`), since the
//! apply is rendered from the `Change`. Versions are compared exactly as the manager spells
//! them (for rpm, `VERSION` or `VERSION-RELEASE`).
//!
//! Consecutive changed steps that install (or remove) packages with one manager are one
//! command of it ([`batch`]): one `apt-get install` of every missing package.
mod batch;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::sh::{quote, Observed};
use super::{
    step, Batch, BuildError, Change, ChangeKind, Example, Facts, Field, ModuleDef, Presence,
    ProbeError, ProbeResult, Resource, Runs,
};

/// The package manager to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Manager {
    /// Detect on the host: apt, then dnf, then apk.
    #[default]
    Auto,
    Apt,
    Dnf,
    Apk,
}

/// A system package, present (optionally at an exact `version`) or absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Package name.
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9+._-]*$"))]
    pub name: String,
    #[serde(default)]
    pub state: Presence,
    /// Exact version to hold, as the package manager spells it (e.g. "1.1" or "1.24.0-1").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default)]
    pub manager: Manager,
}

/// The resource this module builds; behaviour lives in the `Resource` impl.
#[derive(Debug, Clone)]
pub struct Package {
    pub params: Params,
}

impl super::FromParams for Package {
    type Params = Params;
    fn from_params(params: Params) -> Result<Package, BuildError> {
        if let Some(v) = &params.version {
            if v.is_empty()
                || !v
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".+~:_-".contains(&b))
            {
                return Err(BuildError::at("/version", "not a package version"));
            }
        }
        Ok(Package { params })
    }
}

pub static DEF: ModuleDef = ModuleDef::of::<Package>(
    "package",
    "A system package: present, absent or at a version.",
    Runs::Host,
    &[
        "manager",
        "dpkg_status",
        "dpkg_version",
        "rpm",
        "rpm_version",
        "rpm_release",
        "apk",
        "apk_version",
        "error",
    ],
    &[
        Example {
            name: "install at a version, upgrade, remove",
            setup: &[],
            steps: &[
                step(
                    r#"{"name": "plumb-hello", "version": "1.0"}"#,
                    ChangeKind::Create,
                ),
                step(
                    r#"{"name": "plumb-hello", "version": "1.1"}"#,
                    ChangeKind::Modify,
                ),
                step(
                    r#"{"name": "plumb-hello", "state": "absent"}"#,
                    ChangeKind::Remove,
                ),
            ],
        },
        Example {
            name: "any version, with the manager named",
            setup: &[],
            steps: &[
                step(
                    r#"{"name": "plumb-extra", "manager": "apt"}"#,
                    ChangeKind::Create,
                ),
                step(
                    r#"{"name": "plumb-extra", "state": "absent"}"#,
                    ChangeKind::Remove,
                ),
            ],
        },
    ],
)
.reversibility(super::Reversibility::Some(irreversible))
.prune(super::Prune::Never("removing a package can take what other software needs with it: declare `state: absent` to remove it"))
.batch(Batch {
    key: batch::key,
    apply: batch::apply,
});

/// Removing a package (its configuration may be purged) or downgrading it cannot be undone by
/// applying an older state.
fn irreversible(change: &Change) -> Option<&'static str> {
    match change.kind {
        ChangeKind::Remove => Some("package removal"),
        ChangeKind::Modify => change
            .fields
            .iter()
            .filter(|f| f.field == Field::Version)
            .any(|f| match (&f.from, &f.to) {
                (Some(from), Some(to)) => version_key(to) < version_key(from),
                _ => false,
            })
            .then_some("package downgrade"),
        ChangeKind::Create | ChangeKind::InSync => None,
    }
}

/// A version's digit runs as numbers and the rest as text, for ordering (`1.10` > `1.9`).
fn version_key(v: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut rest = v;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (num, tail) = rest.split_at(digits);
        let text_len = tail.len() - tail.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
        let (text, tail) = tail.split_at(text_len);
        out.push((num.parse().unwrap_or(u64::MAX), text.to_string()));
        rest = tail;
    }
    out
}

/// A package manager plumb drives: the configured one, or the one the probe found on the
/// host (carried to the apply in [`super::Facts::package_manager`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Apt,
    Dnf,
    Apk,
}

impl Detected {
    fn parse(m: &str) -> Result<Detected, ProbeError> {
        match m {
            "apt" => Ok(Detected::Apt),
            "dnf" => Ok(Detected::Dnf),
            "apk" => Ok(Detected::Apk),
            "none" => Err(ProbeError::new(
                "no supported package manager found on the host (apt, dnf or apk)",
            )),
            other => Err(ProbeError::new(format!(
                "unknown package manager `{other}`"
            ))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Detected::Apt => "apt",
            Detected::Dnf => "dnf",
            Detected::Apk => "apk",
        }
    }
}

fn configured(m: Manager) -> Option<Detected> {
    match m {
        Manager::Auto => None,
        Manager::Apt => Some(Detected::Apt),
        Manager::Dnf => Some(Detected::Dnf),
        Manager::Apk => Some(Detected::Apk),
    }
}

impl Package {
    /// Which manager to use for a change: the configured one, else the one the probe found.
    fn manager(&self, change: &Change) -> Option<Detected> {
        configured(self.params.manager).or(change.observed.package_manager)
    }

    /// The installed version, if any, from the probe's output.
    fn installed(&self, m: Detected, o: &Observed) -> Result<Option<Observedversion>, ProbeError> {
        Ok(match m {
            Detected::Apt => {
                let statuses = o.all("dpkg_status");
                let versions = o.all("dpkg_version");
                statuses
                    .iter()
                    .zip(versions.iter().chain(std::iter::repeat(&String::new())))
                    .find(|(s, _)| s.split_whitespace().nth(2) == Some("installed"))
                    .map(|(_, v)| Observedversion {
                        version: v.clone(),
                        alt: None,
                    })
            }
            Detected::Dnf => match (o.get("rpm"), o.get("rpm_version")) {
                (_, Some(v)) => {
                    let release = o.get("rpm_release").unwrap_or_default();
                    Some(Observedversion {
                        version: v.to_string(),
                        alt: (!release.is_empty()).then(|| format!("{v}-{release}")),
                    })
                }
                (Some("absent"), None) => None,
                _ => return Err(ProbeError::new("probe output lacks `rpm_version`")),
            },
            Detected::Apk => match o.req("apk")? {
                "installed" => Some(Observedversion {
                    version: o.get("apk_version").unwrap_or_default().to_string(),
                    alt: None,
                }),
                _ => None,
            },
        })
    }
}

#[derive(Debug)]
struct Observedversion {
    version: String,
    /// Another accepted spelling (rpm's VERSION-RELEASE).
    alt: Option<String>,
}

impl Observedversion {
    fn is(&self, want: &str) -> bool {
        self.version == want || self.alt.as_deref() == Some(want)
    }
    fn shown(&self) -> String {
        self.alt.clone().unwrap_or_else(|| self.version.clone())
    }
}

impl Resource for Package {
    fn target(&self) -> String {
        self.params.name.clone()
    }
    /// Installing, upgrading or removing a package writes files and starts or stops
    /// services other steps may manage, none of which can be named beforehand.
    fn touches(&self) -> super::Touches {
        super::Touches::Anything
    }
    fn desired(&self) -> serde_json::Value {
        serde_json::to_value(&self.params).unwrap_or_default()
    }
    fn probe(&self) -> String {
        let n = quote(&self.params.name);
        format!(
            r#"m={m}
if [ -z "$m" ]; then
if command -v dpkg-query >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then m=apt
elif command -v rpm >/dev/null 2>&1 && {{ command -v dnf >/dev/null 2>&1 || command -v yum >/dev/null 2>&1; }}; then m=dnf
elif command -v apk >/dev/null 2>&1; then m=apk
else m=none
fi
fi
echo "manager=$m"
case $m in
apt)
if command -v dpkg-query >/dev/null 2>&1; then
dpkg-query -W -f {dpkg} {n} 2>/dev/null || :
else echo 'error=dpkg-query not found'; fi ;;
dnf)
if ! command -v rpm >/dev/null 2>&1; then echo 'error=rpm not found'
elif rpm -q --quiet {n} 2>/dev/null; then rpm -q --qf {rpm} {n} | head -n 2
else echo rpm=absent; fi ;;
apk)
if ! command -v apk >/dev/null 2>&1; then echo 'error=apk not found'
elif apk info -e {n} >/dev/null 2>&1; then
echo apk=installed
if [ -r /lib/apk/db/installed ]; then
f=
while IFS= read -r l; do
case $l in
P:*) if [ "${{l#P:}}" = {n} ]; then f=1; else f=; fi ;;
V:*) if [ -n "$f" ]; then echo "apk_version=${{l#V:}}"; break; fi ;;
esac
done < /lib/apk/db/installed
fi
else echo apk=absent; fi ;;
esac"#,
            m = quote(configured(self.params.manager).map_or("", Detected::name)),
            dpkg = quote(r"dpkg_status=${Status}\ndpkg_version=${Version}\n"),
            rpm = quote(r"rpm_version=%{VERSION}\nrpm_release=%{RELEASE}\n"),
        )
    }
    fn diff(&self, observed: &ProbeResult) -> Result<Change, ProbeError> {
        let o = Observed::parse(observed)?;
        let m = o.req("manager")?;
        if let Some(e) = o.get("error") {
            return Err(ProbeError::new(format!("package manager {m}: {e}")));
        }
        let detected = Detected::parse(m)?;
        let have = self.installed(detected, &o)?;
        let want = self.params.version.clone();
        let c = match (self.params.state, &have, &want) {
            (Presence::Present, None, _) => Change::new(ChangeKind::Create).field(
                Field::Version,
                None,
                Some(want.unwrap_or_else(|| "any".into())),
            ),
            (Presence::Present, Some(h), Some(w)) if !h.is(w) => Change::new(ChangeKind::Modify)
                .field(Field::Version, Some(h.shown()), Some(w.clone())),
            (Presence::Absent, Some(h), _) => {
                Change::new(ChangeKind::Remove).field(Field::Version, Some(h.shown()), None)
            }
            _ => return Ok(Change::in_sync()),
        };
        Ok(c.note(format!("package manager: {m}")).observed(Facts {
            package_manager: Some(detected),
            ..Facts::default()
        }))
    }
    fn apply(&self, change: &Change) -> String {
        let Some(action) = Action::of(change.kind) else {
            return ":".into();
        };
        let Some(m) = self.manager(change) else {
            return super::sh::fail(
                "package: no package manager known for this change (probe first)",
            );
        };
        command(m, action, &[self])
    }
}

/// What a changed `package` step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Install it, or bring it to its version (`Create`, `Modify`).
    Install,
    /// Remove it (`Remove`).
    Remove,
}

impl Action {
    /// The action of a change; `None` when it is in sync.
    fn of(kind: ChangeKind) -> Option<Action> {
        match kind {
            ChangeKind::Create | ChangeKind::Modify => Some(Action::Install),
            ChangeKind::Remove => Some(Action::Remove),
            ChangeKind::InSync => None,
        }
    }
}

impl Package {
    /// The package as the manager's install command names it: `name`, or the name at the
    /// pinned version (`name=1.0` for apt and apk, `name-1.0` for dnf), quoted.
    fn spec(&self, m: Detected) -> String {
        let name = &self.params.name;
        quote(&match (&self.params.version, m) {
            (Some(v), Detected::Apt | Detected::Apk) => format!("{name}={v}"),
            (Some(v), Detected::Dnf) => format!("{name}-{v}"),
            (None, _) => name.clone(),
        })
    }
}

/// One fragment installing (or removing) every package of `pkgs` with manager `m`: one
/// command for all of them (a single package is a batch of one). apt: the first try's errors
/// are dropped; when it fails, the lists are refreshed (`apt-get update`) and the second try
/// says what is wrong (once, not twice); `--allow-downgrades` when a version is pinned.
/// dnf/yum: an install that fails is tried as a downgrade; with several packages, when the
/// command for all fails, each is then installed (or downgraded) on its own, in order,
/// stopping at the first that fails: what their steps' applies would do one after the other.
fn command(m: Detected, action: Action, pkgs: &[&Package]) -> String {
    let specs =
        |f: &dyn Fn(&Package) -> String| pkgs.iter().map(|p| f(p)).collect::<Vec<_>>().join(" ");
    let names = specs(&|p: &Package| quote(&p.params.name));
    let all = specs(&|p: &Package| p.spec(m));
    match (m, action) {
        (Detected::Apt, Action::Install) => {
            let pinned = pkgs.iter().any(|p| p.params.version.is_some());
            let down = if pinned { " --allow-downgrades" } else { "" };
            let install =
                format!("apt-get install -y -q --no-install-recommends{down} {all} </dev/null");
            format!(
                "DEBIAN_FRONTEND=noninteractive; export DEBIAN_FRONTEND\n{install} 2>/dev/null || {{ apt-get update -q </dev/null && {install}; }} || exit 1\n"
            )
        }
        (Detected::Apt, Action::Remove) => format!(
            "DEBIAN_FRONTEND=noninteractive; export DEBIAN_FRONTEND\napt-get remove -y -q {names} </dev/null || exit 1\n"
        ),
        (Detected::Dnf, Action::Remove) => {
            format!("{DNF}\"$pm\" remove -y {names} </dev/null || exit 1\n")
        }
        (Detected::Dnf, Action::Install) => {
            let one = |spec: &str| {
                format!("\"$pm\" install -y {spec} </dev/null || \"$pm\" downgrade -y {spec} </dev/null")
            };
            match pkgs {
                [p] => format!("{DNF}{} || exit 1\n", one(&p.spec(m))),
                _ => {
                    let each: Vec<String> = pkgs
                        .iter()
                        .map(|p| format!("{{ {} || exit 1; }}\n", one(&p.spec(m))))
                        .collect();
                    format!(
                        "{DNF}if ! \"$pm\" install -y {all} </dev/null; then\n{}fi\n",
                        each.concat()
                    )
                }
            }
        }
        (Detected::Apk, Action::Remove) => format!("apk del {names} </dev/null || exit 1\n"),
        (Detected::Apk, Action::Install) => format!("apk add {all} </dev/null || exit 1\n"),
    }
}

/// Picks dnf, or yum where there is no dnf.
const DNF: &str = "pm=dnf; command -v dnf >/dev/null 2>&1 || pm=yum\n";

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn pkg(v: serde_json::Value) -> Box<dyn Resource> {
        built(DEF.build, v)
    }

    #[test]
    fn apt() {
        let p = pkg(serde_json::json!({"name": "nginx"}));
        insta::assert_snapshot!("package_probe", p.probe());
        let c = p.diff(&out("manager=apt\n")).unwrap();
        assert_eq!(c.kind, ChangeKind::Create);
        assert_eq!(c.notes, ["package manager: apt"]);
        insta::assert_snapshot!("package_apt_install", p.apply(&c));
        let c = p
            .diff(&out(
                "manager=apt\ndpkg_status=deinstall ok config-files\ndpkg_version=1.22.1-9\n",
            ))
            .unwrap();
        assert_eq!(c.kind, ChangeKind::Create);
        let ok = "manager=apt\ndpkg_status=install ok installed\ndpkg_version=1.22.1-9\n";
        assert_eq!(p.diff(&out(ok)).unwrap(), Change::in_sync());
        let pinned = pkg(serde_json::json!({"name": "nginx", "version": "1.24.0-1"}));
        let c = pinned.diff(&out(ok)).unwrap();
        assert_eq!(c.kind, ChangeKind::Modify);
        assert_eq!(c.fields[0].from.as_deref(), Some("1.22.1-9"));
        assert!(pinned
            .apply(&c)
            .contains("--allow-downgrades 'nginx=1.24.0-1'"));
        // Multi-arch: one of the architectures installed.
        let multi = "manager=apt\ndpkg_status=deinstall ok config-files\ndpkg_version=1.0\ndpkg_status=install ok installed\ndpkg_version=1.24.0-1\n";
        assert_eq!(pinned.diff(&out(multi)).unwrap(), Change::in_sync());
        let gone = pkg(serde_json::json!({"name": "telnet", "state": "absent"}));
        let c = gone
            .diff(&out(
                "manager=apt\ndpkg_status=install ok installed\ndpkg_version=0.17\n",
            ))
            .unwrap();
        assert_eq!(c.kind, ChangeKind::Remove);
        assert!(gone.apply(&c).contains("apt-get remove -y -q telnet"));
        assert_eq!(gone.diff(&out("manager=apt\n")).unwrap(), Change::in_sync());
    }

    #[test]
    fn dnf_and_apk() {
        let p = pkg(serde_json::json!({"name": "nginx", "version": "1.24.0"}));
        let ok = "manager=dnf\nrpm_version=1.24.0\nrpm_release=1.el9\n";
        assert_eq!(p.diff(&out(ok)).unwrap(), Change::in_sync());
        let p2 = pkg(serde_json::json!({"name": "nginx", "version": "1.24.0-1.el9"}));
        assert_eq!(p2.diff(&out(ok)).unwrap(), Change::in_sync());
        let c = p.diff(&out("manager=dnf\nrpm=absent\n")).unwrap();
        insta::assert_snapshot!("package_dnf_install", p.apply(&c));
        assert!(p.diff(&out("manager=dnf\n")).is_err());
        let a = pkg(serde_json::json!({"name": "curl", "manager": "apk"}));
        let c = a.diff(&out("manager=apk\napk=absent\n")).unwrap();
        assert_eq!(a.apply(&c), "apk add curl </dev/null || exit 1\n");
        assert_eq!(
            a.diff(&out("manager=apk\napk=installed\napk_version=8.5.0-r0\n"))
                .unwrap(),
            Change::in_sync()
        );
    }

    #[test]
    fn errors() {
        let p = pkg(serde_json::json!({"name": "nginx"}));
        assert!(diff_error(&*p, "manager=none\n").contains("no supported package manager"));
        assert!(p.diff(&out("manager=dnf\nerror=rpm not found\n")).is_err());
        assert!(p.diff(&out("manager=zypper\n")).is_err());
        assert!(p.diff(&out("")).is_err());
        // Without the manager note, an auto package cannot render an apply.
        assert!(p.apply(&Change::new(ChangeKind::Create)).contains("exit 1"));
        assert!((DEF.build)(
            serde_json::json!({"name": "x", "version": "1; rm -rf /"}),
            &mut NoRepo
        )
        .is_err());
    }

    /// An apt failure is reported once: the first try (before `apt-get update`) is silent.
    #[test]
    fn an_apt_error_is_printed_once() {
        let p = pkg(serde_json::json!({"name": "nginx", "manager": "apt"}));
        let c = p.diff(&out("manager=apt\n")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("apt-get");
        std::fs::write(
            &fake,
            "#!/bin/sh\ncase $1 in update) exit 0 ;; esac\necho 'E: Unable to locate package nginx' >&2\nexit 100\n",
        )
        .unwrap();
        std::process::Command::new("chmod")
            .arg("0755")
            .arg(&fake)
            .status()
            .unwrap();
        let script = format!("PATH={}:$PATH\n{}", dir.path().display(), p.apply(&c));
        let (res, _) = run_logging_argv(&script);
        assert_ne!(res.status, 0);
        let err = String::from_utf8_lossy(&res.stderr);
        assert_eq!(err.matches("Unable to locate package").count(), 1, "{err}");
    }
}
#[cfg(test)]
mod reversibility_tests {
    use super::*;

    #[test]
    fn removal_and_downgrade_are_irreversible_upgrade_and_install_are_not() {
        let c = |kind, from: Option<&str>, to: Option<&str>| {
            Change::new(kind).field(Field::Version, from.map(String::from), to.map(String::from))
        };
        let cases = [
            (
                c(ChangeKind::Remove, Some("1.0"), None),
                Some("package removal"),
            ),
            (
                c(ChangeKind::Modify, Some("1.10"), Some("1.9")),
                Some("package downgrade"),
            ),
            (c(ChangeKind::Modify, Some("1.9"), Some("1.10")), None),
            (c(ChangeKind::Create, None, Some("1.0")), None),
        ];
        for (change, want) in cases {
            assert_eq!(DEF.irreversible(&change), want, "{change:?}");
        }
    }
}
