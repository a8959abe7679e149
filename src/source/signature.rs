//! Verifying one commit's SSH signature the way `git verify-commit` does with
//! `gpg.format=ssh` and `gpg.ssh.allowedSignersFile`.
//!
//! What git does (gpg-interface.c, checked against git 2.39 and 2.47 with OpenSSH 9.2):
//! 1. the `gpgsig` header holds an armored `-----BEGIN SSH SIGNATURE-----` block over the commit
//!    object without that header; no header means "unsigned" (exit 1, no output);
//! 2. `ssh-keygen -Y find-principals -f F -s sig -Overify-time=<committer time>` prints the
//!    principals of the FIRST line holding the signing key that is valid at the committer time
//!    (namespaces are not looked at), one per line;
//! 3. none: `ssh-keygen -Y check-novalidate` is run only to show the key ("No principal
//!    matched"), and the commit is BAD;
//! 4. otherwise, for each principal, `ssh-keygen -Y verify -n git -I <principal> ...`; good if
//!    the signature verifies for namespace `git` AND some line matching that principal (pattern
//!    list), holding the key, allowing namespace `git` and valid at the committer time exists.
//!
//! The committer email plays no part: a principal is a label for the key, not an identity that
//! must equal the committer. plumb mirrors this exactly; [`Signer::principal`] is the principal
//! git would print in `Good "git" signature for <principal>`.

use std::fmt;

use ssh_key::{HashAlg, PublicKey, SshSig};

use super::allowed_signers::{AllowedSigners, KeyLookup, Validity};
use super::trust::Trust;

/// The namespace git signs commits in.
pub const GIT_NAMESPACE: &str = "git";

/// The signature format of a commit or tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SignatureFormat {
    /// `-----BEGIN SSH SIGNATURE-----`, judged against the allowed-signers file.
    Ssh,
    /// `-----BEGIN PGP SIGNATURE-----`, judged against the OpenPGP keyring.
    Openpgp,
}

/// Who signed a commit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Signer {
    /// The allowed-signers principal (as git reports it), or the OpenPGP certificate's
    /// primary user ID.
    pub principal: String,
    /// SSH: `SHA256:...`, as `ssh-keygen -l` prints it. OpenPGP: the primary key's
    /// fingerprint (uppercase hex).
    pub fingerprint: String,
    /// e.g. `ssh-ed25519`, `openpgp-ed25519`.
    pub key_type: String,
    /// The allowed-signers line that accepted the key, or the keyring line where the
    /// certificate's armored block starts.
    pub line: u32,
    pub format: SignatureFormat,
    /// OpenPGP: the subkey that made the signature (uppercase hex), when not the primary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<String>,
    /// `FILE:LINE` of the trust-root entry that admitted the key.
    pub trust_root: String,
}

