//! Engine tests against a real `sh` through the local transport. The resource here is a
//! minimal module (a marker file) so the engine's own logic is tested apart from the modules.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::model::yaml::Pos;
use crate::modules::{ChangeKind, ProbeError, ProbeResult, Resource, Touch, Touches};
use crate::render::DesiredStep;
use crate::transport::{LocalTransport, PhaseTimeouts, RunFuture};

#[derive(Debug)]
struct Marker {
    path: PathBuf,
    log: PathBuf,
    fail_apply: bool,
    /// How many times it was diffed.
    diffs: AtomicU32,
}

/// A marker whose own creation makes a refresh unnecessary (like a service just started).
#[derive(Debug)]
struct SelfRefreshing(Marker);

impl Resource for SelfRefreshing {
    fn target(&self) -> String {
        self.0.target()
    }
    fn desired(&self) -> serde_json::Value {
        self.0.desired()
    }
    fn probe(&self) -> String {
        self.0.probe()
    }
    fn diff(&self, o: &ProbeResult) -> Result<Change, ProbeError> {
        self.0.diff(o)
    }
    fn apply(&self, c: &Change) -> String {
        self.0.apply(c)
    }
    fn refresh(&self) -> Option<String> {
        self.0.refresh()
    }
    fn refresh_after(&self, own: &Change) -> bool {
        own.kind != ChangeKind::Create
    }
}

impl Resource for Marker {
    fn target(&self) -> String {
        self.path.display().to_string()
    }
    fn desired(&self) -> serde_json::Value {
        serde_json::json!({"path": self.target()})
    }
    fn probe(&self) -> String {
        probe_exists(&self.path)
    }
    fn diff(&self, o: &ProbeResult) -> Result<Change, ProbeError> {
        self.diffs.fetch_add(1, Ordering::SeqCst);
        match o.stdout.as_slice() {
            b"present\n" => Ok(Change::in_sync()),
            b"absent\n" => Ok(Change::new(ChangeKind::Create)),
            other => Err(ProbeError::new(format!(
                "unexpected probe output {:?}",
                String::from_utf8_lossy(other)
            ))),
        }
    }
    fn apply(&self, _c: &Change) -> String {
        if self.fail_apply {
            "echo 'disk on fire' >&2; exit 7".to_string()
        } else {
            format!("touch '{}'", self.path.display())
        }
    }
    fn refresh(&self) -> Option<String> {
        Some(format!("echo refreshed >> '{}'", self.log.display()))
    }
    fn touches(&self) -> Touches {
        Touches::only([Touch::path(&self.target())])
    }
}

fn host() -> Host {
    Host {
        name: "local".into(),
        address: "127.0.0.1".into(),
        port: 22,
        user: None,
        become_: false,
        labels: Default::default(),
        vars: Default::default(),
        path: "environments/test/hosts.yaml".into(),
        pos: Pos::START,
    }
}

/// A host named `local` with `steps`.
fn on_local(steps: Vec<DesiredStep>) -> DesiredHost {
    named("local", steps)
}

fn trips(probe: u32, apply: u32) -> RoundTrips {
    RoundTrips {
        probe,
        apply,
        facts: 0,
    }
}

/// The marker file `m<i>` in `dir`, logging its refreshes to `log<i>`.
fn marker(dir: &Path, i: usize, fail_apply: bool) -> Marker {
    Marker {
        path: dir.join(format!("m{i}")),
        log: dir.join(format!("log{i}")),
        fail_apply,
        diffs: AtomicU32::new(0),
    }
}

/// What the refreshes of marker `i` in `dir` logged.
fn refresh_log(dir: &Path, i: usize) -> String {
    std::fs::read_to_string(dir.join(format!("log{i}"))).expect("refresh log")
}

fn step(dir: &Path, i: usize, notify: Vec<&str>) -> DesiredStep {
    DesiredStep {
        address: StepAddress::new("u", format!("s{i}")),
        module: "marker",
        resource: std::sync::Arc::new(marker(dir, i, false)),
        after: Vec::new(),
        notify: notify.into_iter().filter_map(StepAddress::parse).collect(),
        sensitive: false,
        secrets: Vec::new(),
        path: "units/u.yaml".into(),
        pos: Pos::START,
        prune: Default::default(),
    }
}

