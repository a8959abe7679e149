//! Templates are bounded in memory as well as fuel (issue 11.4): each bomb fails
//! `plumb validate` with a located error, under an address-space limit far below what the
//! bomb would need (so a bomb that allocated would abort plumb instead of failing politely).
//! Bounds are generous; nothing here measures time beyond a hang guard.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Address space plumb may use (KiB): far below any bomb, well above a normal validate.
const ULIMIT_KB: u64 = 1536 * 1024;

fn repo(dir: &Path, step: &str, template: Option<&str>) {
    let w = |p: &str, s: &str| {
        let p = dir.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    };
    w("plumb.yaml", "name: bounds\n");
    w(
        "environments/prod/hosts.yaml",
        "hosts:\n  - name: web-1\n    address: 127.0.0.1\n",
    );
    w(
        "units/web.yaml",
        &format!("steps:\n  - id: conf\n    file:\n      path: /etc/conf\n      {step}\n"),
    );
    if let Some(t) = template {
        w("templates/t.j2", t);
    }
}

/// Runs `plumb validate` under the address-space limit; returns (exit code, output).
fn validate_limited(dir: &Path) -> (Option<i32>, String) {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {ULIMIT_KB} && exec \"$0\" --color never validate \"$1\""
        ))
        .arg(env!("CARGO_BIN_EXE_plumb"))
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh runs");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("plumb validate hung on {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn refused(step: &str, template: Option<&str>, located: &str, needle: &str) {
    let d = tempfile::tempdir().unwrap();
    repo(d.path(), step, template);
    let (code, out) = validate_limited(d.path());
    assert_eq!(code, Some(1), "{step}: {out}");
    let at = format!("{}/{located}", d.path().display());
    assert!(
        out.lines()
            .any(|l| l.starts_with(&at) && l.contains(": error: ") && l.contains(needle)),
        "{step}: no `{needle}` at {located} in:\n{out}"
    );
}

#[test]
fn a_small_template_is_fine_under_the_same_limit() {
    let d = tempfile::tempdir().unwrap();
    repo(d.path(), "content: \"{{ ([1] * 1000) | join }}\"", None);
    let (code, out) = validate_limited(d.path());
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn list_repetition_is_bounded() {
    refused(
        "content: \"{{ ([1] * 10**8) | join }}\"",
        None,
        "units/web.yaml:5:",
        "`join` of 100000000 items",
    );
    refused(
        "content: \"{{ ([1] * 10**8) | list | length }}\"",
        None,
        "units/web.yaml:5:",
        "`list` of 100000000 items",
    );
    refused(
        "content: \"{{ [1] * 10**8 }}\"",
        None,
        "units/web.yaml:5:",
        "printing a sequence` of 100000000 items",
    );
}

#[test]
fn replace_bombs_are_bounded() {
    refused(
        "content: \"{{ ('a' * 10**7) | replace('a', 'aaaaaaaaaa') | replace('a', 'aaaaaaaaaa') }}\"",
        None,
        "units/web.yaml:5:",
        "the result of `replace` would be larger",
    );
    refused(
        "template: t.j2",
        Some("line 1\n{{ ('ab' * 10**6) | replace('', 'x' * 1000) }}\n"),
        "templates/t.j2:2:",
        "the result of `replace` would be larger",
    );
}

#[test]
fn string_multiplication_is_bounded() {
    refused(
        "content: \"{{ 'a' * 10**9 }}\"",
        None,
        "units/web.yaml:5:",
        "repeated string is too large",
    );
    refused(
        "template: t.j2",
        Some("{{ 'x' * (9 * 1024 * 1024) }}\n"),
        "templates/t.j2:",
        "template output is larger than 8388608 bytes",
    );
    refused(
        "content: \"{{ ('a' * 10**7) | indent(10**7) }}\"",
        None,
        "units/web.yaml:5:",
        "the result of `indent` would be larger",
    );
}

#[test]
fn huge_ranges_are_refused() {
    refused(
        "template: t.j2",
        Some("{% for i in range(10**9) %}x{% endfor %}\n"),
        "templates/t.j2:1:",
        "range has too many elements",
    );
}

/// Runs `plumb validate --memory-limit SIZE` (the process limits itself, as the daemon's
/// validator child does); returns (exit code, signal).
fn validate_self_limited(dir: &Path, limit: &str) -> (Option<i32>, Option<i32>) {
    use std::os::unix::process::ExitStatusExt as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(["--color", "never", "validate", "--memory-limit", limit])
        .args(["--time-limit", "60s"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("plumb runs");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("plumb validate hung on {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.wait().expect("status");
    (status.code(), status.signal())
}

/// Issue 11: string concatenation in a loop has no per-operation bound in the template
/// engine. `--memory-limit` bounds the whole process instead: the doubling bomb aborts it
/// (not exit 0 or 1, which the daemon's validator child would take as a verdict), and a
/// normal repo validates under the same limit.
#[test]
fn memory_limit_stops_a_doubling_concatenation() {
    let bomb = "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}\n";
    let dir = tempfile::tempdir().unwrap();
    repo(dir.path(), "template: t.j2", Some(bomb));
    let (code, signal) = validate_self_limited(dir.path(), "1GiB");
    assert!(
        code.is_none_or(|c| c != 0 && c != 1),
        "aborted, not a verdict: {code:?} {signal:?}"
    );
    assert_eq!(signal, Some(libc::SIGABRT), "an allocation failed: abort");

    let fine = tempfile::tempdir().unwrap();
    repo(fine.path(), "template: t.j2", Some("{{ 'x' ~ 'y' }}\n"));
    assert_eq!(validate_self_limited(fine.path(), "1GiB"), (Some(0), None));
}
