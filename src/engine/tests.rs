//! Engine tests against a real `sh` through the local transport. The resource here is a
//! minimal module (a marker file) so the engine's own logic is tested apart from the modules.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::model::yaml::Pos;
use crate::modules::{ChangeKind, ProbeError, ProbeResult, Resource};
use crate::render::DesiredStep;
use crate::transport::{LocalTransport, PhaseTimeouts, RunFuture};

#[derive(Debug)]
struct Marker {
    path: PathBuf,
    log: PathBuf,
    fail_apply: bool,
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
        format!(
            "if [ -e '{}' ]; then echo present; else echo absent; fi",
            self.path.display()
        )
    }
    fn diff(&self, o: &ProbeResult) -> Result<Change, ProbeError> {
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

fn step(dir: &Path, i: usize, notify: Vec<&str>) -> DesiredStep {
    DesiredStep {
        address: StepAddress::new("u", format!("s{i}")),
        module: "marker",
        resource: Box::new(Marker {
            path: dir.join(format!("m{i}")),
            log: dir.join(format!("log{i}")),
            fail_apply: false,
        }),
        after: Vec::new(),
        notify: notify.into_iter().filter_map(StepAddress::parse).collect(),
        sensitive: false,
        path: "units/u.yaml".into(),
        pos: Pos::START,
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
    let desired = DesiredHost {
        host: host(),
        steps: (0..100).map(|i| step(dir.path(), i, vec![])).collect(),
    };
    let t = Counting::default();
    let plan = plan_host(&desired, &t).await;
    assert_eq!(t.calls.load(Ordering::SeqCst), 1);
    assert_eq!(plan.round_trips.probe, 1);
    assert_eq!(plan.changes(), 100);
}

#[tokio::test]
async fn apply_converges_then_is_a_no_op() {
    let dir = tempfile::tempdir().expect("tempdir");
    let desired = DesiredHost {
        host: host(),
        steps: (0..20).map(|i| step(dir.path(), i, vec![])).collect(),
    };
    let t = Counting::default();
    let run = apply_host(&desired, &t).await;
    assert_eq!(run.status, HostStatus::Converged, "{:?}", run.error);
    assert_eq!(run.changed(), 20);
    assert_eq!(
        run.round_trips,
        RoundTrips {
            probe: 1,
            apply: 1,
            verify: 1
        }
    );
    assert_eq!(t.calls.load(Ordering::SeqCst), 3);

    let again = apply_host(&desired, &t).await;
    assert_eq!(again.changed(), 0);
    assert_eq!(
        again.round_trips,
        RoundTrips {
            probe: 1,
            apply: 0,
            verify: 0
        }
    );
    assert_eq!(t.calls.load(Ordering::SeqCst), 4);
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
    let desired = DesiredHost {
        host: host(),
        steps,
    };
    let t = LocalTransport::new();
    let run = apply_host(&desired, &t).await;
    assert_eq!(run.status, HostStatus::Converged);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("log2")).expect("refreshed"),
        "refreshed\n"
    );
    assert_eq!(run.handlers.len(), 1);

    let again = apply_host(&desired, &t).await;
    assert!(again.handlers.is_empty());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("log2")).expect("still once"),
        "refreshed\n"
    );
}

#[tokio::test]
async fn no_refresh_when_the_target_says_its_own_change_covers_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut target = step(dir.path(), 1, vec![]);
    target.resource = Box::new(SelfRefreshing(Marker {
        path: dir.path().join("m1"),
        log: dir.path().join("log1"),
        fail_apply: false,
    }));
    let desired = DesiredHost {
        host: host(),
        steps: vec![step(dir.path(), 0, vec!["u/s1"]), target],
    };
    let run = apply_host(&desired, &LocalTransport::new()).await;
    assert_eq!(run.status, HostStatus::Converged);
    assert!(run.handlers.is_empty(), "{:?}", run.handlers);
    assert!(!dir.path().join("log1").exists());

    // Later, only the notifier changes: now the refresh runs.
    std::fs::remove_file(dir.path().join("m0")).expect("rm");
    let run = apply_host(&desired, &LocalTransport::new()).await;
    assert_eq!(run.handlers.len(), 1);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("log1")).expect("refreshed"),
        "refreshed\n"
    );
}

