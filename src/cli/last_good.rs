//! What `plumb rollback` and `plumb apply`'s rollback of a stopped wave share: the target
//! commit re-verified against the trust root given, its tree exported into a private scratch
//! directory (never a working tree), and the per-host apply leases taken in the state.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::state::{LeaseGuard, LeaseHost, Signer, StateDb};

/// A private scratch directory for a commit's checkout, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new() -> anyhow::Result<Scratch> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("plumb-rollback-{}-{nanos}", std::process::id()));
        crate::audit::create_private_dir(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }

    /// Exports `commit`'s tree from `git` into `<scratch>/repo` and returns that path.
    pub fn checkout(&self, git: &git2::Repository, commit: git2::Oid) -> anyhow::Result<PathBuf> {
        let dest = self.0.join("repo");
        crate::source::git::checkout(git, commit, &dest)?;
        Ok(dest)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Verifies `target` of the repository at `repo` against today's trust root; its signer.
pub fn verify_commit(
    repo: &Path,
    files: crate::source::TrustFiles<'_>,
    target: git2::Oid,
) -> anyhow::Result<Signer> {
    if files.allowed_signers.is_none() && files.openpgp_keyring.is_none() {
        bail!("no trust root to re-verify commit {target} against: pass --allowed-signers (or --openpgp-keyring)");
    }
    let report = crate::source::verify_repo(repo, files, None, &target.to_string())?;
    let signer = report.commits.last().map(|c| Signer {
        principal: c.signer.principal.clone(),
        fingerprint: c.signer.fingerprint.clone(),
    });
    match (report.ok, signer, report.failure) {
        (true, Some(s), _) => Ok(s),
        (_, _, Some(f)) => bail!(
            "commit {target} no longer verifies against today's trust root: {}: {}",
            f.reason.code(),
            f.message
        ),
        _ => bail!("commit {target} did not verify"),
    }
}

/// Takes the apply leases of `hosts` of `env` in the state for `what` (`plumb rollback`...),
/// naming this process and its user; a host another process (the daemon, another person)
/// is applying is an error naming it.
pub fn lease<'a>(
    db: &StateDb,
    env: &str,
    hosts: impl IntoIterator<Item = &'a crate::model::Host>,
    what: &str,
) -> anyhow::Result<LeaseGuard> {
    let hosts: Vec<LeaseHost> = hosts
        .into_iter()
        .map(|h| LeaseHost::new(env, &h.name, &h.address, h.port))
        .collect();
    let holder = format!(
        "{what} (pid {}, user {})",
        std::process::id(),
        super::manual::local_user()
    );
    Ok(LeaseGuard::take(db, &hosts, &holder)?)
}
