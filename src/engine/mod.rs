//! The engine: owns all I/O with hosts. Per host and per phase it sends one script:
//!
//! 1. **probe**: every step's probe, in one round trip; each step's output is diffed by its
//!    (pure) module. A step whose probe fails is an error for that step only.
//! 2. **apply + verify**: every needed change, in order, then the handlers (refreshes of
//!    notified steps, once each), then the probes of every step that acted and of every step
//!    that shares a path, a service, a user or a group with one that did ([`verify`]), in one
//!    round trip. A failed step stops that host before the verify part; every step verified
//!    must now be in sync.
//!
//! A host in sync costs one round trip, a change two. The engine is never told why it runs
//! (first apply, retry, drift correction): it observes first, so running it again is always
//! safe.
//!
//! `apply_host` is observe → decide → apply and verify, each a function returning a value.
//! Every call into a module's `Resource` is in [`observe`] and [`diff_frame`] (probe, diff,
//! through [`diffs`] for a pass over many hosts)
//! and [`decide`] (apply, refresh, touches, the verify's probes), plus [`StepRef::of`]
//! (target). Each round trip's transport is wrapped in a [`CountingTransport`], so the round
//! trips reported are the ones made. Results carry a [`StepRef`] and are redacted where they
//! are built (see [`step`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};

use crate::facts::Facts;
use crate::model::Host;
use crate::modules::Change;
use crate::render::{DesiredHost, DesiredStep};
use crate::transport::{
    CountingTransport, LocalTransport, PhaseTimeouts, SshOptions, SshTransport, Transport,
    TransportError,
};

mod batch;
mod diffs;
mod probes;
pub mod script;
pub mod step;
pub(crate) mod verify;

pub use crate::model::StepAddress;
pub use step::{StepRef, REDACTED};

use diffs::Diffs;
use script::{Mode, Parsed, Tag};

/// Round trips spent on one host, per phase: a host in sync costs `probe: 1`, a change
/// `probe: 1, apply: 1`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct RoundTrips {
    /// Observing every step (facts riding along).
    pub probe: u32,
    /// Applying the changes and handlers, and verifying what they touched, in one script.
    pub apply: u32,
    /// Round trips spent gathering facts before rendering: a host with no cached facts
    /// (facts otherwise ride along with the probe). Omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub facts: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
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
pub struct LocalConnector {
    pub timeouts: PhaseTimeouts,
}

impl Connector for LocalConnector {
    fn connect(&self, host: &Host) -> Arc<dyn Transport> {
        Arc::new(LocalTransport {
            become_: host.become_,
            timeouts: self.timeouts,
        })
    }
}

/// The plan of one step on one host.
#[derive(Debug, Clone)]
pub struct StepPlan {
    pub step: StepRef,
    /// The change needed (redacted for a sensitive step), or why the probe could not tell.
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
    #[error("step {address} printed more than {limit} bytes on stdout or stderr (plumb's limit per step); make it print less")]
    OutputLimit { address: StepAddress, limit: usize },
}

impl HostError {
    pub fn code(&self) -> &'static str {
        match self {
            HostError::Unreachable(t) => t.code(),
            HostError::Script(_) => "script",
            HostError::OutputLimit { .. } => "output_limit",
        }
    }

    /// The status of a host that stopped on this error.
    pub fn status(&self) -> HostStatus {
        match self {
            HostError::Unreachable(
                TransportError::Connect { .. } | TransportError::Exec { .. },
            ) => HostStatus::Unreachable,
            _ => HostStatus::Failed,
        }
    }
}

