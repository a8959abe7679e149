//! The engine: owns all I/O with hosts. Per host and per phase it sends one script:
//!
//! 1. **probe**: every step's probe, in one round trip; each step's output is diffed by its
//!    (pure) module. A step whose probe fails is an error for that step only.
//! 2. **apply**: every needed change, in order, then the handlers (refreshes of notified
//!    steps, once each), in one round trip. A failed step stops that host.
//! 3. **verify**: the probes again, in one round trip; every step must now be in sync.
//!
//! A host in sync costs one round trip. The engine is never told why it runs (first apply,
//! retry, drift correction): it observes first, so running it again is always safe.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};

use crate::model::Host;
use crate::modules::{Change, ProbeResult};
use crate::render::DesiredHost;
use crate::transport::{LocalTransport, SshOptions, SshTransport, Transport, TransportError};

pub mod script;

use script::Tag;

/// Round trips spent on one host, per phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct RoundTrips {
    pub probe: u32,
    pub apply: u32,
    pub verify: u32,
}

/// Makes a transport for a host.
pub trait Connector: Send + Sync {
    fn connect(&self, host: &Host) -> Arc<dyn Transport>;
}

/// SSH to every host.
#[derive(Debug, Clone, Default)]
pub struct SshConnector {
    pub options: SshOptions,
}

impl Connector for SshConnector {
    fn connect(&self, host: &Host) -> Arc<dyn Transport> {
        Arc::new(SshTransport::new(host.clone(), self.options.clone()))
    }
}

/// Keeps one transport per host across runs, so a long-running daemon reuses each host's SSH
/// master connection (a transport that lost its connection reconnects on its next use).
pub struct CachedConnector<C> {
    inner: C,
    cache: std::sync::Mutex<std::collections::HashMap<String, Arc<dyn Transport>>>,
}

impl<C: Connector> CachedConnector<C> {
    pub fn new(inner: C) -> CachedConnector<C> {
        CachedConnector {
            inner,
            cache: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }
}

impl<C: Connector> Connector for CachedConnector<C> {
    fn connect(&self, host: &Host) -> Arc<dyn Transport> {
        // Everything that changes how the host is reached is part of the key.
        let key = format!(
            "{}|{}|{}|{:?}|{}",
            host.name, host.address, host.port, host.user, host.become_
        );
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .entry(key)
            .or_insert_with(|| self.inner.connect(host))
            .clone()
    }
}

/// Every host is this machine (tests, pull mode).
#[derive(Debug, Clone, Default)]
pub struct LocalConnector;

impl Connector for LocalConnector {
    fn connect(&self, host: &Host) -> Arc<dyn Transport> {
        Arc::new(LocalTransport {
            become_: host.become_,
            ..LocalTransport::new()
        })
    }
}

/// The plan of one step on one host.
#[derive(Debug, Clone)]
pub struct StepPlan {
    pub address: String,
    pub module: String,
    pub target: String,
    pub sensitive: bool,
    /// The change needed, or why the probe could not tell.
    pub change: Result<Change, String>,
}

impl StepPlan {
    pub fn needs_change(&self) -> bool {
        matches!(&self.change, Ok(c) if c.is_change())
    }
}

/// Why a host could not be handled at all.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HostError {
    #[error("{0}")]
    Unreachable(#[from] TransportError),
    #[error("{0}")]
    Script(String),
}

impl HostError {
    pub fn code(&self) -> &'static str {
        match self {
            HostError::Unreachable(t) => t.code(),
            HostError::Script(_) => "script",
        }
    }
}

/// What one host needs.
#[derive(Debug, Clone)]
pub struct HostPlan {
    pub host: Host,
    pub steps: Vec<StepPlan>,
    pub error: Option<HostError>,
    pub round_trips: RoundTrips,
    pub duration: Duration,
}

impl HostPlan {
    pub fn changes(&self) -> usize {
        self.steps.iter().filter(|s| s.needs_change()).count()
    }
    pub fn step_errors(&self) -> usize {
        self.steps.iter().filter(|s| s.change.is_err()).count()
    }
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.step_errors() == 0
    }
}

