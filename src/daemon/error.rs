//! The daemon's errors. `code()` is stable and low-cardinality (logs, metrics).

use std::path::PathBuf;
use std::time::Duration;

use crate::alert::AlertError;
use crate::source::SourceError;
use crate::state::StateError;

/// Why the daemon could not start, or why one reconcile or drift check could not finish.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A file or directory of the daemon's own (state, checkouts, secrets).
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("alert sinks: {0}")]
    Alert(#[from] AlertError),
    #[error(
        "cannot listen on {addr}: {source} (is another daemon running, or is the address in use?)"
    )]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("tls: {0}")]
    Tls(#[from] crate::server::tls::TlsError),
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
    #[error("fetch took longer than {0:?}; it is retried with backoff")]
    FetchTimeout(Duration),
    /// A blocking job (fetch, verify, checkout) did not finish: it panicked or was cancelled.
    #[error("internal error while {what}: {message}")]
    Task { what: &'static str, message: String },
    #[error("the state database holds an invalid commit id {commit:?} for {environment}")]
    CorruptCommit { environment: String, commit: String },
    #[error("the applied commit {commit} of {environment} no longer validates with this plumb ({errors} errors); run `plumb validate` on it")]
    AppliedInvalid {
        environment: String,
        commit: String,
        errors: usize,
    },
}

impl DaemonError {
    pub fn code(&self) -> &'static str {
        match self {
            DaemonError::Io { .. } => "io",
            DaemonError::State(_) => "state",
            DaemonError::Source(_) => "source",
            DaemonError::Alert(_) => "alert_config",
            DaemonError::Listen { .. } => "listen",
            DaemonError::Tls(_) => "tls",
            DaemonError::Signal { .. } => "signal",
            DaemonError::FetchTimeout(_) => "fetch_timeout",
            DaemonError::Task { .. } => "task",
            DaemonError::CorruptCommit { .. } => "corrupt_commit",
            DaemonError::AppliedInvalid { .. } => "applied_invalid",
        }
    }

    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> DaemonError {
        let path = path.into();
        move |source| DaemonError::Io { what, path, source }
    }

    pub(crate) fn task(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> DaemonError {
        move |e| DaemonError::Task {
            what,
            message: panic_message(e),
        }
    }
}

/// What a failed blocking job says: the panic message when it panicked.
pub(crate) fn panic_message(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("panic: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("panic: {s}")
    } else {
        "panic".to_string()
    }
}
