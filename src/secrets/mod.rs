//! Secrets: one age file per secret, decrypted only by plumb with an identity kept outside
//! the repo (issue 13, decision 10).
//!
//! Layout: `secrets/<name>.age` (every environment) and `environments/<env>/secrets/<name>.age`
//! (that environment, overriding the repo-wide one); the recipients of an environment are
//! `environments/<env>/secrets/recipients.txt` (age X25519 recipients and `ssh-ed25519` keys,
//! one a line, `#` comments). Every read of these files goes through the checkout jail.
//!
//! - [`recipients`]: parses a recipients file into typed recipients, with located errors;
//! - [`header`]: reads an age header's stanzas without a key (the structural check);
//! - [`identity`]: loads the operator's identity (mode checked) and decrypts/encrypts;
//! - [`keyring`]: what templates see: resolves `secrets.<name>` for an environment, lazily,
//!   in one of three modes (structural for `validate`, decrypting, or refusing without an
//!   identity), caching plaintext in zeroizing buffers;
//! - [`check`]: `plumb secrets check` and the structural part `plumb validate` runs.
//!
//! Plaintext is held in [`zeroize::Zeroizing`] buffers here; once a template copies it into
//! a rendered value it lives as long as that step's resource (minijinja and the modules own
//! plain `String`s), and it is never written to disk or printed: the step that read it is
//! sensitive (see `render::secrets`).

pub mod check;
pub mod header;
pub mod identity;
pub mod keyring;
pub mod recipients;
pub mod store;
#[cfg(test)]
mod tests;

pub use identity::SecretIdentity;
pub use keyring::{Keyring, SecretValue};
pub use recipients::{Recipient, Recipients};

/// Largest secret file plumb reads (bytes).
pub const MAX_SECRET_FILE: u64 = 1024 * 1024;
/// Largest recipients file plumb reads (bytes).
pub const MAX_RECIPIENTS_FILE: u64 = 256 * 1024;
/// Longest secret name.
pub const MAX_NAME: usize = 128;

/// Where the repo-wide secret `name` lives.
pub fn repo_path(name: &str) -> String {
    format!("secrets/{name}.age")
}

/// Where environment `env`'s own secret `name` lives.
pub fn env_path(env: &str, name: &str) -> String {
    format!("environments/{env}/secrets/{name}.age")
}

/// Where environment `env`'s recipients are listed.
pub fn recipients_path(env: &str) -> String {
    format!("environments/{env}/secrets/recipients.txt")
}

/// A secret name: letters, digits, `_`, `-`, `.` (not first), at most [`MAX_NAME`] bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Everything that can go wrong with a secret. No variant ever holds plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("invalid secret name `{name}`: use letters, digits, `_`, `-` and `.`")]
    BadName { name: String },
    #[error(
        "no secret `{name}` for environment `{env}`: neither {} nor {} exists",
        env_path(env, name),
        repo_path(name)
    )]
    Missing { env: String, name: String },
    #[error(
        "secret `{name}` is used in environment `{env}`, which has no recipients ({})",
        recipients_path(env)
    )]
    NoRecipients { env: String, name: String },
    #[error("{path}:{line}:{col}: {message}")]
    Recipients {
        path: String,
        line: u32,
        col: u32,
        message: String,
    },
    #[error("{path} is not encrypted to exactly the recipients of {recipients}: {detail}")]
    NotToRecipients {
        path: String,
        recipients: String,
        detail: String,
    },
    #[error("{path} cannot be decrypted with the identity {identity}: it is not one of the file's recipients")]
    WrongIdentity { path: String, identity: String },
    #[error("{path} is not a valid age file: {detail}")]
    Corrupt { path: String, detail: String },
    #[error("{path}: {detail}")]
    Unreadable { path: String, detail: String },
    #[error("identity {path} is readable by other users (mode {mode:04o})")]
    LoosePermissions { path: String, mode: u32 },
    #[error("identity {path}: {detail}")]
    Identity { path: String, detail: String },
    #[error("secret `{name}` needs an identity to be decrypted")]
    NoIdentity { name: String },
    #[error("cannot encrypt: {detail}")]
    Encrypt { detail: String },
}

impl SecretError {
    /// Stable, low-cardinality code (also the diagnostic code).
    pub fn code(&self) -> &'static str {
        match self {
            SecretError::BadName { .. } => "secret-name",
            SecretError::Missing { .. } => "secret-missing",
            SecretError::NoRecipients { .. } => "secret-no-recipients",
            SecretError::Recipients { .. } => "secret-recipients",
            SecretError::NotToRecipients { .. } => "secret-not-to-recipients",
            SecretError::WrongIdentity { .. } => "secret-wrong-identity",
            SecretError::Corrupt { .. } => "secret-corrupt",
            SecretError::Unreadable { .. } => "secret-unreadable",
            SecretError::LoosePermissions { .. } => "secret-identity-permissions",
            SecretError::Identity { .. } => "secret-identity",
            SecretError::NoIdentity { .. } => "secret-no-identity",
            SecretError::Encrypt { .. } => "secret-encrypt",
        }
    }

    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            SecretError::Missing { env, name } => Some(format!(
                "create it with `plumb secrets set --env {env} {name}` (value on stdin)"
            )),
            SecretError::NoRecipients { env, .. } => Some(format!(
                "list the age or ssh-ed25519 public keys that may decrypt {env}'s secrets in {}",
                recipients_path(env)
            )),
            SecretError::NotToRecipients { path, .. } => Some(format!(
                "re-encrypt it to the current recipients: `plumb secrets rekey --env <env>` ({path})"
            )),
            SecretError::WrongIdentity { .. } => Some(
                "pass the identity of one of the environment's recipients (--secrets-identity, \
                 or secrets_identity: in the daemon config)"
                    .into(),
            ),
            SecretError::Corrupt { .. } => Some(
                "the file must be an age file (binary or armored); re-create it with \
                 `plumb secrets set`"
                    .into(),
            ),
            SecretError::LoosePermissions { path, .. } => Some(format!("run `chmod 600 {path}`")),
            SecretError::NoIdentity { .. } => Some(
                "pass --secrets-identity FILE (or PLUMB_SECRETS_IDENTITY); the daemon reads \
                 secrets_identity: from its config"
                    .into(),
            ),
            _ => None,
        }
    }
}
