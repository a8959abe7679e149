//! `plumb verify`: exit codes, text and JSON.

#[path = "source_support/mod.rs"]
mod support;

use assert_cmd::Command;
use support::Fx;

fn plumb() -> Command {
    Command::cargo_bin("plumb").unwrap()
}

#[test]
fn verify_cli() {
    let fx = Fx::new();
    let key = fx.key("alice", "ed25519", None);
    let repo = fx.init("repo", false);
    let signers = fx.signers("as", &format!("alice@example.com {}\n", fx.pubkey(&key)));
    let c1 = fx.commit(&repo, "first change", Some(&key));
    let c2 = fx.commit(&repo, "second change", Some(&key));
    let fp = fx.fingerprint(&key);

    // REV alone (HEAD by default).
    let out = plumb()
        .arg("verify")
        .arg(&repo)
        .arg("--allowed-signers")
        .arg(&signers)
        .assert()
        .code(0);
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(text.contains(&c2.to_string()[..7]), "{text}");
    assert!(
        text.contains("second change  signed by alice@example.com"),
        "{text}"
    );
    assert!(text.contains(&fp), "{text}");

    // A range, from a bare clone, JSON.
    let bare = fx.path("bare.git");
    fx.git(
        fx.dir.path(),
        &[
            "clone",
            "-q",
            "--bare",
            &repo.to_string_lossy(),
            &bare.to_string_lossy(),
        ],
    );
    let c3 = fx.commit(&repo, "unsigned change", None);
    let out = plumb()
        .arg("verify")
        .arg(&bare)
        .args(["--allowed-signers"])
        .arg(&signers)
        .args(["--from", &c1.to_string(), "main", "--output", "json"])
        .assert()
        .code(0);
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["commits"].as_array().unwrap().len(), 1);
    assert_eq!(v["commits"][0]["id"], c2.to_string());
    assert_eq!(v["commits"][0]["signer"]["fingerprint"], fp.as_str());

    // The unsigned commit: exit 1, named by short id and subject.
    let out = plumb()
        .arg("verify")
        .arg(&repo)
        .arg("--allowed-signers")
        .arg(&signers)
        .args(["--from", &c1.to_string()])
        .assert()
        .code(1);
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(
        text.contains(&format!(
            "commit {} \"unsigned change\": unsigned:",
            &c3.to_string()[..7]
        )),
        "{text}"
    );
    let out = plumb()
        .arg("verify")
        .arg(&repo)
        .arg("--allowed-signers")
        .arg(&signers)
        .args(["--output", "json"])
        .assert()
        .code(1);
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["failure"]["reason"], "unsigned");
    assert_eq!(v["failure"]["id"], c3.to_string());

    // --from not an ancestor of REV.
    let out = plumb()
        .arg("verify")
        .arg(&repo)
        .arg("--allowed-signers")
        .arg(&signers)
        .args([
            "--from",
            &c2.to_string(),
            &c1.to_string(),
            "--output",
            "json",
        ])
        .assert()
        .code(1);
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["failure"]["reason"], "not-descendant");

    // Errors exit 1 with a message: bad allowed-signers line, unknown revision.
    let broken = fx.signers("broken", "alice@example.com ssh-ed25519\n");
    let out = plumb()
        .arg("verify")
        .arg(&repo)
        .arg("--allowed-signers")
        .arg(&broken)
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains(&format!("{}:1:", broken.display())), "{err}");
    let out = plumb()
        .arg("verify")
        .arg(&repo)
        .arg("--allowed-signers")
        .arg(&signers)
        .arg("no-such-branch")
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(err.contains("no-such-branch"), "{err}");
}

/// `plumb verify --explain` with SSH signatures: each commit gets its format, key and the
/// allowed-signers line (FILE:LINE and its text, the key shortened) that admitted it; a
/// commit admitted by a second line names that line; without `--explain` none of it.
#[test]
fn verify_explain_names_the_allowed_signers_line() {
    let fx = Fx::new();
    let alice = fx.key("alice", "ed25519", None);
    let bob = fx.key("bob", "ecdsa", None);
    let repo = fx.init("repo", false);
    let signers = fx.signers(
        "as",
        &format!(
            "# team\nalice@example.com {}\nbob@example.com namespaces=\"git\" {}\n",
            fx.pubkey(&alice),
            fx.pubkey(&bob)
        ),
    );
    let c0 = fx.commit(&repo, "base", Some(&alice));
    let c1 = fx.commit(&repo, "by alice", Some(&alice));
    let c2 = fx.commit(&repo, "by bob", Some(&bob));
    let from = c0.to_string();
    let out = plumb()
        .arg("verify")
        .arg(&repo)
        .arg("--allowed-signers")
        .arg(&signers)
        .args(["--from", &from, "--explain"])
        .assert()
        .code(0);
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    let alice_key: String = fx.pubkey(&alice).split_whitespace().nth(1).unwrap()[..24].into();
    let bob_key: String = fx.pubkey(&bob).split_whitespace().nth(1).unwrap()[..24].into();
    let want = format!(
        "{c1s} by alice  signed by alice@example.com (ssh-ed25519 {fa})\n\
         \x20 format: ssh\n\
         \x20 key: ssh-ed25519 {fa}\n\
         \x20 admitted by: {file}:2\n\
         \x20   alice@example.com ssh-ed25519 {alice_key}... alice\n\
         {c2s} by bob  signed by bob@example.com (ecdsa-sha2-nistp256 {fb})\n\
         \x20 format: ssh\n\
         \x20 key: ecdsa-sha2-nistp256 {fb}\n\
         \x20 admitted by: {file}:3\n\
         \x20   bob@example.com namespaces=\"git\" ecdsa-sha2-nistp256 {bob_key}... bob\n\
         ok: 2 commit(s) verified\n",
        c1s = &c1.to_string()[..7],
        c2s = &c2.to_string()[..7],
        fa = fx.fingerprint(&alice),
        fb = fx.fingerprint(&bob),
        file = signers.display(),
    );
    assert_eq!(text, want);

    // Without --explain: the one line per commit only.
    let out = plumb()
        .arg("verify")
        .arg(&repo)
        .arg("--allowed-signers")
        .arg(&signers)
        .args(["--from", &from])
        .assert()
        .code(0);
    let plain = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(!plain.contains("admitted by"), "{plain}");
    assert_eq!(plain.lines().count(), 3, "{plain}");

    // JSON carries the same facts (the trust root as FILE:LINE).
    let out = plumb()
        .arg("verify")
        .arg(&repo)
        .arg("--allowed-signers")
        .arg(&signers)
        .args(["--from", &from, "--explain", "--output", "json"])
        .assert()
        .code(0);
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["commits"][1]["signer"]["format"], "ssh", "{v:#}");
    assert_eq!(
        v["commits"][1]["signer"]["trust_root"],
        format!("{}:3", signers.display()),
        "{v:#}"
    );

    // A commit that fails: --explain still names it, reason first.
    let c3 = fx.commit(&repo, "unsigned", None);
    let out = plumb()
        .arg("verify")
        .arg(&repo)
        .arg("--allowed-signers")
        .arg(&signers)
        .args(["--from", &c2.to_string(), "--explain"])
        .assert()
        .code(1);
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    assert!(
        text.starts_with(&format!(
            "commit {} \"unsigned\": unsigned:",
            &c3.to_string()[..7]
        )),
        "{text}"
    );
}