/// The result of one step in an apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Already in sync: nothing ran.
    InSync,
    /// Changed, and verified in sync.
    Changed,
    Failed,
    /// Not run because an earlier step failed.
    Skipped,
}

#[derive(Debug, Clone)]
pub struct StepOutcome {
    pub address: String,
    pub status: StepStatus,
    pub change: Option<Change>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone)]
pub struct HandlerOutcome {
    /// The refreshed step.
    pub address: String,
    pub ok: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    /// Every step in sync after the run.
    Converged,
    Failed,
    Unreachable,
}

/// One host's apply.
#[derive(Debug, Clone)]
pub struct HostRun {
    pub host: Host,
    pub status: HostStatus,
    pub error: Option<String>,
    pub steps: Vec<StepOutcome>,
    pub handlers: Vec<HandlerOutcome>,
    pub round_trips: RoundTrips,
    pub duration: Duration,
}

impl HostRun {
    pub fn changed(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.status == StepStatus::Changed)
            .count()
    }
}

fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn failure_text(r: &ProbeResult, sensitive: bool) -> String {
    if sensitive {
        return format!("exit status {} (output hidden: sensitive step)", r.status);
    }
    let err = tail(&r.stderr, 20);
    let out = tail(&r.stdout, 5);
    match (err.is_empty(), out.is_empty()) {
        (false, _) => format!("exit status {}: {err}", r.status),
        (true, false) => format!("exit status {}: {out}", r.status),
        (true, true) => format!("exit status {}", r.status),
    }
}

async fn observe(
    desired: &DesiredHost,
    t: &dyn Transport,
) -> Result<Vec<Result<Change, String>>, HostError> {
    let fragments: Vec<(Tag, String)> = desired
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (Tag::Probe(i), s.resource.probe()))
        .collect();
    let out = t.run(script::build(&fragments, false).as_bytes()).await?;
    let parsed = script::parse(&out.stdout);
    if let Some(f) = parsed.fatal {
        return Err(HostError::Script(f));
    }
    if parsed.completed.is_none() {
        return Err(HostError::Script(format!(
            "the probe script did not complete (exit status {:?}): {}",
            out.status,
            tail(&out.stderr, 10)
        )));
    }
    Ok(desired
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let Some(frame) = parsed.get(Tag::Probe(i)) else {
                return Err("no probe output".to_string());
            };
            if s.resource.refresh_only() {
                return Ok(Change::in_sync());
            }
            s.resource.diff(&frame.result).map_err(|e| {
                if s.sensitive {
                    "probe failed (details hidden: sensitive step)".to_string()
                } else {
                    format!("probe failed: {e}")
                }
            })
        })
        .collect())
}

/// Observes a host and diffs every step: one round trip.
pub async fn plan_host(desired: &DesiredHost, t: &dyn Transport) -> HostPlan {
    let start = Instant::now();
    let mut plan = HostPlan {
        host: desired.host.clone(),
        steps: Vec::new(),
        error: None,
        round_trips: RoundTrips {
            probe: 1,
            ..RoundTrips::default()
        },
        duration: Duration::ZERO,
    };
    match observe(desired, t).await {
        Ok(changes) => {
            plan.steps = desired
                .steps
                .iter()
                .zip(changes)
                .map(|(s, change)| StepPlan {
                    address: s.address.clone(),
                    module: s.module.clone(),
                    target: s.resource.target(),
                    sensitive: s.sensitive,
                    change,
                })
                .collect();
        }
        Err(e) => plan.error = Some(e),
    }
    tracing::debug!(host = %desired.host.name, round_trips = plan.round_trips.probe, phase = "probe", "observed host");
    plan.duration = start.elapsed();
    plan
}

