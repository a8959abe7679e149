//! The range policy of DESIGN.md decision 4: every commit between the last applied commit and
//! the new tip carries a good signature of an allowed signer, and the new tip descends from the
//! last applied commit.

use git2::{Oid, Repository, Sort};

use super::allowed_signers::AllowedSigners;
use super::signature::{verify_commit, Failure, Reason, Signer};
use super::SourceError;

/// One verified commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCommit {
    pub id: Oid,
    /// The first line of the message.
    pub summary: String,
    pub signer: Signer,
}

/// A range that passed: its commits oldest first, and the tip's signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRange {
    pub tip: Oid,
    pub tip_signer: Signer,
    /// Oldest first (topological order). When the range is empty (tip == last applied) it
    /// holds the tip alone: the tip is always verified.
    pub commits: Vec<VerifiedCommit>,
}

/// A range that failed: the first bad commit (oldest first in topological order) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("commit {} ({:?}): {failure}", short(*.commit), .summary)]
pub struct Rejection {
    pub commit: Oid,
    pub summary: String,
    pub failure: Failure,
}

impl Rejection {
    pub fn reason(&self) -> Reason {
        self.failure.reason
    }
}

/// Options for one call of [`verify_range`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RangeOptions {
    /// Accept a tip that does not descend from `last_applied` (an explicit, one-off rollback).
    /// The commits reachable from the tip and not from `last_applied` are still verified.
    pub allow_rollback: bool,
}

/// Verifies `last_applied..tip`: all commits reachable from `tip` and not from `last_applied`,
/// including those on merged branches. With no `last_applied`, the tip alone is verified.
///
/// `Ok(Err(rejection))` is a policy refusal; `Err(_)` means the repository could not be read.
pub fn verify_range(
    repo: &Repository,
    last_applied: Option<Oid>,
    tip: Oid,
    signers: &AllowedSigners,
    options: RangeOptions,
) -> Result<Result<VerifiedRange, Rejection>, SourceError> {
    let tip_commit = repo.find_commit(tip)?;
    let mut ids = Vec::new();
    if let Some(from) = last_applied {
        repo.find_commit(from)?;
        let descends = from == tip || repo.graph_descendant_of(tip, from)?;
        if !descends && !options.allow_rollback {
            return Ok(Err(Rejection {
                commit: tip,
                summary: summary_of(&tip_commit),
                failure: Failure {
                    reason: Reason::NotDescendant,
                    detail: format!("{} does not descend from {}", short(tip), short(from)),
                },
            }));
        }
        let mut walk = repo.revwalk()?;
        walk.set_sorting(Sort::TOPOLOGICAL | Sort::REVERSE)?;
        walk.push(tip)?;
        walk.hide(from)?;
        for id in walk {
            ids.push(id?);
        }
    }
    if ids.is_empty() {
        ids.push(tip);
    }
    let mut commits = Vec::with_capacity(ids.len());
    for id in ids {
        let commit = repo.find_commit(id)?;
        let summary = summary_of(&commit);
        match verify_commit(repo, id, signers)? {
            Ok(signer) => commits.push(VerifiedCommit {
                id,
                summary,
                signer,
            }),
            Err(failure) => {
                return Ok(Err(Rejection {
                    commit: id,
                    summary,
                    failure,
                }))
            }
        }
    }
    let tip_signer = match commits.iter().find(|c| c.id == tip) {
        Some(c) => c.signer.clone(),
        // The walk always contains the tip when it is non-empty; be defensive anyway.
        None => match verify_commit(repo, tip, signers)? {
            Ok(s) => s,
            Err(failure) => {
                return Ok(Err(Rejection {
                    commit: tip,
                    summary: summary_of(&tip_commit),
                    failure,
                }))
            }
        },
    };
    Ok(Ok(VerifiedRange {
        tip,
        tip_signer,
        commits,
    }))
}

pub(crate) fn summary_of(c: &git2::Commit<'_>) -> String {
    String::from_utf8_lossy(c.summary_bytes().unwrap_or(b"")).into_owned()
}

/// The 7-hex-digit short id.
pub fn short(id: Oid) -> String {
    let s = id.to_string();
    s.get(..7).unwrap_or(&s).to_string()
}
