//! `plumb secrets check`, and the structural part of it `plumb validate` runs.
//!
//! Structural (no identity): every environment's recipients file parses; every secret a
//! template references exists for each environment that renders it, that environment has
//! recipients, and the file is encrypted to exactly them (a repo-wide secret: to exactly the
//! recipients of every environment that uses it). Checked per reference while rendering
//! (see [`super::keyring`]) and here for what needs every environment at once. With an
//! identity, each referenced secret must also decrypt.

use std::collections::{BTreeMap, BTreeSet};

use super::keyring::{check_file, decrypt_text, locate, Expected};
use super::{recipients, recipients_path, SecretError, SecretIdentity, MAX_RECIPIENTS_FILE};
use crate::diag::Diagnostic;
use crate::model::jail::JailError;
use crate::model::Repo;
use crate::render::DesiredHost;
use crate::yaml::Pos;

/// Which secrets each environment's steps read: environment → names.
pub type Usage = BTreeMap<String, BTreeSet<String>>;

/// Adds the secrets the rendered hosts of `env` read to `usage`.
pub fn record_usage(usage: &mut Usage, env: &str, hosts: &[DesiredHost]) {
    let names = usage.entry(env.to_string()).or_default();
    for h in hosts {
        for s in &h.steps {
            names.extend(s.secrets.iter().cloned());
        }
    }
}

/// A secret error as a diagnostic: at the recipients line, or at the top of the file.
pub fn diagnostic(e: &SecretError) -> Diagnostic {
    let (path, pos) = match e {
        SecretError::Recipients {
            path, line, col, ..
        } => (
            path.clone(),
            Pos {
                line: *line,
                col: *col,
            },
        ),
        SecretError::NotToRecipients { path, .. }
        | SecretError::Corrupt { path, .. }
        | SecretError::Unreadable { path, .. }
        | SecretError::WrongIdentity { path, .. } => (path.clone(), Pos::START),
        SecretError::NoRecipients { env, .. } => (recipients_path(env), Pos::START),
        _ => ("plumb.yaml".to_string(), Pos::START),
    };
    let message = match e {
        SecretError::Recipients { message, .. } => message.clone(),
        other => other.to_string(),
    };
    let d = Diagnostic::error(e.code(), path, pos, message);
    match e.hint() {
        Some(h) => d.with_hint(h),
        None => d,
    }
}

/// The checks that need every environment: recipients files, and repo-wide secrets encrypted
/// to exactly the recipients of the environments that use them.
pub fn structural(repo: &Repo, usage: &Usage) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for env in repo.environments.keys() {
        let path = recipients_path(env);
        match repo.files.text(&path, MAX_RECIPIENTS_FILE) {
            Ok(text) => {
                if let Err(errs) = recipients::parse(&path, &text) {
                    out.extend(errs.iter().map(diagnostic));
                }
            }
            Err(JailError::NotFound { .. }) => {}
            Err(e) => out.push(crate::model::load::jail_diagnostic(&e, Pos::START)),
        }
    }
    // Repo-wide files: encrypted to exactly every environment's recipients.
    let mut shared = BTreeSet::new();
    for (env, names) in usage {
        for name in names {
            if let Ok((path, bytes, false)) = locate(&repo.files, env, name) {
                if shared.insert(path.clone()) {
                    let all = super::store::recipients_for(&repo.root, &repo.files, None, name);
                    if let Ok(all) = all {
                        if let Err(e) = check_file(&path, &bytes, &Expected::of(&[&all]), true) {
                            out.push(diagnostic(&e));
                        }
                    }
                }
            }
        }
    }
    out
}

/// Decrypts every secret each environment uses with `identity`; one diagnostic per failure.
/// Each file is decrypted once; the plaintext is dropped (zeroized) at once.
pub fn decrypts(repo: &Repo, usage: &Usage, identity: &SecretIdentity) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (env, names) in usage {
        for name in names {
            let Ok((path, bytes, _)) = locate(&repo.files, env, name) else {
                continue; // reported at the reference
            };
            if seen.insert(path.clone()) {
                if let Err(e) = decrypt_text(identity, &path, &bytes) {
                    out.push(diagnostic(&e));
                }
            }
        }
    }
    out
}
