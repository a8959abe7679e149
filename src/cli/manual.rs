//! `plumb apply --state DIR`: the manual run recorded in the state it is pointed at (issue 19
//! point 6): who ran it (local user, SSH identity), from what (a commit, or `uncommitted` with
//! a hash of the tree and of the diff against HEAD), and, with a trust root, the gate: a
//! dirty tree or an unverified commit is refused unless `--break-glass "<reason>"`, and the
//! reason is recorded. The daemon then classifies these changes as `manual`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::engine::{HostRun, StepStatus};
use crate::state::{
    Attribution, Cause, NewRun, NotReached, NotReachedReason, Origin, RunId, RunKind, RunResult,
    Signer, StateDb, StepMeta, Trigger,
};

/// The options of `plumb apply` that record and gate a manual run.
#[derive(Debug, Clone, clap::Args)]
pub struct ManualArgs {
    /// Record this apply as a `manual` run in the state directory DIR (the daemon's, when run
    /// beside it): local user, SSH identity, commit or uncommitted tree, every change.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// The trust root `--allowed-signers` (shared with the policy options, see
    /// `PolicyArgs`): with it, a dirty tree or a HEAD commit that does not verify is refused
    /// unless --break-glass. Filled in by `apply` from the one flag.
    #[arg(skip)]
    pub allowed_signers: Option<PathBuf>,
    /// Trust root (armored OpenPGP keyring), like --allowed-signers.
    #[arg(long, value_name = "FILE")]
    pub openpgp_keyring: Option<PathBuf>,
    /// Apply anyway from a dirty tree or an unverified commit, for this reason (recorded).
    #[arg(long, value_name = "REASON")]
    pub break_glass: Option<String>,
}

/// Where a manual apply comes from and who ran it: the summary of the recorded run.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    /// The local user.
    pub user: String,
    /// The SSH identity given (`--identity`) and its fingerprint, or `ssh defaults`.
    pub identity: String,
    /// HEAD's commit, when the repo is a git checkout.
    pub head: Option<String>,
    /// The working tree differs from HEAD (or is not a git checkout).
    pub dirty: bool,
    /// sha256 over every file of the repo (path and content), `.git` excluded.
    pub tree_sha256: String,
    /// sha256 of the diff against HEAD (a dirty tree only).
    pub diff_sha256: Option<String>,
    /// HEAD's signer, when a trust root verified it.
    pub signer: Option<String>,
    /// Why HEAD did not verify against the trust root.
    pub unverified: Option<String>,
    /// The reason given with --break-glass.
    pub break_glass: Option<String>,
}

impl Provenance {
    /// `<commit>` or `uncommitted:<tree sha256>`: what the changes are attributed to.
    pub fn commit(&self) -> String {
        match (&self.head, self.dirty) {
            (Some(h), false) => h.clone(),
            _ => format!("uncommitted:{}", self.tree_sha256),
        }
    }

    /// Why the trust root refuses this apply, when it does.
    pub fn refusal(&self, gated: bool) -> Option<String> {
        if !gated || self.break_glass.is_some() {
            return None;
        }
        if self.dirty {
            return Some("the working tree has uncommitted changes (commit and sign them, or pass --break-glass \"<reason>\")".into());
        }
        self.unverified.as_ref().map(|why| {
            format!("HEAD does not verify against the trust root: {why} (sign it, or pass --break-glass \"<reason>\")")
        })
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// sha256 over every file under `root` (sorted relative paths and contents), `.git` skipped;
/// symlinks hashed by their target text. Bounded by the repo's own size.
fn tree_hash(root: &Path) -> anyhow::Result<String> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let path = e.path();
            let ty = e.file_type()?;
            if e.file_name() == ".git" {
                continue;
            }
            if ty.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        let rel = f.strip_prefix(root).unwrap_or(&f);
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0]);
        let meta = std::fs::symlink_metadata(&f)?;
        let body = if meta.file_type().is_symlink() {
            std::fs::read_link(&f)?
                .to_string_lossy()
                .into_owned()
                .into_bytes()
        } else if meta.is_file() {
            std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?
        } else {
            Vec::new()
        };
        h.update(sha256_hex(&body).as_bytes());
        h.update([0]);
    }
    Ok(hex::encode(h.finalize()))
}

/// HEAD, whether the tree differs from it, and the diff's hash.
fn git_state(repo: &Path) -> (Option<String>, bool, Option<String>) {
    let Ok(r) = git2::Repository::discover(repo) else {
        return (None, true, None);
    };
    let head = r.head().ok().and_then(|h| h.peel_to_commit().ok());
    let Some(head) = head else {
        return (None, true, None);
    };
    let mut opts = git2::DiffOptions::new();
    opts.include_untracked(true)
        .recurse_untracked_dirs(true)
        .show_untracked_content(true);
    let diff = head
        .tree()
        .and_then(|t| r.diff_tree_to_workdir_with_index(Some(&t), Some(&mut opts)));
    let mut patch = Vec::new();
    let dirty = match diff {
        Ok(d) => {
            let _ = d.print(git2::DiffFormat::Patch, |_, _, line| {
                if matches!(line.origin(), '+' | '-' | ' ') {
                    patch.push(line.origin() as u8);
                }
                patch.extend_from_slice(line.content());
                true
            });
            d.deltas().len() > 0
        }
        Err(_) => true,
    };
    let diff_hash = dirty.then(|| sha256_hex(&patch));
    (Some(head.id().to_string()), dirty, diff_hash)
}

