//! Health checks, run after each rollout wave (see `EnvFile::health_checks`).
//!
//! Three kinds, exactly one per check:
//! - `command`: `sh -c <command>` on each host of the wave, through the engine's transport, in
//!   one round trip per attempt; exit 0 is healthy.
//! - `http`: a GET from plumb; any 2xx is healthy. The URL is a template rendered against
//!   `{"host": {"name", "address", "port", "labels"}}`, e.g. `http://{{ host.address }}:8080/`,
//!   by the caller's [`Renderer`] (the daemon passes `render::render_inline` over the repo:
//!   one template environment for every template).
//! - `tcp`: a TCP connect from plumb to `host.address:<port>`.
//!
//! Each attempt is bounded by the check's `timeout`; a check is tried up to `retries` times,
//! [`RETRY_INTERVAL`] apart, and passes on its first healthy attempt. Every check of every host
//! yields one [`CheckResult`]; nothing here panics or returns early on a host's failure.

use std::time::{Duration, Instant};

use futures::future::join_all;
use schemars::JsonSchema;
use serde::Serialize;

use crate::engine::Connector;
use crate::model::{HealthCheck, HealthProbe, Host};
use crate::transport::{Transport, TransportError};

/// Time between two attempts of one check.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Most bytes of a failing command's output kept in the error message.
const MAX_OUTPUT_IN_ERROR: usize = 512;

/// How a check is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Bound on each attempt.
    pub timeout: Duration,
    /// Attempts before the check fails (at least 1).
    pub attempts: u32,
    /// Pause between attempts.
    pub interval: Duration,
}

impl Policy {
    /// How a loaded check is tried: its timeout, `retries` attempts, [`RETRY_INTERVAL`] apart.
    pub fn of(check: &HealthCheck) -> Policy {
        Policy {
            timeout: check.timeout.get(),
            attempts: check.retries.max(1),
            interval: RETRY_INTERVAL,
        }
    }
}

/// Why an attempt (the last one, in a [`CheckResult`]) was unhealthy. `code()` is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("cannot render URL: {0}")]
    Template(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("HTTP request failed: {0}")]
    Http(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("{0}")]
    Transport(String),
    #[error("command exited with {status}{output}")]
    Exit { status: String, output: String },
    #[error("prometheus: {0}")]
    Prometheus(String),
    #[error("{0}")]
    ConditionNotMet(String),
    #[error("inconclusive: {0}")]
    Inconclusive(String),
    /// Exit status 127: the shell found no such command (a typo, or not installed on the host).
    #[error("command not found (exit status 127){output}")]
    NotFound { output: String },
}

impl CheckError {
    pub fn code(&self) -> &'static str {
        match self {
            CheckError::Template(_) => "template",
            CheckError::Timeout(_) => "timeout",
            CheckError::Connect(_) => "connect",
            CheckError::Http(_) => "http",
            CheckError::Status(_) => "http_status",
            CheckError::Transport(_) => "transport",
            CheckError::Exit { .. } => "exit",
            CheckError::NotFound { .. } => "command_not_found",
            CheckError::Prometheus(_) => "prometheus",
            CheckError::ConditionNotMet(_) => "condition_not_met",
            CheckError::Inconclusive(_) => "inconclusive",
        }
    }
}

impl From<TransportError> for CheckError {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Timeout { timeout, .. } => CheckError::Timeout(timeout),
            other => CheckError::Transport(other.to_string()),
        }
    }
}

/// The outcome of one check on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct CheckResult {
    /// The check's name.
    pub check: String,
    /// `command`, `http`, `tcp` or `prometheus`.
    pub kind: String,
    pub host: String,
    pub ok: bool,
    /// Not ok, but not a failure either: a `prometheus` check found no data (the wave pauses).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inconclusive: bool,
    /// Stable error code of the last attempt (see `CheckError::code`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The last attempt's error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Attempts made (1 when the first one passed).
    pub attempts: u32,
    /// Wall time over every attempt and pause.
    pub duration_ms: u64,
}

/// Every check of a wave, on every host of the wave.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct WaveHealth {
    pub results: Vec<CheckResult>,
}

impl WaveHealth {
    /// True when every check passed on every host (and when there were none).
    pub fn ok(&self) -> bool {
        self.results.iter().all(|r| r.ok)
    }
    pub fn failures(&self) -> impl Iterator<Item = &CheckResult> {
        self.results.iter().filter(|r| !r.ok)
    }
}

