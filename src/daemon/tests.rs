//! The daemon without Docker: the policy (every outcome → its effects), config parsing, and
//! the reconcile against a real local repository of signed commits whose hosts are never
//! reached (refusals, fetch retries, the audit head, SIGHUP, a reset state).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use futures::future::join_all;
use serde_json::{json, Value};

use super::policy::*;
use super::*;
use crate::model::HumanDuration;
use crate::state::{RunFilter, RunKind, RunResult};

const HOUR: Duration = Duration::from_secs(3600);

pub(super) fn rollout(failed: &[&str]) -> Rollout {
    Rollout {
        run: state::RunId("01RUN".into()),
        commit: "0123456789abcdef0123".into(),
        changed: 3,
        failed_steps: usize::from(!failed.is_empty()),
        failed_hosts: failed.iter().map(|s| s.to_string()).collect(),
        waves: vec![WaveSummary {
            name: "canary".into(),
            hosts: vec!["web-1".into()],
            failed_hosts: failed.iter().map(|s| s.to_string()).collect(),
            health: None,
        }],
        stopped_at_wave: (!failed.is_empty()).then(|| "canary".to_string()),
        reason: (!failed.is_empty()).then(|| "wave `canary`: host(s) web-1 failed".to_string()),
        commits: vec![CommitSummary {
            commit: "0123456789abcdef0123".into(),
            signer: "alice@example.com".into(),
            fingerprint: String::new(),
            seal: None,
        }],
        duration: Duration::from_secs(2),
        drift_interval: Duration::from_secs(300),
        good_hosts: Vec::new(),
        orphans: Default::default(),
        paused: false,
        policy: None,
        rollback: Default::default(),
    }
}

fn refused(refusal: Refusal) -> Outcome {
    Outcome::Refused(Refused {
        commit: "0123456789abcdef0123".into(),
        refusal,
        message: "commit 0123456789ab refused: unsigned".into(),
        drift_override: None,
    })
}

#[test]
fn policy_up_to_date_and_held_change_nothing_but_the_schedule() {
    let e = policy(&Ok(Outcome::UpToDate {
        commit: "c".into(),
        drift_override: None,
    }));
    assert_eq!(e.record, None);
    assert_eq!(e.mark, CommitMark::Nothing);
    assert_eq!(e.metric, None);
    assert_eq!(e.alert, None);
    assert!(!e.forget_drift_alerts && !e.signature_refused);
    // A running schedule stays; after a start, drift is checked at once.
    assert_eq!(e.next_drift, NextDrift::KeepOr(Duration::ZERO));
    let e = policy(&Ok(Outcome::UpToDate {
        commit: "c".into(),
        drift_override: Some(HOUR),
    }));
    assert_eq!(e.next_drift, NextDrift::KeepOr(HOUR));

    let e = policy(&Ok(Outcome::Held { commit: "c".into() }));
    assert_eq!(e.record, None);
    assert_eq!(e.mark, CommitMark::Nothing);
    assert_eq!(e.alert, None);
    assert_eq!(e.next_drift, NextDrift::Keep);
}

#[test]
fn policy_an_error_decides_nothing() {
    let e = policy(&Err(DaemonError::FetchTimeout(Duration::from_secs(1))));
    assert_eq!(e.record, None);
    assert_eq!(e.mark, CommitMark::Nothing);
    assert_eq!(e.metric, None);
    assert_eq!(e.alert, None);
    assert_eq!(e.next_drift, NextDrift::Keep);
}

#[test]
fn policy_a_signature_refusal_is_recorded_marked_counted_and_alerted() {
    let e = policy(&Ok(refused(Refusal::Signature {
        code: "unsigned".into(),
        bad_commit: "bad0".into(),
    })));
    assert_eq!(e.record, Some(RunResult::Refused));
    assert_eq!(e.mark, CommitMark::Failed);
    assert_eq!(e.metric, Some(server::RunResult::Refused));
    assert!(e.signature_refused);
    let a = e.alert.expect("alert");
    assert_eq!(a.event, AlertEvent::SignatureRefused);
    assert_eq!(a.message, "commit 0123456789ab refused: unsigned");
    assert_eq!(
        a.details,
        json!({"reason": "unsigned", "bad_commit": "bad0"})
    );
    assert!(!e.forget_drift_alerts);
    assert_eq!(e.next_drift, NextDrift::KeepOr(Duration::ZERO));
}

fn policy_violation() -> crate::policy::Finding {
    crate::policy::Finding {
        rule: "ssh.deny_remove".into(),
        level: crate::policy::Level::Overridable,
        origin: crate::policy::Origin::Operator,
        rule_location: "/etc/plumb/policies/ssh.rego:11".into(),
        host: "web-1".into(),
        message: "base/ssh removes openssh-server".into(),
        step: Some("base/ssh".into()),
        step_location: Some("units/base.yaml:7:5".into()),
    }
}

#[test]
fn policy_a_guardrail_refusal_records_and_alerts_every_violation() {
    let refusal = Refusal::Policy {
        violations: vec![policy_violation(), policy_violation()],
        overrides: Vec::new(),
    };
    assert_eq!(refusal.code(), "policy");
    let Outcome::Refused(r) = refused(refusal) else {
        unreachable!("refused() makes a refusal")
    };
    let summary = r.summary();
    assert_eq!(summary.reason, "policy");
    assert_eq!(summary.violations.as_ref().map(Vec::len), Some(2));
    assert!(summary.errors.as_ref().is_some_and(|e| e[0].starts_with(
        "units/base.yaml:7:5: denied (overridable) by ssh.deny_remove (/etc/plumb/policies/ssh.rego:11)"
    )));
    let e = policy(&Ok(Outcome::Refused(r)));
    assert_eq!(e.record, Some(RunResult::Refused));
    let a = e.alert.expect("alert");
    assert_eq!(a.details["reason"], "policy");
    assert_eq!(a.details["violations"].as_array().map(Vec::len), Some(2));
}

#[test]
fn policy_every_other_refusal_is_recorded_marked_and_alerted_as_a_failed_run() {
    for refusal in [
        Refusal::Invalid {
            errors: vec!["units/a.yaml:1:1: bad".into()],
        },
        Refusal::Checkout {
            error: "disk full".into(),
        },
        Refusal::Internal {
            error: "panic: boom".into(),
        },
        Refusal::Policy {
            violations: vec![policy_violation()],
            overrides: Vec::new(),
        },
    ] {
        let e = policy(&Ok(refused(refusal.clone())));
        assert_eq!(e.record, Some(RunResult::Refused), "{refusal:?}");
        assert_eq!(e.mark, CommitMark::Failed, "{refusal:?}");
        assert_eq!(e.metric, Some(server::RunResult::Refused));
        assert!(!e.signature_refused, "{refusal:?}");
        let a = e.alert.expect("alert");
        assert_eq!(a.event, AlertEvent::RunFailed);
        assert!(a.message.contains("0123456789ab"), "{}", a.message);
        assert!(a.message.contains("nothing was applied"), "{}", a.message);
        assert_eq!(e.next_drift, NextDrift::KeepOr(Duration::ZERO));
    }
}

#[test]
fn policy_applied_marks_the_baseline_and_schedules_drift() {
    let e = policy(&Ok(Outcome::Applied(rollout(&[]))));
    assert_eq!(e.record, Some(RunResult::Converged));
    assert_eq!(e.mark, CommitMark::Applied);
    assert_eq!(e.metric, Some(server::RunResult::Succeeded));
    assert_eq!(e.alert, None);
    assert!(e.forget_drift_alerts);
    assert_eq!(e.next_drift, NextDrift::After(Duration::from_secs(300)));
}