/// What one host needs.
#[derive(Debug, Clone)]
pub struct HostPlan {
    pub host: Host,
    /// The facts observed in the probe round trip (`None`: not readable).
    pub facts: Option<Facts>,
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
    pub step: StepRef,
    pub status: StepStatus,
    /// The change made or attempted (redacted for a sensitive step).
    pub change: Option<Change>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

impl StepOutcome {
    fn new(step: &StepRef, status: StepStatus) -> StepOutcome {
        StepOutcome {
            step: step.clone(),
            status,
            change: None,
            error: None,
            duration_ms: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct HandlerOutcome {
    /// The refreshed step.
    pub step: StepRef,
    pub ok: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    /// Every step in sync: observed in sync, or verified in sync after the apply (every step
    /// that changed or was refreshed, and every step sharing a path, service, user or group
    /// with one).
    Converged,
    Failed,
    Unreachable,
}

/// One host's apply.
#[derive(Debug, Clone)]
pub struct HostRun {
    pub host: Host,
    /// The facts observed in the first probe round trip (`None`: not readable).
    pub facts: Option<Facts>,
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

    fn stop(mut self, status: HostStatus, error: String) -> HostRun {
        self.status = status;
        self.error = Some(error);
        self
    }
}

/// What observing a host found, per step: the change it needs, or why the probe could not
/// tell. Unredacted: it stays inside the engine (apply needs the real change).
type Observed = Vec<Result<Change, String>>;

/// The frames of a script's output, or why they cannot be used.
fn frames(out: &crate::transport::Output, refs: &[StepRef]) -> Result<Parsed, HostError> {
    let parsed = script::parse(&out.stdout);
    if let Some(f) = parsed.fatal {
        return Err(HostError::Script(f));
    }
    if let Some(Tag::Probe(i) | Tag::Apply(i) | Tag::Refresh(i) | Tag::Verify(i)) = parsed.oversize
    {
        return Err(HostError::OutputLimit {
            address: refs
                .get(i)
                .map_or_else(|| StepAddress::new("?", "?"), |r| r.address.clone()),
            limit: script::MAX_FRAME_BYTES,
        });
    }
    Ok(parsed)
}

/// The facts in a script's output, when its facts fragment ran and printed them.
fn facts_of(parsed: &Parsed, host: &str) -> Option<Facts> {
    let frame = parsed.get(Tag::Facts)?;
    match crate::facts::parse(&frame.result.stdout) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(host = %host, error = %e, "could not read the host's facts");
            None
        }
    }
}

/// Gathers a host's facts alone: one round trip (a host with no cached facts, before
/// rendering). Returns the facts and the round trips made.
pub async fn gather_facts(host: &Host, t: &dyn Transport) -> Gathered {
    let counted = CountingTransport::new(t);
    let fragments = [(Tag::Facts, crate::facts::SCRIPT.to_string())];
    let script = script::build(&fragments, Mode::Observe);
    let out = counted
        .run_within(script.as_bytes(), t.timeouts().observe.get())
        .await;
    let result = out.map_err(HostError::from).and_then(|out| {
        let parsed = frames(&out, &[])?;
        let frame = parsed.get(Tag::Facts).ok_or_else(|| {
            HostError::Script(format!(
                "the facts script did not complete (exit status {:?}): {}",
                out.status,
                step::tail(&out.stderr, 10)
            ))
        })?;
        crate::facts::parse(&frame.result.stdout)
            .map_err(|e| HostError::Script(format!("facts of host {}: {e}", host.name)))
    });
    (result, counted.count())
}

/// A host's facts (or why not), and the round trips made.
pub type Gathered = (Result<Facts, HostError>, u32);

/// Gathers the facts of `hosts`, at most `parallel` at once: one round trip each. Returns,
/// in the order of `hosts`, each one's facts (or why not) and the round trips made.
pub async fn gather_all(
    hosts: &[Host],
    connector: &dyn Connector,
    parallel: usize,
) -> Vec<Gathered> {
    // The futures are made up front (no closure lives in the stream), so the daemon can
    // spawn a task that awaits this.
    let futures: Vec<_> = hosts
        .iter()
        .map(|h| {
            let t = connector.connect(h);
            async move { gather_facts(h, t.as_ref()).await }
        })
        .collect();
    stream::iter(futures)
        .buffered(parallel.max(1))
        .collect()
        .await
}

/// Observe: every step's probe in one round trip, each diffed by its module; with
/// `with_facts`, the host's facts ride along in the same script.
async fn observe(
    desired: &DesiredHost,
    refs: &[StepRef],
    t: &dyn Transport,
    timeout: Duration,
    with_facts: bool,
    diffs: Option<&Diffs>,
) -> Result<(Observed, Option<Facts>), HostError> {
    let all: Vec<usize> = (0..desired.steps.len()).collect();
    let mut probes = probes::probes(&desired.steps, &all, Tag::Probe);
    let mut fragments = std::mem::take(&mut probes.fragments);
    if with_facts {
        fragments.push((Tag::Facts, crate::facts::SCRIPT.to_string()));
    }
    let out = t
        .run_within(script::build(&fragments, Mode::Observe).as_bytes(), timeout)
        .await?;
    let parsed = frames(&out, refs)?;
    if parsed.completed.is_none() {
        return Err(HostError::Script(format!(
            "the probe script did not complete (exit status {:?}): {}",
            out.status,
            step::tail(&out.stderr, 10)
        )));
    }
    let facts = if with_facts {
        facts_of(&parsed, &desired.host.name)
    } else {
        None
    };
    let results = probes.results(&parsed);
    let observed = desired
        .steps
        .iter()
        .zip(refs)
        .enumerate()
        .map(|(i, (s, r))| diff_frame(s, r, results.get(&i), diffs))
        .collect();
    Ok((observed, facts))
}

/// A step's change from its probe's result (`None`: the probe printed no frame).
fn diff_frame(
    s: &DesiredStep,
    r: &StepRef,
    result: Option<&crate::modules::ProbeResult>,
    diffs: Option<&Diffs>,
) -> Result<Change, String> {
    let result = result.ok_or_else(|| "no probe output".to_string())?;
    if s.resource.refresh_only() {
        return Ok(Change::in_sync());
    }
    match diffs {
        Some(d) => d.diff(s, result),
        None => s.resource.diff(result),
    }
    .map_err(|e| r.probe_error(&e))
}

/// Whether the facts observed differ from those the host was rendered with: its steps
/// must be rendered again before anything is applied.
pub fn facts_changed(desired: &DesiredHost, observed: Option<&Facts>) -> bool {
    match (&desired.facts, observed) {
        (Some(used), Some(seen)) => used != seen,
        _ => false,
    }
}

/// What to do on a host: the changes, the notified handlers, the steps to verify, and the
/// script fragments.
struct Work {
    changes: Vec<Option<Change>>,
    /// For each changed step, the step whose apply frame carries it (see [`batch`]).
    carrier: Vec<Option<usize>>,
    /// Steps to refresh (notified by a changing step), once each, in step order.
    handlers: Vec<usize>,
    /// Applies, then handlers.
    fragments: Vec<(Tag, String)>,
    /// The steps the same script probes again after them ([`verify::rechecks`]).
    rechecks: Vec<verify::Recheck>,
    /// Their probes.
    verify: probes::Probes,
}

/// Decide: from what was observed, which fragments to run.
fn decide(desired: &DesiredHost, observed: &Observed) -> Work {
    let changes: Vec<Option<Change>> = observed
        .iter()
        .map(|c| c.as_ref().ok().filter(|c| c.is_change()).cloned())
        .collect();
    let notified: BTreeSet<usize> = desired
        .steps
        .iter()
        .zip(&changes)
        .filter(|(_, c)| c.is_some())
        .flat_map(|(s, _)| s.notify.iter())
        .filter_map(|addr| desired.steps.iter().position(|t| &t.address == addr))
        .collect();
    let batch::Fragments {
        mut fragments,
        carrier,
    } = batch::apply_fragments(&desired.steps, &changes);
    let mut handlers = Vec::new();
    for i in notified {
        let target = &desired.steps[i].resource;
        if changes[i]
            .as_ref()
            .is_some_and(|own| !target.refresh_after(own))
        {
            continue;
        }
        if let Some(r) = target.refresh() {
            fragments.push((Tag::Refresh(i), r));
            handlers.push(i);
        }
    }
    // Every step that acted (applied or refreshed), and what each step touches.
    let acted: BTreeSet<usize> = changes
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.as_ref().map(|_| i))
        .chain(handlers.iter().copied())
        .collect();
    let touches: Vec<_> = desired.steps.iter().map(|s| s.resource.touches()).collect();
    let rechecks: Vec<verify::Recheck> = verify::rechecks(&touches, &acted)
        .into_iter()
        .filter(|r| !desired.steps[r.step].resource.refresh_only())
        .collect();
    let rechecked: Vec<usize> = rechecks.iter().map(|r| r.step).collect();
    let verify = probes::probes(&desired.steps, &rechecked, Tag::Verify);
    Work {
        changes,
        carrier,
        handlers,
        fragments,
        rechecks,
        verify,
    }
}

/// Apply and verify: the fragments, stopping at the first failure, then the verify's
/// probes, in one round trip.
async fn apply(
    work: &Work,
    refs: &[StepRef],
    t: &dyn Transport,
    timeout: Duration,
) -> Result<Parsed, HostError> {
    let out = t
        .run_within(
            script::build_apply_verify(&work.fragments, &work.verify.fragments).as_bytes(),
            timeout,
        )
        .await?;
    frames(&out, refs)
}

/// What the apply script did, per step and handler (redacted).
struct Applied {
    steps: Vec<StepOutcome>,
    handlers: Vec<HandlerOutcome>,
    failed: bool,
}

fn applied(refs: &[StepRef], work: &Work, parsed: &Parsed) -> Applied {
    let mut failed = false;
    let steps = refs
        .iter()
        .zip(&work.changes)
        .enumerate()
        .map(|(i, (r, c))| {
            let Some(c) = c else {
                return StepOutcome::new(r, StepStatus::InSync);
            };
            let mut o = StepOutcome::new(r, StepStatus::Skipped);
            o.change = Some(r.redact(c));
            let carrier = work.carrier[i].unwrap_or(i);
            if let Some(f) = parsed.get(Tag::Apply(carrier)) {
                // A batch's duration is its first step's; the others took no time of their own.
                o.duration_ms = if carrier == i { f.duration_ms } else { 0 };
                if f.result.status == 0 {
                    o.status = StepStatus::Changed;
                } else {
                    failed = true;
                    o.status = StepStatus::Failed;
                    o.error = Some(batch_failure(r.failure(&f.result), refs, work, carrier));
                }
            }
            o
        })
        .collect();
    let handlers = work
        .handlers
        .iter()
        .filter_map(|&i| {
            let f = parsed.get(Tag::Refresh(i))?;
            let ok = f.result.status == 0;
            failed |= !ok;
            Some(HandlerOutcome {
                step: refs[i].clone(),
                ok,
                error: (!ok).then(|| refs[i].failure(&f.result)),
            })
        })
        .collect();
    Applied {
        steps,
        handlers,
        failed,
    }
}

/// A failure of the fragment that `carrier` tags, for one of its steps: as it is, or for a
/// batch, naming every step that failed with it.
fn batch_failure(failure: String, refs: &[StepRef], work: &Work, carrier: usize) -> String {
    let together: Vec<String> = work
        .carrier
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == Some(carrier))
        .filter_map(|(j, _)| refs.get(j).map(|r| r.address.to_string()))
        .collect();
    if together.len() < 2 {
        return failure;
    }
    format!(
        "{failure} (applied as one with {}: each of them failed, none was applied)",
        together.join(", ")
    )
}

