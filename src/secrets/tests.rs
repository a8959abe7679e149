//! Secrets without a host: recipients files, headers, identities, the keyring's modes, and
//! taint through a real render.

use std::path::Path;
use std::sync::Arc;

use age::secrecy::ExposeSecret;

use super::keyring::{check_file, Expected};
use super::*;
use crate::model::jail::{Jail, RepoFiles};

const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJaOGETO0ampoMwp5myxYyw09IqA5wXcTg/i6Bt9JX5p ops@example";

fn keypair() -> (String, String) {
    let id = age::x25519::Identity::generate();
    (
        id.to_string().expose_secret().to_string(),
        id.to_public().to_string(),
    )
}

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, bytes).expect("write");
}

fn identity_file(dir: &Path, secret_key: &str, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(format!("id-{mode:o}.txt"));
    std::fs::write(&p, format!("# test identity\n{secret_key}\n")).expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    p
}

fn recipients_of(text: &str) -> Recipients {
    recipients::parse("r.txt", text).expect("parses")
}

#[test]
fn recipients_parse_with_comments_and_locate_bad_lines() {
    let (_, public) = keypair();
    let r = recipients_of(&format!("# ops\n\n{public}  # alice\n{SSH_KEY}\n"));
    assert_eq!(r.list.len(), 2);
    assert_eq!(r.x25519_count(), 1);
    assert_eq!(r.ssh_tags().len(), 1);

    let errs = recipients::parse(
        "environments/prod/secrets/recipients.txt",
        &format!("{public}\n  age1notakey\nssh-rsa AAAAB3 bob\n"),
    )
    .expect_err("bad lines");
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 2, "{shown:?}");
    assert!(
        shown[0].starts_with(
            "environments/prod/secrets/recipients.txt:2:3: not a valid age X25519 recipient"
        ),
        "{shown:?}"
    );
    assert!(
        shown[1].starts_with(
            "environments/prod/secrets/recipients.txt:3:1: `ssh-rsa` is not a supported recipient"
        ),
        "{shown:?}"
    );
    let empty = recipients::parse("r.txt", "# nobody\n").expect_err("empty");
    assert!(empty[0].to_string().contains("no recipient"));
}

#[test]
fn headers_are_checked_against_exactly_the_recipients() {
    let (_, a) = keypair();
    let (_, b) = keypair();
    let both = recipients_of(&format!("{a}\n{b}\n{SSH_KEY}\n"));
    let only_a = recipients_of(&format!("{a}\n"));
    let file = identity::encrypt(b"pw", &both).expect("encrypt");
    let stanzas = header::stanzas(&file).expect("armored header");
    assert_eq!(stanzas.iter().filter(|s| !s.is_grease()).count(), 3);

    assert_eq!(
        check_file("s.age", &file, &Expected::of(&[&both]), true),
        Ok(())
    );
    // More recipients than the list: fine as a superset, not as exactly.
    assert_eq!(
        check_file("s.age", &file, &Expected::of(&[&only_a]), false),
        Ok(())
    );
    let e = check_file("s.age", &file, &Expected::of(&[&only_a]), true).expect_err("extra");
    assert_eq!(e.code(), "secret-not-to-recipients");
    // Encrypted to a but the list also has the ssh key: that key is named.
    let small = identity::encrypt(b"pw", &only_a).expect("encrypt");
    let e = check_file("s.age", &small, &Expected::of(&[&both]), false).expect_err("missing");
    assert!(e.to_string().contains("ops@example"), "{e}");
    let e =
        check_file("s.age", b"not age at all", &Expected::of(&[&both]), true).expect_err("corrupt");
    assert_eq!(e.code(), "secret-corrupt");
}

