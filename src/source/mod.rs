//! The signed source: mirroring the config repo, verifying its commits, checking out a tree,
//! and noticing new commits (DESIGN.md decision 4: the trust root is outside the repo).
//!
//! Layers, bottom up:
//! - [`git`]: the bare mirror (fetched with the system `git`), revision lookup, tree export;
//! - [`allowed_signers`]: OpenSSH's allowed-signers file, parsed with positions, matched as
//!   ssh-keygen matches it;
//! - [`signature`]: one commit's SSH signature, judged as `git verify-commit` judges it;
//! - [`openpgp`]: one commit's OpenPGP signature against a keyring outside the repo;
//! - [`trust`]: the trust roots (allowed signers, keyring, sealers) and `Plumb-Seal:`;
//! - [`tags`]: following the newest signed tag matching a pattern;
//! - [`auth`]: the credentials `git fetch` uses for the config repo (`repository_auth:`);
//! - [`policy`]: a range `last_applied..tip`, every commit verified, rollbacks refused;
//! - [`watch`]: events when the source may have changed (local refs, a poll, a trigger);
//! - [`report`]: the `plumb verify` report.
//!
//! The daemon uses [`Source`]; `plumb verify` uses [`verify_repo`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use git2::{Oid, Repository};

pub mod allowed_signers;
pub mod auth;
pub mod git;
pub mod openpgp;
pub mod policy;
pub mod report;
pub mod signature;
pub mod tags;
pub mod trust;
pub mod watch;

pub use allowed_signers::{AllowedSigners, ParseError};
pub use auth::RepositoryAuth;
pub use openpgp::{Keyring, KeyringError};
pub use policy::{verify_range, RangeOptions, Rejection, Seal, VerifiedCommit, VerifiedRange};
pub use report::VerifyReport;
pub use signature::{Failure, Reason, SignatureFormat, Signer};
pub use trust::{Sealers, Trust};
pub use watch::{WatchEvent, WatchHandle};

/// Errors reading or fetching the source (not verdicts on commits: see [`Rejection`]).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    AllowedSigners(#[from] ParseError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(
        "no trust root: give an allowed-signers file (SSH signatures) and/or an OpenPGP keyring"
    )]
    NoTrustRoot,
    #[error("{0}")]
    Auth(String),
    #[error("no tag matches {0:?} (push a signed tag matching the pattern)")]
    NoTag(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot run git: {0} (plumb fetches with the system git; install it or set the git path)"
    )]
    GitMissing(std::io::Error),
    #[error("`git {args}` failed ({status}): {stderr} (check the URL and that this user's ssh keys, known_hosts or credential helper can reach it)")]
    GitCommand {
        args: String,
        status: String,
        stderr: String,
    },
    #[error("{}: not a git repository: {}", path.display(), source.message())]
    Repo { path: PathBuf, source: git2::Error },
    #[error("revision {rev:?} not found: {} (give a branch, tag or commit id that exists)", source.message())]
    RevNotFound { rev: String, source: git2::Error },
    #[error("git: {}", .0.message())]
    Git(#[from] git2::Error),
    #[error("invalid source {0:?}: give a local path or an ssh://, https:// or file:// URL")]
    InvalidSpec(String),
    #[error("refusing to check out {0:?}: the path could escape the destination directory")]
    UnsafePath(String),
    #[error("{}: checkout destination is not empty; give a new or empty directory", .0.display())]
    DestNotEmpty(PathBuf),
    #[error("cannot watch {}: {source}", path.display())]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

impl SourceError {
    /// A stable, low-cardinality code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            SourceError::AllowedSigners(_) => "allowed-signers-syntax",
            SourceError::Keyring(_) => "openpgp-keyring",
            SourceError::NoTrustRoot => "no-trust-root",
            SourceError::Auth(_) => "repository-auth",
            SourceError::NoTag(_) => "no-tag",
            SourceError::Io { .. } => "io",
            SourceError::GitMissing(_) => "git-missing",
            SourceError::GitCommand { .. } => "git-command",
            SourceError::Repo { .. } => "not-a-repository",
            SourceError::RevNotFound { .. } => "rev-not-found",
            SourceError::Git(_) => "git-object",
            SourceError::InvalidSpec(_) => "invalid-source",
            SourceError::UnsafePath(_) => "unsafe-path",
            SourceError::DestNotEmpty(_) => "dest-not-empty",
            SourceError::Watch { .. } => "watch",
        }
    }
}