#[tokio::test]
async fn a_failed_step_stops_the_host_and_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut steps: Vec<DesiredStep> = (0..3).map(|i| step(dir.path(), i, vec![])).collect();
    steps[1].resource = Box::new(Marker {
        path: dir.path().join("m1"),
        log: dir.path().join("l"),
        fail_apply: true,
    });
    let desired = DesiredHost {
        host: host(),
        steps,
    };
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
    s.resource = Box::new(Marker {
        path: dir.path().join("m0"),
        log: dir.path().join("l"),
        fail_apply: true,
    });
    s.sensitive = true;
    let desired = DesiredHost {
        host: host(),
        steps: vec![s],
    };
    let run = apply_host(&desired, &LocalTransport::new()).await;
    let err = run.steps[0].error.clone().unwrap_or_default();
    assert!(!err.contains("disk on fire"), "{err}");
}

#[tokio::test]
async fn a_probe_error_touches_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    #[derive(Debug)]
    struct Garbled;
    impl Resource for Garbled {
        fn target(&self) -> String {
            "garbled".into()
        }
        fn desired(&self) -> serde_json::Value {
            serde_json::Value::Null
        }
        fn probe(&self) -> String {
            "echo what".into()
        }
        fn diff(&self, _o: &ProbeResult) -> Result<Change, ProbeError> {
            Err(ProbeError::new("cannot parse"))
        }
        fn apply(&self, _c: &Change) -> String {
            "exit 1".into()
        }
    }
    let mut steps = vec![step(dir.path(), 0, vec![])];
    steps.push(DesiredStep {
        resource: Box::new(Garbled),
        ..step(dir.path(), 1, vec![])
    });
    let desired = DesiredHost {
        host: host(),
        steps,
    };
    let plan = plan_host(&desired, &LocalTransport::new()).await;
    assert!(plan.steps[0].needs_change());
    assert!(plan.steps[1].change.is_err(), "error for that step only");
    let run = apply_host(&desired, &LocalTransport::new()).await;
    assert_eq!(run.status, HostStatus::Failed);
    assert!(!dir.path().join("m0").exists(), "nothing half-applied");
}

/// A marker whose apply runs a given fragment (a flood, a hang).
#[derive(Debug)]
struct Scripted {
    path: PathBuf,
    probe: Option<String>,
    apply: String,
}

