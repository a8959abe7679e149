//! The module spec, checked against a real `sh` on this machine, inside temporary directories.
//!
//! `registry_examples_converge_here` runs every [`Runs::Local`] module's own examples
//! (declared in its `ModuleDef`) through the generic harness: probe → diff (the expected
//! change) → apply → probe → diff (in sync) → apply again → probe → diff (still in sync).
//! A module without examples fails it; the [`Runs::Host`] modules run the same harness on the
//! Docker test hosts (tests/e2e_modules.rs). The other tests here check what a generic
//! lifecycle cannot see (bytes on disk, backups, modes kept, error messages), through the same
//! harness functions.

use std::path::Path;
use std::process::Command;

use plumb::modules::harness::{self, Host, Select};
use plumb::modules::{
    lookup, sh::quote, Change, ChangeKind, Field, ProbeResult, Resolve, Resource, Runs, REGISTRY,
};
use proptest::prelude::*;
use serde_json::json;

/// This machine: fragments run with a real `sh`, each example in a fresh temporary directory.
#[derive(Default)]
struct LocalSh {
    roots: Vec<tempfile::TempDir>,
}

impl Host for LocalSh {
    fn fresh_root(&mut self) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = p(dir.path());
        self.roots.push(dir);
        path
    }
    fn run(&mut self, script: &str) -> ProbeResult {
        run(script)
    }
}

#[test]
fn registry_examples_converge_here() {
    let errors = harness::run_registry(REGISTRY, Select::Local, &mut LocalSh::default());
    let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(shown.is_empty(), "{}", shown.join("\n\n"));
    assert!(
        REGISTRY
            .iter()
            .any(|d| matches!(d.runs, Runs::Local { .. })),
        "no local module ran"
    );
}

/// The module lists of the docs name exactly the registered modules, in registry order.
#[test]
fn docs_list_exactly_the_registered_modules() {
    let registered: Vec<&str> = REGISTRY.iter().map(|d| d.name).collect();
    for doc in ["README.md", "examples/README.md"] {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(doc))
            .unwrap_or_else(|e| panic!("{doc}: {e}"));
        let text = text.replace('\n', " ");
        let start = text
            .find("module key (")
            .unwrap_or_else(|| panic!("{doc}: no `module key (` list"));
        let list = &text[start + "module key (".len()..];
        let list = &list[..list.find(')').unwrap_or(list.len())];
        let named: Vec<&str> = list.split('`').skip(1).step_by(2).collect();
        assert_eq!(named, registered, "{doc} lists other modules than REGISTRY");
    }
}

struct Repo;
impl Resolve for Repo {
    fn template(&mut self, path: &str) -> Result<String, String> {
        Ok(format!("rendered {path}\n"))
    }
    fn file(&mut self, path: &str) -> Result<Vec<u8>, String> {
        Ok(path.as_bytes().to_vec())
    }
}

fn build(module: &str, params: serde_json::Value) -> Box<dyn Resource> {
    let Some(def) = lookup(module) else {
        panic!("no module {module}")
    };
    match (def.build)(params, &mut Repo) {
        Ok(r) => r,
        Err(e) => panic!("{module}: build failed at {:?}: {e}", e.pointer),
    }
}

/// Runs one fragment as the engine does: its own shell, output captured.
fn run(script: &str) -> ProbeResult {
    let out = match Command::new("sh").arg("-c").arg(script).output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run sh: {e}"),
    };
    ProbeResult {
        stdout: out.stdout,
        stderr: out.stderr,
        status: out.status.code().unwrap_or(-1),
    }
}

fn def_of(r: &dyn Resource) -> &'static plumb::modules::ModuleDef {
    let name = format!("{r:?}").to_lowercase();
    REGISTRY
        .iter()
        .copied()
        .find(|d| name.starts_with(&d.name.replace('_', "")))
        .unwrap_or_else(|| panic!("no module for {name}"))
}