#[test]
fn identities_decrypt_refuse_strangers_and_loose_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let (key, public) = keypair();
    let (other_key, _) = keypair();
    let file = identity::encrypt(b"s3cret", &recipients_of(&public)).expect("encrypt");

    let id = SecretIdentity::load(&identity_file(dir.path(), &key, 0o600)).expect("loads");
    assert_eq!(
        &id.decrypt("s.age", &file).expect("decrypts")[..],
        b"s3cret"
    );
    let dearmored = header::dearmor(&file).expect("dearmor");
    assert_eq!(
        &id.decrypt("s.age", &dearmored).expect("binary too")[..],
        b"s3cret"
    );

    let stranger =
        SecretIdentity::load(&identity_file(dir.path(), &other_key, 0o400)).expect("loads");
    let e = stranger
        .decrypt("secrets/pw.age", &file)
        .expect_err("not a recipient");
    assert_eq!(e.code(), "secret-wrong-identity");
    assert!(e
        .to_string()
        .starts_with("secrets/pw.age cannot be decrypted with the identity"));

    let mut cut = file.clone();
    cut.truncate(file.len() - 40);
    assert_eq!(
        id.decrypt("s.age", &cut).expect_err("cut").code(),
        "secret-corrupt"
    );

    for mode in [0o640, 0o604, 0o660] {
        let e = SecretIdentity::load(&identity_file(dir.path(), &key, mode)).expect_err("loose");
        assert_eq!(e.code(), "secret-identity-permissions", "{mode:o}");
        assert_eq!(
            e.hint()
                .as_deref()
                .map(|h| h.starts_with("run `chmod 600 ")),
            Some(true)
        );
    }
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, "hello\n").expect("write");
    std::fs::set_permissions(
        &garbage,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    assert_eq!(
        SecretIdentity::load(&garbage).expect_err("garbage").code(),
        "secret-identity"
    );
}

/// A repo with one environment `prod` whose recipients are `public`, and `secrets/pw.age`.
fn repo_with_secret(public: &str, value: &[u8]) -> (tempfile::TempDir, RepoFiles) {
    let dir = tempfile::tempdir().expect("tmp");
    let r = dir.path();
    write(
        r,
        "environments/prod/secrets/recipients.txt",
        format!("{public}\n").as_bytes(),
    );
    let file = identity::encrypt(value, &recipients_of(public)).expect("encrypt");
    write(r, "secrets/pw.age", &file);
    let files = RepoFiles::new(Jail::open(r).expect("jail"));
    (dir, files)
}

#[test]
fn the_keyring_is_structural_decrypting_or_refusing() {
    let (key, public) = keypair();
    let (dir, files) = repo_with_secret(&public, b"hunter2");
    let structural = Keyring::default();
    assert!(matches!(
        structural.resolve(&files, "prod", "pw"),
        Ok(SecretValue::Placeholder)
    ));
    let e = structural
        .resolve(&files, "prod", "nope")
        .expect_err("missing");
    assert_eq!(e.code(), "secret-missing");
    assert!(e
        .to_string()
        .contains("environments/prod/secrets/nope.age nor secrets/nope.age"));
    let e = structural
        .resolve(&files, "staging", "pw")
        .expect_err("no recipients");
    assert_eq!(e.code(), "secret-no-recipients");
    let e = structural
        .resolve(&files, "prod", "../x")
        .expect_err("bad name");
    assert_eq!(e.code(), "secret-name");

    let e = Keyring::for_env("prod", None)
        .resolve(&files, "prod", "pw")
        .expect_err("no id");
    assert_eq!(e.code(), "secret-no-identity");
    let id = SecretIdentity::load(&identity_file(dir.path(), &key, 0o600)).expect("id");
    let ring = Keyring::for_env("prod", Some(Arc::new(id)));
    match ring.resolve(&files, "prod", "pw") {
        Ok(SecretValue::Plain(v)) => assert_eq!(v.as_str(), "hunter2"),
        other => panic!("{other:?}"),
    }
    // Another environment stays structural.
    assert!(matches!(
        ring.resolve(&files, "prod2", "pw"),
        Err(SecretError::NoRecipients { .. })
    ));
}

