//! A minimal `plumb daemon` fixture for end-to-end scenarios: fresh hosts, a signing key and
//! allowed-signers file made at test time, a small repo (every test host, one unit) committed
//! signed into a local bare repository, and the daemon started as a process.
//!
//! Include it next to `mod common;` with `#[path = "common/daemon.rs"] mod daemon;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{fresh_hosts_n, sh, Hosts, HOSTS};

/// A GET on the daemon's HTTP server: (status, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let _ = s.write_all(req.as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A daemon managing every test host from a local bare repository.
pub struct DaemonFixture {
    pub hosts: Hosts,
    pub work: tempfile::TempDir,
    pub port: u16,
    daemon: Option<Child>,
}

impl Drop for DaemonFixture {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl DaemonFixture {
    /// Fresh hosts, keys, a repo with `units/UNIT.yaml` = `unit_yaml` on every host, committed
    /// (signed) and pushed; the daemon is not started yet. `None` without Docker.
    pub fn new(scenario: &str, unit: &str, unit_yaml: &str) -> Option<DaemonFixture> {
        Self::with_hosts(scenario, HOSTS, unit, unit_yaml)
    }

    /// [`DaemonFixture::new`] with `n` hosts.
    pub fn with_hosts(
        scenario: &str,
        n: usize,
        unit: &str,
        unit_yaml: &str,
    ) -> Option<DaemonFixture> {
        let hosts = fresh_hosts_n(scenario, n)?;
        let work = tempfile::tempdir().expect("tempdir");
        let w = work.path();
        make_signing_key(w);
        write_repo(&hosts, &w.join("clone"), unit, unit_yaml);
        for (args, dir) in [
            (&["init", "-q", "--bare", "-b", "main"][..], "repo.git"),
            (&["init", "-q", "-b", "main"][..], "clone"),
        ] {
            let (code, _, err) = sh(Command::new("git").args(args).arg(w.join(dir)));
            assert_eq!(code, 0, "{err}");
        }
        let port = free_port();
        let config = format!(
            "repository: {repo}\nbranch: main\nallowed_signers: {signers}\nenvironments: [production]\n\
             state_dir: {state}\nlisten: 127.0.0.1:{port}\ndrift_interval: 1h\n\
             ssh:\n  identity_file: {id}\n  known_hosts_file: {kh}\n  connect_timeout: 5s\n",
            repo = w.join("repo.git").display(),
            signers = w.join("signing/allowed_signers").display(),
            state = w.join("state").display(),
            id = hosts.dir.join("id_ed25519").display(),
            kh = hosts.dir.join("known_hosts").display(),
        );
        std::fs::write(w.join("daemon.yaml"), config).expect("write config");
        let f = DaemonFixture {
            hosts,
            work,
            port,
            daemon: None,
        };
        f.commit_and_push("a first good commit", true);
        Some(f)
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.work.path().join(p)
    }

    pub fn clone_dir(&self) -> PathBuf {
        self.path("clone")
    }