#[test]
fn policy_failed_marks_failed_alerts_with_the_hosts_and_schedules_drift() {
    let e = policy(&Ok(Outcome::Failed(rollout(&["web-1"]))));
    assert_eq!(e.record, Some(RunResult::Failed));
    assert_eq!(e.mark, CommitMark::Failed);
    assert_eq!(e.metric, Some(server::RunResult::Failed));
    let a = e.alert.expect("alert");
    assert_eq!(a.event, AlertEvent::RunFailed);
    assert_eq!(a.hosts, vec!["web-1".to_string()]);
    assert_eq!(
        a.message,
        "rollout of 0123456789ab stopped: wave `canary`: host(s) web-1 failed; commit quarantined; \
         not rolled back: no host of the failed wave took the commit, or each was rolled back once already"
    );
    assert_eq!(e.rollback, None);
    assert_eq!(a.details["run"], "01RUN");
    assert!(!e.forget_drift_alerts);
    assert_eq!(e.next_drift, NextDrift::After(Duration::from_secs(300)));
}

#[test]
fn drift_scheduling_decisions() {
    assert_eq!(
        drift_schedule(&Ok(DriftCheck::NoBaseline), Some(HOUR)),
        NextDrift::Stop
    );
    assert_eq!(
        drift_schedule(&Ok(DriftCheck::Checked { interval: HOUR }), None),
        NextDrift::After(HOUR)
    );
    let failed = Err(DaemonError::FetchTimeout(Duration::from_secs(1)));
    assert_eq!(drift_schedule(&failed, Some(HOUR)), NextDrift::After(HOUR));
    assert_eq!(
        drift_schedule(&failed, None),
        NextDrift::After(DRIFT_RETRY_AFTER_ERROR)
    );
    assert_eq!(drift_interval(None, HOUR), HOUR);
    assert_eq!(
        drift_interval(Some(Duration::from_secs(2)), HOUR),
        Duration::from_secs(2)
    );
    assert_eq!(
        drift_interval(Some(Duration::from_millis(1)), HOUR),
        MIN_DRIFT_INTERVAL
    );
}

#[test]
fn fetch_retries_back_off_exponentially_and_are_bounded() {
    let mut delays = Vec::new();
    let mut d = None;
    for _ in 0..12 {
        let next = next_fetch_delay(d);
        delays.push(next.as_secs());
        d = Some(next);
    }
    assert_eq!(
        delays,
        vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    );
}

// ---- the config ----

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let signers = dir.join("allowed_signers");
    if !signers.exists() {
        std::fs::write(&signers, "").expect("write");
    }
    let path = dir.join("daemon.yaml");
    let text = format!(
        "repository: /nowhere.git\nallowed_signers: {}\nenvironments: [production]\n{body}",
        signers.display()
    );
    std::fs::write(&path, text).expect("write");
    path
}

fn config_errors(body: &str) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), body);
    match DaemonConfig::load(&path) {
        Ok(c) => panic!("accepted {body:?}: {c:?}"),
        Err((diags, _)) => diags
            .iter()
            .map(|d| format!("{}:{}: {}", d.line, d.col, d.message))
            .collect(),
    }
}

#[test]
fn config_values_are_parsed_at_load_and_refused_with_their_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        "listen: \"[::1]:9000\"\npoll_interval: 90s\ndrift_interval: 2m\nssh:\n  connect_timeout: 500ms\nalerts:\n  - kind: webhook\n    url: http://127.0.0.1:1/\n    timeout: 3s\naudit:\n  head_file: /var/lib/plumb-anchor/head\n",
    );
    let c = DaemonConfig::load(&path).expect("valid");
    assert_eq!(c.listen, "[::1]:9000".parse().expect("addr"));
    assert_eq!(c.poll(), Duration::from_secs(90));
    assert_eq!(
        c.drift_interval.map(HumanDuration::get),
        Some(Duration::from_secs(120))
    );
    assert_eq!(c.ssh_options().connect_timeout, Duration::from_millis(500));
    assert_eq!(
        c.alerts[0].timeout_duration().ok(),
        Some(Duration::from_secs(3))
    );
    assert_eq!(
        c.audit.and_then(|a| a.head_file),
        Some(PathBuf::from("/var/lib/plumb-anchor/head"))
    );

    // Line 4 is the first line after the three the helper writes.
    let e = config_errors("poll_interval: 99999999999999999999h\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("4:16: /poll_interval:"), "{e:?}");
    assert!(e[0].contains("too large"), "{e:?}");
    let e = config_errors("ssh:\n  connect_timeout: 0s\n");
    assert!(
        e[0].starts_with("5:20: /ssh/connect_timeout: `0s` must be longer than zero"),
        "{e:?}"
    );
    let e = config_errors("drift_interval: 0ms\n");
    assert!(e[0].starts_with("4:17: /drift_interval:"), "{e:?}");
    let e = config_errors("alerts:\n  - kind: webhook\n    url: http://a/\n    timeout: 0s\n");
    assert!(e[0].starts_with("7:14: /alerts/0/timeout:"), "{e:?}");
    let e = config_errors("listen: localhost-9940\n");
    assert!(
        e[0].starts_with("4:9: `localhost-9940` is not an address:port"),
        "{e:?}"
    );
    let e = config_errors("alert_resend_interval: 0s\n");
    assert!(e[0].starts_with("4:24: /alert_resend_interval:"), "{e:?}");
    let e = config_errors("external_url: ftp://plumb\n");
    assert!(
        e[0].starts_with("4:15: external_url `ftp://plumb` is not an http or https URL"),
        "{e:?}"
    );
    let e = config_errors("poll_interval: soon\n");
    assert!(
        e[0].starts_with("4:16:"),
        "the schema's pattern, located: {e:?}"
    );
}

// ---- the daemon against a real repository of signed commits ----

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository (the origin), a clone to commit from, a signing key and its
/// allowed-signers file, a state directory and an alert receiver.
struct Fx {
    dir: tempfile::TempDir,
    alerts: std_mpsc::Receiver<Value>,
    alert_port: u16,
}

/// Answers every POST with 200 and hands its JSON body over.
fn alert_receiver() -> (u16, std_mpsc::Receiver<Value>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len.min(1 << 20)];
            let _ = reader.read_exact(&mut body);
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if let Ok(v) = serde_json::from_slice(&body) {
                let _ = tx.send(v);
            }
        }
    });
    (port, rx)
}

const PLUMB_YAML: &str = "name: t\n";
const HOSTS_YAML: &str =
    "hosts:\n  - name: web-1\n    address: 127.0.0.1\n    port: 1\n    labels: {role: web}\n";