/// Runs `attempt` up to `policy.attempts` times, each bounded by `policy.timeout`.
async fn retry<F, Fut>(
    check: &str,
    kind: &str,
    host: &str,
    policy: Policy,
    mut attempt: F,
) -> CheckResult
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), CheckError>>,
{
    let start = Instant::now();
    let attempts = policy.attempts.max(1);
    let mut last = None;
    let mut made = 0;
    for n in 1..=attempts {
        made = n;
        let res = match tokio::time::timeout(policy.timeout, attempt()).await {
            Ok(r) => r,
            Err(_) => Err(CheckError::Timeout(policy.timeout)),
        };
        match res {
            Ok(()) => {
                last = None;
                break;
            }
            // A check that cannot be rendered will not render on retry either.
            Err(e @ CheckError::Template(_)) => {
                last = Some(e);
                break;
            }
            Err(e) => {
                tracing::debug!(check, host, attempt = n, code = e.code(), error = %e, "health check attempt failed");
                last = Some(e);
            }
        }
        if n < attempts {
            tokio::time::sleep(policy.interval).await;
        }
    }
    let duration_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    CheckResult {
        check: check.to_string(),
        kind: kind.to_string(),
        host: host.to_string(),
        ok: last.is_none(),
        inconclusive: false,
        code: last.as_ref().map(|e| e.code().to_string()),
        error: last.map(|e| e.to_string()),
        attempts: made,
        duration_ms,
    }
}

/// The script a `command` check sends: `sh -c <command>`, quoted.
pub fn command_script(command: &str) -> String {
    format!("sh -c {}\n", crate::modules::sh::quote(command))
}

fn output_excerpt(out: &[u8]) -> String {
    let s = String::from_utf8_lossy(out);
    let s = s.trim();
    if s.is_empty() {
        return String::new();
    }
    let mut cut = s.len().min(MAX_OUTPUT_IN_ERROR);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    let ell = if cut < s.len() { "…" } else { "" };
    format!(": {}{ell}", &s[..cut])
}

/// One attempt of a `command` check: one round trip.
async fn command_once(transport: &dyn Transport, script: &[u8]) -> Result<(), CheckError> {
    let out = transport.run(script).await?;
    match out.status {
        Some(0) => Ok(()),
        Some(127) => Err(CheckError::NotFound {
            output: output_excerpt(if out.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
                &out.stderr
            } else {
                &out.stdout
            }),
        }),
        status => {
            let text = if out.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
                &out.stderr
            } else {
                &out.stdout
            };
            Err(CheckError::Exit {
                status: status.map_or_else(|| "a signal".to_string(), |s| format!("status {s}")),
                output: output_excerpt(text),
            })
        }
    }
}

/// A `command` check on one host, through its transport.
pub async fn check_command(
    name: &str,
    command: &str,
    host: &Host,
    transport: &dyn Transport,
    policy: Policy,
) -> CheckResult {
    let script = command_script(command);
    retry(name, "command", &host.name, policy, || {
        command_once(transport, script.as_bytes())
    })
    .await
}

/// Renders a template string against a context: `render::render_inline` over the repo the
/// checks come from (the one template environment), passed in by the caller.
pub type Renderer<'a> = &'a (dyn Fn(&str, &serde_json::Value) -> Result<String, String> + Sync);

/// Renders an `http` check's URL for a host, with `host` = `{name, address, port, labels}`.
pub fn render_url(template: &str, host: &Host, render: Renderer<'_>) -> Result<String, CheckError> {
    let ctx = serde_json::json!({
        "host": {
            "name": host.name,
            "address": host.address,
            "port": host.port,
            "labels": host.labels,
        }
    });
    render(template, &ctx).map_err(CheckError::Template)
}

async fn http_once(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<(), CheckError> {
    let resp = client.get(url).timeout(timeout).send().await.map_err(|e| {
        if e.is_timeout() {
            CheckError::Timeout(timeout)
        } else if e.is_connect() {
            CheckError::Connect(crate::diag::error_chain(&e))
        } else {
            CheckError::Http(crate::diag::error_chain(&e))
        }
    })?;
    let status = resp.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(CheckError::Status(status.as_u16()))
    }
}

