//! Noticing that the source may have changed. Every event means "fetch now"; events are
//! coalesced (a burst of ref updates while a fetch is pending yields one pending event).
//!
//! - a local origin: `notify` watches `<git dir>/refs` (recursive) and `<git dir>` itself (for
//!   `packed-refs`); a push into a local bare repo is seen within milliseconds;
//! - any origin: an optional poll interval (the only signal for a remote without a webhook);
//! - [`WatchHandle::trigger`] / [`Trigger::trigger`]: the daemon's webhook asks for a fetch now.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::SourceError;

/// Why a fetch is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchEvent {
    /// A ref of the local origin changed.
    RefsChanged,
    /// The poll interval elapsed.
    Poll,
    /// [`Trigger::trigger`] was called (e.g. by the webhook).
    Triggered,
}

/// Pending events beyond this are dropped: one pending "fetch now" is as good as many.
const QUEUE: usize = 4;

/// A cloneable way to request a fetch (for the webhook handler).
#[derive(Debug, Clone)]
pub struct Trigger(mpsc::Sender<WatchEvent>);

impl Trigger {
    /// Requests a fetch now. Never blocks; coalesces with pending events.
    pub fn trigger(&self) {
        let _ = self.0.try_send(WatchEvent::Triggered);
    }
}

/// Keeps the watch alive; dropping it stops the watcher and the poller.
pub struct WatchHandle {
    trigger: Trigger,
    _watcher: Option<notify::RecommendedWatcher>,
    poller: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for WatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHandle")
            .field("local", &self._watcher.is_some())
            .field("polling", &self.poller.is_some())
            .finish()
    }
}

impl WatchHandle {
    /// Requests a fetch now.
    pub fn trigger(&self) {
        self.trigger.trigger();
    }

    /// A cloneable trigger, for handing to the webhook.
    pub fn trigger_handle(&self) -> Trigger {
        self.trigger.clone()
    }
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        if let Some(p) = self.poller.take() {
            p.abort();
        }
    }
}

/// Starts watching. `local` is a local repository (working tree or bare) to watch for ref
/// changes; `poll` an interval. Must be called inside a Tokio runtime when `poll` is set.
pub fn start(
    local: Option<&Path>,
    poll: Option<Duration>,
) -> Result<(WatchHandle, mpsc::Receiver<WatchEvent>), SourceError> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let watcher = match local {
        Some(path) => Some(watch_refs(path, tx.clone())?),
        None => None,
    };
    let poller = poll.map(|every| {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(every);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            iv.tick().await; // the first tick is immediate; the caller fetches at start anyway
            loop {
                iv.tick().await;
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(WatchEvent::Poll) {
                    break;
                }
            }
        })
    });
    Ok((
        WatchHandle {
            trigger: Trigger(tx),
            _watcher: watcher,
            poller,
        },
        rx,
    ))
}

/// The directory holding `refs/` and `packed-refs` (the common dir, for worktrees too).
fn git_common_dir(path: &Path) -> Result<PathBuf, SourceError> {
    let repo = super::git::open(path)?;
    Ok(repo.commondir().to_path_buf())
}

fn is_ref_path(p: &Path, common: &Path) -> bool {
    let Ok(rel) = p.strip_prefix(common) else {
        return false;
    };
    if p.extension().is_some_and(|e| e == "lock") {
        return false;
    }
    rel == Path::new("packed-refs") || rel.starts_with("refs")
}

fn watch_refs(
    path: &Path,
    tx: mpsc::Sender<WatchEvent>,
) -> Result<notify::RecommendedWatcher, SourceError> {
    let common = git_common_dir(path)?;
    let common = common.canonicalize().unwrap_or(common);
    let filter_root = common.clone();
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SourceError::Watch { path, source }
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        if matches!(ev.kind, EventKind::Access(_)) {
            return;
        }
        if ev.paths.iter().any(|p| is_ref_path(p, &filter_root)) {
            let _ = tx.try_send(WatchEvent::RefsChanged);
        }
    })
    .map_err(werr(&common))?;
    let refs = common.join("refs");
    watcher
        .watch(&refs, RecursiveMode::Recursive)
        .map_err(werr(&refs))?;
    watcher
        .watch(&common, RecursiveMode::NonRecursive)
        .map_err(werr(&common))?;
    Ok(watcher)
}
