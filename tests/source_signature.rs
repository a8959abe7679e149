//! One commit's signature: plumb's verdict against `git verify-commit`'s, case by case.

#[path = "source_support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;

use git2::Oid;
use plumb::source::Reason;
use support::Fx;

/// Writes a commit object from raw text and returns its id.
fn write_commit(fx: &Fx, repo: &Path, text: &str) -> Oid {
    let f = fx.path("object.txt");
    std::fs::write(&f, text).unwrap();
    let id = fx.git(
        repo,
        &["hash-object", "-t", "commit", "-w", &f.to_string_lossy()],
    );
    Oid::from_str(id.trim()).unwrap()
}

/// Signs `payload` with `ssh-keygen -Y sign -n namespace` and inserts the signature as the
/// commit's `gpgsig` header (what `git commit -S` does, but with any namespace).
fn graft_signature(fx: &Fx, repo: &Path, payload: &str, key: &Path, namespace: &str) -> Oid {
    let data = fx.path("payload");
    std::fs::write(&data, payload).unwrap();
    let sig_path = fx.path("payload.sig");
    let _ = std::fs::remove_file(&sig_path);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", namespace, "-f"])
        .arg(key)
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sig = std::fs::read_to_string(&sig_path).unwrap();
    let header = format!("gpgsig {}\n", sig.trim_end().replace('\n', "\n "));
    let (head, body) = payload.split_once("\n\n").unwrap();
    write_commit(fx, repo, &format!("{head}\n{header}\n{body}"))
}

fn setup() -> (Fx, std::path::PathBuf, std::path::PathBuf) {
    let fx = Fx::new();
    let key = fx.key("alice", "ed25519", None);
    let repo = fx.init("repo", false);
    (fx, repo, key)
}

#[test]
fn good_ed25519_signature() {
    let (fx, repo, key) = setup();
    let id = fx.commit(&repo, "one", Some(&key));
    let signers = fx.signers("as", &format!("alice@example.com {}\n", fx.pubkey(&key)));
    let s = fx.assert_parity(&repo, id, &signers, None).unwrap();
    assert_eq!(s.principal, "alice@example.com");
    assert_eq!(s.fingerprint, fx.fingerprint(&key));
    assert_eq!(s.key_type, "ssh-ed25519");
    assert_eq!(s.line, 1);
}

#[test]
fn good_ecdsa_and_rsa_signatures() {
    let fx = Fx::new();
    let repo = fx.init("repo", false);
    for (name, kind, bits, ty) in [
        ("p256", "ecdsa", Some(256), "ecdsa-sha2-nistp256"),
        ("p384", "ecdsa", Some(384), "ecdsa-sha2-nistp384"),
        ("p521", "ecdsa", Some(521), "ecdsa-sha2-nistp521"),
        ("rsa", "rsa", Some(3072), "ssh-rsa"),
    ] {
        let key = fx.key(name, kind, bits);
        let id = fx.commit(&repo, name, Some(&key));
        let signers = fx.signers(name, &format!("{name}@example.com {}\n", fx.pubkey(&key)));
        let s = fx.assert_parity(&repo, id, &signers, None).unwrap();
        assert_eq!(s.key_type, ty);
        assert_eq!(s.fingerprint, fx.fingerprint(&key));
        // And another key's file does not accept it.
        let other = fx.key(&format!("{name}-other"), "ed25519", None);
        let wrong = fx.signers("wrong", &format!("x {}\n", fx.pubkey(&other)));
        let _ = fx.assert_parity(&repo, id, &wrong, Some(Reason::UnknownKey));
    }
}

#[test]
fn unknown_key() {
    let (fx, repo, key) = setup();
    let mallory = fx.key("mallory", "ed25519", None);
    let id = fx.commit(&repo, "one", Some(&mallory));
    let signers = fx.signers("as", &format!("alice@example.com {}\n", fx.pubkey(&key)));
    let f = fx
        .assert_parity(&repo, id, &signers, Some(Reason::UnknownKey))
        .unwrap_err();
    assert!(f.detail.contains(&fx.fingerprint(&mallory)), "{f}");
}