impl Resource for Scripted {
    fn target(&self) -> String {
        self.path.display().to_string()
    }
    fn desired(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    fn probe(&self) -> String {
        self.probe.clone().unwrap_or_else(|| {
            format!(
                "if [ -e '{}' ]; then echo present; else echo absent; fi",
                self.path.display()
            )
        })
    }
    fn diff(&self, o: &ProbeResult) -> Result<Change, ProbeError> {
        match o.stdout.as_slice() {
            b"present\n" => Ok(Change::in_sync()),
            _ => Ok(Change::new(ChangeKind::Create)),
        }
    }
    fn apply(&self, _c: &Change) -> String {
        self.apply.clone()
    }
}

fn named(name: &str, steps: Vec<DesiredStep>) -> DesiredHost {
    DesiredHost {
        host: Host {
            name: name.into(),
            ..host()
        },
        steps,
    }
}

fn scripted(dir: &Path, probe: Option<&str>, apply: &str) -> DesiredStep {
    DesiredStep {
        resource: Box::new(Scripted {
            path: dir.join("scripted"),
            probe: probe.map(str::to_string),
            apply: apply.to_string(),
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

/// A step that floods its output fails its host with the limit named (cut on the host, so
/// memory stays bounded); another host converges.
#[tokio::test]
async fn a_flooding_step_fails_its_host_only() {
    let (a, b, c) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let hosts = vec![
        named("flood-apply", vec![scripted(a.path(), None, "yes plumb")]),
        named(
            "flood-probe",
            vec![scripted(b.path(), Some("yes plumb >&2"), "true")],
        ),
        named("fine", vec![step(c.path(), 0, vec![])]),
    ];
    let runs = apply_all(&hosts, &short(60_000, 60_000), 3).await;
    for r in &runs[..2] {
        assert_eq!(
            r.status,
            HostStatus::Failed,
            "{}: {:?}",
            r.host.name,
            r.error
        );
        let e = r.error.as_deref().unwrap_or_default();
        assert!(
            e.contains("u/s9 printed more than 4194304 bytes"),
            "{}: {e}",
            r.host.name
        );
    }
    assert_eq!(runs[2].status, HostStatus::Converged, "{:?}", runs[2].error);
    assert!(c.path().join("m0").exists());
    let plan = plan_host(&hosts[1], &LocalTransport::new()).await;
    assert_eq!(
        plan.error.as_ref().map(HostError::code),
        Some("output_limit")
    );
}

/// A step that hangs is bounded by the phase timeout and fails its host; the other host
/// converges meanwhile.
#[tokio::test]
async fn a_hung_step_is_bounded_by_the_apply_timeout() {
    let (a, b, c) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    let hosts = vec![
        named("hangs-in-apply", vec![scripted(a.path(), None, "sleep 30")]),
        named(
            "hangs-in-probe",
            vec![scripted(b.path(), Some("sleep 30"), "true")],
        ),
        named("fine", vec![step(c.path(), 0, vec![])]),
    ];
    let start = Instant::now();
    let runs = apply_all(&hosts, &short(1_000, 1_000), 3).await;
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    for r in &runs[..2] {
        assert_eq!(
            r.status,
            HostStatus::Failed,
            "{}: {:?}",
            r.host.name,
            r.error
        );
        let e = r.error.as_deref().unwrap_or_default();
        assert!(
            e.contains("did not answer within 1s"),
            "{}: {e}",
            r.host.name
        );
    }
    assert_eq!(runs[0].round_trips.apply, 1);
    assert_eq!(runs[1].round_trips.apply, 0);
    assert_eq!(runs[2].status, HostStatus::Converged, "{:?}", runs[2].error);
}

/// The counts come from the transport: a verify that cannot connect still counts the
/// round trip it attempted, and nothing is counted that was not attempted.
#[tokio::test]
async fn round_trips_are_the_runs_made() {
    #[derive(Debug)]
    struct FailAfter(AtomicU32, LocalTransport);
    impl Transport for FailAfter {
        fn run_within<'a>(&'a self, script: &'a [u8], timeout: Duration) -> RunFuture<'a> {
            if self.0.fetch_add(1, Ordering::SeqCst) >= 2 {
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
    assert_eq!(
        run.round_trips,
        RoundTrips {
            probe: 1,
            apply: 1,
            verify: 1
        }
    );
    assert_eq!(run.status, HostStatus::Failed);
}

/// Everything the engine returns about a sensitive step is redacted where it is built.
#[tokio::test]
async fn sensitive_results_carry_no_target_values_or_notes() {
    let dir = tempfile::tempdir().expect("tmp");
    #[derive(Debug)]
    struct Secret;
    impl Resource for Secret {
        fn target(&self) -> String {
            "token=hunter2".into()
        }
        fn desired(&self) -> serde_json::Value {
            serde_json::Value::Null
        }
        fn probe(&self) -> String {
            "echo hunter2-observed".into()
        }
        fn diff(&self, _o: &ProbeResult) -> Result<Change, ProbeError> {
            Ok(Change::new(ChangeKind::Modify)
                .field(
                    crate::modules::Field::Line,
                    Some("hunter1".into()),
                    Some("hunter2".into()),
                )
                .note("was hunter1"))
        }
        fn apply(&self, c: &Change) -> String {
            // The engine hands apply the real change.
            assert_eq!(c.fields[0].to.as_deref(), Some("hunter2"));
            "echo hunter2 >&2; exit 1".into()
        }
    }
    let mut s = step(dir.path(), 0, vec![]);
    s.resource = Box::new(Secret);
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