/// Counts round trips; runs scripts for real.
#[derive(Debug, Default)]
struct Counting {
    inner: LocalTransport,
    calls: AtomicU32,
}

impl Transport for Counting {
    fn run_within<'a>(&'a self, script: &'a [u8], timeout: Duration) -> RunFuture<'a> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.run_within(script, timeout)
    }
    fn timeouts(&self) -> crate::transport::PhaseTimeouts {
        self.inner.timeouts()
    }
}

#[tokio::test]
async fn observing_100_steps_is_one_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = on_local((0..100).map(|i| step(dir.path(), i, vec![])).collect());
    let t = Counting::default();
    let plan = plan_host(&desired, &t).await;
    assert_eq!(t.calls.load(Ordering::SeqCst), 1);
    assert_eq!(plan.round_trips.probe, 1);
    assert_eq!(plan.changes(), 100);
}

#[tokio::test]
async fn apply_converges_then_is_a_no_op() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = on_local((0..20).map(|i| step(dir.path(), i, vec![])).collect());
    let t = Counting::default();
    let run = apply_host(&desired, &t).await;
    assert_eq!(run.status, HostStatus::Converged, "{:?}", run.error);
    assert_eq!(run.changed(), 20);
    assert_eq!(run.round_trips, trips(1, 1));
    assert_eq!(
        t.calls.load(Ordering::SeqCst),
        2,
        "a change: observe, apply+verify"
    );

    let again = apply_host(&desired, &t).await;
    assert_eq!(again.changed(), 0);
    assert_eq!(again.round_trips, trips(1, 0));
    assert_eq!(t.calls.load(Ordering::SeqCst), 3, "a no-op: observe");
}

#[tokio::test]
async fn handlers_run_once_and_only_on_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    // s0 and s1 both notify s2; s2 is already in sync.
    std::fs::write(dir.path().join("m2"), b"").expect("write");
    let steps = vec![
        step(dir.path(), 0, vec!["u/s2"]),
        step(dir.path(), 1, vec!["u/s2"]),
        step(dir.path(), 2, vec![]),
    ];
    let desired = on_local(steps);
    let t = LocalTransport::new();
    let run = apply_host(&desired, &t).await;
    assert_eq!(run.status, HostStatus::Converged);
    assert_eq!(refresh_log(dir.path(), 2), "refreshed\n");
    assert_eq!(run.handlers.len(), 1);

    let again = apply_host(&desired, &t).await;
    assert!(again.handlers.is_empty());
    assert_eq!(refresh_log(dir.path(), 2), "refreshed\n");
}

#[tokio::test]
async fn no_refresh_when_the_target_says_its_own_change_covers_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut target = step(dir.path(), 1, vec![]);
    target.resource = std::sync::Arc::new(SelfRefreshing(marker(dir.path(), 1, false)));
    let desired = on_local(vec![step(dir.path(), 0, vec!["u/s1"]), target]);
    let run = apply_host(&desired, &LocalTransport::new()).await;
    assert_eq!(run.status, HostStatus::Converged);
    assert!(run.handlers.is_empty(), "{:?}", run.handlers);
    assert!(!dir.path().join("log1").exists());

    // Later, only the notifier changes: now the refresh runs.
    std::fs::remove_file(dir.path().join("m0")).expect("rm");
    let run = apply_host(&desired, &LocalTransport::new()).await;
    assert_eq!(run.handlers.len(), 1);
    assert_eq!(refresh_log(dir.path(), 1), "refreshed\n");
}

