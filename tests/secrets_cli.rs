//! Secrets through the plumb binary, with the real `age` CLI (Debian package `age`) on the
//! other side: files `age -r`/`age -R` wrote are used by plumb, files `plumb secrets set`
//! wrote open with `age -d -i`; every bad input is a located error; plaintext appears in no
//! output, even with debug logs (`--connection local`: the "host" is a temp dir).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const PW: &str = "pw-7d1c0e-from-age-r";
const TOKEN: &str = "tok-93aa41-from-age-R";

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Runs `cmd` with `stdin`; (exit code, stdout, stderr).
fn run(cmd: &mut Command, stdin: &[u8]) -> (i32, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?} does not start ({e}); the `age` package is required"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("stdin");
    let out = child.wait_with_output().expect("waits");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn age(args: &[&str], stdin: &[u8]) -> String {
    let (code, out, err) = run(Command::new("age").args(args), stdin);
    assert_eq!(code, 0, "age {args:?}: {err}");
    out
}

/// A new age identity file (0600) in `dir`; returns (path, public key).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let (code, _, err) = run(Command::new("age-keygen").arg("-o").arg(&path), b"");
    assert_eq!(code, 0, "age-keygen: {err}");
    chmod(&path, 0o600);
    let (code, public, err) = run(Command::new("age-keygen").arg("-y").arg(&path), b"");
    assert_eq!(code, 0, "age-keygen -y: {err}");
    (path, public.trim().to_string())
}

struct Fixture {
    tmp: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
    key: PathBuf,
    public: String,
}

/// A repo whose environment `test` has one recipient; `secrets/pw.age` written by `age -r`,
/// `environments/test/secrets/token.age` by `age -R recipients.txt -a`; a unit writing both
/// into a file of the "host" directory and passing one through a command's text.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("repo");
    let work = tmp.path().join("host");
    std::fs::create_dir_all(&work).expect("mkdir");
    let (key, public) = keygen(tmp.path(), "key.txt");
    write(&root.join("plumb.yaml"), "name: s\nenvironments: [test]\n");
    write(
        &root.join("environments/test/hosts.yaml"),
        "hosts:\n  - name: local\n    address: 127.0.0.1\n",
    );
    let recipients = root.join("environments/test/secrets/recipients.txt");
    write(
        &recipients,
        &format!("# who may decrypt test's secrets (ops)\n{public}\n"),
    );
    std::fs::create_dir_all(root.join("secrets")).expect("mkdir");
    let pw = root.join("secrets/pw.age");
    age(
        &["-r", &public, "-o", &pw.display().to_string()],
        PW.as_bytes(),
    );
    let token = root.join("environments/test/secrets/token.age");
    let r = recipients.display().to_string();
    age(
        &["-R", &r, "-a", "-o", &token.display().to_string()],
        TOKEN.as_bytes(),
    );
    let w = work.display();
    write(
        &root.join("units/app.yaml"),
        &format!(
            "steps:\n  - id: conf\n    file:\n      path: {w}/app.conf\n      template: app.conf.j2\n      mode: \"0600\"\n    notify: [reload]\n  - id: use-token\n    command:\n      run: \"test '{{{{ secrets.token }}}}' = '{TOKEN}' && touch {w}/token-ok\"\n      creates: {w}/token-ok\n  - id: reload\n    command:\n      run: \"date >> {w}/reloads\"\n      refresh_only: true\n"
        ),
    );
    write(
        &root.join("templates/app.conf.j2"),
        "[db]\npassword = {{ secrets.pw }}\ntoken = {{ secrets.token }}\n",
    );
    Fixture {
        tmp,
        root,
        work,
        key,
        public,
    }
}

/// `plumb CMD <repo> ARGS --env test`, with debug logs: (code, stdout + stderr).
fn plumb(cmd: &str, repo: &Path, args: &[&str]) -> (i32, String) {
    let (code, out, err) = run(
        Command::new(env!("CARGO_BIN_EXE_plumb"))
            .arg(cmd)
            .arg(repo)
            .args(args)
            .args(["--env", "test", "--color", "never"])
            .env("RUST_LOG", "debug")
            .env_remove("PLUMB_SECRETS_IDENTITY"),
        b"",
    );
    (code, format!("{out}\n{err}"))
}

