//! OpenPGP commit and tag signatures, judged against an armored public keyring kept outside
//! the repository (`--openpgp-keyring FILE`, `openpgp_keyring:` in the daemon config).
//!
//! A signature verifies when its issuer is the primary key or a subkey of a certificate in the
//! keyring, the signature checks out over the signed payload, and the signing key, at the
//! commit's committer time:
//! - has a valid self-signature (a user ID certification or direct-key signature for the
//!   primary; a subkey binding with a valid back-signature for a subkey);
//! - may sign (key flags, or the algorithm when the flags are absent, as gpg reads them);
//! - was created at or before that time (else `not-yet-valid`) and had not expired
//!   (`expired`: key expiration of the newest self-signature or binding made by then);
//! - was not revoked (`revoked`): a hard revocation (no reason, "compromised", or any reason
//!   not known to be soft) counts whenever it was made; a soft one ("superseded", "retired")
//!   only from its own creation time.
//!
//! Deliberate difference from `git verify-commit` with gpg: gpg judges key expiry and soft
//! revocation at the time of verification, so a commit signed while its key was valid starts
//! failing the day the key expires. plumb judges them at the commit time, as it does for SSH
//! keys' `valid-before`. Every case where both judge at the same instant agrees (the
//! differential tests in tests/source_openpgp.rs).
//!
//! Parsing is by `pgp` (rpgp), a maintained pure-Rust implementation: no gpg process per
//! commit, no agent, no GNUPGHOME state, and the keyring is read-only data.

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey, SignedPublicSubKey};
use pgp::packet::{RevocationCode, Signature, SignatureType};
use pgp::types::{KeyDetails, Tag};

use super::signature::{Failure, Reason, SignatureFormat, Signer};

/// A keyring larger than this is refused (a trust root is a handful of certificates).
pub const MAX_KEYRING_BYTES: u64 = 8 << 20;

/// An error reading the keyring: where and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}:1: {message} (export the signers' public keys with `gpg --export --armor FINGERPRINT... > FILE`)")]
pub struct KeyringError {
    pub path: String,
    pub line: u32,
    pub message: String,
}

/// One certificate of the keyring and the line its armored block starts at.
#[derive(Debug, Clone)]
pub struct Cert {
    pub line: u32,
    pub key: SignedPublicKey,
}

/// An armored OpenPGP public keyring (one or more `PUBLIC KEY BLOCK`s).
#[derive(Debug, Clone)]
pub struct Keyring {
    /// The file name used in messages.
    pub path: String,
    pub certs: Vec<Cert>,
}

const BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";

impl Keyring {
    /// Reads and parses a keyring file (at most [`MAX_KEYRING_BYTES`]).
    pub fn load(path: &std::path::Path) -> Result<Keyring, super::SourceError> {
        let io = |source| super::SourceError::Io {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        let label = path.display().to_string();
        if len > MAX_KEYRING_BYTES {
            return Err(KeyringError {
                path: label,
                line: 1,
                message: format!(
                    "the keyring is {len} bytes; at most {MAX_KEYRING_BYTES} are read"
                ),
            }
            .into());
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Ok(Keyring::parse(&label, &text)?)
    }

    /// Parses armored public key blocks; `path` labels errors. Secret keys are refused.
    pub fn parse(path: &str, text: &str) -> Result<Keyring, KeyringError> {
        let err = |line: u32, message: String| KeyringError {
            path: path.to_string(),
            line,
            message,
        };
        if text.contains("PRIVATE KEY BLOCK") {
            return Err(err(
                1,
                "the keyring holds a private key; give public keys only".into(),
            ));
        }
        let mut starts = Vec::new();
        let mut offset = 0usize;
        for (i, l) in text.split_inclusive('\n').enumerate() {
            if l.trim_end() == BEGIN {
                starts.push((offset, u32::try_from(i + 1).unwrap_or(u32::MAX)));
            }
            offset += l.len();
        }
        if starts.is_empty() {
            return Err(err(1, format!("no {BEGIN} block")));
        }
        let mut certs = Vec::new();
        for (k, &(start, line)) in starts.iter().enumerate() {
            let end = starts.get(k + 1).map_or(text.len(), |s| s.0);
            let block = text.get(start..end).unwrap_or_default();
            let (keys, _) = SignedPublicKey::from_string_many(block)
                .map_err(|e| err(line, format!("not an OpenPGP public key block: {e}")))?;
            for key in keys {
                let key = key.map_err(|e| err(line, format!("not an OpenPGP public key: {e}")))?;
                certs.push(Cert { line, key });
            }
        }
        Ok(Keyring {
            path: path.to_string(),
            certs,
        })
    }

    /// The certificate and key (primary or subkey) that issued `sig`, if the keyring has it.
    fn find(&self, sig: &Signature) -> Option<(&Cert, Option<&SignedPublicSubKey>)> {
        let fprs = sig.issuer_fingerprint();
        let ids = sig.issuer_key_id();
        let matches = |k: &dyn KeyDetails| {
            let f = k.fingerprint();
            if !fprs.is_empty() {
                return fprs.iter().any(|x| **x == f);
            }
            ids.iter().any(|x| **x == k.legacy_key_id())
        };
        for cert in &self.certs {
            if matches(&cert.key.primary_key) {
                return Some((cert, None));
            }
            if let Some(sub) = cert.key.public_subkeys.iter().find(|s| matches(&s.key)) {
                return Some((cert, Some(sub)));
            }
        }
        None
    }
}

/// Uppercase hex fingerprint, as `gpg --fingerprint --with-colons` prints it.
pub fn fingerprint_hex(k: &dyn KeyDetails) -> String {
    format!("{:X}", k.fingerprint())
}

fn issuer_text(sig: &Signature) -> String {
    if let Some(f) = sig.issuer_fingerprint().first() {
        return format!("{f:X}");
    }
    match sig.issuer_key_id().first() {
        Some(id) => id.to_string().to_ascii_uppercase(),
        None => "with no issuer".into(),
    }
}

fn created(sig: &Signature) -> i64 {
    sig.created().map_or(0, |t| i64::from(t.as_secs()))
}

/// The newest of `sigs` created at or before `t`.
fn newest_by<'a>(sigs: impl Iterator<Item = &'a Signature>, t: i64) -> Option<&'a Signature> {
    sigs.filter(|s| created(s) <= t).max_by_key(|s| created(s))
}

