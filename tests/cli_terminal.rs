//! What plumb prints on a terminal: text from hosts and repos is escaped (no control
//! character or bidi override reaches the terminal raw), JSON keeps the bytes exact, and
//! daemon text logs carry colour only where `--color` and the stream allow it.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HOSTILE: &str = "\u{1b}[31m\u{202e}";

fn write(path: &Path, text: &str) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("mkdir");
    }
    std::fs::write(path, text).expect("write");
}

/// A repo with one host (reached with `--connection local`) and one file step whose path
/// (under `dir`) and content carry an ANSI sequence and a right-to-left override.
fn hostile_repo(repo: &Path, dir: &Path) -> String {
    let path = format!("{}/evil{HOSTILE}.conf", dir.display());
    write(
        &repo.join("plumb.yaml"),
        "name: t\nenvironments: [test]\ndefaults:\n  become: false\n",
    );
    write(
        &repo.join("environments/test/hosts.yaml"),
        "hosts:\n  - name: here\n    address: 127.0.0.1\n",
    );
    write(
        &repo.join("units/evil.yaml"),
        &format!(
            "steps:\n  - id: evil\n    file:\n      path: {}\n      content: \"new \\e[31mred\\u202E\\n\"\n",
            serde_json::to_string(&path).expect("json string")
        ),
    );
    // The file exists with other content, so the plan shows a diff of both.
    std::fs::write(&path, format!("old {HOSTILE}\n")).expect("hostile file");
    path
}

fn plumb(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(args)
        .env_remove("NO_COLOR")
        .output()
        .expect("plumb runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn has_raw_control(s: &str) -> bool {
    s.chars().any(|c| {
        (c.is_control() && c != '\n' && c != '\t') || ('\u{202a}'..='\u{202e}').contains(&c)
    })
}

#[test]
fn text_plan_escapes_host_and_repo_text_and_json_keeps_it_exact() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = tmp.path().join("repo");
    let path = hostile_repo(&repo, tmp.path());
    let repo = repo.to_str().expect("utf-8 path");
    let base = ["plan", repo, "--env", "test", "--connection", "local"];

    for color in ["never", "always"] {
        let mut args = base.to_vec();
        args.extend(["--color", color]);
        let (code, out, err) = plumb(&args);
        assert_eq!(code, 2, "a change is pending\n{out}\n{err}");
        let uncoloured = out.replace("\u{1b}[0m", "").replace("\u{1b}[1m", "");
        let uncoloured = ["31", "32", "33"]
            .iter()
            .fold(uncoloured, |s, c| s.replace(&format!("\u{1b}[{c}m"), ""));
        assert!(!has_raw_control(&uncoloured), "raw control in:\n{out:?}");
        assert!(
            out.contains("evil\\x1b[31m\\u{202e}.conf"),
            "path shown escaped:\n{out}"
        );
        assert!(
            out.contains("old \\x1b[31m\\u{202e}"),
            "old content escaped:\n{out}"
        );
        assert!(
            out.contains("new \\x1b[31mred\\u{202e}"),
            "new content escaped:\n{out}"
        );
    }

    let mut args = base.to_vec();
    args.extend(["--output", "json"]);
    let (code, out, err) = plumb(&args);
    assert_eq!(code, 2, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let step = &v["hosts"][0]["steps"][0];
    assert_eq!(step["target"], path.as_str());
    let diff = step["diff"].as_str().expect("diff");
    assert!(diff.contains(&format!("-old {HOSTILE}\n")), "{diff:?}");
    assert!(diff.contains("+new \u{1b}[31mred\u{202e}\n"), "{diff:?}");
}

#[test]
fn validate_escapes_the_quoted_source_and_message() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = tmp.path();
    write(&repo.join("plumb.yaml"), "name: t\nenvironments: [test]\n");
    write(
        &repo.join("environments/test/hosts.yaml"),
        "hosts:\n  - name: here\n    address: 127.0.0.1\n",
    );
    // An unknown field whose name carries a right-to-left override and a C1 control.
    write(
        &repo.join("units/u.yaml"),
        "steps:\n  - id: a\n    file:\n      path: /tmp/x\n      \u{202e}own\u{85}er: root\n",
    );
    let (code, out, err) = plumb(&["validate", repo.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(!has_raw_control(&err), "raw control in:\n{err:?}");
    assert!(err.contains("\\u{202e}own\\u{85}er: root"), "{err}");
}

/// Starts `plumb daemon` on an empty repository, waits for it to log, stops it with SIGTERM
/// and returns what it wrote to stderr (a pipe, not a terminal).
fn daemon_log(format: &str, color: Option<&str>) -> String {
    let tmp = tempfile::tempdir().expect("tmp");
    // The repository path (logged at start) carries a right-to-left override.
    let bare = tmp.path().join("repo\u{202e}.git");
    let ok = Command::new("git")
        .args(["init", "-q", "--bare"])
        .arg(&bare)
        .status()
        .expect("git");
    assert!(ok.success());
    write(&tmp.path().join("allowed_signers"), "");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = tmp.path().join("daemon.yaml");
    write(
        &config,
        &format!(
            "repository: {}\nallowed_signers: {}\nenvironments: [test]\nstate_dir: {}\nlisten: 127.0.0.1:{port}\n",
            bare.display(),
            tmp.path().join("allowed_signers").display(),
            tmp.path().join("state").display()
        ),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_plumb"));
    cmd.arg("daemon").arg("--config").arg(&config);
    cmd.args(["--log-format", format]);
    if let Some(c) = color {
        cmd.args(["--color", c]);
    }
    let mut child = cmd
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("daemon starts");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    // Give it time to start and log; then stop it the way an operator does.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline
        && std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        && child.try_wait().ok().flatten().is_none()
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    reader.join().expect("reader")
}

#[test]
fn daemon_logs_carry_colour_only_when_allowed() {
    for (format, color) in [
        ("text", None),
        ("text", Some("never")),
        ("json", Some("always")),
    ] {
        let log = daemon_log(format, color);
        assert!(
            log.contains("plumb daemon started"),
            "{format} {color:?}:\n{log}"
        );
        assert!(
            !log.contains('\u{1b}'),
            "ANSI in {format} logs with {color:?}:\n{log:?}"
        );
    }
    let log = daemon_log("text", Some("always"));
    assert!(log.contains("plumb daemon started"), "{log}");
    assert!(
        log.contains('\u{1b}'),
        "--color always colours text logs:\n{log:?}"
    );
}

#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    for args in [
        &["plan", "examples/webapp"][..],
        &["bogus"],
        &[
            "apply",
            "examples/webapp",
            "--env",
            "production",
            "--output",
            "yaml",
        ],
        &["--color", "sometimes", "validate", "examples/webapp"],
    ] {
        let (code, _, err) = plumb(args);
        assert_eq!(code, 1, "{args:?}: {err}");
    }
    for args in [&["--help"][..], &["plan", "--help"], &["--version"]] {
        let (code, out, _) = plumb(args);
        assert_eq!(code, 0, "{args:?}");
        assert!(!out.is_empty());
    }
    let (_, out, _) = plumb(&["plan", "--help"]);
    for flag in ["--env", "--host", "--connection", "--output", "--color"] {
        assert!(out.contains(flag), "plan --help lists {flag}:\n{out}");
    }
}