fn plumb_secrets(args: &[&str], stdin: &[u8]) -> (i32, String) {
    let (code, out, err) = run(
        Command::new(env!("CARGO_BIN_EXE_plumb"))
            .arg("secrets")
            .args(args)
            .env_remove("PLUMB_SECRETS_IDENTITY"),
        stdin,
    );
    (code, format!("{out}\n{err}"))
}

fn assert_hidden(what: &str, text: &str, values: &[&str]) {
    for v in values {
        assert!(!text.contains(v), "{what} shows a secret ({v}):\n{text}");
    }
}

#[test]
fn files_from_the_age_cli_converge_and_leak_nowhere() {
    let f = fixture();
    let id = f.key.display().to_string();
    let (code, out, err) = run(
        Command::new(env!("CARGO_BIN_EXE_plumb"))
            .arg("validate")
            .arg(&f.root),
        b"",
    );
    assert_eq!(code, 0, "validate needs no identity: {out}{err}");
    for output in ["text", "json"] {
        for (cmd, expect) in [("render", 0), ("plan", 2), ("apply", 0), ("plan", 0)] {
            let mut args = vec!["--secrets-identity", &id, "--output", output];
            if cmd != "render" {
                args.extend(["--connection", "local"]);
            } else {
                args.push("--show-content");
            }
            let (code, text) = plumb(cmd, &f.root, &args);
            let expect = if output == "json" && cmd == "plan" {
                0
            } else {
                expect
            };
            assert_eq!(code, expect, "plumb {cmd} {args:?}:\n{text}");
            assert_hidden(
                &format!("plumb {cmd} --output {output}"),
                &text,
                &[PW, TOKEN],
            );
            if cmd == "plan" && code == 2 {
                assert!(text.contains("reads secrets: pw, token"), "{text}");
            }
        }
    }
    let conf = std::fs::read_to_string(f.work.join("app.conf")).expect("written");
    assert_eq!(conf, format!("[db]\npassword = {PW}\ntoken = {TOKEN}\n"));
    assert!(
        f.work.join("token-ok").exists(),
        "the command saw the secret"
    );

    // Rotation: a new value is an ordinary change, which notifies the handler; the plan
    // says only that the content differs and which secret it carries.
    age(
        &[
            "-r",
            &f.public,
            "-o",
            &f.root.join("secrets/pw.age").display().to_string(),
        ],
        b"rotated-5be1",
    );
    let (code, text) = plumb(
        "plan",
        &f.root,
        &["--secrets-identity", &id, "--connection", "local"],
    );
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("content differs (sensitive)"), "{text}");
    assert_hidden("the rotation plan", &text, &[PW, TOKEN, "rotated-5be1"]);
    let (code, text) = plumb(
        "apply",
        &f.root,
        &["--secrets-identity", &id, "--connection", "local"],
    );
    assert_eq!(code, 0, "{text}");
    assert_hidden("the rotation apply", &text, &[PW, TOKEN, "rotated-5be1"]);
    let reloads = std::fs::read_to_string(f.work.join("reloads")).expect("handler ran");
    assert_eq!(
        reloads.lines().count(),
        2,
        "the first apply and the rotation notified: {reloads}"
    );
}

