//! The range policy of DESIGN.md decision 4: every commit between the last applied commit and
//! the new tip carries a good signature of an allowed signer, and the new tip descends from the
//! last applied commit.

use git2::{Oid, Repository, Sort};

use super::signature::{signed_parts, verify_any, verify_commit, Failure, Reason, Signer};
use super::trust::{seal_reason, Trust};
use super::SourceError;

/// One verified commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCommit {
    pub id: Oid,
    /// The first line of the message.
    pub summary: String,
    pub signer: Signer,
    /// Set on the seal that ended the walk: the commits below it were not looked at.
    pub seal: Option<Seal>,
}

/// A valid `Plumb-Seal:` commit: it vouches for the history below it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Seal {
    /// The trailer's text.
    pub reason: String,
    /// `FILE:LINE` of the sealers entry that allowed the signer to seal.
    pub sealer: String,
}

/// A range that passed: its commits oldest first, and the tip's signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRange {
    pub tip: Oid,
    pub tip_signer: Signer,
    /// Oldest first (topological order). When the range is empty (tip == last applied) it
    /// holds the tip alone: the tip is always verified. With a seal, it starts at the seal.
    pub commits: Vec<VerifiedCommit>,
}

impl VerifiedRange {
    /// The seal verification stopped at, if any.
    pub fn seal(&self) -> Option<(&VerifiedCommit, &Seal)> {
        self.commits
            .iter()
            .find_map(|c| c.seal.as_ref().map(|s| (c, s)))
    }
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

    fn of(repo: &Repository, commit: Oid, failure: Failure) -> Result<Rejection, SourceError> {
        Ok(Rejection {
            commit,
            summary: summary_of(&repo.find_commit(commit)?),
            failure,
        })
    }
}

/// Options for one call of [`verify_range`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RangeOptions {
    /// Accept a tip that does not descend from `last_applied` (an explicit, one-off rollback).
    /// The commits reachable from the tip and not from `last_applied` are still verified.
    pub allow_rollback: bool,
}

/// The commits of `tip` not reachable from any of `hide`, oldest first (topological).
fn walk(repo: &Repository, tip: Oid, hide: &[Oid]) -> Result<Vec<Oid>, SourceError> {
    let mut walk = repo.revwalk()?;
    walk.set_sorting(Sort::TOPOLOGICAL | Sort::REVERSE)?;
    walk.push(tip)?;
    for h in hide {
        walk.hide(*h)?;
    }
    let mut ids = Vec::new();
    for id in walk {
        ids.push(id?);
    }
    Ok(ids)
}

/// A valid seal (its id and verified commit) or the refusal of the newest seal.
type SealLookup = Result<(Oid, VerifiedCommit), Rejection>;

/// The newest commit of `ids` (oldest first) carrying a `Plumb-Seal:` trailer: a valid seal,
/// or a refusal (a bad signature, or a signer who may not seal). `None` without seals.
fn newest_seal(
    repo: &Repository,
    ids: &[Oid],
    trust: &Trust,
) -> Result<Option<SealLookup>, SourceError> {
    for &id in ids.iter().rev() {
        let commit = repo.find_commit(id)?;
        let message = String::from_utf8_lossy(commit.message_bytes()).into_owned();
        let Some(reason) = seal_reason(&message) else {
            continue;
        };
        let Some((sig, payload, time)) = signed_parts(repo, id)? else {
            let f = Failure::new(Reason::Unsigned, "an unsigned commit cannot seal");
            return Ok(Some(Err(Rejection::of(repo, id, f)?)));
        };
        let signer = match verify_any(&sig, &payload, time, trust) {
            Ok(s) => s,
            Err(f) => return Ok(Some(Err(Rejection::of(repo, id, f)?))),
        };
        let Some(sealer) = trust.sealer_line(&signer, &sig, &payload, time) else {
            let f = Failure::new(
                Reason::SealNotAllowed,
                format!(
                    "{} ({} {}) is not in {}",
                    signer.principal,
                    signer.key_type,
                    signer.fingerprint,
                    trust
                        .sealers
                        .as_ref()
                        .map_or("the seal signers (none configured)", |s| s.path.as_str())
                ),
            );
            return Ok(Some(Err(Rejection::of(repo, id, f)?)));
        };
        return Ok(Some(Ok((
            id,
            VerifiedCommit {
                id,
                summary: summary_of(&commit),
                signer,
                seal: Some(Seal { reason, sealer }),
            },
        ))));
    }
    Ok(None)
}

/// Verifies `last_applied..tip`: all commits reachable from `tip` and not from `last_applied`,
/// including those on merged branches. With no `last_applied`, the tip alone is verified.
///
/// Seals: the newest commit of the range with a `Plumb-Seal:` trailer must be a good
/// signature of an allowed sealer (else the range is refused naming it); it vouches for
/// every commit reachable from it, so only the seal and the commits after it are verified.
///
/// `Ok(Err(rejection))` is a policy refusal; `Err(_)` means the repository could not be read.
pub fn verify_range(
    repo: &Repository,
    last_applied: Option<Oid>,
    tip: Oid,
    trust: &Trust,
    options: RangeOptions,
) -> Result<Result<VerifiedRange, Rejection>, SourceError> {
    repo.find_commit(tip)?;
    let mut hide = Vec::new();
    if let Some(from) = last_applied {
        repo.find_commit(from)?;
        let descends = from == tip || repo.graph_descendant_of(tip, from)?;
        if !descends && !options.allow_rollback {
            let f = Failure::new(
                Reason::NotDescendant,
                format!("{} does not descend from {}", short(tip), short(from)),
            );
            return Ok(Err(Rejection::of(repo, tip, f)?));
        }
        hide.push(from);
    }
    let mut ids = if hide.is_empty() {
        vec![tip]
    } else {
        walk(repo, tip, &hide)?
    };
    if ids.is_empty() {
        ids.push(tip);
    }
    let mut commits = Vec::with_capacity(ids.len());
    match newest_seal(repo, &ids, trust)? {
        Some(Err(rejection)) => return Ok(Err(rejection)),
        Some(Ok((seal, verified))) => {
            hide.push(seal);
            ids = walk(repo, tip, &hide)?;
            commits.push(verified);
        }
        None => {}
    }
    for id in ids {
        let commit = repo.find_commit(id)?;
        let summary = summary_of(&commit);
        match verify_commit(repo, id, trust)? {
            Ok(signer) => commits.push(VerifiedCommit {
                id,
                summary,
                signer,
                seal: None,
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
    let Some(tip_signer) = commits
        .iter()
        .find(|c| c.id == tip)
        .map(|c| c.signer.clone())
    else {
        // The walk always contains the tip; be defensive anyway.
        let f = Failure::new(Reason::Unsigned, "the tip was not verified");
        return Ok(Err(Rejection::of(repo, tip, f)?));
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
