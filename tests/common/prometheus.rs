//! A real Prometheus (the Debian package) for tests: started on its own port with its own
//! config and data directory under a temporary directory, scraping itself every second, and
//! killed when dropped. Without the binary: `None`, said loudly (a failure under
//! `PLUMB_REQUIRE_E2E`, as CI sets).
//!
//! Include it with `#[path = "common/prometheus.rs"] mod prometheus;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Prometheus {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
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

impl Prometheus {
    /// Starts one, or `None` (said loudly) when `prometheus` is not installed.
    pub fn start() -> Option<Prometheus> {
        if Command::new("prometheus")
            .arg("--version")
            .output()
            .is_err()
        {
            if std::env::var_os("PLUMB_REQUIRE_E2E").is_some() {
                panic!("PLUMB_REQUIRE_E2E is set but `prometheus` is not installed (apt-get install prometheus)");
            }
            eprintln!("\n*** SKIPPED: no `prometheus` binary (apt-get install prometheus) ***\n");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: self\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
            ),
        )
        .expect("config");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).expect("log"))
            .spawn()
            .expect("prometheus starts");
        Some(Prometheus { child, port, dir })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits (at most 60 s) until it has scraped itself: `up{job="self"}` has a sample.
    pub fn wait_for_data(&self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if self
                .get("/api/v1/query?query=up")
                .contains("\"job\":\"self\"")
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let log = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
        panic!("prometheus has no data after 60 s; its log:\n{log}");
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
