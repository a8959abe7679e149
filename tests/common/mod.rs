//! Shared helpers of the end-to-end tests: fresh test hosts, the example repo pointed at
//! them, running plumb, and independent checks with `docker exec`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

use serde_json::Value;

pub const HOSTS: usize = 3;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running test hosts of one scenario: their own cluster (containers and network), torn
/// down when the scenario ends unless `PLUMB_TEST_KEEP_HOSTS` is set or the cluster was chosen
/// with `PLUMB_TEST_CLUSTER`.
pub struct Hosts {
    pub dir: PathBuf,
    pub addresses: Vec<String>,
    cluster: String,
    owned: bool,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        if !self.owned || std::env::var_os("PLUMB_TEST_KEEP_HOSTS").is_some() {
            return;
        }
        let _ = Command::new(root().join("integration/testhosts"))
            .env("PLUMB_TEST_CLUSTER", &self.cluster)
            .args(["down", "--dir"])
            .arg(&self.dir)
            .output();
    }
}

impl Hosts {
    /// Host K's name in the inventory plumb reads.
    pub fn name(&self, k: usize) -> String {
        format!("plumb-host-{k}")
    }
    /// Host K's container, for `docker exec` and network changes.
    pub fn container(&self, k: usize) -> String {
        format!("plumb-{}-host-{k}", self.cluster)
    }
    /// The Docker network the hosts are on.
    pub fn network(&self) -> String {
        format!("plumb-{}", self.cluster)
    }
    /// The cluster name (`PLUMB_TEST_CLUSTER` for `integration/testhosts`).
    pub fn cluster(&self) -> &str {
        &self.cluster
    }
}

/// The cluster of a scenario: `PLUMB_TEST_CLUSTER` when set (one shared set of hosts, kept
/// after the scenario), else one of its own named after the scenario, so scenarios of any
/// test binary can run at the same time (`cargo nextest`) without replacing each other's hosts.
fn scenario_cluster(scenario: &str) -> (String, bool) {
    match std::env::var("PLUMB_TEST_CLUSTER") {
        Ok(c) if !c.is_empty() => (c, false),
        _ => (format!("s{}", &sha256(scenario.as_bytes())[..10]), true),
    }
}

pub fn sh(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn docker_ok() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Fresh hosts, or `None` (after saying so loudly) when Docker is not available.
pub fn fresh_hosts(scenario: &str) -> Option<Hosts> {
    fresh_hosts_n(scenario, HOSTS)
}

/// `n` fresh hosts (plumb-host-1..n), or `None` when Docker is not available.
pub fn fresh_hosts_n(scenario: &str, n: usize) -> Option<Hosts> {
    if !docker_ok() {
        if std::env::var_os("PLUMB_REQUIRE_E2E").is_some() {
            panic!("PLUMB_REQUIRE_E2E is set but no Docker engine answers `docker info`");
        }
        eprintln!("\n*** SKIPPED end-to-end scenario `{scenario}`: no Docker engine (docker info failed) ***\n");
        return None;
    }
    static IMAGE: OnceLock<Result<(), String>> = OnceLock::new();
    let image = IMAGE.get_or_init(|| {
        let (code, _, err) = sh(Command::new(root().join("integration/testhosts")).arg("image"));
        if code == 0 {
            Ok(())
        } else {
            Err(err)
        }
    });
    if let Err(e) = image {
        panic!("building the test host image failed:\n{e}");
    }
    let (cluster, owned) = scenario_cluster(scenario);
    let dir = root().join(format!("target/e2e-hosts/{cluster}"));
    let (code, out, err) = sh(Command::new(root().join("integration/testhosts"))
        .env("PLUMB_TEST_CLUSTER", &cluster)
        .args(["up", &n.to_string(), "--dir"])
        .arg(&dir));
    assert_eq!(code, 0, "testhosts up failed:\n{out}\n{err}");
    let inventory = std::fs::read_to_string(dir.join("hosts.yaml")).expect("inventory written");
    let addresses: Vec<String> = inventory
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("address:")
                .map(|a| a.trim().to_string())
        })
        .collect();
    assert_eq!(addresses.len(), n, "inventory: {inventory}");
    eprintln!("scenario `{scenario}`: hosts up at {addresses:?} (cluster {cluster})");
    Some(Hosts {
        dir,
        addresses,
        cluster,
        owned,
    })
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}

/// examples/webapp with its production inventory pointed at the test hosts.
pub fn webapp_repo(hosts: &Hosts) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&root().join("examples/webapp"), dir.path());
    let [a1, a2, a3] = [
        &hosts.addresses[0],
        &hosts.addresses[1],
        &hosts.addresses[2],
    ];
    let inventory = format!(
        "hosts:\n\
         \x20 - name: plumb-host-1\n    address: {a1}\n    labels: {{role: web, canary: \"true\"}}\n    vars: {{workers: 8}}\n\
         \x20 - name: plumb-host-2\n    address: {a2}\n    labels: {{role: web}}\n\
         \x20 - name: plumb-host-3\n    address: {a3}\n    labels: {{role: db}}\n    vars: {{hello_version: \"1.0\"}}\n"
    );
    std::fs::write(
        dir.path().join("environments/production/hosts.yaml"),
        inventory,
    )
    .expect("write inventory");
    dir
}

