//! The checkout is a jail: every file plumb reads from a config repo goes through [`Jail`].
//!
//! A config repo may come from an unsigned pull request (`plumb validate`/`plan` in CI), so
//! nothing in it may make plumb read outside it. The rules, decided once:
//! - **every symlink is refused**, wherever it points (inside the repo or not): a refused link
//!   is an error naming the link and its target, never followed, never silently skipped;
//! - only regular files and directories are read: FIFOs, sockets and devices are refused
//!   before they are opened (and files are opened non-blocking and checked again with
//!   `fstat`, so a FIFO can never hang a run);
//! - names are relative paths of plain components: no `..`, no absolute path, no empty
//!   component;
//! - every open is confined to the repo root by `cap-std` (openat-style, the kernel's
//!   `RESOLVE_BENEATH` where available), and the last component is opened with `O_NOFOLLOW`,
//!   so even a link swapped in after the check cannot lead out;
//! - every read is bounded by a size limit given by the caller.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};

/// What a path inside the repo is, without following links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    /// A FIFO, socket or device.
    Special,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub kind: EntryKind,
}

/// Why a repo path was not read. Every variant names the repo-relative path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JailError {
    #[error("symlink to `{target}` is not allowed")]
    Symlink { path: String, target: String },
    #[error("{what} is not allowed: plumb reads only regular files")]
    Special { path: String, what: &'static str },
    #[error("`{path}` is not a path inside the repo (no `..`, no leading `/`, no empty part)")]
    Outside { path: String },
    #[error("`{path}` does not exist")]
    NotFound { path: String },
    #[error("`{path}` is a directory, not a file")]
    IsDir { path: String },
    #[error("`{path}` is larger than {limit} bytes")]
    TooLarge { path: String, limit: u64 },
    #[error("cannot read `{path}`: {message}")]
    Io { path: String, message: String },
}

impl JailError {
    /// Stable, low-cardinality code (also the diagnostic code).
    pub fn code(&self) -> &'static str {
        match self {
            JailError::Symlink { .. } => "symlink",
            JailError::Special { .. } => "special-file",
            JailError::Outside { .. } => "outside-repo",
            JailError::NotFound { .. } => "missing-file",
            JailError::IsDir { .. } => "is-directory",
            JailError::TooLarge { .. } => "too-large",
            JailError::Io { .. } => "io",
        }
    }

    /// The repo-relative path the error is about.
    pub fn path(&self) -> &str {
        match self {
            JailError::Symlink { path, .. }
            | JailError::Special { path, .. }
            | JailError::Outside { path }
            | JailError::NotFound { path }
            | JailError::IsDir { path }
            | JailError::TooLarge { path, .. }
            | JailError::Io { path, .. } => path,
        }
    }

    /// What to do about it.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            JailError::Symlink { .. } => Some(
                "plumb refuses every symlink in a config repo (it could lead outside the \
                 checkout): commit a copy of the file instead of a link",
            ),
            JailError::Special { .. } => {
                Some("remove it from the repo: only regular files and directories are read")
            }
            JailError::Outside { .. } => {
                Some("name files relative to their directory (templates/, files/) without `..`")
            }
            JailError::TooLarge { .. } => Some("keep large artefacts out of the config repo"),
            JailError::NotFound { .. } | JailError::IsDir { .. } | JailError::Io { .. } => None,
        }
    }
}

/// A config repo opened as a jail. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Jail {
    root: Dir,
    root_path: PathBuf,
}

/// The checked components of a repo-relative path.
fn components(rel: &str) -> Result<Vec<&str>, JailError> {
    let outside = || JailError::Outside {
        path: rel.to_string(),
    };
    if rel.is_empty() || rel.starts_with('/') || rel.contains('\0') {
        return Err(outside());
    }
    let parts: Vec<&str> = rel.split('/').filter(|p| *p != ".").collect();
    if parts.is_empty() || parts.iter().any(|p| p.is_empty() || *p == "..") {
        return Err(outside());
    }
    Ok(parts)
}

fn io_error(path: &str, e: &std::io::Error) -> JailError {
    match e.kind() {
        std::io::ErrorKind::NotFound => JailError::NotFound {
            path: path.to_string(),
        },
        _ => JailError::Io {
            path: path.to_string(),
            message: e.to_string(),
        },
    }
}

fn kind_of(ft: cap_std::fs::FileType) -> EntryKind {
    if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File
    } else {
        EntryKind::Special
    }
}

