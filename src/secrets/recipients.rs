//! `environments/<env>/secrets/recipients.txt`: who may decrypt an environment's secrets.
//!
//! One recipient a line: an age X25519 recipient (`age1...`) or an OpenSSH `ssh-ed25519`
//! public key (its comment is kept for messages). Blank lines and lines starting with `#`
//! are ignored. Anything else is an error at its line and column.

use std::str::FromStr;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::SecretError;

/// One recipient of an environment.
#[derive(Clone)]
pub enum Recipient {
    X25519(age::x25519::Recipient),
    /// The key, its age stanza tag (base64 of the first 4 bytes of SHA-256 of the key), and
    /// how it is written (type, key, comment) for messages.
    SshEd25519 {
        key: age::ssh::Recipient,
        tag: String,
        text: String,
    },
}

impl std::fmt::Debug for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl std::fmt::Display for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Recipient::X25519(r) => write!(f, "{r}"),
            Recipient::SshEd25519 { text, .. } => f.write_str(text),
        }
    }
}

impl Recipient {
    /// The recipient as the `age` crate encrypts to it.
    pub fn as_age(&self) -> &dyn age::Recipient {
        match self {
            Recipient::X25519(r) => r,
            Recipient::SshEd25519 { key, .. } => key,
        }
    }
}

/// The parsed recipients of one environment, with the file they came from.
#[derive(Debug, Clone)]
pub struct Recipients {
    pub path: String,
    pub list: Vec<Recipient>,
}

impl Recipients {
    /// How many X25519 recipients there are.
    pub fn x25519_count(&self) -> usize {
        self.list
            .iter()
            .filter(|r| matches!(r, Recipient::X25519(_)))
            .count()
    }

    /// The SSH recipients as `(tag, text)`.
    pub fn ssh_tags(&self) -> Vec<(&str, &str)> {
        self.list
            .iter()
            .filter_map(|r| match r {
                Recipient::SshEd25519 { tag, text, .. } => Some((tag.as_str(), text.as_str())),
                Recipient::X25519(_) => None,
            })
            .collect()
    }
}

/// Parses a recipients file; every bad line is an error at its position.
pub fn parse(path: &str, text: &str) -> Result<Recipients, Vec<SecretError>> {
    let mut list = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let col = u32::try_from(raw.len() - raw.trim_start().len() + 1).unwrap_or(1);
        let at = |message: String| SecretError::Recipients {
            path: path.to_string(),
            line: u32::try_from(i + 1).unwrap_or(u32::MAX),
            col,
            message,
        };
        match parse_line(line) {
            Ok(r) => list.push(r),
            Err(m) => errors.push(at(m)),
        }
    }
    if list.is_empty() && errors.is_empty() {
        errors.push(SecretError::Recipients {
            path: path.to_string(),
            line: 1,
            col: 1,
            message: "no recipient: list at least one age (`age1...`) or `ssh-ed25519` public key"
                .into(),
        });
    }
    if errors.is_empty() {
        Ok(Recipients {
            path: path.to_string(),
            list,
        })
    } else {
        Err(errors)
    }
}

fn parse_line(line: &str) -> Result<Recipient, String> {
    if line.starts_with("age1") {
        let word = line.split_whitespace().next().unwrap_or(line);
        return age::x25519::Recipient::from_str(word)
            .map(Recipient::X25519)
            .map_err(|e| format!("not a valid age X25519 recipient: {e}"));
    }
    let mut words = line.split_whitespace();
    let kind = words.next().unwrap_or_default();
    let b64 = words.next().unwrap_or_default();
    if kind != "ssh-ed25519" {
        return Err(format!(
            "`{}` is not a supported recipient: use an age X25519 recipient (`age1...`) or an \
             `ssh-ed25519` public key",
            kind.chars().take(40).collect::<String>()
        ));
    }
    let key = age::ssh::Recipient::from_str(&format!("{kind} {b64}"))
        .map_err(|_| "not a valid ssh-ed25519 public key".to_string())?;
    let wire = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "not a valid ssh-ed25519 public key".to_string())?;
    let tag = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&Sha256::digest(&wire)[..4]);
    Ok(Recipient::SshEd25519 {
        key,
        tag,
        text: line.to_string(),
    })
}