/// Plans, applies what differs, runs handlers, and verifies: at most three round trips.
pub async fn apply_host(desired: &DesiredHost, t: &dyn Transport) -> HostRun {
    let start = Instant::now();
    let plan = plan_host(desired, t).await;
    let mut run = HostRun {
        host: desired.host.clone(),
        status: HostStatus::Converged,
        error: None,
        steps: Vec::new(),
        handlers: Vec::new(),
        round_trips: plan.round_trips,
        duration: Duration::ZERO,
    };
    if let Some(e) = &plan.error {
        run.status = if matches!(e, HostError::Unreachable(_)) {
            HostStatus::Unreachable
        } else {
            HostStatus::Failed
        };
        run.error = Some(e.to_string());
        run.duration = start.elapsed();
        return run;
    }
    // A step we cannot observe is a step we cannot change safely: touch nothing on this host.
    if plan.step_errors() > 0 {
        run.status = HostStatus::Failed;
        run.error = Some(format!(
            "{} step(s) could not be observed; nothing was applied",
            plan.step_errors()
        ));
        run.steps = plan
            .steps
            .iter()
            .map(|s| StepOutcome {
                address: s.address.clone(),
                status: if s.change.is_err() {
                    StepStatus::Failed
                } else {
                    StepStatus::Skipped
                },
                change: s.change.clone().ok(),
                error: s.change.clone().err(),
                duration_ms: 0,
            })
            .collect();
        run.duration = start.elapsed();
        return run;
    }

    let changes: Vec<Option<Change>> = plan
        .steps
        .iter()
        .map(|s| s.change.as_ref().ok().filter(|c| c.is_change()).cloned())
        .collect();
    // Handlers: refreshes of steps notified by a changing step, once each, in step order.
    let notified: BTreeSet<usize> = desired
        .steps
        .iter()
        .zip(&changes)
        .filter(|(_, c)| c.is_some())
        .flat_map(|(s, _)| s.notify.iter())
        .filter_map(|addr| desired.steps.iter().position(|t| &t.address == addr))
        .collect();
    let mut fragments: Vec<(Tag, String)> = Vec::new();
    for (i, (s, c)) in desired.steps.iter().zip(&changes).enumerate() {
        if let Some(c) = c {
            fragments.push((Tag::Apply(i), s.resource.apply(c)));
        }
    }
    for &i in &notified {
        let target = &desired.steps[i].resource;
        if changes[i]
            .as_ref()
            .is_some_and(|own| !target.refresh_after(own))
        {
            continue;
        }
        if let Some(r) = target.refresh() {
            fragments.push((Tag::Refresh(i), r));
        }
    }

    if fragments.is_empty() {
        run.steps = plan
            .steps
            .iter()
            .map(|s| StepOutcome {
                address: s.address.clone(),
                status: StepStatus::InSync,
                change: None,
                error: None,
                duration_ms: 0,
            })
            .collect();
        run.duration = start.elapsed();
        return run;
    }

    run.round_trips.apply = 1;
    let applied = match t.run(script::build(&fragments, true).as_bytes()).await {
        Ok(out) => script::parse(&out.stdout),
        Err(e) => {
            // The connection broke mid-apply: steps may or may not have run. The next run
            // observes first, so it converges from wherever the host is.
            run.status = HostStatus::Unreachable;
            run.error = Some(format!(
                "{e} (during apply; the next run observes and converges)"
            ));
            run.duration = start.elapsed();
            return run;
        }
    };
    let mut failed = false;
    for (i, (s, c)) in desired.steps.iter().zip(&changes).enumerate() {
        let outcome = match (c, applied.get(Tag::Apply(i))) {
            (None, _) => StepOutcome {
                address: s.address.clone(),
                status: StepStatus::InSync,
                change: None,
                error: None,
                duration_ms: 0,
            },
            (Some(c), Some(f)) if f.result.status == 0 => StepOutcome {
                address: s.address.clone(),
                status: StepStatus::Changed,
                change: Some(c.clone()),
                error: None,
                duration_ms: f.duration_ms,
            },
            (Some(c), Some(f)) => {
                failed = true;
                StepOutcome {
                    address: s.address.clone(),
                    status: StepStatus::Failed,
                    change: Some(c.clone()),
                    error: Some(failure_text(&f.result, s.sensitive)),
                    duration_ms: f.duration_ms,
                }
            }
            (Some(c), None) => StepOutcome {
                address: s.address.clone(),
                status: StepStatus::Skipped,
                change: Some(c.clone()),
                error: None,
                duration_ms: 0,
            },
        };
        run.steps.push(outcome);
    }
    for &i in &notified {
        if let Some(f) = applied.get(Tag::Refresh(i)) {
            let ok = f.result.status == 0;
            failed |= !ok;
            run.handlers.push(HandlerOutcome {
                address: desired.steps[i].address.clone(),
                ok,
                error: (!ok).then(|| failure_text(&f.result, desired.steps[i].sensitive)),
            });
        }
    }
    if applied.completed.is_none() && !failed {
        run.status = HostStatus::Unreachable;
        run.error = Some(
            "the apply script did not complete (connection lost?); the next run converges".into(),
        );
        run.duration = start.elapsed();
        return run;
    }
    if failed {
        run.status = HostStatus::Failed;
        let first = run
            .steps
            .iter()
            .find(|s| s.status == StepStatus::Failed)
            .map(|s| s.address.clone());
        run.error = Some(match first {
            Some(a) => format!("step {a} failed; later steps were skipped"),
            None => "a handler failed".to_string(),
        });
        run.duration = start.elapsed();
        return run;
    }

    // Verify: everything must be in sync now.
    run.round_trips.verify = 1;
    match observe(desired, t).await {
        Err(e) => {
            run.status = HostStatus::Failed;
            run.error = Some(format!("verify failed: {e}"));
        }
        Ok(after) => {
            for (outcome, result) in run.steps.iter_mut().zip(after) {
                match result {
                    Ok(c) if !c.is_change() => {}
                    Ok(c) => {
                        outcome.status = StepStatus::Failed;
                        outcome.error = Some(format!("still not in sync after apply ({})", c.kind));
                    }
                    Err(e) => {
                        outcome.status = StepStatus::Failed;
                        outcome.error = Some(format!("verify: {e}"));
                    }
                }
            }
            if run.steps.iter().any(|s| s.status == StepStatus::Failed) {
                run.status = HostStatus::Failed;
                run.error = Some("some steps did not converge".into());
            }
        }
    }
    run.duration = start.elapsed();
    tracing::debug!(
        host = %desired.host.name,
        probe = run.round_trips.probe,
        apply = run.round_trips.apply,
        verify = run.round_trips.verify,
        status = ?run.status,
        "applied host"
    );
    run
}

