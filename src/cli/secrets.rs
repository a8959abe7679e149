//! `plumb secrets set|edit|rekey|check`: the repo's age-encrypted secrets.
//!
//! A value never comes from the command line (it would be in the process list and the shell
//! history): `set` reads stdin or `--file`; `edit` opens `$EDITOR` on a private temporary
//! file (in memory-backed `/dev/shm` when there is one), overwritten with zeros and removed
//! afterwards.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use zeroize::Zeroizing;

use crate::secrets::{self, check, store, SecretIdentity};

use super::args::{OutputArg, OutputFormat};
use super::diagnostic::render_all;
use super::term::{print_json, Term};

#[derive(Debug, clap::Subcommand)]
pub enum SecretsCommand {
    /// Encrypt a value (stdin, or --file) to an environment's recipients.
    Set {
        #[command(flatten)]
        at: SecretAt,
        /// Read the value from this file instead of stdin.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Decrypt a secret into $EDITOR, then encrypt what was saved.
    Edit {
        #[command(flatten)]
        at: SecretAt,
        #[command(flatten)]
        identity: IdentityArg,
    },
    /// Re-encrypt every secret of an environment to its current recipients.
    Rekey {
        /// The config repo.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        #[arg(long)]
        env: String,
        #[command(flatten)]
        identity: IdentityArg,
    },
    /// Every referenced secret exists for every environment using it, is encrypted to
    /// exactly its recipients, and (with an identity) decrypts. Exit 0 ok, 1 otherwise.
    Check {
        /// The config repo.
        #[arg(default_value = ".")]
        repo: PathBuf,
        #[command(flatten)]
        identity: IdentityArg,
        #[command(flatten)]
        output: OutputArg,
    },
}

/// Which secret: repo, environment (none: the repo-wide `secrets/`), name.
#[derive(Debug, clap::Args)]
pub struct SecretAt {
    /// The config repo.
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// The environment (without it: the repo-wide secrets/, encrypted to every
    /// environment's recipients).
    #[arg(long)]
    env: Option<String>,
    /// The secret's name (`secrets.<name>` in templates).
    name: String,
}

#[derive(Debug, clap::Args)]
pub struct IdentityArg {
    /// The age identity (or unencrypted ssh-ed25519 key) that decrypts the secrets.
    #[arg(long, env = "PLUMB_SECRETS_IDENTITY")]
    secrets_identity: Option<PathBuf>,
}

/// Loads an identity file when one is given (its mode checked).
pub fn load_identity(path: Option<&Path>) -> anyhow::Result<Option<Arc<SecretIdentity>>> {
    let Some(path) = path else {
        return Ok(None);
    };
    match SecretIdentity::load(path) {
        Ok(id) => Ok(Some(Arc::new(id))),
        Err(e) => match e.hint() {
            Some(h) => anyhow::bail!("{e}\nhelp: {h}"),
            None => anyhow::bail!("{e}"),
        },
    }
}

fn required(arg: &IdentityArg) -> anyhow::Result<Arc<SecretIdentity>> {
    load_identity(arg.secrets_identity.as_deref())?.ok_or_else(|| {
        anyhow::anyhow!("this needs the identity that decrypts the secrets: pass --secrets-identity FILE (or PLUMB_SECRETS_IDENTITY)")
    })
}

fn fail(e: secrets::SecretError) -> anyhow::Error {
    match e.hint() {
        Some(h) => anyhow::anyhow!("{e}\nhelp: {h}"),
        None => anyhow::anyhow!("{e}"),
    }
}

pub fn run(command: SecretsCommand, term: Term) -> anyhow::Result<u8> {
    match command {
        SecretsCommand::Set { at, file } => {
            let mut value = Zeroizing::new(Vec::new());
            match &file {
                Some(f) => std::fs::File::open(f)
                    .and_then(|h| h.take(secrets::MAX_SECRET_FILE).read_to_end(&mut value))
                    .with_context(|| format!("reading {}", f.display()))?,
                None => std::io::stdin()
                    .lock()
                    .take(secrets::MAX_SECRET_FILE)
                    .read_to_end(&mut value)
                    .context("reading the value from stdin")?,
            };
            let path = store::set(&at.repo, at.env.as_deref(), &at.name, &value).map_err(fail)?;
            eprintln!("wrote {path}");
            Ok(0)
        }
        SecretsCommand::Edit { at, identity } => edit(&at, &*required(&identity)?),
        SecretsCommand::Rekey {
            repo,
            env,
            identity,
        } => {
            let id = required(&identity)?;
            for path in store::rekey(&repo, &env, &id).map_err(fail)? {
                eprintln!("re-encrypted {path}");
            }
            Ok(0)
        }
        SecretsCommand::Check {
            repo,
            identity,
            output,
        } => check_cmd(
            &repo,
            load_identity(identity.secrets_identity.as_deref())?,
            output.output,
            term,
        ),
    }
}

/// Which secrets each environment reads (a structural render of every environment).
fn usage(repo: &Path) -> check::Usage {
    let (loaded, _) = crate::model::load::load(repo);
    let mut usage = check::Usage::new();
    for env in loaded.environments.keys() {
        if let Ok(hosts) = crate::render::render_env(&loaded, env, None) {
            check::record_usage(&mut usage, env, &hosts);
        }
    }
    usage
}

fn check_cmd(
    repo: &Path,
    identity: Option<Arc<SecretIdentity>>,
    output: OutputFormat,
    term: Term,
) -> anyhow::Result<u8> {
    let (mut loaded, mut diags) = crate::validate::validate(repo);
    loaded.sources.set_display_root(&repo.to_string_lossy());
    if let (Some(id), false) = (identity, diags.has_errors()) {
        for d in check::decrypts(&loaded, &usage(repo), &id) {
            diags.push(d);
        }
    }
    let report = crate::report::ValidateReport::new(diags);
    let code = u8::from(!report.valid);
    match output {
        OutputFormat::Json => print_json(&report)?,
        OutputFormat::Text => {
            eprint!("{}", render_all(&report, &loaded.sources, term.err));
            println!(
                "{}",
                crate::report::summary_line(report.errors, report.warnings).trim_end()
            );
        }
    }
    Ok(code)
}

/// A private directory for the plaintext while the editor runs: in `/dev/shm` (memory) when
/// there is one, so the plaintext never reaches a disk.
fn private_dir() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("plumb-secret-{}", rand::random::<u64>()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Overwrites the file with zeros, then removes it and its directory.
fn shred(dir: &Path, file: &Path) {
    if let Ok(meta) = std::fs::metadata(file) {
        if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(file) {
            let zeros = vec![0u8; usize::try_from(meta.len()).unwrap_or(0)];
            let _ = f.write_all(&zeros).and_then(|()| f.sync_all());
        }
    }
    let _ = std::fs::remove_file(file);
    let _ = std::fs::remove_dir(dir);
}

fn edit(at: &SecretAt, identity: &SecretIdentity) -> anyhow::Result<u8> {
    let files = store::files(&at.repo).map_err(fail)?;
    let (path, old) = match at.env.as_deref() {
        Some(env) => store::current(&files, env, &at.name, identity).map_err(fail)?,
        None => {
            let path = secrets::repo_path(&at.name);
            match files.shared(&path, secrets::MAX_SECRET_FILE) {
                Ok(bytes) => {
                    let plain = identity.decrypt(&path, &bytes).map_err(fail)?;
                    (path, Some(plain))
                }
                Err(_) => (path, None),
            }
        }
    };
    let dir = private_dir()?;
    let file = dir.join(format!("{}.txt", at.name));
    let result = edit_file(&file, old.as_deref().map(|v| &v[..]));
    shred(&dir, &file);
    let Some(new) = result? else {
        eprintln!("{path}: unchanged");
        return Ok(0);
    };
    let env = if path.starts_with("environments/") {
        at.env.as_deref()
    } else {
        None
    };
    let recipients = store::recipients_for(&at.repo, &files, env, &at.name).map_err(fail)?;
    store::write(&at.repo, &path, &new, &recipients).map_err(fail)?;
    eprintln!("wrote {path}");
    Ok(0)
}

/// Writes `old` into the private `file`, runs the editor on it, and returns what was saved
/// when it differs.
fn edit_file(file: &Path, old: Option<&[u8]>) -> anyhow::Result<Option<Zeroizing<Vec<u8>>>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)?;
    f.write_all(old.unwrap_or_default())?;
    drop(f);
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    // As git runs it: the editor setting is shell text, the file its argument.
    let status = std::process::Command::new("sh")
        .args(["-c", &format!("{editor} \"$1\""), "sh"])
        .arg(file)
        .status()
        .context("running the editor")?;
    anyhow::ensure!(
        status.success(),
        "the editor failed ({status}); nothing changed"
    );
    let mut new = Zeroizing::new(Vec::new());
    std::fs::File::open(file)?
        .take(secrets::MAX_SECRET_FILE)
        .read_to_end(&mut new)?;
    Ok((old != Some(&new[..])).then_some(new))
}
