//! Parse, don't validate (issue 10.6, model part): config values are parsed into types when
//! the repo is loaded, and a value that cannot be parsed is a located error at load time,
//! never a silent fallback at run time.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn repo(dir: &Path, env_yaml: &str) {
    let w = |p: &str, s: &str| {
        let p = dir.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    };
    w("plumb.yaml", "name: typed\n");
    w(
        "environments/prod/hosts.yaml",
        "hosts:\n  - name: web-1\n    address: 127.0.0.1\n",
    );
    w("environments/prod/env.yaml", env_yaml);
    w(
        "units/web.yaml",
        "steps:\n  - id: motd\n    file:\n      path: /etc/motd\n      content: hi\n",
    );
}

fn validate(dir: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(["--color", "never", "validate"])
        .arg(dir)
        .output()
        .expect("plumb runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn drift_interval_is_a_duration_once_loaded() {
    let d = tempfile::tempdir().unwrap();
    repo(d.path(), "drift:\n  mode: correct\n  interval: 10m\n");
    let (repo, diags) = plumb::model::load::load(d.path());
    assert!(!diags.has_errors(), "{:?}", diags.into_sorted());
    let interval = repo.environments["prod"].settings.drift.interval;
    assert_eq!(interval.get(), Duration::from_secs(600));
    // Unset: the documented default, typed too.
    let d = tempfile::tempdir().unwrap();
    repo_default(d.path());
    let (repo, _) = plumb::model::load::load(d.path());
    assert_eq!(
        repo.environments["prod"].settings.drift.interval.get(),
        Duration::from_secs(300)
    );
}

fn repo_default(dir: &Path) {
    repo(dir, "drift:\n  mode: report\n");
}

#[test]
fn an_overflowing_drift_interval_is_a_located_error() {
    let d = tempfile::tempdir().unwrap();
    repo(d.path(), "drift:\n  interval: 99999999999999999999h\n");
    let (code, err) = validate(d.path());
    assert_eq!(code, Some(1), "{err}");
    let at = format!(
        "{}/environments/prod/env.yaml:2:13: error: ",
        d.path().display()
    );
    assert!(
        err.lines().any(|l| l.starts_with(&at)
            && l.contains("99999999999999999999h")
            && l.contains("too large")),
        "{err}"
    );
}

#[test]
fn a_malformed_drift_interval_is_a_located_error() {
    let d = tempfile::tempdir().unwrap();
    repo(d.path(), "drift:\n  interval: 5 minutes\n");
    let (code, err) = validate(d.path());
    assert_eq!(code, Some(1), "{err}");
    let at = format!(
        "{}/environments/prod/env.yaml:2:13: error: ",
        d.path().display()
    );
    assert!(err.lines().any(|l| l.starts_with(&at)), "{err}");
}