#[test]
fn unsigned_commit() {
    let (fx, repo, key) = setup();
    let id = fx.commit(&repo, "one", None);
    let signers = fx.signers("as", &format!("alice@example.com {}\n", fx.pubkey(&key)));
    let _ = fx.assert_parity(&repo, id, &signers, Some(Reason::Unsigned));
}

#[test]
fn tampered_commit() {
    let (fx, repo, key) = setup();
    let id = fx.commit(&repo, "deploy v1", Some(&key));
    let signers = fx.signers("as", &format!("alice@example.com {}\n", fx.pubkey(&key)));
    let _ = fx.assert_parity(&repo, id, &signers, None);
    let raw = fx.git(&repo, &["cat-file", "commit", &id.to_string()]);
    assert!(raw.contains("-----BEGIN SSH SIGNATURE-----"));
    let evil = write_commit(&fx, &repo, &raw.replace("deploy v1", "deploy v2"));
    assert_ne!(evil, id);
    let _ = fx.assert_parity(&repo, evil, &signers, Some(Reason::BadSignature));
}

#[test]
fn wrong_signature_namespace() {
    let (fx, repo, key) = setup();
    let unsigned = fx.commit(&repo, "one", None);
    let payload = fx.git(&repo, &["cat-file", "commit", &unsigned.to_string()]);
    let signers = fx.signers("as", &format!("alice@example.com {}\n", fx.pubkey(&key)));
    // Control: the graft itself is right (namespace git verifies).
    let good = graft_signature(&fx, &repo, &payload, &key, "git");
    let _ = fx.assert_parity(&repo, good, &signers, None);
    let file_ns = graft_signature(&fx, &repo, &payload, &key, "file");
    let f = fx
        .assert_parity(&repo, file_ns, &signers, Some(Reason::NamespaceNotAllowed))
        .unwrap_err();
    assert!(f.detail.contains("\"file\""), "{f}");
}

#[test]
fn namespaces_option() {
    let (fx, repo, key) = setup();
    let id = fx.commit(&repo, "one", Some(&key));
    let pk = fx.pubkey(&key);
    for (opt, expected) in [
        ("namespaces=\"file\"", Some(Reason::NamespaceNotAllowed)),
        ("namespaces=\"file,git\"", None),
        ("namespaces=\"g*\"", None),
        ("namespaces=\"*,!git\"", Some(Reason::NamespaceNotAllowed)),
    ] {
        let signers = fx.signers("as", &format!("alice@example.com {opt} {pk}\n"));
        let _ = fx.assert_parity(&repo, id, &signers, expected);
    }
}

#[test]
fn validity_windows_use_the_committer_time() {
    let (fx, repo, key) = setup();
    let pk = fx.pubkey(&key);
    // Committed in 2020: a key that expired in 2021 was valid then (as git judges it).
    let id = fx.commit_at(&repo, "old", Some(&key), "2020-06-01T12:00:00Z");
    for (opt, expected) in [
        ("valid-before=\"20210101\"", None),
        ("valid-after=\"20200101\",valid-before=\"20210101Z\"", None),
        ("valid-before=\"20200101\"", Some(Reason::Expired)),
        ("valid-after=\"20200602\"", Some(Reason::NotYetValid)),
        ("valid-after=\"202006011200\"", None),
        ("valid-after=\"20200601120001\"", Some(Reason::NotYetValid)),
        ("valid-before=\"20200601120000Z\"", None),
        ("valid-before=\"20200601115959Z\"", Some(Reason::Expired)),
    ] {
        eprintln!("{opt}");
        let signers = fx.signers("as", &format!("alice@example.com {opt} {pk}\n"));
        let _ = fx.assert_parity(&repo, id, &signers, expected);
    }
}

#[test]
fn valid_before_in_the_past_and_valid_after_in_the_future() {
    let (fx, repo, key) = setup();
    let pk = fx.pubkey(&key);
    let id = fx.commit(&repo, "now", Some(&key)); // 2024-06-01
    let signers = fx.signers("as", &format!("a@x valid-before=\"20240101\" {pk}\n"));
    let _ = fx.assert_parity(&repo, id, &signers, Some(Reason::Expired));
    let signers = fx.signers("as", &format!("a@x valid-after=\"20990101\" {pk}\n"));
    let _ = fx.assert_parity(&repo, id, &signers, Some(Reason::NotYetValid));
}