    /// The daemon's state directory (mirror, database, audit key).
    pub fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    pub fn git(&self, args: &[&str]) -> String {
        let (code, out, err) = sh(Command::new("git")
            .arg("-C")
            .arg(self.clone_dir())
            .args(["-c", "user.name=Test", "-c", "user.email=test@plumb"])
            .args(["-c", "gpg.format=ssh", "-c"])
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

    /// Commits everything in the clone (signed or not), pushes it; returns the commit id.
    pub fn commit_and_push(&self, message: &str, signed: bool) -> String {
        self.git(&["add", "-A"]);
        let sign = if signed { "-S" } else { "--no-gpg-sign" };
        self.git(&["commit", "-q", sign, "-m", message]);
        let bare = self.path("repo.git");
        self.git(&["push", "-q", bare.to_str().unwrap_or_default(), "main"]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// Starts `plumb daemon` (log in `daemon.log`) and waits for `/healthz`.
    pub fn start_daemon(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("daemon.log"))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_plumb"))
            .args(["daemon", "--config"])
            .arg(self.path("daemon.yaml"))
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("daemon starts");
        self.daemon = Some(child);
        let port = self.port;
        self.wait("the daemon's /healthz", Duration::from_secs(30), || {
            http_get(port, "/healthz").0 == 200
        });
    }

    /// Stops the daemon (SIGTERM, as systemd would) and waits until it exited.
    pub fn stop_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// True while the daemon process runs and answers `/healthz`.
    pub fn daemon_up(&mut self) -> bool {
        let running = self
            .daemon
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        running && http_get(self.port, "/healthz").0 == 200
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    /// Waits for `cond`; on timeout fails with the tail of the daemon's log.
    pub fn wait(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        panic!("timed out after {timeout:?} waiting for {what}; daemon log:\n{tail}")
    }

    /// Every recorded run, newest first (`plumb history`).
    pub fn history(&self) -> Vec<Value> {
        let (code, out, err) = sh(Command::new(env!("CARGO_BIN_EXE_plumb"))
            .args(["history", "--limit", "100", "--output", "json", "--state"])
            .arg(self.state_dir()));
        assert_eq!(code, 0, "history: {err}");
        let v: Value = serde_json::from_str(&out).expect("history JSON");
        v["runs"].as_array().cloned().unwrap_or_default()
    }

    /// The recorded run of `kind` for `commit`, if any.
    pub fn run_of(&self, kind: &str, commit: &str) -> Option<Value> {
        self.history()
            .into_iter()
            .find(|r| r["kind"] == kind && r["commit"] == commit)
    }

    pub fn applied(&self, commit: &str) -> bool {
        self.run_of("apply", commit)
            .is_some_and(|r| r["result"] == "converged")
    }
}

fn make_signing_key(w: &Path) {
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
}

/// Every test host (user deploy, become) in `production`, and one unit on all of them.
fn write_repo(hosts: &Hosts, r: &Path, unit: &str, unit_yaml: &str) {
    for d in ["environments/production", "units", "files"] {
        std::fs::create_dir_all(r.join(d)).expect("mkdir");
    }
    std::fs::write(
        r.join("plumb.yaml"),
        "name: jail\nenvironments: [production]\ndefaults: {user: deploy, become: true}\n",
    )
    .expect("write");
    std::fs::write(
        r.join("environments/production/env.yaml"),
        "drift: {mode: report, interval: 1h}\n",
    )
    .expect("write");
    let mut inventory = String::from("hosts:\n");
    for k in 1..=hosts.addresses.len() {
        inventory.push_str(&format!(
            "  - name: {}\n    address: {}\n",
            hosts.name(k),
            hosts.addresses[k - 1]
        ));
    }
    std::fs::write(r.join("environments/production/hosts.yaml"), inventory).expect("write");
    std::fs::write(r.join(format!("units/{unit}.yaml")), unit_yaml).expect("write");
}

/// Captures what the daemon's webhook alert sink posts (a tiny HTTP server on 127.0.0.1).
pub struct AlertCapture {
    pub port: u16,
    received: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl AlertCapture {
    pub fn start() -> AlertCapture {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                if let Some(body) = read_body(&mut stream) {
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

    /// Every alert received so far.
    pub fn events(&self) -> Vec<Value> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The body of one HTTP request (by its Content-Length).
fn read_body(stream: &mut TcpStream) -> Option<Vec<u8>> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < end + 4 + len {
            let n = stream.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        return Some(buf[end + 4..end + 4 + len].to_vec());
    }
}

impl DaemonFixture {
    /// Sends the daemon's alerts to `capture` (before `start_daemon`).
    pub fn alert_to(&self, capture: &AlertCapture) {
        let path = self.path("daemon.yaml");
        let mut config = std::fs::read_to_string(&path).expect("config");
        config.push_str(&format!(
            "alerts:\n  - kind: webhook\n    url: http://127.0.0.1:{}/alerts\n",
            capture.port
        ));
        std::fs::write(path, config).expect("write config");
    }

    /// Writes `text` to `rel` in the clone.
    pub fn write(&self, rel: &str, text: &str) {
        let p = self.clone_dir().join(rel);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        std::fs::write(p, text).expect("write");
    }
}