#[tokio::test]
async fn a_failed_step_stops_the_host_and_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut steps: Vec<DesiredStep> = (0..3).map(|i| step(dir.path(), i, vec![])).collect();
    steps[1].resource = std::sync::Arc::new(marker(dir.path(), 1, true));
    let desired = on_local(steps);
    let run = apply_host(&desired, &LocalTransport::new()).await;
    assert_eq!(run.status, HostStatus::Failed);
    let st: Vec<StepStatus> = run.steps.iter().map(|s| s.status).collect();
    assert_eq!(
        st,
        vec![StepStatus::Changed, StepStatus::Failed, StepStatus::Skipped]
    );
    assert!(run.steps[1]
        .error
        .as_deref()
        .unwrap_or_default()
        .contains("disk on fire"));
    assert!(!dir.path().join("m2").exists(), "later steps must not run");
}

#[tokio::test]
async fn sensitive_failures_hide_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = step(dir.path(), 0, vec![]);
    s.resource = std::sync::Arc::new(marker(dir.path(), 0, true));
    s.sensitive = true;
    let desired = on_local(vec![s]);
    let run = apply_host(&desired, &LocalTransport::new()).await;
    let err = run.steps[0].error.clone().unwrap_or_default();
    assert!(!err.contains("disk on fire"), "{err}");
}

#[tokio::test]
async fn a_probe_error_touches_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut steps = vec![step(dir.path(), 0, vec![])];
    steps.push(DesiredStep {
        resource: std::sync::Arc::new(Scripted {
            target: "garbled".into(),
            probe: "echo what".into(),
            diff: |_| Err(ProbeError::new("cannot parse")),
            apply: Box::new(|_| "exit 1".into()),
        }),
        ..step(dir.path(), 1, vec![])
    });
    let desired = on_local(steps);
    let plan = plan_host(&desired, &LocalTransport::new()).await;
    assert!(plan.steps[0].needs_change());
    assert!(plan.steps[1].change.is_err(), "error for that step only");
    let run = apply_host(&desired, &LocalTransport::new()).await;
    assert_eq!(run.status, HostStatus::Failed);
    assert!(!dir.path().join("m0").exists(), "nothing half-applied");
}

/// A resource made of the parts a test gives: its target, probe script, diff and apply.
struct Scripted {
    target: String,
    probe: String,
    diff: fn(&ProbeResult) -> Result<Change, ProbeError>,
    apply: Box<dyn Fn(&Change) -> String + Send + Sync>,
}

impl std::fmt::Debug for Scripted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scripted")
            .field("target", &self.target)
            .field("probe", &self.probe)
            .finish_non_exhaustive()
    }
}