/// An `http` check for one host: GET the rendered URL, 2xx is healthy.
pub async fn check_http(
    name: &str,
    url_template: &str,
    host: &Host,
    client: &reqwest::Client,
    policy: Policy,
    render: Renderer<'_>,
) -> CheckResult {
    let url = render_url(url_template, host, render);
    retry(name, "http", &host.name, policy, || {
        let url = url.clone();
        async move { http_once(client, &url?, policy.timeout).await }
    })
    .await
}

/// A `tcp` check: connect from plumb to `host.address:port`.
pub async fn check_tcp(name: &str, port: u16, host: &Host, policy: Policy) -> CheckResult {
    retry(name, "tcp", &host.name, policy, || async move {
        tokio::net::TcpStream::connect((host.address.as_str(), port))
            .await
            .map(drop)
            .map_err(|e| CheckError::Connect(format!("{}:{port}: {e}", host.address)))
    })
    .await
}

/// The HTTP client health checks use: no proxy from the environment, no cookies.
pub fn http_client() -> Result<reqwest::Client, CheckError> {
    reqwest::Client::builder()
        .user_agent(concat!(
            "plumb/",
            env!("CARGO_PKG_VERSION"),
            " health-check"
        ))
        .no_proxy()
        .build()
        .map_err(|e| CheckError::Http(crate::diag::error_chain(&e)))
}

/// Runs one check on one host.
pub async fn run_check(
    check: &HealthCheck,
    host: &Host,
    transport: &dyn Transport,
    client: &reqwest::Client,
    render: Renderer<'_>,
) -> CheckResult {
    let policy = Policy::of(check);
    match &check.probe {
        HealthProbe::Command(c) => check_command(&check.name, c, host, transport, policy).await,
        HealthProbe::Http(u) => check_http(&check.name, u, host, client, policy, render).await,
        HealthProbe::Tcp(p) => check_tcp(&check.name, *p, host, policy).await,
        HealthProbe::Prometheus(q) => {
            prometheus::check_prometheus(&check.name, q, host, client, policy, render).await
        }
    }
}

/// Runs every check (loaded, so valid) on every host of a wave, all at once; results are
/// ordered by check, then by host, as declared.
pub async fn check_wave(
    checks: &[HealthCheck],
    hosts: &[Host],
    connector: &dyn Connector,
    render: Renderer<'_>,
) -> WaveHealth {
    if checks.is_empty() || hosts.is_empty() {
        return WaveHealth::default();
    }
    let client = match http_client() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the health-check HTTP client");
            None
        }
    };
    let transports: Vec<_> = hosts.iter().map(|h| connector.connect(h)).collect();
    let mut futs = Vec::new();
    for check in checks {
        for (host, transport) in hosts.iter().zip(&transports) {
            let client = client.clone();
            futs.push(async move {
                let policy = Policy::of(check);
                let name = &check.name;
                match (&check.probe, client) {
                    (HealthProbe::Command(cmd), _) => {
                        check_command(name, cmd, host, transport.as_ref(), policy).await
                    }
                    (HealthProbe::Tcp(port), _) => check_tcp(name, *port, host, policy).await,
                    (HealthProbe::Http(url), Some(client)) => {
                        check_http(name, url, host, &client, policy, render).await
                    }
                    (HealthProbe::Prometheus(q), Some(client)) => {
                        prometheus::check_prometheus(name, q, host, &client, policy, render).await
                    }
                    (HealthProbe::Http(_) | HealthProbe::Prometheus(_), None) => {
                        let e = CheckError::Http("no HTTP client (see the daemon log)".into());
                        CheckResult {
                            check: name.clone(),
                            kind: check.probe.kind().to_string(),
                            host: host.name.clone(),
                            ok: false,
                            inconclusive: false,
                            code: Some(e.code().to_string()),
                            error: Some(e.to_string()),
                            attempts: 0,
                            duration_ms: 0,
                        }
                    }
                }
            });
        }
    }
    let results = join_all(futs).await;
    for r in results.iter().filter(|r| !r.ok) {
        tracing::warn!(
            check = %r.check, host = %r.host, code = r.code.as_deref().unwrap_or(""),
            error = r.error.as_deref().unwrap_or(""), attempts = r.attempts,
            "health check failed"
        );
    }
    WaveHealth { results }
}

pub mod prometheus;

#[cfg(test)]
mod tests;