fn observe(r: &dyn Resource) -> Change {
    harness::observe(def_of(r), r, &mut LocalSh::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// The spec (the harness's): a change, applied, converges, and stays converged.
fn converge(r: &dyn Resource, expect: ChangeKind) -> Change {
    harness::converge_resource(def_of(r), r, expect, &mut LocalSh::default())
        .unwrap_or_else(|e| panic!("{}: {e}", r.target()))
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn me() -> (String, String) {
    let id = |flag: &str| {
        let out = run(&format!("id {flag}"));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    (id("-un"), id("-gn"))
}

#[test]
fn file_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("it's $(weird) `name`.conf");
    let (user, group) = me();
    let f = build(
        "file",
        json!({"path": p(&path), "content": "hello\n", "mode": "0640", "owner": user, "group": group}),
    );
    let c = converge(f.as_ref(), ChangeKind::Create);
    assert!(c.content.is_some());
    assert_eq!(std::fs::read(&path).unwrap(), b"hello\n");

    // New content: a modify, old content in the diff, the old version kept as a backup.
    let f = build(
        "file",
        json!({"path": p(&path), "content": "bye\n", "mode": "0600"}),
    );
    let c = converge(f.as_ref(), ChangeKind::Modify);
    assert_eq!(
        c.content.clone().and_then(|c| c.old),
        Some(b"hello\n".to_vec())
    );
    assert!(c.changes_field(Field::Mode));
    assert_eq!(std::fs::read(&path).unwrap(), b"bye\n");
    let backup = dir.path().join("it's $(weird) `name`.conf.plumb-backup");
    assert_eq!(std::fs::read(&backup).unwrap(), b"hello\n");

    // Only the mode drifted.
    run(&format!("chmod 0644 {}", quote(&p(&path))));
    let c = converge(f.as_ref(), ChangeKind::Modify);
    assert_eq!(c.content, None);
    assert!(c.changes_field(Field::Mode));

    // A template, then absent.
    let f = build("file", json!({"path": p(&path), "template": "app.j2"}));
    converge(f.as_ref(), ChangeKind::Modify);
    assert_eq!(std::fs::read(&path).unwrap(), b"rendered app.j2\n");
    let f = build(
        "file",
        json!({"path": p(&path), "state": "absent", "backup": false}),
    );
    converge(f.as_ref(), ChangeKind::Remove);
    assert!(!path.exists());
    // No temporary files left behind.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".plumb.") && !n.ends_with(".plumb-backup"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn file_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let f = build("file", json!({"path": p(dir.path()), "content": "x"}));
    let probe = run(&f.probe());
    let e = f.diff(&probe).unwrap_err();
    assert!(e.message.contains("is a directory"), "{e}");

    let missing = dir.path().join("nope/app.conf");
    let f = build("file", json!({"path": p(&missing), "content": "x"}));
    let c = observe(f.as_ref());
    assert_eq!(c.kind, ChangeKind::Create);
    assert!(c.notes.iter().any(|n| n.contains("does not exist")));
    let out = run(&f.apply(&c));
    assert_ne!(out.status, 0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("parent directory") && err.contains("add a directory step"),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary bytes (not UTF-8, NULs, no trailing newline, ...) land byte for byte.
    #[test]
    fn file_content_lands_byte_for_byte(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let def = lookup("file").unwrap();
        struct Bytes(Vec<u8>);
        impl Resolve for Bytes {
            fn template(&mut self, _: &str) -> Result<String, String> { Err("no".into()) }
            fn file(&mut self, _: &str) -> Result<Vec<u8>, String> { Ok(self.0.clone()) }
        }
        let r = (def.build)(json!({"path": p(&path), "source": "blob"}), &mut Bytes(bytes.clone())).unwrap();
        let c = observe(r.as_ref());
        prop_assert_eq!(c.kind, ChangeKind::Create);
        let out = run(&r.apply(&c));
        prop_assert_eq!(out.status, 0, "{}", String::from_utf8_lossy(&out.stderr));
        prop_assert_eq!(std::fs::read(&path).unwrap(), bytes);
        prop_assert_eq!(observe(r.as_ref()), Change::in_sync());
    }

    /// Arbitrary text as literal content also lands exactly.
    #[test]
    fn file_text_content_lands(s in any::<String>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("text");
        let r = build("file", json!({"path": p(&path), "content": s}));
        let c = observe(r.as_ref());
        let out = run(&r.apply(&c));
        prop_assert_eq!(out.status, 0);
        prop_assert_eq!(std::fs::read(&path).unwrap(), s.as_bytes().to_vec());
    }
}

#[test]
fn directory_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a b/c'd");
    let (user, group) = me();
    let d = build(
        "directory",
        json!({"path": p(&path), "mode": "0750", "owner": user, "group": group}),
    );
    converge(d.as_ref(), ChangeKind::Create);
    assert!(path.is_dir());
    let d = build("directory", json!({"path": p(&path), "mode": "2755"}));
    let c = converge(d.as_ref(), ChangeKind::Modify);
    assert_eq!(c.fields[0].to.as_deref(), Some("2755"));
    std::fs::write(path.join("x"), "x").unwrap();
    let d = build("directory", json!({"path": p(&path), "state": "absent"}));
    assert!(
        d.diff(&run(&d.probe())).is_err(),
        "non-empty without recurse"
    );
    let d = build(
        "directory",
        json!({"path": p(&path), "state": "absent", "recurse": true}),
    );
    converge(d.as_ref(), ChangeKind::Remove);
    assert!(!path.exists());
    let e = dir.path().join("empty");
    std::fs::create_dir(&e).unwrap();
    let d = build("directory", json!({"path": p(&e), "state": "absent"}));
    converge(d.as_ref(), ChangeKind::Remove);
}

#[test]
fn symlink_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let target_dir = dir.path().join("real dir");
    std::fs::create_dir(&target_dir).unwrap();
    let path = dir.path().join("link");
    let l = build(
        "symlink",
        json!({"path": p(&path), "target": p(&target_dir)}),
    );
    converge(l.as_ref(), ChangeKind::Create);
    assert_eq!(std::fs::read_link(&path).unwrap(), target_dir);
    // Retarget a link that points to a directory: the link is replaced, not moved into it.
    let l = build("symlink", json!({"path": p(&path), "target": "rel/$(x)\n"}));
    converge(l.as_ref(), ChangeKind::Modify);
    assert_eq!(
        std::fs::read_link(&path).unwrap().to_string_lossy(),
        "rel/$(x)\n"
    );
    assert_eq!(std::fs::read_dir(&target_dir).unwrap().count(), 0);
    // A regular file in the way: refused, unless forced.
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let l = build("symlink", json!({"path": p(&file), "target": "/"}));
    assert!(l.diff(&run(&l.probe())).is_err());
    let l = build(
        "symlink",
        json!({"path": p(&file), "target": "/", "force": true}),
    );
    converge(l.as_ref(), ChangeKind::Modify);
    let l = build("symlink", json!({"path": p(&path), "state": "absent"}));
    converge(l.as_ref(), ChangeKind::Remove);
    assert!(target_dir.is_dir());
}

#[test]
fn line_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sshd_config");
    // create: true makes the file.
    let l = build(
        "line",
        json!({"path": p(&path), "line": "Port 22", "create": true}),
    );
    converge(l.as_ref(), ChangeKind::Create);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "Port 22\n");
    // Append to a file without a trailing newline; mode is kept.
    std::fs::write(
        &path,
        "#PermitRootLogin yes\nX 1\nPermitRootLogin yes\nTail",
    )
    .unwrap();
    run(&format!("chmod 0600 {}", quote(&p(&path))));
    let l = build(
        "line",
        json!({"path": p(&path), "line": "UseDNS no $(touch /tmp/pwned) 'q'"}),
    );
    converge(l.as_ref(), ChangeKind::Create);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "#PermitRootLogin yes\nX 1\nPermitRootLogin yes\nTail\nUseDNS no $(touch /tmp/pwned) 'q'\n"
    );
    let mode = run(&format!("stat -c %a {}", quote(&p(&path))));
    assert_eq!(String::from_utf8_lossy(&mode.stdout).trim(), "600");
    // Replace the last match of a regexp; the line itself does not match it.
    let l = build(
        "line",
        json!({"path": p(&path), "regexp": "^#?PermitRootLogin[[:space:]]+yes", "line": "PermitRootLogin no"}),
    );
    converge(l.as_ref(), ChangeKind::Modify);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "#PermitRootLogin yes\nX 1\nPermitRootLogin no\nTail\nUseDNS no $(touch /tmp/pwned) 'q'\n"
    );
    // Replace the first line.
    let l = build(
        "line",
        json!({"path": p(&path), "regexp": "^#PermitRootLogin", "line": "# root login"}),
    );
    converge(l.as_ref(), ChangeKind::Modify);
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .starts_with("# root login\nX 1\n"));
    // Remove by regexp (every match) and exactly.
    let l = build(
        "line",
        json!({"path": p(&path), "regexp": "^(X|Tail)", "state": "absent"}),
    );
    converge(l.as_ref(), ChangeKind::Remove);
    let l = build(
        "line",
        json!({"path": p(&path), "line": "# root login", "state": "absent"}),
    );
    converge(l.as_ref(), ChangeKind::Remove);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "PermitRootLogin no\nUseDNS no $(touch /tmp/pwned) 'q'\n"
    );
    // A bad regexp is a clear error, found before any host (issue 11.13).
    let Err(e) = (lookup("line").unwrap().build)(
        json!({"path": p(&path), "regexp": "(", "line": "x"}),
        &mut Repo,
    ) else {
        panic!("an invalid regexp was built")
    };
    assert_eq!(e.pointer, "/regexp");
    assert!(e.message.contains("invalid regular expression"), "{e}");
    // Missing file without create: noted, and the apply fails clearly.
    let missing = dir.path().join("missing");
    let l = build("line", json!({"path": p(&missing), "line": "x"}));
    let c = observe(l.as_ref());
    let out = run(&l.apply(&c));
    assert_ne!(out.status, 0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("create: true"));
}