/// A revocation that applies at `t`: hard ones always, soft ones from their creation.
fn revoked_at(revocations: &[&Signature], t: i64) -> Option<String> {
    revocations.iter().find_map(|r| {
        let soft = matches!(
            r.revocation_reason_code(),
            Some(RevocationCode::KeySuperseded | RevocationCode::KeyRetired)
        );
        (!soft || created(r) <= t).then(|| match r.revocation_reason_code() {
            Some(code) => format!("{code:?}"),
            None => "no reason given".to_string(),
        })
    })
}

/// The key's validity window and revocations at `t`, given its newest self-signature.
fn check_key(
    key: &dyn KeyDetails,
    self_sig: Option<&Signature>,
    revocations: &[&Signature],
    t: i64,
    what: &str,
) -> Result<(), Failure> {
    let fpr = fingerprint_hex(key);
    let key_created = i64::from(key.created_at().as_secs());
    if t < key_created {
        return Err(Failure::new(
            Reason::NotYetValid,
            format!("{what} {fpr} was created after the commit time"),
        ));
    }
    if let Some(reason) = revoked_at(revocations, t) {
        return Err(Failure::new(
            Reason::Revoked,
            format!("{what} {fpr} is revoked ({reason})"),
        ));
    }
    let Some(sig) = self_sig else {
        return Err(Failure::new(
            Reason::UnknownKey,
            format!("{what} {fpr} has no valid self-signature made by the commit time"),
        ));
    };
    let expiry = sig
        .key_expiration_time()
        .map(|d| std::time::Duration::from(d).as_secs())
        .filter(|d| *d > 0);
    if let Some(d) = expiry {
        let until = key_created.saturating_add(i64::try_from(d).unwrap_or(i64::MAX));
        if t >= until {
            return Err(Failure::new(
                Reason::Expired,
                format!("{what} {fpr} expired before the commit time"),
            ));
        }
    }
    Ok(())
}

/// Whether the self-signature lets the key sign (flags, or the algorithm without flags).
fn may_sign(key: &dyn KeyDetails, sig: &Signature) -> bool {
    let flags = sig.key_flags();
    let any = flags.certify()
        || flags.sign()
        || flags.encrypt_comms()
        || flags.encrypt_storage()
        || flags.authentication();
    if any {
        flags.sign()
    } else {
        key.algorithm().can_sign()
    }
}

/// The primary user ID (the one whose valid self-signature says primary, else the first
/// valid one).
fn primary_uid(cert: &SignedPublicKey) -> String {
    let pk = &cert.primary_key;
    let valid = |u: &&pgp::types::SignedUser| {
        u.signatures
            .iter()
            .any(|s| s.verify_certification(pk, Tag::UserId, &u.id).is_ok())
    };
    let users: Vec<_> = cert.details.users.iter().filter(valid).collect();
    let chosen = users
        .iter()
        .find(|u| u.signatures.iter().any(|s| s.is_primary()))
        .or_else(|| users.first());
    chosen
        .map(|u| String::from_utf8_lossy(u.id.id()).into_owned())
        .unwrap_or_default()
}

