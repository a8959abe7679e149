//! The operator's identity (outside the repo), and the age encryption and decryption.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{header, Recipients, SecretError, MAX_SECRET_FILE};

/// The identities of one identity file: an age identity file (`AGE-SECRET-KEY-1...` lines)
/// or an unencrypted OpenSSH ed25519 private key. Never printed.
pub struct SecretIdentity {
    path: PathBuf,
    identities: Vec<Box<dyn age::Identity + Send + Sync>>,
}

impl std::fmt::Debug for SecretIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretIdentity({})", self.path.display())
    }
}

/// Refuses an identity file other users may read or write (the check ssh does for keys).
fn check_mode(path: &Path) -> Result<(), SecretError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| SecretError::Identity {
        path: path.display().to_string(),
        detail: format!("cannot read it: {e}"),
    })?;
    if !meta.is_file() {
        return Err(SecretError::Identity {
            path: path.display().to_string(),
            detail: "not a regular file".into(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretError::LoosePermissions {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

impl SecretIdentity {
    /// Loads `path`, refusing it when group or others may access it.
    pub fn load(path: &Path) -> Result<SecretIdentity, SecretError> {
        check_mode(path)?;
        let err = |detail: String| SecretError::Identity {
            path: path.display().to_string(),
            detail,
        };
        let mut text = Zeroizing::new(String::new());
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_SECRET_FILE).read_to_string(&mut text))
            .map_err(|e| err(format!("cannot read it: {e}")))?;
        let identities: Vec<Box<dyn age::Identity + Send + Sync>> = if text
            .trim_start()
            .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----")
        {
            let id = age::ssh::Identity::from_buffer(text.as_bytes(), None)
                .map_err(|e| err(format!("not a usable SSH private key: {e}")))?;
            match id {
                    age::ssh::Identity::Unencrypted(_) => vec![Box::new(id)],
                    age::ssh::Identity::Encrypted(_) => {
                        return Err(err(
                            "a passphrase-protected SSH key cannot be used unattended; use an \
                             age identity (age-keygen) or an unencrypted key readable only by plumb"
                                .into(),
                        ))
                    }
                    age::ssh::Identity::Unsupported(_) => {
                        return Err(err("unsupported SSH key type; use ssh-ed25519".into()))
                    }
                }
        } else {
            age::IdentityFile::from_buffer(text.as_bytes())
                .map_err(|e| err(format!("not an age identity file: {e}")))?
                .into_identities()
                .map_err(|e| err(format!("not an age identity file: {e}")))?
        };
        if identities.is_empty() {
            return Err(err(
                "the file holds no identity (AGE-SECRET-KEY-1...)".into()
            ));
        }
        Ok(SecretIdentity {
            path: path.to_path_buf(),
            identities,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Decrypts the age file `bytes` (binary or armored) read from `path`.
    pub fn decrypt(&self, path: &str, bytes: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        let corrupt = |detail: String| SecretError::Corrupt {
            path: path.to_string(),
            detail,
        };
        let raw = header::dearmor(bytes).map_err(corrupt)?;
        let decryptor =
            age::Decryptor::new_buffered(&raw[..]).map_err(|e| corrupt(e.to_string()))?;
        if decryptor.is_scrypt() {
            return Err(corrupt(
                "it is encrypted with a passphrase; plumb needs recipient keys".into(),
            ));
        }
        let reader = decryptor.decrypt(
            self.identities
                .iter()
                .map(|i| i.as_ref() as &dyn age::Identity),
        );
        let mut reader = match reader {
            Ok(r) => r,
            Err(age::DecryptError::NoMatchingKeys) => {
                return Err(SecretError::WrongIdentity {
                    path: path.to_string(),
                    identity: self.path.display().to_string(),
                })
            }
            Err(e) => return Err(corrupt(e.to_string())),
        };
        let mut out = Zeroizing::new(Vec::new());
        (&mut reader)
            .take(MAX_SECRET_FILE)
            .read_to_end(&mut out)
            .map_err(|e| corrupt(e.to_string()))?;
        Ok(out)
    }
}

/// Encrypts `plain` to every recipient, armored (text, so diffs of the repo stay readable).
pub fn encrypt(plain: &[u8], recipients: &Recipients) -> Result<Vec<u8>, SecretError> {
    let err = |e: &dyn std::fmt::Display| SecretError::Encrypt {
        detail: e.to_string(),
    };
    let encryptor = age::Encryptor::with_recipients(recipients.list.iter().map(|r| r.as_age()))
        .map_err(|e| err(&e))?;
    let mut out = Vec::new();
    let armor = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)
        .map_err(|e| err(&e))?;
    let mut w = encryptor.wrap_output(armor).map_err(|e| err(&e))?;
    w.write_all(plain).map_err(|e| err(&e))?;
    w.finish().and_then(|a| a.finish()).map_err(|e| err(&e))?;
    Ok(out)
}