impl Fx {
    fn new() -> Fx {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "t@plumb", "-f"])
            .arg(d.join("key")));
        let public = std::fs::read_to_string(d.join("key.pub")).expect("pub");
        let key: Vec<&str> = public.split_whitespace().take(2).collect();
        std::fs::write(
            d.join("allowed_signers"),
            format!("t@plumb namespaces=\"git\" {}\n", key.join(" ")),
        )
        .expect("write");
        run(Command::new("git")
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(d.join("origin.git")));
        run(Command::new("git")
            .args(["init", "-q", "-b", "main"])
            .arg(d.join("clone")));
        let (alert_port, alerts) = alert_receiver();
        Fx {
            dir,
            alerts,
            alert_port,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn git(&self, args: &[&str]) -> String {
        let key = self.path("key");
        run(Command::new("git")
            .arg("-C")
            .arg(self.path("clone"))
            .args([
                "-c",
                "user.name=T",
                "-c",
                "user.email=t@plumb",
                "-c",
                "gpg.format=ssh",
            ])
            .arg("-c")
            .arg(format!("user.signingkey={}", key.display()))
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1"))
    }

    /// Writes the files, commits them signed and pushes to the origin; returns the commit.
    fn push(&self, files: &[(&str, &str)]) -> String {
        for (rel, text) in files {
            let p = self.path("clone").join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-S", "-m", "change"]);
        let origin = self.path("origin.git");
        self.git(&["push", "-q", origin.to_str().unwrap_or_default(), "main"]);
        self.git(&["rev-parse", "HEAD"])
    }

    fn config(&self) -> PathBuf {
        self.config_for("[production]")
    }

    /// The daemon config, managing `environments` (a YAML list).
    fn config_for(&self, environments: &str) -> PathBuf {
        let path = self.path("daemon.yaml");
        let text = format!(
            "repository: {origin}\nallowed_signers: {signers}\nenvironments: {environments}\nstate_dir: {state}\n\
             listen: 127.0.0.1:0\ndrift_interval: 1h\nalerts:\n  - kind: webhook\n    url: http://127.0.0.1:{port}/alerts\n\
             audit:\n  head_file: {head}\nssh:\n  connect_timeout: 2s\n",
            origin = self.path("origin.git").display(),
            signers = self.path("allowed_signers").display(),
            state = self.path("state").display(),
            port = self.alert_port,
            head = self.path("audit-head").display(),
        );
        std::fs::write(&path, text).expect("write");
        path
    }

    fn daemon(&self) -> Driven {
        self.daemon_for("[production]")
    }

    fn daemon_for(&self, environments: &str) -> Driven {
        Driven::new(self.bare_daemon_for(environments))
    }

    fn bare_daemon_for(&self, environments: &str) -> Daemon {
        let path = self.config_for(environments);
        let config = DaemonConfig::load(&path).expect("config");
        Daemon::new(&path, config, StartOptions::default()).expect("daemon starts")
    }

    /// Waits (letting the runtime send it) for the next alert.
    async fn next_alert(&self) -> Value {
        for _ in 0..200 {
            if let Ok(v) = self.alerts.try_recv() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no alert within 20 s")
    }
}

/// A daemon driven step by step, as its tasks would drive it: a fetch, then every
/// environment's reconcile at once, each with its own state.
struct Driven {
    d: Daemon,
    fetcher: supervisor::Fetcher,
    states: BTreeMap<String, env_task::EnvState>,
}

impl std::ops::Deref for Driven {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.d
    }
}

impl Driven {
    fn new(d: Daemon) -> Driven {
        let states = d
            .config
            .environments
            .iter()
            .map(|e| (e.clone(), env_task::EnvState::default()))
            .collect();
        Driven {
            d,
            fetcher: supervisor::Fetcher::default(),
            states,
        }
    }

    /// Fetch; on success, every environment reconciles the tip (at once, as the tasks do).
    async fn reconcile(&mut self, wake: Wake) {
        let Some(tip) = self.fetcher.fetch(&self.d, wake).await else {
            return;
        };
        let d = &self.d;
        join_all(
            self.states
                .iter_mut()
                .map(|(env, st)| d.reconcile_one(env, st, tip)),
        )
        .await;
    }

    fn next_drift(&self, env: &str) -> Option<Instant> {
        self.states.get(env).and_then(|s| s.next_drift)
    }
}

fn runs(d: &Daemon) -> Vec<state::RunRecord> {
    lock(&d.db)
        .runs(&RunFilter {
            environment: None,
            kind: None,
            limit: Some(100),
            ..RunFilter::default()
        })
        .expect("runs")
}

/// A repository whose unit templates a file from a template that is too expensive to
/// render (a resource limit: the template fuel).
fn fuel_bomb() -> Vec<(&'static str, &'static str)> {
    vec![
        ("plumb.yaml", PLUMB_YAML),
        ("environments/production/hosts.yaml", HOSTS_YAML),
        (
            "units/web.yaml",
            "steps:\n  - id: conf\n    file:\n      path: /etc/app.conf\n      template: app.j2\n",
        ),
        (
            "templates/app.j2",
            "{% for i in range(10000) %}{% for j in range(10000) %}x{% endfor %}{% endfor %}\n",
        ),
    ]
}

/// A commit that fails validation (or rendering, or checkout) is recorded as refused, with
/// its reason, before anything can retry it: the next trigger and a restart hold it.
#[tokio::test]
async fn a_commit_that_fails_validation_is_recorded_refused_before_any_retry() {
    let fx = Fx::new();
    let tip = fx.push(&fuel_bomb());
    let mut d = fx.daemon();
    d.reconcile(Wake::Startup).await;
    let all = runs(&d);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].kind, RunKind::Refused);
    assert_eq!(all[0].result, RunResult::Refused);
    assert_eq!(all[0].commit.as_deref(), Some(tip.as_str()));
    assert_eq!(all[0].summary["reason"], "invalid", "{:#}", all[0].summary);
    let errors = all[0].summary["errors"].to_string();
    assert!(errors.contains("templates/app.j2"), "{errors}");
    assert!(lock(&d.db).is_failed("production", &tip).expect("query"));
    let alert = fx.next_alert().await;
    assert_eq!(alert["event"], "run_failed");
    assert_eq!(alert["details"]["run"], all[0].id.0.as_str());

    // The next trigger does not retry it.
    let oid = git2::Oid::from_str(&tip).expect("oid");
    let again = d
        .reconcile_env("production", oid, Wake::Push)
        .await
        .expect("outcome");
    assert_eq!(
        again,
        Outcome::Held {
            commit: tip.clone()
        }
    );
    d.reconcile(Wake::Webhook).await;
    assert_eq!(runs(&d).len(), 1);
    // Nor does a restart.
    drop(d);
    let mut d = fx.daemon();
    d.reconcile(Wake::Startup).await;
    assert_eq!(runs(&d).len(), 1, "{:#?}", runs(&d));
}

#[tokio::test]
async fn a_commit_that_cannot_be_checked_out_is_recorded_refused() {
    let fx = Fx::new();
    let tip = fx.push(&fuel_bomb());
    let mut d = fx.daemon();
    // Any reason: here the checkouts directory cannot be created.
    std::fs::write(fx.path("state/checkouts"), "not a directory").expect("write");
    d.reconcile(Wake::Startup).await;
    let all = runs(&d);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].kind, RunKind::Refused);
    assert_eq!(all[0].summary["reason"], "checkout", "{:#}", all[0].summary);
    assert!(lock(&d.db).is_failed("production", &tip).expect("query"));
}

/// Every record moves the audit head; it goes to /metrics, to the head file and into every
/// alert.
#[tokio::test]
async fn the_audit_head_goes_to_metrics_the_head_file_and_alerts() {
    let fx = Fx::new();
    fx.push(&fuel_bomb());
    let mut d = fx.daemon();
    d.reconcile(Wake::Startup).await;
    let run = runs(&d).remove(0);
    let (seq, hash) = (run.chain_seq.expect("seq"), run.hash.expect("hash"));
    let metrics = d.metrics.encode().expect("metrics");
    assert!(
        metrics.contains(&format!("plumb_audit_head_seq {seq}\n")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("plumb_audit_head_info{{hash=\"{hash}\"}} 1")),
        "{metrics}"
    );
    let file = std::fs::read_to_string(fx.path("audit-head")).expect("head file");
    assert_eq!(file.lines().last(), Some(format!("{seq} {hash}").as_str()));
    let alert = fx.next_alert().await;
    assert_eq!(alert["audit_head"], json!({"seq": seq, "hash": hash}));

    // A second refused commit: the head moves everywhere.
    fx.push(&[("templates/app.j2", "{{ undefined_variable }}\n")]);
    d.reconcile(Wake::Push).await;
    let newest = runs(&d).remove(0);
    let seq2 = newest.chain_seq.expect("seq");
    assert_eq!(seq2, seq + 1);
    let file = std::fs::read_to_string(fx.path("audit-head")).expect("head file");
    assert_eq!(file.lines().count(), 2, "{file}");
    assert!(d
        .metrics
        .encode()
        .expect("metrics")
        .contains(&format!("plumb_audit_head_seq {seq2}\n")));
    let alert = fx.next_alert().await;
    assert_eq!(alert["audit_head"]["seq"], seq2);
}

