//! The daemon's Prometheus metrics. The daemon updates them through the methods of
//! [`Metrics`]; `GET /metrics` encodes them (OpenMetrics text, as prometheus-client encodes).
//!
//! Every family is labelled by `env` (the environment) where one applies. Label values are bounded by
//! the config repo (environments, hosts) except `commit`, of which only the last applied one per
//! environment is kept.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use time::OffsetDateTime;

/// The content type of `GET /metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `env` label (the environment's name) that every per-environment family carries: the
/// one place that names it, flattened into the other label sets and built by [`env`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, EncodeLabelSet)]
struct EnvLabels {
    env: String,
}

/// The name of the environment label, for the families whose labels are built at run time.
const ENV_LABEL: &str = "env";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CommitLabels {
    #[prometheus(flatten)]
    env: EnvLabels,
    commit: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HostLabels {
    #[prometheus(flatten)]
    env: EnvLabels,
    host: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, EncodeLabelSet)]
struct BackupLabels {
    #[prometheus(flatten)]
    env: EnvLabels,
    host: String,
    backup: String,
}

/// One backup as the last drift check observed it, for the `plumb_backup_*` series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackupSample {
    /// Seconds since the latest snapshot; `None`: no snapshot (shown as +Inf).
    pub snapshot_age_seconds: Option<f64>,
    /// Unix time of the last successful restore test, if any.
    pub restore_test_last_success: Option<f64>,
    /// The measured duration of the last restore (seconds), if a test ran.
    pub restore_seconds: Option<f64>,
    /// Whether the last restore test failed.
    pub restore_test_failed: bool,
    pub interval_seconds: f64,
    pub restore_test_interval_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HashLabels {
    hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    #[prometheus(flatten)]
    env: EnvLabels,
    result: String,
    kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CheckLabels {
    #[prometheus(flatten)]
    env: EnvLabels,
    host: String,
    check: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EnvCheckLabels {
    #[prometheus(flatten)]
    env: EnvLabels,
    check: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// What kind of run, for `plumb_runs_total{kind}` (the state's run kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    Apply,
    DriftCheck,
    Correction,
    Rollback,
    Refused,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Apply => "apply",
            RunKind::DriftCheck => "drift_check",
            RunKind::Correction => "correction",
            RunKind::Rollback => "rollback",
            RunKind::Refused => "refused",
        }
    }
}

/// How a run ended, for `plumb_runs_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunResult {
    /// Every host converged (changed or already in sync).
    Succeeded,
    /// A host, a step or a health check failed.
    Failed,
    /// Refused before any host was contacted (signature, validation, rollback).
    Refused,
    /// A drift check found drift.
    DriftFound,
}

impl RunResult {
    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Succeeded => "succeeded",
            RunResult::Failed => "failed",
            RunResult::Refused => "refused",
            RunResult::DriftFound => "drift_found",
        }
    }
}

/// What a signature refusal was about, for `plumb_signature_refusals_total{source}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalSource {
    /// A commit without a good signature of an allowed signer.
    Commit,
    /// A webhook request with a bad or missing HMAC.
    Webhook,
}