impl Resource for Scripted {
    fn target(&self) -> String {
        self.target.clone()
    }
    fn desired(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    fn probe(&self) -> String {
        self.probe.clone()
    }
    fn diff(&self, o: &ProbeResult) -> Result<Change, ProbeError> {
        (self.diff)(o)
    }
    fn apply(&self, c: &Change) -> String {
        (self.apply)(c)
    }
}

/// Prints `present` or `absent` for `path`.
fn probe_exists(path: &Path) -> String {
    format!(
        "if [ -e '{}' ]; then echo present; else echo absent; fi",
        path.display()
    )
}

fn named(name: &str, steps: Vec<DesiredStep>) -> DesiredHost {
    DesiredHost {
        host: Host {
            name: name.into(),
            ..host()
        },
        steps,
        skipped: Vec::new(),
        facts: None,
        orphans: Vec::new(),
    }
}

/// A marker whose apply (and probe, when given) runs a given fragment (a flood, a hang).
fn scripted(dir: &Path, probe: Option<&str>, apply: &str) -> DesiredStep {
    let path = dir.join("scripted");
    let apply = apply.to_string();
    DesiredStep {
        resource: std::sync::Arc::new(Scripted {
            target: path.display().to_string(),
            probe: probe.map_or_else(|| probe_exists(&path), str::to_string),
            diff: |o| match o.stdout.as_slice() {
                b"present\n" => Ok(Change::in_sync()),
                _ => Ok(Change::new(ChangeKind::Create)),
            },
            apply: Box::new(move |_| apply.clone()),
        }),
        ..step(dir, 9, vec![])
    }
}

fn short(observe_ms: u64, apply_ms: u64) -> LocalConnector {
    use crate::model::HumanDuration;
    LocalConnector {
        timeouts: PhaseTimeouts {
            observe: HumanDuration::from_millis(observe_ms),
            apply: HumanDuration::from_millis(apply_ms),
            verify: HumanDuration::from_millis(observe_ms),
        },
    }
}

/// Three hosts, each with its own directory: `<what>-in-apply` whose step's apply runs
/// `apply`, `<what>-in-probe` whose step's probe runs `probe`, and `fine` with a marker step.
fn bad_apply_bad_probe_fine(
    what: &str,
    apply: &str,
    probe: &str,
) -> (Vec<DesiredHost>, [tempfile::TempDir; 3]) {
    let dirs = [(); 3].map(|()| tempfile::tempdir().expect("tmp"));
    let hosts = vec![
        named(
            &format!("{what}-in-apply"),
            vec![scripted(dirs[0].path(), None, apply)],
        ),
        named(
            &format!("{what}-in-probe"),
            vec![scripted(dirs[1].path(), Some(probe), "true")],
        ),
        named("fine", vec![step(dirs[2].path(), 0, vec![])]),
    ];
    (hosts, dirs)
}

/// The first two runs failed with an error that says `says`; the third converged.
fn assert_two_failed_one_converged(runs: &[HostRun], says: &str) {
    for r in &runs[..2] {
        assert_eq!(
            r.status,
            HostStatus::Failed,
            "{}: {:?}",
            r.host.name,
            r.error
        );
        let e = r.error.as_deref().unwrap_or_default();
        assert!(e.contains(says), "{}: {e}", r.host.name);
    }
    assert_eq!(runs[2].status, HostStatus::Converged, "{:?}", runs[2].error);
}

/// A step that floods its output fails its host with the limit named (cut on the host, so
/// memory stays bounded); another host converges.
#[tokio::test]
async fn a_flooding_step_fails_its_host_only() {
    let (hosts, dirs) = bad_apply_bad_probe_fine("flood", "yes plumb", "yes plumb >&2");
    let runs = apply_all(&hosts, &short(60_000, 60_000), 3).await;
    assert_two_failed_one_converged(&runs, "u/s9 printed more than 4194304 bytes");
    assert!(dirs[2].path().join("m0").exists());
    let plan = plan_host(&hosts[1], &LocalTransport::new()).await;
    assert_eq!(
        plan.error.as_ref().map(HostError::code),
        Some("output_limit")
    );
}

/// A step that hangs is bounded by its round trip's timeout and fails its host; the other
/// host converges meanwhile.
#[tokio::test]
async fn a_hung_step_is_bounded_by_the_apply_timeout() {
    let (hosts, _dirs) = bad_apply_bad_probe_fine("hangs", "sleep 30", "sleep 30");
    let start = Instant::now();
    let runs = apply_all(&hosts, &short(1_000, 1_000), 3).await;
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    // The probe's budget is 1s; the apply round trip's is the apply's and the verify's.
    assert_two_failed_one_converged(&runs, "did not answer within");
    assert!(
        runs[0]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("within 2s"),
        "{:?}",
        runs[0].error
    );
    assert_eq!(runs[0].round_trips.apply, 1);
    assert_eq!(runs[1].round_trips.apply, 0);
}

/// The counts come from the transport: an apply that cannot connect still counts the
/// round trip it attempted, and nothing is counted that was not attempted.
#[tokio::test]
async fn round_trips_are_the_runs_made() {
    #[derive(Debug)]
    struct FailAfter(AtomicU32, LocalTransport);
    impl Transport for FailAfter {
        fn run_within<'a>(&'a self, script: &'a [u8], timeout: Duration) -> RunFuture<'a> {
            if self.0.fetch_add(1, Ordering::SeqCst) >= 1 {
                return Box::pin(async {
                    Err(TransportError::Exec {
                        host: "local".into(),
                        message: "gone".into(),
                    })
                });
            }
            self.1.run_within(script, timeout)
        }
    }
    let dir = tempfile::tempdir().expect("tmp");
    let desired = named("h", vec![step(dir.path(), 0, vec![])]);
    let run = apply_host(
        &desired,
        &FailAfter(AtomicU32::new(0), LocalTransport::new()),
    )
    .await;
    assert_eq!(run.round_trips, trips(1, 1));
    assert_eq!(run.status, HostStatus::Unreachable, "{:?}", run.error);
}

/// Everything the engine returns about a sensitive step is redacted where it is built.
#[tokio::test]
async fn sensitive_results_carry_no_target_values_or_notes() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut s = step(dir.path(), 0, vec![]);
    s.resource = std::sync::Arc::new(Scripted {
        target: "token=hunter2".into(),
        probe: "echo hunter2-observed".into(),
        diff: |_| {
            Ok(Change::new(ChangeKind::Modify)
                .field(
                    crate::modules::Field::Line,
                    Some("hunter1".into()),
                    Some("hunter2".into()),
                )
                .note("was hunter1"))
        },
        apply: Box::new(|c| {
            // The engine hands apply the real change.
            assert_eq!(c.fields[0].to.as_deref(), Some("hunter2"));
            "echo hunter2 >&2; exit 1".into()
        }),
    });
    s.sensitive = true;
    let desired = named("h", vec![s]);
    let plan = plan_host(&desired, &LocalTransport::new()).await;
    let run = apply_host(&desired, &LocalTransport::new()).await;
    let shown = format!("{plan:?}{run:?}");
    assert!(!shown.contains("hunter"), "{shown}");
    assert_eq!(plan.steps[0].step.target, REDACTED);
    assert_eq!(
        plan.steps[0]
            .change
            .as_ref()
            .map(|c| c.fields[0].to.clone()),
        Ok(Some(REDACTED.to_string()))
    );
}