/// The daemon verifies the audit chain at start: an intact chain is `plumb_audit_chain_ok 1`;
/// a record edited behind its back is `0` and keeps it unready whatever else is ready.
#[tokio::test]
async fn a_broken_audit_chain_at_start_is_a_metric_and_keeps_readyz_failing() {
    let fx = Fx::new();
    fx.push(&fuel_bomb());
    {
        let mut d = fx.daemon();
        d.reconcile(Wake::Startup).await;
        assert_eq!(runs(&d).len(), 1);
        assert!(d
            .metrics
            .encode()
            .expect("metrics")
            .contains("plumb_audit_chain_ok 1\n"));
    }
    let d = fx.bare_daemon_for("[production]");
    assert!(d
        .metrics
        .encode()
        .expect("metrics")
        .contains("plumb_audit_chain_ok 1\n"));
    drop(d);
    let db = rusqlite::Connection::open(fx.path("state").join(crate::state::DB_FILE)).expect("db");
    db.execute("UPDATE runs SET summary = '{\"reason\":\"edited\"}'", [])
        .expect("tamper");
    drop(db);
    let d = fx.bare_daemon_for("[production]");
    let metrics = d.metrics.encode().expect("metrics");
    assert!(metrics.contains("plumb_audit_chain_ok 0\n"), "{metrics}");
    d.ready.set_ready(true);
    assert!(
        !d.ready.is_ready(),
        "a broken chain keeps the daemon unready"
    );
}

/// Waits (up to 30 s) until `done` holds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    for _ in 0..300 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not within 30 s: {what}")
}

/// A fetch that fails (here: the local origin is gone) is retried with backoff and keeps
/// the trigger it served; once the origin is back, the retry hands the tip to the
/// environment's task, and the daemon is ready once every environment reconciled once.
#[tokio::test]
async fn a_failing_fetch_is_retried_with_backoff_and_its_trigger_is_kept() {
    let fx = Fx::new();
    let tip = fx.push(&fuel_bomb());
    let mut sup = supervisor::Supervisor::start(fx.bare_daemon_for("[production]"));
    let d = sup.daemon();
    std::fs::rename(fx.path("origin.git"), fx.path("away.git")).expect("hide the origin");
    sup.fetch_and_dispatch(Wake::Webhook).await;
    let retry = sup.fetcher.retry.expect("a retry is scheduled");
    assert_eq!(retry.wake, Wake::Webhook);
    assert_eq!(retry.delay, FETCH_RETRY_MIN);
    sup.fetch_and_dispatch(retry.wake).await;
    assert_eq!(
        sup.fetcher.retry.map(|r| r.delay),
        Some(FETCH_RETRY_MIN * 2)
    );
    assert!(runs(&d).is_empty());
    assert!(!d.ready.is_ready(), "not ready before the first fetch");

    std::fs::rename(fx.path("away.git"), fx.path("origin.git")).expect("restore");
    let retry = sup.fetcher.retry.expect("still scheduled");
    sup.fetch_and_dispatch(retry.wake).await;
    assert_eq!(sup.fetcher.retry, None);
    eventually("ready", || d.ready.is_ready()).await;
    let all = runs(&d);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].commit.as_deref(), Some(tip.as_str()));
    assert_eq!(all[0].trigger, state::Trigger::Webhook);
    sup.stop().await;
}

/// SIGHUP: the environments' tasks take a daemon that shares the state; an environment the
/// new config adds gets its own task, which reconciles the tip fetched before at once.
#[tokio::test]
async fn a_reload_shares_the_state_and_starts_added_environments() {
    let fx = Fx::new();
    let mut files = fuel_bomb();
    files.push(("environments/staging/hosts.yaml", HOSTS_YAML));
    fx.push(&files);
    let mut sup = supervisor::Supervisor::start(fx.bare_daemon_for("[production]"));
    let before = sup.daemon();
    sup.fetch_and_dispatch(Wake::Startup).await;
    eventually("production reconciled", || runs(&before).len() == 1).await;
    fx.config_for("[production, staging]");
    sup.reload();
    let after = sup.daemon();
    assert!(Arc::ptr_eq(&before.db, &after.db), "one state database");
    assert_eq!(after.config.environments, ["production", "staging"]);
    eventually("staging reconciled", || runs(&before).len() == 2).await;
    let envs: BTreeSet<String> = runs(&before).into_iter().map(|r| r.environment).collect();
    assert_eq!(
        envs,
        BTreeSet::from(["production".into(), "staging".into()])
    );
    sup.stop().await;
}

/// The daemon refuses to start on a state directory whose history was deleted (its key
/// shows it ran before), unless told `--accept-state-reset`; the accepted reset is recorded.
#[test]
fn a_state_directory_that_was_reset_is_refused_unless_accepted() {
    let fx = Fx::new();
    fx.push(&[("plumb.yaml", PLUMB_YAML)]);
    drop(fx.daemon()); // ran once: key, mirror and database exist
    let state = fx.path("state");
    std::fs::remove_file(state.join(crate::state::DB_FILE)).expect("delete the history");
    let path = fx.config();
    let config = || DaemonConfig::load(&path).expect("config");
    let e = Daemon::new(&path, config(), StartOptions::default())
        .err()
        .expect("a reset state is refused");
    assert_eq!(e.code(), "state", "{e}");
    assert!(e.to_string().contains("--accept-state-reset"), "{e}");
    assert!(e.to_string().contains(crate::audit::KEY_FILE), "{e}");
    let accepted = StartOptions {
        accept_state_reset: true,
        validator: None,
    };
    drop(Daemon::new(&path, config(), accepted).expect("accepted"));
    let db = StateDb::open_inspect(&state).expect("inspect");
    let runs = db.runs(&RunFilter::default()).expect("runs");
    assert!(
        runs.iter()
            .any(|r| r.kind == crate::state::RunKind::StateReset),
        "the accepted reset is recorded: {runs:?}"
    );
    // Once accepted and recorded, later starts are ordinary.
    drop(Daemon::new(&path, config(), StartOptions::default()).expect("starts again"));
}

/// Validates `value` against the checked-in schema `schemas/output/<name>.schema.json`.
fn assert_matches_schema(name: &str, value: &Value) {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("schemas/output/{name}.schema.json"));
    let text = std::fs::read_to_string(&path).expect("schema file");
    let schema: Value = serde_json::from_str(&text).expect("schema JSON");
    let validator = jsonschema::draft202012::new(&schema).expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{name}: {errors:#?}\n{value:#}");
}

/// The API's answers over a real state database match their checked-in schemas.
#[tokio::test]
async fn api_answers_match_their_schemas() {
    let fx = Fx::new();
    fx.push(&fuel_bomb());
    let mut d = fx.daemon();
    d.reconcile(Wake::Startup).await;
    let status = status::StateStatus {
        db: Arc::new(Mutex::new(lock(&d.db).handle().expect("handle"))),
        environments: vec!["production".into()],
        backups: Arc::default(),
    };
    use crate::server::StatusSource as _;
    let s = status.status().expect("status");
    assert_eq!(s["environments"][0]["last_run"]["kind"], "refused", "{s:#}");
    assert_matches_schema("api-status", &s);
    let runs = status
        .runs(&crate::server::RunsQuery {
            limit: Some(10),
            ..Default::default()
        })
        .expect("runs");
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(1), "{runs:#}");
    assert_matches_schema("api-runs", &runs);
    assert_matches_schema("run-summary", &runs["runs"][0]["summary"]);
    // Every kind of summary matches the schema, and a wrong shape does not.
    let drift = RunSummary::DriftCheck(DriftSummary {
        drifted: vec![DriftedResource {
            host: "web-1".into(),
            step: "web/conf".into(),
            target: "/etc/app.conf".into(),
            change: "modify".into(),
            fields: vec!["mode".into()],
        }],
        unknown_hosts: vec!["web-2".into()],
    });
    let correction = RunSummary::Correction(CorrectionSummary {
        corrected: 1,
        failed_hosts: vec![],
    });
    for s in [drift, correction] {
        assert_matches_schema("run-summary", &s.to_value());
    }
    let wrong = json!({"corrected": "one"});
    assert!(std::panic::catch_unwind(|| assert_matches_schema("run-summary", &wrong)).is_err());
    let id = runs["runs"][0]["id"].as_str().expect("id").to_string();
    let run = status.run(&id).expect("run").expect("found");
    assert_eq!(run["run"]["id"], id.as_str());
    assert_matches_schema("api-run", &run);
    assert_eq!(status.run("01NOSUCHRUN").expect("query"), None);
    let drift = status.drift(&Default::default()).expect("drift");
    assert_matches_schema("api-drift", &drift);
    // A schema that could not fail would prove nothing.
    let broken = json!({"environments": [{"environment": 1}]});
    let schema_rejects = std::panic::catch_unwind(|| assert_matches_schema("api-status", &broken));
    assert!(schema_rejects.is_err());
}