/// What the verify part of the apply's script found, per step verified (in the order of
/// `work.rechecks`).
fn rechecked(desired: &DesiredHost, refs: &[StepRef], work: &Work, parsed: &Parsed) -> Observed {
    let results = work.verify.results(parsed);
    work.rechecks
        .iter()
        .map(|r| {
            let s = &desired.steps[r.step];
            diff_frame(s, &refs[r.step], results.get(&r.step), None)
        })
        .collect()
}

/// Observes a host and diffs every step: one round trip.
pub async fn plan_host(desired: &DesiredHost, t: &dyn Transport) -> HostPlan {
    plan_host_in(desired, t, None).await
}

/// [`plan_host`], with the diffs of a pass over many hosts.
async fn plan_host_in(desired: &DesiredHost, t: &dyn Transport, diffs: Option<&Diffs>) -> HostPlan {
    let start = Instant::now();
    let refs: Vec<StepRef> = desired.steps.iter().map(StepRef::of).collect();
    let probe = CountingTransport::new(t);
    let observed = observe(
        desired,
        &refs,
        &probe,
        t.timeouts().observe.get(),
        desired.facts.is_some(),
        diffs,
    )
    .await;
    let mut plan = HostPlan {
        host: desired.host.clone(),
        facts: None,
        steps: Vec::new(),
        error: None,
        round_trips: RoundTrips {
            probe: probe.count(),
            ..RoundTrips::default()
        },
        duration: Duration::ZERO,
    };
    match observed {
        Ok((changes, facts)) => {
            plan.facts = facts;
            plan.steps = refs
                .into_iter()
                .zip(changes)
                .map(|(step, change)| StepPlan {
                    change: change.map(|c| step.redact(&c)),
                    step,
                })
                .collect();
        }
        Err(e) => plan.error = Some(e),
    }
    tracing::debug!(host = %desired.host.name, round_trips = plan.round_trips.probe, phase = "probe", "observed host");
    plan.duration = start.elapsed();
    plan
}