#[test]
fn command_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("done 'x'");
    // `creates`, run in chdir with a relative path.
    let c = build(
        "command",
        json!({"run": "printf ran > \"done 'x'\"", "creates": "done 'x'", "chdir": p(dir.path())}),
    );
    converge(c.as_ref(), ChangeKind::Create);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran");
    // `unless` and `onlyif`.
    let count = dir.path().join("count");
    let c = build(
        "command",
        json!({"run": format!("echo x >> {}", quote(&p(&count))), "unless": format!("grep -q x {}", quote(&p(&count))), "onlyif": "true"}),
    );
    converge(c.as_ref(), ChangeKind::Create);
    assert_eq!(std::fs::read_to_string(&count).unwrap(), "x\n");
    // A failing command fails the apply with its status.
    let c = build(
        "command",
        json!({"run": "echo oops >&2; exit 3", "creates": "/nonexistent/plumb"}),
    );
    let ch = observe(c.as_ref());
    let out = run(&c.apply(&ch));
    assert_eq!(out.status, 3);
    // A handler: in sync in every plan; its refresh runs it.
    let h = build(
        "command",
        json!({"run": format!("echo h >> {}", quote(&p(&count))), "refresh_only": true}),
    );
    assert!(h.refresh_only());
    assert_eq!(observe(h.as_ref()), Change::in_sync());
    assert_eq!(run(&h.refresh().unwrap()).status, 0);
    assert_eq!(std::fs::read_to_string(&count).unwrap(), "x\nh\n");
    // The command does not read the engine's script from stdin.
    let out = Command::new("sh")
        .arg("-s")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            let script = format!(
                "{}\necho after\n",
                build("command", json!({"run": "cat"})).apply(&Change::new(ChangeKind::Create))
            );
            child.stdin.take().unwrap().write_all(script.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "after\n");
}

