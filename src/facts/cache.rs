//! The facts cache: one JSON file per host, `<dir>/<env>/<host>.json`.
//!
//! The CLI keeps it under `$PLUMB_FACTS_CACHE`, else `$XDG_CACHE_HOME/plumb/facts`, else
//! `~/.cache/plumb/facts` (`--facts-cache` overrides); the daemon under
//! `<state>/facts`. `render` and `validate` read it; `plan`, `apply`, `drift` and `facts`
//! write what they observed. A cache file that is missing, too large or unreadable is no
//! facts (they are gathered again), never an error.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{Facts, FactsBook};

/// Largest cache file read (bytes): facts are a few hundred bytes.
const MAX_CACHE_FILE: u64 = 64 * 1024;

#[derive(Debug, Clone)]
pub struct FactsCache {
    dir: PathBuf,
}

/// A file name for an environment or host name: `[A-Za-z0-9._-]` kept, anything else
/// (`/` included) as `%XX`, and a leading `.` escaped, so no name leaves the cache directory.
fn file_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl FactsCache {
    pub fn new(dir: impl Into<PathBuf>) -> FactsCache {
        FactsCache { dir: dir.into() }
    }

    /// The CLI's default directory (see the module docs); `None` without any of the
    /// variables.
    pub fn default_dir() -> Option<PathBuf> {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        var("PLUMB_FACTS_CACHE")
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("plumb/facts")))
            .or_else(|| var("HOME").map(|d| d.join(".cache/plumb/facts")))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, env: &str, host: &str) -> PathBuf {
        self.dir
            .join(file_name(env))
            .join(format!("{}.json", file_name(host)))
    }

    /// The cached facts of `host` in `env`, if any can be read.
    pub fn load(&self, env: &str, host: &str) -> Option<Facts> {
        let path = self.path(env, host);
        let file = std::fs::File::open(&path).ok()?;
        let mut text = String::new();
        file.take(MAX_CACHE_FILE).read_to_string(&mut text).ok()?;
        match serde_json::from_str(&text) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable facts cache file");
                None
            }
        }
    }

    /// Adds every cached host of `hosts` (environment, host name) to `book`.
    pub fn load_into<'a>(
        &self,
        hosts: impl IntoIterator<Item = (&'a str, &'a str)>,
        book: &mut FactsBook,
    ) {
        for (env, host) in hosts {
            if let Some(f) = self.load(env, host) {
                book.insert(env, host, f);
            }
        }
    }

    /// Stores `facts` (written beside and renamed into place; the directory is private).
    pub fn store(&self, env: &str, host: &str, facts: &Facts) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let path = self.path(env, host);
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
        let json = serde_json::to_vec_pretty(facts).map_err(std::io::Error::other)?;
        let tmp = parent.join(format!(".{}.{}.tmp", file_name(host), std::process::id()));
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_leave_the_directory() {
        assert_eq!(file_name("web-1.example"), "web-1.example");
        assert_eq!(file_name("../x"), "%2E.%2Fx");
        assert_eq!(file_name(".."), "%2E.");
        assert_eq!(file_name("a/b"), "a%2Fb");
        assert!(!file_name("/etc/passwd").contains('/'));
    }

    #[test]
    fn stores_and_loads_and_ignores_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let cache = FactsCache::new(dir.path());
        let facts = super::super::tests::sample();
        assert_eq!(cache.load("prod", "web-1"), None);
        cache.store("prod", "web-1", &facts).unwrap();
        assert_eq!(cache.load("prod", "web-1"), Some(facts));
        assert_eq!(cache.load("staging", "web-1"), None);
        std::fs::write(cache.path("prod", "web-2"), "{not json").unwrap();
        assert_eq!(cache.load("prod", "web-2"), None);
    }
}
