//! Writing secrets into a working copy of the repo (`plumb secrets set|edit|rekey`).
//!
//! Only ciphertext is written: to a new file beside the target, then renamed over it (a
//! rename replaces a link rather than following it). Recipients and existing secrets are
//! read through the jail like every other repo file.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use zeroize::Zeroizing;

use super::keyring::{env_recipients, locate};
use super::{
    env_path, identity, repo_path, valid_name, Recipients, SecretError, SecretIdentity,
    MAX_SECRET_FILE,
};
use crate::model::jail::{EntryKind, Jail, RepoFiles};

/// The repo at `root`, read through the jail.
pub fn files(root: &Path) -> Result<RepoFiles, SecretError> {
    Jail::open(root)
        .map(RepoFiles::new)
        .map_err(|e| SecretError::Unreadable {
            path: root.display().to_string(),
            detail: e.to_string(),
        })
}

/// The recipients `set` encrypts to: `env`'s, or with no environment (a repo-wide secret)
/// those of every environment that has recipients, each key once.
pub fn recipients_for(
    root: &Path,
    files: &RepoFiles,
    env: Option<&str>,
    name: &str,
) -> Result<Recipients, SecretError> {
    if let Some(env) = env {
        return env_recipients(files, env, name);
    }
    let mut all = Recipients {
        path: "every environments/*/secrets/recipients.txt".into(),
        list: Vec::new(),
    };
    let mut seen = BTreeSet::new();
    let envs = files
        .jail()
        .and_then(|j| j.list("environments").ok())
        .unwrap_or_default();
    for e in envs.iter().filter(|e| e.kind == EntryKind::Dir) {
        if let Ok(r) = env_recipients(files, &e.name, name) {
            for rec in r.list {
                if seen.insert(rec.to_string()) {
                    all.list.push(rec);
                }
            }
        }
    }
    if all.list.is_empty() {
        return Err(SecretError::NoRecipients {
            env: format!("(every environment of {})", root.display()),
            name: name.to_string(),
        });
    }
    Ok(all)
}

/// Encrypts `plain` to `recipients` and writes it to `rel` under `root`.
pub fn write(
    root: &Path,
    rel: &str,
    plain: &[u8],
    recipients: &Recipients,
) -> Result<(), SecretError> {
    let bytes = identity::encrypt(plain, recipients)?;
    let io = |e: std::io::Error| SecretError::Unreadable {
        path: rel.to_string(),
        detail: format!("cannot write it: {e}"),
    };
    let target = root.join(rel);
    let dir = target
        .parent()
        .ok_or_else(|| io(std::io::ErrorKind::NotFound.into()))?;
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join(format!(".plumb-secret-{}.tmp", rand::random::<u64>()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(io)?;
    let done = f
        .write_all(&bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &target));
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(())
}

/// `plumb secrets set`: `plain` becomes `environments/<env>/secrets/<name>.age` (or the
/// repo-wide `secrets/<name>.age`); returns the path written.
pub fn set(
    root: &Path,
    env: Option<&str>,
    name: &str,
    plain: &[u8],
) -> Result<String, SecretError> {
    if !valid_name(name) {
        return Err(SecretError::BadName {
            name: name.to_string(),
        });
    }
    if plain.len() as u64 > MAX_SECRET_FILE / 2 {
        return Err(SecretError::Encrypt {
            detail: format!("a secret is at most {} bytes", MAX_SECRET_FILE / 2),
        });
    }
    let files = files(root)?;
    let recipients = recipients_for(root, &files, env, name)?;
    let rel = env.map_or_else(|| repo_path(name), |e| env_path(e, name));
    write(root, &rel, plain, &recipients)?;
    Ok(rel)
}

/// Where a secret lives, and its plaintext when it exists.
pub type Current = (String, Option<Zeroizing<Vec<u8>>>);

/// The current plaintext of `name` for `env` (if it exists) and where it lives.
pub fn current(
    files: &RepoFiles,
    env: &str,
    name: &str,
    identity: &SecretIdentity,
) -> Result<Current, SecretError> {
    match locate(files, env, name) {
        Ok((path, bytes, _)) => Ok((path.clone(), Some(identity.decrypt(&path, &bytes)?))),
        Err(SecretError::Missing { .. }) => Ok((env_path(env, name), None)),
        Err(e) => Err(e),
    }
}

/// `plumb secrets rekey --env E`: re-encrypts every secret of `env` to its recipients, and
/// the repo-wide ones to every environment's recipients. Returns the paths rewritten.
pub fn rekey(
    root: &Path,
    env: &str,
    identity: &SecretIdentity,
) -> Result<Vec<String>, SecretError> {
    let files = files(root)?;
    let own_dir = format!("environments/{env}/secrets");
    let mut jobs: Vec<(String, Recipients)> = Vec::new();
    let recipients = env_recipients(&files, env, "(any)")?;
    for f in files.files_under(&own_dir) {
        if let Some(name) = f.strip_suffix(".age").filter(|n| !n.contains('/')) {
            jobs.push((env_path(env, name), recipients.clone()));
        }
    }
    // Repo-wide secrets are encrypted to every environment's recipients.
    for f in files.files_under("secrets") {
        if let Some(name) = f.strip_suffix(".age").filter(|n| !n.contains('/')) {
            jobs.push((repo_path(name), recipients_for(root, &files, None, name)?));
        }
    }
    let mut done = Vec::new();
    for (path, to) in jobs {
        let bytes = files
            .shared(&path, MAX_SECRET_FILE)
            .map_err(|e| SecretError::Unreadable {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        let plain = identity.decrypt(&path, &bytes)?;
        write(root, &path, &plain, &to)?;
        done.push(path);
    }
    Ok(done)
}