/// The primary key's state at `t`: valid self-signatures, revocations.
fn check_primary(cert: &SignedPublicKey, t: i64, signs: bool) -> Result<(), Failure> {
    let pk = &cert.primary_key;
    let mut selfs: Vec<&Signature> = Vec::new();
    for u in &cert.details.users {
        selfs.extend(
            u.signatures
                .iter()
                .filter(|s| s.verify_certification(pk, Tag::UserId, &u.id).is_ok()),
        );
    }
    selfs.extend(
        cert.details
            .direct_signatures
            .iter()
            .filter(|s| s.typ() == Some(SignatureType::Key) && s.verify_key(pk).is_ok()),
    );
    let revocations: Vec<&Signature> = cert
        .details
        .revocation_signatures
        .iter()
        .filter(|s| s.typ() == Some(SignatureType::KeyRevocation) && s.verify_key(pk).is_ok())
        .collect();
    let newest = newest_by(selfs.into_iter(), t);
    check_key(pk, newest, &revocations, t, "key")?;
    if signs && newest.is_some_and(|s| !may_sign(pk, s)) {
        return Err(Failure::new(
            Reason::UnknownKey,
            format!("key {} is not a signing key", fingerprint_hex(pk)),
        ));
    }
    Ok(())
}

/// A signing subkey's state at `t`: a valid binding with a back-signature, not revoked.
fn check_subkey(cert: &SignedPublicKey, sub: &SignedPublicSubKey, t: i64) -> Result<(), Failure> {
    let pk = &cert.primary_key;
    let verified = |typ: SignatureType| {
        sub.signatures
            .iter()
            .filter(move |s| s.typ() == Some(typ))
            .filter(move |s| s.verify_subkey_binding(pk, &sub.key).is_ok())
    };
    let revocations: Vec<&Signature> = verified(SignatureType::SubkeyRevocation).collect();
    let binding = newest_by(verified(SignatureType::SubkeyBinding), t);
    check_key(&sub.key, binding, &revocations, t, "subkey")?;
    let fpr = fingerprint_hex(&sub.key);
    let Some(binding) = binding else {
        return Ok(()); // check_key refused it already
    };
    if !may_sign(&sub.key, binding) {
        return Err(Failure::new(
            Reason::UnknownKey,
            format!("subkey {fpr} is not a signing subkey"),
        ));
    }
    let backsig = binding
        .embedded_signature()
        .is_some_and(|b| b.verify_primary_key_binding(&sub.key, pk).is_ok());
    if !backsig {
        return Err(Failure::new(
            Reason::UnknownKey,
            format!("signing subkey {fpr} has no valid back-signature (cross-certification)"),
        ));
    }
    Ok(())
}

/// Verifies an armored OpenPGP signature over `payload`, at committer time `t`.
pub fn verify_payload(
    armored: &[u8],
    payload: &[u8],
    t: i64,
    keyring: Option<&Keyring>,
) -> Result<Signer, Failure> {
    let text = String::from_utf8_lossy(armored);
    let sig = DetachedSignature::from_string(text.trim())
        .map_err(|e| {
            Failure::new(
                Reason::BadSignature,
                format!("malformed OpenPGP signature: {e}"),
            )
        })?
        .0
        .signature;
    let Some(keyring) = keyring else {
        return Err(Failure::new(
            Reason::UnknownKey,
            format!(
                "OpenPGP key {} signed it, but no OpenPGP keyring is configured (--openpgp-keyring, openpgp_keyring:)",
                issuer_text(&sig)
            ),
        ));
    };
    let Some((cert, sub)) = keyring.find(&sig) else {
        return Err(Failure::new(
            Reason::UnknownKey,
            format!(
                "OpenPGP key {} is not in {}",
                issuer_text(&sig),
                keyring.path
            ),
        ));
    };
    if !matches!(sig.typ(), Some(SignatureType::Binary | SignatureType::Text)) {
        return Err(Failure::new(
            Reason::BadSignature,
            format!("not a document signature ({:?})", sig.typ()),
        ));
    }
    let verified = match sub {
        Some(s) => sig.verify(&s.key, payload),
        None => sig.verify(&cert.key.primary_key, payload),
    };
    let fpr = fingerprint_hex(&cert.key.primary_key);
    if let Err(e) = verified {
        return Err(Failure::new(
            Reason::BadSignature,
            format!("OpenPGP key {fpr}: {e}"),
        ));
    }
    check_primary(&cert.key, t, sub.is_none())?;
    if let Some(s) = sub {
        check_subkey(&cert.key, s, t)?;
    }
    Ok(Signer {
        principal: primary_uid(&cert.key),
        fingerprint: fpr,
        key_type: format!("openpgp-{:?}", cert.key.primary_key.algorithm()).to_lowercase(),
        line: cert.line,
        format: SignatureFormat::Openpgp,
        signing_key: sub.map(|s| fingerprint_hex(&s.key)),
        trust_root: format!("{}:{}", keyring.path, cert.line),
    })
}
