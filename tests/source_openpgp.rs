//! OpenPGP commit signatures: plumb's verdict against `git verify-commit` with gpg, case by
//! case, with every git on the machine. Keys are made at test time with
//! `gpg --batch --quick-gen-key` (some at a faked system time, to place key expiry before a
//! commit); the same exported keyring is plumb's trust root and gpg's only keyring.

#[path = "source_support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use git2::Oid;
use plumb::source::{Failure, Keyring, Reason, SignatureFormat, Signer, Trust};
use support::{gits, Fx};

/// A GnuPG home holding the signers' secret keys.
struct Gpg {
    fx: Fx,
    home: PathBuf,
}

fn run(c: &mut Command, what: &str) -> String {
    let out = c.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Gpg {
    fn new() -> Gpg {
        let fx = Fx::new();
        let home = fx.path("gnupg");
        std::fs::create_dir_all(&home).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        Gpg { fx, home }
    }

    /// `gpg` in `home`, at the faked system time `at` (`YYYYMMDDTHHMMSS`) when given.
    fn gpg(&self, home: &Path, at: Option<&str>) -> Command {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", home)
            .args([
                "--batch",
                "--no-tty",
                "--quiet",
                "--pinentry-mode",
                "loopback",
            ])
            .args(["--passphrase", ""]);
        if let Some(t) = at {
            c.args(["--faked-system-time", t]);
        }
        c
    }

    /// A new key `uid` (algorithm `algo`, usage `usage`), made at `at`; its fingerprint.
    fn key(&self, uid: &str, algo: &str, usage: &str, at: Option<&str>) -> String {
        run(
            self.gpg(&self.home, at)
                .args(["--quick-gen-key", uid, algo, usage, "never"]),
            "gpg --quick-gen-key",
        );
        self.fingerprints(uid)[0].clone()
    }

    /// Primary then subkey fingerprints of `uid`.
    fn fingerprints(&self, uid: &str) -> Vec<String> {
        let out = run(
            self.gpg(&self.home, None)
                .args(["--with-colons", "--list-keys", uid]),
            "gpg --list-keys",
        );
        out.lines()
            .filter_map(|l| l.strip_prefix("fpr:"))
            .map(|l| l.trim_matches(':').to_string())
            .collect()
    }

    /// Exports `fprs` (public) into a keyring file named `name`.
    fn keyring(&self, name: &str, fprs: &[&str]) -> PathBuf {
        let out = run(
            self.gpg(&self.home, None)
                .args(["--export", "--armor"])
                .args(fprs),
            "gpg --export",
        );
        let p = self.fx.path(name);
        std::fs::write(&p, out).unwrap();
        p
    }

    /// A commit signed by `signing_key` with gpg at faked time `at` (and that committer date).
    fn commit(&self, repo: &Path, msg: &str, signing_key: &str, at: Option<&str>) -> Oid {
        let wrapper = self.fx.path(&format!("gpg-{}", at.unwrap_or("now")));
        let fake = at.map_or(String::new(), |t| format!("--faked-system-time {t} "));
        std::fs::write(
            &wrapper,
            format!("#!/bin/sh\nexec gpg --batch --pinentry-mode loopback --passphrase '' --ignore-time-conflict {fake}\"$@\"\n"),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let date = match at {
            Some(t) => format!(
                "{}-{}-{}T{}:{}:{}Z",
                &t[0..4],
                &t[4..6],
                &t[6..8],
                &t[9..11],
                &t[11..13],
                &t[13..15]
            ),
            None => format!(
                "{} +0000",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
            ),
        };
        let file = msg.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        std::fs::write(repo.join(&file), msg).unwrap();
        self.fx.git(repo, &["add", "--", &file]);
        let mut c = self.fx.git_cmd(Path::new("git"), repo, &date);
        c.env("GNUPGHOME", &self.home)
            .args(["-c", "gpg.format=openpgp", "-c"])
            .arg(format!("gpg.program={}", wrapper.display()))
            .arg("-c")
            .arg(format!("user.signingkey={signing_key}!"))
            .args(["commit", "-q", "-S", "-m", msg]);
        run(&mut c, "git commit -S");
        self.fx.head(repo)
    }

    /// `git verify-commit` with a fresh GnuPG home that holds only `keyring`, for every git.
    fn git_verify(&self, repo: &Path, id: Oid, keyring: &Path) -> bool {
        let home = tempfile::tempdir().unwrap();
        run(
            self.gpg(home.path(), None).arg("--import").arg(keyring),
            "gpg --import",
        );
        let verdicts: Vec<(PathBuf, bool, String)> = gits()
            .into_iter()
            .map(|g| {
                let out = self
                    .fx
                    .git_cmd(&g, repo, "2024-06-01T12:00:00Z")
                    .env("GNUPGHOME", home.path())
                    .args(["verify-commit", &id.to_string()])
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                let err = String::from_utf8_lossy(&out.stderr).into_owned();
                (g, out.status.success(), err)
            })
            .collect();
        for (g, v, err) in &verdicts {
            assert_eq!(*v, verdicts[0].1, "{} disagrees: {err}", g.display());
        }
        eprintln!("git verify-commit: {}", verdicts[0].2.trim());
        verdicts[0].1
    }

    fn plumb_verify(&self, repo: &Path, id: Oid, keyring: &Path) -> Result<Signer, Failure> {
        let trust = Trust {
            openpgp: Some(Keyring::load(keyring).unwrap()),
            ..Trust::default()
        };
        let r = git2::Repository::open(repo).unwrap();
        plumb::source::signature::verify_commit(&r, id, &trust).unwrap()
    }

    /// plumb's verdict is `expected` (None = good) and every git agrees.
    fn parity(
        &self,
        repo: &Path,
        id: Oid,
        keyring: &Path,
        expected: Option<Reason>,
    ) -> Result<Signer, Failure> {
        let plumb = self.plumb_verify(repo, id, keyring);
        assert_eq!(
            plumb.as_ref().err().map(|f| f.reason),
            expected,
            "plumb: {plumb:?}"
        );
        let git = self.git_verify(repo, id, keyring);
        assert_eq!(git, plumb.is_ok(), "git says {git}, plumb says {plumb:?}");
        plumb
    }
}

#[test]
fn good_primary_keys_ed25519_and_rsa() {
    let g = Gpg::new();
    let repo = g.fx.init("repo", false);
    for (uid, algo) in [
        ("Alice <alice@example.com>", "ed25519"),
        ("Rita <rita@example.com>", "rsa3072"),
    ] {
        let fpr = g.key(uid, algo, "sign", None);
        let id = g.commit(&repo, uid, &fpr, None);
        let ring = g.keyring(&format!("{algo}.asc"), &[&fpr]);
        let s = g.parity(&repo, id, &ring, None).unwrap();
        assert_eq!(s.principal, uid);
        assert_eq!(s.fingerprint, fpr);
        assert_eq!(s.format, SignatureFormat::Openpgp);
        assert_eq!(s.signing_key, None);
        assert_eq!(s.trust_root, format!("{}:1", ring.display()));
    }
}

#[test]
fn signing_subkey_of_a_certify_only_primary() {
    let g = Gpg::new();
    let repo = g.fx.init("repo", false);
    let primary = g.key("Bob <bob@example.com>", "ed25519", "cert", None);
    run(
        g.gpg(&g.home, None)
            .args(["--quick-add-key", &primary, "ed25519", "sign", "never"]),
        "gpg --quick-add-key",
    );
    let fprs = g.fingerprints(&primary);
    let sub = fprs[1].clone();
    let id = g.commit(&repo, "by the subkey", &sub, None);
    let ring = g.keyring("bob.asc", &[&primary]);
    let s = g.parity(&repo, id, &ring, None).unwrap();
    assert_eq!(s.fingerprint, primary);
    assert_eq!(s.signing_key.as_deref(), Some(sub.as_str()));
    assert_eq!(s.principal, "Bob <bob@example.com>");
}

#[test]
fn unknown_key_and_tampered_commit() {
    let g = Gpg::new();
    let repo = g.fx.init("repo", false);
    let alice = g.key("Alice <alice@example.com>", "ed25519", "sign", None);
    let mallory = g.key("Mallory <m@example.com>", "ed25519", "sign", None);
    let id = g.commit(&repo, "deploy v1", &mallory, None);
    let ring = g.keyring("alice.asc", &[&alice]);
    let f = g
        .parity(&repo, id, &ring, Some(Reason::UnknownKey))
        .unwrap_err();
    assert!(f.detail.contains(&mallory), "{f}");

    let good = g.commit(&repo, "deploy v2", &alice, None);
    let _ = g.parity(&repo, good, &ring, None);
    let raw = g.fx.git(&repo, &["cat-file", "commit", &good.to_string()]);
    assert!(raw.contains("-----BEGIN PGP SIGNATURE-----"));
    let f = g.fx.path("evil.txt");
    std::fs::write(&f, raw.replace("deploy v2", "deploy v3")).unwrap();
    let evil = g.fx.git(
        &repo,
        &["hash-object", "-t", "commit", "-w", &f.to_string_lossy()],
    );
    let evil = Oid::from_str(evil.trim()).unwrap();
    let _ = g.parity(&repo, evil, &ring, Some(Reason::BadSignature));
}

#[test]
fn key_expired_before_the_commit() {
    let g = Gpg::new();
    let repo = g.fx.init("repo", false);
    let fpr = g.key(
        "Eve <eve@example.com>",
        "ed25519",
        "sign",
        Some("20200101T000000"),
    );
    // Signed on Jan 5 while the key had no expiry yet...
    let id = g.commit(&repo, "late", &fpr, Some("20200105T120000"));
    // ...then a newer self-signature (Jan 2) says the key expired on Jan 3.
    run(
        g.gpg(&g.home, Some("20200102T000000"))
            .args(["--quick-set-expire", &fpr, "1d"]),
        "gpg --quick-set-expire",
    );
    let ring = g.keyring("eve.asc", &[&fpr]);
    let f = g
        .parity(&repo, id, &ring, Some(Reason::Expired))
        .unwrap_err();
    assert!(f.detail.contains(&fpr), "{f}");
}

#[test]
fn key_created_after_the_commit_time_is_not_yet_valid() {
    let g = Gpg::new();
    let repo = g.fx.init("repo", false);
    let fpr = g.key(
        "Ned <ned@example.com>",
        "ed25519",
        "sign",
        Some("20200110T000000"),
    );
    let id = g.commit(&repo, "early", &fpr, Some("20200105T120000"));
    let ring = g.keyring("ned.asc", &[&fpr]);
    let _ = g.parity(&repo, id, &ring, Some(Reason::NotYetValid));
}

#[test]
fn revoked_key() {
    let g = Gpg::new();
    let repo = g.fx.init("repo", false);
    let fpr = g.key("Rob <rob@example.com>", "ed25519", "sign", None);
    let id = g.commit(&repo, "before revocation", &fpr, None);
    let ring = g.keyring("rob.asc", &[&fpr]);
    let _ = g.parity(&repo, id, &ring, None);
    // gpg's pre-made revocation certificate (reason "no reason specified": a hard revocation).
    let cert = std::fs::read_to_string(g.home.join(format!("openpgp-revocs.d/{fpr}.rev")))
        .unwrap()
        .replace(
            ":-----BEGIN PGP PUBLIC KEY BLOCK-----",
            "-----BEGIN PGP PUBLIC KEY BLOCK-----",
        );
    let rev = g.fx.path("rob.rev");
    std::fs::write(&rev, cert).unwrap();
    run(
        g.gpg(&g.home, None).arg("--import").arg(&rev),
        "gpg --import rev",
    );
    let ring = g.keyring("rob-revoked.asc", &[&fpr]);
    let _ = g.parity(&repo, id, &ring, Some(Reason::Revoked));
}

#[test]
fn wrong_key_type_ssh_signature_or_x509() {
    let g = Gpg::new();
    let repo = g.fx.init("repo", false);
    let fpr = g.key("Alice <alice@example.com>", "ed25519", "sign", None);
    let ring = g.keyring("alice.asc", &[&fpr]);
    // An SSH-signed commit when only an OpenPGP keyring is the trust root.
    let ssh = g.fx.key("ssh", "ed25519", None);
    let id = g.fx.commit(&repo, "ssh signed", Some(&ssh));
    let f = g
        .parity(&repo, id, &ring, Some(Reason::UnknownKey))
        .unwrap_err();
    assert!(f.detail.contains("no allowed-signers file"), "{f}");
    // An X.509 (gpgsm) signature header.
    let unsigned = g.fx.commit(&repo, "x509", None);
    let raw =
        g.fx.git(&repo, &["cat-file", "commit", &unsigned.to_string()]);
    let (head, body) = raw.split_once("\n\n").unwrap();
    let text = format!(
        "{head}\ngpgsig -----BEGIN SIGNED MESSAGE-----\n MIAGCSqGSIb3DQEHAqCAMIACAQEx\n -----END SIGNED MESSAGE-----\n\n{body}"
    );
    let f = g.fx.path("x509.txt");
    std::fs::write(&f, text).unwrap();
    let x509 = g.fx.git(
        &repo,
        &["hash-object", "-t", "commit", "-w", &f.to_string_lossy()],
    );
    let x509 = Oid::from_str(x509.trim()).unwrap();
    let _ = g.parity(&repo, x509, &ring, Some(Reason::NotSshOrOpenpgp));
}

/// The documented difference: gpg judges expiry at verification time, plumb at the commit
/// time. A commit signed while the key was valid stays valid for plumb after the key expires.
#[test]
fn expiry_is_judged_at_the_commit_time_unlike_gpg() {
    let g = Gpg::new();
    let repo = g.fx.init("repo", false);
    let fpr = g.key(
        "Old <old@example.com>",
        "ed25519",
        "sign",
        Some("20200101T000000"),
    );
    run(
        g.gpg(&g.home, Some("20200102T000000"))
            .args(["--quick-set-expire", &fpr, "1y"]),
        "gpg --quick-set-expire",
    );
    let id = g.commit(&repo, "while valid", &fpr, Some("20200105T120000"));
    let ring = g.keyring("old.asc", &[&fpr]);
    assert!(g.plumb_verify(&repo, id, &ring).is_ok());
    assert!(
        !g.git_verify(&repo, id, &ring),
        "gpg reports EXPKEYSIG today"
    );
}

#[test]
fn keyring_errors_name_the_file() {
    let e = Keyring::parse("ring.asc", "hello\n").unwrap_err();
    assert!(
        e.to_string().starts_with("ring.asc:1:1: no -----BEGIN"),
        "{e}"
    );
    let e = Keyring::parse("ring.asc", "x\n-----BEGIN PGP PRIVATE KEY BLOCK-----\n").unwrap_err();
    assert!(e.to_string().contains("private key"), "{e}");
    let e = Keyring::parse(
        "ring.asc",
        "# c\n-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nnot base64 at all!\n-----END PGP PUBLIC KEY BLOCK-----\n",
    )
    .unwrap_err();
    assert_eq!(e.line, 2, "{e}");
}

/// `plumb verify --openpgp-keyring --explain`: signer, format, key, subkey and the keyring
/// line; JSON carries the same; a seal is shown with its reason.
#[test]
fn verify_cli_explains_openpgp_signers_and_seals() {
    let g = Gpg::new();
    let repo = g.fx.init("repo", false);
    let fpr = g.key("Alice <alice@example.com>", "ed25519", "sign", None);
    let ring = g.keyring("alice.asc", &[&fpr]);
    let c1 = g.commit(&repo, "first", &fpr, None);
    let _unsigned = g.fx.commit(&repo, "unsigned", None);
    let seal = g.commit(&repo, "seal\n\nPlumb-Seal: reviewed", &fpr, None);
    let sealers = g.fx.signers("sealers", &format!("# sealers\n{fpr}\n"));
    let out = assert_cmd::Command::cargo_bin("plumb")
        .unwrap()
        .arg("verify")
        .arg(&repo)
        .arg("--openpgp-keyring")
        .arg(&ring)
        .arg("--seal-signers")
        .arg(&sealers)
        .args(["--from", &c1.to_string(), "--explain"])
        .assert()
        .code(0);
    let text = String::from_utf8_lossy(&out.get_output().stdout).into_owned();
    for want in [
        "signed by Alice <alice@example.com>".to_string(),
        "format: openpgp".to_string(),
        format!("key: openpgp-eddsalegacy {fpr}"),
        format!("admitted by: {}:1", ring.display()),
        format!(
            "seal ({}): \"reviewed\"; allowed by {}:2",
            &seal.to_string()[..7],
            sealers.display()
        ),
    ] {
        assert!(text.contains(&want), "{want:?} not in:\n{text}");
    }
    // Without the sealers file the seal is refused, naming it.
    let out = assert_cmd::Command::cargo_bin("plumb")
        .unwrap()
        .arg("verify")
        .arg(&repo)
        .arg("--openpgp-keyring")
        .arg(&ring)
        .args(["--from", &c1.to_string(), "--output", "json"])
        .assert()
        .code(1);
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["failure"]["reason"], "seal-not-allowed", "{v:#}");
    assert_eq!(v["failure"]["id"], seal.to_string(), "{v:#}");
}