/// Facts ride along with the probe: a host rendered with facts is observed, facts
/// included, in one round trip; when they are what it was rendered with, an apply goes on.
#[tokio::test]
async fn facts_ride_along_with_the_probe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Counting::default();
    let (facts, trips_spent) = gather_facts(&host(), &t).await;
    let facts = facts.expect("this machine's facts");
    assert_eq!(trips_spent, 1, "gathering alone is one round trip");
    let mut desired = on_local((0..10).map(|i| step(dir.path(), i, vec![])).collect());
    desired.facts = Some(facts.clone());
    let before = t.calls.load(Ordering::SeqCst);
    let plan = plan_host(&desired, &t).await;
    assert_eq!(t.calls.load(Ordering::SeqCst) - before, 1);
    assert_eq!(plan.round_trips.probe, 1);
    assert_eq!(plan.facts.as_ref(), Some(&facts));
    assert!(!facts_changed(&desired, plan.facts.as_ref()));
    let run = apply_host(&desired, &t).await;
    assert_eq!(run.status, HostStatus::Converged, "{:?}", run.error);
    assert_eq!(run.changed(), 10);
    let again = apply_host(&desired, &t).await;
    assert_eq!(
        again.round_trips,
        trips(1, 0),
        "a no-op check is one round trip"
    );
}

/// Rendered with facts the host no longer has: the apply changes nothing and hands the
/// facts seen back, so the caller renders again.
#[tokio::test]
async fn an_apply_rendered_with_stale_facts_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut desired = on_local(vec![step(dir.path(), 0, vec![])]);
    let mut stale = crate::facts::tests::sample();
    stale.cpus = 4096;
    desired.facts = Some(stale);
    let t = Counting::default();
    let run = apply_host(&desired, &t).await;
    assert_eq!(run.status, HostStatus::Failed);
    assert!(
        run.error.as_deref().unwrap_or("").contains("facts changed"),
        "{:?}",
        run.error
    );
    assert_eq!(run.round_trips, trips(1, 0));
    assert!(facts_changed(&desired, run.facts.as_ref()));
    assert!(!dir.path().join("m0").exists(), "nothing was applied");
}

/// A host rendered without facts is probed without the facts script.
#[tokio::test]
async fn a_host_that_uses_no_facts_is_probed_without_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = on_local(vec![step(dir.path(), 0, vec![])]);
    let plan = plan_host(&desired, &Counting::default()).await;
    assert_eq!(plan.facts, None);
}