/// Where the config repo comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A repository on this host (a path or a `file://` URL): watched for ref changes.
    Local(PathBuf),
    /// A remote URL (`ssh://`, `https://`, `user@host:path`): polled.
    Remote(String),
}

impl Origin {
    pub fn parse(spec: &str) -> Result<Origin, SourceError> {
        if spec.is_empty() || spec.starts_with('-') {
            return Err(SourceError::InvalidSpec(spec.to_string()));
        }
        if let Some(path) = spec.strip_prefix("file://") {
            return Ok(Origin::Local(PathBuf::from(path)));
        }
        if spec.contains("://") {
            return Ok(Origin::Remote(spec.to_string()));
        }
        // scp-like `[user@]host:path`: a ':' before any '/'.
        if let Some(colon) = spec.find(':') {
            if !spec[..colon].contains('/') {
                return Ok(Origin::Remote(spec.to_string()));
            }
        }
        Ok(Origin::Local(PathBuf::from(spec)))
    }

    fn url(&self) -> String {
        match self {
            Origin::Local(p) => p.to_string_lossy().into_owned(),
            Origin::Remote(u) => u.clone(),
        }
    }
}

/// The config repo as the daemon sees it: an origin, mirrored into `<state>/mirror.git`.
#[derive(Debug, Clone)]
pub struct Source {
    pub origin: Origin,
    state_dir: PathBuf,
    git: PathBuf,
    auth: RepositoryAuth,
}

impl Source {
    /// `spec` is a local path or a URL; `state_dir` holds the mirror.
    pub fn new(spec: &str, state_dir: impl Into<PathBuf>) -> Result<Source, SourceError> {
        Ok(Source {
            origin: Origin::parse(spec)?,
            state_dir: state_dir.into(),
            git: PathBuf::from("git"),
            auth: RepositoryAuth::default(),
        })
    }

    /// Fetch with these credentials (`repository_auth:`).
    pub fn with_auth(mut self, auth: RepositoryAuth) -> Source {
        self.auth = auth;
        self
    }

    /// Use this `git` binary instead of the one on `PATH`.
    pub fn with_git(mut self, git: impl Into<PathBuf>) -> Source {
        self.git = git.into();
        self
    }

    /// `<state>/mirror.git`.
    pub fn mirror_path(&self) -> PathBuf {
        self.state_dir.join("mirror.git")
    }

    /// Clones the mirror if needed and fetches (blocking: run it in `spawn_blocking`).
    pub fn fetch(&self) -> Result<(), SourceError> {
        git::mirror_fetch(
            &self.git,
            &self.origin.url(),
            &self.mirror_path(),
            &self.auth,
        )
    }

    /// Opens the mirror for reading.
    pub fn open(&self) -> Result<Repository, SourceError> {
        git::open(&self.mirror_path())
    }

    /// Resolves a revision (e.g. `refs/heads/main`) in the mirror.
    pub fn resolve(&self, rev: &str) -> Result<Oid, SourceError> {
        git::resolve(&self.open()?, rev)
    }

    /// Verifies `last_applied..tip` under the policy (see [`policy::verify_range`]).
    pub fn verify(
        &self,
        last_applied: Option<Oid>,
        tip: Oid,
        trust: &Trust,
        options: RangeOptions,
    ) -> Result<Result<VerifiedRange, Rejection>, SourceError> {
        policy::verify_range(&self.open()?, last_applied, tip, trust, options)
    }

