//! Following signed tags (`ref: {tags: "v*"}` in the daemon config): the newest tag whose
//! name matches the pattern (by tagger time, then name), its signature (SSH or OpenPGP,
//! judged like a commit's, at the tagger time), then every commit since the last applied one.
//! A tag whose commit does not descend from the last applied commit is a rollback, refused
//! by the range policy (`not-descendant`).

use git2::{ObjectType, Oid, Repository};

use super::allowed_signers::match_pattern;
use super::signature::{format_of, verify_any, Failure, Reason, Signer};
use super::trust::Trust;
use super::SourceError;

/// What the daemon deploys: a branch's tip or the newest matching tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Follow {
    Branch(String),
    /// A glob over tag names (`*` and `?`), e.g. `v*`.
    Tags(String),
}

/// The newest tag matching a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagTip {
    pub name: String,
    /// The tag object (annotated tags), or `None` for a lightweight tag (never signed).
    pub object: Option<Oid>,
    pub commit: Oid,
    /// Tagger time (annotated) or committer time (lightweight), Unix seconds.
    pub time: i64,
}

/// The newest tag of `repo` whose name matches `pattern`, or `None`.
pub fn newest_tag(repo: &Repository, pattern: &str) -> Result<Option<TagTip>, SourceError> {
    let mut best: Option<TagTip> = None;
    for name in repo.tag_names(None)?.iter().flatten() {
        if !match_pattern(name, pattern) {
            continue;
        }
        let obj = repo.revparse_single(&format!("refs/tags/{name}"))?;
        let (object, time) = match obj.as_tag() {
            Some(tag) => (
                Some(tag.id()),
                tag.tagger().map_or(0, |t| t.when().seconds()),
            ),
            None => (None, 0),
        };
        let Ok(commit) = obj.peel(ObjectType::Commit) else {
            continue; // a tag of a tree or blob is not deployable
        };
        let time = if object.is_some() {
            time
        } else {
            repo.find_commit(commit.id())?.time().seconds()
        };
        let tip = TagTip {
            name: name.to_string(),
            object,
            commit: commit.id(),
            time,
        };
        let newer = best
            .as_ref()
            .is_none_or(|b| (tip.time, &tip.name) > (b.time, &b.name));
        if newer {
            best = Some(tip);
        }
    }
    Ok(best)
}

/// Splits a signed tag object into (payload, signature): the signature is the block that
/// starts at the last line opening a known armor, as git's `parse_signed_buffer` finds it.
fn split_signed(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut at = None;
    let mut pos = 0;
    for line in raw.split_inclusive(|b| *b == b'\n') {
        if format_of(line).is_some() || line.starts_with(b"-----BEGIN SIGNED MESSAGE-----") {
            at = Some(pos);
        }
        pos += line.len();
    }
    at.map(|a| raw.split_at(a))
}

/// Verifies the tag's signature; a lightweight or unsigned tag is `unsigned`.
pub fn verify_tag(
    repo: &Repository,
    tag: &TagTip,
    trust: &Trust,
) -> Result<Result<Signer, Failure>, SourceError> {
    let Some(object) = tag.object else {
        return Ok(Err(Failure::new(
            Reason::Unsigned,
            format!(
                "tag {} is a lightweight tag; push a signed tag (git tag -s)",
                tag.name
            ),
        )));
    };
    let odb = repo.odb()?;
    let raw = odb.read(object)?;
    let Some((payload, sig)) = split_signed(raw.data()) else {
        return Ok(Err(Failure::new(
            Reason::Unsigned,
            format!(
                "tag {} is not signed; push a signed tag (git tag -s)",
                tag.name
            ),
        )));
    };
    if format_of(sig).is_none() {
        return Ok(Err(Failure::new(
            Reason::NotSshOrOpenpgp,
            format!("tag {} carries an X.509 signature", tag.name),
        )));
    }
    Ok(
        verify_any(sig, payload, tag.time, trust).map_err(|f| Failure {
            detail: format!("tag {}: {}", tag.name, f.detail),
            ..f
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_last_armored_block() {
        let raw = b"object 1\ntype commit\ntag v1\n\nmsg\n-----BEGIN PGP SIGNATURE-----\nx\n-----END PGP SIGNATURE-----\n";
        let (p, s) = split_signed(raw).unwrap();
        assert_eq!(p, b"object 1\ntype commit\ntag v1\n\nmsg\n");
        assert!(s.starts_with(b"-----BEGIN PGP SIGNATURE-----"));
        assert!(split_signed(b"object 1\n\nno signature\n").is_none());
    }
}