#[test]
fn plumb_secrets_set_output_opens_with_age_and_ssh_keys_work_both_ways() {
    let f = fixture();
    let ssh = f.tmp.path().join("id_ed25519");
    let (code, _, err) = run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "ops@ci", "-f"])
            .arg(&ssh),
        b"",
    );
    assert_eq!(code, 0, "{err}");
    let ssh_pub = std::fs::read_to_string(ssh.with_extension("pub")).expect("pub");
    let recipients = f.root.join("environments/test/secrets/recipients.txt");
    write(&recipients, &format!("{}\n{}", f.public, ssh_pub));
    let repo = f.root.display().to_string();
    let (code, text) = plumb_secrets(
        &["set", "--repo", &repo, "--env", "test", "db_password"],
        b"from-plumb-set\n",
    );
    assert_eq!(code, 0, "{text}");
    assert_hidden("secrets set", &text, &["from-plumb-set"]);
    let file = f.root.join("environments/test/secrets/db_password.age");
    let bytes = std::fs::read(&file).expect("written");
    assert!(!String::from_utf8_lossy(&bytes).contains("from-plumb-set"));
    for key in [&f.key, &ssh] {
        let out = age(
            &[
                "-d",
                "-i",
                &key.display().to_string(),
                &file.display().to_string(),
            ],
            b"",
        );
        assert_eq!(out, "from-plumb-set\n", "age -d -i {}", key.display());
    }
    // `age -R` with an ssh key, decrypted by plumb with that key as its identity.
    let r = recipients.display().to_string();
    age(
        &[
            "-R",
            &r,
            "-o",
            &f.root.join("secrets/pw.age").display().to_string(),
        ],
        PW.as_bytes(),
    );
    age(
        &[
            "-R",
            &r,
            "-a",
            "-o",
            &f.root
                .join("environments/test/secrets/token.age")
                .display()
                .to_string(),
        ],
        TOKEN.as_bytes(),
    );
    let (code, text) = plumb(
        "apply",
        &f.root,
        &[
            "--secrets-identity",
            &ssh.display().to_string(),
            "--connection",
            "local",
        ],
    );
    assert_eq!(code, 0, "{text}");
    let conf = std::fs::read_to_string(f.work.join("app.conf")).expect("written");
    assert!(conf.contains(PW) && conf.contains(TOKEN));
    let (code, text) = plumb_secrets(
        &[
            "check",
            &repo,
            "--secrets-identity",
            &ssh.display().to_string(),
        ],
        b"",
    );
    assert_eq!(code, 0, "{text}");
}

