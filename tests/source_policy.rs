//! The range policy, the mirror and the checkout.

#[path = "source_support/mod.rs"]
mod support;

use std::path::PathBuf;

use git2::{Oid, Repository};
use plumb::source::{
    verify_range, AllowedSigners, RangeOptions, Reason, Rejection, Source, Trust, VerifiedRange,
};
use support::Fx;

struct Setup {
    fx: Fx,
    repo: PathBuf,
    key: PathBuf,
    signers: Trust,
    signers_path: PathBuf,
}

fn setup() -> Setup {
    let fx = Fx::new();
    let key = fx.key("alice", "ed25519", None);
    let repo = fx.init("repo", false);
    let signers_path = fx.signers("as", &format!("alice@example.com {}\n", fx.pubkey(&key)));
    let signers = Trust::ssh(AllowedSigners::load(&signers_path).unwrap());
    Setup {
        fx,
        repo,
        key,
        signers,
        signers_path,
    }
}

impl Setup {
    fn range(
        &self,
        from: Option<Oid>,
        tip: Oid,
        rollback: bool,
    ) -> Result<VerifiedRange, Rejection> {
        let r = Repository::open(&self.repo).unwrap();
        verify_range(
            &r,
            from,
            tip,
            &self.signers,
            RangeOptions {
                allow_rollback: rollback,
            },
        )
        .unwrap()
    }
}

#[test]
fn signed_chain_verifies_oldest_first() {
    let s = setup();
    let c1 = s.fx.commit(&s.repo, "c1", Some(&s.key));
    let c2 = s.fx.commit(&s.repo, "c2", Some(&s.key));
    let c3 = s.fx.commit(&s.repo, "c3", Some(&s.key));
    let ok = s.range(Some(c1), c3, false).unwrap();
    let ids: Vec<Oid> = ok.commits.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![c2, c3]);
    assert_eq!(ok.tip, c3);
    assert_eq!(ok.tip_signer.principal, "alice@example.com");
    assert_eq!(ok.tip_signer.fingerprint, s.fx.fingerprint(&s.key));
    assert_eq!(ok.commits[0].summary, "c2");
    // No last applied commit: the tip alone.
    let ok = s.range(None, c3, false).unwrap();
    assert_eq!(ok.commits.len(), 1);
    // Nothing new: the tip is still verified.
    let ok = s.range(Some(c3), c3, false).unwrap();
    assert_eq!(ok.commits.len(), 1);
}

#[test]
fn unsigned_commit_under_a_signed_tip() {
    let s = setup();
    let c1 = s.fx.commit(&s.repo, "c1", Some(&s.key));
    let c2 = s.fx.commit(&s.repo, "sneaky", None);
    let c3 = s.fx.commit(&s.repo, "c3", Some(&s.key));
    // git verify-commit checks one commit: it accepts the tip and refuses c2.
    assert!(s.fx.git_verify(&s.repo, c3, &s.signers_path));
    assert!(!s.fx.git_verify(&s.repo, c2, &s.signers_path));
    let bad = s.range(Some(c1), c3, false).unwrap_err();
    assert_eq!((bad.commit, bad.reason()), (c2, Reason::Unsigned));
    assert_eq!(bad.summary, "sneaky");
}

#[test]
fn first_bad_commit_is_the_oldest() {
    let s = setup();
    let mallory = s.fx.key("mallory", "ed25519", None);
    let c1 = s.fx.commit(&s.repo, "c1", Some(&s.key));
    let c2 = s.fx.commit(&s.repo, "c2", Some(&mallory));
    let _c3 = s.fx.commit(&s.repo, "c3", None);
    let c4 = s.fx.commit(&s.repo, "c4", Some(&s.key));
    let bad = s.range(Some(c1), c4, false).unwrap_err();
    assert_eq!((bad.commit, bad.reason()), (c2, Reason::UnknownKey));
}

#[test]
fn unsigned_commit_on_a_merged_branch() {
    let s = setup();
    let (fx, repo) = (&s.fx, &s.repo);
    let c1 = fx.commit(repo, "c1", Some(&s.key));
    fx.git(repo, &["checkout", "-q", "-b", "feature"]);
    let f1 = fx.commit(repo, "feature work", None);
    fx.git(repo, &["checkout", "-q", "main"]);
    let _c2 = fx.commit(repo, "c2", Some(&s.key));
    let mut merge = fx.git_cmd(std::path::Path::new("git"), repo, "2024-06-01T12:00:00Z");
    merge
        .arg("-c")
        .arg(format!("user.signingkey={}", s.key.display()))
        .args([
            "merge",
            "-q",
            "--no-ff",
            "-S",
            "-m",
            "merge feature",
            "feature",
        ]);
    assert!(merge.status().unwrap().success());
    let m = fx.head(repo);
    assert!(
        fx.git_verify(repo, m, &s.signers_path),
        "the merge itself is signed"
    );
    let bad = s.range(Some(c1), m, false).unwrap_err();
    assert_eq!((bad.commit, bad.reason()), (f1, Reason::Unsigned));
}

