//! Pins made by a person (`plumb rollback`), honoured by the daemon: a pinned host is left
//! out of rollouts and drift checks (so neither a new commit nor a drift correction moves it
//! off its pin) until `plumb unpin`, or until the daemon reconciles a verified, valid commit
//! newer than the pin's `bad_commit` — one that descends from it and is not it. That release
//! is an `unpin` run in the audit chain.

use crate::state::{NewRun, RunKind, RunResult};

use super::{lock, Daemon, DaemonError, Wake};

/// Whether `tip` is newer than `bad`: it descends from it and is not it.
pub(super) fn newer_than(repo: &git2::Repository, tip: git2::Oid, bad: &str) -> bool {
    let Ok(bad) = git2::Oid::from_str(bad) else {
        return false;
    };
    bad != tip && repo.graph_descendant_of(tip, bad).unwrap_or(false)
}

impl Daemon {
    /// The hosts of `env` still pinned when `tip` (verified and valid) is about to roll out:
    /// pins `tip` is newer than are released first, and recorded as an `unpin` run.
    pub(super) fn honour_pins(
        &self,
        env: &str,
        tip: git2::Oid,
        wake: Wake,
    ) -> Result<Vec<String>, DaemonError> {
        let pins = lock(&self.db).pins(Some(env))?;
        if pins.is_empty() {
            return Ok(Vec::new());
        }
        let repo = self.source.open()?;
        let (released, kept): (Vec<_>, Vec<_>) = pins.into_iter().partition(|p| {
            p.bad_commit
                .as_deref()
                .is_some_and(|b| newer_than(&repo, tip, b))
        });
        if !released.is_empty() {
            let hosts: Vec<String> = released.iter().map(|p| p.host.clone()).collect();
            let db = lock(&self.db);
            let run = db.begin_run(&NewRun {
                environment: env.to_string(),
                commit: Some(tip.to_string()),
                signer: None,
                kind: RunKind::Unpin,
                trigger: wake.trigger(),
            })?;
            db.remove_pins(env, &hosts)?;
            let summary = serde_json::json!({
                "hosts": hosts,
                "pinned_to": released.iter().map(|p| p.commit.clone()).collect::<Vec<_>>(),
                "released_by": tip.to_string(),
                "reason": "a commit newer than the one the hosts were pinned back from",
            });
            db.finish_run(&run, RunResult::Converged, &summary)?;
            drop(db);
            self.anchor_audit_head();
            tracing::info!(environment = %env, hosts = ?hosts, commit = %tip, "pins released by a newer commit");
        }
        let kept: Vec<String> = kept.into_iter().map(|p| p.host).collect();
        self.metrics.set_pinned(env, kept.len() as u64);
        Ok(kept)
    }

    /// The hosts of `env` pinned now (left out of drift checks).
    pub(super) fn pinned_hosts(&self, env: &str) -> Result<Vec<String>, DaemonError> {
        let pins = lock(&self.db).pins(Some(env))?;
        self.metrics.set_pinned(env, pins.len() as u64);
        Ok(pins.into_iter().map(|p| p.host).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::newer_than;

    fn commit(repo: &git2::Repository, parents: &[git2::Oid], msg: &str) -> git2::Oid {
        let sig = git2::Signature::now("t", "t@example.com").expect("signature");
        let tree = repo
            .find_tree(
                repo.treebuilder(None)
                    .and_then(|b| b.write())
                    .expect("tree"),
            )
            .expect("tree");
        let parents: Vec<git2::Commit<'_>> = parents
            .iter()
            .map(|p| repo.find_commit(*p).expect("parent"))
            .collect();
        let refs: Vec<&git2::Commit<'_>> = parents.iter().collect();
        repo.commit(None, &sig, &sig, msg, &tree, &refs)
            .expect("commit")
    }

    /// A pin is released by a commit that descends from its bad commit and is not it; the
    /// bad commit itself, an older one, or one on another line of history keep it.
    #[test]
    fn only_a_commit_newer_than_the_bad_one_releases_a_pin() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = git2::Repository::init(dir.path()).expect("init");
        let good = commit(&repo, &[], "good");
        let bad = commit(&repo, &[good], "bad");
        let fix = commit(&repo, &[bad], "fix");
        let other = commit(&repo, &[good], "another line");
        let b = bad.to_string();
        assert!(newer_than(&repo, fix, &b));
        assert!(!newer_than(&repo, bad, &b));
        assert!(!newer_than(&repo, good, &b));
        assert!(!newer_than(&repo, other, &b));
        assert!(!newer_than(&repo, fix, "not a commit"));
    }
}