/// Why a commit is refused. The codes ([`Reason::code`]) are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The commit carries no signature.
    Unsigned,
    /// The signature is neither SSH nor OpenPGP (e.g. X.509).
    NotSshOrOpenpgp,
    /// The OpenPGP key (or its signing subkey) was revoked at the commit time.
    Revoked,
    /// A `Plumb-Seal:` commit signed by a key that is not allowed to seal.
    SealNotAllowed,
    /// The signing key is not in the allowed-signers file (or no principal of its line applies).
    UnknownKey,
    /// The signature does not verify: the commit was changed after signing, or it is malformed.
    BadSignature,
    /// The key's `valid-after` is later than the commit's committer time.
    NotYetValid,
    /// The key's `valid-before` is earlier than the commit's committer time.
    Expired,
    /// The signature is not for namespace `git`, or the key's `namespaces` excludes `git`.
    NamespaceNotAllowed,
    /// The new tip does not descend from the last applied commit (a rollback or force-push).
    NotDescendant,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::Unsigned => "unsigned",
            Reason::NotSshOrOpenpgp => "not-ssh-or-openpgp",
            Reason::Revoked => "revoked",
            Reason::SealNotAllowed => "seal-not-allowed",
            Reason::UnknownKey => "unknown-key",
            Reason::BadSignature => "bad-signature",
            Reason::NotYetValid => "not-yet-valid",
            Reason::Expired => "expired",
            Reason::NamespaceNotAllowed => "namespace-not-allowed",
            Reason::NotDescendant => "not-descendant",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Unsigned => "the commit is not signed; sign it (git config commit.gpgsign true) and push again, or have an allowed sealer push a `Plumb-Seal:` commit on top (README: recovering from an unsigned commit)",
            Reason::NotSshOrOpenpgp => "the signature is neither SSH nor OpenPGP (X.509 is not accepted); re-sign the commit with an SSH or OpenPGP key",
            Reason::Revoked => "the OpenPGP signing key was revoked at the commit's time; re-sign with a current key, or import the signer's updated certificate if the revocation is wrong",
            Reason::SealNotAllowed => "the commit carries a Plumb-Seal: trailer but its signer may not seal; have a signer listed in seal_signers (--seal-signers) sign the seal",
            Reason::UnknownKey => "the signing key is not an allowed signer; add the signer's public key to the allowed-signers file or OpenPGP keyring, or re-sign with an allowed key",
            Reason::BadSignature => "the signature does not verify: the commit was modified after it was signed, or the signature is corrupt; re-sign the commit",
            Reason::NotYetValid => "the signing key is not yet valid at the commit's committer time (valid-after); fix the key's validity window or re-sign with a valid key",
            Reason::Expired => "the signing key had expired at the commit's committer time (valid-before); re-sign with a current key or extend valid-before",
            Reason::NamespaceNotAllowed => "the signature is not valid for namespace \"git\"; sign commits with git (namespace git), and allow \"git\" in the key's namespaces option",
            Reason::NotDescendant => "the new tip does not descend from the last applied commit (history was rewritten or rolled back); push a new commit on top instead, or allow this one rollback explicitly",
        })
    }
}

/// A refused commit signature: the reason and the specifics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    /// Specifics: the key's fingerprint, the file line, the namespace found, ...
    pub detail: String,
}

impl Failure {
    pub(crate) fn new(reason: Reason, detail: impl Into<String>) -> Failure {
        Failure {
            reason,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{} ({})", self.reason, self.detail)
        }
    }
}

/// Verifies an armored SSH signature over `payload`, made at committer time `commit_time`
/// (Unix seconds), against the allowed signers, for namespace `git`.
pub fn verify_payload(
    armored: &[u8],
    payload: &[u8],
    commit_time: i64,
    signers: &AllowedSigners,
) -> Result<Signer, Failure> {
    let text = String::from_utf8_lossy(armored);
    if !text.contains("-----BEGIN SSH SIGNATURE-----") {
        return Err(Failure::new(
            Reason::BadSignature,
            "not an SSH signature (OpenPGP and X.509 signatures are not accepted)",
        ));
    }
    let sig = SshSig::from_pem(text.trim().as_bytes()).map_err(|e| {
        Failure::new(
            Reason::BadSignature,
            format!("malformed SSH signature: {e}"),
        )
    })?;
    let key_data = sig.public_key();
    let key = PublicKey::from(key_data.clone());
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    let key_type = key.algorithm().as_str().to_string();

    // Step 2: find-principals.
    let entry = found_entry(signers, key_data, commit_time, (&key_type, &fingerprint))?;

    // Step 4: the signature itself, for namespace git.
    if sig.namespace() != GIT_NAMESPACE {
        return Err(Failure::new(
            Reason::NamespaceNotAllowed,
            format!("signed for namespace {:?}", sig.namespace()),
        ));
    }
    if let Err(e) = key.verify(GIT_NAMESPACE, payload, &sig) {
        return Err(Failure::new(
            Reason::BadSignature,
            format!("{key_type} key {fingerprint}: {e}"),
        ));
    }

    accepted(
        signers,
        key_data,
        entry,
        commit_time,
        (key_type, fingerprint),
    )
}

