//! Transports: how a script reaches a host. The engine hands a transport one whole script
//! per phase; the transport runs it with `sh -s` (through `sudo -n` when the host asks for
//! privilege escalation) and returns what it printed. One call is one round trip.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::model::HumanDuration;

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
    #[error("{host} did not answer within {timeout:?}; the session was closed (raise the phase timeout if the host is only slow)")]
    Timeout { host: String, timeout: Duration },
    #[error("{host} printed more than {limit} bytes in one round trip (plumb's output limit); the session was closed: look for a step that floods its output")]
    OutputLimit { host: String, limit: usize },
}

impl TransportError {
    pub fn code(&self) -> &'static str {
        match self {
            TransportError::Connect { .. } => "connect",
            TransportError::Exec { .. } => "exec",
            TransportError::Timeout { .. } => "timeout",
            TransportError::OutputLimit { .. } => "output_limit",
        }
    }
}

pub type RunFuture<'a> = Pin<Box<dyn Future<Output = Result<Output, TransportError>> + Send + 'a>>;

/// Most bytes plumb reads from one round trip, per stream (stdout, stderr). A host that
/// prints more fails with [`TransportError::OutputLimit`] and its session is killed: plumb's
/// memory stays bounded whatever a host prints. Sized for a probe of a few hundred steps
/// (each frame is bounded on the host by `engine::script::MAX_FRAME_BYTES`).
pub const MAX_SCRIPT_OUTPUT: usize = 16 * 1024 * 1024;

/// The longest each phase of a host's run may take. One hung host is bounded by these and
/// never blocks other hosts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(default, deny_unknown_fields)]
pub struct PhaseTimeouts {
    /// The probe round trip (plan, drift check, first step of an apply). Default `5m`.
    pub observe: HumanDuration,
    /// The apply round trip's changes and handlers. Default `30m`.
    pub apply: HumanDuration,
    /// The verifying probes at the end of the apply round trip, which may take `apply` plus
    /// this in all. Default `5m`.
    pub verify: HumanDuration,
}

impl Default for PhaseTimeouts {
    fn default() -> Self {
        PhaseTimeouts {
            observe: HumanDuration::from_secs(5 * 60),
            apply: HumanDuration::from_secs(30 * 60),
            verify: HumanDuration::from_secs(5 * 60),
        }
    }
}

/// A way to run a script on one host.
pub trait Transport: Send + Sync + fmt::Debug {
    /// Runs `script` with `sh -s` on the host, giving up (and killing the session) after
    /// `timeout`: exactly one round trip.
    fn run_within<'a>(&'a self, script: &'a [u8], timeout: Duration) -> RunFuture<'a>;

    /// The per-phase timeouts this transport was configured with.
    fn timeouts(&self) -> PhaseTimeouts {
        PhaseTimeouts::default()
    }

    /// Runs `script` within the apply timeout.
    fn run<'a>(&'a self, script: &'a [u8]) -> RunFuture<'a> {
        self.run_within(script, self.timeouts().apply.get())
    }
}

/// Wraps a transport and counts the round trips really made through it: the engine wraps
/// each phase, so the counts it reports are measured, not assumed.
#[derive(Debug)]
pub struct CountingTransport<'a> {
    inner: &'a dyn Transport,
    runs: AtomicU32,
}

impl<'a> CountingTransport<'a> {
    pub fn new(inner: &'a dyn Transport) -> CountingTransport<'a> {
        CountingTransport {
            inner,
            runs: AtomicU32::new(0),
        }
    }

    /// Round trips made so far.
    pub fn count(&self) -> u32 {
        self.runs.load(Ordering::Relaxed)
    }
}

impl Transport for CountingTransport<'_> {
    fn run_within<'a>(&'a self, script: &'a [u8], timeout: Duration) -> RunFuture<'a> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        self.inner.run_within(script, timeout)
    }

    fn timeouts(&self) -> PhaseTimeouts {
        self.inner.timeouts()
    }
}

/// Reads a stream to its end, or fails once it passed `limit` bytes (having read at most
/// one byte more).
pub(crate) async fn read_capped<R: AsyncRead + Unpin>(
    r: Option<R>,
    limit: usize,
) -> Result<Vec<u8>, ReadError> {
    let mut buf = Vec::new();
    let Some(r) = r else {
        return Ok(buf);
    };
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    r.take(cap)
        .read_to_end(&mut buf)
        .await
        .map_err(ReadError::Io)?;
    if buf.len() > limit {
        return Err(ReadError::TooLarge);
    }
    Ok(buf)
}

/// Why [`read_capped`] stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    TooLarge,
    Io(std::io::Error),
}

impl ReadError {
    pub(crate) fn into_transport(self, host: &str) -> TransportError {
        match self {
            ReadError::TooLarge => TransportError::OutputLimit {
                host: host.to_string(),
                limit: MAX_SCRIPT_OUTPUT,
            },
            ReadError::Io(e) => TransportError::Exec {
                host: host.to_string(),
                message: e.to_string(),
            },
        }
    }
}

/// The command that runs a script from stdin, with or without sudo.
pub fn shell_argv(become_: bool) -> Vec<&'static str> {
    if become_ {
        vec!["sudo", "-n", "--", "sh", "-s"]
    } else {
        vec!["sh", "-s"]
    }
}
