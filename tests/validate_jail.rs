//! The checkout is a jail (issue 11.1): nothing `plumb validate`, `render` or `plan` reads
//! from a config repo may come from outside it. Each case is a repo a pull request could
//! send to a CI runner; each must be refused with a located error, in bounded time, and the
//! content of the file outside (a marker) must appear in no output.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const MARKER: &str = "MARKER-7f3c-outside-the-checkout";

struct Run {
    code: Option<i32>,
    out: String,
}

/// Runs plumb with a deadline: a FIFO must not hang it.
fn plumb(args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .arg("--color")
        .arg("never")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("plumb runs");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("plumb {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    Run {
        code: out.status.code(),
        out: format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A valid repo with one host and one `file` step reading `source: x`.
fn repo(dir: &Path, step: &str) {
    let w = |p: &str, s: &str| {
        let p = dir.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    };
    w("plumb.yaml", "name: jail\n");
    w(
        "environments/prod/hosts.yaml",
        "hosts:\n  - name: web-1\n    address: 127.0.0.1\n",
    );
    w(
        "units/web.yaml",
        &format!("steps:\n  - id: conf\n    file:\n      path: /etc/conf\n      {step}\n"),
    );
}

fn outside_marker() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("secret"), format!("{MARKER}\n")).unwrap();
    d
}

/// `validate`, `render` and `plan` all refuse the repo, naming `needle` at a location.
fn refused_everywhere(dir: &Path, located: &str, needle: &str) {
    let root = dir.to_str().unwrap();
    for args in [
        vec!["validate", root],
        vec!["render", root, "--env", "prod"],
        vec!["plan", root, "--env", "prod"],
        vec!["validate", root, "--output", "json"],
    ] {
        let run = plumb(&args);
        assert_eq!(run.code, Some(1), "{args:?}: {}", run.out);
        assert!(!run.out.contains(MARKER), "{args:?} leaked: {}", run.out);
        if args.contains(&"json") {
            assert!(run.out.contains(needle), "{args:?}: {}", run.out);
            continue;
        }
        let line = run
            .out
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{args:?}: no `{needle}` in {}", run.out));
        // `validate` and `render` name files from where plumb runs, `plan` from the repo.
        let at = [format!("{root}/{located}:"), format!("{located}:")]
            .into_iter()
            .find(|at| line.starts_with(at.as_str()))
            .unwrap_or_else(|| panic!("{args:?}: `{line}` is not at {located}"));
        let rest = &line[at.len()..];
        let mut parts = rest.splitn(3, ':');
        let (l, c) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(
            l.parse::<u32>().is_ok() && c.parse::<u32>().is_ok(),
            "{line}"
        );
    }
}

#[test]
fn a_source_file_symlinked_outside_is_refused() {
    let outside = outside_marker();
    let d = tempfile::tempdir().unwrap();
    repo(d.path(), "source: x");
    std::fs::create_dir_all(d.path().join("files")).unwrap();
    symlink(outside.path().join("secret"), d.path().join("files/x")).unwrap();
    refused_everywhere(d.path(), "files/x", "is not allowed");
}

/// Deeper than the up-front scan looks: the read itself refuses it, at the step.
#[test]
fn a_deep_source_symlink_is_refused_at_the_step() {
    let outside = outside_marker();
    let d = tempfile::tempdir().unwrap();
    let deep = "a/b/c/d/e/f/g/h/i/j/k";
    repo(d.path(), &format!("source: {deep}/x"));
    std::fs::create_dir_all(d.path().join("files").join(deep)).unwrap();
    symlink(
        outside.path().join("secret"),
        d.path().join("files").join(deep).join("x"),
    )
    .unwrap();
    refused_everywhere(d.path(), "units/web.yaml", "symlink to");
    let run = plumb(&["validate", d.path().to_str().unwrap()]);
    assert!(
        run.out
            .lines()
            .any(|l| l.contains("units/web.yaml:5:15: error: step `conf`: files/a/b")),
        "{}",
        run.out
    );
}

#[test]
fn a_symlink_inside_the_repo_is_refused_too() {
    let d = tempfile::tempdir().unwrap();
    repo(d.path(), "source: x");
    std::fs::create_dir_all(d.path().join("files")).unwrap();
    std::fs::write(d.path().join("files/real"), "fine\n").unwrap();
    symlink("real", d.path().join("files/x")).unwrap();
    refused_everywhere(d.path(), "files/x", "symlink to `real` is not allowed");
}