/// Plans, applies what differs, runs handlers, and verifies what they touched: at most two
/// round trips (one when the host is in sync).
pub async fn apply_host(desired: &DesiredHost, t: &dyn Transport) -> HostRun {
    let start = Instant::now();
    let mut run = converge(desired, t).await;
    run.duration = start.elapsed();
    tracing::debug!(
        host = %desired.host.name,
        probe = run.round_trips.probe,
        apply = run.round_trips.apply,
        status = ?run.status,
        "applied host"
    );
    run
}

/// An apply's first observation (facts riding along); `Err` stops the host before anything
/// is changed, also when the facts seen are not those its steps were rendered with (the
/// steps may be wrong: the caller renders again with these facts and runs again).
async fn observe_first(
    desired: &DesiredHost,
    refs: &[StepRef],
    t: &dyn Transport,
    run: &mut HostRun,
    diffs: Option<&Diffs>,
) -> Result<Observed, (HostStatus, String)> {
    let probe = CountingTransport::new(t);
    let with_facts = desired.facts.is_some();
    let observed = observe(
        desired,
        refs,
        &probe,
        t.timeouts().observe.get(),
        with_facts,
        diffs,
    )
    .await;
    run.round_trips.probe = probe.count();
    let (observed, facts) = observed.map_err(|e| (e.status(), e.to_string()))?;
    run.facts = facts;
    if facts_changed(desired, run.facts.as_ref()) {
        return Err((
            HostStatus::Failed,
            "the host's facts changed since its steps were rendered; nothing was applied \
             (render again with the new facts)"
                .into(),
        ));
    }
    Ok(observed)
}

