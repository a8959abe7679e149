//! Facts, `--limit` and the round-trip promise on the Docker test hosts (issue 12 points 1
//! and 7): `plumb facts` agrees with `docker exec`; a repo whose config is sized by
//! `facts.cpus` and whose package is chosen by `facts.os.family` converges, a second plan is
//! empty and costs one round trip, and a change of facts re-renders (and says so).

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::process::Command;
use std::time::Duration;

use common::*;
use daemon::DaemonFixture;
use serde_json::{json, Value};

/// The unit: a config sized by the host's CPUs, a package chosen by its OS family. (The
/// `package` module's `name` is checked against its schema before templating; until
/// templated fields are validated after rendering, the choice is a guarded command.)
const UNIT: &str = r#"steps:
  - id: hello
    command:
      run: "{{ 'export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get install -y -q plumb-hello' if facts.os.family == 'debian' else 'dnf install -y hello' }}"
      unless: "{{ 'dpkg -s plumb-hello' if facts.pkg_manager == 'apt' else 'rpm -q hello' }}"
  - id: conf
    file:
      path: /etc/plumb-facts.conf
      content: "workers = {{ facts.cpus * 2 }}\nos = {{ facts.os.id }} {{ facts.os.version_id }}\n"
      mode: "0644"
"#;

/// plumb with its own facts cache (never the user's).
fn run(
    hosts: &Hosts,
    args: &[&str],
    repo: &std::path::Path,
    cache: &std::path::Path,
) -> (i32, Value, String) {
    let (code, out, err) = sh(plumb_command(hosts, args, repo).env("PLUMB_FACTS_CACHE", cache));
    let json = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("plumb {args:?} printed no JSON ({e}):\n{out}\n{err}"));
    (code, json, err)
}