#[test]
fn rollback_and_force_push_are_refused_unless_allowed() {
    let s = setup();
    let (fx, repo) = (&s.fx, &s.repo);
    let c1 = fx.commit(repo, "c1", Some(&s.key));
    let c2 = fx.commit(repo, "c2", Some(&s.key));
    // Rollback to an ancestor.
    let bad = s.range(Some(c2), c1, false).unwrap_err();
    assert_eq!((bad.commit, bad.reason()), (c1, Reason::NotDescendant));
    assert!(bad.to_string().contains("does not descend"), "{bad}");
    // A rewritten branch (force-push): signed, but not on top of what was applied.
    fx.git(repo, &["reset", "-q", "--hard", &c1.to_string()]);
    let x2 = fx.commit(repo, "rewritten", Some(&s.key));
    let bad = s.range(Some(c2), x2, false).unwrap_err();
    assert_eq!((bad.commit, bad.reason()), (x2, Reason::NotDescendant));
    // Allowed for one call: the new commits are still verified.
    let ok = s.range(Some(c2), x2, true).unwrap();
    assert_eq!(
        ok.commits.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![x2]
    );
    let unsigned = fx.commit(repo, "unsigned", None);
    let bad = s.range(Some(c2), unsigned, true).unwrap_err();
    assert_eq!(bad.reason(), Reason::Unsigned);
}

