//! A real Alertmanager (the Debian package `prometheus-alertmanager`) for tests: started on
//! its own port with its own config and storage under a temporary directory, clustering off,
//! killed when dropped. Without the binary: `None`, said loudly (a failure under
//! `PLUMB_REQUIRE_E2E`, as CI sets).
//!
//! Include it with `#[path = "common/alertmanager.rs"] mod alertmanager;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BINARY: &str = "prometheus-alertmanager";

pub struct Alertmanager {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Alertmanager {
    /// Starts one and waits until it answers, or `None` (said loudly) when it is not
    /// installed.
    pub fn start() -> Option<Alertmanager> {
        if Command::new(BINARY).arg("--version").output().is_err() {
            if std::env::var_os("PLUMB_REQUIRE_E2E").is_some() {
                panic!("PLUMB_REQUIRE_E2E is set but `{BINARY}` is not installed (apt-get install prometheus-alertmanager)");
            }
            eprintln!(
                "\n*** SKIPPED: no `{BINARY}` binary (apt-get install prometheus-alertmanager) ***\n"
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = dir.path().join("alertmanager.yml");
        // One receiver that sends nowhere: the test reads the alerts through the API.
        std::fs::write(
            &config,
            "route:\n  receiver: none\n  group_wait: 1s\nreceivers:\n  - name: none\n",
        )
        .expect("config");
        let child = Command::new(BINARY)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).expect("log"))
            .spawn()
            .expect("alertmanager starts");
        let am = Alertmanager { child, port, dir };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if am.get("/-/ready").starts_with("HTTP/1.1 200") {
                return Some(am);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "alertmanager is not ready after 30 s; its log:\n{}",
            am.log()
        );
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// The alerts Alertmanager holds as active now (`GET /api/v2/alerts`; resolved alerts
    /// are not listed).
    pub fn alerts(&self) -> Vec<Value> {
        // curl: the answer may be chunked.
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5"])
            .arg(format!("{}/api/v2/alerts?active=true", self.url()))
            .output()
            .expect("curl runs");
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// The active alert named `alertname` whose labels include `labels`, if any.
    pub fn find(&self, alertname: &str, labels: &[(&str, &str)]) -> Option<Value> {
        self.alerts().into_iter().find(|a| {
            a["labels"]["alertname"] == alertname
                && labels.iter().all(|(k, v)| a["labels"][*k] == *v)
        })
    }

    fn get(&self, path: &str) -> String {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        let _ = s.write_all(req.as_bytes());
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }
}