#[test]
fn a_symlinked_directory_is_refused() {
    let outside = outside_marker();
    let d = tempfile::tempdir().unwrap();
    repo(d.path(), "source: secret");
    symlink(outside.path(), d.path().join("files")).unwrap();
    refused_everywhere(d.path(), "files", "is not allowed");
}

#[test]
fn a_template_symlink_is_refused() {
    let outside = outside_marker();
    let d = tempfile::tempdir().unwrap();
    repo(d.path(), "template: t.j2");
    std::fs::create_dir_all(d.path().join("templates")).unwrap();
    symlink(
        outside.path().join("secret"),
        d.path().join("templates/t.j2"),
    )
    .unwrap();
    refused_everywhere(d.path(), "templates/t.j2", "is not allowed");
}

#[test]
fn a_unit_file_symlink_is_refused() {
    let outside = outside_marker();
    std::fs::write(
        outside.path().join("unit.yaml"),
        format!("steps:\n  - id: x\n    file:\n      path: /x\n      content: {MARKER}\n"),
    )
    .unwrap();
    let d = tempfile::tempdir().unwrap();
    repo(d.path(), "content: hi");
    symlink(
        outside.path().join("unit.yaml"),
        d.path().join("units/evil.yaml"),
    )
    .unwrap();
    refused_everywhere(d.path(), "units/evil.yaml", "is not allowed");
}

#[test]
fn an_include_that_climbs_out_is_refused() {
    let d = tempfile::tempdir().unwrap();
    repo(d.path(), "template: t.j2");
    std::fs::create_dir_all(d.path().join("templates")).unwrap();
    std::fs::write(
        d.path().join("templates/t.j2"),
        "before\n{% include '../../../../../../../etc/passwd' %}\n",
    )
    .unwrap();
    refused_everywhere(d.path(), "templates/t.j2", "not a path inside the repo");
    let run = plumb(&["render", d.path().to_str().unwrap(), "--env", "prod"]);
    assert!(!run.out.contains("root:x:0:0"), "{}", run.out);
}

#[test]
fn an_include_of_a_symlinked_template_is_refused() {
    let outside = outside_marker();
    let d = tempfile::tempdir().unwrap();
    repo(d.path(), "template: t.j2");
    std::fs::create_dir_all(d.path().join("templates")).unwrap();
    std::fs::write(d.path().join("templates/t.j2"), "{% include 'inc.j2' %}\n").unwrap();
    symlink(
        outside.path().join("secret"),
        d.path().join("templates/inc.j2"),
    )
    .unwrap();
    refused_everywhere(d.path(), "templates/inc.j2", "is not allowed");
}

#[test]
fn a_fifo_is_refused_without_hanging() {
    let d = tempfile::tempdir().unwrap();
    repo(d.path(), "source: x");
    std::fs::create_dir_all(d.path().join("files")).unwrap();
    let status = Command::new("mkfifo")
        .arg(d.path().join("files/x"))
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
    refused_everywhere(d.path(), "files/x", "a FIFO is not allowed");
}

/// The daemon's path: a commit holding a symlink is checked out as a symlink (git's way)
/// and refused when the checkout is loaded, before anything is rendered.
#[test]
fn a_committed_symlink_is_refused_after_checkout() {
    let outside = outside_marker();
    let work = tempfile::tempdir().unwrap();
    repo(work.path(), "source: x");
    std::fs::create_dir_all(work.path().join("files")).unwrap();
    symlink(outside.path().join("secret"), work.path().join("files/x")).unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(["-c", "commit.gpgsign=false", "-C"])
            .arg(work.path())
            .args(args)
            .output()
            .expect("git runs");
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "a link out"]);
    let repo = plumb::source::git::open(work.path()).expect("opens");
    let head = plumb::source::git::resolve(&repo, "HEAD").expect("HEAD");
    let dest = tempfile::tempdir().unwrap();
    let checkout = dest.path().join("c");
    plumb::source::git::checkout(&repo, head, &checkout).expect("checkout");
    assert!(std::fs::symlink_metadata(checkout.join("files/x"))
        .unwrap()
        .file_type()
        .is_symlink());
    let (_, diags) = plumb::validate::validate(&checkout);
    let refused: Vec<_> = diags
        .iter()
        .filter(|d| d.code == "symlink" && d.path == "files/x")
        .collect();
    assert_eq!(refused.len(), 1, "{:?}", diags.iter().collect::<Vec<_>>());
    assert!(!format!("{:?}", diags.iter().collect::<Vec<_>>()).contains(MARKER));
}