    /// The commit to deploy: the branch's tip, or the newest tag matching the pattern.
    pub fn resolve_follow(&self, follow: &tags::Follow) -> Result<Oid, SourceError> {
        match follow {
            tags::Follow::Branch(b) => self.resolve(&format!("refs/heads/{b}")),
            tags::Follow::Tags(pattern) => tags::newest_tag(&self.open()?, pattern)?
                .map(|t| t.commit)
                .ok_or_else(|| SourceError::NoTag(pattern.clone())),
        }
    }

    /// [`Source::verify`], and first, when following tags, the signature of the newest
    /// matching tag (which must point at `tip`). A bad tag is refused naming the tag.
    pub fn verify_follow(
        &self,
        follow: &tags::Follow,
        last_applied: Option<Oid>,
        tip: Oid,
        trust: &Trust,
        options: RangeOptions,
    ) -> Result<Result<VerifiedRange, Rejection>, SourceError> {
        let repo = self.open()?;
        if let tags::Follow::Tags(pattern) = follow {
            let tag = tags::newest_tag(&repo, pattern)?
                .filter(|t| t.commit == tip)
                .ok_or_else(|| SourceError::NoTag(pattern.clone()))?;
            if let Err(failure) = tags::verify_tag(&repo, &tag, trust)? {
                return Ok(Err(Rejection {
                    commit: tip,
                    summary: format!("tag {}", tag.name),
                    failure,
                }));
            }
        }
        policy::verify_range(&repo, last_applied, tip, trust, options)
    }

    /// Exports the tree of `commit` into the new or empty directory `dest`.
    pub fn checkout(&self, commit: Oid, dest: &Path) -> Result<(), SourceError> {
        git::checkout(&self.open()?, commit, dest)
    }

    /// Starts watching (must be called inside a Tokio runtime): ref changes of a local origin,
    /// a poll every `poll` (for a remote; optional for a local origin), and
    /// [`WatchHandle::trigger`]. Each event means "fetch now".
    pub fn watch(
        &self,
        poll: Option<Duration>,
    ) -> Result<(WatchHandle, tokio::sync::mpsc::Receiver<WatchEvent>), SourceError> {
        let local = match &self.origin {
            Origin::Local(p) => Some(p.as_path()),
            Origin::Remote(_) => None,
        };
        watch::start(local, poll)
    }
}

/// The trust roots `plumb verify` reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrustFiles<'a> {
    pub allowed_signers: Option<&'a Path>,
    pub openpgp_keyring: Option<&'a Path>,
    pub seal_signers: Option<&'a Path>,
}

/// `plumb verify`: verifies `from..rev` (or `rev` alone) of the repository at `repo`
/// (working or bare) against the trust roots.
pub fn verify_repo(
    repo: &Path,
    files: TrustFiles<'_>,
    from: Option<&str>,
    rev: &str,
) -> Result<VerifyReport, SourceError> {
    let trust = Trust::load(
        files.allowed_signers,
        files.openpgp_keyring,
        files.seal_signers,
    )?;
    let r = git::open(repo)?;
    let tip = git::resolve(&r, rev)?;
    let from = from.map(|f| git::resolve(&r, f)).transpose()?;
    let outcome = policy::verify_range(&r, from, tip, &trust, RangeOptions::default())?;
    Ok(VerifyReport::new(from, tip, outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let local = |p: &str| Origin::Local(PathBuf::from(p));
        let remote = |u: &str| Origin::Remote(u.to_string());
        assert_eq!(
            Origin::parse("/srv/config.git").unwrap(),
            local("/srv/config.git")
        );
        assert_eq!(Origin::parse("./a:b").unwrap(), local("./a:b"));
        assert_eq!(Origin::parse("file:///srv/c").unwrap(), local("/srv/c"));
        assert_eq!(
            Origin::parse("git@github.com:team/config.git").unwrap(),
            remote("git@github.com:team/config.git")
        );
        assert_eq!(
            Origin::parse("https://example.com/c.git").unwrap(),
            remote("https://example.com/c.git")
        );
        assert_eq!(
            Origin::parse("-oProxyCommand=x").unwrap_err().code(),
            "invalid-source"
        );
        assert_eq!(Origin::parse("").unwrap_err().code(), "invalid-source");
    }
}