#[test]
fn cron_lifecycle_under_a_root_prefix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc/cron.d")).unwrap();
    let params = json!({"name": "backup", "schedule": "0 3 * * *", "command": "/usr/bin/backup", "env": {"MAILTO": ""}});
    let cron = plumb::modules::cron::Cron::new(serde_json::from_value(params).unwrap())
        .unwrap()
        .with_root(&p(dir.path()));
    converge(&cron, ChangeKind::Create);
    let written = std::fs::read_to_string(dir.path().join("etc/cron.d/backup")).unwrap();
    assert!(
        written.ends_with("MAILTO=\n0 3 * * * root /usr/bin/backup\n"),
        "{written}"
    );
    let params = json!({"name": "backup", "schedule": "@daily", "command": "/usr/bin/backup"});
    let cron = plumb::modules::cron::Cron::new(serde_json::from_value(params).unwrap())
        .unwrap()
        .with_root(&p(dir.path()));
    let c = converge(&cron, ChangeKind::Modify);
    assert!(c.content.and_then(|c| c.old).is_some());
    let params = json!({"name": "backup", "state": "absent"});
    let cron = plumb::modules::cron::Cron::new(serde_json::from_value(params).unwrap())
        .unwrap()
        .with_root(&p(dir.path()));
    converge(&cron, ChangeKind::Remove);
    assert_eq!(
        std::fs::read_dir(dir.path().join("etc/cron.d"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn sysctl_lifecycle_under_a_root_prefix() {
    use plumb::modules::sysctl::Sysctl;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc/sysctl.d")).unwrap();
    std::fs::create_dir_all(dir.path().join("proc/sys/net/ipv4")).unwrap();
    let live = dir.path().join("proc/sys/net/ipv4/tcp_rmem");
    std::fs::write(&live, "4096\t16384\t4194304\n").unwrap();
    let mk = |v: serde_json::Value| {
        Sysctl::new(serde_json::from_value(v).unwrap())
            .unwrap()
            .with_root(&p(dir.path()))
    };
    let s = mk(json!({"name": "net.ipv4.tcp_rmem", "value": "4096 87380 6291456"}));
    let c = converge(&s, ChangeKind::Create);
    assert!(c.changes_field(Field::Value));
    assert_eq!(
        std::fs::read_to_string(&live).unwrap(),
        "4096 87380 6291456\n"
    );
    // Live drift only.
    std::fs::write(&live, "1 2 3\n").unwrap();
    let c = converge(&s, ChangeKind::Modify);
    assert_eq!(c.fields.len(), 1);
    let s = mk(json!({"name": "net.ipv4.tcp_rmem", "state": "absent"}));
    converge(&s, ChangeKind::Remove);
    assert_eq!(
        std::fs::read_dir(dir.path().join("etc/sysctl.d"))
            .unwrap()
            .count(),
        0
    );
}

/// The probes of host-only modules only observe, so they can run here: they must parse in
/// this machine's `sh` and give a `Change` (whatever the machine has installed).
#[test]
fn host_only_probes_run_and_parse() {
    for (module, params) in [
        ("package", json!({"name": "coreutils"})),
        ("package", json!({"name": "plumb-no-such-package"})),
        (
            "service",
            json!({"name": "plumb-no-such.service", "state": "running", "enabled": true}),
        ),
        ("user", json!({"name": "root", "groups": []})),
        ("user", json!({"name": "plumb-no-such-user"})),
        ("group", json!({"name": "root", "gid": 0})),
        ("group", json!({"name": "plumb-no-such-group"})),
    ] {
        let r = build(module, params.clone());
        let probe = run(&r.probe());
        if let Err(e) = r.diff(&probe) {
            // Only a host without any supported package manager may fail here.
            assert!(
                module == "package" && e.message.contains("no supported package manager"),
                "{module} {params}: {e}\nstderr: {}",
                String::from_utf8_lossy(&probe.stderr)
            );
        }
    }
    let root = build("user", json!({"name": "root", "uid": 0}));
    assert_eq!(observe(root.as_ref()), Change::in_sync());
}

/// One representative step per module, for the totality property below.
fn samples() -> Vec<Box<dyn Resource>> {
    let mut v = vec![
        build(
            "file",
            json!({"path": "/etc/a", "content": "x", "mode": "0600", "owner": "root", "group": "0"}),
        ),
        build("file", json!({"path": "/etc/a", "state": "absent"})),
        build(
            "directory",
            json!({"path": "/srv/a", "mode": "0755", "owner": "root"}),
        ),
        build("directory", json!({"path": "/srv/a", "state": "absent"})),
        build("symlink", json!({"path": "/a", "target": "/b"})),
        build("line", json!({"path": "/a", "line": "x", "regexp": "^x"})),
        build(
            "line",
            json!({"path": "/a", "regexp": "^x", "state": "absent"}),
        ),
        build("package", json!({"name": "nginx", "version": "1"})),
        build(
            "service",
            json!({"name": "nginx", "state": "running", "enabled": true}),
        ),
        build(
            "user",
            json!({"name": "u", "uid": 1, "group": "g", "groups": ["a"], "shell": "/bin/sh", "home": "/h"}),
        ),
        build("group", json!({"name": "g", "gid": 1})),
        build(
            "command",
            json!({"run": "x", "creates": "/a", "unless": "b", "onlyif": "c", "chdir": "/"}),
        ),
        build(
            "cron",
            json!({"name": "c", "schedule": "@daily", "command": "x"}),
        ),
        build("sysctl", json!({"name": "a.b", "value": "1"})),
    ];
    v.push(build("sysctl", json!({"name": "a.b", "state": "absent"})));
    v.extend([
        build(
            "systemd_unit",
            json!({"name": "a.service", "content": "x", "dropins": [{"name": "d.conf", "content": "y"}], "enabled": true, "state": "running"}),
        ),
        build("git", json!({"repo": "https://h/r.git", "dest": "/d", "version": "main"})),
        build(
            "download",
            json!({"url": "https://h/x", "path": "/x", "sha256": "00".repeat(32), "mode": "0644"}),
        ),
        build("archive", json!({"src": "/a.tgz", "dest": "/d", "sha256": "00".repeat(32)})),
        build("authorized_key", json!({"user": "u", "keys": ["ssh-ed25519 AAAA"]})),
        build("mount", json!({"path": "/m", "src": "tmpfs", "fstype": "tmpfs"})),
        build(
            "apt_repository",
            json!({"name": "a", "uris": ["https://h/d"], "suites": ["s"], "key": "-----BEGIN PGP PUBLIC KEY BLOCK-----\nx\n-----END PGP PUBLIC KEY BLOCK-----"}),
        ),
        build("hostname", json!({"name": "h"})),
        build("timezone", json!({"name": "UTC"})),
        build(
            "backup",
            json!({"name": "b", "repository": "/r", "password": "p", "paths": ["/a"], "before": "x", "restore_test": {"sample": 3, "verify": "y"}}),
        ),
    ]);
    v
}

#[test]
fn samples_cover_the_registry() {
    let built: std::collections::BTreeSet<String> =
        samples().iter().map(|r| format!("{r:?}")).collect();
    for def in REGISTRY {
        let ty = def.name.to_string();
        assert!(
            built
                .iter()
                .any(|d| d.to_lowercase().starts_with(&ty.replace('_', ""))),
            "no sample for `{ty}`"
        );
    }
}

fn key_value_lines() -> impl Strategy<Value = Vec<u8>> {
    let mut keys: Vec<&'static str> = REGISTRY
        .iter()
        .flat_map(|d| d.probe_keys.iter().copied())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let key = prop::sample::select(keys);
    let value = prop_oneof![
        prop::sample::select(vec![
            "absent",
            "file",
            "directory",
            "symlink",
            "other",
            "yes",
            "no",
            "0",
            "1",
            "644",
            "apt",
            "dnf",
            "apk",
            "none",
            "systemd",
            "sysv",
            "active",
            "enabled",
            "ok",
            "failed",
            "exists",
            "missing",
            "installed",
            "invalid",
            "AAAA",
            "!!",
        ])
        .prop_map(str::to_string),
        "[ -~]{0,20}",
    ];
    prop::collection::vec((key, value), 0..12).prop_map(|kvs| {
        kvs.into_iter()
            .flat_map(|(k, v)| format!("{k}={v}\n").into_bytes())
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `diff` is total: any output gives a Change or a ProbeError, never a panic.
    #[test]
    fn diff_never_panics_on_bytes(stdout in proptest::collection::vec(any::<u8>(), 0..512), status in -1i32..3) {
        for r in samples() {
            let _ = r.diff(&ProbeResult { stdout: stdout.clone(), stderr: stdout.clone(), status });
        }
    }

    #[test]
    fn diff_never_panics_on_plausible_output(stdout in key_value_lines()) {
        for r in samples() {
            if let Ok(c) = r.diff(&ProbeResult { stdout: stdout.clone(), ..Default::default() }) {
                // Whatever the change, its apply renders.
                let _ = r.apply(&c);
            }
        }
    }

    /// `diff` is a function of its resource and the probe's result alone: the same result
    /// gives the same answer every time (what lets `engine::diffs` diff a resource that
    /// hosts share once per result).
    #[test]
    fn diff_is_a_function_of_the_probe_result(stdout in key_value_lines(), status in 0i32..2) {
        for r in samples() {
            let result = ProbeResult { stdout: stdout.clone(), stderr: b"e".to_vec(), status };
            prop_assert_eq!(r.diff(&result), r.diff(&result));
        }
    }
}

// ---------------------------------------------------------------------------------------
// No check-then-act (issue 11.2): what the probe saw is swapped before the apply runs.

fn mode_of(path: &Path) -> String {
    let out = run(&format!("stat -c %a {}", quote(&p(path))));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A victim file the step must never touch: content, mode and owner recorded.
struct Victim {
    path: std::path::PathBuf,
    before: (Vec<u8>, String, String),
}

impl Victim {
    fn new(dir: &Path) -> Victim {
        let path = dir.join("victim");
        std::fs::write(&path, "root:secret-hash\n").unwrap();
        run(&format!("chmod 0640 {}", quote(&p(&path))));
        let before = Victim::state(&path);
        Victim { path, before }
    }
    fn state(path: &Path) -> (Vec<u8>, String, String) {
        let owner = run(&format!("stat -c %u:%g {}", quote(&p(path))));
        (
            std::fs::read(path).unwrap(),
            mode_of(path),
            String::from_utf8_lossy(&owner.stdout).trim().to_string(),
        )
    }
    fn untouched(&self) {
        assert_eq!(Victim::state(&self.path), self.before, "the victim changed");
    }
}

/// Replaces `path` by a symbolic link to `to`.
fn swap_for_link(path: &Path, to: &Path) {
    std::fs::remove_file(path).unwrap();
    std::os::unix::fs::symlink(to, path).unwrap();
}

/// Both ways a file is written: beside the target in a parent only plumb's user can change,
/// and through a private directory in one another user owns (when run as root).
#[test]
fn a_file_swapped_for_a_symlink_after_the_probe_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    file_swapped_for_a_symlink(dir.path(), dir.path());
    let me = run("id -u");
    if String::from_utf8_lossy(&me.stdout).trim() == "0" {
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        run(&format!("chown 65534 {}", quote(&p(&home))));
        file_swapped_for_a_symlink(dir.path(), &home);
    }
}

/// The swap of [`a_file_swapped_for_a_symlink_after_the_probe_is_never_followed`], for a
/// file in `parent` and a victim in `dir`.
fn file_swapped_for_a_symlink(dir: &Path, parent: &Path) {
    let victim = Victim::new(dir);
    let path = parent.join("app.conf");
    for (params, kind) in [
        // mode only, owner only, content: each probed on the real file, applied on the link
        (
            json!({"path": p(&path), "content": "x\n", "mode": "0644"}),
            ChangeKind::Modify,
        ),
        (
            json!({"path": p(&path), "content": "x\n", "owner": "65534", "mode": "0600"}),
            ChangeKind::Modify,
        ),
        (
            json!({"path": p(&path), "content": "new\n"}),
            ChangeKind::Modify,
        ),
        (
            json!({"path": p(&path), "line": "added"}),
            ChangeKind::Create,
        ),
        (
            json!({"path": p(&path), "regexp": "^x", "line": "y"}),
            ChangeKind::Modify,
        ),
        (
            json!({"path": p(&path), "regexp": "^x", "state": "absent"}),
            ChangeKind::Remove,
        ),
    ] {
        std::fs::write(&path, "x\n").unwrap();
        run(&format!("chmod 0600 {}", quote(&p(&path))));
        let module = if params.get("content").is_some() {
            "file"
        } else {
            "line"
        };
        let r = build(module, params.clone());
        let c = observe(r.as_ref());
        assert_eq!(c.kind, kind, "{params}");
        swap_for_link(&path, &victim.path);
        let out = run(&r.apply(&c));
        assert_ne!(out.status, 0, "{params}: the apply went through the link");
        victim.untouched();
        assert!(path.is_symlink(), "{params}: the link was replaced");
        std::fs::remove_file(&path).unwrap();
    }
    // Nothing of plumb's is left beside the target.
    let left: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".plumb"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_directory_swapped_for_a_symlink_after_the_probe_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim-dir");
    std::fs::create_dir(&victim).unwrap();
    run(&format!("chmod 0700 {}", quote(&p(&victim))));
    let path = dir.path().join("app");
    std::fs::create_dir(&path).unwrap();
    let d = build("directory", json!({"path": p(&path), "mode": "0750"}));
    let c = observe(d.as_ref());
    assert_eq!(c.kind, ChangeKind::Modify);
    std::fs::remove_dir(&path).unwrap();
    std::os::unix::fs::symlink(&victim, &path).unwrap();
    let out = run(&d.apply(&c));
    assert_ne!(out.status, 0);
    assert_eq!(mode_of(&victim), "700");
}

#[test]
fn a_parent_other_users_can_write_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    let path = open.join("sub/app.conf");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    run(&format!("chmod 0777 {}", quote(&p(&open))));
    let f = build("file", json!({"path": p(&path), "content": "x"}));
    let c = observe(f.as_ref());
    let out = run(&f.apply(&c));
    assert_ne!(out.status, 0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("will not act below") && err.contains("/open"),
        "{err}"
    );
    assert!(!path.exists());
    // With the sticky bit (like /tmp) and a directory of plumb's user below it: accepted.
    run(&format!("chmod 1777 {}", quote(&p(&open))));
    converge(f.as_ref(), ChangeKind::Create);
}

/// In a directory another user owns, that user could hard-link a file they may not change
/// (e.g. /etc/shadow without protected_hardlinks): a file with other names is refused there.
#[test]
fn a_hard_link_in_a_directory_another_user_owns_is_refused() {
    let me = run("id -u");
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        eprintln!("not root: cannot give a directory to another user; hard-link case not checked");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let victim = Victim::new(dir.path());
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    run(&format!("chown 65534 {}", quote(&p(&home))));
    let path = home.join("app.conf");
    std::fs::hard_link(&victim.path, &path).unwrap();
    let f = build(
        "file",
        json!({"path": p(&path), "content": "root:secret-hash\n", "mode": "0644"}),
    );
    let c = observe(f.as_ref());
    assert_eq!(c.kind, ChangeKind::Modify);
    let out = run(&f.apply(&c));
    assert_ne!(out.status, 0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("other hard links"));
    victim.untouched();
    // The same file alone in that directory is changed.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, "root:secret-hash\n").unwrap();
    run(&format!("chmod 0600 {}", quote(&p(&path))));
    converge(f.as_ref(), ChangeKind::Modify);
    assert_eq!(mode_of(&path), "644");
}

/// Issue 17: an archive with a `../` member (or an absolute one) is refused before anything
/// is extracted: the member that would escape does not appear, nor do its innocent siblings.
#[test]
fn archive_members_escaping_the_destination_are_refused_before_extracting() {
    let dir = tempfile::tempdir().unwrap();
    let d = p(dir.path());
    let made = run(&format!(
        "set -e; cd {q}; mkdir -p in/sub; echo ok > in/a; echo evil > escaped; \
         cd in/sub && tar -P -czf ../../dotdot.tgz ../a ../../escaped && cd ../.. && \
         tar -P -cf abs.tar {abs}",
        q = quote(&d),
        abs = quote(&format!("{d}/escaped")),
    ));
    assert_eq!(made.status, 0, "{}", String::from_utf8_lossy(&made.stderr));
    std::fs::remove_file(dir.path().join("escaped")).unwrap();
    for tarball in ["dotdot.tgz", "abs.tar"] {
        let dest = dir.path().join(format!("out {tarball}"));
        let r = build(
            "archive",
            json!({"src": format!("{d}/{tarball}"), "dest": p(&dest)}),
        );
        let c = observe(r.as_ref());
        assert_eq!(c.kind, ChangeKind::Create);
        let out = run(&r.apply(&c));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status, 0, "{tarball}: extracted");
        assert!(err.contains("nothing was extracted"), "{tarball}: {err}");
        assert!(!dir.path().join("escaped").exists(), "{tarball}: escaped");
        assert!(!dest.exists(), "{tarball}: something was extracted");
    }
}

/// Issue 17: a download whose sha256 is not the wanted one fails the step and leaves the file
/// that was there as it was; the right one replaces it.
#[test]
fn a_download_with_a_bad_checksum_leaves_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("v2"), "v2\n").unwrap();
    let path = dir.path().join("app");
    std::fs::write(&path, "v1\n").unwrap();
    let url = format!("file://{}", p(&dir.path().join("v2")));
    let bad = build(
        "download",
        json!({"url": url, "path": p(&path), "sha256": "00".repeat(32)}),
    );
    let c = observe(bad.as_ref());
    assert_eq!(c.kind, ChangeKind::Modify);
    let out = run(&bad.apply(&c));
    assert_ne!(out.status, 0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum mismatch"));
    assert_eq!(std::fs::read(&path).unwrap(), b"v1\n");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "nothing left behind"
    );
    let good = build(
        "download",
        json!({"url": url, "path": p(&path), "sha256": "81db67b6a5702b9b68f0016f061c409bf3fb16d062fc854d1b424bb4e9c28c56"}),
    );
    converge(good.as_ref(), ChangeKind::Modify);
    assert_eq!(std::fs::read(&path).unwrap(), b"v2\n");
}

/// `git` with `verify:`: a commit signed by a key of the step's allowed-signers file (read
/// from the repo) is checked out and stays in sync (verified at every probe); an unsigned
/// commit and one signed by another key fail the observation, naming the reason, and the
/// checkout is left as it was. Keys and signatures are made here with ssh-keygen and git.
#[test]
fn git_verifies_the_wanted_commit_before_checking_it_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let sh_ok = |cmd: &str| {
        let out = run(cmd);
        assert_eq!(
            out.status,
            0,
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let q = |p: &Path| quote(&p.display().to_string());
    for k in ["alice", "mallory"] {
        sh_ok(&format!(
            "ssh-keygen -q -t ed25519 -N '' -C {k} -f {}",
            q(&d.join(k))
        ));
    }
    let alice = std::fs::read_to_string(d.join("alice.pub")).expect("pub");
    let signers = format!("alice@example.com {alice}");
    let src = d.join("src");
    let g = format!(
        "git -C {} -c user.name=T -c user.email=t@example.com -c gpg.format=ssh -c init.defaultBranch=main",
        q(&src)
    );
    sh_ok(&format!(
        "mkdir {s} && git init -q -b main {s}",
        s = q(&src)
    ));
    let signed_by = |key: &str, branch: &str, msg: &str| {
        let sign = if key.is_empty() {
            "--no-gpg-sign".to_string()
        } else {
            format!("-S -c user.signingkey={}", q(&d.join(key)))
        };
        let (pre, post) = sign
            .split_once(" -c ")
            .map_or((sign.as_str(), String::new()), |(a, b)| {
                (a, format!("-c {b}"))
            });
        sh_ok(&format!(
            "set -e; {g} checkout -q -B {branch}; echo {msg} > {f}; {g} add f; {g} {post} commit -q {pre} -m {msg}; {g} rev-parse HEAD",
            f = q(&src.join("f"))
        ))
    };
    let good = signed_by("alice", "main", "good");
    let _ = signed_by("", "unsigned", "unsigned");
    sh_ok(&format!("{g} checkout -q main"));
    let _ = signed_by("mallory", "other", "other");

    struct Signers(String);
    impl Resolve for Signers {
        fn template(&mut self, path: &str) -> Result<String, String> {
            Err(format!("no template {path}"))
        }
        fn file(&mut self, _: &str) -> Result<Vec<u8>, String> {
            Ok(self.0.clone().into_bytes())
        }
    }
    let dest = d.join("checkout");
    let git = |version: &str| {
        let params = json!({"repo": format!("file://{}", p(&src)), "dest": p(&dest), "version": version, "verify": {"allowed_signers": "app-signers"}});
        (lookup("git").expect("git").build)(params, &mut Signers(signers.clone())).expect("build")
    };
    let first = converge(git("main").as_ref(), ChangeKind::Create);
    assert!(
        first
            .notes
            .iter()
            .any(|n| n.contains("signed by alice@example.com")),
        "{first:?}"
    );
    let head = || sh_ok(&format!("git -C {} rev-parse HEAD", q(&dest)));
    assert_eq!(head(), good);
    for (branch, reason) in [("unsigned", "unsigned"), ("other", "unknown-key")] {
        let r = git(branch);
        let out = run(&r.probe());
        let e = r.diff(&out).expect_err("refused");
        assert!(e.message.contains(reason), "{branch}: {}", e.message);
        assert!(e.message.contains("nothing was changed"), "{}", e.message);
        assert_eq!(head(), good, "the checkout is untouched");
    }
    // A checkout the host moved to an unsigned commit: the step is not in sync, and the
    // wanted (signed) commit is verified again before it is put back.
    sh_ok(&format!(
        "git -C {} fetch -q origin unsigned && git -C {} checkout -q --detach FETCH_HEAD",
        q(&dest),
        q(&dest)
    ));
    converge(git("main").as_ref(), ChangeKind::Modify);
    assert_eq!(head(), good);
    // A trust root that does not parse fails the build at its parameter.
    let e = (lookup("git").expect("git").build)(
        json!({"repo": "file:///x", "dest": "/d", "verify": {"allowed_signers": "s"}}),
        &mut Signers("alice@example.com ssh-ed25519 notbase64\n".into()),
    )
    .expect_err("refused");
    assert_eq!(e.pointer, "/verify/allowed_signers");
}