/// A host observed for an apply, not yet changed: its plan (redacted, for reports and
/// policies) and what the apply needs (unredacted, kept inside the engine). Made by
/// [`observe_host`]; [`apply_observed`] applies from it with no second observation, so
/// judging a plan before the apply costs no round trip.
#[derive(Debug)]
pub struct Observation {
    /// The plan as reports and policies see it (sensitive steps redacted).
    pub plan: HostPlan,
    run: HostRun,
    observed: Result<Observed, (HostStatus, String)>,
    started: Instant,
}

fn empty_run(desired: &DesiredHost) -> HostRun {
    HostRun {
        host: desired.host.clone(),
        facts: None,
        status: HostStatus::Converged,
        error: None,
        steps: Vec::new(),
        handlers: Vec::new(),
        round_trips: RoundTrips::default(),
        duration: Duration::ZERO,
    }
}

/// The first phase of an apply alone: one round trip (facts riding along).
pub async fn observe_host(desired: &DesiredHost, t: &dyn Transport) -> Observation {
    observe_host_in(desired, t, None).await
}

/// [`observe_host`], with the diffs of a pass over many hosts.
async fn observe_host_in(
    desired: &DesiredHost,
    t: &dyn Transport,
    diffs: Option<&Diffs>,
) -> Observation {
    let started = Instant::now();
    let refs: Vec<StepRef> = desired.steps.iter().map(StepRef::of).collect();
    let mut run = empty_run(desired);
    let observed = observe_first(desired, &refs, t, &mut run, diffs).await;
    let mut plan = HostPlan {
        host: desired.host.clone(),
        facts: run.facts.clone(),
        steps: Vec::new(),
        error: None,
        round_trips: run.round_trips,
        duration: started.elapsed(),
    };
    match &observed {
        Ok(o) => {
            plan.steps = refs
                .iter()
                .zip(o)
                .map(|(step, change)| StepPlan {
                    change: change
                        .as_ref()
                        .map(|c| step.redact(c))
                        .map_err(Clone::clone),
                    step: step.clone(),
                })
                .collect();
        }
        Err((_, e)) => plan.error = Some(HostError::Script(e.clone())),
    }
    Observation {
        plan,
        run,
        observed,
        started,
    }
}