/// A valid commit whose only host cannot be reached: the rollout fails, the run is recorded
/// as failed with the host, the commit is marked failed, an alert names the host, and drift
/// is scheduled at the interval.
#[tokio::test]
async fn an_unreachable_host_fails_the_rollout_and_the_commit() {
    let fx = Fx::new();
    let tip = fx.push(&[
        ("plumb.yaml", PLUMB_YAML),
        ("environments/production/hosts.yaml", HOSTS_YAML),
        (
            "units/web.yaml",
            "steps:\n  - id: motd\n    file:\n      path: /etc/motd\n      content: \"hello\\n\"\n",
        ),
    ]);
    let mut d = fx.daemon();
    d.reconcile(Wake::Startup).await;
    let all = runs(&d);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].kind, RunKind::Apply);
    assert_eq!(all[0].result, RunResult::Failed);
    assert_eq!(
        all[0].summary["failed_hosts"],
        json!(["web-1"]),
        "{:#}",
        all[0].summary
    );
    assert_eq!(
        all[0].summary["stopped_at_wave"], "all",
        "{:#}",
        all[0].summary
    );
    assert_eq!(all[0].summary["commits"][0]["signer"], "t@plumb");
    assert_matches_schema("run-summary", &all[0].summary);
    assert!(lock(&d.db).is_failed("production", &tip).expect("query"));
    assert_eq!(lock(&d.db).last_applied("production").expect("query"), None);
    let alert = fx.next_alert().await;
    assert_eq!(alert["event"], "run_failed");
    assert_eq!(alert["hosts"], json!(["web-1"]));
    assert_eq!(alert["details"]["run"], all[0].id.0.as_str());
    let due = d.next_drift("production").expect("drift scheduled");
    assert!(
        due > Instant::now() + Duration::from_secs(3000),
        "the 1h override"
    );
    let metrics = d.metrics.encode().expect("metrics");
    assert!(
        metrics.contains("plumb_runs_total{env=\"production\",result=\"failed\",kind=\"apply\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("plumb_host_reachable{env=\"production\",host=\"web-1\"} 0"),
        "{metrics}"
    );
}

/// Each connection's (opened, closed) times, in the order they were opened.
type ConnLog = Arc<Mutex<Vec<(Instant, Option<Instant>)>>>;

/// A host that accepts SSH connections and never answers (a hung host); returns its port and
/// its connection log.
async fn hung_host() -> (u16, ConnLog) {
    use tokio::io::AsyncReadExt as _;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let conns = log.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = l.accept().await {
            let conns = conns.clone();
            let n = {
                let mut log = lock_log(&conns);
                log.push((Instant::now(), None));
                log.len() - 1
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                lock_log(&conns)[n].1 = Some(Instant::now());
            });
        }
    });
    (port, log)
}

fn lock_log(
    log: &Mutex<Vec<(Instant, Option<Instant>)>>,
) -> std::sync::MutexGuard<'_, Vec<(Instant, Option<Instant>)>> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

fn hosts_at(name: &str, port: u16) -> String {
    format!("hosts:\n  - name: {name}\n    address: 127.0.0.1\n    port: {port}\n")
}

const MOTD_UNIT: &str =
    "steps:\n  - id: motd\n    file:\n      path: /etc/motd\n      content: hi\n";

/// Regression (issue 11): environments used to be reconciled one after another, so a host
/// hanging in the first delayed the second's rollout until the connect timeout. Now `ok`
/// is applied and recorded while `hung` is still waiting for its host.
#[tokio::test]
async fn a_hung_environment_does_not_delay_another() {
    let fx = Fx::new();
    let (port, _) = hung_host().await;
    fx.push(&[
        ("plumb.yaml", PLUMB_YAML),
        ("environments/hung/hosts.yaml", &hosts_at("web-1", port)),
        ("environments/ok/hosts.yaml", HOSTS_YAML),
        ("units/web.yaml", MOTD_UNIT),
    ]);
    let mut d = fx.daemon_for("[hung, ok]");
    let db = d.db.clone();
    let finished = move |env: &str| {
        lock(&db)
            .runs(&RunFilter {
                environment: Some(env.to_string()),
                kind: None,
                limit: Some(10),
                ..RunFilter::default()
            })
            .expect("runs")
            .iter()
            .any(|r| r.finished_at.is_some())
    };
    let start = Instant::now();
    let mut ok_done = None;
    {
        let job = d.reconcile(Wake::Startup);
        tokio::pin!(job);
        loop {
            tokio::select! {
                _ = &mut job => break,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {
                    if ok_done.is_none() && finished("ok") {
                        ok_done = Some(start.elapsed());
                    }
                }
            }
        }
    }
    let all_done = start.elapsed();
    let ok_done = ok_done.expect("`ok` was recorded while `hung` was still running");
    // The hung host held its environment for at least the connect timeout (2 s).
    assert!(all_done >= Duration::from_millis(1900), "{all_done:?}");
    assert!(
        ok_done < Duration::from_millis(1500),
        "{ok_done:?} of {all_done:?}"
    );
    let all = runs(&d);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(
        all.iter().all(|r| r.result == RunResult::Failed),
        "{all:#?}"
    );
}

/// Regression (issue 11): one loop used to take one trigger at a time, so while `hung`'s
/// host hung, a new commit waited for it in every environment. Each environment has its own
/// task now: `ok` takes the next commit and records it while `hung` still waits for its
/// host (for up to its 20 s connect timeout).
#[tokio::test]
async fn a_hung_environment_does_not_delay_anothers_next_commit() {
    let fx = Fx::new();
    let (port, _) = hung_host().await;
    fx.push(&[
        ("plumb.yaml", PLUMB_YAML),
        ("environments/hung/hosts.yaml", &hosts_at("web-1", port)),
        ("environments/ok/hosts.yaml", HOSTS_YAML),
        ("units/web.yaml", MOTD_UNIT),
    ]);
    let path = fx.config_for("[hung, ok]");
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        text.replace("connect_timeout: 2s", "connect_timeout: 20s"),
    )
    .expect("write");
    let config = DaemonConfig::load(&path).expect("config");
    let daemon = Daemon::new(&path, config, StartOptions::default()).expect("daemon starts");
    let mut sup = supervisor::Supervisor::start(daemon);
    let d = sup.daemon();
    let finished = |env: &str| {
        runs(&d)
            .iter()
            .filter(|r| r.environment == env && r.finished_at.is_some())
            .count()
    };
    sup.fetch_and_dispatch(Wake::Startup).await;
    eventually("ok's first run", || finished("ok") == 1).await;
    fx.push(&[(
        "units/web.yaml",
        "steps:\n  - id: motd\n    file:\n      path: /etc/motd\n      content: again\n",
    )]);
    sup.fetch_and_dispatch(Wake::Push).await;
    eventually("ok's second run", || finished("ok") == 2).await;
    assert_eq!(finished("hung"), 0, "hung still waits for its host");
    sup.stop().await;
}

