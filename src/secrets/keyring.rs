//! What `secrets.<name>` resolves to while rendering one environment.
//!
//! Three modes, chosen per environment: **structural** (`plumb validate`, and every
//! environment a command does not target): the file must exist, the environment must have
//! recipients and the file's header must match them, and the value is a placeholder;
//! **decrypt** (the targeted environment with an identity): the same checks, then the
//! plaintext, decrypted once per file and kept in a zeroizing buffer; **no identity** (the
//! targeted environment without one): a located error at the first reference. Only the
//! secrets a template reads are ever looked at.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use super::{
    env_path, header, recipients, recipients_path, repo_path, valid_name, Recipients, SecretError,
    SecretIdentity, MAX_RECIPIENTS_FILE, MAX_SECRET_FILE,
};
use crate::model::jail::{JailError, RepoFiles};

/// What a reference to a secret gives a template.
#[derive(Debug, Clone)]
pub enum SecretValue {
    Plain(Arc<Zeroizing<String>>),
    /// Structural mode: the secret exists and is well-formed; its value is not read.
    Placeholder,
}

/// The placeholder a structural render puts where a secret's value goes.
pub fn placeholder(name: &str) -> String {
    format!("(secret {name})")
}

type Cache = HashMap<String, Result<Arc<Zeroizing<String>>, SecretError>>;

/// Resolves secrets for rendering; cheap to clone (shared cache).
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    /// The environment whose secrets are decrypted, and the identity to do it with (`None`:
    /// references in it are errors). No target: every environment is structural.
    target: Option<(String, Option<Arc<SecretIdentity>>)>,
    cache: Arc<Mutex<Cache>>,
}

/// What one environment's references get.
enum Mode<'a> {
    Structural,
    Decrypt(&'a SecretIdentity),
    NoIdentity,
}

/// The recipients a file must be encrypted to, summarised as the header can show them.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    pub x25519: usize,
    /// `(tag, how the key is written)` of each SSH recipient.
    pub ssh: BTreeMap<String, String>,
    /// Where they are listed, for messages.
    pub label: String,
}

impl Expected {
    /// The recipients of one or more environments (a repo-wide secret used by several must be
    /// encrypted to all of theirs); duplicates counted once.
    pub fn of(all: &[&Recipients]) -> Expected {
        let mut x = std::collections::BTreeSet::new();
        let mut e = Expected::default();
        for r in all {
            for rec in &r.list {
                if let super::Recipient::X25519(k) = rec {
                    x.insert(k.to_string());
                }
            }
            for (tag, text) in r.ssh_tags() {
                e.ssh.insert(tag.to_string(), text.to_string());
            }
        }
        e.x25519 = x.len();
        e.label = all
            .iter()
            .map(|r| r.path.as_str())
            .collect::<Vec<_>>()
            .join(" + ");
        e
    }
}

/// Checks the header of the age file at `path` against `expected`: exactly those recipients
/// (`exact`), or at least them.
pub fn check_file(
    path: &str,
    bytes: &[u8],
    expected: &Expected,
    exact: bool,
) -> Result<(), SecretError> {
    let stanzas = header::stanzas(bytes).map_err(|detail| SecretError::Corrupt {
        path: path.to_string(),
        detail,
    })?;
    let not_to = |detail: String| SecretError::NotToRecipients {
        path: path.to_string(),
        recipients: expected.label.clone(),
        detail,
    };
    let mut x25519 = 0;
    let mut tags = Vec::new();
    for s in stanzas.iter().filter(|s| !s.is_grease()) {
        match s.kind.as_str() {
            "X25519" => x25519 += 1,
            "ssh-ed25519" => tags.push(s.args.first().cloned().unwrap_or_default()),
            "scrypt" => return Err(not_to("it is encrypted with a passphrase".into())),
            other => {
                return Err(not_to(format!(
                    "it is encrypted to a `{}` recipient, which the list does not have",
                    other.chars().take(40).collect::<String>()
                )))
            }
        }
    }
    if let Some((_, text)) = expected.ssh.iter().find(|(t, _)| !tags.contains(t)) {
        return Err(not_to(format!("it is not encrypted to `{text}`")));
    }
    if exact && tags.iter().any(|t| !expected.ssh.contains_key(t)) {
        return Err(not_to(
            "it is encrypted to an ssh-ed25519 key the list does not have".into(),
        ));
    }
    if (exact && x25519 != expected.x25519) || x25519 < expected.x25519 {
        return Err(not_to(format!(
            "it is encrypted to {x25519} age X25519 recipient(s), the list has {}",
            expected.x25519
        )));
    }
    Ok(())
}