/// The plumb command for `args` (the subcommand first) on `repo`, with the test hosts' key
/// and known_hosts, JSON output, no colour.
pub fn plumb_command(hosts: &Hosts, args: &[&str], repo: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_plumb"));
    cmd.args(&args[..1])
        .arg(repo)
        .args(&args[1..])
        .args([
            "--env",
            "production",
            "--output",
            "json",
            "--color",
            "never",
        ])
        .arg("--identity")
        .arg(hosts.dir.join("id_ed25519"))
        .arg("--known-hosts")
        .arg(hosts.dir.join("known_hosts"))
        .env("PLUMB_SECRETS_IDENTITY", demo_secrets_identity(&hosts.dir));
    cmd
}

/// A private (0600) copy, in `dir`, of the throwaway identity examples/webapp's secrets are
/// encrypted to (`examples/webapp-demo-identity.txt`; git keeps it world-readable, which
/// plumb refuses).
pub fn demo_secrets_identity(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let copy = dir.join("webapp-demo-identity.txt");
    if !copy.exists() {
        let key =
            std::fs::read(root().join("examples/webapp-demo-identity.txt")).expect("demo key");
        std::fs::write(&copy, key).expect("write demo key");
    }
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    copy
}

/// Runs plumb with the test hosts' key and known_hosts; returns (exit code, JSON, stderr).
pub fn plumb(hosts: &Hosts, args: &[&str], repo: &Path) -> (i32, Value, String) {
    let (code, out, err) = sh(&mut plumb_command(hosts, args, repo));
    let json = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("plumb {args:?} printed no JSON ({e}):\n{out}\n{err}"));
    (code, json, err)
}

pub fn exec(hosts: &Hosts, k: usize, cmd: &str) -> String {
    let (code, out, err) =
        sh(Command::new("docker").args(["exec", &hosts.container(k), "sh", "-c", cmd]));
    assert_eq!(
        code,
        0,
        "docker exec {} `{cmd}` failed: {err}",
        hosts.container(k)
    );
    out.trim_end().to_string()
}

pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

pub fn host_report<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["hosts"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["name"] == name))
        .unwrap_or_else(|| panic!("no host {name} in {report:#}"))
}

/// Rendered content of a file step for a host, via `plumb render --show-content`.
pub fn rendered_content(repo: &Path, host: &str, address: &str) -> String {
    let (code, out, err) = sh(Command::new(env!("CARGO_BIN_EXE_plumb"))
        .arg("render")
        .arg(repo)
        .args([
            "--env",
            "production",
            "--host",
            host,
            "--show-content",
            "--output",
            "json",
        ]));
    assert_eq!(code, 0, "render failed: {err}");
    let v: Value = serde_json::from_str(&out).expect("render JSON");
    v["hosts"][0]["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["address"] == address))
        .and_then(|s| s["content"].as_str())
        .unwrap_or_else(|| panic!("no content for {address}"))
        .to_string()
}

pub fn demo_starts(hosts: &Hosts, k: usize) -> usize {
    exec(
        hosts,
        k,
        "journalctl -u plumb-demo --no-pager -o cat | grep -c 'plumb-demo started' || true",
    )
    .parse()
    .unwrap_or(0)
}

/// sha256 and mtime of everything plumb manages on a host.
pub fn fingerprint(hosts: &Hosts, k: usize) -> String {
    exec(
        hosts,
        k,
        "for f in /etc/plumb-demo/app.conf /etc/plumb-demo/credentials /etc/default/plumb-demo /etc/cron.d/app-log-cleanup /etc/app/db.conf; do \
         [ -e \"$f\" ] && { stat -c '%Y %a %U %G %n' \"$f\"; sha256sum \"$f\"; }; done; \
         dpkg-query -W -f '${Version}\\n' plumb-hello; cat /proc/sys/net/core/somaxconn",
    )
}

/// Cuts host K off the test network.
pub fn disconnect(hosts: &Hosts, k: usize) {
    let (code, _, err) = sh(Command::new("docker").args([
        "network",
        "disconnect",
        &hosts.network(),
        &hosts.container(k),
    ]));
    assert_eq!(code, 0, "{err}");
}

/// Puts host K back on the test network, at its address.
pub fn reconnect(hosts: &Hosts, k: usize) {
    let (code, _, err) = sh(Command::new("docker").args([
        "network",
        "connect",
        "--ip",
        &hosts.addresses[k - 1],
        &hosts.network(),
        &hosts.container(k),
    ]));
    assert_eq!(code, 0, "{err}");
}

/// A minimal repo: host 1 as `plumb-host-1` (user deploy, become) and one unit, `units/NAME.yaml`.
pub fn one_host_repo(hosts: &Hosts, unit: &str, unit_yaml: &str) -> tempfile::TempDir {
    let repo = tempfile::tempdir().expect("tempdir");
    let r = repo.path();
    std::fs::create_dir_all(r.join("environments/production")).expect("mkdir");
    std::fs::create_dir_all(r.join("units")).expect("mkdir");
    std::fs::write(
        r.join("plumb.yaml"),
        "defaults: {user: deploy, become: true}\n",
    )
    .expect("write");
    std::fs::write(
        r.join("environments/production/hosts.yaml"),
        format!(
            "hosts:\n  - name: plumb-host-1\n    address: {}\n",
            hosts.addresses[0]
        ),
    )
    .expect("write");
    std::fs::write(r.join(format!("units/{unit}.yaml")), unit_yaml).expect("write");
    repo
}