/// `--identity` and its key's fingerprint, or what ssh picks by itself.
fn identity_text(identity: Option<&Path>) -> String {
    let Some(p) = identity else {
        return "ssh defaults (agent, ~/.ssh/config)".into();
    };
    let fp = ssh_key::PrivateKey::read_openssh_file(p)
        .map(|k| {
            k.public_key()
                .fingerprint(ssh_key::HashAlg::Sha256)
                .to_string()
        })
        .ok();
    match fp {
        Some(fp) => format!("{} ({fp})", p.display()),
        None => p.display().to_string(),
    }
}

fn local_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid {}", rustix::process::getuid().as_raw()))
}

/// The provenance of an apply of `repo`, verified against the trust root when one is given.
pub fn provenance(
    repo: &Path,
    args: &ManualArgs,
    identity: Option<&Path>,
) -> anyhow::Result<Provenance> {
    let (head, dirty, diff_sha256) = git_state(repo);
    let mut p = Provenance {
        user: local_user(),
        identity: identity_text(identity),
        head,
        dirty,
        tree_sha256: tree_hash(repo)?,
        diff_sha256,
        signer: None,
        unverified: None,
        break_glass: args.break_glass.clone(),
    };
    if gated(args) {
        let files = crate::source::TrustFiles {
            allowed_signers: args.allowed_signers.as_deref(),
            openpgp_keyring: args.openpgp_keyring.as_deref(),
            seal_signers: None,
        };
        let has_parent = git2::Repository::discover(repo)
            .ok()
            .is_some_and(|r| r.revparse_single("HEAD^").is_ok());
        let from = has_parent.then_some("HEAD^");
        match crate::source::verify_repo(repo, files, from, "HEAD") {
            Ok(r) if r.ok => p.signer = r.commits.last().map(|c| c.signer.principal.clone()),
            Ok(r) => {
                p.unverified = Some(
                    r.failure
                        .map(|f| format!("{}: {}", f.reason.code(), f.message))
                        .unwrap_or_else(|| "not verified".into()),
                )
            }
            Err(e) => p.unverified = Some(e.to_string()),
        }
    }
    Ok(p)
}

/// The hosts of `env` a `--limit` left out of the apply (none without a limit).
pub fn left_out(
    repo: &crate::model::Repo,
    env: &str,
    selected: &[crate::model::Host],
    limit: &[crate::limit::Limit],
) -> Vec<String> {
    if limit.is_empty() {
        return Vec::new();
    }
    let Some(e) = repo.environments.get(env) else {
        return Vec::new();
    };
    e.hosts
        .iter()
        .filter(|h| !selected.iter().any(|s| s.name == h.name))
        .map(|h| h.name.clone())
        .collect()
}

/// What the trust root decided.
pub enum Gate {
    /// Refused (said on stderr, and recorded with `--state`): exit 1.
    Refused,
    /// Go on; with `--state`, the run being recorded.
    Go(Option<Box<(Recorder, Provenance)>>),
}

/// The provenance of the apply, the trust root's gate, and the manual run begun (with
/// `--state`).
pub fn start(
    m: &ManualArgs,
    args: &crate::cli::args::HostArgs,
    term: crate::cli::term::Term,
) -> anyhow::Result<Gate> {
    use crate::cli::term::escape;
    if m.state.is_none() && !gated(m) {
        return Ok(Gate::Go(None));
    }
    let p = provenance(&args.target.repo, m, args.conn.identity.as_deref())?;
    let recorder = match &m.state {
        Some(dir) => Some(Recorder::begin(dir, &args.target.env, &p)?),
        None => None,
    };
    if let Some(why) = p.refusal(gated(m)) {
        if let Some(r) = recorder {
            r.refused(&p, &why)?;
        }
        eprintln!("{}: apply refused: {}", term.err.red("error"), escape(&why));
        return Ok(Gate::Refused);
    }
    if let Some(reason) = &m.break_glass {
        eprintln!(
            "{}: break glass: {}",
            term.err.yellow("warning"),
            escape(reason)
        );
    }
    Ok(Gate::Go(recorder.map(|r| Box::new((r, p)))))
}

/// A trust root was given.
pub fn gated(args: &ManualArgs) -> bool {
    args.allowed_signers.is_some() || args.openpgp_keyring.is_some()
}

/// The manual run in the state at `dir`.
pub struct Recorder {
    db: StateDb,
    run: RunId,
    env: String,
    origin: Origin,
}