fn unreadable(e: JailError) -> SecretError {
    SecretError::Unreadable {
        path: e.path().to_string(),
        detail: e.to_string(),
    }
}

/// The file that holds `name` for `env` (the environment's own first), and whether it is
/// the environment's own.
pub fn locate(
    files: &RepoFiles,
    env: &str,
    name: &str,
) -> Result<(String, Arc<[u8]>, bool), SecretError> {
    if !valid_name(name) {
        return Err(SecretError::BadName {
            name: name.chars().take(super::MAX_NAME).collect(),
        });
    }
    for (path, own) in [(env_path(env, name), true), (repo_path(name), false)] {
        match files.shared(&path, MAX_SECRET_FILE) {
            Ok(bytes) => return Ok((path, bytes, own)),
            Err(JailError::NotFound { .. }) => continue,
            Err(e) => return Err(unreadable(e)),
        }
    }
    Err(SecretError::Missing {
        env: env.to_string(),
        name: name.to_string(),
    })
}

/// The recipients of `env` (`name`: the secret that needs them, for the message).
pub fn env_recipients(files: &RepoFiles, env: &str, name: &str) -> Result<Recipients, SecretError> {
    let path = recipients_path(env);
    let text = match files.text(&path, MAX_RECIPIENTS_FILE) {
        Ok(t) => t,
        Err(JailError::NotFound { .. }) => {
            return Err(SecretError::NoRecipients {
                env: env.to_string(),
                name: name.to_string(),
            })
        }
        Err(e) => return Err(unreadable(e)),
    };
    recipients::parse(&path, &text).map_err(|mut errs| errs.remove(0))
}

impl Keyring {
    /// Decrypts the secrets of `env` with `identity` (none: referencing one is an error);
    /// every other environment is structural.
    pub fn for_env(env: &str, identity: Option<Arc<SecretIdentity>>) -> Keyring {
        Keyring {
            target: Some((env.to_string(), identity)),
            cache: Arc::default(),
        }
    }

    fn mode(&self, env: &str) -> Mode<'_> {
        match &self.target {
            Some((t, Some(id))) if t == env => Mode::Decrypt(id),
            Some((t, None)) if t == env => Mode::NoIdentity,
            _ => Mode::Structural,
        }
    }

    /// Resolves `secrets.<name>` for `env`.
    pub fn resolve(
        &self,
        files: &RepoFiles,
        env: &str,
        name: &str,
    ) -> Result<SecretValue, SecretError> {
        let (path, bytes, own) = locate(files, env, name)?;
        let recipients = env_recipients(files, env, name)?;
        check_file(&path, &bytes, &Expected::of(&[&recipients]), own)?;
        let identity = match self.mode(env) {
            Mode::Structural => return Ok(SecretValue::Placeholder),
            Mode::NoIdentity => {
                return Err(SecretError::NoIdentity {
                    name: name.to_string(),
                })
            }
            Mode::Decrypt(id) => id,
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let entry = cache
            .entry(path.clone())
            .or_insert_with(|| decrypt_text(identity, &path, &bytes));
        entry.clone().map(SecretValue::Plain)
    }
}

/// Decrypts a secret and checks it is UTF-8 text (templates hold strings).
pub fn decrypt_text(
    identity: &SecretIdentity,
    path: &str,
    bytes: &[u8],
) -> Result<Arc<Zeroizing<String>>, SecretError> {
    let plain = identity.decrypt(path, bytes)?;
    match std::str::from_utf8(&plain) {
        Ok(s) => Ok(Arc::new(Zeroizing::new(s.to_string()))),
        Err(_) => Err(SecretError::Corrupt {
            path: path.to_string(),
            detail: "the decrypted value is not UTF-8 text".into(),
        }),
    }
}