#[test]
fn mirror_fetch_verify_checkout_and_force_push() {
    let s = setup();
    let (fx, work) = (&s.fx, &s.repo);
    let origin = fx.init("origin.git", true);
    fx.git(
        work,
        &["remote", "add", "origin", &origin.to_string_lossy()],
    );
    std::fs::create_dir_all(work.join("sub")).unwrap();
    std::fs::write(work.join("sub/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fx.git(work, &["update-index", "--add", "--chmod=+x", "sub/run.sh"]);
    std::os::unix::fs::symlink("sub/run.sh", work.join("link")).unwrap();
    fx.git(work, &["add", "link"]);
    let c1 = fx.commit(work, "c1", Some(&s.key));
    fx.git(work, &["push", "-q", "origin", "main"]);

    let state = fx.path("state");
    for spec in [
        origin.to_string_lossy().into_owned(),
        format!("file://{}", origin.display()),
    ] {
        let _ = std::fs::remove_dir_all(&state);
        let src = Source::new(&spec, &state).unwrap();
        src.fetch().unwrap();
        assert!(state.join("mirror.git/HEAD").exists());
        assert_eq!(src.resolve("refs/heads/main").unwrap(), c1);
    }
    let src = Source::new(&origin.to_string_lossy(), &state).unwrap();

    let c2 = fx.commit(work, "c2", Some(&s.key));
    fx.git(work, &["push", "-q", "origin", "main"]);
    src.fetch().unwrap();
    let tip = src.resolve("refs/heads/main").unwrap();
    assert_eq!(tip, c2);
    let ok = src
        .verify(Some(c1), tip, &s.signers, RangeOptions::default())
        .unwrap()
        .unwrap();
    assert_eq!(ok.commits.len(), 1);

    let dest = fx.path("checkout");
    src.checkout(tip, &dest).unwrap();
    assert_eq!(std::fs::read_to_string(dest.join("c2")).unwrap(), "c2");
    assert_eq!(
        std::fs::read_to_string(dest.join("sub/run.sh")).unwrap(),
        "#!/bin/sh\necho hi\n"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dest.join("sub/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111);
    assert_eq!(
        std::fs::read_link(dest.join("link")).unwrap(),
        PathBuf::from("sub/run.sh")
    );
    let err = src.checkout(tip, &dest).unwrap_err();
    assert_eq!(err.code(), "dest-not-empty");

    // Force-push a rewritten history: the mirror follows it, the policy refuses it.
    fx.git(work, &["reset", "-q", "--hard", &c1.to_string()]);
    let x2 = fx.commit(work, "rewritten", Some(&s.key));
    fx.git(work, &["push", "-q", "--force", "origin", "main"]);
    src.fetch().unwrap();
    let tip = src.resolve("refs/heads/main").unwrap();
    assert_eq!(tip, x2);
    let bad = src
        .verify(Some(c2), tip, &s.signers, RangeOptions::default())
        .unwrap()
        .unwrap_err();
    assert_eq!(bad.reason(), Reason::NotDescendant);
}

#[test]
fn fetch_errors_are_reported_with_a_code() {
    let fx = Fx::new();
    let src = Source::new(&fx.path("nope").to_string_lossy(), fx.path("state")).unwrap();
    let e = src.fetch().unwrap_err();
    assert_eq!(e.code(), "git-command");
    assert!(!fx.path("state/mirror.git").exists());
    assert_eq!(
        Source::new("--upload-pack=evil", fx.path("s"))
            .unwrap_err()
            .code(),
        "invalid-source"
    );
}

/// Seals (issue 14 point 2): an unsigned commit on main is recovered without rewriting
/// history by a `Plumb-Seal:` commit of an allowed sealer; a seal by anyone else is refused
/// naming the seal; commits after a valid seal are still verified.
#[test]
fn seals_vouch_for_the_history_below_them() {
    let s = setup();
    let (fx, repo) = (&s.fx, &s.repo);
    let release = fx.key("release", "ed25519", None);
    let signers_text = format!(
        "alice@example.com {}\nrelease@example.com {}\n",
        fx.pubkey(&s.key),
        fx.pubkey(&release)
    );
    let signers = AllowedSigners::parse("as", &signers_text).unwrap();
    let sealers_text = format!(
        "# who may seal\nrelease@example.com namespaces=\"git\" {}\n",
        fx.pubkey(&release)
    );
    let trust = Trust {
        ssh: Some(signers),
        openpgp: None,
        sealers: Some(plumb::source::Sealers::parse("sealers", &sealers_text).unwrap()),
    };
    let range = |from: Oid, tip: Oid| {
        let r = Repository::open(repo).unwrap();
        verify_range(&r, Some(from), tip, &trust, RangeOptions::default()).unwrap()
    };
    let c1 = fx.commit(repo, "c1", Some(&s.key));
    let c2 = fx.commit(repo, "unsigned hotfix", None);
    let c3 = fx.commit(repo, "c3", Some(&s.key));
    let bad = range(c1, c3).unwrap_err();
    assert_eq!((bad.commit, bad.reason()), (c2, Reason::Unsigned));

    // A seal signed by alice, who may sign but not seal: refused, the seal named.
    let s4 = fx.commit(
        repo,
        "recover\n\nPlumb-Seal: reviewed by alice",
        Some(&s.key),
    );
    let bad = range(c1, s4).unwrap_err();
    assert_eq!((bad.commit, bad.reason()), (s4, Reason::SealNotAllowed));
    assert!(bad.failure.detail.contains("not in sealers"), "{bad}");

    // An allowed sealer's seal on top: verification stops there, no history rewritten.
    let s5 = fx.commit(
        repo,
        "recover\n\nPlumb-Seal: unsigned hotfix reviewed in INC-42",
        Some(&release),
    );
    let ok = range(c1, s5).unwrap();
    let ids: Vec<Oid> = ok.commits.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![s5]);
    let (sealed, seal) = ok.seal().unwrap();
    assert_eq!(sealed.id, s5);
    assert_eq!(seal.reason, "unsigned hotfix reviewed in INC-42");
    assert_eq!(seal.sealer, "sealers:2");

    // Commits after the seal are verified as usual.
    let c6 = fx.commit(repo, "after the seal", Some(&s.key));
    let ok = range(c1, c6).unwrap();
    let ids: Vec<Oid> = ok.commits.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![s5, c6]);
    let c7 = fx.commit(repo, "unsigned again", None);
    let bad = range(c1, c7).unwrap_err();
    assert_eq!((bad.commit, bad.reason()), (c7, Reason::Unsigned));

    // A forged seal (unsigned, with the trailer) is refused as unsigned.
    let s8 = fx.commit(repo, "forged\n\nPlumb-Seal: trust me", None);
    let bad = range(c1, s8).unwrap_err();
    assert_eq!((bad.commit, bad.reason()), (s8, Reason::Unsigned));

    // Without any sealers configured, every seal is refused.
    let no_sealers = Trust::ssh(AllowedSigners::parse("as", &signers_text).unwrap());
    let r = Repository::open(repo).unwrap();
    let bad = verify_range(&r, Some(c1), s5, &no_sealers, RangeOptions::default())
        .unwrap()
        .unwrap_err();
    assert_eq!((bad.commit, bad.reason()), (s5, Reason::SealNotAllowed));
}