impl Recorder {
    /// Opens the state (beside a running daemon too) and begins the manual run.
    pub fn begin(dir: &Path, env: &str, p: &Provenance) -> anyhow::Result<Recorder> {
        let db = StateDb::open_recorder(dir)?;
        let run = db.begin_run(&NewRun {
            environment: env.to_string(),
            commit: Some(p.commit()),
            signer: p.signer.as_ref().map(|s| Signer {
                principal: s.clone(),
                fingerprint: String::new(),
            }),
            kind: RunKind::Manual,
            trigger: Trigger::Cli,
        })?;
        let origin = Origin {
            commit: p.commit(),
            signer: Some(p.user.clone()),
            run: Some(run.clone()),
        };
        Ok(Recorder {
            db,
            run,
            env: env.to_string(),
            origin,
        })
    }

    /// The state the run is recorded in.
    pub fn db(&self) -> &StateDb {
        &self.db
    }

    /// Records a refusal: the run ends `refused` with the provenance and the reason.
    pub fn refused(self, p: &Provenance, why: &str) -> anyhow::Result<()> {
        let summary = serde_json::json!({"manual": p, "refused": why});
        self.db
            .finish_run(&self.run, RunResult::Refused, &summary)?;
        Ok(())
    }

    /// Records every host (each change `manual`, marked so the daemon says so too), the
    /// hosts `--limit` left out (`not_reached`, `limited`), and ends the run.
    pub fn finish(
        self,
        p: &Provenance,
        runs: &[HostRun],
        desired: &[crate::render::DesiredHost],
        (limited, untouched): (&[String], &[String]),
    ) -> anyhow::Result<RunId> {
        let not_reached = [
            (limited, NotReachedReason::Limited, "left out by --limit"),
            (
                untouched,
                NotReachedReason::WaveStopped,
                "an earlier wave stopped the apply",
            ),
        ];
        for (hosts, reason, detail) in not_reached {
            if !hosts.is_empty() {
                let why = NotReached {
                    reason,
                    detail: detail.into(),
                };
                self.db.record_not_reached(&self.run, hosts, &why)?;
            }
        }
        for r in runs {
            let mut meta = StepMeta::default();
            let changed: Vec<String> = r
                .steps
                .iter()
                .filter(|s| s.status == StepStatus::Changed && !s.step.removing)
                .map(|s| s.step.address.to_string())
                .collect();
            for a in &changed {
                meta.attribute(
                    a,
                    Attribution {
                        cause: Cause::Manual,
                        origin: Some(self.origin.clone()),
                    },
                );
            }
            let declared = desired
                .iter()
                .find(|h| h.host.name == r.host.name)
                .map(crate::prune::Managed::declared)
                .unwrap_or_default();
            self.db.record_host(&self.run, r, &meta, &declared)?;
            self.db
                .mark_manual(&self.env, &r.host.name, &changed, &self.origin)?;
        }
        let failed = runs
            .iter()
            .any(|r| r.status != crate::engine::HostStatus::Converged);
        let result = if failed {
            RunResult::Failed
        } else {
            RunResult::Converged
        };
        let summary = serde_json::json!({ "manual": p });
        self.db.finish_run(&self.run, result, &summary)?;
        Ok(self.run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(dirty: bool, unverified: Option<&str>, glass: Option<&str>) -> Provenance {
        Provenance {
            user: "carol".into(),
            identity: "ssh defaults".into(),
            head: Some("c0ffee".into()),
            dirty,
            tree_sha256: "t".into(),
            diff_sha256: dirty.then(|| "d".into()),
            signer: None,
            unverified: unverified.map(String::from),
            break_glass: glass.map(String::from),
        }
    }

    #[test]
    fn the_trust_root_refuses_a_dirty_tree_or_an_unverified_head_unless_break_glass() {
        assert!(p(true, None, None)
            .refusal(true)
            .unwrap()
            .contains("uncommitted"));
        assert!(p(false, Some("unsigned"), None)
            .refusal(true)
            .unwrap()
            .contains("unsigned"));
        assert_eq!(
            p(true, Some("unsigned"), Some("incident")).refusal(true),
            None
        );
        assert_eq!(
            p(true, None, None).refusal(false),
            None,
            "no trust root, no gate"
        );
        assert_eq!(p(false, None, None).refusal(true), None);
        assert_eq!(p(true, None, None).commit(), "uncommitted:t");
        assert_eq!(p(false, None, None).commit(), "c0ffee");
    }

    #[test]
    fn the_tree_hash_covers_paths_and_contents_but_not_git() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), "1").unwrap();
        let h1 = tree_hash(d.path()).unwrap();
        std::fs::create_dir(d.path().join(".git")).unwrap();
        std::fs::write(d.path().join(".git/x"), "y").unwrap();
        assert_eq!(tree_hash(d.path()).unwrap(), h1);
        std::fs::write(d.path().join("a"), "2").unwrap();
        assert_ne!(tree_hash(d.path()).unwrap(), h1);
    }
}