#[test]
fn an_environment_file_overrides_the_repo_wide_one() {
    let (key, public) = keypair();
    let (dir, _) = repo_with_secret(&public, b"repo-wide");
    let own = identity::encrypt(b"prod-only", &recipients_of(&public)).expect("encrypt");
    write(dir.path(), "environments/prod/secrets/pw.age", &own);
    let files = RepoFiles::new(Jail::open(dir.path()).expect("jail"));
    let id = SecretIdentity::load(&identity_file(dir.path(), &key, 0o600)).expect("id");
    match Keyring::for_env("prod", Some(Arc::new(id))).resolve(&files, "prod", "pw") {
        Ok(SecretValue::Plain(v)) => assert_eq!(v.as_str(), "prod-only"),
        other => panic!("{other:?}"),
    }
}

/// A step whose parameters or template read a secret is sensitive and names it; its
/// neighbour is not; the value reaches the resource (that is what the host gets).
#[test]
fn reading_a_secret_taints_the_step() {
    let (key, public) = keypair();
    let (dir, _) = repo_with_secret(&public, b"hunter2");
    let r = dir.path();
    write(r, "plumb.yaml", b"name: t\n");
    write(
        r,
        "environments/prod/hosts.yaml",
        b"hosts:\n  - name: h\n    address: 10.0.0.1\n",
    );
    write(
        r,
        "units/app.yaml",
        b"steps:\n  - id: conf\n    file:\n      path: /etc/app.conf\n      template: app.conf.j2\n  - id: cmd\n    command:\n      run: \"echo {{ secrets['pw'] | length }}\"\n  - id: plain\n    file:\n      path: /etc/plain\n      content: \"x\"\n",
    );
    write(r, "templates/app.conf.j2", b"password={{ secrets.pw }}\n");
    let (mut repo, diags) = crate::model::load::load(r);
    assert!(!diags.has_errors(), "{:?}", diags.into_sorted());
    let id = SecretIdentity::load(&identity_file(r, &key, 0o600)).expect("id");
    repo.secrets = Keyring::for_env("prod", Some(Arc::new(id)));
    let hosts = crate::render::render_env(&repo, "prod", None).expect("renders");
    let steps = &hosts[0].steps;
    let by = |id: &str| steps.iter().find(|s| s.address.id == id).expect("step");
    assert!(by("conf").sensitive && by("cmd").sensitive && !by("plain").sensitive);
    assert_eq!(by("conf").secrets, vec!["pw".to_string()]);
    assert!(by("plain").secrets.is_empty());
    let content = by("conf").resource.content().expect("content");
    assert_eq!(content, b"password=hunter2\n");
    let reference = crate::engine::step::StepRef::of(by("conf"));
    assert_eq!(reference.target, crate::engine::step::REDACTED);

    // Without an identity the targeted environment refuses, at the reference.
    repo.secrets = Keyring::for_env("prod", None);
    let diags = crate::render::render_env(&repo, "prod", None)
        .expect_err("no identity")
        .into_sorted();
    assert_eq!(diags[0].code, "secret-no-identity", "{diags:?}");
    assert_eq!(
        (diags[0].path.as_str(), diags[0].line),
        ("templates/app.conf.j2", 1)
    );
}