/// Step 2 of git's check: the allowed-signers entry of `key_data`, valid at `commit_time`.
fn found_entry<'s>(
    signers: &'s AllowedSigners,
    key_data: &ssh_key::public::KeyData,
    commit_time: i64,
    (key_type, fingerprint): (&str, &str),
) -> Result<&'s crate::source::allowed_signers::Entry, Failure> {
    match signers.find_principals(key_data, commit_time) {
        KeyLookup::Found(e) => Ok(e),
        KeyLookup::Unknown => Err(Failure::new(
            Reason::UnknownKey,
            format!("{key_type} key {fingerprint} is not in {}", signers.path),
        )),
        KeyLookup::OutsideValidity(e, v) => {
            let reason = match v {
                Validity::NotYetValid => Reason::NotYetValid,
                Validity::Expired => Reason::Expired,
            };
            Err(Failure::new(
                reason,
                format!(
                    "key {fingerprint} at {}:{}, committer time {}",
                    signers.path,
                    e.line,
                    fmt_time(commit_time)
                ),
            ))
        }
    }
}

/// Step 4 of git's check: one of the entry's principals must be accepted for namespace
/// `git` at `commit_time`.
fn accepted(
    signers: &AllowedSigners,
    key_data: &ssh_key::public::KeyData,
    entry: &crate::source::allowed_signers::Entry,
    commit_time: i64,
    (key_type, fingerprint): (String, String),
) -> Result<Signer, Failure> {
    for principal in entry.principals.split(',').filter(|p| !p.is_empty()) {
        if let Some(ok) = signers.accepts(principal, key_data, GIT_NAMESPACE, commit_time) {
            return Ok(Signer {
                principal: principal.to_string(),
                fingerprint,
                key_type,
                line: ok.line,
                format: SignatureFormat::Ssh,
                signing_key: None,
                trust_root: format!("{}:{}", signers.path, ok.line),
            });
        }
    }
    let namespace_refused = signers.entries.iter().any(|e| {
        e.key.key_data() == key_data
            && e.validity_at(commit_time).is_ok()
            && !e.allows_namespace(GIT_NAMESPACE)
    });
    if namespace_refused {
        Err(Failure::new(
            Reason::NamespaceNotAllowed,
            format!(
                "key {fingerprint} at {}:{} is not allowed for namespace \"git\"",
                signers.path, entry.line
            ),
        ))
    } else {
        Err(Failure::new(
            Reason::UnknownKey,
            format!(
                "key {fingerprint} at {}:{} has no principal that applies (only negated patterns?)",
                signers.path, entry.line
            ),
        ))
    }
}

/// The format an armored signature announces, as git's `get_format_by_sig` reads it.
pub fn format_of(armored: &[u8]) -> Option<SignatureFormat> {
    let text = String::from_utf8_lossy(armored);
    let t = text.trim_start();
    if t.starts_with("-----BEGIN SSH SIGNATURE-----") {
        Some(SignatureFormat::Ssh)
    } else if t.starts_with("-----BEGIN PGP SIGNATURE-----")
        || t.starts_with("-----BEGIN PGP MESSAGE-----")
    {
        Some(SignatureFormat::Openpgp)
    } else {
        None
    }
}

/// Verifies a signature of either format over `payload` at committer time `time`.
pub fn verify_any(
    armored: &[u8],
    payload: &[u8],
    time: i64,
    trust: &Trust,
) -> Result<Signer, Failure> {
    match format_of(armored) {
        Some(SignatureFormat::Ssh) => match &trust.ssh {
            Some(signers) => verify_payload(armored, payload, time, signers),
            None => Err(Failure::new(
                Reason::UnknownKey,
                "an SSH signature, but no allowed-signers file is configured (--allowed-signers, allowed_signers:)",
            )),
        },
        Some(SignatureFormat::Openpgp) => {
            super::openpgp::verify_payload(armored, payload, time, trust.openpgp.as_ref())
        }
        None => Err(Failure::new(
            Reason::NotSshOrOpenpgp,
            "the gpgsig header is not an SSH or OpenPGP signature",
        )),
    }
}

