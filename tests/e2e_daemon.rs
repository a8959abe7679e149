//! End-to-end scenarios of `plumb daemon` against real sshd hosts in Docker.
//!
//! Each scenario: fresh hosts, a signing key and allowed-signers file made at test time, the
//! example repo committed (signed) into a local bare repository, and the daemon started as a
//! process with its alerts sent to a capturing HTTP server on 127.0.0.1. Hosts are checked
//! with `docker exec`; the daemon through its history, metrics and alerts.
//!
//! Run one: `cargo test --test e2e_daemon signed_push_is_applied -- --nocapture`.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Captures what alert sinks post.
struct AlertCapture {
    port: u16,
    received: Arc<Mutex<Vec<Value>>>,
}

fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            let mut body = buf[end + 4..].to_vec();
            while body.len() < len {
                let n = stream.read(&mut chunk).ok()?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            return Some((head, body));
        }
    }
}

impl AlertCapture {
    fn start() -> AlertCapture {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                if let Some((_, body)) = read_request(&mut stream) {
                    if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                        sink.lock().unwrap_or_else(|p| p.into_inner()).push(v);
                    }
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        AlertCapture { port, received }
    }

    fn events(&self) -> Vec<Value> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn has(&self, event: &str) -> bool {
        self.events().iter().any(|a| a["event"] == event)
    }
}

fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let _ = s.write_all(req.as_bytes());
    let _ = s.write_all(body);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn try_wait(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

struct Fixture {
    hosts: Hosts,
    work: tempfile::TempDir,
    alerts: AlertCapture,
    port: u16,
    daemon: Option<Child>,
    /// `RUST_LOG` for the daemon.
    log_filter: &'static str,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Fixture {
    fn path(&self, p: &str) -> PathBuf {
        self.work.path().join(p)
    }

    fn clone_dir(&self) -> PathBuf {
        self.path("clone")
    }

    fn git(&self, args: &[&str]) -> String {
        let (code, out, err) = sh(Command::new("git")
            .arg("-C")
            .arg(self.clone_dir())
            .args([
                "-c",
                "user.name=Test",
                "-c",
                "user.email=test@plumb",
                "-c",
                "gpg.format=ssh",
                "-c",
            ])
            .arg(format!(
                "user.signingkey={}",
                self.path("signing/id_ed25519").display()
            ))
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1"));
        assert_eq!(code, 0, "git {args:?}: {out}{err}");
        out.trim().to_string()
    }

    /// Commits everything in the clone (signed or not) and pushes it to the bare repo.
    fn commit_and_push(&self, message: &str, signed: bool) -> String {
        self.git(&["add", "-A"]);
        if signed {
            self.git(&["commit", "-q", "-S", "-m", message]);
        } else {
            self.git(&["commit", "-q", "--no-gpg-sign", "-m", message]);
        }
        let bare = self.path("repo.git");
        self.git(&["push", "-q", bare.to_str().unwrap_or_default(), "main"]);
        self.git(&["rev-parse", "HEAD"])
    }

    fn edit(&self, rel: &str, from: &str, to: &str) {
        let p = self.clone_dir().join(rel);
        let text = std::fs::read_to_string(&p).expect("read");
        assert!(text.contains(from), "{rel} has no `{from}`");
        std::fs::write(&p, text.replace(from, to)).expect("write");
    }

    fn start_daemon(&mut self) {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("daemon.log"))
            .expect("log");
        let _ = writeln!(log, "--- daemon start");
        let child = Command::new(env!("CARGO_BIN_EXE_plumb"))
            .args(["daemon", "--config"])
            .arg(self.path("daemon.yaml"))
            .args(["--log-format", "json"])
            .env("RUST_LOG", self.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("daemon starts");
        self.daemon = Some(child);
        let port = self.port;
        self.wait("the daemon's /healthz", Duration::from_secs(30), || {
            http(port, "GET", "/healthz", &[], b"").0 == 200
        });
    }

    fn kill_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (`HUP`, `TERM`) to the daemon.
    fn signal(&self, sig: &str) {
        let pid = self.daemon.as_ref().expect("daemon running").id();
        let (code, _, err) = sh(Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string()));
        assert_eq!(code, 0, "kill -{sig}: {err}");
    }

    /// Waits for the daemon to exit; `None` when it is still running after `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.daemon.as_mut()?;
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = child.try_wait() {
                self.daemon = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    /// Waits for `cond`; on timeout fails with the daemon's log.
    fn wait(&self, what: &str, timeout: Duration, cond: impl FnMut() -> bool) -> Duration {
        match try_wait(timeout, cond) {
            Some(d) => d,
            None => {
                let log = self.log();
                let tail: Vec<&str> = log
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; daemon log:\n{}",
                    tail.join("\n")
                )
            }
        }
    }

    fn history(&self) -> Vec<Value> {
        let (code, out, err) = sh(Command::new(env!("CARGO_BIN_EXE_plumb"))
            .args(["history", "--limit", "100", "--output", "json", "--state"])
            .arg(self.path("state")));
        assert_eq!(code, 0, "history: {err}");
        let v: Value = serde_json::from_str(&out).expect("history JSON");
        v["runs"].as_array().cloned().unwrap_or_default()
    }

    fn runs_with(&self, kind: &str, result: &str) -> Vec<Value> {
        self.history()
            .into_iter()
            .filter(|r| r["kind"] == kind && r["result"] == result)
            .collect()
    }

    fn applied(&self, commit: &str) -> bool {
        self.history()
            .iter()
            .any(|r| r["kind"] == "apply" && r["result"] == "converged" && r["commit"] == commit)
    }

    fn metrics(&self) -> String {
        http(self.port, "GET", "/metrics", &[], b"").1
    }
}

/// Fresh hosts, a signed first commit of the example, and a daemon config; `tweak` may edit
/// the repo before the first commit.
fn fixture(scenario: &str, drift_interval: &str, tweak: impl FnOnce(&Path)) -> Option<Fixture> {
    let hosts = fresh_hosts(scenario)?;
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    std::fs::create_dir_all(w.join("signing")).expect("mkdir");
    let (code, _, err) = sh(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test@plumb", "-f"])
        .arg(w.join("signing/id_ed25519")));
    assert_eq!(code, 0, "{err}");
    let pubkey = std::fs::read_to_string(w.join("signing/id_ed25519.pub")).expect("pub");
    let key: Vec<&str> = pubkey.split_whitespace().take(2).collect();
    std::fs::write(
        w.join("signing/allowed_signers"),
        format!("test@plumb namespaces=\"git\" {}\n", key.join(" ")),
    )
    .expect("write");
    std::fs::write(w.join("hook-secret"), "s3cret-for-tests\n").expect("write");
    let repo = webapp_repo(&hosts);
    copy_dir(repo.path(), &w.join("clone"));
    tweak(&w.join("clone"));
    let (code, _, err) = sh(Command::new("git")
        .args(["init", "-q", "--bare", "-b", "main"])
        .arg(w.join("repo.git")));
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = sh(Command::new("git")
        .args(["init", "-q", "-b", "main"])
        .arg(w.join("clone")));
    assert_eq!(code, 0, "{err}");

    let alerts = AlertCapture::start();
    let port = free_port();
    let config = format!(
        "repository: {repo}\nbranch: main\nallowed_signers: {signers}\nenvironments: [production]\nstate_dir: {state}\n\
         listen: 127.0.0.1:{port}\ndrift_interval: {drift_interval}\nwebhooks:\n  generic_secret_file: {secret}\n\
         alerts:\n  - kind: webhook\n    url: http://127.0.0.1:{aport}/alerts\n\
         ssh:\n  identity_file: {id}\n  known_hosts_file: {kh}\n  connect_timeout: 5s\n\
         secrets_identity: {secrets}\n",
        secrets = demo_secrets_identity(w).display(),
        repo = w.join("repo.git").display(),
        signers = w.join("signing/allowed_signers").display(),
        state = w.join("state").display(),
        secret = w.join("hook-secret").display(),
        aport = alerts.port,
        id = hosts.dir.join("id_ed25519").display(),
        kh = hosts.dir.join("known_hosts").display(),
    );
    std::fs::write(w.join("daemon.yaml"), config).expect("write config");
    let f = Fixture {
        hosts,
        work,
        alerts,
        port,
        daemon: None,
        log_filter: "info",
    };
    f.commit_and_push("webapp: production on the test hosts", true);
    Some(f)
}

#[test]
fn signed_push_is_applied() {
    let _g = lock();
    let Some(mut f) = fixture("signed_push_is_applied", "1h", |_| {}) else {
        return;
    };
    let first = f.git(&["rev-parse", "HEAD"]);
    f.start_daemon();
    f.wait("the first commit applied", Duration::from_secs(180), || {
        f.applied(&first)
    });
    assert_eq!(
        exec(&f.hosts, 2, "systemctl is-active plumb-demo"),
        "active"
    );

    // A new signed commit, pushed into the local bare repository.
    f.edit(
        "environments/production/env.yaml",
        "log_level: warn",
        "log_level: debug",
    );
    let pushed = Instant::now();
    let second = f.commit_and_push("production: debug logging", true);
    let latency = f.wait(
        "the pushed commit applied",
        Duration::from_secs(120),
        || f.applied(&second),
    );
    let run = f
        .history()
        .into_iter()
        .find(|r| r["commit"] == second.as_str())
        .expect("run");
    assert_eq!(run["trigger"], "push", "noticed as a push: {run:#}");
    assert_eq!(run["signer"]["principal"], "test@plumb");
    for k in [1, 2] {
        assert!(
            exec(&f.hosts, k, "cat /etc/plumb-demo/app.conf").contains("debug"),
            "host {k} has the new config"
        );
    }
    eprintln!(
        "commit-to-applied latency (push to recorded run): {:.2}s; measured from the push: {:.2}s",
        latency.as_secs_f64(),
        pushed.elapsed().as_secs_f64()
    );
    let m = f.metrics();
    assert!(
        m.contains(&format!(
            "plumb_last_applied_commit_info{{env=\"production\",commit=\"{second}\"}} 1"
        )),
        "{m}"
    );
    assert!(
        m.contains("plumb_commit_to_applied_seconds_count{env=\"production\"} 2"),
        "{m}"
    );

    // The audit chain's head is exported where an operator can anchor it: the head /metrics
    // shows is a record `plumb audit verify --expect-head` finds in the chain.
    let seq = m
        .lines()
        .find_map(|l| l.strip_prefix("plumb_audit_head_seq "))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no plumb_audit_head_seq in\n{m}"));
    let hash = m
        .lines()
        .find_map(|l| l.strip_prefix("plumb_audit_head_info{hash=\""))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no plumb_audit_head_info in\n{m}"))
        .to_string();
    assert!(seq >= 2, "two applied runs at least: {seq}");
    let verify = |anchor: &str| {
        sh(Command::new(env!("CARGO_BIN_EXE_plumb"))
            .args(["audit", "verify", "--expect-head", anchor, "--state"])
            .arg(f.path("state")))
    };
    let (code, out, err) = verify(&format!("{seq}:{hash}"));
    assert_eq!(code, 0, "the exported head is in the chain:\n{out}\n{err}");
    let (code, out, err) = verify(&format!("{seq}:{}", "0".repeat(64)));
    assert_eq!(
        code, 1,
        "another hash at that position is refused:\n{out}\n{err}"
    );
}

#[test]
fn unsigned_commit_and_bad_webhook_change_nothing() {
    let _g = lock();
    let Some(mut f) = fixture(
        "unsigned_commit_and_bad_webhook_change_nothing",
        "1h",
        |_| {},
    ) else {
        return;
    };
    let first = f.git(&["rev-parse", "HEAD"]);
    f.start_daemon();
    f.wait("the first commit applied", Duration::from_secs(180), || {
        f.applied(&first)
    });
    let before: Vec<String> = (1..=HOSTS).map(|k| fingerprint(&f.hosts, k)).collect();

    f.edit(
        "environments/production/env.yaml",
        "log_level: warn",
        "log_level: debug",
    );
    let unsigned = f.commit_and_push("sneaky unsigned change", false);
    f.wait(
        "the unsigned commit refused",
        Duration::from_secs(60),
        || {
            f.history()
                .iter()
                .any(|r| r["kind"] == "refused" && r["commit"] == unsigned.as_str())
        },
    );
    let after: Vec<String> = (1..=HOSTS).map(|k| fingerprint(&f.hosts, k)).collect();
    assert_eq!(before, after, "no host was touched");
    let m = f.metrics();
    assert!(
        m.contains("plumb_signature_refusals_total{source=\"commit\",env=\"production\"} 1")
            || m.contains("plumb_signature_refusals_total{env=\"production\",source=\"commit\"} 1"),
        "{m}"
    );
    f.wait("a signature_refused alert", Duration::from_secs(20), || {
        f.alerts.has("signature_refused")
    });

    // A webhook with a bad HMAC: 401, counted, and no fetch or run.
    let runs_before = f.history().len();
    let (code, _) = http(
        f.port,
        "POST",
        "/hooks/generic",
        &[
            ("X-Plumb-Signature", "sha256=0000"),
            ("Content-Type", "application/json"),
        ],
        b"{}",
    );
    assert_eq!(code, 401);
    let (code, _) = http(
        f.port,
        "POST",
        "/hooks/generic",
        &[("Content-Type", "application/json")],
        b"{}",
    );
    assert_eq!(code, 401, "a missing signature is refused too");
    assert!(
        f.metrics()
            .contains("plumb_signature_refusals_total{source=\"webhook\"} 2"),
        "{}",
        f.metrics()
    );
    f.wait(
        "an alert for the forged webhook",
        Duration::from_secs(20),
        || {
            f.alerts
                .events()
                .iter()
                .any(|a| a["event"] == "signature_refused" && a["details"]["hook"] == "generic")
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        f.history().len(),
        runs_before,
        "a refused webhook starts no run"
    );

    // A good HMAC is accepted (and finds nothing new to apply: the tip is still refused).
    let body = br#"{"ref":"refs/heads/main"}"#;
    let sig = {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cret-for-tests").expect("key");
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    };
    let (code, _) = http(
        f.port,
        "POST",
        "/hooks/generic",
        &[("X-Plumb-Signature", &format!("sha256={sig}"))],
        body,
    );
    assert_eq!(code, 202);
    let after: Vec<String> = (1..=HOSTS).map(|k| fingerprint(&f.hosts, k)).collect();
    assert_eq!(before, after, "still nothing touched");
}

#[test]
fn canary_health_failure_stops_the_rollout() {
    let _g = lock();
    let Some(mut f) = fixture("canary_health_failure_stops_the_rollout", "1h", |repo| {
        let env = repo.join("environments/production/env.yaml");
        let text = std::fs::read_to_string(&env).expect("env.yaml").replace(
            "health_checks:\n",
            "health_checks:\n  - name: always-fails\n    command: \"echo unhealthy >&2; exit 1\"\n    timeout: 2s\n",
        );
        std::fs::write(env, text).expect("write");
    }) else {
        return;
    };
    let first = f.git(&["rev-parse", "HEAD"]);
    f.start_daemon();
    f.wait("the rollout to fail", Duration::from_secs(180), || {
        f.history()
            .iter()
            .any(|r| r["commit"] == first.as_str() && r["result"] == "failed")
    });
    // The canary (host 1) was applied; the web and rest waves never started.
    assert_eq!(
        exec(&f.hosts, 1, "systemctl is-active plumb-demo"),
        "active"
    );
    assert_eq!(
        exec(
            &f.hosts,
            2,
            "test -e /etc/plumb-demo && echo yes || echo no"
        ),
        "no"
    );
    assert_eq!(
        exec(
            &f.hosts,
            3,
            "getent passwd app >/dev/null && echo yes || echo no"
        ),
        "no"
    );
    let run = f
        .history()
        .into_iter()
        .find(|r| r["commit"] == first.as_str())
        .expect("run");
    assert_eq!(run["summary"]["stopped_at_wave"], "canary", "{run:#}");
    f.wait("a run_failed alert", Duration::from_secs(20), || {
        f.alerts.has("run_failed")
    });
    // Not retried until a new commit arrives.
    std::thread::sleep(Duration::from_secs(2));
    let (code, _) = http(f.port, "GET", "/readyz", &[], b"");
    assert_eq!(code, 200);
    assert_eq!(f.runs_with("apply", "failed").len(), 1);
    f.kill_daemon();
}

/// The example repo's environment in drift `report` mode (it ships in `correct`).
fn report_mode(repo: &Path) {
    let env = repo.join("environments/production/env.yaml");
    let text = std::fs::read_to_string(&env)
        .expect("env.yaml")
        .replace("mode: correct", "mode: report");
    std::fs::write(env, text).expect("write");
}

#[test]
fn drift_is_reported_then_corrected() {
    let _g = lock();
    let Some(mut f) = fixture("drift_is_reported_then_corrected", "2s", report_mode) else {
        return;
    };
    let first = f.git(&["rev-parse", "HEAD"]);
    f.start_daemon();
    f.wait("the first commit applied", Duration::from_secs(180), || {
        f.applied(&first)
    });

    // Report mode: the drift shows in /metrics and fires an alert; nothing is changed back.
    exec(&f.hosts, 2, "systemctl stop plumb-demo");
    f.wait("drift in /metrics", Duration::from_secs(30), || {
        f.metrics()
            .contains("plumb_drifted_resources{env=\"production\",host=\"plumb-host-2\"} 1")
    });
    f.wait("a drift_found alert", Duration::from_secs(20), || {
        f.alerts.has("drift_found")
    });
    let alert = f
        .alerts
        .events()
        .into_iter()
        .find(|a| a["event"] == "drift_found")
        .expect("alert");
    assert_eq!(
        alert["hosts"],
        serde_json::json!(["plumb-host-2"]),
        "{alert:#}"
    );
    assert!(
        alert.to_string().contains("web/demo-service"),
        "names the resource: {alert:#}"
    );
    assert_eq!(
        exec(&f.hosts, 2, "systemctl is-active plumb-demo || true"),
        "inactive",
        "report mode changes nothing"
    );
    assert!(f.runs_with("correction", "converged").is_empty());

    // Correct mode (a new signed commit): drift is reverted and recorded as a correction.
    f.edit(
        "environments/production/env.yaml",
        "mode: report",
        "mode: correct",
    );
    let second = f.commit_and_push("production: correct drift", true);
    f.wait(
        "the correct-mode commit applied",
        Duration::from_secs(120),
        || f.applied(&second),
    );
    exec(&f.hosts, 1, "chmod 0700 /srv/app");
    f.wait("a correction run", Duration::from_secs(60), || {
        !f.runs_with("correction", "converged").is_empty()
    });
    assert_eq!(exec(&f.hosts, 1, "stat -c %a /srv/app"), "755");
    let corr = f.runs_with("correction", "converged").remove(0);
    assert_eq!(corr["commit"], second.as_str());
    assert!(
        corr["drift"].as_u64().unwrap_or(0) >= 1,
        "the change is marked as drift: {corr:#}"
    );
}

#[test]
fn sigkill_mid_apply_then_restart_converges() {
    let _g = lock();
    let Some(mut f) = fixture("sigkill_mid_apply_then_restart_converges", "1h", |repo| {
        // A slow step, so the daemon is killed while the apply script runs.
        std::fs::write(
            repo.join("units/slow.yaml"),
            "steps:\n  - id: slow\n    command:\n      run: \"sleep 6 && touch /var/tmp/slow-done\"\n      creates: /var/tmp/slow-done\n",
        )
        .expect("write");
    }) else {
        return;
    };
    let first = f.git(&["rev-parse", "HEAD"]);
    f.start_daemon();
    f.wait("an apply in flight", Duration::from_secs(120), || {
        f.history()
            .iter()
            .any(|r| r["kind"] == "apply" && r["result"] == "running")
    });
    std::thread::sleep(Duration::from_secs(2));
    f.kill_daemon(); // SIGKILL
    assert!(!f.applied(&first), "killed before it finished");

    f.start_daemon();
    f.wait("converged after restart", Duration::from_secs(180), || {
        f.applied(&first)
    });
    let history = f.history();
    assert!(
        history.iter().any(|r| r["result"] == "interrupted"),
        "the killed run stays in the history: {history:#?}"
    );
    for k in 1..=HOSTS {
        assert_eq!(
            exec(&f.hosts, k, "ls /var/tmp/slow-done"),
            "/var/tmp/slow-done"
        );
        assert_eq!(
            exec(
                &f.hosts,
                k,
                "find /etc/plumb-demo /etc/app /etc/default /etc/cron.d /etc/sysctl.d -name '.plumb.*' 2>/dev/null | wc -l"
            ),
            "0",
            "no temporary file left"
        );
    }
    f.kill_daemon();

    let verify = |state: &Path| {
        sh(Command::new(env!("CARGO_BIN_EXE_plumb"))
            .args(["audit", "verify", "--state"])
            .arg(state))
    };
    let (code, out, err) = verify(&f.path("state"));
    assert_eq!(code, 0, "audit verify: {out}{err}");

    // Tamper with one stored record: verification fails and names it.
    let victim = history
        .iter()
        .find(|r| r["result"] == "converged")
        .and_then(|r| r["id"].as_str())
        .expect("id")
        .to_string();
    let db = rusqlite::Connection::open(f.path("state/plumb.db")).expect("open db");
    let n = db
        .execute(
            "UPDATE runs SET commit_id = '0000000000000000000000000000000000000000' WHERE id = ?1",
            [&victim],
        )
        .expect("tamper");
    assert_eq!(n, 1);
    drop(db);
    let (code, out, err) = verify(&f.path("state"));
    assert_eq!(code, 1, "tampering is detected: {out}{err}");
    assert!(
        format!("{out}{err}").contains(&victim),
        "names the record {victim}: {out}{err}"
    );
}

/// SIGHUP reloads the config and keeps the drift schedule: drift is still checked after it
/// (a reload used to stop drift checks until the next push).
#[test]
fn drift_is_still_checked_after_sighup() {
    let _g = lock();
    let Some(mut f) = fixture("drift_is_still_checked_after_sighup", "2s", report_mode) else {
        return;
    };
    let first = f.git(&["rev-parse", "HEAD"]);
    f.start_daemon();
    f.wait("the first commit applied", Duration::from_secs(180), || {
        f.applied(&first)
    });
    let checks = |f: &Fixture| {
        f.history()
            .iter()
            .filter(|r| r["kind"] == "drift_check")
            .count()
    };
    f.wait("a first drift check", Duration::from_secs(30), || {
        checks(&f) >= 1
    });
    f.signal("HUP");
    f.wait("the reload", Duration::from_secs(10), || {
        f.log().contains("SIGHUP: configuration reloaded")
    });
    let before = checks(&f);
    f.wait("drift checks after SIGHUP", Duration::from_secs(30), || {
        checks(&f) >= before + 2
    });
    // And they still find drift.
    exec(&f.hosts, 2, "systemctl stop plumb-demo");
    f.wait(
        "a drift_found alert after SIGHUP",
        Duration::from_secs(30),
        || f.alerts.has("drift_found"),
    );
}

/// One host hangs (a step that sleeps for an hour), one floods its output: the other host
/// converges, the daemon stays up and answers /healthz and webhooks, and SIGTERM ends it
/// within a bound although a run is in flight.
#[test]
fn a_hung_and_a_flooding_host_do_not_take_the_daemon_down() {
    let _g = lock();
    let Some(mut f) = fixture("a_hung_and_a_flooding_host", "1h", |repo| {
        std::fs::write(
            repo.join("units/hostile.yaml"),
            r#"steps:
  - id: hostile
    command:
      run: "{{ 'sleep 3600' if host.name == 'plumb-host-2' else ('yes | head -c 20000000' if host.name == 'plumb-host-3' else 'true') }} && touch /var/tmp/hostile-done"
      creates: /var/tmp/hostile-done
"#,
        )
        .expect("write");
    }) else {
        return;
    };
    f.start_daemon();
    // The canary (host 1) converges in the first wave; the second wave hangs on host 2.
    f.wait("the canary converged", Duration::from_secs(180), || {
        exec(&f.hosts, 1, "ls /var/tmp/hostile-done 2>/dev/null || true") == "/var/tmp/hostile-done"
    });
    f.wait("an apply in flight", Duration::from_secs(60), || {
        f.history()
            .iter()
            .any(|r| r["kind"] == "apply" && r["result"] == "running")
    });
    std::thread::sleep(Duration::from_secs(3));
    let port = f.port;
    assert_eq!(
        http(port, "GET", "/healthz", &[], b"").0,
        200,
        "answers /healthz"
    );
    let m = f.metrics();
    assert!(m.contains("# EOF"), "answers /metrics: {m}");
    // A webhook is answered (and kept for after the run) while the run hangs.
    let body = br#"{"ref":"refs/heads/main"}"#;
    let sig = {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cret-for-tests").expect("key");
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    };
    let (code, _) = http(
        port,
        "POST",
        "/hooks/generic",
        &[("X-Plumb-Signature", &format!("sha256={sig}"))],
        body,
    );
    assert_eq!(code, 202, "a webhook is answered while a host hangs");
    let started = Instant::now();
    f.signal("TERM");
    let status = f.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some(),
        "SIGTERM ends the daemon within a bound; log:\n{}",
        f.log()
    );
    eprintln!(
        "stopped {:.1}s after SIGTERM",
        started.elapsed().as_secs_f64()
    );
    assert!(f.log().contains("did not finish in time"), "{}", f.log());
}

/// examples/webapp's database password (secrets/db_password.age, encrypted by the `age` CLI
/// to the example's throwaway key).
const DB_SECRET: &str = "demo-db-password-do-not-use-3e8b";

/// Issue 13 on real hosts: examples/webapp's templated database config, whose password comes
/// from `secrets/`, converges through the daemon, and a command carries the password in its
/// text; afterwards the plaintext is in no daemon log line (debug), no state file, no audit
/// record, no `/api/*` answer, no alert (a drift of the secret-bearing file included), no
/// output of `plumb plan --output json` at debug level, and not in the `ps` output captured on
/// the host while it was applied.
#[test]
fn a_secret_converges_and_leaks_nowhere() {
    let _g = lock();
    let Some(mut f) = fixture("a_secret_converges_and_leaks_nowhere", "2s", |repo| {
        report_mode(repo);
        std::fs::write(
            repo.join("units/db-secret.yaml"),
            r#"applies_to:
  role: db
steps:
  - id: check
    command:
      run: "i=0; while [ $i -lt 30 ]; do i=$((i+1)); sleep 0.1; done; while IFS= read -r l; do [ \"$l\" != 'password = {{ secrets.db_password }}' ] || touch /var/tmp/db-secret-ok; done < /etc/app/db.conf; test -e /var/tmp/db-secret-ok"
      creates: /var/tmp/db-secret-ok
    after: [db/db-conf]
"#,
        )
        .expect("write");
    }) else {
        return;
    };
    f.log_filter = "debug";
    // The host's process list, captured all through the apply.
    let (code, _, err) = sh(Command::new("docker").args([
        "exec",
        "-d",
        &f.hosts.container(3),
        "sh",
        "-c",
        "echo $$ > /tmp/watch.pid; end=$(( $(date +%s) + 300 )); \
         while [ \"$(date +%s)\" -lt \"$end\" ]; do ps -eo args >> /tmp/ps.log; done",
    ]));
    assert_eq!(code, 0, "watcher: {err}");
    let first = f.git(&["rev-parse", "HEAD"]);
    f.start_daemon();
    f.wait("the commit applied", Duration::from_secs(180), || {
        f.applied(&first)
    });
    exec(
        &f.hosts,
        3,
        "kill \"$(cat /tmp/watch.pid)\" 2>/dev/null || :",
    );
    assert!(exec(&f.hosts, 3, "cat /etc/app/db.conf").contains(&format!("password = {DB_SECRET}")));
    assert_eq!(exec(&f.hosts, 3, "stat -c %a /etc/app/db.conf"), "640");
    exec(&f.hosts, 3, "test -e /var/tmp/db-secret-ok");
    assert_ne!(
        exec(&f.hosts, 3, "grep -c '^sleep 0.1' /tmp/ps.log || :"),
        "0",
        "the watcher saw the step's own processes"
    );
    let leaked = exec(
        &f.hosts,
        3,
        "grep -cF db-password-do-not-use /tmp/ps.log || :",
    );
    assert_eq!(leaked, "0", "the secret in the host's process list");

    // Drift of the secret-bearing file: compared by hash, alerted without its content.
    exec(
        &f.hosts,
        3,
        "echo 'password = changed-by-hand' > /etc/app/db.conf",
    );
    f.wait("a drift_found alert", Duration::from_secs(60), || {
        f.alerts.has("drift_found")
    });
    let alerts = serde_json::to_string(&f.alerts.events()).expect("json");
    assert!(alerts.contains("db/db-conf"), "names the step: {alerts}");
    assert!(!alerts.contains("changed-by-hand"), "{alerts}");

    // plumb itself, at debug level, on the same hosts and repo.
    // (plumb_command passes the example's throwaway identity in PLUMB_SECRETS_IDENTITY.)
    let out = plumb_command(&f.hosts, &["plan"], &f.clone_dir())
        .env("RUST_LOG", "debug")
        .output()
        .expect("plan");
    let plan_text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "the drift is a change: {plan_text}"
    );
    assert!(plan_text.contains("db/db-conf"), "{plan_text}");

    let mut seen: Vec<(String, String)> = vec![
        ("plumb plan --output json (debug)".into(), plan_text),
        ("the daemon's JSON log (debug)".into(), f.log()),
        ("alert payloads".into(), alerts),
    ];
    for path in ["/api/status", "/api/runs", "/api/drift"] {
        seen.push((path.into(), http(f.port, "GET", path, &[], b"").1));
    }
    for run in f.history() {
        let path = format!("/api/runs/{}", run["id"].to_string().trim_matches('"'));
        seen.push((path.clone(), http(f.port, "GET", &path, &[], b"").1));
    }
    let (code, out, err) = sh(Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(["audit", "verify", "--output", "json", "--state"])
        .arg(f.path("state")));
    assert_eq!(code, 0, "{out}{err}");
    seen.push(("plumb audit verify".into(), out));
    for entry in std::fs::read_dir(f.path("state")).expect("state").flatten() {
        if entry.path().is_file() {
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            seen.push((
                entry.path().display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
    assert!(
        seen.iter().any(|(_, text)| text.contains("db_password")),
        "the records name the secret"
    );
    for (what, text) in &seen {
        assert!(!text.contains(DB_SECRET), "{what} shows the secret");
    }
}
