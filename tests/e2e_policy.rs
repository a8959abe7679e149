//! Guardrails end to end (issue 16), with the daemon on the Docker test hosts and signed
//! commits: a commit that removes `openssh-server` is refused by the starter pack's
//! `ssh.deny_remove` (an operator policy outside the repo) and no host changes (hashes and
//! mtimes, the package still installed); the same commit with a `Plumb-Override:` trailer
//! signed by someone who is not an approver is refused too, naming why; once the signer is an
//! approver, the override applies it and the audit record names the approver and the reason.
//!
//! Run: `cargo nextest run --test e2e_policy`.

mod common;
#[path = "common/daemon.rs"]
mod daemon;

use std::process::Command;
use std::time::Duration;

use common::*;
use daemon::{AlertCapture, DaemonFixture};
use serde_json::Value;

const CONF: &str = "/etc/guarded.conf";

fn unit(content: &str, ssh: &str) -> String {
    format!(
        "steps:\n\
         \x20 - id: conf\n    file:\n      path: {CONF}\n      content: \"{content}\\n\"\n      mode: \"0644\"\n\
         \x20 - id: ssh\n    package:\n      name: openssh-server\n      state: {ssh}\n"
    )
}

/// `sha256 mtime` of the guarded file and whether openssh-server is installed, per host.
fn fingerprint(f: &DaemonFixture) -> Vec<String> {
    (1..=HOSTS)
        .map(|k| {
            exec(
                &f.hosts,
                k,
                &format!(
                    "sha256sum {CONF} | cut -d' ' -f1; stat -c %Y.%y {CONF}; \
                     dpkg-query -W -f='${{Status}}' openssh-server"
                ),
            )
        })
        .collect()
}

fn set_approvers(f: &DaemonFixture, approvers: &str) {
    let path = f.path("daemon.yaml");
    let config = std::fs::read_to_string(&path).expect("config");
    let kept: Vec<&str> = config
        .lines()
        .take_while(|l| !l.starts_with("policies:"))
        .collect();
    // The operator's policies: the starter pack's SSH rule, outside the repo.
    let dir = f.path("operator-policies");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::copy(
        root().join("examples/policies/ssh.rego"),
        dir.join("ssh.rego"),
    )
    .expect("copy");
    let policies = format!(
        "policies:\n  dirs: [{}]\n  approvers: [{approvers}]\n",
        dir.display()
    );
    std::fs::write(&path, format!("{}\n{policies}", kept.join("\n"))).expect("write config");
}

fn refused(f: &DaemonFixture, commit: &str) -> Value {
    f.wait("the commit refused", Duration::from_secs(90), || {
        f.run_of("refused", commit).is_some()
    });
    f.run_of("refused", commit).expect("refused run")
}

#[test]
fn a_guardrail_refuses_then_an_approvers_override_applies() {
    let Some(mut f) =
        DaemonFixture::new("e2e-policy-guardrails", "guarded", &unit("v1", "present"))
    else {
        return;
    };
    let first = f.git(&["rev-parse", "HEAD"]);
    let alerts = AlertCapture::start();
    f.alert_to(&alerts);
    // The starter pack is the operator's; the fixture's signer is not an approver yet.
    set_approvers(&f, "ops-lead@plumb");
    f.start_daemon();
    f.wait("the first commit applied", Duration::from_secs(120), || {
        f.applied(&first)
    });
    let before = fingerprint(&f);
    assert!(
        before.iter().all(|h| h.ends_with("install ok installed")),
        "{before:?}"
    );

    // 1. Removing openssh-server: refused by the rule, every violation alerted, no host touched.
    f.write("units/guarded.yaml", &unit("v2", "absent"));
    let remove = f.commit_and_push("drop the ssh server", true);
    let run = refused(&f, &remove);
    let summary = &run["summary"];
    assert_eq!(summary["reason"], "policy", "{run}");
    let violations = summary["violations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(violations.len(), HOSTS, "one per host: {summary}");
    for v in &violations {
        assert_eq!(v["rule"], "ssh.deny_remove");
        assert!(
            v["rule_location"]
                .as_str()
                .unwrap_or("")
                .ends_with("operator-policies/ssh.rego:11"),
            "{v}"
        );
        let at = v["step_location"].as_str().unwrap_or("");
        assert!(at.starts_with("units/guarded.yaml:7:"), "{v}");
    }
    f.wait("the policy alert", Duration::from_secs(30), || {
        alerts
            .events()
            .iter()
            .any(|a| a["details"]["reason"] == "policy")
    });
    let alert = alerts
        .events()
        .into_iter()
        .find(|a| a["details"]["reason"] == "policy")
        .expect("alert");
    assert!(
        alert["message"]
            .as_str()
            .unwrap_or("")
            .contains("ssh.deny_remove"),
        "{alert}"
    );
    assert_eq!(
        alert["details"]["violations"].as_array().map(Vec::len),
        Some(HOSTS)
    );
    assert_eq!(fingerprint(&f), before, "a refused commit changed a host");

    // 2. An override signed by someone who is not an approver: refused, saying why.
    f.write("units/guarded.yaml", &unit("v3", "absent"));
    let not_approved = f.commit_and_push(
        "drop the ssh server\n\nPlumb-Override: ssh.deny_remove the host is being retired",
        true,
    );
    let run = refused(&f, &not_approved);
    let o = &run["summary"]["overrides"][0];
    assert_eq!(o["accepted"], false, "{run}");
    assert_eq!(o["by"], "test@plumb");
    assert!(
        o["refused_because"]
            .as_str()
            .unwrap_or("")
            .contains("not an approver"),
        "{o}"
    );
    assert_eq!(fingerprint(&f), before, "a refused override changed a host");

    // 3. The signer becomes an approver (operator config): the override applies.
    f.stop_daemon();
    set_approvers(&f, "ops-lead@plumb, test@plumb");
    f.write("units/guarded.yaml", &unit("v4", "absent"));
    let approved = f.commit_and_push(
        "drop the ssh server\n\nPlumb-Override: ssh.deny_remove the host is being retired",
        true,
    );
    f.start_daemon();
    f.wait(
        "the overridden commit applied",
        Duration::from_secs(180),
        || f.applied(&approved),
    );
    for k in 1..=HOSTS {
        assert_eq!(exec(&f.hosts, k, &format!("cat {CONF}")), "v4", "host {k}");
    }
    let run = f.run_of("apply", &approved).expect("apply run");
    let policy = &run["summary"]["policy"];
    assert_eq!(policy["overrides"][0]["by"], "test@plumb", "{run}");
    assert_eq!(policy["overrides"][0]["accepted"], true);
    assert_eq!(
        policy["overrides"][0]["reason"],
        "the host is being retired"
    );
    assert_eq!(policy["overridden"].as_array().map(Vec::len), Some(HOSTS));
    f.stop_daemon();

    // The audit chain verifies and its export holds the override with who and why.
    let (code, out, err) = sh(Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(["audit", "verify", "--state"])
        .arg(f.state_dir()));
    assert_eq!(code, 0, "audit verify: {out}{err}");
    let (code, text, err) = sh(Command::new(env!("CARGO_BIN_EXE_plumb"))
        .args(["audit", "export", "--state"])
        .arg(f.state_dir()));
    assert_eq!(code, 0, "audit export: {err}");
    assert!(
        text.contains("the host is being retired") && text.contains("ssh.deny_remove"),
        "the audit export names the override"
    );
}