/// An error in a step that read a secret never quotes the value.
#[test]
fn errors_of_a_tainted_step_hide_the_value() {
    let (key, public) = keypair();
    let (dir, _) = repo_with_secret(&public, b"hunter2");
    let r = dir.path();
    write(r, "plumb.yaml", b"name: t\n");
    write(
        r,
        "environments/prod/hosts.yaml",
        b"hosts:\n  - name: h\n    address: 10.0.0.1\n",
    );
    write(
        r,
        "units/app.yaml",
        b"steps:\n  - id: conf\n    command:\n      run: \"true\"\n      creates: \"{{ secrets.pw }}\"\n  - id: math\n    command:\n      run: \"{{ secrets.pw + 1 }}\"\n",
    );
    let (mut repo, _) = crate::model::load::load(r);
    let id = SecretIdentity::load(&identity_file(r, &key, 0o600)).expect("id");
    repo.secrets = Keyring::for_env("prod", Some(Arc::new(id)));
    let diags = crate::render::render_env(&repo, "prod", None)
        .expect_err("invalid")
        .into_sorted();
    assert!(!diags.is_empty());
    for d in &diags {
        let text = format!("{d:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(d.message.contains("reads secret `pw`"), "{text}");
    }
}

/// What the state keeps to prune a step never holds a secret's value nor a sensitive step's
/// value: a file whose content reads a secret keeps its path; a path or a line that holds the
/// secret, and a sensitive line, keep nothing (they are reported orphaned, never removed);
/// the managed rows written for them hold no such value.
#[test]
fn prune_parameters_never_hold_a_secret_or_a_sensitive_value() {
    use crate::prune::{Managed, Removal, SECRET_IDENTITY, SENSITIVE_VALUE};
    let (key, public) = keypair();
    let (dir, _) = repo_with_secret(&public, b"hunter2");
    let r = dir.path();
    write(r, "plumb.yaml", b"name: t\n");
    write(
        r,
        "environments/prod/hosts.yaml",
        b"hosts:\n  - name: h\n    address: 10.0.0.1\n",
    );
    write(
        r,
        "units/app.yaml",
        b"prune: true\nsteps:\n  - id: conf\n    file:\n      path: /etc/app.conf\n      template: app.conf.j2\n  - id: leak\n    file:\n      path: \"/etc/{{ secrets.pw }}\"\n      content: x\n  - id: pwline\n    line:\n      path: /etc/x\n      line: \"pw={{ secrets.pw }}\"\n  - id: quiet\n    sensitive: true\n    line:\n      path: /etc/y\n      line: \"token=literal-token\"\n",
    );
    write(r, "templates/app.conf.j2", b"password={{ secrets.pw }}\n");
    let (mut repo, diags) = crate::model::load::load(r);
    assert!(!diags.has_errors(), "{:?}", diags.into_sorted());
    let id = SecretIdentity::load(&identity_file(r, &key, 0o600)).expect("id");
    repo.secrets = Keyring::for_env("prod", Some(Arc::new(id)));
    let hosts = crate::render::render_env(&repo, "prod", None).expect("renders");
    let managed = Managed::declared(&hosts[0]);
    let by = |id: &str| {
        managed
            .iter()
            .find(|m| m.address == format!("app/{id}"))
            .expect("managed")
    };
    assert_eq!(
        by("conf").removal,
        Removal::Absent {
            params: serde_json::json!({"path": "/etc/app.conf", "state": "absent"})
        }
    );
    for (step, why) in [
        ("leak", SECRET_IDENTITY),
        ("pwline", SECRET_IDENTITY),
        ("quiet", SENSITIVE_VALUE),
    ] {
        assert_eq!(
            by(step).removal,
            Removal::Never { reason: why.into() },
            "{step}"
        );
    }
    // Recorded as a run would: no secret nor sensitive value in any managed row.
    let state = tempfile::tempdir().expect("tmp");
    let db = crate::state::StateDb::open(&state.path().join("s")).expect("state");
    let run = db
        .begin_run(&crate::state::tests::new_run(crate::state::RunKind::Apply))
        .expect("run");
    let outcomes = hosts[0]
        .steps
        .iter()
        .map(|s| crate::engine::StepOutcome {
            step: crate::engine::StepRef::of(s),
            status: crate::engine::StepStatus::InSync,
            change: None,
            error: None,
            duration_ms: 0,
        })
        .collect();
    let host = crate::engine::HostRun {
        steps: outcomes,
        ..crate::state::tests::host_run("h", 0, crate::engine::HostStatus::Converged)
    };
    db.record_host(&run, &host, &Default::default(), &managed)
        .expect("records");
    let rows: Vec<String> = db
        .conn()
        .prepare("SELECT address || target || prune FROM managed_resources")
        .expect("sql")
        .query_map([], |r| r.get(0))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(rows.len(), 4);
    for row in rows {
        assert!(
            !row.contains("hunter2") && !row.contains("literal-token"),
            "{row}"
        );
    }
}