/// Two environments whose inventories share a host (same address and port, under another
/// name in each) reconcile at once, but never apply that host at the same time: its
/// connections never overlap.
#[tokio::test]
async fn a_host_two_environments_share_is_applied_by_one_at_a_time() {
    let fx = Fx::new();
    let (port, conns) = hung_host().await;
    fx.push(&[
        ("plumb.yaml", PLUMB_YAML),
        ("environments/blue/hosts.yaml", &hosts_at("blue-web", port)),
        (
            "environments/green/hosts.yaml",
            &hosts_at("green-web", port),
        ),
        ("units/web.yaml", MOTD_UNIT),
    ]);
    let mut d = fx.daemon_for("[blue, green]");
    d.reconcile(Wake::Startup).await;
    assert_eq!(runs(&d).len(), 2, "{:#?}", runs(&d));
    // Let the listener note the last close.
    for _ in 0..100 {
        if lock_log(&conns).iter().all(|c| c.1.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = lock_log(&conns).clone();
    assert!(
        seen.len() >= 2,
        "both environments reached the host: {seen:?} {:#?}",
        runs(&d)
            .iter()
            .map(|r| r.summary.to_string())
            .collect::<Vec<_>>()
    );
    for pair in seen.windows(2) {
        let closed = pair[0].1.expect("every connection closed");
        assert!(
            pair[1].0 >= closed,
            "two applies of one host overlapped: {seen:?}"
        );
    }
}

/// A rollback target is verified again against today's trust root: a commit whose signer was
/// removed since is refused, recorded as a failed `rollback` run (saying why), alerted, and no
/// host is contacted.
#[tokio::test]
async fn a_rollback_target_signed_by_a_removed_key_is_refused() {
    let fx = Fx::new();
    let good = fx.push(&[
        ("plumb.yaml", PLUMB_YAML),
        ("environments/production/hosts.yaml", HOSTS_YAML),
        (
            "units/web.yaml",
            "steps:\n  - id: motd\n    file:\n      path: /etc/motd\n      content: \"hello\\n\"\n",
        ),
    ]);
    // Today's trust root no longer has the key that signed it.
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "other", "-f"])
        .arg(fx.path("other")));
    let other = std::fs::read_to_string(fx.path("other.pub")).expect("pub");
    let key: Vec<&str> = other.split_whitespace().take(2).collect();
    std::fs::write(
        fx.path("allowed_signers"),
        format!("other@plumb namespaces=\"git\" {}\n", key.join(" ")),
    )
    .expect("write");
    let mut d = fx.daemon();
    d.reconcile(Wake::Startup).await; // fetches; the tip itself is refused
    let order = RollbackOrder {
        bad_commit: "0123456789abcdef0123456789abcdef01234567".into(),
        failed_run: Some(state::RunId("01FAILED".into())),
        failed_wave: Some("all".into()),
        reason: "wave `all`: health checks failed".into(),
        failed_checks: Vec::new(),
        targets: vec![("web-1".into(), good.clone())],
    };
    d.roll_back("production", Wake::Push, &order).await;
    let all = runs(&d);
    let rb = all
        .iter()
        .find(|r| r.kind == RunKind::Rollback)
        .expect("a rollback run");
    assert_eq!(rb.result, RunResult::Failed);
    assert_eq!(rb.commit.as_deref(), Some(good.as_str()));
    assert!(
        rb.summary["refused"]
            .as_str()
            .is_some_and(|r| r.contains("no longer verifies against today's trust root")),
        "{:#}",
        rb.summary
    );
    assert_matches_schema("run-summary", &rb.summary);
    assert_eq!(rb.summary["by"], "daemon");
    assert_eq!(rb.summary["failed_run"], "01FAILED");
    assert_eq!(rb.summary["failed_wave"], "all");
    let detail = lock(&d.db).run(&rb.id).expect("query").expect("run");
    assert!(detail.hosts.is_empty(), "no host contacted");
    assert!(lock(&d.db)
        .rolled_back("production", &order.bad_commit, "web-1")
        .expect("query"));
    loop {
        let alert = fx.next_alert().await;
        if alert["details"]["rollback_of"] == order.bad_commit.as_str() {
            assert_eq!(alert["event"], "run_failed");
            break;
        }
    }
}

/// A non-loopback `listen` needs HTTPS (served, or a TLS proxy stated) and access; a token
/// file others can read and a password hash that is not one are refused, each located.
#[test]
fn exposure_needs_tls_and_access_each_refusal_located() {
    let e = config_errors("listen: 0.0.0.0:9940\n");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with(
            "4:9: `0.0.0.0:9940` is not a loopback address, and the daemon would serve plain HTTP"
        ),
        "{e:?}"
    );
    assert!(e[1].contains("no access is configured"), "{e:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken\n").expect("write");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let body = format!(
        "listen: 0.0.0.0:9940\nbehind_tls_proxy: true\naccess:\n  token_file: {}\n  users:\n    - name: alice\n      password_hash: hunter2\n",
        token.display()
    );
    let path = write_config(dir.path(), &body);
    let Err((diags, _)) = DaemonConfig::load(&path) else {
        panic!("accepted a readable token and a plain password")
    };
    let e: Vec<String> = diags
        .iter()
        .map(|d| format!("{}:{}: {}", d.line, d.col, d.message))
        .collect();
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e.iter()
            .any(|m| m.starts_with("10:22: the password hash of user `alice` is not a PHC string")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("7:15: ") && m.contains("chmod 600")),
        "{e:?}"
    );

    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let body = format!(
        "listen: 0.0.0.0:9940\nbehind_tls_proxy: true\naccess:\n  token_file: {}\n",
        token.display()
    );
    let c = DaemonConfig::load(&write_config(dir.path(), &body)).expect("valid");
    match http_config::access_rule(&c).expect("rule") {
        crate::server::AccessRule::Protected(a) => {
            assert!(a.secure_cookies, "behind a TLS proxy: Secure cookies");
        }
        crate::server::AccessRule::Open => panic!("open"),
    }
}

/// The console renders its pages from a real state database (a refused commit and its run),
/// and escapes every value: a hostile error text appears only escaped.
#[tokio::test]
async fn console_pages_render_from_state_and_escape_values() {
    let fx = Fx::new();
    let tip = fx.push(&[
        ("plumb.yaml", PLUMB_YAML),
        ("environments/production/hosts.yaml", HOSTS_YAML),
        (
            "units/web.yaml",
            "steps:\n  - id: conf\n    file:\n      path: /etc/app.conf\n      template: app.j2\n",
        ),
        ("templates/app.j2", "{{ nope_<script>alert(1)</script> }}\n"),
    ]);
    let mut d = fx.daemon();
    d.reconcile(Wake::Startup).await;
    let run = runs(&d).remove(0);
    let console = console::ConsoleState {
        db: Arc::new(Mutex::new(lock(&d.db).handle().expect("handle"))),
        environments: vec!["production".into()],
        inventory: Arc::default(),
    };
    use crate::server::{ConsoleSource as _, Page, Principal};
    use crate::state::console::PageAt;
    let who = Principal::User("<b>eve</b>".into());
    let page = |p: Page| console.page(&p, &who).expect("renders");
    let fleet = page(Page::Fleet { label: None }).expect("fleet");
    assert!(
        fleet.contains("production") && fleet.contains("&lt;b&gt;eve&lt;/b&gt;"),
        "{fleet}"
    );
    let run_page = page(Page::Run {
        id: run.id.0.clone(),
    })
    .expect("run page");
    assert!(run_page.contains(&tip[..12]), "{run_page}");
    assert!(
        run_page.contains("&lt;script&gt;") || run_page.contains("invalid"),
        "{run_page}"
    );
    for html in [&fleet, &run_page] {
        assert!(!html.contains("<script>alert"), "unescaped: {html}");
        assert!(!html.contains("<b>eve"), "unescaped: {html}");
    }
    let commit = page(Page::Commit {
        id: tip[..8].to_string(),
    })
    .expect("commit page");
    assert!(commit.contains(&run.id.0), "{commit}");
    assert!(page(Page::Run {
        id: "01NOSUCHRUN".into()
    })
    .is_none());
    assert!(page(Page::Commit { id: "zz".into() }).is_none());
    let env = page(Page::Environment {
        name: "production".into(),
        at: PageAt::Newest,
    })
    .expect("env page");
    assert!(env.contains(&run.id.0), "{env}");
    assert!(page(Page::Environment {
        name: "nope".into(),
        at: PageAt::Newest,
    })
    .is_none());
    let older = page(Page::Environment {
        name: "production".into(),
        at: PageAt::Before(run.id.clone()),
    })
    .expect("an empty older page");
    assert!(!older.contains(&format!("/runs/{}", run.id.0)), "{older}");
    assert!(older.contains("Newest"), "a way back: {older}");
    let audit = page(Page::Audit).expect("audit page");
    assert!(
        audit.contains("records verified") && audit.contains("status ok"),
        "{audit}"
    );
    page(Page::Drift { env: None }).expect("drift page");

    // The newest record removed behind the daemon's back: the page (which verifies only
    // what changed since the check at start-up) and the daemon's readiness say so.
    lock(&d.db)
        .conn()
        .execute("DELETE FROM runs WHERE id = ?1", [&run.id.0])
        .expect("delete");
    let audit = page(Page::Audit).expect("audit page");
    assert!(
        audit.contains("status bad") && audit.contains("truncated"),
        "{audit}"
    );
    d.anchor_audit_head();
    assert!(d.ready.chain_broken(), "readiness follows the kept status");
}