/// Observing for the guardrails and then applying from that observation costs the round
/// trips of one apply (1 / 1), and the plan handed out is the one applied.
#[tokio::test]
async fn apply_from_an_observation_costs_no_extra_round_trip() {
    let dir = tempfile::tempdir().expect("tmp");
    let desired = named(
        "h",
        vec![step(dir.path(), 0, vec![]), step(dir.path(), 1, vec![])],
    );
    let t = LocalTransport::new();
    let o = observe_host(&desired, &t).await;
    assert_eq!(o.plan.changes(), 2);
    assert_eq!(o.plan.round_trips, trips(1, 0));
    assert!(
        !dir.path().join("m0").exists(),
        "observing changed the host"
    );
    let run = apply_observed(&desired, &t, o).await;
    assert_eq!(run.status, HostStatus::Converged, "{:?}", run.error);
    assert_eq!(run.round_trips, trips(1, 1));
    assert_eq!(run.changed(), 2);
    assert!(dir.path().join("m0").exists() && dir.path().join("m1").exists());
    // In sync: one round trip, nothing else.
    let o = observe_host(&desired, &t).await;
    let run = apply_observed(&desired, &t, o).await;
    assert_eq!(run.round_trips, trips(1, 0));
}

/// A file with exact content (a minimal `file` module): in sync when it holds `content`.
#[derive(Debug)]
struct Content {
    path: PathBuf,
    content: &'static str,
}

impl Resource for Content {
    fn target(&self) -> String {
        self.path.display().to_string()
    }
    fn desired(&self) -> serde_json::Value {
        serde_json::json!({"path": self.target(), "content": self.content})
    }
    fn probe(&self) -> String {
        format!("cat '{}' 2>/dev/null; :", self.path.display())
    }
    fn diff(&self, o: &ProbeResult) -> Result<Change, ProbeError> {
        if o.stdout == self.content.as_bytes() {
            return Ok(Change::in_sync());
        }
        Ok(Change::new(ChangeKind::Modify).field(
            crate::modules::Field::Content,
            Some(String::from_utf8_lossy(&o.stdout).into_owned()),
            Some(self.content.to_string()),
        ))
    }
    fn apply(&self, _c: &Change) -> String {
        format!("printf '%s' '{}' > '{}'", self.content, self.path.display())
    }
    fn touches(&self) -> Touches {
        Touches::only([Touch::path(&self.target())])
    }
}

fn content_step(dir: &Path, i: usize, file: &str, content: &'static str) -> DesiredStep {
    DesiredStep {
        resource: std::sync::Arc::new(Content {
            path: dir.join(file),
            content,
        }),
        ..step(dir, i, vec![])
    }
}

/// Runs scripts for real and keeps each one's stdout; the run numbered `cut_run` (from 0)
/// loses its last `cut` bytes, as a connection lost before the end would.
#[derive(Debug, Default)]
struct Recording {
    inner: LocalTransport,
    outputs: std::sync::Mutex<Vec<Vec<u8>>>,
    cut_run: Option<usize>,
    cut: usize,
}

impl Recording {
    /// The steps the `run`-th script verified, in order.
    fn verified(&self, run: usize) -> Vec<usize> {
        let outputs = self.outputs.lock().expect("lock");
        script::parse(&outputs[run])
            .frames
            .iter()
            .filter_map(|f| match f.tag {
                Tag::Verify(i) => Some(i),
                _ => None,
            })
            .collect()
    }
    fn runs(&self) -> usize {
        self.outputs.lock().expect("lock").len()
    }
}

impl Transport for Recording {
    fn run_within<'a>(&'a self, script: &'a [u8], timeout: Duration) -> RunFuture<'a> {
        Box::pin(async move {
            let mut out = self.inner.run_within(script, timeout).await?;
            let mut outputs = self.outputs.lock().expect("lock");
            if self.cut_run == Some(outputs.len()) {
                out.stdout
                    .truncate(out.stdout.len().saturating_sub(self.cut));
            }
            outputs.push(out.stdout.clone());
            Ok(out)
        })
    }
}

