//! The trust roots, all outside the repository: the allowed-signers file (SSH), the OpenPGP
//! keyring, and who may seal (`Plumb-Seal:` commits).

use std::path::Path;

use super::allowed_signers::AllowedSigners;
use super::openpgp::Keyring;
use super::signature::{verify_payload, SignatureFormat, Signer};
use super::SourceError;

/// The commit-message trailer that makes a signed commit a seal.
pub const SEAL_TRAILER: &str = "Plumb-Seal";

/// Who may seal: allowed-signers lines (SSH keys) and/or OpenPGP fingerprints, one a line.
///
/// ```text
/// # SSH sealers, allowed-signers format
/// release@example.com namespaces="git" ssh-ed25519 AAAAC3Nz...
/// # OpenPGP sealers: the primary key's or signing subkey's fingerprint
/// 0123 4567 89AB CDEF 0123  4567 89AB CDEF 0123 4567
/// ```
#[derive(Debug, Clone)]
pub struct Sealers {
    pub path: String,
    pub ssh: AllowedSigners,
    /// Uppercase hex, no spaces, with the 1-based line.
    pub fingerprints: Vec<(String, u32)>,
}

impl Sealers {
    pub fn load(path: &Path) -> Result<Sealers, SourceError> {
        let text = std::fs::read_to_string(path).map_err(|source| SourceError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Sealers::parse(&path.display().to_string(), &text)?)
    }

    /// Fingerprint lines are taken out (kept as blank lines so positions stay right); the
    /// rest is an allowed-signers file.
    pub fn parse(path: &str, text: &str) -> Result<Sealers, super::ParseError> {
        let mut rest = String::with_capacity(text.len());
        let mut fingerprints = Vec::new();
        for (i, line) in text.lines().enumerate() {
            match fingerprint_line(line) {
                Some(f) => {
                    fingerprints.push((f, u32::try_from(i + 1).unwrap_or(u32::MAX)));
                    rest.push('\n');
                }
                None => {
                    rest.push_str(line);
                    rest.push('\n');
                }
            }
        }
        Ok(Sealers {
            path: path.to_string(),
            ssh: AllowedSigners::parse(path, &rest)?,
            fingerprints,
        })
    }
}

/// A line of 40 or 64 hex digits (spaces allowed): an OpenPGP v4 or v6 fingerprint.
fn fingerprint_line(line: &str) -> Option<String> {
    let t = line.trim();
    if t.is_empty() || !t.chars().all(|c| c.is_ascii_hexdigit() || c == ' ') {
        return None;
    }
    let hex: String = t
        .chars()
        .filter(|c| *c != ' ')
        .collect::<String>()
        .to_ascii_uppercase();
    matches!(hex.len(), 40 | 64).then_some(hex)
}

/// Every trust root of one verification.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// SSH signatures: the allowed-signers file.
    pub ssh: Option<AllowedSigners>,
    /// OpenPGP signatures: the armored public keyring.
    pub openpgp: Option<Keyring>,
    /// Who may sign `Plumb-Seal:` commits; none when absent.
    pub sealers: Option<Sealers>,
}

impl Trust {
    /// SSH only (the trust root before issue 14).
    pub fn ssh(signers: AllowedSigners) -> Trust {
        Trust {
            ssh: Some(signers),
            ..Trust::default()
        }
    }

    /// Loads the files given; at least one of `allowed_signers` and `keyring` is needed.
    pub fn load(
        allowed_signers: Option<&Path>,
        keyring: Option<&Path>,
        sealers: Option<&Path>,
    ) -> Result<Trust, SourceError> {
        if allowed_signers.is_none() && keyring.is_none() {
            return Err(SourceError::NoTrustRoot);
        }
        Ok(Trust {
            ssh: allowed_signers.map(AllowedSigners::load).transpose()?,
            openpgp: keyring.map(Keyring::load).transpose()?,
            sealers: sealers.map(Sealers::load).transpose()?,
        })
    }

    /// Whether the (already verified) signer of a seal may seal. For SSH the signature is
    /// checked again against the sealers' allowed-signers lines (namespace, validity and all);
    /// for OpenPGP the primary or signing-key fingerprint must be listed. `Some(line)` names
    /// the sealers-file line that allowed it.
    pub fn sealer_line(
        &self,
        signer: &Signer,
        armored: &[u8],
        payload: &[u8],
        time: i64,
    ) -> Option<String> {
        let sealers = self.sealers.as_ref()?;
        match signer.format {
            SignatureFormat::Ssh => verify_payload(armored, payload, time, &sealers.ssh)
                .ok()
                .map(|s| format!("{}:{}", sealers.path, s.line)),
            SignatureFormat::Openpgp => sealers
                .fingerprints
                .iter()
                .find(|(f, _)| {
                    *f == signer.fingerprint || signer.signing_key.as_deref() == Some(f.as_str())
                })
                .map(|(_, line)| format!("{}:{line}", sealers.path)),
        }
    }
}

/// The `Plumb-Seal:` trailer's reason, when the message carries one (in its last paragraph,
/// as git's trailers are).
pub fn seal_reason(message: &str) -> Option<String> {
    let (_, last) = message.trim_end().rsplit_once("\n\n")?;
    last.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        (key.trim() == SEAL_TRAILER).then(|| value.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_trailers() {
        assert_eq!(
            seal_reason("recover\n\nPlumb-Seal: reviewed abc123\n").as_deref(),
            Some("reviewed abc123")
        );
        assert_eq!(
            seal_reason("x\n\nSigned-off-by: a\nPlumb-Seal: ok").as_deref(),
            Some("ok")
        );
        // Only in the trailer paragraph: a subject line is not a trailer.
        assert_eq!(seal_reason("Plumb-Seal: x\n\nbody text\n"), None);
        assert_eq!(seal_reason("Plumb-Seal: only a subject"), None);
        assert_eq!(seal_reason("no seal\n\nPlumb-Sealed: x"), None);
    }

    #[test]
    fn sealers_file_mixes_fingerprints_and_allowed_signers() {
        let text = "# sealers\n0123 4567 89AB CDEF 0123  4567 89ab cdef 0123 4567\n\
                    bad@x namespace=\"git\" ssh-ed25519 AAAA\n";
        let e = Sealers::parse("sealers", text).unwrap_err();
        assert_eq!((e.line, e.col), (3, 7), "{e}");
        let s = Sealers::parse("sealers", "0123456789ABCDEF0123456789abcdef01234567\n").unwrap();
        assert_eq!(
            s.fingerprints,
            vec![("0123456789ABCDEF0123456789ABCDEF01234567".to_string(), 1)]
        );
        assert!(s.ssh.entries.is_empty());
        // A short hex string is not a fingerprint (and not an allowed-signers line either).
        assert!(Sealers::parse("sealers", "ABCDEF\n").is_err());
    }
}
