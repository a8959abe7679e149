//! `plumb init`, `--limit` and `--facts FILE` through the binary, with no host contacted.

use std::path::Path;
use std::process::Command;

fn plumb(args: &[&str], cache: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(args)
        .args(["--color", "never"])
        .env("PLUMB_FACTS_CACHE", cache)
        .output()
        .expect("plumb runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn webapp() -> String {
    format!("{}/examples/webapp", env!("CARGO_MANIFEST_DIR"))
}

fn rendered_hosts(out: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(out).expect("render JSON");
    v["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| h["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn init_writes_a_repo_that_validates_and_never_overwrites() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("infra");
    let repo_s = repo.to_str().unwrap();
    let (code, out, err) = plumb(&["init", repo_s], cache.path());
    assert_eq!(code, 0, "{out}\n{err}");
    for f in [
        "plumb.yaml",
        "environments/production/hosts.yaml",
        "environments/production/env.yaml",
        "units/web.yaml",
        "templates/motd.j2",
        "allowed_signers.example",
        "schemas/unit.schema.json",
    ] {
        assert!(repo.join(f).is_file(), "{f} written");
    }
    // Every YAML file names its schema, and the schema is there.
    for f in [
        "plumb.yaml",
        "environments/production/hosts.yaml",
        "units/web.yaml",
    ] {
        let text = std::fs::read_to_string(repo.join(f)).unwrap();
        let first = text.lines().next().unwrap();
        let rel = first
            .strip_prefix("# yaml-language-server: $schema=")
            .unwrap_or_else(|| panic!("{f} has no modeline: {first}"));
        assert!(
            repo.join(f).parent().unwrap().join(rel).is_file(),
            "{f}: {rel}"
        );
    }
    let (code, out, err) = plumb(&["validate", repo_s], cache.path());
    assert_eq!(code, 0, "a fresh repo validates:\n{out}\n{err}");
    let (code, out, _) = plumb(
        &[
            "render",
            repo_s,
            "--env",
            "production",
            "--show-content",
            "--output",
            "json",
        ],
        cache.path(),
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("Managed by plumb: web-1 (production)"),
        "{out}"
    );

    // A second init changes nothing and says which file is in the way.
    std::fs::write(repo.join("units/web.yaml"), "# mine\n").unwrap();
    let (code, _, err) = plumb(&["init", repo_s], cache.path());
    assert_eq!(code, 1);
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(
        std::fs::read_to_string(repo.join("units/web.yaml")).unwrap(),
        "# mine\n"
    );
}

#[test]
fn limits_select_by_name_glob_and_labels() {
    let cache = tempfile::tempdir().unwrap();
    let repo = webapp();
    let render = |limits: &[&str]| {
        let mut args = vec![
            "render",
            repo.as_str(),
            "--env",
            "production",
            "--output",
            "json",
        ];
        args.extend_from_slice(limits);
        plumb(&args, cache.path())
    };
    let (code, out, err) = render(&["--limit", "web-*"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rendered_hosts(&out), ["web-1", "web-2"]);
    let (_, out, _) = render(&["--limit", "role=web,canary!=true"]);
    assert_eq!(rendered_hosts(&out), ["web-2"]);
    let (_, out, _) = render(&["--limit", "db-1", "--limit", "web-1"]);
    assert_eq!(
        rendered_hosts(&out),
        ["web-1", "db-1"],
        "the union, in inventory order"
    );
    let (_, out, _) = render(&["--host", "db-1"]);
    assert_eq!(rendered_hosts(&out), ["db-1"], "--host is an alias");
    let (code, out, err) = render(&["--limit", "web-1", "--limit", "wbe-*"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("limit `wbe-*` selects no host in environment `production`"),
        "{err}"
    );
    // A bad selector is refused by the parser, before anything runs.
    let (code, _, err) = render(&["--limit", "role=web,db-1"]);
    assert_eq!(code, 1);
    assert!(err.contains("is not `key=value`"), "{err}");
    // Nothing selected is an error for commands that reach hosts too (none is contacted).
    let (code, _, err) = plumb(
        &[
            "plan",
            repo.as_str(),
            "--env",
            "production",
            "--limit",
            "nope",
            "--connection",
            "local",
        ],
        cache.path(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("limit `nope` selects no host"), "{err}");
}

#[test]
fn validate_and_render_take_facts_from_a_file() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    let w = |p: &str, s: &str| {
        let p = r.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    };
    w("plumb.yaml", "name: f\n");
    w(
        "environments/prod/hosts.yaml",
        "hosts:\n  - name: a\n    address: 10.0.0.1\n",
    );
    w(
        "units/app.yaml",
        "steps:\n  - id: conf\n    file:\n      path: /etc/app.conf\n      template: app.j2\n",
    );
    w(
        "templates/app.j2",
        "# app\nworkers = {{ facts.cpus * 2 }}\n",
    );
    let repo = r.to_str().unwrap();
    let (code, _, err) = plumb(&["validate", repo], cache.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("templates/app.j2:2:") && err.contains("needs fact `facts.cpus`"),
        "the error names the template line and the fact:\n{err}"
    );
    assert!(
        err.contains("plumb facts --env prod"),
        "and what to do:\n{err}"
    );
    w(
        "facts.yaml",
        "a:\n  os: {id: debian, version_id: '12', family: debian}\n  arch: x86_64\n  kernel: 6.1.0\n  cpus: 3\n  memory_mb: 2048\n  hostname: a\n  fqdn: a.example\n  init: systemd\n  pkg_manager: apt\n  virtualization: vm\n",
    );
    let facts = r.join("facts.yaml");
    let facts = facts.to_str().unwrap();
    let (code, out, err) = plumb(&["validate", repo, "--facts", facts], cache.path());
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = plumb(
        &[
            "render",
            repo,
            "--env",
            "prod",
            "--facts",
            facts,
            "--show-content",
            "--output",
            "json",
        ],
        cache.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("workers = 6"), "{out}");
    // A facts file that is not facts says where.
    w("bad.yaml", "a:\n  cpus: many\n");
    let (code, _, err) = plumb(
        &[
            "validate",
            repo,
            "--facts",
            r.join("bad.yaml").to_str().unwrap(),
        ],
        cache.path(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("bad.yaml"), "{err}");
}