/// The reason a full re-probe existed: a step that breaks another. Two steps on one path
/// that disagree: the one in sync before the run is verified again in the apply's own
/// script (they share the path) and reported not in sync, naming the step that changed it;
/// a step that shares nothing with the change is not probed again. Two round trips.
#[tokio::test]
async fn a_step_broken_through_a_shared_path_is_reverified_and_reported() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("app.conf"), "a").expect("write");
    std::fs::write(dir.path().join("m2"), "").expect("write");
    let desired = named(
        "h",
        vec![
            content_step(dir.path(), 0, "app.conf", "a"),
            content_step(dir.path(), 1, "app.conf", "b"),
            step(dir.path(), 2, vec![]),
        ],
    );
    let t = Recording::default();
    let run = apply_host(&desired, &t).await;
    assert_eq!(run.round_trips, trips(1, 1));
    assert_eq!(t.runs(), 2);
    assert_eq!(t.verified(1), [0, 1], "the change and what shares its path");
    assert_eq!(run.status, HostStatus::Failed);
    assert_eq!(run.steps[1].status, StepStatus::Changed);
    assert_eq!(run.steps[2].status, StepStatus::InSync);
    let broken = &run.steps[0];
    assert_eq!(broken.status, StepStatus::Failed);
    let e = broken.error.as_deref().unwrap_or_default();
    assert!(
        e.contains("in sync before this run") && e.contains("u/s1") && e.contains("share a path"),
        "{e}"
    );
    let change = broken.change.as_ref().expect("what differs now");
    assert_eq!(change.kind, ChangeKind::Modify);
    assert_eq!(change.fields[0].from.as_deref(), Some("b"));
    assert!(
        run.error.as_deref().unwrap_or_default().contains("u/s0"),
        "{:?}",
        run.error
    );
}

/// A file under a directory step shares its path: changing the file verifies the directory
/// too, and a step whose effects cannot be named (the default `Touches::Anything`) is
/// verified after any change; steps elsewhere are not probed again.
#[tokio::test]
async fn only_what_shares_with_a_change_is_verified() {
    let dir = tempfile::tempdir().expect("tmp");
    let sub = dir.path().join("m0");
    std::fs::create_dir(&sub).expect("mkdir");
    for i in 1..6 {
        std::fs::write(dir.path().join(format!("m{i}")), "").expect("write");
    }
    let mut steps: Vec<DesiredStep> = (0..6).map(|i| step(dir.path(), i, vec![])).collect();
    steps.push(content_step(dir.path(), 6, "m0/app.conf", "new"));
    let anything = Scripted {
        target: "a command".into(),
        probe: "echo present".into(),
        diff: |_| Ok(Change::in_sync()),
        apply: Box::new(|_| "true".into()),
    };
    steps.push(DesiredStep {
        resource: std::sync::Arc::new(anything),
        ..step(dir.path(), 7, vec![])
    });
    let desired = named("h", steps);
    let t = Recording::default();
    let run = apply_host(&desired, &t).await;
    assert_eq!(run.status, HostStatus::Converged, "{:?}", run.error);
    assert_eq!(run.changed(), 1);
    assert_eq!(t.verified(1), [0, 6, 7]);
    assert_eq!(run.round_trips, trips(1, 1));
    // In sync now: one round trip, nothing verified.
    let again = apply_host(&desired, &t).await;
    assert_eq!(again.round_trips, trips(1, 0));
    assert_eq!(t.runs(), 3);
}

/// The connection lost in the verify part of the apply's script (its end never arrives) is
/// detected: the host is unreachable, never converged, and the next run converges.
#[tokio::test]
async fn a_connection_lost_during_the_verify_is_detected() {
    let dir = tempfile::tempdir().expect("tmp");
    let desired = named("h", (0..3).map(|i| step(dir.path(), i, vec![])).collect());
    let t = Recording {
        cut_run: Some(1),
        cut: 4,
        ..Recording::default()
    };
    let run = apply_host(&desired, &t).await;
    assert_eq!(run.status, HostStatus::Unreachable, "{:?}", run.error);
    assert!(
        run.error
            .as_deref()
            .unwrap_or_default()
            .contains("did not complete"),
        "{:?}",
        run.error
    );
    assert_eq!(run.round_trips, trips(1, 1));
    let again = apply_host(&desired, &LocalTransport::new()).await;
    assert_eq!(again.status, HostStatus::Converged, "{:?}", again.error);
    assert_eq!(again.round_trips, trips(1, 0));
}

