//! Several `package` steps applied as one command of the package manager.
//!
//! The engine hands [`apply`] the changes of consecutive changed `package` steps with one
//! batch [`key`] (see [`crate::modules::Batch`]): the same configured manager, the same
//! action (install or remove) and, for installs, whether a version is pinned (apt then
//! allows downgrades). The fragment is the one a single step's apply renders
//! ([`super::command`]), naming every package: one `apt-get install` (with its retry after
//! `apt-get update`), `dnf install` or `apk add` for all of them, or one removal. A batch
//! whose changes do not all resolve to one manager and one action is not merged (`None`).

use super::{command, Action, Package};
use crate::modules::{Change, Presence, Resource};

/// The [`crate::modules::Batch`] key of a `package` step: its configured manager (`auto`
/// when detected on the host), its action, and for an install whether it is pinned.
pub(super) fn key(r: &dyn Resource) -> Option<String> {
    let p = r.as_any().downcast_ref::<Package>()?;
    let manager = super::configured(p.params.manager).map_or("auto", super::Detected::name);
    Some(match p.params.state {
        Presence::Present if p.params.version.is_some() => format!("{manager} install pinned"),
        Presence::Present => format!("{manager} install"),
        Presence::Absent => format!("{manager} remove"),
    })
}

/// One fragment making every change of `items` (`package` steps) with one command; `None`
/// when one is not a `package` step, has no manager known (its own apply says so), or they
/// differ in manager or action.
pub(super) fn apply(items: &[(&dyn Resource, &Change)]) -> Option<String> {
    let mut manager = None;
    let mut action = None;
    let mut pkgs = Vec::new();
    for (r, c) in items {
        let p = r.as_any().downcast_ref::<Package>()?;
        let Some(a) = Action::of(c.kind) else {
            continue;
        };
        let m = p.manager(c)?;
        if *manager.get_or_insert(m) != m || *action.get_or_insert(a) != a {
            return None;
        }
        pkgs.push(p);
    }
    Some(match (manager, action) {
        (Some(m), Some(a)) => command(m, a, &pkgs),
        _ => ":".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::testing::{built, out, run_logging_argv};
    use crate::modules::ChangeKind;

    fn pkg(v: serde_json::Value) -> Box<dyn Resource> {
        built(super::super::DEF.build, v)
    }

    /// The changes the probes find for `steps` on a host whose probe printed `observed`.
    fn changes(steps: &[Box<dyn Resource>], observed: &str) -> Vec<Change> {
        steps
            .iter()
            .map(|r| r.diff(&out(observed)).expect("probe output parses"))
            .collect()
    }

    fn batch(steps: &[Box<dyn Resource>], changes: &[Change]) -> Option<String> {
        let items: Vec<(&dyn Resource, &Change)> =
            steps.iter().map(|r| r.as_ref()).zip(changes).collect();
        apply(&items)
    }

    #[test]
    fn missing_packages_are_one_install_per_manager() {
        let steps = [
            pkg(serde_json::json!({"name": "plumb-hello"})),
            pkg(serde_json::json!({"name": "plumb-extra"})),
            pkg(serde_json::json!({"name": "plumb-demo"})),
        ];
        let apt = batch(&steps, &changes(&steps, "manager=apt\n")).expect("one manager");
        insta::assert_snapshot!("package_batch_apt_install", apt);
        assert_eq!(
            apt.matches("apt-get install").count(),
            2,
            "the try and the retry"
        );
        assert_eq!(apt.matches("apt-get update").count(), 1);
        assert!(!apt.contains("--allow-downgrades"));
        let dnf = batch(&steps, &changes(&steps, "manager=dnf\nrpm=absent\n")).expect("dnf");
        insta::assert_snapshot!("package_batch_dnf_install", dnf);
        let apk = batch(&steps, &changes(&steps, "manager=apk\napk=absent\n")).expect("apk");
        assert_eq!(
            apk,
            "apk add plumb-hello plumb-extra plumb-demo </dev/null || exit 1\n"
        );
    }

    #[test]
    fn pinned_installs_allow_downgrades_and_removals_name_every_package() {
        let steps = [
            pkg(serde_json::json!({"name": "nginx", "version": "1.24.0-1"})),
            pkg(serde_json::json!({"name": "curl", "version": "8.5.0-2"})),
        ];
        let installed = "manager=apt\ndpkg_status=install ok installed\ndpkg_version=1.0\n";
        let apt = batch(&steps, &changes(&steps, installed)).expect("apt");
        assert!(
            apt.contains("--allow-downgrades 'nginx=1.24.0-1' 'curl=8.5.0-2' </dev/null"),
            "{apt}"
        );
        let gone = [
            pkg(serde_json::json!({"name": "telnet", "state": "absent"})),
            pkg(serde_json::json!({"name": "ftp", "state": "absent", "version": "1"})),
        ];
        let apt = batch(&gone, &changes(&gone, installed)).expect("apt");
        assert!(apt.contains("apt-get remove -y -q telnet ftp </dev/null || exit 1"));
        let rpm = "manager=dnf\nrpm_version=1\nrpm_release=1\n";
        let dnf = batch(&gone, &changes(&gone, rpm)).expect("dnf");
        assert!(dnf.contains("\"$pm\" remove -y telnet ftp </dev/null || exit 1"));
        let apk = "manager=apk\napk=installed\n";
        let apk = batch(&gone, &changes(&gone, apk)).expect("apk");
        assert_eq!(apk, "apk del telnet ftp </dev/null || exit 1\n");
    }

    /// What cannot be one command is told apart: by the key (manager configured, action,
    /// pinned), or by the changes (the managers the probes found, the action).
    #[test]
    fn what_cannot_be_one_command_is_not_merged() {
        let k = |v: serde_json::Value| key(pkg(v).as_ref()).expect("a package");
        let plain = k(serde_json::json!({"name": "a"}));
        assert_eq!(plain, k(serde_json::json!({"name": "b"})));
        for other in [
            serde_json::json!({"name": "a", "manager": "apt"}),
            serde_json::json!({"name": "a", "version": "1"}),
            serde_json::json!({"name": "a", "state": "absent"}),
        ] {
            assert_ne!(plain, k(other.clone()), "{other}");
        }
        let dir = built(
            crate::modules::directory::DEF.build,
            serde_json::json!({"path": "/a"}),
        );
        assert_eq!(key(dir.as_ref()), None);

        let steps = [
            pkg(serde_json::json!({"name": "a"})),
            pkg(serde_json::json!({"name": "b"})),
        ];
        let mut cs = changes(&steps, "manager=apt\n");
        cs[1] = steps[1]
            .diff(&out("manager=dnf\nrpm=absent\n"))
            .expect("parses");
        assert_eq!(batch(&steps, &cs), None, "two managers");
        let cs = [
            Change::new(ChangeKind::Create),
            Change::new(ChangeKind::Create),
        ];
        assert_eq!(
            batch(&steps, &cs),
            None,
            "no manager known: each fails alone"
        );
        let mut cs = changes(&steps, "manager=apt\n");
        cs[1].kind = ChangeKind::Remove;
        assert_eq!(batch(&steps, &cs), None, "install and remove");
        let items: Vec<(&dyn Resource, &Change)> =
            vec![(steps[0].as_ref(), &cs[0]), (dir.as_ref(), &cs[0])];
        assert_eq!(apply(&items), None, "another module");
    }

    /// A single step's apply is the batch of that step alone.
    #[test]
    fn one_step_is_a_batch_of_one() {
        for (params, observed) in [
            (
                serde_json::json!({"name": "a", "version": "1"}),
                "manager=apt\n",
            ),
            (
                serde_json::json!({"name": "a"}),
                "manager=dnf\nrpm=absent\n",
            ),
            (
                serde_json::json!({"name": "a", "state": "absent"}),
                "manager=apk\napk=installed\n",
            ),
        ] {
            let p = pkg(params);
            let c = p.diff(&out(observed)).expect("parses");
            assert_eq!(apply(&[(p.as_ref(), &c)]), Some(p.apply(&c)));
        }
    }

    /// With fake managers on `PATH`: apt installs everything with one command (after one
    /// `apt-get update` when the first try fails); when dnf cannot install them together,
    /// each is installed or downgraded on its own, in order, and the first that fails stops
    /// the batch.
    #[test]
    fn the_commands_run_as_their_steps_would() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().display().to_string();
        let fake = |name: &str, body: &str| {
            let path = dir.path().join(name);
            std::fs::write(
                &path,
                format!("#!/bin/sh\necho \"{name} $*\" >> {bin}/log\n{body}"),
            )
            .expect("write");
            std::process::Command::new("chmod")
                .arg("0755")
                .arg(&path)
                .status()
                .expect("chmod");
        };
        let log = || std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        let steps = [
            pkg(serde_json::json!({"name": "a"})),
            pkg(serde_json::json!({"name": "b"})),
        ];
        fake(
            "apt-get",
            &format!("case $1 in update) : > {bin}/updated; exit 0 ;; esac\n[ -e {bin}/updated ] && exit 0\necho 'E: Unable to locate package b' >&2; exit 100\n"),
        );
        let script = format!(
            "PATH={bin}:$PATH\n{}",
            batch(&steps, &changes(&steps, "manager=apt\n")).expect("apt")
        );
        let (res, _) = run_logging_argv(&script);
        assert_eq!(res.status, 0, "{}", String::from_utf8_lossy(&res.stderr));
        assert_eq!(
            log(),
            "apt-get install -y -q --no-install-recommends a b\napt-get update -q\napt-get install -y -q --no-install-recommends a b\n"
        );

        std::fs::remove_file(dir.path().join("log")).expect("rm log");
        let three = [
            pkg(serde_json::json!({"name": "a", "manager": "dnf"})),
            pkg(serde_json::json!({"name": "b", "manager": "dnf"})),
            pkg(serde_json::json!({"name": "c", "manager": "dnf"})),
        ];
        // `a` installs, `b` only as a downgrade, `c` not at all.
        fake(
            "dnf",
            "case \"$*\" in 'install -y a'|'downgrade -y b') exit 0 ;; esac\necho \"no $*\" >&2; exit 1\n",
        );
        let script = format!(
            "PATH={bin}:$PATH\n{}",
            batch(&three, &changes(&three, "manager=dnf\nrpm=absent\n")).expect("dnf")
        );
        let (res, _) = run_logging_argv(&script);
        assert_ne!(res.status, 0);
        assert_eq!(
            log(),
            "dnf install -y a b c\ndnf install -y a\ndnf install -y b\ndnf downgrade -y b\ndnf install -y c\ndnf downgrade -y c\n"
        );
    }
}