/// The rest of an apply (decide → apply and verify) from an [`observe_host`] of the same
/// `desired` host.
pub async fn apply_observed(desired: &DesiredHost, t: &dyn Transport, o: Observation) -> HostRun {
    let refs: Vec<StepRef> = desired.steps.iter().map(StepRef::of).collect();
    let mut run = match o.observed {
        Ok(observed) => decide_apply_verify(desired, t, &refs, o.run, observed).await,
        Err((status, error)) => o.run.stop(status, error),
    };
    run.duration = o.started.elapsed();
    run
}

/// observe → decide → apply and verify.
async fn converge(desired: &DesiredHost, t: &dyn Transport) -> HostRun {
    let refs: Vec<StepRef> = desired.steps.iter().map(StepRef::of).collect();
    let mut run = empty_run(desired);
    let observed = match observe_first(desired, &refs, t, &mut run, None).await {
        Ok(o) => o,
        Err((status, error)) => return run.stop(status, error),
    };
    decide_apply_verify(desired, t, &refs, run, observed).await
}

/// decide → apply and verify (one round trip), from a first observation.
async fn decide_apply_verify(
    desired: &DesiredHost,
    t: &dyn Transport,
    refs: &[StepRef],
    mut run: HostRun,
    observed: Observed,
) -> HostRun {
    let timeouts = t.timeouts();
    // A step we cannot observe is a step we cannot change safely: touch nothing on this host.
    let blind = observed.iter().filter(|c| c.is_err()).count();
    if blind > 0 {
        run.steps = blind_outcomes(refs, &observed);
        return run.stop(
            HostStatus::Failed,
            format!("{blind} step(s) could not be observed; nothing was applied"),
        );
    }

    let work = decide(desired, &observed);
    if work.fragments.is_empty() {
        run.steps = refs
            .iter()
            .map(|r| StepOutcome::new(r, StepStatus::InSync))
            .collect();
        return run;
    }

    tracing::debug!(
        host = %desired.host.name,
        fragments = work.fragments.len(),
        verified = work.rechecks.len(),
        "applying, then verifying what the changes touched"
    );
    let apply_t = CountingTransport::new(t);
    // The script's budget is the apply's and the verify's together.
    let timeout = timeouts.apply.get().saturating_add(timeouts.verify.get());
    let parsed = apply(&work, refs, &apply_t, timeout).await;
    run.round_trips.apply = apply_t.count();
    let parsed = match parsed {
        Ok(p) => p,
        // The connection broke mid-apply: steps may or may not have run. The next run
        // observes first, so it converges from wherever the host is.
        Err(e) => {
            return run.stop(
                e.status(),
                format!("{e} (during apply and verify; the next run observes and converges)"),
            )
        }
    };
    let done = applied(refs, &work, &parsed);
    run.steps = done.steps;
    run.handlers = done.handlers;
    if parsed.completed.is_none() && !done.failed {
        return run.stop(
            HostStatus::Unreachable,
            "the apply script did not complete (connection lost?); the next run converges".into(),
        );
    }
    if done.failed {
        let error = match run.steps.iter().find(|s| s.status == StepStatus::Failed) {
            Some(s) => format!("step {} failed; later steps were skipped", s.step.address),
            None => "a handler failed".to_string(),
        };
        return run.stop(HostStatus::Failed, error);
    }

    // The verify ran in the same script, after every apply and handler succeeded.
    let after = rechecked(desired, refs, &work, &parsed);
    if verify::verdicts(&mut run.steps, &work.rechecks, after) {
        return run;
    }
    let first = run
        .steps
        .iter()
        .find(|s| s.status == StepStatus::Failed)
        .map_or_else(String::new, |s| {
            format!(" (first: step {})", s.step.address)
        });
    run.stop(
        HostStatus::Failed,
        format!("some steps are not in sync after the apply{first}"),
    )
}

