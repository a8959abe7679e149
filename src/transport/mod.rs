//! Transports: how a script reaches a host. The engine hands a transport one whole script
//! per phase; the transport runs it with `sh -s` (through `sudo -n` when the host asks for
//! privilege escalation) and returns what it printed. One call is one round trip.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub mod local;
pub mod ssh;

pub use local::LocalTransport;
pub use ssh::{SshOptions, SshTransport};

/// What a script printed, and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Exit status; `None` when killed by a signal.
    pub status: Option<i32>,
}

/// Why a script could not be run. `code()` is stable and low-cardinality.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect to {host}: {message}")]
    Connect { host: String, message: String },
    #[error("connection to {host} failed while running: {message}")]
    Exec { host: String, message: String },
    #[error("{host} did not answer within {timeout:?}")]
    Timeout { host: String, timeout: Duration },
}

impl TransportError {
    pub fn code(&self) -> &'static str {
        match self {
            TransportError::Connect { .. } => "connect",
            TransportError::Exec { .. } => "exec",
            TransportError::Timeout { .. } => "timeout",
        }
    }
}

pub type RunFuture<'a> = Pin<Box<dyn Future<Output = Result<Output, TransportError>> + Send + 'a>>;

/// A way to run a script on one host.
pub trait Transport: Send + Sync + fmt::Debug {
    /// Runs `script` with `sh -s` on the host: exactly one round trip.
    fn run<'a>(&'a self, script: &'a [u8]) -> RunFuture<'a>;
}

/// The command that runs a script from stdin, with or without sudo.
pub fn shell_argv(become_: bool) -> Vec<&'static str> {
    if become_ {
        vec!["sudo", "-n", "--", "sh", "-s"]
    } else {
        vec!["sh", "-s"]
    }
}