impl RefusalSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalSource::Commit => "commit",
            RefusalSource::Webhook => "webhook",
        }
    }
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The metrics registry and every family in it.
pub struct Metrics {
    registry: Registry,
    last_applied_timestamp: Family<EnvLabels, FloatGauge>,
    last_applied_commit: Family<CommitLabels, Gauge>,
    run_duration: Family<EnvLabels, Histogram>,
    steps_changed: Family<EnvLabels, Counter>,
    steps_failed: Family<EnvLabels, Counter>,
    drifted_resources: Family<HostLabels, Gauge>,
    host_reachable: Family<HostLabels, Gauge>,
    /// Labels: `source`, and `env` when the refusal is about one.
    signature_refusals: Family<Vec<(String, String)>, Counter>,
    commit_to_applied: Family<EnvLabels, Histogram>,
    runs: Family<ResultLabels, Counter>,
    environment_pinned: Family<EnvLabels, Gauge>,
    commit_quarantined: Family<CommitLabels, Gauge>,
    /// The commit each environment's quarantine gauge shows, to drop it when it ends.
    quarantined: Mutex<HashMap<String, String>>,
    backup: BackupFamilies,
    oncall: OnCall,
    audit: AuditFamilies,
    /// The hash the audit head info gauge shows, to drop the previous one.
    audit_head_hash: Mutex<Option<String>>,
    /// The commit each environment's info gauge shows, to drop the previous one.
    applied_commits: Mutex<HashMap<String, String>>,
    /// The hosts each environment has per-host series for, to drop those that left.
    hosts: Mutex<HashMap<String, std::collections::BTreeSet<String>>>,
    /// (environment, host, check) of each `plumb_health_check_up` series.
    checks: Mutex<std::collections::BTreeSet<(String, String, String)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn run_duration_histogram() -> Histogram {
    // 0.1 s .. ~55 min
    Histogram::new(exponential_buckets(0.1, 2.0, 16))
}

fn commit_to_applied_histogram() -> Histogram {
    // 1 s .. ~9 h
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

fn unix_seconds(t: OffsetDateTime) -> f64 {
    // f64 holds Unix nanoseconds to well under a microsecond for centuries.
    t.unix_timestamp_nanos() as f64 / 1e9
}

fn env(environment: &str) -> EnvLabels {
    EnvLabels {
        env: environment.to_string(),
    }
}

fn host_labels(environment: &str, host: &str) -> HostLabels {
    HostLabels {
        env: env(environment),
        host: host.to_string(),
    }
}

/// The `plumb_backup_*` families.
struct BackupFamilies {
    snapshot_age: Family<BackupLabels, FloatGauge>,
    restore_success: Family<BackupLabels, FloatGauge>,
    restore_seconds: Family<BackupLabels, FloatGauge>,
    restore_failed: Family<BackupLabels, Gauge>,
    interval: Family<BackupLabels, FloatGauge>,
    restore_interval: Family<BackupLabels, FloatGauge>,
    /// The backups each environment has series for, to drop those that left.
    known: Mutex<HashMap<String, std::collections::BTreeSet<BackupLabels>>>,
}

impl BackupFamilies {
    fn register(registry: &mut Registry) -> BackupFamilies {
        let f = BackupFamilies {
            snapshot_age: Family::default(),
            restore_success: Family::default(),
            restore_seconds: Family::default(),
            restore_failed: Family::default(),
            interval: Family::default(),
            restore_interval: Family::default(),
            known: Mutex::default(),
        };
        registry.register(
            "plumb_backup_snapshot_age_seconds",
            "Age of the latest snapshot of a backup when last observed (+Inf: none)",
            f.snapshot_age.clone(),
        );
        registry.register(
            "plumb_backup_restore_test_last_success_timestamp_seconds",
            "Unix time of the last successful restore test of a backup",
            f.restore_success.clone(),
        );
        registry.register(
            "plumb_backup_restore_seconds",
            "Measured duration of the last restore test's restore",
            f.restore_seconds.clone(),
        );
        registry.register(
            "plumb_backup_restore_test_failed",
            "1 when the last restore test of a backup failed, else 0",
            f.restore_failed.clone(),
        );
        registry.register(
            "plumb_backup_interval_seconds",
            "How often a backup runs",
            f.interval.clone(),
        );
        registry.register(
            "plumb_backup_restore_test_interval_seconds",
            "How often a backup's restore test runs",
            f.restore_interval.clone(),
        );
        f
    }
}

/// The audit chain's families.
struct AuditFamilies {
    head_seq: Gauge,
    chain_ok: Gauge,
    head_info: Family<HashLabels, Gauge>,
}

impl AuditFamilies {
    fn register(registry: &mut Registry) -> AuditFamilies {
        let audit_head_seq = Gauge::default();
        registry.register(
            "plumb_audit_head_seq",
            "Sequence number of the newest record of the audit chain",
            audit_head_seq.clone(),
        );
        let audit_chain_ok = Gauge::default();
        registry.register(
            "plumb_audit_chain_ok",
            "1 when the audit chain verified at start-up, 0 when it is broken",
            audit_chain_ok.clone(),
        );
        let audit_head_info = Family::<HashLabels, Gauge>::default();
        registry.register(
            "plumb_audit_head_info",
            "Hash of the newest record of the audit chain (value 1)",
            audit_head_info.clone(),
        );
        AuditFamilies {
            head_seq: audit_head_seq,
            chain_ok: audit_chain_ok,
            head_info: audit_head_info,
        }
    }
}

/// The families on-call dashboards and alert rules need (issue 19): per-host timestamps,
/// health checks, a blocked rollout, alert delivery, the build.
struct OnCall {
    host_last_applied: Family<HostLabels, FloatGauge>,
    host_last_drift_check: Family<HostLabels, FloatGauge>,
    health_check_up: Family<CheckLabels, Gauge>,
    health_check_failures: Family<EnvCheckLabels, Counter>,
    rollout_blocked: Family<EnvLabels, Gauge>,
    alert_delivery_failures: Family<SinkLabels, Counter>,
}

impl OnCall {
    fn register(registry: &mut Registry) -> OnCall {
        let host_last_applied = Family::<HostLabels, FloatGauge>::default();
        registry.register(
            "plumb_host_last_applied_timestamp_seconds",
            "Unix time the host last converged in an apply, correction or rollback",
            host_last_applied.clone(),
        );
        let host_last_drift_check = Family::<HostLabels, FloatGauge>::default();
        registry.register(
            "plumb_host_last_drift_check_timestamp_seconds",
            "Unix time the host was last observed by a drift check",
            host_last_drift_check.clone(),
        );
        let health_check_up = Family::<CheckLabels, Gauge>::default();
        registry.register(
            "plumb_health_check_up",
            "1 when the health check last passed on the host, else 0",
            health_check_up.clone(),
        );
        let health_check_failures = Family::<EnvCheckLabels, Counter>::default();
        registry.register(
            "plumb_health_check_failures",
            "Health check runs that failed, by check",
            health_check_failures.clone(),
        );
        let rollout_blocked = Family::<EnvLabels, Gauge>::default();
        registry.register(
            "plumb_rollout_blocked",
            "1 while the newest commit failed or was refused (quarantined until a new commit), else 0",
            rollout_blocked.clone(),
        );
        let alert_delivery_failures = Family::<SinkLabels, Counter>::default();
        registry.register(
            "plumb_alert_delivery_failures",
            "Alerts a sink did not accept (error, timeout, non-2xx), by sink kind",
            alert_delivery_failures.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "plumb_build_info",
            "The running plumb's version (value 1)",
            build_info.clone(),
        );
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        OnCall {
            host_last_applied,
            host_last_drift_check,
            health_check_up,
            health_check_failures,
            rollout_blocked,
            alert_delivery_failures,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The safe-rollout gauges: pinned hosts per environment, the quarantined commit.
fn register_rollout(
    registry: &mut Registry,
) -> (Family<EnvLabels, Gauge>, Family<CommitLabels, Gauge>) {
    let environment_pinned = Family::<EnvLabels, Gauge>::default();
    registry.register(
        "plumb_environment_pinned",
        "Hosts of the environment pinned to an older commit by plumb rollback (0 when none)",
        environment_pinned.clone(),
    );
    let commit_quarantined = Family::<CommitLabels, Gauge>::default();
    registry.register(
        "plumb_commit_quarantined",
        "The environment's quarantined commit (value 1): it failed and is not applied again until a newer commit arrives",
        commit_quarantined.clone(),
    );
    (environment_pinned, commit_quarantined)
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let last_applied_timestamp = Family::<EnvLabels, FloatGauge>::default();
        registry.register(
            "plumb_last_applied_timestamp_seconds",
            "Unix time of the last successful apply",
            last_applied_timestamp.clone(),
        );
        let last_applied_commit = Family::<CommitLabels, Gauge>::default();
        registry.register(
            "plumb_last_applied_commit_info",
            "The last applied commit (value 1)",
            last_applied_commit.clone(),
        );
        let run_duration = Family::<EnvLabels, Histogram>::new_with_constructor(
            run_duration_histogram as fn() -> Histogram,
        );
        registry.register(
            "plumb_run_duration_seconds",
            "Duration of reconcile runs",
            run_duration.clone(),
        );
        let steps_changed = Family::<EnvLabels, Counter>::default();
        registry.register(
            "plumb_steps_changed",
            "Steps changed by applies",
            steps_changed.clone(),
        );
        let steps_failed = Family::<EnvLabels, Counter>::default();
        registry.register(
            "plumb_steps_failed",
            "Steps that failed in applies",
            steps_failed.clone(),
        );
        let drifted_resources = Family::<HostLabels, Gauge>::default();
        registry.register(
            "plumb_drifted_resources",
            "Resources found drifted by the last drift check",
            drifted_resources.clone(),
        );
        let host_reachable = Family::<HostLabels, Gauge>::default();
        registry.register(
            "plumb_host_reachable",
            "1 when the last contact with the host succeeded, else 0",
            host_reachable.clone(),
        );
        let signature_refusals = Family::<Vec<(String, String)>, Counter>::default();
        registry.register(
            "plumb_signature_refusals",
            "Commits or webhook requests refused for a bad or missing signature",
            signature_refusals.clone(),
        );
        let commit_to_applied = Family::<EnvLabels, Histogram>::new_with_constructor(
            commit_to_applied_histogram as fn() -> Histogram,
        );
        registry.register(
            "plumb_commit_to_applied_seconds",
            "Time from a commit's committer time to its successful apply",
            commit_to_applied.clone(),
        );
        let runs = Family::<ResultLabels, Counter>::default();
        registry.register(
            "plumb_runs",
            "Runs, by kind (apply, drift_check, correction, rollback, pin, unpin, refused) and result",
            runs.clone(),
        );
        let oncall = OnCall::register(&mut registry);
        let audit = AuditFamilies::register(&mut registry);
        let (environment_pinned, commit_quarantined) = register_rollout(&mut registry);
        Metrics {
            backup: BackupFamilies::register(&mut registry),
            registry,
            environment_pinned,
            commit_quarantined,
            quarantined: Mutex::new(HashMap::new()),
            last_applied_timestamp,
            last_applied_commit,
            run_duration,
            steps_changed,
            steps_failed,
            drifted_resources,
            host_reachable,
            signature_refusals,
            commit_to_applied,
            runs,
            oncall,
            audit,
            audit_head_hash: Mutex::new(None),
            applied_commits: Mutex::new(HashMap::new()),
            hosts: Mutex::new(HashMap::new()),
            checks: Mutex::new(std::collections::BTreeSet::new()),
        }
    }

    /// A run ended: counts it by result, observes its duration, adds its step counts.
    pub fn run_finished(
        &self,
        environment: &str,
        (kind, result): (RunKind, RunResult),
        duration: Duration,
        steps_changed: u64,
        steps_failed: u64,
    ) {
        self.runs
            .get_or_create(&ResultLabels {
                env: env(environment),
                result: result.as_str().to_string(),
                kind: kind.as_str().to_string(),
            })
            .inc();
        self.run_duration
            .get_or_create(&env(environment))
            .observe(duration.as_secs_f64());
        self.steps_changed
            .get_or_create(&env(environment))
            .inc_by(steps_changed);
        self.steps_failed
            .get_or_create(&env(environment))
            .inc_by(steps_failed);
    }

    /// A commit was applied successfully at `applied_at`. `commit_time` is the commit's
    /// committer time, for the commit-to-applied latency.
    pub fn applied(
        &self,
        environment: &str,
        commit: &str,
        applied_at: OffsetDateTime,
        commit_time: Option<OffsetDateTime>,
    ) {
        let applied_at = unix_seconds(applied_at);
        self.last_applied_timestamp
            .get_or_create(&env(environment))
            .set(applied_at);
        {
            let mut commits = self
                .applied_commits
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(old) = commits.insert(environment.to_string(), commit.to_string()) {
                if old != commit {
                    self.last_applied_commit.remove(&CommitLabels {
                        env: env(environment),
                        commit: old,
                    });
                }
            }
        }
        self.last_applied_commit
            .get_or_create(&CommitLabels {
                env: env(environment),
                commit: commit.to_string(),
            })
            .set(1);
        if let Some(t) = commit_time.map(unix_seconds) {
            // A clock skew can make this negative: clamp, do not drop.
            self.commit_to_applied
                .get_or_create(&env(environment))
                .observe((applied_at - t).max(0.0));
        }
    }

    /// How many hosts of the environment are pinned (`plumb rollback`).
    pub fn set_pinned(&self, environment: &str, hosts: u64) {
        self.environment_pinned
            .get_or_create(&env(environment))
            .set(i64::try_from(hosts).unwrap_or(i64::MAX));
    }

    /// The environment's quarantined commit, or none (a newer commit was applied).
    pub fn set_quarantined(&self, environment: &str, commit: Option<&str>) {
        let mut q = self.quarantined.lock().unwrap_or_else(|p| p.into_inner());
        let old = match commit {
            Some(c) => q.insert(environment.to_string(), c.to_string()),
            None => q.remove(environment),
        };
        if let Some(old) = old.filter(|o| Some(o.as_str()) != commit) {
            self.commit_quarantined.remove(&CommitLabels {
                env: env(environment),
                commit: old,
            });
        }
        if let Some(c) = commit {
            self.commit_quarantined
                .get_or_create(&CommitLabels {
                    env: env(environment),
                    commit: c.to_string(),
                })
                .set(1);
        }
    }

    /// Resources found drifted on a host by the last drift check (0 when in sync).
    pub fn set_drifted(&self, environment: &str, host: &str, resources: u64) {
        self.note_host(environment, host);
        self.drifted_resources
            .get_or_create(&host_labels(environment, host))
            .set(i64::try_from(resources).unwrap_or(i64::MAX));
    }

    /// Whether the last contact with a host succeeded.
    pub fn set_host_reachable(&self, environment: &str, host: &str, reachable: bool) {
        self.note_host(environment, host);
        self.host_reachable
            .get_or_create(&host_labels(environment, host))
            .set(i64::from(reachable));
    }

    /// A host converged in an apply, correction or rollback at `at`.
    pub fn host_applied(&self, environment: &str, host: &str, at: OffsetDateTime) {
        self.note_host(environment, host);
        self.oncall
            .host_last_applied
            .get_or_create(&host_labels(environment, host))
            .set(unix_seconds(at));
    }

    /// A drift check observed a host at `at`, finding `drifted` resources; `None`: the host
    /// could not be observed, so its drift is unknown (the series is dropped, never 0).
    pub fn host_drift_checked(
        &self,
        environment: &str,
        host: &str,
        at: OffsetDateTime,
        drifted: Option<u64>,
    ) {
        self.note_host(environment, host);
        let l = host_labels(environment, host);
        self.host_reachable
            .get_or_create(&l)
            .set(i64::from(drifted.is_some()));
        match drifted {
            Some(n) => {
                self.oncall
                    .host_last_drift_check
                    .get_or_create(&l)
                    .set(unix_seconds(at));
                self.drifted_resources
                    .get_or_create(&l)
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            None => {
                self.drifted_resources.remove(&l);
            }
        }
    }

    /// A health check ran on a host: `plumb_health_check_up`, and a failure counted.
    pub fn health_checked(&self, environment: &str, host: &str, check: &str, ok: bool) {
        self.note_host(environment, host);
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((environment.to_string(), host.to_string(), check.to_string()));
        self.oncall
            .health_check_up
            .get_or_create(&CheckLabels {
                env: env(environment),
                host: host.to_string(),
                check: check.to_string(),
            })
            .set(i64::from(ok));
        if !ok {
            self.oncall
                .health_check_failures
                .get_or_create(&EnvCheckLabels {
                    env: env(environment),
                    check: check.to_string(),
                })
                .inc();
        }
    }

    /// Whether `environment`'s newest commit is blocked (failed or refused, quarantined).
    pub fn set_rollout_blocked(&self, environment: &str, blocked: bool) {
        self.oncall
            .rollout_blocked
            .get_or_create(&env(environment))
            .set(i64::from(blocked));
    }

    /// A sink did not accept an alert.
    pub fn alert_delivery_failed(&self, sink: &str) {
        self.oncall
            .alert_delivery_failures
            .get_or_create(&SinkLabels {
                sink: sink.to_string(),
            })
            .inc();
    }

    fn note_host(&self, environment: &str, host: &str) {
        self.hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(environment.to_string())
            .or_default()
            .insert(host.to_string());
    }

    /// Drops a host's series (it left the inventory).
    pub fn forget_host(&self, environment: &str, host: &str) {
        let l = host_labels(environment, host);
        self.drifted_resources.remove(&l);
        self.host_reachable.remove(&l);
        self.oncall.host_last_applied.remove(&l);
        self.oncall.host_last_drift_check.remove(&l);
        // A host's health check series go with it.
        let checks: Vec<String> = {
            let mut known = self.checks.lock().unwrap_or_else(|p| p.into_inner());
            let mine: Vec<_> = known
                .iter()
                .filter(|(e, h, _)| e == environment && h == host)
                .cloned()
                .collect();
            for k in &mine {
                known.remove(k);
            }
            mine.into_iter().map(|(_, _, c)| c).collect()
        };
        for check in checks {
            self.oncall.health_check_up.remove(&CheckLabels {
                env: env(environment),
                host: host.to_string(),
                check,
            });
        }
        if let Some(known) = self
            .hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(environment)
        {
            known.remove(host);
        }
    }

    /// Keeps the per-host series of `environment` only for `inventory` (the hosts of the
    /// commit just rendered): a host that left the inventory stops being reported.
    pub fn retain_hosts<'a>(
        &self,
        environment: &str,
        inventory: impl IntoIterator<Item = &'a str>,
    ) {
        let keep: std::collections::BTreeSet<&str> = inventory.into_iter().collect();
        let gone: Vec<String> = self
            .hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(environment)
            .map(|known| {
                known
                    .iter()
                    .filter(|h| !keep.contains(h.as_str()))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for host in gone {
            self.forget_host(environment, &host);
        }
    }

    /// The audit chain's newest record: `plumb_audit_head_seq` and
    /// `plumb_audit_head_info{hash}` (only the current hash is kept).
    /// Whether the audit chain verified (`plumb_audit_chain_ok`).
    pub fn set_audit_chain_ok(&self, ok: bool) {
        self.audit.chain_ok.set(i64::from(ok));
    }

    pub fn set_audit_head(&self, seq: u64, hash: &str) {
        self.audit
            .head_seq
            .set(i64::try_from(seq).unwrap_or(i64::MAX));
        let mut current = self
            .audit_head_hash
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(old) = current.replace(hash.to_string()) {
            if old != hash {
                self.audit.head_info.remove(&HashLabels { hash: old });
            }
        }
        self.audit
            .head_info
            .get_or_create(&HashLabels {
                hash: hash.to_string(),
            })
            .set(1);
    }

    /// A commit or a webhook request was refused for its signature.
    pub fn signature_refused(&self, environment: Option<&str>, source: RefusalSource) {
        let mut labels = Vec::with_capacity(2);
        if let Some(e) = environment {
            labels.push((ENV_LABEL.to_string(), e.to_string()));
        }
        labels.push(("source".to_string(), source.as_str().to_string()));
        self.signature_refusals.get_or_create(&labels).inc();
    }

    /// The backups of `environment` as the last drift check observed them, by host and
    /// backup name: sets their `plumb_backup_*` series and drops those of backups that are
    /// no longer there.
    pub fn set_backups<'a>(
        &self,
        environment: &str,
        backups: impl IntoIterator<Item = (&'a str, &'a str, BackupSample)>,
    ) {
        let mut now = std::collections::BTreeSet::new();
        for (host, backup, b) in backups {
            let l = BackupLabels {
                env: env(environment),
                host: host.to_string(),
                backup: backup.to_string(),
            };
            self.backup
                .snapshot_age
                .get_or_create(&l)
                .set(b.snapshot_age_seconds.unwrap_or(f64::INFINITY));
            match b.restore_test_last_success {
                Some(t) => {
                    self.backup.restore_success.get_or_create(&l).set(t);
                }
                None => {
                    self.backup.restore_success.remove(&l);
                }
            }
            match b.restore_seconds {
                Some(t) => {
                    self.backup.restore_seconds.get_or_create(&l).set(t);
                }
                None => {
                    self.backup.restore_seconds.remove(&l);
                }
            }
            self.backup
                .restore_failed
                .get_or_create(&l)
                .set(i64::from(b.restore_test_failed));
            self.backup
                .interval
                .get_or_create(&l)
                .set(b.interval_seconds);
            self.backup
                .restore_interval
                .get_or_create(&l)
                .set(b.restore_test_interval_seconds);
            now.insert(l);
        }
        let mut known = self.backup.known.lock().unwrap_or_else(|p| p.into_inner());
        let before = known.insert(environment.to_string(), now.clone());
        for gone in before.unwrap_or_default().difference(&now) {
            self.backup.snapshot_age.remove(gone);
            self.backup.restore_success.remove(gone);
            self.backup.restore_seconds.remove(gone);
            self.backup.restore_failed.remove(gone);
            self.backup.interval.remove(gone);
            self.backup.restore_interval.remove(gone);
        }
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
