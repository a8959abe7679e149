//! Shared fixtures for the source tests: keys made with ssh-keygen and commits signed with
//! git at test time, in temporary directories (no private key is checked in).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use git2::Oid;
use plumb::source::{AllowedSigners, Failure, Reason, Signer};

pub struct Fx {
    pub dir: tempfile::TempDir,
}

/// The git binaries to compare with (both when the machine has two).
pub fn gits() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = ["/usr/local/bin/git", "/usr/bin/git"]
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .collect();
    if v.is_empty() {
        v.push(PathBuf::from("git"));
    }
    v
}

fn check(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Fx {
    pub fn new() -> Fx {
        Fx {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A git command with a hermetic environment; the committer/author date is `date`.
    pub fn git_cmd(&self, git: &Path, repo: &Path, date: &str) -> Command {
        let mut c = Command::new(git);
        c.current_dir(repo)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", self.dir.path())
            .env("TZ", "UTC")
            .env("GIT_AUTHOR_NAME", "Test")
            .env("GIT_AUTHOR_EMAIL", "test@example.com")
            .env("GIT_COMMITTER_NAME", "Test")
            .env("GIT_COMMITTER_EMAIL", "test@example.com")
            .env("GIT_AUTHOR_DATE", date)
            .env("GIT_COMMITTER_DATE", date)
            .args(["-c", "init.defaultBranch=main", "-c", "gpg.format=ssh"]);
        c
    }

    pub fn git(&self, repo: &Path, args: &[&str]) -> String {
        let out = self
            .git_cmd(Path::new("git"), repo, "2024-06-01T12:00:00Z")
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&check(out, &format!("git {args:?}")).stdout).into_owned()
    }

    /// `ssh-keygen -t kind [-b bits]`; returns the private key path (`.pub` beside it).
    pub fn key(&self, name: &str, kind: &str, bits: Option<u32>) -> PathBuf {
        let path = self.path(name);
        let mut c = Command::new("ssh-keygen");
        c.args(["-q", "-t", kind, "-N", "", "-C", name, "-f"])
            .arg(&path);
        if let Some(b) = bits {
            c.args(["-b", &b.to_string()]);
        }
        check(c.output().unwrap(), "ssh-keygen");
        path
    }

    pub fn pubkey(&self, key: &Path) -> String {
        std::fs::read_to_string(key.with_extension("pub"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// `ssh-keygen -lf key.pub`'s `SHA256:...`.
    pub fn fingerprint(&self, key: &Path) -> String {
        let out = check(
            Command::new("ssh-keygen")
                .arg("-lf")
                .arg(key.with_extension("pub"))
                .output()
                .unwrap(),
            "ssh-keygen -l",
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    }

    pub fn init(&self, name: &str, bare: bool) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir_all(&p).unwrap();
        if bare {
            self.git(&p, &["init", "-q", "--bare"]);
        } else {
            self.git(&p, &["init", "-q"]);
        }
        p
    }

    /// Writes `file` = `msg`, commits it, signed with `key` (or unsigned), at `date`.
    pub fn commit_at(&self, repo: &Path, msg: &str, key: Option<&Path>, date: &str) -> Oid {
        let file = msg.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        std::fs::write(repo.join(&file), msg).unwrap();
        self.git(repo, &["add", "--", &file]);
        let mut c = self.git_cmd(Path::new("git"), repo, date);
        match key {
            Some(k) => {
                c.arg("-c")
                    .arg(format!("user.signingkey={}", k.display()))
                    .args(["commit", "-q", "-S", "-m", msg]);
            }
            None => {
                c.args(["commit", "-q", "--no-gpg-sign", "-m", msg]);
            }
        }
        check(c.output().unwrap(), "git commit");
        self.head(repo)
    }

    pub fn commit(&self, repo: &Path, msg: &str, key: Option<&Path>) -> Oid {
        self.commit_at(repo, msg, key, "2024-06-01T12:00:00Z")
    }

    pub fn head(&self, repo: &Path) -> Oid {
        Oid::from_str(self.git(repo, &["rev-parse", "HEAD"]).trim()).unwrap()
    }

    pub fn signers(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `git verify-commit` with the allowed-signers file, for every git on the machine.
    /// Returns the (identical) verdict; panics if the gits disagree.
    pub fn git_verify(&self, repo: &Path, id: Oid, signers: &Path) -> bool {
        let verdicts: Vec<(PathBuf, bool, String)> = gits()
            .into_iter()
            .map(|g| {
                let out = self
                    .git_cmd(&g, repo, "2024-06-01T12:00:00Z")
                    .arg("-c")
                    .arg(format!("gpg.ssh.allowedSignersFile={}", signers.display()))
                    .args(["verify-commit", &id.to_string()])
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                (
                    g,
                    out.status.success(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            })
            .collect();
        let first = verdicts[0].1;
        for (g, v, err) in &verdicts {
            assert_eq!(*v, first, "{} disagrees: {err}", g.display());
        }
        eprintln!("git verify-commit: {}", verdicts[0].2.trim());
        first
    }

    /// plumb's verdict on one commit.
    pub fn plumb_verify(&self, repo: &Path, id: Oid, signers: &Path) -> Result<Signer, Failure> {
        let s = AllowedSigners::load(signers).unwrap();
        let r = git2::Repository::open(repo).unwrap();
        plumb::source::signature::verify_commit(&r, id, &plumb::source::Trust::ssh(s)).unwrap()
    }

    /// Asserts plumb's verdict (`expected`: None = good) and that git agrees.
    pub fn assert_parity(
        &self,
        repo: &Path,
        id: Oid,
        signers: &Path,
        expected: Option<Reason>,
    ) -> Result<Signer, Failure> {
        let plumb = self.plumb_verify(repo, id, signers);
        assert_eq!(
            plumb.as_ref().err().map(|f| f.reason),
            expected,
            "plumb verdict: {plumb:?}"
        );
        let git = self.git_verify(repo, id, signers);
        assert_eq!(git, plumb.is_ok(), "git says {git}, plumb says {plumb:?}");
        plumb
    }
}
