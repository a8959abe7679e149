//! Mirroring the config repo, and reading it.
//!
//! Network traffic goes through the SYSTEM `git` binary (`git clone --mirror`, `git fetch`),
//! never through libgit2: the operator's `~/.ssh/config`, ssh-agent, `known_hosts`, proxy
//! settings and credential helpers then work exactly as they do for `git` on that host, and
//! plumb has no transport or host-key-checking code of its own to get wrong. Objects and
//! signatures are read with `git2` (libgit2) from the local bare mirror: no process per
//! commit, and typed access to the raw signed payload that signature checking needs.

use std::path::{Path, PathBuf};
use std::process::Command;

use git2::{ObjectType, Oid, Repository, TreeWalkMode};

use super::SourceError;

/// Runs `git` with the given arguments; no terminal prompts, ever (a daemon has no terminal).
pub fn run_git(git: &Path, cwd: Option<&Path>, args: &[&str]) -> Result<String, SourceError> {
    run_git_with(git, cwd, args, &[])
}

/// [`run_git`] with extra environment variables (credentials from `repository_auth:`).
pub fn run_git_with(
    git: &Path,
    cwd: Option<&Path>,
    args: &[&str],
    env: &[(String, String)],
) -> Result<String, SourceError> {
    let mut cmd = Command::new(git);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "true")
        .env("SSH_ASKPASS", "true")
        .stdin(std::process::Stdio::null());
    let out = cmd.output().map_err(SourceError::GitMissing)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(SourceError::GitCommand {
            args: args.join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Creates the bare mirror `mirror` of `url` if it is missing, then fetches branches and tags
/// (pruning deleted ones, accepting forced updates: the policy decides what to trust).
///
/// The first clone goes to a temporary directory beside `mirror` and is renamed into place,
/// so a crash never leaves a half-cloned mirror behind.
pub fn mirror_fetch(
    git: &Path,
    url: &str,
    mirror: &Path,
    auth: &super::RepositoryAuth,
) -> Result<(), SourceError> {
    if url.starts_with('-') {
        return Err(SourceError::InvalidSpec(url.to_string()));
    }
    auth.check()?;
    let env = auth.env();
    if !mirror.join("HEAD").exists() {
        let parent = mirror.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|source| SourceError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
        let tmp = parent.join(format!(".mirror.git.tmp-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|source| SourceError::Io {
                path: tmp.clone(),
                source,
            })?;
        }
        let tmp_s = tmp.to_string_lossy().into_owned();
        run_git_with(
            git,
            None,
            &["clone", "--mirror", "--quiet", "--", url, &tmp_s],
            &env,
        )?;
        std::fs::rename(&tmp, mirror).map_err(|source| SourceError::Io {
            path: mirror.to_path_buf(),
            source,
        })?;
    }
    run_git_with(
        git,
        Some(mirror),
        &[
            "fetch",
            "--quiet",
            "--prune",
            "origin",
            "+refs/heads/*:refs/heads/*",
            "+refs/tags/*:refs/tags/*",
        ],
        &env,
    )?;
    Ok(())
}

/// Opens a repository: a bare one, a working tree, or a `.git` directory.
pub fn open(path: &Path) -> Result<Repository, SourceError> {
    Repository::open(path).map_err(|source| SourceError::Repo {
        path: path.to_path_buf(),
        source,
    })
}

/// Resolves a revision (`HEAD`, a branch, a tag, an id) to a commit id.
pub fn resolve(repo: &Repository, rev: &str) -> Result<Oid, SourceError> {
    let obj = repo
        .revparse_single(rev)
        .and_then(|o| o.peel_to_commit())
        .map_err(|source| SourceError::RevNotFound {
            rev: rev.to_string(),
            source,
        })?;
    Ok(obj.id())
}

/// Writes the tree of `commit` into `dest` (created if missing; must be empty): regular and
/// executable files, symlinks, directories. Submodules become empty directories. Entry
/// names that could escape `dest` (`..`, `.`, names with `/`, `.git`) are refused.
pub fn checkout(repo: &Repository, commit: Oid, dest: &Path) -> Result<(), SourceError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SourceError::Io { path, source }
    };
    std::fs::create_dir_all(dest).map_err(io(dest))?;
    if std::fs::read_dir(dest).map_err(io(dest))?.next().is_some() {
        return Err(SourceError::DestNotEmpty(dest.to_path_buf()));
    }
    let tree = repo.find_commit(commit)?.tree()?;
    let mut failure: Option<SourceError> = None;
    tree.walk(TreeWalkMode::PreOrder, |root, entry| {
        let result = (|| -> Result<(), SourceError> {
            let name = entry.name_bytes();
            let name = std::str::from_utf8(name)
                .ok()
                .filter(|n| safe_name(n))
                .ok_or_else(|| {
                    SourceError::UnsafePath(format!("{root}{}", String::from_utf8_lossy(name)))
                })?;
            let rel: PathBuf = root.split('/').filter(|s| !s.is_empty()).collect();
            let path = dest.join(rel).join(name);
            match entry.kind() {
                Some(ObjectType::Tree) => std::fs::create_dir(&path).map_err(io(&path))?,
                Some(ObjectType::Blob) => {
                    let blob = repo.find_blob(entry.id())?;
                    let mode = entry.filemode();
                    if mode == 0o120000 {
                        let target = std::str::from_utf8(blob.content())
                            .map_err(|_| SourceError::UnsafePath(format!("{root}{name}")))?;
                        std::os::unix::fs::symlink(target, &path).map_err(io(&path))?;
                    } else {
                        // create_new: never follow or replace an existing entry (a crafted tree
                        // with duplicate names must not write through a symlink).
                        use std::io::Write as _;
                        std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&path)
                            .and_then(|mut f| f.write_all(blob.content()))
                            .map_err(io(&path))?;
                        if mode == 0o100755 {
                            use std::os::unix::fs::PermissionsExt;
                            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                                .map_err(io(&path))?;
                        }
                    }
                }
                // Submodule (a commit entry): nothing to write but its directory.
                _ => std::fs::create_dir(&path).map_err(io(&path))?,
            }
            Ok(())
        })();
        match result {
            Ok(()) => git2::TreeWalkResult::Ok,
            Err(e) => {
                failure = Some(e);
                git2::TreeWalkResult::Abort
            }
        }
    })
    .or_else(|e| if failure.is_some() { Ok(()) } else { Err(e) })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn safe_name(n: &str) -> bool {
    !n.is_empty()
        && n != "."
        && n != ".."
        && !n.contains('/')
        && !n.contains('\0')
        && !n.eq_ignore_ascii_case(".git")
}