#[test]
fn first_valid_line_gives_the_principal() {
    let (fx, repo, key) = setup();
    let pk = fx.pubkey(&key);
    let id = fx.commit(&repo, "one", Some(&key));
    let text = format!(
        "# rotated\nold@x valid-before=\"20240101\" {pk}\n\nnew@x,other@x {pk} comment here\n"
    );
    let signers = fx.signers("as", &text);
    let s = fx.assert_parity(&repo, id, &signers, None).unwrap();
    assert_eq!((s.principal.as_str(), s.line), ("new@x", 4));
}

#[test]
fn principal_patterns_as_ssh_keygen_matches_them() {
    let (fx, repo, key) = setup();
    let pk = fx.pubkey(&key);
    let id = fx.commit(&repo, "one", Some(&key));
    for (principals, expected) in [
        ("*@example.com", None),
        ("!c,*", None),
        ("\"Alice Smith,a@x\"", None),
        ("!test@example.com", Some(Reason::UnknownKey)),
        ("c,!*", Some(Reason::UnknownKey)),
    ] {
        eprintln!("{principals}");
        let signers = fx.signers("as", &format!("{principals} {pk}\n"));
        let _ = fx.assert_parity(&repo, id, &signers, expected);
    }
}

#[test]
fn malformed_file_names_the_position() {
    let fx = Fx::new();
    let key = fx.key("alice", "ed25519", None);
    let p = fx.signers(
        "allowed_signers",
        &format!(
            "ok@x {}\nbad@x namespace=\"git\" {}\n",
            fx.pubkey(&key),
            fx.pubkey(&key)
        ),
    );
    let e = plumb::source::AllowedSigners::load(&p).unwrap_err();
    assert_eq!(e.code(), "allowed-signers-syntax");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "{}:2:7: unknown option \"namespace\"",
            p.display()
        )),
        "{msg}"
    );
    assert!(
        msg.contains("namespaces=\\\"git\\\"") || msg.contains("namespaces=\"git\""),
        "{msg}"
    );
}

/// A raw commit object (`git cat-file commit`, as a host's probe returns it) splits into the
/// same signature and payload libgit2 extracts, and gets the same verdict.
#[test]
fn a_raw_commit_object_splits_and_verifies_like_the_repository_copy() {
    let fx = Fx::new();
    let key = fx.key("alice", "ed25519", None);
    let repo = fx.init("repo", false);
    let signers = fx.signers("as", &format!("alice@example.com {}\n", fx.pubkey(&key)));
    let signed = fx.commit(&repo, "signed", Some(&key));
    let unsigned = fx.commit(&repo, "unsigned", None);
    let r = git2::Repository::open(&repo).unwrap();
    let trust = plumb::source::Trust::ssh(plumb::source::AllowedSigners::load(&signers).unwrap());
    let raw = |id: git2::Oid| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["cat-file", "commit", &id.to_string()])
            .output()
            .unwrap()
            .stdout
    };
    let (sig, payload, time) = plumb::source::signature::split_raw_commit(&raw(signed)).unwrap();
    let (want_sig, want_payload) = r.extract_signature(&signed, None).unwrap();
    // git keeps the armor's last newline, libgit2 drops it; the armor is the same.
    assert_eq!(sig.strip_suffix(b"\n").unwrap_or(&sig), &*want_sig);
    assert_eq!(payload, &*want_payload);
    assert_eq!(
        time,
        r.find_commit(signed).unwrap().committer().when().seconds()
    );
    let signer = plumb::source::signature::verify_raw_commit(&raw(signed), &trust).unwrap();
    assert_eq!(signer.principal, "alice@example.com");
    let f = plumb::source::signature::verify_raw_commit(&raw(unsigned), &trust).unwrap_err();
    assert_eq!(f.reason, Reason::Unsigned);
    // One byte of the payload changed: a bad signature, never accepted.
    let mut tampered = raw(signed);
    let at = tampered.len() - 2;
    tampered[at] ^= 1;
    let f = plumb::source::signature::verify_raw_commit(&tampered, &trust).unwrap_err();
    assert_eq!(f.reason, Reason::BadSignature, "{f:?}");
    assert!(plumb::source::signature::split_raw_commit(b"no header break").is_none());
}