/// Each bad input names where it is and what to do.
#[test]
fn bad_inputs_are_located_errors() {
    let f = fixture();
    let id = f.key.display().to_string();
    let validate = |expect: &[&str]| {
        let (code, out, err) = run(
            Command::new(env!("CARGO_BIN_EXE_plumb"))
                .args(["validate", "--color", "never"])
                .arg(&f.root),
            b"",
        );
        assert_eq!(code, 1, "{out}{err}");
        for e in expect {
            assert!(err.contains(e), "expected {e:?} in:\n{err}");
        }
    };
    // Missing secret: at the reference in the template.
    let tpl = f.root.join("templates/app.conf.j2");
    let good_tpl = std::fs::read_to_string(&tpl).expect("read");
    write(&tpl, &format!("{good_tpl}extra = {{{{ secrets.nope }}}}\n"));
    validate(&[
        "templates/app.conf.j2:4:",
        "no secret `nope` for environment `test`",
        "plumb secrets set --env test nope",
    ]);
    write(&tpl, &good_tpl);

    // Not encrypted to a recipient: a second recipient was added, the file not re-encrypted.
    let (_, other_pub) = keygen(f.tmp.path(), "other.txt");
    let recipients = f.root.join("environments/test/secrets/recipients.txt");
    let good_recipients = std::fs::read_to_string(&recipients).expect("read");
    write(&recipients, &format!("{good_recipients}{other_pub}\n"));
    validate(&[
        "units/app.yaml:10:22: error: step `use-token`: environments/test/secrets/token.age is not encrypted to exactly the recipients",
        "templates/app.conf.j2:2:15",
        "plumb secrets rekey",
    ]);
    let (code, text) = plumb_secrets(&["check", &f.root.display().to_string()], b"");
    assert_eq!(code, 1, "{text}");
    let (code, text) = plumb_secrets(
        &[
            "rekey",
            "--repo",
            &f.root.display().to_string(),
            "--env",
            "test",
            "--secrets-identity",
            &id,
        ],
        b"",
    );
    assert_eq!(code, 0, "{text}");
    let (code, text) = plumb_secrets(
        &[
            "check",
            &f.root.display().to_string(),
            "--secrets-identity",
            &id,
        ],
        b"",
    );
    assert_eq!(code, 0, "after rekey: {text}");
    let other = f.tmp.path().join("other.txt").display().to_string();
    let token = f
        .root
        .join("environments/test/secrets/token.age")
        .display()
        .to_string();
    assert_eq!(
        age(&["-d", "-i", &other, &token], b""),
        TOKEN,
        "the new recipient decrypts"
    );

    // A bad recipients line.
    write(
        &recipients,
        &format!("{good_recipients}ssh-rsa AAAAB3NzaC1yc2E bob\n"),
    );
    validate(&[
        "environments/test/secrets/recipients.txt:3:1",
        "`ssh-rsa` is not a supported recipient",
    ]);
    write(&recipients, &good_recipients);

    // Corrupt file.
    let pw = f.root.join("secrets/pw.age");
    let good_pw = std::fs::read(&pw).expect("read");
    std::fs::write(&pw, b"age-encryption.org/v1\n-> X25519 abc\ngarbage").expect("write");
    validate(&["secrets/pw.age", "is not a valid age file"]);
    std::fs::write(&pw, &good_pw).expect("write");

    // An environment without recipients that uses a secret.
    write(
        &f.root.join("plumb.yaml"),
        "name: s\nenvironments: [test, staging]\n",
    );
    write(
        &f.root.join("environments/staging/hosts.yaml"),
        "hosts:\n  - name: s1\n    address: 127.0.0.2\n",
    );
    validate(&[
        "templates/app.conf.j2:2:",
        "used in environment `staging`, which has no recipients",
        "environments/staging/secrets/recipients.txt",
    ]);
    std::fs::remove_dir_all(f.root.join("environments/staging")).expect("rm");
    write(
        &f.root.join("plumb.yaml"),
        "name: s\nenvironments: [test]\n",
    );

    // No identity, wrong identity, loose identity.
    let local = ["--connection", "local"];
    let (code, text) = plumb("plan", &f.root, &local);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("templates/app.conf.j2:2:")
            && text.contains("needs an identity")
            && text.contains("--secrets-identity"),
        "{text}"
    );
    let (_, stranger_pub) = keygen(f.tmp.path(), "stranger.txt");
    assert!(!stranger_pub.is_empty());
    let stranger = f.tmp.path().join("stranger.txt").display().to_string();
    let (code, text) = plumb(
        "plan",
        &f.root,
        &["--secrets-identity", &stranger, "--connection", "local"],
    );
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("secrets/pw.age cannot be decrypted with the identity"),
        "{text}"
    );
    let (code, text) = plumb_secrets(
        &[
            "check",
            &f.root.display().to_string(),
            "--secrets-identity",
            &stranger,
        ],
        b"",
    );
    assert_eq!(code, 1, "{text}");
    chmod(&f.key, 0o644);
    let (code, text) = plumb(
        "plan",
        &f.root,
        &["--secrets-identity", &id, "--connection", "local"],
    );
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("is readable by other users (mode 0644)")
            && text.contains(&format!("chmod 600 {id}")),
        "{text}"
    );
    assert!(!f.work.join("app.conf").exists(), "nothing was applied");
}

/// `secrets edit`: $EDITOR on a private file, which is gone afterwards.
#[test]
fn edit_uses_a_private_file_and_removes_it() {
    let f = fixture();
    let id = f.key.display().to_string();
    let repo = f.root.display().to_string();
    let seen = f.tmp.path().join("seen");
    // The "editor" records the file's mode and directory, then replaces the value.
    let editor = format!(
        "f() {{ stat -c %a \"$1\" > {s}; dirname \"$1\" >> {s}; printf new-value > \"$1\"; }}; f",
        s = seen.display()
    );
    let (code, out, err) = run(
        Command::new(env!("CARGO_BIN_EXE_plumb"))
            .args([
                "secrets",
                "edit",
                "--repo",
                &repo,
                "--env",
                "test",
                "token",
                "--secrets-identity",
                &id,
            ])
            .env("EDITOR", &editor)
            .env_remove("VISUAL"),
        b"",
    );
    assert_eq!(code, 0, "{out}{err}");
    let seen = std::fs::read_to_string(&seen).expect("editor ran");
    let mut lines = seen.lines();
    assert_eq!(lines.next(), Some("600"));
    let dir = lines.next().expect("dir");
    assert!(!Path::new(dir).exists(), "{dir} is removed");
    let token = f
        .root
        .join("environments/test/secrets/token.age")
        .display()
        .to_string();
    assert_eq!(age(&["-d", "-i", &id, &token], b""), "new-value");
}
