//! The module contract on real hosts (the Docker test hosts of integration/testhosts):
//! - the registry's host-only examples (package, service, user, group) through the same
//!   generic harness `tests/modules_compliance.rs` runs here for the local ones;
//! - an unprivileged user racing plumb on a file it controls: plumb's `chmod` never reaches
//!   the file the user's symlink points to (/etc/shadow).
//!
//! Run with your own cluster: `PLUMB_TEST_CLUSTER=<name> cargo test --test e2e_modules`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use plumb::modules::harness::{self, Host, Select};
use plumb::modules::{lookup, ChangeKind, ProbeResult, Runs, REGISTRY};

/// A test host reached with `docker exec` as root: fragments run as the engine runs them
/// (`sh -s`, the script on stdin, each fragment in a subshell with stdin from /dev/null).
struct DockerHost {
    container: String,
}

impl Host for DockerHost {
    fn fresh_root(&mut self) -> String {
        let out = self.run("mktemp -d /var/tmp/plumb-example.XXXXXX");
        assert_eq!(out.status, 0, "mktemp on {}", self.container);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
    fn run(&mut self, script: &str) -> ProbeResult {
        let mut child = Command::new("docker")
            .args(["exec", "-i", &self.container, "sh", "-s"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("docker exec: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(format!("(\n{script}\n) </dev/null\n").as_bytes())
                .expect("write script");
        }
        let out = child.wait_with_output().expect("docker exec");
        ProbeResult {
            stdout: out.stdout,
            stderr: out.stderr,
            status: out.status.code().unwrap_or(-1),
        }
    }
}

#[test]
fn host_only_examples_converge_on_a_real_host() {
    let _g = lock();
    let Some(hosts) = fresh_hosts("host_only_examples_converge_on_a_real_host") else {
        return;
    };
    let host_only: Vec<&str> = REGISTRY
        .iter()
        .filter(|d| matches!(d.runs, Runs::Host))
        .map(|d| d.name)
        .collect();
    assert_eq!(host_only, ["package", "service", "user", "group"]);
    let mut host = DockerHost {
        container: hosts.container(1),
    };
    let errors = harness::run_registry(REGISTRY, Select::Host, &mut host);
    let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(shown.is_empty(), "{}", shown.join("\n\n"));
    // What the examples left behind, seen independently.
    assert_eq!(
        exec(
            &hosts,
            1,
            "systemctl is-active plumb-demo; systemctl is-enabled plumb-demo || :"
        ),
        "inactive\ndisabled"
    );
    assert_eq!(
        exec(&hosts, 1, "getent group plumbexsys | cut -d: -f1"),
        "plumbexsys"
    );
    assert_eq!(
        exec(&hosts, 1, "getent passwd plumbexu || echo gone"),
        "gone"
    );
    assert_eq!(
        exec(&hosts, 1, "command -v plumb-hello || echo gone"),
        "gone"
    );
    assert_eq!(
        exec(&hosts, 1, "command -v plumb-extra || echo gone"),
        "gone"
    );
}

const SHADOW: &str = "stat -c '%a %U:%G' /etc/shadow";

/// The racer's file: /srv/race is theirs (the directory a user owns, in a root-owned /srv).
fn make_racer(hosts: &Hosts, k: usize) {
    exec(
        hosts,
        k,
        "id racer >/dev/null 2>&1 || useradd -M racer; mkdir -p /srv/race && printf 'x\\n' > /srv/race/f && chmod 0600 /srv/race/f && chown -R racer: /srv/race",
    );
}

#[test]
fn a_file_swapped_for_a_symlink_to_shadow_between_probe_and_apply() {
    let _g = lock();
    let Some(hosts) = fresh_hosts("a_file_swapped_for_a_symlink_to_shadow_between_probe_and_apply")
    else {
        return;
    };
    make_racer(&hosts, 1);
    let before = exec(&hosts, 1, SHADOW);
    assert_eq!(before, "640 root:shadow");
    let mut host = DockerHost {
        container: hosts.container(1),
    };
    let Some(file) = lookup("file") else {
        panic!("no file module")
    };
    let Ok(r) = (file.build)(
        serde_json::json!({"path": "/srv/race/f", "content": "x\n", "mode": "0644"}),
        &mut NoRepo,
    ) else {
        panic!("build")
    };
    let c = harness::observe(file, r.as_ref(), &mut host).expect("probe");
    assert_eq!(c.kind, ChangeKind::Modify);
    // The user swaps their file for a link to /etc/shadow after plumb looked.
    exec(&hosts, 1, "runuser -u racer -- sh -c 'ln -s /etc/shadow /srv/race/l && mv -fT /srv/race/l /srv/race/f'");
    let out = host.run(&r.apply(&c));
    assert_ne!(out.status, 0, "the apply went through the link");
    assert_eq!(exec(&hosts, 1, SHADOW), before);
    assert_eq!(exec(&hosts, 1, "readlink /srv/race/f"), "/etc/shadow");
}

struct NoRepo;
impl plumb::modules::Resolve for NoRepo {
    fn template(&mut self, _: &str) -> Result<String, String> {
        Err("none".into())
    }
    fn file(&mut self, _: &str) -> Result<Vec<u8>, String> {
        Err("none".into())
    }
}

/// The red team's scenario: an unprivileged user replaces, in a loop, a file it controls in a
/// directory it owns with a symlink to /etc/shadow, while plumb (root, over SSH and sudo)
/// applies mode 0644 on it again and again. /etc/shadow stays 0640 root:shadow.
#[test]
fn a_user_racing_plumb_never_gets_shadow_changed() {
    let _g = lock();
    let Some(hosts) = fresh_hosts("a_user_racing_plumb_never_gets_shadow_changed") else {
        return;
    };
    make_racer(&hosts, 1);
    let before = exec(&hosts, 1, SHADOW);
    assert_eq!(before, "640 root:shadow");
    // The loop stops by itself after 90 s; its pid is kept to stop it sooner.
    let (code, _, err) = sh(Command::new("docker").args([
        "exec",
        "-d",
        &hosts.container(1),
        "runuser",
        "-u",
        "racer",
        "--",
        "sh",
        "-c",
        "echo $$ > /tmp/racer.pid; cd /srv/race || exit 1; end=$(( $(date +%s) + 90 )); \
         while [ \"$(date +%s)\" -lt \"$end\" ]; do \
           ln -sf /etc/shadow l && mv -fT l f; \
           printf 'x\\n' > n && chmod 0600 n && mv -fT n f; \
         done",
    ]));
    assert_eq!(code, 0, "racer: {err}");
    let repo = one_host_repo(&hosts, "race", "steps:\n  - id: race\n    file:\n      path: /srv/race/f\n      content: \"x\\n\"\n      mode: \"0644\"\n");
    let r = repo.path();
    let mut outcomes = Vec::new();
    for _ in 0..12 {
        let (code, report, _) = plumb(&hosts, &["apply"], r);
        outcomes.push(code);
        assert_eq!(exec(&hosts, 1, SHADOW), before, "report: {report:#}");
    }
    let racing = exec(
        &hosts,
        1,
        "kill -0 \"$(cat /tmp/racer.pid)\" && echo racing",
    );
    exec(&hosts, 1, "kill \"$(cat /tmp/racer.pid)\" 2>/dev/null || :");
    assert_eq!(racing, "racing", "the racer stopped before plumb did");
    eprintln!("apply exit codes while racing: {outcomes:?}");
    assert_eq!(exec(&hosts, 1, SHADOW), before);
    // Nothing plumb left behind in the user's directory, whatever happened.
    assert_eq!(
        exec(&hosts, 1, "ls -A /srv/race | grep -c '^.plumb' || :"),
        "0"
    );
}

/// Issue 11.3 on a real host: while plumb applies sensitive `command` and `line` steps, the
/// host's process list (sampled in a loop by `ps`) never shows their command text, guard or
/// line value.
#[test]
fn sensitive_values_never_reach_the_hosts_process_list() {
    let _g = lock();
    let Some(hosts) = fresh_hosts("sensitive_values_never_reach_the_hosts_process_list") else {
        return;
    };
    let repo = one_host_repo(
        &hosts,
        "secret",
        r#"steps:
  - id: secret-run
    sensitive: true
    command:
      run: "i=0; while [ $i -lt 30 ]; do i=$((i+1)); sleep 0.1; done; printf '%s' PLUMB-SECRET-RUN-7731 > /tmp/secret-ran"
      unless: "test -e /tmp/secret-ran && : PLUMB-SECRET-GUARD-7731"
      onlyif: "sleep 0.5; test ! -e /tmp/PLUMB-SECRET-ONLYIF-7731"
  - id: secret-line
    sensitive: true
    line:
      path: /tmp/secret-line
      line: "token=PLUMB-SECRET-LINE-7731"
      create: true
"#,
    );
    let r = repo.path();
    let (code, _, err) = sh(Command::new("docker").args([
        "exec",
        "-d",
        &hosts.container(1),
        "sh",
        "-c",
        "echo $$ > /tmp/watch.pid; end=$(( $(date +%s) + 120 )); \
         while [ \"$(date +%s)\" -lt \"$end\" ]; do ps -eo args >> /tmp/ps.log; done",
    ]));
    assert_eq!(code, 0, "watcher: {err}");
    let (code, report, err) = plumb(&hosts, &["apply"], r);
    exec(&hosts, 1, "kill \"$(cat /tmp/watch.pid)\" 2>/dev/null || :");
    assert_eq!(code, 0, "{report:#}\n{err}");
    assert_eq!(
        exec(&hosts, 1, "cat /tmp/secret-ran"),
        "PLUMB-SECRET-RUN-7731"
    );
    assert_eq!(
        exec(&hosts, 1, "cat /tmp/secret-line"),
        "token=PLUMB-SECRET-LINE-7731"
    );
    // The watcher saw the step's own processes, so it was looking at the right time.
    assert_ne!(
        exec(&hosts, 1, "grep -c '^sleep 0.1' /tmp/ps.log || :"),
        "0"
    );
    let leaked = exec(&hosts, 1, "grep -F PLUMB-SECRET /tmp/ps.log | sort -u || :");
    assert_eq!(leaked, "", "secrets in the process list");
}