/// A failed step ends the apply's script before its verify part: nothing is probed again.
#[tokio::test]
async fn a_failed_apply_runs_no_verify() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut steps: Vec<DesiredStep> = (0..3).map(|i| step(dir.path(), i, vec![])).collect();
    steps[1].resource = std::sync::Arc::new(marker(dir.path(), 1, true));
    let t = Recording::default();
    let run = apply_host(&on_local(steps), &t).await;
    assert_eq!(run.status, HostStatus::Failed);
    assert_eq!(t.verified(1), Vec::<usize>::new());
    assert_eq!(run.round_trips, trips(1, 1));
}

/// Each host is this machine with `<dir>/shared` in its scripts read as `<dir>/<host>`: hosts
/// that share their steps' resources, each in a state of its own.
struct Rooted(PathBuf);

#[derive(Debug)]
struct RootedTransport {
    from: String,
    to: String,
    inner: LocalTransport,
}

impl Transport for RootedTransport {
    fn run_within<'a>(&'a self, script: &'a [u8], timeout: Duration) -> RunFuture<'a> {
        Box::pin(async move {
            let script = String::from_utf8_lossy(script).replace(&self.from, &self.to);
            self.inner.run_within(script.as_bytes(), timeout).await
        })
    }
}

impl Connector for Rooted {
    fn connect(&self, host: &Host) -> Arc<dyn Transport> {
        Arc::new(RootedTransport {
            from: self.0.join("shared").display().to_string(),
            to: self.0.join(&host.name).display().to_string(),
            inner: LocalTransport::new(),
        })
    }
}

/// Hosts whose steps share a resource are diffed once per probe result, and each still gets
/// its own change: `plan_all` gives every host what `plan_host` gives it alone, a host whose
/// marker is absent plans a create between hosts in sync, and the shared resource is diffed
/// once for each result seen, not once per host.
#[tokio::test]
async fn hosts_sharing_a_resource_each_get_the_diff_of_their_own_probe() {
    let dir = tempfile::tempdir().expect("tmp");
    let names = ["a", "b", "c", "d"];
    for n in names {
        std::fs::create_dir(dir.path().join(n)).expect("mkdir");
        if n != "b" {
            std::fs::write(dir.path().join(n).join("m0"), "").expect("write");
        }
        std::fs::write(dir.path().join(n).join("m1"), "").expect("write");
    }
    let shared = dir.path().join("shared");
    let resources = [0, 1].map(|i| Arc::new(marker(&shared, i, false)));
    let steps: Vec<DesiredStep> = resources
        .iter()
        .enumerate()
        .map(|(i, r)| DesiredStep {
            resource: r.clone(),
            ..step(&shared, i, vec![])
        })
        .collect();
    let hosts: Vec<DesiredHost> = names.iter().map(|n| named(n, steps.clone())).collect();
    let connector = Rooted(dir.path().to_path_buf());

    let together = plan_all(&hosts, &connector, 2).await;
    let diffed: Vec<u32> = resources
        .iter()
        .map(|r| r.diffs.load(Ordering::SeqCst))
        .collect();
    assert_eq!(
        diffed,
        [2, 1],
        "once per distinct probe result, not once per host"
    );

    for (h, plan) in hosts.iter().zip(&together) {
        let alone = plan_host(h, connector.connect(&h.host).as_ref()).await;
        assert_eq!(plan.error.is_none(), alone.error.is_none());
        assert_eq!(
            format!("{:?}", plan.steps),
            format!("{:?}", alone.steps),
            "host {}",
            h.host.name
        );
        let kind = plan.steps[0].change.as_ref().map(|c| c.kind).ok();
        let want = if h.host.name == "b" {
            ChangeKind::Create
        } else {
            ChangeKind::InSync
        };
        assert_eq!(kind, Some(want), "host {}", h.host.name);
    }
}