/// Runs `f` on every host, at most `parallel` at once, keeping the input order.
pub async fn each_host<'a, T, F, Fut>(
    hosts: impl IntoIterator<Item = &'a DesiredHost>,
    parallel: usize,
    f: F,
) -> Vec<T>
where
    F: Fn(&'a DesiredHost) -> Fut,
    Fut: std::future::Future<Output = T> + 'a,
{
    let mut results: Vec<(usize, T)> = stream::iter(hosts.into_iter().enumerate())
        .map(|(i, h)| {
            let fut = f(h);
            async move { (i, fut.await) }
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, t)| t).collect()
}

/// Plans every host.
pub async fn plan_all(
    hosts: &[DesiredHost],
    connector: &dyn Connector,
    parallel: usize,
) -> Vec<HostPlan> {
    each_host(hosts, parallel, |h| async move {
        let t = connector.connect(&h.host);
        plan_host(h, t.as_ref()).await
    })
    .await
}

/// Applies every host; one failing host does not stop the others.
pub async fn apply_all(
    hosts: &[DesiredHost],
    connector: &dyn Connector,
    parallel: usize,
) -> Vec<HostRun> {
    each_host(hosts, parallel, |h| async move {
        let t = connector.connect(&h.host);
        apply_host(h, t.as_ref()).await
    })
    .await
}

#[cfg(test)]
mod tests;
