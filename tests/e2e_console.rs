//! End-to-end: the web console in a real headless Chromium (Debian package `chromium`), after
//! a daemon rollout on Docker hosts and a drift found and corrected (issue 20). Each page
//! shows the right hosts, commit, signer and drift; a sensitive step's value appears in no
//! page; with an access token configured, a request without it is refused. Screenshots of
//! the fleet and run pages go to `$PLUMB_ARTIFACTS` (else `target/artifacts`).
//!
//! Run: `cargo nextest run --test e2e_console`.

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use daemon::{http_get, DaemonFixture};

/// A marker only a sensitive step holds.
const MARKER: &str = "console-secret-7c1f0e";

fn unit() -> String {
    format!(
        "steps:\n  - id: motd\n    file:\n      path: /etc/plumb-console\n      content: \"hello\\n\"\n      mode: \"0644\"\n  - id: token\n    sensitive: true\n    file:\n      path: /etc/plumb-console-token\n      content: \"{MARKER}\\n\"\n      mode: \"0600\"\n"
    )
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser"].iter().find_map(|c| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {c}"))
            .output()
            .ok()?;
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
    })
}

fn artifacts() -> PathBuf {
    let dir = std::env::var_os("PLUMB_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/artifacts"));
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// The DOM Chromium builds for `url` (so what a browser shows, not only what was sent).
fn dump_dom(browser: &PathBuf, url: &str, profile: &std::path::Path) -> String {
    let (code, out, err) = sh(Command::new("timeout")
        .arg("180")
        .arg(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(url));
    assert_eq!(code, 0, "chromium --dump-dom {url}: {err}");
    out
}

fn screenshot(browser: &PathBuf, url: &str, file: &str, profile: &std::path::Path) {
    let path = artifacts().join(file);
    let (code, _, err) = sh(Command::new("timeout")
        .arg("180")
        .arg(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--hide-scrollbars", "--window-size=1280,900"])
        .arg(format!("--screenshot={}", path.display()))
        .arg(url));
    assert_eq!(code, 0, "chromium --screenshot {url}: {err}");
    let png = std::fs::read(&path).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "a PNG at {}", path.display());
}

#[test]
fn the_console_shows_rollouts_drift_and_audit_in_a_browser() {
    let _g = lock();
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("PLUMB_REQUIRE_E2E").is_none(),
            "chromium is required (Debian package `chromium`; .ci/run installs it)"
        );
        eprintln!("SKIPPED: no chromium");
        return;
    };
    let Some(mut f) = DaemonFixture::new("the_console_shows_rollouts", "console", &unit()) else {
        return;
    };
    // Drift is corrected every few seconds.
    std::fs::write(
        f.clone_dir().join("environments/production/env.yaml"),
        "drift: {mode: correct, interval: 2s}\n",
    )
    .expect("write");
    let commit = f.commit_and_push("correct drift", true);
    let config = std::fs::read_to_string(f.path("daemon.yaml")).expect("config");
    std::fs::write(
        f.path("daemon.yaml"),
        config.replace("drift_interval: 1h", "drift_interval: 3s"),
    )
    .expect("write");
    f.start_daemon();
    f.wait("the commit applied", Duration::from_secs(240), || {
        f.applied(&commit)
    });
    exec(&f.hosts, 1, "echo changed-by-hand > /etc/plumb-console");
    f.wait("the drift corrected", Duration::from_secs(120), || {
        f.history()
            .iter()
            .any(|r| r["kind"] == "correction" && r["result"] == "converged")
    });
    let apply = f.run_of("apply", &commit).expect("apply run");
    let run_id = apply["id"].as_str().expect("id").to_string();
    let base = format!("http://127.0.0.1:{}", f.port);
    let profile = tempfile::tempdir().expect("profile");
    let host1 = f.hosts.name(1);

    let fleet = dump_dom(&browser, &format!("{base}/"), profile.path());
    for k in 1..=HOSTS {
        assert!(
            fleet.contains(&f.hosts.name(k)),
            "fleet lists host {k}: {fleet}"
        );
    }
    assert!(
        fleet.contains(&commit[..12]) && fleet.contains("test@plumb"),
        "{fleet}"
    );
    let run = dump_dom(&browser, &format!("{base}/runs/{run_id}"), profile.path());
    assert!(
        run.contains(&commit[..12]) && run.contains("test@plumb"),
        "{run}"
    );
    assert!(
        run.contains("console/motd") && run.contains(&host1),
        "{run}"
    );
    let drift = dump_dom(&browser, &format!("{base}/drift"), profile.path());
    assert!(
        drift.contains("console/motd") && drift.contains(&host1),
        "{drift}"
    );
    let host = dump_dom(
        &browser,
        &format!("{base}/hosts/production/{host1}"),
        profile.path(),
    );
    assert!(
        host.contains("correction") && host.contains(&run_id),
        "{host}"
    );
    let commit_page = dump_dom(
        &browser,
        &format!("{base}/commits/{commit}"),
        profile.path(),
    );
    assert!(
        commit_page.contains(&run_id) && commit_page.contains(&host1),
        "{commit_page}"
    );
    let audit = dump_dom(&browser, &format!("{base}/audit"), profile.path());
    assert!(
        audit.contains("records verified") && audit.contains("status ok"),
        "{audit}"
    );
    for (name, html) in [
        ("fleet", &fleet),
        ("run", &run),
        ("drift", &drift),
        ("host", &host),
        ("commit", &commit_page),
        ("audit", &audit),
    ] {
        assert!(
            !html.contains(MARKER),
            "the sensitive value is on the {name} page"
        );
    }
    screenshot(
        &browser,
        &format!("{base}/"),
        "console-fleet.png",
        profile.path(),
    );
    screenshot(
        &browser,
        &format!("{base}/runs/{run_id}"),
        "console-run.png",
        profile.path(),
    );

    // With an access token, a request without it is refused (and a page redirects to login).
    std::fs::write(f.path("token"), "t0ken-for-the-console\n").expect("token");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(f.path("token"), std::fs::Permissions::from_mode(0o600))
        .expect("chmod");
    let config = std::fs::read_to_string(f.path("daemon.yaml")).expect("config");
    std::fs::write(
        f.path("daemon.yaml"),
        format!(
            "{config}access:\n  token_file: {}\n",
            f.path("token").display()
        ),
    )
    .expect("write");
    f.stop_daemon();
    f.start_daemon();
    assert_eq!(http_get(f.port, "/api/status").0, 401);
    assert_eq!(http_get(f.port, "/").0, 401, "no credentials, no page");
    let login = dump_dom(&browser, &format!("{base}/runs/{run_id}"), profile.path());
    assert!(
        login.contains("Sign in") && !login.contains(&commit[..12]),
        "{login}"
    );
    assert!(f.daemon_up());
}