/// (armored signature, signed payload, committer time).
pub type SignedParts = (Vec<u8>, Vec<u8>, i64);

/// A commit's raw signature and signed payload, and its committer time; `None` if unsigned.
pub fn signed_parts(
    repo: &git2::Repository,
    id: git2::Oid,
) -> Result<Option<SignedParts>, git2::Error> {
    let commit = repo.find_commit(id)?;
    let time = commit.committer().when().seconds();
    match repo.extract_signature(&id, None) {
        Ok((sig, payload)) => Ok(Some((sig.to_vec(), payload.to_vec(), time))),
        Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Verifies one commit of `repo`. `Ok(Err(_))` is a refused commit; `Err(_)` an I/O problem.
pub fn verify_commit(
    repo: &git2::Repository,
    id: git2::Oid,
    trust: &Trust,
) -> Result<Result<Signer, Failure>, git2::Error> {
    Ok(match signed_parts(repo, id)? {
        Some((sig, payload, time)) => verify_any(&sig, &payload, time, trust),
        None => Err(Failure::new(Reason::Unsigned, "")),
    })
}

/// A raw commit object (as `git cat-file commit` prints it) split as git's
/// `parse_buffer_signed_by_header` does: the `gpgsig` (or `gpgsig-sha256`) header's value,
/// continuation lines unindented, is the signature; the object without that header is the
/// signed payload. Also the committer time. `None` for an object that is not a commit's
/// (no header/body split, no committer time); an unsigned commit has an empty signature.
pub fn split_raw_commit(raw: &[u8]) -> Option<SignedParts> {
    let header_end = raw.windows(2).position(|w| w == b"\n\n")? + 1;
    let (header, body) = raw.split_at(header_end);
    let mut sig = Vec::new();
    let mut payload = Vec::with_capacity(raw.len());
    let mut time = None;
    let mut in_sig = false;
    for line in header.split_inclusive(|b| *b == b'\n') {
        if in_sig && line.first() == Some(&b' ') {
            sig.extend_from_slice(&line[1..]);
            continue;
        }
        in_sig = false;
        let value = line
            .strip_prefix(b"gpgsig ")
            .or_else(|| line.strip_prefix(b"gpgsig-sha256 "));
        if let Some(v) = value.filter(|_| sig.is_empty()) {
            sig.extend_from_slice(v);
            in_sig = true;
            continue;
        }
        if let Some(c) = line.strip_prefix(b"committer ") {
            let text = String::from_utf8_lossy(c);
            let mut words = text.rsplit(' ');
            let _tz = words.next();
            time = words.next().and_then(|t| t.trim().parse::<i64>().ok());
        }
        payload.extend_from_slice(line);
    }
    payload.extend_from_slice(body);
    Some((sig, payload, time?))
}

/// Verifies a raw commit object received from elsewhere (a host's `git cat-file commit`):
/// the same verdict as [`verify_commit`] on that object. The caller checks that the bytes
/// hash to the commit id it expects.
pub fn verify_raw_commit(raw: &[u8], trust: &Trust) -> Result<Signer, Failure> {
    match split_raw_commit(raw) {
        None => Err(Failure::new(
            Reason::BadSignature,
            "not a commit object (no header, or no committer time)",
        )),
        Some((sig, _, _)) if sig.is_empty() => Err(Failure::new(Reason::Unsigned, "")),
        Some((sig, payload, time)) => verify_any(&sig, &payload, time, trust),
    }
}

fn fmt_time(t: i64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(fmt).ok())
        .unwrap_or_else(|| t.to_string())
}