/// Outcomes when some step could not be observed: those failed, the others skipped.
fn blind_outcomes(refs: &[StepRef], observed: &Observed) -> Vec<StepOutcome> {
    refs.iter()
        .zip(observed)
        .map(|(r, c)| match c {
            Err(e) => StepOutcome {
                error: Some(e.clone()),
                ..StepOutcome::new(r, StepStatus::Failed)
            },
            Ok(c) => StepOutcome {
                change: Some(r.redact(c)),
                ..StepOutcome::new(r, StepStatus::Skipped)
            },
        })
        .collect()
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
    // The futures are made up front (they do nothing until polled): a stream that held the
    // closure would not be provably `Send` for every lifetime, which a spawned task needs.
    let futures: Vec<_> = hosts
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            let fut = f(h);
            async move { (i, fut.await) }
        })
        .collect();
    let mut results: Vec<(usize, T)> = stream::iter(futures)
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, t)| t).collect()
}

/// A run stopped by a signal.
#[derive(Debug, Clone, thiserror::Error)]
#[error("interrupted by {0}: every host connection was closed; hosts may be partly changed, the next run observes and converges")]
pub struct Interrupted(pub &'static str);

/// Runs `fut` until it ends or SIGINT/SIGTERM arrives. On a signal `fut` is dropped, and
/// with it every transport it holds: ssh masters exit, local scripts are killed.
pub async fn until_signal<F: std::future::Future>(fut: F) -> Result<F::Output, Interrupted> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let terminated = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        out = fut => Ok(out),
        _ = tokio::signal::ctrl_c() => Err(Interrupted("SIGINT")),
        () = terminated => Err(Interrupted("SIGTERM")),
    }
}

/// Plans every host: what [`plan_host`] gives each, with steps whose resource hosts share
/// diffed once per probe result ([`diffs`]).
pub async fn plan_all(
    hosts: &[DesiredHost],
    connector: &dyn Connector,
    parallel: usize,
) -> Vec<HostPlan> {
    let diffs = Diffs::default();
    let diffs = &diffs;
    each_host(hosts, parallel, |h| async move {
        let t = connector.connect(&h.host);
        plan_host_in(h, t.as_ref(), Some(diffs)).await
    })
    .await
}

/// Observes every host for an apply (one round trip each), changing nothing.
pub async fn observe_all(
    hosts: &[DesiredHost],
    connector: &dyn Connector,
    parallel: usize,
) -> Vec<Observation> {
    let diffs = Diffs::default();
    let diffs = &diffs;
    each_host(hosts, parallel, |h| async move {
        let t = connector.connect(&h.host);
        observe_host_in(h, t.as_ref(), Some(diffs)).await
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