#[test]
fn facts_drive_rendering_and_keep_one_round_trip() {
    let _g = lock();
    let Some(hosts) = fresh_hosts("facts_drive_rendering_and_keep_one_round_trip") else {
        return;
    };
    let cache = tempfile::tempdir().expect("tempdir");

    // `plumb facts` on every host agrees with the host itself.
    let webapp = webapp_repo(&hosts);
    let (code, report, err) = run(&hosts, &["facts"], webapp.path(), cache.path());
    assert_eq!(code, 0, "{report:#}\n{err}");
    for k in 1..=HOSTS {
        let h = host_report(&report, &hosts.name(k));
        let f = &h["facts"];
        assert_eq!(
            f["os"]["id"],
            exec(&hosts, k, ". /etc/os-release; echo $ID"),
            "{h:#}"
        );
        assert_eq!(f["os"]["family"], "debian");
        assert_eq!(f["hostname"], exec(&hosts, k, "uname -n"));
        assert_eq!(f["kernel"], exec(&hosts, k, "uname -r"));
        assert_eq!(f["cpus"].to_string(), exec(&hosts, k, "nproc"));
        assert_eq!(f["init"], "systemd");
        assert_eq!(f["pkg_manager"], "apt");
        assert_eq!(f["virtualization"], "container");
        let zone = exec(
            &hosts,
            k,
            "z=$(readlink /etc/localtime 2>/dev/null); case $z in *zoneinfo/*) echo \"${z##*zoneinfo/}\";; *) head -n 1 /etc/timezone 2>/dev/null;; esac",
        );
        assert!(!zone.is_empty(), "the test hosts have a time zone");
        assert_eq!(f["timezone"], zone.as_str(), "{h:#}");
        assert_eq!(f["ipv4"], hosts.addresses[k - 1].as_str(), "{h:#}");
        assert_eq!(h["round_trips"], 1);
    }
    // --limit: a glob, a label selector, and a limit that selects nothing.
    let (code, report, _) = run(
        &hosts,
        &["facts", "--limit", "role=db"],
        webapp.path(),
        cache.path(),
    );
    assert_eq!(code, 0);
    assert_eq!(report["hosts"].as_array().map(Vec::len), Some(1));
    assert_eq!(report["hosts"][0]["name"], hosts.name(3));
    let (code, out, err) = sh(
        plumb_command(&hosts, &["plan", "--limit", "web-*"], webapp.path())
            .env("PLUMB_FACTS_CACHE", cache.path()),
    );
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("limit `web-*` selects no host in environment `production`"),
        "{err}"
    );

    // A repo that uses facts, with no cached facts: gathered first (one round trip, said).
    let repo = one_host_repo(&hosts, "sized", UNIT);
    let fresh_cache = tempfile::tempdir().expect("tempdir");
    let (code, report, err) = run(&hosts, &["apply"], repo.path(), fresh_cache.path());
    assert_eq!(code, 0, "{report:#}\n{err}");
    let h = host_report(&report, &hosts.name(1));
    assert_eq!(
        h["round_trips"],
        json!({"probe": 1, "apply": 1, "facts": 1}),
        "{h:#}"
    );
    let cpus: u32 = exec(&hosts, 1, "nproc").parse().expect("nproc");
    let version = exec(&hosts, 1, ". /etc/os-release; echo $VERSION_ID");
    assert_eq!(
        exec(&hosts, 1, "cat /etc/plumb-facts.conf"),
        format!("workers = {}\nos = debian {version}", cpus * 2)
    );
    assert_eq!(
        exec(&hosts, 1, "dpkg-query -W -f '${Status}' plumb-hello"),
        "install ok installed"
    );

    // Steady state: the second plan is empty and one round trip (facts rode along).
    let (code, report, err) = run(&hosts, &["plan"], repo.path(), fresh_cache.path());
    assert_eq!(code, 0, "{report:#}\n{err}");
    let h = host_report(&report, &hosts.name(1));
    assert_eq!(h["changes"], 0);
    assert_eq!(h["round_trips"], json!({"probe": 1, "apply": 0}), "{h:#}");
    assert!(h.get("facts_changed").is_none(), "{h:#}");

    // The cached facts are stale (the host "grew"): re-rendered with the facts seen in the
    // probe, probed again, reported, and the cache corrected.
    let cached = fresh_cache.path().join("production/plumb-host-1.json");
    let mut stale: Value =
        serde_json::from_str(&std::fs::read_to_string(&cached).expect("cached facts"))
            .expect("json");
    stale["cpus"] = json!(cpus + 63);
    std::fs::write(&cached, stale.to_string()).expect("write");
    let (code, report, err) = run(&hosts, &["plan"], repo.path(), fresh_cache.path());
    assert_eq!(
        code, 0,
        "rendered with the real facts, the host is in sync:\n{report:#}\n{err}"
    );
    let h = host_report(&report, &hosts.name(1));
    assert_eq!(h["facts_changed"], true, "{h:#}");
    assert_eq!(h["round_trips"]["probe"], 2, "{h:#}");
    let (_, report, _) = run(&hosts, &["plan"], repo.path(), fresh_cache.path());
    assert_eq!(
        host_report(&report, &hosts.name(1))["round_trips"],
        json!({"probe": 1, "apply": 0})
    );

    // `render` and `validate` use the cache; without it they name the fact.
    let (code, _, err) = sh(Command::new(env!("CARGO_BIN_EXE_plumb"))
        .arg("validate")
        .arg(repo.path())
        .env("PLUMB_FACTS_CACHE", fresh_cache.path()));
    assert_eq!(code, 0, "{err}");
    let empty = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = sh(Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(["validate", "--color", "never"])
        .arg(repo.path())
        .env("PLUMB_FACTS_CACHE", empty.path()));
    assert_eq!(code, 1);
    assert!(err.contains("needs fact `facts.os.family`"), "{err}");
}

/// The daemon renders with facts too: it gathers them before applying a commit and caches
/// them under its state directory.
#[test]
fn the_daemon_renders_with_facts() {
    let _g = lock();
    let unit = "steps:\n  - id: conf\n    file:\n      path: /etc/plumb-facts.conf\n      content: \"workers = {{ facts.cpus * 2 }} on {{ facts.hostname }}\\n\"\n";
    let Some(mut f) = DaemonFixture::new("the_daemon_renders_with_facts", "sized", unit) else {
        return;
    };
    let first = f.git(&["rev-parse", "HEAD"]);
    f.start_daemon();
    f.wait("the first commit applied", Duration::from_secs(180), || {
        f.applied(&first)
    });
    for k in 1..=HOSTS {
        let cpus: u32 = exec(&f.hosts, k, "nproc").parse().expect("nproc");
        let name = exec(&f.hosts, k, "uname -n");
        assert_eq!(
            exec(&f.hosts, k, "cat /etc/plumb-facts.conf"),
            format!("workers = {} on {name}", cpus * 2)
        );
        let cached = f
            .state_dir()
            .join(format!("facts/production/{}.json", f.hosts.name(k)));
        assert!(cached.is_file(), "{} cached", cached.display());
    }
    assert!(!f.log().contains("could not gather facts"), "{}", f.log());
}