fn special_name(ft: cap_std::fs::FileType) -> &'static str {
    use cap_std::fs::FileTypeExt;
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else {
        "a special file"
    }
}

impl Jail {
    /// Opens the repo at `root` (the one path taken from the command line as given).
    pub fn open(root: &Path) -> std::io::Result<Jail> {
        Ok(Jail {
            root: Dir::open_ambient_dir(root, ambient_authority())?,
            root_path: root.to_path_buf(),
        })
    }

    /// The repo root as given.
    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// Walks to the directory holding the last component of `rel`, refusing links and
    /// special files on the way. Returns that directory and the last component.
    fn parent_of<'r>(&self, rel: &'r str) -> Result<(Dir, &'r str), JailError> {
        let parts = components(rel)?;
        let (last, dirs) = parts.split_last().ok_or_else(|| JailError::Outside {
            path: rel.to_string(),
        })?;
        let mut dir = self.root.try_clone().map_err(|e| io_error(rel, &e))?;
        let mut walked = String::new();
        for part in dirs {
            if !walked.is_empty() {
                walked.push('/');
            }
            walked.push_str(part);
            Self::check_entry(&dir, part, &walked, EntryKind::Dir)?;
            dir = dir.open_dir(part).map_err(|e| io_error(&walked, &e))?;
        }
        Ok((dir, last))
    }

    /// Refuses `name` in `dir` unless it is of kind `want` (a file or a directory).
    fn check_entry(dir: &Dir, name: &str, rel: &str, want: EntryKind) -> Result<(), JailError> {
        let meta = dir.symlink_metadata(name).map_err(|e| io_error(rel, &e))?;
        let ft = meta.file_type();
        match kind_of(ft) {
            EntryKind::Symlink => Err(JailError::Symlink {
                path: rel.to_string(),
                target: dir
                    .read_link_contents(name)
                    .map(|t| t.display().to_string())
                    .unwrap_or_else(|_| "?".to_string()),
            }),
            EntryKind::Special => Err(JailError::Special {
                path: rel.to_string(),
                what: special_name(ft),
            }),
            EntryKind::Dir if want == EntryKind::File => Err(JailError::IsDir {
                path: rel.to_string(),
            }),
            EntryKind::File if want == EntryKind::Dir => Err(JailError::Io {
                path: rel.to_string(),
                message: "not a directory".to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// What `rel` is, without following links; `Ok(None)` when it does not exist.
    /// A link or special file among its parent directories is an error.
    pub fn kind(&self, rel: &str) -> Result<Option<EntryKind>, JailError> {
        let (dir, last) = match self.parent_of(rel) {
            Ok(x) => x,
            Err(JailError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        match dir.symlink_metadata(last) {
            Ok(m) => Ok(Some(kind_of(m.file_type()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(rel, &e)),
        }
    }

    /// Reads the regular file `rel`, at most `limit` bytes.
    pub fn read(&self, rel: &str, limit: u64) -> Result<Vec<u8>, JailError> {
        let (dir, last) = self.parent_of(rel)?;
        Self::check_entry(&dir, last, rel, EntryKind::File)?;
        let mut opts = OpenOptions::new();
        opts.read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY);
        let file = dir
            .open_with(last, &opts)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => JailError::Symlink {
                    path: rel.to_string(),
                    target: "?".to_string(),
                },
                _ => io_error(rel, &e),
            })?;
        // The file opened is the one checked: fstat, not the path.
        let meta = file.metadata().map_err(|e| io_error(rel, &e))?;
        if !meta.is_file() {
            return Err(JailError::Special {
                path: rel.to_string(),
                what: special_name(meta.file_type()),
            });
        }
        if meta.len() > limit {
            return Err(JailError::TooLarge {
                path: rel.to_string(),
                limit,
            });
        }
        let mut out = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.take(limit.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| io_error(rel, &e))?;
        if out.len() as u64 > limit {
            return Err(JailError::TooLarge {
                path: rel.to_string(),
                limit,
            });
        }
        Ok(out)
    }

    /// Reads the regular file `rel` as UTF-8 text, at most `limit` bytes.
    pub fn read_to_string(&self, rel: &str, limit: u64) -> Result<String, JailError> {
        String::from_utf8(self.read(rel, limit)?).map_err(|_| JailError::Io {
            path: rel.to_string(),
            message: "not valid UTF-8".to_string(),
        })
    }

    /// The entries of directory `rel` (`""` or `"."` for the root), sorted by name, without
    /// hidden ones (names starting with `.`). A missing directory is empty.
    pub fn list(&self, rel: &str) -> Result<Vec<Entry>, JailError> {
        let dir = if rel.is_empty() || rel == "." {
            self.root.try_clone().map_err(|e| io_error(rel, &e))?
        } else {
            let (parent, last) = match self.parent_of(rel) {
                Ok(x) => x,
                Err(JailError::NotFound { .. }) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            match Self::check_entry(&parent, last, rel, EntryKind::Dir) {
                Ok(()) => {}
                Err(JailError::NotFound { .. }) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            }
            parent.open_dir(last).map_err(|e| io_error(rel, &e))?
        };
        let mut out = Vec::new();
        for entry in dir.entries().map_err(|e| io_error(rel, &e))? {
            let entry = entry.map_err(|e| io_error(rel, &e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let kind = entry
                .file_type()
                .map(kind_of)
                .map_err(|e| io_error(rel, &e))?;
            out.push(Entry { name, kind });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Regular files under directory `rel`, recursively (`/`-separated, relative to `rel`),
    /// at most `max` of them and `depth` levels deep; links and special files are left out
    /// (reading them is what refuses them). For hints and for template sources.
    pub fn files_under(&self, rel: &str, depth: usize, max: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![(rel.to_string(), String::new(), 0usize)];
        while let Some((dir, prefix, level)) = stack.pop() {
            for e in self.list(&dir).unwrap_or_default() {
                let name = format!("{prefix}{}", e.name);
                match e.kind {
                    EntryKind::Dir if level < depth => {
                        stack.push((format!("{dir}/{}", e.name), format!("{name}/"), level + 1));
                    }
                    EntryKind::File if out.len() < max => out.push(name),
                    _ => {}
                }
            }
        }
        out.sort();
        out
    }

    /// Symlinks and special files under directory `rel` (recursively, repo-relative), as
    /// the errors reading them would give, so `validate` reports every one.
    pub fn refused_under(&self, rel: &str, depth: usize) -> Vec<JailError> {
        let mut out = Vec::new();
        let mut stack = vec![(rel.to_string(), 0usize)];
        while let Some((dir, level)) = stack.pop() {
            let entries = match self.list(&dir) {
                Ok(e) => e,
                Err(e) => {
                    out.push(e);
                    continue;
                }
            };
            for e in entries {
                let path = format!("{dir}/{}", e.name);
                match e.kind {
                    EntryKind::Dir if level < depth => stack.push((path, level + 1)),
                    EntryKind::Symlink | EntryKind::Special => {
                        if let Err(err) = self.read(&path, 0) {
                            out.push(err);
                        }
                    }
                    _ => {}
                }
            }
        }
        out.sort_by(|a, b| a.path().cmp(b.path()));
        out
    }
}

/// Repo-relative path to the bytes read (or why not).
type ContentCache = HashMap<String, Result<Arc<[u8]>, JailError>>;

/// The files of a loaded repo: the jail plus a cache, so each repo file is read once and its
/// bytes are shared (not copied) by every step and host that uses it.
#[derive(Debug, Clone, Default)]
pub struct RepoFiles {
    jail: Option<Arc<Jail>>,
    cache: Arc<Mutex<ContentCache>>,
}

impl RepoFiles {
    pub fn new(jail: Jail) -> RepoFiles {
        RepoFiles {
            jail: Some(Arc::new(jail)),
            cache: Arc::default(),
        }
    }

    /// The jail, when the repo root could be opened.
    pub fn jail(&self) -> Option<&Jail> {
        self.jail.as_deref()
    }

    fn no_repo(rel: &str) -> JailError {
        JailError::NotFound {
            path: rel.to_string(),
        }
    }

    /// Reads `rel` (at most `limit` bytes) once; later calls share the same bytes.
    pub fn shared(&self, rel: &str, limit: u64) -> Result<Arc<[u8]>, JailError> {
        let jail = self.jail.as_deref().ok_or_else(|| Self::no_repo(rel))?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = cache.get(rel) {
            return hit.clone();
        }
        let r = jail.read(rel, limit).map(Arc::from);
        cache.insert(rel.to_string(), r.clone());
        r
    }

    /// Reads `rel` as UTF-8 text (uncached: for YAML and template sources).
    pub fn text(&self, rel: &str, limit: u64) -> Result<String, JailError> {
        let jail = self.jail.as_deref().ok_or_else(|| Self::no_repo(rel))?;
        jail.read_to_string(rel, limit)
    }

    /// See [`Jail::kind`]; `Ok(None)` without a jail.
    pub fn kind(&self, rel: &str) -> Result<Option<EntryKind>, JailError> {
        match self.jail.as_deref() {
            Some(j) => j.kind(rel),
            None => Ok(None),
        }
    }

    /// See [`Jail::files_under`]; empty without a jail.
    pub fn files_under(&self, rel: &str) -> Vec<String> {
        self.jail
            .as_deref()
            .map(|j| j.files_under(rel, MAX_DEPTH, MAX_LISTED))
            .unwrap_or_default()
    }
}

/// How deep plumb looks into `templates/` and `files/` when listing them.
pub const MAX_DEPTH: usize = 8;
/// How many names a listing keeps (for hints).
pub const MAX_LISTED: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn repo() -> (tempfile::TempDir, Jail) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("files/sub")).unwrap();
        std::fs::write(dir.path().join("files/a"), "A").unwrap();
        std::fs::write(dir.path().join("files/sub/b"), "B").unwrap();
        let jail = Jail::open(dir.path()).unwrap();
        (dir, jail)
    }

    #[test]
    fn reads_regular_files_inside() {
        let (_d, j) = repo();
        assert_eq!(j.read("files/a", 10).unwrap(), b"A");
        assert_eq!(j.read("files/./sub/b", 10).unwrap(), b"B");
        assert_eq!(j.kind("files/sub").unwrap(), Some(EntryKind::Dir));
        assert_eq!(j.kind("files/nope").unwrap(), None);
        assert_eq!(j.kind("nope/nope").unwrap(), None);
        assert_eq!(j.files_under("files", 8, 100), vec!["a", "sub/b"]);
    }

    #[test]
    fn refuses_every_symlink_inside_or_out() {
        let (d, j) = repo();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "MARKER").unwrap();
        symlink(outside.path().join("secret"), d.path().join("files/out")).unwrap();
        symlink("a", d.path().join("files/in")).unwrap();
        symlink(outside.path(), d.path().join("files/dirlink")).unwrap();
        for rel in ["files/out", "files/in", "files/dirlink/secret"] {
            let err = j.read(rel, 100).unwrap_err();
            assert_eq!(err.code(), "symlink", "{rel}: {err}");
            assert!(!err.to_string().contains("MARKER"));
        }
        let err = j.read("files/out", 100).unwrap_err();
        assert_eq!(err.path(), "files/out");
        assert!(err.to_string().contains("secret"), "{err}");
        assert_eq!(j.kind("files/in").unwrap(), Some(EntryKind::Symlink));
        assert!(j.kind("files/dirlink/secret").is_err());
        assert!(j.list("files/dirlink").is_err());
        assert_eq!(j.files_under("files", 8, 100), vec!["a", "sub/b"]);
        let refused: Vec<String> = j
            .refused_under("files", 8)
            .iter()
            .map(|e| e.path().to_string())
            .collect();
        assert_eq!(refused, vec!["files/dirlink", "files/in", "files/out"]);
    }

    #[test]
    fn refuses_paths_that_leave() {
        let (_d, j) = repo();
        for rel in [
            "../x",
            "files/../../etc/passwd",
            "/etc/passwd",
            "files//a",
            "",
        ] {
            assert_eq!(
                j.read(rel, 100).unwrap_err().code(),
                "outside-repo",
                "{rel}"
            );
        }
    }

    #[test]
    fn refuses_fifos_without_hanging() {
        let (d, j) = repo();
        let fifo = d.path().join("files/fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a node.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let err = j.read("files/fifo", 100).unwrap_err();
        assert_eq!(err.code(), "special-file", "{err}");
        assert!(err.to_string().contains("FIFO"), "{err}");
    }

    #[test]
    fn bounds_reads() {
        let (d, j) = repo();
        std::fs::write(d.path().join("files/big"), vec![b'x'; 1000]).unwrap();
        assert_eq!(j.read("files/big", 999).unwrap_err().code(), "too-large");
        assert_eq!(j.read("files/big", 1000).unwrap().len(), 1000);
        assert_eq!(
            j.read("files/sub", 1000).unwrap_err().code(),
            "is-directory"
        );
    }
}