/// Marks `commit` applied in `production` without reaching any host (a signed apply run),
/// so a drift check has a baseline; the mirror is fetched first.
async fn applied_baseline(d: &Driven, commit: &str) {
    d.fetch().await.expect("fetch");
    let db = lock(&d.db);
    let run = db
        .begin_run(&state::NewRun {
            environment: "production".into(),
            commit: Some(commit.to_string()),
            signer: Some(state::Signer {
                principal: "t@plumb".into(),
                fingerprint: "SHA256:x".into(),
            }),
            kind: RunKind::Apply,
            trigger: state::Trigger::Startup,
        })
        .expect("begin");
    db.finish_run(&run, RunResult::Converged, &json!({}))
        .expect("finish");
    db.set_last_applied("production", commit, &run)
        .expect("applied");
}

/// Regressions (issue 19, point 11 and 8): a drift check's run used to begin after every
/// host had been observed, so its `started_at` came after the checks; and a host that could
/// not be observed was recorded as if nothing drifted, with no alert. Now the run begins
/// before the first probe, the host is `unknown` (a failed host in the run, listed in the
/// summary), `host_unreachable` fires once (linking to the host's console page, with the
/// commit and its signer) and the metrics drop its drift count.
#[tokio::test]
async fn a_drift_check_starts_before_observing_and_an_unobservable_host_is_unknown() {
    let fx = Fx::new();
    let (port, conns) = hung_host().await;
    let tip = fx.push(&[
        ("plumb.yaml", PLUMB_YAML),
        (
            "environments/production/hosts.yaml",
            &hosts_at("web-1", port),
        ),
        ("units/web.yaml", MOTD_UNIT),
    ]);
    let d = fx.daemon();
    applied_baseline(&d, &tip).await;
    let mut st = env_task::EnvState::default();
    let before = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    d.drift_check("production", &mut st).await;
    let first_contact = conns.lock().unwrap_or_else(|p| p.into_inner())[0].0;
    let all = runs(&d);
    let check = all
        .iter()
        .find(|r| r.kind == RunKind::DriftCheck)
        .expect("a drift check run");
    // It began before the host was observed (the observation took the 2 s connect timeout).
    assert!(i128::from(check.started_at) >= before - 5, "{check:#?}");
    let finished = check.finished_at.expect("finished");
    assert!(
        finished - check.started_at >= 1500,
        "started_at is when the check began: {check:#?}"
    );
    assert!(first_contact.elapsed() >= Duration::from_millis(1500));
    assert_eq!(check.failed_hosts, 1, "{check:#?}");
    assert_eq!(check.summary["unknown_hosts"], json!(["web-1"]));
    let detail = lock(&d.db).run(&check.id).expect("run").expect("exists");
    assert_eq!(detail.hosts[0].status, state::HostResultStatus::Unknown);
    let alert = fx.next_alert().await;
    assert_eq!(alert["event"], "host_unreachable");
    assert_eq!(alert["status"], "firing");
    assert_eq!(alert["id"], "host_unreachable/production/web-1");
    assert_eq!(alert["hosts"], json!(["web-1"]));
    assert_eq!(alert["commit"], tip.as_str());
    assert_eq!(alert["signer"], "t@plumb");
    assert!(
        alert["link"]
            .as_str()
            .is_some_and(|l| l.ends_with("/hosts/production/web-1")),
        "{alert:#}"
    );
    let metrics = d.metrics.encode().expect("metrics");
    assert!(
        metrics.contains("plumb_host_reachable{env=\"production\",host=\"web-1\"} 0"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("plumb_drifted_resources{env=\"production\",host=\"web-1\"}"),
        "unknown is not 0 drift: {metrics}"
    );
    assert!(
        metrics.contains(
            "plumb_runs_total{env=\"production\",result=\"succeeded\",kind=\"drift_check\"} 1"
        ),
        "{metrics}"
    );
    // Still unreachable at the next check: the same alert, not sent again.
    d.drift_check("production", &mut st).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Ok(again) = fx.alerts.try_recv() {
        panic!("paged twice: {again:#}");
    }
    let key = crate::alert::AlertKey {
        event: AlertEvent::HostUnreachable,
        environment: Some("production".into()),
        host: Some("web-1".into()),
        subject: None,
    };
    assert!(lock_any(&d.alerts).is_active(&key));
    // The host left the inventory: its alert is resolved, not re-sent forever.
    d.note_inventory("production", &[]);
    assert!(!lock_any(&d.alerts).is_active(&key));
    let resolved = fx.next_alert().await;
    assert_eq!(resolved["id"], "host_unreachable/production/web-1");
    assert_eq!(resolved["status"], "resolved");
}

/// Health checks with their own `interval:` are scheduled on it (never faster than
/// `MIN_CHECK_INTERVAL`); a check no longer declared is forgotten; one scheduled keeps its
/// time.
#[test]
fn health_checks_with_their_own_interval_are_scheduled() {
    use crate::model::{HealthCheck, HealthProbe};
    let check = |name: &str, interval: Option<Duration>| HealthCheck {
        name: name.into(),
        probe: HealthProbe::Tcp(80),
        timeout: HumanDuration::from_secs(1),
        retries: 1,
        interval: interval.map(|d| HumanDuration::from_millis(d.as_millis() as u64)),
    };
    let mut st = env_task::EnvState::default();
    let now = Instant::now();
    health_watch::schedule_health(
        &mut st,
        &[
            check("own", Some(Duration::from_secs(30))),
            check("tiny", Some(Duration::from_millis(1))),
            check("with-drift", None),
        ],
    );
    assert_eq!(
        st.next_health.keys().collect::<Vec<_>>(),
        vec!["own", "tiny"]
    );
    let own = st.next_health["own"];
    assert!(own >= now + Duration::from_secs(29) && own <= now + Duration::from_secs(31));
    assert!(st.next_health["tiny"] >= now + health_watch::MIN_CHECK_INTERVAL);
    health_watch::schedule_health(&mut st, &[check("own", Some(Duration::from_secs(5)))]);
    assert_eq!(st.next_health.keys().collect::<Vec<_>>(), vec!["own"]);
    assert_eq!(
        st.next_health["own"], own,
        "a scheduled check keeps its time"
    );
}

/// Runs git in the fixture's clone, signing with its key, at `date` (committer and tagger).
fn git_at(fx: &Fx, date: &str, args: &[&str]) -> String {
    let key = fx.path("key");
    run(Command::new("git")
        .arg("-C")
        .arg(fx.path("clone"))
        .args(["-c", "user.name=T", "-c", "user.email=t@plumb"])
        .args(["-c", "gpg.format=ssh", "-c"])
        .arg(format!("user.signingkey={}", key.display()))
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_COMMITTER_DATE", date)
        .env("GIT_AUTHOR_DATE", date))
}

/// A file changed and committed (signed or not) at `date`, pushed to the branch; its id.
fn commit_at(fx: &Fx, date: &str, name: &str, signed: bool) -> String {
    std::fs::write(fx.path("clone").join(name), name).expect("write");
    git_at(fx, date, &["add", "-A"]);
    let sign = if signed { "-S" } else { "--no-gpg-sign" };
    git_at(fx, date, &["commit", "-q", sign, "-m", name]);
    let origin = fx.path("origin.git");
    git_at(
        fx,
        date,
        &["push", "-q", origin.to_str().unwrap_or_default(), "main"],
    );
    git_at(fx, date, &["rev-parse", "HEAD"])
}

/// Tags `commit` as `name` at `date` (`-s` signed, else lightweight) and force-pushes the tag.
fn tag_at(fx: &Fx, date: &str, name: &str, commit: &str, signed: bool) {
    if signed {
        git_at(fx, date, &["tag", "-f", "-s", "-m", name, name, commit]);
    } else {
        git_at(fx, date, &["tag", "-f", name, commit]);
    }
    let origin = fx.path("origin.git");
    let spec = format!("+refs/tags/{name}:refs/tags/{name}");
    git_at(
        fx,
        date,
        &["push", "-q", origin.to_str().unwrap_or_default(), &spec],
    );
}

/// The newest run (of any kind).
fn newest_run(d: &Daemon) -> state::RunRecord {
    runs(d).into_iter().next().expect("a run")
}

/// `ref: {tags: "v*"}`: the daemon deploys the newest signed tag, never the branch tip; `v2`
/// after `v1`; a re-pointed `v1` (older commit, newer tag) is a rollback and refused; a
/// signed tag over an unsigned commit is refused naming that commit; a lightweight tag is
/// refused as unsigned, naming the tag. No refusal moves the last applied commit.
#[tokio::test]
async fn the_daemon_follows_the_newest_signed_tag_and_refuses_rollbacks() {
    let fx = Fx::new();
    // No hosts: a rollout has nothing to contact, so an accepted commit is applied.
    let files = [
        ("plumb.yaml", PLUMB_YAML),
        ("environments/production/hosts.yaml", "hosts: []\n"),
    ];
    for (rel, text) in files {
        let p = fx.path("clone").join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
    let a = commit_at(&fx, "2024-01-01T10:00:00Z", "a", true);
    tag_at(&fx, "2024-01-01T10:00:00Z", "v1", &a, true);
    let b = commit_at(&fx, "2024-01-02T10:00:00Z", "b", true);
    let path = fx.config();
    let mut text = std::fs::read_to_string(&path).expect("config");
    text.push_str("ref: {tags: \"v*\"}\n");
    std::fs::write(&path, text).expect("write");
    let config = DaemonConfig::load(&path).expect("config");
    let mut d = Driven::new(Daemon::new(&path, config, StartOptions::default()).expect("daemon"));
    let last = |d: &Driven| {
        lock(&d.db)
            .last_applied("production")
            .expect("query")
            .map(|l| l.commit)
    };

    // v1, not the branch tip b.
    d.reconcile(Wake::Startup).await;
    assert_eq!(last(&d).as_deref(), Some(a.as_str()), "{:#?}", runs(&d));
    assert!(!runs(&d)
        .iter()
        .any(|r| r.commit.as_deref() == Some(b.as_str())));

    // v2 on a later commit: applied (the range a..c, b included, verified).
    let c = commit_at(&fx, "2024-01-03T10:00:00Z", "c", true);
    tag_at(&fx, "2024-01-03T10:00:00Z", "v2", &c, true);
    d.reconcile(Wake::Push).await;
    assert_eq!(last(&d).as_deref(), Some(c.as_str()), "{:#?}", runs(&d));
    assert_eq!(newest_run(&d).result, RunResult::Converged);

    // v1 re-pointed (a newer signed tag on an older commit): a rollback, refused.
    tag_at(&fx, "2024-01-04T10:00:00Z", "v1", &b, true);
    d.reconcile(Wake::Push).await;
    let r = newest_run(&d);
    assert_eq!(r.kind, RunKind::Refused, "{r:#?}");
    assert_eq!(r.commit.as_deref(), Some(b.as_str()));
    assert_eq!(r.summary["reason"], "not-descendant", "{:#}", r.summary);
    assert_eq!(last(&d).as_deref(), Some(c.as_str()));
    let alert = loop {
        let al = fx.next_alert().await;
        if al.to_string().contains(&b[..12]) {
            break al;
        }
    };
    assert!(alert.to_string().contains("not-descendant"), "{alert:#}");

    // A signed tag over an unsigned commit: refused, naming the unsigned commit.
    let e = commit_at(&fx, "2024-01-05T10:00:00Z", "e", false);
    let f = commit_at(&fx, "2024-01-05T11:00:00Z", "f", true);
    tag_at(&fx, "2024-01-05T11:00:00Z", "v3", &f, true);
    d.reconcile(Wake::Push).await;
    let r = newest_run(&d);
    assert_eq!(r.kind, RunKind::Refused, "{r:#?}");
    assert_eq!(r.commit.as_deref(), Some(f.as_str()));
    assert_eq!(r.summary["reason"], "unsigned", "{:#}", r.summary);
    assert_eq!(r.summary["bad_commit"], e.as_str(), "{:#}", r.summary);
    assert_eq!(last(&d).as_deref(), Some(c.as_str()));

    // A lightweight tag is not signed: refused as unsigned, naming the tag.
    let g = commit_at(&fx, "2024-01-06T10:00:00Z", "g", true);
    tag_at(&fx, "2024-01-06T10:00:00Z", "v4", &g, false);
    let oid = git2::Oid::from_str(&g).expect("oid");
    d.fetcher.fetch(&d.d, Wake::Push).await.expect("fetched");
    match d.reconcile_env("production", oid, Wake::Push).await {
        Ok(Outcome::Refused(r)) => {
            assert!(r.message.contains("tag v4"), "{}", r.message);
            assert!(r.message.contains("unsigned"), "{}", r.message);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(last(&d).as_deref(), Some(c.as_str()));
}

/// A host a person is applying (`plumb rollback` or `plumb apply --state` beside the daemon
/// holds its lease in the state) is waited for: the rollout begins no run until the lease is
/// released, then goes ahead.
#[tokio::test]
async fn a_rollout_waits_for_a_host_a_person_is_applying() {
    let fx = Fx::new();
    fx.push(&[
        ("plumb.yaml", PLUMB_YAML),
        ("environments/production/hosts.yaml", HOSTS_YAML),
        ("units/web.yaml", MOTD_UNIT),
    ]);
    let mut d = fx.daemon();
    let db = d.db.clone();
    let person = {
        // The CLI's own handle on the same state: no exclusive lock.
        let cli = state::StateDb::open_recorder(lock(&db).state_dir()).expect("recorder");
        let host = state::LeaseHost::new("production", "web-1", "127.0.0.1", 1);
        state::LeaseGuard::take(&cli, &[host], "plumb rollback (pid 1, user carol)").expect("lease")
    };
    let applies = move || {
        lock(&db)
            .runs(&RunFilter::default())
            .expect("runs")
            .iter()
            .filter(|r| r.kind == RunKind::Apply)
            .count()
    };
    {
        let job = d.reconcile(Wake::Startup);
        tokio::pin!(job);
        tokio::select! {
            _ = &mut job => panic!("the rollout did not wait for the leased host"),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        assert_eq!(applies(), 0, "no run began while the host was leased");
        drop(person);
        job.await;
    }
    assert_eq!(
        applies(),
        1,
        "the rollout went ahead once the lease was released"
    );
}

mod oncall;
